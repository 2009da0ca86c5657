#!/bin/sh
# p11-kit and GnuTLS find cmkp11 through its module file (conf/cmkp11.module
# with absolute paths, in the user's ~/.config/pkcs11/modules):
#   p11-kit list-modules shows the token "local";
#   p11-kit-proxy.so serves its keys to pkcs11-tool (objects, decrypt).
# p11-kit skips per-user module files as root, so when run as root these
# run as an unprivileged user with a home, a token and a module of its own.
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
need p11-kit openssl
proxy=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so
[ -f "$proxy" ] || proxy=$(pkg-config --variable=proxy_module p11-kit-1 2>/dev/null)
[ -n "$proxy" ] && [ -f "$proxy" ] || skip_all "p11-kit-proxy.so is not installed"
hsm_setup p11-kit
user_dir p11-kit
out=$tmp/out

as_user p11-kit list-modules >"$out" 2>"$tmp/err"
ok $? "p11-kit list-modules exits 0"
# The module's entry, up to the next module ("cmkp11: PATH" before p11-kit
# 0.25, "module: cmkp11" from 0.25 on).
sed -n -e '/^cmkp11: /,/^[^ ]/p' -e '/^module: cmkp11$/,/^[^ ]/p' "$out" >"$tmp/entry"
grep -q "library-manufacturer: cmkp11" "$tmp/entry"
ok $? "it lists cmkp11 from the user's module file"
grep -q "token: local$" "$tmp/entry"
ok $? "with the token local"
[ "$tap_failed" -eq 0 ] || sed 's/^/# /' "$out" "$tmp/err"

as_user pkcs11-tool --module "$proxy" -L >"$out" 2>&1
ok $? "pkcs11-tool on p11-kit-proxy.so lists slots"
grep -q "token label *: local$" "$out"
ok $? "the proxy offers cmkp11's token"
as_user pkcs11-tool --module "$proxy" --token-label local --login --pin "$PIN" \
    -O >"$out" 2>&1
ok $? "pkcs11-tool lists objects through the proxy"
grep -q "Private Key Object; RSA" "$out" && grep -q "label: *kek$" "$out"
ok $? "the private key kek is among them"

# Decrypt through the proxy what plain OpenSSL encrypted.
as_user pkcs11-tool --module "$proxy" --token-label local --read-object \
    --type pubkey --label kek -o "$uhome/kek.der" >/dev/null 2>&1 &&
    OPENSSL_CONF=/dev/null openssl pkey -pubin -inform DER -in "$uhome/kek.der" \
        -out "$tmp/kek.pem" 2>/dev/null
ok $? "the public key, read through the proxy"
head -c 32 /dev/urandom >"$tmp/dek"
for pad in pkcs1 oaep; do
    OPENSSL_CONF=/dev/null openssl pkeyutl -encrypt -pubin -inkey "$tmp/kek.pem" \
        -pkeyopt rsa_padding_mode:$pad -in "$tmp/dek" -out "$uhome/wrapped" 2>/dev/null
    chmod 0644 "$uhome/wrapped"
    case $pad in
    pkcs1) mech="-m RSA-PKCS" ;;
    oaep) mech="-m RSA-PKCS-OAEP --hash-algorithm SHA-1 --mgf MGF1-SHA1" ;;
    esac
    # shellcheck disable=SC2086
    as_user pkcs11-tool --module "$proxy" --token-label local --login --pin "$PIN" \
        --decrypt $mech --id 02 -i "$uhome/wrapped" -o "$uhome/back" >"$out" 2>&1
    rc=$?
    ok $rc "pkcs11-tool --decrypt ($pad) through the proxy exits 0"
    [ $rc -eq 0 ] || sed "s/^/# /" "$out"
    cmp -s "$tmp/dek" "$uhome/back"
    ok $? "and gives back the data key ($pad)"
    rm -f "$uhome/back"
done

done_testing
