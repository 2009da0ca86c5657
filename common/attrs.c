#include "config.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attrs.h"
#include "secure.h"

/* Attribute values live on the heap, each its own allocation until the
 * array is packed; they are wiped when they go. */
static void value_free(void *p, CK_ULONG len)
{
    if (p != NULL) {
        secure_zero(p, len);
        free(p);
    }
}

/*
 * Cells of packed arrays. A cell is one attribute (type and value); equal
 * ones are held once, counted, in a hash table, so that the two objects
 * of a key version, or the objects of many keys, keep one copy of what
 * they share: the flags and classes every object has, the modulus, the
 * SubjectPublicKeyInfo, the label and the vendor attributes of a version.
 * The table's lock is a leaf: nothing else is taken under it. Cells never
 * change once made: a packed array reads them without the lock.
 *
 * A modulus packed with its SubjectPublicKeyInfo, which holds the same
 * bytes, is a cell *inside* that one: its value points into the
 * SubjectPublicKeyInfo's, which it holds (counted) instead of a copy, so
 * a key's public key is held once.
 */
struct attr_cell {
    struct attr_cell *next; /* in its bucket */
    unsigned long refs;     /* under cells.lock for shared cells */
    bool shared;            /* in the table; else the array's own */
    bool inside;            /* value[] holds the outer cell, not the value */
    CK_ATTRIBUTE at;
    unsigned char value[];
};

/*
 * The small attributes of a packed array (values of at most a CK_ULONG:
 * flags, classes, sizes, empty values) are its *shape*: the vector of
 * their cells, held once for every packed array that has the same ones,
 * counted, in lists by hash under cells.lock. Objects of one kind share their
 * thirty-odd flags and hold one pointer to them. Shapes never change once
 * made either.
 */
#define SHAPE_LISTS 64

struct attr_shape {
    struct attr_shape *next;
    unsigned long refs; /* under cells.lock */
    size_t hash;
    CK_ULONG n;
    struct attr_cell *cells[];
};

static struct {
    pthread_mutex_t lock;
    struct attr_cell **bucket;
    size_t nbuckets, count;
    struct attr_shape *shapes[SHAPE_LISTS]; /* by hash */
} cells = {.lock = PTHREAD_MUTEX_INITIALIZER};

void attrs_atfork_prepare(void)
{
    pthread_mutex_lock(&cells.lock);
}

void attrs_atfork_release(void)
{
    pthread_mutex_unlock(&cells.lock);
}

size_t attrs_cells_count(void)
{
    size_t n;

    pthread_mutex_lock(&cells.lock);
    n = cells.count;
    pthread_mutex_unlock(&cells.lock);
    return n;
}

/* Values that may be secret are never shared: comparing them against
 * other arrays' values would make lookups depend on them. */
static bool type_secret(CK_ATTRIBUTE_TYPE type)
{
    switch (type) {
    case CKA_VALUE:
    case CKA_PRIVATE_EXPONENT:
    case CKA_PRIME_1:
    case CKA_PRIME_2:
    case CKA_EXPONENT_1:
    case CKA_EXPONENT_2:
    case CKA_COEFFICIENT:
        return true;
    default:
        return false;
    }
}

