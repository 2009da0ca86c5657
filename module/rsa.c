#include "config.h"

/* RSA_set0_key: the fallback in rsa_pkey_from_parts(). */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include "module.h"
#include "rsa.h"
#include "secure.h"

const EVP_MD *rsa_md_for_mech(CK_MECHANISM_TYPE m)
{
    switch (m) {
    case CKM_SHA_1:
        return EVP_sha1();
    case CKM_SHA224:
        return EVP_sha224();
    case CKM_SHA256:
        return EVP_sha256();
    case CKM_SHA384:
        return EVP_sha384();
    case CKM_SHA512:
        return EVP_sha512();
    default:
        return NULL;
    }
}

const EVP_MD *rsa_md_for_mgf(CK_RSA_PKCS_MGF_TYPE mgf)
{
    switch (mgf) {
    case CKG_MGF1_SHA1:
        return EVP_sha1();
    case CKG_MGF1_SHA224:
        return EVP_sha224();
    case CKG_MGF1_SHA256:
        return EVP_sha256();
    case CKG_MGF1_SHA384:
        return EVP_sha384();
    case CKG_MGF1_SHA512:
        return EVP_sha512();
    default:
        return NULL;
    }
}

bool rsa_hash_sign_mech(CK_MECHANISM_TYPE m, CK_MECHANISM_TYPE *digest,
                        bool *pss)
{
    static const struct {
        CK_MECHANISM_TYPE mech, digest;
        bool pss;
    } map[] = {
        {CKM_SHA1_RSA_PKCS, CKM_SHA_1, false},
        {CKM_SHA224_RSA_PKCS, CKM_SHA224, false},
        {CKM_SHA256_RSA_PKCS, CKM_SHA256, false},
        {CKM_SHA384_RSA_PKCS, CKM_SHA384, false},
        {CKM_SHA512_RSA_PKCS, CKM_SHA512, false},
        {CKM_SHA1_RSA_PKCS_PSS, CKM_SHA_1, true},
        {CKM_SHA224_RSA_PKCS_PSS, CKM_SHA224, true},
        {CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, true},
        {CKM_SHA384_RSA_PKCS_PSS, CKM_SHA384, true},
        {CKM_SHA512_RSA_PKCS_PSS, CKM_SHA512, true},
    };
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(map); i++) {
        if (map[i].mech == m) {
            *digest = map[i].digest;
            *pss = map[i].pss;
            return true;
        }
    }
    return false;
}

CK_RV rsa_check_oaep(const CK_MECHANISM *m)
{
    const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;

    if (p == NULL || m->ulParameterLen != sizeof(*p))
        return CKR_MECHANISM_PARAM_INVALID;
    if (rsa_md_for_mech(p->hashAlg) == NULL || rsa_md_for_mgf(p->mgf) == NULL)
        return CKR_MECHANISM_PARAM_INVALID;
    if (p->source != 0 && p->source != CKZ_DATA_SPECIFIED)
        return CKR_MECHANISM_PARAM_INVALID;
    if (p->pSourceData == NULL && p->ulSourceDataLen != 0)
        return CKR_MECHANISM_PARAM_INVALID;
    return CKR_OK;
}

CK_RV rsa_check_pss(const CK_MECHANISM *m, CK_MECHANISM_TYPE hash_mech)
{
    const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;

    if (p == NULL || m->ulParameterLen != sizeof(*p))
        return CKR_MECHANISM_PARAM_INVALID;
    if (rsa_md_for_mech(p->hashAlg) == NULL || rsa_md_for_mgf(p->mgf) == NULL)
        return CKR_MECHANISM_PARAM_INVALID;
    /* The hash-and-sign forms must name their own hash. */
    if (hash_mech != 0 && p->hashAlg != hash_mech)
        return CKR_MECHANISM_PARAM_INVALID;
    if (p->sLen > 1024)
        return CKR_MECHANISM_PARAM_INVALID;
    return CKR_OK;
}

