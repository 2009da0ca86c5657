#!/bin/sh
# The main job on the local default: installs what is missing (Debian 12,
# as root), builds cmkp11, creates a SoftHSM token with an RSA-2048 CMK and
# starts the local Key Vault emulator with a CMK of its own, in a directory
# of their own, and envelope-encrypts a sample file through cmkp11 on each:
# fresh AES-256 data key, AES-GCM, RSA-OAEP wrap, then unwrap and decrypt,
# checking that the result equals the original.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
say() { printf '\n== %s\n' "$*"; }
# Every command the demo runs is shown first, as "$ command": what to type
# to do the same by hand. show prints one whose redirections run() cannot.
show() { printf '$ %s\n' "$*"; }
run() { show "$*"; "$@"; }

if [ "$(id -u)" = 0 ]; then
    say "installing what is missing"
    run scripts/install-deps.sh
fi
say "building cmkp11"
if [ ! -x configure ]; then
    show "autoreconf -fi"
    autoreconf -fi >/dev/null 2>&1
fi
[ -f Makefile ] || run ./configure -q
show "make -j$(nproc)"
make -j"$(nproc)" >/dev/null
module=$top/.libs/cmkp11.so

demo=${DEMO_DIR:-$top/demo}
say "creating a SoftHSM token with an RSA-2048 CMK in $demo/softhsm"
rm -rf "$demo"
mkdir -p "$demo"
show "tests/softhsm-init.sh $demo/softhsm"
tests/softhsm-init.sh "$demo/softhsm" >/dev/null
show ". $demo/softhsm/env"
. "$demo/softhsm/env"
say "starting the local Key Vault emulator in $demo/kvemu"
show "tests/kvemu/kvemu --port 0 --state-dir $demo/kvemu --exit-with-parent &"
tests/kvemu/kvemu --port 0 --state-dir "$demo/kvemu" --exit-with-parent \
    >"$demo/kvemu.out" 2>"$demo/kvemu.log" &
emu_pid=$!
# However the demo ends (SIGKILL included: --exit-with-parent), the
# emulator ends with it.
trap 'kill $emu_pid 2>/dev/null; wait $emu_pid 2>/dev/null' EXIT
trap 'exit 130' INT TERM HUP
for _ in $(seq 1 100); do
    grep -q KVEMU_READY "$demo/kvemu.out" 2>/dev/null && break
    sleep 0.2
done
grep -q KVEMU_READY "$demo/kvemu.out" || { cat "$demo/kvemu.log"; exit 1; }
show ". $demo/kvemu/env"
. "$demo/kvemu/env"
echo "vault $VAULT_URL (TLS with the emulator's own CA, $KVEMU_CA)"
show "tests/kvemu/kvemu-admin --state-dir $demo/kvemu create-key kvemu payments-kek"
tests/kvemu/kvemu-admin --state-dir "$demo/kvemu" create-key kvemu payments-kek >/dev/null
echo "created the CMK payments-kek (RSA-2048) in the vault"
show "printf '%s\\n' \"\$AZURE_CLIENT_SECRET\" >$demo/payments.secret"
printf '%s\n' "$AZURE_CLIENT_SECRET" >"$demo/payments.secret"
run chmod 600 "$demo/payments.secret"

cat >"$demo/cmkp11.conf" <<EOT
[cmkp11]
log-level = warning
log-file = $demo/cmkp11.log
refresh-interval = 5

[token local]
backend = hsm
module = $SOFTHSM_MODULE
token-label = cmk

