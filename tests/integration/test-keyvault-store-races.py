#!/usr/bin/python3
"""Token secret keys of one process used from two sessions at once
(kv-store.c): the emulator holds a vault request of the first session's
call, and the second session acts while it is held.

1. C_SetAttributeValue(CKA_CMK_WRAP_VERSION) rewraps a key; its wrapping
   key is read from the vault while C_DestroyObject destroys the key. The
   rewrap answers CKR_OBJECT_HANDLE_INVALID and writes no file: the key
   stays destroyed, on disk and in the listings after refresh-interval;
   also when another process destroys it. Two rewraps of one key at once
   both succeed, leave one file and no temporary one, and the same value.
2. A first use of a key unwraps its value through the vault while its file
   is altered (CKA_EXTRACTABLE set, the MAC kept) and C_FindObjects reads
   the altered file. The value checked against the old file is not kept
   beside the new attributes: the next use checks the new file's MAC, so
   the value is not revealed and the key is no longer listed.

The racing call goes through ctypes, which lets other threads run while it
waits (PyKCS11 keeps Python's lock for the whole call)."""
import ctypes
import glob
import os
import subprocess
import sys
import threading
import time

from kvtest import (Tap, KvSetup, PyKCS11, MODULE, skey_file,
                    skey_make_extractable, KV_CHILD_SESSION, RawP11, CK_ULONG,
                    CK_ATTRIBUTE, CK_MECHANISM, C_SET_ATTRIBUTE_VALUE,
                    C_ENCRYPT_INIT, C_ENCRYPT)

P = PyKCS11
REFRESH = 2
HELD_MS = 8000  # how long the emulator holds the racing call's request
t = Tap()
s = KvSetup()
emu = s.emu
state = os.path.join(s.dir, "secret-keys")
s.write_conf([s.token("kv", state_dir=state)], refresh=REFRESH)
s.create_key("kek")
env = dict(os.environ, CMKP11_CONF=s.conf)

CKA_CMK_WRAP_VERSION = P.CKA_VENDOR_DEFINED | 0x434D0012


def is_(got, want, desc, diag=""):
    return t.ok(got == want, desc, "got:  %r\nwant: %r\n%s" % (got, want, diag))


def files():
    return sorted(glob.glob(os.path.join(state, "*.json")))


def file_of(label):
    return skey_file(state, label)


def find(ses, label):
    return ses.findObjects([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                            (P.CKA_LABEL, label)])


s.load()
raw = RawP11(MODULE)
t.ok(raw.ok, "the list's C_GetFunctionList, where PKCS #11 puts it, answers "
     "the same list (its layout is read right)")
set_attribute_value = raw.fn(C_SET_ATTRIBUTE_VALUE, CK_ULONG, CK_ULONG,
                             ctypes.POINTER(CK_ATTRIBUTE), CK_ULONG)
encrypt_init = raw.fn(C_ENCRYPT_INIT, CK_ULONG, ctypes.POINTER(CK_MECHANISM),
                      CK_ULONG)
encrypt = raw.fn(C_ENCRYPT, CK_ULONG, ctypes.c_char_p, CK_ULONG,
                 ctypes.c_char_p, ctypes.POINTER(CK_ULONG))


def rewrap(ses, h):
    """C_SetAttributeValue(CKA_CMK_WRAP_VERSION = "", the current one)."""
    a = CK_ATTRIBUTE(CKA_CMK_WRAP_VERSION, None, 0)
    return set_attribute_value(ses.session.value(), h.value(),
                               ctypes.byref(a), 1)


def cbc_encrypt(ses, h):
    iv = ctypes.create_string_buffer(os.urandom(16), 16)
    m = CK_MECHANISM(P.CKM_AES_CBC_PAD, ctypes.cast(iv, ctypes.c_void_p), 16)
    rv = encrypt_init(ses.session.value(), ctypes.byref(m), h.value())
    if rv != 0:
        return rv
    out = ctypes.create_string_buffer(64)
    n = CK_ULONG(64)
    return encrypt(ses.session.value(), b"data", 4, out, ctypes.byref(n))


def held(route):
    return s.counters()["faults"].get(route + ":delay", 0)


