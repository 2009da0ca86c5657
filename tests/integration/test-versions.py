#!/usr/bin/python3
"""Version-aware unwrap on both back ends: wrap under version 1, rotate,
wrap under version 2; both blobs unwrap through the label object, each
through its own version's object, and a PKCS#1 v1.5 blob of version 1
does not unwrap through the label object (no fallback for v1.5)."""
import os
import subprocess
import sys

from kvtest import (Tap, PyKCS11, find, ckr, aes_template, OAEP256, OAEP1,
                    PKCS1, emulator_config, write_private, APP_SECRET,
                    conf_text, hsm_token, emu_token)
from taplib import Emu

P = PyKCS11
t = Tap()
srcdir = os.environ.get("top_srcdir", ".")
emu = Emu(emulator_config())
work = emu.dir

# A SoftHSM token for the hsm back end.
hsmdir = os.path.join(work, "softhsm")
st = subprocess.run(["sh", os.path.join(srcdir, "tests", "softhsm-init.sh"),
                     hsmdir], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
t.ok(st.returncode == 0, "a SoftHSM token for the run", st.stderr.decode())
os.environ["SOFTHSM2_CONF"] = os.path.join(hsmdir, "softhsm2.conf")

secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")
emu.admin("POST", "vaults/kvemu/keys", {"name": "kek"})
# PKCS#1 v1.5 unwrapping is refused on keyvault tokens unless allowed.
conf = conf_text([hsm_token("local", pin_file=os.path.join(work, "pin")),
                  emu_token(emu, "kv", secret, rsa_pkcs1_decrypt="allow")],
                 log_level="info", log_file=os.path.join(work, "cmkp11.log"))
write_private(os.path.join(work, "pin"), "1234\n")
os.environ["CMKP11_CONF"] = write_private(os.path.join(work, "cmkp11.conf"), conf)

lib = P.PyKCS11Lib()
lib.load(os.environ.get("CMKP11_MODULE") or
         os.path.join(os.environ.get("top_builddir", "."), ".libs", "cmkp11.so"))


def session(label):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            return lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    raise RuntimeError(label)


def wrap(ses, pub, mech):
    dek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                          [(P.CKA_VALUE_LEN, 32)])
    value = bytes(ses.getAttributeValue(dek, [P.CKA_VALUE])[0])
    return bytes(ses.wrapKey(pub, dek, mech)), value


def unwraps_to(ses, priv, blob, mech, value):
    tmpl = aes_template(sensitive=False, extractable=True)
    if mech is PKCS1:
        # Implicit rejection (hsm) needs the length of the key.
        tmpl.append((P.CKA_VALUE_LEN, len(value)))
    try:
        h = ses.unwrapKey(priv, blob, tmpl, mech)
    except P.PyKCS11Error as e:
        return e.value
    got = bytes(ses.getAttributeValue(h, [P.CKA_VALUE])[0])
    return 0 if got == value else "different key"


