#!/bin/sh
# pkcs11-tool (OpenSC) on cmkp11 with a SoftHSM token behind it: slots,
# objects, and its own self test with a login. SoftHSM alone fails that
# test (OAEP with SHA-256 and a label); cmkp11 passes it.
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
hsm_setup pkcs11-tool
mod=$CMKP11_MODULE
out=$tmp/out

pkcs11-tool --module "$mod" -L >"$out" 2>&1
ok $? "pkcs11-tool -L exits 0"
grep -q "token label *: local" "$out"
ok $? "-L shows the token named by the [token local] section"
grep -q "token manufacturer *: cmkp11" "$out"
ok $? "-L shows cmkp11 as the manufacturer"

pkcs11-tool --module "$mod" -O >"$out" 2>&1
ok $? "pkcs11-tool -O exits 0"
grep -q "Public Key Object; RSA 2048 bits" "$out" && grep -q "label: *kek$" "$out"
ok $? "-O lists the public key kek without a login"
grep -q "Private Key Object" "$out"
ok "$([ $? -ne 0 ]; echo $?)" "-O shows no private key before a login"

pkcs11-tool --module "$mod" --login --pin "$PIN" -O >"$out" 2>&1
ok $? "pkcs11-tool --login -O exits 0"
grep -q "Private Key Object; RSA" "$out" && grep -q "label: *kek@01$" "$out"
ok $? "after a login, the private keys and older versions are listed"

pkcs11-tool --module "$mod" --login --pin "$PIN" --test >"$out" 2>&1
rc=$?
ok $rc "pkcs11-tool --login --test exits 0"
grep -q "No errors" "$out"
ok $? "its self test reports No errors"
[ $rc -eq 0 ] || sed 's/^/# /' "$out"
done_testing
