#!/usr/bin/python3
"""Envelope encryption through cmkp11, as a consumer application does it.

    envelope.py seal   MODULE TOKEN KEY PIN IN OUT.wrapped OUT.sealed
    envelope.py unseal MODULE TOKEN KEY PIN IN.wrapped IN.sealed OUT

seal: a fresh AES-256 data key is generated in the token, the file is
encrypted with it (AES-GCM, through the module), and the data key is wrapped
with the customer-managed key (RSA-OAEP-SHA256). unseal: the wrapped key is
unwrapped into the token as a sensitive, non-extractable session key, and
the file is decrypted through the module. Every step is printed.
"""
import os
import sys

import PyKCS11
from PyKCS11 import LowLevel

OAEP_SHA256 = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA256,
                                       PyKCS11.CKG_MGF1_SHA256)


def session(module, token, pin):
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == token:
            s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION |
                                PyKCS11.CKF_RW_SESSION)
            if pin:
                s.login(pin)
            return lib, s
    sys.exit(f"no token {token!r} in {module}")


def find(s, cls, label):
    objs = s.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_LABEL, label)])
    if not objs:
        sys.exit(f"no key {label!r} in the token")
    return objs[0]


def gcm(iv):
    return PyKCS11.AES_GCM_Mechanism(iv, b"cmkp11-envelope", 128)


def seal(module, token, key, pin, src, wrapped_out, sealed_out):
    lib, s = session(module, token, pin)
    kek = find(s, PyKCS11.CKO_PUBLIC_KEY, key)
    print(f"1. generate a fresh AES-256 data key in token {token!r}")
    dek = s.generateKey([
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
        (PyKCS11.CKA_VALUE_LEN, 32),
        (PyKCS11.CKA_TOKEN, False),
        (PyKCS11.CKA_SENSITIVE, True),
        (PyKCS11.CKA_EXTRACTABLE, True),
        (PyKCS11.CKA_ENCRYPT, True),
        (PyKCS11.CKA_DECRYPT, True),
    ], PyKCS11.MechanismAESGENERATEKEY)
    data = open(src, "rb").read()
    iv = os.urandom(12)
    print(f"2. encrypt {src} ({len(data)} bytes) with AES-256-GCM through "
          f"the module")
    ct = bytes(s.encrypt(dek, data, gcm(iv)))
    print(f"3. wrap the data key with CMK {key!r} (RSA-OAEP-SHA256)")
    wrapped = bytes(s.wrapKey(kek, dek, OAEP_SHA256))
    s.destroyObject(dek)
    with open(wrapped_out, "wb") as f:
        f.write(wrapped)
    with open(sealed_out, "wb") as f:
        f.write(iv + ct)
    print(f"4. store the wrapped key ({len(wrapped)} bytes) in {wrapped_out} "
          f"and the data in {sealed_out}")
    s.closeSession()


def unseal(module, token, key, pin, wrapped_in, sealed_in, out):
    lib, s = session(module, token, pin)
    kek = find(s, PyKCS11.CKO_PRIVATE_KEY, key)
    wrapped = open(wrapped_in, "rb").read()
    blob = open(sealed_in, "rb").read()
    print(f"5. unwrap the data key with CMK {key!r} into the token "
          f"(sensitive, not extractable)")
    dek = s.unwrapKey(kek, wrapped, [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
        (PyKCS11.CKA_TOKEN, False),
        (PyKCS11.CKA_SENSITIVE, True),
        (PyKCS11.CKA_EXTRACTABLE, False),
        (PyKCS11.CKA_DECRYPT, True),
    ], OAEP_SHA256)
    print(f"6. decrypt {sealed_in} with AES-256-GCM through the module")
    pt = bytes(s.decrypt(dek, blob[12:], gcm(blob[:12])))
    with open(out, "wb") as f:
        f.write(pt)
    print(f"   wrote {out} ({len(pt)} bytes)")
    s.closeSession()


if __name__ == "__main__":
    if len(sys.argv) != 9 or sys.argv[1] not in ("seal", "unseal"):
        sys.exit(__doc__)
    (seal if sys.argv[1] == "seal" else unseal)(*sys.argv[2:])
