"""The admin API under https://localhost:PORT/_admin/."""
import copy
import os
import time
import uuid
from collections import namedtuple
from functools import partial

from cryptography.hazmat.primitives.asymmetric import rsa

from . import config as cfgmod
from .faults import Fault
from .messages import json_response
from .routes import compile_routes, match_segments
from .util import HttpError


def _nf(what):
    return HttpError(404, "NotFound", "%s not found" % what)


def _ident(emu, name):
    i = emu.identities.get(name)
    if i is None:
        raise _nf("identity %s" % name)
    return i


def _vault(emu, name):
    v = emu.vault_by_name.get(name.lower())
    if v is None:
        raise _nf("vault %s" % name)
    return v


def status(emu):
    return {"port": emu.port, "imds": ("http://127.0.0.1:%d" % emu.imds.server_address[1])
            if emu.imds else None,
            "login": emu.login, "ca": emu.pki.ca_path, "state_dir": emu.state_dir,
            "tenants": emu.tenants, "token_lifetime": emu.token_lifetime,
            "identity_header": emu.identity_header,
            "latency": dict(emu.latency),
            "vaults": [v.describe() for v in emu.vault_by_name.values()],
            "identities": [i.describe() for i in emu.identities.values()],
            "faults": [f.describe() for f in emu.faults]}


# ---- operations: (emulator, path parameters, body, request) -> (status, answer)
def _status(emu, prm, body, req):
    return 200, status(emu)


def _get_counters(emu, prm, body, req):
    with emu.lock:
        c = copy.deepcopy(emu.counters)
    if req.query.get("reset") in ("1", "true"):
        emu.reset_counters()
    return 200, c


def _reset_counters(emu, prm, body, req):
    emu.reset_counters()
    return 200, {"reset": True}


def _list_faults(emu, prm, body, req):
    return 200, {"faults": [f.describe() for f in emu.faults]}


def _add_faults(emu, prm, body, req):
    specs = body if isinstance(body, list) else [body]
    out = []
    with emu.lock:
        for spec in specs:
            emu.fault_seq += 1
            f = Fault(spec, "f%d" % emu.fault_seq)
            emu.faults.append(f)
            out.append(f.describe())
    return 200, out[0] if not isinstance(body, list) else {"faults": out}


def _clear_faults(emu, prm, body, req):
    with emu.lock:
        k = len(emu.faults)
        emu.faults = []
    return 200, {"removed": k}


def _remove_fault(emu, prm, body, req):
    with emu.lock:
        before = len(emu.faults)
        emu.faults = [f for f in emu.faults if f.id != prm["fault"]]
        k = before - len(emu.faults)
    if not k:
        raise _nf("fault %s" % prm["fault"])
    return 200, {"removed": k}


def _get_foreign(emu, prm, body, req):
    # Requests to the hosts of foreign_next_link, and whether each
    # carried an Authorization header.
    with emu.lock:
        return 200, {"requests": list(emu.foreign_requests)}


def _get_latency(emu, prm, body, req):
    return 200, dict(emu.latency)


def _set_latency(emu, prm, body, req):
    if "ms" in body:
        emu.latency["vault_ms"] = int(body["ms"])
    for k in ("vault_ms", "identity_ms", "connect_ms"):
        if k in body:
            emu.latency[k] = int(body[k])
    return 200, dict(emu.latency)


def _expire_tokens(emu, prm, body, req):
    who = body.get("identity") or "*"
    if who != "*":
        _ident(emu, who)
    emu.expired_before[who] = int(time.time() * 1000)
    return 200, {"expired": who, "before_ms": emu.expired_before[who]}


def _get_token_lifetime(emu, prm, body, req):
    return 200, {"seconds": emu.token_lifetime}


def _set_token_lifetime(emu, prm, body, req):
    emu.token_lifetime = int(body["seconds"])
    return 200, {"seconds": emu.token_lifetime}


