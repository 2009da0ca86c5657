#!/usr/bin/python3
"""A 404 from an operation on the version the module believed current (the
key deleted and created again) makes the next object search load the key
again at once, not after refresh-interval (60 s here)."""
from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, aes_template, OAEP256,
                    CKA_CMK_VERSION)

P = PyKCS11
t = Tap()
s = KvSetup()
s.write_conf([("kv", s.token_body())], refresh=60)
s.create_key("kek")
s.load()
ses = s.session("kv")


def version(obj):
    return bytes(ses.getAttributeValue(obj, [CKA_CMK_VERSION])[0]).decode()


priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
pub = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
old = version(priv)
dek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                      [(P.CKA_VALUE_LEN, 32)])
blob = bytes(ses.wrapKey(pub, dek, OAEP256))
s.emu.admin("DELETE", "vaults/kvemu/keys/kek?purge=1")
new = s.create_key("kek")
t.eq(ckr(ses.unwrapKey, priv, blob, aes_template(), OAEP256),
     P.CKR_KEY_HANDLE_INVALID, "the deleted version: CKR_KEY_HANDLE_INVALID")
found = [version(o) for o in find(ses, P.CKO_PRIVATE_KEY, "kek")]
t.ok(len(found) == 1 and found[0] != old,
     "the next search finds the new key at once, not the dead version",
     "old %s, found %r" % (old, found))
priv2 = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
pub2 = find(ses, P.CKO_PUBLIC_KEY, "kek")[0]
blob2 = bytes(ses.wrapKey(pub2, dek, OAEP256))
t.eq(ckr(ses.unwrapKey, priv2, blob2, aes_template(), OAEP256), 0,
     "and it works")
