#!/bin/sh
# RSA-2048 throughput: SoftHSMv2 directly, through cmkp11 and through
# p11-kit's proxy (issue 4, docs/performance.md).
#
#   scripts/bench.sh [-d SECONDS] [-r ROUNDS] [-o RAWFILE] [-i] [-s | -p]
#
# Builds cmkp11 and bench/p11bench if needed, creates a private SoftHSM
# token in a temporary directory (tests/softhsm-init.sh) and measures
# OAEP-SHA1 unwrap, CKM_RSA_PKCS decrypt and CKM_SHA256_RSA_PKCS sign at 1
# and 2 threads. Each round measures every operation/thread pair on the
# three modules in turn (direct, cmkp11, proxy); then the medians, the
# ratios to direct speed and OAEP-SHA256 unwrap through cmkp11 are printed.
#
# Public-key operations (C_Encrypt OAEP-SHA1 and C_Verify SHA256-RSA-PKCS
# with the public key object; cmkp11 does them with OpenSSL, checking the
# version's usage flags kept for refresh-interval, see docs/hsm.md) are
# measured on SoftHSM directly, through cmkp11, and as OpenSSL's own
# EVP_PKEY_encrypt / EVP_DigestVerify in the same p11bench process that has
# cmkp11 loaded; their bar is cmkp11/openssl >= 0.9 and cmkp11/direct >=
# 2.0, or >= 0.9 x openssl/direct where OpenSSL itself is under 2.0 x
# SoftHSM (cmkp11 does these operations with that OpenSSL).
# -p runs only these rows (with -i too: their instructions only).
#
# Sealing: one 64 KiB AES-256-GCM segment as cmkp11-tool seal encrypts it
# (p11bench gcm-64k: C_EncryptInit + C_Encrypt under a session key) on
# SoftHSM directly in one call and in parts (gcm-64k-mp: C_EncryptUpdate +
# C_EncryptFinal, as cmkp11 drives it), 1 thread and as many as seal uses,
# and through cmkp11; OpenSSL's EVP on the same data in the same process;
# SoftHSM's own file loop (gcm-file: the same file read with pread in
# 64 KiB segments, encrypted in parts, written to /dev/null, timed from the
# first read to the last write), and the same as a whole process timed
# from outside (directfile: loading SoftHSM, logging in, the loop); then
# cmkp11-tool seal and unseal of $BENCH_SEAL_MIB MiB (default 1024) of
# random data to /dev/null, whole processes timed, with --threads 1 and
# with the default, and openssl enc -aes-256-ctr of the same file, in
# MB/s of wall clock and of CPU time. The seal bar (PASS/FAIL on wall
# clock): seal >= 0.9 x SoftHSM's file job at the same number of threads,
# and >= 0.5 x openssl enc; the ratios to the loops in the process (with
# and without the file) are shown beside it. With -i, the instructions a
# segment costs in seal and in the file loop (callgrind).
# -s runs only these rows.
#
# The bar: cmkp11/direct >= 0.97 on every row, and not more than 0.02 below
# proxy/direct. It is printed as PASS or FAIL, on wall-clock ops/s and on
# ops per CPU second (which other load on the machine disturbs much less);
# the exit status is 0 unless a measurement fails outright.
#
# The proxy needs SoftHSM registered with p11-kit. Nothing on the system is
# changed for good: if the system registration (Debian's
# /usr/share/p11-kit/modules/softhsm2.module) already serves the token, it
# is used as it is; otherwise a module file goes into a private HOME
# (~/.config/pkcs11/modules), read by the current user or, as root (p11-kit
# ignores user files for root), by "nobody" through runuser; only if that
# fails too, a temporary file in /etc/pkcs11/modules that is removed on exit.
# BENCH_PROXY=system|user|etc forces one of these.
set -eu

seconds=2
rounds=5
raw=
instructions=no
seal_only=no
only_pub=no
while getopts d:r:o:isph opt; do
    case $opt in
    d) seconds=$OPTARG ;;
    r) rounds=$OPTARG ;;
    o) raw=$OPTARG ;;
    i) instructions=yes ;;
    s) seal_only=yes ;;
    p) only_pub=yes ;;
    *)
        echo "usage: $0 [-d SECONDS] [-r ROUNDS] [-o RAWFILE] [-i] [-s | -p]" >&2
        exit 2
        ;;
    esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
