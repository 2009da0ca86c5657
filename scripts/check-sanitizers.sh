#!/bin/sh
# The checks that "make check" alone cannot make: the test suite again in
# builds that watch memory and threads, and the fuzz harnesses. Each is a
# gate of scripts/gates.sh (CI runs them all).
#
#   scripts/check-sanitizers.sh [GATE...]   GATE: asan tsan memcheck fuzz
#                                           (default: all four)
#
# asan      the whole suite in an AddressSanitizer + UndefinedBehavior-
#           Sanitizer build. Programs that are not instrumented (pkcs11-tool,
#           openssl, python3, java) load the instrumented module with the
#           sanitizer runtime preloaded (and libstdc++, which its C++
#           interceptors need when a C++ library is loaded later).
# tsan      the thread, fork and storm tests in a ThreadSanitizer build
#           (clang): the front end's own thread and fork tests, the hsm
#           back end's, 8 threads that search, wrap and unwrap at once
#           on an hsm and a keyvault token, 4 that use more distinct
#           public keys than the module keeps built, 2 that use a key
#           while it is reloaded, and cmkp11-tool
#           sealing and unsealing with 3 workers.
# memcheck  every C test program under valgrind's memcheck (definite leaks
#           are errors), with loop counts cut tenfold (CMKP11_TEST_LIGHT).
# fuzz      each libFuzzer harness in tests/fuzz for a fixed number of runs
#           over its committed seed corpus (scripts/fuzz.sh --ci).
#
# Each gate builds a copy of the tree in $CMKP11_GATES_DIR/GATE (default
# ./_gates/GATE), runs its tests there and fails on any failed test or on
# any sanitizer report: reports are written to files (log_path), so one
# from a process whose failure a test expected is not lost. Prints one TAP
# line per gate result; the .trs files of each gate's run stay in its
# directory for scripts/check.sh to count. Exits 1 if any gate failed.
# Times are in docs/ci.md.
set -u
cd "$(dirname "$0")/.." || exit 2
top=$(pwd)
gates_dir=${CMKP11_GATES_DIR:-$top/_gates}
checker="" # what the C test programs run under (memcheck: valgrind)
jobs=$(nproc 2>/dev/null || echo 2)
n=0
failed=0

tap() { # tap STATUS DESCRIPTION
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $n - $2"
    else
        echo "not ok $n - $2"
        failed=$((failed + 1))
    fi
}

# copy_tree DIR: the tracked files (as they are in the work tree) in DIR.
copy_tree() {
    rm -rf "$1" && mkdir -p "$1" || return 1
    if git rev-parse --git-dir >/dev/null 2>&1; then
        git ls-files -z | tar --null -T - -cf - 2>/dev/null | tar -xf - -C "$1"
    else
        tar --exclude=./_gates --exclude='./cmkp11-*' -cf - . | tar -xf - -C "$1"
    fi
}

# build GATE CONFIGURE-ARGS...: a configured and built copy in $gates_dir/GATE.
build() {
    gate=$1
    shift
    dir=$gates_dir/$gate
    start=$(date +%s)
    copy_tree "$dir" || return 1
    (cd "$dir" && autoreconf -fi >/dev/null 2>&1 &&
        ./configure -q "$@" >configure.log 2>&1 &&
        make -j"$jobs" >build.log 2>&1 &&
        make -j"$jobs" check TESTS= >>build.log 2>&1) || {
        tail -30 "$dir/build.log" 2>/dev/null || tail -30 "$dir/configure.log"
        return 1
    }
    mkdir -p "$dir/reports"
}

# tests_but GATE TEST...: the suite's TESTS less the ones named.
tests_but() {
    dir=$gates_dir/$1
    shift
    (cd "$dir" && make -s -f - print <<'EOT'
include Makefile
print:
	@echo $(TESTS)
EOT
) | tr ' ' '\n' | grep -v -x -F "$(printf '%s\n' "$@")" | tr '\n' ' '
}

# run_check GATE [MAKE-ARGS...]: make check in the gate's copy, each test
# bounded by $limit seconds (a hang fails instead of stopping CI); the
# summary of its results goes to the TAP output.
limit=${CMKP11_GATE_TEST_LIMIT:-1200}
run_check() {
    gate=$1
    shift
    dir=$gates_dir/$gate
    (cd "$dir" && find . -name '*.trs' -delete &&
        make -j"$jobs" check LOG_COMPILER="timeout $limit $checker" \
            SH_LOG_COMPILER="timeout $limit \$(SHELL)" \
            PY_LOG_COMPILER="timeout $limit /usr/bin/python3" \
            "$@" >check.log 2>&1)
    status=$?
    grep -E '^(FAIL|ERROR|XPASS):' "$dir/check.log" | sed "s/^/# $gate: /" | head -50
    tap $status "$gate: make check $(grep -E '^# (TOTAL|PASS|FAIL|ERROR):' "$dir/check.log" | tr -s ' \n' ' ')"
}

# reports GATE: one result for the sanitizer report files of the run.
reports() {
    dir=$gates_dir/$1
    found=$(find "$dir/reports" -type f -size +0 2>/dev/null)
    for f in $found; do
        echo "# $1: $f"
        head -40 "$f" | sed 's/^/#   /'
    done
    tap "$([ -z "$found" ]; echo $?)" "$1: no sanitizer report ($(echo $found | wc -w) files)"
    echo "$(( $(date +%s) - start )) s" >"$dir/seconds"
    echo "# $1 took $(cat "$dir/seconds")"
}

gate_asan() {
    build asan --enable-strict --enable-asan --enable-ubsan ||
        { tap 1 "asan: build"; return; }
    dir=$gates_dir/asan
    cc -shared -fPIC -o "$dir/fake-dlclose.so" tests/fake-dlclose.c || return
    preload="$(gcc -print-file-name=libasan.so)"
    stdcxx=$(gcc -print-file-name=libstdc++.so.6)
    [ -f "$stdcxx" ] && preload="$preload $stdcxx"
    # Leaks: the memcheck gate finds them in the C tests; here every host
    # program (python3, java, openssl) would report its own. A quarantine
    # of 1 MiB (not 256): test-seal.py checks that the tool's memory does
    # not grow with the file, which a large quarantine would make it do;
    # it allows 8 MiB instead of 2 for what the allocator itself keeps.
    # Left out: p11-kit list-modules and p11tool (test-p11-kit.sh,
    # test-p11tool.sh) hang in glibc's locale lock while p11-kit loads its
    # trust module whenever an ASan runtime is preloaded, with or without
    # cmkp11 (p11-kit 0.24, GCC 12's libasan); so does anything that loads
    # GnuTLS (curl, through its LDAP support: test-nginx.py runs its client
    # without the preload).
    tests=$(tests_but asan tests/integration/test-p11-kit.sh \
        tests/integration/test-p11tool.sh)
    chmod 0777 "$dir/reports"
    CMKP11_TEST_RSS_SLACK_KIB=8192 LD_PRELOAD="$preload $dir/fake-dlclose.so" \
        ASAN_OPTIONS="detect_leaks=0:quarantine_size_mb=1:abort_on_error=0:log_path=$dir/reports/asan:allow_user_segv_handler=1:handle_segv=0" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$dir/reports/ubsan" \
        run_check asan TESTS="$tests"
    reports asan
}

TSAN_TESTS="tests/unit/test-threads tests/unit/test-fork \
tests/integration/test-hsm-threads tests/integration/test-hsm-fork \
tests/integration/test-storm.sh tests/integration/test-keyvault-storm.py \
tests/integration/test-kv-many-keys tests/integration/test-kv-reload \
tests/integration/test-seal-threads.py"

gate_tsan() {
    command -v clang >/dev/null 2>&1 || { tap 1 "tsan: clang is not installed"; return; }
    build tsan CC=clang --enable-strict --enable-tsan ||
        { tap 1 "tsan: build"; return; }
    dir=$gates_dir/tsan
    # Suppressions, each with its reason: tests/tsan.supp.
    CMKP11_TEST_LIGHT=1 CMKP11_STORM_COUNT=10 \
        TSAN_OPTIONS="log_path=$dir/reports/tsan:second_deadlock_stack=1:suppressions=$top/tests/tsan.supp" \
        run_check tsan TESTS="$TSAN_TESTS"
    reports tsan
}

gate_memcheck() {
    command -v valgrind >/dev/null 2>&1 || { tap 1 "memcheck: valgrind is not installed"; return; }
    build memcheck --enable-strict || { tap 1 "memcheck: build"; return; }
    dir=$gates_dir/memcheck
    cc -shared -fPIC -o "$dir/fake-dlclose.so" tests/fake-dlclose.c || return
    # The C test programs: the tests without a script's extension.
    progs=$(tests_but memcheck | tr ' ' '\n' | grep -v '\.[a-z]*$' | tr '\n' ' ')
    # Forked children are left alone: they hold what the parent's other
    # threads allocated, without those threads (docs/ci.md). So a leak is
    # no error (the exit status of a child is the fork tests' to check),
    # but every definite leak of a process that did not fork off is
    # written to its report file, and any report fails the gate.
    checker="valgrind --error-exitcode=81 --child-silent-after-fork=yes --leak-check=full --errors-for-leak-kinds=none --show-leak-kinds=definite --suppressions=$top/tests/valgrind.supp --log-file=$dir/reports/memcheck.%p --quiet"
    CMKP11_TEST_LIGHT=1 LD_PRELOAD="$dir/fake-dlclose.so" \
        run_check memcheck TESTS="$progs"
    checker=""
    reports memcheck
}

gate_fuzz() {
    command -v clang >/dev/null 2>&1 || { tap 1 "fuzz: clang is not installed"; return; }
    [ -f config.h ] || { tap 1 "fuzz: the tree is not configured"; return; }
    start=$(date +%s)
    FUZZ_OUT=$gates_dir/fuzz scripts/fuzz.sh --ci >"$gates_dir/fuzz.log" 2>&1
    status=$?
    grep -E '^not ok' "$gates_dir/fuzz.log" | sed 's/^/# fuzz: /'
    tap $status "fuzz: every harness over its corpus without a crash ($(grep -c '^ok' "$gates_dir/fuzz.log") harnesses, $(( $(date +%s) - start )) s)"
}

[ $# -gt 0 ] || set -- asan tsan memcheck fuzz
mkdir -p "$gates_dir"
for g in "$@"; do
    case $g in
    asan | tsan | memcheck | fuzz) "gate_$g" ;;
    *)
        echo "usage: $0 [asan|tsan|memcheck|fuzz]..." >&2
        exit 2
        ;;
    esac
done
echo "1..$n"
[ "$failed" -eq 0 ]
