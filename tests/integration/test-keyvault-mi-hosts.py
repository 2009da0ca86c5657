#!/usr/bin/python3
"""Managed identity on every Azure host, as azure-identity detects it
(issue 15, items 4 and 5). For each host a small capture server stands in
for the identity endpoint and records method, URL, headers and body; it
answers with a real token from the emulator, so cmkp11-tool list then
reads the vault. Azure Arc's Basic challenge (and a key file outside the
tokens directory refused), Service Fabric's certificate pinned by
thumbprint (a wrong pin never sends the request), user-assigned selectors
in each host's spelling, the DefaultAzureCredential-like choice without
auth =, IMDS never through http_proxy, and IMDS's 404 and 410 retried.
The wire formats follow azure-identity's _credentials/imds.py,
app_service.py, service_fabric.py, azure_arc.py, azure_ml.py and
cloud_shell.py."""
import datetime
import hashlib
import http.server
import json
import os
import ssl
import subprocess
import threading
import urllib.parse

from kvtest import Tap, conf_text, emulator_config, token_section, write_private
from taplib import Emu
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

t = Tap()
builddir = os.environ.get("top_builddir", ".")
TOOL = os.path.join(builddir, "cmkp11-tool")
MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
WI_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e05"
cfg = emulator_config()
cfg["identities"].append({"name": "wi", "client_id": WI_ID, "federated": [
    {"issuer": "@emulator", "subject": "system:serviceaccount:default:wi"}]})
cfg["vaults"][0]["access"]["wi"] = ["all"]
emu = Emu(cfg)
work = emu.dir
emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})
RESOURCE = "https://vault.localhost:%d" % emu.port
TOKEN = emu.token("mi", RESOURCE)
MI_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e02"


class Capture:
    """An identity endpoint that records each request. answer(req) gives
    (status, headers, body) for a request dict."""

    def __init__(self, answer, tls=None):
        self.requests = []
        self.answer = answer
        cap = self

        class H(http.server.BaseHTTPRequestHandler):
            def do(self):
                n = int(self.headers.get("Content-Length") or 0)
                req = {"method": self.command, "path": self.path,
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": self.rfile.read(n).decode() if n else ""}
                u = urllib.parse.urlsplit(self.path)
                req["route"] = u.path
                req["query"] = dict(urllib.parse.parse_qsl(u.query))
                cap.requests.append(req)
                status, headers, body = cap.answer(req)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket,
                                                server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path="", scheme="http"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)


def token_body(expires=True):
    b = {"access_token": TOKEN, "token_type": "Bearer",
         "resource": RESOURCE}
    if expires:
        b["expires_in"] = "3599"
    return b


def ok(req):
    return 200, [], token_body()


CLEAN = ["IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT",
         "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID",
         "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE",
         "AZURE_CLIENT_CERTIFICATE_PATH", "http_proxy", "https_proxy",
         "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"]


def run(name, token_extra="", env=None, auth="auth = managed-identity\n"):
    """cmkp11-tool list on a token of this configuration and environment;
    returns (exit status, output, log)."""
    log = os.path.join(work, name + ".log")
    conf = write_private(os.path.join(work, name + ".conf"), conf_text(
        [token_section("kv", backend="keyvault", vault_url=emu.vault_url,
                       ca_file=emu.ca, retries=2, keys="kek") + auth + token_extra],
        log_level="info", log_file=log))
    e = {k: v for k, v in os.environ.items() if k not in CLEAN}
    e.update(env or {})
    e["CMKP11_CONF"] = conf
    p = subprocess.run([TOOL, "--module", MODULE, "list", "kv"], env=e,
                       capture_output=True, timeout=120)
    text = open(log).read() if os.path.exists(log) else ""
    return p.returncode, p.stdout.decode() + p.stderr.decode(), text


def listed(rc, out):
    return rc == 0 and "kek" in out


