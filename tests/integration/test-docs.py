#!/usr/bin/python3
"""The documentation runs as written: every fenced block marked with
<!-- doc-test --> in README.md and docs/consumers.md runs with sh -e, in
order, in one directory per file; a block marked <!-- doc-test file=PATH -->
is written to PATH first. Against a SoftHSM token (cmk, user PIN 1234,
key kek) and the Key Vault emulator (vault kvemu, key kek).

Two substitutions map installed paths to this build, nothing else:
/usr/lib/x86_64-linux-gnu/pkcs11/cmkp11.so becomes the module just built,
and /etc/cmkp11/ a directory of the test (holding local.pin, the PIN of
the README's pin-file). Also checked: the cmkp11-tool(1) jq example."""
import os
import re
import shutil
import subprocess
import sys

from kvtest import (Tap, KvSetup, MODULE, TOP_SRCDIR, write_private,
                    skip_all)

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
for path in (SOFTHSM, ENGINE):
    if not os.path.exists(path):
        skip_all("%s is not installed" % path)
for cmd in ("pkcs11-tool", "openssl", "jq"):
    if shutil.which(cmd) is None:
        skip_all("%s is not installed" % cmd)
INSTALLED = "/usr/lib/x86_64-linux-gnu/pkcs11/cmkp11.so"
TOOL = os.path.join(os.environ.get("top_builddir", "."), "cmkp11-tool")

t = Tap()
s = KvSetup()
s.create_key("kek")
s.create_key("payments-kek")
work = s.dir
hsm_dir = os.path.join(work, "softhsm")
r = subprocess.run(["sh", os.path.join(TOP_SRCDIR, "tests/softhsm-init.sh"),
                    hsm_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
t.eq(r.returncode, 0, "softhsm-init.sh made the token")
etc = os.path.join(work, "etc", "cmkp11")
os.makedirs(etc)
write_private(os.path.join(etc, "local.pin"), "1234\n")
env = dict(os.environ, SOFTHSM2_CONF=os.path.join(hsm_dir, "softhsm2.conf"))
env.pop("OPENSSL_CONF", None)
# cmkp11-tool as installed: the one just built, first in PATH.
env["PATH"] = os.path.abspath(os.path.dirname(TOOL)) + os.pathsep + \
    env.get("PATH", "")


def substitute(text):
    return text.replace(INSTALLED, MODULE).replace("/etc/cmkp11/", etc + "/")


def blocks(path):
    """[(mark, text)] of the marked blocks of a markdown file."""
    with open(os.path.join(TOP_SRCDIR, path)) as f:
        lines = f.read().split("\n")
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"<!-- doc-test( file=(\S+))? -->$", line)
        if not m:
            continue
        j = i + 1
        assert lines[j].startswith("```"), (path, j)
        k = j + 1
        while not lines[k].startswith("```"):
            k += 1
        out.append((m.group(2), "\n".join(lines[j + 1:k]) + "\n", j + 1))
    return out


def run_doc(path, cwd, conf):
    found = blocks(path)
    t.ok(len(found) > 0, "%s has blocks marked doc-test" % path)
    for target, text, line in found:
        text = substitute(text)
        if target:
            dest = os.path.join(cwd, substitute(target))
            write_private(dest, text)
            continue
        e = dict(env, CMKP11_CONF=conf)
        r = subprocess.run(["sh", "-e", "-c", text], cwd=cwd, env=e,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, errors="replace",
                           timeout=300)
        t.ok(r.returncode == 0, "%s:%d: the block runs as written (exit %d)"
             % (path, line, r.returncode), r.stderr[-2000:])


# ---- README.md: its configuration (as the default file), its examples ----
readme_dir = os.path.join(work, "readme")
os.makedirs(readme_dir)
readme_conf = os.path.join(etc, "cmkp11.conf")
run_doc("README.md", readme_dir, readme_conf)
t.ok(os.path.exists(readme_conf), "README's configuration block was written "
     "to the configuration path")

# ---- docs/consumers.md: [token local] and [token kv] ----
cons_dir = os.path.join(work, "consumers")
os.makedirs(cons_dir)
conf = s.write_conf([("local", "backend = hsm\nmodule = %s\ntoken-label = cmk\n"
                      "pin-file = %s\n" % (SOFTHSM, os.path.join(etc, "local.pin"))),
                     ("kv", s.token_body())], log_level="warning")
e = dict(env, CMKP11_CONF=conf)
# The inputs docs/consumers.md assumes: wrapped.bin and data.
r = subprocess.run(["pkcs11-tool", "--module", MODULE, "--read-object",
                    "--type", "pubkey", "--id", "02", "-o", "kek.der"],
                   cwd=cons_dir, env=e, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
with open(os.path.join(cons_dir, "dek.orig"), "wb") as f:
    f.write(os.urandom(32))
r2 = subprocess.run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-keyform",
                     "DER", "-inkey", "kek.der", "-pkeyopt",
                     "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
                     "-pkeyopt", "rsa_mgf1_md:sha256", "-in", "dek.orig",
                     "-out", "wrapped.bin"], cwd=cons_dir,
                    env=dict(e, OPENSSL_CONF="/dev/null"),
                    stderr=subprocess.PIPE)