def _issue_token(emu, prm, body, req):
    ident = _ident(emu, body["identity"])
    res = body.get("resource") or emu.vault_by_name[next(iter(emu.vault_by_name))].resource
    tok, life, t = emu.issue_token(ident, res.rstrip("/"), body.get("lifetime"))
    return 200, {"access_token": tok, "expires_on": t + life, "resource": res}


def _federated_token(emu, prm, body, req):
    ident = _ident(emu, body["identity"])
    return 200, {"token": emu.federated_token(ident, body.get("subject"),
                                              int(body.get("lifetime", 86400)),
                                              body.get("audience")),
                 "issuer": emu.fed_issuer}


def _list_identities(emu, prm, body, req):
    return 200, {"identities": [i.describe() for i in emu.identities.values()]}


def _add_identity(emu, prm, body, req):
    if body.get("name") in emu.identities:
        raise HttpError(409, "Conflict", "identity exists")
    ident = cfgmod.Identity(body, emu.tenants, emu.state_dir)
    emu.identities[ident.name] = ident
    for vname, perms in (body.get("access") or {}).items():
        _vault(emu, vname).set_access({ident.name: perms})
    return 200, ident.describe()


def _get_identity(emu, prm, body, req):
    return 200, _ident(emu, prm["identity"]).describe()


def _delete_identity(emu, prm, body, req):
    ident = _ident(emu, prm["identity"])
    del emu.identities[ident.name]
    return 200, {"deleted": ident.name}


def _revoke_or_restore(sub, emu, prm, body, req):
    ident = _ident(emu, prm["identity"])
    vaults = [_vault(emu, body["vault"])] if body.get("vault") else \
        list(emu.vault_by_name.values())
    for v in vaults:
        if sub == "revoke":
            v.revoked.add(ident.name)
        else:
            v.revoked.discard(ident.name)
    return 200, {"identity": ident.name, sub + "d": [v.name for v in vaults]}


def _add_secret(emu, prm, body, req):
    ident = _ident(emu, prm["identity"])
    secret = body.get("secret") or ("kvemu-" + uuid.uuid4().hex)
    ident.secrets.append(secret)
    return 200, {"identity": ident.name, "secret": secret, "count": len(ident.secrets)}


def _remove_secrets(emu, prm, body, req):
    ident = _ident(emu, prm["identity"])
    if body.get("secret") is not None:
        if body["secret"] not in ident.secrets:
            raise _nf("secret")
        ident.secrets.remove(body["secret"])
    else:
        ident.secrets = []
    return 200, {"identity": ident.name, "count": len(ident.secrets)}


def _add_certificate(emu, prm, body, req):
    ident = _ident(emu, prm["identity"])
    spec = dict(body)
    if not any(k in spec for k in ("pem", "path", "generate")):
        spec["generate"] = None
    if "generate" in spec and not spec["generate"]:
        spec["generate"] = "cert-%s-%s" % (ident.name, uuid.uuid4().hex[:8])
    ident.add_certificate(spec, emu.state_dir)
    d = ident.describe()
    out = {"identity": ident.name, "certificate": d["certificates"][-1]}
    if "generate" in spec:
        out["path"] = ident.generated[spec["generate"]]
    return 200, out


def _remove_certificates(emu, prm, body, req):
    ident = _ident(emu, prm["identity"])
    k = ident.remove_certificate(body.get("thumbprint"))
    return 200, {"identity": ident.name, "removed": k}


def _add_federated(emu, prm, body, req):
    ident = _ident(emu, prm["identity"])
    ident.add_federated(body)
    return 200, ident.describe()


def _list_vaults(emu, prm, body, req):
    return 200, {"vaults": [v.describe() for v in emu.vault_by_name.values()]}


def _get_vault(emu, prm, body, req):
    return 200, _vault(emu, prm["vault"]).describe()


def _update_vault(emu, prm, body, req):
    v = _vault(emu, prm["vault"])
    v.update_properties(body)
    return 200, v.describe()


def _access(op, emu, prm, body, req):
    """PUT sets an identity's permissions, DELETE removes them; every
    method answers what they are then."""
    v = _vault(emu, prm["vault"])
    who = prm["identity"]
    _ident(emu, who)
    if op == "set":
        v.access[who] = cfgmod.expand_permissions(body.get("permissions", []))
    elif op == "delete":
        v.access.pop(who, None)
    return 200, {"identity": who, "permissions": sorted(v.access.get(who, ()))}