softhsm=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
proxy_so=${P11KIT_PROXY:-/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so}
cmkp11_so=$top/.libs/cmkp11.so
bench=$top/bench/p11bench
pin=1234
key=kek

for f in "$softhsm" "$proxy_so"; do
    [ -f "$f" ] || { echo "bench: $f is missing" >&2; exit 1; }
done

# Build what is missing or out of date.
if [ ! -f Makefile ]; then
    [ -x configure ] || autoreconf -fi
    ./configure --enable-strict
fi
make -j2 cmkp11.la bench/p11bench cmkp11-tool >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cmkp11-bench.XXXXXX")
etc_module=
etc_made=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    if [ -n "$etc_module" ] && [ -f "$etc_module" ]; then
        rm -f "$etc_module"
        echo "bench: removed $etc_module" >&2
    fi
    if [ -n "$etc_made" ]; then
        rmdir /etc/pkcs11/modules 2>/dev/null || :
        [ "$etc_made" != top ] || rmdir /etc/pkcs11 2>/dev/null || :
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench: creating a SoftHSM token in $tmp/hsm" >&2
sh "$top/tests/softhsm-init.sh" "$tmp/hsm" >/dev/null
# shellcheck source=/dev/null
. "$tmp/hsm/env"

cat >"$tmp/cmkp11.conf" <<EOT
[cmkp11]
log-level = error
[token local]
backend = hsm
module = $softhsm
token-label = cmk
EOT
chmod 600 "$tmp/cmkp11.conf"

# How to run p11bench on the proxy: "$@" is prefixed by $proxy_run.
proxy_run=
probe_bin=$bench
probe() { # probe PREFIX...: can the proxy see token "cmk" this way?
    "$@" "$probe_bin" -n 1 -w 1 -t 1 -o sign "$proxy_so" cmk "$pin" "$key" \
        >/dev/null 2>"$tmp/probe.err"
}
user_module() { # user_module HOME
    mkdir -p "$1/.config/pkcs11/modules"
    # Same name as Debian's file, so that it replaces it rather than
    # loading SoftHSM twice.
    echo "module: $softhsm" >"$1/.config/pkcs11/modules/softhsm2.module"
}
setup_proxy() {
    mode=${BENCH_PROXY:-}
    if [ -z "$mode" ] || [ "$mode" = system ]; then
        if probe env; then
            proxy_run="env"
            echo "bench: proxy: SoftHSM as registered on the system" >&2
            return 0
        fi
        [ -z "$mode" ] || { cat "$tmp/probe.err" >&2; return 1; }
    fi
    if [ -z "$mode" ] || [ "$mode" = user ]; then
        if [ "$(id -u)" != 0 ]; then
            user_module "$tmp/home"
            if probe env HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/home/.config"; then
                proxy_run="env HOME=$tmp/home XDG_CONFIG_HOME=$tmp/home/.config"
                echo "bench: proxy: module file in a private HOME" >&2
                return 0
            fi
        elif command -v runuser >/dev/null && id nobody >/dev/null 2>&1; then
            # nobody gets a copy of the token and of p11bench.
            p=$tmp/nobody
            mkdir -p "$p"
            cp -R "$tmp/hsm/tokens" "$p/tokens"
            sed "s|^directories.tokendir = .*|directories.tokendir = $p/tokens|" \
                "$tmp/hsm/softhsm2.conf" >"$p/softhsm2.conf"
            cp "$bench" "$p/p11bench"
            user_module "$p/home"
            chmod 711 "$tmp"
            chown -R nobody "$p"
            run="runuser -u nobody -- env HOME=$p/home XDG_CONFIG_HOME=$p/home/.config SOFTHSM2_CONF=$p/softhsm2.conf"
            probe_bin=$p/p11bench
            # shellcheck disable=SC2086 # $run is a list of words
            if probe $run; then
                proxy_run=$run
                bench_proxy=$p/p11bench
                echo "bench: proxy: run as nobody, module file in a private HOME" >&2
                return 0
            fi
        fi
        [ -z "$mode" ] || { cat "$tmp/probe.err" >&2; return 1; }
    fi
    if [ -z "$mode" ] || [ "$mode" = etc ]; then
        if [ "$(id -u)" = 0 ]; then
            etc_module=/etc/pkcs11/modules/cmkp11-bench-softhsm.module
            if [ -e "$etc_module" ]; then
                echo "bench: $etc_module exists; not touching it" >&2
                etc_module=
                return 1
            fi
            if [ ! -d /etc/pkcs11 ]; then
                etc_made=top
            elif [ ! -d /etc/pkcs11/modules ]; then
                etc_made=modules
            fi
            mkdir -p /etc/pkcs11/modules
            echo "module: $softhsm" >"$etc_module"
            echo "bench: TEMPORARY $etc_module (removed on exit)" >&2
            if probe env; then
                proxy_run="env"
                return 0
            fi
        fi
    fi
    cat "$tmp/probe.err" >&2
    return 1
}
bench_proxy=$bench
[ "$seal_only$only_pub" != nono ] || setup_proxy ||
    { echo "bench: cannot serve SoftHSM through $proxy_so" >&2; exit 1; }

