/*
 * Certificate objects beside private keys ("certificates =" in a [token]
 * section). Some consumers reach a key only through a certificate with the
 * same CKA_ID: Java's PKCS11 KeyStore lists no alias for a private key
 * without one. The back ends hold keys, not certificates, so the module
 * offers them itself:
 *
 *   generate  a self-signed X.509 certificate per key version, subject and
 *             issuer CN=<key name>, signed through the key itself (the
 *             provider's crypt(POP_SIGN): the module never holds a private
 *             key). Made when a listing first shows the version and the
 *             key can sign (logged in where the token needs it), then kept
 *             in memory for the version's life. The same bytes in every
 *             process: nothing in it depends on when or where it is made
 *             (see generate()).
 *   DIR       <DIR>/<label>.pem, else <DIR>/<hex CKA_ID>.pem, used only if
 *             its public key is the key's.
 *   none      nothing (the default).
 *
 * The certificates join each provider listing before it is merged, so they
 * have stable handles and follow their key: its label, and its removal.
 * Key objects get the certificate's subject as CKA_SUBJECT.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "module.h"
#include "pcall.h"
#include "rsa.h"

/* One key version's certificate, or the failure to make one. */
struct cert_entry {
    struct cert_entry *next;
    char *uid; /* the private key's uid */
    unsigned char *der;
    CK_ULONG der_len;
    time_t failed_at; /* no certificate (yet): when it was last tried */
};

void certs_teardown(struct token *t)
{
    struct cert_entry *e, *next;

    for (e = t->certs; e != NULL; e = next) {
        next = e->next;
        free(e->uid);
        free(e->der);
        free(e);
    }
    t->certs = NULL;
    free(t->cert_dir);
    t->cert_dir = NULL;
    t->cert_mode = CERTS_NONE;
}

CK_RV certs_setup(struct token *t, const struct config_token *ct)
{
    const char *v = config_token_get(ct, "certificates");

    t->cert_mode = CERTS_NONE;
    if (v == NULL || strcmp(v, "none") == 0)
        return CKR_OK;
    if (strcmp(v, "generate") == 0) {
        t->cert_mode = CERTS_GENERATE;
        return CKR_OK;
    }
    if (v[0] == '/') {
        t->cert_dir = strdup(v);
        if (t->cert_dir == NULL)
            return CKR_HOST_MEMORY;
        t->cert_mode = CERTS_DIR;
        return CKR_OK;
    }
    cmk_error("%s:%d: certificates: '%s' is not generate, none or an "
              "absolute directory",
              ct->path, config_token_line(ct, "certificates"), v);
    return CKR_GENERAL_ERROR;
}

const CK_ATTRIBUTE *certs_hint(const struct token *t, const CK_ATTRIBUTE *hint,
                               CK_ULONG n, CK_ATTRIBUTE *buf, CK_ULONG *nout)
{
    CK_ULONG i, k = 0;

    *nout = n;
    if (t->cert_mode == CERTS_NONE)
        return hint;
    /* A certificate shares its key's label and id and nothing else: the
     * listing must hold every private key that matches those two. */
    for (i = 0; i < n; i++)
        if (hint[i].type == CKA_LABEL || hint[i].type == CKA_ID)
            buf[k++] = hint[i];
    *nout = k;
    return buf;
}

