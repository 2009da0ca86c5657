"""HTTP front end: Entra ID, managed identity, the vault data plane and the admin API."""
import fnmatch
import json
import os
import random
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from . import config as cfgmod
from . import jwt, pki
from .util import HttpError, b64url_encode, int_to_b64url, jdump, now
from .vault import Vault, api_level

JSON_CT = "application/json; charset=utf-8"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# operation -> key permission needed (None: any authenticated caller)
PERMISSIONS = {
    "getKeys": "list", "getKeyVersions": "list", "getDeletedKeys": "list",
    "getKey": "get", "getDeletedKey": "get", "getKeyRotationPolicy": "get",
    "createKey": "create", "importKey": "import", "updateKey": "update",
    "updateKeyRotationPolicy": "update", "deleteKey": "delete",
    "recoverDeletedKey": "recover", "purgeDeletedKey": "purge", "rotateKey": "rotate",
    "backupKey": "backup", "restoreKey": "restore",
    "encrypt": "encrypt", "decrypt": "decrypt", "wrapKey": "wrapKey",
    "unwrapKey": "unwrapKey", "sign": "sign", "verify": "verify", "release": "release",
    "getRandomBytes": None,
}
CRYPTO_OPS = {"encrypt": "encrypt", "decrypt": "decrypt", "wrapkey": "wrapKey",
              "unwrapkey": "unwrapKey", "sign": "sign", "verify": "verify"}
RBAC_ACTIONS = {
    "list": "read", "get": "read", "create": "create/action", "import": "import/action",
    "update": "write", "delete": "delete", "recover": "recover/action",
    "purge": "deletedKeys/delete", "rotate": "rotate/action", "backup": "backup/action",
    "restore": "restore/action", "encrypt": "encrypt/action", "decrypt": "decrypt/action",
    "wrapKey": "wrapKey/action", "unwrapKey": "unwrapKey/action", "sign": "sign/action",
    "verify": "verify/action", "release": "release/action",
}


class Request:
    __slots__ = ("method", "host", "path", "query", "headers", "body", "listener")

    def __init__(self, method, host, path, query, headers, body, listener):
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.listener = listener

    def json(self):
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpError(400, "BadParameter", "The request body is not valid JSON.")


class Response:
    __slots__ = ("status", "headers", "body", "action", "hold")

    def __init__(self, status=200, body=b"", headers=None, action=None, hold=0.0):
        self.status = status
        self.body = body
        self.headers = headers or []
        self.action = action     # None, "reset" or "hang"
        self.hold = hold


def json_response(status, obj, headers=None):
    h = [("Content-Type", JSON_CT)]
    if headers:
        h.extend(headers)
    return Response(status, jdump(obj), h)


class Fault:
    KINDS = ("429", "500", "503", "status", "reset", "delay", "hang", "body")

    def __init__(self, spec, fid):
        self.id = fid
        kind = str(spec.get("kind", "")).lower()
        if kind in ("throttle", "throttled"):
            kind = "429"
        if kind not in self.KINDS:
            raise HttpError(400, "BadParameter", "fault kind must be one of %s" % (self.KINDS,))
        self.kind = kind
        self.match = spec.get("match", spec.get("route", "*"))
        self.method = (spec.get("method") or "*").upper()
        self.identity = spec.get("identity", "*")
        self.status = int(spec.get("status", {"429": 429, "500": 500, "503": 503,
                                              "body": 200}.get(kind, 500)))
        # kind "body": this answer as it is (a string is sent as its UTF-8
        # bytes, anything else as JSON), with these extra headers.
        self.body = spec.get("body", "")
        self.headers = spec.get("headers") or {}
        if kind == "body" and not isinstance(self.headers, dict):
            raise HttpError(400, "BadParameter", "fault headers must be an object")
        self.code = spec.get("code")
        self.retry_after = spec.get("retry_after")
        self.delay_ms = int(spec.get("delay_ms", 0))
        self.hang_ms = int(spec.get("hang_ms", 600000))
        self.rate = spec.get("rate")
        cnt = spec.get("count")
        if cnt is None and self.rate is None:
            cnt = 1
        self.remaining = None if cnt is None else int(cnt)
        self.skip = int(spec.get("skip", 0))
        self.hits = 0
        self.spec = dict(spec)

    def describe(self):
        return {"id": self.id, "kind": self.kind, "match": self.match, "method": self.method,
                "identity": self.identity, "status": self.status, "retry_after": self.retry_after,
                "delay_ms": self.delay_ms, "hang_ms": self.hang_ms, "rate": self.rate,
                "remaining": self.remaining, "skip": self.skip, "hits": self.hits}


