#!/usr/bin/python3
"""The keyvault back end's fault matrix against the emulator: each fault
gives the documented CKR within the call's deadline, calls succeed again
once the fault is gone, and the emulator's counters show where the retries
stopped. timeout = 2, deadline = 6, retries = 2."""
import os
import subprocess
import time

from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, count, delta, unwrap,
                    public_key, CKA_CMK_VERSION)

P = PyKCS11
TIMEOUT, DEADLINE, RETRIES = 2, 6, 2
UNWRAP = "kvemu:unwrapKey"

t = Tap()
s = KvSetup()
emu = s.emu
limits = "timeout = %d\ndeadline = %d\nretries = %d\n" % (TIMEOUT, DEADLINE,
                                                         RETRIES)
s.write_conf([
    ("kv", s.token_body(extra=limits)),
    ("nothere", "backend = keyvault\nvault-url = https://nothere.vault."
     "localhost:1\nca-file = %s\nauth = access-token-file\n"
     "access-token-file = %s\n%s" % (
         emu.ca, os.path.join(s.dir, "nothere.token"), limits)),
    ("slow", s.token_body(extra="timeout = 1\ndeadline = 2\nretries = 4\n")),
], refresh=1)
with open(os.path.join(s.dir, "nothere.token"), "w") as f:
    f.write(emu.token("app"))
os.chmod(os.path.join(s.dir, "nothere.token"), 0o600)
for name in ("kek", "dis", "del"):
    s.create_key(name)
s.load()
ses = s.session("kv")
priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
pk = public_key(ses, find(ses, P.CKO_PUBLIC_KEY, "kek")[0])
t.eq(unwrap(ses, priv, pk), 0, "a first unwrap, before any fault")


def fault(kind, match=UNWRAP, **kw):
    spec = {"kind": kind, "match": match}
    spec.update(kw)
    return emu.admin("POST", "faults", spec)


def timed(sess=None, key=None, pub=None):
    """An unwrap: (CKR, seconds, counters before, counters after)."""
    before = s.counters()
    t0 = time.monotonic()
    rv = unwrap(sess or ses, key or priv, pub or pk)
    el = time.monotonic() - t0
    return rv, el, before, s.counters()


def works_again(what, requests=1):
    emu.admin("DELETE", "faults")
    rv, el, b, a = timed()
    t.ok(rv == 0 and delta(b, a, UNWRAP) == requests,
         "%s: once the fault is gone, the next unwrap works at once" % what,
         "rv=%r requests=%d" % (rv, delta(b, a, UNWRAP)))


# ---- 429 ------------------------------------------------------------------
fault("429", retry_after=2, count=1)
rv, el, b, a = timed()
t.eq(rv, 0, "429 with Retry-After: 2: the unwrap succeeds after the wait")
t.ok(2.0 <= el < 3.5, "Retry-After was honoured (%.2f s)" % el)
t.ok(delta(b, a, UNWRAP, 429) == 1 and delta(b, a, UNWRAP, 200) == 1,
     "one 429, then one 200", a["by_route_status"].get(UNWRAP))

fault("429", count=1)
rv, el, b, a = timed()
t.eq(rv, 0, "429 without Retry-After: the unwrap succeeds")
t.ok(0.75 <= el < 2.0, "it backed off about 1 s (%.2f s)" % el)
t.ok(delta(b, a, UNWRAP, 429) == 1 and delta(b, a, UNWRAP, 200) == 1,
     "one 429, then one 200", a["by_route_status"].get(UNWRAP))

fault("429", retry_after=30, count=1)
rv, el, b, a = timed()
t.eq(rv, P.CKR_DEVICE_ERROR, "429 with a Retry-After past the deadline: "
     "CKR_DEVICE_ERROR")
t.ok(el < 1.0, "at once, without waiting for nothing (%.2f s)" % el)
t.eq(ses.getSessionInfo().ulDeviceError, 429, "ulDeviceError is 429")
t.eq(delta(b, a, UNWRAP), 1, "no retry was sent")
works_again("429 past the deadline")

fault("429", count=RETRIES + 1)
rv, el, b, a = timed()
t.eq(rv, P.CKR_DEVICE_ERROR, "still throttled after the retries: "
     "CKR_DEVICE_ERROR")
t.ok(el < DEADLINE + 0.5, "within the deadline (%.2f s)" % el)
t.eq(delta(b, a, UNWRAP, 429), RETRIES + 1,
     "exactly retries + 1 requests (%d)" % (RETRIES + 1))
