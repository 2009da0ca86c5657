#!/usr/bin/python3
"""cmkp11-tool seal and unseal -o (hsm token, SoftHSM with pin-file):
devices, FIFOs and /dev/stdout are written through, as cp and openssl enc
-out do; regular files are replaced atomically, through a symbolic link
whose target is replaced while the link stays; plaintext never gets a mode
wider than 0600; a directory and a dangling link are refused with a
message. rewrap, which rewrites files in place, keeps links and modes."""
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "kvemu"))

from taplib import Tap, skip_all  # noqa: E402
from kvtest import (MODULE, SOFTHSM, TOOL, write_private,  # noqa: E402
                    conf_text, hsm_token, softhsm_in)

t = Tap()
work = tempfile.mkdtemp(prefix="tmp-test-seal-output-",
                        dir=os.environ.get("TMPDIR") or os.getcwd())
hsmdir, st = softhsm_in(work)
st = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "cmk",
                     "--login", "--pin", "1234", "--keypairgen", "--key-type",
                     "rsa:2048", "--label", "kek2", "--id", "60"],
                    capture_output=True, text=True)
if st.returncode != 0:
    print("Bail out! pkcs11-tool could not make kek2")
    sys.exit(99)
pin = write_private(os.path.join(work, "pin"), "1234\n")
conf = write_private(os.path.join(work, "cmkp11.conf"),
                     conf_text([hsm_token("local", pin_file=pin)],
                               log_level="error"))
os.umask(0o022)
d = os.path.join(work, "out")
os.mkdir(d)


def run(*args, stdout=subprocess.PIPE):
    p = subprocess.run([TOOL, "--module", MODULE] + list(args),
                       env=dict(os.environ, CMKP11_CONF=conf),
                       stdout=stdout, stderr=subprocess.PIPE, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def rfile(path):
    with open(path, "rb") as f:
        return f.read()


def wfile(path, data, mode=None):
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers():
    return [n for n in os.listdir(d) if ".cmkp11-tmp-" in n]


PLAIN = os.urandom(70000) + b"the end"
plain = wfile(os.path.join(work, "plain"), PLAIN)
sealed = os.path.join(d, "sealed")
rc, _, err = run("seal", "--key", "kek", plain, "-o", sealed)
t.ok(rc == 0 and mode(sealed) == 0o644, "seal -o a new file: 0666 less the "
     "umask (0644)", err)

# ---- devices and /dev/stdout --------------------------------------------
before = os.stat("/dev/null")
rc, out, err = run("unseal", sealed, "-o", "/dev/null")
after = os.stat("/dev/null")
t.ok(rc == 0 and stat.S_ISCHR(after.st_mode) and
     after.st_rdev == before.st_rdev and after.st_ino == before.st_ino,
     "unseal -o /dev/null: exit 0, /dev/null is still the same character "
     "device", err)
rc, out, err = run("seal", "--key", "kek", plain, "-o", "/dev/null")
t.ok(rc == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode),
     "seal -o /dev/null: exit 0, still a character device", err)
rc, out, err = run("unseal", sealed, "-o", "/dev/stdout")
t.ok(rc == 0 and out == PLAIN, "unseal -o /dev/stdout (a pipe): the "
     "plaintext on standard output", err)
viafile = os.path.join(work, "stdout-file")
with open(viafile, "wb") as f:
    f.write(b"x" * 200000)
    f.flush()
    with open(viafile, "r+b") as g:
        rc, _, err = run("unseal", sealed, "-o", "/dev/stdout", stdout=g)
t.ok(rc == 0 and rfile(viafile) == PLAIN, "unseal -o /dev/stdout "
     "redirected to a longer file: the file holds the plaintext alone", err)

# ---- a FIFO with a reader -------------------------------------------------
fifo = os.path.join(d, "fifo")
os.mkfifo(fifo, 0o600)
got = []
reader = threading.Thread(target=lambda: got.append(rfile(fifo)))
reader.start()
rc, _, err = run("unseal", sealed, "-o", fifo)
reader.join(60)
t.ok(rc == 0 and got == [PLAIN], "unseal -o FIFO: the reader gets the "
     "plaintext", err)
t.ok(stat.S_ISFIFO(os.lstat(fifo).st_mode) and mode(fifo) == 0o600,
     "the FIFO is still a FIFO, mode unchanged")
got = []
reader = threading.Thread(target=lambda: got.append(rfile(fifo)))
reader.start()
rc, _, err = run("seal", "--key", "kek", plain, "-o", fifo)
reader.join(60)
p = subprocess.run([TOOL, "--module", MODULE, "unseal"], input=got[0] if got
                   else b"", env=dict(os.environ, CMKP11_CONF=conf),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
t.ok(rc == 0 and p.returncode == 0 and p.stdout == PLAIN and
     stat.S_ISFIFO(os.lstat(fifo).st_mode),
     "seal -o FIFO: what the reader got unseals; still a FIFO", err)

# ---- regular files: modes --------------------------------------------------
strict = wfile(os.path.join(d, "strict"), b"old", 0o600)
rc, _, err = run("unseal", sealed, "-o", strict)
t.ok(rc == 0 and rfile(strict) == PLAIN and mode(strict) == 0o600,
     "unseal over an existing 0600 file: replaced, still 0600", err)
ro = wfile(os.path.join(d, "owner-read-only"), b"old", 0o400)
if os.geteuid() == 0:
    rc, _, err = run("unseal", sealed, "-o", ro)
    t.ok(rc == 0 and rfile(ro) == PLAIN and mode(ro) == 0o400,
         "root: unseal over a 0400 file keeps the stricter 0400", err)
else:
    rc, _, err = run("unseal", sealed, "-o", ro)
    t.ok(rc != 0 and rfile(ro) == b"old" and "Permission denied" in err,
         "unseal over a 0400 file we may not write: refused, as cp does",
         err)
wide = wfile(os.path.join(d, "wide"), b"old", 0o644)
rc, _, err = run("unseal", sealed, "-o", wide)
t.ok(rc == 0 and rfile(wide) == PLAIN and mode(wide) == 0o600,
     "unseal over an existing 0644 file: plaintext is never wider than "
     "0600, so it becomes 0600", err)
group = wfile(os.path.join(d, "group"), b"old", 0o640)
rc, _, err = run("seal", "--key", "kek", plain, "-o", group)
t.ok(rc == 0 and mode(group) == 0o640 and rfile(group)[:8] == b"CMKSEAL1",
     "seal over an existing 0640 file: sealed data keeps its mode", err)
new = os.path.join(d, "new-plain")
rc, _, err = run("unseal", sealed, "-o", new)
t.ok(rc == 0 and rfile(new) == PLAIN and mode(new) == 0o600,
     "unseal to a new file: 0600 whatever the umask", err)

# ---- symbolic links --------------------------------------------------------
target = wfile(os.path.join(work, "link-target"), b"old", 0o600)
link = os.path.join(d, "link")
os.symlink(target, link)
rc, _, err = run("unseal", sealed, "-o", link)
t.ok(rc == 0 and os.path.islink(link) and os.readlink(link) == target and
     rfile(target) == PLAIN and mode(target) == 0o600,
     "unseal -o a symbolic link: the link stays, its target is replaced",
     err)
rc, _, err = run("seal", "--key", "kek", plain, "-o", link)
t.ok(rc == 0 and os.path.islink(link) and rfile(target)[:8] == b"CMKSEAL1",
     "seal -o the same link: the link stays, the target holds sealed data",
     err)
t.eq(sorted(n for n in os.listdir(work) if ".cmkp11-tmp-" in n), [],
     "no temporary file left beside the target")
before = rfile(target)
rc, _, err = run("rewrap", "--to", "kek2", link)
t.ok(rc == 0 and os.path.islink(link) and mode(target) == 0o600 and
     rfile(target) != before and b"kek2" in rfile(target)[:400],
     "rewrap --to kek2 of the link: the link stays, the target is "
     "rewritten and keeps 0600", err)
dangling = os.path.join(d, "dangling")
os.symlink(os.path.join(work, "nowhere"), dangling)
rc, _, err = run("unseal", sealed, "-o", dangling)
t.ok(rc != 0 and err == "cmkp11-tool: unseal: %s: %s: a symbolic link to a "
     "file that does not exist; refusing to write through it\n"
     % (sealed, dangling) and not os.path.exists(os.path.join(work, "nowhere")),
     "unseal -o a dangling link: refused with a message", err)

# ---- a directory -------------------------------------------------------------
sub = os.path.join(d, "dir")
os.mkdir(sub)
rc, _, err = run("unseal", sealed, "-o", sub)
t.ok(rc != 0 and err == "cmkp11-tool: unseal: %s: %s: is a directory; give "
     "a file name\n" % (sealed, sub) and os.path.isdir(sub) and
     os.listdir(sub) == [], "unseal -o a directory: refused with a message",
     err)
rc, _, err = run("seal", "--key", "kek", plain, "-o", sub)
t.ok(rc != 0 and err == "cmkp11-tool: seal: %s: is a directory; give a file "
     "name\n" % sub and os.listdir(sub) == [],
     "seal -o a directory: refused with a message", err)
t.eq(leftovers(), [], "no temporary files left in the output directory")

shutil.rmtree(work, ignore_errors=True)
