#!/usr/bin/python3
"""The bearer token goes only to the vault (issue 15, item 3).

The emulator's foreign_next_link knob makes a vault's nextLink point at
another host, which records whether each request carried Authorization.
cmkp11 keeps the vault's first page, does not follow the link to the other
host (and says so), and the other host never receives the vault's token. Microsoft's SDK,
the reference, gives that host no token either."""
import os

from kvtest import (Tap, PyKCS11, emulator_config, write_private,
                    APP_SECRET, conf_text, emu_token)
from taplib import Emu

P = PyKCS11
t = Tap()
builddir = os.environ.get("top_builddir", ".")
MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
FOREIGN = "elsewhere.localhost"

emu = Emu(emulator_config())
work = emu.dir
emu.admin("POST", "vaults/kvemu/keys", {"name": "k", "count": 30})
secret = write_private(os.path.join(work, "app.secret"), APP_SECRET + "\n")
log = os.path.join(work, "cmkp11.log")
conf = conf_text([emu_token(emu, "kv", secret)], log_level="info",
                 log_file=log)
os.environ["CMKP11_CONF"] = write_private(os.path.join(work, "cmkp11.conf"),
                                          conf)

# The same-origin nextLink is followed: all 30 keys.
lib = P.PyKCS11Lib()
lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
ses = lib.openSession(slot, P.CKF_SERIAL_SESSION)
t.eq(len(ses.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY)])), 30,
     "a nextLink on the vault is followed: 30 keys over two pages")
ses.closeSession()
ses = lib = None  # C_Finalize before the module is loaded again

emu.admin("PATCH", "vaults/kvemu", {"foreign_next_link": FOREIGN})
lib = P.PyKCS11Lib()
lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
ses = lib.openSession(slot, P.CKF_SERIAL_SESSION)
t.eq(len(ses.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY)])), 25,
     "a nextLink on another host: the listing stops at the vault's page")
with open(log) as f:
    text = f.read()
t.ok("the vault sent a link to https://%s:%d/keys, which is not on "
     "kvemu.vault.localhost:%d: not following it" % (FOREIGN, emu.port,
                                                     emu.port) in text,
     "the log names the other host and why it is not followed", text[-800:])
reqs = emu.admin("GET", "foreign")["requests"]
t.eq([r for r in reqs if r["authorization"]], [],
     "the other host received no Authorization header")
t.eq(len(ses.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                          (P.CKA_LABEL, "k-05")])), 1,
     "a key found by its label is still found")

# The reference: Microsoft's SDK gives the other host no token either.
client = emu.key_client()
try:
    names = [k.name for k in client.list_properties_of_keys()]
    sdk_err = None
except Exception as e:  # the SDK refuses the other host's challenge
    names, sdk_err = None, e
reqs = emu.admin("GET", "foreign")["requests"]
t.ok(len(reqs) >= 1 and not any(r["authorization"] for r in reqs),
     "the SDK too sent the other host no token (%s)" %
     ("it stopped: %s" % type(sdk_err).__name__ if sdk_err else
      "it listed %s keys" % len(names)), reqs)
