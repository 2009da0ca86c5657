/*
 * A small TAP harness for the C tests: each check prints one "ok"/"not ok"
 * line; test_done() prints the plan and returns the exit status.
 */
#ifndef CMKP11_TEST_H
#define CMKP11_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int test_count;
extern int test_failed;

void test_ok(int cond, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void test_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int test_done(void);
/* Makes the next check a TAP TODO item: a known bug, written down with
 * the reason. Its failure is expected (XFAIL); its passing is XPASS, which
 * fails the run until the TODO goes. */
void test_todo(const char *reason);
/* Skip the whole program (a TAP skip plan, then exit). */
void test_skip_all(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
/* Bail out: an error that makes the rest meaningless. */
void test_bail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* A loop count for load tests: N, or N / 10 (at least 1) when
 * CMKP11_TEST_LIGHT is set, as the valgrind and thread-sanitizer gates do
 * (scripts/check-sanitizers.sh), where each operation costs 20 to 50 times
 * more. */
long test_scale(long n);

#define ok(cond, ...) test_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* Compares two CK_RVs and names both on failure. */
void test_rv(unsigned long got, unsigned long want, const char *file, int line,
             const char *what);
#define is_rv(got, want, what) test_rv((got), (want), __FILE__, __LINE__, what)

#define is_num(got, want, ...)                                                 \
    do {                                                                       \
        unsigned long long g_ = (unsigned long long)(got);                     \
        unsigned long long w_ = (unsigned long long)(want);                    \
        test_ok(g_ == w_, __FILE__, __LINE__, __VA_ARGS__);                    \
        if (g_ != w_)                                                          \
            test_diag("  got %llu, want %llu", g_, w_);                        \
    } while (0)

#endif