def _create_keys(emu, prm, body, req):
    v = _vault(emu, prm["vault"])
    t0 = time.time()
    kids = emu.admin_create_keys(v, body)
    return 200, {"created": len(kids), "kids": kids if len(kids) <= 100 else kids[:100],
                 "seconds": round(time.time() - t0, 3)}


def _copy_key(emu, prm, body, req):
    # What backup and restore do: the key with all its versions
    # (same ids, material, attributes) into another vault.
    v = _vault(emu, prm["vault"])
    dst = _vault(emu, body.get("to") or "")
    if dst is v:
        raise HttpError(400, "BadParameter", "copy: the same vault")
    key = dst.restore({"value": v.backup(prm["key"])})
    return 200, {"copied": key.name, "from": v.name, "to": dst.name,
                 "versions": list(key.versions)}


def _update_key(emu, prm, body, req):
    v = _vault(emu, prm["vault"])
    upd = {}
    attrs = {k: body[k] for k in ("enabled", "nbf", "exp") if k in body}
    if attrs:
        upd["attributes"] = attrs
    for k in ("key_ops", "tags"):
        if k in body:
            upd[k] = body[k]
    kv = v.update_key(prm["key"], body.get("version"), upd)
    return 200, v.bundle(kv, 76)


def _delete_key(emu, prm, body, req):
    v = _vault(emu, prm["vault"])
    name = prm["key"]
    if v.keys.get(name.lower()) is not None:
        v.delete_key(name)
    if req.query.get("purge") in ("1", "true"):
        with v.lock:
            v.deleted.pop(name.lower(), None)
    return 200, {"deleted": name}


def _get_key(emu, prm, body, req):
    v = _vault(emu, prm["vault"])
    kv = v.get_version(prm["key"], req.query.get("version"))
    return 200, v.bundle(kv, 76)


def _unknown_identity_route(emu, prm, body, req):
    _ident(emu, prm["identity"])    # an unknown identity: 404 for it first
    raise _unknown(req)


def _unknown_vault_route(emu, prm, body, req):
    _vault(emu, prm["vault"])       # an unknown vault: 404 for it first
    raise _unknown(req)


def _unknown(req):
    return HttpError(404, "NotFound", "unknown admin route %s %s" % (req.method, req.path))


# ---- the table ------------------------------------------------------------------
AdminRoute = namedtuple("AdminRoute", "method pattern name serve")

