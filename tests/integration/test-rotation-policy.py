#!/usr/bin/python3
"""Rotation policies (CKA_CMK_ROTATION_POLICY, docs/vendor.md) through
cmkp11-tool, on both back ends:

- Key Vault (emulator): a policy set with `rotation-policy set` is what
  Microsoft's Python SDK reads (get_key_rotation_policy), and one the SDK
  sets (update_key_rotation_policy) is what `rotation-policy get` shows; the
  service's default policy; the service's rules refused by the tool and by
  the vault with the same words; an identity without getrotationpolicy;
  `rotate --if-due` leaves rotation to the vault.
- hsm (SoftHSM): the policy kept on the lower token as a data object;
  `rotate --if-due` on a key made 100 days ago (CKA_START_DATE on the lower
  key, written by the test as an administrator would) rotates under
  rotate-after P90D and not under P180D, and says why; C_SetAttributeValue
  refuses a policy the rules refuse.
- check: the rows "has a rotation policy" and "expires within 30 days"
  warn (WARN, exit 0), and fail with --strict.
No clock is faked: ages come from the keys' dates. TAP output.
"""
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
TOP_BUILDDIR = os.environ.get("top_builddir") or TOP_SRCDIR
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "kvemu"))

from kvtest import (Tap, Emu, emulator_config, write_private,  # noqa: E402
                    conf_text, hsm_token, emu_token, APP_SECRET, READER_ID,
                    READER_SECRET, skip_all, softhsm_in)
from hsmtest import on_lower  # noqa: E402
import taplib  # noqa: E402

TOOL = os.path.join(TOP_BUILDDIR, "cmkp11-tool")
MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(
    TOP_BUILDDIR, ".libs", "cmkp11.so")

if not os.access(TOOL, os.X_OK):
    skip_all("cmkp11-tool is not built")
taplib.need_azure()
import PyKCS11  # noqa: E402
from azure.core.exceptions import HttpResponseError  # noqa: E402
from azure.keyvault.keys import (KeyRotationLifetimeAction,  # noqa: E402
                                 KeyRotationPolicy, KeyRotationPolicyAction)

t = Tap()
work = tempfile.mkdtemp(prefix="tmp-test-rotation-policy-",
                        dir=os.environ.get("TMPDIR") or os.getcwd())

# ---- set-up: SoftHSM and the emulator, one configuration ---------------------
hsmdir, st = softhsm_in(work)
pinfile = write_private(os.path.join(work, "pin"), "1234\n")
emu = Emu(emulator_config())
secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")
rsecret = write_private(os.path.join(work, "reader.secret"),
                        READER_SECRET + "\n")
conf = write_private(os.path.join(work, "both.conf"), conf_text(
    [hsm_token("local", pin_file=pinfile),
     emu_token(emu, "kv", secret),
     emu_token(emu, "kvread", rsecret, client_id=READER_ID)],
    log_level="error", log_file=os.path.join(work, "both.log"),
    refresh_interval=0))
t.eq(st.returncode, 0, "a SoftHSM token (local) and an emulated vault (kv, "
     "kvread) in one configuration")
kc = emu.key_client()