/* A copy of a string attribute, or NULL. */
static char *attr_string(const struct attrs *a, CK_ATTRIBUTE_TYPE type)
{
    const CK_ATTRIBUTE *at = attrs_find(a, type);
    char *s;

    if (at == NULL || at->ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return NULL;
    s = malloc(at->ulValueLen + 1);
    if (s == NULL)
        return NULL;
    if (at->ulValueLen > 0)
        memcpy(s, at->pValue, at->ulValueLen);
    s[at->ulValueLen] = '\0';
    return s;
}

static EVP_PKEY *key_public(const struct pobj *p)
{
    const CK_ATTRIBUTE *at = attrs_find(&p->attrs, CKA_PUBLIC_KEY_INFO);
    const unsigned char *q;

    if (at == NULL || at->pValue == NULL || at->ulValueLen == 0)
        return NULL;
    q = at->pValue;
    return d2i_PUBKEY(NULL, &q, (long)at->ulValueLen);
}

/* DER length octets; returns how many were written (at most 4). */
static size_t der_len(unsigned char *out, size_t len)
{
    if (len < 0x80) {
        out[0] = (unsigned char)len;
        return 1;
    }
    if (len < 0x100) {
        out[0] = 0x81;
        out[1] = (unsigned char)len;
        return 2;
    }
    out[0] = 0x82;
    out[1] = (unsigned char)(len >> 8);
    out[2] = (unsigned char)len;
    return 3;
}

/* Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
 * signatureValue BIT STRING } (RFC 5280 4.1). */
static unsigned char *assemble(const unsigned char *tbs, size_t tbs_len,
                               const unsigned char *sig, size_t sig_len,
                               size_t *out_len)
{
    /* AlgorithmIdentifier sha256WithRSAEncryption, NULL parameters. */
    static const unsigned char alg[] = {0x30, 0x0d, 0x06, 0x09, 0x2a,
                                        0x86, 0x48, 0x86, 0xf7, 0x0d,
                                        0x01, 0x01, 0x0b, 0x05, 0x00};
    unsigned char bitlen[4], seqlen[4], *out, *p;
    size_t nb = der_len(bitlen, sig_len + 1);
    size_t body = tbs_len + sizeof(alg) + 1 + nb + 1 + sig_len;
    size_t ns = der_len(seqlen, body);

    if (body > 0xffff)
        return NULL;
    out = malloc(1 + ns + body);
    if (out == NULL)
        return NULL;
    p = out;
    *p++ = 0x30;
    memcpy(p, seqlen, ns);
    p += ns;
    memcpy(p, tbs, tbs_len);
    p += tbs_len;
    memcpy(p, alg, sizeof(alg));
    p += sizeof(alg);
    *p++ = 0x03;
    memcpy(p, bitlen, nb);
    p += nb;
    *p++ = 0x00; /* no unused bits */
    memcpy(p, sig, sig_len);
    p += sig_len;
    *out_len = (size_t)(p - out);
    return out;
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int r;

    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return 0;
    r = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return r;
}

/*
 * A self-signed certificate for the private key p, signed through the
 * provider. NULL if the key cannot sign or anything fails.
 *
 * Deterministic for a key version, so that a certificate exported to a
 * trust store or pinned in one process is the one every other process
 * serves: the subject is the key's name (not its label, which gains
 * "@version" when the version stops being current); the serial number
 * comes from the public key; notBefore is the version's creation time
 * (CKA_CMK_CREATED: Key Vault's "created"; hsm tokens have no creation
 * time, PKCS#11 has no attribute for it, so 1970-01-01T00:00:00Z there);
 * notAfter is 99991231235959Z, RFC 5280 4.1.2.5's "no well-defined
 * expiration date", the same for every version; the extensions are
 * fixed; and an RSA PKCS#1 v1.5 signature (RFC 8017 8.2) is a function of
 * the key and the signed bytes alone.
 */
static unsigned char *generate(struct session *s, const struct pobj *p,
                               const char *cn, time_t created, CK_ULONG *len)
{
    struct token *t = s->token;
    CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
    EVP_PKEY *pk = key_public(p);
    const CK_ATTRIBUTE *spki = attrs_find(&p->attrs, CKA_PUBLIC_KEY_INFO);
    X509 *x = X509_new(), *check = NULL;
    X509_NAME *name = X509_NAME_new();
    X509_ALGOR *alg;
    BIGNUM *serial = NULL;
    unsigned char *tbs = NULL, *der = NULL, md[SHA256_DIGEST_LENGTH];
    unsigned char serial_bytes[16];
    CK_BYTE di[64], sig[1024];
    CK_ULONG di_len = sizeof(di), sig_len = sizeof(sig);
    const unsigned char *q;
    size_t der_size = 0;
    int tbs_len;
    CK_RV rv;

    ERR_set_mark();
    if (pk == NULL || spki == NULL || x == NULL || name == NULL)
        goto out;
    /* A serial number that names the key: the first 16 bytes of the
     * SHA-256 of its SubjectPublicKeyInfo, positive. */
    SHA256(spki->pValue, spki->ulValueLen, md);
    memcpy(serial_bytes, md, sizeof(serial_bytes));
    serial_bytes[0] &= 0x7f;
    serial_bytes[0] |= 0x40;
    serial = BN_bin2bn(serial_bytes, sizeof(serial_bytes), NULL);
    if (serial == NULL || !X509_set_version(x, 2) ||
        BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) == NULL ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                    (const unsigned char *)cn, -1, -1, 0) ||
        !X509_set_subject_name(x, name) || !X509_set_issuer_name(x, name) ||
        ASN1_TIME_set(X509_getm_notBefore(x), created) == NULL ||
        !ASN1_TIME_set_string(X509_getm_notAfter(x), "99991231235959Z") ||
        !X509_set_pubkey(x, pk) ||
        !add_ext(x, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(x, NID_key_usage,
                 "critical,digitalSignature,keyEncipherment") ||
        !add_ext(x, NID_subject_key_identifier, "hash"))
        goto out;
    /* The signature algorithm inside the TBSCertificate. */
    alg = (X509_ALGOR *)X509_get0_tbs_sigalg(x);
    if (!X509_ALGOR_set0(alg, OBJ_nid2obj(NID_sha256WithRSAEncryption),
                         V_ASN1_NULL, NULL))
        goto out;
    tbs_len = i2d_re_X509_tbs(x, &tbs);
    if (tbs_len <= 0)
        goto out;
    SHA256(tbs, (size_t)tbs_len, md);
    if (rsa_digest_info(CKM_SHA256, md, sizeof(md), di, &di_len) != CKR_OK)
        goto out;
    rv = provider_sign_listed(s, p, &mech, di, di_len, sig, &sig_len);
    if (rv != CKR_OK) {
        cmk_info("token %s: no certificate for %s: signing failed (%s)",
                 t->name, cn, cmk_rv_name(rv));
        goto out;
    }
    der = assemble(tbs, (size_t)tbs_len, sig, sig_len, &der_size);
    q = der;
    /* What the consumer will parse, checked with the public key. */
    if (der == NULL || (check = d2i_X509(NULL, &q, (long)der_size)) == NULL ||
        X509_verify(check, pk) != 1) {
        cmk_warning("token %s: the certificate made for %s does not verify",
                    t->name, cn);
        free(der);
        der = NULL;
        goto out;
    }
    *len = (CK_ULONG)der_size;
out:
    ERR_pop_to_mark();
    X509_free(check);
    OPENSSL_free(tbs);
    BN_free(serial);
    X509_NAME_free(name);
    X509_free(x);
    EVP_PKEY_free(pk);
    return der;
}

