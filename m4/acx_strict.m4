dnl ACX_STRICT: the warning set we build with; --enable-strict adds -Werror.
AC_DEFUN([ACX_STRICT], [
  AC_ARG_ENABLE([strict],
    [AS_HELP_STRING([--enable-strict], [treat warnings as errors])],
    [], [enable_strict=no])
  WARN_CFLAGS="-Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes -Wmissing-declarations -Winit-self -Wwrite-strings -Wno-unused-parameter -Wno-missing-field-initializers -Werror=implicit-function-declaration -fno-common"
  AS_IF([test "x$enable_strict" = "xyes"], [WARN_CFLAGS="$WARN_CFLAGS -Werror"])
  AC_SUBST([WARN_CFLAGS])
])
