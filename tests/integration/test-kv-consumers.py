#!/usr/bin/python3
"""The consumers users already run, on a keyvault token served by the Key
Vault emulator: pkcs11-tool (objects, key pair generation, OAEP decryption
with SHA-1 and SHA-256, RSA PKCS#1 and PSS signatures, and --unwrap into a
token secret key), OpenSSL 3 through libp11's pkcs11 engine (decrypt,
sign, a self-signed certificate from `openssl req -x509`), and p11-kit's
proxy as an unprivileged user. Plain OpenSSL checks every result with the
public key, and the emulator's counters show the private-key operations
reached the vault."""
import base64
import glob
import os
import pwd
import shutil
import subprocess
import tempfile

from kvtest import Tap, KvSetup, MODULE, skip_all, delta, conf_text

for tool in ("pkcs11-tool", "openssl"):
    if shutil.which(tool) is None:
        skip_all("%s is not installed" % tool)
ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
PROXY = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"

t = Tap()
s = KvSetup()
emu = s.emu
d = s.dir
# PKCS#1 v1.5 decryption is refused on keyvault tokens by default (Key
# Vault's RSA1_5 is a padding oracle); these consumers use it on purpose.
s.write_conf([("kv", s.token_body(extra="rsa-pkcs1-decrypt = allow\n"
                                         "wrapping-key = kek\n"))],
             log_level="error")
s.create_key("kek", key_size=2048)
TOOL = ["pkcs11-tool", "--module", MODULE]


def path(name):
    return os.path.join(d, name)


def run(args, env=None, **kw):
    """(exit status, stdout and stderr together)."""
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, env=env, timeout=60, **kw)
    return p.returncode, p.stdout.decode(errors="replace")


def plain(*args):
    """openssl without any configuration (no engine)."""
    return run(["openssl"] + list(args),
               env=dict(os.environ, OPENSSL_CONF="/dev/null"))


def ok_run(res, desc):
    """ok when the command exited 0; its output as diagnostics otherwise."""
    return t.ok(res[0] == 0, desc, res[1])


def read(name):
    with open(path(name), "rb") as f:
        return f.read()


def write(name, data):
    with open(path(name), "wb") as f:
        f.write(data)
    return path(name)


def b64url(v):
    return base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))


def vault_key(name):
    st, _, body = emu.vault("GET", "/keys/%s" % name)
    return body["key"] if st == 200 else None


def modulus_of(pem):
    """The modulus of a PEM public key, as bytes."""
    rc, out = plain("rsa", "-pubin", "-in", pem, "-noout", "-modulus")
    if rc != 0 or "Modulus=" not in out:
        return None
    return bytes.fromhex(out.split("Modulus=", 1)[1].strip())


def oaep_opts(md):
    return ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt",
            "rsa_oaep_md:" + md, "-pkeyopt", "rsa_mgf1_md:" + md]


def encrypt(pem, data_name, out_name, opts):
    return plain("pkeyutl", "-encrypt", "-pubin", "-inkey", pem, "-in",
                 path(data_name), "-out", path(out_name), *opts)


# ---- pkcs11-tool -----------------------------------------------------------
res = run(TOOL + ["-L"])
ok_run(res, "pkcs11-tool -L exits 0")
t.ok("token label        : kv" in res[1] and "token model        : Key Vault"
     in res[1], "-L shows the keyvault token kv", res[1])

res = run(TOOL + ["-O"])
ok_run(res, "pkcs11-tool -O exits 0")
kek = vault_key("kek")
kek_id = kek["kid"].rsplit("/", 1)[1]
t.ok("Private Key Object; RSA" in res[1] and "Public Key Object; RSA 2048 bits"
     in res[1] and "label:      kek" in res[1] and "ID:         " + kek_id
     in res[1], "-O lists kek's key pair, CKA_ID the vault's version", res[1])

# The public key as consumers read it, against the vault's JWK.
res = run(TOOL + ["--read-object", "--type", "pubkey", "--label", "kek", "-o",
                  path("kek.der")])
ok_run(res, "pkcs11-tool --read-object --type pubkey exits 0")
ok_run(plain("pkey", "-pubin", "-inform", "DER", "-in", path("kek.der"), "-out",
             path("kek.pem")), "openssl reads the exported public key")
KEK = path("kek.pem")
t.eq(modulus_of(KEK), b64url(kek["n"]),
     "it is the vault's key (the JWK's modulus)")

