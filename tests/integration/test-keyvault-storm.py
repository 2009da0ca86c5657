#!/usr/bin/python3
"""A storm on the keyvault back end: 8 threads, each with its own session,
search the key pair by label, wrap a fresh AES key locally and unwrap it
through the vault, over and over, all at once; every result checked. The
thread-sanitizer gate (scripts/check-sanitizers.sh tsan) runs this with an
instrumented module and client."""
import json
import os
import subprocess

from kvtest import Tap, KvSetup, emulator_config

t = Tap()
builddir = os.environ.get("top_builddir", ".")
client = os.path.join(builddir, "tests", "integration", "kv-unwrap")
module = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
count = int(os.environ.get("CMKP11_STORM_COUNT", "40"))

s = KvSetup(config=emulator_config(extra_vaults=[
    {"name": n, "kind": "vault", "access": {"app": ["all"]}}
    for n in ("kva", "kvb")]))
s.write_conf([s.token("kv")], log_level="warning")
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

# The same storm on a token with two replicas (docs/keyvault.md,
# "Replicas"), the first answering a quarter of its calls with 503: failovers,
# breaker changes and refreshes of both vaults interleave.
s.create_key("kek", vault="kva")
s.emu.admin("POST", "vaults/kva/keys/kek/copy", {"to": "kvb"})
s.write_conf([s.token("rep", vault_url="%s, %s" % (s.vault_url("kva"), s.vault_url("kvb")),
                      retries=0)], refresh=1, log_level="warning")
s.emu.admin("POST", "faults", {"kind": "503", "match": "kva:*",
                               "rate": 0.25})
n = max(count // 4, 5)
p = subprocess.run([client, module, "rep", "kek", "8", str(n), "storm"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   timeout=600)
out = p.stdout.strip()
t.ok(p.returncode == 0 and out.startswith("unwraps=%d failures=0 " % (8 * n)),
     "replicas, the first failing a quarter of its calls: all %d unwraps "
     "succeed (%s)" % (8 * n, out), p.stderr[-2000:])
c = s.counters()
failed = c["faults"].get("kva:unwrapKey:503", 0)
a, b = (c["by_route"].get(v + ":unwrapKey", 0) for v in ("kva", "kvb"))
t.ok(failed > 0 and b >= failed and a - failed + b == 8 * n,
     "the second replica served each unwrap the first failed (%d of %d)"
     % (failed, a),
     json.dumps({r: n for r, n in c["by_route"].items()
                 if r.startswith("kv")}) + "\n" + json.dumps(c["faults"]))
