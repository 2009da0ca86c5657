#include "config.h"

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

/* Values in a packed block are aligned to this. */
#define PACK_ALIGN sizeof(CK_ULONG)

static size_t pack_round(CK_ULONG len)
{
    return ((size_t)len + PACK_ALIGN - 1) / PACK_ALIGN * PACK_ALIGN;
}

/* Back to one allocation per value and a vector with room, before a
 * change to a packed array. */
static int attrs_unpack(struct attrs *a)
{
    CK_ATTRIBUTE *nv;
    CK_ULONG i, na = a->n < 8 ? 8 : a->n + a->n / 2;

    if (a->packed == 0)
        return 0;
    nv = calloc(na, sizeof(*nv));
    if (nv == NULL)
        return -1;
    for (i = 0; i < a->n; i++) {
        nv[i] = a->v[i];
        nv[i].pValue = NULL;
        if (a->v[i].ulValueLen == 0 || a->v[i].pValue == NULL)
            continue;
        nv[i].pValue = malloc(a->v[i].ulValueLen);
        if (nv[i].pValue == NULL) {
            while (i-- > 0)
                value_free(nv[i].pValue, nv[i].ulValueLen);
            free(nv);
            return -1;
        }
        memcpy(nv[i].pValue, a->v[i].pValue, a->v[i].ulValueLen);
    }
    secure_zero(a->v, a->packed);
    free(a->v);
    a->v = nv;
    a->alloc = na;
    a->packed = 0;
    return 0;
}

void attrs_init(struct attrs *a)
{
    memset(a, 0, sizeof(*a));
}

void attrs_clear(struct attrs *a)
{
    CK_ULONG i;

    if (a == NULL)
        return;
    if (a->packed > 0) {
        secure_zero(a->v, a->packed);
        free(a->v);
        attrs_init(a);
        return;
    }
    for (i = 0; i < a->n; i++)
        value_free(a->v[i].pValue, a->v[i].ulValueLen);
    free(a->v);
    attrs_init(a);
}

CK_ATTRIBUTE *attrs_find(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG i;

    for (i = 0; i < a->n; i++)
        if (a->v[i].type == type)
            return &a->v[i];
    return NULL;
}

int attrs_set(struct attrs *a, CK_ATTRIBUTE_TYPE type, const void *value,
              CK_ULONG len)
{
    CK_ATTRIBUTE *at;
    void *copy = NULL;

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
    attrs_init(dst);
    if (attrs_merge(dst, src->v, src->n)) {
        attrs_clear(dst);
        return -1;
    }
    return 0;
}

int attrs_remove(struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
    CK_ATTRIBUTE *at = attrs_find(a, type);

    if (at == NULL)
        return 0;
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

int attrs_compact(struct attrs *a)
{
    size_t size = 0, at;
    unsigned char *block;
    CK_ATTRIBUTE *nv;
    CK_ULONG i;

    if (a->n == 0 || a->packed > 0)
        return 0;
    size = (size_t)a->n * sizeof(*nv);
    for (i = 0; i < a->n; i++)
        if (a->v[i].pValue != NULL)
            size += pack_round(a->v[i].ulValueLen);
    block = malloc(size);
    if (block == NULL)
        return -1;
    nv = (CK_ATTRIBUTE *)(void *)block;
    at = (size_t)a->n * sizeof(*nv);
    for (i = 0; i < a->n; i++) {
        nv[i] = a->v[i];
        if (a->v[i].pValue == NULL)
            continue;
        nv[i].pValue = block + at;
        memcpy(nv[i].pValue, a->v[i].pValue, a->v[i].ulValueLen);
        at += pack_round(a->v[i].ulValueLen);
        value_free(a->v[i].pValue, a->v[i].ulValueLen);
    }
    free(a->v);
    a->v = nv;
    a->alloc = a->n;
    a->packed = size;
    return 0;
}
