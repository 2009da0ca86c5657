#!/bin/sh
# Installs what cmkp11 needs to build and test on Debian 12 (as root).
set -e
pkgs="build-essential autoconf automake libtool pkg-config libssl-dev
libp11-kit-dev p11-kit p11-kit-modules libcurl4-openssl-dev libjson-c-dev softhsm2 opensc
gnutls-bin libengine-pkcs11-openssl python3-cryptography python3-azure
python3-pykcs11 openjdk-17-jdk-headless clang-format openssl xz-utils git
nginx curl debootstrap clang valgrind"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi
