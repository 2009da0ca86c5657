#!/usr/bin/python3
"""cmkp11-tool seal, unseal and rewrap on both back ends: a SoftHSM token
(hsm, with pin-file) and the Key Vault emulator (keyvault). Round trips of
the sizes around a segment and of 100 MiB (the tool's memory must not grow
with the file), standard input and output, every kind of tampering, a
rotation then rewrap, rewrap --to between back ends, and an independent
reader of docs/seal-format.md (Python and cryptography) that checks the
files the tool writes."""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "kvemu"))

from kvtest import MODULE, SOFTHSM, TOOL  # noqa: E402

SEG = 65536
TAG = 16
MiB = 1 << 20


# ---- the independent reader (docs/seal-format.md) ---------------------------
class Sealed:
    """A sealed file, parsed from the page alone."""

    def __init__(self, data):
        if len(data) < 24 or data[:8] != b"CMKSEAL1":
            raise ValueError("bad magic")
        self.fixed = data[:24]
        (self.version, self.flags, self.mech, self.segsize) = struct.unpack(
            ">BBHI", data[8:16])
        self.prefix = data[16:23]
        if (self.version, self.flags, self.mech, self.segsize, data[23]) != \
                (1, 0, 1, SEG, 0):
            raise ValueError("fixed part")
        pos = 24
        fields = []
        for _ in range(5):
            if pos + 2 > len(data):
                raise ValueError("header truncated")
            (n,) = struct.unpack(">H", data[pos:pos + 2])
            if pos + 2 + n > len(data):
                raise ValueError("header truncated")
            fields.append(data[pos + 2:pos + 2 + n])
            pos += 2 + n
        self.token = fields[0].decode()
        self.key = fields[1].decode()
        self.key_version = fields[2].decode()
        self.key_id = fields[3]
        self.wrapped = fields[4]
        self.header_len = pos
        self.body = data[pos:]

    def segments(self):
        """The segments as the page cuts them: segsize + 16 bytes each, a
        shorter one last."""
        out, b = [], self.body
        while True:
            out.append(b[:SEG + TAG])
            b = b[SEG + TAG:]
            if len(out[-1]) < SEG + TAG or not b:
                return out

    def nonce(self, i, last):
        return self.prefix + struct.pack(">IB", i, 1 if last else 0)

    def decrypt(self, dek):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        g = AESGCM(dek)
        segs = self.segments()
        return b"".join(g.decrypt(self.nonce(i, i == len(segs) - 1), s,
                                  self.fixed) for i, s in enumerate(segs))


def reader_main(conf, token, path, out):
    """In a child process: the DEK through cmkp11 (PyKCS11, an extractable
    non-sensitive session key), then every segment with AESGCM."""
    import PyKCS11
    os.environ["CMKP11_CONF"] = conf
    s = Sealed(open(path, "rb").read())
    lib = PyKCS11.PyKCS11Lib()
    lib.load(MODULE)
    slot = [x for x in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(x).label.strip() == token][0]
    sess = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION |
                           PyKCS11.CKF_RW_SESSION)
    priv = sess.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                             (PyKCS11.CKA_ID, s.key_id)])[0]
    oaep = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA256,
                                    PyKCS11.CKG_MGF1_SHA256)
    h = sess.unwrapKey(priv, s.wrapped, [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
        (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_SENSITIVE, False),
        (PyKCS11.CKA_EXTRACTABLE, True), (PyKCS11.CKA_DECRYPT, True)], oaep)
    dek = bytes(sess.getAttributeValue(h, [PyKCS11.CKA_VALUE])[0])
    with open(out, "wb") as f:
        f.write(s.decrypt(dek))
    sess.destroyObject(h)
    sess.closeSession()


if len(sys.argv) == 6 and sys.argv[1] == "--read":
    reader_main(*sys.argv[2:])
    sys.exit(0)

from kvtest import (Tap, Emu, emulator_config, write_private,  # noqa: E402
                    APP_SECRET, APP_ID, TENANT, skip_all, softhsm_in)

if not os.access(TOOL, os.X_OK):
    skip_all("cmkp11-tool is not built")
try:
    import cryptography  # noqa: F401
except ImportError:
    skip_all("python3-cryptography is missing")

t = Tap()
work = tempfile.mkdtemp(prefix="tmp-test-seal-",
                        dir=os.environ.get("TMPDIR") or os.getcwd())


