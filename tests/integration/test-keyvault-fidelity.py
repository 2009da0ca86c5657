#!/usr/bin/python3
"""Smaller fidelity points of the keyvault back end (issue 15, item 6):
a challenge with scope= and no resource=; rotate sent without a content
type; a 409 from key generation returns a code C_GenerateKeyPair may
return, with the vault's message in the log; EC and oct keys in the vault
are skipped once, not read again at every refresh; a PEM client
certificate with an encrypted key opens with
client-certificate-password-file."""
import ctypes
import ctypes.util
import os
import time

from kvtest import (Tap, PyKCS11, KvSetup, ckr, count, emulator_config, write_private,
                    TENANT)
from cryptography.hazmat.primitives import serialization

P = PyKCS11
t = Tap()
builddir = os.environ.get("top_builddir", ".")
MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
CERT_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e31"

cfg = emulator_config()
cfg["identities"].append({"name": "certapp", "client_id": CERT_ID,
                          "client_certificates": [{"generate": "client-cert"}]})
cfg["vaults"][0]["access"]["certapp"] = ["all"]
cfg["vaults"][0]["challenge_form"] = "scope"
cfg["vaults"][1]["access"]["certapp"] = ["all"]
s = KvSetup(cfg)
emu = s.emu
work = s.dir
emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})
emu.admin("POST", "vaults/kvemu/keys", {"name": "eckey", "kty": "EC",
                                        "crv": "P-256"})
emu.admin("POST", "vaults/kvhsm/keys", {"name": "aeskey", "kty": "oct-HSM",
                                        "key_size": 256})
emu.admin("POST", "vaults/kvhsm/keys", {"name": "hsmkek", "kty": "RSA-HSM"})

# The emulator's generated certificate and key, with the key encrypted.
with open(os.path.join(emu.state, "client-cert.pem"), "rb") as f:
    pem = f.read()
key = serialization.load_pem_private_key(pem, None)
cert_part = pem[pem.index(b"-----BEGIN CERTIFICATE-----"):]
cert_part = cert_part[:cert_part.index(b"-----END CERTIFICATE-----") + 25]
enc = key.private_bytes(serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.BestAvailableEncryption(b"pem-pass"))
enc_pem = write_private(os.path.join(work, "enc.pem"),
                        (cert_part + b"\n" + enc).decode())
pw = write_private(os.path.join(work, "enc.pass"), "pem-pass\n")

log = os.path.join(work, "cmkp11.log")
cert = dict(auth="client-certificate", tenant_id=TENANT, client_id=CERT_ID,
            client_certificate_file=enc_pem,
            authority_host=emu.env["AZURE_AUTHORITY_HOST"], keys="kek")
s.write_conf([s.token("kv"), s.token("hsm", "kvhsm"),
              s.token("cert", client_certificate_password_file=pw, **cert),
              s.token("certnopw", **cert)], refresh=1)

lib = P.PyKCS11Lib()
lib.load(MODULE)


def session(label):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            return lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    raise RuntimeError(label)


def log_text():
    with open(log) as f:
        return f.read()


def labels(ses):
    return sorted(ses.getAttributeValue(o, [P.CKA_LABEL])[0]
                  for o in ses.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY)]))


# A challenge with scope= alone.
ses = session("kv")
t.eq(labels(ses), ["kek"], "a scope-only challenge is understood, and the "
     "EC key is not an object")
c = emu.admin("GET", "counters")
t.ok(count(c, "kvemu:getKeys", 401) >= 1 and count(c, "kvemu:getKeys", 200) == 1,
     "the vault challenged with scope= and then answered")

# EC and oct keys: read once, not at every refresh.
hs = session("hsm")
t.eq(labels(hs), ["hsmkek"], "Managed HSM: the oct-HSM key is not an object")
for _ in range(3):
    time.sleep(1.1)  # refresh-interval = 1
    labels(ses)
    labels(hs)
c = emu.admin("GET", "counters")["by_path"]
t.ok(c.get("kvemu GET /keys/kek", 0) >= 3 and
     c.get("kvhsm GET /keys/hsmkek", 0) >= 3,
     "the RSA keys are read again at each refresh", c)
t.eq((c.get("kvemu GET /keys/eckey"), c.get("kvhsm GET /keys/aeskey")),
     (1, 1), "the EC and oct-HSM keys were read once")
text = log_text()
t.eq(text.count("key eckey is EC, not RSA: skipped"), 1,
     "the log says once that the EC key is skipped")
t.eq(text.count("key aeskey is oct-HSM, not RSA: skipped"), 1,
     "and the oct-HSM key")

# Rotate: no body, no content type.
emu.admin("DELETE", "counters")
MECH = P.Mechanism(P.CKM_RSA_PKCS_KEY_PAIR_GEN, None)


def gen(label, bits=None):
    pub = [(P.CKA_CLASS, P.CKO_PUBLIC_KEY), (P.CKA_KEY_TYPE, P.CKK_RSA),
           (P.CKA_LABEL, label), (P.CKA_TOKEN, True)]
    if bits:
        pub.append((P.CKA_MODULUS_BITS, bits))
    priv = [(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_KEY_TYPE, P.CKK_RSA),
            (P.CKA_LABEL, label), (P.CKA_TOKEN, True)]
    return ses.generateKeyPair(pub, priv, MECH)


t.eq(ckr(gen, "kek"), 0, "C_GenerateKeyPair on an existing label rotates")
c = emu.admin("GET", "counters")
t.eq(c.get("content_types", {}).get("kvemu:rotateKey"), {"": 1},
     "rotate went without a Content-Type")
t.eq(list(c.get("content_types", {}).get("kvemu:createKey", {"x": 0}).keys()),
     ["x"], "and nothing was created")

# A 409 from key generation.
emu.admin("POST", "vaults/kvemu/keys", {"name": "gone"})
emu.admin("DELETE", "vaults/kvemu/keys/gone")
t.eq(ckr(gen, "gone", 2048), P.CKR_ATTRIBUTE_VALUE_INVALID,
     "a name held by a deleted key: 409, CKR_ATTRIBUTE_VALUE_INVALID")
text = log_text()
t.ok("create refused (409 ObjectIsDeletedButRecoverable)" in text and
     "currently in a deleted but recoverable state" in text,
     "the log gives the 409 and the vault's message", text[-700:])

# A PEM client certificate with an encrypted key.
cs = session("cert")
t.eq(labels(cs)[0], "kek", "an encrypted PEM key opens with "
     "client-certificate-password-file")
c = emu.admin("GET", "counters")
t.ok(count(c, "kvemu:getKey", identity="certapp") >= 1,
     "and the vault saw the certificate's identity")
ns = session("certnopw")
libcrypto = ctypes.CDLL(ctypes.util.find_library("crypto"))
libcrypto.ERR_peek_error.restype = ctypes.c_ulong
libcrypto.ERR_clear_error()
t.eq(ckr(ns.findObjects, [(P.CKA_CLASS, P.CKO_PRIVATE_KEY)]),
     P.CKR_DEVICE_ERROR, "without the password file the key does not open")
t.ok("must hold the certificate and its private key" in log_text(),
     "and the log says the key could not be read")
# The application's own TLS (Python's ssl here) shares this thread's
# OpenSSL error queue: a stale error surfaces in its next failing call.
t.eq(libcrypto.ERR_peek_error(), 0, "the failed key leaves no OpenSSL error "
     "on the application's thread")

# A 403 names the permission the refused request needed.
emu.admin("PUT", "vaults/kvemu/access/certapp",
          {"permissions": ["get", "wrapKey"]})
priv = cs.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_LABEL, "kek")])[0]
pub = cs.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY), (P.CKA_LABEL, "kek")])[0]
tmpl = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
        (P.CKA_TOKEN, False), (P.CKA_SENSITIVE, False),
        (P.CKA_EXTRACTABLE, True), (P.CKA_ENCRYPT, True)]
dek = cs.generateKey(tmpl + [(P.CKA_VALUE_LEN, 32)])
OAEP = P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256)
blob = bytes(cs.wrapKey(pub, dek, OAEP))
t.eq(ckr(cs.unwrapKey, priv, blob, tmpl, OAEP),
     P.CKR_KEY_FUNCTION_NOT_PERMITTED, "unwrap without unwrapKey: refused")
text = log_text()
t.ok("unwrapkey needs the keys unwrapKey permission; grant the identity "
     "unwrapKey (access policy) or a role with "
     "Microsoft.KeyVault/vaults/keys/unwrapKey/action (RBAC); the vault said: "
     "The user, group or application" in text,
     "the log names unwrapKey, its RBAC action and the vault's message",
     text[-800:])

# A 403 from the firewall says it is the network rule.
emu.admin("POST", "faults", {"kind": "status", "status": 403,
                             "code": "ForbiddenByFirewall",
                             "match": "kvemu:getKey", "count": 1})
time.sleep(1.1)  # refresh-interval = 1: the key is read again
labels(ses)
text = log_text()
t.ok("refused this host" in text and "(403 ForbiddenByFirewall)" in text and
     "this is the vault's firewall, not the identity's permissions" in text,
     "a ForbiddenByFirewall 403 is explained as the network rule",
     text[-800:])
