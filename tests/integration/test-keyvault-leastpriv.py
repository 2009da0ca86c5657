#!/usr/bin/python3
"""Least privilege and the service's own current version (issue 15).

An identity with only get, wrapKey and unwrapKey on an access-policy vault
(what every CMK document grants): find by label, wrap, unwrap, seal,
unseal, a rotation by someone else and the old file unsealed through the
header's version, cmkp11-tool check passes and says what is off; the
versions listing is tried once and then skipped; without keys = the log
names the list permission with the vault's own message. On an RBAC vault
keys/read covers listing. Then ten rotations whose versions share a
created second and whose ids sort against creation: the label object is
always the version GET /keys/NAME calls current, and new wraps use it."""
import gc
import json
import os
import subprocess
import time

from kvtest import (Tap, PyKCS11, KvSetup, find, ckr, aes_template, OAEP256,
                    emulator_config, write_private, count, CKA_CMK_VERSION)

P = PyKCS11
t = Tap()
builddir = os.environ.get("top_builddir", ".")
TOOL = os.path.join(builddir, "cmkp11-tool")
MODULE = os.environ.get("CMKP11_MODULE") or os.path.join(builddir, ".libs",
                                                         "cmkp11.so")
LP_ID = "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e21"
LP_SECRET = "least-privilege-secret"
THREE = ["get", "wrapKey", "unwrapKey"]

cfg = emulator_config(extra_vaults=[
    {"name": "kvrbac", "kind": "vault", "authorization": "rbac",
     "access": {"app": ["all"], "lp": THREE}}])
cfg["identities"].append({"name": "lp", "client_id": LP_ID,
                          "client_secrets": [LP_SECRET]})
cfg["vaults"][0]["access"]["lp"] = THREE
s = KvSetup(cfg)
emu = s.emu
work = s.dir
for vault in ("kvemu", "kvrbac"):
    emu.admin("POST", "vaults/%s/keys" % vault, {"name": "kek"})
emu.admin("POST", "vaults/kvemu/keys", {"name": "spin"})
lp_secret = write_private(os.path.join(work, "lp.secret"), LP_SECRET + "\n")
log = os.path.join(work, "cmkp11.log")
conf = s.write_conf([
    s.token("lp", client_id=LP_ID, client_secret_file=lp_secret, keys="kek"),
    s.token("lpall", client_id=LP_ID, client_secret_file=lp_secret),
    s.token("lprbac", "kvrbac", client_id=LP_ID, client_secret_file=lp_secret, keys="kek"),
    s.token("app", client_id=emu.env["AZURE_CLIENT_ID"], keys="spin"),
], refresh=1)


def log_text():
    with open(log) as f:
        return f.read()


