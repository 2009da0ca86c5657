#!/usr/bin/python3
"""cmkp11-tool list, check and rotate, driven as a user would, on both back
ends: a SoftHSM token (hsm) and the Key Vault emulator (keyvault). Every
command's text and --json output is checked; check passes on compliant
keys and fails on the right row for each broken prerequisite."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
TOP_BUILDDIR = os.environ.get("top_builddir") or TOP_SRCDIR
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))

from kvtest import (Tap, Emu, emulator_config, write_private,  # noqa: E402
                    conf_text, token_section, hsm_token, TENANT, APP_ID, READER_ID,
                    APP_SECRET, READER_SECRET, skip_all, softhsm_in)

TOOL = os.path.join(TOP_BUILDDIR, "cmkp11-tool")
MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(
    TOP_BUILDDIR, ".libs", "cmkp11.so")
SOFTHSM = os.environ.get("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
CHECKER = shlex.split(os.environ.get("CMKP11_CHECKER") or "")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
# rotation-policy and expiry only warn (WARN): test-rotation-policy.py.
ROWS_HSM = ["key-type", "key-ops", "enabled", "rotation-policy", "expiry",
            "credentials", "round-trip"]
ROWS_KV = ["key-type", "key-ops", "enabled", "recovery", "rotation-policy",
           "expiry", "credentials", "round-trip", "state-files"]

if not os.access(TOOL, os.X_OK):
    skip_all("cmkp11-tool is not built")

t = Tap()


def run(*args, conf=None, module=MODULE, stdin=None):
    """Runs the tool; returns (exit status, stdout, stderr)."""
    env = dict(os.environ)
    if conf is not None:
        env["CMKP11_CONF"] = conf
    cmd = CHECKER + [TOOL]
    if module is not None:
        cmd += ["--module", module]
    p = subprocess.run(cmd + list(args), env=env, capture_output=True,
                       text=True, timeout=300, input=stdin)
    return p.returncode, p.stdout, p.stderr


def run_json(*args, **kw):
    rc, out, err = run("--json", *args, **kw)
    try:
        doc = json.loads(out)
    except ValueError as e:
        doc = None
        t.diag("not JSON (%s): %r\nstderr: %s" % (e, out[:2000], err))
    if "check" in args and doc is not None:
        doc = check_keys(doc)
    return rc, doc, err


def check_keys(doc):
    """check --json has one shape, {"result", "keys": [...]}, whatever the
    number of keys; the outer result is PASS when every key passed. Returns
    the key's object for one key, the list for several, None (after a
    diagnostic) for any other shape."""
    if not isinstance(doc, dict) or sorted(doc) != ["keys", "result"] or \
            not isinstance(doc["keys"], list) or not doc["keys"] or \
            doc["result"] != ("PASS" if all(k.get("result") == "PASS"
                                            for k in doc["keys"]) else "FAIL"):
        t.diag("check --json: not {result, keys: [...]}: %r" % (doc,))
        return None
    return doc["keys"][0] if len(doc["keys"]) == 1 else doc["keys"]


def rows(doc):
    return {c["name"]: c for c in doc["checks"]}


def shape_ok(doc, names):
    """The check document has product.md's shape and these rows."""
    if not isinstance(doc, dict) or sorted(doc) != ["checks", "key", "result",
                                                    "token"]:
        return False
    if doc["result"] not in ("PASS", "FAIL"):
        return False
    for c in doc["checks"]:
        if sorted(c) != ["detail", "name", "remedy", "result"]:
            return False
        if c["result"] not in ("PASS", "FAIL", "WARN") or not c["detail"]:
            return False
        # A warning (rotation policy, expiry) has a remedy too.
        if (c["result"] in ("FAIL", "WARN")) != bool(c["remedy"]):
            return False
    want = "FAIL" if any(c["result"] == "FAIL" for c in doc["checks"]) \
        else "PASS"
    return doc["result"] == want and [c["name"] for c in doc["checks"]] == names


def fails_on(doc, row, names):
    """Only the named rows (a set) fail, row among them."""
    r = rows(doc)
    failed = {n for n, c in r.items() if c["result"] == "FAIL"}
    return row in failed and failed <= set(names)


def key_of(doc, token, key):
    for tok in doc["tokens"]:
        if tok["token"] == token:
            for k in tok["keys"]:
                if k["key"] == key:
                    return k
    return None


