#!/bin/sh
# Every C file is formatted as .clang-format says.
. "$top_srcdir/tests/lib.sh"
command -v clang-format >/dev/null 2>&1 || skip_all "clang-format is not installed"
cd "$top_srcdir" || exit 99
for f in $(find common module provider tests bench tools -name '*.[ch]' 2>/dev/null | sort); do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1
    ok $? "$f is clang-formatted"
done
done_testing
