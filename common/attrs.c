#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "attrs.h"
#include "secure.h"

/* Attribute values live on the heap; they are wiped when they go. */
static void value_free(void *p, CK_ULONG len)
{
    if (p != NULL) {
        secure_zero(p, len);
        free(p);
    }
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

void attrs_compact(struct attrs *a)
{
    CK_ATTRIBUTE *nv;

    if (a->n == 0 || a->n == a->alloc)
        return;
    nv = realloc(a->v, a->n * sizeof(*nv));
    if (nv != NULL) {
        a->v = nv;
        a->alloc = a->n;
    }
}
