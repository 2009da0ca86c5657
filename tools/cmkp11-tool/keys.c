#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"
#include "keys.h"
#include "out.h"

void tversion_clear(struct tversion *v)
{
    free(v->label);
    free(v->version);
    free(v->backend);
    free(v->source);
    free(v->recovery);
    free(v->key_ops);
    free(v->key_type);
    free(v->refused);
    free(v->replicas);
    free(v->created);
    free(v->updated);
    free(v->not_before);
    free(v->expires);
    free(v->id);
    memset(v, 0, sizeof(*v));
}

void tkeys_free(struct tkeys *k)
{
    size_t i, j;

    for (i = 0; i < k->n; i++) {
        for (j = 0; j < k->k[i].n; j++)
            tversion_clear(&k->k[i].v[j]);
        free(k->k[i].v);
        free(k->k[i].name);
    }
    free(k->k);
    memset(k, 0, sizeof(*k));
}

struct tkey *tkeys_find(struct tkeys *k, const char *name)
{
    size_t i;

    for (i = 0; i < k->n; i++)
        if (strcmp(k->k[i].name, name) == 0)
            return &k->k[i];
    return NULL;
}

static struct tkey *key_get(struct tkeys *k, const char *name)
{
    struct tkey *nk = tkeys_find(k, name);

    if (nk != NULL)
        return nk;
    nk = realloc(k->k, (k->n + 1) * sizeof(*nk));
    if (nk == NULL)
        return NULL;
    k->k = nk;
    memset(&nk[k->n], 0, sizeof(*nk));
    nk[k->n].name = strdup(name);
    if (nk[k->n].name == NULL)
        return NULL;
    return &nk[k->n++];
}

/* Adds object h (of class cls) to its version, creating the version from
 * the object's attributes the first time. */
static int add_object(struct tmod *m, CK_SESSION_HANDLE s, struct tkeys *k,
                      CK_OBJECT_HANDLE h, CK_OBJECT_CLASS cls)
{
    char *name = tattr_string(m, s, h, CKA_CMK_KEY_NAME);
    size_t id_len = 0, i;
    unsigned char *id = NULL;
    struct tversion *v = NULL, *nv;
    struct tkey *key;
    int r = -1;

    if (name == NULL)
        return 0; /* not one of the module's key objects */
    id = tattr_bytes(m, s, h, CKA_ID, &id_len);
    key = key_get(k, name);
    if (key == NULL)
        goto out;
    for (i = 0; i < key->n; i++)
        if (key->v[i].id_len == id_len &&
            (id_len == 0 || memcmp(key->v[i].id, id, id_len) == 0))
            v = &key->v[i];
    if (v == NULL) {
        nv = realloc(key->v, (key->n + 1) * sizeof(*nv));
        if (nv == NULL)
            goto out;
        key->v = nv;
        v = &nv[key->n++];
        memset(v, 0, sizeof(*v));
        v->id = id;
        v->id_len = id_len;
        id = NULL;
        v->label = tattr_string(m, s, h, CKA_LABEL);
        v->version = tattr_string(m, s, h, CKA_CMK_VERSION);
        v->backend = tattr_string(m, s, h, CKA_CMK_BACKEND);
        v->source = tattr_string(m, s, h, CKA_CMK_SOURCE);
        v->recovery = tattr_string(m, s, h, CKA_CMK_RECOVERY);
        v->key_ops = tattr_string(m, s, h, CKA_CMK_KEY_OPS);
        v->key_type = tattr_string(m, s, h, CKA_CMK_KEY_TYPE);
        v->refused = tattr_string(m, s, h, CKA_CMK_REFUSED);
        v->replicas = tattr_string(m, s, h, CKA_CMK_REPLICAS);
        v->created = tattr_string(m, s, h, CKA_CMK_CREATED);
        v->updated = tattr_string(m, s, h, CKA_CMK_UPDATED);
        v->not_before = tattr_string(m, s, h, CKA_CMK_NOT_BEFORE);
        v->expires = tattr_string(m, s, h, CKA_CMK_EXPIRES);
        v->enabled = tattr_bool(m, s, h, CKA_CMK_ENABLED, NULL);
        v->current = tattr_bool(m, s, h, CKA_CMK_CURRENT, NULL);
        v->bits = tattr_ulong(m, s, h, CKA_MODULUS_BITS, NULL);
        v->min_bits = tattr_ulong(m, s, h, CKA_CMK_MIN_BITS, NULL);
    }
    if (cls == CKO_PRIVATE_KEY)
        v->priv = h;
    else
        v->pub = h;
    r = 0;
out:
    free(name);
    free(id);
    return r;
}