# ---- command line ----------------------------------------------------------
rc, out, err = run("--help", module=None)
t.ok(rc == 0 and "list [TOKEN]" in out and "check [TOKEN [KEY]]" in out and
     "rotate TOKEN KEY" in out and "--pin-file" in out, "--help lists every "
     "command and option, exit 0")
rc, out, err = run("--version", module=None)
t.ok(rc == 0 and out.startswith("cmkp11-tool"), "--version, exit 0")
rc, out, err = run(module=None)
t.eq(rc, 2, "no command: exit 2")
rc, out, err = run("frobnicate", module=None)
t.ok(rc == 2 and "unknown command" in err, "an unknown command: exit 2")
rc, out, err = run("list", "pkcs11:bad%zz", module=None)
t.eq(rc, 2, "a malformed pkcs11: URI: exit 2")
rc, out, err = run("rotate", module=None)
t.eq(rc, 2, "rotate without a key: exit 2")
rc, out, err = run("check", "a", "b", "c", module=None)
t.eq(rc, 2, "check with three operands: exit 2")
rc, out, err = run("--min-key-bits", "lots", "check", module=None)
t.eq(rc, 2, "--min-key-bits needs a number: exit 2")
rc, out, err = run("--pin", "1", "--pin-file", "/nonexistent", "list",
                   module=None)
t.eq(rc, 2, "--pin and --pin-file together: exit 2")
rc, out, err = run("list", module="/nonexistent/cmkp11.so")
t.ok(rc == 1 and "cannot load" in err, "a module that cannot be loaded: "
     "exit 1 with the reason")

# ---- hsm: SoftHSM ------------------------------------------------------------
work = os.path.join(os.environ.get("TMPDIR") or os.getcwd(),
                    "test-tool.%d" % os.getpid())
os.makedirs(work, exist_ok=True)
hsmdir, st = softhsm_in(work)
t.eq(st.returncode, 0, "softhsm-init.sh made the token")
st = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "cmk",
                     "--login", "--pin", "1234", "--keypairgen", "--key-type",
                     "rsa:1024", "--label", "small", "--id", "40"],
                    capture_output=True, text=True)
t.eq(st.returncode, 0, "a 1024-bit key pair 'small' in the token")
ODD = 'odd "name"\\é\t'
st = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "cmk",
                     "--login", "--pin", "1234", "--keypairgen", "--key-type",
                     "rsa:2048", "--label", ODD, "--id", "50"],
                    capture_output=True, text=True)
t.eq(st.returncode, 0, "a key pair whose label needs JSON escaping")
hconf = write_private(os.path.join(work, "hsm.conf"),
                      conf_text([hsm_token("local")], log_level="error",
                                log_file=os.path.join(work, "hsm.log")))
pinfile = write_private(os.path.join(work, "pin"), "1234\n")

rc, out, err = run("list", conf=hconf)
t.ok(rc == 0 and "Token local" in out and "not logged in" in out,
     "hsm list without a PIN: the public halves, and a note")
t.ok(re.search(r"^\s+kek\s+02\s+yes\s+unknown\s+RSA\s+2048", out, re.M),
     "hsm list without a PIN: the state is unknown", out)

rc, doc, err = run_json("--pin", "1234", "list", conf=hconf)
t.eq(rc, 0, "hsm list --json: exit 0")
tok = doc["tokens"][0] if doc else {}
t.ok(tok.get("token") == "local" and tok.get("backend") == "hsm" and
     tok.get("model") == "SoftHSM v2" and tok.get("logged_in") is True and
     tok.get("error") is None and SOFTHSM in (tok.get("source") or ""),
     "hsm list --json: the token, its back end, source and login", tok)
names = [k["key"] for k in tok.get("keys", [])]
t.eq(names, ["dec-only", "disabled", "kek", ODD, "small", "unwrap-only"],
     "hsm list --json: every key, by name (quotes, backslash, tab and "
     "UTF-8 escaped as JSON needs)")
kek = key_of(doc, "local", "kek") or {}
vs = kek.get("versions", [])
t.ok(kek.get("current_version") == "02" and
     [(v["version"], v["label"], v["current"], v["enabled"]) for v in vs] ==
     [("02", "kek", True, True), ("01", "kek@01", False, True)],
     "hsm list --json: kek has versions 02 (current) and 01", vs)
