#!/usr/bin/python3
"""cmkp11's keyvault back end against the Key Vault emulator, through
PyKCS11: every mechanism, cross-checks with Microsoft's SDK and OpenSSL,
the documented CKR for each failure, both auth methods, the 401
challenge, a Managed HSM vault and lazy loading."""
import hashlib
import os
import time

from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, aes_template, OAEP1,
                    OAEP256, PKCS1, skip_all)

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:
    skip_all("python3-cryptography missing")

t = Tap()
P = PyKCS11
s = KvSetup()
log = os.path.join(s.dir, "cmkp11.log")
# RSA1_5 (CKM_RSA_PKCS) is refused by default; this token allows it to
# check its mapping (test-keyvault-pkcs1.py has the default).
s.write_conf([s.token("kv", rsa_pkcs1_decrypt="allow"),
              s.token("reader", auth="reader"),
              s.token("mi", auth="imds"),
              s.token("hsm", vault="kvhsm")], refresh=1)

created = [s.create_key(name)["created"]
           for name in ("kek", "disabled", "expired", "gone", "ops")]
created.append(s.create_key("hsmkek", vault="kvhsm", key_size=3072)["created"])
t.eq(created, [1] * 6, "the emulator made the keys kek, disabled, expired, "
     "gone, ops and hsmkek")

s.lib = None
s.load()
slots = s.lib.getSlotList(tokenPresent=True)
labels = sorted(s.lib.getTokenInfo(x).label.strip() for x in slots)
t.eq(labels, ["hsm", "kv", "mi", "reader"], "one slot per [token] section")
ti = [s.lib.getTokenInfo(x) for x in slots
      if s.lib.getTokenInfo(x).label.strip() == "hsm"][0]
t.eq(ti.model.strip(), "Managed HSM", "a managedhsm URL makes a Managed HSM token")
t.ok(not (ti.flags & P.CKF_LOGIN_REQUIRED), "no pin-file: no login needed")

ses = s.session("kv")
priv = find(ses, P.CKO_PRIVATE_KEY, "kek")
pub = find(ses, P.CKO_PUBLIC_KEY, "kek")
t.eq((len(priv), len(pub)), (1, 1), "the key kek is found by its label")
priv, pub = priv[0], pub[0]
kid_version = bytes(ses.getAttributeValue(priv, [0x434D0004 | P.CKA_VENDOR_DEFINED])[0]).decode()
t.ok(len(kid_version) == 32, "the version is Key Vault's 32-hex version")
ckaid = bytes(ses.getAttributeValue(priv, [P.CKA_ID])[0])
t.eq(ckaid.hex(), kid_version, "CKA_ID is the version's 16 raw bytes")
der = bytes(ses.getAttributeValue(pub, [P.CKA_PUBLIC_KEY_INFO])[0])
pk = serialization.load_der_public_key(der)
t.eq(pk.key_size, 2048, "CKA_PUBLIC_KEY_INFO is the vault key's public key")
rec = bytes(ses.getAttributeValue(priv, [0x434D0008 | P.CKA_VENDOR_DEFINED])[0]).decode()
t.eq(rec, "Recoverable", "the recoveryLevel shows purge protection")
attrs = ses.getAttributeValue(priv, [P.CKA_SENSITIVE, P.CKA_EXTRACTABLE,
                                     P.CKA_UNWRAP, P.CKA_DECRYPT, P.CKA_SIGN])
t.eq([bool(a) for a in attrs], [True, False, True, True, True],
     "private key: sensitive, not extractable, unwrap/decrypt/sign")

