#!/usr/bin/python3
"""Vault outage length vs operations served and refused, for offline-grace
0 and 900 (docs/performance.md). Not a test: it measures. One client thread
loops (about ten rounds a second) local wraps, local encryptions, cached
unwraps and uncached unwraps through cmkp11 against the emulator while the vault is black-holed (every
vault request hangs) for each outage length. refresh-interval is scaled
down (REFRESH s) so that a run takes minutes; an outage is given in units
of it.

Run from a built tree:
  top_srcdir=$PWD srcdir=$PWD top_builddir=$PWD \\
  CMKP11_MODULE=$PWD/.libs/cmkp11.so /usr/bin/python3 bench/outage.py
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.environ.get("top_srcdir", "."), "tests",
                                "integration"))
from kvtest import KvSetup, PyKCS11, find, ckr, aes_template, OAEP256  # noqa

P = PyKCS11
REFRESH = int(os.environ.get("REFRESH", "4"))
OUTAGES = [float(x) for x in os.environ.get("OUTAGES", "1 3 6").split()]
s = KvSetup.started()
limits = "timeout = 1\ndeadline = 2\nretries = 1\nunwrap-cache = 1\n"
s.write_conf([("g0", s.token_body(extra=limits + "offline-grace = 0\n")),
              ("g900", s.token_body(extra=limits + "offline-grace = 900\n"))],
             refresh=REFRESH)
s.create_key("kek")
s.load()


def run(label, seconds):
    ses = s.session(label)
    priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
    pub = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
    dek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                          [(P.CKA_VALUE_LEN, 32)])
    blob = bytes(ses.wrapKey(pub, dek, OAEP256))
    ses.unwrapKey(priv, blob, aes_template(), OAEP256)
    time.sleep(REFRESH + 0.1)  # the key's information is due for refresh
    s.emu.admin("POST", "faults", {"kind": "hang", "match": "kvemu:*",
                                   "count": 10 ** 7, "hang_ms": 600000})
    served = {"local": 0, "cached": 0, "remote": 0}
    refused = {"local": 0, "cached": 0, "remote": 0}
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            fresh = bytes(ses.wrapKey(pub, dek, OAEP256))  # never cached
        except PyKCS11.PyKCS11Error:
            fresh = blob + b"x"
        for kind, fn, args in (
                ("local", ses.wrapKey, (pub, dek, OAEP256)),
                ("local", ses.encrypt, (pub, b"x" * 16, OAEP256)),
                ("cached", ses.unwrapKey, (priv, blob, aes_template(),
                                           OAEP256)),
                ("remote", ses.unwrapKey,
                 (priv, fresh, aes_template(), OAEP256))):
            rv = ckr(fn, *args)
            (served if rv == 0 else refused)[kind] += 1
        time.sleep(0.1)  # about ten rounds a second when nothing waits
    s.emu.admin("DELETE", "faults")
    time.sleep(5.5)  # the circuit breaker closes
    ses.closeSession()
    return served, refused


print("| outage | offline-grace | local served / refused | cached unwraps "
      "served / refused | uncached unwraps served / refused |")
print("|---|---:|---:|---:|---:|")
for units in OUTAGES:
    for label, grace in (("g0", 0), ("g900", 900)):
        sv, rf = run(label, units * REFRESH)
        print("| %g x refresh-interval | %d | %d / %d | %d / %d | %d / %d |" %
              (units, grace, sv["local"], rf["local"], sv["cached"],
               rf["cached"], sv["remote"], rf["remote"]), flush=True)
