#!/usr/bin/python3
"""offline-grace on an hsm token (docs/hsm.md, "Outages").

The lower token is SoftHSM behind tests/p11-fault.c, which makes every
token call fail with the code written in a control file, as a network HSM
whose link drops would. Through PKCS#11 (PyKCS11 on the module,
refresh-interval = 2):

- the lower token failing with CKR_DEVICE_ERROR, then CKR_TOKEN_NOT_PRESENT,
  for 3 x refresh-interval with offline-grace = 8: 0 failed encryptions and
  verifications with the cached public key, audited "offline":true; each
  decryption fails at once with the lower token's error (CKR_DEVICE_ERROR,
  CKR_DEVICE_REMOVED) and its code in ulDeviceError; a search still finds
  the keys; a wrap of a key the lower token holds fails (it needs the
  token); offline-grace = 0 refuses encryption as before; offline-grace = 2
  stops the key with CKR_DEVICE_ERROR and a log line;
- the log says when the lower token fails and when it answers again;
- revocation evidence from a reachable token still applies within
  refresh-interval with offline-grace set: usage flags cleared
  (CKR_KEY_FUNCTION_NOT_PERMITTED), the private key deleted
  (CKR_KEY_HANDLE_INVALID), and neither is undone by a later outage; flags
  cleared during an outage apply at the first call after it.

Waits are lower bounds (an interval must have passed); the time limits on
failing calls are loose behaviour bounds. TAP output.
"""
import os
import re
import shutil
import sys
import time

TESTS = 0
FAILED = 0
REFRESH, GRACE, SHORT = 2, 8, 2


def ok(cond, what, detail=None):
    global TESTS, FAILED
    TESTS += 1
    if not cond:
        FAILED += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (TESTS, what))
    if not cond and detail is not None:
        print("# " + str(detail).replace("\n", "\n# "))
    sys.stdout.flush()


try:
    import PyKCS11
except ImportError as e:
    print("1..0 # SKIP python3-pykcs11 is missing: %s" % e)
    sys.exit(77)

P = PyKCS11
SRC = os.environ.get("top_srcdir", ".")
BUILD = os.environ.get("top_builddir", ".")
MODULE = os.environ.get("CMKP11_MODULE", "./.libs/cmkp11.so")
FAULT_LIB = os.path.join(BUILD, ".libs/p11-fault.so")

from hsmtest import softhsm_dir, use_conf, lower, PIN, SOFTHSM  # noqa: E402
from hsmtest import rv_of, rv_name as name  # noqa: E402
from kvtest import hsm_token, write_private  # noqa: E402
OAEP = P.RSAOAEPMechanism(P.CKM_SHA_1, P.CKG_MGF1_SHA1)

def setup():
    tmp = softhsm_dir("tmp-hsm-grace-")
    os.environ["CMKP11_FAULT_MODULE"] = SOFTHSM
    os.environ["CMKP11_FAULT_FILE"] = os.path.join(tmp, "fault")
    pin = write_private(os.path.join(tmp, "pin"), PIN)
    # The tokens reach SoftHSM through the fault library (tests/p11-fault.c).
    use_conf(tmp, [hsm_token(name, module=FAULT_LIB, pin_file=pin,
                             offline_grace=grace)
                   for name, grace in (("local", GRACE), ("closed", 0),
                                       ("short", SHORT))],
             log_level="info", log_file=os.path.join(tmp, "log"),
             audit_log=os.path.join(tmp, "audit"), refresh_interval=REFRESH)
    return tmp


def fault(tmp, code):
    with open(os.path.join(tmp, "fault"), "w") as f:
        f.write(code)


