#!/usr/bin/python3
"""cmkp11-tool retire TOKEN KEY@VERSION on both back ends (a Key Vault key
in the emulator, an hsm key in SoftHSM): refused while a sealed file under
--paths names the version (format 1, or format 2 as a second recipient) or
a recent audit record used it, with the files, the processes and hosts, and
the rewrap command that frees the files; that command run, retire succeeds
and the version is disabled in the back end (the vault's "enabled"; the
lower private key's usage flags); --dry-run changes nothing; the current
version is refused; --undo enables the version again."""
import datetime
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
TOP_BUILDDIR = os.environ.get("top_builddir") or TOP_SRCDIR
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "kvemu"))

from kvtest import (Tap, Emu, emulator_config, write_private,  # noqa: E402
                    APP_SECRET, READER_ID, READER_SECRET, conf_text,
                    hsm_token, emu_token, skip_all, softhsm_in)
from hsmtest import on_lower  # noqa: E402

TOOL = os.path.join(TOP_BUILDDIR, "cmkp11-tool")
MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(
    TOP_BUILDDIR, ".libs", "cmkp11.so")

if not os.access(TOOL, os.X_OK):
    skip_all("cmkp11-tool is not built")

t = Tap()
work = tempfile.mkdtemp(prefix="tmp-test-retire-",
                        dir=os.environ.get("TMPDIR") or os.getcwd())


def run(*args, conf):
    env = dict(os.environ, CMKP11_CONF=conf)
    p = subprocess.run([TOOL, "--module", MODULE] + list(args), env=env,
                       capture_output=True, timeout=600)
    return p.returncode, p.stdout.decode(errors="replace"), \
        p.stderr.decode(errors="replace")


