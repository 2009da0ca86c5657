#!/usr/bin/python3
"""Authentication: challenge, Entra token endpoint, certificates, federation, managed identity."""
import json
import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taplib  # noqa: E402

taplib.need_azure()

from azure.core.exceptions import ClientAuthenticationError  # noqa: E402
from azure.identity import (CertificateCredential, ClientAssertionCredential,  # noqa: E402
                            ClientSecretCredential, ManagedIdentityCredential)
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from kvemulib import jwt as kjwt, pki  # noqa: E402
from kvemulib.util import b64url_decode  # noqa: E402

t = taplib.Tap()
emu = taplib.Emu(taplib.test_config())
env = emu.env
port = emu.port
login = env["AZURE_AUTHORITY_HOST"]
VAULT_RES = "https://vault.localhost:%d" % port
HSM_RES = "https://managedhsm.localhost:%d" % port
SCOPE = VAULT_RES + "/.default"
kc = emu.key_client()
kc.create_rsa_key("authkey")

# ---- the 401 challenge ------------------------------------------------------------------------
st, h, body = emu.request("GET", emu.vault_url + "/keys/authkey?api-version=7.5")
t.eq(st, 401, "no token: 401")
t.eq(h.get("www-authenticate"), 'Bearer authorization="%s/%s", resource="%s"'
     % (login, taplib.TENANT, VAULT_RES), "vault challenge header")
t.eq(body, {"error": {"code": "Unauthorized", "message": "Request is missing a Bearer or PoP token."}},
     "vault 401 body")
st, h, body = emu.request("GET", emu.hsm_url + "/keys/preloaded?api-version=7.5")
t.eq((st, h.get("www-authenticate"), body),
     (401, 'Bearer authorization="%s/%s", resource="%s"' % (login, taplib.TENANT, HSM_RES), None),
     "Managed HSM challenge header, empty body")
st, h, body = emu.request("GET", "https://nosuch.vault.localhost:%d/keys?api-version=7.5" % port)
t.eq(st, 404, "unknown vault name: 404")

# ---- client secret ------------------------------------------------------------------------------
cred = emu.secret_credential()
tok = cred.get_token(SCOPE)
t.ok(tok.token.count(".") == 2 and tok.expires_on > time.time() + 3000,
     "ClientSecretCredential gets a token (challenge resource check passed earlier)")
hdr, claims, si, sig = kjwt.split(tok.token)
t.eq((hdr["alg"], claims["aud"], claims["tid"], claims["appid"]),
     ("RS256", VAULT_RES, taplib.TENANT, env["AZURE_CLIENT_ID"]), "token: RS256, aud, tid, appid")
t.ok(all(k in claims for k in ("oid", "exp", "iat", "nbf")) and claims["exp"] > claims["iat"],
     "token has oid, exp, iat, nbf")
st, _, jwks = emu.request("GET", "%s/%s/discovery/v2.0/keys" % (login, taplib.TENANT))
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers  # noqa: E402
jk = jwks["keys"][0]
pub = RSAPublicNumbers(int.from_bytes(b64url_decode(jk["e"]), "big"),
                       int.from_bytes(b64url_decode(jk["n"]), "big")).public_key()
t.ok(st == 200 and jk["kid"] == hdr["kid"] and kjwt.verify_signature(hdr, si, sig, pub),
     "token signature verifies with the published JWKS")
st, _, oc = emu.request("GET", "%s/%s/v2.0/.well-known/openid-configuration" % (login,
                                                                               taplib.TENANT))
t.eq((st, oc.get("token_endpoint")), (200, "%s/%s/oauth2/v2.0/token" % (login, taplib.TENANT)),
     "OpenID configuration names the token endpoint")
st, _, di = emu.request("GET", "%s/common/discovery/instance?api-version=1.1&authorization_endpoint="
                        "%s/%s/oauth2/v2.0/authorize" % (login, login, taplib.TENANT))
