"""The vault data plane: bearer tokens and challenges, permissions, and each
request's way through faults to the operation the route table names."""
import time
import uuid

from . import jwt
from .messages import JSON_CT, Response, json_response
from .routes import match_route
from .util import HttpError, jdump
from .vault import api_level

RBAC_ACTIONS = {
    "list": "read", "get": "read", "create": "create/action", "import": "import/action",
    "update": "write", "delete": "delete", "recover": "recover/action",
    "purge": "deletedKeys/delete", "rotate": "rotate/action", "backup": "backup/action",
    "restore": "restore/action", "encrypt": "encrypt/action", "decrypt": "decrypt/action",
    "wrapKey": "wrapKey/action", "unwrapKey": "unwrapKey/action", "sign": "sign/action",
    "verify": "verify/action", "release": "release/action",
    # The rotation policy's data actions (the built-in role Key Vault Crypto
    # Officer lists them).
    "getrotationpolicy": "rotationpolicy/read",
    "setrotationpolicy": "rotationpolicy/write",
}


class VaultMixin:
    """Emulator methods that serve the vaults' REST API."""

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

    def handle_vault(self, req, vault):
        route, ident_name, status = "%s:unknown" % vault.name, "-", 500
        try:
            if self.latency["vault_ms"]:
                self.shutdown_event.wait(self.latency["vault_ms"] / 1000.0)
            op, prm = match_route(req.method, req.path)
            if op is None:
                raise HttpError(404, "NotFound", "The requested URI %s %s does not exist."
                                % (req.method, req.path))
            route = "%s:%s" % (vault.name, op.name)
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
            if op.permission and not self.permitted(vault, ident, op.permission):
                raise self.forbidden(vault, ident, op.permission)
            status, obj = op.serve(vault, prm, req, lvl)
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
