#!/usr/bin/python3
"""A replica's revocation holds while the key is read again: a token with
two replicas (docs/keyvault.md, "Replicas"), the key's older version
disabled on the second only, so that local operations with it are refused
(CKR_KEY_FUNCTION_NOT_PERMITTED: a replica can revoke). One thread reads
the key again (a search for NAME@VERSION) and the emulator holds the
second replica's versions listing; meanwhile a search on the main thread
lists the older version as disabled (CKA_CMK_ENABLED false) and local
encryptions with its public key are still refused, and still are once
the reload ends. The searching call goes through ctypes (kvtest.RawP11), which
lets this thread run while it waits."""
import threading
import time

from kvtest import (Tap, KvSetup, PyKCS11, MODULE, emulator_config, find,
                    ckr, RawP11)

P = PyKCS11
HELD_MS = 8000
t = Tap()


def vault(name):
    return {"name": name, "kind": "vault", "access": {"app": ["all"]}}


s = KvSetup(config=emulator_config(extra_vaults=[vault("kva"), vault("kvb")]))
emu = s.emu
s.create_key("kek", vault="kva")
s.create_key("kek", vault="kva")  # a second version, current
copied = emu.admin("POST", "vaults/kva/keys/kek/copy", {"to": "kvb"})
t.eq(len(copied["versions"]), 2, "the key's two versions copied to kvb")
s.write_conf([s.token("rep", vault_url="%s, %s" % (s.vault_url("kva"),
                                                   s.vault_url("kvb")),
                      retries=0)], refresh=60)
s.load()
raw = RawP11(MODULE)
t.ok(raw.ok, "the module's function list read through ctypes")
ses = s.session("rep")
other = s.session("rep")
CKA_CMK_VERSION = P.CKA_VENDOR_DEFINED | 0x434D0004
CKA_CMK_ENABLED = P.CKA_VENDOR_DEFINED | 0x434D0005
CKA_CMK_CURRENT = P.CKA_VENDOR_DEFINED | 0x434D000A
versions = {}
for h in ses.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY)]):
    ver, cur = ses.getAttributeValue(h, [CKA_CMK_VERSION, CKA_CMK_CURRENT])
    versions[bytes(cur) == b"\x01"] = (bytes(ver).decode(), h)
t.eq(sorted(versions), [False, True], "a current and an older version")
current = versions.get(True, ("-", None))[0]
older, pub = versions.get(False, ("-", None))
OAEP = P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256)


def encrypt():
    return ckr(ses.encrypt, pub, b"\x11" * 32, OAEP)


def older_enabled():
    """CKA_CMK_ENABLED of the older version's public key, as a search
    lists it now (pub: its handle)."""
    global pub
    for h in ses.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY)]):
        ver, on = ses.getAttributeValue(h, [CKA_CMK_VERSION, CKA_CMK_ENABLED])
        if bytes(ver).decode() == older:
            pub = h
            return bytes(on) == b"\x01"
    return None


t.eq(encrypt(), 0, "the older version encrypts locally")

# The older version disabled on the second replica only; a search for
# kek@CURRENT reads the key again at once.
emu.admin("PATCH", "vaults/kvb/keys/kek", {"enabled": False,
                                           "version": older})
label = ("kek@%s" % current).encode()
template = [(P.CKA_CLASS, P.CKO_PUBLIC_KEY.to_bytes(8, "little")),
            (P.CKA_LABEL, label)]
# The search ends with CKR_OK and finds nothing: the current version is
# labelled kek, not kek@CURRENT (docs/keyvault.md).
t.eq(raw.find_count(other, template), 0,
     "a search for kek@CURRENT reads the key again")
t.eq(encrypt(), P.CKR_KEY_FUNCTION_NOT_PERMITTED,
     "disabled on the second replica: local encryption refused")


def held():
    return emu.admin("GET", "counters")["faults"].get(
        "kvb:getKeyVersions:delay", 0)


emu.admin("POST", "faults", {"kind": "delay", "match": "kvb:getKeyVersions",
                             "delay_ms": HELD_MS, "count": 1})
out = {}
th = threading.Thread(target=lambda: out.update(
    found=raw.find_count(other, template)))
th.start()
limit = time.monotonic() + 120
while held() == 0 and th.is_alive() and time.monotonic() < limit:
    time.sleep(0.02)
was_held = held() > 0
listed = older_enabled()
during = [encrypt() for _ in range(3)]
waiting = th.is_alive()
th.join()
t.ok(was_held and waiting,
     "a second reload holds in the second replica's versions listing while "
     "the main thread encrypts", "held %s, still waiting %s" % (was_held,
                                                              waiting))
t.eq(listed, False, "meanwhile a search lists the older version as "
     "disabled (CKA_CMK_ENABLED false)")
t.eq(during, [P.CKR_KEY_FUNCTION_NOT_PERMITTED] * 3,
     "and local encryption with it is still refused")
t.eq(out.get("found"), 0, "the reload's search ends well")
t.eq(encrypt(), P.CKR_KEY_FUNCTION_NOT_PERMITTED,
     "after the reload: still refused")
emu.admin("PATCH", "vaults/kvb/keys/kek", {"enabled": True,
                                           "version": older})
t.eq(raw.find_count(other, template), 0,
     "enabled again on the second replica, the key read again")
t.eq(encrypt(), 0, "local encryption works again")
