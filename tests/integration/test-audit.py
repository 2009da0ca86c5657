#!/usr/bin/python3
"""The audit log (audit-log = PATH): one JSON line per operation with a
customer-managed key, on both back ends; lines from many threads and
processes never interleave; and neither the audit log nor the debug log
holds a secret, a token, a PIN or key bytes, in raw, hex or base64 form."""
import base64
import json
import os
import re
import subprocess

from kvtest import (Tap, PyKCS11, find, aes_template, OAEP256, emulator_config,
                    write_private, APP_SECRET, conf_text, hsm_token, emu_token)
from taplib import Emu

P = PyKCS11
t = Tap()
srcdir = os.environ.get("top_srcdir", ".")
builddir = os.environ.get("top_builddir", ".")
module = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
emu = Emu(emulator_config())
work = emu.dir
hsmdir = os.path.join(work, "softhsm")
subprocess.run(["sh", os.path.join(srcdir, "tests", "softhsm-init.sh"), hsmdir],
               check=True, stdout=subprocess.DEVNULL)
os.environ["SOFTHSM2_CONF"] = os.path.join(hsmdir, "softhsm2.conf")
# Labels that overflowed the audit line's buffer (issue 17): 960 bytes, and
# 160 control characters (6 bytes each once escaped).
LONG, CTRL = "a" * 960, "\x01" * 160
for i, label in enumerate((LONG, CTRL)):
    subprocess.run(["pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so",
                    "--token-label", "cmk", "--login", "--pin", "1234",
                    "--keypairgen", "--key-type", "rsa:2048", "--label", label,
                    "--id", "7%d" % i], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
# A PIN no log line could hold by chance (a debug log is full of numbers:
# "1234" was found in it once), so finding it would mean a leak.
PIN = "audit-pin-" + os.urandom(8).hex()
subprocess.run(["pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so",
                "--token-label", "cmk", "--login", "--pin", "1234",
                "--change-pin", "--new-pin", PIN], check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")
audit = os.path.join(work, "audit.jsonl")
debuglog = os.path.join(work, "debug.log")
emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})
conf = conf_text([hsm_token("local"), emu_token(emu, "kv", secret)],
                 log_level="debug", log_file=debuglog, audit_log=audit)
os.environ["CMKP11_CONF"] = write_private(os.path.join(work, "cmkp11.conf"), conf)

lib = P.PyKCS11Lib()
lib.load(module)
secrets = [APP_SECRET.encode(), PIN.encode()]


def session(label):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            return lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)


expected = {}
for tok in ("local", "kv"):
    ses = session(tok)
    if tok == "local":
        ses.login(PIN)
    pub = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
    priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
    dek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                          [(P.CKA_VALUE_LEN, 32)])
    secrets.append(bytes(ses.getAttributeValue(dek, [P.CKA_VALUE])[0]))
    wrapped = bytes(ses.wrapKey(pub, dek, OAEP256))
    secrets.append(wrapped)
    ses.unwrapKey(priv, wrapped, aes_template(), OAEP256)
    bad = bytearray(wrapped)
    bad[5] ^= 1
    try:
        ses.unwrapKey(priv, bytes(bad), aes_template(), OAEP256)
    except P.PyKCS11Error:
        pass
    msg = b"audited data"
    sig = bytes(ses.sign(priv, msg, P.Mechanism(P.CKM_SHA256_RSA_PKCS)))
    ses.verify(pub, msg, sig, P.Mechanism(P.CKM_SHA256_RSA_PKCS))
    ct = bytes(ses.encrypt(pub, b"plain", OAEP256))
    secrets.append(bytes(ses.decrypt(priv, ct, OAEP256)) * 4)
    # The corrupted blob is also tried with the older version kek@01 on
    # the SoftHSM token (unwrap-fallback): one more unwrap line there.
    expected[tok] = {"wrap": 1, "unwrap": 3 if tok == "local" else 2,
                     "sign": 1, "verify": 1, "encrypt": 1, "decrypt": 1}
expected["local"]["encrypt"] += 2  # the long labels below

