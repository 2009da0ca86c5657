#!/usr/bin/python3
"""certificates = generate makes the same certificate for a key version in
every process, on an hsm token (SoftHSM, pin-file) and a keyvault token
(the emulator): two processes, in different seconds, read byte-identical
CKA_VALUE; after a rotation the older version's certificate (now labelled
kek@VERSION) is still the same bytes. The fields: subject and issuer
CN=<key name>, serial from the SHA-256 of the public key, notBefore the
version's creation (Key Vault's created; 1970-01-01 on hsm), notAfter
99991231235959Z, a signature that verifies."""
import hashlib
import json
import os
import subprocess
import sys
import time

from kvtest import Tap, KvSetup, MODULE, TOP_SRCDIR, skip_all, write_private

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
except ImportError:
    skip_all("python3-cryptography missing")

import datetime  # noqa: E402

SOFTHSM = os.environ.get("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
t = Tap()
s = KvSetup()
hsm_dir = os.path.join(s.dir, "softhsm")
r = subprocess.run(["sh", os.path.join(TOP_SRCDIR, "tests/softhsm-init.sh"),
                    hsm_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
if r.returncode == 77:
    skip_all(r.stdout.decode(errors="replace").strip())
if r.returncode != 0:
    print("Bail out! softhsm-init.sh failed")
    sys.exit(99)
os.environ["SOFTHSM2_CONF"] = os.path.join(hsm_dir, "softhsm2.conf")
pin = write_private(os.path.join(s.dir, "pin"), "1234\n")
first = s.create_key("kek")
s.write_conf([
    ("hsm", "backend = hsm\nmodule = %s\ntoken-label = cmk\npin-file = %s\n"
     "certificates = generate\n" % (SOFTHSM, pin)),
    ("kv", s.token_body() + "certificates = generate\n"),
], log_level="error")

# A fresh process: every certificate object of each token, by label, with
# the CKA_CMK_CREATED and CKA_CMK_KEY_NAME of its private key.
CHILD = r"""
import json, sys, PyKCS11 as P
CREATED, NAME = P.CKA_VENDOR_DEFINED | 0x434D0006, P.CKA_VENDOR_DEFINED | 0x434D0003
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
out = {}
for slot in lib.getSlotList(tokenPresent=True):
    tok = lib.getTokenInfo(slot).label.strip()
    s = lib.openSession(slot, P.CKF_SERIAL_SESSION)
    for c in s.findObjects([(P.CKA_CLASS, P.CKO_CERTIFICATE)]):
        label, cid, der = s.getAttributeValue(c, [P.CKA_LABEL, P.CKA_ID,
                                                  P.CKA_VALUE])
        k = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                           (P.CKA_ID, cid)])[0]
        created, name = s.getAttributeValue(k, [CREATED, NAME],
                                            allAsBinary=True)
        out["%s/%s" % (tok, label)] = {
            "der": bytes(der).hex(), "id": bytes(cid).hex(),
            "created": bytes(created).decode(), "name": bytes(name).decode()}
print(json.dumps(out))
"""


def certs():
    r = subprocess.run(["/usr/bin/python3", "-c", CHILD, MODULE],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=120)
    if r.returncode != 0:
        t.diag(r.stderr.decode(errors="replace"))
        return {}
    return json.loads(r.stdout)


one = certs()
time.sleep(1.1)  # a different second: the old notBefore was "now - 1 day"
two = certs()
t.ok("hsm/kek" in one and "hsm/kek@01" in one and "kv/kek" in one,
     "the first process sees the certificates of hsm kek, kek@01 and kv kek",
     sorted(one))
for label in ("hsm/kek", "hsm/kek@01", "kv/kek"):
    t.ok(label in two and one.get(label, {}).get("der") == two[label]["der"],
         "%s: two processes read byte-identical CKA_VALUE" % label)

# ---- the fields ----------------------------------------------------------
for label, c in sorted(one.items()):
    cert = x509.load_der_x509_certificate(bytes.fromhex(c["der"]))
    pub = cert.public_key()
    spki = pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    sb = bytearray(hashlib.sha256(spki).digest()[:16])
    sb[0] = (sb[0] & 0x7f) | 0x40
    created = int(c["created"]) if c["created"] else 0
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = label.split("/")[1].split("@")[0]
    t.ok(cert.subject == cert.issuer and [a.value for a in cn] == [name]
         and c["name"] == name,
         "%s: subject and issuer CN=%s, the key's name" % (label, name))
    t.eq(cert.serial_number, int.from_bytes(sb, "big"),
         "%s: serial from the SHA-256 of the public key" % label)
    want = datetime.datetime.utcfromtimestamp(created)
    t.ok(cert.not_valid_before == want and
         (created > 0) == label.startswith("kv/"),
         "%s: notBefore is the creation time (%s)" % (label, want),
         cert.not_valid_before)
    t.eq(cert.not_valid_after, datetime.datetime(9999, 12, 31, 23, 59, 59),
         "%s: notAfter 99991231235959Z" % label)
    try:
        pub.verify(cert.signature, cert.tbs_certificate_bytes,
                   padding.PKCS1v15(), hashes.SHA256())
        good = True
    except Exception:
        good = False
    t.ok(good, "%s: the PKCS#1 v1.5 signature verifies" % label)

# ---- after a rotation on the vault ---------------------------------------
s.create_key("kek")
three = certs()
old = [k for k in three if k.startswith("kv/kek@")]
t.ok(len(old) == 1 and three[old[0]]["der"] == one["kv/kek"]["der"] and
     three["kv/kek"]["der"] != one["kv/kek"]["der"],
     "after a rotation: the older version, now %s, has the same certificate; "
     "the new current version has its own" % (old[0] if old else "?"),
     sorted(three))
