"""Shared set-up for the tests that drive cmkp11's keyvault back end.

Starts the Key Vault emulator (tests/kvemu) in a private directory, writes a
cmkp11 configuration for it, and loads cmkp11 through PyKCS11. Microsoft's
Python SDK is available against the same emulator for cross-checks.
"""
import ctypes
import os
import sys

TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "kvemu"))

import taplib  # noqa: E402
from taplib import Tap, Emu, skip_all  # noqa: E402,F401

try:
    import PyKCS11  # noqa: E402
except ImportError:
    skip_all("python3-pykcs11 missing")

MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(
    os.environ.get("top_builddir", "."), ".libs", "cmkp11.so")
TOOL = os.path.join(os.environ.get("top_builddir") or TOP_SRCDIR,
                    "cmkp11-tool")

# Identities of the emulator configuration below.
TENANT = "72f9e1c1-1e6b-4b0f-9d3a-6b7e0c2a5e10"
APP_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e01"
APP_SECRET = "kvemu-client-secret"
READER_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e11"
READER_SECRET = "reader-secret-value"
MI_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e02"


def emulator_config(extra_vaults=()):
    return {
        "tenants": [TENANT],
        "identities": [
            {"name": "app", "client_id": APP_ID, "client_secrets": [APP_SECRET]},
            {"name": "reader", "client_id": READER_ID,
             "client_secrets": [READER_SECRET]},
            {"name": "mi", "managed": "system", "client_id": MI_ID},
        ],
        "vaults": [
            {"name": "kvemu", "kind": "vault", "sku": "premium",
             "soft_delete": True, "purge_protection": True,
             "access": {"app": ["all"], "mi": ["all"],
                        "reader": ["get", "list"]}},
            {"name": "kvhsm", "kind": "managedhsm",
             "access": {"app": ["all"], "mi": ["all"]}},
        ] + list(extra_vaults),
    }