/* <dir>/<name>.pem as DER, if it holds a certificate for key pk. */
static unsigned char *load_pem(struct token *t, const char *name, EVP_PKEY *pk,
                               CK_ULONG *len)
{
    char path[4096];
    FILE *f;
    X509 *x = NULL;
    unsigned char *der = NULL, *p;
    int n;

    if (strchr(name, '/') != NULL || strcmp(name, "..") == 0)
        return NULL;
    snprintf(path, sizeof(path), "%s/%s.pem", t->cert_dir, name);
    f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    ERR_set_mark();
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (x == NULL) {
        cmk_warning("%s: not a PEM certificate", path);
    } else if (pk == NULL || X509_get0_pubkey(x) == NULL ||
               EVP_PKEY_eq(X509_get0_pubkey(x), pk) != 1) {
        cmk_warning("%s: its public key is not the key's; ignored", path);
    } else if ((n = i2d_X509(x, NULL)) > 0 && (der = malloc((size_t)n))) {
        p = der;
        i2d_X509(x, &p);
        *len = (CK_ULONG)n;
    }
    ERR_pop_to_mark();
    X509_free(x);
    return der;
}

static unsigned char *from_dir(struct token *t, const struct pobj *p,
                               const char *label, CK_ULONG *len)
{
    const CK_ATTRIBUTE *id = attrs_find(&p->attrs, CKA_ID);
    EVP_PKEY *pk = key_public(p);
    unsigned char *der = NULL;
    char hexid[129];

    if (label[0] != '\0')
        der = load_pem(t, label, pk, len);
    if (der == NULL && id != NULL && id->ulValueLen > 0 &&
        id->ulValueLen <= 64) {
        cmk_hex_n(id->pValue, id->ulValueLen, hexid, sizeof(hexid));
        der = load_pem(t, hexid, pk, len);
    }
    EVP_PKEY_free(pk);
    return der;
}

static struct cert_entry *entry_find_unlocked(struct token *t, const char *uid)
{
    struct cert_entry *e;

    for (e = t->certs; e != NULL; e = e->next)
        if (strcmp(e->uid, uid) == 0)
            return e;
    return NULL;
}

