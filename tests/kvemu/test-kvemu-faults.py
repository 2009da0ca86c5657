#!/usr/bin/python3
"""Fault injection, latency, forced token expiry, revocation, credentials and counters."""
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taplib  # noqa: E402

taplib.need_azure()

from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,  # noqa: E402
                                   ServiceRequestError, ServiceResponseError)
from azure.identity import CertificateCredential, ClientSecretCredential  # noqa: E402

t = taplib.Tap()
emu = taplib.Emu(taplib.test_config())
env = emu.env
login = env["AZURE_AUTHORITY_HOST"]
SCOPE = "https://vault.localhost:%d/.default" % emu.port
kc = emu.key_client()
kc.create_rsa_key("fk")
tok = emu.token("app")
TRANSPORT = (ServiceRequestError, ServiceResponseError)


def code(e):
    return getattr(getattr(e, "error", None), "code", None)


def fault(**spec):
    return emu.admin("POST", "faults", spec)


def get(token=tok, **kw):
    return emu.vault("GET", "/keys/fk", token=token, **kw)


def counters():
    return emu.admin("GET", "counters")


# ---- 429 ----------------------------------------------------------------------------------------------
fault(kind="429", match="kvemu:getKey", retry_after=2)
st, h, body = get()
t.ok(st == 429 and h.get("retry-after") == "2" and body["error"]["code"] == "Throttled",
     "429 with Retry-After: status, header and Throttled body", (st, h, body))
t.eq(get()[0], 200, "count defaults to 1: the next request passes")
fault(kind="429", match="kvemu:getKey")
st, h, body = get()
t.ok(st == 429 and "retry-after" not in h, "429 without Retry-After", h)
fault(kind="429", match="kvemu:getKey")
e = t.raises("SDK without retries: 429 -> HttpResponseError", HttpResponseError, kc.get_key, "fk")
t.eq((e and e.status_code, code(e)), (429, "Throttled"), "... status 429, code Throttled")
emu.admin("POST", "counters/reset")
fault(kind="429", match="kvemu:getKey", retry_after=1)
t0 = time.time()
rk = emu.key_client(retry_total=3)
ok = rk.get_key("fk").name == "fk"
dt = time.time() - t0
t.ok(ok and dt >= 0.9, "SDK with retries honours Retry-After: 1 and then succeeds",
     "elapsed %.2f" % dt)
rs = counters()["by_route_status"]["kvemu:getKey"]
t.eq((rs.get("429"), rs.get("200")), (1, 1), "counters saw one 429 and one 200")
fault(kind="429", match="kvemu:getKey", count=2)
t.check("SDK retries 429 without Retry-After (exponential backoff)",
        lambda: emu.key_client(retry_total=3, retry_backoff_factor=0.05).get_key("fk"))

# ---- 500 / 503 / arbitrary status ----------------------------------------------------------------------------
fault(kind="500", match="kvemu:getKey")
e = t.raises("500 -> HttpResponseError", HttpResponseError, kc.get_key, "fk")
t.eq((e and e.status_code, code(e)), (500, "InternalServerError"), "... 500 InternalServerError")
fault(kind="500", match="kvemu:getKey")
t.check("SDK with retries recovers from one 500",
        lambda: emu.key_client(retry_total=2, retry_backoff_factor=0.05).get_key("fk"))
fault(kind="503", match="kvemu:getKey", retry_after=7)
st, h, body = get()
t.ok(st == 503 and h.get("retry-after") == "7" and body["error"]["code"] == "ServiceUnavailable",
     "503 with Retry-After", (st, h, body))
fault(kind="status", status=502, match="kvemu:getKey")
t.eq(get()[0], 502, "arbitrary status (502)")

# ---- connection reset -----------------------------------------------------------------------------------------------
fault(kind="reset", match="kvemu:getKey")
try:
    get(fresh=True)
    got = None
except Exception as ex:
    got = ex
t.ok(isinstance(got, (ConnectionError, OSError)) or type(got).__name__ == "RemoteDisconnected",
     "reset: raw client sees the connection dropped", repr(got))
fault(kind="reset", match="kvemu:getKey")
e = t.raises("reset: SDK without retries raises a transport error", TRANSPORT, kc.get_key, "fk")
fault(kind="reset", match="kvemu:getKey")
t.check("reset: SDK with retries recovers",
        lambda: emu.key_client(retry_total=2, retry_backoff_factor=0.05).get_key("fk"))

# ---- delay, hang, global latency ----------------------------------------------------------------------------------------
fault(kind="delay", match="kvemu:getKey", delay_ms=1500)
t0 = time.time()
st = get()[0]
dt = time.time() - t0
t.ok(st == 200 and 1.4 <= dt < 10, "delay 1500 ms, then a normal answer", "%d %.2f" % (st, dt))
hc = emu.key_client(read_timeout=1.5)
hc.get_key("fk")   # token and challenge done before the clock starts
# The hang is long, so that giving up at the read timeout and waiting for
# the answer stay apart even on a loaded machine.
fault(kind="hang", match="kvemu:getKey", hang_ms=12000)
t0 = time.time()
e = t.raises("hang: SDK with a 1.5 s read timeout raises", TRANSPORT, hc.get_key, "fk")
dt = time.time() - t0
t.ok(1.4 <= dt < 11, "... after the read timeout, not the hang", "%.2f s" % dt)
emu.admin("PUT", "latency", {"vault_ms": 100})
t0 = time.time()
for _ in range(5):
    get()
