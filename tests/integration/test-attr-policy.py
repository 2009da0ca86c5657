#!/usr/bin/python3
"""Attribute policy on every back end (docs/attributes.md), through
PyKCS11 on the test module holding a mock token, an hsm token (SoftHSM)
and a keyvault token (the Key Vault emulator):

- a key with CKA_WRAP_WITH_TRUSTED true is never wrapped under a key that
  is not CKA_TRUSTED (the CMK's public key, the application's own AES key):
  CKR_KEY_NOT_WRAPPABLE, and no wrapped bytes come out; the same key
  without the flag wraps, and the bytes are the data key (so the check
  could see a leak);
- CKA_TRUSTED true is refused outside an SO session: CKR_ATTRIBUTE_READ_ONLY;
- a template giving one attribute two values is CKR_TEMPLATE_INCONSISTENT
  in C_GenerateKey, C_CreateObject, C_UnwrapKey, C_GenerateKeyPair and
  C_SetAttributeValue (C_CopyObject, which PyKCS11 lacks, in
  tests/unit/test-keys); the same value twice is accepted;
- generated and unwrapped secret keys default to not sensitive, not
  extractable on all three.
"""
import os
import shutil
import subprocess

from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, skip_all, TOP_SRCDIR)

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.keywrap import \
        aes_key_unwrap_with_padding
except ImportError:
    skip_all("python3-cryptography missing")

from kvtest import public_key  # noqa: E402

P = PyKCS11
MODULE = os.environ.get("CMKP11_TEST_MODULE") or os.path.join(
    os.environ.get("top_builddir", "."), ".libs", "cmkp11-test.so")
SOFTHSM = os.environ.get("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
OAEP256 = P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256)
KWP = P.Mechanism(P.CKM_AES_KEY_WRAP_PAD, None)

