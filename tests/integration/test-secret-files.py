#!/usr/bin/python3
"""Secret files others can read, or group or others can write, are refused
with the file's name and mode; group read is allowed. Each kind, with
modes 0604, 0620, 0640 and 0600, through the real module (a fresh process
each time): the hsm and keyvault pin-file, client-secret-file,
client-certificate-file (PEM with its key), client-certificate-password-
file, access-token-file; and cmkp11-tool --pin-file. Also: --pin warns
that the PIN shows in the process list, and CMKP11_PIN is read."""
import os
import subprocess
import sys

from kvtest import (Tap, KvSetup, emulator_config, write_private, TENANT,
                    APP_ID, APP_SECRET, MODULE, TOP_SRCDIR, skip_all)

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography import x509
except ImportError:
    skip_all("python3-cryptography missing")

CERT_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e03"
SOFTHSM = os.environ.get("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
TOOL = os.path.join(os.environ.get("top_builddir", "."), "cmkp11-tool")
MODES = (0o604, 0o620, 0o640, 0o600)

cfg = emulator_config()
cfg["identities"].append({"name": "certapp", "client_id": CERT_ID,
                          "client_certificates": [{"generate": "client-cert"}]})
for v in cfg["vaults"]:
    v["access"]["certapp"] = ["all"]

t = Tap()
s = KvSetup(cfg)
emu, d = s.emu, s.dir
hsm_dir = os.path.join(d, "softhsm")
r = subprocess.run(["sh", os.path.join(TOP_SRCDIR, "tests/softhsm-init.sh"),
                    hsm_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
if r.returncode == 77:
    skip_all(r.stdout.decode(errors="replace").strip())
if r.returncode != 0:
    print("Bail out! softhsm-init.sh failed")
    sys.exit(99)
os.environ["SOFTHSM2_CONF"] = os.path.join(hsm_dir, "softhsm2.conf")
s.create_key("kek")
login = emu.env["AZURE_AUTHORITY_HOST"]
resource = "https://vault.localhost:%d" % emu.port

with open(os.path.join(emu.state, "client-cert.pem"), "rb") as f:
    pem = f.read()
key = serialization.load_pem_private_key(pem, None)
cert = x509.load_pem_x509_certificate(pem)
P12_PASS = "p12-password"
p12 = pkcs12.serialize_key_and_certificates(
    b"cmkp11", key, cert, None,
    serialization.BestAvailableEncryption(P12_PASS.encode()))


def kv(auth, extra):
    return "backend = keyvault\nvault-url = %s\nca-file = %s\nauth = %s\n" \
        "tenant-id = %s\nauthority-host = %s\n%s" % (
            s.vault_url(), emu.ca, auth, TENANT, login, extra)


def put(name, data, mode=0o600):
    path = os.path.join(d, name)
    if os.path.exists(path):
        os.chmod(path, 0o600)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)
    return path


# Each kind: (file name, contents, token body using {f}, token, PIN to log
# in with). The other files a kind needs are 0600.
p12_file = put("client.p12", p12)
KINDS = [
    ("hsm pin-file", "hsm.pin", "1234",
     "backend = hsm\nmodule = %s\ntoken-label = cmk\npin-file = {f}\n"
     % SOFTHSM, None),
    ("keyvault pin-file", "kv.pin", "kv-pin-1\n",
     s.token_body() + "pin-file = {f}\n", "kv-pin-1"),
    ("client-secret-file", "app.secret", APP_SECRET + "\n",
     kv("client-secret", "client-id = %s\nclient-secret-file = {f}\n"
        % APP_ID), None),
    ("client-certificate-file", "client.pem", pem,
     kv("client-certificate", "client-id = %s\n"
        "client-certificate-file = {f}\n" % CERT_ID), None),
    ("client-certificate-password-file", "p12.pass", P12_PASS + "\n",
     kv("client-certificate", "client-id = %s\nclient-certificate-file = %s\n"
        "client-certificate-password-file = {f}\n" % (CERT_ID, p12_file)),
     None),
    ("access-token-file", "access-token", emu.token("app", resource),
     kv("access-token-file", "access-token-file = {f}\n"), None),
]

# A fresh process: C_Initialize, a session on token t, an optional login,
# a search for the private key kek. Prints OK n, or the failing step.
CHILD = r"""
import sys, PyKCS11 as P
lib = P.PyKCS11Lib()
try:
    lib.load(sys.argv[1])
except P.PyKCS11Error as e:
    print("init", P.CKR[e.value]); sys.exit(0)
slot = [x for x in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(x).label.strip() == "t"][0]
s = lib.openSession(slot, P.CKF_SERIAL_SESSION)
try:
    if len(sys.argv) > 2:
        s.login(sys.argv[2])
    n = len(s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                           (P.CKA_LABEL, "kek")]))
except P.PyKCS11Error as e:
    print("use", P.CKR[e.value]); sys.exit(0)
print("OK", n)
"""


def run(body, pin, logname):
    log = os.path.join(d, logname)
    if os.path.exists(log):
        os.unlink(log)
    s.write_conf([("t", body)], log_level="error")
    with open(s.conf) as f:
        text = f.read().replace(os.path.join(d, "cmkp11.log"), log)
    write_private(s.conf, text)
    r = subprocess.run(["/usr/bin/python3", "-c", CHILD, MODULE] +
                       ([pin] if pin else []), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    try:
        with open(log) as f:
            logged = f.read()
    except OSError:
        logged = ""
    return r.stdout.decode(errors="replace").strip(), logged


for what, name, data, body, pin in KINDS:
    for mode in MODES:
        path = put(name, data, mode)
        out, logged = run(body.format(f=path), pin, "log-%s-%o" % (name, mode))
        if mode == 0o604:
            msg = "%s: readable by others (mode 0604); refusing a secret " \
                  "others can read (chmod o-r; group read is allowed)" % path
        elif mode == 0o620:
            msg = "%s: writable by group or others (mode 0620); refusing " \
                  "it" % path
        else:
            t.eq(out, "OK 1", "%s, mode 0%o: accepted, the key is found"
                 % (what, mode))
            continue
        t.ok(not out.startswith("OK") and msg in logged,
             "%s, mode 0%o: refused, the log names the file and its mode"
             % (what, mode), "child: %s\nlog: %s" % (out, logged))
    put(name, data, 0o600)

# ---- cmkp11-tool --pin-file, --pin, CMKP11_PIN ----------------------------
s.write_conf([("local", "backend = hsm\nmodule = %s\ntoken-label = cmk\n"
               % SOFTHSM)], log_level="error")


def tool(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "CMKP11_PIN"}
    e.update(env or {})
    r = subprocess.run([TOOL, "--module", MODULE] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                       timeout=120)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


for mode in MODES:
    pf = put("tool.pin", "1234\n", mode)
    rc, out, err = tool("--pin-file", pf, "list", "local")
    if mode == 0o604:
        t.ok(rc != 0 and err.strip() == "cmkp11-tool: PIN file: %s: readable "
             "by others (mode 0604); refusing a secret others can read "
             "(chmod o-r; group read is allowed)" % pf,
             "cmkp11-tool --pin-file, mode 0604: refused, naming the file "
             "and its mode", err)
    elif mode == 0o620:
        t.ok(rc != 0 and err.strip() == "cmkp11-tool: PIN file: %s: "
             "writable by group or others (mode 0620); refusing it" % pf,
             "cmkp11-tool --pin-file, mode 0620: refused, naming the file "
             "and its mode", err)
    else:
        t.ok(rc == 0 and err == "" and "kek" in out and "unknown" not in out,
             "cmkp11-tool --pin-file, mode 0%o: logged in, states known"
             % mode, out + err)

rc, out, err = tool("--pin", "1234", "list", "local")
t.ok(rc == 0 and err == "cmkp11-tool: warning: --pin shows the PIN in the "
     "process list to other users; prefer --pin-file or CMKP11_PIN\n" and
     "unknown" not in out, "--pin works and warns that the PIN shows in "
     "the process list", err)
rc, out, err = tool("list", "local", env={"CMKP11_PIN": "1234"})
t.ok(rc == 0 and err == "" and "kek" in out and "unknown" not in out,
     "CMKP11_PIN logs in, without a warning", out + err)
rc, out, err = tool("list", "local")
t.ok(rc == 0 and "unknown" in out, "without a PIN the states are unknown "
     "(so the checks above could fail)", out + err)
