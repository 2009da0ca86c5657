/*
 * Handling of secrets: wiping, locked allocations, constant-time helpers,
 * and reading secret or configuration files that nobody else may write.
 */
#ifndef CMKP11_SECURE_H
#define CMKP11_SECURE_H

#include <stddef.h>
#include <stdint.h>

/* Wipes len bytes in a way the compiler may not remove. */
void secure_zero(void *p, size_t len);
/*
 * Wipes the whole allocation then frees it; p may be NULL. p comes from
 * secure_alloc(), secure_dup() or secure_read_file(); a buffer from
 * malloc() that held a secret is taken too (its whole block is wiped).
 */
void secure_free(void *p);
/* How many bytes secure_free(p) wipes: at least what was allocated. */
size_t secure_size(const void *p);
/* Allocates zeroed memory that is locked in RAM where possible. Free with
 * secure_free(). */
void *secure_alloc(size_t len);
/* fork(): the pool's lock is taken before and released after, in the
 * parent and in the child, so the child finds the pool consistent. */
void secure_atfork_prepare(void);
void secure_atfork_release(void);
/* Whether p points into the locked pool (not the heap fallback). */
int secure_in_pool(const void *p);
/* Copies len bytes into a new secure allocation. */
void *secure_dup(const void *p, size_t len);

/* Constant-time helpers: masks are all ones (true) or zero (false). */
static inline unsigned ct_is_zero(unsigned long x)
{
    return (unsigned)(0 - (((~x & (x - 1)) >> (sizeof(x) * 8 - 1)) & 1));
}
static inline unsigned ct_eq(unsigned long a, unsigned long b)
{
    return ct_is_zero(a ^ b);
}
static inline unsigned long ct_select(unsigned mask, unsigned long a,
                                      unsigned long b)
{
    unsigned long m = (unsigned long)0 - (unsigned long)(mask & 1);
    return (a & m) | (b & ~m);
}
/* Constant-time comparison of two buffers of the same length: 0 if equal. */
int ct_memcmp(const void *a, const void *b, size_t len);

/*
 * Reads a whole file that must be a regular file, not writable by group or
 * others, and owned by root or the current user. With strip, trailing
 * newlines and carriage returns are removed. The result is NUL-terminated,
 * in secure memory; free it with secure_free(buf).
 * On failure returns -1 and writes a reason (no file contents) to err.
 */
int secure_read_file(const char *path, int strip, char **buf, size_t *len,
                     char *err, size_t errlen);
/*
 * The same for a file holding a secret (a PIN, a client secret, a client
 * certificate with its key, a password, a bearer token): also refused when
 * others can read it (mode & 004), naming the file and its mode. Group
 * read is allowed, for a worker user (www-data) in the file's group.
 */
int secure_read_secret_file(const char *path, int strip, char **buf,
                            size_t *len, char *err, size_t errlen);
/* The permission checks of secure_read_file alone, on an open descriptor. */
int secure_check_fd(int fd, const char *path, char *err, size_t errlen);

#endif