t = Tap()
s = KvSetup()
hsm_dir = os.path.join(s.dir, "softhsm")
r = subprocess.run(["sh", os.path.join(TOP_SRCDIR, "tests/softhsm-init.sh"),
                    hsm_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
if r.returncode == 77:
    skip_all(r.stdout.decode(errors="replace").strip())
if r.returncode != 0:
    print("Bail out! softhsm-init.sh failed")
    raise SystemExit(99)
os.environ["SOFTHSM2_CONF"] = os.path.join(hsm_dir, "softhsm2.conf")
s.create_key("kek")
s.write_conf([
    ("mock", "backend = mock\n"),
    ("hsm", "backend = hsm\nmodule = %s\ntoken-label = cmk\n" % SOFTHSM),
    ("kv", s.token_body("kvemu", "client-secret")),
], log_level="error")
lib = PyKCS11.PyKCS11Lib()
lib.load(MODULE)
TOKENS = (("mock", "mock-key", None), ("hsm", "kek", "1234"),
          ("kv", "kek", None))


def session(label, pin):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            ses = lib.openSession(slot, P.CKF_SERIAL_SESSION |
                                  P.CKF_RW_SESSION)
            if pin is not None:
                ses.login(pin)
            return ses
    raise RuntimeError("no token " + label)


def aes(extra=(), length=32):
    return [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
            (P.CKA_TOKEN, False), (P.CKA_VALUE_LEN, length)] + list(extra)


def unwrap_tmpl(extra=()):
    return [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
            (P.CKA_TOKEN, False), (P.CKA_ENCRYPT, True),
            (P.CKA_DECRYPT, True)] + list(extra)


def wrapped_dek(pk, dek):
    return pk.encrypt(dek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                        algorithm=hashes.SHA256(),
                                        label=None))


def wrap(ses, wkey, key, mech):
    """(CKR, bytes): the length query and the wrap itself, as an
    application calls them; the bytes are whatever came out."""
    out = []

    def go():
        out.append(bytes(ses.wrapKey(wkey, key, mech)))
    return ckr(go), (out[0] if out else b"")


def value_rv(ses, o):
    """The CKR of C_GetAttributeValue(CKA_VALUE) with room for a value."""
    a = PyKCS11.LowLevel.ckattrlist(1)
    a[0].SetBin(P.CKA_VALUE, PyKCS11.ckbytelist([0] * 64))
    return ses.lib.C_GetAttributeValue(ses.session, o, a)


def bools(ses, o, types):
    return [bool(v) for v in ses.getAttributeValue(o, types)]


for name, label, pin in TOKENS:
    ses = session(name, pin)
    priv = find(ses, P.CKO_PRIVATE_KEY, label)[0]
    pub = find(ses, P.CKO_PUBLIC_KEY, label)[0]
    pk = public_key(ses, pub)
    dek = os.urandom(32)
    blob = wrapped_dek(pk, dek)

    # ---- defaults -----------------------------------------------------
    g = ses.generateKey(aes())
    t.eq(bools(ses, g, [P.CKA_SENSITIVE, P.CKA_EXTRACTABLE]), [False, False],
         "%s: a generated AES key defaults to not sensitive, not extractable"
         % name)
    u = ses.unwrapKey(priv, blob, unwrap_tmpl(), OAEP256)
    t.eq(bools(ses, u, [P.CKA_SENSITIVE, P.CKA_EXTRACTABLE]), [False, False],
         "%s: an unwrapped key defaults to not sensitive, not extractable"
         % name)
    t.eq(value_rv(ses, u), P.CKR_ATTRIBUTE_SENSITIVE,
         "%s: so its CKA_VALUE is CKR_ATTRIBUTE_SENSITIVE" % name)
    t.eq(wrap(ses, pub, u, OAEP256), (P.CKR_KEY_UNEXTRACTABLE, b""),
         "%s: and it does not wrap: CKR_KEY_UNEXTRACTABLE" % name)

    # ---- CKA_WRAP_WITH_TRUSTED ------------------------------------------
    app_kek = ses.generateKey(aes([(P.CKA_SENSITIVE, False),
                                   (P.CKA_EXTRACTABLE, True),
                                   (P.CKA_WRAP, True)]))
    kek_bytes = bytes(ses.getAttributeValue(app_kek, [P.CKA_VALUE])[0])
    t.eq(bools(ses, app_kek, [P.CKA_TRUSTED]), [False],
         "%s: the application's AES key is not trusted" % name)
    t.eq(bools(ses, pub, [P.CKA_TRUSTED]), [False],
         "%s: nor is the CMK's public key" % name)
    trusted_dek = ses.unwrapKey(priv, blob, unwrap_tmpl(
        [(P.CKA_SENSITIVE, True), (P.CKA_EXTRACTABLE, True),
         (P.CKA_WRAP_WITH_TRUSTED, True)]), OAEP256)
    t.eq(bools(ses, trusted_dek, [P.CKA_WRAP_WITH_TRUSTED, P.CKA_EXTRACTABLE]),
         [True, True], "%s: a data key unwrapped extractable and "
         "wrap-with-trusted" % name)
    t.eq(wrap(ses, pub, trusted_dek, OAEP256), (P.CKR_KEY_NOT_WRAPPABLE, b""),
         "%s: wrapping it under the CMK's public key is "
         "CKR_KEY_NOT_WRAPPABLE, no bytes" % name)
    t.eq(wrap(ses, app_kek, trusted_dek, KWP), (P.CKR_KEY_NOT_WRAPPABLE, b""),
         "%s: under the application's AES key: CKR_KEY_NOT_WRAPPABLE, "
         "no bytes" % name)
    t.eq(value_rv(ses, trusted_dek), P.CKR_ATTRIBUTE_SENSITIVE, "%s: and its value stays hidden" % name)
    plain_dek = ses.unwrapKey(priv, blob, unwrap_tmpl(
        [(P.CKA_SENSITIVE, True), (P.CKA_EXTRACTABLE, True)]), OAEP256)
    rv, out = wrap(ses, app_kek, plain_dek, KWP)
    t.ok(rv == 0 and aes_key_unwrap_with_padding(kek_bytes, out) == dek,
         "%s: the same key without the flag wraps under the AES key, and "
         "the bytes are the data key" % name, "rv %#x" % rv)
    t.eq(ckr(ses.generateKey, aes([(P.CKA_TRUSTED, True)])),
         P.CKR_ATTRIBUTE_READ_ONLY,
         "%s: CKA_TRUSTED true outside an SO session: CKR_ATTRIBUTE_READ_ONLY"
         % name)
    t.eq(ckr(ses.unwrapKey, priv, blob, unwrap_tmpl([(P.CKA_TRUSTED, True)]),
             OAEP256), P.CKR_ATTRIBUTE_READ_ONLY,
         "%s: the same in C_UnwrapKey" % name)

    # ---- one attribute, two values ----------------------------------------
    two = [(P.CKA_SENSITIVE, True), (P.CKA_SENSITIVE, False)]
    t.eq(ckr(ses.generateKey, aes(two)), P.CKR_TEMPLATE_INCONSISTENT,
         "%s: C_GenerateKey, CKA_SENSITIVE true then false: "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    t.eq(ckr(ses.generateKey, aes(two[::-1])), P.CKR_TEMPLATE_INCONSISTENT,
         "%s: and false then true" % name)
    same = ses.generateKey(aes([(P.CKA_SENSITIVE, True),
                                (P.CKA_SENSITIVE, True)]))
    t.eq(bools(ses, same, [P.CKA_SENSITIVE]), [True],
         "%s: the same value twice is one" % name)
    t.eq(ckr(ses.unwrapKey, priv, blob, unwrap_tmpl(
        [(P.CKA_EXTRACTABLE, False), (P.CKA_EXTRACTABLE, True)]), OAEP256),
         P.CKR_TEMPLATE_INCONSISTENT,
         "%s: C_UnwrapKey, CKA_EXTRACTABLE false then true: "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    t.eq(ckr(ses.createObject, [
        (P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
        (P.CKA_TOKEN, False), (P.CKA_VALUE, os.urandom(16)),
        (P.CKA_ENCRYPT, True), (P.CKA_ENCRYPT, False)]),
         P.CKR_TEMPLATE_INCONSISTENT,
         "%s: C_CreateObject, CKA_ENCRYPT true then false: "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    t.eq(ckr(ses.generateKeyPair,
             [(P.CKA_LABEL, "twice"), (P.CKA_MODULUS_BITS, 2048),
              (P.CKA_MODULUS_BITS, 3072)],
             [(P.CKA_LABEL, "twice")], P.MechanismRSAGENERATEKEYPAIR),
         P.CKR_TEMPLATE_INCONSISTENT,
         "%s: C_GenerateKeyPair, two CKA_MODULUS_BITS: "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    if name != "hsm":
        # Keys the hsm back end keeps are read-only (ACTION_PROHIBITED).
        t.eq(ckr(ses.setAttributeValue, g,
                 [(P.CKA_LABEL, "a"), (P.CKA_LABEL, "b")]),
             P.CKR_TEMPLATE_INCONSISTENT,
             "%s: C_SetAttributeValue, two labels: "
             "CKR_TEMPLATE_INCONSISTENT" % name)
        t.eq(ckr(ses.setAttributeValue, g,
                 [(P.CKA_LABEL, "a"), (P.CKA_LABEL, "a")]), 0,
             "%s: the same label twice is CKR_OK" % name)
        t.eq(ckr(ses.setAttributeValue, trusted_dek,
                 [(P.CKA_WRAP_WITH_TRUSTED, False)]),
             P.CKR_ATTRIBUTE_READ_ONLY,
             "%s: CKA_WRAP_WITH_TRUSTED cannot go back to false" % name)

    # ---- the table: footnotes 1-6 of PKCS#11 2.40 table 10 --------------
    # The same codes on every back end: the front end checks the template
    # before any back end (SoftHSM included) sees it.
    aes_value = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                 (P.CKA_TOKEN, False), (P.CKA_VALUE, os.urandom(16))]
    for attr, an in ((P.CKA_LOCAL, "CKA_LOCAL"),
                     (P.CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE"),
                     (P.CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE")):
        t.eq([ckr(ses.generateKey, aes([(attr, True)])),
              ckr(ses.createObject, aes_value + [(attr, True)]),
              ckr(ses.unwrapKey, priv, blob, unwrap_tmpl([(attr, True)]),
                  OAEP256)],
             [P.CKR_ATTRIBUTE_READ_ONLY] * 3,
             "%s: %s in a template (footnotes 2, 4, 6): "
             "CKR_ATTRIBUTE_READ_ONLY in C_GenerateKey, C_CreateObject, "
             "C_UnwrapKey" % (name, an))
    t.eq(ckr(ses.generateKey,
             aes([(P.CKA_KEY_GEN_MECHANISM, P.CKM_AES_KEY_GEN)])),
         P.CKR_ATTRIBUTE_READ_ONLY,
         "%s: CKA_KEY_GEN_MECHANISM in C_GenerateKey: CKR_ATTRIBUTE_READ_ONLY"
         % name)
    t.eq(ckr(ses.generateKey, aes([(P.CKA_VALUE, os.urandom(32))])),
         P.CKR_TEMPLATE_INCONSISTENT,
         "%s: CKA_VALUE in C_GenerateKey (footnote 4): "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    t.eq(ckr(ses.unwrapKey, priv, blob,
             unwrap_tmpl([(P.CKA_VALUE, os.urandom(32))]), OAEP256),
         P.CKR_TEMPLATE_INCONSISTENT,
         "%s: CKA_VALUE in C_UnwrapKey (footnote 6): "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    t.eq(ckr(ses.createObject, aes_value + [(P.CKA_VALUE_LEN, 16)]),
         P.CKR_TEMPLATE_INCONSISTENT,
         "%s: CKA_VALUE_LEN in C_CreateObject (footnote 2): "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    t.eq([ckr(ses.createObject, [a for a in aes_value if a[0] != left])
          for left in (P.CKA_KEY_TYPE, P.CKA_VALUE)],
         [P.CKR_TEMPLATE_INCOMPLETE] * 2,
         "%s: C_CreateObject without CKA_KEY_TYPE, without CKA_VALUE "
         "(footnote 1): CKR_TEMPLATE_INCOMPLETE" % name)
    t.eq(ckr(ses.generateKey, [a for a in aes() if a[0] != P.CKA_VALUE_LEN]),
         P.CKR_TEMPLATE_INCOMPLETE,
         "%s: C_GenerateKey without CKA_VALUE_LEN (footnote 3): "
         "CKR_TEMPLATE_INCOMPLETE" % name)
    t.eq(ckr(ses.generateKey, aes([(P.CKA_CHECK_VALUE, b"\x01\x02\x03")])),
         P.CKR_ATTRIBUTE_TYPE_INVALID,
         "%s: an attribute outside the table (CKA_CHECK_VALUE): "
         "CKR_ATTRIBUTE_TYPE_INVALID" % name)
    t.eq([ckr(ses.generateKey, aes(length=20)),
          ckr(ses.unwrapKey, priv, blob,
              unwrap_tmpl([(P.CKA_VALUE_LEN, 20)]), OAEP256)],
         [P.CKR_ATTRIBUTE_VALUE_INVALID] * 2,
         "%s: a 20-byte AES key in C_GenerateKey and C_UnwrapKey: "
         "CKR_ATTRIBUTE_VALUE_INVALID" % name)
    t.eq(ckr(ses.generateKey,
             [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_TOKEN, False),
              (P.CKA_KEY_TYPE, P.CKK_GENERIC_SECRET), (P.CKA_VALUE_LEN, 513)],
             P.Mechanism(P.CKM_GENERIC_SECRET_KEY_GEN, None)),
         P.CKR_ATTRIBUTE_VALUE_INVALID,
         "%s: a 513-byte generic secret: CKR_ATTRIBUTE_VALUE_INVALID" % name)
    t.eq(ckr(ses.createObject, [
        (P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_DES3),
        (P.CKA_TOKEN, False), (P.CKA_VALUE, os.urandom(24))]),
         P.CKR_TEMPLATE_INCONSISTENT,
         "%s: C_CreateObject of a DES3 key (a type cmkp11 does not make): "
         "CKR_TEMPLATE_INCONSISTENT" % name)
    token_aes = [a for a in aes() if a[0] != P.CKA_TOKEN] + \
        [(P.CKA_TOKEN, True)]
    token_unwrap = unwrap_tmpl()[:2] + [(P.CKA_TOKEN, True)]
    if name == "mock":
        t.eq([ckr(ses.generateKey, token_aes),
              ckr(ses.unwrapKey, priv, blob, token_unwrap, OAEP256)],
             [P.CKR_TEMPLATE_INCONSISTENT] * 2,
             "%s: CKA_TOKEN true (session keys only): "
             "CKR_TEMPLATE_INCONSISTENT" % name)
    else:
        # hsm tokens keep token secret keys in the lower token
        # (docs/hsm.md, "Token secret keys"), keyvault tokens in their
        # state-dir wrapped under the CMK (docs/keyvault.md).
        made = [ses.generateKey(token_aes),
                ses.unwrapKey(priv, blob, token_unwrap, OAEP256)]
        t.eq([bool(ses.getAttributeValue(k, [P.CKA_TOKEN])[0]) for k in made],
             [True, True],
             "%s: CKA_TOKEN true in C_GenerateKey and C_UnwrapKey: token "
             "objects" % name)
        for k in made:
            ses.destroyObject(k)
    ses.closeSession()

lib = None
shutil.rmtree(hsm_dir, ignore_errors=True)