def run(*args):
    env = dict(os.environ, CMKP11_CONF=conf)
    p = subprocess.run([TOOL, "--module", MODULE] + list(args), env=env,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def log_text():
    try:
        with open(os.path.join(work, "both.log")) as f:
            return f.read()
    except OSError:
        return ""


# ---- Key Vault: the tool and the SDK agree ------------------------------------
emu.admin("POST", "vaults/kvemu/keys", {"name": "cmk"})
rc, out, err = run("rotation-policy", "get", "kv", "cmk")
t.eq((rc, out.splitlines()[0] if out else err),
     (0, "Token kv, key cmk: rotation policy notify-before=P30D"),
     "get: a key without a policy has the service's default (Notify 30 days "
     "before expiry)")

rc, out, err = run("rotation-policy", "set", "kv", "cmk", "--rotate-after",
                   "P90D", "--expire-after", "P2Y", "--notify-before", "P30D")
t.eq((rc, out.splitlines()[0] if out else err),
     (0, "Token kv, key cmk: rotation policy "
         "rotate-after=P90D;notify-before=P30D;expire-after=P2Y"),
     "set: the tool shows the policy as the vault returns it")
pol = kc.get_key_rotation_policy("cmk")
acts = sorted((a.action.lower(), a.time_after_create, a.time_before_expiry)
              for a in pol.lifetime_actions)
t.eq((pol.expires_in, acts),
     ("P2Y", [("notify", None, "P30D"), ("rotate", "P90D", None)]),
     "the SDK's get_key_rotation_policy reads what cmkp11-tool set")

kc.update_key_rotation_policy(
    "cmk", KeyRotationPolicy(), expires_in="P1Y",
    lifetime_actions=[KeyRotationLifetimeAction(
        KeyRotationPolicyAction.rotate, time_before_expiry="P45D")])
rc, out, err = run("--json", "rotation-policy", "get", "kv", "cmk")
doc = json.loads(out) if rc == 0 else {}
t.eq((rc, doc.get("policy"), doc.get("rotate-after"),
      doc.get("rotate-before-expiry"), doc.get("expire-after"),
      doc.get("refused")),
     (0, "rotate-before-expiry=P45D;expire-after=P1Y", None, "P45D", "P1Y",
      False),
     "get --json reads what the SDK's update_key_rotation_policy set")

# ---- the service's rules: the tool and the vault say the same -----------------
P1D = "The timeAfterCreate of a Rotate action must be at least 7 days (P7D): P1D."
rc, out, err = run("rotation-policy", "set", "kv", "cmk", "--rotate-after",
                   "P1D")
t.eq((rc, err.strip()), (2, "cmkp11-tool: rotation policy refused: " + P1D),
     "set --rotate-after P1D: refused before any request, exit 2")
e = t.raises("the SDK's update with timeAfterCreate P1D is refused",
             HttpResponseError, kc.update_key_rotation_policy, "cmk",
             KeyRotationPolicy(), lifetime_actions=[KeyRotationLifetimeAction(
                 KeyRotationPolicyAction.rotate, time_after_create="P1D")])
t.eq((e and e.status_code, e and e.error.code, e and e.error.message),
     (400, "BadParameter", P1D), "... by the vault with the same words")
for args, msg in [
        (["--expire-after", "P10D"],
         "The expiryTime of a rotation policy must be at least 28 days "
         "(P28D): P10D."),
        (["--rotate-before-expiry", "P30D"],
         "A Rotate action with timeBeforeExpiry requires the policy's "
         "expiryTime."),
        (["--rotate-before-expiry", "P25D", "--expire-after", "P30D"],
         "The timeBeforeExpiry of a Rotate action must leave at least 7 days "
         "(P7D) after creation: P25D before P30D."),
        (["--notify-before", "P3D"],
         "The timeBeforeExpiry of a Notify action must be at least 7 days "
         "(P7D): P3D.")]:
    rc, out, err = run("rotation-policy", "set", "kv", "cmk", *args)
    t.eq((rc, err.strip()), (2, "cmkp11-tool: rotation policy refused: " + msg),
         "set %s: refused with the service's rule" % " ".join(args))
rc, out, err = run("rotation-policy", "set", "kv", "cmk", "--rotate-after",
                   "90 days")
t.eq((rc, err.strip()),
     (2, "cmkp11-tool: --rotate-after: '90 days' is not an ISO 8601 duration "
         "(for example P90D, P1Y, P1Y6M)"), "a duration not in ISO 8601")
rc, out, err = run("rotation-policy", "set", "kv", "cmk")
t.eq(rc, 2, "set without a policy option: usage error")
pol = kc.get_key_rotation_policy("cmk")
t.eq(pol.expires_in, "P1Y", "the refused policies changed nothing in the vault")

# ---- the REST API as the specification says (api-version 7.3 and later) --------
for api in ("7.3", "7.4", "7.5"):
    st, _, body = emu.vault("GET", "/keys/cmk/rotationpolicy", api=api)
    doc = body if st == 200 and isinstance(body, dict) else {}
    t.eq((st, sorted(doc), doc.get("attributes", {}).get("expiryTime")),
         (200, ["attributes", "id", "lifetimeActions"], "P1Y"),
         "GET rotationpolicy with api-version %s: id, lifetimeActions, "
         "attributes" % api)
st, _, body = emu.vault("GET", "/keys/cmk/rotationpolicy", api="7.2")
t.eq((st, body.get("error", {}).get("code") if isinstance(body, dict) else body),
     (400, "BadParameter"), "GET rotationpolicy with api-version 7.2: 400")

# ---- an identity without getrotationpolicy ------------------------------------
rc, out, err = run("rotation-policy", "get", "kvread", "cmk")
t.eq((rc, out.strip()),
     (0, "Token kvread, key cmk: no rotation policy known: the vault refused "
         "getrotationpolicy"),
     "get as an identity without getrotationpolicy: an empty value, and "
     "CKA_CMK_REFUSED says why")
t.ok("keys getrotationpolicy permission" in log_text(),
     "... and the module's log names the permission to grant")
rc, out, err = run("--json", "check", "kvread", "cmk")
doc = json.loads(out) if out.strip() else {}
rows = {c["name"]: c for k in doc.get("keys", []) for c in k["checks"]}
pr = rows.get("rotation-policy", {})
t.eq((pr.get("result"), pr.get("detail")),
     ("WARN", "not known: the vault refused the keys getrotationpolicy "
      "permission"), "check as that identity: the row warns that the policy "
     "is not known, not that there is none")
t.ok("rotationpolicy/read" in pr.get("remedy", ""),
     "... and the remedy names the permission", pr)

# ---- rotate --if-due on Key Vault: the vault rotates by itself ----------------
before = kc.get_key("cmk").properties.version
rc, out, err = run("rotate", "kv", "cmk", "--if-due")
t.eq((rc, out.strip(), kc.get_key("cmk").properties.version),
     (0, "Token kv, key cmk: not rotated: Key Vault rotates this key itself "
         "as its rotation policy says (cmkp11-tool rotation-policy get)",
      before), "rotate --if-due on Key Vault: nothing rotated, and why")

# ---- hsm: the policy on the lower token ---------------------------------------
MAKE = r'''
label, cid = sys.argv[2], bytes.fromhex(sys.argv[3])
day = sys.argv[4].encode()
pub = [(P.CKA_TOKEN, True), (P.CKA_LABEL, label), (P.CKA_ID, cid),
       (P.CKA_MODULUS_BITS, 2048), (P.CKA_PUBLIC_EXPONENT, bytes([1, 0, 1])),
       (P.CKA_ENCRYPT, True), (P.CKA_WRAP, True), (P.CKA_VERIFY, True),
       (P.CKA_START_DATE, day)]
priv = [(P.CKA_TOKEN, True), (P.CKA_PRIVATE, True), (P.CKA_LABEL, label),
        (P.CKA_ID, cid), (P.CKA_SENSITIVE, True), (P.CKA_DECRYPT, True),
        (P.CKA_UNWRAP, True), (P.CKA_SIGN, True)]
s.generateKeyPair(pub, priv)
s.logout()
'''


def made_days_ago(label, cid, days):
    """A key pair made in SoftHSM directly, dated `days` days ago
    (CKA_START_DATE), as an administrator's older key would be."""
    day = (datetime.datetime.now(datetime.timezone.utc) -
           datetime.timedelta(days=days)).strftime("%Y%m%d")
    on_lower(MAKE, label, cid, day)


made_days_ago("old", "41", 100)
made_days_ago("young", "42", 10)

rc, out, err = run("rotation-policy", "get", "local", "old")
t.eq((rc, out.strip()), (0, "Token local, key old: no rotation policy"),
     "hsm: a key has no policy until one is set")
rc, out, err = run("rotation-policy", "set", "local", "old", "--rotate-after",
                   "P90D", "--expire-after", "P1Y")
t.eq((rc, out.splitlines()[0] if out else err),
     (0, "Token local, key old: rotation policy "
         "rotate-after=P90D;expire-after=P1Y"), "hsm: set")
rc, out, err = run("rotation-policy", "set", "local", "young",
                   "--rotate-after", "P180D")
t.eq(rc, 0, "hsm: set on a second key")

LOOK = r'''
for o in s.findObjects([(P.CKA_CLASS, P.CKO_DATA)]):
    a = s.getAttributeValue(o, [P.CKA_APPLICATION, P.CKA_LABEL, P.CKA_VALUE,
                                P.CKA_PRIVATE])
    print("%s|%s|%s|%s" % (a[0], a[1], bytes(a[2]).decode(),
                           a[3]))
s.logout()
'''
t.eq(sorted(on_lower(LOOK).splitlines()),
     ["cmkp11 rotation-policy|old|rotate-after=P90D;expire-after=P1Y|True",
      "cmkp11 rotation-policy|young|rotate-after=P180D|True"],
     "hsm: each policy is a private data object on the lower token")

# C_SetAttributeValue itself refuses what the rules refuse.
os.environ["CMKP11_CONF"] = conf
lib = PyKCS11.PyKCS11Lib()
lib.load(MODULE)
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "local"][0]
sess = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION |
                       PyKCS11.CKF_RW_SESSION)
