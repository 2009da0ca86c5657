#!/usr/bin/python3
"""Token secret keys on a keyvault token (docs/keyvault.md, "Token secret
keys"): AES keys with CKA_TOKEN true kept in the token's state directory,
wrapped under the CMK. pkcs11-tool --keygen makes one; another process finds
it by label and AES-GCM round-trips; PyKCS11 makes one with a known value
and the value never appears in the state file; the key follows the CMK's
life cycle (disabled: operations stop within refresh-interval; enabled
again: they work); rotate, rewrap and disable the old version: the key
still works and its file names the new version; two processes create and
use keys at once; a writer killed between write and rename leaves no
broken file, and its temporary file is removed later (a live writer's
never); a corrupted file is named in the log and skipped; key wrap,
CBC-PAD and HMAC with token keys; cmkp11-tool list, rewrap --token and
retire; the Kubernetes-KMS-v2-shaped consumer (k8s-kms.c) on this token."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

from kvtest import (Tap, KvSetup, PyKCS11, MODULE, find, ckr, skey_file,
                    skey_make_extractable, KV_CHILD_SESSION)

P = PyKCS11
REFRESH = 2
t = Tap()
s = KvSetup()
emu = s.emu
state = os.path.join(s.dir, "secret-keys")
audit = os.path.join(s.dir, "audit.log")
s.write_conf([s.token("kv", state_dir=state),
              s.token("kv2", state_dir=os.path.join(s.dir, "secret-keys2")),
              s.token("kv3", state_dir=os.path.join(s.dir, "secret-keys3"),
                      wrapping_key="other")],
             refresh=REFRESH, audit_log=audit)
s.create_key("kek")
s.load()
env = dict(os.environ, CMKP11_CONF=s.conf)

CKA_CMK_KEY_NAME = P.CKA_VENDOR_DEFINED | 0x434D0003
CKA_CMK_VERSION = P.CKA_VENDOR_DEFINED | 0x434D0004
CKA_CMK_WRAP_VERSION = P.CKA_VENDOR_DEFINED | 0x434D0012


def is_(got, want, desc, diag=""):
    return t.ok(got == want, desc, "got:  %r\nwant: %r\n%s" % (got, want, diag))


def slot_of(label):
    for slot in s.lib.getSlotList(tokenPresent=True):
        if s.lib.getTokenInfo(slot).label.strip() == label:
            return slot
    raise RuntimeError(label)


def files(d=state):
    return sorted(glob.glob(os.path.join(d, "*.json")))


# A helper process: finds the AES key LABEL on token kv and prints the
# CKR of an AES-GCM round trip (0 when the plaintext comes back).
CHILD = r'''
import os, sys, PyKCS11 as P
lib = P.PyKCS11Lib(); lib.load(sys.argv[1])
slot = [x for x in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(x).label.strip() == sys.argv[2]][0]
ses = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
def run(label):
    keys = ses.findObjects([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                            (P.CKA_LABEL, label)])
    if len(keys) != 1:
        return "found %d" % len(keys)
    iv = os.urandom(12)
    m = P.AES_GCM_Mechanism(iv, b"aad", 128)
    try:
        ct = bytes(ses.encrypt(keys[0], b"kms v2 payload", m))
        pt = bytes(ses.decrypt(keys[0], ct, m))
    except P.PyKCS11Error as e:
        return "%d" % e.value
    return "0" if pt == b"kms v2 payload" and len(ct) == 14 + 16 else "-1"
for label in sys.argv[3:]:
    print(run(label), flush=True)
'''


def child(token, *labels):
    r = subprocess.run([sys.executable, "-c", CHILD, MODULE, token] +
                       list(labels), env=env, capture_output=True, text=True,
                       timeout=120)
    return r.stdout.splitlines(), r.stderr


# 1. pkcs11-tool --keygen on the keyvault token.
ses = s.session("kv")
find(ses, P.CKO_PRIVATE_KEY, "kek")  # the CMK is there
r = subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label", "kv",
                    "--keygen", "--key-type", "aes:32", "--label", "k8s-kek"],
                   env=env, capture_output=True, text=True, timeout=120)
t.ok(r.returncode == 0, "pkcs11-tool --keygen --key-type aes:32 on keyvault",
     r.stdout + r.stderr)
fl = files()
is_(len(fl), 1, "one file in the state directory")
st = os.stat(fl[0]) if fl else None
t.ok(st is not None and (st.st_mode & 0o777) == 0o600,
     "the file has mode 0600")
t.ok((os.stat(state).st_mode & 0o777) == 0o700, "the directory has mode 0700")
doc = json.load(open(fl[0])) if fl else {}
is_(doc.get("wrapping-key"), "kek", "the file names the wrapping key")
is_(doc.get("format"), "cmkp11-secret-key", "the file's format")

# 2. Another process finds it by label and AES-GCM round-trips.
out, err = child("kv", "k8s-kek")
is_(out, ["0"], "a new process finds k8s-kek by label; AES-GCM round-trips",
      err)

# 3. PyKCS11: a known value through C_CreateObject; never in clear on disk.
value = os.urandom(32)
tmpl = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
        (P.CKA_TOKEN, True), (P.CKA_LABEL, "known"), (P.CKA_VALUE, value),
        (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True),
        (P.CKA_SENSITIVE, False), (P.CKA_EXTRACTABLE, True)]
h = ses.createObject(tmpl)
is_(len(files()), 2, "C_CreateObject with CKA_TOKEN: a second file")
blob = b"".join(open(f, "rb").read() for f in files())
t.ok(value not in blob and value.hex().encode() not in blob and
     value.hex().upper().encode() not in blob,
     "the value is not in the state files in clear (nor in hex)")
got = bytes(ses.getAttributeValue(h, [P.CKA_VALUE])[0])
t.ok(got == value, "a non-sensitive extractable token key's value reads back")
tok = ses.getAttributeValue(h, [P.CKA_TOKEN])[0]
t.ok(bool(tok), "CKA_TOKEN is true")
time.sleep(REFRESH + 0.3)  # another process's key: seen within refresh
gen = find(ses, P.CKO_SECRET_KEY, "k8s-kek")
is_(len(gen), 1, "this process finds the pkcs11-tool key too")
sens = ses.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                        (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                        (P.CKA_VALUE_LEN, 32), (P.CKA_LABEL, "sensitive"),
                        (P.CKA_SENSITIVE, True), (P.CKA_EXTRACTABLE, False),
                        (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True)])
# PyKCS11 answers None for CKR_ATTRIBUTE_SENSITIVE.
is_(ses.getAttributeValue(sens, [P.CKA_VALUE]), [None],
    "a sensitive token key's value is not returned")
a = ses.getAttributeValue(sens, [P.CKA_LOCAL, P.CKA_ALWAYS_SENSITIVE,
                                 P.CKA_NEVER_EXTRACTABLE, P.CKA_VALUE_LEN])
is_([bool(a[0]), bool(a[1]), bool(a[2]), a[3]], [True, True, True, 32],
    "a generated token key: local, always sensitive, never extractable, 32 bytes")
ses.destroyObject(sens)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
iv = os.urandom(12)
ct = bytes(ses.encrypt(h, b"hello", P.AES_GCM_Mechanism(iv, b"", 128)))
t.ok(AESGCM(value).decrypt(iv, ct, b"") == b"hello",
     "AES-GCM with the token key matches OpenSSL's with the known value")
out, err = child("kv", "known")
is_(out, ["0"], "a new process uses the imported key", err)

# 4. Read-only sessions make no token objects.
ro = s.session("kv", rw=False)
is_(ckr(ro.createObject, tmpl), P.CKR_SESSION_READ_ONLY,
      "a read-only session cannot make a token secret key")
ro.closeSession()

# 5. Destroy removes the file; another process no longer finds it.
tmp = ses.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                        (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                        (P.CKA_LABEL, "doomed"), (P.CKA_VALUE, os.urandom(16)),
                        (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True)])
is_(len(files()), 3, "a third key, a third file")
ses.destroyObject(tmp)
is_(len(files()), 2, "C_DestroyObject removes its file")
out, err = child("kv", "doomed")
is_(out, ["found 0"], "another process does not find a destroyed key", err)


# 6. The key follows its wrapping version: disabled, its operations stop
# within refresh-interval (CKR_KEY_FUNCTION_NOT_PERMITTED, in this process
# and in a new one); enabled again, they work.
TOOL = os.path.join(os.environ.get("top_builddir", "."), "cmkp11-tool")
GCM_NOT_PERMITTED = str(P.CKR_KEY_FUNCTION_NOT_PERMITTED)


def gcm(h):
    return ckr(ses.encrypt, h, b"x", P.AES_GCM_Mechanism(os.urandom(12), b"",
                                                          128))


def until(fn, want, limit):
    """Polls fn until it answers want or limit seconds pass; returns the
    last answer and the time it took."""
    start = time.monotonic()
    while True:
        got = fn()
        if got == want or time.monotonic() - start > limit:
            return got, time.monotonic() - start
        time.sleep(0.2)


def file_of(label):
    return skey_file(state, label)


v1 = file_of("known")[1]["wrapping-version"]
is_(gcm(h), 0, "AES-GCM works while the wrapping version is enabled")
emu.admin("PATCH", "vaults/kvemu/keys/kek", {"version": v1, "enabled": False})
got, took = until(lambda: gcm(h), P.CKR_KEY_FUNCTION_NOT_PERMITTED,
                  3 * REFRESH)
t.ok(got == P.CKR_KEY_FUNCTION_NOT_PERMITTED and took <= REFRESH + 1.5,
     "the CMK version disabled: AES-GCM stops within refresh-interval "
     "(CKR_KEY_FUNCTION_NOT_PERMITTED)", "got %r after %.1f s" % (got, took))
out, err = child("kv", "known")
is_(out, [GCM_NOT_PERMITTED], "a new process: CKR_KEY_FUNCTION_NOT_PERMITTED",
    err)
t.ok("secret key" in s.log_text() or "can no longer be used" in s.log_text(),
     "the log says why")
emu.admin("PATCH", "vaults/kvemu/keys/kek", {"version": v1, "enabled": True})
got, took = until(lambda: gcm(h), 0, 3 * REFRESH)
t.ok(got == 0 and took <= REFRESH + 1.5,
     "enabled again: AES-GCM works within refresh-interval",
     "got %r after %.1f s" % (got, took))
out, err = child("kv", "known")
is_(out, ["0"], "enabled again: a new process uses it", err)

# 7. Rotate, rewrap the token's secret keys, disable the old version: the
# keys still work, their files name the new version.
r = subprocess.run([TOOL, "--module", MODULE, "rotate", "kv", "kek"], env=env,
                   capture_output=True, text=True, timeout=120)
t.ok(r.returncode == 0, "cmkp11-tool rotate kv kek", r.stdout + r.stderr)
time.sleep(REFRESH + 0.3)
empty = os.path.join(s.dir, "no-sealed-files")
os.mkdir(empty)
r = subprocess.run([TOOL, "--module", MODULE, "retire", "--paths", empty,
                    "kv", "kek@" + v1], env=env, capture_output=True,
                   text=True, timeout=120)
t.ok(r.returncode == 3 and "token secret keys are wrapped under it" in
     r.stdout and "cmkp11-tool rewrap --token kv" in r.stdout,
     "cmkp11-tool retire refuses the old version while token secret keys "
     "are wrapped under it, and names the rewrap", r.stdout + r.stderr)
r = subprocess.run([TOOL, "--module", MODULE, "rewrap", "--token", "kv"], env=env,
                   capture_output=True, text=True, timeout=120)
t.ok(r.returncode == 0 and "2 rewrapped, 0 skipped, 0 failed" in r.stdout,
     "cmkp11-tool rewrap --token kv rewraps both secret keys",
     r.stdout + r.stderr)
v2 = file_of("known")[1]["wrapping-version"]
t.ok(v2 != v1 and file_of("k8s-kek")[1]["wrapping-version"] == v2,
     "both files name the new version", "%s %s" % (v1, v2))
r = subprocess.run([TOOL, "--module", MODULE, "rewrap", "--token", "kv"], env=env,
                   capture_output=True, text=True, timeout=120)
t.ok(r.returncode == 0 and "0 rewrapped, 2 skipped, 0 failed" in r.stdout,
     "a second rewrap skips them", r.stdout + r.stderr)
emu.admin("PATCH", "vaults/kvemu/keys/kek", {"version": v1, "enabled": False})
time.sleep(REFRESH + 0.3)
is_(gcm(h), 0, "the old version disabled: the rewrapped key still works here")
ct2 = bytes(ses.encrypt(h, b"same key", P.AES_GCM_Mechanism(iv, b"", 128)))
t.ok(AESGCM(value).decrypt(iv, ct2, b"") == b"same key",
     "the AES key did not change")
out, err = child("kv", "known", "k8s-kek")
is_(out, ["0", "0"], "a new process unwraps both under the new version", err)
r = subprocess.run([TOOL, "--module", MODULE, "--json", "list", "kv"], env=env,
                   capture_output=True, text=True, timeout=120)
try:
    sk = json.loads(r.stdout)["tokens"][0]["secret_keys"]
except (ValueError, KeyError, IndexError):
    sk = []
is_(sorted((k["label"], k["wrapping_key"], k["wrapping_version"],
            k["current"]) for k in sk),
    [("k8s-kek", "kek", v2, True), ("known", "kek", v2, True)],
    "cmkp11-tool list --json shows them with their wrapping key and version",
    r.stdout + r.stderr)
r = subprocess.run([TOOL, "--module", MODULE, "list", "kv"], env=env, capture_output=True,
                   text=True, timeout=120)
t.ok("secret keys:" in r.stdout and "k8s-kek" in r.stdout and v2 in r.stdout,
     "cmkp11-tool list shows them", r.stdout + r.stderr)

# 8. Two processes create and use keys at the same time.
MAKER = KV_CHILD_SESSION + r'''
bad = 0
for i in range(int(sys.argv[3])):
    h = ses.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                         (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                         (P.CKA_VALUE_LEN, 32), (P.CKA_ENCRYPT, True),
                         (P.CKA_DECRYPT, True),
                         (P.CKA_LABEL, "%s-%d" % (sys.argv[2], i))])
    m = P.AES_GCM_Mechanism(os.urandom(12), b"", 128)
    if bytes(ses.decrypt(h, ses.encrypt(h, b"data", m), m)) != b"data":
        bad += 1
print("done %d" % bad, flush=True)
'''
N = 6
procs = [subprocess.Popen([sys.executable, "-c", MAKER, MODULE, name, str(N)],
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
         for name in ("a", "b")]
outs = [p.communicate(timeout=300) for p in procs]
is_([o[0].strip() for o in outs], ["done 0", "done 0"],
    "two processes create %d keys each at once and use them" % N,
    "".join(o[1] for o in outs))
labels = ["%s-%d" % (n, i) for n in ("a", "b") for i in range(N)]
out, err = child("kv", *labels)
is_(out, ["0"] * len(labels), "a third process finds and uses all %d"
    % len(labels), err)
is_(len(files()), 2 + len(labels), "one file per key")

# 9. A writer killed between write and rename (CMKP11_TEST_STORE_PAUSE
# stops it there) leaves the old state: no key, or the key as it was; its
# temporary file is removed by a later listing once it is old enough.
KILLED = KV_CHILD_SESSION + r'''
if sys.argv[2] == "create":
    ses.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                     (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                     (P.CKA_VALUE_LEN, 16), (P.CKA_LABEL, "killed")])
else:
    h = ses.findObjects([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                         (P.CKA_LABEL, "known")])[0]
    ses.setAttributeValue(h, [(P.CKA_VENDOR_DEFINED | 0x434D0012, b"")])
print("not stopped", flush=True)
'''


def stopped(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def pause_writer(what):
    """A writer stopped between write and rename: the process, whether it
    stopped there, its temporary files."""
    p = subprocess.Popen([sys.executable, "-c", KILLED, MODULE, what],
                         env=dict(env, CMKP11_TEST_STORE_PAUSE="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not stopped(p.pid) and p.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    return p, stopped(p.pid), glob.glob(os.path.join(state,
                                                     ".*.tmp.%d.*" % p.pid))


def kill_paused(what):
    before = {f: open(f, "rb").read() for f in files()}
    p, paused, tmps = pause_writer(what)
    p.kill()
    p.communicate()
    after = {f: open(f, "rb").read() for f in files()}
    return paused, tmps, before == after


# Rotate first, so that a rewrap has a version to move to.
r = subprocess.run([TOOL, "--module", MODULE, "rotate", "kv", "kek"], env=env,
                   capture_output=True, text=True, timeout=120)
t.ok(r.returncode == 0, "rotate again", r.stdout + r.stderr)
time.sleep(REFRESH + 0.3)
leftovers = []
for what in ("create", "rewrap"):
    paused, tmps, same = kill_paused(what)
    t.ok(paused and len(tmps) == 1,
         "%s: the writer stops between write and rename, its temporary file "
         "written" % what, "paused %s, %r" % (paused, tmps))
    t.ok(same, "%s: SIGKILL there: every key file as it was" % what)
    leftovers += tmps
out, err = child("kv", "killed", "known", "a-0")
is_(out, ["found 0", "0", "0"],
    "a new process: no half-made key, the others work (temporary files "
    "ignored)", err)
# Leftovers are removed once their writer is no live process of this host
# and they are older than 10 minutes (a writer of another host sharing
# the directory is not seen); a live writer's file never.
t.ok(len(leftovers) == 2 and all(os.path.exists(f) for f in leftovers),
     "a leftover younger than 10 minutes stays after a listing", leftovers)
# The first as earlier releases name them: .ID.json.tmp.PID.
if leftovers and leftovers[0].count(".tmp.") == 1:
    old_form = leftovers[0].rsplit(".", 1)[0]
    os.rename(leftovers[0], old_form)
    leftovers[0] = old_form
t.ok(leftovers and leftovers[0].split(".tmp.")[1].isdigit(),
     "one leftover renamed to the earlier form .ID.json.tmp.PID", leftovers)
hour_ago = time.time() - 3600
for f in leftovers:
    os.utime(f, (hour_ago, hour_ago))
live, paused, live_tmps = pause_writer("create")
for f in live_tmps:
    os.utime(f, (hour_ago, hour_ago))
out, err = child("kv", "known")
is_(out, ["0"], "a new process lists and uses the keys", err)
is_([f for f in leftovers if os.path.exists(f)], [],
    "the listing removed the leftovers an hour old whose writers are gone, "
    "in either form")
log = s.log_text()
t.ok(all("removed %s, the temporary file of process %s" %
         (f, f.split(".tmp.")[1].split(".")[0]) in log for f in leftovers),
     "the log names each removed file and its process")
t.ok(paused and len(live_tmps) == 1 and os.path.exists(live_tmps[0]),
     "a stopped, live writer's temporary file an hour old stays",
     "paused %s, %r" % (paused, live_tmps))
live.kill()
live.communicate()
out, err = child("kv", "known")
t.ok(out == ["0"] and live_tmps and not os.path.exists(live_tmps[0]),
     "its writer killed, the next listing removes it", err)

# 10. A truncated, a corrupted and an altered file are named in the log
# and skipped; the other keys work.
import shutil
fk, dk = file_of("known")
text = open(fk).read()
bad_ids = ["%032x" % n for n in (1, 2, 3, 4)]
paths = [os.path.join(state, i + ".json") for i in bad_ids]
open(paths[0], "w").write(text.replace(dk["id"], bad_ids[0])[:len(text) // 2])
open(paths[1], "w").write("\x00garbage{")
open(paths[2], "w").write(text.replace(dk["id"], bad_ids[2]))
os.chmod(paths[2], 0o644)  # others may read it: refused
for p in paths[:2]:
    os.chmod(p, 0o600)
# An attacker who may write the file makes the sensitive key extractable.
sens_h = ses.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                          (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                          (P.CKA_VALUE_LEN, 32), (P.CKA_LABEL, "victim"),
                          (P.CKA_SENSITIVE, True), (P.CKA_EXTRACTABLE, False),
                          (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True)])
fv, dv = file_of("victim")
skey_make_extractable(fv, dv)
READ = r'''
import sys, PyKCS11 as P
lib = P.PyKCS11Lib(); lib.load(sys.argv[1])
slot = [x for x in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(x).label.strip() == "kv"][0]
ses = lib.openSession(slot, P.CKF_SERIAL_SESSION)
tmpl = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_LABEL, "victim")]
h = ses.findObjects(tmpl)
ext = bool(ses.getAttributeValue(h[0], [P.CKA_EXTRACTABLE])[0]) if h else "-"
print(len(h), ext, ses.getAttributeValue(h[0], [P.CKA_VALUE])[0] if h else "-",
      len(ses.findObjects(tmpl)))
'''
r = subprocess.run([sys.executable, "-c", READ, MODULE], env=env,
                   capture_output=True, text=True, timeout=120)
is_(r.stdout.split(), ["1", "True", "None", "0"],
    "an altered CKA_EXTRACTABLE: listed with it until first use (the MAC "
    "needs the unwrap); the value is not returned; then no longer listed",
    r.stderr)
out, err = child("kv", "known", "k8s-kek", "b-5", "victim")
is_(out, ["0", "0", "0", str(P.CKR_KEY_HANDLE_INVALID)],
    "the other keys work; the altered one refuses (CKR_KEY_HANDLE_INVALID)",
    err)
log = s.log_text()
for i, why in zip(bad_ids[:3], ("not JSON", "not JSON", "mode 0600")):
    t.ok(("%s.json skipped" % i) in log and why in log,
         "the log names %s.json (%s)" % (i, why))
t.ok(os.path.basename(fv) + " skipped: its integrity check failed" in log,
     "the log names the altered file")


def state_row(token, key):
    """cmkp11-tool check's row on the token's secret key files."""
    r = subprocess.run([TOOL, "--module", MODULE, "--json", "check", token,
                        key], env=env, capture_output=True, text=True,
                       timeout=300)
    try:
        rows = json.loads(r.stdout)["keys"][0]["checks"]
    except (ValueError, KeyError, IndexError):
        rows = []
    return ([c for c in rows if c["name"] == "state-files"] or [{}])[0], \
        r.stdout + r.stderr


# cmkp11-tool check (a new process) reads the directory and checks every
# listed key's MAC: the altered file shows without any use of it before.
row, diag = state_row("kv", "kek")
names = [os.path.basename(p) for p in paths[:3]] + [os.path.basename(fv)]
is_(row.get("result"), "FAIL", "cmkp11-tool check: the state files row fails",
    diag)
t.ok(row.get("detail", "").startswith("4 files of %s skipped: " % state) and
     all(n in row.get("detail", "") for n in names) and
     "%s (its integrity check failed (attributes or value altered))" %
     os.path.basename(fv) in row.get("detail", "") and
     "%s (not JSON (truncated?))" % names[0] in row.get("detail", "") and
     "mode 0600" in row.get("detail", ""),
     "it names the directory, each skipped file and why, the altered one "
     "included", diag)
t.ok(row.get("remedy", "").startswith("restore each file named from a "
                                      "backup, or remove it"),
     "and the remedy", diag)
for p in paths[:3]:
    os.remove(p)

# 11. Key wrap with a token key (RFC 5649), CBC-PAD, and the token key
# itself wrapped as the specification allows (extractable only).
kwp = P.Mechanism(P.CKM_AES_KEY_WRAP_PAD, None)
dek = ses.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                       (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_VALUE_LEN, 32),
                       (P.CKA_EXTRACTABLE, True), (P.CKA_SENSITIVE, False)])
kek_h = ses.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                          (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                          (P.CKA_LABEL, "kw"), (P.CKA_VALUE, value),
                          (P.CKA_WRAP, True), (P.CKA_UNWRAP, True),
                          (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True),
                          (P.CKA_EXTRACTABLE, False)])
wrapped = bytes(ses.wrapKey(kek_h, dek, kwp))
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
dek_value = bytes(ses.getAttributeValue(dek, [P.CKA_VALUE])[0])
t.ok(aes_key_unwrap_with_padding(value, wrapped) == dek_value,
     "a token key wraps a data key (CKM_AES_KEY_WRAP_PAD), as OpenSSL does")
back = ses.unwrapKey(kek_h, wrapped, [(P.CKA_CLASS, P.CKO_SECRET_KEY),
                                      (P.CKA_KEY_TYPE, P.CKK_AES),
                                      (P.CKA_EXTRACTABLE, True),
                                      (P.CKA_SENSITIVE, False)], kwp)
t.ok(bytes(ses.getAttributeValue(back, [P.CKA_VALUE])[0]) == dek_value,
     "and unwraps it")
cbc_iv = os.urandom(16)
ct = bytes(ses.encrypt(kek_h, b"cbc data", P.Mechanism(P.CKM_AES_CBC_PAD,
                                                       cbc_iv)))
t.ok(bytes(ses.decrypt(kek_h, ct, P.Mechanism(P.CKM_AES_CBC_PAD, cbc_iv))) ==
     b"cbc data", "AES-CBC-PAD round-trips")
pub = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
from kvtest import OAEP256
is_(ckr(ses.wrapKey, pub, kek_h, OAEP256), P.CKR_KEY_UNEXTRACTABLE,
    "an unextractable token key is not wrapped: CKR_KEY_UNEXTRACTABLE")
blob2 = bytes(ses.wrapKey(pub, h, OAEP256))
t.ok(len(blob2) == 256, "an extractable token key is wrapped under the CMK")
is_(ckr(ses.generateKey, [(P.CKA_CLASS, P.CKO_SECRET_KEY),
                          (P.CKA_KEY_TYPE, P.CKK_GENERIC_SECRET),
                          (P.CKA_TOKEN, True), (P.CKA_VALUE_LEN, 256)],
        P.Mechanism(P.CKM_GENERIC_SECRET_KEY_GEN, None)),
    P.CKR_ATTRIBUTE_VALUE_INVALID,
    "a 256-byte token secret does not fit one OAEP block: "
    "CKR_ATTRIBUTE_VALUE_INVALID")
g = ses.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                     (P.CKA_KEY_TYPE, P.CKK_GENERIC_SECRET),
                     (P.CKA_TOKEN, True), (P.CKA_VALUE_LEN, 64),
                     (P.CKA_LABEL, "hmac")],
                    P.Mechanism(P.CKM_GENERIC_SECRET_KEY_GEN, None))
is_(ses.getAttributeValue(g, [P.CKA_KEY_TYPE, P.CKA_VALUE_LEN]),
    [P.CKK_GENERIC_SECRET, 64], "a 64-byte generic secret token key")

# 12. wrapping-key: needed once the token has two keys.
s.create_key("other")
time.sleep(REFRESH + 0.3)
ses2 = s.session("kv2")
is_(ckr(ses2.createObject, tmpl), P.CKR_TEMPLATE_INCONSISTENT,
    "two keys and no wrapping-key: CKR_TEMPLATE_INCONSISTENT")
t.ok("set wrapping-key = NAME" in s.log_text(), "the log names the option")
ses3 = s.session("kv3")
ses3.createObject(tmpl)
f3 = glob.glob(os.path.join(s.dir, "secret-keys3", "*.json"))
is_([json.load(open(f))["wrapping-key"] for f in f3], ["other"],
    "wrapping-key = other: the key is wrapped under other")

# 13. A copied state directory serves the same keys on another token (host)
# that may use the CMK; every use is audited under the wrapping key.
fk, _ = file_of("known")
state2 = os.path.join(s.dir, "secret-keys2")
os.makedirs(state2, mode=0o700, exist_ok=True)
t.ok(glob.glob(os.path.join(state2, "*.json")) == [], "kv2 has no keys")
shutil.copy2(fk, state2)
out, err = child("kv2", "known")
is_(out, ["0"], "a copied key file works on another token", err)
recs = [json.loads(line) for line in open(audit)]
gcm_recs = [r for r in recs if r.get("mechanism") == "CKM_AES_GCM"]
t.ok(len(gcm_recs) > 0 and all(r["key"] == "kek" for r in gcm_recs) and
     any(r["version"] == v2 and r["result"] == "CKR_OK" and
         r["operation"] == "encrypt" for r in gcm_recs) and
     any(r["result"] == "CKR_KEY_FUNCTION_NOT_PERMITTED" for r in gcm_recs),
     "AES-GCM with token keys is audited: wrapping key, version, result",
     "%d records" % len(gcm_recs))
is_(ses.getAttributeValue(h, [P.CKA_VENDOR_DEFINED | 0x434D0011]), [None],
    "a token secret key has no rotation policy (CKR_ATTRIBUTE_TYPE_INVALID)")

# 14. HMAC-SHA256 with a generic secret token key.
import hashlib
import hmac as pyhmac
secret = os.urandom(48)
hk = ses3.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                       (P.CKA_KEY_TYPE, P.CKK_GENERIC_SECRET),
                       (P.CKA_TOKEN, True), (P.CKA_LABEL, "hmac-key"),
                       (P.CKA_VALUE, secret), (P.CKA_SIGN, True),
                       (P.CKA_VERIFY, True)])
hm = P.Mechanism(P.CKM_SHA256_HMAC, None)
mac = bytes(ses3.sign(hk, b"message", hm))
t.ok(mac == pyhmac.new(secret, b"message", hashlib.sha256).digest(),
     "CKM_SHA256_HMAC with a token generic secret: RFC 2104's value")
t.ok(ses3.verify(hk, b"message", mac, hm), "C_Verify accepts it")
# PyKCS11 answers False for CKR_SIGNATURE_INVALID.
t.ok(ses3.verify(hk, b"message", bytes([mac[0] ^ 1]) + mac[1:], hm) is False,
     "a changed MAC: CKR_SIGNATURE_INVALID")
row, diag = state_row("kv3", "other")
is_((row.get("result"), row.get("detail")),
    ("PASS", "no file of the state directory skipped"),
    "cmkp11-tool check on kv3: the state files row passes",
    diag)
state3 = os.path.join(s.dir, "secret-keys3")
os.chmod(state3, 0o770)
row, diag = state_row("kv3", "other")
os.chmod(state3, 0o700)
is_((row.get("result"), row.get("detail")),
    ("FAIL", "the state directory %s is not read: writable by group or "
     "others" % state3),
    "a state directory group may write: the row fails and says why", diag)
t.ok(row.get("remedy", "").startswith("make the state directory (state-dir) "
                                      "a directory of the module's user"),
     "and the remedy", diag)

# 15. The Kubernetes-KMS-v2-shaped consumer (tests/integration/k8s-kms.c)
# on the keyvault token: k8s-kek (made by pkcs11-tool in part 1, rewrapped
# since) found by label, 200 AES-GCM rounds with random nonces and AAD.
KMS = os.path.join(os.environ.get("top_builddir", "."), "tests",
                   "integration", "k8s-kms")
r = subprocess.run([KMS, "--module", MODULE, "--token", "kv", "--label",
                    "k8s-kek", "--pin", "any", "--rounds", "200"], env=env,
                   capture_output=True, text=True, timeout=300)
t.ok(r.returncode == 0 and "k8s-kms: 200 rounds, 0 failures" in r.stdout,
     "the KMS v2-shaped consumer: 200 AES-GCM rounds with the token key",
     r.stdout + r.stderr)
r = subprocess.run([KMS, "--module", MODULE, "--token", "kv", "--label",
                    "k8s-other", "--pin", "any", "--rounds", "1"], env=env,
                   capture_output=True, text=True, timeout=300)
t.ok(r.returncode == 2 and "no AES key labelled k8s-other" in
     r.stdout + r.stderr, "another label finds no key", r.stdout + r.stderr)
