#!/bin/sh
# Does a SoftHSM token survive processes killed (SIGKILL) while they log
# in and use it? (issue 18, docs/hsm.md)
#
#   scripts/softhsm-kill.sh [-n ROUNDS] [-s STORES]
#
# For each object store in STORES ("file db" by default; one this SoftHSM
# build lacks is reported and skipped) a private token is made with
# tests/softhsm-init.sh, then ROUNDS (100) times a process is started that
# loops over C_Login, a signature and C_Logout on it, and is killed with
# SIGKILL after a random 0-400 ms. After each round the token must still be
# there, log in, and hold its five key pairs; a round that finds it lost
# is counted and the token restored from a copy. Two kinds of process:
#   softhsm  SoftHSM directly: a lower C_Login each loop;
#   cmkp11   cmkp11 over the token (no pin-file): one lower C_Login per
#            process, the module's own login after that.
# Prints one line per store and process: rounds, tokens lost. Not part of
# make check (it takes minutes).
set -eu

rounds=100
stores="file db"
while getopts n:s:h opt; do
    case $opt in
    n) rounds=$OPTARG ;;
    s) stores=$OPTARG ;;
    *)
        echo "usage: $0 [-n ROUNDS] [-s STORES]" >&2
        exit 2
        ;;
    esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
softhsm=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$softhsm" ] || { echo "softhsm-kill: $softhsm is missing" >&2; exit 1; }
if [ ! -f Makefile ]; then
    [ -x configure ] || autoreconf -fi
    ./configure --enable-strict
fi
make -j2 cmkp11.la >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cmkp11-kill.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# The process that is killed: argv = MODULE; loops until killed.
cat >"$tmp/victim.py" <<'EOT'
import sys
import PyKCS11 as P
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
slot = lib.getSlotList(tokenPresent=True)[0]
s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
while True:
    s.login("1234")
    k = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY),
                       (P.CKA_LABEL, "kek")])[0]
    s.sign(k, b"x" * 32, P.Mechanism(P.CKM_SHA256_RSA_PKCS))
    s.logout()
EOT
# Exit 0 if the token "cmk" is there, logs in and holds five key pairs.
cat >"$tmp/check.py" <<'EOT'
import sys
import PyKCS11 as P
lib = P.PyKCS11Lib()
lib.load(sys.argv[1])
slots = [x for x in lib.getSlotList(tokenPresent=True)
         if lib.getTokenInfo(x).label.strip() == "cmk"]
s = lib.openSession(slots[0], P.CKF_SERIAL_SESSION)
s.login("1234")
n = len(s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY)]))
sys.exit(0 if n == 5 else 1)
EOT

for store in $stores; do
    dir=$tmp/$store
    if ! SOFTHSM_OBJECTSTORE=$store sh tests/softhsm-init.sh "$dir" \
        >"$tmp/init.log" 2>&1; then
        echo "$store: not supported by this SoftHSM build ($(grep -m1 -i error "$tmp/init.log" || :))"
        continue
    fi
    SOFTHSM2_CONF=$dir/softhsm2.conf
    export SOFTHSM2_CONF
    cp -a "$dir/tokens" "$dir/tokens.good"
    cat >"$dir/cmkp11.conf" <<EOT
[cmkp11]
log-level = error

[token local]
backend = hsm
module = $softhsm
token-label = cmk
EOT
    for via in softhsm cmkp11; do
        module=$softhsm
        [ "$via" = softhsm ] || module=$top/.libs/cmkp11.so
        lost=0
        i=0
        while [ "$i" -lt "$rounds" ]; do
            i=$((i + 1))
            CMKP11_CONF=$dir/cmkp11.conf /usr/bin/python3 "$tmp/victim.py" \
                "$module" >/dev/null 2>&1 &
            pid=$!
            ms=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
            sleep "$(printf '0.%03d' $((ms % 400)))"
            kill -KILL "$pid" 2>/dev/null || :
            wait "$pid" 2>/dev/null || :
            if ! /usr/bin/python3 "$tmp/check.py" "$softhsm" >/dev/null 2>&1; then
                lost=$((lost + 1))
                rm -rf "$dir/tokens"
                cp -a "$dir/tokens.good" "$dir/tokens"
            fi
        done
        echo "$store store, $via: $rounds rounds, token lost $lost times"
    done
done