[token payments]
backend = keyvault
vault-url = $VAULT_URL
keys = payments-kek
auth = client-secret
tenant-id = $AZURE_TENANT_ID
client-id = $AZURE_CLIENT_ID
client-secret-file = $demo/payments.secret
authority-host = $AZURE_AUTHORITY_HOST
ca-file = $KVEMU_CA
EOT
show "cat >$demo/cmkp11.conf <<EOT"
sed 's/^/  /' "$demo/cmkp11.conf"
show "EOT"
run chmod 600 "$demo/cmkp11.conf"
CMKP11_CONF=$demo/cmkp11.conf
export CMKP11_CONF
echo "configuration $CMKP11_CONF:"
show "export CMKP11_CONF=$CMKP11_CONF"
show "pkcs11-tool --module $module -L"
pkcs11-tool --module "$module" -L 2>/dev/null | grep -E '^Slot|token label'

show "head -c 100000 /dev/urandom >$demo/sample.bin"
head -c 100000 /dev/urandom >"$demo/sample.bin"
show "printf 'Quarterly results, confidential.\\n' >>$demo/sample.bin"
printf 'Quarterly results, confidential.\n' >>"$demo/sample.bin"

run_job() { # run_job TOKEN KEY PIN
    say "the main job on token '$1' (CMK '$2'): envelope encryption through cmkp11"
    run /usr/bin/python3 scripts/envelope.py seal "$module" "$1" "$2" "$3" \
        "$demo/sample.bin" "$demo/sample.$1.dek" "$demo/sample.$1.sealed"
    run /usr/bin/python3 scripts/envelope.py unseal "$module" "$1" "$2" "$3" \
        "$demo/sample.$1.dek" "$demo/sample.$1.sealed" "$demo/sample.$1.out"
    if run cmp -s "$demo/sample.bin" "$demo/sample.$1.out"; then
        echo "OK: the decrypted file equals the original ($(wc -c <"$demo/sample.bin") bytes)"
    else
        echo "FAILED: the decrypted file differs from the original"
        exit 1
    fi
}
run_job local kek 1234
run_job payments payments-kek ""
tool() { run ./cmkp11-tool --module "$module" "$@"; }
emu_admin() {
    show "tests/kvemu/kvemu-admin --state-dir $demo/kvemu $*"
    tests/kvemu/kvemu-admin --state-dir "$demo/kvemu" "$@" >/dev/null
}

say "the life cycle of a CMK in Key Vault, with cmkp11-tool"
tool check payments payments-kek
echo
tool seal --token payments --key payments-kek "$demo/sample.bin" -o "$demo/sample.cmk"
tool list payments

say "rotation: a new version; new data under it, old data still readable"
tool rotate payments payments-kek
show "printf 'Next quarter.\\n' >$demo/next.txt"
printf 'Next quarter.\n' >"$demo/next.txt"
tool seal --token payments --key payments-kek "$demo/next.txt" -o "$demo/next.cmk"
tool unseal "$demo/sample.cmk" -o "$demo/sample.unsealed"
run cmp -s "$demo/sample.bin" "$demo/sample.unsealed" &&
    echo "the file sealed before the rotation still unseals"

say "rewrap: the old file's data key moves to the new version (the data is not re-encrypted)"
tool rewrap "$demo/sample.cmk"
tool unseal "$demo/sample.cmk" -o "$demo/sample.unsealed"
run cmp -s "$demo/sample.bin" "$demo/sample.unsealed" && echo "it unseals under the new version"

say "revocation: the vault takes the identity's access away"
emu_admin revoke app
run sleep 6 # refresh-interval
if tool unseal "$demo/sample.cmk" -o "$demo/sample.unsealed2"; then
    echo "FAILED: unseal still worked after the access was revoked"
    exit 1
fi
echo "unseal refused, as it must be; the module's log says why:"
show "tail -n 2 $demo/cmkp11.log"
tail -n 2 "$demo/cmkp11.log" | sed 's/^/  /'

say "restore: access comes back, and so does service, without a restart"
emu_admin restore app
tool unseal "$demo/sample.cmk" -o "$demo/sample.unsealed2"
run cmp -s "$demo/sample.bin" "$demo/sample.unsealed2" && echo "unsealed again"

say "done: the main job on both tokens and the life cycle on Key Vault; files are in $demo"