works_again("429 burst")

# ---- 500 / 503 bursts -----------------------------------------------------
for kind in ("500", "503"):
    n = RETRIES - 1 if RETRIES > 1 else 1
    fault(kind, count=n)
    rv, el, b, a = timed()
    t.eq(rv, 0, "%d x %s (fewer than retries): the unwrap succeeds" % (n, kind))
    t.ok(delta(b, a, UNWRAP, kind) == n and delta(b, a, UNWRAP, 200) == 1 and
         delta(b, a, UNWRAP) == n + 1, "after exactly %d requests" % (n + 1),
         a["by_route_status"].get(UNWRAP))
    t.ok(0.6 * n <= el < DEADLINE, "with backoff (%.2f s)" % el)

    fault(kind, count=RETRIES + 3)
    rv, el, b, a = timed()
    t.eq(rv, P.CKR_DEVICE_ERROR, "%d x %s (more than retries): "
         "CKR_DEVICE_ERROR" % (RETRIES + 3, kind))
    t.eq(ses.getSessionInfo().ulDeviceError, int(kind),
         "ulDeviceError is %s" % kind)
    t.eq(delta(b, a, UNWRAP), RETRIES + 1,
         "after exactly retries + 1 = %d requests" % (RETRIES + 1))
    t.ok(el < DEADLINE + 0.5, "within the deadline (%.2f s)" % el)
    works_again("%s burst" % kind)

fault("503", retry_after=1, count=1)
rv, el, b, a = timed()
t.ok(rv == 0 and el >= 1.0, "503 with Retry-After: 1 is honoured (%.2f s)"
     % el)

# ---- transport faults -------------------------------------------------------
fault("reset", count=1)
rv, el, b, a = timed()
t.eq(rv, 0, "a reset connection is retried: the unwrap succeeds")
t.ok(delta(b, a, UNWRAP, 0) == 1 and delta(b, a, UNWRAP, 200) == 1,
     "one reset request, then one 200", a["by_route_status"].get(UNWRAP))

fault("reset", count=RETRIES + 3)
rv, el, b, a = timed()
t.eq(rv, P.CKR_DEVICE_ERROR, "resets on every retry: CKR_DEVICE_ERROR")
t.eq(ses.getSessionInfo().ulDeviceError, 0, "ulDeviceError 0: no HTTP answer")
# libcurl itself resends once when a kept-alive connection dies before any
# answer, so the first attempt may count twice.
n = delta(b, a, UNWRAP)
t.ok(RETRIES + 1 <= n <= RETRIES + 2, "after retries + 1 attempts (%d "
     "requests)" % n)
t.ok(el < DEADLINE + 0.5, "within the deadline (%.2f s)" % el)
works_again("reset")

fault("hang", hang_ms=15000, count=10)
rv, el, b, a = timed()
t.eq(rv, P.CKR_DEVICE_ERROR, "a vault that hangs: CKR_DEVICE_ERROR")
t.ok(TIMEOUT - 0.2 <= el <= DEADLINE + 1.0,
     "within the deadline plus a little (%.2f s, deadline %d s)"
     % (el, DEADLINE))
t.ok(1 <= delta(b, a, UNWRAP) <= RETRIES + 1,
     "each request timed out after `timeout` (%d requests)" %
     delta(b, a, UNWRAP))
works_again("hang")

# A short deadline cuts a hung request short, whatever the retries.
sl = s.session("slow")
spriv = find(sl, P.CKO_PRIVATE_KEY, "kek")[0]
fault("hang", hang_ms=15000, count=10)
t0 = time.monotonic()
rv = unwrap(sl, spriv, pk)
el = time.monotonic() - t0
t.ok(rv == P.CKR_DEVICE_ERROR and 0.9 <= el <= 2.0 + 0.7,
     "deadline = 2 with retries = 4: CKR_DEVICE_ERROR after %.2f s" % el)
emu.admin("DELETE", "faults")

# Six threads of a fresh process need a token while Entra hangs: they wait
# for one another's fetch, but each call still ends within its deadline.
fault("hang", match="login:token", hang_ms=4000, count=100)
client = os.path.join(os.environ.get("top_builddir", "."), "tests",
                      "integration", "kv-unwrap")
