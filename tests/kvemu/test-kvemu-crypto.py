#!/usr/bin/python3
"""Cryptographic operations: the emulator's results checked by local crypto and OpenSSL."""
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taplib  # noqa: E402

taplib.need_azure()

from azure.core.exceptions import HttpResponseError  # noqa: E402
from azure.identity import ClientSecretCredential  # noqa: E402
from azure.keyvault.keys import JsonWebKey  # noqa: E402
from azure.keyvault.keys.crypto import (CryptographyClient, EncryptionAlgorithm,  # noqa: E402
                                        KeyWrapAlgorithm, SignatureAlgorithm)
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils  # noqa: E402

t = taplib.Tap()
emu = taplib.Emu(taplib.test_config())
kc = emu.key_client()
# An identity without "get": the SDK cannot fetch the key and does every operation remotely.
ccred = ClientSecretCredential(taplib.TENANT, emu.admin("GET", "identities/cryptoonly")["client_id"],
                               "crypto-secret", authority=emu.env["AZURE_AUTHORITY_HOST"],
                               instance_discovery=False, connection_verify=emu.ca)


def code(e):
    return getattr(getattr(e, "error", None), "code", None)


def inner(e):
    return (getattr(getattr(e, "error", None), "innererror", None) or {}).get("code")


def b(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def import_local(name, size=2048, key_ops=None):
    priv = rsa.generate_private_key(public_exponent=65537, key_size=size)
    pn = priv.private_numbers()
    jwk = JsonWebKey(kty="RSA", n=b(pn.public_numbers.n), e=b(pn.public_numbers.e), d=b(pn.d),
                     p=b(pn.p), q=b(pn.q), dp=b(pn.dmp1), dq=b(pn.dmq1), qi=b(pn.iqmp),
                     key_ops=key_ops or ["encrypt", "decrypt", "sign", "verify", "wrapKey",
                                         "unwrapKey"])
    return priv, kc.import_key(name, jwk)


PAD = {
    "RSA1_5": lambda: padding.PKCS1v15(),
    "RSA-OAEP": lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
    "RSA-OAEP-256": lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
}
priv, key = import_local("local")
remote = CryptographyClient(key.id, ccred, connection_verify=emu.ca, retry_total=0)
local = CryptographyClient.from_jwk(key.key)
cek = os.urandom(32)

emu.admin("POST", "counters/reset")
for alg in ("RSA1_5", "RSA-OAEP", "RSA-OAEP-256"):
    w = local.wrap_key(KeyWrapAlgorithm(alg), cek)
    r = remote.unwrap_key(KeyWrapAlgorithm(alg), w.encrypted_key)
    t.eq(r.key, cek, "%s: wrapped locally by the SDK, unwrapped by the emulator" % alg)
    w2 = remote.wrap_key(KeyWrapAlgorithm(alg), cek)
    t.eq(priv.decrypt(w2.encrypted_key, PAD[alg]()), cek,
         "%s: wrapped by the emulator, unwrapped with the local private key" % alg)
    c = remote.encrypt(EncryptionAlgorithm(alg), b"hello kvemu")
    t.eq(remote.decrypt(EncryptionAlgorithm(alg), c.ciphertext).plaintext, b"hello kvemu",
         "%s: encrypt/decrypt round trip in the emulator" % alg)
    c2 = priv.public_key().encrypt(b"local plaintext", PAD[alg]())
    t.eq(remote.decrypt(EncryptionAlgorithm(alg), c2).plaintext, b"local plaintext",
         "%s: local encrypt, emulator decrypt" % alg)
cnt = emu.admin("GET", "counters")["by_route"]
t.ok(cnt.get("kvemu:unwrapKey") == 3 and cnt.get("kvemu:wrapKey") == 3
     and cnt.get("kvemu:decrypt") == 6, "the remote client really called the emulator", cnt)

tmp = taplib.workdir()
pub_pem = os.path.join(tmp, "pub.pem")
with open(pub_pem, "wb") as f:
    f.write(priv.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo))