CKA_POLICY = PyKCS11.CKA_VENDOR_DEFINED | 0x434D0000 + 17
priv = sess.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                         (PyKCS11.CKA_LABEL, "old")])[0]
try:
    sess.setAttributeValue(priv, [(CKA_POLICY, b"rotate-after=P1D")])
    got = "CKR_OK"
except PyKCS11.PyKCS11Error as e:
    got = PyKCS11.CKR[e.value]
t.eq(got, "CKR_ATTRIBUTE_VALUE_INVALID",
     "hsm: C_SetAttributeValue refuses rotate-after=P1D")
val = bytes(sess.getAttributeValue(priv, [CKA_POLICY])[0]).decode()
t.eq(val, "rotate-after=P90D;expire-after=P1Y",
     "... and the policy is unchanged (C_GetAttributeValue)")
sess.closeSession()

# ---- hsm: rotate --if-due ------------------------------------------------------
rc, out, err = run("rotate", "local", "young", "--if-due")
day = (datetime.datetime.now(datetime.timezone.utc) -
       datetime.timedelta(days=10)).strftime("%Y-%m-%d")
due = (datetime.datetime.now(datetime.timezone.utc) +
       datetime.timedelta(days=170)).strftime("%Y-%m-%d")
t.eq((rc, out.strip()),
     (0, "Token local, key young: not rotated: version 42 was made on %s, "
         "10 days ago: rotate-after P180D is due on %s" % (day, due)),
     "rotate --if-due: a key 10 days old under rotate-after P180D is not due")
