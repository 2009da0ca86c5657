#!/bin/sh
# OpenSSL 3 through libp11's pkcs11 engine, with cmkp11 as its module:
# decrypt (OAEP with SHA-1 and SHA-256, PKCS#1 v1.5) and sign with a
# pkcs11: URI; plain OpenSSL checks the results with the public key. Each
# openssl process must exit 0 (libp11 calls into the module at exit).
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
need openssl
engine=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ -f "$engine" ] || engine=$(find /usr/lib -path '*engines-3/pkcs11.so' 2>/dev/null | head -1)
[ -n "$engine" ] && [ -f "$engine" ] || skip_all "libengine-pkcs11-openssl is not installed"
hsm_setup openssl
uri="pkcs11:token=local;object=kek;type=private"

cat >"$tmp/openssl.cnf" <<EOT
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $engine
MODULE_PATH = $CMKP11_MODULE
PIN = $PIN
init = 0
EOT
chmod 0600 "$tmp/openssl.cnf"
eng() { OPENSSL_CONF=$tmp/openssl.cnf openssl "$@" 2>>"$tmp/engine.log"; }
plain() { OPENSSL_CONF=/dev/null openssl "$@" 2>>"$tmp/plain.log"; }

# The public key, as any consumer gets it: from the token.
pkcs11-tool --module "$CMKP11_MODULE" --read-object --type pubkey --label kek \
    -o "$tmp/kek.der" >/dev/null 2>&1 &&
    plain pkey -pubin -inform DER -in "$tmp/kek.der" -out "$tmp/kek.pem"
ok $? "the public key of kek, read through cmkp11"
head -c 32 /dev/urandom >"$tmp/dek"

decrypt_case() { # decrypt_case NAME PKEYOPTS...
    name=$1
    shift
    rm -f "$tmp/wrapped" "$tmp/back"
    plain pkeyutl -encrypt -pubin -inkey "$tmp/kek.pem" -in "$tmp/dek" \
        -out "$tmp/wrapped" "$@"
    eng pkeyutl -engine pkcs11 -keyform engine -decrypt -inkey "$uri" \
        -in "$tmp/wrapped" -out "$tmp/back" "$@"
    ok $? "$name: openssl pkeyutl -engine pkcs11 -decrypt exits 0"
    cmp -s "$tmp/dek" "$tmp/back"
    ok $? "$name: it gives back the data key"
}
decrypt_case "OAEP (SHA-1)" -pkeyopt rsa_padding_mode:oaep
decrypt_case "OAEP SHA-256" -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256
decrypt_case "PKCS#1 v1.5" -pkeyopt rsa_padding_mode:pkcs1

printf 'a message signed by a customer-managed key\n' >"$tmp/msg"
eng dgst -engine pkcs11 -keyform engine -sha256 -sign "$uri" \
    -out "$tmp/msg.sig" "$tmp/msg"
ok $? "openssl dgst -sha256 -sign with the engine exits 0"
plain dgst -sha256 -verify "$tmp/kek.pem" -signature "$tmp/msg.sig" "$tmp/msg" >/dev/null
ok $? "plain openssl verifies the signature with the public key"

plain dgst -sha256 -binary -out "$tmp/msg.sha256" "$tmp/msg"
eng pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$uri" \
    -pkeyopt digest:sha256 -in "$tmp/msg.sha256" -out "$tmp/msg.sig2"
ok $? "openssl pkeyutl -sign with the engine exits 0"
plain pkeyutl -verify -pubin -inkey "$tmp/kek.pem" -pkeyopt digest:sha256 \
    -in "$tmp/msg.sha256" -sigfile "$tmp/msg.sig2" >/dev/null
ok $? "plain openssl verifies the pkeyutl signature"

[ "$tap_failed" -eq 0 ] || sed 's/^/# /' "$tmp/engine.log" "$tmp/plain.log"
done_testing
