#!/usr/bin/python3
"""rsa-pkcs1-decrypt on keyvault tokens. Key Vault removes RSA1_5 padding
itself and answers a bad padding with an error, so implicit rejection
cannot be done in the module: CKM_RSA_PKCS decryption and unwrapping are
refused by default (CKR_MECHANISM_INVALID at Init, not advertised),
"allow" gives the vault's answer (a padding oracle, documented), and
"implicit-rejection" in a keyvault section is a configuration error."""
import os
import subprocess

from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, delta, aes_template,
                    public_key, PKCS1, MODULE)
from cryptography.hazmat.primitives.asymmetric import padding

P = PyKCS11
t = Tap()
s = KvSetup()
s.write_conf([
    ("kv", s.token_body()),
    ("kvallow", s.token_body(extra="rsa-pkcs1-decrypt = allow\n")),
])
t.eq(s.create_key("kek")["created"], 1, "the emulator made the key kek")
s.load()


def slot_of(label):
    return [x for x in s.lib.getSlotList(tokenPresent=True)
            if s.lib.getTokenInfo(x).label.strip() == label][0]


ses = s.session("kv")
priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
pk = public_key(ses, find(ses, P.CKO_PUBLIC_KEY, "kek")[0])
dek = os.urandom(32)
blob = pk.encrypt(dek, padding.PKCS1v15())
bad = bytearray(blob)
bad[4] ^= 0x20
bad = bytes(bad)

mi = s.lib.getMechanismInfo(slot_of("kv"), "CKM_RSA_PKCS")
t.eq(mi.flags & (P.CKF_DECRYPT | P.CKF_UNWRAP), 0,
     "default: CKM_RSA_PKCS advertises neither decrypt nor unwrap")
t.ok(mi.flags & P.CKF_SIGN, "but still signs")
b = s.counters()
t.eq(ckr(ses.decrypt, priv, blob, PKCS1), P.CKR_MECHANISM_INVALID,
     "default: C_DecryptInit CKM_RSA_PKCS is CKR_MECHANISM_INVALID")
t.eq(ckr(ses.unwrapKey, priv, blob, aes_template(), PKCS1),
     P.CKR_MECHANISM_INVALID,
     "default: C_UnwrapKey CKM_RSA_PKCS is CKR_MECHANISM_INVALID")
t.eq(delta(b, s.counters(), "kvemu:decrypt") +
     delta(b, s.counters(), "kvemu:unwrapKey"), 0,
     "nothing reached the vault")

ses2 = s.session("kvallow")
priv2 = find(ses2, P.CKO_PRIVATE_KEY, "kek")[0]
mi = s.lib.getMechanismInfo(slot_of("kvallow"), "CKM_RSA_PKCS")
t.eq(mi.flags & (P.CKF_DECRYPT | P.CKF_UNWRAP), P.CKF_DECRYPT | P.CKF_UNWRAP,
     "allow: CKM_RSA_PKCS decrypts and unwraps")
t.eq(bytes(ses2.decrypt(priv2, blob, PKCS1)), dek,
     "allow: a valid ciphertext decrypts (RSA1_5 in the vault)")
t.eq(ckr(ses2.decrypt, priv2, bad, PKCS1), P.CKR_ENCRYPTED_DATA_INVALID,
     "allow: a bad padding is CKR_ENCRYPTED_DATA_INVALID (the oracle)")

# implicit-rejection cannot be honoured on a keyvault token.
s.lib = None
conf = s.write_conf([s.token("kv", rsa_pkcs1_decrypt="implicit-rejection")],
                    refresh=None, log_level="error", log_file=None, name="bad.conf", export=False)
res = subprocess.run(
    ["/usr/bin/python3", "-c",
     "import PyKCS11, sys\nl = PyKCS11.PyKCS11Lib()\n"
     "try:\n    l.load(sys.argv[1])\nexcept PyKCS11.PyKCS11Error as e:\n"
     "    print(hex(e.value))\n", MODULE],
    env=dict(os.environ, CMKP11_CONF=conf), capture_output=True, text=True)
t.ok("0x5" in res.stdout, "implicit-rejection on a keyvault token: "
     "C_Initialize is CKR_GENERAL_ERROR", res.stdout + res.stderr)
t.ok("bad.conf:" in res.stderr and "rsa-pkcs1-decrypt: this token cannot do "
     "implicit rejection" in res.stderr, "  and the log names the line",
     res.stderr)