# ---- IMDS ---------------------------------------------------------------
c = Capture(ok)
rc, out, _ = run("imds", "imds-endpoint = %s\n" % c.url())
r = c.requests[0] if c.requests else {}
t.ok(listed(rc, out), "IMDS: the token opens the vault", out)
t.eq((r.get("method"), r.get("route"), r.get("query"),
      r.get("headers", {}).get("metadata")),
     ("GET", "/metadata/identity/oauth2/token",
      {"api-version": "2018-02-01", "resource": RESOURCE}, "true"),
     "IMDS: GET /metadata/identity/oauth2/token, api-version 2018-02-01, "
     "resource, Metadata: true")
for sel, key, name in (("client-id = abc\n", "client_id", "client-id"),
                       ("object-id = oid1\n", "object_id", "object-id"),
                       ("resource-id = /sub/x/rg/y\n", "msi_res_id",
                        "resource-id")):
    c.requests.clear()
    run("imds-" + key, "imds-endpoint = %s\n%s" % (c.url(), sel))
    q = c.requests[0]["query"] if c.requests else {}
    t.ok(key in q and len(q) == 3,
         "IMDS: %s is sent as %s" % (name, key), q)

# IMDS never through a proxy.
proxy = Capture(ok)
c.requests.clear()
rc, out, _ = run("imds-proxy", "imds-endpoint = %s\n" % c.url(),
                 env={"http_proxy": proxy.url(), "HTTP_PROXY": proxy.url()})
t.ok(listed(rc, out) and len(c.requests) == 1 and proxy.requests == [],
     "IMDS with http_proxy set: straight to the endpoint, the proxy sees "
     "nothing", (len(c.requests), proxy.requests))

# 404 and 410 are retried.
state = {"n": 0}


def flaky(req):
    state["n"] += 1
    if state["n"] == 1:
        return 404, [], {"error": "not_found"}
    if state["n"] == 2:
        return 410, [], {"error": "gone"}
    return ok(req)


f = Capture(flaky)
rc, out, _ = run("imds-retry", "imds-endpoint = %s\n" % f.url())
t.ok(listed(rc, out) and len(f.requests) == 3,
     "IMDS: a 404 and a 410 are retried (3 requests)", len(f.requests))

# ---- App Service ----------------------------------------------------------
a = Capture(ok)
env = {"IDENTITY_ENDPOINT": a.url("/msi/token"), "IDENTITY_HEADER": "hdr-1"}
rc, out, _ = run("appservice", env=env)
r = a.requests[0] if a.requests else {}
t.ok(listed(rc, out), "App Service: the token opens the vault", out)
t.eq((r.get("method"), r.get("route"), r.get("query"),
      r.get("headers", {}).get("x-identity-header")),
     ("GET", "/msi/token", {"api-version": "2019-08-01",
                            "resource": RESOURCE}, "hdr-1"),
     "App Service: GET IDENTITY_ENDPOINT, api-version 2019-08-01, "
     "X-IDENTITY-HEADER")
for sel, key in (("client-id = c1\n", "client_id"),
                 ("object-id = o1\n", "principal_id"),
                 ("resource-id = /r/1\n", "mi_res_id")):
    a.requests.clear()
    run("appservice-" + key, sel, env=env)
    q = a.requests[0]["query"] if a.requests else {}
    t.ok(key in q, "App Service: a user-assigned identity by %s" % key, q)

# ---- Azure Arc ------------------------------------------------------------
tokdir = os.path.join(work, "arc-tokens")
os.mkdir(tokdir)
keyfile = os.path.join(tokdir, "challenge.key")
with open(keyfile, "w") as fh:
    fh.write("arc-secret-123")
outside = os.path.join(work, "outside.key")
with open(outside, "w") as fh:
    fh.write("arc-secret-123")
realm = {"path": keyfile}