t.ok(all(v["key_type"] == "RSA" and v["bits"] == 2048 and
         "unwrapKey" in v["key_ops"] and v["id"] == v["version"] and
         v["created"] is None and v["private_key_visible"] for v in vs),
     "hsm list --json: type, size, operations, id of each version")
dis = key_of(doc, "local", "disabled") or {"versions": [{}]}
t.eq(dis["versions"][0].get("enabled"), False,
     "hsm list --json: the disabled key shows disabled")
small = key_of(doc, "local", "small") or {"versions": [{}]}
t.eq(small["versions"][0].get("bits"), 1024, "hsm list --json: 1024 bits")

rc, out, err = run("--pin-file", pinfile, "list", "pkcs11:token=local;object=kek",
                   conf=hconf)
t.ok(rc == 0 and re.search(r"^\s+kek\s+02\s+yes\s+enabled", out, re.M) and
     "kek@" not in out and "dec-only" not in out,
     "hsm list by URI with --pin-file: only kek, logged in", out)
rc, doc2, err = run_json("--pin", "1234", "list", "pkcs11:object=kek@01",
                         conf=hconf)
k2 = doc2["tokens"][0]["keys"] if doc2 else []
t.ok(rc == 0 and [k["key"] for k in k2] == ["kek"] and
     len(k2[0]["versions"]) == 2, "a URI naming one version lists its key")
os.chmod(pinfile, 0o666)
rc, out, err = run("--pin-file", pinfile, "list", conf=hconf)
t.ok(rc == 1 and "writable" in err, "a PIN file others may write is refused",
     err)
os.chmod(pinfile, 0o600)
rc, out, err = run("list", "nosuchtoken", conf=hconf)
t.ok(rc == 1 and "no token" in err, "list of an unknown token: exit 1")

rc, doc, err = run_json("--pin", "1234", "check", "local", "kek", conf=hconf)
t.ok(rc == 0 and shape_ok(doc, ROWS_HSM) and doc["result"] == "PASS" and
     doc["token"] == "local" and doc["key"] == "kek",
     "hsm check kek --json: PASS on every row, exit 0", doc)
rc, out, err = run("--pin", "1234", "check", "local", "kek", conf=hconf)
t.ok(rc == 0 and "Token local, key kek, version 02: PASS" in out and
     re.search(r"wrap and unwrap round trip\s+PASS", out) and "FAIL" not in out,
     "hsm check kek, text: a table of PASS rows", out)

rc, doc, err = run_json("--pin", "1234", "check", "local", "dec-only",
                        conf=hconf)
t.ok(rc == 1 and shape_ok(doc, ROWS_HSM) and
     fails_on(doc, "key-ops", {"key-ops", "round-trip"}) and
     "CKA_UNWRAP" in rows(doc)["key-ops"]["remedy"],
     "hsm key whose private half lacks CKA_UNWRAP: FAIL on permitted "
     "operations, with the remedy", doc)
rc, doc, err = run_json("--pin", "1234", "check", "local", "disabled",
                        conf=hconf)
t.ok(rc == 1 and shape_ok(doc, ROWS_HSM) and
     rows(doc)["enabled"]["result"] == "FAIL" and
     "disabled" in rows(doc)["enabled"]["detail"] and
     rows(doc)["credentials"]["result"] == "PASS",
     "hsm disabled key: FAIL on enabled", doc)
rc, doc, err = run_json("--pin", "1234", "check", "local", "small", conf=hconf)
t.ok(rc == 1 and shape_ok(doc, ROWS_HSM) and
     fails_on(doc, "key-type", {"key-type"}) and
     "1024" in rows(doc)["key-type"]["detail"] and
     "2048" in rows(doc)["key-type"]["remedy"],
     "hsm 1024-bit key: FAIL on key type and size only", doc)
rc, doc, err = run_json("--pin", "1234", "--min-key-bits", "3072", "check",
                        "local", "kek", conf=hconf)
t.ok(rc == 1 and fails_on(doc, "key-type", {"key-type"}) and
     "minimum 3072" in rows(doc)["key-type"]["detail"],
     "--min-key-bits 3072: a 2048-bit key fails on size", doc)