def run(*args, conf, stdin=None, stdin_file=None, stdout_file=None,
        measure=False):
    """Runs the tool; (exit status, stdout bytes, stderr text[, max RSS KiB])."""
    env = dict(os.environ, CMKP11_CONF=conf)
    cmd = [TOOL, "--module", MODULE] + list(args)
    if measure:
        # A fresh parent whose only child is the tool: its RUSAGE_CHILDREN
        # maximum is the tool's.
        cmd = [sys.executable, "-c",
               "import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:]).returncode\n"
               "sys.stderr.write('MAXRSS=%d\\n' % resource.getrusage("
               "resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(r)"] + cmd
    fin = open(stdin_file, "rb") if stdin_file else None
    fout = open(stdout_file, "wb") if stdout_file else None
    p = subprocess.run(cmd, env=env, input=stdin, stdin=fin,
                       stdout=fout or subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=300)
    for f in (fin, fout):
        if f:
            f.close()
    err = p.stderr.decode(errors="replace")
    if measure:
        rss = int(err.rsplit("MAXRSS=", 1)[1].split()[0])
        return p.returncode, p.stdout, err.rsplit("MAXRSS=", 1)[0], rss
    return p.returncode, p.stdout, err


def wfile(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def rfile(path):
    with open(path, "rb") as f:
        return f.read()


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MiB), b""):
            h.update(b)
    return h.hexdigest()


def leftovers(d):
    return [n for n in os.listdir(d) if ".cmkp11-tmp-" in n]


def independent(conf, token, path, plain):
    """The independent reader's output for path equals plain (bytes)."""
    out = path + ".indep"
    p = subprocess.run([sys.executable, __file__, "--read", conf, token, path,
                        out], capture_output=True, text=True, timeout=120)
    ok = p.returncode == 0 and rfile(out) == plain
    if not ok:
        t.diag(p.stderr[-2000:])
    os.unlink(out) if os.path.exists(out) else None
    return ok


# ---- set-up: SoftHSM and the emulator, one configuration ---------------------
hsmdir, st = softhsm_in(work)
pinfile = write_private(os.path.join(work, "pin"), "1234\n")
HSM_TOKEN = ("backend = hsm\nmodule = %s\ntoken-label = cmk\npin-file = %s\n"
             % (SOFTHSM, pinfile))
hconf = write_private(os.path.join(work, "hsm.conf"),
                      "[cmkp11]\nlog-level = error\nlog-file = %s\n\n"
                      "[token local]\n%s" % (os.path.join(work, "hsm.log"),
                                             HSM_TOKEN))
t.eq(st.returncode, 0, "softhsm-init.sh made the token; a configuration "
     "[token local] backend = hsm with pin-file")
st = subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "cmk",
                     "--login", "--pin", "1234", "--keypairgen", "--key-type",
                     "rsa:2048", "--label", "kek2", "--id", "60"],
                    capture_output=True, text=True)
t.eq(st.returncode, 0, "a second key, kek2, in the token")

emu = Emu(emulator_config(extra_vaults=[
    {"name": "other", "kind": "vault", "sku": "standard", "soft_delete": True,
     "purge_protection": True, "access": {"app": ["all"]}}]))
secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")


def kv_body(vault):
    return ("backend = keyvault\nvault-url = %s\nca-file = %s\n"
            "auth = client-secret\ntenant-id = %s\nclient-id = %s\n"
            "client-secret-file = %s\nauthority-host = %s\n" %
            (emu.url(vault), emu.ca, TENANT, APP_ID, secret,
             emu.env["AZURE_AUTHORITY_HOST"]))


emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})
emu.admin("POST", "vaults/other/keys", {"name": "kek"})
bconf = write_private(os.path.join(work, "both.conf"),
                      "[cmkp11]\nlog-level = error\nlog-file = %s\n\n"
                      "[token local]\n%s\n[token kv]\n%s\n[token other]\n%s" %
                      (os.path.join(work, "both.log"), HSM_TOKEN,
                       kv_body("kvemu"), kv_body("other")))

# ---- command line ------------------------------------------------------------
d = os.path.join(work, "cli")
os.makedirs(d)
plain = wfile(os.path.join(d, "p"), b"hello")
rc, out, err = run("--json", "seal", "--key", "kek", plain, conf=hconf)
t.ok(rc == 2 and "-o FILE" in err, "seal --json to standard output: exit 2")
rc, out, err = run("seal", "--to", "kek", plain, conf=hconf)
t.ok(rc == 2 and "does not take --to" in err, "seal --to: exit 2", err)
rc, out, err = run("list", "-o", "x", conf=hconf)
t.ok(rc == 2 and "does not take --output" in err, "list -o: exit 2", err)
rc, out, err = run("rewrap", conf=hconf)
t.eq(rc, 2, "rewrap without a file: exit 2")
rc, out, err = run("seal", plain, "-o", os.path.join(d, "s"), conf=hconf)
t.ok(rc == 1 and "give --key" in err and not os.path.exists(
    os.path.join(d, "s")), "seal without --key on a token of several keys: "
     "exit 1, 'give --key', no output", err)
rc, out, err = run("seal", "--key", "nokey", plain, "-o",
                   os.path.join(d, "s"), conf=hconf)
t.ok(rc == 1 and "no key matches 'nokey'" in err, "seal --key of an unknown "
     "key: exit 1", err)