CK_RV rsa_digest_info(CK_MECHANISM_TYPE digest, const CK_BYTE *hash,
                      CK_ULONG hlen, CK_BYTE *out, CK_ULONG *outlen)
{
    /* DER of DigestInfo up to the digest (RFC 8017 section 9.2, note 1). */
    static const CK_BYTE sha1[] = {0x30, 0x21, 0x30, 0x09, 0x06,
                                   0x05, 0x2b, 0x0e, 0x03, 0x02,
                                   0x1a, 0x05, 0x00, 0x04, 0x14};
    static const CK_BYTE sha224[] = {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                     0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                     0x04, 0x05, 0x00, 0x04, 0x1c};
    static const CK_BYTE sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                     0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                     0x01, 0x05, 0x00, 0x04, 0x20};
    static const CK_BYTE sha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                     0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                     0x02, 0x05, 0x00, 0x04, 0x30};
    static const CK_BYTE sha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                     0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                     0x03, 0x05, 0x00, 0x04, 0x40};
    const CK_BYTE *prefix;
    CK_ULONG plen;

    switch (digest) {
    case CKM_SHA_1:
        prefix = sha1, plen = sizeof(sha1);
        break;
    case CKM_SHA224:
        prefix = sha224, plen = sizeof(sha224);
        break;
    case CKM_SHA256:
        prefix = sha256, plen = sizeof(sha256);
        break;
    case CKM_SHA384:
        prefix = sha384, plen = sizeof(sha384);
        break;
    case CKM_SHA512:
        prefix = sha512, plen = sizeof(sha512);
        break;
    default:
        return CKR_MECHANISM_INVALID;
    }
    if (hlen != prefix[plen - 1] || *outlen < plen + hlen)
        return CKR_GENERAL_ERROR;
    memcpy(out, prefix, plen);
    memcpy(out + plen, hash, hlen);
    *outlen = plen + hlen;
    return CKR_OK;
}

EVP_PKEY *rsa_pkey_from_parts(const CK_BYTE *n, CK_ULONG nlen, const CK_BYTE *e,
                              CK_ULONG elen)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pk = NULL;
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL);
    BIGNUM *be = BN_bin2bn(e, (int)elen, NULL);

    if (bld == NULL || bn == NULL || be == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        goto out;
    params = OSSL_PARAM_BLD_to_param(bld);
    ERR_set_mark();
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pk = NULL;
    ERR_pop_to_mark();
    if (pk == NULL) {
        /* An ENGINE that is the default for RSA (openssl -engine pkcs11,
         * which loads this module) makes the context above a legacy one,
         * which cannot import: build a legacy key instead. */
        RSA *rsa = RSA_new();
        if (rsa != NULL && RSA_set0_key(rsa, bn, be, NULL) == 1) {
            bn = be = NULL; /* owned by rsa */
            pk = EVP_PKEY_new();
            if (pk != NULL && EVP_PKEY_assign_RSA(pk, rsa) == 1)
                rsa = NULL; /* owned by pk */
            else {
                EVP_PKEY_free(pk);
                pk = NULL;
            }
        }
        RSA_free(rsa);
    }
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return pk;
}

/*
 * The public keys of local operations (wrap, encrypt, verify): one
 * EVP_PKEY per distinct public key, with the Montgomery context OpenSSL
 * caches in it on first use (about 2.5 KiB for RSA-2048), in a cache of
 * at most RSA_PKEY_CACHE_MAX keys kept in least-recently-used order. The
 * objects of a key version, a version seen again under a new handle and
 * the same key in several vaults share an entry; a key pushed out is
 * built again from the object's CKA_MODULUS and CKA_PUBLIC_EXPONENT on
 * its next use. Objects hold no pointer to an entry: each operation looks
 * its key up by modulus (a hash of its last bytes and one comparison:
 * with the release, about 620 instructions, against 370,000 for an
 * RSA-2048 encryption) and holds a counted reference for its length, so a
 * key that another thread pushes out meanwhile is freed only when the
 * operation drops it.
 *
 * The table's lock is a leaf: taken under the table mutex (g.mutex) or
 * none, nothing taken under it, and no OpenSSL call made under it (the
 * EVP_PKEY of an entry is built and freed outside it).
 */
#define PKEY_BUCKETS 256

struct rsa_pkey {
    struct rsa_pkey *next;          /* in its bucket */
    struct rsa_pkey *newer, *older; /* in the LRU list */
    EVP_PKEY *pk;
    /* Under pkeys.lock: one for the table while the entry is in it, one
     * per operation using it. */
    unsigned long refs;
    CK_ULONG nlen, elen;
    unsigned char ne[]; /* the modulus, then the exponent */
};

