"""The admin API under https://localhost:PORT/_admin/."""
import copy
import os
import time
import uuid

from cryptography.hazmat.primitives.asymmetric import rsa

from . import config as cfgmod
from .faults import Fault
from .messages import json_response
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


def admin_dispatch(emu, req):
    segs = [s for s in req.path.split("/") if s][1:]   # drop "_admin"
    m = req.method
    body = req.json() if req.body else {}
    q = req.query
    n = len(segs)
    if n == 0 or segs == ["status"]:
        return 200, status(emu)
    head = segs[0]
    if head == "counters":
        if n == 1 and m == "GET":
            with emu.lock:
                c = copy.deepcopy(emu.counters)
            if q.get("reset") in ("1", "true"):
                emu.reset_counters()
            return 200, c
        if (n == 1 and m == "DELETE") or (n == 2 and segs[1] == "reset" and m == "POST"):
            emu.reset_counters()
            return 200, {"reset": True}
    if head == "faults":
        if n == 1 and m == "GET":
            return 200, {"faults": [f.describe() for f in emu.faults]}
        if n == 1 and m == "POST":
            specs = body if isinstance(body, list) else [body]
            out = []
            with emu.lock:
                for spec in specs:
                    emu.fault_seq += 1
                    f = Fault(spec, "f%d" % emu.fault_seq)
                    emu.faults.append(f)
                    out.append(f.describe())
            return 200, out[0] if not isinstance(body, list) else {"faults": out}
        if n == 1 and m == "DELETE":
            with emu.lock:
                k = len(emu.faults)
                emu.faults = []
            return 200, {"removed": k}
        if n == 2 and m == "DELETE":
            with emu.lock:
                before = len(emu.faults)
                emu.faults = [f for f in emu.faults if f.id != segs[1]]
                k = before - len(emu.faults)
            if not k:
                raise _nf("fault %s" % segs[1])
            return 200, {"removed": k}
    if head == "foreign" and m == "GET":
        # Requests to the hosts of foreign_next_link, and whether each
        # carried an Authorization header.
        with emu.lock:
            return 200, {"requests": list(emu.foreign_requests)}
    if head == "latency":
        if m == "GET":
            return 200, dict(emu.latency)
        if m in ("PUT", "POST"):
            if "ms" in body:
                emu.latency["vault_ms"] = int(body["ms"])
            for k in ("vault_ms", "identity_ms", "connect_ms"):
                if k in body:
                    emu.latency[k] = int(body[k])
            return 200, dict(emu.latency)
    if head == "tokens":
        if segs[1:] == ["expire"] and m == "POST":
            who = body.get("identity") or "*"
            if who != "*":
                _ident(emu, who)
            emu.expired_before[who] = int(time.time() * 1000)
            return 200, {"expired": who, "before_ms": emu.expired_before[who]}
        if segs[1:] == ["lifetime"]:
            if m in ("PUT", "POST"):
                emu.token_lifetime = int(body["seconds"])
            return 200, {"seconds": emu.token_lifetime}
        if segs[1:] == ["issue"] and m == "POST":
            ident = _ident(emu, body["identity"])
            res = body.get("resource") or (emu.vault_by_name[next(iter(emu.vault_by_name))]
                                           .resource)
            tok, life, t = emu.issue_token(ident, res.rstrip("/"), body.get("lifetime"))
            return 200, {"access_token": tok, "expires_on": t + life, "resource": res}
    if head == "federated-token" and m == "POST":
        ident = _ident(emu, body["identity"])
        return 200, {"token": emu.federated_token(ident, body.get("subject"),
                                                  int(body.get("lifetime", 86400)),
                                                  body.get("audience")),
                     "issuer": emu.fed_issuer}
    if head == "identities":
        if n == 1 and m == "GET":
            return 200, {"identities": [i.describe() for i in emu.identities.values()]}
        if n == 1 and m == "POST":
            if body.get("name") in emu.identities:
                raise HttpError(409, "Conflict", "identity exists")
            ident = cfgmod.Identity(body, emu.tenants, emu.state_dir)
            emu.identities[ident.name] = ident
            for vname, perms in (body.get("access") or {}).items():
                _vault(emu, vname).set_access({ident.name: perms})
            return 200, ident.describe()
        ident = _ident(emu, segs[1])
        if n == 2 and m == "GET":
            return 200, ident.describe()
        if n == 2 and m == "DELETE":
            del emu.identities[ident.name]
            return 200, {"deleted": ident.name}
        sub = segs[2] if n > 2 else None
        if sub in ("revoke", "restore") and m == "POST":
            vaults = [_vault(emu, body["vault"])] if body.get("vault") else \
                list(emu.vault_by_name.values())
            for v in vaults:
                if sub == "revoke":
                    v.revoked.add(ident.name)
                else:
                    v.revoked.discard(ident.name)
            return 200, {"identity": ident.name, sub + "d": [v.name for v in vaults]}
        if sub == "secrets":
            if m == "POST":
                secret = body.get("secret") or ("kvemu-" + uuid.uuid4().hex)
                ident.secrets.append(secret)
                return 200, {"identity": ident.name, "secret": secret,
                             "count": len(ident.secrets)}
            if m == "DELETE":
                if body.get("secret") is not None:
                    if body["secret"] not in ident.secrets:
                        raise _nf("secret")
                    ident.secrets.remove(body["secret"])
                else:
                    ident.secrets = []
                return 200, {"identity": ident.name, "count": len(ident.secrets)}
        if sub == "certificates":
            if m == "POST":
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
            if m == "DELETE":
                k = ident.remove_certificate(body.get("thumbprint"))
                return 200, {"identity": ident.name, "removed": k}
        if sub == "federated" and m == "POST":
            ident.add_federated(body)
            return 200, ident.describe()
    if head == "vaults":
        if n == 1 and m == "GET":
            return 200, {"vaults": [v.describe() for v in emu.vault_by_name.values()]}
        v = _vault(emu, segs[1])
        if n == 2 and m == "GET":
            return 200, v.describe()
        if n == 2 and m in ("PATCH", "PUT"):
            v.update_properties(body)
            return 200, v.describe()
        if n == 4 and segs[2] == "access":
            _ident(emu, segs[3])
            if m == "PUT":
                v.access[segs[3]] = cfgmod.expand_permissions(body.get("permissions", []))
            elif m == "DELETE":
                v.access.pop(segs[3], None)
            return 200, {"identity": segs[3], "permissions": sorted(v.access.get(segs[3], ()))}
        if n == 3 and segs[2] == "keys" and m == "POST":
            t0 = time.time()
            kids = emu.admin_create_keys(v, body)
            return 200, {"created": len(kids), "kids": kids if len(kids) <= 100 else
                         kids[:100], "seconds": round(time.time() - t0, 3)}
        if n == 5 and segs[2] == "keys" and segs[4] == "copy" and m == "POST":
            # What backup and restore do: the key with all its versions
            # (same ids, material, attributes) into another vault.
            dst = _vault(emu, body.get("to") or "")
            if dst is v:
                raise HttpError(400, "BadParameter", "copy: the same vault")
            key = dst.restore({"value": v.backup(segs[3])})
            return 200, {"copied": key.name, "from": v.name, "to": dst.name,
                         "versions": list(key.versions)}
        if n == 4 and segs[2] == "keys":
            name = segs[3]
            if m == "PATCH":
                upd = {}
                attrs = {k: body[k] for k in ("enabled", "nbf", "exp") if k in body}
                if attrs:
                    upd["attributes"] = attrs
                for k in ("key_ops", "tags"):
                    if k in body:
                        upd[k] = body[k]
                kv = v.update_key(name, body.get("version"), upd)
                return 200, v.bundle(kv, 76)
            if m == "DELETE":
                if v.keys.get(name.lower()) is not None:
                    v.delete_key(name)
                if q.get("purge") in ("1", "true"):
                    with v.lock:
                        v.deleted.pop(name.lower(), None)
                return 200, {"deleted": name}
            if m == "GET":
                kv = v.get_version(name, q.get("version"))
                return 200, v.bundle(kv, 76)
    raise HttpError(404, "NotFound", "unknown admin route %s %s" % (m, req.path))


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

