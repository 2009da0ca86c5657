#!/bin/sh
# The main job on the local default: installs what is missing (Debian 12,
# as root), builds cmkp11, creates a SoftHSM token with an RSA-2048 CMK in
# a directory of its own, and envelope-encrypts a sample file through
# cmkp11: fresh AES-256 data key, AES-GCM, RSA-OAEP wrap, then unwrap and
# decrypt, checking that the result equals the original.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
    say "installing what is missing"
    scripts/install-deps.sh
fi
say "building cmkp11"
[ -x configure ] || autoreconf -fi >/dev/null 2>&1
[ -f Makefile ] || ./configure -q
make -j"$(nproc)" >/dev/null
module=$top/.libs/cmkp11.so

demo=${DEMO_DIR:-$top/demo}
say "creating a SoftHSM token with an RSA-2048 CMK in $demo"
rm -rf "$demo"
mkdir -p "$demo"
tests/softhsm-init.sh "$demo/softhsm" >/dev/null
. "$demo/softhsm/env"
cat >"$demo/cmkp11.conf" <<EOT
[cmkp11]
log-level = warning

[token local]
backend = hsm
module = $SOFTHSM_MODULE
token-label = cmk
EOT
chmod 600 "$demo/cmkp11.conf"
CMKP11_CONF=$demo/cmkp11.conf
export CMKP11_CONF
echo "token 'local' (SoftHSM token 'cmk'), CMK 'kek', configuration $CMKP11_CONF"
pkcs11-tool --module "$module" -L 2>/dev/null | sed -n '1,4p'

say "the main job: envelope encryption through cmkp11"
head -c 100000 /dev/urandom >"$demo/sample.bin"
printf 'Quarterly results, confidential.\n' >>"$demo/sample.bin"
/usr/bin/python3 scripts/envelope.py seal "$module" local kek 1234 \
    "$demo/sample.bin" "$demo/sample.dek" "$demo/sample.sealed"
/usr/bin/python3 scripts/envelope.py unseal "$module" local kek 1234 \
    "$demo/sample.dek" "$demo/sample.sealed" "$demo/sample.out"

say "checking"
if cmp -s "$demo/sample.bin" "$demo/sample.out"; then
    echo "OK: the decrypted file equals the original ($(wc -c <"$demo/sample.bin") bytes)"
else
    echo "FAILED: the decrypted file differs from the original"
    exit 1
fi