/* The certificate object for private key p, from its DER. */
static int cert_pobj(const struct pobj *p, const unsigned char *der,
                     CK_ULONG len, struct pobj *out, unsigned char **subject,
                     CK_ULONG *subject_len)
{
    const unsigned char *q = der;
    X509 *x = d2i_X509(NULL, &q, (long)len);
    unsigned char *buf = NULL;
    char uid[600];
    int n, r = 0;
    const CK_ATTRIBUTE *at;

    memset(out, 0, sizeof(*out));
    if (x == NULL)
        return -1;
    snprintf(uid, sizeof(uid), "%s/certificate", p->uid);
    out->uid = strdup(uid);
    attrs_init(&out->attrs);
    r |= out->uid == NULL;
    r |= attrs_set_ulong(&out->attrs, CKA_CLASS, CKO_CERTIFICATE);
    r |= attrs_set_ulong(&out->attrs, CKA_CERTIFICATE_TYPE, CKC_X_509);
    r |= attrs_set_ulong(&out->attrs, CKA_CERTIFICATE_CATEGORY, 0);
    r |= attrs_set_bool(&out->attrs, CKA_TOKEN, CK_TRUE);
    r |= attrs_set_bool(&out->attrs, CKA_PRIVATE, CK_FALSE);
    r |= attrs_set_bool(&out->attrs, CKA_MODIFIABLE, CK_FALSE);
    r |= attrs_set_bool(&out->attrs, CKA_COPYABLE, CK_FALSE);
    r |= attrs_set_bool(&out->attrs, CKA_DESTROYABLE, CK_FALSE);
    r |= attrs_set_bool(&out->attrs, CKA_TRUSTED, CK_FALSE);
    r |= attrs_set(&out->attrs, CKA_VALUE, der, len);
    r |= attrs_set(&out->attrs, CKA_START_DATE, NULL, 0);
    r |= attrs_set(&out->attrs, CKA_END_DATE, NULL, 0);
    at = attrs_find(&p->attrs, CKA_LABEL);
    r |= attrs_set(&out->attrs, CKA_LABEL, at ? at->pValue : NULL,
                   at ? at->ulValueLen : 0);
    at = attrs_find(&p->attrs, CKA_ID);
    r |= attrs_set(&out->attrs, CKA_ID, at ? at->pValue : NULL,
                   at ? at->ulValueLen : 0);
    at = attrs_find(&p->attrs, CKA_PUBLIC_KEY_INFO);
    if (at != NULL)
        r |= attrs_set(&out->attrs, CKA_PUBLIC_KEY_INFO, at->pValue,
                       at->ulValueLen);
    n = i2d_X509_NAME(X509_get_issuer_name(x), &buf);
    r |= n <= 0 || attrs_set(&out->attrs, CKA_ISSUER, buf, (CK_ULONG)n);
    OPENSSL_free(buf);
    buf = NULL;
    n = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &buf);
    r |= n <= 0 || attrs_set(&out->attrs, CKA_SERIAL_NUMBER, buf, (CK_ULONG)n);
    OPENSSL_free(buf);
    buf = NULL;
    n = i2d_X509_NAME(X509_get_subject_name(x), &buf);
    r |= n <= 0 || attrs_set(&out->attrs, CKA_SUBJECT, buf, (CK_ULONG)n);
    if (r == 0) {
        *subject = buf;
        *subject_len = (CK_ULONG)n;
    } else {
        OPENSSL_free(buf);
    }
    X509_free(x);
    return r ? -1 : 0;
}

/* The seconds after which a failed attempt is made again. */
static long retry_after(void)
{
    long r = g.cfg != NULL ? g.cfg->refresh_interval : 0;

    return r > 0 ? r : 60;
}

