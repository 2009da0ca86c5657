/*
 * The hsm back end: listing the lower token's RSA key pairs as versioned
 * keys, and the lower handles behind the front end's references.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "debug.h"
#include "hsm.h"
#include "provider-util.h"

void *hsm_get_attr(struct hsm_token *ht, CK_SESSION_HANDLE s,
                   CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    void *v;

    if (LOWER(ht, C_GetAttributeValue, s, o, &a, 1) != CKR_OK ||
        a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return NULL;
    v = malloc(a.ulValueLen + 1);
    if (v == NULL)
        return NULL;
    a.pValue = v;
    if (LOWER(ht, C_GetAttributeValue, s, o, &a, 1) != CKR_OK) {
        free(v);
        return NULL;
    }
    ((char *)v)[a.ulValueLen] = '\0';
    *len = a.ulValueLen;
    return v;
}

static bool get_bool(struct hsm_token *ht, CK_SESSION_HANDLE s,
                     CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};

    return LOWER(ht, C_GetAttributeValue, s, o, &a, 1) == CKR_OK && v;
}

/*
 * Several attributes of one object in one call, each into the buffer its
 * template gives: true only when the lower token answers CKR_OK and every
 * value fits its buffer. A listing reads about twenty attributes a key
 * pair, and a token such as SoftHSM checks its store on every call, so
 * one call instead of one each is most of a listing's time. Otherwise (a
 * value larger than its buffer, a token that has not the attribute, or
 * one that answers a template of several attributes otherwise than the
 * specification says, even with CKR_OK and a length its buffer cannot
 * hold) the caller reads them one by one as before. The buffers are
 * zeroed first, so that a value a token leaves untouched is no stack
 * garbage.
 */
static bool get_attrs(struct hsm_token *ht, CK_SESSION_HANDLE s,
                      CK_OBJECT_HANDLE o, CK_ATTRIBUTE *a, CK_ULONG n)
{
    CK_ULONG size[8], i;

    if (n > CMK_ARRAY_SIZE(size))
        return false;
    for (i = 0; i < n; i++) {
        size[i] = a[i].ulValueLen;
        memset(a[i].pValue, 0, size[i]);
    }
    if (LOWER(ht, C_GetAttributeValue, s, o, a, n) != CKR_OK)
        return false;
    for (i = 0; i < n; i++)
        if (a[i].ulValueLen == CK_UNAVAILABLE_INFORMATION ||
            a[i].ulValueLen > size[i])
            return false;
    return true;
}

/* A copy of an attribute get_attrs() read, NUL-terminated as
 * hsm_get_attr() gives it. */
static void *attr_dup(const CK_ATTRIBUTE *a, CK_ULONG *len)
{
    char *v = malloc(a->ulValueLen + 1);

    if (v == NULL)
        return NULL;
    if (a->ulValueLen)
        memcpy(v, a->pValue, a->ulValueLen);
    v[a->ulValueLen] = '\0';
    *len = a->ulValueLen;
    return v;
}

/* NAME@HEXID names a version of NAME when HEXID is its own CKA_ID. */
static char *key_name(const char *label, const CK_BYTE *id, CK_ULONG id_len)
{
    const char *at = strrchr(label, '@');
    char h[130];

    cmk_hex_n(id, id_len, h, sizeof(h));
    if (at != NULL && at != label && id_len > 0 && strcasecmp(at + 1, h) == 0)
        return strndup(label, (size_t)(at - label));
    return strdup(label);
}

static struct hsm_ver *version_find_unlocked(struct hsm_token *ht,
                                             const CK_BYTE *id, CK_ULONG id_len)
{
    struct hsm_ver *v;

    for (v = ht->versions; v != NULL; v = v->next)
        if (v->id_len == id_len && memcmp(v->id, id, id_len) == 0)
            return v;
    return NULL;
}

