#!/usr/bin/python3
"""OpenSSL 3 through pkcs11-provider, with cmkp11 as its PKCS#11 module, on an
hsm token (SoftHSM below) and a keyvault token (the Key Vault emulator):
public key export, OAEP decryption with SHA-1 and SHA-256, PKCS#1 v1.5 and
PSS signatures, a certificate signed by the key, and `openssl s_server`
with the key by pkcs11: URI that `openssl s_client` completes TLS 1.3 and
TLS 1.2 handshakes with. Plain OpenSSL checks every result with the public
key; every openssl process must exit 0 (pkcs11-provider finalizes the module
at exit). pkcs11-provider is packaged from Debian 13 on; scripts/
check-debian13.sh runs this test there. The provider's options are those of
its provider-pkcs11(7) manual; docs/consumers.md shows the configuration."""
import glob
import os
import re
import shutil
import socket
import subprocess
import time

from kvtest import Tap, KvSetup, skip_all

for tool in ("pkcs11-tool", "openssl", "softhsm2-util"):
    if shutil.which(tool) is None:
        skip_all("%s is not installed" % tool)
PROVIDERS = sorted(glob.glob("/usr/lib/*/ossl-modules/pkcs11.so"))
if not PROVIDERS:
    skip_all("pkcs11-provider is not installed")
PROVIDER = PROVIDERS[0]
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
MODULE = os.path.abspath(os.environ.get("CMKP11_MODULE") or os.path.join(
    os.environ.get("top_builddir", "."), ".libs", "cmkp11.so"))
TOP = os.environ.get("top_srcdir", ".")
PIN = "1234"

t = Tap()
s = KvSetup()
d = s.dir


def path(name):
    return os.path.join(d, name)


# The lower SoftHSM token (label "cmk", key pair "kek") and the vault's key.
rc = subprocess.run(["sh", os.path.join(TOP, "tests", "softhsm-init.sh"),
                     path("softhsm")], stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)
if rc.returncode != 0:
    print("Bail out! softhsm-init.sh: %s" % rc.stdout.decode(errors="replace"))
    raise SystemExit(99)
os.environ["SOFTHSM2_CONF"] = path("softhsm/softhsm2.conf")
s.create_key("kek", key_size=2048)
s.write_conf([
    ("local", "backend = hsm\nmodule = %s\ntoken-label = cmk\n" % SOFTHSM),
    ("kv", s.token_body()),
], log_level="error")

with open(path("pin"), "w") as f:
    f.write(PIN)
os.chmod(path("pin"), 0o600)
with open(path("openssl.cnf"), "w") as f:
    f.write("""openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = %s
pkcs11-module-path = %s
pkcs11-module-token-pin = file:%s
activate = 1
""" % (PROVIDER, MODULE, path("pin")))
PROV_ENV = dict(os.environ, OPENSSL_CONF=path("openssl.cnf"))
PLAIN_ENV = dict(os.environ, OPENSSL_CONF="/dev/null")


def run(args, env, **kw):
    """(exit status, stdout and stderr together)."""
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=kw.pop("stdin", subprocess.DEVNULL), env=env,
                       timeout=60, **kw)
    return p.returncode, p.stdout.decode(errors="replace")


def prov(*args, **kw):
    return run(["openssl"] + list(args), PROV_ENV, **kw)


def plain(*args, **kw):
    return run(["openssl"] + list(args), PLAIN_ENV, **kw)


def ok_run(res, desc):
    return t.ok(res[0] == 0, desc, res[1])