def tool(*args):
    p = subprocess.run([TOOL, "--module", MODULE] + list(args),
                       capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def latest(vault, name):
    """The version the service calls current (GET /keys/NAME)."""
    return emu.admin("GET", "vaults/%s/keys/%s" % (vault, name))["key"]["kid"] \
        .rsplit("/", 1)[1]


def header_version(path):
    """The key version a sealed file names (docs/seal-format.md)."""
    import struct
    with open(path, "rb") as f:
        data = f.read(4096)
    pos, fields = 24, []
    for _ in range(5):
        (n,) = struct.unpack(">H", data[pos:pos + 2])
        fields.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    return fields[2].decode()


lib = P.PyKCS11Lib()
lib.load(MODULE)


def session(label):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            return lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    raise RuntimeError(label)


def round_trip(ses, pub, priv):
    dek = ses.generateKey(aes_template(sensitive=False, extractable=True) +
                          [(P.CKA_VALUE_LEN, 32)])
    value = bytes(ses.getAttributeValue(dek, [P.CKA_VALUE])[0])
    blob = bytes(ses.wrapKey(pub, dek, OAEP256))
    back = ses.unwrapKey(priv, blob, aes_template(sensitive=False,
                                                  extractable=True), OAEP256)
    return bytes(ses.getAttributeValue(back, [P.CKA_VALUE])[0]) == value


# ---- get, wrapKey, unwrapKey only, keys = kek ---------------------------
emu.admin("DELETE", "counters")
ses = session("lp")
priv = find(ses, P.CKO_PRIVATE_KEY, "kek")
pub = find(ses, P.CKO_PUBLIC_KEY, "kek")
t.eq((len(priv), len(pub)), (1, 1),
     "get/wrapKey/unwrapKey only: the key is found by its label")
t.eq(bytes(ses.getAttributeValue(priv[0], [CKA_CMK_VERSION])[0]).decode(),
     latest("kvemu", "kek"), "its label object is the version GET /keys/kek "
     "answered")
t.ok(round_trip(ses, pub[0], priv[0]),
     "C_WrapKey locally and C_UnwrapKey in the vault give the same key")
text = log_text()
t.ok("listing the versions of key kek was refused (403 AccessDenied)" in text
     and "lacks the keys list permission" in text and
     "does not have keys list permission" in text,
     "the log says listing versions was refused, names list and quotes the "
     "vault", text[-2000:])
time.sleep(1.2)  # refresh-interval = 1: the key is loaded again
t.eq(len(find(ses, P.CKO_PRIVATE_KEY, "kek")), 1, "found again after a refresh")
c = emu.admin("GET", "counters")
t.eq(count(c, "kvemu:getKeyVersions", identity="lp"), 1,
     "the refused listing was asked once and then skipped")
t.ok(count(c, "kvemu:getKey", 200) >= 2,
     "each refresh read the current version with GET /keys/kek")
t.eq(text.count("listing the versions of key kek was refused"), 1,
     "and logged once")

# ---- without keys =: listing the vault needs list -------------------------
aes = session("lpall")
t.eq(ckr(aes.findObjects, [(P.CKA_CLASS, P.CKO_PRIVATE_KEY)]),
     P.CKR_KEY_FUNCTION_NOT_PERMITTED,
     "without keys = a search without a label needs list: refused")
text = log_text()
t.ok("listing the keys of kvemu.vault.localhost" in text and
     "needs the keys list permission" in text and "name the keys in keys ="
     in text and "does not have keys list permission on key vault 'kvemu"
     in text, "the log names list, the remedy and the vault's own message",
     text[-1500:])
t.eq(len(find(aes, P.CKO_PRIVATE_KEY, "kek")), 1,
     "the same identity still finds the key by its label")

# ---- RBAC: keys/read covers listing ---------------------------------------
rs = session("lprbac")
t.eq(len(find(rs, P.CKO_PRIVATE_KEY, "kek")), 1,
     "RBAC vault, the same three grants: the key is found")
c = emu.admin("GET", "counters")
t.eq(count(c, "kvrbac:getKeyVersions", 200), 1,
     "RBAC: keys/read covers listing the versions (200)")
# The sessions first, then the module object. The module may stay
# initialized (the next load then finds it so): its view of key kek is
# from before the rotation below, which a search for kek@OLD must see past.
ses = aes = rs = None
lib = None
gc.collect()

# ---- cmkp11-tool: seal, rotate elsewhere, unseal the old file, check ------
plain = os.path.join(work, "plain")
with open(plain, "wb") as f:
    f.write(os.urandom(70000))
rc, out, err = tool("seal", "--token", "lp", "--key", "kek", plain,
                    "-o", plain + ".1")
t.ok(rc == 0, "cmkp11-tool seal with get/wrapKey/unwrapKey only", err)
v1 = header_version(plain + ".1")
st, _, rot = emu.vault("POST", "/keys/kek/rotate", identity="app")
t.eq(st, 200, "the key is rotated by another identity")
v2 = latest("kvemu", "kek")
rc, out, err = tool("seal", "--token", "lp", "--key", "kek", plain,
                    "-o", plain + ".2")
t.ok(rc == 0 and header_version(plain + ".2") == v2 != v1,
     "a new seal uses the rotated version", err)
for n in ("1", "2"):
    rc, out, err = tool("unseal", plain + "." + n,
                        "-o", plain + ".out" + n)
    t.ok(rc == 0 and open(plain + ".out" + n, "rb").read() ==
         open(plain, "rb").read(), "unseal the file of version %s" %
         ("1 (read by the header's version, no listing)" if n == "1" else "2"),
         err)
rc, out, err = tool("list", "pkcs11:token=lp;object=kek@" + v1)
t.ok(rc == 0 and v1 in out,
     "cmkp11-tool list of a URI naming the older version finds it", out + err)
rc, out, err = tool("list", "pkcs11:token=lp;id=" + "".join(
    "%%%s" % v1[i:i + 2] for i in range(0, 32, 2)))
t.ok(rc == 0 and v1 in out, "and of a URI naming it by id", out + err)
rc, out, err = tool("--json", "check", "lp", "kek")
doc = json.loads(out) if out.startswith("{") else {}
checks = doc.get("checks") or [c for k in doc.get("keys", [])
                               for c in k.get("checks", [])]
rows = {r["name"]: r for r in checks}
t.ok(rc == 0 and doc.get("result") == "PASS",
     "cmkp11-tool check passes on a least-privilege identity", out + err)
opt = rows.get("optional", {})
t.ok(opt.get("result") == "PASS" and "without the keys list permission" in
     opt.get("detail", "") and "unwrap-fallback" in opt.get("detail", "") and
     "rotate" in opt.get("detail", ""),
     "and says which optional features are off", opt)

# ---- an older version named by a label or by CKA_ID, without list -------
lib = P.PyKCS11Lib()
lib.load(MODULE)
ses = session("lp")
old = find(ses, P.CKO_PRIVATE_KEY, "kek@" + v1)
t.eq(len(old), 1, "the version before the rotation is found by NAME@VERSION")
oldpub = find(ses, P.CKO_PUBLIC_KEY, id=bytes.fromhex(v1))
t.eq(len(oldpub), 1, "and by its CKA_ID alone (pkcs11:id=...)")
t.ok(len(old) == 1 and len(oldpub) == 1 and round_trip(ses, oldpub[0], old[0]),
     "and it unwraps what its public key wrapped")
t.eq(len(find(ses, P.CKO_PRIVATE_KEY, id=bytes(16))), 0,
     "a CKA_ID that is no version finds nothing")

# ---- ten rotations in one created second, ids against creation ------------
emu.admin("PATCH", "vaults/kvemu", {"same_created": True,
                                    "descending_ids": True})
app = session("app")
ses = None
MECH = P.Mechanism(P.CKM_RSA_PKCS_KEY_PAIR_GEN, None)
pubt = [(P.CKA_CLASS, P.CKO_PUBLIC_KEY), (P.CKA_KEY_TYPE, P.CKK_RSA),
        (P.CKA_LABEL, "spin"), (P.CKA_TOKEN, True)]
privt = [(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_KEY_TYPE, P.CKK_RSA),
         (P.CKA_LABEL, "spin"), (P.CKA_TOKEN, True)]
good = 0
made = []
for i in range(10):
    npub, npriv = app.generateKeyPair(pubt, privt, MECH)
    ver = bytes(app.getAttributeValue(npriv, [CKA_CMK_VERSION])[0]).decode()
    made.append(ver)
    lp_ = find(app, P.CKO_PRIVATE_KEY, "spin")
    lpub = find(app, P.CKO_PUBLIC_KEY, "spin")
    cur = bytes(app.getAttributeValue(lp_[0], [CKA_CMK_VERSION])[0]).decode() \
        if len(lp_) == 1 else None
    if cur == ver == latest("kvemu", "spin") and round_trip(app, lpub[0],
                                                            lp_[0]):
        good += 1
t.eq(good, 10, "ten rotations: the label object is each time the newest "
     "version, and new wraps under it unwrap through it")
st, _, lst = emu.vault("GET", "/keys/spin/versions?maxresults=25")
ids = [x["kid"].rsplit("/", 1)[1] for x in lst["value"]]
created = {x["attributes"]["created"] for x in lst["value"]}
t.ok(ids == sorted(ids) and ids[0] == made[-1] and len(created) == 1,
     "the emulator lists versions by id, against creation, all in one "
     "created second", (ids, made, created))
t.eq(emu.admin("GET", "vaults/kvemu/keys/spin")["key"]["kid"].rsplit("/", 1)[1],
     made[-1], "GET /keys/spin answers the last one made")
