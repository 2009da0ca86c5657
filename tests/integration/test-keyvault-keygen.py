#!/usr/bin/python3
"""C_GenerateKeyPair on keyvault tokens, with the plain template
pkcs11-tool --keypairgen sends: a new label creates a key of the token's
key-type; an existing label without a size rotates (the new version
becomes the label object, the old one stays reachable by CKA_ID and by
NAME@VERSION and still unwraps its data); an existing label with
CKA_MODULUS_BITS creates a new version of that size; RSA-HSM on a Managed
HSM."""
from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, delta, unwrap,
                    public_key, CKA_CMK_VERSION, CKA_CMK_KEY_TYPE)

P = PyKCS11
t = Tap()
s = KvSetup()
emu = s.emu
s.write_conf([
    ("kv", s.token_body()),
    ("kvhsmtype", s.token_body(extra="key-type = RSA-HSM\n")),
    ("mhsm", s.token_body("kvhsm", extra="key-type = RSA-HSM\n")),
])
s.load()
MECH = P.Mechanism(P.CKM_RSA_PKCS_KEY_PAIR_GEN)


def templates(label, bits=None):
    """What pkcs11-tool --keypairgen --label LABEL sends (plus a size)."""
    pub = [(P.CKA_TOKEN, True), (P.CKA_ENCRYPT, True), (P.CKA_VERIFY, True),
           (P.CKA_WRAP, True), (P.CKA_PUBLIC_EXPONENT, (1, 0, 1)),
           (P.CKA_LABEL, label)]
    if bits is not None:
        pub.append((P.CKA_MODULUS_BITS, bits))
    priv = [(P.CKA_TOKEN, True), (P.CKA_PRIVATE, True),
            (P.CKA_SENSITIVE, True), (P.CKA_DECRYPT, True),
            (P.CKA_SIGN, True), (P.CKA_UNWRAP, True), (P.CKA_LABEL, label)]
    return pub, priv


def generate(sess, label, bits=None):
    pub, priv = templates(label, bits)
    return sess.generateKeyPair(pub, priv, MECH)


def attr(sess, obj, a):
    return sess.getAttributeValue(obj, [a])[0]


def text(sess, obj, a):
    v = attr(sess, obj, a)
    return v if isinstance(v, str) else bytes(v).decode()


def vault_key(name, vault="kvemu", version=""):
    url = s.vault_url(vault) + "/keys/%s%s" % (name, "/" + version
                                               if version else "")
    st, _, body = emu.vault("GET", url)
    return body["key"] if st == 200 else None


ses = s.session("kv")

# ---- a new key ------------------------------------------------------------
b = s.counters()
pub1, priv1 = generate(ses, "gen1")
a = s.counters()
t.eq(delta(b, a, "kvemu:createKey", 200), 1, "a new label: Key Vault create")
t.eq(text(ses, priv1, P.CKA_LABEL), "gen1", "the new key pair is labelled gen1")
t.eq(text(ses, pub1, P.CKA_LABEL), "gen1", "both objects")
t.eq(attr(ses, pub1, P.CKA_MODULUS_BITS), 2048, "no size: 2048 bits")
t.eq(text(ses, priv1, CKA_CMK_KEY_TYPE), "RSA",
     "CKA_CMK_KEY_TYPE is the token's key-type (RSA)")
vk = vault_key("gen1")
t.eq(vk and vk["kty"], "RSA", "the vault holds an RSA key")
ver1 = text(ses, priv1, CKA_CMK_VERSION)
t.eq(vk and vk["kid"].rsplit("/", 1)[1], ver1,
     "the object's version is the vault's current version")
id1 = bytes(attr(ses, priv1, P.CKA_ID))
t.eq(id1.hex(), ver1, "CKA_ID is the version's bytes")
pk1 = public_key(ses, pub1)
t.eq(unwrap(ses, priv1, pk1), 0, "the new key unwraps")
found = find(ses, P.CKO_PRIVATE_KEY, "gen1")
t.eq([o.value() for o in found], [priv1.value()],
     "a search by label finds the generated handle")

hs = s.session("kvhsmtype")
hpub, hpriv = generate(hs, "genhsm")
t.eq(text(hs, hpriv, CKA_CMK_KEY_TYPE), "RSA-HSM",
     "key-type = RSA-HSM: CKA_CMK_KEY_TYPE RSA-HSM")
t.eq((vault_key("genhsm") or {}).get("kty"), "RSA-HSM",
     "and the vault holds an RSA-HSM key")

# ---- rotation: the same label, no size -----------------------------------
b = s.counters()
pub2, priv2 = generate(ses, "gen1")
a = s.counters()
t.eq(delta(b, a, "kvemu:rotateKey", 200), 1,
     "an existing label without a size: Key Vault rotate")
