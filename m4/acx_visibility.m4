dnl ACX_VISIBILITY: hide every symbol that is not marked for export.
AC_DEFUN([ACX_VISIBILITY], [
  VISIBILITY_CFLAGS="-fvisibility=hidden"
  AC_SUBST([VISIBILITY_CFLAGS])
])