/* One lower key object: record it in its version. */
static void see_object(struct hsm_token *ht, CK_SESSION_HANDLE s,
                       CK_OBJECT_HANDLE o, bool is_private)
{
    CK_ULONG id_len = 0, label_len = 0;
    CK_BYTE idb[65];
    char labelb[256];
    CK_ATTRIBUTE a[] = {{CKA_ID, idb, sizeof(idb)},
                        {CKA_LABEL, labelb, sizeof(labelb)}};
    CK_BYTE *id;
    char *label;
    struct hsm_ver *v;
    char *name, *old_name = NULL, *old_label = NULL;

    if (get_attrs(ht, s, o, a, CMK_ARRAY_SIZE(a))) {
        id = attr_dup(&a[0], &id_len);
        label = attr_dup(&a[1], &label_len);
    } else {
        id = hsm_get_attr(ht, s, o, CKA_ID, &id_len);
        label = hsm_get_attr(ht, s, o, CKA_LABEL, &label_len);
    }

    if (id == NULL || label == NULL || id_len == 0 || id_len > 64)
        goto out;
    name = key_name(label, id, id_len);
    if (name == NULL || !config_list_allows(ht->keys, name)) {
        free(name);
        goto out;
    }
    pthread_mutex_lock(&ht->lock);
    v = version_find_unlocked(ht, id, id_len);
    if (v == NULL) {
        v = calloc(1, sizeof(*v));
        if (v != NULL) {
            v->kind = HSM_REF_VERSION;
            memcpy(v->id, id, id_len);
            v->id_len = id_len;
            v->next = ht->versions;
            ht->versions = v;
        }
    }
    if (v != NULL) {
        if (!v->seen || is_private) {
            /* Swapped under the lock, freed outside it: other listings
             * copy them under the same lock (version_copy). */
            old_name = v->name;
            old_label = v->label;
            v->name = name;
            v->label = label;
            name = label = NULL;
        }
        v->seen = true;
        if (is_private)
            v->next_priv = o;
        else
            v->next_pub = o;
    }
    pthread_mutex_unlock(&ht->lock);
    free(old_name);
    free(old_label);
    free(name);
out:
    free(id);
    free(label);
}

static CK_RV scan_class(struct hsm_token *ht, CK_SESSION_HANDLE s,
                        CK_OBJECT_CLASS cls)
{
    CK_KEY_TYPE kt = CKK_RSA;
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &t, sizeof(t)},
    };
    CK_OBJECT_HANDLE found[64];
    CK_ULONG n, i;
    CK_RV rv;

    rv = LOWER(ht, C_FindObjectsInit, s, tmpl, 3);
    if (rv != CKR_OK)
        return rv;
    do {
        n = 0;
        rv = LOWER(ht, C_FindObjects, s, found, CMK_ARRAY_SIZE(found), &n);
        for (i = 0; rv == CKR_OK && i < n; i++)
            see_object(ht, s, found[i], cls == CKO_PRIVATE_KEY);
    } while (rv == CKR_OK && n > 0);
    LOWER(ht, C_FindObjectsFinal, s);
    return rv;
}

/* What a listing reads of a version, copied under the token's lock: another
 * listing may replace the label and name (see_object) and the handles
 * meanwhile. */
struct ver_copy {
    struct hsm_ver *ref;
    char *name, *label;
    CK_BYTE id[64];
    CK_ULONG id_len;
    CK_OBJECT_HANDLE priv, pub;
};

static int version_copy_unlocked(const struct hsm_ver *v, struct ver_copy *c)
{
    memset(c, 0, sizeof(*c));
    if (v->name == NULL || v->label == NULL)
        return -1;
    c->name = strdup(v->name);
    c->label = strdup(v->label);
    if (c->name == NULL || c->label == NULL) {
        free(c->name);
        free(c->label);
        return -1;
    }
    c->ref = (struct hsm_ver *)v;
    memcpy(c->id, v->id, v->id_len);
    c->id_len = v->id_len;
    c->priv = v->priv;
    c->pub = v->pub;
    return 0;
}

/* When the version was made, as far as the lower token says: PKCS#11 keeps
 * no creation time, so cmkp11 sets CKA_START_DATE to the day it makes a
 * version's public key (hsm-keypair.c) and reads it back here (D, LEN
 * bytes of it), at 00:00 UTC; 0 when the key has none (docs/hsm.md,
 * "Rotation policies"). */
static long long start_date(const CK_DATE *d, CK_ULONG len)
{
    struct tm tm;
    char f[9];
    int y, mo, dd;

    if (len != sizeof(*d))
        return 0;
    memcpy(f, d->year, 4);
    memcpy(f + 4, d->month, 2);
    memcpy(f + 6, d->day, 2);
    f[8] = '\0';
    if (sscanf(f, "%4d%2d%2d", &y, &mo, &dd) != 3 || y < 1970 || mo < 1 ||
        mo > 12 || dd < 1 || dd > 31)
        return 0;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = dd;
    return (long long)timegm(&tm);
}

