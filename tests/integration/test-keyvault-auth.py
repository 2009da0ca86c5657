#!/usr/bin/python3
"""Every auth method of the keyvault back end against the emulator: an
unwrap through cmkp11 succeeds with each, and the emulator's counters show
which identity made it. Client certificate (PEM and PKCS#12 with a
password file), workload identity (federated-token-file and
AZURE_FEDERATED_TOKEN_FILE), azure-cli (a stub az first on PATH),
access-token-file (a replaced file is used without a restart), managed
identity in App Service form (IDENTITY_ENDPOINT / IDENTITY_HEADER), the
secondary client secret, and a refused credential."""
import json
import os
import stat
import time

from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, count, delta, unwrap,
                    public_key, emulator_config, write_private, TENANT, APP_ID,
                    skip_all)

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography import x509
except ImportError:
    skip_all("python3-cryptography missing")

P = PyKCS11
CERT_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e03"
WI_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e04"
WI_SUBJECT = "system:serviceaccount:default:wi"
UNWRAP = "kvemu:unwrapKey"

cfg = emulator_config()
cfg["identities"] += [
    {"name": "certapp", "client_id": CERT_ID,
     "client_certificates": [{"generate": "client-cert"}]},
    {"name": "wi", "client_id": WI_ID,
     "federated": [{"issuer": "@emulator", "subject": WI_SUBJECT}]},
]
for v in cfg["vaults"]:
    v["access"].update({"certapp": ["all"], "wi": ["all"]})

t = Tap()
s = KvSetup(cfg)
emu = s.emu
d = s.dir
login = emu.env["AZURE_AUTHORITY_HOST"]
resource = "https://vault.localhost:%d" % emu.port

# ---- credential files ---------------------------------------------------
pem_src = os.path.join(emu.state, "client-cert.pem")
with open(pem_src, "rb") as f:
    pem = f.read()
pem_file = os.path.join(d, "client.pem")
with open(pem_file, "wb") as f:
    f.write(pem)
os.chmod(pem_file, 0o600)
key = serialization.load_pem_private_key(pem, None)
cert = x509.load_pem_x509_certificate(pem)
p12_pass = "p12-password-\u00e9"
# A PKCS#12 file ends with random bytes (its MAC). One that ends with a
# line feed, which a text file's reading would strip: made again until it
# does (1 in 256; 14 ms each here).
for tries in range(4000):
    p12 = pkcs12.serialize_key_and_certificates(
        b"cmkp11", key, cert, None,
        serialization.BestAvailableEncryption(p12_pass.encode()))
    if p12.endswith(b"\n"):
        break
t.ok(p12.endswith(b"\n"), "a PKCS#12 file that ends with a line feed "
     "(%d made)" % (tries + 1))
p12_file = os.path.join(d, "client.p12")
with open(p12_file, "wb") as f:
    f.write(p12)
os.chmod(p12_file, 0o600)
p12_pass_file = write_private(os.path.join(d, "p12.pass"), p12_pass + "\n")

fed = emu.admin("POST", "federated-token", {"identity": "wi"})["token"]
fed_file = write_private(os.path.join(d, "federated-token"), fed)
fed_bad = write_private(os.path.join(d, "federated-token-bad"), emu.admin(
    "POST", "federated-token",
    {"identity": "wi", "subject": "system:serviceaccount:other:sa"})["token"])
fed_env_file = write_private(os.path.join(d, "federated-token-env"), fed)
os.environ["AZURE_FEDERATED_TOKEN_FILE"] = fed_env_file

# A stub az that records its arguments and prints a token the emulator
# minted for the identity app and the vaults' resource.
cli_tok = emu.admin("POST", "tokens/issue",
                    {"identity": "app", "resource": resource})
bindir = os.path.join(d, "bin")
os.mkdir(bindir)
cli_out = write_private(os.path.join(d, "az.json"), json.dumps(
    {"accessToken": cli_tok["access_token"],
     "expires_on": int(cli_tok["expires_on"]), "tokenType": "Bearer"}))
cli_args = os.path.join(d, "az.args")
with open(os.path.join(bindir, "az"), "w") as f:
    f.write("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> '%s'\ncat '%s'\n"
            % (cli_args, cli_out))
os.chmod(os.path.join(bindir, "az"), 0o755)
os.environ["PATH"] = bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin")

