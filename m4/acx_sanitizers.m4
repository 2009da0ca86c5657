dnl ACX_SANITIZERS: --enable-asan and --enable-ubsan build with the sanitizers.
AC_DEFUN([ACX_SANITIZERS], [
  SAN_CFLAGS=""
  AC_ARG_ENABLE([asan],
    [AS_HELP_STRING([--enable-asan], [build with AddressSanitizer])],
    [], [enable_asan=no])
  AC_ARG_ENABLE([ubsan],
    [AS_HELP_STRING([--enable-ubsan], [build with UndefinedBehaviorSanitizer])],
    [], [enable_ubsan=no])
  AS_IF([test "x$enable_asan" = "xyes"],
    [SAN_CFLAGS="$SAN_CFLAGS -fsanitize=address -fno-omit-frame-pointer"])
  AS_IF([test "x$enable_ubsan" = "xyes"],
    [SAN_CFLAGS="$SAN_CFLAGS -fsanitize=undefined -fno-sanitize-recover=undefined"])
  AC_SUBST([SAN_CFLAGS])
  AM_CONDITIONAL([WITH_ASAN], [test "x$enable_asan" = "xyes"])
])
