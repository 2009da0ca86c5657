#!/bin/sh
# make distcheck: the release tarball builds out of tree with
# --enable-strict, passes "make check" and installs and uninstalls cleanly,
# so a file missing from the tarball fails. Run from a configured tree
# (scripts/check.sh configures it first).
set -u
cd "$(dirname "$0")/.." || exit 2
[ -f Makefile ] || { echo "distcheck: run ./configure first" >&2; exit 1; }
make -j"$(nproc 2>/dev/null || echo 2)" distcheck >distcheck.log 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    grep -E '^(FAIL|ERROR|XPASS):|No rule|No such file|Error [0-9]' distcheck.log | head -40
    tail -n 40 distcheck.log
    echo "distcheck: FAILED"
    exit 1
fi
grep -E '^(# (TOTAL|PASS|FAIL|SKIP|ERROR):|cmkp11-.* archives ready)' distcheck.log
exit 0
