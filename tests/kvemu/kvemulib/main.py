"""Command line entry point of the emulator."""
import argparse
import json
import os
import shlex
import signal
import sys
import threading

from . import config as cfgmod
from .server import Emulator


def write_file(path, data, mode=0o644):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def env_vars(emu):
    first = lambda pred: next((x for x in emu.identities.values() if pred(x)), None)
    app = first(lambda i: i.secrets)
    mi = first(lambda i: i.managed == "system") or first(lambda i: i.managed)
    cert = first(lambda i: i.generated)
    wi = first(lambda i: any(f.get("issuer") == "@emulator" for f in i.federated))
    vault = next((v for v in emu.vault_by_name.values() if not v.hsm), None)
    hsm = next((v for v in emu.vault_by_name.values() if v.hsm), None)
    tenant = (app.tenant if app else emu.tenants[0])
    e = {
        "AZURE_TENANT_ID": tenant,
        "AZURE_CLIENT_ID": app.client_id if app else "",
        "AZURE_CLIENT_SECRET": app.secrets[0] if app else "",
        "AZURE_AUTHORITY_HOST": emu.login,
        "IDENTITY_ENDPOINT": "https://localhost:%d/msi/token" % emu.port,
        "IDENTITY_HEADER": emu.identity_header,
        "REQUESTS_CA_BUNDLE": emu.pki.ca_path,
        "VAULT_URL": (vault or hsm).base_url if (vault or hsm) else "",
        "KVEMU_PORT": str(emu.port),
        "KVEMU_CA": emu.pki.ca_path,
        "KVEMU_LOGIN_URL": emu.login,
        "KVEMU_ADMIN_URL": "https://localhost:%d/_admin" % emu.port,
        "KVEMU_ADMIN_TOKEN_FILE": os.path.join(emu.state_dir, "admin-token"),
        "KVEMU_STATE_DIR": emu.state_dir,
        "KVEMU_PID": str(os.getpid()),
    }
    if emu.imds:
        e["KVEMU_IMDS"] = "http://127.0.0.1:%d" % emu.imds.server_address[1]
    if vault:
        e["KVEMU_VAULT_URL"] = vault.base_url
    if hsm:
        e["KVEMU_HSM_URL"] = hsm.base_url
    for v in emu.vault_by_name.values():
        e["KVEMU_URL_" + v.name.upper().replace("-", "_")] = v.base_url
    if mi:
        e["KVEMU_MI_CLIENT_ID"] = mi.client_id
    if cert:
        e["KVEMU_CERT_CLIENT_ID"] = cert.client_id
        e["KVEMU_CERT_PATH"] = next(iter(cert.generated.values()))
    if wi:
        e["KVEMU_WI_CLIENT_ID"] = wi.client_id
        e["KVEMU_FEDERATED_TOKEN_FILE"] = os.path.join(emu.state_dir, "federated-token")
    return e


def watch_parent(stop):
    """Sets stop when the parent ends, even by SIGKILL: the kernel sends
    SIGTERM then (PR_SET_PDEATHSIG, Linux), and a thread checks the parent
    id in case it ended before that was set or the kernel cannot."""
    parent = os.getppid()
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def poll():
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()
    threading.Thread(target=poll, name="kvemu-parent", daemon=True).start()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="kvemu",
                                 description="Local Azure Key Vault / Managed HSM emulator")
    ap.add_argument("--port", type=int, default=0, help="TLS port (0: any free port)")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--config", help="JSON configuration file (default: built-in)")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--imds-port", type=int, default=0,
                    help="plain-http IMDS port (0: any free port)")
    ap.add_argument("--no-imds", action="store_true", help="no plain-http IMDS listener")
    ap.add_argument("--log", help="append one line per request to this file")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="stop when the process that started kvemu ends, however it "
                         "ends (for tests)")
    ap.add_argument("--print-default-config", action="store_true")
    if argv is None:
        argv = sys.argv[1:]
    if "--print-default-config" in argv:
        print(json.dumps(cfgmod.default_config(), indent=2))
        return 0
    args = ap.parse_args(argv)
    cfg = cfgmod.load(args.config)
    emu = Emulator(args.state_dir, cfg, args.port,
                   None if args.no_imds else args.imds_port, args.bind, args.log)
    sd = emu.state_dir
    write_file(os.path.join(sd, "admin-token"), emu.admin_token + "\n", 0o600)
    wi = next((i for i in emu.identities.values()
               if any(f.get("issuer") == "@emulator" for f in i.federated)), None)
    if wi:
        write_file(os.path.join(sd, "federated-token"), emu.federated_token(wi, lifetime=7 * 86400))
    env = env_vars(emu)
    write_file(os.path.join(sd, "env"),
               "".join("export %s=%s\n" % (k, shlex.quote(v)) for k, v in env.items()))
    write_file(os.path.join(sd, "env.json"), json.dumps(env, indent=2) + "\n")
    write_file(os.path.join(sd, "admin.json"),
               json.dumps({"url": env["KVEMU_ADMIN_URL"], "port": emu.port,
                           "token": emu.admin_token, "ca": emu.pki.ca_path}) + "\n", 0o600)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.exit_with_parent:
        watch_parent(stop)
    emu.serve()
    write_file(os.path.join(sd, "kvemu.pid"), "%d\n" % os.getpid())
    lines = ["KVEMU_PORT=%d" % emu.port]
    for k in ("KVEMU_IMDS", "KVEMU_CA", "KVEMU_VAULT_URL", "KVEMU_HSM_URL", "KVEMU_LOGIN_URL",
              "KVEMU_ADMIN_URL"):
        if k in env:
            lines.append("%s=%s" % (k, env[k]))
    for k, v in env.items():
        if k.startswith("KVEMU_URL_"):
            lines.append("%s=%s" % (k, v))
    lines.append("KVEMU_ENV=%s" % os.path.join(sd, "env"))
    lines.append("KVEMU_PID=%d" % os.getpid())
    lines.append("KVEMU_READY=1")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    while not stop.wait(3600):
        pass
    emu.stop()
    try:
        os.unlink(os.path.join(sd, "kvemu.pid"))
    except OSError:
        pass
    sys.stdout.write("KVEMU_STOPPED=1\n")
    sys.stdout.flush()
    return 0