rc, out, err = run("list", "local")
t.ok(rc == 0 and "young@" not in out, "... and it has one version still")

day = (datetime.datetime.now(datetime.timezone.utc) -
       datetime.timedelta(days=100)).strftime("%Y-%m-%d")
rc, out, err = run("rotate", "local", "old", "--if-due")
t.eq((rc, out.splitlines()[0] if out else err),
     (0, "Token local, key old: due: version 41 was made on %s, 100 days "
         "ago: rotate-after P90D is reached" % day),
     "rotate --if-due: a key 100 days old under rotate-after P90D is due")
rc, out, err = run("--json", "list", "local")
names = sorted(v.get("label") for tk in json.loads(out).get("tokens", [])
               for k in tk.get("keys", []) for v in k.get("versions", [])
               if v.get("label", "").startswith("old")) if rc == 0 else []
t.eq(names, ["old", "old@41"], "... rotated: a new current version, the old "
     "one kept as old@41")
rc, out, err = run("rotate", "local", "old", "--if-due", "--json")
doc = json.loads(out) if rc == 0 else {}
t.eq((rc, doc.get("due"), doc.get("rotated")), (0, False, False),
     "rotate --if-due again: the new version (made today) is not due")
rc, out, err = run("rotation-policy", "get", "local", "old")
t.eq((rc, out.splitlines()[0] if out else err),
     (0, "Token local, key old: rotation policy "
         "rotate-after=P90D;expire-after=P1Y"),
     "the policy stays with the key across the rotation")

# A key made without CKA_START_DATE (softhsm-init.sh's, by pkcs11-tool):
# its age is not known, and --if-due says so instead of guessing.
rc, out, err = run("rotation-policy", "set", "local", "dec-only",
                   "--rotate-after", "P30D")
rc2, out2, err2 = run("rotate", "local", "dec-only", "--if-due")
t.eq((rc, rc2, out2, err2.strip()),
     (0, 1, "", "cmkp11-tool: key dec-only on token local: version 10 has no "
      "creation day (on hsm: CKA_START_DATE of its public key in the lower "
      "token): rotate-after cannot be applied"),
     "rotate --if-due without a creation day: exit 1, and why")

# ---- check: warnings, and --strict ---------------------------------------------
rc, out, err = run("--json", "check", "local", "kek")
doc = json.loads(out) if out.strip() else {}
rows = {c["name"]: c for k in doc.get("keys", []) for c in k["checks"]}
t.eq((rc, doc.get("result"), rows.get("rotation-policy", {}).get("result"),
      rows.get("rotation-policy", {}).get("detail")),
     (0, "PASS", "WARN", "no rotation policy"),
     "check: a key without a rotation policy is a warning (WARN), exit 0")
