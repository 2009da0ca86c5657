#!/usr/bin/python3
"""fork() with live Key Vault connections: the child gets
CKR_CRYPTOKI_NOT_INITIALIZED until its own C_Initialize, then unwraps on
its own connections with its own token; the parent's connections and
token are untouched and it keeps working after the child exits."""
import os
import time

from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, delta, unwrap,
                    public_key)

P = PyKCS11
t = Tap()
s = KvSetup()
emu = s.emu
s.write_conf([("kv", s.token_body())])
s.create_key("kek")
s.load()
slot = s.lib.getSlotList(tokenPresent=True)[0]
ses = s.session("kv")
priv = find(ses, P.CKO_PRIVATE_KEY, "kek")[0]
pk = public_key(ses, find(ses, P.CKO_PUBLIC_KEY, "kek")[0])
t.eq([unwrap(ses, priv, pk) for _ in range(3)], [0, 0, 0],
     "the parent unwraps (its connections are open)")


def vault_connections():
    """Local ports of this process's established TCP connections to the
    emulator."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            c = row.split()
            local, remote, state, inode = c[1], c[2], c[3], c[9]
            if state == "01" and inode in inodes and \
                    int(remote.rsplit(":", 1)[1], 16) == emu.port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


conns = vault_connections()
t.ok(len(conns) >= 1, "the parent holds %d connection(s) to the vault"
     % len(conns))
before = s.counters()

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    out = os.fdopen(w, "w", buffering=1)

    def report(cond, what):
        out.write("%d child: %s\n" % (1 if cond else 0, what))

    try:
        for name, fn in [
            ("C_GetSlotList", lambda: s.lib.getSlotList()),
            ("C_OpenSession", lambda: s.lib.openSession(slot)),
            ("C_FindObjects", lambda: find(ses, P.CKO_PRIVATE_KEY, "kek")),
            ("C_UnwrapKey", lambda: ses.unwrapKey(
                priv, b"\0" * 256, [(P.CKA_CLASS, P.CKO_SECRET_KEY)],
                P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256))),
            ("C_GetSessionInfo", lambda: ses.getSessionInfo()),
        ]:
            rv = ckr(fn)
            report(rv == P.CKR_CRYPTOKI_NOT_INITIALIZED,
                   "%s before C_Initialize: CKR_CRYPTOKI_NOT_INITIALIZED "
                   "(0x%x)" % (name, rv))
        rv = s.lib.lib.C_Initialize()
        report(rv == 0, "C_Initialize in the child (0x%x)" % rv)
        cslot = s.lib.getSlotList(tokenPresent=True)[0]
        cses = s.lib.openSession(cslot, P.CKF_SERIAL_SESSION |
                                 P.CKF_RW_SESSION)
        cpriv = find(cses, P.CKO_PRIVATE_KEY, "kek")
        report(len(cpriv) == 1, "the child finds the key again")
        results = [unwrap(cses, cpriv[0], pk) for _ in range(3)] \
            if cpriv else []
        report(results == [0, 0, 0], "the child unwraps %r" % results)
        s.lib.lib.C_Finalize()
    except Exception as e:  # a crash in the child is a failed check
        report(False, "exception %r" % e)
    out.close()
    os._exit(0)

os.close(w)
lines = os.fdopen(r).read().splitlines()
_, status = os.waitpid(pid, 0)
for line in lines:
    t.ok(line.startswith("1 "), line[2:])
t.ok(len(lines) == 8, "the child reported every check (%d)" % len(lines))
t.ok(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0,
     "the child exited cleanly")

mid = s.counters()
t.ok(delta(before, mid, "login:token", 200) == 1 and
     delta(before, mid, "login:token", identity="app") == 1,
     "the child fetched its own token (one new token request by app)",
     mid.get("by_identity_route"))
t.ok(delta(before, mid, "kvemu:unwrapKey", 200) == 3,
     "the child's three unwraps reached the vault")
t.ok(sum(delta(before, mid, r, 401) for r in mid["by_route_status"]) >= 1,
     "the child started with the vault's challenge: nothing was shared")

time.sleep(0.2)
t.ok(conns <= vault_connections(), "the parent's connections are still "
     "open after the child exited", (conns, vault_connections()))
t.eq([unwrap(ses, priv, pk) for _ in range(5)], [0] * 5,
     "the parent keeps unwrapping")
after = s.counters()
t.eq(delta(mid, after, "login:token"), 0,
     "with its own cached token (no new token request)")
t.eq(sum(delta(mid, after, r, 401) for r in after["by_route_status"]), 0,
     "and no new challenge")
t.ok(conns <= vault_connections(), "on the same connections")
s.lib = None
