"""kvemu-admin: script a running emulator through its admin API."""
import argparse
import http.client
import json
import os
import ssl
import sys


def _conn_info(args):
    sd = args.state_dir or os.environ.get("KVEMU_STATE_DIR")
    if not sd:
        sys.exit("kvemu-admin: give --state-dir DIR (or set KVEMU_STATE_DIR)")
    with open(os.path.join(sd, "admin.json")) as f:
        return json.load(f)


def call(info, method, path, body=None):
    ctx = ssl.create_default_context(cafile=info["ca"])
    conn = http.client.HTTPSConnection("localhost", info["port"], context=ctx, timeout=120)
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Authorization": "Bearer " + info["token"]}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    conn.request(method, "/_admin/" + path.lstrip("/"), body=data, headers=hdrs)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = raw.decode("utf-8", "replace")
    return r.status, obj


def _jsonarg(text):
    return json.loads(text) if text else None


def build_parser():
    ap = argparse.ArgumentParser(prog="kvemu-admin", description=__doc__)
    ap.add_argument("--state-dir", help="the emulator's state directory "
                                        "(default: $KVEMU_STATE_DIR)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="ports, vaults, identities, faults")
    p = sub.add_parser("counters", help="request counters (JSON)")
    p.add_argument("--reset", action="store_true", help="reset after reading")
    sub.add_parser("reset-counters")
    p = sub.add_parser("fault", help="add a fault")
    p.add_argument("kind", choices=["429", "500", "503", "status", "reset", "delay", "hang"])
    p.add_argument("--match", default="*",
                   help="glob over SERVICE:OPERATION, e.g. '*:unwrapKey', 'kvemu:*', "
                        "'login:token', 'imds:token'")
    p.add_argument("--identity", default="*", help="glob over the caller's identity name")
    p.add_argument("--method", default="*")
    p.add_argument("--count", type=int, help="the next N matching requests (default 1)")
    p.add_argument("--rate", type=float, help="probability 0..1 for each matching request")
    p.add_argument("--skip", type=int, default=0, help="let the first K matches through")
    p.add_argument("--retry-after", help="Retry-After header value (429/503)")
    p.add_argument("--status", type=int, help="status for kind 'status'")
    p.add_argument("--code", help="error code in the body")
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--hang-ms", type=int, default=600000)
    sub.add_parser("faults", help="list faults")
    p = sub.add_parser("clear-faults", help="remove all faults, or one by id")
    p.add_argument("id", nargs="?")
    p = sub.add_parser("latency", help="delay every vault request by MS milliseconds")
    p.add_argument("ms", type=int)
    p.add_argument("--identity-ms", type=int, help="also delay token endpoints")
    p.add_argument("--connect-ms", type=int,
                   help="delay each new TLS connection (its handshake round trips)")
    p = sub.add_parser("expire-tokens", help="make issued tokens count as expired")
    p.add_argument("--identity")
    p = sub.add_parser("token-lifetime", help="lifetime of newly issued tokens")
    p.add_argument("seconds", type=int)
    p = sub.add_parser("token", help="mint an access token for an identity")
    p.add_argument("identity")
    p.add_argument("--resource")
    p = sub.add_parser("federated-token", help="mint a workload-identity assertion")
    p.add_argument("identity")
    p.add_argument("--subject")
    for c in ("revoke", "restore"):
        p = sub.add_parser(c, help="%s an identity's access" % c)
        p.add_argument("identity")
        p.add_argument("--vault")
    p = sub.add_parser("set-access", help="set an identity's key permissions on a vault")
    p.add_argument("vault")
    p.add_argument("identity")
    p.add_argument("permissions", nargs="*", help="e.g. get unwrapKey, or all")
    p = sub.add_parser("add-secret")
    p.add_argument("identity")
    p.add_argument("secret", nargs="?")
    p = sub.add_parser("remove-secret", help="remove one secret, or all")
    p.add_argument("identity")
    p.add_argument("secret", nargs="?")
    p = sub.add_parser("add-cert", help="register a certificate (PEM file) or generate one")
    p.add_argument("identity")
    p.add_argument("pem", nargs="?")
    p = sub.add_parser("remove-cert", help="remove a certificate by hex thumbprint, or all")
    p.add_argument("identity")
    p.add_argument("thumbprint", nargs="?")
    p = sub.add_parser("create-key", help="create a key, or COUNT keys NAME-0..NAME-(N-1)")
    p.add_argument("vault")
    p.add_argument("name")
    p.add_argument("--count", type=int)
    p.add_argument("--distinct", type=int, default=1,
                   help="with --count: how many distinct key materials to generate")
    p.add_argument("--kty")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--ops", nargs="*")
    p.add_argument("--disabled", action="store_true")
    p.add_argument("--nbf", type=int)
    p.add_argument("--exp", type=int)
    p = sub.add_parser("update-key", help="enable/disable a key or change its key_ops/dates")
    p.add_argument("vault")
    p.add_argument("name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--enable", action="store_true")
    g.add_argument("--disable", action="store_true")
    p.add_argument("--ops", nargs="*")
    p.add_argument("--nbf", type=int)
    p.add_argument("--exp", type=int)
    p = sub.add_parser("delete-key")
    p.add_argument("vault")
    p.add_argument("name")
    p.add_argument("--purge", action="store_true", help="also remove it from deleted keys")
    p = sub.add_parser("copy-key", help="copy a key with all its versions to another "
                       "vault (what backup and restore do)")
    p.add_argument("vault")
    p.add_argument("name")
    p.add_argument("to")
    p = sub.add_parser("vault", help="show or change vault properties")
    p.add_argument("vault")
    p.add_argument("--set", metavar="JSON", help='e.g. {"purge_protection": false}')
    p = sub.add_parser("raw", help="any admin call")
    p.add_argument("method")
    p.add_argument("path")
    p.add_argument("json", nargs="?")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    info = _conn_info(args)
    c = args.cmd
    m, path, body = "GET", "status", None
    if c == "counters":
        path = "counters" + ("?reset=1" if args.reset else "")
    elif c == "reset-counters":
        m, path = "POST", "counters/reset"
    elif c == "fault":
        m, path = "POST", "faults"
        body = {"kind": args.kind, "match": args.match, "identity": args.identity,
                "method": args.method, "skip": args.skip, "delay_ms": args.delay_ms,
                "hang_ms": args.hang_ms}
        for k in ("count", "rate", "retry_after", "status", "code"):
            if getattr(args, k) is not None:
                body[k] = getattr(args, k)
    elif c == "faults":
        path = "faults"
    elif c == "clear-faults":
        m, path = "DELETE", "faults" + ("/" + args.id if args.id else "")
    elif c == "latency":
        m, path, body = "PUT", "latency", {"vault_ms": args.ms}
        if args.identity_ms is not None:
            body["identity_ms"] = args.identity_ms
        if args.connect_ms is not None:
            body["connect_ms"] = args.connect_ms
    elif c == "expire-tokens":
        m, path, body = "POST", "tokens/expire", {"identity": args.identity}
    elif c == "token-lifetime":
        m, path, body = "PUT", "tokens/lifetime", {"seconds": args.seconds}
    elif c == "token":
        m, path, body = "POST", "tokens/issue", {"identity": args.identity,
                                                 "resource": args.resource}
    elif c == "federated-token":
        m, path, body = "POST", "federated-token", {"identity": args.identity,
                                                    "subject": args.subject}
    elif c in ("revoke", "restore"):
        m, path, body = "POST", "identities/%s/%s" % (args.identity, c), {"vault": args.vault}
    elif c == "set-access":
        m, path = "PUT", "vaults/%s/access/%s" % (args.vault, args.identity)
        body = {"permissions": args.permissions}
    elif c == "add-secret":
        m, path, body = "POST", "identities/%s/secrets" % args.identity, {"secret": args.secret}
    elif c == "remove-secret":
        m, path, body = "DELETE", "identities/%s/secrets" % args.identity, {"secret": args.secret}
    elif c == "add-cert":
        m, path = "POST", "identities/%s/certificates" % args.identity
        if args.pem:
            with open(args.pem) as f:
                body = {"pem": f.read()}
        else:
            body = {"generate": None}
    elif c == "remove-cert":
        m, path = "DELETE", "identities/%s/certificates" % args.identity
        body = {"thumbprint": args.thumbprint}
    elif c == "create-key":
        m, path = "POST", "vaults/%s/keys" % args.vault
        body = {"name": args.name, "key_size": args.size}
        if args.count is not None:
            body["count"] = args.count
            body["distinct"] = args.distinct
        if args.kty:
            body["kty"] = args.kty
        if args.ops is not None:
            body["key_ops"] = args.ops
        if args.disabled:
            body["enabled"] = False
        for k in ("nbf", "exp"):
            if getattr(args, k) is not None:
                body[k] = getattr(args, k)
    elif c == "update-key":
        m, path, body = "PATCH", "vaults/%s/keys/%s" % (args.vault, args.name), {}
        if args.enable or args.disable:
            body["enabled"] = bool(args.enable)
        if args.ops is not None:
            body["key_ops"] = args.ops
        for k in ("nbf", "exp"):
            if getattr(args, k) is not None:
                body[k] = getattr(args, k)
    elif c == "delete-key":
        m, path = "DELETE", "vaults/%s/keys/%s%s" % (args.vault, args.name,
                                                      "?purge=1" if args.purge else "")
    elif c == "copy-key":
        m, path = "POST", "vaults/%s/keys/%s/copy" % (args.vault, args.name)
        body = {"to": args.to}
    elif c == "vault":
        path = "vaults/" + args.vault
        if args.set:
            m, body = "PATCH", json.loads(args.set)
    elif c == "raw":
        m, path, body = args.method.upper(), args.path, _jsonarg(args.json)
    status, obj = call(info, m, path, body)
    print(json.dumps(obj, indent=2) if not isinstance(obj, str) else obj)
    return 0 if status == 200 else 1
