#!/bin/sh
# GnuTLS's p11tool finds cmkp11 through p11-kit (the user's module file, as
# in test-p11-kit.sh) and lists the token and its objects, with and
# without a login.
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
need p11tool p11-kit
hsm_setup p11tool
user_dir p11tool
out=$tmp/out

# GnuTLS initialises modules with arguments of its own, so
# x-init-reserved does not reach the module: CMKP11_CONF names the file.
as_user env CMKP11_CONF="$uhome/cmkp11.conf" p11tool --list-tokens >"$out" 2>&1
ok $? "p11tool --list-tokens exits 0"
grep -q "Label: local$" "$out" && grep -q "Manufacturer: cmkp11" "$out"
ok $? "p11tool lists the token local made by cmkp11"
as_user env CMKP11_CONF="$uhome/cmkp11.conf" GNUTLS_PIN="$PIN" \
    p11tool --login --list-all "pkcs11:token=local" >"$out" 2>&1
ok $? "p11tool --login --list-all pkcs11:token=local exits 0"
grep -q "token=local;id=%02;object=kek;type=private" "$out"
ok $? "it lists the private key kek by URI"
grep -q "token=local;id=%01;object=kek%4001;type=public" "$out"
ok $? "and the public key of the older version kek@01"
as_user env CMKP11_CONF="$uhome/cmkp11.conf" \
    p11tool --list-all "pkcs11:token=local" >"$out" 2>&1
grep -q "type=private" "$out"
ok "$([ $? -ne 0 ]; echo $?)" "without a login it lists no private key"
done_testing