# ---- the main job: local wrap, remote unwrap ----------------------------
OAEP_OSSL = {
    "OAEP-SHA1": padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),
                              label=None),
    "OAEP-SHA256": padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                algorithm=hashes.SHA256(), label=None),
    "PKCS1": padding.PKCS1v15(),
}
MECHS = {"OAEP-SHA1": OAEP1, "OAEP-SHA256": OAEP256, "PKCS1": PKCS1}
for name, mech in MECHS.items():
    dek = os.urandom(32)
    blob = pk.encrypt(dek, OAEP_OSSL[name])
    h = ses.unwrapKey(priv, blob, aes_template(sensitive=False, extractable=True), mech)
    val = bytes(ses.getAttributeValue(h, [P.CKA_VALUE])[0])
    t.eq(val, dek, "%s: a key wrapped outside unwraps through the vault" % name)
    plain = os.urandom(40)
    t.eq(bytes(ses.decrypt(priv, pk.encrypt(plain, OAEP_OSSL[name]), mech)), plain,
         "%s: C_Decrypt through the vault" % name)
    # Local wrap of a module-held key, unwrapped by the vault again.
    k = ses.generateKey(aes_template(sensitive=True, extractable=True) +
                        [(P.CKA_VALUE_LEN, 32)])
    wrapped = bytes(ses.wrapKey(pub, k, mech))
    k2 = ses.unwrapKey(priv, wrapped, aes_template(), mech)
    iv = os.urandom(12)
    gcm = P.AES_GCM_Mechanism(iv, b"aad", 128)
    ct = bytes(ses.encrypt(k, b"envelope data", gcm))
    t.eq(bytes(ses.decrypt(k2, ct, gcm)), b"envelope data",
         "%s: C_WrapKey locally, C_UnwrapKey remotely, AES-GCM agrees" % name)

t.eq(ckr(ses.decrypt, priv, pk.encrypt(b"x", OAEP_OSSL["OAEP-SHA1"]),
         P.RSAOAEPMechanism(P.CKM_SHA_1, P.CKG_MGF1_SHA1, b"label")),
     P.CKR_MECHANISM_PARAM_INVALID, "an OAEP label Key Vault cannot express")
t.eq(ckr(ses.decrypt, priv, b"\0" * 256,
         P.RSAOAEPMechanism(P.CKM_SHA384, P.CKG_MGF1_SHA384)),
     P.CKR_MECHANISM_PARAM_INVALID, "OAEP-SHA384, which Key Vault lacks")

# ---- the Python SDK: both directions ----------------------------------
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm  # noqa: E402

kc = s.emu.key_client()
cred = s.emu.secret_credential()
vkey = kc.get_key("kek")
cc = CryptographyClient(vkey, cred, connection_verify=s.emu.ca)
dek = os.urandom(32)
k = ses.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                      (P.CKA_TOKEN, False), (P.CKA_VALUE, dek),
                      (P.CKA_EXTRACTABLE, True)])
wrapped = bytes(ses.wrapKey(pub, k, OAEP256))
res = cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped)
t.eq(res.key, dek, "a data key wrapped through cmkp11 unwraps with the SDK")
res = cc.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek)
h = ses.unwrapKey(priv, res.encrypted_key, aes_template(False, True), OAEP256)
t.eq(bytes(ses.getAttributeValue(h, [P.CKA_VALUE])[0]), dek,
     "a key the SDK wraps unwraps through cmkp11")

# ---- signatures, checked with OpenSSL (python3-cryptography) ------------
msg = b"customer-managed key"
for mech, hashobj, pad in [
    (P.CKM_SHA256_RSA_PKCS, hashes.SHA256(), padding.PKCS1v15()),
    (P.CKM_SHA384_RSA_PKCS, hashes.SHA384(), padding.PKCS1v15()),
    (P.CKM_SHA512_RSA_PKCS, hashes.SHA512(), padding.PKCS1v15()),
]:
    sig = bytes(ses.sign(priv, msg, P.Mechanism(mech)))
    try:
        pk.verify(sig, msg, pad, hashobj)
        good = True
    except Exception:
        good = False
    t.ok(good, "%s signature verifies with OpenSSL" % P.CKM[mech])
pss = P.RSA_PSS_Mechanism(P.CKM_SHA256_RSA_PKCS_PSS, P.CKM_SHA256, P.CKG_MGF1_SHA256, 32)
sig = bytes(ses.sign(priv, msg, pss))
try:
    pk.verify(sig, msg, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
              hashes.SHA256())
    good = True
