/* The unwrap cache of the keyvault back end (cache.c). */
#ifndef CMKP11_KV_CACHE_H
#define CMKP11_KV_CACHE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kv_cache;

#define KV_CACHE_HIT    1  /* out holds the value */
#define KV_CACHE_MISS   0  /* ask the vault, then kv_cache_put or _abandon */
#define KV_CACHE_BYPASS -1 /* full, or waited too long: ask, don't store */

struct kv_cache *kv_cache_new(long ttl_ms, size_t max);
void kv_cache_free(struct kv_cache *c);
/* The entry's identity: SHA-256 of (version, algorithm, wrapped bytes). */
void kv_cache_id(const void *version, const char *alg, const unsigned char *in,
                 size_t len, unsigned char id[32]);
/* past_ttl: an entry past its TTL is still served (offline-grace). */
int kv_cache_get(struct kv_cache *c, const unsigned char id[32],
                 const void *version, int64_t deadline_ms, bool past_ttl,
                 unsigned char *out, size_t *outlen);
void kv_cache_put(struct kv_cache *c, const unsigned char id[32],
                  const unsigned char *value, size_t len);
void kv_cache_abandon(struct kv_cache *c, const unsigned char id[32]);
/* Instead of kv_cache_abandon, when the vault was unreachable
 * (offline-grace): an expired value of the entry is served (KV_CACHE_HIT);
 * without one, the entry is abandoned (KV_CACHE_MISS). */
int kv_cache_stale(struct kv_cache *c, const unsigned char id[32],
                   unsigned char *out, size_t *outlen);
/* Drops the ready entries whose version matches (all with match NULL). */
size_t kv_cache_drop(struct kv_cache *c, bool (*match)(const void *, void *),
                     void *arg);

#endif