results=$tmp/results
: >"$results"
run() { # run NAME OP THREADS MODULE TOKEN, with $pre before p11bench
    name=$1 op=$2 threads=$3
    prog=$bench
    [ "$name" != proxy ] || prog=$bench_proxy
    set -- "$4" "$5"
    [ "$op" != gcm-file ] || set -- -f "$tmp/seal.in" "$@"
    if ! out=$($pre "$prog" -d "$seconds" -t "$threads" -o "$op" \
        "$@" "$pin" "$key"); then
        echo "bench: round $r: $name $op $threads threads failed" >&2
        exit 1
    fi
    echo "$r $name $out" >>"$results"
    echo "bench: round $r: $name $out" >&2
}

ops="unwrap decrypt sign"
pub_ops="encrypt verify"
seal_mib=${BENCH_SEAL_MIB:-1024}
# The threads seal and unseal use by default on an hsm token.
seal_threads=$(nproc)
[ "$seal_threads" -le 8 ] || seal_threads=8

# -i: instructions per operation instead of time (valgrind's callgrind),
# which other load on the machine does not change. Each module runs 20
# and 60 operations after the same warm-up; the difference over 40 is the
# cost of one operation, set-up and loading cancelled out.
instr() { # instr PROG MODULE TOKEN OP N: instructions of the whole run
    # shellcheck disable=SC2086
    $pre valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$1" -n "$5" -t 1 -w 5 -o "$4" "$2" "$3" "$pin" "$key" 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p' | tail -n 1
}
per_op() { # per_op NAME PROG MODULE TOKEN OP
    a=$(instr "$2" "$3" "$4" "$5" 20)
    b=$(instr "$2" "$3" "$4" "$5" 60)
    if [ -z "$a" ] || [ -z "$b" ]; then
        echo "bench: callgrind failed for $1 $5" >&2
        exit 1
    fi
    echo $(((b - a) / 40))
}
if [ "$instructions" = yes ]; then
    command -v valgrind >/dev/null || { echo "bench: valgrind is missing" >&2; exit 1; }
    [ "$only_pub$seal_only" = nono ] || ops=
    [ -z "$ops" ] || echo "instructions per operation (callgrind; 1 thread):"
    [ -z "$ops" ] || printf '%-14s %12s %12s %12s  %7s %7s  %s\n' op direct cmkp11 proxy \
        cmk/dir prx/dir bar
    verdict=PASS
    for op in ${ops:+$ops unwrap-sha256}; do
        pre="env"
        d=-
        [ "$op" = unwrap-sha256 ] || d=$(per_op direct "$bench" "$softhsm" cmk "$op")
        pre="env CMKP11_CONF=$tmp/cmkp11.conf"
        c=$(per_op cmkp11 "$bench" "$cmkp11_so" local "$op")
        pre=$proxy_run
        x=-
        [ "$op" = unwrap-sha256 ] || x=$(per_op proxy "$bench_proxy" "$proxy_so" cmk "$op")
        if [ "$d" = - ]; then
            printf '%-14s %12s %12d %12s\n' "$op" - "$c" -
            continue
        fi
        # As speed ratios: fewer instructions is faster.
        line=$(awk -v d="$d" -v c="$c" -v x="$x" 'BEGIN {
            rc = d / c; rx = d / x
            ok = (rc >= 0.97 && rc >= rx - 0.02) ? "PASS" : "FAIL"
            printf "%.4f %.4f %s", rc, rx, ok }')
        # shellcheck disable=SC2086 # three words, split on purpose
        set -- $line
        [ "$3" = PASS ] || verdict=FAIL
        printf '%-14s %12d %12d %12d  %7s %7s  %s\n' "$op" "$d" "$c" "$x" "$1" "$2" "$3"
    done
    [ -z "$ops" ] || echo "bar (direct/cmkp11 >= 0.97 and >= direct/proxy - 0.02): $verdict"
    [ -z "$ops" ] || echo
    # -s: the sealing rows only.
    if [ "$seal_only" = no ]; then
        echo "public-key operations, instructions per operation (callgrind; 1 thread):"
        printf '%-14s %12s %12s %12s  %7s %7s  %s\n' op direct cmkp11 openssl \
            cmk/dir cmk/ssl bar
        verdict=PASS
        for op in $pub_ops; do
            pre="env"
            d=$(per_op direct "$bench" "$softhsm" cmk "$op")
            pre="env CMKP11_CONF=$tmp/cmkp11.conf"
            c=$(per_op cmkp11 "$bench" "$cmkp11_so" local "$op")
            o=$(per_op openssl "$bench" "$cmkp11_so" local "openssl-$op")
            # Only the OpenSSL bar: most of what SoftHSM spends on a public
            # operation is in system calls (its object store), which callgrind
            # does not count; cmkp11/direct is judged on CPU time below.
            line=$(awk -v d="$d" -v c="$c" -v o="$o" 'BEGIN {
                rd = d / c; ro = o / c
                ok = (ro >= 0.9) ? "PASS" : "FAIL"
                printf "%.3f %.3f %s", rd, ro, ok }')
            # shellcheck disable=SC2086 # three words, split on purpose
            set -- $line
            [ "$3" = PASS ] || verdict=FAIL
            printf '%-14s %12d %12d %12d  %7s %7s  %s\n' "$op" "$d" "$c" "$o" "$1" "$2" "$3"
        done
        echo "bar (cmkp11 >= 0.9 x openssl, as speed; direct: see the CPU-time run): $verdict"
    fi
    [ "$only_pub" = no ] || exit 0
    [ "$seal_only" = yes ] || echo
    echo "sealing: one 64 KiB AES-256-GCM segment, instructions (callgrind; 1 thread):"
    pre="env"
    d=$(per_op direct "$bench" "$softhsm" cmk gcm-64k)
    pre="env CMKP11_CONF=$tmp/cmkp11.conf"
    c=$(per_op cmkp11 "$bench" "$cmkp11_so" local gcm-64k)
    o=$(per_op openssl "$bench" "$cmkp11_so" local openssl-gcm-64k)
    pre="env"
    m=$(per_op direct "$bench" "$softhsm" cmk gcm-64k-mp)
    printf '%-14s %12s %12s %12s  %7s %7s\n' op direct cmkp11 openssl dir/cmk ssl/cmk
    awk -v d="$d" -v m="$m" -v c="$c" -v o="$o" 'BEGIN {
        printf "%-14s %12d %12d %12d  %7.3f %7.3f\n", "gcm-64k", d, c, o, d / c, o / c
        printf "%-14s %12d %12s %12s  %7.3f\n", "gcm-64k-mp", m, "", "", m / c }'
    # Whole runs over 32 and 64 MiB: the difference over 512 segments is
    # what a segment costs, the rest the fixed cost (start, end).
    echo
    echo "sealing a file, instructions a 64 KiB segment and fixed (callgrind; 32 and 64 MiB):"
    head -c 33554432 /dev/urandom >"$tmp/i32"
    cat "$tmp/i32" "$tmp/i32" >"$tmp/i64"
    whole() { # whole FILE COMMAND...: instructions of the whole run
        f=$1
        shift
        # shellcheck disable=SC2086 # $pre: words
        $pre valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" "$f" \
            2>&1 >/dev/null | sed -n 's/.*Collected : \([0-9]*\).*/\1/p' |
            tail -n 1
    }
    printf '%-28s %14s %14s  %s\n' "" per-segment "fixed (M)" "segment / file job's"
    base='' base1=''
    for row in "directfile 1" "directfile $seal_threads" "seal 1" "seal $seal_threads"; do
        # shellcheck disable=SC2086 # two words
        set -- $row
        if [ "$1" = directfile ]; then
            pre="env"
            set -- "$1" "$2" "$bench" -t "$2" -o gcm-file "$softhsm" cmk "$pin" "$key" -f
        else
            pre="env CMKP11_CONF=$tmp/cmkp11.conf CMKP11_PIN=$pin"
            set -- "$1" "$2" "$top/cmkp11-tool" --module "$cmkp11_so" \
                --threads "$2" --key "pkcs11:token=local;object=$key" seal
        fi
        name=$1 th=$2
        shift 2
        # (p11bench takes "-f FILE" after its other arguments: glibc's
        # getopt reorders them.)
        a=$(whole "$tmp/i32" "$@")
        b=$(whole "$tmp/i64" "$@")
        if [ -z "$a" ] || [ -z "$b" ]; then
            echo "bench: callgrind failed for $row" >&2
            exit 1
        fi
        per=$(((b - a) / 512))
        [ "$name" != directfile ] || [ "$th" != "$seal_threads" ] || base=$per
        [ "$name" != directfile ] || [ "$th" != 1 ] || base1=$per
        ref=$base1
        [ "$th" = 1 ] || ref=$base
        awk -v r="$name --threads $th" -v p="$per" -v f="$(((a - 512 * per) / 1000000))" \
            -v ref="$ref" 'BEGIN {
            v = p / ref
            printf "%-28s %14d %14d  %.3f%s\n", r, p, f, v,
                r ~ /^seal/ ? (1 / v >= 0.9 ? "  PASS" : "  FAIL") : "" }'
    done
    exit 0