/* What a listing reads of a version's lower objects: three calls in all
 * (get_attrs), or one an attribute where a token answers those otherwise. */
struct ver_attrs {
    CK_BYTE *n, *e; /* malloc'd */
    CK_ULONG nlen, elen;
    long long created; /* start_date() */
    bool dec, unw, sig, local, wrp, enc;
};

static int read_version(struct hsm_token *ht, CK_SESSION_HANDLE s,
                        const struct ver_copy *v, struct ver_attrs *r)
{
    CK_OBJECT_HANDLE src = v->pub ? v->pub : v->priv;
    CK_BYTE nb[1024], eb[64];
    CK_BBOOL pb[4] = {0}, qb[2] = {0};
    CK_DATE date;
    CK_ATTRIBUTE ka[] = {{CKA_MODULUS, nb, sizeof(nb)},
                         {CKA_PUBLIC_EXPONENT, eb, sizeof(eb)},
                         {CKA_START_DATE, &date, sizeof(date)}};
    CK_ATTRIBUTE pa[] = {{CKA_DECRYPT, &pb[0], 1},
                         {CKA_UNWRAP, &pb[1], 1},
                         {CKA_SIGN, &pb[2], 1},
                         {CKA_LOCAL, &pb[3], 1}};
    CK_ATTRIBUTE qa[] = {{CKA_WRAP, &qb[0], 1}, {CKA_ENCRYPT, &qb[1], 1}};

    memset(r, 0, sizeof(*r));
    if (get_attrs(ht, s, src, ka, CMK_ARRAY_SIZE(ka))) {
        r->n = attr_dup(&ka[0], &r->nlen);
        r->e = attr_dup(&ka[1], &r->elen);
        r->created = start_date(&date, ka[2].ulValueLen);
    } else {
        r->n = hsm_get_attr(ht, s, src, CKA_MODULUS, &r->nlen);
        r->e = hsm_get_attr(ht, s, src, CKA_PUBLIC_EXPONENT, &r->elen);
        /* A template of its own: the call above may have set ka[2]'s
         * length to anything. */
        CK_ATTRIBUTE a = {CKA_START_DATE, &date, sizeof(date)};

        if (LOWER(ht, C_GetAttributeValue, s, src, &a, 1) == CKR_OK)
            r->created = start_date(&date, a.ulValueLen);
    }
    if (r->n == NULL || r->e == NULL || r->nlen == 0)
        return -1;
    if (v->priv && get_attrs(ht, s, v->priv, pa, CMK_ARRAY_SIZE(pa))) {
        r->dec = pb[0];
        r->unw = pb[1];
        r->sig = pb[2];
        r->local = pb[3];
    } else if (v->priv) {
        r->dec = get_bool(ht, s, v->priv, CKA_DECRYPT);
        r->unw = get_bool(ht, s, v->priv, CKA_UNWRAP);
        r->sig = get_bool(ht, s, v->priv, CKA_SIGN);
        r->local = get_bool(ht, s, v->priv, CKA_LOCAL);
    }
    /* The lower public key's own flags, where it has one: what check
     * tells the user to set is what is used. */
    if (!(r->dec || r->unw))
        return 0;
    if (!v->pub) {
        r->wrp = r->enc = true;
    } else if (get_attrs(ht, s, v->pub, qa, CMK_ARRAY_SIZE(qa))) {
        r->wrp = qb[0];
        r->enc = qb[1];
    } else {
        r->wrp = get_bool(ht, s, v->pub, CKA_WRAP);
        r->enc = get_bool(ht, s, v->pub, CKA_ENCRYPT);
    }
    return 0;
}

static int version_objects(struct hsm_token *ht, CK_SESSION_HANDLE s,
                           const struct ver_copy *v, struct pobj *priv,
                           struct pobj *pub)
{
    struct ver_attrs va;
    CK_ULONG nlen;
    struct rsa_key_desc d;
    char uid[160], version[130], source[600], ops[128];
    CK_BYTE *nn;
    int r = -1;