def wfile(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def rfile(path):
    with open(path, "rb") as f:
        return f.read()


def tree(d):
    """Every file under d with its bytes: what --dry-run must not change."""
    out = {}
    for root, _, files in os.walk(d):
        for n in files:
            out[os.path.join(root, n)] = rfile(os.path.join(root, n))
    return out


# ---- set-up: SoftHSM and the emulator, one configuration ---------------------
hsmdir, st = softhsm_in(work)
pinfile = write_private(os.path.join(work, "pin"), "1234\n")
emu = Emu(emulator_config(extra_vaults=[
    {"name": "kvcopy", "kind": "vault", "soft_delete": True,
     "purge_protection": True, "access": {"app": ["all"]}}]))
secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")
emu.admin("POST", "vaults/kvemu/keys", {"name": "cmk"})
audit = os.path.join(work, "audit.log")
conf = write_private(
    os.path.join(work, "both.conf"),
    conf_text([hsm_token("local", pin_file=pinfile),
               emu_token(emu, "kv", secret)],
              log_level="error", log_file=os.path.join(work, "both.log"),
              audit_log=audit))
t.eq(st.returncode, 0, "a SoftHSM token (local) and an emulated vault (kv) "
     "in one configuration, with an audit log")
KV = "pkcs11:token=kv;object=cmk"
HSM = "pkcs11:token=local;object=kek"

LOWER_FLAGS = r'''
k = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                   (P.CKA_ID, bytes.fromhex(sys.argv[2]))])[0]
v = s.getAttributeValue(k, [P.CKA_DECRYPT, P.CKA_UNWRAP, P.CKA_SIGN])
print(",".join(str(bool(x)) for x in v))
s.logout()
'''


def lower_flags(hexid):
    """The lower private key's CKA_DECRYPT, CKA_UNWRAP, CKA_SIGN, read from
    SoftHSM directly."""
    return on_lower(LOWER_FLAGS, hexid)


def kv_enabled(version):
    """The version's "enabled" as the emulator's REST API shows it."""
    st, _, obj = emu.vault("GET", emu.url("kvemu") + "/keys/cmk/" + version)
    return obj["attributes"]["enabled"] if st == 200 else st


def versions(tok, key):
    rc, out, err = run("--json", "list", tok, conf=conf)
    assert rc == 0, err
    doc = json.loads(out)
    for tk in doc["tokens"]:
        for k in tk["keys"]:
            if tk["token"] == tok and k["key"] == key:
                return {v["version"]: v for v in k["versions"]}
    return {}


# An application using a version: an encryption with its public key, through
# cmkp11 (an audit record of the process "python3"). Prints its pid.
APP_USE = r'''
import os, sys
import PyKCS11 as P
os.environ["CMKP11_CONF"] = sys.argv[2]
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == sys.argv[3]][0]
s = lib.openSession(slot, P.CKF_SERIAL_SESSION)
k = s.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY),
                   (P.CKA_ID, bytes.fromhex(sys.argv[4]))])[0]
s.encrypt(k, b"x", P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256))
print(os.getpid())
'''

plain = os.urandom(70000)
src = wfile(os.path.join(work, "plain"), plain)

CASES = [
    # token, key, its URI, the other back end's key (first recipient of the
    # version 2 file), how the version's state shows in the back end
    ("kv", "cmk", KV, HSM),
    ("local", "kek", HSM, KV),
]

retired = {}
for tok, key, uri, other in CASES:
    d = os.path.join(work, tok, "files")
    outside = os.path.join(work, tok, "elsewhere")
    os.makedirs(os.path.join(d, "sub"))
    os.makedirs(outside)
    a = os.path.join(d, "a.sealed")
    m = os.path.join(d, "sub", "multi file.sealed")
    o = os.path.join(outside, "o.sealed")
    rcs = [run("seal", "--key", uri, src, "-o", a, conf=conf)[0],
           run("seal", "--key", other, "--key", uri, src, "-o", m,
               conf=conf)[0],
           run("seal", "--key", uri, src, "-o", o, conf=conf)[0]]
    old = [v for v, x in versions(tok, key).items() if x["current"]][0]
    retired[tok] = old
    rc, out, err = run("rotate", tok, key, conf=conf)
    vs = versions(tok, key)
    new = [v for v, x in vs.items() if x["current"]][0]
    t.ok(rcs == [0, 0, 0] and rc == 0 and new != old and
         vs[old]["enabled"] is True,
         "%s: three files sealed under %s version %s (one of them format 2, "
         "the version its second key), then the key rotated to %s" %
         (tok, key, old, new), (rcs, out, err))

    # The current version is never retired.
    rc, out, err = run("retire", tok, "%s@%s" % (key, new), "--paths", d,
                       conf=conf)
    t.ok(rc == 3 and "version %s is the current version of key %s on token "
         "%s: new wraps use it, so it cannot be retired" % (new, key, tok)
         in err and versions(tok, key)[new]["enabled"] is True,
         "%s: retiring the current version: refused (exit 3), says why" % tok,
         (rc, out, err))
    rc, js, err = run("--json", "retire", tok, "%s@%s" % (key, new),
                      "--audit-log", audit, conf=conf)
    doc = json.loads(js) if js else {}
    t.ok(rc == 3 and doc.get("result") == "refused" and
         doc.get("reason") == "the current version",
         "%s: the same with --json" % tok, (js, err))

    # Refused while files under --paths name the version.
    before = tree(os.path.join(work, tok))
    rc, out, err = run("retire", "--dry-run", tok, "%s@%s" % (key, old),
                       "--paths", d, conf=conf)
    t.ok(rc == 3 and "version %s NOT retired: sealed files depend on it" % old
         in out and tree(os.path.join(work, tok)) == before and
         versions(tok, key)[old]["enabled"] is True,
         "%s: --dry-run with files depending: exit 3, nothing changed" % tok,
         (rc, out, err))
    rc, out, err = run("retire", tok, "%s@%s" % (key, old), "--paths", d,
                       conf=conf)
    lines = out.splitlines()
    cmd = [x.strip() for x in lines if x.startswith("  cmkp11-tool ")]
    t.ok(rc == 3 and lines[0] == "Token %s, key %s: version %s NOT retired: "
         "sealed files depend on it" % (tok, key, old) and
         "Sealed files that name it (2):" in lines and
         "  %s (format 1, key 1 of 1)" % a in lines and
         "  %s (format 2, key 2 of 2)" % m in lines and o not in out and
         cmd == ["cmkp11-tool --module %s rewrap %s '%s'" % (MODULE, a, m)] and
         tree(os.path.join(work, tok)) == before and
         versions(tok, key)[old]["enabled"] is True,
         "%s: refused (exit 3): both files listed (the format 2 file by its "
         "second key), the rewrap command printed, nothing changed" % tok,
         (rc, out, err))
    rc, js, err = run("--json", "retire", tok, "%s@%s" % (key, old),
                      "--paths", d, conf=conf)
    doc = json.loads(js) if js else {}
    t.ok(rc == 3 and doc.get("result") == "refused" and
         [(f["path"], f["format"], f["recipient"]) for f in doc["files"]] ==
         [(a, 1, 1), (m, 2, 2)] and doc["files_checked"] == 2 and
         doc["rewrap_command"] == cmd[0] and doc["processes"] == [],
         "%s: --json: the same, as an object" % tok, (js, err))

    # The printed command frees the files.
    argv = shlex.split(cmd[0]) if cmd else ["false"]
    r = subprocess.run([TOOL] + argv[1:], capture_output=True, text=True,
                       env=dict(os.environ, CMKP11_CONF=conf), timeout=600)
    t.ok(r.returncode == 0 and r.stdout.startswith("rewrapped 2 files"),
         "%s: the printed rewrap command runs" % tok, (r.stdout, r.stderr))

    # An audit record using the version: refused, naming process and host.
    records = [json.loads(x) for x in open(audit).read().splitlines()]
    mine = [x for x in records if x["token"] == tok and x["key"] == key and
            x["version"] == old]
    t.ok(len(mine) > 0 and all(x.get("host") == socket.gethostname() and
                               x.get("process") == "cmkp11-tool"
                               for x in mine),
         "%s: the module's audit log has records of version %s, with host "
         "and process" % (tok, old), mine[-1:])
    aged = os.path.join(work, tok, "aged.log")
    two_h = (datetime.datetime.now(datetime.timezone.utc) -
             datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    rec = dict(mine[-1], time=two_h, pid=4242, host="app7.example",
               process="payments-api")
    with open(aged, "w") as f:
        f.write(json.dumps(rec) + "\n")
        f.write("not a record\n")
        f.write(json.dumps(dict(rec, version=new)) + "\n")
    rc, out, err = run("retire", tok, "%s@%s" % (key, old), "--paths", d,
                       "--audit-log", aged, conf=conf)
    t.ok(rc == 3 and "version %s NOT retired: audit records show it in use"
         % old in out and "Processes that used it in the last 24h (1 audit "
         "record):" in out and "  payments-api (pid 4242) on host "
         "app7.example: 1 operation (%s), last at %s" % (rec["operation"],
                                                         two_h) in out and
         "warning: 1 audit line is not an audit record: skipped" in err and
         versions(tok, key)[old]["enabled"] is True,
         "%s: a 2-hour-old audit line with the default --since (24h): "
         "refused, the process and host named" % tok, (rc, out, err))
    app = subprocess.run([sys.executable, "-c", APP_USE, MODULE, conf, tok,
                          old], capture_output=True, text=True)
    rc, out, err = run("retire", "--dry-run", tok, "%s@%s" % (key, old),
                       "--paths", d, "--audit-log", audit, conf=conf)
    t.ok(app.returncode == 0 and rc == 3 and
         "version %s NOT retired: audit records show it in use" % old in out
         and "  python3 (pid %s) on host %s: 1 operation (encrypt), last at "
         % (app.stdout.strip(), socket.gethostname()) in out and
         "Not counted: %d audit records of cmkp11-tool itself" % len(mine)
         in out, "%s: an application (python3, PyKCS11) encrypts under the "
         "version: the module's audit log names it and this host; "
         "cmkp11-tool's own records (the rewrap) are not counted" % tok,
         (app.stderr, rc, out, err))
    rc, js, err = run("--json", "retire", tok, "%s@%s" % (key, old),
                      "--paths", d, "--audit-log", audit, "--since", "7d",
                      conf=conf)
    doc = json.loads(js) if js else {}
    t.ok(rc == 3 and doc.get("files") == [] and
         [(p["process"], p["host"], p["operations"])
          for p in doc["processes"]] ==
         [("python3", socket.gethostname(), 1)] and
         doc["tool_records"] == len(mine) and doc["audit_records"] == 1,
         "%s: the same with --json (--since 7d)" % tok, (js, err))

    # Nothing depends on it any more: --dry-run reports, then it retires.
    before = tree(os.path.join(work, tok))
    rc, out, err = run("retire", "--dry-run", tok, "%s@%s" % (key, old),
                       "--paths", d, "--audit-log", aged, "--since", "90m",
                       conf=conf)
    t.ok(rc == 0 and "version %s can be retired (dry run: nothing changed)" %
         old in out and tree(os.path.join(work, tok)) == before and
         versions(tok, key)[old]["enabled"] is True,
         "%s: --since 90m, shorter than the line's age: --dry-run says it "
         "can be retired and changes nothing" % tok, (rc, out, err))
    rc, out, err = run("retire", tok, "%s@%s" % (key, old), "--paths", d,
                       "--audit-log", aged, "--since", "90m", conf=conf)
    vs = versions(tok, key)
    t.ok(rc == 0 and out == "Token %s, key %s: version %s retired (disabled): "
         "no sealed file under the paths names it (2 checked) and no audit "
         "record in the last 90m used it (1 log read)\n" % (tok, key, old) and
         vs[old]["enabled"] is False and vs[new]["enabled"] is True,
         "%s: retired: the module lists the version disabled" % tok,
         (rc, out, err))
    last = json.loads(open(audit).read().splitlines()[-1])
    t.ok({k: last.get(k) for k in ("token", "key", "version", "operation",
                                  "mechanism", "result", "process")} ==
         {"token": tok, "key": key, "version": old, "operation": "disable",
          "mechanism": None, "result": "CKR_OK", "process": "cmkp11-tool"},
         "%s: the audit log records the disabling (operation disable, "
         "mechanism null)" % tok, last)
    if tok == "kv":
        t.eq((kv_enabled(old), emu.admin(
            "GET", "vaults/kvemu/keys/cmk?version=" + old)[
                "attributes"]["enabled"]), (False, False),
             "kv: the emulator shows the version enabled=false (REST GET "
             "and admin GET)")
    else:
        t.eq(lower_flags(old), "False,False,False", "local: the lower "
             "private key's CKA_DECRYPT, CKA_UNWRAP and CKA_SIGN are false")

    # The rewrapped files unseal; a file outside --paths no longer does.
    ok = all(run("unseal", x, "-o", x + ".u", conf=conf)[0] == 0 and
             rfile(x + ".u") == plain for x in (a, m))
    t.ok(ok, "%s: the rewrapped files unseal (current version)" % tok)
    rc, out, err = run("unseal", o, "-o", o + ".u", conf=conf)
    t.ok(rc == 1 and not os.path.exists(o + ".u") and
         ("disabled" in err or "may not unwrap" in err),
         "%s: a file under the retired version outside --paths: refused "
         "(revoked)" % tok, err)
    rc, out, err = run("retire", tok, "%s@%s" % (key, old), "--paths", d,
                       conf=conf)
    t.ok(rc == 0 and "is already disabled" in out, "%s: retiring it again: "
         "already disabled, exit 0" % tok, (rc, out, err))

    # --undo.
    rc, out, err = run("retire", "--undo", tok, "%s@%s" % (key, old),
                       conf=conf)
    t.ok(rc == 0 and out == "Token %s, key %s: version %s enabled again\n" %
         (tok, key, old) and versions(tok, key)[old]["enabled"] is True,
         "%s: --undo enables the version again" % tok, (rc, out, err))
    if tok == "kv":
        t.eq(kv_enabled(old), True, "kv: the emulator shows enabled=true")
    else:
        t.eq(lower_flags(old), "True,True,True", "local: the usage flags are "
             "back, from the public key's")
    last = json.loads(open(audit).read().splitlines()[-1])
    t.ok(last.get("operation") == "enable" and last.get("version") == old and
         last.get("result") == "CKR_OK", "%s: the audit log records the "
         "enabling" % tok, last)
    rc, out, err = run("unseal", o, "-o", o + ".u", conf=conf)
    t.ok(rc == 0 and rfile(o + ".u") == plain, "%s: the file outside "
         "--paths unseals again" % tok, err)

# ---- PKCS#11 directly: the hsm back end restores the flags it recorded ------
P11_SET = r'''
import os, sys
import PyKCS11 as P
os.environ["CMKP11_CONF"] = sys.argv[2]
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "local"][0]
s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
k = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                   (P.CKA_LABEL, sys.argv[3])])[0]
try:
    s.setAttributeValue(k, [(P.CKA_VENDOR_DEFINED | 0x434D0005,
                             b"\x01" if sys.argv[4] == "on" else b"\x00")])
    print("CKR_OK")
except P.PyKCS11Error as e:
    print(P.CKR[e.value])
'''

RECORDS = r'''
objs = s.findObjects([(P.CKA_CLASS, P.CKO_DATA),
                      (P.CKA_APPLICATION, "cmkp11 disabled-usage")])
def text(v):
    return v if isinstance(v, str) else bytes(v).decode()
print(" ".join(sorted(
    text(s.getAttributeValue(o, [P.CKA_LABEL])[0]) + "=" +
    text(s.getAttributeValue(o, [P.CKA_VALUE])[0]) for o in objs)))
s.logout()
'''


def p11_set(label, on):
    r = subprocess.run([sys.executable, "-c", P11_SET, MODULE, conf, label,
                        "on" if on else "off"], capture_output=True, text=True)
    return r.stdout.strip() or r.stderr[-500:]


def records():
    """The records of the flags disabled versions had, on the lower token."""
    return on_lower(RECORDS)


before = lower_flags("30")
t.ok(before == "False,True,True" and records() == "",
     "local: the unwrap-only pair: CKA_DECRYPT false, CKA_UNWRAP and "
     "CKA_SIGN true; no record", before)
rv = p11_set("unwrap-only", False)
t.ok(rv == "CKR_OK" and lower_flags("30") == "False,False,False" and
     records() == "unwrap-only@30=unwrap,sign" and
     versions("local", "unwrap-only")["30"]["enabled"] is False,
     "local: C_SetAttributeValue CKA_CMK_ENABLED false: every flag false, "
     "the ones that were true recorded on the lower token",
     (rv, records()))
rv = p11_set("unwrap-only", False)
t.ok(rv == "CKR_OK" and records() == "unwrap-only@30=unwrap,sign",
     "local: disabled twice: the record stays", (rv, records()))
rv = p11_set("unwrap-only", True)
t.ok(rv == "CKR_OK" and lower_flags("30") == before and records() == "" and
     versions("local", "unwrap-only")["30"]["enabled"] is True,
     "local: CKA_CMK_ENABLED true: exactly the recorded flags come back "
     "(unwrap only, no decrypt), the record is gone", (rv, lower_flags("30")))
rv = p11_set("disabled", True)
t.ok(rv == "CKR_OK" and lower_flags("20") == "True,True,True" and
     records() == "",
     "local: a pair disabled by other means (no record): the flags from the "
     "public key's CKA_ENCRYPT, CKA_WRAP, CKA_VERIFY", (rv, lower_flags("20")))

# ---- keyvault: an identity without the update permission ------------------
rsecret = write_private(os.path.join(work, "reader.secret"),
                        READER_SECRET + "\n")
rolog = os.path.join(work, "reader.log")
roconf = write_private(
    os.path.join(work, "reader.conf"),
    conf_text([emu_token(emu, "kv", rsecret, client_id=READER_ID)],
              log_level="error", log_file=rolog))
empty = os.path.join(work, "empty")
os.makedirs(empty)
rc, out, err = run("retire", "kv", "cmk@" + retired["kv"], "--paths", empty,
                   conf=roconf)
log = open(rolog).read() if os.path.exists(rolog) else ""
t.ok(rc == 1 and "C_SetAttributeValue CKA_CMK_ENABLED=false on key cmk "
     "version %s, token kv: CKR_FUNCTION_FAILED (HTTP 403)" % retired["kv"]
     in err and "disable needs the keys update permission" in log and
     kv_enabled(retired["kv"]) is True,
     "kv: an identity with get and list only: exit 1, CKR_FUNCTION_FAILED "
     "(HTTP 403), the log names the update permission", (err, log))

# ---- keyvault with replicas: each vault is its own resource --------------
emu.admin("POST", "vaults/kvemu/keys/cmk/copy", {"to": "kvcopy"})
replog = os.path.join(work, "replicas.log")
repconf = write_private(
    os.path.join(work, "replicas.conf"),
    conf_text([emu_token(emu, "kv", secret, vault_url="%s, %s" % (
        emu.url("kvemu"), emu.url("kvcopy")))],
        log_level="warning", log_file=replog))
rc, out, err = run("retire", "kv", "cmk@" + retired["kv"], "--paths", empty,
                   conf=repconf)
log = open(replog).read() if os.path.exists(replog) else ""
t.ok(rc == 1 and "CKR_FUNCTION_FAILED" in err and "token kv has replicas" in
     log and "enable or disable the version in each vault" in log and
     kv_enabled(retired["kv"]) is True,
     "kv with replicas: refused (CKR_FUNCTION_FAILED), the log says to "
     "change each vault", (err, log))

# ---- the command line --------------------------------------------------------
rc, out, err = run("retire", "kv", "cmk", "--paths", work, conf=conf)
t.ok(rc == 2 and "name the version as KEY@VERSION" in err,
     "retire KEY without @VERSION: exit 2", err)
rc, out, err = run("retire", "kv", "cmk@x", conf=conf)
t.ok(rc == 2 and "retire: give --paths DIR (where sealed files are) or "
     "--audit-log FILE" in err, "retire without --paths or --audit-log: "
     "exit 2 (nothing would be checked)", err)
rc, out, err = run("retire", "kv", "cmk@x", "--since", "1h", conf=conf)
t.ok(rc == 2 and "--since: give the audit logs to read" in err,
     "--since without --audit-log: exit 2", err)
rc, out, err = run("retire", "kv", "cmk@x", "--audit-log", audit, "--since",
                   "2w", conf=conf)
t.ok(rc == 2 and "--since: an age such as 90m, 24h or 7d" in err,
     "--since 2w: exit 2", err)
rc, out, err = run("list", "--dry-run", conf=conf)
t.ok(rc == 2 and "list does not take --dry-run" in err,
     "--dry-run on another command: exit 2", err)
rc, out, err = run("retire", "kv", "cmk@0000", "--paths", work, conf=conf)
t.ok(rc == 1 and "token kv has no key cmk with a version 0000" in err,
     "an unknown version: exit 1", err)
rc, out, err = run("retire", "kv", "cmk@" + retired["kv"], "--paths",
                   os.path.join(work, "nowhere"), conf=conf)
t.ok(rc == 1 and "nowhere: No such file or directory" in err and
     "1 path could not be read: cannot show that nothing depends on version "
     "%s (not retired)" % retired["kv"] in err and
     versions("kv", "cmk")[retired["kv"]]["enabled"] is True,
     "a path that cannot be read: exit 1, not retired", err)

emu.stop()
shutil.rmtree(work, ignore_errors=True)
