"""Vaults, keys and the key operations of the Key Vault data plane."""
import collections
import json
import os
import re
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .util import (HttpError, b64url_decode, b64url_decode_strict, b64url_encode,
                   b64url_to_int, int_to_b64url, new_version, now)

API_LEVELS = {
    "2016-10-01": 60, "7.0": 70, "7.1": 71, "7.2": 72, "7.3-preview": 73, "7.3": 73,
    "7.4-preview.1": 74, "7.4": 74, "7.5-preview.1": 75, "7.5": 75,
    "7.6-preview.1": 76, "7.6-preview.2": 76, "7.6": 76,
    "2025-06-01-preview": 77, "2025-07-01": 77,
}
LATEST_API = "2025-07-01"

ALL_KEY_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
# EC and oct keys (keys.json JsonWebKeyType, JsonWebKeyCurveName): their
# default operations, curves and sizes.
EC_KEY_OPS = ["sign", "verify"]
OCT_KEY_OPS = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
EC_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1,
             "P-256K": ec.SECP256K1}
OCT_SIZES = (128, 192, 256)
VALID_KEY_OPS = {o.lower(): o for o in ALL_KEY_OPS + ["import", "export"]}
NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
VERSION_RE = re.compile(r"^[0-9a-fA-F]{32}$")

_SHA = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256}
ENC_ALGS = {
    "RSA1_5": lambda: padding.PKCS1v15(),
    "RSA-OAEP": lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
    "RSA-OAEP-256": lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
}
_ENC_OVERHEAD = {"RSA1_5": 11, "RSA-OAEP": 2 * 20 + 2, "RSA-OAEP-256": 2 * 32 + 2}
SIG_ALGS = {
    "RS256": ("pkcs1", hashes.SHA256), "RS384": ("pkcs1", hashes.SHA384),
    "RS512": ("pkcs1", hashes.SHA512), "PS256": ("pss", hashes.SHA256),
    "PS384": ("pss", hashes.SHA384), "PS512": ("pss", hashes.SHA512),
    "RSNULL": ("raw", None),
}


def bad(message, inner=None):
    return HttpError(400, "BadParameter", message, inner)


def api_level(version):
    if version is None:
        raise bad("The 'api-version' query parameter is required.")
    lvl = API_LEVELS.get(version)
    if lvl is None:
        raise bad("The specified version (%s) is not recognized. Consider using the latest "
                  "supported version (%s)." % (version, LATEST_API))
    return lvl


def _check_name(name):
    if not NAME_RE.match(name or ""):
        raise bad("The request URI contains an invalid name: %s" % name)


def _intdate(v, field):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad("Property %s has invalid value: %r" % (field, v))
    return int(v)


def _key_ops(ops):
    if ops is None:
        return None
    if not isinstance(ops, list):
        raise bad("Property key_ops must be an array.")
    out = []
    for o in ops:
        if not isinstance(o, str) or o.lower() not in VALID_KEY_OPS:
            raise bad("Invalid key operation: %r" % (o,))
        v = VALID_KEY_OPS[o.lower()]
        if v not in out:
            out.append(v)
    return out


def _tags(tags):
    if tags is None:
        return None
    if not isinstance(tags, dict):
        raise bad("Property tags must be an object.")
    if len(tags) > 15:
        raise bad("The number of tags exceeds the maximum of 15.")
    for k, v in tags.items():
        if not isinstance(v, str) or len(k) > 256 or len(v) > 256:
            raise bad("Invalid tag %r." % (k,))
    return dict(tags)


_DUR_RE = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def duration_seconds(text):
    m = _DUR_RE.match(text or "")
    if not m or text in ("P", "PT"):
        raise bad("Invalid ISO 8601 duration: %r" % (text,))
    y, mo, d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return ((y * 365 + mo * 30 + d) * 24 + h) * 3600 + mi * 60 + s


def _raw_pkcs1_sign(priv, data):
    """PKCS#1 v1.5 type-1 padding over caller data, then the private operation."""
    nums = priv.private_numbers()
    pub = nums.public_numbers
    k = (pub.n.bit_length() + 7) // 8
    if len(data) > k - 11:
        raise bad("Invalid digest length %d for algorithm RSNULL." % len(data))
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    m = int.from_bytes(em, "big")
    # CRT
    s1 = pow(m % nums.p, nums.dmp1, nums.p)
    s2 = pow(m % nums.q, nums.dmq1, nums.q)
    h = (nums.iqmp * (s1 - s2)) % nums.p
    s = s2 + h * nums.q
    return s.to_bytes(k, "big")