atf = os.path.join(d, "access-token")
write_private(atf, emu.token("app", resource))

# App Service managed identity: read from the environment at C_Initialize.
os.environ["IDENTITY_ENDPOINT"] = emu.env["IDENTITY_ENDPOINT"]
os.environ["IDENTITY_HEADER"] = emu.env["IDENTITY_HEADER"]

wrong = write_private(os.path.join(d, "wrong.secret"), "not-the-secret\n")


def body(auth, extra=""):
    return "backend = keyvault\nvault-url = %s\nca-file = %s\nauth = %s\n" \
        "tenant-id = %s\nauthority-host = %s\n%s" % (
            s.vault_url(), emu.ca, auth, TENANT, login, extra)


s.write_conf([
    ("certpem", body("client-certificate",
                     "client-id = %s\nclient-certificate-file = %s\n"
                     % (CERT_ID, pem_file))),
    ("certp12", body("client-certificate",
                     "client-id = %s\nclient-certificate-file = %s\n"
                     "client-certificate-password-file = %s\n"
                     % (CERT_ID, p12_file, p12_pass_file))),
    ("wifile", body("workload-identity", "client-id = %s\n"
                    "federated-token-file = %s\n" % (WI_ID, fed_file))),
    ("wienv", body("workload-identity", "client-id = %s\n" % WI_ID)),
    ("cli", body("azure-cli")),
    ("atf", body("access-token-file", "access-token-file = %s\n" % atf)),
    ("appsvc", "backend = keyvault\nvault-url = %s\nca-file = %s\n"
     "auth = managed-identity\n" % (s.vault_url(), emu.ca)),
    ("second", body("client-secret",
                    "client-id = %s\nclient-secret-file = %s\n"
                    "secondary-client-secret-file = %s\n"
                    % (APP_ID, wrong, s.app_secret))),
    ("bad", body("client-secret", "client-id = %s\nclient-secret-file = %s\n"
                 % (APP_ID, wrong))),
    ("wibad", body("workload-identity", "client-id = %s\n"
                   "federated-token-file = %s\n" % (WI_ID, fed_bad))),
    ("kv", s.token_body()),
])
s.create_key("kek")
s.load()

ses = s.session("kv")
pk = public_key(ses, find(ses, P.CKO_PUBLIC_KEY, "kek")[0])


def via(token, identity, what, token_route=None):
    """An unwrap through token succeeds and is made by identity."""
    before = s.counters()
    sess = s.session(token)
    try:
        priv = find(sess, P.CKO_PRIVATE_KEY, "kek")
        rv = unwrap(sess, priv[0], pk) if priv else "key not found"
    except P.PyKCS11Error as e:
        rv = "the search failed: %s" % e
    after = s.counters()
    # On failure, the module's log says why (the token, the vault).
    t.ok(rv == 0, "%s: an unwrap succeeds" % what,
         "%s\n%s" % (rv, "\n".join(s.log_text().splitlines()[-15:])))
    t.ok(delta(before, after, UNWRAP, identity=identity) == 1 and
         delta(before, after, UNWRAP, 200) == 1,
         "%s: the vault saw identity %s unwrap" % (what, identity),
         after.get("by_identity_route"))
    if token_route is not None:
        t.ok(delta(before, after, token_route, 200) >= 1,
             "%s: a token came from %s" % (what, token_route),
             after.get("by_route_status"))
    return sess, before, after


via("certpem", "certapp", "client-certificate, PEM file", "login:token")
via("certp12", "certapp", "client-certificate, PKCS#12 with a password file",
    "login:token")
via("wifile", "wi", "workload-identity, federated-token-file", "login:token")
via("wienv", "wi", "workload-identity, AZURE_FEDERATED_TOKEN_FILE",
    "login:token")

# ---- azure-cli ------------------------------------------------------------
sess, before, after = via("cli", "app", "azure-cli (stub az on PATH)")
t.eq(delta(before, after, "login:token"), 0,
     "azure-cli: cmkp11 itself asked Entra for nothing")
with open(cli_args) as f:
    calls = f.read().splitlines()
t.eq(len(calls), 1, "azure-cli: az ran once (the token is cached)")
args = calls[0].split() if calls else []
t.ok(calls and calls[0].startswith("account get-access-token") and
     "--output json" in calls[0], "az account get-access-token --output json",
     calls)
