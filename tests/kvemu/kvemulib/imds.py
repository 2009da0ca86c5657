"""Managed identity: the instance metadata service (IMDS) and App Service's
identity endpoint."""
from .messages import json_response
from .util import HttpError


class ImdsMixin:
    """Emulator methods that serve managed-identity tokens (through
    EntraMixin.serve_identity)."""

    def handle_imds(self, req, app_service):
        route = "appservice:token" if app_service else "imds:token"
        return self.serve_identity(req, route, lambda: self._imds(req, app_service))

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