hconf3 = write_private(os.path.join(work, "hsm3072.conf"),
                       open(hconf).read().replace(
                           "log-level = error\n",
                           "log-level = error\nmin-key-bits = 3072\n"))
rc, doc, err = run_json("--pin", "1234", "check", "local", "kek", conf=hconf3)
t.ok(rc == 1 and fails_on(doc, "key-type", {"key-type"}) and
     "minimum 3072" in rows(doc)["key-type"]["detail"],
     "the module's min-key-bits = 3072 (CKA_CMK_MIN_BITS): a 2048-bit key "
     "fails on size", doc)
rc, doc, err = run_json("--pin", "1234", "--min-key-bits", "2048", "check",
                        "local", "kek", conf=hconf3)
t.ok(rc == 0 and doc["result"] == "PASS",
     "--min-key-bits overrides the module's min-key-bits", doc)
rc, doc, err = run_json("--pin", "9999", "check", "local", "kek", conf=hconf)
t.ok(rc == 1 and doc and doc["result"] == "FAIL" and
     rows(doc)["credentials"]["result"] == "FAIL" and
     "CKR_PIN_INCORRECT" in rows(doc)["credentials"]["detail"],
     "hsm wrong PIN: FAIL on credentials", doc)
rc, doc, err = run_json("check", "local", "kek", conf=hconf)
t.ok(rc == 1 and rows(doc)["credentials"]["result"] == "FAIL" and
     "--pin" in rows(doc)["credentials"]["remedy"],
     "hsm without a PIN: FAIL on credentials, the remedy names --pin", doc)
rc, doc, err = run_json("--pin", "1234", "check", conf=hconf)
t.ok(rc == 1 and isinstance(doc, list) and
     [(d["key"], d["result"]) for d in doc] ==
     [("dec-only", "FAIL"), ("disabled", "FAIL"), ("kek", "PASS"),
      (ODD, "PASS"), ("small", "FAIL"), ("unwrap-only", "FAIL")] and
     all(shape_ok(d, ROWS_HSM) for d in doc),
     "hsm check of every key: an array, one document per key", doc)
rc, out, err = run("--pin", "1234", "check", "local", "nosuchkey", conf=hconf)
t.ok(rc == 1 and "no key" in err, "check of an unknown key: exit 1")

rc, doc, err = run_json("--pin", "1234", "rotate", "local", "kek", conf=hconf)
old, new = (doc or {}).get("old") or {}, (doc or {}).get("new") or {}
t.ok(rc == 0 and doc["token"] == "local" and doc["key"] == "kek" and
     old.get("version") == "02" and old.get("current") is False and
     old.get("label") == "kek@02" and new.get("current") is True and
     new.get("label") == "kek" and re.match(r"^[0-9a-f]{16}$",
                                            new.get("version", "")) and
     new.get("bits") == 2048, "hsm rotate --json: the old and the new version",
     doc)
rc, doc, err = run_json("--pin", "1234", "list", "local", conf=hconf)
kek = key_of(doc, "local", "kek") or {}
t.ok(kek.get("current_version") == new.get("version") and
     len(kek.get("versions", [])) == 3 and
     kek["versions"][0]["version"] == new.get("version"),
     "hsm list after rotate: the new version is current", kek)
rc, out, err = run("--pin", "1234", "rotate", "pkcs11:token=local;object=kek",
                   conf=hconf)
t.ok(rc == 0 and re.search(r"^\s+old\s+kek\s+%s\s+no" % new.get("version"),
                           out, re.M) and
     re.search(r"^\s+new\s+kek\s+[0-9a-f]{16}\s+yes", out, re.M),
     "hsm rotate by URI, text: old and new versions", out)
rc, doc, err = run_json("--pin", "1234", "check", "local", "kek", conf=hconf)
t.ok(rc == 0 and doc["result"] == "PASS", "hsm check after two rotations: PASS")
rc, out, err = run("--pin", "1234", "rotate", "local", "nosuchkey", conf=hconf)
t.ok(rc == 1 and "no key" in err, "rotate of an unknown key: exit 1")

# ---- keyvault: the emulator --------------------------------------------------
try:
    import azure.identity  # noqa: F401
except ImportError:
    pass