def write_private(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def token_section(name, **options):
    """The text of one [token NAME] section of cmkp11.conf, one line
    "option = value" per named option in the order given; an option's
    underscores become dashes (vault_url -> vault-url); None leaves it out."""
    return "[token %s]\n" % name + section_lines(options)


def section_lines(options):
    return "".join("%s = %s\n" % (k.replace("_", "-"), v)
                   for k, v in options.items() if v is not None)


SOFTHSM = os.environ.get("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")


def softhsm_in(work):
    """A SoftHSM token "cmk" (PIN 1234, tests/softhsm-init.sh) in
    WORK/softhsm, made this process's SOFTHSM2_CONF; skips the test where
    SoftHSM, pkcs11-tool or PyKCS11 is missing. Returns the directory and
    softhsm-init.sh's completed process (a test checks its return code)."""
    import subprocess
    hsmdir = os.path.join(work, "softhsm")
    st = subprocess.run(["sh", os.path.join(TOP_SRCDIR, "tests",
                                            "softhsm-init.sh"), hsmdir],
                        capture_output=True, text=True)
    if st.returncode == 77:
        skip_all("SoftHSMv2, pkcs11-tool or PyKCS11 is missing")
    os.environ["SOFTHSM2_CONF"] = os.path.join(hsmdir, "softhsm2.conf")
    return hsmdir, st


def hsm_token(name, token_label="cmk", **options):
    """A [token NAME] section for an hsm token on SoftHSM's token_label
    (tests/softhsm-init.sh makes "cmk"); options add to it."""
    o = {"backend": "hsm", "module": SOFTHSM, "token_label": token_label}
    o.update(options)
    return token_section(name, **o)


def emu_token(emu, name, secret_file, **options):
    """A [token NAME] section for the vault "kvemu" of a running emulator
    (taplib.Emu), signing in as the identity "app" of emulator_config()
    with its secret in secret_file; options add to or replace these."""
    o = {"backend": "keyvault", "vault_url": emu.vault_url, "ca_file": emu.ca,
         "auth": "client-secret", "tenant_id": TENANT, "client_id": APP_ID,
         "client_secret_file": secret_file,
         "authority_host": emu.env["AZURE_AUTHORITY_HOST"],
         # Token secret keys stay in the test's directory.
         "state_dir": os.path.join(emu.dir, "secret-keys")}
    o.update(options)
    return token_section(name, **o)


def conf_text(tokens, **options):
    """A cmkp11.conf: [cmkp11] with the named options (as token_section()),
    then the token sections (from token_section() or KvSetup.token(), or
    (name, body) pairs)."""
    text = "[cmkp11]\n" + section_lines(options)
    for tok in tokens:
        if isinstance(tok, tuple):
            tok = "[token %s]\n%s" % tok
        text += "\n" + tok
    return text


class KvSetup:
    """The emulator (config: its configuration, emulator_config() by
    default), files for cmkp11 and a loaded module. The cmkp11
    configuration is written by write_conf() once the emulator's URLs are
    known."""

    def __init__(self, config=None, emu_args=()):
        self.emu = Emu(config or emulator_config(), extra_args=emu_args)
        self.dir = self.emu.dir
        self.app_secret = write_private(os.path.join(self.dir, "app.secret"),
                                        APP_SECRET + "\n")
        self.reader_secret = write_private(
            os.path.join(self.dir, "reader.secret"), READER_SECRET + "\n")
        self.conf = None
        self.lib = None

    def vault_url(self, name="kvemu"):
        return self.emu.url(name)

    def token_options(self, vault="kvemu", auth="client-secret"):
        """The options of a keyvault token on one of the emulator's vaults,
        as an identity of emulator_config() signs in: auth "client-secret"
        (app), "reader" or "imds" (the system-assigned identity)."""
        o = {"backend": "keyvault", "vault_url": self.vault_url(vault),
             "ca_file": self.emu.ca,
             # Token secret keys stay in the test's directory.
             "state_dir": os.path.join(self.dir, "secret-keys")}
        if auth in ("client-secret", "reader"):
            app = auth == "client-secret"
            o.update(auth="client-secret", tenant_id=TENANT,
                     client_id=APP_ID if app else READER_ID,
                     client_secret_file=self.app_secret if app else self.reader_secret,
                     authority_host=self.emu.env["AZURE_AUTHORITY_HOST"])
        elif auth == "imds":
            o.update(auth="managed-identity",
                     imds_endpoint=self.emu.info["KVEMU_IMDS"])
        return o

    def token(self, name, vault="kvemu", auth="client-secret", **options):
        """A [token NAME] section for a vault of the emulator; options add to
        or replace token_options()."""
        o = self.token_options(vault, auth)
        o.update(options)
        return token_section(name, **o)

    def token_body(self, vault="kvemu", auth="client-secret", extra=""):
        return section_lines(self.token_options(vault, auth)) + extra

    def write_conf(self, tokens, refresh=60, log_level="info", name="cmkp11.conf",
                   export=True, **options):
        """Writes DIR/NAME from conf_text(): log-level, log-file
        (DIR/cmkp11.log; None: none), refresh-interval (None: left out) and
        any other [cmkp11] options. export: it becomes CMKP11_CONF (and
        self.conf). Returns the path."""
        o = {"log_level": log_level, "log_file": os.path.join(self.dir, "cmkp11.log"),
             "refresh_interval": refresh}
        o.update(options)
        path = write_private(os.path.join(self.dir, name), conf_text(tokens, **o))
        if export:
            self.conf = path
            os.environ["CMKP11_CONF"] = path
        return path

    def counters(self):
        return self.emu.admin("GET", "counters")

    def load(self):
        self.lib = PyKCS11.PyKCS11Lib()
        self.lib.load(MODULE)
        return self.lib

    def session(self, label, rw=True):
        for slot in self.lib.getSlotList(tokenPresent=True):
            if self.lib.getTokenInfo(slot).label.strip() == label:
                flags = PyKCS11.CKF_SERIAL_SESSION
                if rw:
                    flags |= PyKCS11.CKF_RW_SESSION
                return self.lib.openSession(slot, flags)
        raise RuntimeError("no token %s" % label)

    def create_key(self, name, vault="kvemu", **kw):
        body = {"name": name}
        body.update(kw)
        return self.emu.admin("POST", "vaults/%s/keys" % vault, body)

    def log_text(self):
        try:
            with open(os.path.join(self.dir, "cmkp11.log")) as f:
                return f.read()
        except OSError:
            return ""


def count(counters, route, status=None, identity=None):
    """Requests to a route (kvemu:unwrapKey, login:token ...) in a
    counters snapshot, optionally with one status or from one identity."""
    if identity is not None:
        return counters.get("by_identity_route", {}).get(identity, {}).get(
            route, 0)
    by = counters.get("by_route_status", {}).get(route, {})
    if status is None:
        return sum(by.values())
    return by.get(str(status), 0)


def delta(before, after, route, status=None, identity=None):
    return count(after, route, status, identity) - \
        count(before, route, status, identity)


def find(session, cls, label=None, id=None):
    t = [(PyKCS11.CKA_CLASS, cls)]
    if label is not None:
        t.append((PyKCS11.CKA_LABEL, label))
    if id is not None:
        t.append((PyKCS11.CKA_ID, id))
    return session.findObjects(t)


def ckr(fn, *args):
    """The CKR a call ends with (CKR_OK = 0)."""
    try:
        fn(*args)
    except PyKCS11.PyKCS11Error as e:
        return e.value
    return 0


def aes_template(sensitive=True, extractable=False, token=False):
    return [
        (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
        (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
        (PyKCS11.CKA_TOKEN, token),
        (PyKCS11.CKA_SENSITIVE, sensitive),
        (PyKCS11.CKA_EXTRACTABLE, extractable),
        (PyKCS11.CKA_ENCRYPT, True),
        (PyKCS11.CKA_DECRYPT, True),
        (PyKCS11.CKA_WRAP, True),
        (PyKCS11.CKA_UNWRAP, True),
    ]


OAEP1 = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA_1, PyKCS11.CKG_MGF1_SHA1)
OAEP256 = PyKCS11.RSAOAEPMechanism(PyKCS11.CKM_SHA256, PyKCS11.CKG_MGF1_SHA256)
PKCS1 = PyKCS11.MechanismRSAPKCS1

CKA_CMK_VERSION = PyKCS11.CKA_VENDOR_DEFINED | 0x434D0004
CKA_CMK_KEY_TYPE = PyKCS11.CKA_VENDOR_DEFINED | 0x434D000B


def public_key(session, obj):
    """The python3-cryptography public key of a public-key object."""
    from cryptography.hazmat.primitives import serialization
    return serialization.load_der_public_key(bytes(session.getAttributeValue(
        obj, [PyKCS11.CKA_PUBLIC_KEY_INFO])[0]))


def wrap_oaep256(pk, data):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    return pk.encrypt(data, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                         algorithm=hashes.SHA256(), label=None))


def unwrap(session, priv, pk):
    """Wraps a fresh data key under pk (outside the module) and unwraps it
    through priv. Returns the CKR; CKR_OK only when the value matches."""
    dek = os.urandom(32)
    try:
        h = session.unwrapKey(priv, wrap_oaep256(pk, dek),
                              aes_template(sensitive=False, extractable=True),
                              OAEP256)
        val = bytes(session.getAttributeValue(h, [PyKCS11.CKA_VALUE])[0])
        session.destroyObject(h)
    except PyKCS11.PyKCS11Error as e:
        return e.value
    return 0 if val == dek else -1


def skey_file(state, label):
    """The file of the token secret key labelled label in the state
    directory state, and its JSON; (None, None) if there is none. Files
    that are not JSON are passed over."""
    import glob
    import json
    for f in sorted(glob.glob(os.path.join(state, "*.json"))):
        try:
            with open(f) as fh:
                d = json.load(fh)
        except ValueError:
            continue
        for typ, val in d["attributes"]:
            if int(typ, 16) == PyKCS11.CKA_LABEL and \
                    bytes.fromhex(val) == label.encode():
                return f, d
    return None, None


def skey_make_extractable(path, doc):
    """What an attacker who may write a token secret key's file does:
    CKA_SENSITIVE and CKA_ALWAYS_SENSITIVE off, CKA_EXTRACTABLE on, the
    MAC kept; the file replaced as the module writes it (mode 0600)."""
    import json
    for a in doc["attributes"]:
        if int(a[0], 16) in (PyKCS11.CKA_SENSITIVE,
                             PyKCS11.CKA_ALWAYS_SENSITIVE):
            a[1] = "00"
        if int(a[0], 16) == PyKCS11.CKA_EXTRACTABLE:
            a[1] = "01"
    with open(path + ".new", "w") as out:
        json.dump(doc, out)
    os.chmod(path + ".new", 0o600)
    os.rename(path + ".new", path)


# The start of a helper process's script (python3 -c SCRIPT MODULE ...): a
# read-write session "ses" on token kv of the module argv[1], PyKCS11 as P.
KV_CHILD_SESSION = r'''
import os, sys, PyKCS11 as P
lib = P.PyKCS11Lib(); lib.load(sys.argv[1])
slot = [x for x in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(x).label.strip() == "kv"][0]
ses = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
'''


# PKCS #11 calls through ctypes, which lets other Python threads run while
# a call waits (PyKCS11 keeps Python's lock for the whole call): for tests
# that act on one thread while a call of another is held.
CK_ULONG = ctypes.c_ulong


class CK_ATTRIBUTE(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", ctypes.c_void_p),
                ("ulValueLen", CK_ULONG)]


class CK_MECHANISM(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p),
                ("ulParameterLen", CK_ULONG)]


