#!/bin/sh
# A storm on the hsm back end: 8 threads, each with its own session, search
# the key pair by label, wrap a fresh AES key under the public key and
# unwrap it with the private key, over and over, all at once. Every result
# is checked. The thread-sanitizer gate (scripts/check-sanitizers.sh tsan) runs this
# with an instrumented module and client.
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
hsm_setup storm
client=$top_builddir/tests/integration/kv-unwrap
count=${CMKP11_STORM_COUNT:-40}

out=$(CMKP11_TEST_PIN=$PIN $CMKP11_CHECKER "$client" "$CMKP11_MODULE" local kek 8 "$count" storm 2>"$tmp/err")
ok $? "8 threads x $count searches, wraps and unwraps on the hsm token ($out)"
case $out in
"unwraps=$((8 * count)) failures=0 "*) r=0 ;;
*) r=1 ;;
esac
ok $r "all $((8 * count)) unwrapped keys decrypt what the originals encrypted $(head -c 300 "$tmp/err")"
done_testing