class Tok:
    def __init__(self, lib, label):
        slot = [sl for sl in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(sl).label.strip() == label][0]
        self.s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
        self.pub = self.find(P.CKO_PUBLIC_KEY, b"\x02")
        self.priv = self.find(P.CKO_PRIVATE_KEY, b"\x02")
        self.old = self.find(P.CKO_PUBLIC_KEY, b"\x01")
        self.dek = self.s.generateKey(
            [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
             (P.CKA_VALUE_LEN, 32), (P.CKA_TOKEN, False),
             (P.CKA_EXTRACTABLE, True)], P.Mechanism(P.CKM_AES_KEY_GEN))
        self.blob = bytes(self.s.encrypt(self.pub, b"\x42" * 32, OAEP))
        self.sig = bytes(self.s.sign(self.priv, b"data",
                                     P.Mechanism(P.CKM_SHA256_RSA_PKCS)))

    def find(self, cls, cid):
        objs = self.s.findObjects([(P.CKA_CLASS, cls), (P.CKA_ID, cid)])
        return objs[0] if len(objs) == 1 else None

    def encrypt(self, key=None):
        return rv_of(lambda: self.s.encrypt(key or self.pub, b"\x42" * 32,
                                            OAEP))

    def verify(self):
        try:
            good = self.s.verify(self.pub, b"data", self.sig,
                                 P.Mechanism(P.CKM_SHA256_RSA_PKCS))
            return P.CKR_OK if good else P.CKR_SIGNATURE_INVALID
        except P.PyKCS11Error as e:
            return e.value

    def decrypt(self):
        return rv_of(lambda: self.s.decrypt(self.priv, self.blob, OAEP))

    def wrap(self):
        return rv_of(lambda: self.s.wrapKey(self.pub, self.dek, OAEP))

    def device_error(self):
        return self.s.getSessionInfo().ulDeviceError


def outage(tmp, local, closed, short, code, mapped, first):
    fault(tmp, code)
    start = time.monotonic()
    failed, slow, wrong = [], [], set()
    ops = 0
    while time.monotonic() - start < 3 * REFRESH + 0.2:
        for f in (local.encrypt, local.verify):
            rv = f()
            ops += 1
            if rv != P.CKR_OK:
                failed.append((f.__name__, round(time.monotonic() - start, 1),
                               name(rv)))
        t0 = time.monotonic()
        rv = local.decrypt()
        el = time.monotonic() - t0
        if rv != mapped:
            wrong.add(name(rv))
        if el >= 2.0:
            slow.append(round(el, 2))
        time.sleep(0.05)
    ok(failed == [], "%s for 3 x refresh-interval: 0 of %d encryptions and "
       "verifications with the cached public key failed" % (code, ops),
       failed[:5])
    ok(wrong == set(), "%s: every decryption fails with %s" %
       (code, name(mapped)), wrong)
    ok(slow == [], "%s: each at once (within 2 s)" % code, slow)
    ok(local.device_error() == {"CKR_DEVICE_ERROR": P.CKR_DEVICE_ERROR,
                                "CKR_TOKEN_NOT_PRESENT":
                                P.CKR_TOKEN_NOT_PRESENT}[code],
       "%s: ulDeviceError holds the lower token's code" % code,
       hex(local.device_error()))
    rv = local.wrap()
    ok(rv == mapped, "%s: a wrap of a key the lower token holds fails with "
       "%s" % (code, name(mapped)), name(rv))
    found = local.find(P.CKO_PUBLIC_KEY, b"\x02")
    ok(found is not None and local.encrypt(found) == P.CKR_OK,
       "%s: a search still finds the key, and it encrypts" % code)
    if first:
        rv = closed.encrypt()
        ok(rv == P.CKR_DEVICE_ERROR, "%s: offline-grace = 0 refuses "
           "encryption as before" % code, name(rv))
        rv = short.encrypt()
        ok(rv == P.CKR_DEVICE_ERROR, "%s: past offline-grace = %d the key "
           "stops" % (code, SHORT), name(rv))
    fault(tmp, "")
    rv = [local.encrypt(), local.decrypt(), local.wrap(), closed.encrypt(),
          short.encrypt()]
    ok(rv == [0] * 5, "%s ends: every token works again at once" % code,
       [name(r) for r in rv])


