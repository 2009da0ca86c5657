#!/bin/sh
# Builds and tests cmkp11 in a Debian 13 ("trixie") root: p11-kit 0.25,
# OpenSSL 3.5, pkcs11-provider.
#
#   scripts/check-debian13.sh [test|deb] [RESULTS-DIR]
#
# The root is made with debootstrap from Debian's archive (the mirror apt
# uses here) and kept in $CMKP11_CI_CACHE/trixie (default
# /var/cache/cmkp11-ci); it is made anew when it is missing or broken. The
# build dependencies are installed in it with apt and a copy of the source
# tree goes in. Then
#   test (default): a build with --enable-strict, the unit tests, the hsm
#        integration tests, one keyvault test and the OpenSSL provider checks
#        (tests/integration/test-ossl-provider.py);
#   deb: scripts/test-deb.sh: the Debian packages built, checked with
#        lintian, installed with apt, used, purged.
# The .trs results go to RESULTS-DIR (default ci-results/debian13-PHASE)
# where scripts/check.sh counts them.
#
# Exit 0 when everything passed, 1 on a failure, 77 (skipped) when the
# machine cannot make a chroot (not root, no debootstrap) outside CI; with
# CI=true that is a failure.
set -u
cd "$(dirname "$0")/.." || exit 2
top=$(pwd)
phase=${1:-test}
case $phase in
test | deb) ;;
*) echo "usage: $0 [test|deb] [RESULTS-DIR]" >&2; exit 2 ;;
esac
results=${2:-$top/ci-results/debian13-$phase}
cache=${CMKP11_CI_CACHE:-/var/cache/cmkp11-ci}
root=$cache/trixie
suite=trixie

# What the build and the tests need inside the root.
pkgs="build-essential autoconf automake libtool pkg-config libssl-dev
libp11-kit-dev p11-kit p11-kit-modules libcurl4-openssl-dev libjson-c-dev
softhsm2 opensc openssl pkcs11-provider python3 python3-cryptography python3-pykcs11
ca-certificates debhelper dh-autoreconf lintian"
# The tests run there: the unit tests, the hsm back end and its consumers,
# keyvault tests on the emulator, and the OpenSSL 3 provider. Not
# test-hsm-pkcs1: Debian 13's SoftHSM removes PKCS#1 v1.5 padding through
# OpenSSL 3.5, which rejects implicitly itself, so the oracle that
# "rsa-pkcs1-decrypt = allow" passes through is not there to check.
tests="tests/unit/test-common tests/unit/test-config tests/unit/test-init
tests/unit/test-slots tests/unit/test-sessions tests/unit/test-objects
tests/unit/test-keys tests/unit/test-crypto tests/unit/test-pkcs1
tests/unit/test-threads
tests/unit/test-fork tests/integration/test-hsm
tests/integration/test-hsm-threads tests/integration/test-hsm-fork
tests/integration/test-hsm-exit tests/integration/test-hsm-certs
tests/test-exports.sh tests/integration/test-pkcs11-tool.sh
tests/integration/test-p11-kit.sh tests/integration/test-versions.py
tests/integration/test-keyvault-keygen.py tests/integration/test-ossl-provider.py"

cannot() {
    if [ "${CI:-}" = true ]; then
        echo "debian13: FAILED: $* (CI must build on Debian 13)" >&2
        exit 1
    fi
    echo "debian13: skipped: $*"
    exit 77
}
[ "$(id -u)" = 0 ] || cannot "not root, cannot make a chroot"
command -v debootstrap >/dev/null 2>&1 || cannot "debootstrap is not installed"
command -v unshare >/dev/null 2>&1 || cannot "unshare (util-linux) is not installed"
command -v flock >/dev/null 2>&1 || cannot "flock (util-linux) is not installed"

# Everything below runs in a private mount namespace, so the mounts of the
# root vanish with the last process even if this script is killed; the trap
# unmounts them on every ordinary exit as well.
if [ -z "${CMKP11_DEB13_NS:-}" ]; then
    mkdir -p "$cache" || exit 1
    CMKP11_DEB13_NS=1 exec unshare --mount --propagation private \
        flock -w 3600 "$cache/trixie.lock" sh "$0" "$phase" "$results"
fi