# The long labels: each line is JSON, a long field is cut at 256 bytes and
# ends with "...", a short one of control characters is whole.
ses = session("local")  # logged in above
before = len(open(audit).read().splitlines())
for label in (LONG, CTRL):
    pubs = [o for o in ses.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY)])
            if ses.getAttributeValue(o, [P.CKA_LABEL])[0].startswith(label[:8])]
    t.eq(len(pubs), 1, "the key labelled %r... is found" % label[:8])
    if pubs:
        ses.encrypt(pubs[0], b"x", OAEP256)
new = open(audit).read().splitlines()[before:]
try:
    keys = [json.loads(line)["key"] for line in new]
except ValueError as e:
    keys = ["not JSON: %s" % e]
t.eq(keys, ["a" * 256 + "...", CTRL],
     "960-byte and control-character key names: valid JSON, the long one cut")
t.ok(all(len(line) < 2048 for line in new), "the lines stay short")

lines = open(audit).read().splitlines()
records = []
bad_lines = 0
for line in lines:
    try:
        records.append(json.loads(line))
    except ValueError:
        bad_lines += 1
t.eq(bad_lines, 0, "every audit line is JSON (%d lines)" % len(lines))
fields = {"time", "pid", "host", "process", "token", "key", "version",
          "operation", "mechanism", "result", "http_status"}
t.ok(all(fields <= set(r) for r in records), "every line has all the fields")
for tok in ("local", "kv"):
    got = {}
    for r in records:
        if r["token"] == tok:
            got[r["operation"]] = got.get(r["operation"], 0) + 1
    t.eq(got, expected[tok], "%s: one line per key operation" % tok)
kv_unwraps = [r for r in records if r["token"] == "kv" and r["operation"] == "unwrap"]
t.eq(sorted(r["result"] for r in kv_unwraps), ["CKR_OK", "CKR_WRAPPED_KEY_INVALID"],
     "results are recorded, failures too")
t.eq(sorted(r["http_status"] for r in kv_unwraps), [200, 400],
     "with the vault's HTTP status")
t.ok(all(r["key"] == "kek" and len(r["version"]) > 0 for r in records
        if r["key"] not in keys),
     "key and version are named")
t.ok(all(r["mechanism"].startswith("CKM_") for r in records), "mechanisms by name")

# Many processes and threads at once: lines never interleave.
client = os.path.join(builddir, "tests", "integration", "kv-unwrap")
before = len(lines)
procs = [subprocess.Popen([client, module, "kv", "kek", "4", "25"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
         for _ in range(3)]
rcs = [p.wait(timeout=300) for p in procs]
t.eq(rcs, [0, 0, 0], "3 processes x 4 threads unwrapping at once")
lines = open(audit).read().splitlines()
new = lines[before:]
ok_lines = 0
pids = set()
for line in new:
    try:
        r = json.loads(line)
        ok_lines += 1
        pids.add(r["pid"])
    except ValueError:
        pass
# Each unwrap in kv-unwrap also wraps locally: 2 records per iteration.
t.eq((ok_lines, len(new)), (600, 600),
     "600 whole lines from concurrent writers, none interleaved")
t.eq(len(pids), 3, "from 3 processes")

# No secret anywhere in the logs, in any form.
blobs = open(audit, "rb").read() + open(debuglog, "rb").read()
# A debug line's source location (auth.c:1234) is no data: a PIN of digits
# could match a line number.
blobs = re.sub(rb"[A-Za-z0-9_-]+\.c:[0-9]+ ", b"", blobs)
leaks = []
for sec in secrets:
    for form in (sec, sec.hex().encode(), base64.b64encode(sec),
                 base64.urlsafe_b64encode(sec).rstrip(b"=")):
        if len(form) >= 4 and form in blobs:
            leaks.append(form[:16])
t.eq(leaks, [], "no secret, PIN, key or wrapped bytes in the audit or debug log")
t.ok(b"eyJ" not in blobs, "no bearer token (JWT) in the logs")
t.ok(os.path.getsize(debuglog) > 0, "the debug log was written")
