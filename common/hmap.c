/*
 * Hash map from unsigned long to pointer: open addressing with linear
 * probing. Removal leaves a tombstone, so nothing moves while an iteration
 * removes entries; tombstones are dropped when the table is rebuilt.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>

#include "hmap.h"

#define HMAP_MIN_SLOTS 16

enum slot_state {
    SLOT_EMPTY = 0,
    SLOT_FULL,
    SLOT_DELETED,
};

struct slot {
    unsigned long key;
    void *value;
    unsigned char state;
};

struct hmap {
    struct slot *slots;
    size_t n_slots; /* a power of two */
    size_t count;   /* full slots */
    size_t used;    /* full and deleted slots */
    void (*value_free)(void *);
};

static size_t hash_key(unsigned long key)
{
    uint64_t x = (uint64_t)key;

    /* A 64-bit finaliser: handles are often sequential, and linear
     * probing needs them spread out. */
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return (size_t)x;
}

struct hmap *hmap_new(void (*value_free)(void *))
{
    struct hmap *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    m->slots = calloc(HMAP_MIN_SLOTS, sizeof(*m->slots));
    if (m->slots == NULL) {
        free(m);
        return NULL;
    }
    m->n_slots = HMAP_MIN_SLOTS;
    m->value_free = value_free;
    return m;
}

void hmap_free(struct hmap *m)
{
    size_t i;

    if (m == NULL)
        return;
    if (m->value_free != NULL) {
        for (i = 0; i < m->n_slots; i++) {
            if (m->slots[i].state == SLOT_FULL)
                m->value_free(m->slots[i].value);
        }
    }
    free(m->slots);
    free(m);
}

/* The slot holding key, or NULL. */
static struct slot *find_slot(const struct hmap *m, unsigned long key)
{
    size_t mask = m->n_slots - 1;
    size_t i = hash_key(key) & mask;
    size_t n;

    for (n = 0; n < m->n_slots; n++, i = (i + 1) & mask) {
        struct slot *s = &m->slots[i];
        if (s->state == SLOT_EMPTY)
            return NULL;
        if (s->state == SLOT_FULL && s->key == key)
            return s;
    }
    return NULL;
}

/* Rebuilds the table with n_slots slots, dropping tombstones. */
static int rehash(struct hmap *m, size_t n_slots)
{
    struct slot *old = m->slots, *slots;
    size_t old_n = m->n_slots, i, j, mask = n_slots - 1;

    slots = calloc(n_slots, sizeof(*slots));
    if (slots == NULL)
        return -1;
    for (i = 0; i < old_n; i++) {
        if (old[i].state != SLOT_FULL)
            continue;
        j = hash_key(old[i].key) & mask;
        while (slots[j].state != SLOT_EMPTY)
            j = (j + 1) & mask;
        slots[j] = old[i];
    }
    free(old);
    m->slots = slots;
    m->n_slots = n_slots;
    m->used = m->count;
    return 0;
}

int hmap_put(struct hmap *m, unsigned long key, void *value)
{
    struct slot *s, *tomb = NULL;
    size_t mask, i, n;

    if (m == NULL)
        return -1;
    s = find_slot(m, key);
    if (s != NULL) {
        void *old = s->value;
        s->value = value;
        if (old != value && m->value_free != NULL)
            m->value_free(old);
        return 0;
    }

    /* Keep the load (tombstones included) under three quarters. */
    if ((m->used + 1) * 4 > m->n_slots * 3) {
        size_t n_slots = m->n_slots;
        if ((m->count + 1) * 2 > n_slots)
            n_slots *= 2;
        if (n_slots < m->n_slots || rehash(m, n_slots) < 0)
            return -1;
    }

    mask = m->n_slots - 1;
    i = hash_key(key) & mask;
    for (n = 0; n < m->n_slots; n++, i = (i + 1) & mask) {
        s = &m->slots[i];
        if (s->state == SLOT_DELETED && tomb == NULL)
            tomb = s;
        if (s->state == SLOT_EMPTY)
            break;
    }
    if (tomb != NULL) {
        s = tomb;
    } else {
        if (s->state != SLOT_EMPTY)
            return -1; /* cannot happen: the load is bounded */
        m->used++;
    }
    s->key = key;
    s->value = value;
    s->state = SLOT_FULL;
    m->count++;
    return 0;
}

void *hmap_get(const struct hmap *m, unsigned long key)
{
    struct slot *s;

    if (m == NULL)
        return NULL;
    s = find_slot(m, key);
    return s != NULL ? s->value : NULL;
}

static void *take_slot(struct hmap *m, struct slot *s)
{
    void *value = s->value;

    s->value = NULL;
    s->state = SLOT_DELETED;
    m->count--;
    return value;
}

void *hmap_take(struct hmap *m, unsigned long key)
{
    struct slot *s;

    if (m == NULL)
        return NULL;
    s = find_slot(m, key);
    return s != NULL ? take_slot(m, s) : NULL;
}

bool hmap_remove(struct hmap *m, unsigned long key)
{
    struct slot *s;
    void *value;

    if (m == NULL)
        return false;
    s = find_slot(m, key);
    if (s == NULL)
        return false;
    value = take_slot(m, s);
    if (m->value_free != NULL)
        m->value_free(value);
    return true;
}

size_t hmap_count(const struct hmap *m)
{
    return m != NULL ? m->count : 0;
}

void hmap_iter_init(struct hmap_iter *it, const struct hmap *m)
{
    it->map = m;
    it->pos = 0;
}

bool hmap_iter_next(struct hmap_iter *it, unsigned long *key, void **value)
{
    const struct hmap *m = it->map;

    if (m == NULL)
        return false;
    while (it->pos < m->n_slots) {
        const struct slot *s = &m->slots[it->pos++];
        if (s->state != SLOT_FULL)
            continue;
        if (key != NULL)
            *key = s->key;
        if (value != NULL)
            *value = s->value;
        return true;
    }
    return false;
}

bool hmap_iter_remove(struct hmap_iter *it, struct hmap *m)
{
    struct slot *s;
    void *value;

    if (m == NULL || it->map != m || it->pos == 0 || it->pos > m->n_slots)
        return false;
    s = &m->slots[it->pos - 1];
    if (s->state != SLOT_FULL)
        return false;
    value = take_slot(m, s);
    if (m->value_free != NULL)
        m->value_free(value);
    return true;
}
