#!/bin/sh
# The module exports exactly the three PKCS#11 entry points.
. "$top_srcdir/tests/lib.sh"
mod="$top_builddir/.libs/cmkp11.so"
[ -f "$mod" ] || { echo "Bail out! $mod is missing"; exit 99; }
syms=$(nm -D --defined-only "$mod" | awk '$2 ~ /^[TDBRW]$/ {print $3}' | sort | tr '\n' ' ')
ok "$([ "$syms" = "C_GetFunctionList C_GetInterface C_GetInterfaceList " ]; echo $?)" \
    "cmkp11.so exports only C_GetFunctionList, C_GetInterface, C_GetInterfaceList (got: $syms)"
test_mod="$top_builddir/.libs/cmkp11-test.so"
syms=$(nm -D --defined-only "$test_mod" | awk '$2 ~ /^[TDBRW]$/ {print $3}' | sort | tr '\n' ' ')
ok "$([ "$syms" = "C_GetFunctionList C_GetInterface C_GetInterfaceList " ]; echo $?)" \
    "the test module exports the same three (got: $syms)"
done_testing
