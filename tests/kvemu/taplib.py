"""TAP output and an emulator harness shared by the kvemu tests."""
import atexit
import http.client
import json
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
from urllib.parse import urlsplit

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
KVEMU = os.path.join(HERE, "kvemu")
PYTHON = "/usr/bin/python3"
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import kvemu_localhost  # noqa: E402

kvemu_localhost.install()
import logging  # noqa: E402

# Expected authentication failures make azure.identity log warnings; keep TAP output clean.
logging.getLogger("azure").setLevel(logging.CRITICAL)


class Tap:
    """Collects results, prints one TAP line per check and the plan at the end."""

    def __init__(self):
        self.n = 0
        self.failed = 0
        atexit.register(self._finish)
        self.finished = False

    def ok(self, cond, desc, diag=None):
        self.n += 1
        if not cond:
            self.failed += 1
        print("%sok %d - %s" % ("" if cond else "not ", self.n, desc), flush=True)
        if not cond and diag:
            for line in str(diag).splitlines():
                print("# " + line, flush=True)
        return cond

    def eq(self, got, want, desc):
        return self.ok(got == want, desc, "got:  %r\nwant: %r" % (got, want))

    def check(self, desc, fn, *args, **kw):
        """Run fn; ok if it returns without raising (a False return is a failure)."""
        try:
            r = fn(*args, **kw)
        except Exception:
            return self.ok(False, desc, traceback.format_exc())
        return self.ok(r is not False, desc)

    def raises(self, desc, exc_type, fn, *args, **kw):
        """ok if fn raises exc_type; returns the exception."""
        try:
            fn(*args, **kw)
        except exc_type as e:
            self.ok(True, desc)
            return e
        except Exception:
            self.ok(False, desc, traceback.format_exc())
            return None
        self.ok(False, desc, "no exception raised")
        return None

    def diag(self, text):
        for line in str(text).splitlines():
            print("# " + line, flush=True)

    def _finish(self):
        if not self.finished:
            self.finished = True
            print("1..%d" % self.n, flush=True)


def _exit_on_signal(signum, frame):
    """SIGTERM or SIGHUP (a test harness's timeout, a closed terminal):
    exit through SystemExit so atexit stops every emulator started."""
    signal.signal(signum, signal.SIG_DFL)
    sys.exit(128 + signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_sig) in (signal.SIG_DFL, None):
        signal.signal(_sig, _exit_on_signal)


def skip_all(reason):
    print("1..0 # SKIP %s" % reason, flush=True)
    sys.exit(0)


def need_azure():
    try:
        import azure.identity  # noqa: F401
        import azure.keyvault.keys  # noqa: F401
    except Exception:
        skip_all("python3-azure missing")


def workdir():
    base = os.environ.get("TMPDIR") or os.getcwd()
    if not os.access(base, os.W_OK):
        base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="kvemu-test-", dir=base)


