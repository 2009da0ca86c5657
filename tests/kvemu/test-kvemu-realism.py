#!/usr/bin/python3
"""The emulator as the real service behaves (issue 15), checked with
Microsoft's Python SDK (Debian's python3-azure): EC and oct keys with the
JWK shape the SDK's models read; versions listed by id; base64url only
(the SDK's own requests pass, a standard-base64 value is refused with the
service's 400 BadParameter, through the SDK's pipeline too); get and list
separate on access-policy vaults, one keys/read on RBAC vaults."""
import base64
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taplib  # noqa: E402

taplib.need_azure()

from azure.core.exceptions import HttpResponseError  # noqa: E402
from azure.core.rest import HttpRequest  # noqa: E402
from azure.keyvault.keys import KeyType  # noqa: E402
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding  # noqa: E402

t = taplib.Tap()
emu = taplib.Emu(taplib.test_config())
kc = emu.key_client()

# ---- EC and oct keys -------------------------------------------------------
eck = kc.create_ec_key("ec1", curve="P-384")
t.eq((eck.key_type, eck.key.crv, len(eck.key.x), len(eck.key.y)),
     (KeyType.ec, "P-384", 48, 48),
     "SDK create_ec_key: kty EC, crv P-384, x and y of 48 bytes")
pub = ec.EllipticCurvePublicNumbers(int.from_bytes(eck.key.x, "big"),
                                    int.from_bytes(eck.key.y, "big"),
                                    ec.SECP384R1())
t.ok(pub.public_key() is not None, "x and y are a point on P-384")
t.eq(sorted(eck.key_operations), ["sign", "verify"],
     "an EC key's default operations are sign and verify")
t.eq(eck.key.n, None, "an EC key has no n")
eh = kc.create_ec_key("ec2", curve="P-256", hardware_protected=True)
t.eq(eh.key_type, KeyType.ec_hsm, "EC-HSM on a premium vault")
names = sorted(p.name for p in kc.list_properties_of_keys())
t.ok("ec1" in names and "ec2" in names, "EC keys are listed", names)
try:
    CryptographyClient(eck, emu.secret_credential(),
                       connection_verify=emu.ca).wrap_key(
        KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
    t.ok(False, "an RSA algorithm on an EC key is refused")
except (HttpResponseError, ValueError, NotImplementedError) as e:
    t.ok(True, "an RSA algorithm on an EC key is refused (%s)" %
         type(e).__name__)
st, _, body = emu.vault("POST", "/keys/ec1/wrapkey",
                        {"alg": "RSA-OAEP-256", "value": "AAAA"})
t.eq((st, body["error"]["innererror"]["code"]), (403, "KeyOperationForbidden"),
     "wrapKey, not in the EC key's key_ops: 403 KeyOperationForbidden")
st, _, body = emu.vault("POST", "/keys/ec1/sign",
                        {"alg": "RS256", "value": "A" * 43})
t.eq((st, body["error"]["code"]), (400, "BadParameter"),
     "an RSA algorithm on an EC key: 400 BadParameter")

hc = emu.key_client(url=emu.url("kvhsm"))
ok = hc.create_oct_key("aes1", size=256, hardware_protected=True)
t.eq((ok.key_type, ok.key.k), (KeyType.oct_hsm, None),
     "SDK create_oct_key on Managed HSM: oct-HSM, no key material returned")
t.eq(sorted(ok.key_operations), ["decrypt", "encrypt", "unwrapKey", "wrapKey"],
     "an oct key's default operations")
st, _, body = emu.vault("POST", emu.url("kvhsm") + "/keys/aes1/create",
                        {"kty": "oct-HSM", "key_size": 100})
t.eq((st, body["error"]["code"]), (400, "BadParameter"),
     "an oct key size other than 128/192/256: 400")

# ---- versions by id ----------------------------------------------------------
kc.create_rsa_key("rot")
for _ in range(4):
    kc.rotate_key("rot")
vers = [p.version for p in kc.list_properties_of_key_versions("rot")]
t.eq(vers, sorted(vers), "versions are listed ordered by version id")
t.eq(kc.get_key("rot").properties.version,
     emu.admin("GET", "vaults/kvemu/keys/rot")["key"]["kid"].rsplit("/", 1)[1],
     "GET /keys/NAME is the version made last")

# ---- base64url only ----------------------------------------------------------
rk = kc.create_rsa_key("b64", size=2048)
cc = CryptographyClient(rk, emu.secret_credential(), connection_verify=emu.ca)
pk = rk.key
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
rpub = rsa.RSAPublicNumbers(int.from_bytes(pk.e, "big"),
                            int.from_bytes(pk.n, "big")).public_key()
oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
# A ciphertext whose standard base64 holds + or /.
while True:
    cek = os.urandom(32)
    blob = rpub.encrypt(cek, oaep)
    std = base64.b64encode(blob).decode()
    if "+" in std or "/" in std:
        break
t.eq(cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, blob).key, cek,
     "the SDK's unwrap (base64url on the wire) passes")
url = "%s/keys/b64/%s/unwrapkey" % (emu.vault_url, rk.properties.version)
st, _, body = emu.vault("POST", url, {"alg": "RSA-OAEP-256", "value": std})
t.eq((st, body["error"]["code"], body["error"]["message"]),
     (400, "BadParameter", "Content of 'value' is not base64url."),
     "standard base64: 400 BadParameter, the service's message")
st, _, body = emu.vault("POST", url, {"alg": "RSA-OAEP-256", "value":
                                      base64.urlsafe_b64encode(blob).decode()})
t.eq(st, 200, "padded base64url is accepted, as the service does")
resp = kc.send_request(HttpRequest(
    "POST", "/keys/b64/%s/unwrapkey?api-version=7.4" % rk.properties.version,
    json={"alg": "RSA-OAEP-256", "value": std}))
t.eq((resp.status_code, resp.json()["error"]["code"]), (400, "BadParameter"),
     "through the SDK's own pipeline the standard-base64 value is refused")
try:
    resp.raise_for_status()
    t.ok(False, "the SDK raises on it")
except HttpResponseError as e:
    t.eq(e.status_code, 400, "the SDK raises HttpResponseError 400 on it")

# ---- get and list: access policy vs RBAC -------------------------------------
emu.admin("POST", "identities", {"name": "three", "client_id":
                                 "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e41",
                                 "client_secrets": ["three-secret"],
                                 "access": {"kvemu": ["get", "wrapKey", "unwrapKey"],
                                            "kvhsm": ["get", "wrapKey", "unwrapKey"]}})
st, _, _ = emu.vault("GET", "/keys/rot", identity="three")
t.eq(st, 200, "access policy: get permits GET /keys/NAME")
st, _, body = emu.vault("GET", "/keys/rot/versions", identity="three")
t.eq((st, body["error"]["innererror"]["code"]), (403, "AccessDenied"),
     "access policy: get does not permit listing versions (403)")
t.ok("does not have keys list permission" in body["error"]["message"],
     "the message names the list permission", body)
st, _, body = emu.vault("GET", emu.url("kvhsm") + "/keys/aes1/versions",
                        identity="three")
t.eq(st, 200, "RBAC (Managed HSM): keys/read covers listing too")