module = os.environ.get("CMKP11_MODULE") or os.path.join(
    os.environ.get("top_builddir", "."), ".libs", "cmkp11.so")
t0 = time.monotonic()
p = subprocess.run([client, module, "slow", "kek", "6", "1"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   timeout=60)
el = time.monotonic() - t0
t.ok(p.returncode == 1 and "unwraps=6 failures=6" in p.stdout,
     "no token: every thread's call fails", p.stdout + p.stderr)
# Each thread makes two calls (it looks for the public key, then the
# private key), each with a deadline of 2 s.
t.ok(el < 2 * 2 + 1.5, "six threads waiting for a token from a hung Entra "
     "end each call within its deadline of 2 s (%.2f s for two calls)" % el)
emu.admin("DELETE", "faults")

# ---- an unreachable vault ---------------------------------------------------
nses = s.session("nothere")
t0 = time.monotonic()
rv = ckr(find, nses, P.CKO_PRIVATE_KEY, "kek")
el = time.monotonic() - t0
t.eq(rv, P.CKR_DEVICE_ERROR, "a vault nobody answers for: CKR_DEVICE_ERROR")
t.ok(el < DEADLINE, "within the deadline (%.2f s)" % el)
t.eq(nses.getSessionInfo().ulDeviceError, 0, "ulDeviceError 0: no answer")
t.ok("unreachable" in s.log_text(), "the log says the vault is unreachable")

# ---- tokens expire in the middle of a run ----------------------------------
emu.admin("POST", "tokens/expire", {"identity": "app"})
rv, el, b, a = timed()
t.eq(rv, 0, "after the vault expired every token, the next unwrap works")
t.ok(delta(b, a, UNWRAP, 401) == 1 and delta(b, a, UNWRAP, 200) == 1,
     "one 401 for the old token, then one 200", a["by_route_status"].get(UNWRAP))
t.eq(delta(b, a, "login:token", 200), 1, "exactly one new token was fetched")
rv, el, b, a = timed()
t.ok(rv == 0 and delta(b, a, "login:token") == 0,
     "the new token is cached for the next call")

# ---- the identity endpoint fails while a new token is needed -------------
emu.admin("POST", "tokens/expire", {"identity": "app"})
fault("503", match="login:token", count=1)
rv, el, b, a = timed()
t.eq(rv, 0, "tokens expired and Entra answers 503 once: the unwrap works")
t.ok(delta(b, a, "login:token", 503) == 1 and
     delta(b, a, "login:token", 200) == 1,
     "the token request was retried once", a["by_route_status"].get(
         "login:token"))
emu.admin("POST", "tokens/expire", {"identity": "app"})
fault("500", match="login:token", count=100)
rv, el, b, a = timed()
t.eq(rv, P.CKR_DEVICE_ERROR, "Entra keeps failing: CKR_DEVICE_ERROR")
t.eq(ses.getSessionInfo().ulDeviceError, 500,
     "ulDeviceError is the identity endpoint's 500")
t.eq(delta(b, a, "login:token"), RETRIES + 1,
     "after retries + 1 token requests")
t.ok(el < DEADLINE + 0.5, "within the deadline (%.2f s)" % el)
# The cached token the vault expired is tried first, refused, replaced.
works_again("Entra failing", 2)
emu.admin("POST", "tokens/expire", {"identity": "app"})
fault("status", match="login:token", status=400, code="invalid_request",
      count=1)
rv, el, b, a = timed()
t.ok(rv == P.CKR_DEVICE_ERROR and delta(b, a, "login:token") == 1,
     "a 400 from Entra is not retried")
works_again("Entra refusing", 2)

# ---- access revoked and restored ------------------------------------------
emu.admin("POST", "identities/app/revoke", {"vault": "kvemu"})
rv, el, b, a = timed()
t.eq(rv, P.CKR_KEY_FUNCTION_NOT_PERMITTED, "access revoked: "
     "CKR_KEY_FUNCTION_NOT_PERMITTED")
t.eq(ses.getSessionInfo().ulDeviceError, 403, "ulDeviceError is 403")
t.eq(delta(b, a, UNWRAP), 1, "a 403 is not retried")
emu.admin("POST", "identities/app/restore", {"vault": "kvemu"})
rv, el, b, a = timed()
t.eq(rv, 0, "access restored: the unwrap works, without a restart")

# ---- a key disabled, then enabled again -------------------------------------
dpriv = find(ses, P.CKO_PRIVATE_KEY, "dis")[0]
dpk = public_key(ses, find(ses, P.CKO_PUBLIC_KEY, "dis")[0])
dver = bytes(ses.getAttributeValue(dpriv, [CKA_CMK_VERSION])[0]).decode()
t.eq(unwrap(ses, dpriv, dpk), 0, "key dis unwraps")
emu.admin("PATCH", "vaults/kvemu/keys/dis", {"enabled": False})
t.eq(unwrap(ses, dpriv, dpk), P.CKR_KEY_FUNCTION_NOT_PERMITTED,
     "disabled: CKR_KEY_FUNCTION_NOT_PERMITTED")
time.sleep(1.1)  # refresh-interval = 1
t.eq(len(find(ses, P.CKO_PRIVATE_KEY, "dis")), 0,
     "after a refresh no version of dis is current")
t.eq(len(find(ses, P.CKO_PRIVATE_KEY, "dis@" + dver)), 1,
     "the disabled version stays visible as dis@VERSION")
t.eq(bool(ses.getAttributeValue(dpriv, [P.CKA_UNWRAP])[0]), False,
     "with CKA_UNWRAP false")
emu.admin("PATCH", "vaults/kvemu/keys/dis", {"enabled": True})
time.sleep(1.1)
again = find(ses, P.CKO_PRIVATE_KEY, "dis")
t.eq([o.value() for o in again], [dpriv.value()], "enabled again: after a refresh dis is current, the "
     "same handle")
t.eq(bool(ses.getAttributeValue(dpriv, [P.CKA_UNWRAP])[0]), True,
     "with CKA_UNWRAP true again")
t.eq(unwrap(ses, dpriv, dpk), 0, "and it unwraps again")

# ---- a key deleted, then recovered ----------------------------------------
xpriv = find(ses, P.CKO_PRIVATE_KEY, "del")[0]
xpk = public_key(ses, find(ses, P.CKO_PUBLIC_KEY, "del")[0])
emu.admin("DELETE", "vaults/kvemu/keys/del")
t.eq(unwrap(ses, xpriv, xpk), P.CKR_KEY_HANDLE_INVALID,
     "deleted: CKR_KEY_HANDLE_INVALID")
t.eq(ses.getSessionInfo().ulDeviceError, 404, "ulDeviceError is 404")
time.sleep(1.1)
t.eq(len(find(ses, P.CKO_PRIVATE_KEY, "del")), 0,
     "after a refresh the deleted key is gone")
st, _, _ = emu.vault("POST", "/deletedkeys/del/recover")
t.eq(st, 200, "the key is recovered through the REST API")
time.sleep(1.1)
back = find(ses, P.CKO_PRIVATE_KEY, "del")
t.eq(len(back), 1, "after a refresh the recovered key is back")
t.eq(unwrap(ses, back[0], xpk) if back else None, 0,
     "and unwraps again, without a restart")

# ---- the circuit breaker ----------------------------------------------------
# 503 with Retry-After: 0, so each failing call is quick; five calls in a
# row that find the vault unavailable open the circuit.
fault("503", retry_after=0, count=1000)
b = s.counters()
rvs = [unwrap(ses, priv, pk) for _ in range(5)]
a = s.counters()
t.eq(rvs, [P.CKR_DEVICE_ERROR] * 5, "five calls to an unavailable vault fail")
t.eq(delta(b, a, UNWRAP), 5 * (RETRIES + 1), "each after retries + 1 requests")
rv, el, b, a = timed()
t.eq(rv, P.CKR_DEVICE_ERROR, "the circuit is open: the next call fails")
t.ok(el < 0.2, "fast, far within the deadline (%.3f s)" % el)
t.eq(delta(b, a, UNWRAP), 0, "and sends nothing to the vault")
t.ok("failing fast" in s.log_text(), "the log says the circuit opened")
emu.admin("DELETE", "faults")
rv, el, b, a = timed()
t.ok(rv == P.CKR_DEVICE_ERROR and delta(b, a, UNWRAP) == 0,
     "still open while the open period lasts, though the vault is back")
time.sleep(5.1)
rv, el, b, a = timed()
t.eq(rv, 0, "after the open period a probe goes through and works")
t.eq(delta(b, a, UNWRAP), 1, "one request")
rv, el, b, a = timed()
t.eq(rv, 0, "and the circuit is closed again")
s.lib = None