with open(os.path.join(cons_dir, "data"), "w") as f:
    f.write("data signed by a customer-managed key\n")
t.ok(r.returncode == 0 and r2.returncode == 0, "wrapped.bin and data made",
     (r.stderr, r2.stderr))
run_doc("docs/consumers.md", cons_dir, conf)
with open(os.path.join(cons_dir, "dek.orig"), "rb") as a, \
        open(os.path.join(cons_dir, "dek.bin"), "rb") as b:
    t.ok(a.read() == b.read(), "docs/consumers.md: the decryptions give the "
         "data key back")

# ---- cmkp11-tool(1): the jq example, literally ----
with open(os.path.join(TOP_SRCDIR, "docs/cmkp11-tool.1")) as f:
    man = f.read()
m = re.search(r"^(cmkp11-tool .*check payments payments-kek \\\\\n.*jq.*)$",
              man, re.M)
t.ok(m is not None, "cmkp11-tool(1) has the jq example")
cmd = m.group(1).replace("\\-", "-").replace("\\\\\n", "\\\n") if m else "false"
cmd = cmd.replace("cmkp11-tool", "%s --module %s" % (TOOL, MODULE), 1)
conf = s.write_conf([("payments", s.token_body())])
r = subprocess.run(["sh", "-c", cmd], env=dict(env, CMKP11_CONF=conf),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True)
t.eq(r.stdout.strip(), "create an RSA or RSA-HSM key of 3072 bits or more in "
     "the vault (a new key, or a new version created with that size) and use "
     "it", "the jq example prints the remedy of the failing row (%s)"
     % cmd.split("|")[0].strip())

# ---- docs/keyvault.md documents every authentication method ----
# The methods are those the module names when auth = is unknown.
conf = s.write_conf([("kv", s.token_body(auth=None) + "auth = bogus\n")])
r = subprocess.run([TOOL, "--module", MODULE, "list"],
                   env=dict(env, CMKP11_CONF=conf), stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, universal_newlines=True)
m = re.search(r"auth: unknown method \(([^)]*)\)", s.log_text())
methods = [x.strip() for x in m.group(1).split(",")] if m else []
t.eq(len(methods), 6, "the module names its six methods %s" % methods)
with open(os.path.join(TOP_SRCDIR, "docs/keyvault.md")) as f:
    kvdoc = f.read()
rows = {x: re.search(r"^\| `%s` \|.*\|(.*)\|$" % re.escape(x), kvdoc, re.M)
        for x in methods}
t.ok(methods and all(rows.values()), "docs/keyvault.md has a row for each "
     "(%s)" % ", ".join(x for x in methods if not rows[x]))
keys = {"client-secret": ["tenant-id", "client-id", "client-secret-file",
                          "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"],
        "client-certificate": ["client-certificate-file",
                               "AZURE_CLIENT_CERTIFICATE_PATH",
                               "client-certificate-password-file"],
        "workload-identity": ["federated-token-file",
                              "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID"],
        "azure-cli": ["tenant-id"],
        "access-token-file": ["access-token-file"],
        "managed-identity": ["client-id", "imds-endpoint"]}
missing = ["%s: %s" % (x, k) for x, ks in keys.items() for k in ks
           if not rows.get(x) or "`%s`" % k not in rows[x].group(1)]
t.ok(not missing, "... with its keys and environment variables", missing)

# ---- docs/kvemu.md's admin table names each route of the emulator's, no other ----
# Rows of ADMIN_ROUTES named None are not routes (an unknown identity's or
# vault's 404); a row for any method ("*") is documented as GET, a rest
# ("/*") without it; ALLCAPS segments of the docs are parameters.
from kvemulib.admin import ADMIN_ROUTES  # noqa: E402

with open(os.path.join(TOP_SRCDIR, "docs/kvemu.md")) as f:
    section = f.read().split("## Admin API and CLI", 1)[-1].split("\n## ", 1)[0]
admin_rows = "\n".join(x for x in section.split("\n") if x.startswith("| "))
documented = {(m, "/".join("{}" if re.fullmatch(r"[A-Z]+", x) else x
                           for x in p.strip("/").split("/")) if p.strip("/") else "")
              for m, p in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) /_admin/([^`\[\s]*)",
                                     admin_rows)}
table = {("GET" if r.method == "*" else r.method,
          re.sub(r"\{[^}]*\}", "{}", re.sub(r"/?\*$", "", r.pattern)))
         for r in ADMIN_ROUTES if r.name}
t.ok(len(table) > 30 and not table - documented,
     "docs/kvemu.md documents every admin route of ADMIN_ROUTES",
     sorted(table - documented))
t.ok(not documented - table, "... and no admin route the table lacks",
     sorted(documented - table))