def arc(req):
    if req["headers"].get("authorization") != "Basic arc-secret-123":
        return 401, [("WWW-Authenticate", "Basic realm=%s" % realm["path"])], \
            None
    return ok(req)


ar = Capture(arc)
env = {"IDENTITY_ENDPOINT": ar.url("/metadata/identity/oauth2/token"),
       "IMDS_ENDPOINT": ar.url()}
rc, out, _ = run("arc", "arc-token-directory = %s\n" % tokdir, env=env)
t.ok(listed(rc, out), "Azure Arc: the token opens the vault", out)
rs = ar.requests
t.eq([(x["method"], x["query"].get("api-version"),
       x["headers"].get("metadata"), x["headers"].get("authorization"))
      for x in rs],
     [("GET", "2019-11-01", "true", None),
      ("GET", "2019-11-01", "true", "Basic arc-secret-123")],
     "Azure Arc: a first GET, the 401 Basic challenge, then the file's "
     "contents as Authorization: Basic")
big = os.path.join(tokdir, "big.key")
with open(big, "w") as fh:
    fh.write("x" * 4097)
ar.requests.clear()
realm["path"] = big
rc, out, text = run("arc-big", "arc-token-directory = %s\n" % tokdir, env=env)
t.ok(rc != 0 and len(ar.requests) == 1 and "at most 4096 bytes" in text,
     "Azure Arc: a key file over 4096 bytes is refused", text[-300:])
ar.requests.clear()
realm["path"] = outside
rc, out, text = run("arc-outside", "arc-token-directory = %s\n" % tokdir,
                    env=env)
t.ok(rc != 0 and len(ar.requests) == 1 and "is not in %s" % tokdir in text,
     "Azure Arc: a key file outside the tokens directory is refused, its "
     "contents never sent", text[-500:])
realm["path"] = keyfile
rc, out, text = run("arc-uami", "arc-token-directory = %s\nclient-id = x\n"
                    % tokdir, env=env)
t.ok(rc != 0 and "Azure Arc has no user-assigned identities" in out + text,
     "Azure Arc: a user-assigned identity is refused, as the SDK does",
     out + text[-300:])

# ---- Azure ML -------------------------------------------------------------
ml = Capture(lambda req: (200, [], dict(token_body(False),
                                         expires_on="06/20/2099 02:57:58 +00:00")))
env = {"MSI_ENDPOINT": ml.url("/msi/token"), "MSI_SECRET": "ml-secret"}
rc, out, _ = run("azureml", "client-id = cid9\n", env=env)
r = ml.requests[0] if ml.requests else {}
t.ok(listed(rc, out), "Azure ML: the token (expires_on as a date) opens "
     "the vault", out)
t.eq((r.get("method"), r.get("query"), r.get("headers", {}).get("secret")),
     ("GET", {"api-version": "2017-09-01", "resource": RESOURCE,
              "clientid": "cid9"}, "ml-secret"),
     "Azure ML: GET, api-version 2017-09-01, clientid, header secret")

# ---- Cloud Shell ----------------------------------------------------------
cs = Capture(ok)
rc, out, _ = run("cloudshell", env={"MSI_ENDPOINT": cs.url("/oauth2/token")})
r = cs.requests[0] if cs.requests else {}
t.ok(listed(rc, out), "Cloud Shell: the token opens the vault", out)
t.eq((r.get("method"), r.get("route"),
      r.get("headers", {}).get("content-type"),
      dict(urllib.parse.parse_qsl(r.get("body", ""))),
      r.get("headers", {}).get("metadata")),
     ("POST", "/oauth2/token", "application/x-www-form-urlencoded",
      {"resource": RESOURCE}, "true"),
     "Cloud Shell: a form POST of resource, Metadata: true")

# ---- Service Fabric: the certificate pinned by thumbprint -------------------
sf_key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sf-node")])
now = datetime.datetime.now(datetime.timezone.utc)
sf_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(sf_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(days=1))
           .not_valid_after(now + datetime.timedelta(days=30))
           .sign(sf_key, hashes.SHA256()))
