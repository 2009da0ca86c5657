#!/bin/sh
# AES-256-GCM throughput of 4 KiB messages through cmkp11 against OpenSSL's
# EVP in the same process (issue 22, docs/performance.md).
#
#   scripts/bench-gcm.sh [-d SECONDS] [-r ROUNDS] [-o RAWFILE]
#
# Builds cmkp11, the test module and bench/p11bench if needed and measures
# bench/p11bench's gcm-4k (C_EncryptInit + C_Encrypt, 96-bit IV, 40 bytes
# of AAD, 128-bit tag) beside openssl-gcm-4k (EVP AES-256-GCM of the same
# data, a new EVP_CIPHER_CTX each time, as an application sealing one
# message) in one p11bench process, on:
#
#   mock      a session key held by the module (cmkp11-test.so): the
#             softkey path of every token whose secret keys the module
#             holds;
#   keyvault  the same path on a keyvault token (the Key Vault emulator,
#             tests/kvemu, for the RSA key p11bench needs; AES-GCM makes
#             no request);
#   kvtoken   a token key (CKA_TOKEN true, p11bench -T) on the keyvault
#             token: kept in its state-dir wrapped under kek, unwrapped
#             once through the emulator, then the same softkey path
#             (docs/keyvault.md, "Token secret keys");
#   hsm       a token key (CKA_TOKEN true, p11bench -T) in a SoftHSM token
#             through cmkp11, and the same on SoftHSM directly: the key
#             never leaves the lower token, which encrypts.
#
# Each round runs every configuration once, the order of the two operations
# alternating between rounds; then the medians and the ratio cmkp11/OpenSSL
# (and on hsm cmkp11/SoftHSM) are printed, on wall-clock ops/s and on ops
# per CPU second. The bar, cmkp11/OpenSSL >= 0.8, applies to the softkey
# path (mock, keyvault, kvtoken): PASS or FAIL on ops per CPU second, which other
# load on the machine disturbs much less. The exit status is 0 unless a
# measurement fails outright.
set -eu

seconds=2
rounds=5
raw=
while getopts d:r:o:h opt; do
    case $opt in
    d) seconds=$OPTARG ;;
    r) rounds=$OPTARG ;;
    o) raw=$OPTARG ;;
    *)
        echo "usage: $0 [-d SECONDS] [-r ROUNDS] [-o RAWFILE]" >&2
        exit 2
        ;;
    esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
softhsm=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
bench=$top/bench/p11bench
[ -f "$softhsm" ] || { echo "bench: $softhsm is missing" >&2; exit 1; }

if [ ! -f Makefile ]; then
    [ -x configure ] || autoreconf -fi
    ./configure --enable-strict
fi
make -j2 cmkp11.la cmkp11-test.la bench/p11bench >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cmkp11-bench-gcm.XXXXXX")
emu_pid=
cleanup() {
    if [ -n "$emu_pid" ]; then
        kill -TERM "$emu_pid" 2>/dev/null || :
        wait "$emu_pid" 2>/dev/null || :
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- mock ---------------------------------------------------------------------
printf '[cmkp11]\nlog-level = error\n\n[token mock]\nbackend = mock\npin = 1234\n' \
    >"$tmp/mock.conf"
chmod 600 "$tmp/mock.conf"

# ---- hsm: a SoftHSM token with the RSA key kek --------------------------------
sh "$top/tests/softhsm-init.sh" "$tmp/softhsm" >"$tmp/init.log" 2>&1 || {
    echo "bench: softhsm-init.sh failed:" >&2
    cat "$tmp/init.log" >&2
    exit 1
}
SOFTHSM2_CONF=$tmp/softhsm/softhsm2.conf
export SOFTHSM2_CONF
cat >"$tmp/hsm.conf" <<EOT
[cmkp11]
log-level = error

[token local]
backend = hsm
module = $softhsm
token-label = cmk
EOT
chmod 600 "$tmp/hsm.conf"

# ---- keyvault: the emulator with the RSA key kek ------------------------------
tenant=72f9e1c1-1e6b-4b0f-9d3a-6b7e0c2a5e10
client=0b5d9a3e-6a1f-4c36-8f0e-2c9b1a7d4e01
secret=kvemu-bench-secret
cat >"$tmp/emu.json" <<EOT
{
  "tenants": ["$tenant"],
  "identities": [{"name": "app", "client_id": "$client", "client_secrets": ["$secret"]}],
  "vaults": [{"name": "kvemu", "kind": "vault", "sku": "premium", "access": {"app": ["all"]}}]
}
EOT
"$top/tests/kvemu/kvemu" --port 0 --state-dir "$tmp/emu" --config "$tmp/emu.json" \
    --exit-with-parent --no-imds >"$tmp/emu.out" 2>"$tmp/emu.err" &
emu_pid=$!
i=0
until grep -q '^KVEMU_READY=1' "$tmp/emu.out" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 300 ] || ! kill -0 "$emu_pid" 2>/dev/null; then
        echo "bench: the emulator did not start:" >&2
        cat "$tmp/emu.err" >&2
        exit 1
    fi
    sleep 0.1
