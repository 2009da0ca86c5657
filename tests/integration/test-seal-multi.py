#!/usr/bin/python3
"""cmkp11-tool seal under several keys (format version 2 of
docs/seal-format.md): any-of with a Key Vault key (emulator) and an hsm key
(SoftHSM); all-of; rewrap --add-key / --remove-key on many files, with a
SIGKILL in the middle; check on sealed files; and an independent reader
of version 2 (Python, cryptography) that unwraps through PyKCS11."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from urllib.parse import unquote

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "kvemu"))

from kvtest import MODULE, TOOL  # noqa: E402
from hsmtest import on_lower  # noqa: E402

SEG = 65536
TAG = 16


# ---- the independent reader, version 2 (docs/seal-format.md) -----------------
def string(data, pos):
    if pos + 2 > len(data):
        raise ValueError("header truncated")
    (n,) = struct.unpack(">H", data[pos:pos + 2])
    if pos + 2 + n > len(data):
        raise ValueError("header truncated")
    return data[pos + 2:pos + 2 + n], pos + 2 + n


class Sealed2:
    def __init__(self, data):
        if data[:8] != b"CMKSEAL1":
            raise ValueError("bad magic")
        (self.version, self.flags, mech, segsize) = struct.unpack(
            ">BBHI", data[8:16])
        if self.version != 2 or self.flags not in (0, 1) or mech != 1 or \
                segsize != SEG or data[23] != 0:
            raise ValueError("fixed part")
        self.all_of = self.flags == 1
        self.prefix = data[16:23]
        # The AAD: the fixed part as version 1 writes it.
        self.aad = data[:8] + b"\x01\x00" + data[10:24]
        n, pos = data[24], 25
        self.recipients = []
        for _ in range(n):
            uri, pos = string(data, pos)
            version, pos = string(data, pos)
            key_id, pos = string(data, pos)
            wrapped, pos = string(data, pos)
            u = uri.decode()
            assert u.startswith("pkcs11:token=") and ";object=" in u, u
            tok, obj = u[len("pkcs11:token="):].split(";object=")
            self.recipients.append({"uri": u, "token": unquote(tok),
                                    "key": unquote(obj),
                                    "version": version.decode(),
                                    "key_id": key_id, "wrapped": wrapped})
        self.header_len = pos
        self.body = data[pos:]

    def decrypt(self, dek):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        g, b, segs = AESGCM(dek), self.body, []
        while True:
            segs.append(b[:SEG + TAG])
            b = b[SEG + TAG:]
            if len(segs[-1]) < SEG + TAG or not b:
                break
        return b"".join(g.decrypt(self.prefix + struct.pack(
            ">IB", i, 1 if i == len(segs) - 1 else 0), s, self.aad)
            for i, s in enumerate(segs))


def reader_main(conf, path, which, out):
    """In a child: each wanted recipient's wrapped key unwrapped through
    cmkp11 (PyKCS11, an extractable session key); any-of: recipient
    `which`; all-of: the XOR of every share."""
    import PyKCS11
    os.environ["CMKP11_CONF"] = conf
    s = Sealed2(open(path, "rb").read())
    lib = PyKCS11.PyKCS11Lib()
    lib.load(MODULE)
    dek = bytes(32)
    todo = s.recipients if s.all_of else [s.recipients[int(which)]]
    for r in todo:
        slot = [x for x in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(x).label.strip() == r["token"]][0]
        sess = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION |
                               PyKCS11.CKF_RW_SESSION)
        priv = sess.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                                 (PyKCS11.CKA_ID, r["key_id"])])[0]
        oaep = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA256,
                                        PyKCS11.CKG_MGF1_SHA256)
        h = sess.unwrapKey(priv, r["wrapped"], [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
            (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_SENSITIVE, False),
            (PyKCS11.CKA_EXTRACTABLE, True), (PyKCS11.CKA_DECRYPT, True)],
            oaep)
        v = bytes(sess.getAttributeValue(h, [PyKCS11.CKA_VALUE])[0])
        dek = bytes(a ^ b for a, b in zip(dek, v))
        sess.destroyObject(h)
        sess.closeSession()
    with open(out, "wb") as f:
        f.write(s.decrypt(dek))


if len(sys.argv) == 6 and sys.argv[1] == "--read":
    reader_main(*sys.argv[2:])
    sys.exit(0)

from kvtest import (Tap, Emu, emulator_config, write_private,  # noqa: E402
                    APP_SECRET, conf_text, hsm_token, emu_token,
                    skip_all, softhsm_in)

if not os.access(TOOL, os.X_OK):
    skip_all("cmkp11-tool is not built")

t = Tap()
work = tempfile.mkdtemp(prefix="tmp-test-seal-multi-",
                        dir=os.environ.get("TMPDIR") or os.getcwd())


def run(*args, conf, stdin=None):
    env = dict(os.environ, CMKP11_CONF=conf)
    p = subprocess.run([TOOL, "--module", MODULE] + list(args), env=env,
                       input=stdin, capture_output=True, timeout=600)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def wfile(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def rfile(path):
    with open(path, "rb") as f:
        return f.read()


def independent(conf, path, which, plain):
    out = path + ".indep"
    p = subprocess.run([sys.executable, __file__, "--read", conf, path,
                        str(which), out], capture_output=True, text=True,
                       timeout=120)
    ok = p.returncode == 0 and rfile(out) == plain
    if not ok:
        t.diag(p.stderr[-2000:])
    if os.path.exists(out):
        os.unlink(out)
    return ok


# ---- set-up: SoftHSM and the emulator, one configuration ---------------------
hsmdir, st = softhsm_in(work)
pinfile = write_private(os.path.join(work, "pin"), "1234\n")
emu = Emu(emulator_config())
secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")
emu.admin("POST", "vaults/kvemu/keys", {"name": "cmk"})
emu.admin("POST", "vaults/kvemu/keys", {"name": "cmk2"})
conf = write_private(
    os.path.join(work, "both.conf"),
    conf_text([hsm_token("local", pin_file=pinfile),
               emu_token(emu, "kv", secret)],
              log_level="error", log_file=os.path.join(work, "both.log")))
t.eq(st.returncode, 0, "a SoftHSM token (local) and an emulated vault (kv) "
     "in one configuration")
KV = "pkcs11:token=kv;object=cmk"
KV2 = "pkcs11:token=kv;object=cmk2"
HSM = "pkcs11:token=local;object=kek"

def hsm_unwrap(on):
    """Revokes (or restores) the hsm key's unwrap permission in SoftHSM,
    as an administrator would."""
    on_lower(r'''
for o in s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                        (P.CKA_LABEL, "kek")]):
    s.setAttributeValue(o, [(P.CKA_UNWRAP, sys.argv[2] == "on")])
s.logout()
''', "on" if on else "off")


def kv_enabled(name, on):
    st, _, _ = emu.vault("PATCH", emu.url("kvemu") + "/keys/" + name,
                         {"attributes": {"enabled": on}})
    assert st == 200, st


# ---- command line -----------------------------------------------------------
d = os.path.join(work, "d")
os.makedirs(d)
plain = os.urandom(2 * SEG + 99)
p = wfile(os.path.join(d, "p"), plain)
rc, out, err = run("seal", "--require-all", "--key", KV, p, "-o",
                   os.path.join(d, "x"), conf=conf)
t.ok(rc == 2 and "--require-all needs two --key or more" in err,
     "seal --require-all with one key: exit 2", err)
rc, out, err = run("unseal", "--require-all", p, conf=conf)
t.ok(rc == 2 and "unseal does not take --require-all" in err,
     "unseal --require-all: exit 2", err)
rc, out, err = run("seal", "--add-key", KV, p, conf=conf)
t.ok(rc == 2 and "seal does not take --add-key" in err,
     "seal --add-key: exit 2", err)
rc, out, err = run("seal", "--key", KV, "--key", KV, p, "-o",
                   os.path.join(d, "x"), conf=conf)
t.ok(rc == 1 and "given twice" in err, "the same key twice: exit 1", err)

# ---- any-of: a Key Vault key and an hsm key --------------------------------
s = os.path.join(d, "any")
rc, out, err = run("seal", "--key", KV, "--key", HSM, p, "-o", s, conf=conf)
f = Sealed2(rfile(s)) if rc == 0 else None
t.ok(rc == 0 and f and not f.all_of and
     [(r["token"], r["key"]) for r in f.recipients] ==
     [("kv", "cmk"), ("local", "kek")] and
     [r["uri"] for r in f.recipients] == [KV, HSM] and
     len(f.recipients[0]["version"]) == 32 and
     f.recipients[1]["version"] == "02" and
     all(len(r["wrapped"]) == 256 for r in f.recipients) and
     out.decode().startswith("sealed %d bytes from %s into %s under any one "
                             "of 2 keys: key cmk version " % (len(plain), p, s)),
     "seal --key KV --key HSM: version 2, any-of, two recipients with URI, "
     "version, key id and a 256-byte wrapped key", (rc, out, err))
t.ok(independent(conf, s, 0, plain) and independent(conf, s, 1, plain),
     "the independent reader unseals the any-of file through either "
     "recipient")
rc, out, err = run("--json", "unseal", s, "-o", s + ".u", conf=conf)
doc = json.loads(out) if rc == 0 else {}
t.ok(rc == 0 and rfile(s + ".u") == plain and doc.get("format") == 2 and
     doc.get("mode") == "any-of" and doc.get("recipient") == 1 and
     doc.get("token") == "kv" and len(doc.get("recipients", [])) == 2,
     "unseal --json: the first recipient (kv) used", (doc, err))

# Many files under both keys, then the vault key deleted.
many = os.path.join(work, "many")
os.makedirs(many)
NFILES = 20
data, sealed_many = {}, []
for i in range(NFILES):
    data[i] = os.urandom(i * 997)
    src = wfile(os.path.join(many, "p%04d" % i), data[i])
    dst = os.path.join(many, "s%04d" % i)
    rc, out, err = run("seal", "--key", KV, "--key", HSM, src, "-o", dst,
                       conf=conf)
    os.unlink(src)
    if rc == 0:
        sealed_many.append(dst)
t.ok(len(sealed_many) == 20 and all(os.path.exists(x) for x in sealed_many),
     "20 files sealed any-of under the vault key and the hsm key")
st, _, _ = emu.vault("DELETE", emu.url("kvemu") + "/keys/cmk")
t.eq(st, 200, "the vault key deleted in the emulator")
ok, errs = True, []
for i, x in enumerate(sealed_many):
    rc, out, err = run("unseal", x, "-o", x + ".u", conf=conf)
    if rc != 0 or rfile(x + ".u") != data[i] or "recipient 2 of 2" not in \
            out.decode() or "recipient 1 of 2, key cmk" not in err:
        ok = False
        errs.append((rc, out, err))
    else:
        os.unlink(x + ".u")
t.ok(ok, "the vault key deleted: every file still unseals through the hsm "
     "key, says so, and lists why the vault key failed", errs[:1])
rc, out, err = run("unseal", s, conf=conf)
t.ok(rc == 0 and out == plain and "unsealing through recipient 2 of 2, "
     "key kek version 02 on token local" in err,
     "to standard output: the data, and on standard error the recipient "
     "used", err)
hsm_unwrap(False)
rc, out, err = run("unseal", s, "-o", s + ".v", conf=conf)
t.ok(rc == 1 and "recipient 1 of 2, key cmk version" in err and
     "recipient 2 of 2, key kek version 02 on token local: key kek version "
     "02 on token local may not unwrap" in err and
     "no recipient can unwrap the data key" in err and
     not os.path.exists(s + ".v"),
     "neither key usable: exit 1, each recipient's error listed", err)
hsm_unwrap(True)

# ---- all-of ---------------------------------------------------------------
a = os.path.join(d, "all")
rc, out, err = run("seal", "--require-all", "--key", KV2, "--key", HSM, p,
                   "-o", a, conf=conf)
fa = Sealed2(rfile(a)) if rc == 0 else None
t.ok(rc == 0 and fa and fa.all_of and len(fa.recipients) == 2 and
     "under all of 2 keys" in out.decode(),
     "seal --require-all: version 2, all-of flag, two shares", (out, err))
t.ok(independent(conf, a, 0, plain), "the independent reader unseals the "
     "all-of file: the XOR of both shares")
rc, out, err = run("unseal", a, conf=conf)
t.ok(rc == 0 and out == plain, "all-of: unseals with both keys", err)
kv_enabled("cmk2", False)
rc, out, err = run("unseal", a, "-o", a + ".u", conf=conf)
t.ok(rc == 1 and "recipient 1 of 2, key cmk2" in err and
     "every recipient is needed" in err and not os.path.exists(a + ".u"),
     "all-of: the vault key disabled: does not unseal, says which", err)
kv_enabled("cmk2", True)
rc, out, err = run("unseal", a, conf=conf)
t.ok(rc == 0 and out == plain, "all-of: the vault key enabled again: "
     "unseals", err)
hsm_unwrap(False)
rc, out, err = run("unseal", a, "-o", a + ".u", conf=conf)
t.ok(rc == 1 and "recipient 2 of 2, key kek" in err and
     "may not unwrap" in err, "all-of: the hsm key revoked: does not "
     "unseal", err)
hsm_unwrap(True)
rc, out, err = run("unseal", a, conf=conf)
t.ok(rc == 0 and out == plain, "all-of: the hsm key restored: unseals", err)


# ---- check FILE|DIR ----------------------------------------------------------
rc, out, err = run("check", many, conf=conf)
lines = out.decode().splitlines()
t.ok(rc == 0 and lines[-1] == "%d sealed files, 0 that cannot be unsealed now"
     % NFILES and "%s: PASS: 1 of 2 keys can unwrap the data key (any one "
     "key unseals)" % sealed_many[0] in lines and
     "  key kek version 02 on token local: can unwrap" in lines and
     any(x.startswith("  key cmk version ") and ": cannot: " in x
         for x in lines), "check DIR: per file, which keys can unseal it now "
     "(the deleted vault key cannot)", (out, err))
kv_enabled("cmk2", False)
rc, out, err = run("--json", "check", a, conf=conf)
doc = json.loads(out) if out else {}
fd = doc.get("files", [{}])[0]
t.ok(rc == 1 and doc.get("result") == "FAIL" and fd.get("mode") == "all-of" and
     fd.get("unsealable") is False and
     [r["can_unwrap"] for r in fd.get("recipients", [])] == [False, True] and
     "disabled" in (fd["recipients"][0]["error"] or ""),
     "check --json FILE: an all-of file with one key disabled cannot be "
     "unsealed; which key, and why", (doc, err))
kv_enabled("cmk2", True)

# ---- rewrap --add-key / --remove-key on many files ---------------------------
emu.admin("POST", "vaults/kvemu/keys", {"name": "cmk3"})
KV3 = "pkcs11:token=kv;object=cmk3"
R = os.path.join(work, "rw")
os.makedirs(R)
one = os.path.join(R, "f0000")
pr = os.urandom(SEG + 5)
rc, out, err = run("seal", "--key", HSM, wfile(os.path.join(work, "pr"), pr),
                   "-o", one, conf=conf)
t.eq(rc, 0, "a file sealed under the hsm key alone (version 1)")
v1 = rfile(one)
NRW = 1000
for i in range(1, NRW):
    wfile(os.path.join(R, "f%04d" % i), v1)
rc, out, err = run("rewrap", "--remove-key", "kek", one, conf=conf)
t.ok(rc == 1 and "kek is the only key of the file: removing it would leave "
     "no way to unseal it (refused)" in err and rfile(one) == v1,
     "rewrap --remove-key of a file's only key: refused, file unchanged", err)
rc, out, err = run("rewrap", "--add-key", KV3, "--to", KV2, R, conf=conf)
t.ok(rc == 2 and "give --to, or --add-key" in err, "--to with --add-key: "
     "exit 2", err)
rc, out, err = run("rewrap", "--add-key", KV3, R, conf=conf)
hs = [Sealed2(rfile(os.path.join(R, "f%04d" % i))) for i in range(NRW)]
t.ok(rc == 0 and out.decode().strip() == "rewrapped %d files, skipped 0 that "
     "have %s, failed 0" % (NRW, KV3) and
     all([r["uri"] for r in h.recipients] == [HSM, KV3] and
         h.body == hs[0].body and not h.all_of for h in hs) and
     v1.endswith(hs[0].body), "rewrap --add-key on %d version 1 files: "
     "version 2, the hsm key and the vault key, the segments unchanged" % NRW,
     (out, err))
t.ok(independent(conf, one, 1, pr), "the independent reader unseals a "
     "rewrapped file through the added key")
rc, out, err = run("rewrap", "--add-key", KV3, one, conf=conf)
t.ok(rc == 0 and out.decode().startswith("rewrapped 0 files, skipped 1"),
     "a second --add-key skips the file", out)

# SIGKILL in the middle of --remove-key over the batch.
env = dict(os.environ, CMKP11_CONF=conf)
pk = subprocess.Popen([TOOL, "--module", MODULE, "rewrap", "--remove-key",
                       HSM, R], env=env, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
deadline = time.time() + 120
while time.time() < deadline and pk.poll() is None:
    if Sealed2(rfile(os.path.join(R, "f0050"))).recipients[0]["uri"] == KV3:
        break
    time.sleep(0.005)
# Killed as soon as the 51st file (in name order) is done.
pk.send_signal(signal.SIGKILL)
pk.wait()
states = []
for i in range(NRW):
    h = Sealed2(rfile(os.path.join(R, "f%04d" % i)))
    states.append(tuple(r["uri"] for r in h.recipients))
done = states.count((KV3,))
t.ok(0 < done < NRW and done + states.count((HSM, KV3)) == NRW,
     "SIGKILL during rewrap --remove-key: %d files done, the others as they "
     "were, none in between" % done, set(states))
rc, out, err = run("check", R, conf=conf)
t.ok(rc == 0 and out.decode().splitlines()[-1] == "%d sealed files, 0 that "
     "cannot be unsealed now" % NRW and not [
         n for n in os.listdir(R) if ".cmkp11-tmp-" in n],
     "after the SIGKILL every file can still be unsealed (check), no "
     "temporary file left", out[-300:])
rc, out, err = run("rewrap", "--remove-key", HSM, R, conf=conf)
t.ok(rc == 0 and out.decode().strip() == "rewrapped %d files, skipped %d "
     "without %s, failed 0" % (NRW - done, done, HSM),
     "rewrap --remove-key again: finishes the rest, skips the done", out)
rc, out, err = run("unseal", one, conf=conf)
t.ok(rc == 0 and out == pr, "the file unseals through the vault key", err)

# The last usable key is never removed.
rc, out, err = run("rewrap", "--add-key", HSM, one, conf=conf)
t.ok(rc == 0, "the hsm key added back", err)
before = rfile(one)
kv_enabled("cmk3", False)
rc, out, err = run("rewrap", "--remove-key", HSM, one, conf=conf)
t.ok(rc == 1 and "no key but %s can unseal the file now: removing it would "
     "leave no way to unseal it (refused)" % HSM in err and
     "recipient 1 of 2, key cmk3" in err and rfile(one) == before,
     "removing the hsm key while the vault key is disabled: refused (the "
     "last usable key), the file unchanged", err)
rc, out, err = run("rewrap", "--remove-key", "cmk3", one, conf=conf)
t.ok(rc == 0 and [r["uri"] for r in Sealed2(rfile(one)).recipients] == [HSM],
     "removing the disabled vault key instead (by name): done", err)
kv_enabled("cmk3", True)

# All-of: a key added gets a new share; every key is needed.
rc, out, err = run("rewrap", "--add-key", KV3, a, conf=conf)
fa2 = Sealed2(rfile(a))
t.ok(rc == 0 and fa2.all_of and len(fa2.recipients) == 3 and
     fa2.body == fa.body and independent(conf, a, 0, plain),
     "all-of + --add-key: three shares, the segments unchanged; the "
     "independent reader XORs them", err)
kv_enabled("cmk3", False)
rc, out, err = run("unseal", a, "-o", a + ".u", conf=conf)
t.ok(rc == 1 and "recipient 3 of 3, key cmk3" in err, "all-of: the added "
     "key disabled stops unsealing", err)
kv_enabled("cmk3", True)
rc, out, err = run("rewrap", "--remove-key", KV2, a, conf=conf)
rc2, out2, err2 = run("unseal", a, conf=conf)
t.ok(rc == 0 and len(Sealed2(rfile(a)).recipients) == 2 and rc2 == 0 and
     out2 == plain, "all-of --remove-key: new shares for the two left; it "
     "unseals", (err, err2))
rc, out, err = run("rewrap", a, conf=conf)
t.ok(rc == 0 and out.decode().startswith("rewrapped 0 files, skipped 1"),
     "rewrap of an all-of file whose keys are current: skipped", out)

# ---- rotation: rewrap moves each key of a file to its current version -------
rc, out, err = run("--json", "rotate", "local", "kek", conf=conf)
newv = json.loads(out)["new"]["version"] if rc == 0 else None
rc, out, err = run("rewrap", one, a, conf=conf)
h1, h2 = Sealed2(rfile(one)), Sealed2(rfile(a))
t.ok(rc == 0 and newv and newv != "02" and
     out.decode().startswith("rewrapped 2 files, skipped 0") and
     h1.recipients[0]["version"] == newv and
     h2.recipients[0]["version"] == newv and h2.all_of and
     h2.recipients[1]["version"] == fa2.recipients[2]["version"],
     "after rotate: rewrap moves the hsm key of an any-of and of an all-of "
     "file to the new version", (out, err))
rc, out, err = run("unseal", a, conf=conf)
rc2, out2, err2 = run("unseal", one, conf=conf)
t.ok(rc == 0 and out == plain and rc2 == 0 and out2 == pr,
     "both unseal under the new version", (err, err2))
rc, out, err = run("rewrap", one, a, conf=conf)
t.ok(rc == 0 and out.decode().startswith("rewrapped 0 files, skipped 2"),
     "a second rewrap skips both", out)

# A key name that two keys of a file share.
emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})
rc, out, err = run("rewrap", "--add-key", "pkcs11:token=kv;object=kek", one,
                   conf=conf)
before = rfile(one)
rc2, out2, err2 = run("rewrap", "--remove-key", "kek", one, conf=conf)
t.ok(rc == 0 and rc2 == 1 and "'kek' names several keys of the file: give "
     "the URI of one" in err2 and rfile(one) == before,
     "--remove-key by a name two keys share: refused, give the URI", err2)
rc, out, err = run("rewrap", "--remove-key", "pkcs11:token=kv;object=kek",
                   one, conf=conf)
t.ok(rc == 0 and [r["uri"] for r in Sealed2(rfile(one)).recipients] == [HSM],
     "--remove-key by URI: that one removed", err)

emu.stop()
shutil.rmtree(work, ignore_errors=True)