def race(route, call, during):
    """Holds the next request to route for HELD_MS; call() runs in a thread
    while during() runs here once the request is held. Returns call's CKR,
    whether the request was held, and whether call was still waiting when
    during() was done."""
    before = held(route)
    emu.admin("POST", "faults", {"kind": "delay", "match": route,
                                 "delay_ms": HELD_MS, "count": 1})
    out = {}
    th = threading.Thread(target=lambda: out.update(rv=call()))
    th.start()
    limit = time.monotonic() + 120
    while held(route) == before and th.is_alive() and \
            time.monotonic() < limit:
        time.sleep(0.02)
    was_held = held(route) > before
    if was_held:
        during()
    waiting = th.is_alive()
    th.join()
    emu.admin("DELETE", "faults")
    return out.get("rv"), was_held, waiting


# Another process on token kv: "destroy LABEL" destroys the key LABEL;
# "HEX" makes a sensitive AES key "victim" with that value.
OTHER = KV_CHILD_SESSION + r'''
if sys.argv[2] == "destroy":
    for h in ses.findObjects([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                              (P.CKA_LABEL, sys.argv[3])]):
        ses.destroyObject(h)
    print("destroyed", flush=True)
    sys.exit(0)
ses.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY),
                  (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_TOKEN, True),
                  (P.CKA_LABEL, "victim"), (P.CKA_VALUE, bytes.fromhex(sys.argv[2])),
                  (P.CKA_SENSITIVE, True), (P.CKA_EXTRACTABLE, False),
                  (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True)])
print("made", flush=True)
'''


# 1. A rewrap and a destroy of the same key at once.
s1 = s.session("kv")
s2 = s.session("kv")
s1.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                 (P.CKA_TOKEN, True), (P.CKA_LABEL, "doomed"),
                 (P.CKA_VALUE, os.urandom(32)), (P.CKA_ENCRYPT, True),
                 (P.CKA_DECRYPT, True)])
h1, h2 = find(s1, "doomed"), find(s2, "doomed")
is_((len(h1), len(h2), len(files())), (1, 1, 1),
    "a token secret key, found from both sessions, one file")
key_id = os.path.basename(files()[0])[:32] if files() else "-"
gone_after_destroy = []
rv, was_held, waiting = race(
    "kvemu:getKey", lambda: rewrap(s1, h1[0]),
    lambda: (s2.destroyObject(h2[0]), gone_after_destroy.append(files())))
t.ok(was_held and waiting,
     "the rewrap reads its wrapping key from the vault while the other "
     "session destroys the key", "held %s, still waiting %s" %
     (was_held, waiting))
is_(gone_after_destroy, [[]], "C_DestroyObject removed the file")
is_(rv, P.CKR_OBJECT_HANDLE_INVALID,
    "the rewrap of the key destroyed meanwhile: CKR_OBJECT_HANDLE_INVALID",
    s.log_text()[-2000:])
is_(files(), [], "the rewrap wrote no file for the destroyed key")
is_(glob.glob(os.path.join(state, ".*.tmp.*")), [],
    "nor left its temporary file")
t.ok("secret key %s was destroyed during its rewrap: its file is not written "
     "again" % key_id in s.log_text(), "the log says so")
time.sleep(REFRESH + 0.3)
is_(len(find(s2, "doomed")), 0,
    "after refresh-interval the destroyed key is not listed")
is_(len(find(s1, "doomed")), 0, "nor in the rewrapping session")
is_(files(), [], "and no file came back")

# The same, the key destroyed by another process: this one has not read
# the directory since, yet its rewrap puts no file back.
s1.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                 (P.CKA_TOKEN, True), (P.CKA_LABEL, "elsewhere"),
                 (P.CKA_VALUE, os.urandom(32)), (P.CKA_ENCRYPT, True),
                 (P.CKA_DECRYPT, True)])
h1 = find(s1, "elsewhere")
other = []
rv, was_held, waiting = race(
    "kvemu:getKey", lambda: rewrap(s1, h1[0]),
    lambda: other.append(subprocess.run(
        [sys.executable, "-c", OTHER, MODULE, "destroy", "elsewhere"],
        env=env, capture_output=True, text=True, timeout=120)))
