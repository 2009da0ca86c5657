"""Shared set-up for the tests that drive cmkp11's hsm back end on a
SoftHSM token: a private directory holding a token labelled "cmk" (PIN
1234, tests/softhsm-init.sh), a cmkp11.conf built with kvtest's
conf_text(), and changes made to the lower token from another process, as
an administrator would make them."""
import os
import shutil
import subprocess
import sys
import tempfile

from kvtest import conf_text, write_private, SOFTHSM  # noqa: F401

SRC = os.environ.get("top_srcdir", ".")
PIN = "1234"


def rv_of(fn):
    """CKR_OK or the PyKCS11 error code of fn()."""
    import PyKCS11
    try:
        fn()
        return PyKCS11.CKR_OK
    except PyKCS11.PyKCS11Error as e:
        return e.value


def rv_name(rv):
    """The CKR_ name of a code (hex when PyKCS11 has none)."""
    import PyKCS11
    return PyKCS11.CKR.get(rv, hex(rv))


def softhsm_dir(prefix):
    """A new directory under the current one with a SoftHSM token in
    DIR/softhsm, made the SOFTHSM2_CONF of this process. Skips the test
    (exit 77) where softhsm-init.sh says SoftHSM is missing."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=os.getcwd())
    r = subprocess.run(["sh", os.path.join(SRC, "tests/softhsm-init.sh"),
                        os.path.join(tmp, "softhsm")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode == 77:
        shutil.rmtree(tmp)
        print("1..0 # SKIP " + r.stdout.decode(errors="replace").strip())
        sys.exit(77)
    if r.returncode != 0:
        print("Bail out! softhsm-init.sh failed")
        sys.exit(99)
    os.environ["SOFTHSM2_CONF"] = os.path.join(tmp, "softhsm/softhsm2.conf")
    return tmp


def use_conf(tmp, tokens, **options):
    """Writes TMP/cmkp11.conf from conf_text(tokens, **options), mode 0600,
    and makes it this process's CMKP11_CONF. Returns the path."""
    path = write_private(os.path.join(tmp, "cmkp11.conf"),
                         conf_text(tokens, **options))
    os.environ["CMKP11_CONF"] = path
    return path


# The start of every script run on SoftHSM's token directly (on_lower):
# PyKCS11 as P, and s, a logged-in R/W session on the token labelled "cmk".
PROLOG = r'''
import sys
import PyKCS11 as P
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "cmk"][0]
s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
s.login("1234")
'''


def on_lower(body, *args):
    """Runs BODY after PROLOG in another process, as an administrator
    changing or reading the lower token outside cmkp11 would; ARGS are
    sys.argv[2:]. Returns what it printed, stripped; a failure is an
    AssertionError with its error output."""
    r = subprocess.run([sys.executable, "-c", PROLOG + body, SOFTHSM] +
                       [str(a) for a in args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


# Changes the lower token: ACTION HEXID, where ACTION is "delete", "off"
# (no unwrap, no decrypt), "nodecrypt" (unwrap only) or "enable" (both).
LOWER = r'''
action, cid = sys.argv[2], bytes.fromhex(sys.argv[3])
k = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_ID, cid)])
assert len(k) == 1, k
if action == "delete":
    s.destroyObject(k[0])
else:
    flags = {"off": (False, False), "nodecrypt": (True, False),
             "enable": (True, True)}[action]
    s.setAttributeValue(k[0], [(P.CKA_UNWRAP, flags[0]),
                               (P.CKA_DECRYPT, flags[1])])
s.logout()
'''


def lower(action, cid):
    """Changes the private key with CKA_ID cid (hex) on SoftHSM's token
    directly, not through cmkp11 (LOWER above)."""
    r = subprocess.run([sys.executable, "-c", PROLOG + LOWER, SOFTHSM, action,
                        cid], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        print("Bail out! changing the lower token failed: " +
              r.stdout.decode(errors="replace"))
        sys.exit(99)
