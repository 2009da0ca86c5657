#!/usr/bin/python3
"""AES-GCM on an hsm token goes to the lower token in parts
(provider/hsm/hsm-ops.c, docs/hsm.md "What is done where").

The lower token is SoftHSM behind tests/p11-fault.c, which logs each
encryption and decryption call it forwards and, with
CMKP11_FAULT_PARTS=refuse, answers C_EncryptUpdate, C_EncryptFinal,
C_DecryptUpdate and C_DecryptFinal with CKR_FUNCTION_NOT_SUPPORTED (the
lower operation left active), as a module that does AES-GCM only in one
call. Two tokens of cmkp11 on the same lower token: "parts" and "single".
Through PKCS#11 (PyKCS11 on the module) and cmkp11-tool:

- C_Encrypt and C_Decrypt with CKM_AES_GCM of 1 to 131,075 bytes give
  what python3-cryptography's AESGCM gives for the same key, nonce and
  AAD (a reference this project did not write), with 96- and 128-bit tags;
- the lower token sees C_EncryptInit, C_EncryptUpdate, C_EncryptFinal
  (and the same for decryption); AES-CBC-PAD still one call;
- an altered tag or ciphertext: CKR_ENCRYPTED_DATA_INVALID, and the
  session goes on;
- a lower token that refuses the parts: the same bytes; the first call
  retries in one call, every later call goes in one call at once; the
  other token keeps its parts;
- files sealed through either token unseal through the other
  (cmkp11-tool seal/unseal, 3 threads, 40 segments).

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

from kvtest import MODULE, SOFTHSM, TOOL, Tap, skip_all, hsm_token  # noqa
from kvtest import write_private  # noqa: E402
from hsmtest import softhsm_dir, use_conf, PIN, rv_of, rv_name as name  # noqa: E402
import PyKCS11 as P  # noqa: E402

try:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:
    skip_all("python3-cryptography is missing")

BUILD = os.environ.get("top_builddir", ".")
FAULT_LIB = os.path.join(BUILD, ".libs/p11-fault.so")
KEY = bytes(range(32))
AAD = b"cmkp11 aes-gcm in parts, 40 bytes of aad"[:40]
SIZES = (1, 16, 4095, 65536, 131075)  # PyKCS11 refuses empty data itself

t = Tap()
tmp = softhsm_dir("tmp-hsm-gcm-parts-")
atexit.register(lambda: t.failed or shutil.rmtree(tmp, ignore_errors=True))
CALLS = os.path.join(tmp, "calls")
os.environ["CMKP11_FAULT_MODULE"] = SOFTHSM
os.environ["CMKP11_FAULT_CALLS"] = CALLS
os.environ.pop("CMKP11_FAULT_PARTS", None)
pin = write_private(os.path.join(tmp, "pin"), PIN)
conf = use_conf(tmp, [hsm_token(name, module=FAULT_LIB, pin_file=pin)
                      for name in ("parts", "single")], log_level="error")


def calls():
    """The lower calls logged since the last calls(), then a new log."""
    try:
        with open(CALLS) as f:
            got = f.read().split()
    except FileNotFoundError:
        got = []
    open(CALLS, "w").close()
    return got


def refusing(on):
    if on:
        os.environ["CMKP11_FAULT_PARTS"] = "refuse"
    else:
        os.environ.pop("CMKP11_FAULT_PARTS", None)


lib = P.PyKCS11Lib()
lib.load(MODULE)


def session(label):
    slot = [s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == label][0]
    s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    key = s.createObject([
        (P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
        (P.CKA_TOKEN, False), (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True),
        (P.CKA_VALUE, KEY)])
    return s, key


def gcm(iv, tag_bits=128):
    return P.AES_GCM_Mechanism(list(iv), list(AAD), tag_bits)


def reference(iv, data, tag_bits=128):
    ct = AESGCM(KEY).encrypt(iv, data, AAD)
    return ct[:len(data)] + ct[len(data):len(data) + tag_bits // 8]


def round_trips(label, s, key):
    """Each size: encrypt equals the reference, decrypt gives the data."""
    bad = []
    for i, n in enumerate(SIZES):
        iv = bytes([i + 1]) * 12
        data = os.urandom(n)
        ct = bytes(s.encrypt(key, data, gcm(iv)))
        if ct != reference(iv, data):
            bad.append(("encrypt", n))
        pt = bytes(s.decrypt(key, reference(iv, data), gcm(iv)))
        if pt != data:
            bad.append(("decrypt", n))
    t.ok(bad == [], "%s: AES-GCM of %s bytes: python3-cryptography's "
         "ciphertext and tag, and back" %
         (label, ", ".join(str(n) for n in SIZES)), bad)
    iv = b"\x07" * 12
    data = os.urandom(1000)
    ct = bytes(s.encrypt(key, data, gcm(iv, 96)))
    t.ok(ct == reference(iv, data, 96) and
         bytes(s.decrypt(key, ct, gcm(iv, 96))) == data,
         "%s: a 96-bit tag, both ways" % label)


def tampering(label, s, key):
    iv = b"\x09" * 12
    data = os.urandom(5000)
    good = reference(iv, data)
    for what, ct in (("the tag", good[:-1] + bytes([good[-1] ^ 1])),
                     ("the ciphertext", bytes([good[0] ^ 0x80]) + good[1:])):
        rv = rv_of(lambda: s.decrypt(key, ct, gcm(iv)))
        t.eq(name(rv), "CKR_ENCRYPTED_DATA_INVALID",
             "%s: %s altered: CKR_ENCRYPTED_DATA_INVALID" % (label, what))
    t.ok(bytes(s.decrypt(key, good, gcm(iv))) == data,
         "%s: the session goes on: the intact ciphertext decrypts" % label)


# ---- the parts token ------------------------------------------------------
sp, kp = session("parts")
calls()
round_trips("parts", sp, kp)
calls()
iv = b"\x01" * 12
sp.encrypt(kp, b"x" * 100, gcm(iv))
enc = calls()
sp.decrypt(kp, reference(iv, b"x" * 100), gcm(iv))
dec = calls()
# PyKCS11 asks for the length first (a C_Encrypt with no buffer, which
# the module answers itself), then encrypts.
t.eq(enc, ["C_EncryptInit", "C_EncryptUpdate", "C_EncryptFinal"],
     "parts: the lower token encrypts in parts")
t.eq(dec, ["C_DecryptInit", "C_DecryptUpdate", "C_DecryptFinal"],
     "parts: ... and decrypts in parts")
tampering("parts", sp, kp)
cbc = P.Mechanism(P.CKM_AES_CBC_PAD, b"\x00" * 16)
calls()
ct = bytes(sp.encrypt(kp, b"abc", cbc))
t.ok(calls() == ["C_EncryptInit", "C_Encrypt"] and
     bytes(sp.decrypt(kp, ct, cbc)) == b"abc",
     "parts: AES-CBC-PAD still goes in one call, and round-trips")

# ---- the single token: the lower token refuses the parts ------------------
ss, ks = session("single")
refusing(True)
calls()
iv = b"\x02" * 12
ct = bytes(ss.encrypt(ks, b"y" * 100, gcm(iv)))
first = calls()
t.ok(ct == reference(iv, b"y" * 100),
     "single: refused parts: the same ciphertext, in one call")
t.eq(first, ["C_EncryptInit", "C_EncryptUpdate", "C_EncryptInit",
             "C_Encrypt"],
     "single: the first call tries the parts, then one call (the lower "
     "operation still active: C_EncryptInit's CKR_OPERATION_ACTIVE)")
ss.encrypt(ks, b"y" * 100, gcm(iv))
later = calls()
ss.decrypt(ks, ct, gcm(iv))
t.eq([later, calls()], [["C_EncryptInit", "C_Encrypt"],
                        ["C_DecryptInit", "C_Decrypt"]],
     "single: later calls go in one call at once, both ways")
round_trips("single", ss, ks)
tampering("single", ss, ks)
refusing(False)
calls()
sp.encrypt(kp, b"z", gcm(iv))
t.eq(calls(), ["C_EncryptInit", "C_EncryptUpdate", "C_EncryptFinal"],
     "parts: the other token's refusal does not change this one")

# ---- cmkp11-tool: sealed through one, unsealed through the other ----------
# 40 segments and 3 workers: the ring of slots wraps many times.
data = os.urandom(40 * 65536 + 123)
src = os.path.join(tmp, "data")
with open(src, "wb") as f:
    f.write(data)


def tool(*args, refuse=False):
    env = dict(os.environ, CMKP11_CONF=conf)
    env.pop("CMKP11_FAULT_CALLS", None)
    if refuse:
        env["CMKP11_FAULT_PARTS"] = "refuse"
    else:
        env.pop("CMKP11_FAULT_PARTS", None)
    return subprocess.run([TOOL, "--module", MODULE, "--threads", "3"] +
                          list(args), env=env, capture_output=True,
                          timeout=120)


for sealer, opener in (("parts", "single"), ("single", "parts")):
    out = os.path.join(tmp, "sealed-" + sealer)
    r = tool("--key", "pkcs11:token=%s;object=kek" % sealer, "seal", src,
             "-o", out, refuse=sealer == "single")
    u = tool("--token", opener, "unseal", out, refuse=opener == "single")
    t.ok(r.returncode == 0 and u.returncode == 0 and u.stdout == data,
         "cmkp11-tool: sealed through %s, unsealed through %s (3 threads): "
         "the same data" % (sealer, opener),
         (r.stderr.decode(errors="replace") +
          u.stderr.decode(errors="replace"))[-800:])