t.ok(st == 200 and di["tenant_discovery_endpoint"].endswith(
    "/%s/v2.0/.well-known/openid-configuration" % taplib.TENANT), "common/discovery/instance", di)
st, _, bad = emu.request("GET", "%s/no-such-tenant/v2.0/.well-known/openid-configuration" % login)
t.eq((st, bad.get("error")), (400, "invalid_tenant"), "unknown tenant: 400 invalid_tenant")


def token_post(form, path="oauth2/v2.0/token", tenant=taplib.TENANT):
    from urllib.parse import urlencode
    return emu.request("POST", "%s/%s/%s" % (login, tenant, path), urlencode(form).encode(),
                       {"Content-Type": "application/x-www-form-urlencoded"})


base = {"grant_type": "client_credentials", "client_id": env["AZURE_CLIENT_ID"], "scope": SCOPE}
st, _, r = token_post(dict(base, client_secret="wrong"))
t.ok(st == 401 and r["error"] == "invalid_client" and r["error_codes"] == [7000215],
     "wrong secret: 401 invalid_client AADSTS7000215", r)
st, _, r = token_post(dict(base, client_id="00000000-0000-0000-0000-000000000000",
                           client_secret="x"))
t.ok(st == 400 and r["error"] == "unauthorized_client" and r["error_codes"] == [700016],
     "unknown client: 400 unauthorized_client AADSTS700016", r)
st, _, r = token_post(dict(base, client_secret=env["AZURE_CLIENT_SECRET"], scope=VAULT_RES))
t.ok(st == 400 and r["error"] == "invalid_scope", "scope without /.default: 400 invalid_scope", r)
st, _, r = token_post(dict(base, client_secret=env["AZURE_CLIENT_SECRET"],
                           scope="https://unknown.example/.default"))
t.ok(st == 400 and r["error"] == "invalid_resource", "unknown resource: 400 invalid_resource", r)
st, _, r = token_post(dict(base, client_secret=env["AZURE_CLIENT_SECRET"]))
t.ok(st == 200 and isinstance(r["expires_in"], int) and r["token_type"] == "Bearer",
     "v2 token endpoint: expires_in is a number", r)
st, _, r = token_post({"grant_type": "client_credentials", "client_id": env["AZURE_CLIENT_ID"],
                       "client_secret": env["AZURE_CLIENT_SECRET"], "resource": VAULT_RES},
                      path="oauth2/token")
t.ok(st == 200 and isinstance(r["expires_in"], str) and r["expires_on"].isdigit(),
     "v1 token endpoint: expires_in/expires_on are strings", r)
e = t.raises("SDK: wrong secret -> ClientAuthenticationError", ClientAuthenticationError,
             ClientSecretCredential(taplib.TENANT, env["AZURE_CLIENT_ID"], "nope",
                                    authority=login, instance_discovery=False,
                                    connection_verify=emu.ca).get_token, SCOPE)

# ---- vault-side token checks ---------------------------------------------------------------------------------
def get_with(token):
    return emu.vault("GET", "/keys/authkey", token=token)


st, h, body = get_with(emu.token("app", "https://vault.azure.net"))
t.ok(st == 401 and "Invalid audience" in body["error"]["message"] and "www-authenticate" in h,
     "token for another audience: 401 with challenge", body)