# A new key pair: Key Vault creates the key.
b = s.counters()
res = run(TOOL + ["--keypairgen", "--key-type", "rsa:2048", "--label", "NEW"])
ok_run(res, "pkcs11-tool --keypairgen --key-type rsa:2048 --label NEW exits 0")
a = s.counters()
t.eq(delta(b, a, "kvemu:createKey", 200), 1, "the vault got one create request")
new = vault_key("NEW")
t.ok(new is not None and new["kty"] == "RSA" and len(b64url(new["n"])) == 256,
     "the vault holds NEW, an RSA 2048-bit key", new)
new_id = new["kid"].rsplit("/", 1)[1] if new else "?"
t.ok("label:      NEW" in res[1] and "ID:         " + new_id in res[1],
     "pkcs11-tool shows the new pair with the vault's version as CKA_ID",
     res[1])
res = run(TOOL + ["--read-object", "--type", "pubkey", "--label", "NEW", "-o",
                  path("new.der")])
t.ok(res[0] == 0 and plain("pkey", "-pubin", "-inform", "DER", "-in",
                           path("new.der"), "-out", path("new.pem"))[0] == 0
     and new is not None and modulus_of(path("new.pem")) == b64url(new["n"]),
     "its public key read through the token is the vault's", res[1])

# OAEP decryption of what plain OpenSSL encrypted.
write("dek", os.urandom(32))
for hash_alg, md in (("SHA-1", "sha1"), ("SHA256", "sha256")):
    encrypt(KEK, "dek", "dek.oaep-" + md, oaep_opts(md))
    b = s.counters()
    res = run(TOOL + ["--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm",
                      hash_alg, "--label", "kek", "-i",
                      path("dek.oaep-" + md), "-o", path("back")])
    ok_run(res, "pkcs11-tool --decrypt -m RSA-PKCS-OAEP --hash-algorithm %s "
           "exits 0" % hash_alg)
    t.ok(os.path.exists(path("back")) and read("back") == read("dek"),
         "OAEP %s: it gives back the data key" % hash_alg)
    t.eq(delta(b, s.counters(), "kvemu:decrypt", 200), 1,
         "OAEP %s: decrypted by the vault" % hash_alg)
    os.unlink(path("back"))

# Signatures, checked by plain OpenSSL.
write("msg", b"a message signed by a key in Key Vault\n")
b = s.counters()
res = run(TOOL + ["--sign", "-m", "SHA256-RSA-PKCS", "--label", "kek", "-i",
                  path("msg"), "-o", path("msg.sig")])
ok_run(res, "pkcs11-tool --sign -m SHA256-RSA-PKCS exits 0")
ok_run(plain("dgst", "-sha256", "-verify", KEK, "-signature", path("msg.sig"),
             path("msg")), "openssl dgst -verify accepts the PKCS#1 signature")
# pkcs11-tool's default PSS salt is the digest's length, which is the one
# salt Key Vault's PS256 uses.
res = run(TOOL + ["--sign", "-m", "SHA256-RSA-PKCS-PSS", "--label", "kek",
                  "-i", path("msg"), "-o", path("msg.pss")])
ok_run(res, "pkcs11-tool --sign -m SHA256-RSA-PKCS-PSS exits 0")
t.ok("salt_len=32 B" in res[1], "with its default salt, the digest's length",
     res[1])
ok_run(plain("dgst", "-sha256", "-verify", KEK, "-sigopt",
             "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
             "-signature", path("msg.pss"), path("msg")),
       "openssl dgst -verify accepts the PSS signature (salt 32)")
t.eq(delta(b, s.counters(), "kvemu:sign", 200), 2, "both signed by the vault")
res = run(TOOL + ["--sign", "-m", "SHA256-RSA-PKCS-PSS", "--salt-len", "20",
                  "--label", "kek", "-i", path("msg"), "-o", path("msg.pss20")])
t.ok(res[0] != 0 and "CKR_MECHANISM_PARAM_INVALID" in res[1],
     "a salt Key Vault cannot use (--salt-len 20): CKR_MECHANISM_PARAM_INVALID",
     res[1])

# --unwrap always asks for CKA_TOKEN=TRUE: a token secret key, kept in the
# token's state-dir wrapped under the CMK (keyvault.md, "Token secret keys").
encrypt(KEK, "dek", "dek.pkcs1", ["-pkeyopt", "rsa_padding_mode:pkcs1"])
b = s.counters()
res = run(TOOL + ["--unwrap", "-m", "RSA-PKCS", "--label", "kek", "-i",
                  path("dek.pkcs1"), "--key-type", "AES:",
                  "--application-label", "unwrapped"])