fi

load0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench: $rounds rounds of ${seconds}s measurements; load average $load0" >&2
case $load0 in
0.[0-4]*) ;;
*) echo "bench: the machine is busy: wall-clock figures will be noisy" >&2 ;;
esac
[ "$only_pub" = yes ] || head -c $((seal_mib * 1048576)) /dev/urandom >"$tmp/seal.in"
aeskey=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
timed() { # timed NAME OP THREADS COMMAND...: "r NAME OP THREADS MB/s
    # MB-per-CPU-s" into results (MB of the data, not sealed)
    name=$1 sop=$2 th=$3
    shift 3
    # Wall clock from date (ns); CPU from time (10 ms steps).
    t0=$(date +%s%N)
    /usr/bin/time -f '%e %U %S' -o "$tmp/time" "$@" >/dev/null 2>"$tmp/time.err" ||
        { cat "$tmp/time.err" >&2; echo "bench: $name failed" >&2; exit 1; }
    t1=$(date +%s%N)
    awk -v r="$r" -v n="$name" -v o="$sop" -v t="$th" -v ns="$((t1 - t0))" \
        -v mb="$((seal_mib * 1048576))" '{
        w = ns / 1e9; c = $2 + $3 > 0 ? $2 + $3 : 0.01
        printf "%s %s %s %s %.1f %.1f\n", r, n, o, t, mb / w / 1e6, mb / c / 1e6 }' \
        "$tmp/time" >>"$results"
    echo "bench: round $r: $name $sop $th $(tail -n 1 "$results" | cut -d' ' -f5-)" >&2
}
tool_env() { # tool_env COMMAND...: with the configuration and the PIN
    env CMKP11_CONF="$tmp/cmkp11.conf" CMKP11_PIN=$pin "$@"
}
[ "$only_pub" = yes ] || tool_env "$top/cmkp11-tool" --module "$cmkp11_so" \
    --key "pkcs11:token=local;object=$key" seal "$tmp/seal.in" \
    -o "$tmp/seal.sealed" >/dev/null