t.ok("--resource" in args and args[args.index("--resource") + 1] == resource,
     "az is asked for the vault's resource (%s)" % resource, calls)
t.ok("--tenant" in args and args[args.index("--tenant") + 1] == TENANT,
     "az is given the configured tenant", calls)
t.eq(unwrap(sess, find(sess, P.CKO_PRIVATE_KEY, "kek")[0], pk), 0,
     "azure-cli: a second unwrap")
with open(cli_args) as f:
    t.eq(len(f.read().splitlines()), 1, "and az did not run again")

# ---- access-token-file ----------------------------------------------------
sess, before, after = via("atf", "app", "access-token-file")
priv = find(sess, P.CKO_PRIVATE_KEY, "kek")[0]
# Replace the file (a new inode, as a renewing agent would) with a token of
# another identity: the next call must use it, without a restart.
tmp = write_private(atf + ".new", emu.token("mi", resource))
os.replace(tmp, atf)
before = s.counters()
t.eq(unwrap(sess, priv, pk), 0, "access-token-file: unwrap after the file "
     "was replaced")
after = s.counters()
t.ok(delta(before, after, UNWRAP, identity="mi") == 1 and
     delta(before, after, UNWRAP, identity="app") == 0,
     "the new file's token (identity mi) was used at once",
     after.get("by_identity_route"))
# Rewritten in place this time, after the old token was expired.
emu.admin("POST", "tokens/expire", {"identity": "mi"})
time.sleep(0.02)
with open(atf, "w") as f:
    f.write(emu.token("app", resource))
before = s.counters()
t.eq(unwrap(sess, priv, pk), 0, "access-token-file: unwrap after the old "
     "token was expired and the file rewritten in place")
after = s.counters()
t.ok(delta(before, after, UNWRAP, identity="app") == 1 and
     delta(before, after, UNWRAP, 401) == 0,
     "the rewritten file was read before the call: no 401",
     after.get("by_route_status"))
t.ok(stat.S_IMODE(os.stat(atf).st_mode) == 0o600, "the token file stays 0600")

# ---- managed identity, App Service form -----------------------------------
via("appsvc", "mi", "managed-identity via IDENTITY_ENDPOINT/IDENTITY_HEADER",
    "appservice:token")

# ---- two secrets, and a refused one ---------------------------------------
sess, before, after = via("second", "app", "client-secret: the first secret "
                          "is wrong, the secondary works")
t.ok(delta(before, after, "login:token", 401) >= 1 and
     delta(before, after, "login:token", 200) >= 1,
     "the first secret was refused (401) and the second accepted",
     after.get("by_route_status"))
t.ok("secondary" in s.log_text(), "the log says the secondary secret worked")
t.ok("not-the-secret" not in s.log_text() and
     "kvemu-client-secret" not in s.log_text(), "no secret in the log")

bsess = s.session("bad")
t.eq(ckr(find, bsess, P.CKO_PRIVATE_KEY, "kek"), P.CKR_DEVICE_ERROR,
     "a wrong secret: CKR_DEVICE_ERROR")
t.eq(bsess.getSessionInfo().ulDeviceError, 401,
     "ulDeviceError is the identity endpoint's 401")
t.ok("cannot obtain a token" in s.log_text(),
     "the log says no token could be obtained")
wsess = s.session("wibad")
t.eq(ckr(find, wsess, P.CKO_PRIVATE_KEY, "kek"), P.CKR_DEVICE_ERROR,
     "a federated token of another subject: CKR_DEVICE_ERROR")
t.eq(wsess.getSessionInfo().ulDeviceError, 400,
     "ulDeviceError is the identity endpoint's 400")
# Fixing the file needs no restart: it is read at each token request.
write_private(wrong, "kvemu-client-secret\n")
t.ok(len(find(bsess, P.CKO_PRIVATE_KEY, "kek")) == 1,
     "once the secret file is fixed, the same token works")
write_private(wrong, "not-the-secret\n")

c = s.counters()
t.ok(count(c, "login:token", 200) >= 5 and
     count(c, "appservice:token", 200) == 1,
     "Entra issued the expected tokens", c.get("by_route_status"))
s.lib = None