except Exception:
    good = False
t.ok(good, "SHA256-RSA-PKCS-PSS (PS256) verifies with OpenSSL")
digest = hashlib.sha384(msg).digest()
pss = P.RSA_PSS_Mechanism(P.CKM_RSA_PKCS_PSS, P.CKM_SHA384, P.CKG_MGF1_SHA384, 48)
sig = bytes(ses.sign(priv, digest, pss))
from cryptography.hazmat.primitives.asymmetric import utils  # noqa: E402
try:
    pk.verify(sig, digest, padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
              utils.Prehashed(hashes.SHA384()))
    good = True
except Exception:
    good = False
t.ok(good, "RSA-PKCS-PSS over a SHA-384 digest (PS384) verifies")
# CKM_RSA_PKCS over a SHA-1 DigestInfo goes out as RSNULL.
di = bytes.fromhex("3021300906052b0e03021a05000414") + hashlib.sha1(msg).digest()
sig = bytes(ses.sign(priv, di, PKCS1))
try:
    pk.verify(sig, msg, padding.PKCS1v15(), hashes.SHA1())
    good = True
except Exception:
    good = False
t.ok(good, "CKM_RSA_PKCS over a SHA-1 DigestInfo (RSNULL) verifies")
t.eq(ckr(ses.sign, priv, msg, P.RSA_PSS_Mechanism(P.CKM_SHA256_RSA_PKCS_PSS,
                                                  P.CKM_SHA256, P.CKG_MGF1_SHA256, 20)),
     P.CKR_MECHANISM_PARAM_INVALID, "a PSS salt length Key Vault cannot use")
t.ok(ses.verify(pub, msg, bytes(ses.sign(priv, msg, P.Mechanism(P.CKM_SHA256_RSA_PKCS))),
                P.Mechanism(P.CKM_SHA256_RSA_PKCS)), "C_Verify runs locally")

# ---- module-held AES keys ----------------------------------------------
# Token secret keys need a wrapping key: this vault has several and the
# token no wrapping-key (test-keyvault-secret-keys.py makes them).
t.eq(ckr(ses.generateKey, aes_template(token=True) + [(P.CKA_VALUE_LEN, 32)]),
     P.CKR_TEMPLATE_INCONSISTENT,
     "an AES key with CKA_TOKEN=TRUE and no wrapping-key among several keys "
     "is refused")
t.eq(ckr(ses.unwrapKey, priv, pk.encrypt(os.urandom(32), OAEP_OSSL["OAEP-SHA256"]),
         aes_template(token=True), OAEP256),
     P.CKR_TEMPLATE_INCONSISTENT,
     "unwrap into a token object without a wrapping key is refused")
sk = ses.generateKey(aes_template(sensitive=True, extractable=False) +
                     [(P.CKA_VALUE_LEN, 32)])
# PyKCS11 turns CKR_ATTRIBUTE_SENSITIVE into a None value.
t.eq(ses.getAttributeValue(sk, [P.CKA_VALUE])[0], None,
     "a sensitive session key's value is not readable")
ek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                     [(P.CKA_VALUE_LEN, 16)])
kval = bytes(ses.getAttributeValue(ek, [P.CKA_VALUE])[0])
iv = os.urandom(12)
ct = bytes(ses.encrypt(ek, b"hello", P.AES_GCM_Mechanism(iv, b"", 128)))
t.eq(AESGCM(kval).decrypt(iv, ct, None), b"hello",
     "AES-GCM in the module matches OpenSSL")
iv16 = os.urandom(16)
ct = bytes(ses.encrypt(ek, b"0123456789abcdefXYZ", P.Mechanism(P.CKM_AES_CBC_PAD, iv16)))
t.eq(bytes(ses.decrypt(ek, ct, P.Mechanism(P.CKM_AES_CBC_PAD, iv16))),
     b"0123456789abcdefXYZ", "AES-CBC-PAD round trip")
