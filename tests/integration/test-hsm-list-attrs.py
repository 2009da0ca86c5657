#!/usr/bin/python3
"""The hsm back end reads a lower key pair's attributes a few calls at a
time (provider/hsm/hsm-list.c, get_attrs), and one by one where the lower
token answers a template of several otherwise.

The lower token is SoftHSM behind tests/p11-fault.c, which logs the size
of every C_GetAttributeValue template (CMKP11_FAULT_ATTR_LOG) and, with
CMKP11_FAULT_ATTRS=single, answers CKR_FUNCTION_FAILED to any template of
more than one attribute, as a module that reads one attribute a call.
The token has the pairs of tests/softhsm-init.sh (usage flags off on some
private keys), and, set here on SoftHSM directly: a start date on one
public key, CKA_ENCRYPT off on another, and a pair whose 300-byte label
does not fit the buffer a batched read gives it.

- every object's attributes through cmkp11 (PyKCS11, each listing in a
  process of its own) are the same whether the lower token reads several
  attributes a call or one;
- they agree with what SoftHSM itself says of each pair (PyKCS11 on
  SoftHSM directly, a reference this project did not write): modulus,
  exponent, usage flags, CKA_LOCAL, the start date as CKA_CMK_CREATED,
  the long label;
- a listing reads several attributes a call, and makes fewer than half
  the calls of a listing one attribute a call;
- a lower token that answers CKR_OK with lengths larger than the buffers
  it was given (not as the specification says) is read one attribute a
  call, with the same result; one whose CKA_START_DATE is 200 bytes (too
  long for a date) gives versions without a creation time, and nothing
  else changes (the process would crash, or a sanitizer build report,
  where a value is written past its buffer).

TAP output.
"""
import atexit
import calendar
import json
import os
import shutil
import subprocess
import sys

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "integration"))

from kvtest import MODULE, SOFTHSM, Tap, hsm_token  # noqa: E402
from kvtest import write_private  # noqa: E402
from hsmtest import softhsm_dir, use_conf, on_lower, PIN  # noqa: E402

BUILD = os.environ.get("top_builddir", ".")
FAULT_LIB = os.path.join(BUILD, ".libs/p11-fault.so")
LONG = "long-label-" + "x" * 289  # 300 bytes
START = (2026, 11, 5)

t = Tap()
tmp = softhsm_dir("tmp-hsm-list-attrs-")
atexit.register(lambda: t.failed or shutil.rmtree(tmp, ignore_errors=True))
LOG = os.path.join(tmp, "attr-calls")
os.environ["CMKP11_FAULT_MODULE"] = SOFTHSM
os.environ.pop("CMKP11_FAULT_ATTRS", None)
os.environ.pop("CMKP11_FAULT_ATTR_LOG", None)
pin = write_private(os.path.join(tmp, "pin"), PIN)
use_conf(tmp, [hsm_token("t", module=FAULT_LIB, pin_file=pin)],
         log_level="error")

# On SoftHSM directly: a start date on kek's public key (version 02),
# CKA_ENCRYPT off on unwrap-only's public key, a pair with a long label.
on_lower(r'''
def pub(cid):
    return s.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY),
                          (P.CKA_ID, bytes.fromhex(cid))])[0]
s.setAttributeValue(pub("02"), [(P.CKA_START_DATE, b"20261105")])
s.setAttributeValue(pub("30"), [(P.CKA_ENCRYPT, False)])
s.generateKeyPair(
    [(P.CKA_TOKEN, True), (P.CKA_LABEL, sys.argv[2]), (P.CKA_ID, b"\x40"),
     (P.CKA_MODULUS_BITS, 2048), (P.CKA_ENCRYPT, True), (P.CKA_WRAP, True),
     (P.CKA_VERIFY, True)],
    [(P.CKA_TOKEN, True), (P.CKA_LABEL, sys.argv[2]), (P.CKA_ID, b"\x40"),
     (P.CKA_PRIVATE, True), (P.CKA_SENSITIVE, True), (P.CKA_DECRYPT, True),
     (P.CKA_UNWRAP, True), (P.CKA_SIGN, True)],
    mecha=P.MechanismRSAGENERATEKEYPAIR)
s.logout()
''', LONG)

# Every RSA key object of the token labelled sys.argv[2] of the module
# sys.argv[1] (PIN sys.argv[3]), as JSON: attribute name -> value (hex for
# bytes, bool, int or text), keyed "CLASS ID-HEX LABEL".
DUMP = r'''
import json
import sys
import PyKCS11 as P
V = P.CKA_VENDOR_DEFINED | 0x434D0000
ATTRS = {"id": P.CKA_ID, "label": P.CKA_LABEL, "modulus": P.CKA_MODULUS,
         "exponent": P.CKA_PUBLIC_EXPONENT, "local": P.CKA_LOCAL,
         "start": P.CKA_START_DATE}
PRIV = {"decrypt": P.CKA_DECRYPT, "unwrap": P.CKA_UNWRAP,
        "sign": P.CKA_SIGN}
PUB = {"encrypt": P.CKA_ENCRYPT, "wrap": P.CKA_WRAP,
       "verify": P.CKA_VERIFY}
CMK = {"spki": P.CKA_PUBLIC_KEY_INFO, "ops": V | 9, "created": V | 6,
       "enabled": V | 5, "current": V | 10, "name": V | 3}
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == sys.argv[2]][0]
s = lib.openSession(slot, P.CKF_SERIAL_SESSION)
s.login(sys.argv[3])
cmk = len(sys.argv) > 4
out = {}
for cls, name, extra in ((P.CKO_PRIVATE_KEY, "private", PRIV),
                         (P.CKO_PUBLIC_KEY, "public", PUB)):
    for o in s.findObjects([(P.CKA_CLASS, cls), (P.CKA_KEY_TYPE, P.CKK_RSA)]):
        want = dict(ATTRS, **extra)
        if cmk:
            want.update(CMK)
        d = {}
        for k, a in want.items():
            try:
                v = s.getAttributeValue(o, [a])[0]
            except P.PyKCS11Error as e:
                v = "error %s" % P.CKR.get(e.value, e.value)
            if isinstance(v, (tuple, list)) and k in ("ops", "created",
                                                      "name"):
                v = bytes(v).decode()  # vendor text: bytes to PyKCS11
            elif isinstance(v, (tuple, list)) and k in ("enabled",
                                                        "current"):
                v = bytes(v) != b"\0"
            elif isinstance(v, (tuple, list)):
                v = bytes(v).hex()
            elif isinstance(v, bytes):
                v = v.hex()
            d[k] = v
        out["%s %s %s" % (name, d["id"], d["label"])] = d
print(json.dumps(out, sort_keys=True))
'''