dt = time.time() - t0
emu.admin("PUT", "latency", {"vault_ms": 0})
t.ok(dt >= 0.5, "global latency 100 ms: 5 requests take >= 0.5 s", "%.2f s" % dt)

# ---- matching: rate, skip, identity, removal --------------------------------------------------------------------------------
f = fault(kind="500", match="*:getKey", rate=0.5)
fails = sum(get()[0] == 500 for _ in range(40))
emu.admin("DELETE", "faults/" + f["id"])
t.ok(5 <= fails <= 35, "rate 0.5 over 40 requests", "failures: %d" % fails)
t.eq(get()[0], 200, "removing a fault by id")
fault(kind="500", match="kvemu:getKey", skip=2)
t.eq([get()[0] for _ in range(4)], [200, 200, 500, 200], "skip 2: the third request fails")
fault(kind="503", match="kvemu:*", identity="reader", count=5)
t.eq((get()[0], get(token=emu.token("reader"))[0]), (200, 503),
     "identity-scoped fault hits only that identity")
emu.admin("DELETE", "faults")
t.eq(emu.admin("GET", "faults")["faults"], [], "clear all faults")

# ---- identity endpoints ------------------------------------------------------------------------------------------------------------
fault(kind="503", match="login:token")
emu.admin("POST", "counters/reset")
cred = ClientSecretCredential(taplib.TENANT, env["AZURE_CLIENT_ID"], env["AZURE_CLIENT_SECRET"],
                              authority=login, instance_discovery=False, connection_verify=emu.ca,
                              retry_backoff_factor=0.05)
t.check("token endpoint 503 once: credential retries and gets a token", cred.get_token, SCOPE)
ts = counters()["by_route_status"].get("login:token", {})
t.eq((ts.get("503"), ts.get("200")), (1, 1), "token endpoint counters: one 503, one 200")
fault(kind="429", match="imds:token", retry_after=3)
st, h, body = emu.request("GET", emu.info["KVEMU_IMDS"] + "/metadata/identity/oauth2/token?"
                          "api-version=2018-02-01&resource=https://vault.localhost:%d" % emu.port,
                          headers={"Metadata": "true"})
t.ok(st == 429 and h.get("retry-after") == "3", "IMDS 429 with Retry-After", (st, h))

# ---- forced expiry and token lifetime -------------------------------------------------------------------------------------------------
c1 = emu.key_client()
c1.get_key("fk")
emu.admin("POST", "tokens/expire", {})
e = t.raises("forced expiry: a client holding the old token gets 401", HttpResponseError,
             c1.get_key, "fk")
t.eq(e and e.status_code, 401, "... status 401")
t.check("forced expiry: a fresh credential works", lambda: emu.key_client().get_key("fk"))
rtok = emu.token("reader")
emu.admin("POST", "tokens/expire", {"identity": "reader"})
t.eq((get(token=rtok)[0], get(token=emu.token("app"))[0]), (401, 200),
     "per-identity expiry affects only that identity")
emu.admin("PUT", "tokens/lifetime", {"seconds": 2})
emu.admin("POST", "counters/reset")
c2 = emu.key_client()
c2.get_key("fk")
time.sleep(2.5)
t.check("short token lifetime: the SDK fetches a new token after expiry",
        lambda: c2.get_key("fk"))
t.eq(counters()["by_route_status"].get("login:token", {}).get("200"), 2,
     "... two token requests")
emu.admin("PUT", "tokens/lifetime", {"seconds": 3599})

# ---- revoke / restore -------------------------------------------------------------------------------------------------------------------
c3 = emu.key_client()
c3.get_key("fk")
emu.admin("POST", "identities/app/revoke", {"vault": "kvemu"})
e = t.raises("revoked identity -> 403", HttpResponseError, c3.get_key, "fk")
t.eq((e and e.status_code, code(e)), (403, "Forbidden"), "... Forbidden")
t.check("revocation is per vault: kvpurge still works",
        lambda: emu.key_client(url=emu.url("kvpurge")).list_properties_of_keys().next
        if False else list(emu.key_client(url=emu.url("kvpurge")).list_properties_of_keys()))
emu.admin("POST", "identities/app/restore", {"vault": "kvemu"})
t.check("restored identity works again", c3.get_key, "fk")
emu.admin("PUT", "vaults/kvemu/access/reader", {"permissions": ["get"]})
rd = emu.key_client(ClientSecretCredential(
    taplib.TENANT, emu.admin("GET", "identities/reader")["client_id"], "reader-secret",
    authority=login, instance_discovery=False, connection_verify=emu.ca))
e = t.raises("set-access to [get]: list refused", HttpResponseError,
             lambda: list(rd.list_properties_of_keys()))
t.check("... get allowed", rd.get_key, "fk")