cfg = emulator_config(extra_vaults=[
    {"name": "nopurge", "kind": "vault", "sku": "standard",
     "soft_delete": True, "purge_protection": False,
     "access": {"app": ["all"]}},
])
emu = Emu(cfg)
d = emu.dir
app_secret = write_private(os.path.join(d, "app.secret"), APP_SECRET + "\n")
reader_secret = write_private(os.path.join(d, "reader.secret"),
                              READER_SECRET + "\n")
bad_secret = write_private(os.path.join(d, "bad.secret"), "not-the-secret\n")


def token(name, vault, client_id, secret):
    return token_section(name, backend="keyvault", vault_url=emu.url(vault),
                         ca_file=emu.ca, auth="client-secret", tenant_id=TENANT,
                         client_id=client_id, client_secret_file=secret,
                         authority_host=emu.env["AZURE_AUTHORITY_HOST"], retries=0)


kconf = write_private(os.path.join(d, "cmkp11.conf"), conf_text(
    [token("kv", "kvemu", APP_ID, app_secret),
     token("reader", "kvemu", READER_ID, reader_secret),
     token("nopurge", "nopurge", APP_ID, app_secret),
     token("badcred", "kvemu", APP_ID, bad_secret)],
    log_level="error", log_file=os.path.join(d, "kv.log")))
made = [emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"}),
        emu.admin("POST", "vaults/kvemu/keys", {"name": "off", "enabled": False}),
        emu.admin("POST", "vaults/kvemu/keys", {"name": "nowrap",
                                                 "key_ops": ["decrypt", "sign"]}),
        emu.admin("POST", "vaults/nopurge/keys", {"name": "kek"})]
t.eq([m["created"] for m in made], [1] * 4,
     "emulator: vaults kvemu (purge protection) and nopurge, keys "
     "kek, off (disabled), nowrap")

rc, doc, err = run_json("list", "kv", conf=kconf)
tok = doc["tokens"][0] if doc else {}
t.ok(rc == 0 and len(doc["tokens"]) == 1 and tok["token"] == "kv" and
     tok["backend"] == "keyvault" and tok["model"] == "Key Vault" and
     tok["source"].rstrip("/") == emu.url("kvemu").rstrip("/") and
     tok["error"] is None and tok["login_required"] is False,
     "keyvault list --json: the token, its back end and vault", tok)
t.eq([k["key"] for k in tok.get("keys", [])], ["kek", "nowrap", "off"],
     "keyvault list --json: every key")
kek = key_of(doc, "kv", "kek") or {"versions": [{}]}
v = kek["versions"][0]
t.ok(len(kek["versions"]) == 1 and HEX32.match(v.get("version", "")) and
     kek["current_version"] == v["version"] and v["current"] and
     v["enabled"] and v["label"] == "kek" and v["id"] == v["version"] and
     v["key_type"] == "RSA" and v["bits"] == 2048 and
     isinstance(v["created"], int) and v["created"] > 1600000000 and
     v["recovery_level"] == "Recoverable" and
     {"wrapKey", "unwrapKey"} <= set(v["key_ops"]),
     "keyvault list --json: the version, dates, type, size, recovery level",
     v)
off = key_of(doc, "kv", "off") or {"versions": [{}]}
t.eq(off["versions"][0].get("enabled"), False,
     "keyvault list --json: the disabled key shows disabled")
rc, out, err = run("list", "kv", conf=kconf)
t.ok(rc == 0 and re.search(r"^\s+kek\s+[0-9a-f]{32}\s+yes\s+enabled\s+RSA\s+"
                           r"2048\s+\d{4}-\d\d-\d\d", out, re.M),
     "keyvault list, text: key, version, current, state, type, size, created",
     out)
rc, doc, err = run_json("list", conf=kconf)
bad = [x for x in (doc or {}).get("tokens", []) if x["token"] == "badcred"]
t.ok(rc == 1 and bad and bad[0]["error"] and
     bad[0]["error"]["device_error"] == 401,
     "keyvault list of every token: the one with bad credentials shows "
     "its error (HTTP 401), exit 1", bad)

rc, doc, err = run_json("check", "kv", "kek", conf=kconf)
t.ok(rc == 0 and shape_ok(doc, ROWS_KV) and doc["result"] == "PASS" and
     "Recoverable" in rows(doc)["recovery"]["detail"],
     "keyvault check on a compliant vault: PASS on every row", doc)
