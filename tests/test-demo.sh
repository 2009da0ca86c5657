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
[ $status -eq 0 ] || echo "$out" | tail -20 | sed 's/^/# /'
n=$(echo "$out" | grep -c '^OK: the decrypted file equals the original')
ok "$([ "$n" -eq 2 ]; echo $?)" "the main job checked out on both tokens ($n)"
echo "$out" | grep -q 'unseal refused, as it must be'
ok $? "revocation stopped unsealing"
echo "$out" | grep -q '^unsealed again'
ok $? "restoring access restored service"
done_testing
