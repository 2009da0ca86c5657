#!/usr/bin/python3
"""PyKCS11 on cmkp11 (hsm back end): the envelope job end to end.

A data key is sealed outside the module (python3-cryptography: AES-GCM
data, RSA-OAEP wrap with the public key read from the token), then
unwrapped through the module into a sensitive, non-extractable AES session
key that decrypts the data with CKM_AES_GCM. The reverse: a key made in the
token encrypts and is wrapped through the module, and cryptography alone
decrypts with the unwrapped bytes. Both OAEP SHA-1 (the lower token's own)
and SHA-256 (done by cmkp11 over raw RSA). TAP output.
"""
import os
import shutil
import subprocess
import sys
import tempfile

TESTS = 0
FAILED = 0


def ok(cond, what):
    global TESTS, FAILED
    TESTS += 1
    if not cond:
        FAILED += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (TESTS, what))
    sys.stdout.flush()


def skip_all(why):
    print("1..0 # SKIP " + why)
    sys.exit(77)


try:
    import PyKCS11
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as e:
    skip_all("python3-pykcs11 or python3-cryptography is missing: %s" % e)

SRC = os.environ.get("top_srcdir", ".")
MODULE = os.environ.get("CMKP11_MODULE", "./.libs/cmkp11.so")
PIN = "1234"
AAD = b"cmkp11 envelope header"


def setup():
    tmp = tempfile.mkdtemp(prefix="tmp-pykcs11-", dir=os.getcwd())
    r = subprocess.run(["sh", os.path.join(SRC, "tests/softhsm-init.sh"),
                        os.path.join(tmp, "softhsm")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode == 77:
        shutil.rmtree(tmp)
        skip_all(r.stdout.decode(errors="replace").strip())
    if r.returncode != 0:
        print("Bail out! softhsm-init.sh failed")
        sys.exit(99)
    os.environ["SOFTHSM2_CONF"] = os.path.join(tmp, "softhsm/softhsm2.conf")
    conf = os.path.join(tmp, "cmkp11.conf")
    with open(conf, "w") as f:
        f.write("[cmkp11]\nlog-level = error\n\n[token local]\n"
                "backend = hsm\nmodule = /usr/lib/softhsm/libsofthsm2.so\n"
                "token-label = cmk\n")
    os.chmod(conf, 0o600)
    os.environ["CMKP11_CONF"] = conf
    return tmp


def oaep_mech(sha256):
    if sha256:
        return PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA256,
                                        PyKCS11.CKG_MGF1_SHA256)
    return PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA_1, PyKCS11.CKG_MGF1_SHA1)


def oaep_local(sha256):
    h = hashes.SHA256() if sha256 else hashes.SHA1()
    return padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h,
                        label=None)


def gcm(iv):
    return PyKCS11.AES_GCM_Mechanism(iv, AAD, 128)


def find(s, cls, label):
    objs = s.findObjects([(PyKCS11.CKA_CLASS, cls),
                          (PyKCS11.CKA_LABEL, label)])
    return objs[0] if len(objs) == 1 else None


def attr(s, o, a):
    return s.getAttributeValue(o, [a])[0]


def unwrap_template():
    return [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
        (PyKCS11.CKA_TOKEN, False),
        (PyKCS11.CKA_SENSITIVE, True),
        (PyKCS11.CKA_EXTRACTABLE, False),
        (PyKCS11.CKA_ENCRYPT, True),
        (PyKCS11.CKA_DECRYPT, True),
    ]


def main():
    tmp = setup()
    try:
        run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("1..%d" % TESTS)
    return 1 if FAILED else 0


