#!/usr/bin/python3
"""Load on the keyvault back end: 8 threads x 500 unwraps at once, every
result checked; and lazy loading: with 1,000 keys in the vault,
C_Initialize and the first unwrap cost no more requests than with 10."""
import os
import subprocess

from kvtest import Tap, KvSetup

t = Tap()
builddir = os.environ.get("top_builddir", ".")
client = os.path.join(builddir, "tests", "integration", "kv-unwrap")
module = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")

s = KvSetup()
conf_path = s.write_conf([s.token("kv")], refresh=None, log_level="warning")
env = dict(os.environ, CMKP11_CONF=conf_path)
s.create_key("kek")


def run(threads, count):
    p = subprocess.run([client, module, "kv", "kek", str(threads), str(count)],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=300)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def vault_requests():
    c = s.emu.admin("GET", "counters")
    return sum(n for route, n in c.get("by_route", {}).items()
               if route.startswith("kvemu:"))


rc, out, err = run(8, 500)
t.ok(rc == 0 and "unwraps=4000 failures=0" in out,
     "8 threads x 500 unwraps, every result checked (%s)" % out, err)

counts = {}
for total in (10, 1000):
    s.emu.admin("POST", "vaults/kvemu/keys",
                {"name": "bulk%d" % total, "count": total, "distinct": 2})
    before = vault_requests()
    rc, out, err = run(1, 1)
    counts[total] = vault_requests() - before
    t.ok(rc == 0, "C_Initialize and a first unwrap with %d+ keys in the vault"
         % total, err)
t.diag("vault requests for start-up and the first unwrap: %r" % counts)
t.ok(counts[1000] == counts[10] and counts[10] <= 6,
     "start-up cost is flat in the number of keys (%d and %d requests)"
     % (counts[10], counts[1000]))