class CK_FUNCTION_LIST(ctypes.Structure):
    # CK_VERSION, then the functions in the order of PKCS #11 2.40.
    _fields_ = [("version", ctypes.c_ubyte * 2),
                ("f", ctypes.c_void_p * 68)]


# Indexes in CK_FUNCTION_LIST.
C_GET_FUNCTION_LIST, C_SET_ATTRIBUTE_VALUE = 3, 25
C_FIND_OBJECTS_INIT, C_FIND_OBJECTS, C_FIND_OBJECTS_FINAL = 26, 27, 28
C_ENCRYPT_INIT, C_ENCRYPT = 29, 30


class RawP11:
    """The function list of module (the library PyKCS11 loaded: the same
    module, initialised once). ok: its C_GetFunctionList, where PKCS #11
    puts it, answers the same list (its layout is read right)."""

    def __init__(self, module):
        self.so = ctypes.CDLL(module)
        self.fl = ctypes.POINTER(CK_FUNCTION_LIST)()
        self.so.C_GetFunctionList(ctypes.byref(self.fl))
        again = ctypes.POINTER(CK_FUNCTION_LIST)()
        self.fn(C_GET_FUNCTION_LIST, ctypes.c_void_p)(ctypes.byref(again))
        self.ok = ctypes.addressof(again.contents) == \
            ctypes.addressof(self.fl.contents)

    def fn(self, index, *args):
        """The function at index, returning a CK_RV, taking args."""
        return ctypes.CFUNCTYPE(CK_ULONG, *args)(self.fl.contents.f[index])

    def find_count(self, session, template):
        """C_FindObjectsInit, C_FindObjects (up to 16), C_FindObjectsFinal
        on a PyKCS11 session, template of (type, bytes); the number found,
        or the CKR of the first call that failed, as ("rv", CKR)."""
        attrs = (CK_ATTRIBUTE * len(template))()
        keep = []
        for i, (typ, val) in enumerate(template):
            buf = ctypes.create_string_buffer(val, len(val))
            keep.append(buf)
            attrs[i] = CK_ATTRIBUTE(typ, ctypes.cast(buf, ctypes.c_void_p),
                                    len(val))
        h = session.session.value()
        rv = self.fn(C_FIND_OBJECTS_INIT, CK_ULONG,
                     ctypes.POINTER(CK_ATTRIBUTE), CK_ULONG)(
            h, attrs, len(template))
        if rv != 0:
            return ("rv", rv)
        out = (CK_ULONG * 16)()
        n = CK_ULONG(0)
        rv = self.fn(C_FIND_OBJECTS, CK_ULONG, ctypes.POINTER(CK_ULONG),
                     CK_ULONG, ctypes.POINTER(CK_ULONG))(
            h, out, 16, ctypes.byref(n))
        self.fn(C_FIND_OBJECTS_FINAL, CK_ULONG)(h)
        return ("rv", rv) if rv != 0 else n.value
