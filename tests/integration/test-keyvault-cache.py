#!/usr/bin/python3
"""The unwrap cache (unwrap-cache = SECONDS) for throttled vaults: 1,000
unwraps of the same blob cost one request to the vault; 8 threads
unwrapping one blob at once are coalesced into one request; revocation
(access removed, or the key disabled) stops it serving that key within
refresh-interval, and restoring access restores service."""
import os
import subprocess
import time

from kvtest import (Tap, PyKCS11, find, ckr, aes_template, OAEP256,
                    APP_SECRET, KvSetup)

P = PyKCS11
t = Tap()
s = KvSetup()
REFRESH = 2
s.write_conf([s.token("kv", unwrap_cache=300)], refresh=REFRESH)
s.create_key("kek")
s.load()
ses = s.session("kv")
priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
pub = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
dek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                      [(P.CKA_VALUE_LEN, 32)])
value = bytes(ses.getAttributeValue(dek, [P.CKA_VALUE])[0])
blob = bytes(ses.wrapKey(pub, dek, OAEP256))


def unwrap_requests():
    c = s.emu.admin("GET", "counters")
    return c.get("by_route", {}).get("kvemu:unwrapKey", 0)


# Coalescing: 8 threads ask for the same unwrap at once, on a slow vault.
builddir = os.environ.get("top_builddir", ".")
client = os.path.join(builddir, "tests", "integration", "kv-unwrap")
module = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
s.emu.admin("PUT", "latency", {"vault_ms": 300})
before = unwrap_requests()
p = subprocess.run([client, module, "kv", "kek", "8", "3", "same"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   timeout=120)
s.emu.admin("PUT", "latency", {"vault_ms": 0})
t.ok(p.returncode == 0 and "failures=0" in p.stdout,
     "8 threads x 3 unwraps of one blob, all checked (%s)" % p.stdout.strip(),
     p.stderr)
t.eq(unwrap_requests() - before, 1,
     "concurrent identical unwraps were coalesced into one request")

before = unwrap_requests()
same = 0
for i in range(1000):
    h = ses.unwrapKey(priv, blob, aes_template(sensitive=False, extractable=True),
                      OAEP256)
    if bytes(ses.getAttributeValue(h, [P.CKA_VALUE])[0]) == value:
        same += 1
    ses.destroyObject(h)
t.eq(same, 1000, "1,000 unwraps of the same blob give the right key")
t.eq(unwrap_requests() - before, 1, "and cost one unwrapkey request")

other = bytes(ses.wrapKey(pub, dek, OAEP256))  # OAEP is randomised
ses.unwrapKey(priv, other, aes_template(), OAEP256)
t.eq(unwrap_requests() - before, 2, "another blob is another request")
bad = bytearray(blob)
bad[7] ^= 1
t.eq(ckr(ses.unwrapKey, priv, bytes(bad), aes_template(), OAEP256),
     P.CKR_WRAPPED_KEY_INVALID, "a corrupted blob still fails")
t.eq(ckr(ses.unwrapKey, priv, bytes(bad), aes_template(), OAEP256),
     P.CKR_WRAPPED_KEY_INVALID, "failures are not cached")
t.eq(unwrap_requests() - before, 4, "each failure went to the vault")

# Revocation: access removed.
s.emu.admin("POST", "identities/app/revoke", {})
time.sleep(REFRESH + 0.2)
t.eq(ckr(ses.unwrapKey, priv, blob, aes_template(), OAEP256),
     P.CKR_KEY_FUNCTION_NOT_PERMITTED,
     "access revoked: within refresh-interval the cached blob fails too")
s.emu.admin("POST", "identities/app/restore", {})
t.eq(ckr(ses.unwrapKey, priv, blob, aes_template(), OAEP256), 0,
     "access restored: service resumes without a restart")
n = unwrap_requests()
t.eq(ckr(ses.unwrapKey, priv, blob, aes_template(), OAEP256), 0, "cached again")
t.eq(unwrap_requests(), n, "the next unwrap is served from the cache")

# Revocation: the key disabled.
s.emu.admin("PATCH", "vaults/kvemu/keys/kek", {"enabled": False})
time.sleep(REFRESH + 0.2)
t.eq(ckr(ses.unwrapKey, priv, blob, aes_template(), OAEP256),
     P.CKR_KEY_FUNCTION_NOT_PERMITTED, "key disabled: the cache stops serving it")
dk2 = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                      [(P.CKA_VALUE_LEN, 32)])
t.eq(ckr(ses.wrapKey, pub, dk2, OAEP256), P.CKR_KEY_FUNCTION_NOT_PERMITTED,
     "and local wraps under it stop too")
s.emu.admin("PATCH", "vaults/kvemu/keys/kek", {"enabled": True})
time.sleep(REFRESH + 0.2)
t.eq(ckr(ses.unwrapKey, priv, blob, aes_template(), OAEP256), 0,
     "re-enabled: unwrap works again")
log = s.log_text()
t.ok("can no longer be used" in log, "the log says the key can no longer be used")
t.ok(value.hex() not in log and APP_SECRET not in log,
     "the log holds neither the key nor the secret")