ek2 = ses.generateKey(aes_template(sensitive=True, extractable=True) +
                      [(P.CKA_VALUE_LEN, 32)])
for m in (P.CKM_AES_KEY_WRAP, P.CKM_AES_KEY_WRAP_PAD):
    w = bytes(ses.wrapKey(ek, ek2, P.Mechanism(m)))
    back = ses.unwrapKey(ek, w, aes_template(), P.Mechanism(m))
    gcm = P.AES_GCM_Mechanism(iv, b"", 128)
    t.eq(bytes(ses.decrypt(back, bytes(ses.encrypt(ek2, b"kw", gcm)), gcm)), b"kw",
         "%s: wrap one session key under another" % P.CKM[m])
t.eq(ckr(ses.wrapKey, pub, sk, OAEP256), P.CKR_KEY_UNEXTRACTABLE,
     "an unextractable session key cannot be wrapped")
ses.destroyObject(ek)
t.eq(ckr(ses.getAttributeValue, ek, [P.CKA_LABEL]), P.CKR_OBJECT_HANDLE_INVALID,
     "a destroyed session key is gone")

# ---- failures and their CKRs -------------------------------------------
good_blob = pk.encrypt(os.urandom(32), OAEP_OSSL["OAEP-SHA256"])
bad_blob = bytearray(good_blob)
bad_blob[100] ^= 1
t.eq(ckr(ses.unwrapKey, priv, bytes(bad_blob), aes_template(), OAEP256),
     P.CKR_WRAPPED_KEY_INVALID, "a corrupted blob: CKR_WRAPPED_KEY_INVALID")
t.eq(ses.getSessionInfo().ulDeviceError, 400, "ulDeviceError carries the 400")
t.eq(ckr(ses.unwrapKey, priv, good_blob, aes_template(), OAEP256), 0,
     "the session is still usable")

rses = s.session("reader")
rpriv = find(rses, P.CKO_PRIVATE_KEY, "kek")
t.eq(len(rpriv), 1, "an identity with get/list sees the key")
t.eq(ckr(rses.unwrapKey, rpriv[0], good_blob, aes_template(), OAEP256),
     P.CKR_KEY_FUNCTION_NOT_PERMITTED, "403 without unwrapKey permission")
t.eq(rses.getSessionInfo().ulDeviceError, 403, "ulDeviceError is 403")
t.ok("was denied (403" in s.log_text() and "grant the identity" in s.log_text(),
     "the log says the access was denied and what to grant")

dpriv = find(ses, P.CKO_PRIVATE_KEY, "disabled")[0]
dpub = find(ses, P.CKO_PUBLIC_KEY, "disabled")[0]
dblob = serialization.load_der_public_key(bytes(ses.getAttributeValue(
    dpub, [P.CKA_PUBLIC_KEY_INFO])[0])).encrypt(b"k" * 32, OAEP_OSSL["OAEP-SHA256"])
s.emu.admin("PATCH", "vaults/kvemu/keys/disabled", {"enabled": False})
t.eq(ckr(ses.unwrapKey, dpriv, dblob, aes_template(), OAEP256),
     P.CKR_KEY_FUNCTION_NOT_PERMITTED, "a key disabled in the vault: refused")
t.ok("is disabled" in s.log_text(), "the log says the key is disabled")
time.sleep(1.1)  # refresh-interval = 1
dpriv2 = find(ses, P.CKO_PRIVATE_KEY, "disabled@" + bytes(ses.getAttributeValue(
    dpriv, [0x434D0004 | P.CKA_VENDOR_DEFINED])[0]).decode())
t.eq(len(dpriv2), 1, "after a refresh the disabled version is no longer current")
t.eq(bool(ses.getAttributeValue(dpriv, [P.CKA_UNWRAP])[0]), False,
     "and shows CKA_UNWRAP false on the same handle")