done
# shellcheck source=/dev/null
. "$tmp/emu/env"
curl -sS --fail --cacert "$KVEMU_CA" -X POST \
    -H "Authorization: Bearer $(cat "$KVEMU_ADMIN_TOKEN_FILE")" \
    -H "Content-Type: application/json" --data '{"name": "kek"}' \
    "$KVEMU_ADMIN_URL/vaults/kvemu/keys" >/dev/null
printf '%s\n' "$secret" >"$tmp/secret"
chmod 600 "$tmp/secret"
cat >"$tmp/kv.conf" <<EOT
[cmkp11]
log-level = error

[token kv]
backend = keyvault
vault-url = $KVEMU_VAULT_URL
ca-file = $KVEMU_CA
auth = client-secret
tenant-id = $tenant
client-id = $client
client-secret-file = $tmp/secret
authority-host = $AZURE_AUTHORITY_HOST
state-dir = $tmp/secret-keys
EOT
chmod 600 "$tmp/kv.conf"

# ---- measurements -------------------------------------------------------------
results=$tmp/results
: >"$results"
run() { # run ROUND NAME CONF MODULE TOKEN PIN KEY [-T]: one p11bench process
    r=$1 name=$2 conf=$3 mod=$4 tok=$5 pin=$6 key=$7
    shift 7
    if [ $((r % 2)) -eq 0 ]; then ops=gcm-4k,openssl-gcm-4k; else ops=openssl-gcm-4k,gcm-4k; fi
    CMKP11_CONF=$conf "$bench" -d "$seconds" -t 1 "$@" -o "$ops" \
        "$mod" "$tok" "$pin" "$key" >"$tmp/one" || {
        echo "bench: $name failed" >&2
        exit 1
    }
    sed "s/^/$r $name /" "$tmp/one" >>"$results"
}
r=1
while [ "$r" -le "$rounds" ]; do
    run "$r" mock "$tmp/mock.conf" "$top/.libs/cmkp11-test.so" mock 1234 mock-key
    run "$r" keyvault "$tmp/kv.conf" "$top/.libs/cmkp11.so" kv - kek
    run "$r" kvtoken "$tmp/kv.conf" "$top/.libs/cmkp11.so" kv - kek -T
    run "$r" hsm "$tmp/hsm.conf" "$top/.libs/cmkp11.so" local 1234 kek -T
    run "$r" softhsm /dev/null "$softhsm" cmk 1234 kek -T
    echo "round $r of $rounds done" >&2
    r=$((r + 1))
done
[ -z "$raw" ] || cp "$results" "$raw"

# ---- the medians and the ratios -------------------------------------------------
median() { # median NAME OP FIELD (5: ops/s, 6: ops per CPU second)
    awk -v n="$1" -v o="$2" -v f="$3" '$2 == n && $3 == o { print $f }' "$results" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print 0; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
printf '%-9s %-16s %12s %12s\n' "" "" "ops/s" "ops/CPU-s"
for name in mock keyvault kvtoken hsm softhsm; do
    for op in gcm-4k openssl-gcm-4k; do
        printf '%-9s %-16s %12.0f %12.0f\n' "$name" "$op" \
            "$(median $name $op 5)" "$(median $name $op 6)"
    done
done
echo
status=0
for name in mock keyvault kvtoken hsm; do
    w=$(awk -v a="$(median $name gcm-4k 5)" -v b="$(median $name openssl-gcm-4k 5)" \
        'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    c=$(awk -v a="$(median $name gcm-4k 6)" -v b="$(median $name openssl-gcm-4k 6)" \
        'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    verdict=
    if [ "$name" != hsm ]; then
        verdict=$(awk -v c="$c" 'BEGIN { print (c >= 0.8 ? "PASS" : "FAIL") }')
    fi
    printf 'cmkp11/OpenSSL %-9s wall %s  CPU %s  %s\n' "$name" "$w" "$c" "$verdict"
done
w=$(awk -v a="$(median hsm gcm-4k 5)" -v b="$(median softhsm gcm-4k 5)" \
    'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
c=$(awk -v a="$(median hsm gcm-4k 6)" -v b="$(median softhsm gcm-4k 6)" \
    'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
printf 'cmkp11/SoftHSM hsm       wall %s  CPU %s\n' "$w" "$c"
exit $status