static struct {
    pthread_mutex_t lock;
    struct rsa_pkey *bucket[PKEY_BUCKETS];
    struct rsa_pkey *newest, *oldest;
    size_t count;
} pkeys = {.lock = PTHREAD_MUTEX_INITIALIZER};

void rsa_atfork_prepare(void)
{
    pthread_mutex_lock(&pkeys.lock);
}

void rsa_atfork_release(void)
{
    pthread_mutex_unlock(&pkeys.lock);
}

/* A modulus is uniformly random: its last bytes are a good hash. */
static size_t pkey_bucket(const CK_BYTE *n, CK_ULONG nlen)
{
    size_t h = 0;
    CK_ULONG i;

    for (i = nlen > 8 ? nlen - 8 : 0; i < nlen; i++)
        h = h * 131 + n[i];
    return h % PKEY_BUCKETS;
}

static struct rsa_pkey *pkey_find_unlocked(size_t b, const CK_BYTE *n,
                                           CK_ULONG nlen, const CK_BYTE *e,
                                           CK_ULONG elen)
{
    struct rsa_pkey *k;

    for (k = pkeys.bucket[b]; k != NULL; k = k->next)
        if (k->nlen == nlen && k->elen == elen && memcmp(k->ne, n, nlen) == 0 &&
            memcmp(k->ne + nlen, e, elen) == 0)
            return k;
    return NULL;
}

static void lru_unlink_unlocked(struct rsa_pkey *k)
{
    if (k->newer != NULL)
        k->newer->older = k->older;
    else
        pkeys.newest = k->older;
    if (k->older != NULL)
        k->older->newer = k->newer;
    else
        pkeys.oldest = k->newer;
    k->newer = k->older = NULL;
}

static void lru_push_unlocked(struct rsa_pkey *k)
{
    k->newer = NULL;
    k->older = pkeys.newest;
    if (pkeys.newest != NULL)
        pkeys.newest->newer = k;
    else
        pkeys.oldest = k;
    pkeys.newest = k;
}

/* A reference to the cached key, now the most recently used; NULL if
 * there is none. */
static struct rsa_pkey *pkey_ref_unlocked(size_t b, const CK_BYTE *n,
                                          CK_ULONG nlen, const CK_BYTE *e,
                                          CK_ULONG elen)
{
    struct rsa_pkey *k = pkey_find_unlocked(b, n, nlen, e, elen);

    if (k != NULL) {
        k->refs++;
        if (pkeys.newest != k) {
            lru_unlink_unlocked(k);
            lru_push_unlocked(k);
        }
    }
    return k;
}

/* Takes the least recently used key out of the table; returns it if that
 * was its last reference (to be freed outside the lock). */
static struct rsa_pkey *pkey_evict_unlocked(void)
{
    struct rsa_pkey *k = pkeys.oldest, **at;

    for (at = &pkeys.bucket[pkey_bucket(k->ne, k->nlen)]; *at != k;
         at = &(*at)->next)
        ;
    *at = k->next;
    lru_unlink_unlocked(k);
    pkeys.count--;
    return --k->refs == 0 ? k : NULL;
}

static void pkey_free(struct rsa_pkey *k)
{
    if (k == NULL)
        return;
    EVP_PKEY_free(k->pk);
    free(k);
}

/* Adds a key just built (one reference, the caller's), unless another
 * thread added the same one meanwhile: returns the entry to use. */
static struct rsa_pkey *pkey_add(size_t b, struct rsa_pkey *made)
{
    struct rsa_pkey *k, *evicted = NULL;

    pthread_mutex_lock(&pkeys.lock);
    k = pkey_ref_unlocked(b, made->ne, made->nlen, made->ne + made->nlen,
                          made->elen);
    if (k == NULL) {
        made->refs++; /* the table's */
        made->next = pkeys.bucket[b];
        pkeys.bucket[b] = made;
        lru_push_unlocked(made);
        if (++pkeys.count > RSA_PKEY_CACHE_MAX)
            evicted = pkey_evict_unlocked();
    }
    pthread_mutex_unlock(&pkeys.lock);
    pkey_free(evicted);
    if (k == NULL)
        return made;
    pkey_free(made);
    return k;
}

