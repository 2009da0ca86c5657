"""Configuration: tenants, identities, vaults, access."""
import json
import os
import uuid

from cryptography.hazmat.primitives import serialization

from . import pki

DEFAULT_TENANT = "72f9e1c1-1e6b-4b0f-9d3a-6b7e0c2a5e10"
DEFAULT_SECRET = "kvemu-client-secret"
DEFAULT_IDENTITY_HEADER = "kvemu-identity-header"
NS = uuid.UUID("6c1b8f3e-5b3c-4d8e-9a51-1d0a2e7f4c90")

KEY_PERMISSIONS = ["get", "list", "create", "import", "update", "delete", "recover",
                   "purge", "rotate", "backup", "restore", "wrapKey", "unwrapKey",
                   "encrypt", "decrypt", "sign", "verify", "release", "getrotationpolicy",
                   "setrotationpolicy"]
_PERM_LOWER = {p.lower(): p for p in KEY_PERMISSIONS}


def default_config():
    """The configuration served when no --config file is given."""
    full = ["all"]
    return {
        "tenants": [DEFAULT_TENANT],
        "identities": [
            {"name": "app", "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e01",
             "client_secrets": [DEFAULT_SECRET]},
            {"name": "mi", "managed": "system",
             "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e02"},
            {"name": "certapp", "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e03",
             "client_certificates": [{"generate": "client-cert"}]},
            {"name": "wi", "client_id": "0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e04",
             "federated": [{"issuer": "@emulator", "subject": "system:serviceaccount:default:wi"}]},
        ],
        "vaults": [
            {"name": "kvemu", "kind": "vault", "sku": "premium",
             "soft_delete": True, "purge_protection": True, "recoverable_days": 90,
             "access": {"app": full, "mi": full, "certapp": full, "wi": full}},
        ],
    }


def expand_permissions(perms):
    out = set()
    for p in perms or []:
        if not isinstance(p, str):
            raise ValueError("permission must be a string: %r" % (p,))
        if p.lower() == "all":
            out.update(KEY_PERMISSIONS)
        elif p.lower() in _PERM_LOWER:
            out.add(_PERM_LOWER[p.lower()])
        else:
            raise ValueError("unknown key permission %r" % p)
    return out


class Identity:
    def __init__(self, spec, tenants, state_dir):
        self.name = spec["name"]
        self.tenant = spec.get("tenant") or tenants[0]
        if self.tenant not in tenants:
            raise ValueError("identity %s: unknown tenant %s" % (self.name, self.tenant))
        self.client_id = spec.get("client_id") or str(uuid.uuid5(NS, "client:" + self.name))
        self.object_id = spec.get("object_id") or str(uuid.uuid5(NS, "object:" + self.name))
        self.display_name = spec.get("display_name", self.name)
        secrets = spec.get("client_secrets", spec.get("client_secret", []))
        if isinstance(secrets, str):
            secrets = [secrets]
        self.secrets = list(secrets)
        self.certs = []          # list of (cert, {"sha1":..,"sha256":..}, label)
        self.generated = {}      # label -> path of a generated PEM (cert + key)
        for c in spec.get("client_certificates", []):
            self.add_certificate(c, state_dir)
        self.federated = []
        for f in spec.get("federated", []):
            self.add_federated(f)
        self.managed = spec.get("managed")  # None, "system" or "user"
        if self.managed not in (None, "system", "user"):
            raise ValueError("identity %s: managed must be system or user" % self.name)
        self.resource_id = spec.get("resource_id") or (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/kvemu/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/" + self.name)

    def add_certificate(self, c, state_dir):
        """c: PEM text, a path, {"path": p}, {"pem": text} or {"generate": label}."""
        if isinstance(c, str):
            c = {"pem": c} if "-----BEGIN" in c else {"path": c}
        if "generate" in c:
            label = c["generate"] or ("cert-%s-%d" % (self.name, len(self.certs)))
            key, cert = pki.make_client_cert(self.name)
            path = os.path.join(state_dir, "%s.pem" % label)
            data = pki.key_pem(key) + pki.cert_pem(cert)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o600)
            self.generated[label] = path
            certs = [cert]
        elif "path" in c:
            with open(c["path"], "rb") as f:
                certs = pki.load_certs_from_pem(f.read())
            label = c["path"]
        else:
            certs = pki.load_certs_from_pem(c["pem"])
            label = "inline"
        if not certs:
            raise ValueError("identity %s: no certificate found in %r" % (self.name, c))
        cert = certs[0]
        self.certs.append((cert, pki.thumbprints(cert), label))
        return cert

    def remove_certificate(self, thumb_hex=None):
        before = len(self.certs)
        if thumb_hex is None:
            self.certs = []
        else:
            t = thumb_hex.lower().replace(":", "")
            self.certs = [c for c in self.certs
                          if c[1]["sha1"].hex() != t and c[1]["sha256"].hex() != t]
        return before - len(self.certs)

    def add_federated(self, f):
        f = dict(f)
        if "token_file" in f:
            with open(f["token_file"]) as fh:
                f["token"] = fh.read().strip()
        if "public_key_pem" in f:
            f["_public_key"] = serialization.load_pem_public_key(f["public_key_pem"].encode())
        f.setdefault("audience", "api://AzureADTokenExchange")
        self.federated.append(f)

    def describe(self):
        return {"name": self.name, "tenant": self.tenant, "client_id": self.client_id,
                "object_id": self.object_id, "managed": self.managed,
                "resource_id": self.resource_id if self.managed == "user" else None,
                "secrets": len(self.secrets),
                "certificates": [{"sha1": t["sha1"].hex(), "sha256": t["sha256"].hex(),
                                  "label": label} for _, t, label in self.certs],
                "generated_certificates": dict(self.generated),
                "federated": [{k: v for k, v in f.items() if not k.startswith("_")}
                              for f in self.federated]}


def load(path):
    if path is None:
        return default_config()
    with open(path) as f:
        cfg = json.load(f)
    base = os.path.dirname(os.path.abspath(path))
    # Relative certificate paths are relative to the config file.
    for ident in cfg.get("identities", []):
        certs = []
        for c in ident.get("client_certificates", []):
            if isinstance(c, str) and "-----BEGIN" not in c and not os.path.isabs(c):
                c = os.path.join(base, c)
            elif isinstance(c, dict) and "path" in c and not os.path.isabs(c["path"]):
                c = dict(c, path=os.path.join(base, c["path"]))
            certs.append(c)
        if certs:
            ident["client_certificates"] = certs
        for fed in ident.get("federated", []):
            if "token_file" in fed and not os.path.isabs(fed["token_file"]):
                fed["token_file"] = os.path.join(base, fed["token_file"])
    return cfg
