"""HTTP front end: the listeners, and each request routed by host to Entra ID,
managed identity, a vault's data plane or the admin API.

The concerns live in their own modules: entra.py (Entra ID), imds.py
(managed identity), dataplane.py and routes.py (the vaults' REST API and its
route table), faults.py (injected faults), admin.py (/_admin)."""
import os
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from . import config as cfgmod
from . import pki
from .admin import AdminMixin
from .dataplane import VaultMixin
from .entra import EntraMixin
from .faults import FaultsMixin
from .imds import ImdsMixin
from .messages import Request, json_response
from .vault import Vault


class Emulator(EntraMixin, ImdsMixin, VaultMixin, FaultsMixin, AdminMixin):
    def __init__(self, state_dir, cfg, port, imds_port=None, bind="127.0.0.1", log=None):
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        self.cfg = cfg
        self.bind = bind
        self.log_file = open(log, "a", buffering=1) if log else None
        self.lock = threading.RLock()
        self.shutdown_event = threading.Event()
        # Listeners first: the port is part of every URL.
        self.httpd = _Server((bind, port), Handler, self, "tls")
        self.port = self.httpd.server_address[1]
        self.extra_servers = []
        if bind == "127.0.0.1":
            try:
                s6 = _Server(("::1", self.port), Handler, self, "tls", family=socket.AF_INET6)
                self.extra_servers.append(s6)
            except OSError:
                pass
        self.imds = None
        if imds_port is not None:
            self.imds = _Server((bind, imds_port), Handler, self, "imds")
        tenants = cfg.get("tenants") or [cfgmod.DEFAULT_TENANT]
        self.tenants = [t["id"] if isinstance(t, dict) else t for t in tenants]
        self.backup_key = os.urandom(32)
        self.vaults = {}
        self.foreign_requests = []
        for vspec in cfg.get("vaults", []):
            v = Vault(vspec, self.tenants, self.port, self.backup_key)
            self.vaults[v.host] = v
        self.vault_by_name = {v.name: v for v in self.vaults.values()}
        dns = ["localhost", "*.localhost", "*.vault.localhost", "*.managedhsm.localhost",
               "login.localhost", "vault.localhost", "managedhsm.localhost"]
        dns += sorted(v.host for v in self.vaults.values())
        self.pki = pki.StatePki(self.state_dir, dns)
        self.ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ssl_ctx.load_cert_chain(self.pki.cert_path, self.pki.key_path)
        self.ssl_ctx.set_alpn_protocols(["http/1.1"])
        self.identities = {}
        for ispec in cfg.get("identities", []):
            ident = cfgmod.Identity(ispec, self.tenants, self.state_dir)
            self.identities[ident.name] = ident
        self.fed_key = self.pki.signing_key
        self.login = "https://login.localhost:%d" % self.port
        self.fed_issuer = self.login + "/federation"
        self.identity_header = cfg.get("identity_header") or uuid.uuid4().hex
        self.admin_token = uuid.uuid4().hex + uuid.uuid4().hex
        self.token_lifetime = int(cfg.get("token_lifetime", 3599))
        self.expired_before = {"*": 0}     # identity name or "*" -> ms timestamp
        self.token_cache = {}
        self.faults = []
        self.fault_seq = 0
        self.latency = {"vault_ms": 0, "identity_ms": 0, "connect_ms": 0}
        self.reset_counters()
        self.resources = {"https://vault.localhost:%d" % self.port,
                          "https://managedhsm.localhost:%d" % self.port,
                          "https://vault.azure.net", "https://managedhsm.azure.net"}
        self.resources.update(r.rstrip("/") for r in cfg.get("extra_resources", []))
        for vspec in cfg.get("vaults", []):
            for kspec in vspec.get("keys", []):
                self.admin_create_keys(self.vault_by_name[vspec["name"].lower()], kspec)

    # ---- identity lookups ---------------------------------------------
    def ident_by_oid(self, oid):
        for i in self.identities.values():
            if i.object_id == oid:
                return i
        return None

    def ident_by_client_id(self, cid):
        for i in self.identities.values():
            if i.client_id == cid:
                return i
        return None

    # ---- counters --------------------------------------------------------
    def reset_counters(self):
        with self.lock:
            self.counters = {"total": 0, "by_route": {}, "by_identity": {}, "by_status": {},
                             "by_route_status": {}, "by_identity_route": {}, "faults": {},
                             "since": time.time()}

    def count(self, route, ident, status):
        with self.lock:
            c = self.counters
            c["total"] += 1
            c["by_route"][route] = c["by_route"].get(route, 0) + 1
            c["by_identity"][ident] = c["by_identity"].get(ident, 0) + 1
            s = str(status)
            c["by_status"][s] = c["by_status"].get(s, 0) + 1
            rs = c["by_route_status"].setdefault(route, {})
            rs[s] = rs.get(s, 0) + 1
            ir = c["by_identity_route"].setdefault(ident, {})
            ir[route] = ir.get(route, 0) + 1


    # ---- top-level dispatch -------------------------------------------------
    def handle(self, req):
        vault = self.vaults.get(req.host)
        if vault is None and req.listener == "tls":
            for v in self.vaults.values():
                if v.foreign_next_link and req.host == v.foreign_next_link.lower():
                    return self.handle_foreign(req, v)
        if req.path.startswith("/_admin") and vault is None and req.listener == "tls":
            return self.handle_admin(req)
        if vault is not None:
            return self.handle_vault(req, vault)
        p = req.path.rstrip("/").lower()
        if p == "/metadata/identity/oauth2/token":
            return self.handle_imds(req, app_service=False)
        if p == "/msi/token":
            return self.handle_imds(req, app_service=True)
        if req.listener == "imds":
            return json_response(404, {"error": "not_found",
                                       "error_description": "Unknown IMDS path"})
        if req.host.endswith(".vault.localhost") or req.host.endswith(".managedhsm.localhost"):
            # Unknown vault name: the real service has no such DNS name.
            self.count("unknown-vault:" + req.host, "-", 404)
            return json_response(404, {"error": {"code": "VaultNotFound",
                                                 "message": "No vault is configured for host %s."
                                                 % req.host}})
        return self.handle_entra(req)


    # ---- running ------------------------------------------------------------------
    def serve(self):
        threads = []
        for s in [self.httpd] + self.extra_servers + ([self.imds] if self.imds else []):
            th = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2},
                                  daemon=True)
            th.start()
            threads.append(th)
        return threads

    def stop(self):
        self.shutdown_event.set()
        for s in [self.httpd] + self.extra_servers + ([self.imds] if self.imds else []):
            s.shutdown()
            s.server_close()

    def log(self, line):
        if self.log_file:
            self.log_file.write(line + "\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, emu, listener, family=socket.AF_INET):
        self.address_family = family
        self.emu = emu
        self.listener = listener
        super().__init__(addr, handler)

    def server_bind(self):
        # HTTPServer.server_bind would look up the host's FQDN, which can stall offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = self.server_address[1]

    def handle_error(self, request, client_address):
        # Clients that drop connections (timeouts, resets) are normal here.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout, OSError)):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "kvemu/1.0"
    sys_version = ""
    timeout = 120

    def setup(self):
        if self.server.listener == "tls":
            # A new connection's TCP and TLS handshakes cost round trips
            # of their own on a real network (connect_ms, e.g. 2 x RTT).
            connect_ms = self.server.emu.latency.get("connect_ms", 0)
            if connect_ms:
                self.server.emu.shutdown_event.wait(connect_ms / 1000.0)
            self.request.settimeout(30)
            self.request = self.server.emu.ssl_ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        emu = self.server.emu
        if emu.log_file:
            emu.log("%s %s" % (self.address_string(), fmt % args))

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _dispatch(self):
        emu = self.server.emu
        body = self._read_body()
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif ":" in host:
            host = host.rsplit(":", 1)[0]
        parts = urlsplit(self.path)
        query = {}
        for k, v in parse_qs(parts.query, keep_blank_values=True).items():
            query[k] = v[0]
        req = Request(self.command, host, parts.path or "/", query, self.headers, body,
                      self.server.listener)
        try:
            resp = emu.handle(req)
        except Exception as ex:  # a bug: answer 500 rather than drop the connection
            import traceback
            traceback.print_exc()
            resp = json_response(500, {"error": {"code": "InternalServerError",
                                                 "message": "kvemu: %s" % ex}})
        if resp.action == "reset":
            self.close_connection = True
            self._abort()
            return
        if resp.action == "hang":
            emu.shutdown_event.wait(resp.hold)
            self.close_connection = True
            return
        self.send_response(resp.status)
        for k, val in resp.headers:
            self.send_header(k, val)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body and self.command != "HEAD":
            self.wfile.write(resp.body)
        emu.log("%s %s%s -> %d" % (self.command, host, self.path, resp.status))

    def _abort(self):
        # Drop the connection with a TCP RST: linger 0 and close, no TLS close_notify.
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.connection.close()
        except OSError:
            pass

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch
