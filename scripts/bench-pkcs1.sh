#!/bin/sh
# Is CKM_RSA_PKCS decryption through cmkp11 a padding oracle? (issue 18,
# docs/performance.md)
#
#   scripts/bench-pkcs1.sh [-n COUNT]
#
# Builds cmkp11 and bench/pkcs1-timing if needed, creates a private SoftHSM
# token in a temporary directory (tests/softhsm-init.sh) and runs
# bench/pkcs1-timing (COUNT valid and COUNT invalid ciphertexts, 2000 each
# by default, shuffled) on the key "kek" through two cmkp11 tokens over the
# same SoftHSM token: rsa-pkcs1-decrypt = implicit-rejection (the default)
# and allow (the back end's answer). For each it prints the return codes
# per class, the median times and the Kolmogorov-Smirnov statistic with its
# p-value. Not part of make check: it measures time.
set -eu

count=2000
while getopts n:h opt; do
    case $opt in
    n) count=$OPTARG ;;
    *)
        echo "usage: $0 [-n COUNT]" >&2
        exit 2
        ;;
    esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
softhsm=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$softhsm" ] || { echo "bench-pkcs1: $softhsm is missing" >&2; exit 1; }
if [ ! -f Makefile ]; then
    [ -x configure ] || autoreconf -fi
    ./configure --enable-strict
fi
make -j2 cmkp11.la bench/pkcs1-timing >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cmkp11-pkcs1.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
sh tests/softhsm-init.sh "$tmp/softhsm" >/dev/null
SOFTHSM2_CONF=$tmp/softhsm/softhsm2.conf
export SOFTHSM2_CONF
umask 077
printf '1234\n' >"$tmp/pin"
for mode in implicit-rejection allow; do
    cat >"$tmp/$mode.conf" <<EOT
[cmkp11]
log-level = error

[token t]
backend = hsm
module = $softhsm
token-label = cmk
pin-file = $tmp/pin
rsa-pkcs1-decrypt = $mode
EOT
    echo "== rsa-pkcs1-decrypt = $mode"
    CMKP11_CONF=$tmp/$mode.conf bench/pkcs1-timing -n "$count" \
        "$top/.libs/cmkp11.so" t - kek
done