rc, out, err = run("--json", "--strict", "check", "local", "kek")
doc = json.loads(out) if out.strip() else {}
t.eq((rc, doc.get("result")), (1, "FAIL"), "check --strict: the warning fails")

# Expiring within 30 days: a vault key that expires in 20 days.
exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=20)
kc.create_rsa_key("soon", expires_on=exp)
kc.update_key_rotation_policy(
    "soon", KeyRotationPolicy(), expires_in="P1Y",
    lifetime_actions=[KeyRotationLifetimeAction(
        KeyRotationPolicyAction.rotate, time_after_create="P90D")])
rc, out, err = run("--json", "check", "kv", "soon")
doc = json.loads(out) if out.strip() else {}
rows = {c["name"]: c for k in doc.get("keys", []) for c in k["checks"]}
t.eq((rc, rows.get("rotation-policy", {}).get("result"),
      rows.get("expiry", {}).get("result")), (0, "PASS", "WARN"),
     "check: a policy that rotates passes; an expiry in 20 days warns")
detail = rows.get("expiry", {}).get("detail", "")
t.ok(detail.startswith("yes: expires ") and
     ("in 19 days" in detail or "in 20 days" in detail),
     "... saying when", detail)
rc, out, err = run("--strict", "check", "kv", "soon")
t.ok(rc == 1 and "WARN" in out, "check --strict: exit 1, the row still WARN")
rc, out, err = run("check", "kv", "cmk")
t.ok(rc == 0 and "has a rotation policy" in out and "expires within 30 days"
     in out, "check (text): both rows, by title")

# ---- docs/hsm.md: the systemd units run as written -------------------------------
# Two substitutions, nothing else: the installed tool becomes the one just
# built (with this build's module), /etc/cmkp11/cmkp11.conf this test's.
units = {}
with open(os.path.join(TOP_SRCDIR, "docs", "hsm.md")) as f:
    lines = f.read().split("\n")
for i, line in enumerate(lines):
    m = re.match(r"<!-- unit file=(\S+) -->$", line)
    if m and lines[i + 1] == "```":
        end = lines.index("```", i + 2)
        units[m.group(1)] = "\n".join(lines[i + 2:end]) + "\n"
t.eq(sorted(units), ["cmkp11-rotate.service", "cmkp11-rotate.timer"],
     "docs/hsm.md: a service and a timer")
svc = units.get("cmkp11-rotate.service", "")
exec_line = [x for x in svc.splitlines() if x.startswith("ExecStart=")]
env_line = [x for x in svc.splitlines() if x.startswith("Environment=")]
t.eq((len(exec_line), env_line),
     (1, ["Environment=CMKP11_CONF=/etc/cmkp11/cmkp11.conf"]),
     "the service runs one command with the configuration in CMKP11_CONF")
built = os.path.abspath(TOOL)
udir = os.path.join(work, "units")
os.makedirs(udir)
for name, text in units.items():
    text = text.replace("/usr/bin/cmkp11-tool",
                        "%s --module %s" % (built, os.path.abspath(MODULE)))
    text = text.replace("/etc/cmkp11/cmkp11.conf", conf)
    with open(os.path.join(udir, name), "w") as f:
        f.write(text)
r = subprocess.run(["systemd-analyze", "verify"] +
                   [os.path.join(udir, n) for n in sorted(units)],
                   capture_output=True, text=True, timeout=120)
t.eq((r.returncode, r.stderr.strip()), (0, ""),
     "systemd-analyze verify accepts both units")
cmd = exec_line[0][len("ExecStart="):].replace(
    "/usr/bin/cmkp11-tool", built).split() if exec_line else ["false"]
p = subprocess.run(cmd[:1] + ["--module", MODULE] + cmd[1:],
                   env=dict(os.environ, CMKP11_CONF=conf),
                   capture_output=True, text=True, timeout=300)
t.eq((p.returncode, p.stdout.strip()),
     (0, "Token local, key kek: not rotated: the key's rotation policy has no "
         "Rotate action (no policy)"),
     "the service's ExecStart runs as written: kek has no policy, so nothing "
     "is rotated, exit 0")

emu.stop()
shutil.rmtree(work, ignore_errors=True)
