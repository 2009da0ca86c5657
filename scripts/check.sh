#!/bin/sh
# Sets up everything and runs every test: installs what is missing
# (Debian 12, as root), builds with --enable-strict, runs "make check".
# The last line is the summary "N passed, N failed[, N skipped]".
# With CI=true a skipped test counts as a failure: CI has every back end.
set -u
cd "$(dirname "$0")/.." || exit 2
top=$(pwd)

if [ "$(id -u)" = 0 ]; then
    scripts/install-deps.sh || { echo "dependency installation failed"; exit 2; }
fi

if [ ! -x configure ] || [ configure.ac -nt configure ]; then
    autoreconf -fi >/dev/null 2>&1 || { autoreconf -fi; exit 2; }
fi
# A tree configured without --enable-strict is configured again: the
# suite always builds with -Werror.
if [ ! -f Makefile ] || [ configure -nt Makefile ] ||
    ! grep -q -e "--enable-strict" config.status 2>/dev/null; then
    ./configure --enable-strict ${CHECK_CONFIGURE_FLAGS:-} -q || exit 2
fi
jobs=$(nproc 2>/dev/null || echo 2)
make -j"$jobs" >build.log 2>&1 || { cat build.log; echo "build failed"; exit 2; }

# Stale results must not be counted.
find . -name '*.trs' -delete 2>/dev/null
make -j"$jobs" check >check.log 2>&1
status=$?
grep -E '^(PASS|FAIL|ERROR|XPASS|SKIP):' check.log | grep -v '^PASS' | head -200

# Gates beyond this build, each a script (scripts/gates.sh: Debian 13,
# the .deb, distcheck); all of them with CI=true, else those in CHECK_GATES.
# Each adds its .trs results under ci-results/.
scripts/gates.sh

# Count every TAP result of every test program.
set -- $(find "$top" -name '*.trs' -not -path '*/_build/*' -not -path '*/cmkp11-*/*' \
    -exec grep -h '^:test-result:' {} + 2>/dev/null |
    awk '{c[$2]++} END {printf "%d %d %d %d", c["PASS"]+c["XFAIL"], c["FAIL"]+c["XPASS"], c["ERROR"], c["SKIP"]}')
passed=${1:-0}
failed=$(( ${2:-0} + ${3:-0} ))
skipped=${4:-0}
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    echo "make check failed without a failing test result:"
    tail -30 check.log
    failed=1
fi
if [ "${CI:-}" = true ] && [ "$skipped" -gt 0 ]; then
    echo "skipped tests count as failures in CI (every back end is installed):"
    find . -name '*.log' -exec grep -l '# SKIP' {} + 2>/dev/null | head
    failed=$((failed + skipped))
fi
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
