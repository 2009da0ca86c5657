/*
 * Secrets in memory and on disk.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "secure.h"

/* Files larger than this are not secrets or configuration files. */
#define SECURE_FILE_MAX (1024 * 1024)

void secure_zero(void *p, size_t len)
{
    if (p == NULL || len == 0)
        return;
#ifdef HAVE_EXPLICIT_BZERO
    explicit_bzero(p, len);
#else
    OPENSSL_cleanse(p, len);
#endif
}

void *secure_alloc(size_t len)
{
    void *p;

    /* A zero-length secret still gets a unique, freeable pointer. */
    if (len == 0)
        len = 1;
    p = calloc(1, len);
    if (p == NULL)
        return NULL;
    /* Best effort: RLIMIT_MEMLOCK is often small, and a failure only means
     * the pages may be swapped. */
    (void)mlock(p, len);
    return p;
}

void secure_free(void *p, size_t len)
{
    if (p == NULL)
        return;
    if (len == 0)
        len = 1;
    secure_zero(p, len);
    (void)munlock(p, len);
    free(p);
}

void *secure_dup(const void *p, size_t len)
{
    void *q;

    if (p == NULL && len != 0)
        return NULL;
    q = secure_alloc(len);
    if (q != NULL && len != 0)
        memcpy(q, p, len);
    return q;
}

int ct_memcmp(const void *a, const void *b, size_t len)
{
    if (len == 0)
        return 0;
    return CRYPTO_memcmp(a, b, len) == 0 ? 0 : 1;
}

int secure_check_fd(int fd, const char *path, char *err, size_t errlen)
{
    struct stat st;

    if (path == NULL)
        path = "(file)";
    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file; refusing it", path);
        return -1;
    }
    if ((st.st_mode & 022) != 0) {
        snprintf(err, errlen,
                 "%s: writable by group or others (mode 0%03o); refusing it",
                 path, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "%s: owned by uid %lu, neither root nor the current user "
                 "(uid %lu); refusing it",
                 path, (unsigned long)st.st_uid, (unsigned long)geteuid());
        return -1;
    }
    if (st.st_size > SECURE_FILE_MAX) {
        snprintf(err, errlen, "%s: larger than %d bytes; refusing it", path,
                 SECURE_FILE_MAX);
        return -1;
    }
    return 0;
}

int secure_read_file(const char *path, int strip, char **buf, size_t *len,
                     char *err, size_t errlen)
{
    struct stat st;
    char *data = NULL;
    size_t cap = 0, used = 0;
    ssize_t n;
    int fd = -1;
    int ret = -1;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (path == NULL || buf == NULL || len == NULL) {
        snprintf(err, errlen, "(file): invalid arguments");
        return -1;
    }
    *buf = NULL;
    *len = 0;

    /* Symbolic links are followed on purpose (Kubernetes mounts secrets
     * through them); the checks apply to the file actually opened. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (secure_check_fd(fd, path, err, errlen) < 0)
        goto out;
    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }

    /* One byte more than the size, so growth since fstat is noticed. */
    cap = (size_t)st.st_size + 1;
    data = secure_alloc(cap + 1);
    if (data == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        if (used == cap) {
            snprintf(err, errlen, "%s: changed while being read", path);
            goto out;
        }
        n = read(fd, data + used, cap - used);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }

    if (strip) {
        while (used > 0 && (data[used - 1] == '\n' || data[used - 1] == '\r'))
            data[--used] = '\0';
    }
    data[used] = '\0';

    /* The caller frees with *len + 1: hand back an allocation of exactly
     * that size. */
    if (used + 1 != cap + 1) {
        char *exact = secure_dup(data, used + 1);
        if (exact == NULL) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto out;
        }
        secure_free(data, cap + 1);
        data = exact;
    }
    *buf = data;
    *len = used;
    data = NULL;
    ret = 0;

out:
    if (data != NULL)
        secure_free(data, cap + 1);
    if (fd >= 0)
        close(fd);
    return ret;
}