static CK_RV find_class(struct tmod *m, CK_SESSION_HANDLE s, struct tkeys *k,
                        CK_OBJECT_CLASS cls)
{
    CK_KEY_TYPE kt = CKK_RSA;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
    };
    CK_OBJECT_HANDLE *all = NULL, *na, buf[64];
    CK_ULONG got, n = 0, i;
    CK_RV rv;

    rv = m->f->C_FindObjectsInit(s, tmpl, CMK_ARRAY_SIZE(tmpl));
    if (rv != CKR_OK)
        return rv;
    for (;;) {
        rv = m->f->C_FindObjects(s, buf, CMK_ARRAY_SIZE(buf), &got);
        if (rv != CKR_OK || got == 0)
            break;
        na = realloc(all, (n + got) * sizeof(*na));
        if (na == NULL) {
            rv = CKR_HOST_MEMORY;
            break;
        }
        all = na;
        memcpy(all + n, buf, got * sizeof(*buf));
        n += got;
    }
    m->f->C_FindObjectsFinal(s);
    /* Attributes are read after the search: some modules refuse other
     * calls on a session while a search is active. */
    for (i = 0; rv == CKR_OK && i < n; i++)
        if (add_object(m, s, k, all[i], cls) < 0)
            rv = CKR_HOST_MEMORY;
    free(all);
    return rv;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const struct tkey *)a)->name,
                  ((const struct tkey *)b)->name);
}

static int cmp_version(const void *a, const void *b)
{
    const struct tversion *x = a, *y = b;
    long long cx = out_epoch(x->created), cy = out_epoch(y->created);

    if (x->current != y->current)
        return x->current ? -1 : 1;
    if (cx != cy)
        return cx > cy ? -1 : 1;
    return strcmp(x->version ? x->version : "", y->version ? y->version : "");
}

CK_RV tkeys_load(struct tmod *m, struct ttoken *t, struct tkeys *out)
{
    CK_RV rv;
    size_t i;

    memset(out, 0, sizeof(*out));
    rv = find_class(m, t->sess, out, CKO_PRIVATE_KEY);
    if (rv == CKR_OK)
        rv = find_class(m, t->sess, out, CKO_PUBLIC_KEY);
    if (rv != CKR_OK)
        return rv;
    qsort(out->k, out->n, sizeof(*out->k), cmp_key);
    for (i = 0; i < out->n; i++) {
        struct tkey *key = &out->k[i];
        size_t j;
        for (j = 0; j < key->n; j++)
            key->v[j].state_unknown = key->v[j].priv == 0 &&
                                      (t->pin_missing || !t->logged_in) &&
                                      (t->info.flags & CKF_LOGIN_REQUIRED);
        qsort(key->v, key->n, sizeof(*key->v), cmp_version);
    }
    return CKR_OK;
}

/*
 * Searches the token for the objects labelled NAME@VERSION and adds them:
 * a module that did not list a key's versions (a Key Vault identity
 * without the list permission) reads a named version on such a search.
 */
