#!/usr/bin/python3
"""Credential rotation without downtime (the two-key pattern): 4 threads
keep unwrapping through cmkp11 while the client secret is replaced on the
emulator and in the files, with no failed call. The old secret is removed
while tokens are forced to expire, so the module has to fetch new tokens
with the secondary secret, then with the new primary file."""
import os
import subprocess
import time

from kvtest import Tap, write_private, APP_SECRET, KvSetup

t = Tap()
builddir = os.environ.get("top_builddir", ".")
client = os.path.join(builddir, "tests", "integration", "kv-unwrap")
module = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
s = KvSetup()
primary = write_private(os.path.join(s.dir, "primary.secret"), APP_SECRET + "\n")
secondary = write_private(os.path.join(s.dir, "secondary.secret"),
                          APP_SECRET + "\n")
log = os.path.join(s.dir, "cmkp11.log")
env = dict(os.environ, CMKP11_CONF=s.write_conf(
    [s.token("kv", client_secret_file=primary, secondary_client_secret_file=secondary)],
    refresh=None, name="c.conf", export=False))
s.emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})


def replace_file(path, text):
    """As an operator does: write a new file, rename it over the old."""
    tmp = path + ".new"
    write_private(tmp, text)
    os.rename(tmp, path)


def token_requests():
    c = s.emu.admin("GET", "counters")
    return sum(n for r, n in c.get("by_route", {}).items() if r.startswith("login:"))


def unwraps():
    c = s.emu.admin("GET", "counters")
    return c.get("by_route", {}).get("kvemu:unwrapKey", 0)


proc = subprocess.Popen([client, module, "kv", "kek", "4", "2000"], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
# The roll starts once the threads are unwrapping with a token of the old
# secret (a loaded machine or a sanitizer build takes a while to start).
deadline = time.monotonic() + 60
while unwraps() < 20 and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.1)
t.ok(proc.poll() is None and unwraps() >= 20, "4 threads are unwrapping")
before = token_requests()

NEW = "rolled-secret-2"
s.emu.admin("POST", "identities/app/secrets", {"secret": NEW})
replace_file(secondary, NEW + "\n")
time.sleep(0.3)
s.emu.admin("DELETE", "identities/app/secrets", {"secret": APP_SECRET})
s.emu.admin("POST", "tokens/expire", {"identity": "app"})
time.sleep(1.0)
mid = token_requests()
replace_file(primary, NEW + "\n")
s.emu.admin("POST", "tokens/expire", {"identity": "app"})
still = proc.poll() is None
time.sleep(1.0)
out, err = proc.communicate(timeout=300)
t.eq(proc.returncode, 0, "no call failed while the secret was rolled (%s)"
     % out.strip())
t.ok("failures=0" in out, "every unwrap checked", err)
t.ok(mid > before, "tokens were fetched again after the old secret was "
     "removed (%d -> %d)" % (before, mid))
t.ok(still, "the threads were still unwrapping when the roll ended")
t.ok(token_requests() > mid, "and again after the primary file was replaced")
text = open(log).read()
t.ok("secondary" in text, "the log says the secondary secret was used")
t.ok(APP_SECRET not in text and NEW not in text, "no secret in the log")