pem = os.path.join(work, "sf.pem")
with open(pem, "wb") as fh:
    fh.write(sf_key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    fh.write(sf_cert.public_bytes(serialization.Encoding.PEM))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(pem)
thumb = hashlib.sha1(sf_cert.public_bytes(serialization.Encoding.DER)).hexdigest()
sf = Capture(ok, tls=ctx)
env = {"IDENTITY_ENDPOINT": sf.url("/metadata/identity/oauth2/token", "https"),
       "IDENTITY_HEADER": "sf-secret", "IDENTITY_SERVER_THUMBPRINT": thumb.upper()}
rc, out, _ = run("sf", env=env)
r = sf.requests[0] if sf.requests else {}
t.ok(listed(rc, out), "Service Fabric: a self-signed certificate with the "
     "pinned thumbprint is accepted", out)
t.eq((r.get("method"), r.get("query"), r.get("headers", {}).get("secret")),
     ("GET", {"api-version": "2019-07-01-preview", "resource": RESOURCE},
      "sf-secret"),
     "Service Fabric: GET, api-version 2019-07-01-preview, header Secret")
sf.requests.clear()
env["IDENTITY_SERVER_THUMBPRINT"] = "00" * 20
rc, out, text = run("sf-wrong", env=env)
t.ok(rc != 0 and sf.requests == [] and "not the pinned" in text,
     "Service Fabric: another thumbprint fails the handshake; the secret is "
     "never sent", (sf.requests, text[-400:]))

# ---- without auth =: as DefaultAzureCredential chooses ----------------------
c.requests.clear()
rc, out, _ = run("default-mi", "imds-endpoint = %s\n" % c.url(), auth="")
t.ok(listed(rc, out) and len(c.requests) == 1,
     "no auth =, nothing in the environment: managed identity")
c.requests.clear()
secret = write_private(os.path.join(work, "app.secret"),
                       "kvemu-client-secret\n")
rc, out, _ = run("default-env", "imds-endpoint = %s\n" % c.url(), auth="",
                 env={"AZURE_TENANT_ID": emu.env["AZURE_TENANT_ID"],
                      "AZURE_CLIENT_ID": emu.env["AZURE_CLIENT_ID"],
                      "AZURE_CLIENT_SECRET": "kvemu-client-secret",
                      "AZURE_AUTHORITY_HOST": emu.env["AZURE_AUTHORITY_HOST"]})
t.ok(listed(rc, out) and c.requests == [],
     "no auth =, a service principal in the environment: client secret, "
     "not managed identity", out)
c.requests.clear()
fed = write_private(os.path.join(work, "federated-token"), emu.admin(
    "POST", "federated-token", {"identity": "wi"})["token"])
emu.admin("DELETE", "counters")
rc, out, _ = run("default-wi", "imds-endpoint = %s\n" % c.url(), auth="",
                 env={"AZURE_TENANT_ID": emu.env["AZURE_TENANT_ID"],
                      "AZURE_CLIENT_ID": WI_ID,
                      "AZURE_FEDERATED_TOKEN_FILE": fed,
                      "AZURE_AUTHORITY_HOST": emu.env["AZURE_AUTHORITY_HOST"]})
cn = emu.admin("GET", "counters")
t.ok(listed(rc, out) and c.requests == [] and
     cn.get("by_identity_route", {}).get("wi", {}).get("login:token", 0) >= 1,
     "no auth =, AZURE_FEDERATED_TOKEN_FILE set: workload identity", out)

logs = ""
for fn in os.listdir(work):
    if fn.endswith(".log"):
        with open(os.path.join(work, fn)) as fh:
            logs += fh.read()
t.ok(logs != "" and not any(x in logs for x in (
    "arc-secret-123", "ml-secret", "sf-secret", "hdr-1", TOKEN)),
    "no identity secret and no token in any log")