seal_round() { # the tool's default, then one thread, each after the
    # lower token's own file job as a process of its own; openssl enc
    for t in "$seal_threads" 1; do
        timed directfile seal "$t" "$bench" -t "$t" -o gcm-file \
            -f "$tmp/seal.in" "$softhsm" cmk "$pin" "$key"
        timed sealtool seal "$t" env CMKP11_CONF="$tmp/cmkp11.conf" \
            CMKP11_PIN=$pin "$top/cmkp11-tool" --module "$cmkp11_so" \
            --threads "$t" --key "pkcs11:token=local;object=$key" \
            seal "$tmp/seal.in"
        timed sealtool unseal "$t" env CMKP11_CONF="$tmp/cmkp11.conf" \
            CMKP11_PIN=$pin "$top/cmkp11-tool" --module "$cmkp11_so" \
            --threads "$t" unseal "$tmp/seal.sealed"
    done
    timed opensslenc seal 1 openssl enc -aes-256-ctr -K "$aeskey" \
        -iv 00000000000000000000000000000000 -in "$tmp/seal.in" -out /dev/null
}
gcm_round() { # p11bench gcm-64k: direct in one call and in parts, and
    # gcm-file (1 and seal's threads); cmkp11, EVP
    pre="env"
    for t in 1 "$seal_threads"; do
        run direct gcm-64k "$t" "$softhsm" cmk
        run direct gcm-64k-mp "$t" "$softhsm" cmk
        run direct gcm-file "$t" "$softhsm" cmk
        [ "$seal_threads" != 1 ] || break
    done
    pre="env CMKP11_CONF=$tmp/cmkp11.conf"
    run cmkp11 gcm-64k 1 "$cmkp11_so" local
    run openssl openssl-gcm-64k 1 "$cmkp11_so" local
}
pub_round() { # public-key operations: direct, cmkp11, OpenSSL in its process
    for pop in $pub_ops; do # (run sets op)
        for t in 1 2; do
            pre="env"
            run direct "$pop" "$t" "$softhsm" cmk
            pre="env CMKP11_CONF=$tmp/cmkp11.conf"
            run cmkp11 "$pop" "$t" "$cmkp11_so" local
            run openssl "openssl-$pop" "$t" "$cmkp11_so" local
        done
    done
}
r=1
while [ "$r" -le "$rounds" ] && [ "$only_pub" = yes ]; do
    pub_round
    r=$((r + 1))