t.ok(res[0] == 0 and "Key unwrapped" in res[1],
     "pkcs11-tool --unwrap makes a token secret key", res[1])
t.eq(delta(b, s.counters(), "kvemu:unwrapKey"), 1,
     "one unwrap request reaches the vault")
t.eq(len(glob.glob(path("secret-keys/*.json"))), 1,
     "the key is a file in the token's state-dir")
res = run(TOOL + ["-O", "--type", "secrkey", "--label", "unwrapped"])
t.ok(res[0] == 0 and "unwrapped" in res[1],
     "another pkcs11-tool process lists it", res[1])

# ---- OpenSSL 3 with libp11's pkcs11 engine ----------------------------------
if not os.path.exists(ENGINE):
    t.ok(True, "# SKIP libengine-pkcs11-openssl is not installed")
else:
    URI = "pkcs11:token=kv;object=kek;type=private"
    with open(path("openssl.cnf"), "w") as f:
        f.write("openssl_conf = openssl_init\n[openssl_init]\n"
                "engines = engine_section\n[engine_section]\n"
                "pkcs11 = pkcs11_section\n[pkcs11_section]\n"
                "engine_id = pkcs11\ndynamic_path = %s\nMODULE_PATH = %s\n"
                "init = 0\n[req]\ndistinguished_name = req_dn\n[req_dn]\n"
                % (ENGINE, MODULE))
    ENV = dict(os.environ, OPENSSL_CONF=path("openssl.cnf"))

    def eng(*args):
        return run(["openssl"] + list(args), env=ENV)

    for name, opts in (("OAEP SHA-1", oaep_opts("sha1")),
                       ("OAEP SHA-256", oaep_opts("sha256")),
                       ("PKCS#1 v1.5", ["-pkeyopt", "rsa_padding_mode:pkcs1"])):
        encrypt(KEK, "dek", "wrapped", opts)
        b = s.counters()
        res = eng("pkeyutl", "-engine", "pkcs11", "-keyform", "engine",
                  "-decrypt", "-inkey", URI, "-in", path("wrapped"), "-out",
                  path("back"), *opts)
        ok_run(res, "engine, %s: openssl pkeyutl -decrypt exits 0" % name)
        t.ok(os.path.exists(path("back")) and read("back") == read("dek"),
             "engine, %s: it gives back the data key" % name)
        t.eq(delta(b, s.counters(), "kvemu:decrypt", 200), 1,
             "engine, %s: decrypted by the vault" % name)
        if os.path.exists(path("back")):
            os.unlink(path("back"))

    b = s.counters()
    ok_run(eng("dgst", "-engine", "pkcs11", "-keyform", "engine", "-sha256",
               "-sign", URI, "-out", path("e.sig"), path("msg")),
           "engine: openssl dgst -sha256 -sign exits 0")
    ok_run(plain("dgst", "-sha256", "-verify", KEK, "-signature",
                 path("e.sig"), path("msg")),
           "plain openssl verifies its PKCS#1 signature")
    ok_run(eng("dgst", "-engine", "pkcs11", "-keyform", "engine", "-sha256",
               "-sign", URI, "-sigopt", "rsa_padding_mode:pss", "-sigopt",
               "rsa_pss_saltlen:digest", "-out", path("e.pss"), path("msg")),
           "engine: openssl dgst -sign with PSS (salt: the digest) exits 0")
    ok_run(plain("dgst", "-sha256", "-verify", KEK, "-sigopt",
                 "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                 "-signature", path("e.pss"), path("msg")),
           "plain openssl verifies its PSS signature")
    t.eq(delta(b, s.counters(), "kvemu:sign", 200), 2,
         "engine: both signed by the vault")

    # A self-signed certificate made with the key in the vault.
    res = eng("req", "-new", "-x509", "-engine", "pkcs11", "-keyform",
              "engine", "-key", URI, "-subj", "/CN=test", "-days", "2",
              "-out", path("cert.pem"))
    ok_run(res, "engine: openssl req -new -x509 with the key exits 0")
    res = plain("verify", "-CAfile", path("cert.pem"), path("cert.pem"))
    t.ok(res[0] == 0 and ": OK" in res[1],
         "openssl verify -CAfile cert.pem cert.pem: OK", res[1])
    res = plain("x509", "-in", path("cert.pem"), "-noout", "-subject",
                "-pubkey")
    t.ok(res[0] == 0 and "CN = test" in res[1] and
         read("kek.pem").decode() in res[1],
         "the certificate is for CN=test and kek's public key", res[1])

# ---- p11-kit's proxy, as an unprivileged user --------------------------------
# As root, p11-kit reads no per-user module file; run as nobody then, with a
# home holding the module, its configuration, the client secret and the
# emulator's CA, all owned by that user (cmkp11 refuses configuration and
# secret files others could write or that belong to someone else).
uid = os.getuid()
user = None
if uid == 0:
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pass
if not os.path.exists(PROXY) or shutil.which("p11-kit") is None:
    t.ok(True, "# SKIP p11-kit-proxy.so is not installed")
elif uid == 0 and user is None:
    t.ok(True, "# SKIP no unprivileged user to run p11-kit as")
else:
    home = tempfile.mkdtemp(prefix="cmkp11-kv-p11-kit-",
                            dir=os.environ.get("TMPDIR") or "/tmp")
    try:
        os.chmod(home, 0o755)
        shutil.copy(MODULE, os.path.join(home, "cmkp11.so"))
        shutil.copy(emu.ca, os.path.join(home, "ca.pem"))
        shutil.copy(s.app_secret, os.path.join(home, "app.secret"))
        with open(os.path.join(home, "cmkp11.conf"), "w") as f:
            f.write(conf_text([s.token(
                "kv", ca_file=os.path.join(home, "ca.pem"),
                client_secret_file=os.path.join(home, "app.secret"))],
                log_level="error"))
        mods = os.path.join(home, ".config", "pkcs11", "modules")
        os.makedirs(mods)
        with open(os.path.join(mods, "cmkp11.module"), "w") as f:
            f.write("module: %s/cmkp11.so\ncritical: no\ntrust-policy: no\n"
                    "x-init-reserved: conf=%s/cmkp11.conf\n" % (home, home))
        # Only cmkp11's token: not the system's SoftHSM or OpenSC modules.
        for m in ("softhsm2", "opensc-pkcs11"):
            with open(os.path.join(mods, m + ".module"), "w") as f:
                f.write("disable-in: p11-kit, p11tool, pkcs11-tool, "
                        "p11-kit-proxy\n")
        for name in ("app.secret", "cmkp11.conf"):
            os.chmod(os.path.join(home, name), 0o600)
        if user is not None:
            for root, dirs, files in os.walk(home):
                for n in [root] + [os.path.join(root, x)
                                   for x in dirs + files]:
                    os.chown(n, user.pw_uid, user.pw_gid)
        env = {k: v for k, v in os.environ.items()
               if k not in ("CMKP11_CONF", "XDG_RUNTIME_DIR",
                            "P11_KIT_SERVER_ADDRESS", "SOFTHSM2_CONF")}
        env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"))
        prefix = [] if user is None else [
            "setpriv", "--reuid=%d" % user.pw_uid,
            "--regid=%d" % user.pw_gid, "--clear-groups"]
        PROXY_TOOL = prefix + ["pkcs11-tool", "--module", PROXY]

        res = run(PROXY_TOOL + ["-L"], env=env)
        ok_run(res, "p11-kit proxy: pkcs11-tool -L exits 0")
        t.ok("token label        : kv" in res[1] and "Key Vault" in res[1],
             "p11-kit proxy: it offers the keyvault token kv", res[1])
        res = run(PROXY_TOOL + ["--token-label", "kv", "-O"], env=env)
        ok_run(res, "p11-kit proxy: pkcs11-tool -O exits 0")
        t.ok("Private Key Object; RSA" in res[1] and "label:      kek"
             in res[1] and "label:      NEW" in res[1],
             "p11-kit proxy: it lists the vault's keys kek and NEW", res[1])
        wrapped = os.path.join(home, "dek.oaep")
        back = os.path.join(home, "back")
        shutil.copy(path("dek.oaep-sha256"), wrapped)
        os.chmod(wrapped, 0o644)
        b = s.counters()
        res = run(PROXY_TOOL + ["--token-label", "kv", "--decrypt", "-m",
                                "RSA-PKCS-OAEP", "--hash-algorithm", "SHA256",
                                "--label", "kek", "-i", wrapped, "-o", back],
                  env=env)
        ok_run(res, "p11-kit proxy: pkcs11-tool --decrypt (OAEP SHA-256) "
               "exits 0")
        t.ok(os.path.exists(back) and open(back, "rb").read() == read("dek"),
             "p11-kit proxy: it gives back the data key")
        t.eq(delta(b, s.counters(), "kvemu:decrypt", 200), 1,
             "p11-kit proxy: decrypted by the vault")
    finally:
        shutil.rmtree(home, ignore_errors=True)
