#!/bin/sh
# A token whose "module =" leads back to cmkp11 fails C_Initialize at once
# with an error naming the configuration line, instead of deadlocking:
#   - module = the path of cmkp11 itself, or a symbolic link to it;
#   - module = a copy of cmkp11 (a second instance, which reads the same
#     configuration and refuses itself);
#   - module = p11-kit's proxy, with cmkp11 registered in p11-kit (a
#     per-user module file, so run as an unprivileged user when root).
# Each run is bounded by timeout(1): a deadlock shows as exit status 124.
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
need timeout pkcs11-tool
hsm_setup self
conf=$tmp/cmkp11.conf
out=$tmp/out

self_conf() { # self_conf FILE MODULE
    cat >"$1" <<EOT
[cmkp11]
log-level = error

[token local]
backend = hsm
module = $2
token-label = cmk
EOT
    chmod 0600 "$1"
}

# run_init NAME CKR: pkcs11-tool -L on cmkp11 with $conf; C_Initialize
# must fail with CKR, in time.
run_init() {
    CMKP11_CONF=$conf timeout 60 pkcs11-tool --module "$CMKP11_MODULE" -L \
        >"$out" 2>&1
    rc=$?
    [ $rc -ne 124 ]
    ok $? "$1: C_Initialize returns (no deadlock)"
    [ $rc -ne 0 ] && grep -q "C_Initialize failed: rv = $2 " "$out"
    ok $? "$1: C_Initialize is $2"
}

self_conf "$conf" "$CMKP11_MODULE"
run_init "module = cmkp11" CKR_GENERAL_ERROR
grep -qF "$conf:6: module: $CMKP11_MODULE is cmkp11 itself; give the PKCS#11 library of the HSM" "$out"
ok $? "the error names the line and the reason"
[ "$tap_failed" -eq 0 ] || sed 's/^/# /' "$out"

ln -s "$CMKP11_MODULE" "$tmp/link.so"
self_conf "$conf" "$tmp/link.so"
run_init "module = a symbolic link to cmkp11" CKR_GENERAL_ERROR
grep -qF "$conf:6: module: $tmp/link.so is cmkp11 itself" "$out"
ok $? "the error names the line and the reason"

cp "$CMKP11_MODULE" "$tmp/copy.so"
self_conf "$conf" "$tmp/copy.so"
# The copy fails its own C_Initialize, which the first reports as the
# lower module's failure: that slot shows no token, as any lower library
# whose C_Initialize fails (the other tokens would work).
CMKP11_CONF=$conf timeout 60 pkcs11-tool --module "$CMKP11_MODULE" -L \
    >"$out" 2>&1
rc=$?
[ $rc -ne 124 ]
ok $? "module = a copy of cmkp11: C_Initialize returns (no deadlock)"
[ $rc -eq 0 ] && grep -q "(empty)" "$out"
ok $? "module = a copy of cmkp11: C_Initialize succeeds, the slot has no token"
grep -qF "$conf:6: module: $tmp/copy.so is cmkp11 itself" "$out"
ok $? "the copy refuses itself, naming the line"
grep -qF "$conf:6: module: $tmp/copy.so: C_Initialize failed: CKR_GENERAL_ERROR" "$out"
ok $? "and the first instance names it"

# p11-kit's proxy loads every registered module, cmkp11 among them.
proxy=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so
[ -f "$proxy" ] || proxy=$(pkg-config --variable=proxy_module p11-kit-1 2>/dev/null)
if [ -n "$proxy" ] && [ -f "$proxy" ] && command -v p11-kit >/dev/null; then
    user_dir self
    self_conf "$uhome/cmkp11.conf" "$proxy"
    [ "$(id -u)" -ne 0 ] || chown "$run_uid" "$uhome/cmkp11.conf"
    as_user env CMKP11_CONF="$uhome/cmkp11.conf" timeout 60 \
        pkcs11-tool --module "$uhome/cmkp11.so" -L >"$out" 2>&1
    rc=$?
    [ $rc -ne 124 ]
    ok $? "module = p11-kit-proxy.so: C_Initialize returns (no deadlock)"
    [ $rc -ne 0 ] && grep -q "C_Initialize failed: rv = CKR_GENERAL_ERROR" "$out"
    ok $? "module = p11-kit-proxy.so: C_Initialize is CKR_GENERAL_ERROR"
    grep -qF "$uhome/cmkp11.conf:6: module: $proxy loads cmkp11 itself (p11-kit's proxy, with cmkp11 registered?); give the PKCS#11 library of the HSM" "$out"
    ok $? "the error names the line and the reason"
    [ "$tap_failed" -eq 0 ] || sed 's/^/# /' "$out"
else
    echo "# p11-kit or its proxy is not installed: the proxy case is not run"
fi

done_testing
