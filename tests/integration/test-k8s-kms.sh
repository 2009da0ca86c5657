#!/bin/sh
# A Kubernetes-KMS-v2-shaped consumer (tests/integration/k8s-kms.c) on an
# hsm token: the AES key is made by pkcs11-tool --keygen through cmkp11 as
# a token object of the lower token (docs/hsm.md, "Token secret keys");
# other processes find it by its label, seal and open data with AES-GCM,
# and destroy it.
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
hsm_setup k8s-kms
mod=$CMKP11_MODULE
kms=$top_builddir/tests/integration/k8s-kms
out=$tmp/out

pkcs11-tool --module "$mod" --login --pin "$PIN" --keygen --key-type aes:32 \
    --label k8s-kek >"$out" 2>&1
ok $? "pkcs11-tool --keygen --key-type aes:32 --label k8s-kek exits 0"

pkcs11-tool --module "$SOFTHSM_MODULE" --token-label cmk --login --pin "$PIN" \
    --list-objects --type secrkey >"$out" 2>&1
grep -q "label: *k8s-kek$" "$out"
ok $? "the key is an object of the lower token"

$CMKP11_CHECKER "$kms" --module "$mod" --token local --label k8s-kek \
    --pin "$PIN" --rounds 200 >"$out" 2>&1
rc=$?
ok $rc "another process finds it by label: 200 AES-GCM rounds"
grep -q "^k8s-kms: 200 rounds, 0 failures$" "$out"
ok $? "  each decrypts; a changed tag or AAD is CKR_ENCRYPTED_DATA_INVALID"
[ $rc -eq 0 ] || sed 's/^/# /' "$out"

"$kms" --module "$mod" --token local --label k8s-other --pin "$PIN" \
    --rounds 1 >"$out" 2>&1
[ $? -eq 2 ] && grep -q "no AES key labelled k8s-other" "$out"
ok $? "another label finds no key"

pkcs11-tool --module "$mod" --login --pin "$PIN" --delete-object \
    --type secrkey --label k8s-kek >"$out" 2>&1
ok $? "pkcs11-tool --delete-object through cmkp11 exits 0"
pkcs11-tool --module "$SOFTHSM_MODULE" --token-label cmk --login --pin "$PIN" \
    --list-objects --type secrkey >"$out" 2>&1
grep -q "k8s-kek" "$out"
ok "$([ $? -ne 0 ]; echo $?)" "  the lower token no longer has it"
"$kms" --module "$mod" --token local --label k8s-kek --pin "$PIN" \
    --rounds 1 >"$out" 2>&1
ok "$([ $? -eq 2 ]; echo $?)" "  nor does a new process find it"
done_testing