    if (read_version(ht, s, v, &va) != 0)
        goto out;
    nn = va.n;
    nlen = va.nlen;
    while (nlen > 1 && *nn == 0) {
        nn++;
        nlen--;
    }
    cmk_hex_n(v->id, v->id_len, version, sizeof(version));
    snprintf(uid, sizeof(uid), "hsm/%s", version);
    snprintf(source, sizeof(source), "%s;token=%s", ht->module_path,
             ht->token_label ? ht->token_label : ht->token_uri);
    snprintf(ops, sizeof(ops), "%s%s%s%s%s%s", va.dec ? "decrypt," : "",
             va.unw ? "unwrapKey," : "", va.sig ? "sign," : "",
             va.enc ? "encrypt," : "", va.wrp ? "wrapKey," : "", "verify");
    memset(&d, 0, sizeof(d));
    d.uid_prefix = uid;
    d.label = v->label;
    d.id = v->id;
    d.id_len = v->id_len;
    d.modulus = nn;
    d.modulus_len = nlen;
    d.exponent = va.e;
    d.exponent_len = va.elen;
    d.decrypt = va.dec;
    d.unwrap = va.unw;
    /* A disabled version signs nothing. */
    d.sign = va.sig && (va.dec || va.unw);
    d.encrypt = va.enc;
    d.wrap = va.wrp;
    d.verify = true;
    d.private_obj = !ht->self_login;
    d.enabled = va.dec || va.unw;
    d.current = strcmp(v->label, v->name) == 0;
    d.local = va.local;
    d.backend = "hsm";
    d.source = source;
    d.key_name = v->name;
    d.version = version;
    d.recovery_level = "";
    d.key_ops = ops;
    d.key_type = "RSA";
    d.created = va.created;
    r = rsa_key_objects(&d, priv, pub);
    if (r == 0) {
        priv->ref = v->ref;
        pub->ref = v->ref;
    }
out:
    free(va.n);
    free(va.e);
    return r;
}

/* Reads the lower token's key pairs into the versions; on success they
 * take the handles found. One scan at a time; operations keep the handles
 * of the last complete scan until this one is done. */
static CK_RV scan(struct hsm_token *ht, CK_SESSION_HANDLE s)
{
    struct hsm_ver *v;
    CK_RV rv;

    pthread_mutex_lock(&ht->list_lock);
    rv = scan_class(ht, s, CKO_PUBLIC_KEY);
    if (rv == CKR_OK)
        rv = scan_class(ht, s, CKO_PRIVATE_KEY);
    pthread_mutex_lock(&ht->lock);
    for (v = ht->versions; v != NULL; v = v->next) {
        if (rv == CKR_OK) {
            v->present = v->seen;
            v->priv = v->next_priv;
            v->pub = v->next_pub;
        }
        v->seen = false;
        v->next_priv = v->next_pub = 0;
    }
    pthread_mutex_unlock(&ht->lock);
    pthread_mutex_unlock(&ht->list_lock);
    return rv;
}

/* The present versions, copied under the lock: another listing may change
 * them while this one reads the lower token for their attributes. */
static CK_RV copy_present(struct hsm_token *ht, struct ver_copy **list,
                          size_t *count)
{
    struct hsm_ver *v;
    size_t n = 0;
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&ht->lock);
    for (v = ht->versions; v != NULL; v = v->next)
        n++;
    *list = calloc(n + 1, sizeof(**list));
    if (*list == NULL)
        rv = CKR_HOST_MEMORY;
    n = 0;
    for (v = ht->versions; v != NULL && rv == CKR_OK; v = v->next)
        if (v->present) {
            if (version_copy_unlocked(v, &(*list)[n]) != 0)
                rv = CKR_HOST_MEMORY;
            else
                n++;
        }
    pthread_mutex_unlock(&ht->lock);
    *count = n;
    return rv;
}

/* The lower token's secret keys that are token objects (made through
 * this module with CKA_TOKEN true, or by other tools: pkcs11-tool
 * --keygen), as objects of their own; "keys =" applies to their labels. */