def dump(module, label, cmk, mode=None):
    """The objects, listed by a process of its own; and the template size
    of every lower C_GetAttributeValue it made (through the fault
    library, in CMKP11_FAULT_ATTRS mode MODE)."""
    env = dict(os.environ, CMKP11_FAULT_ATTR_LOG=LOG)
    if mode:
        env["CMKP11_FAULT_ATTRS"] = mode
    open(LOG, "w").close()
    r = subprocess.run([sys.executable, "-c", DUMP, module, label, PIN] +
                       (["cmk"] if cmk else []), env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        print("Bail out! listing failed: " + r.stderr[-2000:])
        sys.exit(99)
    with open(LOG) as f:
        sizes = [int(x) for x in f.read().split()]
    return json.loads(r.stdout), sizes


def differ(a, b):
    """The first two objects whose attributes differ, for a diagnostic."""
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)][:2]


batched, b_sizes = dump(MODULE, "t", True)
single, s_sizes = dump(MODULE, "t", True, "single")
lower, _ = dump(SOFTHSM, "cmk", False)

t.ok(len(batched) == 12, "6 versions, 12 objects through cmkp11",
   sorted(batched))
t.ok(batched == single,
     "every attribute of every object is the same whether the lower token "
     "reads several attributes a call or one", differ(batched, single))
t.ok(any(n > 1 for n in b_sizes),
     "a listing reads several attributes a call (%d calls, the largest "
     "template %d)" % (len(b_sizes), max(b_sizes or [0])))
refused = [n for n in s_sizes if n > 1]
reached = [n for n in s_sizes if n == 1]
t.ok(refused and len(reached) >= sum(refused),
     "refused, every attribute of each refused template is read alone "
     "(%d templates of %d attributes, %d calls of one)" %
     (len(refused), sum(refused), len(reached)))
t.ok(0 < len(b_sizes) * 2 < len(reached),
     "a listing makes fewer than half the calls: %d against %d" %
     (len(b_sizes), len(reached)))


def find(objs, cls, cid):
    got = [v for k, v in objs.items() if k.startswith("%s %s " % (cls, cid))]
    return got[0] if len(got) == 1 else None


bad = []
for cid in ("01", "02", "10", "20", "30", "40"):
    lp, lq = find(lower, "private", cid), find(lower, "public", cid)
    cp, cq = find(batched, "private", cid), find(batched, "public", cid)
    if None in (lp, lq, cp, cq):
        bad.append((cid, "missing"))
        continue
    for k in ("modulus", "exponent", "label"):
        if not (cp[k] == cq[k] == lq[k]):
            bad.append((cid, k))
    enabled = lp["decrypt"] or lp["unwrap"]
    want = {"decrypt": lp["decrypt"], "unwrap": lp["unwrap"],
            "sign": lp["sign"] and enabled, "local": lp["local"],
            "enabled": enabled}
    for k, v in want.items():
        if cp[k] != v:
            bad.append((cid, "private " + k, cp[k], v))
    for k in ("encrypt", "wrap"):
        if cq[k] != (lq[k] and enabled):
            bad.append((cid, "public " + k, cq[k], lq[k]))
t.ok(bad == [], "modulus, exponent, label, usage flags and CKA_LOCAL of "
     "each pair are what SoftHSM says of it", bad)
t.eq(find(batched, "public", "30")["encrypt"], False,
     "unwrap-only: CKA_ENCRYPT off on the lower public key is off")
t.eq(find(batched, "public", "30")["wrap"], True,
     "and its CKA_WRAP stays on")
t.eq(find(batched, "private", "02")["created"],
     str(calendar.timegm(START + (0, 0, 0, 0, 0, 0))),
     "kek 02: the lower public key's start date is CKA_CMK_CREATED")
t.eq(find(batched, "private", "01")["created"], "",
     "kek 01, without one: empty")
t.eq(find(batched, "private", "40")["name"], LONG,
     "the pair with a 300-byte label is listed under it")
t.ok(find(batched, "private", "40")["ops"] ==
     "decrypt,unwrapKey,sign,encrypt,wrapKey,verify",
     "with every operation", find(batched, "private", "40")["ops"])

over, _ = dump(MODULE, "t", True, "overstate")
t.ok(over == batched,
     "a token that answers CKR_OK with lengths past its buffers: the same "
     "objects and attributes", differ(batched, over))
longd, _ = dump(MODULE, "t", True, "long-date")
t.ok(all(v["created"] == "" for v in longd.values()),
     "a 200-byte CKA_START_DATE: no creation time on any version",
     sorted(set(v["created"] for v in longd.values())))
t.ok({k: dict(v, created="") for k, v in longd.items()} ==
     {k: dict(v, created="") for k, v in batched.items()},
     "and every other attribute as before")