/* FNV-1a over the type and the value. */
static size_t cell_hash(CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len)
{
    const unsigned char *p = value;
    uint64_t h = 14695981039346656037ULL;
    CK_ULONG i;

    for (i = 0; i < sizeof(type); i++)
        h = (h ^ ((type >> (8 * i)) & 0xff)) * 1099511628211ULL;
    for (i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return (size_t)h;
}

static struct attr_cell *cell_new(CK_ATTRIBUTE_TYPE type, const void *value,
                                  CK_ULONG len, bool shared)
{
    struct attr_cell *c = malloc(sizeof(*c) + len);

    if (c == NULL)
        return NULL;
    c->next = NULL;
    c->refs = 1;
    c->shared = shared;
    c->inside = false;
    c->at.type = type;
    c->at.ulValueLen = len;
    c->at.pValue = NULL;
    if (len > 0) {
        memcpy(c->value, value, len);
        c->at.pValue = c->value;
    }
    return c;
}

/* Under cells.lock: a shared cell for at, whose value is the bytes at
 * offset off of outer's (a shared cell), which it holds. */
static struct attr_cell *cell_new_inside(const CK_ATTRIBUTE *at,
                                         struct attr_cell *outer, size_t off)
{
    struct attr_cell *c = malloc(sizeof(*c) + sizeof(outer));

    if (c == NULL)
        return NULL;
    c->next = NULL;
    c->refs = 1;
    c->shared = true;
    c->inside = true;
    c->at.type = at->type;
    c->at.ulValueLen = at->ulValueLen;
    c->at.pValue = (unsigned char *)outer->at.pValue + off;
    memcpy(c->value, &outer, sizeof(outer));
    outer->refs++;
    return c;
}

/* The cell an inside cell holds, or NULL. */
static struct attr_cell *cell_outer(const struct attr_cell *c)
{
    struct attr_cell *outer = NULL;

    if (c->inside)
        memcpy(&outer, c->value, sizeof(outer));
    return outer;
}

static void cell_free(struct attr_cell *c)
{
    size_t len = c->inside ? sizeof(struct attr_cell *) : c->at.ulValueLen;

    secure_zero(c, sizeof(*c) + len);
    free(c);
}

/* Under cells.lock: twice the buckets when the chains grow long. */
static void cells_grow_locked(void)
{
    size_t nb = cells.nbuckets ? cells.nbuckets * 2 : 1024, i;
    struct attr_cell **nv, *c, *next;

    if (cells.count < 2 * cells.nbuckets)
        return;
    nv = calloc(nb, sizeof(*nv));
    if (nv == NULL)
        return; /* longer chains, still correct */
    for (i = 0; i < cells.nbuckets; i++) {
        for (c = cells.bucket[i]; c != NULL; c = next) {
            size_t b =
                cell_hash(c->at.type, c->at.pValue, c->at.ulValueLen) % nb;
            next = c->next;
            c->next = nv[b];
            nv[b] = c;
        }
    }
    free(cells.bucket);
    cells.bucket = nv;
    cells.nbuckets = nb;
}

/* Where at's value lies in outer's (a shared cell), or SIZE_MAX. */
static size_t inside_offset(const CK_ATTRIBUTE *at,
                            const struct attr_cell *outer)
{
    const unsigned char *p;

    if (outer == NULL || !outer->shared || at->ulValueLen == 0 ||
        at->pValue == NULL)
        return SIZE_MAX;
    p = memmem(outer->at.pValue, outer->at.ulValueLen, at->pValue,
               at->ulValueLen);
    return p != NULL ? (size_t)(p - (const unsigned char *)outer->at.pValue)
                     : SIZE_MAX;
}

/* A counted reference to the cell for (type, value); a new one is made
 * inside outer when outer (if not NULL) holds the value. */
static struct attr_cell *cell_get(const CK_ATTRIBUTE *at,
                                  struct attr_cell *outer)
{
    size_t h, off;
    struct attr_cell *c;

    if (type_secret(at->type))
        return cell_new(at->type, at->pValue, at->ulValueLen, false);
    h = cell_hash(at->type, at->pValue, at->ulValueLen);
    pthread_mutex_lock(&cells.lock);
    cells_grow_locked();
    if (cells.nbuckets == 0) {
        pthread_mutex_unlock(&cells.lock);
        return NULL;
    }
    for (c = cells.bucket[h % cells.nbuckets]; c != NULL; c = c->next) {
        if (c->at.type == at->type && c->at.ulValueLen == at->ulValueLen &&
            (at->ulValueLen == 0 ||
             memcmp(c->at.pValue, at->pValue, at->ulValueLen) == 0)) {
            c->refs++;
            break;
        }
    }
    if (c == NULL) {
        off = inside_offset(at, outer);
        c = off != SIZE_MAX
                ? cell_new_inside(at, outer, off)
                : cell_new(at->type, at->pValue, at->ulValueLen, true);
        if (c != NULL) {
            c->next = cells.bucket[h % cells.nbuckets];
            cells.bucket[h % cells.nbuckets] = c;
            cells.count++;
        }
    }
    pthread_mutex_unlock(&cells.lock);
    return c;
}

static void cell_put(struct attr_cell *c)
{
    struct attr_cell **at, *outer;
    bool last;

    if (!c->shared) {
        cell_free(c);
        return;
    }
    pthread_mutex_lock(&cells.lock);
    last = --c->refs == 0;
    if (last) {
        size_t b = cell_hash(c->at.type, c->at.pValue, c->at.ulValueLen) %
                   cells.nbuckets;
        for (at = &cells.bucket[b]; *at != c; at = &(*at)->next)
            ;
        *at = c->next;
        if (--cells.count == 0) {
            /* Nothing packed is left (C_Finalize): no table either. */
            free(cells.bucket);
            cells.bucket = NULL;
            cells.nbuckets = 0;
        }
    }
    pthread_mutex_unlock(&cells.lock);
    if (!last)
        return;
    outer = cell_outer(c);
    cell_free(c);
    if (outer != NULL)
        cell_put(outer);
}

const CK_ATTRIBUTE *attrs_hold(CK_ATTRIBUTE_TYPE type, const void *value,
                               CK_ULONG len)
{
    CK_ATTRIBUTE at = {type, (void *)value, len};
    struct attr_cell *c;

    if (type_secret(type) || (len > 0 && value == NULL))
        return NULL;
    c = cell_get(&at, NULL);
    return c != NULL ? &c->at : NULL;
}

void attrs_release(const CK_ATTRIBUTE *held)
{
    if (held != NULL)
        cell_put((struct attr_cell *)((const unsigned char *)held -
                                      offsetof(struct attr_cell, at)));
}

/* Attributes that name an object (a short label, a key name) stay its
 * own, however small: in a shape they would make a shape per object. */
static bool type_names(CK_ATTRIBUTE_TYPE type)
{
    switch (type) {
    case CKA_LABEL:
    case CKA_ID:
    case CKA_APPLICATION:
    case CKA_OBJECT_ID:
    case CKA_CMK_KEY_NAME:
    case CKA_CMK_VERSION:
        return true;
    default:
        return false;
    }
}

/* Values that go in a shape. */
static bool cell_small(const struct attr_cell *c)
{
    return c->shared && c->at.ulValueLen <= sizeof(CK_ULONG) &&
           !type_names(c->at.type);
}

static size_t shape_hash(struct attr_cell *const *cv, CK_ULONG n)
{
    uint64_t h = 14695981039346656037ULL;
    CK_ULONG i;

    for (i = 0; i < n; i++)
        h = (h ^ (uintptr_t)cv[i]) * 1099511628211ULL;
    return (size_t)h;
}

/* The shape of the n cells cv, whose references it takes: an equal one
 * (and the references go back) or a new one. NULL on ENOMEM. */
static struct attr_shape *shape_get(struct attr_cell *const *cv, CK_ULONG n)
{
    size_t h = shape_hash(cv, n);
    struct attr_shape *sh;
    CK_ULONG i;

    pthread_mutex_lock(&cells.lock);
    for (sh = cells.shapes[h % SHAPE_LISTS]; sh != NULL; sh = sh->next)
        if (sh->hash == h && sh->n == n &&
            memcmp(sh->cells, cv, n * sizeof(*cv)) == 0)
            break;
    if (sh != NULL) {
        sh->refs++;
        /* The shape holds them too: none reaches 0. */
        for (i = 0; i < n; i++)
            cv[i]->refs--;
    } else {
        sh = malloc(sizeof(*sh) + n * sizeof(*cv));
        if (sh != NULL) {
            sh->refs = 1;
            sh->hash = h;
            sh->n = n;
            memcpy(sh->cells, cv, n * sizeof(*cv));
            sh->next = cells.shapes[h % SHAPE_LISTS];
            cells.shapes[h % SHAPE_LISTS] = sh;
        }
    }
    pthread_mutex_unlock(&cells.lock);
    return sh;
}

static void shape_put(struct attr_shape *sh)
{
    struct attr_shape **pp;
    bool last;
    CK_ULONG i;

    if (sh == NULL)
        return;
    pthread_mutex_lock(&cells.lock);
    last = --sh->refs == 0;
    if (last) {
        for (pp = &cells.shapes[sh->hash % SHAPE_LISTS]; *pp != sh;
             pp = &(*pp)->next)
            ;
        *pp = sh->next;
    }
    pthread_mutex_unlock(&cells.lock);
    if (!last)
        return;
    for (i = 0; i < sh->n; i++)
        cell_put(sh->cells[i]);
    free(sh);
}

/* The i-th attribute, packed (its own cells, then its shape's) or not. */
static CK_ATTRIBUTE *attrs_at(const struct attrs *a, CK_ULONG i)
{
    if (a->packed == 0)
        return &a->v[i];
    return i < a->own ? &a->cells[i]->at : &a->shape->cells[i - a->own]->at;
}

/*
 * A reserved array (attrs_reserve): the vector, then the values, each
 * at an offset aligned for a CK_ULONG, in one allocation, wiped whole
 * when it goes.
 */
#define BLOCK_ALIGN sizeof(CK_ULONG)

static size_t block_round(size_t n)
{
    return (n + BLOCK_ALIGN - 1) & ~(BLOCK_ALIGN - 1);
}

size_t attrs_value_room(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    size_t sum = 0, len;
    CK_ULONG i;

    for (i = 0; i < n; i++) {
        if (t[i].ulValueLen > SIZE_MAX / 2)
            return SIZE_MAX;
        len = block_round(t[i].ulValueLen);
        if (sum > SIZE_MAX / 2 - len)
            return SIZE_MAX;
        sum += len;
    }
    return sum;
}

int attrs_reserve(struct attrs *a, CK_ULONG n, size_t value_bytes)
{
    size_t head, size;
    void *b;

    if (a->n != 0 || a->v != NULL || a->packed > 0 || n == 0 ||
        n > SIZE_MAX / 4 / sizeof(CK_ATTRIBUTE) || value_bytes > SIZE_MAX / 4)
        return -1;
    head = block_round(n * sizeof(CK_ATTRIBUTE));
    size = head + block_round(value_bytes);
    b = malloc(size);
    if (b == NULL)
        return -1;
    a->v = b;
    a->alloc = n;
    a->block = size;
    a->block_used = head;
    return 0;
}

/* Room in the block for a value of len bytes, or NULL. */
static void *block_room(struct attrs *a, CK_ULONG len)
{
    void *p;

    if (len > a->block - a->block_used)
        return NULL;
    p = (unsigned char *)a->v + a->block_used;
    a->block_used += block_round(len);
    if (a->block_used > a->block)
        a->block_used = a->block;
    return p;
}

/* Frees an unpacked array's values (wiped) and vector. */
static void values_release(struct attrs *a)
{
    CK_ULONG i;

    if (a->block > 0) {
        secure_zero(a->v, a->block);
        free(a->v);
        a->block = a->block_used = 0;
    } else {
        for (i = 0; i < a->n; i++)
            value_free(a->v[i].pValue, a->v[i].ulValueLen);
        free(a->v);
    }
    a->v = NULL;
}

static void cells_release(struct attrs *a)
{
    CK_ULONG i;

    for (i = 0; i < a->own; i++)
        cell_put(a->cells[i]);
    free(a->cells);
    shape_put(a->shape);
    a->cells = NULL;
    a->shape = NULL;
    a->own = 0;
    a->packed = 0;
}

/* Back to one allocation per value and a vector with room, before a
 * change to a packed array or one that does not fit its block. */
static int attrs_unpack(struct attrs *a)
{
    CK_ATTRIBUTE *nv;
    CK_ULONG i, na = a->n < 8 ? 8 : a->n + a->n / 2;

    if (a->packed == 0 && a->block == 0)
        return 0;
    nv = calloc(na, sizeof(*nv));
    if (nv == NULL)
        return -1;
    for (i = 0; i < a->n; i++) {
        const CK_ATTRIBUTE *at = attrs_at(a, i);

        nv[i] = *at;
        nv[i].pValue = NULL;
        if (at->ulValueLen == 0 || at->pValue == NULL)
            continue;
        nv[i].pValue = malloc(at->ulValueLen);
        if (nv[i].pValue == NULL) {
            while (i-- > 0)
                value_free(nv[i].pValue, nv[i].ulValueLen);
            free(nv);
            return -1;
        }
        memcpy(nv[i].pValue, at->pValue, at->ulValueLen);
    }
    if (a->packed > 0)
        cells_release(a);
    else
        values_release(a);
    a->v = nv;
    a->alloc = na;
    return 0;
}

void attrs_init(struct attrs *a)
{
    memset(a, 0, sizeof(*a));
}

void attrs_clear(struct attrs *a)
{
    if (a == NULL)
        return;
    if (a->packed > 0)
        cells_release(a);
    else
        values_release(a);
    attrs_init(a);
}

CK_ATTRIBUTE *attrs_find(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG i;

    if (a->packed == 0) {
        for (i = 0; i < a->n; i++)
            if (a->v[i].type == type)
                return &a->v[i];
        return NULL;
    }
    for (i = 0; i < a->own; i++)
        if (a->cells[i]->at.type == type)
            return &a->cells[i]->at;
    for (i = 0; a->shape != NULL && i < a->shape->n; i++)
        if (a->shape->cells[i]->at.type == type)
            return &a->shape->cells[i]->at;
    return NULL;
}

/* attrs_set in a reserved array with room for it: 1, else 0. */
static int block_set(struct attrs *a, CK_ATTRIBUTE_TYPE type, const void *value,
                     CK_ULONG len)
{
    CK_ATTRIBUTE *at = attrs_find(a, type);
    void *copy = NULL;

    if (at == NULL && a->n == a->alloc)
        return 0;
    if (len > 0) {
        copy = block_room(a, len);
        if (copy == NULL)
            return 0;
        memcpy(copy, value, len);
    }
    if (at == NULL)
        at = &a->v[a->n++];
    else
        secure_zero(at->pValue, at->ulValueLen);
    at->type = type;
    at->pValue = copy;
    at->ulValueLen = len;
    return 1;
}

int attrs_set(struct attrs *a, CK_ATTRIBUTE_TYPE type, const void *value,
              CK_ULONG len)
{
    CK_ATTRIBUTE *at;
    void *copy = NULL;

    if (a->block > 0 && block_set(a, type, value, len))
        return 0;
    if (attrs_unpack(a) != 0)
        return -1;
    if (len > 0) {
        copy = malloc(len);
        if (copy == NULL)
            return -1;
        memcpy(copy, value, len);
    }
    at = attrs_find(a, type);
    if (at != NULL) {
        value_free(at->pValue, at->ulValueLen);
        at->pValue = copy;
        at->ulValueLen = len;
        return 0;
    }
    if (a->n == a->alloc) {
        CK_ULONG na = a->alloc ? a->alloc * 2 : 16;
        CK_ATTRIBUTE *nv = realloc(a->v, na * sizeof(*nv));
        if (nv == NULL) {
            free(copy);
            return -1;
        }
        a->v = nv;
        a->alloc = na;
    }
    a->v[a->n].type = type;
    a->v[a->n].pValue = copy;
    a->v[a->n].ulValueLen = len;
    a->n++;
    return 0;
}

int attrs_set_bool(struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_BBOOL v)
{
    return attrs_set(a, type, &v, sizeof(v));
}

int attrs_set_ulong(struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_ULONG v)
{
    return attrs_set(a, type, &v, sizeof(v));
}

int attrs_set_string(struct attrs *a, CK_ATTRIBUTE_TYPE type, const char *s)
{
    return attrs_set(a, type, s, s ? strlen(s) : 0);
}

int attrs_merge(struct attrs *a, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    CK_ULONG i;

    for (i = 0; i < n; i++)
        if (attrs_set(a, tmpl[i].type, tmpl[i].pValue, tmpl[i].ulValueLen))
            return -1;
    return 0;
}

int attrs_copy(struct attrs *dst, const struct attrs *src)
{
    CK_ULONG i;

    attrs_init(dst);
    for (i = 0; i < src->n; i++) {
        const CK_ATTRIBUTE *at = attrs_at(src, i);

        if (attrs_set(dst, at->type, at->pValue, at->ulValueLen)) {
            attrs_clear(dst);
            return -1;
        }
    }
    return 0;
}

int attrs_remove(struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
    CK_ATTRIBUTE *at = attrs_find(a, type);

    if (at == NULL)
        return 0;
    if (a->block > 0) {
        /* Its bytes stay in the block, wiped. */
        secure_zero(at->pValue, at->ulValueLen);
        *at = a->v[a->n - 1];
        a->n--;
        return 1;
    }
    if (attrs_unpack(a) != 0)
        return -1;
    at = attrs_find(a, type);
    value_free(at->pValue, at->ulValueLen);
    *at = a->v[a->n - 1];
    a->n--;
    return 1;
}

const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *t, CK_ULONG n,
                              CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG i;

    if (t == NULL)
        return NULL;
    for (i = 0; i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

bool tmpl_conflicting(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_ULONG i, j;

    if (t == NULL)
        return false;
    for (i = 0; i < n; i++) {
        for (j = i + 1; j < n; j++) {
            if (t[j].type != t[i].type)
                continue;
            if (t[j].ulValueLen != t[i].ulValueLen ||
                (t[i].pValue == NULL) != (t[j].pValue == NULL))
                return true;
            if (t[i].pValue != NULL && t[i].ulValueLen > 0 &&
                t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
                memcmp(t[i].pValue, t[j].pValue, t[i].ulValueLen) != 0)
                return true;
        }
    }
    return false;
}

int tmpl_find_bool(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type,
                   CK_BBOOL *v)
{
    const CK_ATTRIBUTE *at = tmpl_find(t, n, type);

    if (at == NULL)
        return 0;
    if (at->pValue == NULL || at->ulValueLen != sizeof(CK_BBOOL))
        return -1;
    *v = *(CK_BBOOL *)at->pValue ? CK_TRUE : CK_FALSE;
    return 1;
}

int tmpl_find_ulong(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type,
                    CK_ULONG *v)
{
    const CK_ATTRIBUTE *at = tmpl_find(t, n, type);

    if (at == NULL)
        return 0;
    if (at->pValue == NULL || at->ulValueLen != sizeof(CK_ULONG))
        return -1;
    memcpy(v, at->pValue, sizeof(CK_ULONG));
    return 1;
}

bool attrs_match(const struct attrs *a, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    CK_ULONG i;

    for (i = 0; i < n; i++) {
        const CK_ATTRIBUTE *have = attrs_find(a, tmpl[i].type);
        if (have == NULL || have->ulValueLen != tmpl[i].ulValueLen)
            return false;
        if (have->ulValueLen > 0 &&
            (tmpl[i].pValue == NULL ||
             memcmp(have->pValue, tmpl[i].pValue, have->ulValueLen) != 0))
            return false;
    }
    return true;
}

bool attrs_get_bool(const struct attrs *a, CK_ATTRIBUTE_TYPE type, bool dflt)
{
    const CK_ATTRIBUTE *at = attrs_find(a, type);

    if (at == NULL || at->ulValueLen != sizeof(CK_BBOOL))
        return dflt;
    return *(CK_BBOOL *)at->pValue != CK_FALSE;
}

CK_ULONG attrs_get_ulong(const struct attrs *a, CK_ATTRIBUTE_TYPE type,
                         CK_ULONG dflt)
{
    const CK_ATTRIBUTE *at = attrs_find(a, type);
    CK_ULONG v;

    if (at == NULL || at->ulValueLen != sizeof(CK_ULONG))
        return dflt;
    memcpy(&v, at->pValue, sizeof(v));
    return v;
}

/* Splits the n cells cv of a (in a's order) into its own cells, first,
 * and its shape's: sets a->cells, a->own and a->shape. cv is freed once
 * it succeeds; on ENOMEM it is left as it was. */
static int split_shape(struct attrs *a, struct attr_cell **cv)
{
    struct attr_cell **own = malloc(a->n * sizeof(*own)), **small = own;
    CK_ULONG i, n_own = 0, n_small = 0;
    struct attr_shape *sh = NULL;

    if (own == NULL)
        return -1;
    for (i = 0; i < a->n; i++)
        if (!cell_small(cv[i]))
            own[n_own++] = cv[i];
    small = own + n_own;
    for (i = 0; i < a->n; i++)
        if (cell_small(cv[i]))
            small[n_small++] = cv[i];
    if (n_small > 0) {
        sh = shape_get(small, n_small);
        if (sh == NULL) {
            free(own);
            return -1;
        }
    }
    free(cv);
    if (n_own < a->n) {
        struct attr_cell **fit =
            realloc(own, (n_own ? n_own : 1) * sizeof(*own));
        own = fit != NULL ? fit : own;
    }
    a->cells = own;
    a->own = n_own;
    a->shape = sh;
    return 0;
}

/* The index of type in an unpacked array, or a->n. */
static CK_ULONG index_of(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG i;

    for (i = 0; i < a->n && a->v[i].type != type; i++)
        ;
    return i;
}

int attrs_compact(struct attrs *a)
{
    struct attr_cell **cv;
    CK_ULONG i, spki;

    if (a->n == 0 || a->packed > 0)
        return 0;
    cv = calloc(a->n, sizeof(*cv));
    if (cv == NULL)
        return -1;
    /* The SubjectPublicKeyInfo first: a new modulus cell goes inside it. */
    spki = index_of(a, CKA_PUBLIC_KEY_INFO);
    if (spki < a->n && (cv[spki] = cell_get(&a->v[spki], NULL)) == NULL)
        goto fail;
    for (i = 0; i < a->n; i++) {
        if (i == spki)
            continue;
        cv[i] = cell_get(&a->v[i], a->v[i].type == CKA_MODULUS && spki < a->n
                                       ? cv[spki]
                                       : NULL);
        if (cv[i] == NULL)
            goto fail;
    }
    if (split_shape(a, cv) != 0)
        goto fail;
    values_release(a);
    a->alloc = a->n;
    a->packed = (size_t)a->own * sizeof(*cv) + sizeof(a->shape);
    return 0;
fail:
    for (i = 0; i < a->n; i++)
        if (cv[i] != NULL)
            cell_put(cv[i]);
    free(cv);
    return -1;
}