struct rsa_pkey *rsa_object_pkey(struct object *o)
{
    struct rsa_pkey *k = NULL, *made = NULL;
    CK_ATTRIBUTE *n, *e;
    size_t b = 0;

    pthread_mutex_lock(&g.mutex);
    n = attrs_find(&o->attrs, CKA_MODULUS);
    e = attrs_find(&o->attrs, CKA_PUBLIC_EXPONENT);
    if (n != NULL && e != NULL && n->ulValueLen > 0 && e->ulValueLen > 0) {
        b = pkey_bucket(n->pValue, n->ulValueLen);
        pthread_mutex_lock(&pkeys.lock);
        k = pkey_ref_unlocked(b, n->pValue, n->ulValueLen, e->pValue,
                              e->ulValueLen);
        pthread_mutex_unlock(&pkeys.lock);
        if (k == NULL)
            made = calloc(1, sizeof(*made) + n->ulValueLen + e->ulValueLen);
        if (made != NULL) {
            made->refs = 1;
            made->nlen = n->ulValueLen;
            made->elen = e->ulValueLen;
            memcpy(made->ne, n->pValue, made->nlen);
            memcpy(made->ne + made->nlen, e->pValue, made->elen);
        }
    }
    pthread_mutex_unlock(&g.mutex);
    if (k != NULL || made == NULL)
        return k;
    made->pk = rsa_pkey_from_parts(made->ne, made->nlen, made->ne + made->nlen,
                                   made->elen);
    if (made->pk == NULL) {
        free(made);
        return NULL;
    }
    return pkey_add(b, made);
}

EVP_PKEY *rsa_pkey_evp(const struct rsa_pkey *k)
{
    return k->pk;
}

void rsa_pkey_unref(struct rsa_pkey *k)
{
    bool last;

    if (k == NULL)
        return;
    pthread_mutex_lock(&pkeys.lock);
    last = --k->refs == 0;
    pthread_mutex_unlock(&pkeys.lock);
    if (last)
        pkey_free(k);
}

void rsa_pkey_flush(void)
{
    struct rsa_pkey *k, *unused = NULL;

    pthread_mutex_lock(&pkeys.lock);
    while (pkeys.oldest != NULL) {
        k = pkey_evict_unlocked();
        if (k != NULL) {
            k->next = unused;
            unused = k;
        }
    }
    pthread_mutex_unlock(&pkeys.lock);
    while (unused != NULL) {
        k = unused;
        unused = k->next;
        pkey_free(k);
    }
}

size_t rsa_pkey_cached(void)
{
    size_t n;

    pthread_mutex_lock(&pkeys.lock);
    n = pkeys.count;
    pthread_mutex_unlock(&pkeys.lock);
    return n;
}

CK_ULONG rsa_object_bytes(struct object *o)
{
    CK_ULONG bits = object_get_ulong(o, CKA_MODULUS_BITS, 0);

    if (bits == 0) {
        CK_ULONG len = 0;
        void *n = object_get_value(o, CKA_MODULUS, &len);
        free(n);
        return len;
    }
    return (bits + 7) / 8;
}

CK_RV rsa_set_oaep(EVP_PKEY_CTX *ctx, const CK_MECHANISM *m)
{
    const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;
    unsigned char *label = NULL;

    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, rsa_md_for_mech(p->hashAlg)) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, rsa_md_for_mgf(p->mgf)) <= 0)
        return CKR_MECHANISM_PARAM_INVALID;
    if (p->ulSourceDataLen > 0) {
        label = OPENSSL_memdup(p->pSourceData, p->ulSourceDataLen);
        if (label == NULL)
            return CKR_HOST_MEMORY;
        if (EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, label,
                                             (int)p->ulSourceDataLen) <= 0) {
            OPENSSL_free(label);
            return CKR_MECHANISM_PARAM_INVALID;
        }
    }
    return CKR_OK;
}