rc, out, err = run("check", "pkcs11:token=kv;object=kek", conf=kconf)
t.ok(rc == 0 and re.search(r"soft delete and purge protection\s+PASS", out),
     "keyvault check by URI, text", out)
rc, doc, err = run_json("check", "nopurge", "kek", conf=kconf)
t.ok(rc == 1 and shape_ok(doc, ROWS_KV) and
     fails_on(doc, "recovery", {"recovery"}) and
     "purge protection" in rows(doc)["recovery"]["remedy"],
     "keyvault vault without purge protection: FAIL on recovery only", doc)
rc, doc, err = run_json("check", "reader", "kek", conf=kconf)
cred = rows(doc)["credentials"] if doc else {}
t.ok(rc == 1 and shape_ok(doc, ROWS_KV) and
     fails_on(doc, "credentials", {"credentials", "round-trip"}) and
     "403" in cred["detail"] and "Unwrap Key" in cred["remedy"] and
     "Key Vault Crypto Service Encryption User" in cred["remedy"],
     "keyvault identity without unwrap permission: FAIL on credentials "
     "(HTTP 403), the remedy names the role", doc)
rc, doc, err = run_json("check", "kv", "off", conf=kconf)
t.ok(rc == 1 and shape_ok(doc, ROWS_KV) and
     fails_on(doc, "enabled", {"enabled", "round-trip"}) and
     rows(doc)["credentials"]["result"] == "PASS",
     "keyvault disabled key: FAIL on enabled", doc)
rc, doc, err = run_json("check", "kv", "nowrap", conf=kconf)
t.ok(rc == 1 and fails_on(doc, "key-ops", {"key-ops", "round-trip"}) and
     "wrapKey" in rows(doc)["key-ops"]["remedy"],
     "keyvault key without wrapKey/unwrapKey: FAIL on permitted operations",
     doc)
rc, doc, err = run_json("check", "badcred", "kek", conf=kconf)
cred = rows(doc).get("credentials", {}) if doc else {}
t.ok(rc == 1 and doc["result"] == "FAIL" and doc["token"] == "badcred" and
     cred.get("result") == "FAIL" and "401" in cred.get("detail", "") and
     "client secret" in cred.get("remedy", ""),
     "keyvault bad credentials: FAIL on credentials (HTTP 401)", doc)
rc, doc, err = run_json("--min-key-bits", "3072", "check", "kv", "kek",
                        conf=kconf)
t.ok(rc == 1 and fails_on(doc, "key-type", {"key-type"}),
     "keyvault --min-key-bits 3072: FAIL on key type and size", doc)
rc, doc, err = run_json("check", "kv", conf=kconf)
t.ok(rc == 1 and isinstance(doc, list) and
     [(x["key"], x["result"]) for x in doc] ==
     [("kek", "PASS"), ("nowrap", "FAIL"), ("off", "FAIL")],
     "keyvault check of a token: one document per key", doc)

rc, doc, err = run_json("rotate", "kv", "kek", conf=kconf)
old, new = (doc or {}).get("old") or {}, (doc or {}).get("new") or {}
t.ok(rc == 0 and old.get("version") == v.get("version") and
     HEX32.match(new.get("version", "")) and new["version"] != old["version"]
     and new["current"] and not old["current"] and new["label"] == "kek" and
     old["label"] == "kek@" + old["version"] and new["bits"] == 2048,
     "keyvault rotate --json: the old and the new version", doc)
rc, doc, err = run_json("list", "kv", conf=kconf)
kek = key_of(doc, "kv", "kek") or {}
t.ok(kek.get("current_version") == new.get("version") and
     [x["version"] for x in kek.get("versions", [])] ==
     [new.get("version"), old.get("version")],
     "keyvault list after rotate: the new version is current", kek)
rc, out, err = run("rotate", "kv", "kek", conf=kconf)
t.ok(rc == 0 and re.search(r"^\s+old\s+kek\s+%s\s+no" % new.get("version"),
                           out, re.M) and
     re.search(r"^\s+new\s+kek\s+[0-9a-f]{32}\s+yes", out, re.M),
     "keyvault rotate, text: old and new versions", out)
rc, doc, err = run_json("check", "kv", "kek", conf=kconf)
t.ok(rc == 0 and doc["result"] == "PASS",
     "keyvault check after two rotations: PASS", doc)

emu.stop()
shutil.rmtree(work, ignore_errors=True)
