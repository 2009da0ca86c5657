#!/usr/bin/python3
"""The mistakes of a first hour with cmkp11, each answered by a message that
names the cause and the remedy (issue "the first hour"): no configuration
file yet, a back end that does not start beside healthy ones, a URL or a
bad name in keys =, key generation outside keys =. Each case loads the
real module in a fresh process through PyKCS11."""
import json
import os
import re
import subprocess
import sys

from kvtest import (Tap, KvSetup, MODULE, TOP_SRCDIR, write_private, skip_all,
                    TENANT, APP_SECRET)

SOFTHSM = os.environ.get("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
if not os.path.exists(SOFTHSM):
    skip_all("SoftHSM missing")

# The child: loads the module, reports what an application sees as JSON.
CHILD = r'''
import json, sys, PyKCS11 as P
out = {}
lib = P.PyKCS11Lib()
try:
    lib.load(sys.argv[1])
except P.PyKCS11Error as e:
    print(json.dumps({"init": P.CKR[e.value]})); sys.exit(0)
out["init"] = "CKR_OK"
out["present"] = [lib.getTokenInfo(s).label.strip()
                  for s in lib.getSlotList(tokenPresent=True)]
out["slots"] = {}
for s in lib.getSlotList(tokenPresent=False):
    si = lib.getSlotInfo(s)
    d = {"desc": si.slotDescription.strip(),
         "present": bool(si.flags & P.CKF_TOKEN_PRESENT)}
    try:
        lib.openSession(s)
        d["open"] = "CKR_OK"
    except P.PyKCS11Error as e:
        d["open"] = P.CKR[e.value]
    try:
        lib.getTokenInfo(s)
        d["info"] = "CKR_OK"
    except P.PyKCS11Error as e:
        d["info"] = P.CKR[e.value]
    out["slots"][d["desc"]] = d
if len(sys.argv) > 2:
    label = sys.argv[2]
    s = lib.getSlotList(tokenPresent=True)[0]
    sess = lib.openSession(s, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    pub = [(P.CKA_TOKEN, True), (P.CKA_ENCRYPT, True), (P.CKA_VERIFY, True),
           (P.CKA_WRAP, True), (P.CKA_PUBLIC_EXPONENT, (1, 0, 1)),
           (P.CKA_LABEL, label)]
    priv = [(P.CKA_TOKEN, True), (P.CKA_PRIVATE, True),
            (P.CKA_SENSITIVE, True), (P.CKA_DECRYPT, True),
            (P.CKA_SIGN, True), (P.CKA_UNWRAP, True), (P.CKA_LABEL, label)]
    try:
        sess.generateKeyPair(pub, priv,
                             P.Mechanism(P.CKM_RSA_PKCS_KEY_PAIR_GEN))
        out["keygen"] = "CKR_OK"
    except P.PyKCS11Error as e:
        out["keygen"] = P.CKR[e.value]
print(json.dumps(out))
'''


def line_of(conf, start):
    with open(conf) as f:
        for n, text in enumerate(f, 1):
            if text.startswith(start):
                return n
    return 0


def run(env_over, *args):
    if os.path.exists(os.path.join(d, "cmkp11.log")):
        os.unlink(os.path.join(d, "cmkp11.log"))
    env = dict(os.environ)
    env.pop("CMKP11_CONF", None)
    env.pop("CMKP11_DEBUG", None)
    env.update(env_over)
    env = {k: v for k, v in env.items() if v is not None}
    r = subprocess.run([sys.executable, "-c", CHILD, MODULE] + list(args),
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = {"stdout": r.stdout}
    return out, r.stderr


t = Tap()
s = KvSetup()
d = s.dir
s.create_key("app-key")

# ---- no configuration file at the default path: no tokens, no output ----
default = os.environ.get("CMKP11_DEFAULT_CONF")
t.ok(default and default.endswith("/cmkp11/cmkp11.conf"),
     "the test knows the default path (%s)" % default)
if default and os.path.exists(default):
    print("Bail out! %s exists on this machine; this test needs it absent"
          % default)
    sys.exit(99)
out, err = run({})
t.eq(out.get("init"), "CKR_OK", "no file at the default path: C_Initialize OK")
t.eq(out.get("slots"), {}, "... and no slots")
t.eq(err, "", "... and nothing printed")
out, err = run({"CMKP11_DEBUG": "all"})
t.ok("%s does not exist: no tokens" % default in err,
     "with CMKP11_DEBUG one debug line says so", err)
missing = os.path.join(d, "missing.conf")
out, err = run({"CMKP11_CONF": missing})
t.ok(out.get("init") != "CKR_OK" and missing in err,
     "an explicitly named file that is missing stays an error", (out, err))

# ---- one back end that does not start: the others work ----
log = os.path.join(d, "cmkp11.log")
conf = s.write_conf([("broken", "backend = hsm\nmodule = %s\n"
                      "token-label = nowhere\n" % SOFTHSM),
                     s.token("vault")])
bad_softhsm = {"CMKP11_CONF": conf,
               "SOFTHSM2_CONF": os.path.join(d, "no-softhsm2.conf")}
out, err = run(bad_softhsm)
t.eq(out.get("init"), "CKR_OK",
     "the lower library's C_Initialize fails: cmkp11's C_Initialize still OK")
t.eq(out.get("present"), ["vault"], "the healthy token is listed as present")
slots = out.get("slots", {})
broken = slots.get("cmkp11 hsm token broken", {})
t.eq(broken.get("present"), False, "the broken slot has no token present")
t.eq((broken.get("open"), broken.get("info")),
     ("CKR_TOKEN_NOT_PRESENT", "CKR_TOKEN_NOT_PRESENT"),
     "C_OpenSession and C_GetTokenInfo there: CKR_TOKEN_NOT_PRESENT")
t.eq(slots.get("cmkp11 keyvault token vault", {}).get("open"), "CKR_OK",
     "a session opens on the healthy token")
text = s.log_text()
why = "%s:%d: module: %s: C_Initialize failed: CKR_GENERAL_ERROR" % (
    conf, line_of(conf, "module ="), SOFTHSM)
t.ok("token broken is not available, the other tokens work: " + why in text,
     "the log names the token and the lower library's failure", text)
t.ok("token broken is not present: " + why in text,
     "opening a session there logs why", text)

# A syntax error in the file stays fatal.
conf = s.write_conf([("broken", "backend = hsm\nmodule = %s\n"
                      "token-label = nowhere\n" % SOFTHSM),
                     s.token("vault", frobnicate=1)])
bad_softhsm["CMKP11_CONF"] = conf
out, err = run(bad_softhsm)
t.eq(out.get("init"), "CKR_GENERAL_ERROR",
     "a configuration error stays fatal")
t.ok("%s:%d: frobnicate: unknown key for a keyvault token"
     % (conf, line_of(conf, "frobnicate")) in s.log_text(), "... with file:line", s.log_text())

# ---- keys = checked against Key Vault's name syntax ----
for value, want in [
        ("%s/keys/app-key" % s.vault_url(),
         "keys: '%s/keys/app-key' is a URL; keys = takes key names (the "
         "part after /keys/ in a key identifier), the vault is vault-url"
         % s.vault_url()),
        ("app-key, app_key",
         "keys: 'app_key' is not a Key Vault key name (1 to 127 letters, "
         "digits and hyphens)"),
        ("k" * 128, "keys: '%s' is not a Key Vault key name" % ("k" * 128))]:
    conf = s.write_conf([s.token("vault", keys=value)])
    out, err = run({"CMKP11_CONF": conf})
    line = "%s:%d: %s" % (conf, line_of(conf, "keys ="), want)
    t.ok(out.get("init") == "CKR_GENERAL_ERROR" and line in s.log_text(),
         "keys = %.40s...: refused at C_Initialize with file:line" % value,
         (out, s.log_text()))

# ---- key generation outside keys = says why ----
conf = s.write_conf([s.token("vault", keys="app-key, other-key")])
out, err = run({"CMKP11_CONF": conf}, "not-listed")
t.eq(out.get("keygen"), "CKR_TEMPLATE_INCONSISTENT",
     "generating a key outside keys =: CKR_TEMPLATE_INCONSISTENT")
t.ok("key pair generation: 'not-listed' is not in this token's keys = list; "
     "add it there to create it, or name a key that is" in s.log_text(),
     "... and the log says why", s.log_text())
out, err = run({"CMKP11_CONF": conf}, "bad_name")
t.eq(out.get("keygen"), "CKR_ATTRIBUTE_VALUE_INVALID",
     "a label that is no Key Vault name: CKR_ATTRIBUTE_VALUE_INVALID")
t.ok("key pair generation: CKA_LABEL 'bad_name' is not a Key Vault key name"
     in s.log_text(), "... and the log says why", s.log_text())

# ---- the lower token's CKA_WRAP: the back end and check agree ----
TOOL = os.path.join(os.environ.get("top_builddir", "."), "cmkp11-tool")
hsm_dir = os.path.join(d, "softhsm")
r = subprocess.run(["sh", os.path.join(TOP_SRCDIR, "tests/softhsm-init.sh"),
                    hsm_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
t.eq(r.returncode, 0, "softhsm-init.sh made a token")
hsm_env = {"SOFTHSM2_CONF": os.path.join(hsm_dir, "softhsm2.conf")}
GEN = r'''
import sys, PyKCS11 as P
lib = P.PyKCS11Lib(); lib.load(sys.argv[1])
ses = lib.openSession(lib.getSlotList(tokenPresent=True)[0],
                      P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
ses.login("1234")
ses.generateKeyPair(
    [(P.CKA_TOKEN, True), (P.CKA_LABEL, "nowrap"), (P.CKA_ID, b"\x60"),
     (P.CKA_MODULUS_BITS, 2048), (P.CKA_PUBLIC_EXPONENT, (1, 0, 1)),
     (P.CKA_ENCRYPT, True), (P.CKA_WRAP, False), (P.CKA_VERIFY, True)],
    [(P.CKA_TOKEN, True), (P.CKA_LABEL, "nowrap"), (P.CKA_ID, b"\x60"),
     (P.CKA_PRIVATE, True), (P.CKA_SENSITIVE, True), (P.CKA_DECRYPT, True),
     (P.CKA_UNWRAP, True), (P.CKA_SIGN, True)],
    P.MechanismRSAGENERATEKEYPAIR)
'''
r = subprocess.run([sys.executable, "-c", GEN, SOFTHSM],
                   env=dict(os.environ, **hsm_env), stderr=subprocess.PIPE,
                   universal_newlines=True)
t.eq(r.returncode, 0, "a key pair whose public half has CKA_WRAP false")
pin = write_private(os.path.join(d, "pin"), "1234\n")
conf = s.write_conf([("local", "backend = hsm\nmodule = %s\n"
                      "token-label = cmk\npin-file = %s\n" % (SOFTHSM, pin))])
env = dict(os.environ, CMKP11_CONF=conf, **hsm_env)
r = subprocess.run([TOOL, "--module", MODULE, "--json", "check", "local",
                    "nowrap"], env=env, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, universal_newlines=True)
try:
    doc = json.loads(r.stdout)
    rows = {w["name"]: w for w in doc["keys"][0]["checks"]}
except (ValueError, KeyError, IndexError):
    rows = {}
ops = rows.get("key-ops", {})
t.ok(r.returncode == 1 and ops.get("result") == "FAIL" and
     ops.get("detail", "").startswith("wrapKey not permitted") and
     "CKA_WRAP on the public key" in ops.get("remedy", ""),
     "check: the lower public key's CKA_WRAP false is a FAIL with the remedy",
     (r.stdout, r.stderr))
WRAP = r'''
import sys, PyKCS11 as P
lib = P.PyKCS11Lib(); lib.load(sys.argv[1])
ses = lib.openSession(lib.getSlotList(tokenPresent=True)[0],
                      P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
pub = ses.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY),
                       (P.CKA_LABEL, sys.argv[2])])[0]
wrap = ses.getAttributeValue(pub, [P.CKA_WRAP])[0]
dek = ses.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                       (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_VALUE_LEN, 32),
                       (P.CKA_EXTRACTABLE, True), (P.CKA_TOKEN, False)])
try:
    ses.wrapKey(pub, dek, P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256))
    print(wrap, "CKR_OK")
except P.PyKCS11Error as e:
    print(wrap, P.CKR[e.value])
'''
for label, want in (("nowrap", "False CKR_KEY_FUNCTION_NOT_PERMITTED"),
                    ("kek", "True CKR_OK")):
    r = subprocess.run([sys.executable, "-c", WRAP, MODULE, label], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    t.eq(r.stdout.strip(), want, "the module: %s's public key has CKA_WRAP "
         "%s and C_WrapKey gives %s" % ((label,) + tuple(want.split())))

# ---- seal with a URI naming an older version: that one, or a refusal ----
GEN_OLD = GEN.replace('"nowrap"', '"kek@05"').replace(
    'b"\\x60"', 'b"\\x05"').replace(
        "(P.CKA_DECRYPT, True),\n     (P.CKA_UNWRAP, True)",
        "(P.CKA_DECRYPT, False),\n     (P.CKA_UNWRAP, False)")
r = subprocess.run([sys.executable, "-c", GEN_OLD, SOFTHSM],
                   env=dict(os.environ, **hsm_env), stderr=subprocess.PIPE,
                   universal_newlines=True)
t.eq(r.returncode, 0, "an older version kek@05, disabled (no decrypt, no "
     "unwrap)")
plain = os.path.join(d, "plain")
with open(plain, "wb") as f:
    f.write(b"first hour\n")
sealed = plain + ".sealed"
r = subprocess.run([TOOL, "--module", MODULE, "seal", "--key",
                    "pkcs11:token=local;object=kek@05", plain, "-o", sealed],
                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True)
t.ok(r.returncode == 1 and "seal: 'pkcs11:token=local;object=kek@05' names "
     "version 05 of key kek on token local, which is disabled; name the key "
     "alone for its current version" in r.stderr and
     not os.path.exists(sealed), "seal naming a disabled older version: "
     "refused, saying so", r.stderr)
r = subprocess.run([TOOL, "--module", MODULE, "seal", "--key",
                    "pkcs11:token=local;object=kek@01", plain, "-o", sealed],
                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True)
t.ok(r.returncode == 0 and r.stdout.strip().endswith(
     "under key kek version 01 (not the current version) on token local"),
     "seal naming the enabled older version 01: sealed under it", r.stdout)

# ---- Key Vault: a vault or a key that does not exist ----
def tool(conf, *args):
    open(os.path.join(d, "cmkp11.log"), "w").close()
    r = subprocess.run([TOOL, "--module", MODULE] + list(args),
                       env=dict(os.environ, CMKP11_CONF=conf),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


typo = s.vault_url().replace("kvemu.vault.", "kvemo.vault.")
typo_host = typo[len("https://"):]
conf = s.write_conf([s.token("vault", vault_url=typo)])
rc, out, err = tool(conf, "list")
text = s.log_text()
t.ok(rc == 1 and "CKR_DEVICE_ERROR (HTTP 404)" in out + err,
     "list with a vault-url typo: the token's error, exit 1", (rc, out, err))
t.ok("warning: token vault: the vault %s does not exist (404 VaultNotFound: "
     "No vault is configured for host %s.); check vault-url"
     % (typo_host, typo_host.split(":")[0]) in text,
     "... and the log says the vault does not exist, with its message", text)
rc, out, err = tool(conf, "--json", "list")
try:
    e = json.loads(out)["tokens"][0]["error"]
except (ValueError, KeyError, IndexError, TypeError):
    e = None
t.ok(rc == 1 and e and e["ckr"] == "CKR_DEVICE_ERROR" and
     e["device_error"] == 404, "list --json carries the error", out)

conf = s.write_conf([s.token("vault", keys="app-key, no-such-key")])
rc, out, err = tool(conf, "list")
text = s.log_text()
t.ok(rc == 0 and "app-key" in out, "keys = with a missing name: the others "
     "are listed", (out, err))
t.ok(re.search(r"warning: token vault: key no-such-key of keys = is not in "
               r"\S+ \(404 KeyNotFound: A key with .+\); create it, or correct "
               r"keys =", text), "... and the log names the missing key with "
     "the vault's message", text)

# ---- Key Vault: the request trace at log-level = debug ----
conf = s.write_conf([s.token("vault", keys="app-key")],
                    log_level="debug")
rc, out, err = tool(conf, "list")
text = s.log_text()
lines = re.findall(r"debug: http\.c:\d+ kv_http_do\(\): (.*)", text)
vault_get = [x for x in lines if re.match(
    r"GET https://kvemu\.vault\.localhost:\d+/keys/app-key/versions: 200, "
    r"x-ms-request-id [0-9a-f-]{36}, \d+ ms, retry 0$", x)]
token_post = [x for x in lines if re.match(
    r"POST https://login\.localhost:\d+/%s/oauth2/v2\.0/token: 200, "
    r"x-ms-request-id \S+, \d+ ms, retry 0$" % TENANT, x)]
t.ok(rc == 0 and vault_get and token_post, "log-level = debug: one line per "
     "request with method, path, status, x-ms-request-id, time and retries",
     "\n".join(lines))
t.ok("api-version" not in "\n".join(lines) and "Bearer" not in text and
     "eyJ" not in text and APP_SECRET not in text,
     "... without the query, a token or the secret", text)
conf = s.write_conf([s.token("vault", keys="app-key")])
env_http = dict(os.environ, CMKP11_CONF=conf, CMKP11_DEBUG="http")
r = subprocess.run([TOOL, "--module", MODULE, "list"], env=env_http,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True)
t.ok(re.search(r"debug: http\.c:\d+ kv_http_do\(\): GET https://kvemu", r.stderr)
     and "keyvault.c" not in r.stderr, "CMKP11_DEBUG=http: the trace alone",
     r.stderr[-2000:])

# ---- Key Vault: TLS verification failures, at once and explained ----
conf = s.write_conf([s.token("vault", ca_file=None)])
rc, out, err = tool(conf, "list")
text = s.log_text()
tls = re.findall(r"error: TLS: the certificate of (\S+) was not accepted: "
                 r"([^;]+); if a CA of your own issued it, name its "
                 r"certificate \(PEM\) in ca-file, which adds trust anchors "
                 r"to the system's", text)
t.ok(rc == 1 and len(tls) == 1 and tls[0][0] == s.vault_url()[8:] and
     tls[0][1] in ("self-signed certificate in certificate chain",
                   "unable to get local issuer certificate") and
     "unreachable" not in text and "retry" not in text,
     "without ca-file: one attempt, the host, OpenSSL's reason and the "
     "remedy", text)

# A server whose certificate names another host, and one that expired.
import datetime  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import threading  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


now = datetime.datetime.now(datetime.timezone.utc)
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (x509.CertificateBuilder().subject_name(name("first-hour CA"))
      .issuer_name(name("first-hour CA")).public_key(ca_key.public_key())
      .serial_number(1).not_valid_before(now - datetime.timedelta(days=9))
      .not_valid_after(now + datetime.timedelta(days=9))
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
      .sign(ca_key, hashes.SHA256()))
ca_pem = os.path.join(d, "first-hour-ca.pem")
with open(ca_pem, "wb") as f:
    f.write(ca.public_bytes(serialization.Encoding.PEM))


def server(dns, days):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(dns))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=9))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]),
                           False)
            .sign(ca_key, hashes.SHA256()))
    pem = os.path.join(d, "server-%s-%d.pem" % (dns.replace("*", "x"), days))
    with open(pem, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve():
        while True:
            conn, _ = sock.accept()
            try:
                ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


for what, dns, days, reason in (
        ("a certificate for another host", "elsewhere.example", 9,
         "SSL: no alternative certificate subject name matches target host "
         "name 'kvemu.vault.localhost'"),
        ("an expired certificate", "*.vault.localhost", -1,
         "certificate has expired")):
    port = server(dns, days)
    url = "https://kvemu.vault.localhost:%d" % port
    conf = s.write_conf([s.token("vault", vault_url=url, ca_file=ca_pem)])
    rc, out, err = tool(conf, "list")
    text = s.log_text()
    tls = re.findall(r"error: TLS: the certificate of (\S+) was not accepted: "
                     r"([^;]+); if a CA", text)
    t.ok(rc == 1 and tls == [(url[8:], reason)] and "retry" not in text,
         "%s: one attempt, the host and OpenSSL's reason" % what, text)

# The token endpoint's certificate fails verification (signed by a CA that
# ca-file does not name), the vault's is fine: one token request, not the
# retries, and the log names the identity endpoint's host and the reason.
port = server("login.localhost", 9)
authority = "https://login.localhost:%d" % port
conf = s.write_conf([s.token("vault", authority_host=authority, keys="app-key")])
body = open(conf).read()
rc, out, err = tool(conf, "list")
text = s.log_text()
tls = re.findall(r"error: TLS: the certificate of (\S+) was not accepted: "
                 r"([^;]+); if a CA", text)
t.ok(authority in body and rc == 1 and
     tls == [(authority[8:], "unable to get local issuer certificate")],
     "the token endpoint's certificate: one attempt, its host and OpenSSL's "
     "reason", text)
