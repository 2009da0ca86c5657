#!/usr/bin/python3
"""The mistakes of a first hour with cmkp11, each answered by a message that
names the cause and the remedy (issue "the first hour"): no configuration
file yet, a back end that does not start beside healthy ones, a URL or a
bad name in keys =, key generation outside keys =. Each case loads the
real module in a fresh process through PyKCS11."""
import json
import os
import subprocess
import sys

from kvtest import Tap, KvSetup, MODULE, TOP_SRCDIR, write_private, skip_all

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
s = KvSetup.started()
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
kv_body = s.token_body()
log = os.path.join(d, "cmkp11.log")
conf = s.write_conf([("broken", "backend = hsm\nmodule = %s\n"
                      "token-label = nowhere\n" % SOFTHSM),
                     ("vault", kv_body)])
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
                     ("vault", kv_body + "frobnicate = 1\n")])
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
    conf = s.write_conf([("vault", kv_body + "keys = %s\n" % value)])
    out, err = run({"CMKP11_CONF": conf})
    line = "%s:%d: %s" % (conf, line_of(conf, "keys ="), want)
    t.ok(out.get("init") == "CKR_GENERAL_ERROR" and line in s.log_text(),
         "keys = %.40s...: refused at C_Initialize with file:line" % value,
         (out, s.log_text()))

# ---- key generation outside keys = says why ----
conf = s.write_conf([("vault", kv_body + "keys = app-key, other-key\n")])
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
