#!/usr/bin/python3
"""cmkp11-tool seal and unseal with several workers (tools/cmkp11-tool/
seal-par.c) on an hsm token, driven only through the tool, so that the
ThreadSanitizer gate (scripts/check-sanitizers.sh tsan) runs it with an
instrumented tool and module:

- 40 segments and a short one sealed with 3 workers: unsealed with 3
  workers and with one, the same bytes; sealed with one worker, unsealed
  with 3;
- segment 17 altered: 3 workers stop at it with the one loop's message,
  and write the 17 verified segments to standard output, nothing more;
- the file truncated after segment 30: 'truncated', exit 1;
- a regular file is read where each segment lies (pread, all workers at
  once): empty, 1 byte, exactly 3 segments, 3 segments and a byte give
  the one loop's number of segments (an empty last one only for the empty
  input) and unseal to the same bytes; standard input that is a regular
  file already read up to byte 12,345 is sealed from there and left at
  its end, as the one loop leaves it; a pipe is read in order, both ways,
  and so is a file whose size says nothing (/proc/version, size 0).

TAP output.
"""
import atexit
import os
import shutil
import subprocess
import sys

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))

from kvtest import MODULE, TOOL, Tap, hsm_token, write_private  # noqa: E402
from hsmtest import softhsm_dir, use_conf, PIN  # noqa: E402

SEG, TAG = 65536, 16
t = Tap()
tmp = softhsm_dir("tmp-seal-threads-")
atexit.register(lambda: t.failed or shutil.rmtree(tmp, ignore_errors=True))
pin = write_private(os.path.join(tmp, "pin"), PIN)
conf = use_conf(tmp, [hsm_token("local", pin_file=pin)], log_level="error")


def tool(*args):
    return subprocess.run([TOOL, "--module", MODULE] + list(args),
                          env=dict(os.environ, CMKP11_CONF=conf),
                          capture_output=True, timeout=600)


def path(name):
    return os.path.join(tmp, name)


data = os.urandom(40 * SEG + 123)
with open(path("data"), "wb") as f:
    f.write(data)
KEY = "pkcs11:token=local;object=kek"

r = tool("--threads", "3", "--key", KEY, "seal", path("data"), "-o",
         path("sealed3"))
t.ok(r.returncode == 0, "seal --threads 3 of 41 segments", r.stderr)
got = {n: tool("--threads", n, "unseal", path("sealed3")) for n in ("3", "1")}
t.ok(all(g.returncode == 0 and g.stdout == data for g in got.values()),
     "unsealed with 3 workers and with one: the same bytes",
     [g.stderr for g in got.values()])
r = tool("--threads", "1", "--key", KEY, "seal", path("data"), "-o",
         path("sealed1"))
u = tool("--threads", "3", "unseal", path("sealed1"))
t.ok(r.returncode == 0 and u.returncode == 0 and u.stdout == data,
     "sealed with one worker, unsealed with 3: the same bytes",
     r.stderr + u.stderr)

with open(path("sealed3"), "rb") as f:
    sealed = f.read()
header = len(sealed) - (40 * (SEG + TAG) + 123 + TAG)
bad = bytearray(sealed)
bad[header + 17 * (SEG + TAG) + 5] ^= 1
with open(path("altered"), "wb") as f:
    f.write(bad)
u = tool("--threads", "3", "unseal", path("altered"))
err = u.stderr.decode(errors="replace")
t.ok(u.returncode == 1 and "segment 17 does not authenticate" in err and
     err.count("does not authenticate") == 1,
     "segment 17 altered: exit 1, its message once", err)
t.ok(u.stdout == data[:17 * SEG],
     "... the 17 verified segments written, nothing more (%d bytes)" %
     len(u.stdout))
with open(path("truncated"), "wb") as f:
    f.write(sealed[:header + 31 * (SEG + TAG)])
u = tool("--threads", "3", "unseal", path("truncated"), "-o", path("out"))
err = u.stderr.decode(errors="replace")
t.ok(u.returncode == 1 and "truncated" in err and
     not os.path.exists(path("out")),
     "truncated after segment 30: exit 1, 'truncated', no output file", err)

# Positional reads (a regular file): the segment count follows the one
# loop's rule, whatever the size.
for n, segs in ((0, [0]), (1, [1]), (3 * SEG, [SEG] * 3),
                (3 * SEG + 1, [SEG] * 3 + [1])):
    d = os.urandom(n)
    with open(path("n"), "wb") as f:
        f.write(d)
    r = tool("--threads", "3", "--key", KEY, "seal", path("n"), "-o",
             path("n.sealed"))
    u = tool("--threads", "1", "unseal", path("n.sealed"))
    size = os.path.getsize(path("n.sealed")) if r.returncode == 0 else -1
    t.ok(r.returncode == 0 and u.returncode == 0 and u.stdout == d and
         size == header + sum(x + TAG for x in segs),
         "%d bytes sealed with 3 workers: %d segments, unsealed the same" %
         (n, len(segs)), (r.stderr, u.stderr, size))

# Standard input: a regular file whose offset is not 0 (shared with the
# tool), then a pipe.
with open(path("data"), "rb") as f:
    f.seek(12345)
    r = subprocess.run([TOOL, "--module", MODULE, "--threads", "3", "--key",
                        KEY, "seal", "-o", path("tail.sealed")], stdin=f,
                       env=dict(os.environ, CMKP11_CONF=conf),
                       capture_output=True, timeout=600)
    pos = os.lseek(f.fileno(), 0, os.SEEK_CUR)
u = tool("--threads", "3", "unseal", path("tail.sealed"))
t.ok(r.returncode == 0 and u.returncode == 0 and u.stdout == data[12345:],
     "standard input read up to byte 12,345: sealed from there",
     (r.stderr, u.stderr, len(u.stdout)))
t.eq(pos, len(data), "and left at its end")
p1 = subprocess.Popen(["cat", path("data")], stdout=subprocess.PIPE)
r = subprocess.run([TOOL, "--module", MODULE, "--threads", "3", "--key",
                    KEY, "seal", "-o", path("pipe.sealed")], stdin=p1.stdout,
                   env=dict(os.environ, CMKP11_CONF=conf),
                   capture_output=True, timeout=600)
p1.stdout.close()
p1.wait()
p2 = subprocess.Popen(["cat", path("pipe.sealed")], stdout=subprocess.PIPE)
u = subprocess.run([TOOL, "--module", MODULE, "--threads", "3", "unseal"],
                   stdin=p2.stdout, env=dict(os.environ, CMKP11_CONF=conf),
                   capture_output=True, timeout=600)
p2.stdout.close()
p2.wait()
t.ok(r.returncode == 0 and u.returncode == 0 and u.stdout == data,
     "through pipes, both ways: the same bytes", (r.stderr, u.stderr))
with open("/proc/version", "rb") as f:
    version = f.read()
r = tool("--threads", "3", "--key", KEY, "seal", "/proc/version", "-o",
         path("proc.sealed"))
u = tool("--threads", "3", "unseal", path("proc.sealed"))
t.ok(r.returncode == 0 and u.returncode == 0 and u.stdout == version and
     len(version) > 0,
     "/proc/version (size 0 to stat) sealed with 3 workers: its %d bytes" %
     len(version), (r.stderr, u.stderr))
