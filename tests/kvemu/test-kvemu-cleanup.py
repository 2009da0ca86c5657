#!/usr/bin/python3
"""An emulator started by a test ends with the test, however the test ends
(issue 17): an exception, a failed assertion, sys.exit, SIGTERM, SIGHUP,
SIGINT or SIGKILL of the test process. A forked child of the test that
exits does not stop its parent's emulator. Each case runs a small test
process that starts an emulator through taplib.Emu, prints its pid and
state directory, and then ends in that way."""
import os
import signal
import subprocess
import sys
import time

from taplib import Tap, HERE

t = Tap()
CHILD = r'''
import os, signal, sys, time
# As in a terminal: a shell starts background jobs with SIGINT ignored,
# and Python then keeps it so (the "SIGINT" case would sleep out its 600 s).
signal.signal(signal.SIGINT, signal.default_int_handler)
# and nohup ignores SIGHUP: taplib handles only signals left at default.
signal.signal(signal.SIGHUP, signal.SIG_DFL)
sys.path.insert(0, %r)
from taplib import Emu
emu = Emu()
print("PID=%%d DIR=%%s" %% (emu.proc.pid, emu.dir), flush=True)
how = sys.argv[1]
if how == "exception":
    raise RuntimeError("the test failed")
if how == "assert":
    assert False, "a failed assertion"
if how == "exit":
    sys.exit(3)
if how == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # atexit runs in the child: it must not stop the emulator
    os.waitpid(pid, 0)
    st, _, _ = emu.request("GET", "https://localhost:%%d/_admin/status" %% emu.port,
                           headers={"Authorization": "Bearer " + emu.admin_info["token"]})
    print("STATUS=%%d" %% st, flush=True)
    sys.exit(0)
print("WAITING", flush=True)
time.sleep(600)
''' % HERE


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it is the reaper's (init's) to collect.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def gone_within(pid, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def run(how, sig=None):
    p = subprocess.Popen([sys.executable, "-c", CHILD, how], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    first = p.stdout.readline()
    fields = dict(f.split("=", 1) for f in first.split())
    pid, d = int(fields.get("PID", "0")), fields.get("DIR", "")
    rest = ""
    if sig is not None:
        p.stdout.readline()  # WAITING
        p.send_signal(sig)
    rest = p.stdout.read()
    p.wait(60)
    return pid, d, rest, p.returncode


for how, sig in [("exception", None), ("assert", None), ("exit", None),
                 ("wait", signal.SIGTERM), ("wait", signal.SIGHUP),
                 ("wait", signal.SIGINT), ("wait", signal.SIGKILL)]:
    what = how if sig is None else signal.Signals(sig).name
    pid, d, _, rc = run(how, sig)
    t.ok(pid > 0 and rc != 0, "%s: the test process ended with status %s" % (what, rc))
    # SIGKILL leaves no handler to run: the emulator sees its parent go.
    t.ok(pid > 0 and gone_within(pid, 20), "%s: its emulator stopped" % what)
    if pid > 0 and alive(pid):
        os.kill(pid, signal.SIGKILL)
    if sig != signal.SIGKILL:
        t.ok(d and not os.path.exists(d), "%s: its directory is removed" % what)
    elif d:
        subprocess.run(["rm", "-rf", d])

pid, d, rest, rc = run("fork")
t.ok(rc == 0 and "STATUS=200" in rest,
     "a forked child exiting leaves its parent's emulator running", rest)
t.ok(pid > 0 and gone_within(pid, 20), "which stops when the parent ends")
