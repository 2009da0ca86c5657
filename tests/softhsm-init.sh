#!/bin/sh
# Creates a private SoftHSMv2 token for a test run:
#   softhsm-init.sh DIR
# writes DIR/softhsm2.conf and DIR/tokens/, a token "cmk" (user PIN 1234,
# SO PIN 12345678) holding RSA-2048 key pairs:
#   kek@01 (CKA_ID 01)  an older version of key "kek"
#   kek    (CKA_ID 02)  the current version of key "kek"
#   dec-only (10)       may decrypt but not unwrap
#   disabled (20)       a disabled version: no decrypt, no unwrap
#   unwrap-only (30)    may unwrap but not decrypt
# and DIR/env to source (SOFTHSM2_CONF, SOFTHSM_MODULE). SOFTHSM_OBJECTSTORE
# chooses SoftHSM's object store (file, the default, or db).
set -e
dir=$1
[ -n "$dir" ] || { echo "usage: $0 DIR" >&2; exit 2; }
module=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$module" ] || { echo "SoftHSMv2 is not installed ($module)" >&2; exit 77; }
command -v softhsm2-util >/dev/null || { echo "softhsm2-util is missing" >&2; exit 77; }
command -v pkcs11-tool >/dev/null || { echo "pkcs11-tool (opensc) is missing" >&2; exit 77; }
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
cat >"$dir/softhsm2.conf" <<EOT
directories.tokendir = $dir/tokens
objectstore.backend = ${SOFTHSM_OBJECTSTORE:-file}
log.level = ERROR
slots.removable = false
EOT
SOFTHSM2_CONF=$dir/softhsm2.conf
export SOFTHSM2_CONF
softhsm2-util --init-token --free --label cmk --so-pin 12345678 --pin 1234 >/dev/null
gen() { # gen LABEL ID [USAGE...]
    label=$1 id=$2
    shift 2
    pkcs11-tool --module "$module" --token-label cmk --login --pin 1234 \
        --keypairgen --key-type rsa:2048 --label "$label" --id "$id" "$@" >/dev/null 2>&1
}
gen kek@01 01
gen kek 02
gen dec-only 10
gen disabled 20
gen unwrap-only 30
# pkcs11-tool's --usage-* does not restrict generated pairs: set the usage
# flags through the token itself.
/usr/bin/python3 - "$module" <<'EOT'
import sys
import PyKCS11
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True)
        if lib.getTokenInfo(s).label.strip() == "cmk"][0]
s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
s.login("1234")
def priv(label):
    return s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                          (PyKCS11.CKA_LABEL, label)])[0]
s.setAttributeValue(priv("dec-only"), [(PyKCS11.CKA_UNWRAP, False)])
s.setAttributeValue(priv("disabled"), [(PyKCS11.CKA_UNWRAP, False),
                                       (PyKCS11.CKA_DECRYPT, False)])
s.setAttributeValue(priv("unwrap-only"), [(PyKCS11.CKA_DECRYPT, False)])
s.logout()
EOT
cat >"$dir/env" <<EOT
SOFTHSM2_CONF=$dir/softhsm2.conf; export SOFTHSM2_CONF
SOFTHSM_MODULE=$module; export SOFTHSM_MODULE
EOT
