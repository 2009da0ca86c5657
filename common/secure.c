/*
 * Secrets in memory and on disk.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <fcntl.h>
#include <malloc.h>
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

/*
 * Small secrets (keys, PINs, tokens, wrapped and unwrapped key material)
 * come from one region that is locked in RAM once and kept out of core
 * dumps, in size classes with free lists: no system call per allocation,
 * and freeing one secret never unlocks the page of another. Larger
 * buffers come from the heap and are wiped when freed.
 */
#define POOL_SIZE    (512 * 1024)
#define POOL_CLASSES 8 /* 32, 64, ... 4096 bytes */
#define POOL_MIN     32

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static unsigned char *pool, *pool_next;
static void *free_list[POOL_CLASSES];

static void pool_init(void)
{
    void *p = mmap(NULL, POOL_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        return;
    /* Best effort: RLIMIT_MEMLOCK may be small; then the pages may swap. */
    (void)mlock(p, POOL_SIZE);
#ifdef MADV_DONTDUMP
    (void)madvise(p, POOL_SIZE, MADV_DONTDUMP);
#endif
    pool = pool_next = p;
}

static int size_class(size_t len)
{
    size_t size = POOL_MIN;
    int c = 0;

    while (size < len && c < POOL_CLASSES) {
        size <<= 1;
        c++;
    }
    return c < POOL_CLASSES ? c : -1;
}

static bool in_pool(const void *p)
{
    return pool != NULL && (const unsigned char *)p >= pool &&
           (const unsigned char *)p < pool + POOL_SIZE;
}

int secure_in_pool(const void *p)
{
    return in_pool(p);
}

void secure_atfork_prepare(void)
{
    pthread_mutex_lock(&pool_lock);
}

void secure_atfork_release(void)
{
    pthread_mutex_unlock(&pool_lock);
}

/* Each pooled chunk starts with a header naming its class, so a free
 * with a different length cannot put it on the wrong list. */
#define POOL_HEADER 16

void *secure_alloc(size_t len)
{
    int c = size_class((len ? len : 1) + POOL_HEADER);
    unsigned char *p = NULL;

    pthread_once(&pool_once, pool_init);
    if (c >= 0 && pool != NULL) {
        size_t size = (size_t)POOL_MIN << c;
        pthread_mutex_lock(&pool_lock);
        if (free_list[c] != NULL) {
            p = free_list[c];
            free_list[c] = *(void **)p;
        } else if (pool_next + size <= pool + POOL_SIZE) {
            p = pool_next;
            pool_next += size;
        }
        pthread_mutex_unlock(&pool_lock);
        if (p != NULL) {
            memset(p, 0, size);
            p[0] = (unsigned char)c;
            return p + POOL_HEADER;
        }
    }
    /* Too large, or the region is used up. */
    return calloc(1, len ? len : 1);
}

/* A pooled chunk's size less its header; a heap block's usable size (at
 * least what was asked for, by malloc_usable_size(3)). */
size_t secure_size(const void *ptr)
{
    const unsigned char *p = ptr;

    if (p == NULL)
        return 0;
    if (in_pool(p))
        return ((size_t)POOL_MIN << p[-POOL_HEADER]) - POOL_HEADER;
    return malloc_usable_size((void *)p);
}

void secure_free(void *ptr)
{
    unsigned char *p = ptr;

    if (p == NULL)
        return;
    if (in_pool(p)) {
        int c;
        p -= POOL_HEADER;
        c = p[0];
        secure_zero(p, (size_t)POOL_MIN << c);
        pthread_mutex_lock(&pool_lock);
        *(void **)p = free_list[c];
        free_list[c] = p;
        pthread_mutex_unlock(&pool_lock);
        return;
    }
    /* The heap fallback of secure_alloc, or a malloc'd buffer that held a
     * secret: the whole block is wiped, whatever was asked for. */
    secure_zero(p, malloc_usable_size(p));
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

static int check_fd(int fd, const char *path, bool secret, char *err,
                    size_t errlen)
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
    if (secret && (st.st_mode & 004) != 0) {
        snprintf(err, errlen,
                 "%s: readable by others (mode 0%03o); refusing a secret "
                 "others can read (chmod o-r; group read is allowed)",
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

int secure_check_fd(int fd, const char *path, char *err, size_t errlen)
{
    return check_fd(fd, path, false, err, errlen);
}

static int read_file(const char *path, int strip, bool secret, char **buf,
                     size_t *len, char *err, size_t errlen)
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
    if (check_fd(fd, path, secret, err, errlen) < 0)
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

    *buf = data;
    *len = used;
    data = NULL;
    ret = 0;

out:
    secure_free(data);
    if (fd >= 0)
        close(fd);
    return ret;
}

int secure_read_file(const char *path, int strip, char **buf, size_t *len,
                     char *err, size_t errlen)
{
    return read_file(path, strip, false, buf, len, err, errlen);
}

int secure_read_secret_file(const char *path, int strip, char **buf,
                            size_t *len, char *err, size_t errlen)
{
    return read_file(path, strip, true, buf, len, err, errlen);
}