# The mirror apt already uses here (deb.debian.org unless configured).
mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d 2>/dev/null | grep -v security | head -1 | tr -d ' ')
mirror=${mirror:-http://deb.debian.org/debian}

mounted=""
# shellcheck disable=SC2317
umount_all() {
    for m in $mounted; do
        umount -l "$m" 2>/dev/null
    done
    mounted=""
}
trap umount_all EXIT
trap 'exit 1' HUP INT TERM
mount_in() { # mount_in TARGET MOUNT-ARGS...
    t=$root$1
    shift
    mkdir -p "$t" && mount "$@" "$t" || return 1
    mounted="$t $mounted"
}

now() { date +%s; }
t0=$(now)

healthy() {
    [ -f "$root/.cmkp11-root" ] && [ -x "$root/usr/bin/apt-get" ] &&
        chroot "$root" /bin/true 2>/dev/null
}
if ! healthy; then
    echo "debian13: making a $suite root in $root from $mirror"
    rm -rf "$root"
    if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" \
        >"$cache/debootstrap.log" 2>&1; then
        tail -n 30 "$cache/debootstrap.log"
        echo "debian13: FAILED: debootstrap"
        rm -rf "$root"
        exit 1
    fi
    touch "$root/.cmkp11-root"
fi
echo "debian13: root ready ($(($(now) - t0)) s)"

mount_in /proc -t proc proc || exit 1
mount_in /dev --bind /dev || exit 1
mount_in /dev/pts -t devpts -o newinstance,ptmxmode=0666 devpts || exit 1
mount_in /dev/shm -t tmpfs -o mode=1777 tmpfs || exit 1
mount_in /tmp -t tmpfs -o mode=1777 tmpfs || exit 1
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# Install what is missing (apt-get update only then).
# shellcheck disable=SC2016,SC2086
in_root dpkg-query -W -f='${db:Status-Status}\n' $pkgs >"$cache/status" 2>&1
if [ $? -ne 0 ] || grep -qvx installed "$cache/status"; then
    echo "debian13: installing build dependencies"
    # shellcheck disable=SC2086
    if ! { in_root apt-get update -qq &&
        in_root apt-get install -y -qq --no-install-recommends $pkgs; } \
        >"$cache/apt.log" 2>&1; then
        tail -n 30 "$cache/apt.log"
        echo "debian13: FAILED: apt-get install in the root"
        exit 1
    fi
    in_root apt-get clean
fi
echo "debian13: dependencies ready ($(($(now) - t0)) s)"
# shellcheck disable=SC2016
in_root sh -c 'echo "p11-kit $(pkg-config --modversion p11-kit-1), $(openssl version)"'

# A fresh copy of the source tree: the files git knows, as they are now.
rm -rf "$root/build"
mkdir -p "$root/build/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z -c -o --exclude-standard |
        tar --null -T - -cf - | tar -xf - -C "$root/build/src"
else
    tar --exclude=./ci-results -cf - . | tar -xf - -C "$root/build/src"
fi
rm -rf "$results"
mkdir -p "$results"
jobs=$(nproc 2>/dev/null || echo 2)

if [ "$phase" = deb ]; then
    # TAP from the script, read by automake's driver on this side.
    # shellcheck disable=SC2016
    env AM_TAP_AWK="${AWK:-awk}" sh "$top/build-aux/tap-driver.sh" \
        --test-name debian13/test-deb.sh --log-file "$results/test-deb.log" \
        --trs-file "$results/test-deb.trs" --color-tests no -- \
        chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 sh /build/src/scripts/test-deb.sh
    status=$?
    grep -E '^(not ok|Bail out)' "$results/test-deb.log"
    echo "debian13: packages built, checked, installed and purged ($(($(now) - t0)) s)"
    [ "$status" -eq 0 ] && ! grep -q '^:test-result: [FE]' "$results/test-deb.trs"
    exit $?
fi

# shellcheck disable=SC2086
in_root sh -c "cd /build/src && autoreconf -fi >/dev/null 2>&1 &&
    ./configure --enable-strict -q >/build/configure.log 2>&1 &&
    make -j$jobs >/build/build.log 2>&1" ||
    { tail -n 40 "$root/build/configure.log" "$root/build/build.log" 2>/dev/null
      echo "debian13: FAILED: build with --enable-strict"; exit 1; }
echo "debian13: built ($(($(now) - t0)) s)"

# shellcheck disable=SC2086
in_root sh -c "cd /build/src && make -j$jobs check TESTS='$(echo $tests)'" \
    >"$root/build/check.log" 2>&1
status=$?
grep -E '^(PASS|FAIL|ERROR|XPASS|SKIP):' "$root/build/check.log" | grep -v '^PASS'

# Hand the results (and the logs) to scripts/check.sh.
(cd "$root/build/src" && find tests -name '*.trs' -o -name '*.log' -path 'tests/*') |
    while read -r f; do
        mkdir -p "$results/$(dirname "$f")"
        cp "$root/build/src/$f" "$results/$f"
    done
n=$(find "$results" -name '*.trs' | wc -l)
echo "debian13: $n test programs ran ($(($(now) - t0)) s)"
if [ "$status" -ne 0 ]; then
    tail -n 20 "$root/build/check.log"
    echo "debian13: FAILED: make check"
    exit 1
fi
exit 0