CK_RV tkeys_load_version(struct tmod *m, struct ttoken *t, struct tkeys *k,
                         const char *name, const char *version)
{
    CK_OBJECT_CLASS classes[] = {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY};
    char label[512];
    size_t i;
    CK_RV rv = CKR_OK;

    snprintf(label, sizeof(label), "%s@%s", name, version);
    for (i = 0; rv == CKR_OK && i < CMK_ARRAY_SIZE(classes); i++) {
        CK_ATTRIBUTE tmpl[] = {
            {CKA_CLASS, &classes[i], sizeof(classes[i])},
            {CKA_LABEL, label, strlen(label)},
        };
        CK_OBJECT_HANDLE found[4];
        CK_ULONG got = 0, j;

        rv = m->f->C_FindObjectsInit(t->sess, tmpl, CMK_ARRAY_SIZE(tmpl));
        if (rv != CKR_OK)
            break;
        rv = m->f->C_FindObjects(t->sess, found, CMK_ARRAY_SIZE(found), &got);
        m->f->C_FindObjectsFinal(t->sess);
        for (j = 0; rv == CKR_OK && j < got; j++)
            if (add_object(m, t->sess, k, found[j], classes[i]) < 0)
                rv = CKR_HOST_MEMORY;
    }
    return rv;
}

/*
 * Searches the token with the label and id a pkcs11: URI names (an older
 * version, object=NAME@VERSION or id=...) and adds what it finds: a module
 * without the list permission reads such a version only when asked.
 */
CK_RV tkeys_load_named(struct tmod *m, struct ttoken *t, struct tkeys *k,
                       const struct tsel *s)
{
    CK_OBJECT_CLASS classes[] = {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY};
    CK_ATTRIBUTE *label, *id;
    size_t i;
    CK_RV rv = CKR_OK;

    if (s == NULL || s->uri == NULL || !tsel_has_object(s))
        return CKR_OK;
    label = p11_kit_uri_get_attribute(s->uri, CKA_LABEL);
    id = p11_kit_uri_get_attribute(s->uri, CKA_ID);
    if (label == NULL && id == NULL)
        return CKR_OK;
    for (i = 0; rv == CKR_OK && i < CMK_ARRAY_SIZE(classes); i++) {
        CK_ATTRIBUTE tmpl[3] = {{CKA_CLASS, &classes[i], sizeof(classes[i])}};
        CK_ULONG n = 1, got = 0, j;
        CK_OBJECT_HANDLE found[16];

        if (label != NULL)
            tmpl[n++] = *label;
        if (id != NULL)
            tmpl[n++] = *id;
        rv = m->f->C_FindObjectsInit(t->sess, tmpl, n);
        if (rv != CKR_OK)
            break;
        rv = m->f->C_FindObjects(t->sess, found, CMK_ARRAY_SIZE(found), &got);
        m->f->C_FindObjectsFinal(t->sess);
        for (j = 0; rv == CKR_OK && j < got; j++)
            if (add_object(m, t->sess, k, found[j], classes[i]) < 0)
                rv = CKR_HOST_MEMORY;
    }
    return rv;
}

/* Whether the URI matches one of the version's objects. */
static bool uri_matches(const struct tsel *s, const struct tversion *v)
{
    CK_OBJECT_CLASS classes[] = {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY};
    CK_OBJECT_HANDLE handles[] = {v->priv, v->pub};
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(classes); i++) {
        CK_ATTRIBUTE a[3] = {
            {CKA_CLASS, &classes[i], sizeof(classes[i])},
            {CKA_ID, v->id, v->id_len},
            {CKA_LABEL, v->label, v->label ? strlen(v->label) : 0},
        };
        if (handles[i] == 0)
            continue;
        if (p11_kit_uri_match_attributes(s->uri, a, CMK_ARRAY_SIZE(a)) == 1)
            return true;
    }
    return false;
}

size_t tkeys_select(struct tkeys *k, const struct tsel *s)
{
    size_t i, j, n = 0;
    bool any;

    for (i = 0; i < k->n; i++) {
        struct tkey *key = &k->k[i];
        any = false;
        for (j = 0; j < key->n; j++) {
            struct tversion *v = &key->v[j];
            if (s->uri != NULL && tsel_has_object(s))
                v->matched = uri_matches(s, v);
            else if (s->name != NULL)
                v->matched = strcmp(key->name, s->name) == 0;
            else
                v->matched = true;
            any |= v->matched;
        }
        n += any;
    }
    return n;
}

