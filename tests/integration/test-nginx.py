#!/usr/bin/python3
"""nginx with libp11's pkcs11 engine and cmkp11: two HTTPS servers whose
private keys are "engine:pkcs11:" keys, one on an hsm token (SoftHSM) and
one on a keyvault token (the emulator), two workers. The master loads the
keys; each worker inherits the module from it and initialises it again at
its first handshake (libp11 notices the fork). That first request to a
fresh worker is made 20 times per token: the workers are stopped, the
master starts new ones, and curl, trusting only the server's certificate,
must get the page every time. Then nginx's error log must hold no failed
handshake and no worker that died of a signal.

nginx runs from a private directory with its own configuration, on
loopback ports chosen free at run time; as root, with "user root" so that
its workers can read the token files and the configuration."""
import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time

from kvtest import Tap, KvSetup, MODULE, TOP_SRCDIR, skip_all

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
ROUNDS = 20
WORKERS = 2
for f, what in ((NGINX, "nginx"), (ENGINE, "libengine-pkcs11-openssl"),
                (SOFTHSM, "SoftHSMv2")):
    if not os.path.exists(f):
        skip_all("%s is not installed" % what)
for tool in ("curl", "openssl", "pkcs11-tool"):
    if shutil.which(tool) is None:
        skip_all("%s is not installed" % tool)

t = Tap()
s = KvSetup()
d = s.dir


def path(name):
    return os.path.join(d, name)


def run(args, env=None):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, env=env, timeout=120)
    return p.returncode, p.stdout.decode(errors="replace")


# The hsm token (SoftHSM, user PIN 1234) and the keyvault token.
rc, out = run(["sh", os.path.join(TOP_SRCDIR, "tests", "softhsm-init.sh"),
               path("softhsm")])
if rc == 77:
    skip_all("softhsm-init.sh: " + out)
t.ok(rc == 0, "a SoftHSM token", out)
os.environ["SOFTHSM2_CONF"] = path("softhsm/softhsm2.conf")
s.create_key("kek", key_size=2048)
s.write_conf([("local", "backend = hsm\nmodule = %s\ntoken-label = cmk\n"
               % SOFTHSM),
              ("kv", s.token_body())], log_level="error")

# libp11's engine, initialised when OpenSSL reads its configuration.
with open(path("openssl.cnf"), "w") as f:
    f.write("openssl_conf = openssl_init\n[openssl_init]\n"
            "engines = engine_section\n[engine_section]\n"
            "pkcs11 = pkcs11_section\n[pkcs11_section]\n"
            "engine_id = pkcs11\ndynamic_path = %s\nMODULE_PATH = %s\n"
            "PIN = 1234\ninit = 1\n"
            "[req]\ndistinguished_name = req_dn\n[req_dn]\n"
            % (ENGINE, MODULE))
os.chmod(path("openssl.cnf"), 0o600)
os.environ["OPENSSL_CONF"] = path("openssl.cnf")
TOKENS = ("local", "kv")


def uri(token):
    return "pkcs11:token=%s;object=kek;type=private" % token


# A certificate for localhost, signed by each key through the engine.
for tok in TOKENS:
    rc, out = run(["openssl", "req", "-new", "-x509", "-engine", "pkcs11",
                   "-keyform", "engine", "-key", uri(tok), "-subj",
                   "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                   "-days", "2", "-out", path(tok + ".crt")])
    t.ok(rc == 0, "%s: a certificate for localhost, signed with the key "
         "through the engine" % tok, out)


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


ports = {tok: free_port() for tok in TOKENS}
servers = ""
for tok in TOKENS:
    servers += """
    server {
        listen 127.0.0.1:%d ssl;
        server_name localhost;
        ssl_certificate %s;
        ssl_certificate_key "engine:pkcs11:%s";
        location / { return 200 "%s\\n"; }
    }
""" % (ports[tok], path(tok + ".crt"), uri(tok), tok)
temp_paths = "".join("    %s_temp_path %s;\n" % (k, path("tmp-" + k))
                     for k in ("client_body", "proxy", "fastcgi", "uwsgi",
                               "scgi"))
with open(path("nginx.conf"), "w") as f:
    f.write("""daemon off;
master_process on;
worker_processes %d;
%s
pid %s;
error_log %s info;
env CMKP11_CONF;
env SOFTHSM2_CONF;
env OPENSSL_CONF;
events { worker_connections 64; }
http {
    access_log %s;
%s%s}
""" % (WORKERS, "user root;" if os.geteuid() == 0 else "", path("nginx.pid"),
       path("error.log"), path("access.log"), temp_paths, servers))



def die_with_parent():
    # PR_SET_PDEATHSIG: nginx's master ends if this test is killed.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


nginx = subprocess.Popen([NGINX, "-p", d, "-c", path("nginx.conf"), "-e",
                          path("error.log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                         preexec_fn=die_with_parent)


def stop_nginx():
    if nginx.poll() is None:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=30)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()


atexit.register(stop_nginx)


def workers():
    """The pids of the master's worker processes."""
    pids = set()
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % e) as f:
                st = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...
        if int(st[st.rindex(")") + 2:].split()[1]) == nginx.pid:
            pids.add(int(e))
    return pids


def await_workers(old, deadline=30):
    """WORKERS workers, none of them in old; bounded."""
    end = time.monotonic() + deadline
    while time.monotonic() < end and nginx.poll() is None:
        now = workers()
        if len(now) == WORKERS and not (now & old):
            return now
        time.sleep(0.02)
    return None


def request(tok):
    # The client is a plain one: not nginx's OpenSSL configuration, which
    # would load the engine and cmkp11 into curl too, nor a sanitizer
    # runtime the ASan gate preloads for nginx (GnuTLS, which libcurl's
    # LDAP support loads, deadlocks under it in p11-kit's trust module).
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENSSL_CONF", "LD_PRELOAD")}
    return run(["curl", "-sS", "--max-time", "30", "--cacert",
                path(tok + ".crt"), "--resolve",
                "localhost:%d:127.0.0.1" % ports[tok],
                "https://localhost:%d/" % ports[tok]], env=env)


try:
    pids = await_workers(set())
    t.ok(pids is not None, "nginx starts with %d workers" % WORKERS,
         open(path("error.log")).read() if pids is None else None)
    failures = {tok: 0 for tok in TOKENS}
    first_error = {}
    for i in range(ROUNDS):
        for tok in TOKENS:
            # Fresh workers: the master replaces those that end.
            for pid in pids or ():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            pids = await_workers(pids or set())
            rc, out = request(tok) if pids else (1, "no fresh workers")
            if rc != 0 or out != tok + "\n":
                failures[tok] += 1
                first_error.setdefault(tok, out)
    for tok in TOKENS:
        t.ok(failures[tok] == 0, "%s: the first request to fresh workers, %d "
             "times: %d failures" % (tok, ROUNDS, failures[tok]),
             first_error.get(tok))
finally:
    stop_nginx()
t.ok(nginx.returncode == 0, "nginx stops cleanly")
log = open(path("error.log")).read()
bad = [ln for ln in log.splitlines()
       if "exited on signal" in ln or "SSL_do_handshake() failed" in ln or
       "[emerg]" in ln or "[alert]" in ln]
t.ok(not bad, "nginx's error log: no failed handshake, no worker killed by "
     "a signal, no alert", "\n".join(bad[:20]))