CK_RV rsa_encrypt(EVP_PKEY *pk, const CK_MECHANISM *m, const CK_BYTE *in,
                  CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t olen = *outlen;
    CK_RV rv = CKR_OK;

    if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    if (m->mechanism == CKM_RSA_PKCS_OAEP) {
        rv = rsa_set_oaep(ctx, m);
    } else if (m->mechanism == CKM_RSA_PKCS) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            rv = CKR_GENERAL_ERROR;
    } else if (m->mechanism == CKM_RSA_X_509) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) <= 0)
            rv = CKR_GENERAL_ERROR;
    } else {
        rv = CKR_MECHANISM_INVALID;
    }
    if (rv != CKR_OK)
        goto out;
    if (EVP_PKEY_encrypt(ctx, out, &olen, in, inlen) <= 0) {
        rv = CKR_DATA_LEN_RANGE;
        goto out;
    }
    *outlen = olen;
out:
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

CK_RV rsa_verify(EVP_PKEY *pk, const CK_MECHANISM *m, const CK_BYTE *data,
                 CK_ULONG len, const CK_BYTE *sig, CK_ULONG siglen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    CK_RV rv = CKR_OK;
    int r;

    if (ctx == NULL || EVP_PKEY_verify_init(ctx) <= 0) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    if ((size_t)siglen != (size_t)EVP_PKEY_get_size(pk)) {
        rv = CKR_SIGNATURE_LEN_RANGE;
        goto out;
    }
    if (m->mechanism == CKM_RSA_PKCS_PSS) {
        const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_signature_md(ctx, rsa_md_for_mech(p->hashAlg)) <=
                0 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, rsa_md_for_mgf(p->mgf)) <= 0 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)p->sLen) <= 0) {
            rv = CKR_MECHANISM_PARAM_INVALID;
            goto out;
        }
    } else if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    r = EVP_PKEY_verify(ctx, sig, siglen, data, len);
    rv = r == 1 ? CKR_OK : CKR_SIGNATURE_INVALID;
out:
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

