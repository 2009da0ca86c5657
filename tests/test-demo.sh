#!/bin/sh
# The README's demo command runs to the end (main job on both tokens, the
# life cycle on the Key Vault emulator) and checks its own results.
. "$top_srcdir/tests/lib.sh"
src=$(cd "$top_srcdir" && pwd)
build=$(cd "$top_builddir" && pwd)
[ "$src" = "$build" ] || skip_all "the demo builds in the source tree; this is an out-of-tree build"
dir=$build/demo-test.$$
trap 'rm -rf "$dir"' EXIT
out=$(DEMO_DIR=$dir "$src/scripts/demo.sh" 2>&1)
status=$?
ok $status "scripts/demo.sh exits 0"
[ $status -eq 0 ] || printf "%s\n" "$out" | tail -20 | sed 's/^/# /'
n=$(printf "%s\n" "$out" | grep -c '^OK: the decrypted file equals the original')
ok "$([ "$n" -eq 2 ]; echo $?)" "the main job checked out on both tokens ($n)"
printf "%s\n" "$out" | grep -q 'unseal refused, as it must be'
ok $? "revocation stopped unsealing"
printf "%s\n" "$out" | grep -q '^unsealed again'
ok $? "restoring access restored service"
# Every command is echoed before it runs, so the demo can be followed by
# hand: one "$ " line for each command of each kind.
for cmd in './cmkp11-tool --module [^ ]*/cmkp11.so check payments payments-kek' \
    './cmkp11-tool --module [^ ]*/cmkp11.so rotate payments payments-kek' \
    './cmkp11-tool --module [^ ]*/cmkp11.so rewrap [^ ]*/sample.cmk' \
    '/usr/bin/python3 scripts/envelope.py seal [^ ]*/cmkp11.so local kek 1234 ' \
    'tests/kvemu/kvemu-admin --state-dir [^ ]*/kvemu revoke app' \
    'pkcs11-tool --module [^ ]*/cmkp11.so -L' \
    'cat >[^ ]*/cmkp11.conf <<EOT' \
    'printf .%s\\n. "\$AZURE_CLIENT_SECRET" >[^ ]*/payments.secret'; do
    printf "%s\n" "$out" | grep -q "^\$ $cmd"
    ok $? "the demo echoes \$ $cmd"
done
n=$(printf "%s\n" "$out" | grep -c '^\$ ./cmkp11-tool ')
ok "$([ "$n" -eq 10 ]; echo $?)" "each of the 10 cmkp11-tool commands is echoed ($n)"
printf "%s\n" "$out" | grep -q "$(cat "$dir/payments.secret" 2>/dev/null || echo no-such-secret)"
ok "$([ $? -ne 0 ]; echo $?)" "the client secret itself is not shown"
done_testing