have_openssl = shutil.which("openssl") is not None
HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
msg = b"message signed through kvemu"
for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"):
    h = HASH[alg[2:]]
    digest = hashlib.new(h.name, msg).digest()
    s = remote.sign(SignatureAlgorithm(alg), digest)
    try:
        if alg.startswith("RS"):
            priv.public_key().verify(s.signature, digest, padding.PKCS1v15(),
                                     utils.Prehashed(h()))
        else:
            priv.public_key().verify(s.signature, digest,
                                     padding.PSS(padding.MGF1(h()), h.digest_size),
                                     utils.Prehashed(h()))
        good = True
    except InvalidSignature:
        good = False
    t.ok(good, "%s: emulator signature verifies with cryptography" % alg)
    t.ok(remote.verify(SignatureAlgorithm(alg), digest, s.signature).is_valid,
         "%s: emulator verify accepts its signature" % alg)
    if alg in ("RS256", "PS256", "RS512"):
        if not have_openssl:
            t.ok(True, "%s: openssl verification # SKIP no openssl" % alg)
            continue
        dg, sg = os.path.join(tmp, "dg"), os.path.join(tmp, "sg")
        with open(dg, "wb") as f:
            f.write(digest)
        with open(sg, "wb") as f:
            f.write(s.signature)
        cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub_pem, "-in", dg,
               "-sigfile", sg, "-pkeyopt", "digest:sha" + alg[2:]]
        if alg.startswith("PS"):
            cmd += ["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        t.ok(p.returncode == 0 and "Success" in p.stdout,
             "%s: emulator signature verifies with openssl pkeyutl" % alg, p.stdout + p.stderr)
digest = hashlib.sha256(msg).digest()
s = remote.sign(SignatureAlgorithm.rs256, digest)
bad_sig = bytes([s.signature[0] ^ 1]) + s.signature[1:]
t.eq(remote.verify(SignatureAlgorithm.rs256, digest, bad_sig).is_valid, False,
     "verify of a tampered signature returns false")
e = t.raises("RS256 with a 20-byte digest -> HttpResponseError", HttpResponseError, remote.sign,
             SignatureAlgorithm.rs256, b"x" * 20)
t.eq((e and e.status_code, code(e)), (400, "BadParameter"), "... 400 BadParameter")
e = t.raises("garbage ciphertext -> HttpResponseError", HttpResponseError, remote.decrypt,
             EncryptionAlgorithm.rsa_oaep_256, os.urandom(256))
t.eq((e and e.status_code, code(e)), (400, "BadParameter"), "... 400 BadParameter")
e = t.raises("short ciphertext -> HttpResponseError", HttpResponseError, remote.unwrap_key,
             KeyWrapAlgorithm.rsa_oaep, b"x" * 17)
t.eq(code(e), "BadParameter", "... BadParameter")

# ---- RSNULL (raw PKCS#1 v1.5 over a caller DigestInfo) -------------------------------------------
SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
di = SHA256_PREFIX + digest
st, _, body = emu.vault("POST", "/keys/local/%s/sign" % key.properties.version,
                        {"alg": "RSNULL", "value": b64u(di)})
want = priv.sign(msg, padding.PKCS1v15(), hashes.SHA256())
t.ok(st == 200 and body["value"] == b64u(want),
     "RSNULL over a SHA-256 DigestInfo equals the local RS256 signature", body)
st, _, body = emu.vault("POST", "/keys/local/verify",
                        {"alg": "RSNULL", "digest": b64u(di), "value": b64u(want)})
t.ok(st == 200 and body == {"value": True}, "RSNULL verify", body)
st, _, body = emu.vault("POST", "/keys/local/sign", {"alg": "RSNULL", "value": b64u(b"x" * 300)})
t.eq((st, body["error"]["code"]), (400, "BadParameter"), "RSNULL input longer than k-11 refused")

