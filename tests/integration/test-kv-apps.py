#!/usr/bin/python3
"""Applications on a keyvault token served by the Key Vault emulator.

PyKCS11, the envelope job: a data key wrapped outside the module with
RSA-OAEP-256 unwraps through the vault into a sensitive, non-extractable
AES session key; AES-GCM through that key opens data sealed outside
(python3-cryptography) and seals data that cryptography opens with the
original key. The other way: an AES key made in the module seals data and
is wrapped locally with the public key; the vault's own unwrapkey (REST)
gives it back and cryptography opens the data.

Java 17 SunPKCS11, with "certificates = generate" on the token: the PKCS11
KeyStore lists each key (current and older version) through its
certificate, and tests/integration/java/KeyAliasTest.java signs and unwraps
through it (SunPKCS11 unwraps by an RSA decryption in the vault and imports
the value). TAP output."""
import base64
import os
import shutil
import subprocess

from kvtest import (Tap, KvSetup, PyKCS11, MODULE, find, ckr, delta,
                    public_key, wrap_oaep256, aes_template, OAEP256)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

P = PyKCS11
t = Tap()
s = KvSetup()
emu = s.emu
# Java's SunPKCS11 unwraps with RSA/ECB/PKCS1Padding only, which a keyvault
# token refuses unless rsa-pkcs1-decrypt = allow (docs/consumers.md).
s.write_conf([("kv", s.token_body(extra="certificates = generate\n"
                                        "rsa-pkcs1-decrypt = allow\n"))],
             log_level="error")
s.create_key("kek", key_size=2048)
old_version = s.emu.vault("GET", "/keys/kek")[2]["key"]["kid"].rsplit("/",
                                                                       1)[1]
s.create_key("kek", key_size=2048)  # a second version, now the current one
s.create_key("signer", key_size=2048)
s.load()
ses = s.session("kv")
AAD = b"cmkp11 envelope header"


def b64url(v):
    return base64.urlsafe_b64encode(v).rstrip(b"=").decode()


def unb64url(v):
    return base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))


def gcm(iv):
    return P.AES_GCM_Mechanism(iv, AAD, 128)


priv = find(ses, P.CKO_PRIVATE_KEY, "kek")
pub = find(ses, P.CKO_PUBLIC_KEY, "kek")
t.ok(len(priv) == 1 and len(pub) == 1, "PyKCS11 finds kek's key pair")
priv, pub = priv[0], pub[0]
pk = public_key(ses, pub)

# ---- sealed outside, opened and sealed again through the vault's unwrap -----
dek = AESGCM.generate_key(256)
iv = os.urandom(12)
data = b"a record sealed outside the module" * 10
sealed = AESGCM(dek).encrypt(iv, data, AAD)
wrapped = wrap_oaep256(pk, dek)
b = s.counters()
key = ses.unwrapKey(priv, wrapped, aes_template(sensitive=True,
                                                extractable=False), OAEP256)
t.eq(delta(b, s.counters(), "kvemu:unwrapKey", 200), 1,
     "C_UnwrapKey with OAEP SHA-256: one unwrapkey request to the vault")
sens, extr, tok = ses.getAttributeValue(key, [P.CKA_SENSITIVE,
                                              P.CKA_EXTRACTABLE, P.CKA_TOKEN])
t.ok(sens and not extr and not tok,
     "the data key is a sensitive, non-extractable session object",
     (sens, extr, tok))
# PyKCS11 turns CKR_ATTRIBUTE_SENSITIVE into a None value.
t.eq(ses.getAttributeValue(key, [P.CKA_VALUE]), [None],
     "its value cannot be read")
opened = bytes(ses.decrypt(key, sealed, gcm(iv)))
t.ok(opened == data, "AES-GCM through it opens the data sealed outside")
iv2 = os.urandom(12)
data2 = b"a record sealed through the module"
sealed2 = bytes(ses.encrypt(key, data2, gcm(iv2)))
try:
    back = AESGCM(dek).decrypt(iv2, sealed2, AAD)
