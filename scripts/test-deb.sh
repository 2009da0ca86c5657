#!/bin/sh
# The Debian packages, as a user gets them: builds them from a copy of the
# source tree (the tree itself stays clean), checks them with lintian,
# installs cmkp11 with apt, uses it through p11-kit and pkcs11-tool on a
# SoftHSM token, purges it and checks that nothing is left; then the same for
# cmkp11-kvemu. Prints TAP.
#
#   scripts/test-deb.sh
#
# Run as root on a Debian system that may get packages installed and purged
# (scripts/check-debian13.sh runs it in its Debian 13 root), with the build
# dependencies, lintian, softhsm2, opensc and python3-pykcs11 installed.
set -u
src=$(cd "$(dirname "$0")/.." && pwd)
n=0
failed=0
ok() { # ok STATUS DESCRIPTION
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $n - $2"
    else
        echo "not ok $n - $2"
        failed=$((failed + 1))
    fi
}
diag() { sed 's/^/# /' "$@"; }
bail() { echo "Bail out! $*"; exit 99; }
[ "$(id -u)" = 0 ] || bail "installing packages needs root"

work=$(mktemp -d "${TMPDIR:-/tmp}/cmkp11-deb-XXXXXX") || bail "mktemp"
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM
export DEBIAN_FRONTEND=noninteractive

# A copy of the tree: the files git knows when there is a git tree, all
# otherwise.
mkdir "$work/cmkp11"
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z -c -o --exclude-standard |
        tar --null -T - -cf -) | tar -xf - -C "$work/cmkp11"
else
    cp -a "$src/." "$work/cmkp11/"
fi || bail "cannot copy the source tree"

(cd "$work/cmkp11" && dpkg-buildpackage -us -uc -b -j"$(nproc)") \
    >"$work/build.log" 2>&1
rc=$?
ok $rc "dpkg-buildpackage -us -uc -b"
[ $rc -eq 0 ] || { tail -n 40 "$work/build.log" | diag; bail "no package"; }
deb=$(ls "$work"/cmkp11_*.deb)
kvdeb=$(ls "$work"/cmkp11-kvemu_*_all.deb)

lintian --fail-on error "$work"/cmkp11_*.changes >"$work/lintian.log" 2>&1
rc=$?
ok $rc "lintian reports no error"
grep -E '^[EW]: ' "$work/lintian.log" | diag

dpkg-deb -c "$deb" | grep -q '^-rw------- root/root .* \./etc/cmkp11/cmkp11\.conf$'
ok $? "the example /etc/cmkp11/cmkp11.conf is mode 0600, owned by root"
dpkg-deb -f "$deb" >/dev/null && dpkg-deb --ctrl-tarfile "$deb" |
    tar -xOf - ./conffiles 2>/dev/null | grep -qx /etc/cmkp11/cmkp11.conf
ok $? "it is a conffile"

(cd "$work" && apt install -y "./$(basename "$deb")") >"$work/apt.log" 2>&1
rc=$?
ok $rc "apt install ./$(basename "$deb")"
[ $rc -eq 0 ] || tail -n 20 "$work/apt.log" | diag
dpkg -L cmkp11 >"$work/files" 2>/dev/null
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
module=/usr/lib/$multiarch/pkcs11/cmkp11.so
for f in "$module" /usr/share/p11-kit/modules/cmkp11.module /usr/bin/cmkp11-tool \
    /usr/share/man/man1/cmkp11-tool.1.gz /usr/share/man/man5/cmkp11.conf.5.gz \
    /usr/share/man/man8/cmkp11.8.gz /etc/cmkp11/cmkp11.conf; do
    [ -f "$f" ] && grep -qx "$f" "$work/files"
    ok $? "cmkp11 installs $f"
done
[ "$(stat -c %a /etc/cmkp11/cmkp11.conf 2>/dev/null)" = 600 ]
ok $? "/etc/cmkp11/cmkp11.conf is installed mode 0600"

# The installed example configuration names a SoftHSM token "cmk" through
# the token "local": make that token (tests/softhsm-init.sh) and use it.
sh "$src/tests/softhsm-init.sh" "$work/softhsm" >"$work/init.log" 2>&1 ||
    { diag "$work/init.log"; bail "softhsm-init.sh failed"; }
SOFTHSM2_CONF=$work/softhsm/softhsm2.conf
export SOFTHSM2_CONF

p11-kit list-modules >"$work/modules" 2>&1
ok $? "p11-kit list-modules exits 0"
# "cmkp11: PATH" before p11-kit 0.25, "module: cmkp11" from 0.25 on.
sed -n -e '/^cmkp11: /,/^[^ ]/p' -e '/^module: cmkp11$/,/^[^ ]/p' \
    "$work/modules" >"$work/entry"
grep -q "path: $module" "$work/entry" || grep -q "^cmkp11: $module" "$work/entry"
ok $? "p11-kit lists the module cmkp11 from its installed registration"
grep -q "token: local$" "$work/entry"
ok $? "with the token local of the installed configuration"
[ "$failed" -eq 0 ] || diag "$work/modules"

pkcs11-tool --module "$module" -L >"$work/slots" 2>&1
ok $? "pkcs11-tool --module $module -L exits 0"
grep -q "token label *: local$" "$work/slots" &&
    grep -q "token model *: SoftHSM v2" "$work/slots"
ok $? "it lists the SoftHSM-backed token local"
pkcs11-tool --module "$module" --token-label local --login --pin 1234 -O \
    >"$work/objects" 2>&1 && grep -q "label: *kek$" "$work/objects"
ok $? "pkcs11-tool lists the key kek through it"
cmkp11-tool list >"$work/list" 2>&1 && grep -q "kek" "$work/list"
ok $? "cmkp11-tool list (default module path) shows kek"
[ "$failed" -eq 0 ] || diag "$work/slots" "$work/objects" "$work/list"

apt-get purge -y cmkp11 >"$work/purge.log" 2>&1
ok $? "apt-get purge cmkp11"
st=$(dpkg-query -W -f='${db:Status-Status}' cmkp11 2>/dev/null)
[ -z "$st" ] || [ "$st" = not-installed ]
ok $? "dpkg no longer knows cmkp11"
left=""
while read -r f; do
    [ -f "$f" ] || [ -L "$f" ] && left="$left $f"
done <"$work/files"
[ -e /etc/cmkp11 ] && left="$left /etc/cmkp11"
[ -z "$left" ]
ok $? "nothing is left behind${left:+:$left}"
p11-kit list-modules 2>&1 | grep -q cmkp11
[ $? -ne 0 ]
ok $? "p11-kit no longer lists cmkp11"

(cd "$work" && apt install -y "./$(basename "$kvdeb")") >"$work/apt-kv.log" 2>&1
rc=$?
ok $rc "apt install ./$(basename "$kvdeb")"
cmkp11-kvemu --print-default-config >"$work/kvconf" 2>&1 &&
    grep -q '"vaults"' "$work/kvconf"
ok $? "cmkp11-kvemu --print-default-config prints the default configuration"
apt-get purge -y cmkp11-kvemu >"$work/purge-kv.log" 2>&1 &&
    [ ! -e /usr/share/cmkp11-kvemu ] && [ ! -e /usr/bin/cmkp11-kvemu ]
ok $? "apt-get purge cmkp11-kvemu leaves nothing behind"

echo "1..$n"
[ "$failed" -eq 0 ]
