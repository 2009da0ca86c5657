"""Entra ID: the token endpoints (v1 and v2), OpenID discovery, instance
discovery, the signing keys and the checks on client assertions."""
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from . import jwt
from .messages import json_response
from .util import HttpError, b64url_encode, int_to_b64url

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def aad_error(error, code, description):
    ts = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace = str(uuid.uuid4())
    corr = str(uuid.uuid4())
    return {"error": error,
            "error_description": "AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\n"
                                 "Timestamp: %s" % (code, description, trace, corr, ts),
            "error_codes": [code], "timestamp": ts, "trace_id": trace, "correlation_id": corr,
            "error_uri": "https://login.localhost/error?code=%d" % code}



class EntraMixin:
    """Emulator methods that serve Entra ID and issue its tokens."""

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

    def handle_entra(self, req):
        segs = [s for s in req.path.split("/") if s]
        route = "login:unknown"
        if len(segs) >= 3 and segs[-2:] == ["oauth2", "token"] or segs[-3:] == [
                "oauth2", "v2.0", "token"]:
            route = "login:token"
        elif req.path.endswith("/.well-known/openid-configuration"):
            route = "login:openid"
        elif segs[:3] == ["common", "discovery", "instance"]:
            route = "login:instance"
        elif "keys" in segs[-1:]:
            route = "login:keys"
        return self.serve_identity(req, route, lambda: self._entra(req, segs, route))

    def serve_identity(self, req, route, serve):
        """An identity endpoint's request (Entra ID, IMDS, App Service): the
        identity latency, a fault on ROUTE or serve() -> (response, identity
        name); counted under ROUTE."""
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
            r, ident_name = serve()
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
