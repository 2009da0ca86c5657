#!/usr/bin/python3
"""A token renewal that fails while the token held is still good: the
module keeps using that token until it expires, as azure-identity does
(_internal/get_token_mixin.py: a failed refresh of a token that has not
expired returns the cached token, and refreshes are not tried again for
DEFAULT_TOKEN_REFRESH_RETRY_DELAY = 30 s). So an identity endpoint that
is down or black-holed does not cut the vault off (where revocation
shows) before the token ends, and a renewal that hangs costs one call in
30 s half its deadline, not every call its whole deadline.

Tokens of 75 s: the module renews them 15 s before the end (80 % of a
short token's life) and stops using them 10 s before it, so the renewal
window is [60 s, 65 s) after the token was issued."""
import time

from kvtest import Tap, KvSetup, PyKCS11, find, ckr, aes_template, OAEP256, \
    count, delta

P = PyKCS11
LIFETIME = 75
t = Tap()
s = KvSetup()
emu = s.emu
s.write_conf([s.token("kv", timeout=2, deadline=4, retries=0, unwrap_cache=0)])
s.create_key("kek")
emu.admin("PUT", "tokens/lifetime", {"seconds": LIFETIME})
s.load()
ses = s.session("kv")
priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
pub = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
issued = time.monotonic()  # the first token came with the search above
dek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                      [(P.CKA_VALUE_LEN, 32)])
blob = bytes(ses.wrapKey(pub, dek, OAEP256))


def unwrap():
    return ckr(ses.unwrapKey, priv, blob, aes_template(), OAEP256)


t.eq(unwrap(), 0, "a remote unwrap with the first token")
t.eq(count(s.counters(), "login:token"), 1, "one token so far")

# The token endpoint black-holed from before the renewal time on.
time.sleep(max(0, issued + 55 - time.monotonic()))
emu.admin("POST", "faults", {"kind": "hang", "match": "login:*",
                             "count": 1000000, "hang_ms": 600000})
time.sleep(max(0, issued + 61 - time.monotonic()))
before = s.counters()
t0 = time.monotonic()
rv = unwrap()
first = time.monotonic() - t0
t.eq(rv, 0, "in the renewal window, the renewal hangs: the unwrap is served "
     "with the token held")
t.ok(first < 4, "within the call's deadline (4 s): the renewal had half "
     "of it", "%.2f s" % first)
rvs = [unwrap() for _ in range(5)]
after = s.counters()
t.eq(rvs, [0] * 5, "five more unwraps served")
t.eq(delta(before, after, "login:token"), 1,
     "one renewal tried, not one a call (the next in 30 s)")
t.eq(delta(before, after, "kvemu:unwrapKey", 200), 6,
     "every unwrap reached the vault")
log = s.log_text()
t.ok("renewing the token (client-secret) for " in log and
     "failed; the current one is used until it expires in " in log and
     "renewal is tried again in 30 s" in log,
     "the log says the renewal failed and how long the token lasts",
     [l for l in log.splitlines() if "renewing" in l][:2])

# Past the token's end: no token, the vault cannot be reached.
time.sleep(max(0, issued + 66 - time.monotonic()))
t.eq(unwrap(), P.CKR_DEVICE_ERROR, "once the token held has expired, with "
     "the token endpoint still down: CKR_DEVICE_ERROR")

emu.admin("DELETE", "faults")
time.sleep(0.2)
rv = unwrap()
if rv != 0:  # the failed call above may have its own hold-off
    time.sleep(1)
    rv = unwrap()
t.eq(rv, 0, "the token endpoint back: a new token, unwraps work")
