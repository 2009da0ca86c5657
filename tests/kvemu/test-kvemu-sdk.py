#!/usr/bin/python3
"""Key management through Microsoft's unmodified Python SDK (azure.keyvault.keys)."""
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taplib  # noqa: E402

taplib.need_azure()

from azure.core.exceptions import (HttpResponseError, ResourceExistsError,  # noqa: E402
                                   ResourceNotFoundError)
from azure.keyvault.keys import (JsonWebKey, KeyClient, KeyRotationLifetimeAction,  # noqa: E402
                                 KeyRotationPolicy, KeyRotationPolicyAction,
                                 KeyType)
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

t = taplib.Tap()
emu = taplib.Emu(taplib.test_config())
kc = emu.key_client()
port = emu.port
VER = r"[0-9a-f]{32}"


def code(e):
    return getattr(getattr(e, "error", None), "code", None)


def inner(e):
    return (getattr(getattr(e, "error", None), "innererror", None) or {}).get("code")


# ---- create --------------------------------------------------------------------
k = kc.create_rsa_key("plain")
t.ok(re.match(r"^https://kvemu\.vault\.localhost:%d/keys/plain/%s$" % (port, VER), k.id),
     "create_rsa_key: kid carries host, port and a 32-hex version", k.id)
t.eq((k.key_type, len(k.key.n), k.key.e), ("RSA", 256, b"\x01\x00\x01"),
     "default key is RSA 2048 with e=65537")