static int set_date(struct attrs *a, CK_ATTRIBUTE_TYPE type, long long t)
{
    CK_DATE d;
    char buf[40];
    struct tm tm;
    time_t tt = (time_t)t;

    if (t <= 0)
        return attrs_set(a, type, NULL, 0);
    if (gmtime_r(&tt, &tm) == NULL)
        return -1;
    snprintf(buf, sizeof(buf), "%04d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday);
    memcpy(d.year, buf, 4);
    memcpy(d.month, buf + 4, 2);
    memcpy(d.day, buf + 6, 2);
    return attrs_set(a, type, &d, sizeof(d));
}

static int set_time_text(struct attrs *a, CK_ATTRIBUTE_TYPE type, long long t)
{
    char buf[32];

    if (t <= 0)
        return attrs_set(a, type, NULL, 0);
    snprintf(buf, sizeof(buf), "%lld", t);
    return attrs_set_string(a, type, buf);
}

/* Attributes both halves share. */
static int common_key_attrs(struct attrs *a, const struct rsa_key_desc *d)
{
    int r = 0;

    r |= attrs_set_ulong(a, CKA_KEY_TYPE, CKK_RSA);
    r |= attrs_set_bool(a, CKA_TOKEN, CK_TRUE);
    r |= attrs_set_string(a, CKA_LABEL, d->label);
    r |= attrs_set(a, CKA_ID, d->id, d->id_len);
    r |= attrs_set(a, CKA_MODULUS, d->modulus, d->modulus_len);
    r |= attrs_set_ulong(a, CKA_MODULUS_BITS, d->modulus_len * 8);
    r |= attrs_set(a, CKA_PUBLIC_EXPONENT, d->exponent, d->exponent_len);
    r |= set_date(a, CKA_START_DATE, d->not_before);
    r |= set_date(a, CKA_END_DATE, d->expires);
    r |= attrs_set_bool(a, CKA_LOCAL, d->local);
    r |= attrs_set_ulong(a, CKA_KEY_GEN_MECHANISM,
                         d->local ? CKM_RSA_PKCS_KEY_PAIR_GEN
                                  : CK_UNAVAILABLE_INFORMATION);
    r |= attrs_set_bool(a, CKA_DERIVE, CK_FALSE);
    r |= attrs_set_bool(a, CKA_MODIFIABLE, CK_FALSE);
    r |= attrs_set_bool(a, CKA_COPYABLE, CK_FALSE);
    r |= attrs_set_bool(a, CKA_DESTROYABLE, CK_FALSE);
    /* Vendor attributes (docs/vendor.md). */
    r |= attrs_set_string(a, CKA_CMK_BACKEND, d->backend);
    r |= attrs_set_string(a, CKA_CMK_SOURCE, d->source);
    r |= attrs_set_string(a, CKA_CMK_KEY_NAME, d->key_name);
    r |= attrs_set_string(a, CKA_CMK_VERSION, d->version);
    r |= attrs_set_bool(a, CKA_CMK_ENABLED, d->enabled);
    r |= attrs_set_bool(a, CKA_CMK_CURRENT, d->current);
    r |= set_time_text(a, CKA_CMK_CREATED, d->created);
    r |= set_time_text(a, CKA_CMK_UPDATED, d->updated);
    r |= set_time_text(a, CKA_CMK_NOT_BEFORE, d->not_before);
    r |= set_time_text(a, CKA_CMK_EXPIRES, d->expires);
    r |= attrs_set_string(a, CKA_CMK_RECOVERY, d->recovery_level);
    r |= attrs_set_string(a, CKA_CMK_KEY_OPS, d->key_ops);
    r |= attrs_set_string(a, CKA_CMK_KEY_TYPE, d->key_type);
    r |= attrs_set_string(a, CKA_CMK_REFUSED, d->refused ? d->refused : "");
    r |= attrs_set_string(a, CKA_CMK_REPLICAS, d->replicas ? d->replicas : "");
    return r ? -1 : 0;
}

/* DER: a length of LEN at P (when P is not NULL); returns its size. */
static size_t der_len(unsigned char *p, size_t len)
{
    size_t n = 0, i, v;

    if (len < 0x80) {
        if (p)
            p[0] = (unsigned char)len;
        return 1;
    }
    for (v = len; v; v >>= 8)
        n++;
    if (p) {
        p[0] = (unsigned char)(0x80 | n);
        for (i = 0, v = len; i < n; i++, v >>= 8)
            p[n - i] = (unsigned char)(v & 0xff);
    }
    return 1 + n;
}

/* DER: an INTEGER from unsigned big-endian bytes (leading zeros dropped, a
 * zero byte before a high bit); writes at P when not NULL, returns the
 * size. */
static size_t der_uint(unsigned char *p, const CK_BYTE *v, CK_ULONG len)
{
    size_t body, h;

    while (len > 0 && v[0] == 0) {
        v++;
        len--;
    }
    body = len == 0 || (v[0] & 0x80) ? len + 1 : len;
    if (p == NULL)
        return 1 + der_len(NULL, body) + body;
    p[0] = 0x02;
    h = 1 + der_len(p + 1, body);
    if (body > len)
        p[h++] = 0;
    if (len)
        memcpy(p + h, v, len);
    return h + len;
}

/*
 * CKA_PUBLIC_KEY_INFO of an RSA key: the DER SubjectPublicKeyInfo (RFC 5280;
 * the algorithm rsaEncryption with NULL parameters, RFC 8017 A.1) of the
 * modulus and exponent, as i2d_PUBKEY() writes it. Written here, not by
 * OpenSSL's encoder, which costs a token with many keys milliseconds at
 * every listing. Returns a malloc'd buffer and sets *LEN, or NULL.
 */
static unsigned char *rsa_spki(const struct rsa_key_desc *d, size_t *len)
{
    static const unsigned char alg[] = {0x30, 0x0d, 0x06, 0x09, 0x2a,
                                        0x86, 0x48, 0x86, 0xf7, 0x0d,
                                        0x01, 0x01, 0x01, 0x05, 0x00};
    size_t ints = der_uint(NULL, d->modulus, d->modulus_len) +
                  der_uint(NULL, d->exponent, d->exponent_len);
    size_t rsapub = 1 + der_len(NULL, ints) + ints;
    size_t bits = 1 + rsapub; /* the unused-bits byte */
    size_t inner = sizeof(alg) + 1 + der_len(NULL, bits) + bits;
    size_t total = 1 + der_len(NULL, inner) + inner, o = 0;
    unsigned char *p = malloc(total);

    if (p == NULL)
        return NULL;
    p[o++] = 0x30;
    o += der_len(p + o, inner);
    memcpy(p + o, alg, sizeof(alg));
    o += sizeof(alg);
    p[o++] = 0x03;
    o += der_len(p + o, bits);
    p[o++] = 0;
    p[o++] = 0x30;
    o += der_len(p + o, ints);
    o += der_uint(p + o, d->modulus, d->modulus_len);
    o += der_uint(p + o, d->exponent, d->exponent_len);
    *len = o;
    return p;
}

int rsa_key_objects(const struct rsa_key_desc *d, struct pobj *priv,
                    struct pobj *pub)
{
    char uid[512];
    unsigned char *spki;
    size_t spki_len = 0;
    int r = 0;

    memset(priv, 0, sizeof(*priv));
    memset(pub, 0, sizeof(*pub));
    snprintf(uid, sizeof(uid), "%s/private", d->uid_prefix);
    priv->uid = strdup(uid);
    snprintf(uid, sizeof(uid), "%s/public", d->uid_prefix);
    pub->uid = strdup(uid);
    if (priv->uid == NULL || pub->uid == NULL)
        goto fail;

    r |= attrs_set_ulong(&priv->attrs, CKA_CLASS, CKO_PRIVATE_KEY);
    r |= common_key_attrs(&priv->attrs, d);
    r |= attrs_set_bool(&priv->attrs, CKA_PRIVATE, d->private_obj);
    r |= attrs_set_bool(&priv->attrs, CKA_SENSITIVE, CK_TRUE);
    r |= attrs_set_bool(&priv->attrs, CKA_ALWAYS_SENSITIVE, CK_TRUE);
    r |= attrs_set_bool(&priv->attrs, CKA_NEVER_EXTRACTABLE, CK_TRUE);
    r |= attrs_set_bool(&priv->attrs, CKA_EXTRACTABLE, CK_FALSE);
    r |= attrs_set_bool(&priv->attrs, CKA_DECRYPT, d->decrypt);
    r |= attrs_set_bool(&priv->attrs, CKA_UNWRAP, d->unwrap);
    r |= attrs_set_bool(&priv->attrs, CKA_SIGN, d->sign);
    r |= attrs_set_bool(&priv->attrs, CKA_SIGN_RECOVER, CK_FALSE);
    r |= attrs_set_bool(&priv->attrs, CKA_ALWAYS_AUTHENTICATE, CK_FALSE);
    r |= attrs_set_bool(&priv->attrs, CKA_WRAP_WITH_TRUSTED, CK_FALSE);
    r |= attrs_set(&priv->attrs, CKA_SUBJECT, NULL, 0);
    spki = rsa_spki(d, &spki_len);
    r |= spki ? attrs_set(&priv->attrs, CKA_PUBLIC_KEY_INFO, spki,
                          (CK_ULONG)spki_len)
              : -1;

    r |= attrs_set_ulong(&pub->attrs, CKA_CLASS, CKO_PUBLIC_KEY);
    r |= common_key_attrs(&pub->attrs, d);
    r |= attrs_set_bool(&pub->attrs, CKA_PRIVATE, CK_FALSE);
    r |= attrs_set_bool(&pub->attrs, CKA_ENCRYPT, d->encrypt);
    r |= attrs_set_bool(&pub->attrs, CKA_WRAP, d->wrap);
    r |= attrs_set_bool(&pub->attrs, CKA_VERIFY, d->verify);
    r |= attrs_set_bool(&pub->attrs, CKA_VERIFY_RECOVER, CK_FALSE);
    r |= attrs_set_bool(&pub->attrs, CKA_TRUSTED, CK_FALSE);
    r |= attrs_set(&pub->attrs, CKA_SUBJECT, NULL, 0);
    r |= spki ? attrs_set(&pub->attrs, CKA_PUBLIC_KEY_INFO, spki,
                          (CK_ULONG)spki_len)
              : -1;
    free(spki);
    if (r == 0)
        return 0;
fail:
    /* No memory: nothing is kept. */
    pobj_clear(NULL, NULL, priv);
    pobj_clear(NULL, NULL, pub);
    return -1;
}
