#!/bin/sh
# Every C file is formatted as .clang-format says.
. "$top_srcdir/tests/lib.sh"
command -v clang-format >/dev/null 2>&1 || skip_all "clang-format is not installed"
cd "$top_srcdir" || exit 99
for f in $(find common module provider tests bench tools -name '*.[ch]' 2>/dev/null | sort); do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1
    ok $? "$f is clang-formatted"
done
# Providers see the provider contract only (docs/architecture.md): of
# module/, provider.h and provider-util.h; else common/ and their own.
bad=
for f in $(find provider -name '*.[ch]' | sort); do
    for h in $(sed -n 's/^#include "\(.*\)"$/\1/p' "$f"); do
        case $h in
        config.h | provider.h | provider-util.h) ;;
        *) [ -f "common/$h" ] || [ -f "$(dirname "$f")/$h" ] ||
            bad="$bad $f:$h" ;;
        esac
    done
done
[ -z "$bad" ]
ok $? "providers include no front-end header:${bad:- none}"
# Every vendor attribute has its name in the logs (common/names.c, made
# by scripts/gen-names.sh from pkcs11.h and common/compat.h).
bad=
for n in $(sed -n 's/^#define \(CKA_CMK_[A-Z0-9_]*\) .*/\1/p' common/compat.h); do
    [ "$n" = CKA_CMK_BASE ] || grep -q "\"$n\"" common/names.c || bad="$bad $n"
done
[ -z "$bad" ]
ok $? "common/names.c names every CKA_CMK_ attribute (scripts/gen-names.sh):${bad:- none}"
done_testing