rc, out, err = run("unseal", os.path.join(d, "nonexistent"), conf=hconf)
t.ok(rc == 1 and "nonexistent" in err, "unseal of a missing file: exit 1")
rc, out, err = run("unseal", plain, "-o", os.path.join(d, "u"), conf=hconf)
t.ok(rc == 1 and "not a sealed file" in err and
     not os.path.exists(os.path.join(d, "u")), "unseal of a file without the "
     "magic: exit 1, 'not a sealed file', no output", err)


# ---- round trips --------------------------------------------------------------
def round_trips(conf, token, key, label, version):
    d = os.path.join(work, "rt-" + token)
    os.makedirs(d)
    for n in (0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG):
        data = os.urandom(n)
        p = wfile(os.path.join(d, "p%d" % n), data)
        s = os.path.join(d, "s%d" % n)
        u = os.path.join(d, "u%d" % n)
        rc, out, err = run("--json", "seal", "--key", key, "--token", token, p,
                           "-o", s, conf=conf)
        doc = json.loads(out) if rc == 0 else {}
        segs = max(1, -(-n // SEG))  # exactly N x 64 KiB: N segments
        t.ok(rc == 0 and doc.get("bytes") == n and
             doc.get("segments") == segs and doc.get("token") == token and
             doc.get("key") == key and doc.get("version") == version,
             "%s: seal %d bytes --json: %d segment(s), key %s version %s" %
             (label, n, segs, key, version), (rc, err, doc))
        f = Sealed(rfile(s)) if rc == 0 else None
        t.ok(f is not None and f.token == token and f.key == key and
             f.key_version == version and
             f.key_id.hex() == doc.get("key_id") and
             len(f.wrapped) == 256 and len(f.segments()) == segs and
             len(f.body) == n + TAG * segs and oct(os.stat(s).st_mode)[-3:]
             in ("644", "600", "640", "664"),
             "%s: %d bytes: the header names token, key, version, key id; "
             "a 256-byte wrapped key; %d segment(s)" % (label, n, segs))
        rc, out, err = run("--json", "unseal", s, "-o", u, conf=conf)
        doc = json.loads(out) if rc == 0 else {}
        t.ok(doc.get("bytes") == n and doc.get("segments") == segs and
             doc.get("fallback") is False and doc.get("version") == version,
             "%s: unseal --json: bytes, segments, the version, no fallback" %
             label, (rc, err, doc))
        t.ok(rc == 0 and rfile(u) == data and
             oct(os.stat(u).st_mode)[-3:] == "600" and not leftovers(d),
             "%s: unseal %d bytes to a file (mode 0600): the same bytes" %
             (label, n), err)
    # Standard input and output, through pipes.
    data = os.urandom(2 * SEG + 7)
    rc, sealed, err = run("seal", "--key", key, "--token", token, conf=conf,
                          stdin=data)
    t.ok(rc == 0 and Sealed(sealed).key == key,
         "%s: seal from standard input to standard output" % label, err)
    rc, out, err = run("unseal", "-", conf=conf, stdin=sealed)
    t.ok(rc == 0 and out == data,
         "%s: unseal from standard input ('-') to standard output" % label)
    rc, out, err = run("unseal", "-o", "-", conf=conf, stdin=sealed)
    t.ok(rc == 0 and out == data, "%s: unseal -o - (standard output)" % label)
    s = wfile(os.path.join(d, "stdio"), sealed)
    t.ok(independent(conf, token, s, data), "%s: the independent reader "
         "(docs/seal-format.md, AESGCM) reads a file the tool sealed" % label)
    return d


def big(conf, token, key, label, d):
    """100 MiB through files and through standard output; the tool's max RSS
    against a 1 MiB seal."""
    p1 = wfile(os.path.join(d, "m1"), os.urandom(MiB))
    p100 = os.path.join(d, "m100")
    with open(p100, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(MiB))
    rss = {}
    for name in ("m1", "m100"):
        rc, out, err, rss[name] = run(
            "seal", "--key", key, "--token", token, os.path.join(d, name),
            "-o", os.path.join(d, name + ".s"), conf=conf, measure=True)
        t.eq(rc, 0, "%s: seal %s" % (label, name))
    rc, out, err, rss["unseal"] = run(
        "unseal", os.path.join(d, "m100.s"), "-o", os.path.join(d, "m100.u"),
        conf=conf, measure=True)
    t.ok(rc == 0 and sha(os.path.join(d, "m100.u")) == sha(p100),
         "%s: 100 MiB round trip through files" % label, err)
    os.unlink(os.path.join(d, "m100.u"))
    rc, out, err, rss["stdout"] = run(
        "unseal", os.path.join(d, "m100.s"), conf=conf, measure=True,
        stdout_file=os.path.join(d, "m100.o"))
    t.ok(rc == 0 and sha(os.path.join(d, "m100.o")) == sha(p100),
         "%s: 100 MiB unseal to standard output" % label, err)
    t.diag("%s: max RSS (KiB): seal 1 MiB %d, seal 100 MiB %d, unseal 100 MiB "
           "%d, unseal 100 MiB to stdout %d" % (label, rss["m1"], rss["m100"],
                                                rss["unseal"], rss["stdout"]))
    # KiB. The ASan gate allows more (CMKP11_TEST_RSS_SLACK_KIB): its
    # allocator's quarantine and shadow memory move with the allocations,
    # not with the file; a buffered file would still add 100 MiB.
    slack = int(os.environ.get("CMKP11_TEST_RSS_SLACK_KIB", "2048"))
    t.ok(rss["m100"] <= rss["m1"] + slack and
         rss["unseal"] <= rss["m1"] + slack and
         rss["stdout"] <= rss["m1"] + slack,
         "%s: the tool's memory does not grow with the file (100 MiB within "
         "%d KiB of a 1 MiB seal)" % (label, slack), rss)
    t.ok(independent(conf, token, os.path.join(d, "m1.s"), rfile(p1)),
         "%s: the independent reader reads a 1 MiB file" % label)
    for n in ("m100", "m100.s", "m100.o"):
        os.unlink(os.path.join(d, n))


d_hsm = round_trips(hconf, "local", "kek", "hsm", "02")
big(hconf, "local", "kek", "hsm", d_hsm)


# ---- tampering ------------------------------------------------------------------
def tamper(conf, label, sealed):
    d = os.path.join(work, "tamper-" + label)
    os.makedirs(d)
    f = Sealed(sealed)
    h, n = f.header_len, SEG + TAG
    flip = lambda b, i: b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]  # noqa: E731
    cases = [
        ("a byte flipped in a segment", flip(sealed, h + n + 10),
         "segment 1 does not authenticate"),
        ("a byte flipped in the last segment", flip(sealed, len(sealed) - 3),
         "does not authenticate"),
        ("a byte flipped in the wrapped key", flip(sealed, h - 7),
         "does not unwrap"),
        ("two segments swapped",
         sealed[:h] + sealed[h + n:h + 2 * n] + sealed[h:h + n] +
         sealed[h + 2 * n:], "reordered"),
        ("truncated at a segment boundary", sealed[:h + 2 * n], "truncated"),
        ("truncated inside a segment", sealed[:h + n + 1000], "truncated"),
        ("truncated after the header", sealed[:h], "truncated"),
        ("truncated inside the header", sealed[:h - 20], "truncated"),
        ("bytes appended", sealed + b"trailing garbage", "appended"),
        ("a byte flipped in the nonce prefix", flip(sealed, 18),
         "does not authenticate"),
        ("bad magic", b"CMKSEAL2" + sealed[8:], "not a sealed file"),
        ("format version 3", sealed[:8] + b"\x03" + sealed[9:],
         "format version 3"),
        ("unknown flags", sealed[:9] + b"\x01" + sealed[10:], "flags"),
        ("another segment size", sealed[:12] + struct.pack(">I", 4096) +
         sealed[16:], "segment size"),
    ]
    for desc, data, msg in cases:
        p = wfile(os.path.join(d, "bad"), data)
        u = os.path.join(d, "out")
        rc, out, err = run("unseal", p, "-o", u, conf=conf)
        t.ok(rc == 1 and msg in err and not os.path.exists(u) and
             not leftovers(d), "%s: %s: exit 1, '%s', no output file" %
             (label, desc, msg), err)
    # To standard output: only verified segments, exit 1 on truncation.
    rc, out, err = run("unseal", conf=conf, stdin=sealed[:h + 2 * n])
    t.ok(rc == 1 and "truncated" in err and len(out) <= 2 * SEG,
         "%s: truncated, to standard output: exit 1, at most the verified "
         "segments written (%d bytes)" % (label, len(out)), err)
    rc, out, err = run("unseal", conf=conf, stdin=flip(sealed, h + 2 * n + 5))
    t.ok(rc == 1 and len(out) == 2 * SEG,
         "%s: segment 2 altered, to standard output: exit 1 after the two "
         "verified segments" % label)
    # Appended after a full last segment: told apart from alteration.
    full = rfile(os.path.join(work, "rt-" + f.token, "s%d" % SEG))
    p = wfile(os.path.join(d, "bad"), full + b"x" * 100)
    rc, out, err = run("unseal", p, "-o", os.path.join(d, "out"), conf=conf)
    t.ok(rc == 1 and "trailing data" in err and
         not os.path.exists(os.path.join(d, "out")),
         "%s: bytes after a full last segment: 'trailing data'" % label, err)
    shutil.rmtree(d)


plain4 = os.urandom(3 * SEG + 500)
p4 = wfile(os.path.join(d_hsm, "p4"), plain4)
rc, out, err = run("seal", "--key", "kek", p4, "-o", p4 + ".s", conf=hconf)
tamper(hconf, "hsm", rfile(p4 + ".s"))


# ---- segments in parallel (--threads) ---------------------------------------
def parallel(conf, label):
    """Files sealed one segment at a time and several at once read the same
    both ways; failures give the same message, exit status and output."""
    d = os.path.join(work, "par-" + label)
    os.makedirs(d)
    rc, out, err = run("list", "--threads", "2", conf=conf)
    t.ok(rc == 2 and "list does not take --threads" in err,
         "list --threads: exit 2", err)
    for bad in ("0", "65", "x"):
        rc, out, err = run("seal", "--threads", bad, "--key", "kek", conf=conf,
                           stdin=b"x")
        t.ok(rc == 2 and "--threads: a number of threads from 1 to 64, not "
             "'%s'" % bad in err, "seal --threads %s: exit 2" % bad, err)
    for n in (0, 1, SEG, 3 * SEG + 5, 20 * SEG, 20 * SEG + 123):
        data = os.urandom(n)
        p = wfile(os.path.join(d, "p"), data)
        sealed = {}
        for th in (1, 4):
            s = os.path.join(d, "s%d" % th)
            rc, out, err = run("--json", "seal", "--threads", str(th),
                               "--key", "kek", p, "-o", s, conf=conf)
            doc = json.loads(out) if rc == 0 else {}
            sealed[th] = rfile(s) if rc == 0 else b""
            t.ok(rc == 0 and doc.get("bytes") == n and
                 doc.get("segments") == max(1, -(-n // SEG)),
                 "%s: seal %d bytes --threads %d" % (label, n, th), err)
        f1, f4 = Sealed(sealed[1]), Sealed(sealed[4])
        t.ok(len(sealed[1]) == len(sealed[4]) and
             [len(x) for x in f1.segments()] ==
             [len(x) for x in f4.segments()],
             "%s: %d bytes: --threads 1 and 4 cut the same segments" %
             (label, n))
        ok = True
        for th_s in (1, 4):
            for th_u in (1, 3, 4):
                u = os.path.join(d, "u")
                rc, out, err = run("unseal", "--threads", str(th_u),
                                   os.path.join(d, "s%d" % th_s), "-o", u,
                                   conf=conf)
                if rc != 0 or rfile(u) != data:
                    ok = False
                    t.diag("sealed --threads %d, unsealed --threads %d: %s" %
                           (th_s, th_u, err))
        t.ok(ok and not leftovers(d), "%s: %d bytes: sealed with --threads 1 "
             "or 4, unsealed with --threads 1, 3 or 4: the same data" %
             (label, n))
        if n == 20 * SEG + 123:
            t.ok(independent(conf, "local", os.path.join(d, "s4"), data),
                 "%s: the independent reader reads a --threads 4 file" %
                 label)
            plain, sealed4 = data, sealed[4]
    parallel_failures(conf, label, d, plain, sealed4)
    parallel_memory(conf, label, d)
    parallel_signals(conf, label, d)
    shutil.rmtree(d)


def parallel_failures(conf, label, d, plain, sealed):
    """A 21-segment file altered: --threads 1 and 4 fail alike."""
    f = Sealed(sealed)
    h, n = f.header_len, SEG + TAG
    flip = lambda b, i: b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]  # noqa: E731
    seg = lambda i: sealed[h + i * n:h + (i + 1) * n]  # noqa: E731
    cases = [
        ("segment 0 altered", flip(sealed, h + 3),
         "segment 0 does not authenticate"),
        ("segment 9 altered", flip(sealed, h + 9 * n + 100),
         "segment 9 does not authenticate"),
        ("segments 5 and 15 altered", flip(flip(sealed, h + 15 * n + 7),
                                           h + 5 * n + 7),
         "segment 5 does not authenticate"),
        ("the last segment altered", flip(sealed, len(sealed) - 1),
         "segment 20 (the last, 139 bytes) does not authenticate"),
        ("segments 7 and 12 swapped",
         sealed[:h + 7 * n] + seg(12) + sealed[h + 8 * n:h + 12 * n] +
         seg(7) + sealed[h + 13 * n:],
         "the segments are reordered: segment 7 holds segment 12"),
        ("segment 3 repeated", sealed[:h + 4 * n] + seg(3) +
         sealed[h + 4 * n:], "segment 4 holds segment 3"),
        ("truncated after segment 10", sealed[:h + 11 * n],
         "the file is truncated: it ends after segment 10"),
        ("truncated inside segment 13", sealed[:h + 13 * n + 5],
         "truncated inside segment 13"),
        ("bytes appended", sealed + b"x" * 50, "appended"),
        ("truncated after the header", sealed[:h], "ends after the header"),
    ]
    for desc, data, msg in cases:
        p = wfile(os.path.join(d, "bad"), data)
        res = {}
        for th in (1, 4):
            u = os.path.join(d, "out")
            rc, out, err = run("unseal", "--threads", str(th), p, "-o", u,
                               conf=conf)
            res[th] = (rc, err, os.path.exists(u) or bool(leftovers(d)))
        t.ok(res[1] == res[4] and res[4][0] == 1 and msg in res[4][1] and
             res[4][1].count("\n") == 1 and not res[4][2],
             "%s: %s: --threads 1 and 4: exit 1, '%s' (once), no output "
             "file" % (label, desc, msg), res)
        # To standard output: the verified segments before the first bad
        # one, nothing of it or after it.
        outs = {}
        for th in (1, 4):
            rc, outs[th], err = run("unseal", "--threads", str(th), p,
                                    conf=conf)
        good = {"segment 9 altered": 9, "segments 5 and 15 altered": 5,
                "segments 7 and 12 swapped": 7,
                "truncated after segment 10": 10}.get(desc)
        if good is not None:
            t.ok(outs[1] == outs[4] == plain[:good * SEG],
                 "%s: %s, to standard output: --threads 1 and 4 write the "
                 "%d verified segments, nothing more" % (label, desc, good),
                 (len(outs[1]), len(outs[4])))


def parallel_memory(conf, label, d):
    """--threads 4: memory does not grow with the file."""
    p1 = wfile(os.path.join(d, "m1"), os.urandom(MiB))
    p64 = os.path.join(d, "m64")
    with open(p64, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    rss = {}
    for name, p in (("m1", p1), ("m64", p64)):
        rc, out, err, rss[name] = run(
            "seal", "--threads", "4", "--key", "kek", p, "-o", p + ".s",
            conf=conf, measure=True)
        t.eq(rc, 0, "%s: seal %s --threads 4" % (label, name))
    rc, out, err, rss["unseal"] = run(
        "unseal", "--threads", "4", p64 + ".s", "-o", p64 + ".u", conf=conf,
        measure=True)
    t.ok(rc == 0 and sha(p64 + ".u") == sha(p64), "%s: 64 MiB round trip "
         "--threads 4" % label, err)
    slack = int(os.environ.get("CMKP11_TEST_RSS_SLACK_KIB", "2048"))
    t.diag("%s: --threads 4, max RSS (KiB): %s" % (label, rss))
    t.ok(rss["m64"] <= rss["m1"] + slack and
         rss["unseal"] <= rss["m1"] + slack,
         "%s: --threads 4: the tool's memory does not grow with the file "
         "(64 MiB within %d KiB of 1 MiB)" % (label, slack), rss)
    for x in (p64, p64 + ".s", p64 + ".u"):
        os.unlink(x)


def parallel_signals(conf, label, d):
    """SIGINT and SIGTERM during a parallel seal or unseal: the signal ends
    the tool, the temporary file is removed, no output is left."""
    sd = os.path.join(d, "sig")
    os.makedirs(sd)
    sealed = os.path.join(d, "s4")
    for cmd, sig in (("seal", signal.SIGINT), ("seal", signal.SIGTERM),
                     ("unseal", signal.SIGTERM)):
        out = os.path.join(sd, "out")
        args = ["seal", "--key", "kek"] if cmd == "seal" else ["unseal"]
        p = subprocess.Popen([TOOL, "--module", MODULE, "--threads", "4"] +
                             args + ["-o", out],
                             env=dict(os.environ, CMKP11_CONF=conf),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        # Part of the input; the tool waits for more with its workers and
        # its temporary file.
        p.stdin.write(os.urandom(5 * SEG) if cmd == "seal"
                      else rfile(sealed)[:5 * (SEG + TAG)])
        p.stdin.flush()
        for _ in range(600):
            if leftovers(sd):
                break
            time.sleep(0.05)
        had = bool(leftovers(sd))
        time.sleep(0.2)
        p.send_signal(sig)
        rc = p.wait(timeout=60)
        p.stdin.close()
        p.stdout.close()
        p.stderr.close()
        t.ok(had and rc == -sig and not leftovers(sd) and
             not os.path.exists(out),
             "%s: %s --threads 4 ended by %s: the temporary file removed, "
             "no output" % (label, cmd, signal.Signals(sig).name),
             (had, rc, os.listdir(sd)))


parallel(hconf, "hsm")

# A key that may not unwrap; a header that names a key that is not this one.
rc, out, err = run("seal", "--key", "pkcs11:token=local;object=dec-only", p4,
                   "-o", p4 + ".dec", conf=hconf)
t.eq(rc, 0, "hsm: seal under dec-only (its public half may wrap), by URI")
rc, out, err = run("unseal", p4 + ".dec", "-o", p4 + ".u", conf=hconf)
t.ok(rc == 1 and "may not unwrap" in err and not os.path.exists(p4 + ".u"),
     "hsm: a key that cannot unwrap: exit 1, a clear message, no output", err)
f = Sealed(rfile(p4 + ".s"))


def reheader(f, key=None, version=None, key_id=None, wrapped=None):
    """The file with other header strings (written from the page)."""
    out = f.fixed
    for v in (f.token.encode(), (key or f.key).encode(),
              (version or f.key_version).encode(), key_id or f.key_id,
              wrapped or f.wrapped):
        out += struct.pack(">H", len(v)) + v
    return out + f.body


wfile(p4 + ".w", reheader(f, key="kek2"))
rc, out, err = run("unseal", p4 + ".w", "-o", p4 + ".u", conf=hconf)
t.ok(rc == 1 and "does not unwrap" in err and "falling back" not in err and
     not os.path.exists(p4 + ".u"), "hsm: the wrong key (a header naming "
     "another key; the label object's fallback cannot unwrap either): exit 1",
     err)
wfile(p4 + ".w", reheader(f, version="01"))
rc, out, err = run("unseal", p4 + ".w", "-o", p4 + ".u", conf=hconf)
t.ok(rc == 1 and "header is altered" in err, "hsm: a version that does not "
     "match the key id: 'the header is altered'", err)
wfile(p4 + ".w", reheader(f, key_id=b"\x77", version="77"))
rc, out, err = run("unseal", p4 + ".w", "-o", p4 + ".u", conf=hconf)
t.ok(rc == 0 and rfile(p4 + ".u") == plain4 and "label object" in err,
     "hsm: a version the token no longer has: unwrapped through the label "
     "object (unwrap-fallback), with a note", err)
os.unlink(p4 + ".u")

# ---- rotation, then rewrap ----------------------------------------------------
rd = os.path.join(work, "rotate")
os.makedirs(os.path.join(rd, "sub"))
pa = wfile(os.path.join(work, "pa"), os.urandom(2 * SEG + 1))
pb = wfile(os.path.join(work, "pb"), os.urandom(SEG // 2))
sa, sb = os.path.join(rd, "a.sealed"), os.path.join(rd, "sub", "b.sealed")
run("seal", "--key", "kek", pa, "-o", sa, conf=hconf)
wfile(os.path.join(rd, "notsealed"), b"plain text")
before = Sealed(rfile(sa))
rc, out, err = run("--json", "rotate", "local", "kek", conf=hconf)
newv = json.loads(out)["new"]["version"] if rc == 0 else None
t.ok(rc == 0 and newv and newv != "02", "hsm: rotate kek", err)
rc, out, err = run("seal", "--key", "kek", pb, "-o", sb, conf=hconf)
fb = Sealed(rfile(sb))
t.ok(rc == 0 and fb.key_version == newv and before.key_version == "02" and
     fb.key_id != before.key_id, "hsm: sealed after the rotation: the header "
     "names the new version")
ok = all(run("unseal", s, "-o", s + ".u", conf=hconf)[0] == 0 and
         rfile(s + ".u") == rfile(p) for s, p in ((sa, pa), (sb, pb)))
t.ok(ok, "hsm: files under the old and the new version both unseal")
for s in (sa, sb):
    os.unlink(s + ".u")
# A URI that names the old version seals under that version, and says so.
so = os.path.join(work, "old.sealed")
rc, out, err = run("seal", "--key", "pkcs11:token=local;object=kek@02", pb,
                   "-o", so, conf=hconf)
t.ok(rc == 0 and Sealed(rfile(so)).key_version == "02" and
     out.decode().strip() == "sealed %d bytes from %s into %s under key kek "
     "version 02 (not the current version) on token local" % (SEG // 2, pb, so),
     "hsm: seal with a URI naming the old version uses that version", (out, err))
rc, out, err = run("unseal", so, "-o", so + ".u", conf=hconf)
t.ok(rc == 0 and rfile(so + ".u") == rfile(pb), "hsm: ... and it unseals")
os.unlink(so)
os.unlink(so + ".u")
rc, out, err = run("rewrap", rd, conf=hconf)
after = Sealed(rfile(sa))
t.ok(rc == 0 and out.decode().strip() == "rewrapped 1 file, skipped 1 "
     "already under kek@%s, failed 0" % newv and not sys.stderr.isatty(),
     "hsm: rewrap DIR: the summary line (not a terminal)", (out, err))
t.ok(after.key_version == newv and after.key_id == fb.key_id and
     after.fixed == before.fixed and after.body == before.body and
     after.wrapped != before.wrapped, "hsm: rewrap moved the old file to the "
     "new version: new header, the same fixed part and segments byte for "
     "byte")
t.ok(rfile(os.path.join(rd, "notsealed")) == b"plain text" and
     not leftovers(rd), "hsm: rewrap left other files alone, no temporary "
     "file")
rc, out, err = run("unseal", sa, "-o", sa + ".u", conf=hconf)
t.ok(rc == 0 and rfile(sa + ".u") == rfile(pa), "hsm: the rewrapped file "
     "unseals")
os.unlink(sa + ".u")
rc, out, err = run("--json", "rewrap", rd, sa, conf=hconf)
doc = json.loads(out) if out else {}
t.ok(rc == 0 and doc.get("rewrapped") == 0 and doc.get("skipped") == 3 and
     doc.get("failed") == 0 and
     all(x["result"] == "skipped" and x["to"]["version"] == newv and
         x["error"] is None for x in doc["files"]),
     "hsm: a second run (--json) skips every file: already under the "
     "current version", doc)
rc, out, err = run("--json", "rewrap", os.path.join(rd, "notsealed"),
                   os.path.join(rd, "missing"), conf=hconf)
doc = json.loads(out) if out else {}
t.ok(rc == 1 and doc.get("failed") == 2 and
     "not a sealed file" in doc["files"][0]["error"],
     "hsm: rewrap of a named file that is not sealed, and of a missing one: "
     "failed 2, exit 1", (doc, err))

# ---- the keyvault back end ---------------------------------------------------------
rc, out, err = run("--json", "list", "kv", conf=bconf)
kvv = json.loads(out)["tokens"][0]["keys"][0]["current_version"] \
    if rc == 0 else None
t.ok(rc == 0 and kvv and len(kvv) == 32, "keyvault: kek's current version",
     err)
d_kv = round_trips(bconf, "kv", "kek", "keyvault", kvv)
big(bconf, "kv", "kek", "keyvault", d_kv)
pk = wfile(os.path.join(d_kv, "pk"), os.urandom(3 * SEG + 100))
rc, out, err = run("seal", "--key", "pkcs11:token=kv;object=kek", pk, "-o",
                   pk + ".s", conf=bconf)
tamper(bconf, "keyvault", rfile(pk + ".s"))
# --threads on a keyvault token (one by default): the module's key seen
# from every session; the same data both ways.
pkd = rfile(pk)
rc, out, err = run("seal", "--threads", "3", "--key", "kek", "--token", "kv",
                   pk, "-o", pk + ".s3", conf=bconf)
rc2, out2, err2 = run("unseal", pk + ".s3", "-o", pk + ".u1", conf=bconf)
rc3, out3, err3 = run("unseal", "--threads", "3", pk + ".s", "-o",
                      pk + ".u3", conf=bconf)
t.ok(rc == rc2 == rc3 == 0 and rfile(pk + ".u1") == pkd and
     rfile(pk + ".u3") == pkd, "keyvault: sealed with --threads 3, unsealed "
     "with one thread, and the other way round", (err, err2, err3))
rc, out, err = run("unseal", "--token", "other", pk + ".s", "-o", pk + ".u",
                   conf=bconf)
t.ok(rc == 1 and "does not unwrap" in err and not os.path.exists(pk + ".u"),
     "keyvault: unsealed on another vault's key of the same name (the wrong "
     "key): exit 1, no output", err)
rc, out, err = run("seal", "--key", "kek", pk, "-o", pk + ".x", conf=bconf)
t.ok(rc == 1 and "several keys" in err and "local/kek" in err and
     "kv/kek" in err, "a key name on several tokens: exit 1, 'give --token'",
     err)

# ---- rewrap --to between back ends ---------------------------------------------
xd = os.path.join(work, "cross")
os.makedirs(xd)
px = wfile(os.path.join(work, "px"), os.urandom(5 * SEG + 3))
sx = os.path.join(xd, "x.sealed")
run("seal", "--key", "kek", "--token", "local", px, "-o", sx, conf=bconf)
x0 = Sealed(rfile(sx))
rc, out, err = run("--json", "rewrap", "--to", "pkcs11:token=kv;object=kek",
                   xd, conf=bconf)
doc = json.loads(out) if rc == 0 else {}
x1 = Sealed(rfile(sx))
t.ok(rc == 0 and doc.get("rewrapped") == 1 and x1.token == "kv" and
     x1.key == "kek" and x1.key_version == kvv and x1.body == x0.body and
     x1.fixed == x0.fixed, "rewrap --to: from the hsm token to the keyvault "
     "token; the segments unchanged", (doc, err))
rc, out, err = run("unseal", sx, "-o", sx + ".u", conf=bconf)
t.ok(rc == 0 and rfile(sx + ".u") == rfile(px) and
     independent(bconf, "kv", sx, rfile(px)),
     "the file now unseals on the keyvault token (tool and independent "
     "reader)", err)
os.unlink(sx + ".u")
rc, out, err = run("rewrap", "--to", "kek", "--token", "local", sx,
                   conf=bconf)
x2 = Sealed(rfile(sx))
t.ok(rc == 0 and x2.token == "local" and x2.key_version == newv and
     x2.body == x0.body, "rewrap --to kek --token local: back to the hsm "
     "token, under kek's current version", (out, err))
rc, out, err = run("unseal", sx, conf=hconf)
t.ok(rc == 0 and out == rfile(px), "and it unseals there", err)
rc, out, err = run("rewrap", "--to", "kek", "--token", "local", sx,
                   conf=bconf)
t.ok(rc == 0 and out.decode().startswith("rewrapped 0 files, skipped 1 "
                                         "already under kek@%s" % newv),
     "a second rewrap --to skips it", out)

emu.stop()
shutil.rmtree(work, ignore_errors=True)