def run():
    lib = PyKCS11.PyKCS11Lib()
    lib.load(MODULE)
    slots = [sl for sl in lib.getSlotList(tokenPresent=True)
             if lib.getTokenInfo(sl).label.strip() == "local"]
    ok(len(slots) == 1, "the token local is there")
    s = lib.openSession(slots[0], PyKCS11.CKF_SERIAL_SESSION |
                        PyKCS11.CKF_RW_SESSION)
    s.login(PIN)
    pub = find(s, PyKCS11.CKO_PUBLIC_KEY, "kek")
    priv = find(s, PyKCS11.CKO_PRIVATE_KEY, "kek")
    ok(pub is not None and priv is not None, "the key pair kek")
    spki = bytes(attr(s, pub, PyKCS11.CKA_PUBLIC_KEY_INFO))
    pk = serialization.load_der_public_key(spki)
    ok(pk.key_size == 2048, "CKA_PUBLIC_KEY_INFO gives cryptography the key")

    for sha256 in (False, True):
        name = "OAEP-SHA256" if sha256 else "OAEP-SHA1"
        # Sealed outside the module.
        dek = AESGCM.generate_key(bit_length=256)
        iv = os.urandom(12)
        data = os.urandom(1000) + b"the customer's data"
        sealed = AESGCM(dek).encrypt(iv, data, AAD)
        wrapped = pk.encrypt(dek, oaep_local(sha256))
        # Opened through it.
        try:
            k = s.unwrapKey(priv, wrapped, unwrap_template(),
                            oaep_mech(sha256))
        except PyKCS11.PyKCS11Error as e:
            k = None
            print("# unwrap: %s" % e)
        ok(k is not None, "%s: C_UnwrapKey of a key wrapped by cryptography"
           % name)
        if k is None:
            continue
        ok(attr(s, k, PyKCS11.CKA_SENSITIVE) is True and
           attr(s, k, PyKCS11.CKA_EXTRACTABLE) is False,
           "%s: the session key is sensitive and not extractable" % name)
        ok(attr(s, k, PyKCS11.CKA_TOKEN) is False,
           "%s: and a session object" % name)
        try:
            # PyKCS11 gives None for CKR_ATTRIBUTE_SENSITIVE.
            leaked = s.getAttributeValue(k, [PyKCS11.CKA_VALUE])[0]
        except PyKCS11.PyKCS11Error:
            leaked = None
        leaked = leaked is not None
        ok(not leaked, "%s: its value cannot be read" % name)
        plain = bytes(s.decrypt(k, sealed, gcm(iv)))
        ok(plain == data, "%s: AES-GCM through the module opens data "
           "sealed by cryptography" % name)
        bad = bytearray(sealed)
        bad[5] ^= 1
        try:
            s.decrypt(k, bytes(bad), gcm(iv))
            refused = False
        except PyKCS11.PyKCS11Error:
            refused = True
        ok(refused, "%s: altered data is refused" % name)
        # The reverse: sealed through the module, opened outside.
        iv2 = os.urandom(12)
        sealed2 = bytes(s.encrypt(k, data, gcm(iv2)))
        ok(AESGCM(dek).decrypt(iv2, sealed2, AAD) == data,
           "%s: data sealed through the module opens with cryptography"
           % name)
        s.destroyObject(k)

        # A data key made in the token, wrapped through the module.
        gen = s.generateKey([
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
            (PyKCS11.CKA_VALUE_LEN, 32),
            (PyKCS11.CKA_TOKEN, False),
            (PyKCS11.CKA_SENSITIVE, True),
            (PyKCS11.CKA_EXTRACTABLE, True),
            (PyKCS11.CKA_ENCRYPT, True),
            (PyKCS11.CKA_DECRYPT, True),
        ], PyKCS11.MechanismAESGENERATEKEY)
        iv3 = os.urandom(12)
        sealed3 = bytes(s.encrypt(gen, data, gcm(iv3)))
        blob = bytes(s.wrapKey(pub, gen, oaep_mech(sha256)))
        s.destroyObject(gen)
        # cryptography has no private key; the module unwraps, as a
        # reader elsewhere would, into a non-extractable key.
        k2 = s.unwrapKey(priv, blob, unwrap_template(), oaep_mech(sha256))
        ok(bytes(s.decrypt(k2, sealed3, gcm(iv3))) == data,
           "%s: a token-made data key, wrapped and unwrapped through the "
           "module, opens its data" % name)
        s.destroyObject(k2)
    s.logout()
    s.closeSession()


if __name__ == "__main__":
    sys.exit(main())
