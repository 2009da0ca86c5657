#!/usr/bin/python3
"""A storm on the keyvault back end: 8 threads, each with its own session,
search the key pair by label, wrap a fresh AES key locally and unwrap it
through the vault, over and over, all at once; every result checked. The
thread-sanitizer gate (scripts/check-sanitizers.sh tsan) runs this with an
instrumented module and client."""
import os
import subprocess

from kvtest import Tap, KvSetup

t = Tap()
builddir = os.environ.get("top_builddir", ".")
client = os.path.join(builddir, "tests", "integration", "kv-unwrap")
module = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
count = int(os.environ.get("CMKP11_STORM_COUNT", "40"))

s = KvSetup.started()
s.write_conf([("kv", s.token_body())], log_level="warning")
s.create_key("kek")

p = subprocess.run([client, module, "kv", "kek", "8", str(count), "storm"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   timeout=600)
out = p.stdout.strip()
t.ok(p.returncode == 0,
     "8 threads x %d searches, wraps and unwraps on the keyvault token (%s)"
     % (count, out), p.stderr[-2000:])
t.ok(out.startswith("unwraps=%d failures=0 " % (8 * count)),
     "all %d unwrapped keys decrypt what the originals encrypted" % (8 * count))
c = s.counters()
unwraps = sum(n for route, n in c.get("by_route", {}).items()
              if route.startswith("kvemu:") and "unwrap" in route)
t.ok(unwraps == 8 * count,
     "each unwrap reached the vault once (%d requests)" % unwraps)