/* Finds or makes the certificate of private key p; a malloc'd DER copy. */
static unsigned char *cert_for(struct session *s, const struct pobj *p,
                               bool can_sign, CK_ULONG *len)
{
    struct token *t = s->token;
    struct cert_entry *e;
    unsigned char *der = NULL;
    char *label;
    time_t now = time(NULL);
    bool try_now;

    pthread_mutex_lock(&g.mutex);
    e = entry_find_unlocked(t, p->uid);
    if (e != NULL && e->der != NULL) {
        der = malloc(e->der_len);
        if (der != NULL) {
            memcpy(der, e->der, e->der_len);
            *len = e->der_len;
        }
        pthread_mutex_unlock(&g.mutex);
        return der;
    }
    try_now = e == NULL || now - e->failed_at >= retry_after();
    pthread_mutex_unlock(&g.mutex);
    if (!try_now)
        return NULL;
    if (t->cert_mode == CERTS_GENERATE &&
        (!can_sign || !attrs_get_bool(&p->attrs, CKA_SIGN, false) ||
         !attrs_get_bool(&p->attrs, CKA_CMK_ENABLED, true) || p->ref == NULL))
        return NULL; /* not a failure: later, or never */

    label = attr_string(&p->attrs, CKA_LABEL);
    if (label == NULL)
        return NULL;
    if (t->cert_mode == CERTS_GENERATE) {
        char *name = attr_string(&p->attrs, CKA_CMK_KEY_NAME);
        char *when = attr_string(&p->attrs, CKA_CMK_CREATED);
        long long created = when != NULL ? strtoll(when, NULL, 10) : 0;
        const char *cn = name != NULL && name[0] ? name
                         : label[0]              ? label
                                                 : p->uid;

        der = generate(s, p, cn, created > 0 ? (time_t)created : 0, len);
        free(name);
        free(when);
    } else
        der = from_dir(t, p, label, len);
    free(label);

    pthread_mutex_lock(&g.mutex);
    e = entry_find_unlocked(t, p->uid);
    if (e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
        e->uid = strdup(p->uid);
        if (e->uid == NULL) {
            free(e);
            e = NULL;
        } else {
            e->next = t->certs;
            t->certs = e;
        }
    }
    if (e != NULL && e->der == NULL) {
        e->failed_at = now;
        if (der != NULL && (e->der = malloc(*len)) != NULL) {
            memcpy(e->der, der, *len);
            e->der_len = *len;
        }
    }
    pthread_mutex_unlock(&g.mutex);
    return der;
}

/* Whether pub is the public half of priv: rsa_key_objects() names the
 * halves PREFIX/private and PREFIX/public. */
static bool same_pair(const struct pobj *priv, const struct pobj *pub)
{
    const char *a = strrchr(priv->uid, '/');
    const char *b = pub->uid != NULL ? strrchr(pub->uid, '/') : NULL;

    return a != NULL && b != NULL && a - priv->uid == b - pub->uid &&
           strncmp(priv->uid, pub->uid, (size_t)(a - priv->uid)) == 0 &&
           strcmp(b, "/public") == 0;
}

void certs_add(struct session *s, struct pobj **objs, CK_ULONG *count)
{
    struct token *t = s->token;
    struct pobj *list = *objs, *grown;
    CK_ULONG n = *count, i, j, k = 0;
    bool can_sign;

    if (t->cert_mode == CERTS_NONE || n == 0)
        return;
    grown = realloc(list, 2 * n * sizeof(*list));
    if (grown == NULL)
        return;
    list = grown;
    *objs = list;
    pthread_mutex_lock(&g.mutex);
    can_sign = !t->info.login_required || t->logged_in;
    pthread_mutex_unlock(&g.mutex);

    for (i = 0; i < n; i++) {
        struct pobj *p = &list[i];
        unsigned char *der, *subject = NULL;
        CK_ULONG len = 0, subject_len = 0;

        if (p->uid == NULL ||
            attrs_get_ulong(&p->attrs, CKA_CLASS, ~0UL) != CKO_PRIVATE_KEY ||
            attrs_get_ulong(&p->attrs, CKA_KEY_TYPE, ~0UL) != CKK_RSA)
            continue;
        der = cert_for(s, p, can_sign, &len);
        if (der == NULL)
            continue;
        if (cert_pobj(p, der, len, &list[n + k], &subject, &subject_len) == 0) {
            attrs_set(&p->attrs, CKA_SUBJECT, subject, subject_len);
            for (j = 0; j < n; j++)
                if (attrs_get_ulong(&list[j].attrs, CKA_CLASS, ~0UL) ==
                        CKO_PUBLIC_KEY &&
                    same_pair(p, &list[j]))
                    attrs_set(&list[j].attrs, CKA_SUBJECT, subject,
                              subject_len);
            k++;
        } else {
            pobj_clear(NULL, NULL, &list[n + k]);
        }
        OPENSSL_free(subject);
        free(der);
    }
    *count = n + k;
}