# Outside the validity dates: wrap and sign refused, unwrap still works.
past = int(time.time()) - 3600
s.emu.admin("PATCH", "vaults/kvemu/keys/expired", {"exp": past})
time.sleep(1.1)
epriv = find(ses, P.CKO_PRIVATE_KEY, "expired")
epub = find(ses, P.CKO_PUBLIC_KEY, "expired")
t.eq((len(epriv), len(epub)), (1, 1), "an expired key is still listed")
epk = serialization.load_der_public_key(bytes(ses.getAttributeValue(
    epub[0], [P.CKA_PUBLIC_KEY_INFO])[0]))
dk = ses.generateKey(aes_template(False, True) + [(P.CKA_VALUE_LEN, 32)])
t.eq(ckr(ses.wrapKey, epub[0], dk, OAEP256), P.CKR_KEY_FUNCTION_NOT_PERMITTED,
     "after exp, a local wrap is refused")
t.eq(ckr(ses.sign, epriv[0], msg, P.Mechanism(P.CKM_SHA256_RSA_PKCS)),
     P.CKR_KEY_FUNCTION_NOT_PERMITTED, "after exp, sign is refused")
t.eq(ckr(ses.unwrapKey, epriv[0], epk.encrypt(b"z" * 32, OAEP_OSSL["OAEP-SHA256"]),
         aes_template(), OAEP256), 0, "after exp, unwrap still works")

gpriv = find(ses, P.CKO_PRIVATE_KEY, "gone")[0]
gpk = serialization.load_der_public_key(bytes(ses.getAttributeValue(
    find(ses, P.CKO_PUBLIC_KEY, "gone")[0], [P.CKA_PUBLIC_KEY_INFO])[0]))
s.emu.admin("DELETE", "vaults/kvemu/keys/gone")
t.eq(ckr(ses.unwrapKey, gpriv, gpk.encrypt(b"g" * 32, OAEP_OSSL["OAEP-SHA256"]),
         aes_template(), OAEP256), P.CKR_KEY_HANDLE_INVALID,
     "a deleted key: CKR_KEY_HANDLE_INVALID")
t.eq(ses.getSessionInfo().ulDeviceError, 404, "ulDeviceError is 404")
time.sleep(1.1)
t.eq(len(find(ses, P.CKO_PRIVATE_KEY, "gone")), 0,
     "after a refresh the deleted key disappears")

# ---- managed identity, Managed HSM, the challenge -----------------------
mses = s.session("mi")
mpriv = find(mses, P.CKO_PRIVATE_KEY, "kek")[0]
t.eq(ckr(mses.unwrapKey, mpriv, good_blob, aes_template(), OAEP256), 0,
     "managed identity (IMDS): unwrap works")
hses = s.session("hsm")
hpriv = find(hses, P.CKO_PRIVATE_KEY, "hsmkek")
hpub = find(hses, P.CKO_PUBLIC_KEY, "hsmkek")
t.eq((len(hpriv), len(hpub)), (1, 1), "the Managed HSM key is found")
hpk = serialization.load_der_public_key(bytes(hses.getAttributeValue(
    hpub[0], [P.CKA_PUBLIC_KEY_INFO])[0]))
t.eq(hpk.key_size, 3072, "a 3072-bit RSA-HSM key")
kty = bytes(hses.getAttributeValue(hpriv[0], [0x434D000B | P.CKA_VENDOR_DEFINED])[0])
t.eq(kty, b"RSA-HSM", "its type is RSA-HSM")
t.eq(ckr(hses.unwrapKey, hpriv[0], hpk.encrypt(b"h" * 32, OAEP_OSSL["OAEP-SHA256"]),
         aes_template(), OAEP256), 0, "unwrap on Managed HSM (resource from the "
     "challenge)")
c = s.emu.admin("GET", "counters")
st = c.get("by_route_status", {})
t.ok(any(k.endswith(":401") or "401" in k for k in st) or
     c.get("by_status", {}).get("401", 0) > 0,
     "the vaults answered a 401 challenge first")

s.lib = None
