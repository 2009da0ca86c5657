#!/bin/sh
# libFuzzer harnesses (docs/fuzzing.md), built with clang and
# -fsanitize=fuzzer,address,undefined from a configured tree:
#   scripts/fuzz.sh [SECONDS] [NAME...]   run each for SECONDS (default 60)
#   scripts/fuzz.sh --ci [NAME...]        each for FUZZ_RUNS (20000) runs
#                                         over its seed corpus; TAP lines
#   scripts/fuzz.sh --build               build only
# NAME: config, kv-answer, kv-store, seal, uri (default: all). New inputs
# found go to $FUZZ_OUT/NAME/ (default fuzz-out/), never into the committed
# seeds in tests/fuzz/corpus/NAME/; a crash leaves its input in $FUZZ_OUT/.
# BUILDDIR: the configured build directory (default: the current one, or
# the source tree).
set -u
src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILDDIR:-.}
[ -f "$build/config.h" ] || build=$src
[ -f "$build/config.h" ] || { echo "fuzz.sh: run ./configure first (no config.h)" >&2; exit 2; }
build=$(cd "$build" && pwd)
out=${FUZZ_OUT:-$build/fuzz-out}
runs=${FUZZ_RUNS:-20000}
CC=${FUZZ_CC:-clang}

mode=timed
seconds=60
case ${1:-} in
--ci) mode=ci; shift ;;
--build) mode=build; shift ;;
[0-9]*) seconds=$1; shift ;;
esac
names=${*:-config kv-answer kv-store seal uri}

command -v "$CC" >/dev/null || { echo "fuzz.sh: $CC is missing" >&2; exit 2; }
flags="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
 -fno-omit-frame-pointer -I$build -I$src/common -I$src/module
 -I$src/provider/keyvault -I$src/tools/cmkp11-tool"
common="$src/common/attrs.c $src/common/debug.c $src/common/hmap.c
 $src/common/names.c $src/common/secure.c"

sources() { # sources NAME: the harness and the code it drives
    case $1 in
    config) echo "$src/tests/fuzz/fuzz-config.c $src/module/config.c $common" ;;
    kv-answer) echo "$src/tests/fuzz/fuzz-kv-answer.c $src/provider/keyvault/kv-parse.c
        $src/provider/keyvault/kv-util.c $src/provider/keyvault/kv-errors.c $common" ;;
    kv-store) echo "$src/tests/fuzz/fuzz-kv-store.c $src/provider/keyvault/kv-skey.c
        $src/provider/keyvault/kv-util.c $common" ;;
    seal) echo "$src/tests/fuzz/fuzz-seal.c $src/tools/cmkp11-tool/seal.c" ;;
    uri) echo "$src/tests/fuzz/fuzz-uri.c $src/tools/cmkp11-tool/p11.c $common" ;;
    *) return 1 ;;
    esac
}

build_one() { # build_one NAME: prints the binary's path
    bin=$out/bin/fuzz-$1
    mkdir -p "$out/bin"
    # shellcheck disable=SC2046,SC2086 # word lists on purpose
    "$CC" $flags $(pkg-config --cflags json-c p11-kit-1 libcrypto libcurl) \
        $(sources "$1") -o "$bin" \
        $(pkg-config --libs json-c p11-kit-1 libcrypto) -ldl -pthread \
        >"$out/build-$1.log" 2>&1 || { cat "$out/build-$1.log" >&2; return 1; }
    echo "$bin"
}

n=0
failed=0
for name in $names; do
    n=$((n + 1))
    if ! sources "$name" >/dev/null; then
        echo "not ok $n - fuzz $name # no such harness"
        failed=$((failed + 1))
        continue
    fi
    if ! bin=$(build_one "$name"); then
        echo "not ok $n - fuzz $name # build failed"
        failed=$((failed + 1))
        continue
    fi
    [ "$mode" = build ] && { echo "ok $n - fuzz $name # built $bin"; continue; }
    seeds=$src/tests/fuzz/corpus/$name
    work=$out/$name
    mkdir -p "$work"
    dict=
    [ -f "$src/tests/fuzz/$name.dict" ] && dict=-dict=$src/tests/fuzz/$name.dict
    if [ "$mode" = ci ]; then
        limit=-runs=$runs
        # A fresh working corpus: the same runs every time.
        rm -rf "$work" && mkdir -p "$work"
    else
        limit=-max_total_time=$seconds
    fi
    log=$out/$name.log
    # shellcheck disable=SC2086 # $dict may be empty
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        "$bin" $limit $dict -max_len=65536 -timeout=25 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$out/$name-" "$work" "$seeds" \
        >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        echo "ok $n - fuzz $name (${execs:-?} executions)"
    else
        failed=$((failed + 1))
        echo "not ok $n - fuzz $name (exit $rc; log $log)"
        grep -E "ERROR: |runtime error|SUMMARY|Test unit written" "$log" | head -5 |
            sed 's/^/# /'
    fi
done
echo "1..$n"
echo "$((n - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
