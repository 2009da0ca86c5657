dnl ACX_SANITIZERS: --enable-asan, --enable-ubsan and --enable-tsan build with
dnl the sanitizers.
AC_DEFUN([ACX_SANITIZERS], [
  SAN_CFLAGS=""
  AC_ARG_ENABLE([asan],
    [AS_HELP_STRING([--enable-asan], [build with AddressSanitizer])],
    [], [enable_asan=no])
  AC_ARG_ENABLE([ubsan],
    [AS_HELP_STRING([--enable-ubsan], [build with UndefinedBehaviorSanitizer])],
    [], [enable_ubsan=no])
  AC_ARG_ENABLE([tsan],
    [AS_HELP_STRING([--enable-tsan], [build with ThreadSanitizer (not with asan)])],
    [], [enable_tsan=no])
  AS_IF([test "x$enable_tsan" = "xyes" && test "x$enable_asan" = "xyes"],
    [AC_MSG_ERROR([--enable-tsan and --enable-asan cannot be combined])])
  AS_IF([test "x$enable_tsan" = "xyes"],
    [SAN_CFLAGS="$SAN_CFLAGS -fsanitize=thread -fno-omit-frame-pointer"])
  AS_IF([test "x$enable_asan" = "xyes"],
    [SAN_CFLAGS="$SAN_CFLAGS -fsanitize=address -fno-omit-frame-pointer"])
  AS_IF([test "x$enable_ubsan" = "xyes"],
    [SAN_CFLAGS="$SAN_CFLAGS -fsanitize=undefined -fno-sanitize-recover=undefined"])
  AC_SUBST([SAN_CFLAGS])
  AM_CONDITIONAL([WITH_ASAN], [test "x$enable_asan" = "xyes"])
])