except Exception as e:  # InvalidTag
    back = repr(e)
t.ok(back == data2, "what it seals, cryptography opens with the original key")
sealed2 = sealed2[:-1] + bytes([sealed2[-1] ^ 1])
t.eq(ckr(ses.decrypt, key, sealed2, gcm(iv2)), P.CKR_ENCRYPTED_DATA_INVALID,
     "a changed tag: CKR_ENCRYPTED_DATA_INVALID")
ses.destroyObject(key)

# ---- sealed in the module, opened through the vault's REST unwrap -----------
tmpl = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
        (P.CKA_VALUE_LEN, 32), (P.CKA_TOKEN, False), (P.CKA_SENSITIVE, True),
        (P.CKA_EXTRACTABLE, True), (P.CKA_ENCRYPT, True),
        (P.CKA_DECRYPT, True)]
key = ses.generateKey(tmpl, P.MechanismAESGENERATEKEY)
iv3 = os.urandom(12)
data3 = b"a record sealed by a key made in the module"
sealed3 = bytes(ses.encrypt(key, data3, gcm(iv3)))
b = s.counters()
wrapped3 = bytes(ses.wrapKey(pub, key, OAEP256))
t.eq(delta(b, s.counters(), "kvemu:wrapKey"), 0,
     "C_WrapKey with OAEP SHA-256 is local: no wrapkey request")
version = bytes(ses.getAttributeValue(priv, [P.CKA_ID])[0]).hex()
st, _, body = emu.vault("POST", "/keys/kek/%s/unwrapkey" % version,
                        {"alg": "RSA-OAEP-256", "value": b64url(wrapped3)})
t.eq(st, 200, "the vault's unwrapkey takes the module's wrapped key")
raw = unb64url(body["value"]) if st == 200 else b""
try:
    back = AESGCM(raw).decrypt(iv3, sealed3, AAD)
except Exception as e:
    back = repr(e)
t.ok(back == data3, "and the key it gives opens the module's AES-GCM data")
ses.destroyObject(key)
ses.closeSession()
s.lib = None

# ---- Java SunPKCS11 ------------------------------------------------------------
if shutil.which("java") is None or shutil.which("javac") is None:
    t.ok(True, "# SKIP java and javac are not installed")
else:
    top = os.environ.get("top_srcdir", ".")
    jdir = os.path.join(s.dir, "java")
    os.mkdir(jdir)
    r = subprocess.run(["javac", "-d", jdir,
                        os.path.join(top, "tests/integration/java/"
                                     "KeyAliasTest.java")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t.ok(r.returncode == 0, "javac compiles KeyAliasTest.java", r.stdout)
    cfg = os.path.join(jdir, "sunpkcs11.cfg")
    with open(cfg, "w") as f:
        f.write("name = cmkp11kv\nlibrary = %s\nslotListIndex = 0\n" % MODULE)
    b = s.counters()
    r = subprocess.run(["java", "-cp", jdir, "KeyAliasTest", cfg, "kek",
                        "kek@" + old_version, "signer"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120)
    out = r.stdout.decode(errors="replace")
    # Java's own TAP lines, renumbered as sub-results.
    lines = [x for x in out.splitlines() if x.startswith(("ok ", "not ok "))]
    for x in lines:
        t.ok(x.startswith("ok "), "java: " + x.split(" - ", 1)[-1])
    t.ok(r.returncode == 0 and len(lines) >= 8,
         "java KeyAliasTest exits 0 after its checks", out)
    # SunPKCS11 unwraps by C_Decrypt and imports the value where the token
    # takes raw secret keys (C_CreateObject), as cmkp11's does.
    a = s.counters()
    t.ok(delta(b, a, "kvemu:sign", 200) >= 1 and
         delta(b, a, "kvemu:decrypt", 200) +
         delta(b, a, "kvemu:unwrapKey", 200) >= 1,
         "java: the signature and the RSA decryption were the vault's",
         (a.get("by_route_status"), b.get("by_route_status")))