t.eq(sorted(k.key_operations),
     sorted(["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]),
     "default key_ops are the six RSA operations")
t.eq((k.properties.enabled, k.properties.recovery_level, k.properties.recoverable_days),
     (True, "Recoverable", 90), "soft delete + purge protection gives Recoverable, 90 days")

import datetime  # noqa: E402
nbf = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
exp = datetime.datetime(2040, 1, 1, tzinfo=datetime.timezone.utc)
k3 = kc.create_rsa_key("sized", size=3072, key_operations=["sign", "verify"],
                       tags={"purpose": "unit test"}, not_before=nbf, expires_on=exp)
t.eq((len(k3.key.n), sorted(k3.key_operations), k3.properties.tags,
      k3.properties.not_before, k3.properties.expires_on),
     (384, ["sign", "verify"], {"purpose": "unit test"}, nbf, exp),
     "create 3072 with key_ops, tags, nbf and exp")
k4 = kc.create_rsa_key("big", size=4096)
t.eq(len(k4.key.n), 512, "create 4096")
kh = kc.create_rsa_key("hsmkey", hardware_protected=True)
t.eq(kh.key_type, KeyType.rsa_hsm, "RSA-HSM accepted by a premium vault")
e = t.raises("RSA-HSM refused by a standard vault", HttpResponseError,
             emu.key_client(url=emu.url("kvstd")).create_rsa_key, "x", hardware_protected=True)
t.eq((e and e.status_code, code(e)), (400, "BadParameter"), "... with 400 BadParameter")
e = t.raises("odd key size refused", HttpResponseError, kc.create_rsa_key, "odd", size=1024)
t.eq(code(e), "BadParameter", "... with BadParameter")
e = t.raises("OKP keys are refused", HttpResponseError, kc.create_key, "okp", "OKP")
t.eq(code(e), "BadParameter", "... with BadParameter")
e = t.raises("invalid key name refused", HttpResponseError, kc.create_rsa_key, "bad_name")
t.eq(code(e), "BadParameter", "... with BadParameter")

# ---- get -------------------------------------------------------------------------
g = kc.get_key("plain")
t.eq((g.id, g.key.n), (k.id, k.key.n), "get_key latest")
g = kc.get_key("plain", k.properties.version)
t.eq(g.id, k.id, "get_key by version")
t.ok(not hasattr(g.key, "d") or g.key.d is None, "no private material in the bundle")
e = t.raises("missing key -> ResourceNotFoundError", ResourceNotFoundError, kc.get_key, "nokey")
t.eq((e and e.status_code, code(e)), (404, "KeyNotFound"), "... 404 KeyNotFound")
e = t.raises("missing version -> ResourceNotFoundError", ResourceNotFoundError, kc.get_key,
             "plain", "0" * 32)
t.eq(code(e), "KeyNotFound", "... KeyNotFound")

# ---- list and paging -----------------------------------------------------------------
for i in range(7):
    kc.create_rsa_key("page-%d" % i)
emu.admin("POST", "counters/reset")
names = [p.name for p in kc.list_properties_of_keys(max_page_size=3)]
t.ok(all("page-%d" % i in names for i in range(7)) and "plain" in names,
     "list_properties_of_keys returns every key across pages", names)
c = emu.admin("GET", "counters")
pages = c["by_route"].get("kvemu:getKeys", 0)
t.ok(pages >= 4, "listing 12 keys 3 per page needed >= 4 requests (nextLink followed)",
     "requests: %d" % pages)
t.ok(all(p.version is None for p in kc.list_properties_of_keys()),
     "list items carry base ids (no version)")
kc.create_rsa_key("plain")
kc.create_rsa_key("plain")
vers = list(kc.list_properties_of_key_versions("plain", max_page_size=2))
t.eq(len(vers), 3, "list_properties_of_key_versions: 3 versions over 2 pages")
t.ok(all(re.match(VER, v.version) for v in vers), "versions are 32-hex")
t.eq(len({v.version for v in vers}), 3, "versions are distinct")

# ---- update ---------------------------------------------------------------------------
u = kc.update_key_properties("sized", enabled=False, tags={"a": "b"},
                             key_operations=["verify"], expires_on=exp)
t.eq((u.properties.enabled, u.properties.tags, u.key_operations), (False, {"a": "b"}, ["verify"]),
     "update_key_properties: enabled, tags, key_ops")
t.eq(kc.get_key("sized").properties.enabled, False, "a disabled key is still readable (GET)")
u = kc.update_key_properties("sized", k3.properties.version, enabled=True)
t.eq(u.properties.enabled, True, "update a given version")
e = t.raises("update of a missing key -> ResourceNotFoundError", ResourceNotFoundError,
             kc.update_key_properties, "nokey", enabled=False)

# ---- import ---------------------------------------------------------------------------
priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pn = priv.private_numbers()


def b(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


jwk = JsonWebKey(kty="RSA", n=b(pn.public_numbers.n), e=b(pn.public_numbers.e), d=b(pn.d),
                 p=b(pn.p), q=b(pn.q), dp=b(pn.dmp1), dq=b(pn.dmq1), qi=b(pn.iqmp),
                 key_ops=["decrypt", "unwrapKey"])
ik = kc.import_key("imported", jwk, tags={"src": "local"})
t.eq((ik.key.n, sorted(ik.key_operations), ik.properties.tags),
     (b(pn.public_numbers.n), ["decrypt", "unwrapKey"], {"src": "local"}),
     "import_key keeps modulus, key_ops and tags")
ikh = kc.import_key("imported-hsm", jwk, hardware_protected=True)
t.eq(ikh.key_type, "RSA-HSM", "import with Hsm=true gives RSA-HSM")
pub_only = JsonWebKey(kty="RSA", n=b(pn.public_numbers.n), e=b(pn.public_numbers.e))
e = t.raises("import of a public key only is refused", HttpResponseError, kc.import_key,
             "pubonly", pub_only)
t.eq(code(e), "BadParameter", "... BadParameter")

# ---- delete / recover / purge (purge protection) ------------------------------------------
d = kc.begin_delete_key("plain").result()
t.eq((d.recovery_id, d.properties.recovery_level),
     ("https://kvemu.vault.localhost:%d/deletedkeys/plain" % port, "Recoverable"),
     "begin_delete_key: recoveryId with port, Recoverable")
t.ok(d.scheduled_purge_date and d.deleted_date and
     (d.scheduled_purge_date - d.deleted_date).days == 90, "scheduled purge 90 days later")
t.raises("deleted key is gone from get_key", ResourceNotFoundError, kc.get_key, "plain")
gd = kc.get_deleted_key("plain")
t.eq(gd.name, "plain", "get_deleted_key")
t.ok("plain" in [x.name for x in kc.list_deleted_keys(max_page_size=1)], "list_deleted_keys")
e = t.raises("create over a soft-deleted name -> ResourceExistsError", ResourceExistsError,
             kc.create_rsa_key, "plain")
t.eq((e and e.status_code, code(e), inner(e)), (409, "Conflict", "ObjectIsDeletedButRecoverable"),
     "... 409 Conflict / ObjectIsDeletedButRecoverable")
e = t.raises("purge refused under purge protection", HttpResponseError, kc.purge_deleted_key,
             "plain")
t.eq((e and e.status_code, code(e)), (403, "Forbidden"), "... 403 Forbidden")
t.ok(e and "purge protection" in str(e.message), "... message names purge protection")
r = kc.begin_recover_deleted_key("plain").result()
t.eq(r.name, "plain", "begin_recover_deleted_key")
t.eq(len(list(kc.list_properties_of_key_versions("plain"))), 3, "recovered key has its versions")
t.raises("recovered key no longer in deleted keys", ResourceNotFoundError, kc.get_deleted_key,
         "plain")

# ---- vault without purge protection, custom retention --------------------------------------
kp = emu.key_client(url=emu.url("kvpurge"))
x = kp.create_rsa_key("tmp")
t.eq((x.properties.recovery_level, x.properties.recoverable_days),
     ("CustomizedRecoverable+Purgeable", 7), "7-day retention, no purge protection")
kp.begin_delete_key("tmp").result()
t.check("purge_deleted_key succeeds without purge protection", kp.purge_deleted_key, "tmp")
t.raises("purged key is gone", ResourceNotFoundError, kp.get_deleted_key, "tmp")
t.check("name reusable after purge", kp.create_rsa_key, "tmp")
kn = emu.key_client(url=emu.url("kvnosoft"))
y = kn.create_rsa_key("k")
t.eq((y.properties.recovery_level, y.properties.recoverable_days), ("Purgeable", None),
     "soft delete off gives Purgeable")
kn.begin_delete_key("k").result()
t.raises("without soft delete a deleted key is not recoverable", ResourceNotFoundError,
         kn.get_deleted_key, "k")

# ---- async delete window ---------------------------------------------------------------------
kd = emu.key_client(url=emu.url("kvdelay"))
kd.create_rsa_key("slow")
st, _, body = emu.vault("DELETE", emu.url("kvdelay") + "/keys/slow")
t.eq(st, 200, "delete on a vault with a 1.5 s deletion window")
e = t.raises("purge during the window -> 409", ResourceExistsError, kd.purge_deleted_key, "slow")
t.eq(inner(e), "ObjectIsBeingDeleted", "... Conflict / ObjectIsBeingDeleted")
t.raises("get_deleted_key 404 during the window", ResourceNotFoundError, kd.get_deleted_key,
         "slow")
kd.create_rsa_key("slow2")
p = kd.begin_delete_key("slow2")
t.eq(p.result().name, "slow2", "SDK delete poller waits out the window")

# ---- rotate and rotation policy ----------------------------------------------------------------
before = kc.get_key("sized")
rk = kc.rotate_key("sized")
t.ok(rk.properties.version != before.properties.version and re.match(VER, rk.properties.version),
     "rotate_key makes a new 32-hex version")
t.eq((len(rk.key.n), sorted(rk.key_operations)), (384, sorted(before.key_operations)),
     "rotated version keeps size and key_ops")
t.ok(rk.key.n != before.key.n, "rotated version has new key material")
pol = kc.get_key_rotation_policy("sized")
t.ok(pol.lifetime_actions and pol.lifetime_actions[0].action.lower() == "notify",
     "default rotation policy: Notify")
newpol = kc.update_key_rotation_policy(
    "sized", KeyRotationPolicy(), expires_in="P2Y",
    lifetime_actions=[KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate,
                                                time_after_create="P90D"),
                      KeyRotationLifetimeAction(KeyRotationPolicyAction.notify,
                                                time_before_expiry="P30D")])
t.eq((newpol.expires_in, len(newpol.lifetime_actions)), ("P2Y", 2), "update_key_rotation_policy")
got = kc.get_key_rotation_policy("sized")
t.eq(sorted(a.action.lower() for a in got.lifetime_actions), ["notify", "rotate"],
     "get_key_rotation_policy returns what was set")
e = t.raises("rotation policy expiry under 28 days refused", HttpResponseError,
             kc.update_key_rotation_policy, "sized", KeyRotationPolicy(),
             expires_in="P10D")
t.eq(code(e), "BadParameter", "... BadParameter")
rk2 = kc.rotate_key("sized")
t.ok(rk2.properties.expires_on is not None, "rotation applies the policy's expiryTime")

# ---- backup / restore ------------------------------------------------------------------------------
blob = kp.backup_key("tmp")
t.ok(isinstance(blob, bytes) and len(blob) > 100, "backup_key returns a blob")
kp.begin_delete_key("tmp").result()
kp.purge_deleted_key("tmp")
rs = kp.restore_key_backup(blob)
t.eq(rs.name, "tmp", "restore_key_backup after purge")
e = t.raises("restore over an existing key -> 409", ResourceExistsError, kp.restore_key_backup,
             blob)

# ---- api versions the SDK knows -------------------------------------------------------------------
for v in ("7.0", "7.1", "7.2", "7.3", "7.4-preview.1"):
    c = emu.key_client(api_version=v)
    t.check("SDK api_version %s: get_key" % v, lambda: c.get_key("sized").name == "sized")

# ---- access control ------------------------------------------------------------------------------------
from azure.identity import ClientSecretCredential  # noqa: E402
rcred = ClientSecretCredential(taplib.TENANT, emu.admin("GET", "identities/reader")["client_id"],
                               "reader-secret", authority=emu.env["AZURE_AUTHORITY_HOST"],
                               instance_discovery=False, connection_verify=emu.ca)
rc = emu.key_client(rcred)
t.check("reader may get", rc.get_key, "sized")
e = t.raises("reader may not create -> HttpResponseError", HttpResponseError, rc.create_rsa_key,
             "nope")
t.eq((e and e.status_code, code(e), inner(e)), (403, "Forbidden", "AccessDenied"),
     "... 403 Forbidden / AccessDenied")
t.ok(e and "does not have keys create permission" in e.message, "... real message shape",
     e and e.message)

# ---- Managed HSM --------------------------------------------------------------------------------------------
hc = emu.key_client(url=emu.hsm_url)
hk = hc.create_rsa_key("hk", hardware_protected=True)
t.ok(re.match(r"^https://kvhsm\.managedhsm\.localhost:%d/keys/hk/%s$" % (port, VER), hk.id),
     "Managed HSM: create RSA-HSM, kid on managedhsm host", hk.id)
e = t.raises("Managed HSM refuses a software RSA key", HttpResponseError, hc.create_rsa_key, "soft")
t.eq(code(e), "BadParameter", "... BadParameter")
t.eq(hc.get_key("preloaded").key_type, "RSA-HSM", "key preloaded from the config file")
rb = hc.get_random_bytes(16)
t.eq(len(rb), 16, "Managed HSM get_random_bytes")
rh = emu.key_client(rcred, url=emu.hsm_url)
e = t.raises("HSM: reader may not create", HttpResponseError, rh.create_rsa_key, "x",
             hardware_protected=True)
t.eq((code(e), inner(e)), ("Forbidden", "ForbiddenByRbac"), "... Forbidden / ForbiddenByRbac")
emu.stop()
