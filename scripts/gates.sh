#!/bin/sh
# The gates beyond the Debian 12 "make check", each a script of its own,
# run by scripts/check.sh:
#   scripts/gates.sh [NAME...]
# runs each gate NAME (default: $CHECK_GATES; with CI=true and no
# CHECK_GATES, every gate below) and records it as one TAP result in
# ci-results/NAME.trs (PASS; SKIP when it exits 77; FAIL otherwise), its
# output in ci-results/NAME.log. A gate may leave more .trs results under
# ci-results/; scripts/check.sh counts them all. Prints each gate's time.
# Exit 1 when a gate failed.
#
# Add a gate: a script that exits 0 (passed), 77 (cannot run here) or
# another status (failed), and one line in the case below.
set -u
cd "$(dirname "$0")/.." || exit 2
all="debian13 deb distcheck asan tsan memcheck fuzz"

gate_command() { # the command of gate $1
    case $1 in
    debian13) echo "scripts/check-debian13.sh test" ;; # Debian 13 build, tests, pkcs11-provider
    deb) echo "scripts/check-debian13.sh deb" ;;       # the .deb: build, lintian, install, purge
    distcheck) echo "scripts/check-distcheck.sh" ;;    # make distcheck
    asan) echo "scripts/check-sanitizers.sh asan" ;;   # the suite under ASan+UBSan
    tsan) echo "scripts/check-sanitizers.sh tsan" ;;   # thread tests under TSan
    memcheck) echo "scripts/check-sanitizers.sh memcheck" ;; # C tests, valgrind
    fuzz) echo "scripts/check-sanitizers.sh fuzz" ;;   # fuzz harnesses, fixed runs
    *) return 1 ;;
    esac
}

if [ $# -eq 0 ]; then
    if [ -n "${CHECK_GATES:-}" ]; then
        # shellcheck disable=SC2086
        set -- $CHECK_GATES
    elif [ "${CI:-}" = true ]; then
        # shellcheck disable=SC2086
        set -- $all
    fi
fi
# shellcheck disable=SC2086
[ "${1:-}" = all ] && { shift; set -- $all "$@"; }
if [ $# -eq 0 ]; then
    echo "gates: none run (CI=true or CHECK_GATES=all runs $all)"
    exit 0
fi
mkdir -p ci-results
status=0
for name in "$@"; do
    start=$(date +%s)
    if cmd=$(gate_command "$name"); then
        # shellcheck disable=SC2086
        $cmd >"ci-results/$name.log" 2>&1
        rc=$?
    else
        echo "gates: there is no gate $name" >"ci-results/$name.log"
        rc=2
    fi
    secs=$(($(date +%s) - start))
    case $rc in
    0) result=PASS ;;
    77) result=SKIP ;;
    *) result=FAIL; status=1 ;;
    esac
    printf ':test-result: %s\n:global-test-result: %s\n' "$result" "$result" \
        >"ci-results/$name.trs"
    echo "gate $name: $result ($secs s)"
    if [ "$result" != PASS ]; then
        tail -n 30 "ci-results/$name.log" | sed 's/^/    /'
    fi
done
exit $status
