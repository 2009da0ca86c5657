#!/usr/bin/python3
"""The whole CMK life cycle, on each back end, through cmkp11-tool:
seal files; rotate, and new seals use the new version; old files still
unseal; rewrap; disable the old version, and every file still unseals;
revoke access, and unsealing fails with the documented error within the
refresh interval; restore access, and it works again."""
import os
import struct
import subprocess
import time

from kvtest import (Tap, PyKCS11, emulator_config, write_private, APP_SECRET,
                    conf_text, hsm_token, emu_token)
from taplib import Emu

P = PyKCS11
t = Tap()
srcdir = os.environ.get("top_srcdir", ".")
builddir = os.environ.get("top_builddir", ".")
tool = os.path.join(builddir, "cmkp11-tool")
module = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
REFRESH = 2

emu = Emu(emulator_config())
work = emu.dir
hsmdir = os.path.join(work, "softhsm")
subprocess.run(["sh", os.path.join(srcdir, "tests", "softhsm-init.sh"), hsmdir],
               check=True, stdout=subprocess.DEVNULL)
os.environ["SOFTHSM2_CONF"] = os.path.join(hsmdir, "softhsm2.conf")
write_private(os.path.join(work, "pin"), "1234\n")
secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")
emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})
conf = conf_text([hsm_token("local", pin_file=os.path.join(work, "pin")),
                  emu_token(emu, "kv", secret)],
                 log_level="info", log_file=os.path.join(work, "cmkp11.log"),
                 refresh_interval=REFRESH)
env = dict(os.environ,
           CMKP11_CONF=write_private(os.path.join(work, "cmkp11.conf"), conf))


def run(*args):
    return subprocess.run([tool, "--module", module] + list(args), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=120)


def header_version(path):
    """The key version a sealed file names (docs/seal-format.md)."""
    with open(path, "rb") as f:
        data = f.read(4096)
    pos = 24
    fields = []
    for _ in range(5):
        (n,) = struct.unpack(">H", data[pos:pos + 2])
        fields.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    return fields[2].decode(), fields[3]


def unseals(path, original):
    out = path + ".out"
    r = run("unseal", path, "-o", out)
    ok = r.returncode == 0 and open(out, "rb").read() == original
    if os.path.exists(out):
        os.remove(out)
    return ok, r


def all_unseal(files):
    return all(unseals(p, data)[0] for p, data in files)


SET_USAGE = """
import sys
import PyKCS11 as P
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [x for x in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(x).label.strip() == "cmk"][0]
s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
s.login("1234")
k = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                   (P.CKA_ID, bytes.fromhex(sys.argv[2]))])[0]
on = sys.argv[3] == "1"
s.setAttributeValue(k, [(P.CKA_UNWRAP, on), (P.CKA_DECRYPT, on)])
s.logout()
"""


def softhsm_usage(key_id, enabled):
    """Sets a version's usage flags in the lower token itself (in a process
    of its own, so that SoftHSM's OpenSSL stays out of this one)."""
    subprocess.run(["/usr/bin/python3", "-c", SET_USAGE, SOFTHSM, key_id.hex(),
                    "1" if enabled else "0"], check=True, env=env)


for tok in ("local", "kv"):
    d = os.path.join(work, tok)
    os.mkdir(d)
    # 1. Seal files.
    files = []
    for i, size in enumerate((0, 1000, 200000)):
        src = os.path.join(d, "data%d" % i)
        data = os.urandom(size)
        open(src, "wb").write(data)
        r = run("seal", "--token", tok, "--key", "kek", src, "-o", src + ".sealed")
        files.append((src + ".sealed", data))
    t.ok(all(os.path.exists(p) for p, _ in files), "%s: 1. three files sealed" % tok)
    v1, id1 = header_version(files[0][0])

    # 2. Rotate; new seals use the new version.
    r = run("rotate", tok, "kek")
    t.ok(r.returncode == 0, "%s: 2. rotate" % tok, r.stderr.decode())
    src = os.path.join(d, "new")
    data = os.urandom(5000)
    open(src, "wb").write(data)
    run("seal", "--token", tok, "--key", "kek", src, "-o", src + ".sealed")
    v2, id2 = header_version(src + ".sealed")
    t.ok(v2 != v1, "%s:    a new seal names the new version (%s, was %s)"
         % (tok, v2, v1))

    # 3. Old files still unseal.
    t.ok(all_unseal(files), "%s: 3. files sealed under the old version unseal"
         % tok)
    files.append((src + ".sealed", data))

    # 4. Rewrap.
    r = run("rewrap", *[p for p, _ in files[:3]])
    t.ok(r.returncode == 0, "%s: 4. rewrap" % tok, r.stderr.decode())
    t.ok(all(header_version(p)[0] == v2 for p, _ in files),
         "%s:    every file is now under the new version" % tok)

    # 5. Disable the old version; every file still unseals.
    if tok == "kv":
        emu.admin("PATCH", "vaults/kvemu/keys/kek", {"version": v1,
                                                     "enabled": False})
    else:
        softhsm_usage(id1, False)
    time.sleep(REFRESH + 0.3)
    t.ok(all_unseal(files), "%s: 5. the old version disabled: every file "
         "still unseals" % tok)

    # 6. Revoke access: unseal fails with the documented error.
    if tok == "kv":
        emu.admin("POST", "identities/app/revoke", {})
    else:
        softhsm_usage(id2, False)  # the current version's usage cleared
    time.sleep(REFRESH + 0.3)
    ok, r = unseals(files[0][0], files[0][1])
    err = r.stderr.decode()
    t.ok(not ok and r.returncode == 1, "%s: 6. access revoked: unseal fails"
         % tok, err)
    t.ok("CKR_KEY_FUNCTION_NOT_PERMITTED" in err or "not permitted" in err
         or "CKR_KEY_HANDLE_INVALID" in err,
         "%s:    with the documented error" % tok, err)
    t.ok(not os.path.exists(files[0][0] + ".out"),
         "%s:    and no output file is left" % tok)

    # 7. Restore access: it works again.
    if tok == "kv":
        emu.admin("POST", "identities/app/restore", {})
    else:
        softhsm_usage(id2, True)
    time.sleep(REFRESH + 0.3)
    t.ok(all_unseal(files), "%s: 7. access restored: every file unseals" % tok)

log = open(os.path.join(work, "cmkp11.log")).read()
t.ok("denied (403" in log or "can no longer be used" in log,
     "the log says what happened to the key")
