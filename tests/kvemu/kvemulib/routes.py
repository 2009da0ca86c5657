"""The vault data plane's route table: method and path pattern -> operation.

Each row names the operation as the Key Vault REST reference does
(learn.microsoft.com/rest/api/keyvault/keys); that name is also the route
name the request counters and faults use ("VAULT:OPERATION"). A row carries
the key permission the operation needs (None: any authenticated caller) and
the function that serves it.

Matching: the path loses trailing slashes and is split on "/", each segment
percent-decoded; literal segments compare without regard to case; {name}
takes any segment; {version} takes any segment except a word that another
row of the same length names literally at that place (so "keys/k/backup"
is never read as version "backup" of key k). Rows are tried in order; the
first whose method and path both match wins; none: 404.
"""
import os
from collections import namedtuple
from functools import partial
from urllib.parse import unquote

from .util import HttpError, b64url_encode

Route = namedtuple("Route", "method pattern name permission serve")


# ---- operations: (vault, path parameters, request, api level) -> (status, body)
def _version(prm):
    return prm.get("version") or None


def _get_keys(v, prm, req, lvl):
    return 200, v.list_keys(lvl, req.query, req.query.get("api-version"))


def _get_key_versions(v, prm, req, lvl):
    return 200, v.list_versions(prm["name"], lvl, req.query, req.query.get("api-version"))


def _get_deleted_keys(v, prm, req, lvl):
    return 200, v.list_deleted(lvl, req.query, req.query.get("api-version"))


def _get_key(v, prm, req, lvl):
    return 200, v.bundle(v.get_version(prm["name"], _version(prm)), lvl)


def _create_key(v, prm, req, lvl):
    return 200, v.bundle(v.create_key(prm["name"], req.json()), lvl)


def _import_key(v, prm, req, lvl):
    return 200, v.bundle(v.import_key(prm["name"], req.json()), lvl)


def _update_key(v, prm, req, lvl):
    return 200, v.bundle(v.update_key(prm["name"], _version(prm), req.json()), lvl)


def _delete_key(v, prm, req, lvl):
    key, d = v.delete_key(prm["name"])
    b = v.bundle(key.latest(), lvl)
    if d is not None:
        b.update(v.deleted_extra(d))
    return 200, b


def _get_deleted_key(v, prm, req, lvl):
    d = v.get_deleted(prm["name"])
    b = v.bundle(d.key.latest(), lvl)
    b.update(v.deleted_extra(d))
    return 200, b


def _recover_deleted_key(v, prm, req, lvl):
    return 200, v.bundle(v.recover_key(prm["name"]).latest(), lvl)


def _purge_deleted_key(v, prm, req, lvl):
    v.purge_key(prm["name"])
    return 204, None


def _rotate_key(v, prm, req, lvl):
    return 200, v.bundle(v.rotate_key(prm["name"]), lvl)


def _policy_api(op, req, lvl):
    """The rotation policy operations are in the REST specification from
    api-version 7.3 (keys.json of 7.3, 7.4 and 7.5; not in 7.2). What the
    service answers an older version is not documented: this emulator says
    400 BadParameter."""
    if lvl < 73:
        raise HttpError(400, "BadParameter", "%s requires api-version 7.3 or later, not %s."
                        % (op, req.query.get("api-version")))


def _get_rotation_policy(v, prm, req, lvl):
    _policy_api("getKeyRotationPolicy", req, lvl)
    return 200, v.get_rotation_policy(prm["name"])


def _update_rotation_policy(v, prm, req, lvl):
    _policy_api("updateKeyRotationPolicy", req, lvl)
    return 200, v.set_rotation_policy(prm["name"], req.json())


def _backup_key(v, prm, req, lvl):
    return 200, {"value": v.backup(prm["name"])}


def _restore_key(v, prm, req, lvl):
    return 200, v.bundle(v.restore(req.json()).latest(), lvl)


def _crypto(op, v, prm, req, lvl):
    return 200, v.crypto(prm["name"], _version(prm), op, req.json())


def _random_bytes(v, prm, req, lvl):
    body = req.json()
    cnt = body.get("count") if isinstance(body, dict) else None
    if not isinstance(cnt, int) or isinstance(cnt, bool) or not 1 <= cnt <= 128:
        raise HttpError(400, "BadParameter", "count must be between 1 and 128.")
    return 200, {"value": b64url_encode(os.urandom(cnt))}


def _release(v, prm, req, lvl):
    raise HttpError(400, "BadParameter", "Secure key release is not supported by this emulator.")


