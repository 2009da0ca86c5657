/*
 * The unwrap cache (unwrap-cache = SECONDS): for vaults that throttle, the
 * results of unwraps, keyed by a SHA-256 of (key version, algorithm,
 * wrapped bytes). Values live in locked memory and are wiped when they
 * leave. Concurrent identical unwraps are coalesced: the first caller asks
 * the vault, the others wait for its answer.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "kv-cache.h"
#include "secure.h"

struct entry {
    unsigned char id[32];
    const void *version;
    unsigned char *value; /* secure; NULL while pending */
    size_t len;
    int64_t expires_ms;
    bool pending;
    bool used;
};

struct kv_cache {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    long ttl_ms;
    size_t max;
    struct entry *e;
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct kv_cache *kv_cache_new(long ttl_ms, size_t max)
{
    struct kv_cache *c = calloc(1, sizeof(*c));
    pthread_condattr_t ca;

    if (c == NULL)
        return NULL;
    c->e = calloc(max, sizeof(*c->e));
    if (c->e == NULL) {
        free(c);
        return NULL;
    }
    c->ttl_ms = ttl_ms;
    c->max = max;
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    return c;
}

static void clear_unlocked(struct entry *e)
{
    secure_free(e->value);
    memset(e, 0, sizeof(*e));
}

void kv_cache_free(struct kv_cache *c)
{
    size_t i;

    if (c == NULL)
        return;
    for (i = 0; i < c->max; i++)
        clear_unlocked(&c->e[i]);
    free(c->e);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void kv_cache_id(const void *version, const char *alg, const unsigned char *in,
                 size_t len, unsigned char id[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 32;

    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, &version, sizeof(version)) != 1 ||
        EVP_DigestUpdate(md, alg, strlen(alg) + 1) != 1 ||
        EVP_DigestUpdate(md, in, len) != 1 ||
        EVP_DigestFinal_ex(md, id, &n) != 1)
        memset(id, 0, 32);
    EVP_MD_CTX_free(md);
}

static struct entry *find_unlocked(struct kv_cache *c, const unsigned char *id)
{
    size_t i;

    for (i = 0; i < c->max; i++)
        if (c->e[i].used && memcmp(c->e[i].id, id, 32) == 0)
            return &c->e[i];
    return NULL;
}

/* A free slot, or else the ready entry closest to expiry. Expired entries
 * stay while there is room: offline-grace serves them when the vault is
 * unreachable. */
static struct entry *slot_unlocked(struct kv_cache *c)
{
    struct entry *victim = NULL;
    size_t i;

    for (i = 0; i < c->max; i++) {
        struct entry *e = &c->e[i];
        if (!e->used)
            return e;
        if (!e->pending &&
            (victim == NULL || e->expires_ms < victim->expires_ms))
            victim = e;
    }
    if (victim != NULL)
        clear_unlocked(victim);
    return victim;
}

int kv_cache_get(struct kv_cache *c, const unsigned char id[32],
                 const void *version, int64_t deadline_ms, bool past_ttl,
                 unsigned char *out, size_t *outlen)
{
    struct entry *e;
    int r = KV_CACHE_BYPASS;

    pthread_mutex_lock(&c->lock);
    for (;;) {
        int64_t now = now_ms();
        e = find_unlocked(c, id);
        if (e != NULL && !e->pending && e->expires_ms <= now && !past_ttl) {
            /* Expired: this caller asks the vault again; the old value
             * stays for kv_cache_stale if the vault is unreachable. */
            e->pending = true;
            r = KV_CACHE_MISS;
            break;
        }
        if (e != NULL && !e->pending) {
            if (e->len <= *outlen) {
                memcpy(out, e->value, e->len);
                *outlen = e->len;
                r = KV_CACHE_HIT;
            }
            break;
        }
        if (e != NULL) {
            /* Another thread is asking the vault for the same unwrap. */
            struct timespec ts;
            if (now >= deadline_ms)
                break;
            ts.tv_sec = deadline_ms / 1000;
            ts.tv_nsec = (deadline_ms % 1000) * 1000000L;
            pthread_cond_timedwait(&c->cond, &c->lock, &ts);
            continue;
        }
        e = slot_unlocked(c);
        if (e != NULL) {
            e->used = true;
            e->pending = true;
            memcpy(e->id, id, 32);
            e->version = version;
            r = KV_CACHE_MISS;
        }
        break;
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

void kv_cache_put(struct kv_cache *c, const unsigned char id[32],
                  const unsigned char *value, size_t len)
{
    struct entry *e;

    pthread_mutex_lock(&c->lock);
    e = find_unlocked(c, id);
    if (e != NULL && e->pending) {
        secure_free(e->value);
        e->value = secure_dup(value, len ? len : 1);
        e->len = len;
        e->pending = false;
        e->expires_ms = now_ms() + c->ttl_ms;
        if (e->value == NULL)
            clear_unlocked(e);
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

void kv_cache_abandon(struct kv_cache *c, const unsigned char id[32])
{
    struct entry *e;

    pthread_mutex_lock(&c->lock);
    e = find_unlocked(c, id);
    if (e != NULL && e->pending)
        clear_unlocked(e);
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

int kv_cache_stale(struct kv_cache *c, const unsigned char id[32],
                   unsigned char *out, size_t *outlen)
{
    struct entry *e;
    int r = KV_CACHE_MISS;

    pthread_mutex_lock(&c->lock);
    e = find_unlocked(c, id);
    if (e != NULL && e->pending && e->value != NULL && e->len <= *outlen) {
        memcpy(out, e->value, e->len);
        *outlen = e->len;
        e->pending = false; /* still expired: asked again next time */
        r = KV_CACHE_HIT;
    } else if (e != NULL && e->pending) {
        clear_unlocked(e);
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    return r;
}

size_t kv_cache_drop(struct kv_cache *c, bool (*match)(const void *, void *),
                     void *arg)
{
    size_t i, n = 0;

    pthread_mutex_lock(&c->lock);
    for (i = 0; i < c->max; i++) {
        struct entry *e = &c->e[i];
        if (e->used && !e->pending &&
            (match == NULL || match(e->version, arg))) {
            clear_unlocked(e);
            n++;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}
