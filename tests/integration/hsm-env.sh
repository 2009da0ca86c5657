# Shared set-up for the consumer tests on the hsm back end, sourced after
# tests/lib.sh:
#   hsm_setup NAME   makes a private directory $tmp (removed at exit), a
#                    SoftHSM token in $tmp/softhsm (tests/softhsm-init.sh)
#                    and $tmp/cmkp11.conf (mode 0600) with one token "local";
#                    exports SOFTHSM2_CONF and CMKP11_CONF.
#   as_user CMD...   runs CMD as an unprivileged user ($run_uid) with
#                    HOME=$uhome when the test runs as root, so that p11-kit
#                    reads per-user module files; as is, otherwise.
#   user_dir NAME    makes $uhome (a copy of what the user needs) for as_user.
# The user PIN of the test token is in $PIN; nothing prints it.
: "${top_builddir:=.}"
: "${top_srcdir:=.}"
: "${CMKP11_MODULE:=$top_builddir/.libs/cmkp11.so}"
PIN=1234
SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so
tmp=""
uhome=""

cleanup_dirs() {
    [ -n "$tmp" ] && rm -rf "$tmp"
    [ -n "$uhome" ] && rm -rf "$uhome"
}
trap cleanup_dirs EXIT
trap 'exit 1' HUP INT TERM

need() { # need TOOL... : skip the whole test unless each is installed
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip_all "$t is not installed"
    done
}

write_conf() { # write_conf FILE [EXTRA-TOKEN-LINES]
    cat >"$1" <<EOT
[cmkp11]
log-level = error

[token local]
backend = hsm
module = $SOFTHSM_MODULE
token-label = cmk
$2
EOT
    chmod 0600 "$1"
}

hsm_setup() {
    [ -f "$SOFTHSM_MODULE" ] || skip_all "SoftHSMv2 is not installed"
    need softhsm2-util pkcs11-tool
    tmp=$(mktemp -d "$PWD/tmp-$1-XXXXXX") || exit 99
    sh "$top_srcdir/tests/softhsm-init.sh" "$tmp/softhsm" >"$tmp/init.log" 2>&1
    case $? in
    0) ;;
    77) skip_all "softhsm-init.sh: $(cat "$tmp/init.log")" ;;
    *) echo "Bail out! softhsm-init.sh failed: $(cat "$tmp/init.log")"; exit 99 ;;
    esac
    SOFTHSM2_CONF=$tmp/softhsm/softhsm2.conf
    export SOFTHSM2_CONF
    write_conf "$tmp/cmkp11.conf" "${2:-}"
    CMKP11_CONF=$tmp/cmkp11.conf
    export CMKP11_CONF
}

# The user for p11-kit's per-user files: p11-kit ignores them as root.
run_uid=$(id -u)
run_user=$(id -un)
if [ "$run_uid" -eq 0 ]; then
    run_user=nobody
    run_uid=$(id -u nobody 2>/dev/null) || run_uid=""
fi

user_dir() { # user_dir NAME: a home for as_user, with a SoftHSM token and
    # cmkp11 of its own (the user must read and write the token files)
    [ -n "$run_uid" ] || skip_all "no unprivileged user to run p11-kit as"
    uhome=$(mktemp -d "${TMPDIR:-/tmp}/cmkp11-$1-XXXXXX") || exit 99
    chmod 0755 "$uhome"
    cp "$CMKP11_MODULE" "$uhome/cmkp11.so"
    cp -r "$tmp/softhsm" "$uhome/softhsm"
    sed "s#$tmp/softhsm#$uhome/softhsm#" "$tmp/softhsm/softhsm2.conf" \
        >"$uhome/softhsm/softhsm2.conf"
    write_conf "$uhome/cmkp11.conf"
    mkdir -p "$uhome/.config/pkcs11/modules"
    # The module file users install, with absolute paths.
    sed -e "s#^module:.*#module: $uhome/cmkp11.so#" \
        "$top_srcdir/conf/cmkp11.module" >"$uhome/.config/pkcs11/modules/cmkp11.module"
    echo "x-init-reserved: conf=$uhome/cmkp11.conf" \
        >>"$uhome/.config/pkcs11/modules/cmkp11.module"
    # Only cmkp11's view of the token: the system's softhsm2.module would
    # add SoftHSM's own slot for the lower token.
    printf 'disable-in: p11-kit, p11tool, pkcs11-tool\n' \
        >"$uhome/.config/pkcs11/modules/softhsm2.module"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R "$run_uid" "$uhome"
    fi
}

as_user() {
    if [ "$(id -u)" -eq 0 ]; then
        setpriv --reuid="$run_uid" --regid="$(id -g "$run_user")" --clear-groups \
            env -u CMKP11_CONF -u XDG_RUNTIME_DIR -u P11_KIT_SERVER_ADDRESS \
            HOME="$uhome" XDG_CONFIG_HOME="$uhome/.config" \
            SOFTHSM2_CONF="$uhome/softhsm/softhsm2.conf" "$@"
    else
        env -u CMKP11_CONF -u XDG_RUNTIME_DIR -u P11_KIT_SERVER_ADDRESS \
            HOME="$uhome" XDG_CONFIG_HOME="$uhome/.config" \
            SOFTHSM2_CONF="$uhome/softhsm/softhsm2.conf" "$@"
    fi
}