done
while [ "$r" -le "$rounds" ] && [ "$seal_only" = yes ]; do
    gcm_round
    seal_round
    r=$((r + 1))
done
while [ "$r" -le "$rounds" ]; do
    for op in $ops; do
        for t in 1 2; do
            pre="env"
            run direct "$op" "$t" "$softhsm" cmk
            pre="env CMKP11_CONF=$tmp/cmkp11.conf"
            run cmkp11 "$op" "$t" "$cmkp11_so" local
            pre=$proxy_run
            run proxy "$op" "$t" "$proxy_so" cmk
        done
    done
    pre="env CMKP11_CONF=$tmp/cmkp11.conf"
    for t in 1 2; do
        run cmkp11 unwrap-sha256 "$t" "$cmkp11_so" local
    done
    pub_round
    gcm_round
    seal_round
    r=$((r + 1))
done
[ -z "$raw" ] || cp "$results" "$raw"

# Medians per (module, op, threads), then the tables.
median() { # median NAME OP THREADS COLUMN (5: ops/s, 6: ops per CPU second)
    awk -v n="$1" -v o="$2" -v t="$3" -v c="$4" \
        '$2 == n && $3 == o && $4 == t { print $c }' "$results" |
        sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print "nan";
              else if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
rmedian() { # rmedian NAME OP NAME2 OP2 THREADS COLUMN: the median over the
    # rounds of each round's NAME OP / NAME2 OP2 (measured next to each
    # other, in the same conditions)
    awk -v a="$1 $2 $5" -v b="$3 $4 $5" -v c="$6" '
        { k = $2 " " $3 " " $4 }
        k == a { x[$1] = $c } k == b { y[$1] = $c }
        END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' \
        "$results" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print "nan";
              else if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
seal_table() {
    echo
    echo "sealing: 64 KiB AES-256-GCM segments (segments/s; per CPU second), and $seal_mib MiB (MB/s; per CPU second), $seal_threads threads by default:"
    printf '%-32s %12s %12s\n' "" wall cpu
    for row in "direct gcm-64k 1" "direct gcm-64k $seal_threads" \
        "direct gcm-64k-mp 1" "direct gcm-64k-mp $seal_threads" \
        "direct gcm-file 1" "direct gcm-file $seal_threads" \
        "cmkp11 gcm-64k 1" "openssl openssl-gcm-64k 1" \
        "directfile seal 1" "directfile seal $seal_threads" \
        "sealtool seal 1" "sealtool seal $seal_threads" \
        "sealtool unseal 1" "sealtool unseal $seal_threads" \
        "opensslenc seal 1"; do
        # shellcheck disable=SC2086 # three words
        set -- $row
        printf '%-32s %12.0f %12.0f\n' "$1 $2 --threads $3" \
            "$(median "$1" "$2" "$3" 5)" "$(median "$1" "$2" "$3" 6)"
    done
    # The lower token's loop in memory: the faster of one call and parts.
    best() { # best THREADS COLUMN
        awk -v a="$(median direct gcm-64k "$1" "$2")" \
            -v b="$(median direct gcm-64k-mp "$1" "$2")" \
            'BEGIN { print (a > b ? a : b) }'
    }
    for col in 5 6; do
        awk -v c="$(median cmkp11 gcm-64k 1 "$col")" \
            -v m1="$(best 1 "$col")" -v mn="$(best "$seal_threads" "$col")" \
            -v f1="$(median direct gcm-file 1 "$col")" \
            -v fn="$(median direct gcm-file "$seal_threads" "$col")" \
            -v j1="$(median directfile seal 1 "$col")" \
            -v jn="$(median directfile seal "$seal_threads" "$col")" \
            -v s1="$(median sealtool seal 1 "$col")" \
            -v sn="$(median sealtool seal "$seal_threads" "$col")" \
            -v u1="$(median sealtool unseal 1 "$col")" \
            -v un="$(median sealtool unseal "$seal_threads" "$col")" \
            -v o="$(median opensslenc seal 1 "$col")" -v n="$seal_threads" \
            -v q1="$(rmedian sealtool seal directfile seal 1 "$col")" \
            -v qn="$(rmedian sealtool seal directfile seal "$seal_threads" "$col")" \
            -v what="$([ "$col" = 5 ] && echo "wall clock" || echo "per CPU second")" '
        function line(name, v1, vn) { # a tool row over the baselines
            printf "  %-6s --threads %d: /file job %.3f, /file loop %.3f, /loop in memory %.3f, /openssl enc %.3f; --threads 1: %.3f, %.3f, %.3f, %.3f\n",
                name, n, vn / jn, vn / (fn * seg), vn / (mn * seg), vn / o,
                v1 / j1, v1 / (f1 * seg), v1 / (m1 * seg), v1 / o
        }
        BEGIN {
            seg = 65536 / 1e6
            printf "%s: gcm-64k cmkp11/direct (the faster loop) %.3f\n", what, c / m1
            line("seal", s1, sn)
            line("unseal", u1, un)
            printf "  seal ÷ file job, the median of the rounds\047 ratios: --threads %d %.3f, --threads 1 %.3f\n", n, qn, q1
            if (what == "wall clock") {
                # The bar (issue 24): seal >= 0.9 x the lower token own
                # AES-GCM over the same file at the same number of
                # threads (both whole processes; the median of the
                # rounds, each measuring both side by side), >= 0.5 x
                # openssl enc.
                r1 = q1; rn = qn; ro = sn / o
                v1 = r1 >= 0.9 ? "PASS" : "FAIL"
                vn = rn >= 0.9 ? "PASS" : "FAIL"
                vo = ro >= 0.5 ? "PASS" : "FAIL"
                printf "seal bar (wall clock): /the lower token\047s file job, 1 thread %.3f %s, %d threads %.3f %s; /openssl enc %.3f %s\n",
                    r1, v1, n, rn, vn, ro, vo
            } }'
    done
}
pub_table() { # pub_table COLUMN
    verdict=PASS
    for op in $pub_ops; do
        for t in 1 2; do
            d=$(median direct "$op" "$t" "$1")
            c=$(median cmkp11 "$op" "$t" "$1")
            o=$(median openssl "openssl-$op" "$t" "$1")
            line=$(awk -v op="$op" -v t="$t" -v d="$d" -v c="$c" -v o="$o" 'BEGIN {
                rd = c / d; ro = c / o; od = o / d
                need = od < 2.0 ? 0.9 * od : 2.0
                ok = (rd >= need && ro >= 0.9) ? "PASS" : "FAIL"
                printf "%-14s %7d %9.0f %9.0f %9.0f %8.3f %8.3f %8.3f  %s", op, t, d, c, o, rd, ro, od, ok
            }')
            echo "$line"
            case $line in *FAIL) verdict=FAIL ;; esac
        done
    done
    echo "BAR=$verdict"
}
pub_tables() { # both, and their bars into $tmp/pub5 and $tmp/pub6
    echo
    echo "public-key operations (bar: cmkp11/openssl >= 0.9, cmkp11/direct >= 2.0 or, where openssl/direct is under 2.0, >= 0.9 x openssl/direct):"
    for col in 5 6; do
        [ "$col" = 5 ] && echo "ops/s (wall clock):" || echo "ops per CPU second:"
        printf '%-14s %7s %9s %9s %9s %8s %8s %8s  %s\n' op threads direct cmkp11 \
            openssl cmk/dir cmk/ssl ssl/dir bar
        pub_table "$col" >"$tmp/pub$col"
        grep -v '^BAR=' "$tmp/pub$col"
    done
}
pub_bars() {
    echo "public-key bar:"
    echo "  ops/s:               $(sed -n 's/^BAR=//p' "$tmp/pub5")"
    echo "  ops per CPU second:  $(sed -n 's/^BAR=//p' "$tmp/pub6")"
}
if [ "$seal_only" = yes ]; then
    echo
    echo "load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
    seal_table
    exit 0
fi
if [ "$only_pub" = yes ]; then
    echo
    echo "RSA-2048, median of $rounds rounds of ${seconds}s, $(nproc) CPUs"
    echo "load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
    pub_tables
    echo
    pub_bars
    exit 0
fi
table() { # table COLUMN: prints the rows, then BAR=PASS|FAIL
    verdict=PASS
    for op in $ops; do
        for t in 1 2; do
            d=$(median direct "$op" "$t" "$1")
            c=$(median cmkp11 "$op" "$t" "$1")
            p=$(median proxy "$op" "$t" "$1")
            line=$(awk -v op="$op" -v t="$t" -v d="$d" -v c="$c" -v p="$p" 'BEGIN {
                rc = c / d; rp = p / d
                ok = (rc >= 0.97 && rc >= rp - 0.02) ? "PASS" : "FAIL"
                printf "%-14s %7d %9.0f %9.0f %9.0f %8.3f %8.3f  %s", op, t, d, c, p, rc, rp, ok
            }')
            echo "$line"
            case $line in *FAIL) verdict=FAIL ;; esac
        done
    done
    echo "BAR=$verdict"
}
header() {
    printf '%-14s %7s %9s %9s %9s %8s %8s  %s\n' op threads direct cmkp11 \
        proxy cmk/dir prx/dir bar
}

echo
echo "RSA-2048, median of $rounds rounds of ${seconds}s, $(nproc) CPUs"
echo "load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "ops/s (wall clock):"
header
table 5 >"$tmp/wall"
grep -v '^BAR=' "$tmp/wall"
for t in 1 2; do
    printf '%-14s %7d %9s %9.0f %9s\n' unwrap-sha256 "$t" - \
        "$(median cmkp11 unwrap-sha256 "$t" 5)" -
done
echo
echo "ops per CPU second (less sensitive to other load on the machine):"
header
table 6 >"$tmp/cpu"
grep -v '^BAR=' "$tmp/cpu"
for t in 1 2; do
    printf '%-14s %7d %9s %9.0f %9s\n' unwrap-sha256 "$t" - \
        "$(median cmkp11 unwrap-sha256 "$t" 6)" -
done
pub_tables
seal_table
echo
echo "bar (cmkp11/direct >= 0.97 and >= proxy/direct - 0.02 on every row):"
echo "  ops/s:               $(sed -n 's/^BAR=//p' "$tmp/wall")"
echo "  ops per CPU second:  $(sed -n 's/^BAR=//p' "$tmp/cpu")"
pub_bars
exit 0