t.ok(was_held and waiting and other and
     other[0].stdout.strip() == "destroyed",
     "another process destroys the key while the rewrap reads its wrapping "
     "key", "held %s, still waiting %s, %r" % (was_held, waiting, other))
is_(rv, P.CKR_OBJECT_HANDLE_INVALID,
    "the rewrap: CKR_OBJECT_HANDLE_INVALID", s.log_text()[-2000:])
is_(files(), [], "no file put back")
is_(glob.glob(os.path.join(state, ".*.tmp.*")), [], "no temporary file left")
time.sleep(REFRESH + 0.3)
is_(len(find(s1, "elsewhere")), 0, "after refresh-interval it is not listed")

# Two rewraps of one key at once, from two sessions: the vault's answers
# held for both, so that they write and rename together. Each writes its
# own temporary file; one file stays, with the same value.
twice = os.urandom(32)
s1.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                 (P.CKA_TOKEN, True), (P.CKA_LABEL, "twice"),
                 (P.CKA_VALUE, twice), (P.CKA_SENSITIVE, False),
                 (P.CKA_EXTRACTABLE, True), (P.CKA_ENCRYPT, True),
                 (P.CKA_DECRYPT, True)])
h1, h2 = find(s1, "twice"), find(s2, "twice")
emu.admin("POST", "faults", {"kind": "delay", "match": "kvemu:getKey",
                             "delay_ms": 2000, "count": 2})
got = {}
threads = [threading.Thread(target=lambda n=n, ses=ses, h=h: got.update(
    {n: rewrap(ses, h[0])})) for n, ses, h in ((1, s1, h1), (2, s2, h2))]
for th in threads:
    th.start()
for th in threads:
    th.join()
emu.admin("DELETE", "faults")
is_((got.get(1), got.get(2)), (0, 0), "two rewraps of one key at once: both "
    "CKR_OK")
is_(len(files()), 1, "one file")
is_(glob.glob(os.path.join(state, ".*.tmp.*")), [], "no temporary file left")
time.sleep(REFRESH + 0.3)
h2 = find(s2, "twice")
is_(bytes(s2.getAttributeValue(h2[0], [P.CKA_VALUE])[0]) if h2 else None,
    twice, "read again from its file, the key has the same value")
s1.destroyObject(find(s1, "twice")[0])

# 2. A first use unwraps while the file is altered and read again. The key
# is made by another process, so that this one has never held its value.
value = os.urandom(32)
r = subprocess.run([sys.executable, "-c", OTHER, MODULE, value.hex()],
                   env=env, capture_output=True, text=True, timeout=120)
is_(r.stdout.strip(), "made", "another process makes a sensitive key",
    r.stderr)
time.sleep(REFRESH + 0.3)
v1 = find(s1, "victim")
is_(len(v1), 1, "this process lists it")


def alter():
    """The attacker who may write the file: CKA_SENSITIVE off,
    CKA_EXTRACTABLE on, the MAC kept; then a listing reads it."""
    skey_make_extractable(*file_of("victim"))
    time.sleep(REFRESH + 0.3)
    find(s2, "victim")


rv, was_held, waiting = race("kvemu:unwrapKey", lambda: cbc_encrypt(s1, v1[0]),
                             alter)
t.ok(was_held and waiting,
     "the first use unwraps through the vault while the file is altered and "
     "listed again", "held %s, still waiting %s" % (was_held, waiting))
is_(rv, 0, "that use, checked against the file it read, works")
v2 = find(s2, "victim")
ext = bool(s2.getAttributeValue(v2[0], [P.CKA_EXTRACTABLE])[0]) if v2 else None
is_((len(v2), ext), (1, True),
    "the altered file is listed with it (its MAC needs the value)")
# PyKCS11 answers None for CKR_ATTRIBUTE_SENSITIVE.
got = s2.getAttributeValue(v2[0], [P.CKA_VALUE])[0] if v2 else "-"
t.ok(got is None, "the value is not revealed through the altered attributes",
     "the value came back" if got is not None and bytes(got) == value
     else repr(got))
is_(len(find(s2, "victim")), 0, "the altered key is no longer listed")
t.ok(os.path.basename(file_of("victim")[0] or "-") +
     " skipped: its integrity check failed" in s.log_text(),
     "the log names the altered file")