def _raw_pkcs1_verify(pub, data, sig):
    nums = pub.public_numbers()
    k = (nums.n.bit_length() + 7) // 8
    if len(sig) != k or len(data) > k - 11:
        return False
    m = pow(int.from_bytes(sig, "big"), nums.e, nums.n)
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    return m == int.from_bytes(em, "big")


def kty_family(kty):
    """RSA, EC or OCT, whatever the -HSM suffix."""
    return kty.upper().split("-")[0]


class KeyVersion:
    def __init__(self, key, version, kty, priv, key_ops, attrs, tags, release_policy=None):
        self.key = key
        self.version = version
        self.kty = kty
        self.priv = priv
        self.family = kty_family(kty)
        self.crv = None
        if self.family == "RSA":
            self.pub = priv.public_key()
            pn = self.pub.public_numbers()
            self.size = pn.n.bit_length()
            self.n = int_to_b64url(pn.n, (self.size + 7) // 8)
            self.e = int_to_b64url(pn.e)
        elif self.family == "EC":
            self.pub = priv.public_key()
            pn = self.pub.public_numbers()
            self.crv = next(c for c, cls in EC_CURVES.items() if isinstance(pn.curve, cls))
            self.size = pn.curve.key_size
            width = (self.size + 7) // 8
            self.x = int_to_b64url(pn.x, width)
            self.y = int_to_b64url(pn.y, width)
        else:  # oct: priv is the key's bytes, never returned
            self.pub = None
            self.size = len(priv) * 8
        self.key_ops = key_ops
        t = now()
        self.enabled = attrs.get("enabled", True)
        self.nbf = attrs.get("nbf")
        self.exp = attrs.get("exp")
        self.exportable = attrs.get("exportable", False)
        self.created = t
        self.updated = t
        self.tags = tags or {}
        self.release_policy = release_policy

    def kid(self):
        return "%s/keys/%s/%s" % (self.key.vault.base_url, self.key.name, self.version)


class Key:
    def __init__(self, vault, name):
        self.vault = vault
        self.name = name
        self.versions = collections.OrderedDict()
        self.rotation_policy = None
        self.managed = False

    def latest(self):
        return next(reversed(self.versions.values()))

    def base_id(self):
        return "%s/keys/%s" % (self.vault.base_url, self.name)


class Deleted:
    def __init__(self, key, vault):
        self.key = key
        self.deleted_date = now()
        self.scheduled_purge = self.deleted_date + vault.recoverable_days * 86400
        self.ready_at = time.time() + vault.delete_delay_ms / 1000.0

    def ready(self):
        return time.time() >= self.ready_at


class Vault:
    def __init__(self, spec, tenants, port, backup_key):
        self.name = spec["name"].lower()
        self.kind = spec.get("kind", "vault")
        if self.kind not in ("vault", "managedhsm"):
            raise ValueError("vault %s: kind must be vault or managedhsm" % self.name)
        self.hsm = self.kind == "managedhsm"
        self.tenant = spec.get("tenant") or tenants[0]
        self.sku = spec.get("sku", "premium")
        self.soft_delete = spec.get("soft_delete", True)
        self.purge_protection = spec.get("purge_protection", self.hsm)
        self.recoverable_days = spec.get("recoverable_days", 90) if self.soft_delete else 0
        self.delete_delay_ms = spec.get("delete_delay_ms", 0)
        self.authorization = spec.get("authorization", "rbac" if self.hsm else "access_policy")
        self.region = spec.get("region", "westus")
        self.host = "%s.%s.localhost" % (self.name, "managedhsm" if self.hsm else "vault")
        self.resource = "https://%s.localhost:%d" % ("managedhsm" if self.hsm else "vault", port)
        self.base_url = "https://%s:%d" % (self.host, port)
        self.port = port
        self.same_created = bool(spec.get("same_created", False))
        self.descending_ids = bool(spec.get("descending_ids", False))
        self.foreign_next_link = spec.get("foreign_next_link")
        self.challenge_form = spec.get("challenge_form", "resource")
        self.keys = {}
        self.deleted = {}
        self.access = {}
        self.revoked = set()
        self.lock = threading.RLock()
        self._backup_key = backup_key
        self.set_access(spec.get("access", {}))

    # ---- properties ----------------------------------------------------
    def set_access(self, access):
        from .config import expand_permissions
        for ident, perms in access.items():
            self.access[ident] = expand_permissions(perms)

    def update_properties(self, props):
        with self.lock:
            for k in ("soft_delete", "purge_protection", "recoverable_days", "delete_delay_ms",
                      "sku", "authorization", "region", "same_created", "descending_ids",
                      "foreign_next_link", "challenge_form"):
                if k in props:
                    setattr(self, k, props[k])
            if not self.soft_delete:
                self.recoverable_days = 0
            elif not self.recoverable_days:
                self.recoverable_days = 90

    def recovery_level(self):
        if not self.soft_delete:
            return "Purgeable"
        custom = "CustomizedRecoverable" if self.recoverable_days < 90 else "Recoverable"
        return custom if self.purge_protection else custom + "+Purgeable"

    def describe(self):
        return {"name": self.name, "kind": self.kind, "url": self.base_url,
                "resource": self.resource, "tenant": self.tenant, "sku": self.sku,
                "soft_delete": self.soft_delete, "purge_protection": self.purge_protection,
                "recoverable_days": self.recoverable_days, "recoveryLevel": self.recovery_level(),
                "delete_delay_ms": self.delete_delay_ms, "authorization": self.authorization,
                "same_created": self.same_created, "descending_ids": self.descending_ids,
                "foreign_next_link": self.foreign_next_link,
                "challenge_form": self.challenge_form,
                "keys": len(self.keys), "deleted_keys": len(self.deleted),
                "access": {k: sorted(v) for k, v in self.access.items()},
                "revoked": sorted(self.revoked)}

    # ---- lookups -------------------------------------------------------
    def get_key(self, name, missing_message=None):
        key = self.keys.get(name.lower())
        if key is None:
            raise HttpError(404, "KeyNotFound", missing_message or
                            "A key with (name/id) %s was not found in this key vault. If you "
                            "recently deleted this key you may be able to recover it using the "
                            "correct recovery command. For help resolving this issue, please see "
                            "https://go.microsoft.com/fwlink/?linkid=2125182" % name)
        return key

    def get_version(self, name, version):
        key = self.get_key(name)
        if not version:
            return key.latest()
        kv = key.versions.get(version.lower())
        if kv is None:
            raise HttpError(404, "KeyNotFound",
                            "A key with (name/id) %s/%s was not found in this key vault. If you "
                            "recently deleted this key you may be able to recover it using the "
                            "correct recovery command. For help resolving this issue, please see "
                            "https://go.microsoft.com/fwlink/?linkid=2125182" % (name, version))
        return kv

    def get_deleted(self, name, for_purge=False):
        d = self.deleted.get(name.lower())
        if d is None:
            raise HttpError(404, "KeyNotFound", "Deleted Key not found: %s" % name)
        if not d.ready():
            if for_purge:
                raise HttpError(409, "Conflict", "Key is currently being deleted.",
                                "ObjectIsBeingDeleted")
            raise HttpError(404, "KeyNotFound", "Deleted Key not found: %s" % name)
        return d

    # ---- rendering -----------------------------------------------------
    def attributes(self, kv, lvl):
        a = {"enabled": kv.enabled}
        if kv.nbf is not None:
            a["nbf"] = kv.nbf
        if kv.exp is not None:
            a["exp"] = kv.exp
        a["created"] = kv.created
        a["updated"] = kv.updated
        if lvl >= 71 and self.soft_delete:
            a["recoverableDays"] = self.recoverable_days
        a["recoveryLevel"] = self.recovery_level()
        if lvl >= 73:
            a["exportable"] = kv.exportable
        if lvl >= 75 and kv.kty.endswith("-HSM"):
            a["hsmPlatform"] = "2" if self.hsm else "1"
        return a

    def bundle(self, kv, lvl):
        # The JWK the service returns: n and e for RSA, crv, x and y for EC,
        # no key material for oct (GetKey-example.json; keys.json JsonWebKey).
        jwk = {"kid": kv.kid(), "kty": kv.kty, "key_ops": list(kv.key_ops)}
        if kv.family == "RSA":
            jwk.update({"n": kv.n, "e": kv.e})
        elif kv.family == "EC":
            jwk.update({"crv": kv.crv, "x": kv.x, "y": kv.y})
        b = {"key": jwk, "attributes": self.attributes(kv, lvl)}
        if kv.tags:
            b["tags"] = dict(kv.tags)
        if kv.key.managed:
            b["managed"] = True
        if kv.release_policy is not None and lvl >= 73:
            b["release_policy"] = kv.release_policy
        return b

    def item(self, kv, lvl, versioned):
        it = {"kid": kv.kid() if versioned else kv.key.base_id(),
              "attributes": self.attributes(kv, lvl)}
        if kv.tags:
            it["tags"] = dict(kv.tags)
        if kv.key.managed:
            it["managed"] = True
        return it

    def deleted_extra(self, d):
        return {"recoveryId": "%s/deletedkeys/%s" % (self.base_url, d.key.name),
                "deletedDate": d.deleted_date, "scheduledPurgeDate": d.scheduled_purge}

    # ---- key creation --------------------------------------------------
    def _kty(self, kty, hsm_flag=False):
        if not isinstance(kty, str):
            raise bad("Property kty is required.")
        up = kty.upper()
        if up == "RSA" and hsm_flag:
            up = "RSA-HSM"
        if up in ("OKP", "OKP-HSM"):
            raise bad("Key type %s is not supported by this emulator." % kty)
        if up not in ("RSA", "RSA-HSM", "EC", "EC-HSM", "OCT", "OCT-HSM"):
            raise bad("Invalid key type: %s" % kty)
        if self.hsm and not up.endswith("-HSM"):
            raise bad("Key type %s is not supported by Managed HSM; use %s-HSM."
                      % (kty, kty.upper()))
        if up.endswith("-HSM") and not self.hsm and self.sku.lower() == "standard":
            raise bad("HSM key types are not supported on a Standard SKU vault.")
        # keys.json spells the symmetric types oct and oct-HSM.
        return {"OCT": "oct", "OCT-HSM": "oct-HSM"}.get(up, up)

    def _new_version(self, name, kty, priv, key_ops, attrs, tags, release_policy=None,
                     check_deleted=True):
        _check_name(name)
        with self.lock:
            if check_deleted and name.lower() in self.deleted:
                raise HttpError(409, "Conflict",
                                "Key %s is currently in a deleted but recoverable state, and "
                                "its name cannot be reused; in this state, the key can only "
                                "be recovered or purged." % name,
                                "ObjectIsDeletedButRecoverable")
            key = self.keys.get(name.lower())
            if key is None:
                key = Key(self, name)
                self.keys[name.lower()] = key
            version = new_version()
            prev = key.latest() if key.versions else None
            if self.descending_ids and prev is not None:
                # Each new id sorts before every earlier one (admin knob):
                # listing order, which is by id, then runs against creation.
                low = min(key.versions)
                head = int(low[:8], 16)
                version = "%08x" % max(head - 1, 0) + version[8:]
            kv = KeyVersion(key, version, kty, priv, key_ops, attrs, tags, release_policy)
            if self.same_created and prev is not None:
                # A create and a rotate in the same second, as the SDKs'
                # recordings show (admin knob).
                kv.created = kv.updated = prev.created
            key.versions[kv.version] = kv
            return kv

    def _attrs_in(self, attrs):
        if attrs is None:
            return {}
        if not isinstance(attrs, dict):
            raise bad("Property attributes must be an object.")
        out = {}
        if "enabled" in attrs and attrs["enabled"] is not None:
            if not isinstance(attrs["enabled"], bool):
                raise bad("Property enabled must be a boolean.")
            out["enabled"] = attrs["enabled"]
        for f in ("nbf", "exp"):
            if attrs.get(f) is not None:
                out[f] = _intdate(attrs[f], f)
        if attrs.get("exportable") is not None:
            out["exportable"] = bool(attrs["exportable"])
        return out

    def create_key(self, name, body, priv=None):
        if not isinstance(body, dict):
            raise bad("The request body is not valid JSON.")
        _check_name(name)
        kty = self._kty(body.get("kty"))
        family = kty_family(kty)
        if family != "RSA":
            return self._create_other(name, kty, family, body)
        size = body.get("key_size", 2048)
        if size is None:
            size = 2048
        if size not in (2048, 3072, 4096):
            raise bad("Invalid key size %r for key type %s." % (size, kty))
        exp = body.get("public_exponent", 65537) or 65537
        if exp not in (3, 65537):
            raise bad("Invalid public exponent %r." % (exp,))
        key_ops = _key_ops(body.get("key_ops"))
        if key_ops is None:
            key_ops = list(ALL_KEY_OPS)
        attrs = self._attrs_in(body.get("attributes"))
        if attrs.get("exportable") and not body.get("release_policy"):
            raise bad("AKV.SKR.1004: Exportable keys must have release policy.")
        tags = _tags(body.get("tags"))
        if name.lower() in self.deleted:
            self._new_version(name, kty, None, None, None, None)  # raises 409
        if priv is None:
            priv = rsa.generate_private_key(public_exponent=exp, key_size=size)
        return self._new_version(name, kty, priv, key_ops, attrs, tags, body.get("release_policy"))

    def _create_other(self, name, kty, family, body):
        """EC (crv, default P-256) and oct (key_size 128/192/256, default 256)
        keys, as keys.json's KeyCreateParameters describes them."""
        if family == "EC":
            crv = body.get("crv") or "P-256"
            if crv not in EC_CURVES:
                raise bad("Invalid curve name %r." % (crv,))
            priv = ec.generate_private_key(EC_CURVES[crv]())
            default_ops = EC_KEY_OPS
        else:
            size = body.get("key_size") or 256
            if size not in OCT_SIZES:
                raise bad("Invalid key size %r for key type %s." % (size, kty))
            priv = os.urandom(size // 8)
            default_ops = OCT_KEY_OPS
        key_ops = _key_ops(body.get("key_ops"))
        if key_ops is None:
            key_ops = list(default_ops)
        attrs = self._attrs_in(body.get("attributes"))
        tags = _tags(body.get("tags"))
        if name.lower() in self.deleted:
            self._new_version(name, kty, None, None, None, None)  # raises 409
        return self._new_version(name, kty, priv, key_ops, attrs, tags)

    def import_key(self, name, body):
        if not isinstance(body, dict) or not isinstance(body.get("key"), dict):
            raise bad("Property key is required.")
        _check_name(name)
        jwk = body["key"]
        kty = self._kty(jwk.get("kty"), bool(body.get("Hsm")) or self.hsm)
        if "key_hsm" in jwk:
            raise bad("BYOK import (key_hsm) is not supported by this emulator.")
        try:
            n = b64url_to_int(jwk["n"])
            e = b64url_to_int(jwk["e"])
        except (KeyError, ValueError, TypeError):
            raise bad("Invalid RSA key: n and e are required.")
        if "d" not in jwk:
            raise bad("Import of an RSA public key is not supported; the private key (d) is required.")
        try:
            d = b64url_to_int(jwk["d"])
            if "p" in jwk and "q" in jwk:
                p, q = b64url_to_int(jwk["p"]), b64url_to_int(jwk["q"])
            else:
                p, q = rsa.rsa_recover_prime_factors(n, e, d)
            dmp1 = b64url_to_int(jwk["dp"]) if "dp" in jwk else rsa.rsa_crt_dmp1(d, p)
            dmq1 = b64url_to_int(jwk["dq"]) if "dq" in jwk else rsa.rsa_crt_dmq1(d, q)
            iqmp = b64url_to_int(jwk["qi"]) if "qi" in jwk else rsa.rsa_crt_iqmp(p, q)
            priv = rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp,
                                         rsa.RSAPublicNumbers(e, n)).private_key()
        except (ValueError, TypeError, KeyError) as ex:
            raise bad("Invalid RSA private key: %s" % ex)
        if priv.key_size not in (2048, 3072, 4096):
            raise bad("Invalid key size %d for key type %s." % (priv.key_size, kty))
        key_ops = _key_ops(jwk.get("key_ops"))
        if key_ops is None:
            key_ops = list(ALL_KEY_OPS)
        attrs = self._attrs_in(body.get("attributes"))
        tags = _tags(body.get("tags"))
        return self._new_version(name, kty, priv, key_ops, attrs, tags, body.get("release_policy"))

    def update_key(self, name, version, body):
        if not isinstance(body, dict):
            raise bad("The request body is not valid JSON.")
        with self.lock:
            kv = self.get_version(name, version)
            key_ops = _key_ops(body.get("key_ops"))
            attrs = self._attrs_in(body.get("attributes"))
            tags = _tags(body.get("tags"))
            if key_ops is not None:
                kv.key_ops = key_ops
            for f in ("enabled", "nbf", "exp", "exportable"):
                if f in attrs:
                    setattr(kv, f, attrs[f])
            if tags is not None:
                kv.tags = tags
            if body.get("release_policy") is not None:
                kv.release_policy = body["release_policy"]
            kv.updated = now()
            return kv

    def delete_key(self, name):
        with self.lock:
            key = self.get_key(name)
            del self.keys[name.lower()]
            if self.soft_delete:
                d = Deleted(key, self)
                self.deleted[name.lower()] = d
                return key, d
            return key, None

    def recover_key(self, name):
        with self.lock:
            d = self.get_deleted(name)
            if name.lower() in self.keys:
                raise HttpError(409, "Conflict", "Key %s already exists." % name)
            del self.deleted[name.lower()]
            self.keys[name.lower()] = d.key
            return d.key

    def purge_key(self, name):
        with self.lock:
            self.get_deleted(name, for_purge=True)
            if self.purge_protection:
                raise HttpError(403, "Forbidden",
                                "Operation \"purge\" is not allowed because purge protection is "
                                "enabled for this vault. Key Vault service will automatically "
                                "purge it after the retention period has passed.")
            del self.deleted[name.lower()]

    def rotate_key(self, name):
        with self.lock:
            key = self.get_key(name)
            cur = key.latest()
            attrs = {}
            pol = key.rotation_policy
            if pol and (pol.get("attributes") or {}).get("expiryTime"):
                attrs["exp"] = now() + duration_seconds(pol["attributes"]["expiryTime"])
        if cur.family == "EC":
            priv = ec.generate_private_key(EC_CURVES[cur.crv]())
        elif cur.family == "OCT":
            priv = os.urandom(len(cur.priv))
        else:
            priv = rsa.generate_private_key(public_exponent=cur.pub.public_numbers().e,
                                            key_size=cur.size)
        return self._new_version(key.name, cur.kty, priv, list(cur.key_ops), attrs,
                                 dict(cur.tags), cur.release_policy, check_deleted=False)

    def get_rotation_policy(self, name):
        key = self.get_key(name)
        pol = key.rotation_policy
        out = {"id": "%s/keys/%s/rotationpolicy" % (self.base_url, key.name)}
        if pol is None:
            out["lifetimeActions"] = [{"trigger": {"timeBeforeExpiry": "P30D"},
                                       "action": {"type": "Notify"}}]
            out["attributes"] = {}
        else:
            out["lifetimeActions"] = pol["lifetimeActions"]
            out["attributes"] = dict(pol["attributes"])
        return out

    def set_rotation_policy(self, name, body):
        """updateKeyRotationPolicy (api-version 7.3+). The service's rules, and
        where each is written down:
        - a trigger (timeAfterCreate or timeBeforeExpiry) is at least 7 days:
          "Rotation time: key rotation interval, the minimum value is seven
          days from creation and seven days from expiration time"
          (learn.microsoft.com/azure/key-vault/keys/how-to-configure-key-rotation);
        - attributes.expiryTime is at least 28 days (Az.KeyVault,
          Update-AzKeyVaultKeyRotationPolicy -ExpiresIn: "It should be at least
          28 days");
        - a Rotate at a time before expiry "requires 'Expiry Time' set on
          rotation policy" (the same how-to page), and so leaves at least 7
          days after creation: expiryTime - timeBeforeExpiry >= 7 days;
        - Notify is the "key near expiry event": its trigger is
          timeBeforeExpiry (the same page; the service's own default policy
          is Notify 30 days before expiry). The page does not say that a
          Notify may not use timeAfterCreate; refusing it is this emulator's
          reading.
        - exactly one trigger per action (the REST specification's
          LifetimeActionsTrigger has the two as alternatives).
        The service's error texts for these are not documented: the messages
        below are this emulator's, with the service's code (BadParameter)."""
        if not isinstance(body, dict):
            raise bad("The request body is not valid JSON.")
        key = self.get_key(name)
        actions = body.get("lifetimeActions") or []
        if not isinstance(actions, list):
            raise bad("Property lifetimeActions must be an array.")
        attrs_in = body.get("attributes") or {}
        if not isinstance(attrs_in, dict):
            raise bad("Property attributes must be an object.")
        expiry = None
        attrs = {}
        if attrs_in.get("expiryTime"):
            expiry = duration_seconds(attrs_in["expiryTime"])
            if expiry < 28 * 86400:
                raise bad("The expiryTime of a rotation policy must be at least 28 days "
                          "(P28D): %s." % attrs_in["expiryTime"])
            attrs["expiryTime"] = attrs_in["expiryTime"]
        clean = []
        for a in actions:
            trig = (a or {}).get("trigger") or {}
            act = (a or {}).get("action") or {}
            typ = act.get("type")
            if not isinstance(typ, str) or typ.lower() not in ("rotate", "notify"):
                raise bad("Invalid lifetime action type: %r" % (typ,))
            typ = "Rotate" if typ.lower() == "rotate" else "Notify"
            t = {}
            for f in ("timeAfterCreate", "timeBeforeExpiry"):
                if trig.get(f):
                    if duration_seconds(trig[f]) < 7 * 86400:
                        raise bad("The %s of a %s action must be at least 7 days (P7D): %s."
                                  % (f, typ, trig[f]))
                    t[f] = trig[f]
            if len(t) != 1:
                raise bad("A lifetime action trigger needs exactly one of timeAfterCreate "
                          "and timeBeforeExpiry.")
            if typ == "Notify" and "timeBeforeExpiry" not in t:
                raise bad("A Notify action's trigger must be timeBeforeExpiry.")
            if typ == "Rotate" and "timeBeforeExpiry" in t:
                if expiry is None:
                    raise bad("A Rotate action with timeBeforeExpiry requires the policy's "
                              "expiryTime.")
                if expiry - duration_seconds(t["timeBeforeExpiry"]) < 7 * 86400:
                    raise bad("The timeBeforeExpiry of a Rotate action must leave at least "
                              "7 days (P7D) after creation: %s before %s."
                              % (t["timeBeforeExpiry"], attrs["expiryTime"]))
            clean.append({"trigger": t, "action": {"type": typ}})
        t = now()
        with self.lock:
            old = key.rotation_policy
            attrs["created"] = old["attributes"]["created"] if old else t
            attrs["updated"] = t
            key.rotation_policy = {"lifetimeActions": clean, "attributes": attrs}
        return self.get_rotation_policy(name)

    # ---- listing ---------------------------------------------------------
    @staticmethod
    def _page(items, query, next_base, api_version):
        mr = query.get("maxresults")
        if mr is None or mr == "":
            size = 25
        else:
            try:
                size = int(mr)
            except ValueError:
                raise bad("Invalid value for maxresults: %s" % mr)
            if not 1 <= size <= 25:
                raise bad("The value of maxresults must be between 1 and 25.")
        start = 0
        tok = query.get("$skiptoken")
        if tok:
            try:
                start = int(json.loads(b64url_decode(tok))["o"])
            except Exception:
                raise bad("Invalid $skiptoken.")
        page = items[start:start + size]
        nxt = None
        if start + size < len(items):
            t = b64url_encode(json.dumps({"o": start + size}).encode())
            nxt = "%s?api-version=%s&$skiptoken=%s&maxresults=%d" % (next_base, api_version, t,
                                                                    size)
        return page, nxt

    def next_base(self):
        """Where nextLink points: the vault, or (admin knob
        foreign_next_link) another host, to test that a client gives that
        host no token."""
        if self.foreign_next_link:
            return "https://%s:%d" % (self.foreign_next_link, self.port)
        return self.base_url

    def list_keys(self, lvl, query, api_version):
        with self.lock:
            keys = sorted(self.keys.values(), key=lambda k: k.name.lower())
            items = [self.item(k.latest(), lvl, False) for k in keys]
        page, nxt = self._page(items, query, self.next_base() + "/keys", api_version)
        return {"value": page, "nextLink": nxt}

    def list_versions(self, name, lvl, query, api_version):
        with self.lock:
            key = self.get_key(name)
            # The service lists versions ordered by version id, not by
            # creation (GetKeyVersions-example.json; the SDKs' recordings).
            items = [self.item(key.versions[ver], lvl, True) for ver in sorted(key.versions)]
        page, nxt = self._page(items, query, "%s/keys/%s/versions" % (self.next_base(), key.name),
                               api_version)
        return {"value": page, "nextLink": nxt}

    def list_deleted(self, lvl, query, api_version):
        with self.lock:
            ds = sorted((d for d in self.deleted.values() if d.ready()),
                        key=lambda d: d.key.name.lower())
            items = []
            for d in ds:
                it = self.item(d.key.latest(), lvl, False)
                it.update(self.deleted_extra(d))
                items.append(it)
        page, nxt = self._page(items, query, self.base_url + "/deletedkeys", api_version)
        return {"value": page, "nextLink": nxt}

    # ---- backup / restore ------------------------------------------------
    def backup(self, name):
        with self.lock:
            key = self.get_key(name)
            data = {"name": key.name, "policy": key.rotation_policy, "versions": []}
            for kv in key.versions.values():
                data["versions"].append({
                    "version": kv.version, "kty": kv.kty,
                    "pem": pki_pem(kv.priv) if kv.family != "OCT" else None,
                    "k": b64url_encode(kv.priv) if kv.family == "OCT" else None,
                    "key_ops": kv.key_ops, "enabled": kv.enabled,
                    "nbf": kv.nbf, "exp": kv.exp, "exportable": kv.exportable,
                    "created": kv.created, "updated": kv.updated, "tags": kv.tags})
        nonce = os.urandom(12)
        blob = b"KVEMUBK1" + nonce + AESGCM(self._backup_key).encrypt(
            nonce, json.dumps(data).encode(), b"kvemu-backup")
        return b64url_encode(blob)

    def restore(self, body):
        try:
            blob = b64url_decode((body or {}).get("value"))
            if blob[:8] != b"KVEMUBK1":
                raise ValueError
            data = json.loads(AESGCM(self._backup_key).decrypt(blob[8:20], blob[20:],
                                                              b"kvemu-backup"))
        except Exception:
            raise bad("Backup blob contains invalid or corrupt version.")
        name = data["name"]
        with self.lock:
            if name.lower() in self.deleted:
                self._new_version(name, None, None, None, None, None)  # raises 409
            if name.lower() in self.keys:
                raise HttpError(409, "Conflict",
                                "Key %s already exists in this vault; restore needs an unused "
                                "name." % name)
            key = Key(self, name)
            key.rotation_policy = data.get("policy")
            for v in data["versions"]:
                if v.get("k") is not None:
                    priv = b64url_decode(v["k"])
                else:
                    priv = serialization.load_pem_private_key(v["pem"].encode(), None)
                kv = KeyVersion(key, v["version"], v["kty"], priv, v["key_ops"],
                                {"enabled": v["enabled"], "nbf": v["nbf"], "exp": v["exp"],
                                 "exportable": v["exportable"]}, v["tags"])
                kv.created, kv.updated = v["created"], v["updated"]
                key.versions[kv.version] = kv
            self.keys[name.lower()] = key
            return key

    # ---- cryptography ----------------------------------------------------
    def crypto(self, name, version, op, body):
        """op is one of encrypt decrypt wrapkey unwrapkey sign verify (lower case)."""
        if not isinstance(body, dict):
            raise bad("The request body is not valid JSON.")
        kv = self.get_version(name, version)
        opname = {"encrypt": "encrypt", "decrypt": "decrypt", "wrapkey": "wrapKey",
                  "unwrapkey": "unwrapKey", "sign": "sign", "verify": "verify"}[op]
        if not kv.enabled and op in ("decrypt", "unwrapkey", "sign"):
            raise HttpError(403, "Forbidden",
                            "Operation %s is not allowed on a disabled key." % opname,
                            "KeyDisabled")
        if opname not in kv.key_ops:
            raise HttpError(403, "Forbidden", "Operation %s is not permitted on this key." % opname,
                            "KeyOperationForbidden")
        if op in ("encrypt", "wrapkey", "sign"):
            t = now()
            if kv.nbf is not None and t < kv.nbf:
                raise HttpError(403, "Forbidden",
                                "Operation %s is not allowed on a key that is not yet valid."
                                % opname, "KeyNotYetValid")
            if kv.exp is not None and t >= kv.exp:
                raise HttpError(403, "Forbidden",
                                "Operation %s is not allowed on an expired key." % opname,
                                "KeyExpired")
        alg = body.get("alg")
        try:
            # base64url only: the service refuses the standard alphabet with
            # 400 BadParameter "Content of 'value' is not base64url." (recorded
            # in bruj0/vault-recovery-key#20); trailing padding it accepts
            # (Azure/azure-rest-api-specs#23829).
            value = b64url_decode_strict(body.get("value"))
        except (ValueError, TypeError):
            raise bad("Content of 'value' is not base64url.")
        if kv.family != "RSA":
            raise bad("Algorithm %s is not supported for key type %s." % (alg, kv.kty))
        k = (kv.size + 7) // 8
        if op in ("encrypt", "wrapkey", "decrypt", "unwrapkey"):
            if alg not in ENC_ALGS:
                raise bad("Invalid algorithm %r for key type %s." % (alg, kv.kty))
            if op in ("encrypt", "wrapkey"):
                if len(value) > k - _ENC_OVERHEAD[alg]:
                    raise bad("The plaintext is too long for algorithm %s and a %d-bit key."
                              % (alg, kv.size))
                out = kv.pub.encrypt(value, ENC_ALGS[alg]())
            else:
                if len(value) != k:
                    raise bad("The ciphertext length %d does not match the key size (%d bytes)."
                              % (len(value), k))
                try:
                    out = kv.priv.decrypt(value, ENC_ALGS[alg]())
                except ValueError:
                    raise bad("Decryption failed: the ciphertext is invalid for algorithm %s."
                              % alg)
            return {"kid": kv.kid(), "value": b64url_encode(out)}
        if alg not in SIG_ALGS:
            raise bad("Invalid algorithm %r for key type %s." % (alg, kv.kty))
        kind, h = SIG_ALGS[alg]
        if op == "sign":
            digest = value
            if h is not None and len(digest) != h.digest_size:
                raise bad("Invalid digest length %d for algorithm %s; expected %d."
                          % (len(digest), alg, h.digest_size))
            if kind == "pkcs1":
                sig = kv.priv.sign(digest, padding.PKCS1v15(), utils.Prehashed(h()))
            elif kind == "pss":
                sig = kv.priv.sign(digest, padding.PSS(padding.MGF1(h()), h.digest_size),
                                   utils.Prehashed(h()))
            else:
                sig = _raw_pkcs1_sign(kv.priv, digest)
            return {"kid": kv.kid(), "value": b64url_encode(sig)}
        # verify: digest is the hash, value the signature
        try:
            digest = b64url_decode_strict(body.get("digest"))
        except (ValueError, TypeError):
            raise bad("Content of 'digest' is not base64url.")
        if h is not None and len(digest) != h.digest_size:
            raise bad("Invalid digest length %d for algorithm %s; expected %d."
                      % (len(digest), alg, h.digest_size))
        ok = True
        try:
            if kind == "pkcs1":
                kv.pub.verify(value, digest, padding.PKCS1v15(), utils.Prehashed(h()))
            elif kind == "pss":
                kv.pub.verify(value, digest, padding.PSS(padding.MGF1(h()), padding.PSS.AUTO),
                              utils.Prehashed(h()))
            else:
                ok = _raw_pkcs1_verify(kv.pub, digest, value)
        except InvalidSignature:
            ok = False
        return {"value": ok}


def pki_pem(priv):
    return priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