static CK_RV scan_secrets(struct hsm_token *ht, CK_SESSION_HANDLE s,
                          struct pobj **objs, size_t *count)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_TOKEN, &t, sizeof(t)},
    };
    CK_OBJECT_HANDLE found[64], *all = NULL, *more;
    size_t n_all = 0, i, k = 0;
    CK_ULONG n;
    CK_RV rv;

    *objs = NULL;
    *count = 0;
    rv = LOWER(ht, C_FindObjectsInit, s, tmpl, CMK_ARRAY_SIZE(tmpl));
    if (rv != CKR_OK)
        return rv;
    do {
        n = 0;
        rv = LOWER(ht, C_FindObjects, s, found, CMK_ARRAY_SIZE(found), &n);
        if (rv != CKR_OK || n == 0)
            break;
        more = realloc(all, (n_all + n) * sizeof(*all));
        if (more == NULL) {
            rv = CKR_HOST_MEMORY;
            break;
        }
        all = more;
        memcpy(all + n_all, found, n * sizeof(*found));
        n_all += n;
    } while (rv == CKR_OK);
    LOWER(ht, C_FindObjectsFinal, s);
    if (rv == CKR_OK && n_all > 0 &&
        (*objs = calloc(n_all, sizeof(**objs))) == NULL)
        rv = CKR_HOST_MEMORY;
    for (i = 0; rv == CKR_OK && i < n_all; i++) {
        CK_ULONG len = 0;
        char *label = hsm_get_attr(ht, s, all[i], CKA_LABEL, &len);
        bool allowed = config_list_allows(ht->keys, label ? label : "");

        free(label);
        /* A key destroyed meanwhile by another process is left out. */
        if (allowed && hsm_secret_pobj(ht, s, all[i], &(*objs)[k]) == CKR_OK)
            k++;
    }
    free(all);
    if (rv != CKR_OK) {
        free(*objs);
        *objs = NULL;
        return rv;
    }
    *count = k;
    return CKR_OK;
}

CK_RV hsm_list(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
               struct pobj **objs, CK_ULONG *count, bool *complete)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    struct ver_copy *list = NULL;
    struct pobj *out = NULL;
    size_t n = 0, i, k = 0;
    CK_RV rv;

    struct pobj *secrets = NULL;
    size_t n_secrets = 0;

    (void)hint;
    (void)nhint;
    rv = scan(ht, s);
    if (rv == CKR_OK) {
        /* One search at a time on the lower session, as scan(). */
        pthread_mutex_lock(&ht->list_lock);
        rv = scan_secrets(ht, s, &secrets, &n_secrets);
        pthread_mutex_unlock(&ht->list_lock);
    }
    if (rv != CKR_OK) {
        if (hsm_outage_keeps_listing(ht, rv)) {
            /* The objects of the last listing stay (each version's use
             * is checked by hsm_usage_check, with its own grace). */
            c->device_error = rv;
            *objs = NULL;
            *count = 0;
            *complete = false;
            return CKR_OK;
        }
        return hsm_mapped(c, rv);
    }
    __atomic_store_n(&ht->listed, true, __ATOMIC_RELAXED);

    rv = copy_present(ht, &list, &n);
    out = rv == CKR_OK ? calloc(2 * n + n_secrets + 1, sizeof(*out)) : NULL;
    for (i = 0; out != NULL && i < n; i++)
        if (version_objects(ht, s, &list[i], &out[k], &out[k + 1]) == 0)
            k += 2;
    for (i = 0; i < n_secrets; i++) {
        if (out != NULL)
            out[k++] = secrets[i];
        else {
            hsm_ref_free(ht, secrets[i].ref);
            secrets[i].ref = NULL;
            pobj_clear(NULL, NULL, &secrets[i]);
        }
    }
    free(secrets);
    for (i = 0; i < n; i++) {
        free(list[i].name);
        free(list[i].label);
    }
    free(list);
    if (out == NULL)
        return CKR_HOST_MEMORY;
    *objs = out;
    *count = k;
    *complete = true;
    return CKR_OK;
}

void hsm_ref_free(void *tok, void *ref)
{
    int *kind = ref;

    /* Versions live as long as the token; secret key references are the
     * front end's to free. */
    if (kind != NULL && *kind == HSM_REF_SECRET)
        free(ref);
}

/* The lower handle behind a reference; 0 if it is not there now. */
CK_OBJECT_HANDLE hsm_ref_handle(struct hsm_token *ht, void *ref,
                                bool private_half)
{
    int *kind = ref;
    CK_OBJECT_HANDLE h = 0;

    if (kind == NULL)
        return 0;
    if (*kind == HSM_REF_SECRET)
        return ((struct hsm_secret *)ref)->h;
    pthread_mutex_lock(&ht->lock);
    h = private_half ? ((struct hsm_ver *)ref)->priv
                     : ((struct hsm_ver *)ref)->pub;
    pthread_mutex_unlock(&ht->lock);
    return h;
}
