#!/bin/sh
# Java SunPKCS11 on cmkp11 with "certificates = generate": the PKCS11
# KeyStore lists the keys, and tests/integration/java/UnwrapTest.java
# (compiled here with javac) signs and unwraps through the token. Its TAP
# output is this test's.
. "$top_srcdir/tests/lib.sh"
. "$top_srcdir/tests/integration/hsm-env.sh"
need java javac
hsm_setup java "certificates = generate"
javac -d "$tmp" "$top_srcdir/tests/integration/java/UnwrapTest.java" >"$tmp/javac.log" 2>&1 || {
    echo "Bail out! javac failed: $(cat "$tmp/javac.log")"
    exit 99
}
cat >"$tmp/sunpkcs11.cfg" <<EOT
name = cmkp11
library = $CMKP11_MODULE
slotListIndex = 0
EOT
CMKP11_TEST_PIN=$PIN java -cp "$tmp" UnwrapTest "$tmp/sunpkcs11.cfg" 2>"$tmp/java.err"
rc=$?
[ $rc -eq 0 ] || sed 's/^/# /' "$tmp/java.err"
exit $rc