def modulus(pem):
    rc, out = plain("rsa", "-pubin", "-in", pem, "-noout", "-modulus")
    return out.strip() if rc == 0 and out.startswith("Modulus=") else None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tls(token, uri, pub):
    cert = path(token + ".crt")
    ok_run(prov("req", "-new", "-x509", "-key", uri, "-subj", "/CN=localhost",
                "-days", "2", "-sha256", "-out", cert),
           "%s: openssl req -x509 signs a certificate with the key" % token)
    rc, out = plain("x509", "-in", cert, "-noout", "-pubkey")
    with open(path(token + ".crtpub"), "w") as f:
        f.write(out)
    t.ok(rc == 0 and modulus(path(token + ".crtpub")) == modulus(pub),
         "%s: the certificate holds the token's public key" % token, out)
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", cert,
         "-key", uri, "-naccept", "3", "-www"], env=PROV_ENV,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    # Ready when it accepts a TCP connection: that bare connection is the
    # first of the three s_server serves (its handshake fails, quietly).
    ready = False
    for _ in range(300):
        if server.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                ready = True
                break
        except OSError:
            time.sleep(0.1)
    t.ok(ready, "%s: openssl s_server listens with the key by pkcs11: URI"
         % token)
    for version, proto in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
        rc, out = plain("s_client", "-connect", "127.0.0.1:%d" % port,
                        version, "-servername", "localhost", "-CAfile", cert,
                        "-verify_return_error", "-verify_hostname", "localhost",
                        input=b"GET / HTTP/1.0\r\n\r\n", stdin=None)
        t.ok(rc == 0 and re.search(r"Protocol\s*: " + proto, out) is not None
             and "Verify return code: 0 (ok)" in out,
             "%s: openssl s_client completes a verified %s handshake"
             % (token, proto), out)
    try:
        rc = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        rc = server.wait()
    out = server.stdout.read().decode(errors="replace")
    t.ok(rc == 0, "%s: openssl s_server exits 0 after its connections"
         % token, out)


def token_checks(token):
    uri = "pkcs11:token=%s;object=kek" % token
    priv = uri + ";type=private"
    pub = path(token + ".pub.pem")
    ok_run(prov("pkey", "-in", uri + ";type=public", "-pubin", "-pubout",
                "-out", pub),
           "%s: openssl pkey exports the public key by pkcs11: URI" % token)
    # The same key as pkcs11-tool reads it through cmkp11.
    rc, out = run(["pkcs11-tool", "--module", MODULE, "--token-label", token,
                   "--read-object", "--type", "pubkey", "--label", "kek",
                   "-o", path(token + ".der")], PLAIN_ENV)
    rc2, out2 = plain("pkey", "-pubin", "-inform", "DER", "-in",
                      path(token + ".der"), "-out", path(token + ".ref.pem"))
    t.ok(rc == 0 and rc2 == 0 and modulus(pub) is not None and
         modulus(pub) == modulus(path(token + ".ref.pem")),
         "%s: it is the key pkcs11-tool reads" % token, out + out2)

    dek = os.urandom(32)
    with open(path("dek"), "wb") as f:
        f.write(dek)
    for name, md in (("OAEP SHA-1", "sha1"), ("OAEP SHA-256", "sha256")):
        opts = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt",
                "rsa_oaep_md:" + md, "-pkeyopt", "rsa_mgf1_md:" + md]
        for f in ("wrapped", "back"):
            if os.path.exists(path(f)):
                os.unlink(path(f))
        plain("pkeyutl", "-encrypt", "-pubin", "-inkey", pub, "-in",
              path("dek"), "-out", path("wrapped"), *opts)
        ok_run(prov("pkeyutl", "-decrypt", "-inkey", priv, "-in",
                    path("wrapped"), "-out", path("back"), *opts),
               "%s: %s: openssl pkeyutl -decrypt exits 0" % (token, name))
        back = open(path("back"), "rb").read() if os.path.exists(
            path("back")) else b""
        t.eq(back, dek, "%s: %s: it gives back the data key" % (token, name))

    with open(path("msg"), "wb") as f:
        f.write(b"a message signed by a customer-managed key\n")
    for name, opts in (("PKCS#1 v1.5", []),
                       ("PSS", ["-sigopt", "rsa_padding_mode:pss", "-sigopt",
                                "rsa_pss_saltlen:digest"])):
        sig = path(token + ".sig")
        if os.path.exists(sig):
            os.unlink(sig)
        ok_run(prov("dgst", "-sha256", "-sign", priv, *opts, "-out", sig,
                    path("msg")),
               "%s: %s: openssl dgst -sha256 -sign exits 0" % (token, name))
        ok_run(plain("dgst", "-sha256", "-verify", pub, *opts, "-signature",
                     sig, path("msg")),
               "%s: %s: plain openssl verifies the signature" % (token, name))
    tls(token, priv, pub)


for tok in ("local", "kv"):
    token_checks(tok)