class Emulator:
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

    # ---- faults ----------------------------------------------------------
    def pick_fault(self, route, ident, method):
        if not self.faults:
            return None
        with self.lock:
            for f in self.faults:
                if not fnmatch.fnmatchcase(route.lower(), f.match.lower()):
                    continue
                if f.method != "*" and f.method != method:
                    continue
                if not fnmatch.fnmatchcase(ident or "-", f.identity):
                    continue
                if f.skip > 0:
                    f.skip -= 1
                    continue
                if f.rate is not None and random.random() >= float(f.rate):
                    continue
                f.hits += 1
                if f.remaining is not None:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self.faults.remove(f)
                key = "%s:%s" % (route, f.kind)
                self.counters["faults"][key] = self.counters["faults"].get(key, 0) + 1
                return f
        return None

    def fault_response(self, f, vault_style=True):
        """Response for a fault, or None for a delay (then the request proceeds)."""
        if f.kind == "delay":
            self.shutdown_event.wait(f.delay_ms / 1000.0)
            return None
        if f.kind == "reset":
            return Response(action="reset")
        if f.kind == "hang":
            return Response(action="hang", hold=f.hang_ms / 1000.0)
        headers = []
        if f.retry_after is not None:
            headers.append(("Retry-After", str(f.retry_after)))
        if f.kind == "body":
            raw = f.body.encode() if isinstance(f.body, str) else jdump(f.body)
            headers.append(("Content-Type", JSON_CT))
            headers.extend((str(k), str(v)) for k, v in f.headers.items())
            return Response(f.status, raw, headers)
        if f.status == 429:
            body = {"error": {"code": f.code or "Throttled",
                              "message": "Request was not processed because too many requests "
                                         "were received. Reason: VaultRequestTypeLimitReached"}}
        elif f.status == 503:
            body = {"error": {"code": f.code or "ServiceUnavailable",
                              "message": "The service is temporarily unavailable."}}
        else:
            body = {"error": {"code": f.code or "InternalServerError",
                              "message": "An internal server error occurred."}}
        if not vault_style:
            body = {"error": body["error"]["code"], "error_description": body["error"]["message"]}
        return json_response(f.status, body, headers)

    # ---- tokens ------------------------------------------------------------
    def issue_token(self, ident, resource, lifetime=None):
        t = time.time()
        life = self.token_lifetime if lifetime is None else lifetime
        iss = "https://sts.windows.net/%s/" % ident.tenant
        claims = {"aud": resource, "iss": iss, "iat": int(t), "nbf": int(t),
                  "exp": int(t) + life, "aio": "kvemu", "appid": ident.client_id,
                  "appidacr": "1" if ident.secrets else "2", "idp": iss,
                  "oid": ident.object_id, "rh": "kvemu", "sub": ident.object_id,
                  "tid": ident.tenant, "uti": uuid.uuid4().hex[:22], "ver": "1.0",
                  "xms_mirid": ident.resource_id if ident.managed else None,
                  "kvemu_iat_ms": int(t * 1000)}
        claims = {k: v for k, v in claims.items() if v is not None}
        tok = jwt.encode(claims, self.pki.signing_key,
                         {"x5t": self.pki.signing_kid, "kid": self.pki.signing_kid})
        return tok, life, int(t)

    def resource_of(self, scope_or_resource, is_scope):
        if not scope_or_resource:
            return None
        if is_scope:
            scopes = scope_or_resource.split()
            res = None
            for s in scopes:
                if s.endswith("/.default"):
                    res = s[:-len("/.default")]
            if res is None:
                return None
        else:
            res = scope_or_resource
        return res.rstrip("/")

    def check_resource(self, res):
        if res not in self.resources:
            raise HttpError(400, body=aad_error(
                "invalid_resource", 500011,
                "The resource principal named %s was not found in the tenant. This can happen "
                "if the application has not been installed by the administrator of the tenant "
                "or consented to by any user in the tenant." % res))

    def verify_bearer(self, token, vault):
        cached = self.token_cache.get(token)
        if cached is None:
            try:
                header, claims, si, sig = jwt.split(token)
            except Exception:
                raise self.unauthorized(vault, "[BearerReadAccessTokenFailed] Error validating "
                                               "token: 'S2S12005'.")
            if header.get("alg") != "RS256" or not jwt.verify_signature(
                    header, si, sig, self.pki.signing_key.public_key()):
                raise self.unauthorized(vault, "[BearerReadAccessTokenFailed] Error validating "
                                               "token: 'S2S12005'.")
            if len(self.token_cache) > 20000:
                self.token_cache.clear()
            self.token_cache[token] = claims
            cached = claims
        c = cached
        t = time.time()
        ident = self.ident_by_oid(c.get("oid"))
        floor = max(self.expired_before["*"],
                    self.expired_before.get(ident.name if ident else "", 0))
        if t >= c.get("exp", 0) or c.get("kvemu_iat_ms", 0) <= floor:
            raise self.unauthorized(vault, "[TokenExpired] Error validating token: 'S2S12086'.")
        if c.get("nbf", 0) > t + 300:
            raise self.unauthorized(vault, "[TokenNotYetValid] Error validating token: "
                                           "'S2S12087'.")
        aud = str(c.get("aud", "")).rstrip("/")
        if aud != vault.resource:
            raise self.unauthorized(vault, "AKV10022: Invalid audience. Expected %s, found: %s."
                                    % (vault.resource, c.get("aud")))
        if c.get("tid") != vault.tenant:
            raise self.unauthorized(vault, "AKV10032: Invalid issuer. Expected one of "
                                           "https://sts.windows.net/%s/, found "
                                           "https://sts.windows.net/%s/." % (vault.tenant,
                                                                             c.get("tid")))
        if ident is None:
            raise self.unauthorized(vault, "AKV10046: The caller's identity was not found.")
        return ident

    def challenge(self, vault):
        if vault.challenge_form == "scope":
            # scope= and no resource=, a form the SDKs read
            # (azure-keyvault-keys, _shared/http_challenge.py).
            return ('Bearer authorization="%s/%s", scope="%s/.default"'
                    % (self.login, vault.tenant, vault.resource))
        return ('Bearer authorization="%s/%s", resource="%s"'
                % (self.login, vault.tenant, vault.resource))

    def unauthorized(self, vault, message):
        body = b"" if vault.hsm else jdump({"error": {"code": "Unauthorized",
                                                      "message": message}})
        return HttpError(401, headers=[("WWW-Authenticate", self.challenge(vault))],
                         body=body)

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

    # ---- Entra ID ---------------------------------------------------------------
    def handle_entra(self, req):
        segs = [s for s in req.path.split("/") if s]
        route, ident_name, status = "login:unknown", "-", 500
        try:
            if self.latency["identity_ms"]:
                self.shutdown_event.wait(self.latency["identity_ms"] / 1000.0)
            if len(segs) >= 3 and segs[-2:] == ["oauth2", "token"] or segs[-3:] == [
                    "oauth2", "v2.0", "token"]:
                route = "login:token"
            elif req.path.endswith("/.well-known/openid-configuration"):
                route = "login:openid"
            elif segs[:3] == ["common", "discovery", "instance"]:
                route = "login:instance"
            elif "keys" in segs[-1:]:
                route = "login:keys"
            f = self.pick_fault(route, None, req.method)
            if f:
                r = self.fault_response(f, vault_style=False)
                if r is not None:
                    status = r.status if r.action is None else 0
                    return r
            r, ident_name = self._entra(req, segs, route)
            status = r.status
            return r
        except HttpError as e:
            status = e.status
            return json_response(e.status, e.payload(), e.headers)
        finally:
            self.count(route, ident_name, status)

    def _openid(self, tenant, v2=True):
        base = "%s/%s" % (self.login, tenant)
        suffix = "/v2.0" if v2 else ""
        return {
            "token_endpoint": base + "/oauth2%s/token" % suffix,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": base + "/discovery%s/keys" % suffix,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": ("%s/%s/v2.0" % (self.login, tenant)) if v2
            else "https://sts.windows.net/%s/" % tenant,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": self.login + "/oidc/userinfo",
            "authorization_endpoint": base + "/oauth2%s/authorize" % suffix,
            "device_authorization_endpoint": base + "/oauth2%s/devicecode" % suffix,
            "http_logout_supported": True, "frontchannel_logout_supported": True,
            "end_session_endpoint": base + "/oauth2%s/logout" % suffix,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
            "tenant_region_scope": "NA", "cloud_instance_name": "localhost",
            "cloud_graph_host_name": "graph.localhost", "msgraph_host": "graph.localhost",
        }

    def jwks(self, key, kid):
        pn = key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "kid": kid, "x5t": kid,
                          "n": int_to_b64url(pn.n), "e": int_to_b64url(pn.e)}]}

    def _tenant_ok(self, tenant):
        if tenant not in self.tenants and tenant not in ("common", "organizations"):
            raise HttpError(400, body=aad_error(
                "invalid_tenant", 90002,
                "Tenant '%s' not found. Check to make sure you have the correct tenant ID and "
                "are signing into the correct cloud." % tenant))

    def _entra(self, req, segs, route):
        if route == "login:instance":
            ae = req.query.get("authorization_endpoint", "")
            parts = [p for p in urlsplit(ae).path.split("/") if p]
            tenant = parts[0] if parts else "common"
            host = "login.localhost:%d" % self.port
            return json_response(200, {
                "tenant_discovery_endpoint": "%s/%s/v2.0/.well-known/openid-configuration"
                                             % (self.login, tenant),
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host,
                              "aliases": [host]}]}), "-"
        if route == "login:openid":
            if segs[0] == "federation":
                return json_response(200, {"issuer": self.fed_issuer,
                                           "jwks_uri": self.fed_issuer + "/keys",
                                           "response_types_supported": ["id_token"],
                                           "subject_types_supported": ["public"],
                                           "id_token_signing_alg_values_supported": ["RS256"]}), "-"
            self._tenant_ok(segs[0])
            return json_response(200, self._openid(segs[0], "v2.0" in segs)), "-"
        if route == "login:keys":
            return json_response(200, self.jwks(self.pki.signing_key, self.pki.signing_kid)), "-"
        if route != "login:token":
            raise HttpError(404, body={"error": "not_found",
                                       "error_description": "Unknown path %s" % req.path})
        if req.method != "POST":
            raise HttpError(405, body=aad_error("invalid_request", 900561,
                                                "The endpoint only accepts POST requests."))
        tenant = segs[0]
        self._tenant_ok(tenant)
        v2 = "v2.0" in segs
        form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, body=aad_error(
                "unsupported_grant_type", 70003,
                "The app requested an unsupported grant type '%s'." % form.get("grant_type")))
        cid = form.get("client_id")
        ident = self.ident_by_client_id(cid) if cid else None
        if ident is None or (tenant not in ("common", "organizations")
                             and ident.tenant != tenant):
            raise HttpError(400, body=aad_error(
                "unauthorized_client", 700016,
                "Application with identifier '%s' was not found in the directory '%s'. This can "
                "happen if the application has not been installed by the administrator of the "
                "tenant or consented to by any user in the tenant. You may have sent your "
                "authentication request to the wrong tenant." % (cid, tenant)))
        res = self.resource_of(form.get("scope") if v2 else form.get("resource"), v2)
        if res is None:
            raise HttpError(400, body=aad_error(
                "invalid_scope", 1002012,
                "The provided value for scope %s is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI)." % form.get("scope")))
        self.check_resource(res)
        if "client_secret" in form:
            if form["client_secret"] not in ident.secrets:
                raise HttpError(401, body=aad_error(
                    "invalid_client", 7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID, for a secret added to "
                    "app '%s'." % ident.client_id))
        elif "client_assertion" in form:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise HttpError(400, body=aad_error(
                    "invalid_request", 70002,
                    "The client_assertion_type must be '%s'." % ASSERTION_TYPE))
            self.check_assertion(ident, tenant, form["client_assertion"])
        else:
            raise HttpError(401, body=aad_error(
                "invalid_client", 7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'."))
        tok, life, t = self.issue_token(ident, res)
        if v2:
            body = {"token_type": "Bearer", "expires_in": life, "ext_expires_in": life,
                    "access_token": tok}
        else:
            body = {"token_type": "Bearer", "expires_in": str(life), "ext_expires_in": str(life),
                    "expires_on": str(t + life), "not_before": str(t), "resource": res,
                    "access_token": tok}
        return json_response(200, body, [("Cache-Control", "no-store, no-cache"),
                                         ("Pragma", "no-cache")]), ident.name

    def check_assertion(self, ident, tenant, assertion):
        for fed in ident.federated:
            if "token" in fed and assertion.strip() == fed["token"]:
                return
        try:
            header, claims, si, sig = jwt.split(assertion)
        except Exception:
            raise HttpError(400, body=aad_error("invalid_request", 50027,
                                                "JWT token is invalid or malformed."))
        t = time.time()
        thumb = header.get("x5t") or header.get("x5t#S256") or header.get("kid")
        if ident.certs and thumb:
            cert = None
            norm = str(thumb).rstrip("=")
            for c, tp, _ in ident.certs:
                cands = {b64url_encode(tp["sha1"]), b64url_encode(tp["sha256"]),
                         tp["sha1"].hex(), tp["sha1"].hex().upper(), tp["sha256"].hex(),
                         tp["sha256"].hex().upper()}
                if norm in cands:
                    cert = c
                    break
            if cert is None:
                raise HttpError(401, body=aad_error(
                    "invalid_client", 700027,
                    "Client assertion failed signature validation. [Reason - The key was not "
                    "found., Thumbprint of key used by client: '%s', Please visit the Azure "
                    "Portal, Graph Explorer or directly use MS Graph to see configured keys for "
                    "app Id '%s'.]" % (thumb, ident.client_id)))
            if not jwt.verify_signature(header, si, sig, cert.public_key()):
                raise HttpError(401, body=aad_error(
                    "invalid_client", 700027,
                    "Client assertion failed signature validation. [Reason - The provided "
                    "signature value did not match the expected signature value.]"))
            aud = str(claims.get("aud", ""))
            if not (aud.rstrip("/").endswith("/%s/oauth2/v2.0/token" % tenant)
                    or aud.rstrip("/").endswith("/%s/oauth2/token" % tenant)):
                raise HttpError(401, body=aad_error(
                    "invalid_client", 700212,
                    "The audience '%s' of the client assertion is not the token endpoint."
                    % aud))
            if claims.get("iss") != ident.client_id or claims.get("sub") != ident.client_id:
                raise HttpError(401, body=aad_error(
                    "invalid_client", 700023,
                    "Client assertion issuer and subject must be the client id."))
            if not claims.get("exp") or t > claims["exp"] + 300 or \
                    claims.get("nbf", 0) > t + 300:
                raise HttpError(400, body=aad_error(
                    "invalid_client", 700024,
                    "Client assertion is not within its valid time range."))
            return
        for fed in ident.federated:
            if "token" in fed:
                continue
            issuer = self.fed_issuer if fed.get("issuer") == "@emulator" else fed.get("issuer")
            if claims.get("iss") != issuer or claims.get("sub") != fed.get("subject"):
                continue
            auds = claims.get("aud")
            auds = auds if isinstance(auds, list) else [auds]
            if fed.get("audience") not in auds:
                continue
            if fed.get("issuer") == "@emulator":
                if not jwt.verify_signature(header, si, sig, self.fed_key.public_key()):
                    continue
            elif "_public_key" in fed:
                if not jwt.verify_signature(header, si, sig, fed["_public_key"]):
                    continue
            if not claims.get("exp") or t > claims["exp"] + 300:
                raise HttpError(400, body=aad_error(
                    "invalid_client", 700024,
                    "Client assertion is not within its valid time range."))
            return
        raise HttpError(400, body=aad_error(
            "invalid_request", 70021,
            "No matching federated identity record found for presented assertion. Assertion "
            "Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'."
            % (claims.get("iss"), claims.get("sub"), claims.get("aud"))))

    def federated_token(self, ident, subject=None, lifetime=86400, audience=None):
        t = int(time.time())
        sub = subject
        if sub is None:
            for fed in ident.federated:
                if fed.get("issuer") == "@emulator":
                    sub = fed.get("subject")
                    break
        if sub is None:
            sub = "system:serviceaccount:default:%s" % ident.name
        claims = {"iss": self.fed_issuer, "sub": sub,
                  "aud": [audience or "api://AzureADTokenExchange"],
                  "iat": t, "nbf": t, "exp": t + lifetime, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.fed_key, {"kid": self.pki.signing_kid})

    # ---- managed identity (IMDS and App Service) -----------------------------
    def handle_imds(self, req, app_service):
        route = "appservice:token" if app_service else "imds:token"
        ident_name, status = "-", 500
        try:
            if self.latency["identity_ms"]:
                self.shutdown_event.wait(self.latency["identity_ms"] / 1000.0)
            f = self.pick_fault(route, None, req.method)
            if f:
                r = self.fault_response(f, vault_style=False)
                if r is not None:
                    status = r.status if r.action is None else 0
                    return r
            r, ident_name = self._imds(req, app_service)
            status = r.status
            return r
        except HttpError as e:
            status = e.status
            return json_response(e.status, e.payload(), e.headers)
        finally:
            self.count(route, ident_name, status)

    def _imds(self, req, app_service):
        q = req.query
        if req.method != "GET":
            raise HttpError(405, body={"error": "invalid_request",
                                       "error_description": "Only GET is supported"})
        if app_service:
            if req.headers.get("X-IDENTITY-HEADER") != self.identity_header:
                raise HttpError(401, body={"statusCode": 401,
                                           "message": "The X-IDENTITY-HEADER header is "
                                                      "missing or does not match."})
        elif (req.headers.get("Metadata") or "").lower() != "true":
            raise HttpError(400, body={"error": "invalid_request",
                                       "error_description": "Required metadata header not "
                                                            "specified"})
        if not q.get("api-version"):
            raise HttpError(400, body={"error": "invalid_request",
                                       "error_description": "Required query variable "
                                                            "'api-version' is missing"})
        res = self.resource_of(q.get("resource"), False)
        if not res:
            raise HttpError(400, body={"error": "invalid_request",
                                       "error_description": "Required query variable "
                                                            "'resource' is missing"})
        cid = q.get("client_id") or q.get("clientid")
        oid = q.get("object_id") or q.get("principal_id")
        rid = q.get("msi_res_id") or q.get("mi_res_id")
        ident = None
        for i in self.identities.values():
            if not i.managed:
                continue
            if cid or oid or rid:
                if i.managed == "user" and ((cid and i.client_id == cid) or
                                            (oid and i.object_id == oid) or
                                            (rid and i.resource_id.lower() == rid.lower())):
                    ident = i
                    break
            elif i.managed == "system":
                ident = i
                break
        if ident is None:
            raise HttpError(400, body={"error": "invalid_request",
                                       "error_description": "Identity not found"})
        if res not in self.resources:
            raise HttpError(400, body={"error": "invalid_resource",
                                       "error_description": "AADSTS500011: The resource "
                                       "principal named %s was not found in the tenant." % res})
        tok, life, t = self.issue_token(ident, res)
        body = {"access_token": tok, "expires_on": str(t + life), "resource": q.get("resource"),
                "token_type": "Bearer", "client_id": ident.client_id}
        if not app_service:
            body.update({"refresh_token": "", "expires_in": str(life),
                         "ext_expires_in": str(life), "not_before": str(t)})
        return json_response(200, body), ident.name

    # ---- vault data plane -------------------------------------------------------
    def route_vault(self, req):
        """Return (operation, params) for a vault request."""
        p = req.path
        if len(p) > 1:
            p = p.rstrip("/")
        segs = [unquote(s) for s in p.split("/")[1:]]
        m = req.method
        n = len(segs)
        op, prm = None, {}
        if segs and segs[0].lower() == "keys":
            if n == 1:
                op = {"GET": "getKeys"}.get(m)
            elif n == 2:
                prm = {"name": segs[1]}
                if segs[1].lower() == "restore" and m == "POST":
                    op = "restoreKey"
                else:
                    op = {"GET": "getKey", "PUT": "importKey", "PATCH": "updateKey",
                          "DELETE": "deleteKey"}.get(m)
            elif n == 3:
                prm = {"name": segs[1]}
                x = segs[2].lower()
                if x == "versions":
                    op = {"GET": "getKeyVersions"}.get(m)
                elif x == "create":
                    op = {"POST": "createKey"}.get(m)
                elif x == "rotate":
                    op = {"POST": "rotateKey"}.get(m)
                elif x == "rotationpolicy":
                    op = {"GET": "getKeyRotationPolicy", "PUT": "updateKeyRotationPolicy"}.get(m)
                elif x == "backup":
                    op = {"POST": "backupKey"}.get(m)
                elif x in CRYPTO_OPS:
                    op = {"POST": CRYPTO_OPS[x]}.get(m)
                elif x == "release":
                    op = {"POST": "release"}.get(m)
                else:
                    prm["version"] = segs[2]
                    op = {"GET": "getKey", "PATCH": "updateKey"}.get(m)
            elif n == 4:
                prm = {"name": segs[1], "version": segs[2]}
                x = segs[3].lower()
                if x in CRYPTO_OPS:
                    op = {"POST": CRYPTO_OPS[x]}.get(m)
                elif x == "release":
                    op = {"POST": "release"}.get(m)
        elif segs and segs[0].lower() == "deletedkeys":
            if n == 1:
                op = {"GET": "getDeletedKeys"}.get(m)
            elif n == 2:
                prm = {"name": segs[1]}
                op = {"GET": "getDeletedKey", "DELETE": "purgeDeletedKey"}.get(m)
            elif n == 3 and segs[2].lower() == "recover":
                prm = {"name": segs[1]}
                op = {"POST": "recoverDeletedKey"}.get(m)
        elif segs == ["rng"]:
            op = {"POST": "getRandomBytes"}.get(m)
        return op, prm

    def handle_vault(self, req, vault):
        route, ident_name, status = "%s:unknown" % vault.name, "-", 500
        try:
            if self.latency["vault_ms"]:
                self.shutdown_event.wait(self.latency["vault_ms"] / 1000.0)
            op, prm = self.route_vault(req)
            if op is None:
                raise HttpError(404, "NotFound", "The requested URI %s %s does not exist."
                                % (req.method, req.path))
            route = "%s:%s" % (vault.name, op)
            with self.lock:
                # The Content-Type each operation arrived with ("" for none).
                cts = self.counters.setdefault("content_types", {}).setdefault(route, {})
                ct = req.headers.get("Content-Type") or ""
                cts[ct] = cts.get(ct, 0) + 1
                # Requests by method and path (no query), per vault.
                bp = self.counters.setdefault("by_path", {})
                k = "%s %s %s" % (vault.name, req.method, req.path.rstrip("/"))
                bp[k] = bp.get(k, 0) + 1
            authz = req.headers.get("Authorization") or ""
            if not authz[:7].lower() == "bearer ":
                raise self.unauthorized(vault, "Request is missing a Bearer or PoP token.")
            ident = self.verify_bearer(authz[7:].strip(), vault)
            ident_name = ident.name
            f = self.pick_fault(route, ident_name, req.method)
            if f:
                r = self.fault_response(f)
                if r is not None:
                    status = r.status if r.action is None else 0
                    return r
            lvl = api_level(req.query.get("api-version"))
            perm = PERMISSIONS.get(op)
            if perm and not self.permitted(vault, ident, perm):
                raise self.forbidden(vault, ident, perm)
            status, obj = self.vault_op(vault, op, prm, req, lvl)
            if obj is None:
                r = Response(status, b"", [])
            else:
                r = json_response(status, obj, self.vault_headers(vault))
            return r
        except HttpError as e:
            status = e.status
            if e.body is not None and isinstance(e.body, bytes):
                return Response(e.status, e.body, [("Content-Type", JSON_CT)] + e.headers
                                if e.body else e.headers)
            return json_response(e.status, e.payload(), e.headers + self.vault_headers(vault))
        finally:
            self.count(route, ident_name, status)

    def handle_foreign(self, req, vault):
        """A host a vault's nextLink points at (admin knob foreign_next_link):
        records whether each request carried an Authorization header; without
        one it answers the vault's challenge, with one it serves the vault's
        answer (so a client that leaks its token gets on)."""
        authz = req.headers.get("Authorization")
        with self.lock:
            self.foreign_requests.append({"host": req.host, "method": req.method,
                                          "path": req.path, "authorization": bool(authz)})
        if not authz:
            self.count("foreign:" + req.host, "-", 401)
            e = self.unauthorized(vault, "Request is missing a Bearer or PoP token.")
            return Response(e.status, e.body, ([("Content-Type", JSON_CT)] if e.body else [])
                            + e.headers)
        self.count("foreign:" + req.host, "-", 200)
        return self.handle_vault(req, vault)

    def vault_headers(self, vault):
        if vault.hsm:
            return [("x-ms-request-id", str(uuid.uuid4())), ("x-ms-server-latency", "1")]
        return [("x-ms-keyvault-region", vault.region),
                ("x-ms-request-id", str(uuid.uuid4())),
                ("x-ms-keyvault-service-version", "1.9.0.0"),
                ("x-ms-keyvault-network-info",
                 "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;")]

    @staticmethod
    def permitted(vault, ident, perm):
        """Access policies grant get and list separately; under RBAC one data
        action, keys/read, covers both (learn.microsoft.com: Key Vault
        data-plane RBAC actions)."""
        if ident.name in vault.revoked:
            return False
        granted = vault.access.get(ident.name, ())
        if vault.authorization == "rbac" and perm in ("get", "list"):
            return "get" in granted or "list" in granted
        return perm in granted

    def forbidden(self, vault, ident, perm):
        caller = "appid=%s;oid=%s;iss=https://sts.windows.net/%s/" % (
            ident.client_id, ident.object_id, ident.tenant)
        if vault.authorization == "rbac":
            kind = "managedHsm" if vault.hsm else "vaults"
            msg = ("Caller is not authorized to perform action on resource.\r\nIf role "
                   "assignments, deny assignments or role definitions were changed recently, "
                   "please observe propagation time.\r\nCaller: %s\r\nAction: "
                   "'Microsoft.KeyVault/%s/keys/%s'\r\nResource: '%s'\r\nAssignment: (not "
                   "found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: "
                   "%s;location=%s\r\n" % (caller, kind, RBAC_ACTIONS.get(perm, perm),
                                          vault.base_url, vault.name, vault.region))
            return HttpError(403, "Forbidden", msg, "ForbiddenByRbac")
        msg = ("The user, group or application '%s' does not have keys %s permission on key "
               "vault '%s;location=%s'. For help resolving this issue, please see "
               "https://go.microsoft.com/fwlink/?linkid=2125287"
               % (caller, perm, vault.name, vault.region))
        return HttpError(403, "Forbidden", msg, "AccessDenied")

    def vault_op(self, v, op, prm, req, lvl):
        av = req.query.get("api-version")
        name = prm.get("name")
        version = prm.get("version") or None
        if op == "getKeys":
            return 200, v.list_keys(lvl, req.query, av)
        if op == "getKeyVersions":
            return 200, v.list_versions(name, lvl, req.query, av)
        if op == "getDeletedKeys":
            return 200, v.list_deleted(lvl, req.query, av)
        if op == "getKey":
            return 200, v.bundle(v.get_version(name, version), lvl)
        if op == "createKey":
            return 200, v.bundle(v.create_key(name, req.json()), lvl)
        if op == "importKey":
            return 200, v.bundle(v.import_key(name, req.json()), lvl)
        if op == "updateKey":
            return 200, v.bundle(v.update_key(name, version, req.json()), lvl)
        if op == "deleteKey":
            key, d = v.delete_key(name)
            b = v.bundle(key.latest(), lvl)
            if d is not None:
                b.update(v.deleted_extra(d))
            return 200, b
        if op == "getDeletedKey":
            d = v.get_deleted(name)
            b = v.bundle(d.key.latest(), lvl)
            b.update(v.deleted_extra(d))
            return 200, b
        if op == "recoverDeletedKey":
            return 200, v.bundle(v.recover_key(name).latest(), lvl)
        if op == "purgeDeletedKey":
            v.purge_key(name)
            return 204, None
        if op == "rotateKey":
            return 200, v.bundle(v.rotate_key(name), lvl)
        if op == "getKeyRotationPolicy":
            return 200, v.get_rotation_policy(name)
        if op == "updateKeyRotationPolicy":
            return 200, v.set_rotation_policy(name, req.json())
        if op == "backupKey":
            return 200, {"value": v.backup(name)}
        if op == "restoreKey":
            return 200, v.bundle(v.restore(req.json()).latest(), lvl)
        if op in ("encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify"):
            return 200, v.crypto(name, version, op.lower(), req.json())
        if op == "getRandomBytes":
            body = req.json()
            cnt = body.get("count") if isinstance(body, dict) else None
            if not isinstance(cnt, int) or isinstance(cnt, bool) or not 1 <= cnt <= 128:
                raise HttpError(400, "BadParameter", "count must be between 1 and 128.")
            return 200, {"value": b64url_encode(os.urandom(cnt))}
        if op == "release":
            raise HttpError(400, "BadParameter",
                            "Secure key release is not supported by this emulator.")
        raise HttpError(404, "NotFound", "Unknown operation")

    # ---- admin ------------------------------------------------------------------
    def handle_admin(self, req):
        authz = req.headers.get("Authorization") or ""
        tok = authz[7:].strip() if authz[:7].lower() == "bearer " else \
            (req.headers.get("X-Kvemu-Admin-Token") or "")
        if tok != self.admin_token:
            return json_response(401, {"error": "admin token required (see %s)"
                                       % os.path.join(self.state_dir, "admin-token")})
        try:
            from .admin import admin_dispatch
            status, obj = admin_dispatch(self, req)
            return json_response(status, obj)
        except HttpError as e:
            return json_response(e.status, e.payload())
        except (ValueError, KeyError, TypeError) as e:
            return json_response(400, {"error": {"code": "BadRequest", "message": str(e)}})

    def admin_create_keys(self, vault, spec):
        name = spec["name"]
        count = int(spec.get("count", 1))
        body = {"kty": spec.get("kty", "RSA-HSM" if vault.hsm else "RSA"),
                "key_size": spec.get("key_size", 2048), "crv": spec.get("crv"),
                "key_ops": spec.get("key_ops"), "tags": spec.get("tags"),
                "attributes": {k: spec[k] for k in ("enabled", "nbf", "exp") if k in spec}}
        if count == 1 and "count" not in spec:
            kv = vault.create_key(name, body)
            return [kv.kid()]
        distinct = max(1, min(int(spec.get("distinct", 1)), count))
        pool = [rsa.generate_private_key(public_exponent=65537, key_size=body["key_size"])
                for _ in range(distinct)]
        width = len(str(count - 1))
        kids = []
        for i in range(count):
            kv = vault.create_key("%s-%0*d" % (name, width, i), body, priv=pool[i % distinct])
            kids.append(kv.kid())
        return kids

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


def aad_error(error, code, description):
    ts = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace = str(uuid.uuid4())
    corr = str(uuid.uuid4())
    return {"error": error,
            "error_description": "AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\n"
                                 "Timestamp: %s" % (code, description, trace, corr, ts),
            "error_codes": [code], "timestamp": ts, "trace_id": trace, "correlation_id": corr,
            "error_uri": "https://login.localhost/error?code=%d" % code}


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