# ---- REST details: routes, encodings ------------------------------------------------------------------
w = priv.public_key().encrypt(cek, PAD["RSA-OAEP-256"]())
st, _, body = emu.vault("POST", "/keys/local/unwrapkey", {"alg": "RSA-OAEP-256", "value": b64u(w)})
t.ok(st == 200 and body["value"] == b64u(cek) and body["kid"] == key.id,
     "versionless /keys/NAME/unwrapkey uses the latest version and returns its kid", body)
padded = base64.urlsafe_b64encode(w).decode()
st, _, body = emu.vault("POST", "/keys/local/%s/unwrapKey" % key.properties.version,
                        {"alg": "RSA-OAEP-256", "value": padded})
t.ok(st == 200 and body["value"] == b64u(cek), "padded base64url input accepted", body)
t.ok("=" not in body["value"] and "+" not in body["value"] and "/" not in body["value"],
     "output is unpadded base64url")
st, _, body = emu.vault("POST", "/keys/local/unwrapkey", {"alg": "RSA-OAEP-384", "value": b64u(w)})
t.eq((st, body["error"]["code"]), (400, "BadParameter"), "unknown algorithm -> 400 BadParameter")
st, _, body = emu.vault("POST", "/keys/local/unwrapkey", {"alg": "RSA-OAEP-256", "value": "***"})
t.eq((st, body["error"]["code"]), (400, "BadParameter"), "bad base64 -> 400 BadParameter")
st, _, body = emu.vault("POST", "/keys/local/%s/encrypt" % ("0" * 32),
                        {"alg": "RSA-OAEP", "value": b64u(b"x")})
t.eq((st, body["error"]["code"]), (404, "KeyNotFound"), "crypto on an unknown version -> 404")
st, _, body = emu.vault("POST", "/keys/local/encrypt", {"alg": "RSA1_5", "value": b64u(b"x" * 246)})
t.eq((st, body["error"]["code"]), (400, "BadParameter"), "plaintext too long -> 400")

# ---- disabled keys --------------------------------------------------------------------------------------
dpriv, dkey = import_local("disabled")
kc.update_key_properties("disabled", enabled=False)
dr = CryptographyClient(dkey.id, ccred, connection_verify=emu.ca, retry_total=0)
wd = dpriv.public_key().encrypt(cek, PAD["RSA-OAEP-256"]())
for name, fn in (("decrypt", lambda: dr.decrypt(EncryptionAlgorithm.rsa_oaep_256, wd)),
                 ("unwrapKey", lambda: dr.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wd)),
                 ("sign", lambda: dr.sign(SignatureAlgorithm.rs256, digest))):
    e = t.raises("disabled key: %s refused" % name, HttpResponseError, fn)
    t.eq((e and e.status_code, code(e), inner(e)), (403, "Forbidden", "KeyDisabled"),
         "... 403 Forbidden / KeyDisabled")
sig = dpriv.sign(msg, padding.PKCS1v15(), hashes.SHA256())
t.check("disabled key: encrypt allowed", dr.encrypt, EncryptionAlgorithm.rsa_oaep_256, b"x")
t.check("disabled key: wrapKey allowed", dr.wrap_key, KeyWrapAlgorithm.rsa_oaep_256, cek)
t.ok(dr.verify(SignatureAlgorithm.rs256, digest, sig).is_valid, "disabled key: verify allowed")

# ---- key_ops ----------------------------------------------------------------------------------------------
opriv, okey = import_local("enconly", key_ops=["encrypt", "verify"])
orr = CryptographyClient(okey.id, ccred, connection_verify=emu.ca, retry_total=0)
t.check("key_ops [encrypt, verify]: encrypt allowed", orr.encrypt, EncryptionAlgorithm.rsa_oaep,
        b"x")
wo = opriv.public_key().encrypt(cek, PAD["RSA-OAEP"]())
for name, fn in (("decrypt", lambda: orr.decrypt(EncryptionAlgorithm.rsa_oaep, wo)),
                 ("wrapKey", lambda: orr.wrap_key(KeyWrapAlgorithm.rsa_oaep, cek)),
                 ("sign", lambda: orr.sign(SignatureAlgorithm.rs256, digest))):
    e = t.raises("key_ops without %s: refused" % name, HttpResponseError, fn)
    t.eq((e and e.status_code, code(e), inner(e)), (403, "Forbidden", "KeyOperationForbidden"),
         "... 403 Forbidden / KeyOperationForbidden")

# ---- nbf / exp window ---------------------------------------------------------------------------------------
import datetime  # noqa: E402
past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
xpriv, xkey = import_local("expired")
kc.update_key_properties("expired", expires_on=past)
xr = CryptographyClient(xkey.id, ccred, connection_verify=emu.ca, retry_total=0)
wx = xpriv.public_key().encrypt(cek, PAD["RSA-OAEP-256"]())
sx = xpriv.sign(msg, padding.PKCS1v15(), hashes.SHA256())
for name, fn in (("encrypt", lambda: xr.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"x")),
                 ("wrapKey", lambda: xr.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cek)),
                 ("sign", lambda: xr.sign(SignatureAlgorithm.rs256, digest))):
    e = t.raises("expired key: %s refused" % name, HttpResponseError, fn)
    t.eq((e and e.status_code, code(e)), (403, "Forbidden"), "... 403 Forbidden")
t.eq(xr.decrypt(EncryptionAlgorithm.rsa_oaep_256, wx).plaintext, cek, "expired key: decrypt allowed")
t.eq(xr.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wx).key, cek, "expired key: unwrapKey allowed")
t.ok(xr.verify(SignatureAlgorithm.rs256, digest, sx).is_valid, "expired key: verify allowed")
npriv, nkey = import_local("notyet")
kc.update_key_properties("notyet", not_before=future)
nr = CryptographyClient(nkey.id, ccred, connection_verify=emu.ca, retry_total=0)
e = t.raises("not-yet-valid key: sign refused", HttpResponseError, nr.sign,
             SignatureAlgorithm.rs256, digest)
t.eq(code(e), "Forbidden", "... Forbidden")
wn = npriv.public_key().encrypt(cek, PAD["RSA-OAEP-256"]())
t.eq(nr.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wn).key, cek, "not-yet-valid key: unwrap allowed")

# ---- sizes and Managed HSM ----------------------------------------------------------------------------------------
for size in (3072, 4096):
    sp, sk = import_local("size%d" % size, size)
    sr = CryptographyClient(sk.id, ccred, connection_verify=emu.ca, retry_total=0)
    ws = sp.public_key().encrypt(cek, PAD["RSA-OAEP-256"]())
    t.eq(sr.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, ws).key, cek, "unwrap with a %d-bit key"
         % size)
hc = emu.key_client(url=emu.hsm_url)
hk = hc.create_rsa_key("hk", hardware_protected=True)
hr = CryptographyClient(hk.id, ccred, connection_verify=emu.ca, retry_total=0)
wh = CryptographyClient.from_jwk(hk.key).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cek)
t.eq(hr.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wh.encrypted_key).key, cek,
     "Managed HSM: local wrap, emulator unwrap")
hs = hr.sign(SignatureAlgorithm.ps256, digest)
t.ok(CryptographyClient.from_jwk(hk.key).verify(SignatureAlgorithm.ps256, digest,
                                                hs.signature).is_valid,
     "Managed HSM: PS256 signature verifies locally")

# ---- through a full SDK client (get + local public ops) --------------------------------------------------------
full = emu.crypto_client(kc.get_key("local"))
t.eq(full.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256,
                     full.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cek).encrypted_key).key, cek,
     "CryptographyClient built from a KeyVaultKey: wrap local, unwrap remote")
shutil.rmtree(tmp, ignore_errors=True)
emu.stop()
