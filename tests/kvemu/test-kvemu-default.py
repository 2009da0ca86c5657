#!/usr/bin/python3
"""The default configuration, the env file, the example configuration and the resolver shim."""
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taplib  # noqa: E402

taplib.need_azure()

from azure.core.exceptions import HttpResponseError  # noqa: E402
from azure.identity import (CertificateCredential, ClientAssertionCredential,  # noqa: E402
                            ClientSecretCredential, ManagedIdentityCredential)
from azure.keyvault.keys import KeyClient  # noqa: E402
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm  # noqa: E402

t = taplib.Tap()

# ---- resolver shim ----------------------------------------------------------------------------------
code = ("import socket; print(sorted({a[4][0] for a in socket.getaddrinfo("
        "'x.vault.localhost', 443, socket.AF_INET)}))")
p = subprocess.run([taplib.PYTHON, "-c", code], capture_output=True, text=True, timeout=30,
                   env=dict(os.environ, PYTHONPATH=os.path.join(taplib.HERE, "pyshim")))
t.eq(p.stdout.strip(), "['127.0.0.1']", "pyshim/sitecustomize resolves *.vault.localhost")
import socket  # noqa: E402
t.eq(socket.getaddrinfo("a.b.managedhsm.localhost", 1, socket.AF_INET)[0][4][0], "127.0.0.1",
     "kvemu_localhost.install() resolves multi-label *.localhost names")

# ---- default configuration -------------------------------------------------------------------------------
emu = taplib.Emu()
env = emu.env
t.eq(env["VAULT_URL"], "https://kvemu.vault.localhost:%d" % emu.port, "default vault URL")
t.ok(emu.hsm_url is None and len([k for k in env if k.startswith("KVEMU_URL_")]) == 1,
     "default configuration has one vault")
ca = env["REQUESTS_CA_BUNDLE"]
cred = ClientSecretCredential(env["AZURE_TENANT_ID"], env["AZURE_CLIENT_ID"],
                              env["AZURE_CLIENT_SECRET"], authority=env["AZURE_AUTHORITY_HOST"],
                              instance_discovery=False, connection_verify=ca)
kc = KeyClient(env["VAULT_URL"], cred, connection_verify=ca)
k = kc.create_rsa_key("dflt")
t.eq((k.properties.recovery_level, k.properties.recoverable_days), ("Recoverable", 90),
     "default vault: soft delete 90 days with purge protection")
kc.begin_delete_key("dflt").result()
t.raises("default vault refuses purge", HttpResponseError, kc.purge_deleted_key, "dflt")
kc.begin_recover_deleted_key("dflt").result()
os.environ["IDENTITY_ENDPOINT"] = env["IDENTITY_ENDPOINT"]
os.environ["IDENTITY_HEADER"] = env["IDENTITY_HEADER"]
mi = ManagedIdentityCredential(connection_verify=ca)
t.check("default managed identity (env file IDENTITY_ENDPOINT) has full key access",
        lambda: KeyClient(env["VAULT_URL"], mi, connection_verify=ca).create_rsa_key("bymi"))
del os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"]
cc = CertificateCredential(env["AZURE_TENANT_ID"], env["KVEMU_CERT_CLIENT_ID"],
                           env["KVEMU_CERT_PATH"], authority=env["AZURE_AUTHORITY_HOST"],
                           instance_discovery=False, connection_verify=ca)
t.check("default certificate identity", lambda: KeyClient(env["VAULT_URL"], cc,
                                                          connection_verify=ca).get_key("dflt"))
os.environ["AZURE_AUTHORITY_HOST"] = env["AZURE_AUTHORITY_HOST"]
os.environ["REQUESTS_CA_BUNDLE"] = ca
with open(env["KVEMU_FEDERATED_TOKEN_FILE"]) as f:
    fed = f.read().strip()
wc = ClientAssertionCredential(env["AZURE_TENANT_ID"], env["KVEMU_WI_CLIENT_ID"], lambda: fed)
t.check("default workload identity with DIR/federated-token",
        lambda: KeyClient(env["VAULT_URL"], wc, connection_verify=ca).get_key("dflt"))
p = subprocess.run(["sh", "-c", ". '%s' && printf '%%s %%s' \"$VAULT_URL\" \"$AZURE_CLIENT_SECRET\""
                    % os.path.join(emu.state, "env")], capture_output=True, text=True, timeout=30)
t.eq(p.stdout, "%s %s" % (env["VAULT_URL"], env["AZURE_CLIENT_SECRET"]),
     "env file is shell-sourceable")
t0 = time.time()
r = emu.admin("POST", "vaults/kvemu/keys", {"name": "bench", "count": 1000, "distinct": 4})
dt = time.time() - t0
# How long it took is shown, not judged: speed belongs to benchmarks, and a
# loaded machine must not fail the suite.
t.ok(r["created"] == 1000, "bulk create of 1000 keys (4 materials)", r)
t.diag("bulk create took %.2f s" % dt)
emu.stop()

# ---- example configuration ------------------------------------------------------------------------------
with open(os.path.join(taplib.HERE, "kvemu-config.example.json")) as f:
    example = json.load(f)
ex = taplib.Emu(example)
hk = ex.key_client(url=ex.hsm_url).get_key("hsmkey")
t.eq((hk.key_type, len(hk.key.n)), ("RSA-HSM", 384), "example config: preloaded 3072-bit HSM key")
os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = ex.info["KVEMU_IMDS"]
ua = ManagedIdentityCredential(client_id=example["identities"][4]["client_id"])
uk = KeyClient(ex.vault_url, ua, connection_verify=ex.ca, retry_total=0)
demo = ex.key_client().get_key("demo")
w = CryptographyClient.from_jwk(demo.key).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
uc = CryptographyClient(demo.id, ua, connection_verify=ex.ca, retry_total=0)
t.eq(uc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, w.encrypted_key).key, b"k" * 32,
     "example config: user-assigned identity over IMDS may unwrap")
e = t.raises("example config: ... but not create", HttpResponseError, uk.create_rsa_key, "no")
t.eq(e and e.status_code, 403, "... 403")
del os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
ex.stop()
