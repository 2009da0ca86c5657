#include "config.h"

#include <stdarg.h>

#include "test.h"
#include "debug.h"

int test_count;
int test_failed;
static const char *todo;

void test_ok(int cond, const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    test_count++;
    printf("%s %d - ", cond ? "ok" : "not ok", test_count);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (todo != NULL)
        printf(" # TODO %s", todo);
    printf("\n");
    if (!cond) {
        if (todo == NULL)
            test_failed++;
        printf("#   at %s:%d\n", file, line);
    }
    todo = NULL;
    fflush(stdout);
}

void test_todo(const char *reason)
{
    todo = reason;
}

void test_skip(const char *fmt, ...)
{
    va_list ap;

    test_count++;
    printf("ok %d # SKIP ", test_count);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

void test_diag(const char *fmt, ...)
{
    va_list ap;

    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

void test_rv(unsigned long got, unsigned long want, const char *file, int line,
             const char *what)
{
    test_ok(got == want, file, line, "%s is %s", what, cmk_rv_name(want));
    if (got != want)
        test_diag("  got %s (0x%lx)", cmk_rv_name(got), got);
}

long test_scale(long n)
{
    const char *light = getenv("CMKP11_TEST_LIGHT");

    if (light == NULL || *light == '\0')
        return n;
    return n / 10 > 0 ? n / 10 : 1;
}

int test_done(void)
{
    printf("1..%d\n", test_count);
    fflush(stdout);
    return test_failed ? 1 : 0;
}

void test_skip_all(const char *fmt, ...)
{
    va_list ap;

    printf("1..0 # SKIP ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(0); /* the TAP driver reads the skip from the plan */
}

void test_bail(const char *fmt, ...)
{
    va_list ap;

    printf("Bail out! ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(99);
}