# Matching (routes.match_segments): the path after /_admin, empty segments
# dropped, not percent-decoded; literal segments compare as they are;
# {name} takes any segment; a last segment "*" any further segments; method
# "*" any method. Rows are tried in order; the first that matches wins;
# none: 404 "unknown admin route M PATH". Rows named None are not routes:
# they answer 404 for an unknown identity or vault before that one.
ADMIN_ROUTES = [
    AdminRoute("*", "", "status", _status),
    AdminRoute("*", "status", "status", _status),
    AdminRoute("GET", "counters", "getCounters", _get_counters),
    AdminRoute("DELETE", "counters", "resetCounters", _reset_counters),
    AdminRoute("POST", "counters/reset", "resetCounters", _reset_counters),
    AdminRoute("GET", "faults", "listFaults", _list_faults),
    AdminRoute("POST", "faults", "addFaults", _add_faults),
    AdminRoute("DELETE", "faults", "clearFaults", _clear_faults),
    AdminRoute("DELETE", "faults/{fault}", "removeFault", _remove_fault),
    AdminRoute("GET", "foreign/*", "getForeign", _get_foreign),
    AdminRoute("GET", "latency/*", "getLatency", _get_latency),
    AdminRoute("PUT", "latency/*", "setLatency", _set_latency),
    AdminRoute("POST", "latency/*", "setLatency", _set_latency),
    AdminRoute("POST", "tokens/expire", "expireTokens", _expire_tokens),
    AdminRoute("PUT", "tokens/lifetime", "setTokenLifetime", _set_token_lifetime),
    AdminRoute("POST", "tokens/lifetime", "setTokenLifetime", _set_token_lifetime),
    AdminRoute("*", "tokens/lifetime", "getTokenLifetime", _get_token_lifetime),
    AdminRoute("POST", "tokens/issue", "issueToken", _issue_token),
    AdminRoute("POST", "federated-token/*", "federatedToken", _federated_token),
    AdminRoute("GET", "identities", "listIdentities", _list_identities),
    AdminRoute("POST", "identities", "addIdentity", _add_identity),
    AdminRoute("GET", "identities/{identity}", "getIdentity", _get_identity),
    AdminRoute("DELETE", "identities/{identity}", "deleteIdentity", _delete_identity),
    AdminRoute("POST", "identities/{identity}/revoke/*", "revokeIdentity",
               partial(_revoke_or_restore, "revoke")),
    AdminRoute("POST", "identities/{identity}/restore/*", "restoreIdentity",
               partial(_revoke_or_restore, "restore")),
    AdminRoute("POST", "identities/{identity}/secrets/*", "addSecret", _add_secret),
    AdminRoute("DELETE", "identities/{identity}/secrets/*", "removeSecrets", _remove_secrets),
    AdminRoute("POST", "identities/{identity}/certificates/*", "addCertificate",
               _add_certificate),
    AdminRoute("DELETE", "identities/{identity}/certificates/*", "removeCertificates",
               _remove_certificates),
    AdminRoute("POST", "identities/{identity}/federated/*", "addFederated", _add_federated),
    AdminRoute("*", "identities/{identity}/*", None, _unknown_identity_route),
    AdminRoute("GET", "vaults", "listVaults", _list_vaults),
    AdminRoute("GET", "vaults/{vault}", "getVault", _get_vault),
    AdminRoute("PATCH", "vaults/{vault}", "updateVault", _update_vault),
    AdminRoute("PUT", "vaults/{vault}", "updateVault", _update_vault),
    AdminRoute("PUT", "vaults/{vault}/access/{identity}", "setAccess",
               partial(_access, "set")),
    AdminRoute("DELETE", "vaults/{vault}/access/{identity}", "deleteAccess",
               partial(_access, "delete")),
    AdminRoute("*", "vaults/{vault}/access/{identity}", "getAccess", partial(_access, "get")),
    AdminRoute("POST", "vaults/{vault}/keys", "createKeys", _create_keys),
    AdminRoute("POST", "vaults/{vault}/keys/{key}/copy", "copyKey", _copy_key),
    AdminRoute("PATCH", "vaults/{vault}/keys/{key}", "updateKey", _update_key),
    AdminRoute("DELETE", "vaults/{vault}/keys/{key}", "deleteKey", _delete_key),
    AdminRoute("GET", "vaults/{vault}/keys/{key}", "getKey", _get_key),
    AdminRoute("*", "vaults/{vault}/*", None, _unknown_vault_route),
]

_TABLE = compile_routes(ADMIN_ROUTES)


def match_admin(method, path):
    """(route, parameters) for a request under /_admin, or (None, {})."""
    segs = [s for s in path.split("/") if s][1:]    # drop "_admin"
    return match_segments(_TABLE, method, segs, fold=False)


def admin_dispatch(emu, req):
    body = req.json() if req.body else {}
    route, prm = match_admin(req.method, req.path)
    if route is None:
        raise _unknown(req)
    return route.serve(emu, prm, body, req)


class AdminMixin:
    """Emulator methods behind /_admin and the keys a configuration asks for."""

    def handle_admin(self, req):
        authz = req.headers.get("Authorization") or ""
        tok = authz[7:].strip() if authz[:7].lower() == "bearer " else \
            (req.headers.get("X-Kvemu-Admin-Token") or "")
        if tok != self.admin_token:
            return json_response(401, {"error": "admin token required (see %s)"
                                       % os.path.join(self.state_dir, "admin-token")})
        try:
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