struct tversion *tkey_current(struct tkey *key)
{
    size_t i;

    for (i = 0; i < key->n; i++)
        if (key->v[i].current)
            return &key->v[i];
    return NULL;
}

struct tversion *tkey_selected(struct tkey *key)
{
    struct tversion *cur = tkey_current(key);
    size_t i;

    if (cur != NULL && cur->matched)
        return cur;
    for (i = 0; i < key->n; i++)
        if (key->v[i].matched)
            return &key->v[i];
    return NULL;
}

void tversion_id_hex(const struct tversion *v, char *out, size_t len)
{
    cmk_hex_n(v->id, v->id_len, out, len);
}

bool tops_has(const char *ops, const char *op)
{
    size_t n = strlen(op);
    const char *p = ops;

    if (ops == NULL)
        return false;
    while (*p != '\0') {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len > 0 && *p == ' ') {
            p++;
            len--;
        }
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len == n && strncmp(p, op, n) == 0)
            return true;
        if (e == NULL)
            break;
        p = e + 1;
    }
    return false;
}

static int dupstr(char **to, const char *from)
{
    *to = from != NULL ? strdup(from) : NULL;
    return from != NULL && *to == NULL ? -1 : 0;
}

int tversion_dup(struct tversion *dst, const struct tversion *src)
{
    int r = 0;

    *dst = *src;
    dst->id = NULL;
    r |= dupstr(&dst->label, src->label);
    r |= dupstr(&dst->version, src->version);
    r |= dupstr(&dst->backend, src->backend);
    r |= dupstr(&dst->source, src->source);
    r |= dupstr(&dst->recovery, src->recovery);
    r |= dupstr(&dst->key_ops, src->key_ops);
    r |= dupstr(&dst->key_type, src->key_type);
    r |= dupstr(&dst->refused, src->refused);
    r |= dupstr(&dst->replicas, src->replicas);
    r |= dupstr(&dst->created, src->created);
    r |= dupstr(&dst->updated, src->updated);
    r |= dupstr(&dst->not_before, src->not_before);
    r |= dupstr(&dst->expires, src->expires);
    if (src->id_len > 0) {
        dst->id = malloc(src->id_len);
        if (dst->id == NULL)
            r = -1;
        else
            memcpy(dst->id, src->id, src->id_len);
    }
    if (r != 0)
        tversion_clear(dst);
    return r;
}

struct tversion *tkey_find_id(struct tkey *key, const unsigned char *id,
                              size_t id_len)
{
    size_t i;

    for (i = 0; i < key->n; i++)
        if (key->v[i].id_len == id_len &&
            (id_len == 0 || memcmp(key->v[i].id, id, id_len) == 0))
            return &key->v[i];
    return NULL;
}

/* The next tab-separated field of line p into out; p moves past it. */
static void replica_field(const char **p, char *out, size_t len)
{
    size_t n = strcspn(*p, "\t\n");

    snprintf(out, len, "%.*s", (int)n, *p);
    *p += n;
    if (**p == '\t')
        (*p)++;
}

bool tversion_replica(const struct tversion *v, size_t n, struct treplica *r)
{
    const char *p = v->replicas;

    memset(r, 0, sizeof(*r));
    for (; p != NULL && *p != '\0' && n > 0; n--) {
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    if (p == NULL || *p == '\0')
        return false;
    replica_field(&p, r->url, sizeof(r->url));
    replica_field(&p, r->state, sizeof(r->state));
    replica_field(&p, r->latency, sizeof(r->latency));
    replica_field(&p, r->match, sizeof(r->match));
    replica_field(&p, r->version, sizeof(r->version));
    replica_field(&p, r->recovery, sizeof(r->recovery));
    replica_field(&p, r->error, sizeof(r->error));
    return true;
}