cts = {}
for tok in ("local", "kv"):
    ses = session(tok)
    pub1 = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
    priv1 = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
    id1 = bytes(ses.getAttributeValue(priv1, [P.CKA_ID])[0])
    blob1, v1 = wrap(ses, pub1, OAEP256)
    blob1s, v1s = wrap(ses, pub1, OAEP1)
    blob1p, v1p = wrap(ses, pub1, PKCS1)
    secret1 = b"encrypted under version 1"
    ct1 = bytes(ses.encrypt(pub1, secret1, OAEP256))
    cts[tok] = ct1

    pub2, priv2 = ses.generateKeyPair(
        [(P.CKA_LABEL, "kek"), (P.CKA_TOKEN, True)],
        [(P.CKA_LABEL, "kek"), (P.CKA_TOKEN, True)],
        P.MechanismRSAGENERATEKEYPAIR)
    id2 = bytes(ses.getAttributeValue(priv2, [P.CKA_ID])[0])
    t.ok(id2 != id1, "%s: rotate makes a new version" % tok)
    label_priv = find(ses, P.CKO_PRIVATE_KEY, "kek")
    t.eq([bytes(ses.getAttributeValue(o, [P.CKA_ID])[0]) for o in label_priv], [id2],
         "%s: the label object is the new version" % tok)
    label_pub = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
    blob2, v2 = wrap(ses, label_pub, OAEP256)
    label_priv = label_priv[0]

    t.eq(unwraps_to(ses, label_priv, blob2, OAEP256, v2), 0,
         "%s: a version-2 blob unwraps through the label object" % tok)
    t.eq(unwraps_to(ses, label_priv, blob1, OAEP256, v1), 0,
         "%s: a version-1 OAEP-SHA256 blob unwraps through the label object "
         "(fallback)" % tok)
    t.eq(unwraps_to(ses, label_priv, blob1s, OAEP1, v1s), 0,
         "%s: a version-1 OAEP-SHA1 blob too" % tok)
    try:
        got = bytes(ses.decrypt(label_priv, ct1, OAEP256))
    except P.PyKCS11Error as e:
        got = e.value
    t.eq(got, secret1, "%s: C_Decrypt (OAEP) through the label object "
         "decrypts data of version 1 (fallback)" % tok)
    old = find(ses, P.CKO_PRIVATE_KEY, id=id1)
    t.eq(len(old), 1, "%s: version 1 is found by its CKA_ID" % tok)
    t.eq(unwraps_to(ses, old[0], blob1, OAEP256, v1), 0,
         "%s: the version-1 blob unwraps through version 1's object" % tok)
    t.eq(unwraps_to(ses, priv1, blob1, OAEP256, v1), 0,
         "%s: and through the handle taken before the rotation" % tok)
    t.eq(unwraps_to(ses, priv2, blob2, OAEP256, v2), 0,
         "%s: the version-2 blob through version 2's object" % tok)
    t.eq(unwraps_to(ses, old[0], blob2, OAEP256, v2), P.CKR_WRAPPED_KEY_INVALID,
         "%s: a version's own object does not fall back" % tok)
    r = unwraps_to(ses, label_priv, blob1p, PKCS1, v1p)
    t.ok(r != 0, "%s: a PKCS#1 v1.5 blob of version 1 does not unwrap through "
         "the label object (got %r)" % (tok, r))
    t.eq(unwraps_to(ses, old[0], blob1p, PKCS1, v1p), 0,
         "%s: it does through version 1's object" % tok)
    label = ses.getAttributeValue(old[0], [P.CKA_LABEL])[0]
    t.ok(label.startswith("kek@"), "%s: version 1 is labelled %s" % (tok, label))
    ses.closeSession()

with open(os.path.join(work, "cmkp11.log")) as f:
    t.ok("older version" in f.read(), "the log says an older version unwrapped")

with open(os.path.join(work, "cmkp11.log")) as f:
    t.ok("key kek: the data was encrypted under an older version (" in
         f.read(), "the log says an older version decrypted")

# unwrap-fallback = no: C_Decrypt does not try; the log says what to do.
os.environ["CMKP11_CONF"] = write_private(
    os.path.join(work, "nofallback.conf"), conf + "unwrap-fallback = no\n")
CHILD = """
import sys, PyKCS11 as P
lib = P.PyKCS11Lib(); lib.load(sys.argv[1])
for slot in lib.getSlotList(tokenPresent=True):
    if lib.getTokenInfo(slot).label.strip() == "kv":
        ses = lib.openSession(slot)
o = ses.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_LABEL, "kek")])[0]
m = P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256)
try:
    ses.decrypt(o, bytes.fromhex(sys.argv[2]), m); print("CKR_OK")
except P.PyKCS11Error as e:
    print(P.CKR[e.value])
"""
open(os.path.join(work, "cmkp11.log"), "w").close()
r = subprocess.run([sys.executable, "-c", CHILD, os.environ.get("CMKP11_MODULE") or
                    os.path.join(os.environ.get("top_builddir", "."), ".libs",
                                 "cmkp11.so"), cts["kv"].hex()],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True)
t.ok(r.stdout.strip() == "CKR_ENCRYPTED_DATA_INVALID",
     "kv, unwrap-fallback = no: C_Decrypt of version-1 data through the label "
     "object fails", (r.stdout, r.stderr[-1500:]))
with open(os.path.join(work, "cmkp11.log")) as f:
    text = f.read()
t.ok("token kv: key kek: the data does not decrypt with the current version "
     "and 1 older version(s) exist: set unwrap-fallback = yes, or name one as "
     "object=kek@" in text, "... and the log says older versions exist and "
     "how to name one", text)