class Emu:
    """Starts kvemu in a private state directory; stop() (or exit) sends SIGTERM.

    However the test ends, the emulator ends with it: an exception or
    sys.exit runs atexit, SIGTERM and SIGHUP become sys.exit (above), and
    for SIGKILL or a crash kvemu watches its parent (--exit-with-parent).
    Only the process that started it stops it (not a forked child)."""

    def __init__(self, config=None, extra_args=(), timeout=90):
        self.owner = os.getpid()
        self.dir = workdir()
        self.state = os.path.join(self.dir, "state")
        cmd = [PYTHON, KVEMU, "--port", "0", "--state-dir", self.state,
               "--exit-with-parent"]
        if config is not None:
            path = os.path.join(self.dir, "config.json")
            with open(path, "w") as f:
                json.dump(config, f)
            cmd += ["--config", path]
        cmd += list(extra_args)
        self.stderr = open(os.path.join(self.dir, "kvemu.stderr"), "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        self.info = {}
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.time() + timeout
        buf = b""
        while "KVEMU_READY" not in self.info:
            left = deadline - time.time()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("kvemu did not start: %s" % self.read_stderr())
            if sel.select(min(left, 1.0)):
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    k, _, v = line.decode().partition("=")
                    self.info[k] = v
        sel.close()
        self.port = int(self.info["KVEMU_PORT"])
        self.ca = self.info["KVEMU_CA"]
        with open(os.path.join(self.state, "env.json")) as f:
            self.env = json.load(f)
        with open(os.path.join(self.state, "admin.json")) as f:
            self.admin_info = json.load(f)
        self.ctx = ssl.create_default_context(cafile=self.ca)
        self.vault_url = self.info.get("KVEMU_VAULT_URL")
        self.hsm_url = self.info.get("KVEMU_HSM_URL")
        self._conns = {}

    def read_stderr(self):
        try:
            self.stderr.flush()
            with open(self.stderr.name) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def url(self, name):
        return self.info["KVEMU_URL_" + name.upper().replace("-", "_")]

    def stop(self):
        if os.getpid() != self.owner:
            return  # a forked child: the emulator is its parent's
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.stderr.close()
        if os.path.isdir(self.dir) and not os.environ.get("KVEMU_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- raw HTTP --------------------------------------------------------
    def request(self, method, url, body=None, headers=None, timeout=30, fresh=False):
        """Returns (status, headers dict lower-cased, parsed JSON or bytes)."""
        u = urlsplit(url)
        key = (u.scheme, u.hostname, u.port)
        conn = None if fresh else self._conns.get(key)
        if conn is None:
            if u.scheme == "https":
                conn = http.client.HTTPSConnection(u.hostname, u.port, context=self.ctx,
                                                   timeout=timeout)
            else:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
            if not fresh:
                self._conns[key] = conn
        h = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        path = u.path + ("?" + u.query if u.query else "")
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            raw = r.read()
        except Exception:
            conn.close()
            self._conns.pop(key, None)
            raise
        if fresh:
            conn.close()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return r.status, hdrs, parsed

    def admin(self, method, path, body=None):
        st, _, obj = self.request(method, "https://localhost:%d/_admin/%s" % (self.port,
                                                                             path.lstrip("/")),
                                  body, {"Authorization": "Bearer " + self.admin_info["token"]})
        if st != 200:
            raise RuntimeError("admin %s %s -> %d %r" % (method, path, st, obj))
        return obj

    def token(self, identity="app", resource=None, lifetime=None):
        body = {"identity": identity}
        if resource:
            body["resource"] = resource
        if lifetime is not None:
            body["lifetime"] = lifetime
        return self.admin("POST", "tokens/issue", body)["access_token"]

    def vault(self, method, url, body=None, token=None, identity="app", api="7.5",
              headers=None, **kw):
        """Authenticated REST call; url may be relative to the default vault."""
        if not url.startswith("https://"):
            url = self.vault_url + url
        if api is not None:
            url += ("&" if "?" in url else "?") + "api-version=" + api
        h = dict(headers or {})
        if token is None:
            res = "https://%s.localhost:%d" % ("managedhsm" if ".managedhsm." in url else "vault",
                                               self.port)
            token = self.token(identity, res)
        if token:
            h["Authorization"] = "Bearer " + token
        return self.request(method, url, body, h, **kw)

    # ---- SDK helpers -------------------------------------------------------
    def secret_credential(self, **kw):
        from azure.identity import ClientSecretCredential
        return ClientSecretCredential(self.env["AZURE_TENANT_ID"], self.env["AZURE_CLIENT_ID"],
                                      self.env["AZURE_CLIENT_SECRET"],
                                      authority=self.env["AZURE_AUTHORITY_HOST"],
                                      instance_discovery=False, connection_verify=self.ca, **kw)

    def key_client(self, credential=None, url=None, **kw):
        from azure.keyvault.keys import KeyClient
        kw.setdefault("retry_total", 0)
        return KeyClient(url or self.vault_url, credential or self.secret_credential(),
                         connection_verify=self.ca, **kw)

    def crypto_client(self, key, credential=None, **kw):
        from azure.keyvault.keys.crypto import CryptographyClient
        kw.setdefault("retry_total", 0)
        return CryptographyClient(key, credential or self.secret_credential(),
                                  connection_verify=self.ca, **kw)


TENANT = "72f9e1c1-1e6b-4b0f-9d3a-6b7e0c2a5e10"
OTHER_TENANT = "5a0e8c1d-2b7f-4e39-8d61-0c4b9e7a3f22"


def test_config():
    """Several vaults and identities, used by the test scripts."""
    full = ["all"]
    everyone = {"app": full, "mi": full, "certapp": full, "wi": full, "uami": full,
                "cryptoonly": ["encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify"],
                "reader": ["get", "list"], "alien": full}
    return {
        "tenants": [TENANT, OTHER_TENANT],
        "identities": [
            {"name": "app", "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e01",
             "client_secrets": ["kvemu-client-secret"]},
            {"name": "mi", "managed": "system",
             "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e02"},
            {"name": "certapp", "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e03",
             "client_certificates": [{"generate": "client-cert"}]},
            {"name": "wi", "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e04",
             "federated": [{"issuer": "@emulator",
                            "subject": "system:serviceaccount:default:wi"},
                           {"token": "literal-federated-token-for-wi"}]},
            {"name": "uami", "managed": "user",
             "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e05"},
            {"name": "reader", "client_secrets": ["reader-secret"]},
            {"name": "cryptoonly", "client_secrets": ["crypto-secret"]},
            {"name": "alien", "tenant": OTHER_TENANT, "client_secrets": ["alien-secret"]},
        ],
        "vaults": [
            {"name": "kvemu", "kind": "vault", "sku": "premium", "soft_delete": True,
             "purge_protection": True, "access": everyone},
            {"name": "kvpurge", "kind": "vault", "soft_delete": True, "purge_protection": False,
             "recoverable_days": 7, "access": everyone},
            {"name": "kvnosoft", "kind": "vault", "soft_delete": False, "access": everyone},
            {"name": "kvstd", "kind": "vault", "sku": "standard", "access": everyone},
            {"name": "kvdelay", "kind": "vault", "delete_delay_ms": 1500,
             "purge_protection": False, "access": everyone},
            {"name": "kvhsm", "kind": "managedhsm", "access": everyone,
             "keys": [{"name": "preloaded", "key_size": 2048}]},
        ],
    }