t.eq(delta(b, a, "kvemu:createKey"), 0, "not create")
ver2 = text(ses, priv2, CKA_CMK_VERSION)
t.ok(ver2 != ver1 and len(ver2) == 32, "a new version")
t.eq(vault_key("gen1")["kid"].rsplit("/", 1)[1], ver2,
     "it is the vault's current version")
t.eq(text(ses, priv2, P.CKA_LABEL), "gen1", "the new version is labelled gen1")
t.eq(attr(ses, pub2, P.CKA_MODULUS_BITS), 2048, "same size as before")
t.eq(text(ses, priv2, CKA_CMK_KEY_TYPE), "RSA", "same type")
t.ok(public_key(ses, pub2).public_numbers() != pk1.public_numbers(),
     "new key material")
found = find(ses, P.CKO_PRIVATE_KEY, "gen1")
t.eq([o.value() for o in found], [priv2.value()],
     "the label finds only the new version")
t.eq(text(ses, priv1, P.CKA_LABEL), "gen1@" + ver1,
     "the old handle is now labelled gen1@VERSION")
t.eq([o.value() for o in find(ses, P.CKO_PRIVATE_KEY, id=id1)],
     [priv1.value()], "the old version is reachable by its CKA_ID")
t.eq([o.value() for o in find(ses, P.CKO_PRIVATE_KEY, "gen1@" + ver1)],
     [priv1.value()], "and by gen1@VERSION")
t.eq(unwrap(ses, priv1, pk1), 0, "the old handle still unwraps its own data")
t.eq(unwrap(ses, priv2, public_key(ses, pub2)), 0, "the new one unwraps")

# ---- a new version of another size ---------------------------------------
b = s.counters()
pub3, priv3 = generate(ses, "gen1", 3072)
a = s.counters()
t.eq(delta(b, a, "kvemu:createKey", 200), 1,
     "an existing label with CKA_MODULUS_BITS: Key Vault create")
t.eq(delta(b, a, "kvemu:rotateKey"), 0, "not rotate")
ver3 = text(ses, priv3, CKA_CMK_VERSION)
t.ok(ver3 not in (ver1, ver2), "a third version")
t.eq(attr(ses, pub3, P.CKA_MODULUS_BITS), 3072, "of 3072 bits")
t.eq(public_key(ses, pub3).key_size, 3072, "CKA_PUBLIC_KEY_INFO agrees")
vk = vault_key("gen1")
t.ok(vk and vk["kid"].endswith(ver3) and vk["kty"] == "RSA",
     "the vault's current version is the 3072-bit RSA key")
t.eq([o.value() for o in find(ses, P.CKO_PRIVATE_KEY, "gen1")],
     [priv3.value()], "the label now means the 3072-bit version")
t.eq(text(ses, priv2, P.CKA_LABEL), "gen1@" + ver2,
     "the previous version is gen1@VERSION")
allp = find(ses, P.CKO_PRIVATE_KEY)
t.eq(sorted(text(ses, o, P.CKA_LABEL) for o in allp
            if text(ses, o, P.CKA_LABEL).startswith("gen1")),
     sorted(["gen1", "gen1@" + ver1, "gen1@" + ver2]),
     "a search without a label lists gen1's three versions")
t.eq(unwrap(ses, priv3, public_key(ses, pub3)), 0, "the 3072-bit version "
     "unwraps")
t.eq(ckr(generate, ses, "gen1", 1024), P.CKR_KEY_SIZE_RANGE,
     "1024 bits: CKR_KEY_SIZE_RANGE")
t.eq(ckr(generate, ses, "bad_name"), P.CKR_ATTRIBUTE_VALUE_INVALID,
     "a name Key Vault refuses: CKR_ATTRIBUTE_VALUE_INVALID")

# ---- Managed HSM ------------------------------------------------------------
ms = s.session("mhsm")
b = s.counters()
mpub, mpriv = generate(ms, "hsmgen")
a = s.counters()
t.eq(delta(b, a, "kvhsm:createKey", 200), 1, "Managed HSM: create")
t.eq(text(ms, mpriv, CKA_CMK_KEY_TYPE), "RSA-HSM",
     "Managed HSM: CKA_CMK_KEY_TYPE RSA-HSM")
t.eq((vault_key("hsmgen", "kvhsm") or {}).get("kty"), "RSA-HSM",
     "the Managed HSM holds an RSA-HSM key")
t.eq(unwrap(ms, mpriv, public_key(ms, mpub)), 0, "and it unwraps")
mpub2, mpriv2 = generate(ms, "hsmgen")
t.ok(text(ms, mpriv2, CKA_CMK_VERSION) != text(ms, mpriv, CKA_CMK_VERSION)
     and text(ms, mpriv2, P.CKA_LABEL) == "hsmgen" and
     text(ms, mpriv2, CKA_CMK_KEY_TYPE) == "RSA-HSM",
     "Managed HSM: rotation keeps RSA-HSM and moves the label")
s.lib = None