# ---- the table ------------------------------------------------------------------
_CRYPTO = [("encrypt", "encrypt"), ("decrypt", "decrypt"), ("wrapkey", "wrapKey"),
           ("unwrapkey", "unwrapKey"), ("sign", "sign"), ("verify", "verify")]

# POST actions on a key or on one version of it.
_ACTIONS = [(seg, op, op, partial(_crypto, seg)) for seg, op in _CRYPTO] + [
    ("release", "release", "release", _release)]

# The rotation policy has key permissions of its own ("Get Rotation Policy",
# "Set Rotation Policy": learn.microsoft.com/azure/key-vault/keys/
# how-to-configure-key-rotation, "Key Vault access policy permission model").
ROUTES = [
    Route("GET", "keys", "getKeys", "list", _get_keys),
    Route("POST", "keys/restore", "restoreKey", "restore", _restore_key),
    Route("GET", "keys/{name}", "getKey", "get", _get_key),
    Route("PUT", "keys/{name}", "importKey", "import", _import_key),
    Route("PATCH", "keys/{name}", "updateKey", "update", _update_key),
    Route("DELETE", "keys/{name}", "deleteKey", "delete", _delete_key),
    Route("GET", "keys/{name}/versions", "getKeyVersions", "list", _get_key_versions),
    Route("POST", "keys/{name}/create", "createKey", "create", _create_key),
    Route("POST", "keys/{name}/rotate", "rotateKey", "rotate", _rotate_key),
    Route("GET", "keys/{name}/rotationpolicy", "getKeyRotationPolicy",
          "getrotationpolicy",
          _get_rotation_policy),
    Route("PUT", "keys/{name}/rotationpolicy", "updateKeyRotationPolicy",
          "setrotationpolicy",
          _update_rotation_policy),
    Route("POST", "keys/{name}/backup", "backupKey", "backup", _backup_key),
] + [Route("POST", prefix + seg, op, perm, serve)
     for prefix in ("keys/{name}/", "keys/{name}/{version}/")
     for seg, op, perm, serve in _ACTIONS] + [
    Route("GET", "keys/{name}/{version}", "getKey", "get", _get_key),
    Route("PATCH", "keys/{name}/{version}", "updateKey", "update", _update_key),
    Route("GET", "deletedkeys", "getDeletedKeys", "list", _get_deleted_keys),
    Route("GET", "deletedkeys/{name}", "getDeletedKey", "get", _get_deleted_key),
    Route("DELETE", "deletedkeys/{name}", "purgeDeletedKey", "purge", _purge_deleted_key),
    Route("POST", "deletedkeys/{name}/recover", "recoverDeletedKey", "recover",
          _recover_deleted_key),
    Route("POST", "rng", "getRandomBytes", None, _random_bytes),
]


def compile_routes(routes):
    """Each row as (route, [(literal or None, parameter, words it may not take)], rest).

    A pattern's last segment "*" takes any number of further segments, none
    included (rest true; the admin API's table has such rows); "" is the
    empty path."""
    split = [r.pattern.split("/") if r.pattern else [] for r in routes]
    out = []
    for r, segs in zip(routes, split):
        rest = segs[-1:] == ["*"]
        if rest:
            segs = segs[:-1]
        parts = []
        for i, s in enumerate(segs):
            if not s.startswith("{"):
                parts.append((s, None, ()))
                continue
            taken = ()
            if s == "{version}":
                taken = {o[i] for o in split if len(o) == len(segs) and o[:i] == segs[:i]
                         and not o[i].startswith("{")}
            parts.append((None, s[1:-1], taken))
        out.append((r, parts, rest))
    return out


def match_segments(table, method, segs, fold=True):
    """(route, parameters) for a path already split, or (None, {}).

    A row's method "*" takes any method; fold false compares literal
    segments as they are. A rest's segments are the parameter "*"."""
    for r, parts, rest in table:
        if r.method not in (method, "*"):
            continue
        if len(parts) != len(segs) and not (rest and len(segs) > len(parts)):
            continue
        prm = {}
        for (lit, param, taken), seg in zip(parts, segs):
            low = seg.lower() if fold else seg
            if lit is not None:
                if low != lit:
                    break
            elif low in taken:
                break
            else:
                prm[param] = seg
        else:
            if rest:
                prm["*"] = segs[len(parts):]
            return r, prm
    return None, {}


_TABLE = compile_routes(ROUTES)


def match_route(method, path):
    """(route, parameters) for a vault request, or (None, {})."""
    if len(path) > 1:
        path = path.rstrip("/")
    return match_segments(_TABLE, method, [unquote(s) for s in path.split("/")[1:]])
