#!/usr/bin/python3
"""The application's OpenSSL error queue across calls on a keyvault token
(the emulator): tests/integration/test-err-queue with TOKEN KEY runs the
first use of the token (a token fetched with libcurl and OpenSSL, a
listing, a signature and an unwrap in the vault, a wrap here) in a fresh
process and in a forked child, and checks after every call that the queue
holds what it held before: nothing, or the application's own error."""
import os
import subprocess

from kvtest import Tap, KvSetup

t = Tap()
builddir = os.environ.get("top_builddir", ".")
prog = os.path.join(builddir, "tests", "integration", "test-err-queue")

s = KvSetup()
s.write_conf([("kv", s.token_body("kvemu", "client-secret"))],
             log_level="error")
s.create_key("kek")
p = subprocess.run([prog, "kv", "kek"], env=dict(os.environ),
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                   timeout=300)
lines = p.stdout.splitlines()
checks = [ln for ln in lines if ln.startswith(("ok ", "not ok "))]
t.ok(p.returncode == 0 and len(checks) == 8 and
     all(ln.startswith("ok ") for ln in checks),
     "first use of a keyvault token, fresh and in a forked child: the queue "
     "is as the application left it after every call", p.stdout)
for ln in checks:
    print("# " + ln)
