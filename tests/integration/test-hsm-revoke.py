#!/usr/bin/python3
"""Revocation of local public operations on an hsm token (docs/hsm.md,
"Revocation").

cmkp11 wraps and encrypts with the public key itself and keeps the private
key's usage flags for refresh-interval. Through PKCS#11 (PyKCS11 on the
module, refresh-interval = 3) while another process changes the lower
SoftHSM token directly, as an administrator would:

- a version disabled in the lower token (CKA_UNWRAP and CKA_DECRYPT
  cleared on its private key) still wraps and encrypts within the interval,
  and is refused with CKR_KEY_FUNCTION_NOT_PERMITTED once the interval has
  passed; with CKA_DECRYPT alone cleared it no longer encrypts but still
  wraps a key the lower token holds; enabled again, it works again after
  the interval;
- a failure of the lower token with the version (an unwrap it refuses)
  makes the next wrap read the flags at once, without waiting;
- a version whose private key was deleted is refused after the interval.

The waits are lower bounds (the interval must have passed), so load on the
machine cannot make the test fail; only "still wraps within the interval"
needs the few milliseconds between two calls to stay below 3 s. TAP output.
"""
import os
import shutil
import sys
import time

TESTS = 0
FAILED = 0
REFRESH = 3


def ok(cond, what, detail=None):
    global TESTS, FAILED
    TESTS += 1
    if not cond:
        FAILED += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (TESTS, what))
    if not cond and detail is not None:
        print("# " + str(detail))
    sys.stdout.flush()


try:
    import PyKCS11
except ImportError as e:
    print("1..0 # SKIP python3-pykcs11 is missing: %s" % e)
    sys.exit(77)

SRC = os.environ.get("top_srcdir", ".")
MODULE = os.environ.get("CMKP11_MODULE", "./.libs/cmkp11.so")

from hsmtest import softhsm_dir, use_conf, lower, PIN  # noqa: E402
from hsmtest import rv_of, rv_name as name  # noqa: E402
from kvtest import hsm_token  # noqa: E402


def setup():
    tmp = softhsm_dir("tmp-hsm-revoke-")
    use_conf(tmp, [hsm_token("local")], log_level="error",
             refresh_interval=REFRESH)
    return tmp


OAEP = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA_1, PyKCS11.CKG_MGF1_SHA1)


def run():
    P = PyKCS11
    lib = P.PyKCS11Lib()
    lib.load(MODULE)
    slot = [sl for sl in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(sl).label.strip() == "local"][0]
    s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    s.login(PIN)

    def find(cls, cid):
        objs = s.findObjects([(P.CKA_CLASS, cls), (P.CKA_ID, cid)])
        return objs[0] if len(objs) == 1 else None

    pub = find(P.CKO_PUBLIC_KEY, b"\x02")   # kek, the current version
    priv = find(P.CKO_PRIVATE_KEY, b"\x02")
    old = find(P.CKO_PUBLIC_KEY, b"\x01")   # kek@01
    ok(pub is not None and priv is not None and old is not None,
       "the versions of kek (CKA_ID 02 and 01)")
    dek = s.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                         (P.CKA_KEY_TYPE, P.CKK_AES),
                         (P.CKA_VALUE_LEN, 32), (P.CKA_TOKEN, False),
                         (P.CKA_EXTRACTABLE, True)],
                        P.Mechanism(P.CKM_AES_KEY_GEN))

    def wrap(key=pub):
        return rv_of(lambda: s.wrapKey(key, dek, OAEP))

    def encrypt():
        return rv_of(lambda: s.encrypt(pub, b"\x42" * 32, OAEP))

    ok(wrap() == P.CKR_OK and encrypt() == P.CKR_OK,
       "an enabled version wraps and encrypts")

    def wait_interval(since):
        time.sleep(max(0.0, since + REFRESH + 0.1 - time.monotonic()))

    # Disabled: refused after the interval, not before.
    read_at = time.monotonic()
    ok(wrap() == P.CKR_OK, "wrap (usage read or fresh)")
    lower("off", "02")
    changed_at = time.monotonic()
    rv, rv2 = wrap(), encrypt()
    ok(rv == P.CKR_OK and rv2 == P.CKR_OK, "within refresh-interval of the "
       "last read, the disabled version still wraps and encrypts",
       "%s, %s after %.2f s" % (name(rv), name(rv2),
                                time.monotonic() - read_at))
    wait_interval(changed_at)
    rv = wrap()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED, "after refresh-interval, "
       "wrapping with the disabled version is refused", name(rv))
    rv = encrypt()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED, "and encrypting", name(rv))

    # Only CKA_DECRYPT cleared: no encryption; the version is not disabled,
    # and a key the lower token holds still wraps (docs/hsm.md).
    lower("nodecrypt", "02")
    wait_interval(time.monotonic())
    rv = encrypt()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED, "CKA_DECRYPT cleared: "
       "encryption is refused", name(rv))
    rv = wrap()
    ok(rv == P.CKR_OK, "CKA_UNWRAP set: a key the lower token holds wraps",
       name(rv))

    lower("enable", "02")
    wait_interval(time.monotonic())
    rv, rv2 = wrap(), encrypt()
    ok(rv == P.CKR_OK and rv2 == P.CKR_OK, "enabled again: it wraps and "
       "encrypts after refresh-interval", "%s, %s" % (name(rv), name(rv2)))

    # A failure of the lower token with the version: read at once.
    ok(wrap() == P.CKR_OK, "wrap (fresh)")
    lower("off", "02")
    rv = wrap()
    ok(rv == P.CKR_OK, "just disabled: still wraps from the fresh flags",
       name(rv))
    blob = bytes(s.wrapKey(old, dek, OAEP))
    rv = rv_of(lambda: s.unwrapKey(
        priv, blob, [(P.CKA_CLASS, P.CKO_SECRET_KEY),
                     (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, False)],
        OAEP))
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED,
       "the lower token refuses the unwrap", name(rv))
    rv = wrap()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED,
       "after that failure the wrap is refused at once", name(rv))
    rv = encrypt()
    ok(rv == P.CKR_KEY_FUNCTION_NOT_PERMITTED,
       "and encryption too (CKA_DECRYPT cleared)", name(rv))

    # The private key deleted.
    ok(wrap(old) == P.CKR_OK, "kek@01 wraps")
    lower("delete", "01")
    changed_at = time.monotonic()
    wait_interval(changed_at)
    rv = wrap(old)
    ok(rv in (P.CKR_KEY_HANDLE_INVALID, P.CKR_WRAPPING_KEY_HANDLE_INVALID),
       "its private key deleted: after refresh-interval, wrapping with "
       "kek@01 is refused", name(rv))
    s.logout()
    s.closeSession()


def main():
    tmp = setup()
    try:
        run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("1..%d" % TESTS)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
