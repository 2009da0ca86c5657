/*
 * A hash map from unsigned long keys (handles) to pointers. Not locked: the
 * owner serialises access.
 */
#ifndef CMKP11_HMAP_H
#define CMKP11_HMAP_H

#include <stdbool.h>
#include <stddef.h>

struct hmap;

struct hmap_iter {
    const struct hmap *map;
    size_t pos;
};

/* value_free (may be NULL) is called on values the map drops. */
struct hmap *hmap_new(void (*value_free)(void *));
void hmap_free(struct hmap *m); /* NULL is fine; frees remaining values */
/* Inserts or replaces (the replaced value is freed). -1 on ENOMEM. */
int hmap_put(struct hmap *m, unsigned long key, void *value);
void *hmap_get(const struct hmap *m, unsigned long key);
/* Removes the key and returns its value without freeing it (NULL if absent). */
void *hmap_take(struct hmap *m, unsigned long key);
/* Removes the key and frees its value. Returns true if it was present. */
bool hmap_remove(struct hmap *m, unsigned long key);
size_t hmap_count(const struct hmap *m);
/* Iteration; the map must not change during it, except through
 * hmap_iter_remove on the current entry. */
void hmap_iter_init(struct hmap_iter *it, const struct hmap *m);
bool hmap_iter_next(struct hmap_iter *it, unsigned long *key, void **value);
/* Removes the entry hmap_iter_next last returned and frees its value; m is
 * the map being iterated (writable). Returns true if an entry was removed. */
bool hmap_iter_remove(struct hmap_iter *it, struct hmap *m);

#endif