def run(tmp):
    lib = P.PyKCS11Lib()
    lib.load(MODULE)
    local, closed, short = (Tok(lib, n) for n in ("local", "closed", "short"))
    ok(local.pub is not None and local.priv is not None and
       local.old is not None, "the versions of kek on the token")
    ok([t.encrypt() for t in (local, closed, short)] == [0, 0, 0] and
       local.decrypt() == 0, "every token encrypts and decrypts")

    outage(tmp, local, closed, short, "CKR_DEVICE_ERROR", P.CKR_DEVICE_ERROR,
           True)
    outage(tmp, local, closed, short, "CKR_TOKEN_NOT_PRESENT",
           P.CKR_DEVICE_REMOVED, False)

    log = open(os.path.join(tmp, "log")).read()
    ok(re.search(r"token local: the lower token fails \(CKR_DEVICE_ERROR "
                 r"from C_\w+\); versions whose usage flags were read within "
                 r"refresh-interval \+ offline-grace \(8 s\) keep serving "
                 r"local encryption", log) and
       re.search(r"token local: the lower token fails \(CKR_TOKEN_NOT_PRESENT"
                 r" from C_\w+\)", log),
       "the log says the lower token fails, and with what", log[-1500:])
    ok("token closed: the lower token fails (CKR_DEVICE_ERROR from "
       "C_GetAttributeValue); offline-grace = 0: its keys stop" in log,
       "offline-grace = 0: the log says the keys stop")
    ok("token local: the lower token answers again after " in log,
       "and when it answers again")
    ok("token short: key kek stopped: the lower token has failed "
       "(CKR_DEVICE_ERROR) past offline-grace (2 s after refresh-interval"
       in log, "the log says why the key stopped")
    with open(os.path.join(tmp, "audit")) as f:
        lines = f.read().splitlines()
    off = [l for l in lines if '"offline":true' in l]
    ok(len(off) > 0 and all('"token":"local"' in l and
                            '"operation":"encrypt"' in l and
                            '"result":"CKR_OK"' in l for l in off),
       "the audit records of encryptions served during the outage say "
       "offline, and only theirs", "\n".join(off[:3]))
    dec = [l for l in lines if '"operation":"decrypt"' in l and
           '"result":"CKR_DEVICE_ERROR"' in l]
    ok(len(dec) > 0 and not any('"offline"' in l for l in dec),
       "failed decryptions are audited with their code, not as offline")

    # Revocation evidence from a reachable token, offline-grace set.
    lower("off", "02")
    time.sleep(REFRESH + 0.1)
    rv = local.encrypt()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED, "usage flags cleared: "
       "refused after refresh-interval, offline-grace or not", name(rv))
    fault(tmp, "CKR_DEVICE_ERROR")
    time.sleep(REFRESH + 0.1)
    rv = local.encrypt()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED, "and an outage after it "
       "does not undo it", name(rv))
    fault(tmp, "")
    lower("enable", "02")
    time.sleep(REFRESH + 0.1)
    ok(local.encrypt() == P.CKR_OK, "enabled again: encrypts")

    # Cleared during an outage: served until the token answers, then
    # refused at the first call.
    fault(tmp, "CKR_DEVICE_ERROR")
    lower("off", "02")
    time.sleep(REFRESH + 0.1)
    rv = local.encrypt()
    ok(rv == P.CKR_OK, "flags cleared during an outage cannot be seen: "
       "served offline", name(rv))
    fault(tmp, "")
    rv = local.encrypt()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED, "the token back: refused at "
       "the first call", name(rv))
    lower("enable", "02")

    # The private key deleted: refused within refresh-interval, and an
    # outage does not bring it back.
    ok(local.encrypt(local.old) == P.CKR_OK, "kek@01 encrypts")
    lower("delete", "01")
    time.sleep(REFRESH + 0.1)
    rv = local.encrypt(local.old)
    ok(rv == P.CKR_KEY_HANDLE_INVALID, "kek@01's private key deleted: "
       "refused after refresh-interval", name(rv))
    fault(tmp, "CKR_DEVICE_ERROR")
    rv = local.encrypt(local.old)
    ok(rv == P.CKR_DEVICE_ERROR, "then an outage: still refused, with the "
       "lower token's error", name(rv))
    fault(tmp, "")
    for t in (local, closed, short):
        t.s.closeSession()


def main():
    tmp = setup()
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("1..%d" % TESTS)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