# ---- secrets and certificates ---------------------------------------------------------------------------------------------------------------
rid = emu.admin("GET", "identities/reader")["client_id"]


def reader_cred(secret):
    return ClientSecretCredential(taplib.TENANT, rid, secret, authority=login,
                                  instance_discovery=False, connection_verify=emu.ca)


added = emu.admin("POST", "identities/reader/secrets", {"secret": "second-secret"})
t.check("added secret works", reader_cred("second-secret").get_token, SCOPE)
emu.admin("DELETE", "identities/reader/secrets", {"secret": "reader-secret"})
t.raises("removed secret fails", ClientAuthenticationError, reader_cred("reader-secret").get_token,
         SCOPE)
gen = emu.admin("POST", "identities/reader/certificates", {})
ccred = CertificateCredential(taplib.TENANT, rid, gen["path"], authority=login,
                              instance_discovery=False, connection_verify=emu.ca)
t.check("generated certificate added to an identity works", ccred.get_token, SCOPE)
emu.admin("DELETE", "identities/reader/certificates",
          {"thumbprint": gen["certificate"]["sha1"]})
t.raises("removed certificate fails", ClientAuthenticationError,
         CertificateCredential(taplib.TENANT, rid, gen["path"], authority=login,
                               instance_discovery=False, connection_verify=emu.ca).get_token,
         SCOPE)

# ---- counters ---------------------------------------------------------------------------------------------------------------------------------------
emu.admin("POST", "counters/reset")
rtok = emu.token("app")
for _ in range(3):
    get(token=rtok)
emu.vault("GET", "/keys/nosuch", token=rtok)
emu.vault("POST", "/keys/fk/sign", {"alg": "RS256", "value": "A" * 43}, token=rtok)
emu.request("GET", emu.vault_url + "/keys/fk?api-version=7.5")
c = counters()
t.eq(c["total"], 6, "counters: total")
t.eq(c["by_route_status"]["kvemu:getKey"], {"200": 3, "404": 1, "401": 1},
     "counters: per route and status")
t.eq((c["by_identity"].get("app"), c["by_identity"].get("-")), (5, 1),
     "counters: per identity ('-' for unauthenticated)")
t.eq(c["by_identity_route"]["app"].get("kvemu:sign"), 1, "counters: per identity and route")
t.eq(emu.admin("POST", "counters/reset")["reset"] and counters()["total"], 0, "counters reset")

# ---- bulk keys ---------------------------------------------------------------------------------------------------------------------------------------
t0 = time.time()
res = emu.admin("POST", "vaults/kvpurge/keys", {"name": "bulk", "count": 1000, "distinct": 2})
dt = time.time() - t0
t.ok(res["created"] == 1000, "bulk create of 1000 keys", "%.1f s" % dt)
url, n, pages = emu.url("kvpurge") + "/keys?maxresults=25", 0, 0
ptok = emu.token("app")
while url and pages < 100:
    st, _, page = emu.vault("GET", url, token=ptok, api=None if "api-version" in url else "7.5")
    n += sum(1 for x in page["value"] if "/keys/bulk-" in x["kid"])
    url, pages = page.get("nextLink"), pages + 1
t.eq((n, pages), (1000, 40), "1000 bulk keys listed over 40 pages")
st, _, kb = emu.vault("GET", emu.url("kvpurge") + "/keys/bulk-999", token=ptok)
t.eq(st, 200, "bulk keys are named NAME-000 .. NAME-999")

# ---- admin CLI ----------------------------------------------------------------------------------------------------------------------------------------
cli = [taplib.PYTHON, os.path.join(taplib.HERE, "kvemu-admin"), "--state-dir", emu.state]
p = subprocess.run(cli + ["fault", "503", "--match", "kvemu:getKey", "--retry-after", "5"],
                   capture_output=True, text=True, timeout=60)
t.ok(p.returncode == 0 and json.loads(p.stdout)["kind"] == "503", "kvemu-admin fault", p.stderr)
st, h, _ = get(token=emu.token("app"))
t.ok(st == 503 and h.get("retry-after") == "5", "... the CLI's fault happens")
p = subprocess.run(cli + ["counters"], capture_output=True, text=True, timeout=60)
t.ok(p.returncode == 0 and json.loads(p.stdout)["by_route_status"]["kvemu:getKey"]["503"] >= 1,
     "kvemu-admin counters", p.stderr)
p = subprocess.run([taplib.PYTHON, taplib.KVEMU, "admin", "--state-dir", emu.state, "create-key",
                    "kvemu", "cli-key", "--disabled"], capture_output=True, text=True, timeout=60)
st, _, kb = emu.vault("GET", "/keys/cli-key", token=emu.token("app"))
t.ok(p.returncode == 0 and st == 200 and kb["attributes"]["enabled"] is False,
     "kvemu admin create-key --disabled", p.stderr)
p = subprocess.run(cli + ["latency", "20"], capture_output=True, text=True, timeout=60)
t.ok(p.returncode == 0 and emu.admin("GET", "latency")["vault_ms"] == 20, "kvemu-admin latency 20")
emu.stop()