st, _, body = get_with(emu.token("app", HSM_RES))
t.eq(st, 401, "Managed HSM token on a vault: 401")
good = emu.token("app")
st, _, body = get_with(good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"))
t.eq(st, 401, "tampered signature: 401")
st, _, body = get_with(emu.token("app", lifetime=-5))
t.ok(st == 401 and "TokenExpired" in body["error"]["message"], "expired token: 401 TokenExpired",
     body)
st, _, body = get_with(emu.token("alien"))
t.ok(st == 401 and "Invalid issuer" in body["error"]["message"],
     "token from another tenant: 401 invalid issuer", body)
st, _, body = get_with("not-a-jwt")
t.eq(st, 401, "garbage bearer token: 401")

# ---- api-version -------------------------------------------------------------------------------------------------
st, _, body = emu.vault("GET", "/keys/authkey", api=None)
t.eq((st, body["error"]["code"]), (400, "BadParameter"), "missing api-version: 400 BadParameter")
st, _, body = emu.vault("GET", "/keys/authkey", api="7.9")
t.ok(st == 400 and body["error"]["message"].startswith(
    "The specified version (7.9) is not recognized."), "unknown api-version: real message", body)
for v in ("7.0", "7.1", "7.2", "7.3", "7.4", "7.4-preview.1", "7.5", "7.6", "2025-07-01"):
    st, _, body = emu.vault("GET", "/keys/authkey", api=v)
    t.eq(st, 200, "api-version %s accepted" % v)
st, _, b70 = emu.vault("GET", "/keys/authkey", api="7.0")
st, _, b75 = emu.vault("GET", "/keys/authkey", api="7.5")
t.ok("recoverableDays" not in b70["attributes"] and b75["attributes"]["recoverableDays"] == 90,
     "recoverableDays appears from 7.1 on")
hk = emu.key_client(url=emu.hsm_url).get_key("preloaded")
st, _, h74 = emu.vault("GET", emu.hsm_url + "/keys/preloaded", api="7.4")
st, _, h75 = emu.vault("GET", emu.hsm_url + "/keys/preloaded", api="7.5")
t.ok("hsmPlatform" not in h74["attributes"] and h75["attributes"].get("hsmPlatform") == "2",
     "hsmPlatform (string) appears from 7.5 on", h75)

# ---- paging over REST -------------------------------------------------------------------------------------------
for i in range(3):
    kc.create_rsa_key("rp-%d" % i)
st, _, page = emu.vault("GET", "/keys?maxresults=2")
nl = page.get("nextLink") or ""
t.ok(st == 200 and len(page["value"]) == 2 and nl.startswith(
    "https://kvemu.vault.localhost:%d/keys?api-version=7.5&$skiptoken=" % port)
     and nl.endswith("&maxresults=2"), "nextLink is absolute, with port, api-version, $skiptoken",
     nl)
st, _, page2 = emu.vault("GET", nl, api=None)
t.ok(st == 200 and page2["value"] and page2["value"][0]["kid"] not in
     [x["kid"] for x in page["value"]], "following nextLink as given gives the next page")
st, _, body = emu.vault("GET", "/keys?maxresults=26")
t.eq((st, body["error"]["code"]), (400, "BadParameter"), "maxresults 26: 400")
t.ok(all("/keys/" in x["kid"] and x["kid"].count("/") == 4 for x in page["value"]),
     "list items: base kid without version")

# ---- client certificate ----------------------------------------------------------------------------------------------
ccert = CertificateCredential(taplib.TENANT, env["KVEMU_CERT_CLIENT_ID"], env["KVEMU_CERT_PATH"],
                              authority=login, instance_discovery=False, connection_verify=emu.ca)
t.check("CertificateCredential: KeyClient works",
        lambda: emu.key_client(ccert).get_key("authkey").name == "authkey")
cchain = CertificateCredential(taplib.TENANT, env["KVEMU_CERT_CLIENT_ID"], env["KVEMU_CERT_PATH"],
                               authority=login, instance_discovery=False, connection_verify=emu.ca,
                               send_certificate_chain=True)
t.check("CertificateCredential with send_certificate_chain (x5c)",
        lambda: cchain.get_token(SCOPE).token.count(".") == 2)
k2, c2 = pki.make_client_cert("stranger")
stranger = os.path.join(emu.dir, "stranger.pem")
with open(stranger, "wb") as f:
    f.write(pki.key_pem(k2) + pki.cert_pem(c2))
e = t.raises("unregistered certificate -> ClientAuthenticationError", ClientAuthenticationError,
             CertificateCredential(taplib.TENANT, env["KVEMU_CERT_CLIENT_ID"], stranger,
                                   authority=login, instance_discovery=False,
                                   connection_verify=emu.ca).get_token, SCOPE)
t.ok(e and "AADSTS700027" in str(e), "... AADSTS700027 (key not found)")
# A forged assertion: right thumbprint, wrong signing key.
import uuid  # noqa: E402
with open(env["KVEMU_CERT_PATH"], "rb") as f:
    real_cert = pki.load_certs_from_pem(f.read())[0]
now = int(time.time())
forged = kjwt.encode({"aud": "%s/%s/oauth2/v2.0/token" % (login, taplib.TENANT),
                      "iss": env["KVEMU_CERT_CLIENT_ID"], "sub": env["KVEMU_CERT_CLIENT_ID"],
                      "jti": str(uuid.uuid4()), "nbf": now, "exp": now + 600},
                     k2, {"x5t": pki.x5t(real_cert)})
st, _, r = token_post({"grant_type": "client_credentials", "client_id": env["KVEMU_CERT_CLIENT_ID"],
                       "scope": SCOPE, "client_assertion": forged, "client_assertion_type":
                       "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
t.ok(st == 401 and r["error_codes"] == [700027], "assertion signed by another key: 401 "
     "AADSTS700027", r)

# ---- workload identity (federated credential) ---------------------------------------------------------------------------
with open(env["KVEMU_FEDERATED_TOKEN_FILE"]) as f:
    fed = f.read().strip()
# This SDK version's ClientAssertionCredential cannot take keyword arguments (it passes them
# on to object.__init__), so authority and CA come from the environment.
os.environ["AZURE_AUTHORITY_HOST"] = login
os.environ["REQUESTS_CA_BUNDLE"] = emu.ca
wcred = ClientAssertionCredential(taplib.TENANT, env["KVEMU_WI_CLIENT_ID"], lambda: fed)
t.check("federated token file: ClientAssertionCredential works",
        lambda: emu.key_client(wcred).get_key("authkey").name == "authkey")
lit = ClientAssertionCredential(taplib.TENANT, env["KVEMU_WI_CLIENT_ID"],
                                lambda: "literal-federated-token-for-wi")
t.check("federated credential accepting a literal token", lit.get_token, SCOPE)
other = emu.admin("POST", "federated-token", {"identity": "wi", "subject": "system:sa:other"})
e = t.raises("federated token with the wrong subject -> ClientAuthenticationError",
             ClientAuthenticationError,
             ClientAssertionCredential(taplib.TENANT, env["KVEMU_WI_CLIENT_ID"],
                                       lambda: other["token"]).get_token, SCOPE)
t.ok(e and "AADSTS70021" in str(e), "... AADSTS70021")

# ---- managed identity -----------------------------------------------------------------------------------------------------
for k in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
          "AZURE_POD_IDENTITY_AUTHORITY_HOST"):
    os.environ.pop(k, None)
os.environ["IDENTITY_ENDPOINT"] = env["IDENTITY_ENDPOINT"]
os.environ["IDENTITY_HEADER"] = env["IDENTITY_HEADER"]
mi = ManagedIdentityCredential(connection_verify=emu.ca)
t.check("ManagedIdentityCredential, App Service form (IDENTITY_ENDPOINT/IDENTITY_HEADER)",
        lambda: emu.key_client(mi).get_key("authkey").name == "authkey")
c = emu.admin("GET", "counters")
t.ok(c["by_identity_route"].get("mi", {}).get("kvemu:getKey", 0) >= 1,
     "the vault saw the system-assigned identity 'mi'")
ua = ManagedIdentityCredential(client_id=env.get("KVEMU_UAMI_CLIENT_ID") or
                               emu.admin("GET", "identities/uami")["client_id"],
                               connection_verify=emu.ca)
t.check("user-assigned managed identity by client_id (App Service form)",
        lambda: emu.key_client(ua).get_key("authkey").name == "authkey")
st, _, r = emu.request("GET", env["IDENTITY_ENDPOINT"] + "?api-version=2019-08-01&resource=" +
                       VAULT_RES, headers={"X-IDENTITY-HEADER": "wrong"})
t.eq(st, 401, "App Service endpoint with a wrong X-IDENTITY-HEADER: 401")
del os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"]
os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emu.info["KVEMU_IMDS"]
mi2 = ManagedIdentityCredential()
t.check("ManagedIdentityCredential, IMDS form over plain http",
        lambda: emu.key_client(mi2).get_key("authkey").name == "authkey")
os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "https://localhost:%d" % port
mi3 = ManagedIdentityCredential(connection_verify=emu.ca)
t.check("ManagedIdentityCredential, IMDS form on the TLS port", mi3.get_token, SCOPE)
del os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
imds = emu.info["KVEMU_IMDS"] + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
st, _, r = emu.request("GET", imds + VAULT_RES)
t.ok(st == 400 and r["error"] == "invalid_request", "IMDS without Metadata header: 400", r)
st, _, r = emu.request("GET", imds + VAULT_RES, headers={"Metadata": "true"})
t.ok(st == 200 and r["expires_in"].isdigit() and r["expires_on"].isdigit() and
     r["resource"] == VAULT_RES, "IMDS answer: expires_in/expires_on are strings", r)
st, _, r = emu.request("GET", imds + VAULT_RES + "&client_id=nope", headers={"Metadata": "true"})
t.eq((st, r.get("error")), (400, "invalid_request"), "IMDS unknown client_id: 400")

# ---- admin endpoint requires its token ---------------------------------------------------------------------------------------
st, _, r = emu.request("GET", "https://localhost:%d/_admin/status" % port)
t.eq(st, 401, "admin API without its token: 401")
# The admin route table (kvemulib/admin.py, ADMIN_ROUTES): an unknown vault
# or identity is named before the route is judged; a method a collection
# lacks is an unknown route.
for m, p, want in [
        ("PUT", "identities", "unknown admin route PUT /_admin/identities"),
        ("DELETE", "vaults", "unknown admin route DELETE /_admin/vaults"),
        ("GET", "vaults/kvemu/keys", "unknown admin route GET /_admin/vaults/kvemu/keys"),
        ("GET", "vaults/nope/keys", "vault nope not found"),
        ("POST", "identities/nobody/secrets", "identity nobody not found"),
        ("GET", "Status", "unknown admin route GET /_admin/Status")]:
    st, _, r = emu.request(m, "https://localhost:%d/_admin/%s" % (port, p),
                           headers={"Authorization": "Bearer " + emu.admin_info["token"]})
    t.eq((st, r["error"]["code"], r["error"]["message"]), (404, "NotFound", want),
         "admin %s /_admin/%s: 404 %s" % (m, p, want))

# ---- env file -------------------------------------------------------------------------------------------------------------------
with open(os.path.join(emu.state, "env")) as f:
    text = f.read()
need = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST",
        "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE", "VAULT_URL"]
t.ok(all("export %s=" % k in text for k in need), "env file exports the SDK variables")
t.ok(os.path.exists(os.path.join(emu.state, "kvemu.pid")), "pid file written")

# ---- SIGTERM ---------------------------------------------------------------------------------------------------------------------
emu.proc.send_signal(signal.SIGTERM)
try:
    rc = emu.proc.wait(15)
except Exception:
    rc = None
rest = emu.proc.stdout.read().decode()
t.ok(rc == 0 and "KVEMU_STOPPED=1" in rest, "SIGTERM: clean exit 0", "rc=%r %r" % (rc, rest))
emu.stop()
