/*
 * Key management: C_GenerateKey, C_GenerateKeyPair, C_CreateObject,
 * C_WrapKey, C_UnwrapKey. Secret keys live in the back end when it keeps
 * them (PROVIDER_OWNS_SECRET_KEYS), otherwise in this module's memory as
 * session objects, wiped when destroyed.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "attrpolicy.h"
#include "audit.h"
#include "call.h"
#include "crypto.h"
#include "pcall.h"
#include "pkcs1.h"
#include "rsa.h"
#include "secure.h"
#include "softkey.h"

/* The session's part of the template policy (attrpolicy.c): whether
 * CKA_TRUSTED may be set, which only the SO may do. Keyvault and mock
 * tokens have no SO, so nothing made there is trusted. The login state
 * is read (under the module's lock) only when a template asks for it,
 * not on every unwrap. */
static CK_RV template_policy(struct session *s, const CK_ATTRIBUTE *tmpl,
                             CK_ULONG n)
{
    CK_BBOOL trusted = CK_FALSE;
    bool so = false;

    if (tmpl_find_bool(tmpl, n, CKA_TRUSTED, &trusted) == 1 && trusted) {
        pthread_mutex_lock(&g.mutex);
        so = s->token->logged_in && s->token->user == CKU_SO;
        pthread_mutex_unlock(&g.mutex);
    }
    return attrpolicy_template(tmpl, n, so);
}

/* The table's check (attrpolicy_secret) with what this token allows:
 * CKA_TOKEN true where the back end keeps token secret keys, and then
 * only in a R/W session (PKCS#11 2.40 5.7: CKR_SESSION_READ_ONLY for a
 * token object in a R/O session). */
static CK_RV secret_policy(struct session *s, enum ap_op op,
                           const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                           CK_KEY_TYPE *kt, CK_ULONG *len)
{
    bool token_keys = (s->token->pflags & PROVIDER_TOKEN_SECRET_KEYS) != 0;
    CK_BBOOL token = CK_FALSE;
    CK_RV rv;

    rv = attrpolicy_secret(op, tmpl, n, token_keys, kt, len);
    if (rv == CKR_OK && tmpl_find_bool(tmpl, n, CKA_TOKEN, &token) == 1 &&
        token && !session_is_rw(s))
        rv = CKR_SESSION_READ_ONLY;
    return rv;
}

/* Attributes a module-held secret key gets besides the table's defaults
 * and the template: the class and key type, the five that follow from how
 * it was made (secret_object_build), and what object_publish adds
 * (listed_attrs: the listed defaults and CKA_CMK_MIN_BITS, at most
 * seven). */
#define SECRET_OBJECT_EXTRA 14

/* The key's attributes as one allocation (attrs_reserve): it is made and
 * destroyed for every unwrap. Without it (no memory, an absurd template)
 * the same array gives each value its own allocation. */
static void reserve_secret_object(struct attrs *a, const CK_ATTRIBUTE *tmpl,
                                  CK_ULONG n)
{
    CK_ULONG count = attrpolicy_secret_defaults_count() + SECRET_OBJECT_EXTRA;
    size_t room = attrs_value_room(tmpl, n);

    if (room <= SIZE_MAX / 4 && n <= ((CK_ULONG)-1) / 4)
        (void)attrs_reserve(a, count + n, room + count * sizeof(CK_ULONG));
}

/* The attributes of a module-held secret key whose template passed
 * attrpolicy_secret(): the table's defaults, the template, then what
 * follows from how the key was made (PKCS#11 2.40 4.7, 4.9). */
static CK_RV secret_object_build(const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                                 CK_KEY_TYPE kt, CK_ULONG value_len,
                                 CK_BBOOL local, struct pobj *out)
{
    struct attrs *a = &out->attrs;
    CK_BBOOL sensitive, extractable;
    int r = 0;

    memset(out, 0, sizeof(*out));
    reserve_secret_object(a, tmpl, n);
    r |= attrs_set_ulong(a, CKA_CLASS, CKO_SECRET_KEY);
    r |= attrs_set_ulong(a, CKA_KEY_TYPE, kt);
    r |= attrpolicy_secret_defaults(a);
    if (r != 0 || attrs_merge(a, tmpl, n) != 0)
        return CKR_HOST_MEMORY;
    attrs_remove(a, CKA_VALUE);
    r |= attrs_set_ulong(a, CKA_VALUE_LEN, value_len);
    r |= attrs_set_bool(a, CKA_LOCAL, local);
    r |= attrs_set_ulong(
        a, CKA_KEY_GEN_MECHANISM,
        local ? (kt == CKK_AES ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN)
              : CK_UNAVAILABLE_INFORMATION);
    sensitive = attrs_get_bool(a, CKA_SENSITIVE, false);
    extractable = attrs_get_bool(a, CKA_EXTRACTABLE, false);
    /* Unwrapped or imported keys were once outside: 4.9 footnotes 11, 12. */
    r |= attrs_set_bool(a, CKA_ALWAYS_SENSITIVE, local && sensitive);
    r |= attrs_set_bool(a, CKA_NEVER_EXTRACTABLE, local && !extractable);
    return r ? CKR_HOST_MEMORY : CKR_OK;
}

static char *new_uid(CK_SESSION_HANDLE sess)
{
    static unsigned long counter;
    char buf[64];

    snprintf(buf, sizeof(buf), "session/%lu/%lu", (unsigned long)sess,
             __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    return strdup(buf);
}

/* Publishes a module-held secret key; takes value (secure memory). */
static CK_RV publish_secret(struct session *s, const CK_ATTRIBUTE *tmpl,
                            CK_ULONG n, CK_KEY_TYPE kt, unsigned char *value,
                            CK_ULONG len, CK_BBOOL local,
                            CK_OBJECT_HANDLE_PTR ph)
{
    struct pobj p;
    CK_BBOOL token = CK_FALSE;
    CK_RV rv;

    rv = secret_object_build(tmpl, n, kt, len, local, &p);
    if (rv == CKR_OK && tmpl_find_bool(tmpl, n, CKA_TOKEN, &token) == 1 &&
        token) {
        /* A token secret key the back end keeps (keyvault: wrapped under
         * the CMK in its state directory): it gets every attribute and
         * the value, and lists the key from then on. */
        struct pobj kept;
        CK_ATTRIBUTE *t = NULL;
        memset(&kept, 0, sizeof(kept));
        if (!session_is_rw(s))
            rv = CKR_SESSION_READ_ONLY;
        else if (attrs_set_bool(&p.attrs, CKA_TOKEN, CK_TRUE) != 0 ||
                 (t = calloc(p.attrs.n + 1, sizeof(*t))) == NULL)
            rv = CKR_HOST_MEMORY;
        if (rv == CKR_OK) {
            memcpy(t, p.attrs.v, p.attrs.n * sizeof(*t));
            t[p.attrs.n] = (CK_ATTRIBUTE){CKA_VALUE, value, len};
            rv = provider_create_object(s, t, p.attrs.n + 1, &kept);
        }
        free(t);
        pobj_clear(NULL, NULL, &p);
        secure_free(value);
        if (rv == CKR_OK) {
            rv = object_publish(s->token, 0, &kept, NULL, 0, ph);
            if (rv != CKR_OK)
                pobj_clear(s->token->ops, s->token->ptok, &kept);
        }
        if (rv == CKR_OK && audit_enabled()) {
            struct object *o;
            if (object_get(s, *ph, &o) == CKR_OK) {
                audit_record(s, o, local ? "generate" : "create",
                             local
                                 ? (kt == CKK_AES ? CKM_AES_KEY_GEN
                                                  : CKM_GENERIC_SECRET_KEY_GEN)
                                 : CK_UNAVAILABLE_INFORMATION,
                             rv, s->device_error);
                object_unref(o);
            }
        }
        return rv;
    }
    if (rv == CKR_OK) {
        p.uid = new_uid(s->handle);
        rv = p.uid ? object_publish(s->token, s->handle, &p, value, len, ph)
                   : CKR_HOST_MEMORY;
    }
    pobj_clear(NULL, NULL, &p);
    if (rv != CKR_OK)
        secure_free(value);
    return rv;
}

/* A key the back end made: a session object of this session, or a token
 * object (CKA_TOKEN true, the provider's uid) as its listings show it. */
static CK_RV publish_provider_object(struct session *s, struct pobj *p,
                                     CK_OBJECT_HANDLE_PTR ph)
{
    bool token = attrs_get_bool(&p->attrs, CKA_TOKEN, false);
    CK_RV rv;

    if (token && p->uid == NULL) {
        provider_discard_object(s, p->ref);
        pobj_clear(s->token->ops, s->token->ptok, p);
        return CKR_GENERAL_ERROR;
    }
    if (p->uid == NULL)
        p->uid = new_uid(s->handle);
    rv = object_publish(s->token, token ? 0 : s->handle, p, NULL, 0, ph);
    if (rv != CKR_OK) {
        provider_discard_object(s, p->ref);
        pobj_clear(s->token->ops, s->token->ptok, p);
    }
    return rv;
}

CK_RV C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                    CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                    CK_OBJECT_HANDLE_PTR phKey)
{
    struct session *s;
    const struct pmech *pm;
    CK_KEY_TYPE kt;
    CK_ULONG len = 0;
    unsigned char *value;

    BEGIN_CALL(GenerateKey);
    if (pMechanism == NULL || phKey == NULL ||
        (pTemplate == NULL && ulCount > 0)) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    pm = token_mech(s->token, pMechanism->mechanism);
    if (pm == NULL || !(pm->info.flags & CKF_GENERATE)) {
        rv = CKR_MECHANISM_INVALID;
        goto put;
    }
    kt =
        pMechanism->mechanism == CKM_AES_KEY_GEN ? CKK_AES : CKK_GENERIC_SECRET;
    rv = template_policy(s, pTemplate, ulCount);
    if (rv == CKR_OK)
        rv = secret_policy(s, AP_GENERATE, pTemplate, ulCount, &kt, &len);
    if (rv != CKR_OK)
        goto put;
    if (s->token->pflags & PROVIDER_OWNS_SECRET_KEYS) {
        struct pobj p;
        CK_ATTRIBUTE *t;
        CK_ULONG nt;
        memset(&p, 0, sizeof(p));
        rv = attrpolicy_with_defaults(pTemplate, ulCount, &t, &nt);
        if (rv != CKR_OK)
            goto put;
        rv = provider_generate_key(s, pMechanism, t, nt, &p);
        attrpolicy_free_defaults(pTemplate, t);
        if (rv == CKR_OK)
            rv = publish_provider_object(s, &p, phKey);
        goto put;
    }
    value = secure_alloc(len);
    if (value == NULL) {
        rv = CKR_HOST_MEMORY;
        goto put;
    }
    if (RAND_priv_bytes(value, (int)len) != 1) {
        secure_free(value);
        rv = CKR_FUNCTION_FAILED;
        goto put;
    }
    rv = publish_secret(s, pTemplate, ulCount, kt, value, len, CK_TRUE, phKey);
put:
    session_put(s);
    END_CALL;
}

CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate,
                     CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject)
{
    struct session *s;
    const CK_ATTRIBUTE *val;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE kt = 0;
    CK_ULONG len = 0;
    unsigned char *value;

    BEGIN_CALL(CreateObject);
    if (phObject == NULL || (pTemplate == NULL && ulCount > 0)) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    rv = template_policy(s, pTemplate, ulCount);
    if (rv != CKR_OK)
        goto put;
    if (tmpl_find_ulong(pTemplate, ulCount, CKA_CLASS, &cls) != 1) {
        rv = CKR_TEMPLATE_INCOMPLETE;
        goto put;
    }
    if (cls != CKO_SECRET_KEY) {
        /* Key pairs come from the back end; nothing else is stored. */
        rv = CKR_TEMPLATE_INCONSISTENT;
        goto put;
    }
    rv = secret_policy(s, AP_CREATE, pTemplate, ulCount, &kt, &len);
    if (rv != CKR_OK)
        goto put;
    if (s->token->pflags & PROVIDER_OWNS_SECRET_KEYS) {
        struct pobj p;
        CK_ATTRIBUTE *t;
        CK_ULONG nt;
        memset(&p, 0, sizeof(p));
        rv = attrpolicy_with_defaults(pTemplate, ulCount, &t, &nt);
        if (rv != CKR_OK)
            goto put;
        rv = provider_create_object(s, t, nt, &p);
        attrpolicy_free_defaults(pTemplate, t);
        if (rv == CKR_OK)
            rv = publish_provider_object(s, &p, phObject);
        goto put;
    }
    val = tmpl_find(pTemplate, ulCount, CKA_VALUE); /* required: checked */
    value = secure_dup(val->pValue, len);
    if (value == NULL) {
        rv = CKR_HOST_MEMORY;
        goto put;
    }
    rv = publish_secret(s, pTemplate, ulCount, kt, value, len, CK_FALSE,
                        phObject);
put:
    session_put(s);
    END_CALL;
}

static CK_RV map_unwrap_rv(CK_RV rv)
{
    switch (rv) {
    case CKR_ENCRYPTED_DATA_INVALID:
        return CKR_WRAPPED_KEY_INVALID;
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
        return CKR_WRAPPED_KEY_LEN_RANGE;
    default:
        return rv;
    }
}

static CK_RV map_key_check_rv(CK_RV rv, CK_RV handle_rv, CK_RV type_rv)
{
    if (rv == CKR_KEY_HANDLE_INVALID)
        return handle_rv;
    if (rv == CKR_KEY_TYPE_INCONSISTENT)
        return type_rv;
    return rv;
}

/*
 * CKM_RSA_PKCS with implicit rejection (pkcs1.c): the new key has the
 * template's CKA_VALUE_LEN, which must be given, and a blob with invalid
 * padding gives a key with a pseudo-random value instead of an error, as
 * TLS servers treat an RSA premaster secret (RFC 5246, 7.4.7.1). Nothing
 * here depends on whether the padding was valid.
 */
static CK_RV unwrap_pkcs1(struct session *s, struct object *key,
                          CK_BYTE_PTR wrapped, CK_ULONG wlen,
                          CK_ATTRIBUTE_PTR tmpl, CK_ULONG n, CK_KEY_TYPE kt,
                          CK_OBJECT_HANDLE_PTR ph)
{
    CK_ULONG want = 0, len = 0, cap = rsa_object_bytes(key), nt = 0, nd, i;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE *t = NULL, *d = NULL;
    unsigned char *value;
    CK_RV rv;

    if (tmpl_find_ulong(tmpl, n, CKA_VALUE_LEN, &want) != 1 || want == 0)
        return CKR_TEMPLATE_INCOMPLETE;
    /* For a back end that keeps the key: the defaults all back ends share. */
    rv = attrpolicy_with_defaults(tmpl, n, &d, &nd);
    if (rv != CKR_OK)
        return rv;
    value = secure_alloc(cap ? cap : 1);
    t = calloc(nd + 2, sizeof(*t));
    if (value == NULL || t == NULL) {
        secure_free(value);
        free(t);
        attrpolicy_free_defaults(tmpl, d);
        return CKR_HOST_MEMORY;
    }
    len = cap;
    rv = map_unwrap_rv(pkcs1_decrypt(s, key, wrapped, wlen, want, value, &len));
    audit_record(s, key, "unwrap", CKM_RSA_PKCS, rv, s->device_error);
    if (rv == CKR_OK && !(s->token->pflags & PROVIDER_OWNS_SECRET_KEYS)) {
        unsigned char *exact = secure_dup(value, len);
        rv = exact ? publish_secret(s, tmpl, n, kt, exact, len, CK_FALSE, ph)
                   : CKR_HOST_MEMORY;
    } else if (rv == CKR_OK) {
        /* The back end keeps the key: it enters as an object with this
         * value (CKA_VALUE_LEN may not accompany CKA_VALUE there). */
        struct pobj p;
        for (i = 0; i < nd; i++)
            if (d[i].type != CKA_VALUE_LEN)
                t[nt++] = d[i];
        if (tmpl_find(tmpl, n, CKA_CLASS) == NULL)
            t[nt++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
        t[nt++] = (CK_ATTRIBUTE){CKA_VALUE, value, len};
        memset(&p, 0, sizeof(p));
        rv = provider_create_object(s, t, nt, &p);
        if (rv == CKR_OK)
            rv = publish_provider_object(s, &p, ph);
    }
    secure_free(value);
    free(t);
    attrpolicy_free_defaults(tmpl, d);
    return rv;
}

/* One unwrap attempt with a key that passed the checks, into a key of
 * type kt whose template passed attrpolicy_secret(). */
static CK_RV unwrap_one(struct session *s, struct object *key,
                        CK_MECHANISM_PTR m, CK_BYTE_PTR wrapped, CK_ULONG wlen,
                        CK_ATTRIBUTE_PTR tmpl, CK_ULONG n, CK_KEY_TYPE kt,
                        CK_OBJECT_HANDLE_PTR ph)
{
    CK_ULONG len = 0, cap, want = 0;
    unsigned char *value = NULL, *exact;
    CK_RV rv;

    s->device_error = 0;
    if (pkcs1_implicit(s->token, m, key))
        return unwrap_pkcs1(s, key, wrapped, wlen, tmpl, n, kt, ph);
    if (s->token->pflags & PROVIDER_OWNS_SECRET_KEYS) {
        struct pobj p;
        CK_ATTRIBUTE *t;
        CK_ULONG nt;
        memset(&p, 0, sizeof(p));
        rv = attrpolicy_with_defaults(tmpl, n, &t, &nt);
        if (rv != CKR_OK)
            return rv;
        rv = provider_unwrap(s, key, m, wrapped, wlen, t, nt, &p);
        attrpolicy_free_defaults(tmpl, t);
        if (rv == CKR_OK)
            rv = publish_provider_object(s, &p, ph);
        return rv;
    }
    cap = mech_is_rsa(m->mechanism) ? rsa_object_bytes(key)
                                    : softkey_out_bound(m, false, wlen);
    value = secure_alloc(cap ? cap : 1);
    if (value == NULL)
        return CKR_HOST_MEMORY;
    len = cap;
    if (key->secret != NULL)
        rv = softkey_crypt(m, false, key->secret, key->secret_len, wrapped,
                           wlen, value, &len);
    else
        rv = provider_crypt(s, POP_UNWRAP, key, m, wrapped, wlen, value, &len);
    rv = map_unwrap_rv(rv);
    audit_record(s, key, "unwrap", m->mechanism, rv,
                 key->secret != NULL ? 0 : s->device_error);
    /* The template may name a length; the key must have it. */
    if (rv == CKR_OK &&
        ((tmpl_find_ulong(tmpl, n, CKA_VALUE_LEN, &want) == 1 && want != len) ||
         len == 0 || attrpolicy_length(kt, len) != CKR_OK))
        rv = CKR_WRAPPED_KEY_INVALID;
    if (rv == CKR_OK) {
        exact = secure_dup(value, len);
        rv = exact ? publish_secret(s, tmpl, n, kt, exact, len, CK_FALSE, ph)
                   : CKR_HOST_MEMORY;
    }
    secure_free(value);
    return rv;
}

/*
 * Version-aware unwrap: an OAEP blob the current version (the label
 * object) cannot unwrap may belong to an older version. The key's other
 * enabled versions are tried, newest first, at most CMK_FALLBACK_MAX.
 * Never for PKCS#1 v1.5, whose padding can look valid under a wrong key.
 */
CK_ULONG key_fallback_versions(struct session *s, struct object *key,
                               CK_ATTRIBUTE_TYPE usage, struct object **out)
{
    struct hmap_iter it;
    unsigned long h;
    void *v;
    CK_ATTRIBUTE *name = NULL, *on;
    long long created[CMK_FALLBACK_MAX];
    CK_ULONG n = 0, i, j;

    pthread_mutex_lock(&g.mutex);
    name = attrs_find(&key->attrs, CKA_CMK_KEY_NAME);
    hmap_iter_init(&it, g.objects);
    while (name != NULL && hmap_iter_next(&it, &h, &v)) {
        struct object *o = v;
        CK_ATTRIBUTE *c;
        long long when;
        if (o == key || o->session != 0 || !object_visible_unlocked(s, o) ||
            attrs_get_ulong(&o->attrs, CKA_CLASS, ~0UL) != CKO_PRIVATE_KEY ||
            !attrs_get_bool(&o->attrs, usage, false) ||
            !attrs_get_bool(&o->attrs, CKA_CMK_ENABLED, false))
            continue;
        on = attrs_find(&o->attrs, CKA_CMK_KEY_NAME);
        if (on == NULL || on->ulValueLen != name->ulValueLen ||
            memcmp(on->pValue, name->pValue, on->ulValueLen) != 0)
            continue;
        c = attrs_find(&o->attrs, CKA_CMK_CREATED);
        when = 0;
        if (c != NULL && c->ulValueLen > 0 && c->ulValueLen < 24) {
            char num[24];
            memcpy(num, c->pValue, c->ulValueLen);
            num[c->ulValueLen] = '\0';
            when = strtoll(num, NULL, 10);
        }
        /* Insert, newest first; keep the newest CMK_FALLBACK_MAX. */
        for (i = 0; i < n && created[i] >= when; i++)
            ;
        if (i == CMK_FALLBACK_MAX)
            continue;
        if (n == CMK_FALLBACK_MAX)
            object_unref(out[--n]);
        for (j = n; j > i; j--) {
            out[j] = out[j - 1];
            created[j] = created[j - 1];
        }
        out[i] = object_ref(o);
        created[i] = when;
        n++;
    }
    pthread_mutex_unlock(&g.mutex);
    return n;
}

CK_RV C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                  CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey,
                  CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
                  CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
    struct session *s;
    struct object *key = NULL, *others[CMK_FALLBACK_MAX];
    CK_ULONG n_others = 0, i, len = 0;
    CK_KEY_TYPE kt = 0;
    CK_RV first;

    BEGIN_CALL(UnwrapKey);
    if (pMechanism == NULL || pWrappedKey == NULL || phKey == NULL ||
        (pTemplate == NULL && ulAttributeCount > 0)) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    if (object_get(s, hUnwrappingKey, &key) != CKR_OK) {
        rv = CKR_UNWRAPPING_KEY_HANDLE_INVALID;
        goto put;
    }
    rv = key_check(s, key, pMechanism, CKA_UNWRAP, CKF_UNWRAP, CKO_PRIVATE_KEY);
    rv = map_key_check_rv(rv, CKR_UNWRAPPING_KEY_HANDLE_INVALID,
                          CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT);
    if (rv == CKR_OK)
        rv = mech_check_params(key, pMechanism);
    if (rv == CKR_OK && key->secret == NULL)
        rv = provider_check_mechanism(s, POP_UNWRAP, pMechanism);
    if (rv == CKR_OK)
        rv = template_policy(s, pTemplate, ulAttributeCount);
    if (rv == CKR_OK)
        rv =
            secret_policy(s, AP_UNWRAP, pTemplate, ulAttributeCount, &kt, &len);
    if (rv == CKR_OK && pkcs1_implicit(s->token, pMechanism, key))
        rv = pkcs1_prepare(s, key);
    if (rv != CKR_OK)
        goto put;

    rv = unwrap_one(s, key, pMechanism, pWrappedKey, ulWrappedKeyLen, pTemplate,
                    ulAttributeCount, kt, phKey);
    if (rv != CKR_WRAPPED_KEY_INVALID ||
        pMechanism->mechanism != CKM_RSA_PKCS_OAEP ||
        !s->token->unwrap_fallback ||
        !object_get_bool(key, CKA_CMK_CURRENT, false))
        goto put;
    first = rv;
    n_others = key_fallback_versions(s, key, CKA_UNWRAP, others);
    for (i = 0; i < n_others; i++) {
        rv = unwrap_one(s, others[i], pMechanism, pWrappedKey, ulWrappedKeyLen,
                        pTemplate, ulAttributeCount, kt, phKey);
        if (rv == CKR_OK) {
            CK_ULONG vlen = 0;
            char *ver = object_get_value(others[i], CKA_CMK_VERSION, &vlen);
            cmk_info("token %s: the blob was wrapped under an older version "
                     "(%s); unwrapped with it",
                     s->token->name, ver ? ver : "?");
            free(ver);
            break;
        }
        if (rv != CKR_WRAPPED_KEY_INVALID)
            break; /* not a wrong-version answer: stop here */
    }
    if (rv != CKR_OK)
        rv = first;
    for (i = 0; i < n_others; i++)
        object_unref(others[i]);
put:
    object_unref(key);
    session_put(s);
    END_CALL;
}

/* An RSA wrap with the wrapping key's public key, in the module. */
static CK_RV wrap_local(struct object *wkey, const CK_MECHANISM *m,
                        const CK_BYTE *kval, CK_ULONG klen, CK_BYTE *out,
                        CK_ULONG *outlen)
{
    struct rsa_pkey *pk = rsa_object_pkey(wkey);
    CK_RV rv;

    if (pk == NULL)
        return CKR_GENERAL_ERROR;
    rv = rsa_encrypt(rsa_pkey_evp(pk), m, kval, klen, out, outlen);
    rsa_pkey_unref(pk);
    return rv;
}

CK_RV C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey,
                CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
    struct session *s;
    struct object *wkey = NULL, *key = NULL;
    CK_ULONG cap, len, klen = 0, fetched_len = 0;
    unsigned char *buf = NULL, *fetched = NULL;
    const unsigned char *kval = NULL;

    BEGIN_CALL(WrapKey);
    if (pMechanism == NULL || pulWrappedKeyLen == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    if (object_get(s, hWrappingKey, &wkey) != CKR_OK) {
        rv = CKR_WRAPPING_KEY_HANDLE_INVALID;
        goto put;
    }
    if (object_get(s, hKey, &key) != CKR_OK) {
        rv = CKR_KEY_HANDLE_INVALID;
        goto put;
    }
    rv = key_check(s, wkey, pMechanism, CKA_WRAP, CKF_WRAP, CKO_PUBLIC_KEY);
    rv = map_key_check_rv(rv, CKR_WRAPPING_KEY_HANDLE_INVALID,
                          CKR_WRAPPING_KEY_TYPE_INCONSISTENT);
    if (rv == CKR_OK && mech_is_rsa(pMechanism->mechanism))
        rv = key_check_dates(wkey);
    if (rv == CKR_OK)
        rv = mech_check_params(wkey, pMechanism);
    if (rv != CKR_OK)
        goto put;
    kval = key->secret;
    klen = key->secret_len;
    if (object_get_ulong(key, CKA_CLASS, ~0UL) != CKO_SECRET_KEY) {
        rv = CKR_KEY_NOT_WRAPPABLE;
        goto put;
    }
    if (!object_get_bool(key, CKA_EXTRACTABLE, false)) {
        rv = CKR_KEY_UNEXTRACTABLE;
        goto put;
    }
    /* CKA_WRAP_WITH_TRUSTED: "the key can only be wrapped with a wrapping
     * key that has CKA_TRUSTED set to CK_TRUE" (PKCS#11 2.40 4.9 table 27);
     * a key that cannot be wrapped for that reason is CKR_KEY_NOT_WRAPPABLE
     * (5.13 C_WrapKey; SoftHSM answers the same). Checked here so that no
     * back end's wrap, local or remote, is reached. */
    if (object_get_bool(key, CKA_WRAP_WITH_TRUSTED, false) &&
        !object_get_bool(wkey, CKA_TRUSTED, false)) {
        rv = CKR_KEY_NOT_WRAPPABLE;
        goto put;
    }

    if (key->secret == NULL && key->ref != NULL &&
        !(s->token->pflags & PROVIDER_OWNS_SECRET_KEYS)) {
        /* A token secret key of a back end that keeps none in a token
         * (keyvault): its value, to be wrapped here. */
        rv = provider_read_value(s, key->ref, &fetched, &fetched_len);
        if (rv == CKR_OK && fetched == NULL)
            rv = CKR_KEY_NOT_WRAPPABLE;
        if (rv != CKR_OK)
            goto put;
        kval = fetched;
        klen = fetched_len;
    } else if (key->secret == NULL) {
        /* The key lives in the back end: it wraps it there. */
        rv = provider_wrap(s, wkey, pMechanism, key, pWrappedKey,
                           pulWrappedKeyLen);
        goto put;
    }
    cap = mech_is_rsa(pMechanism->mechanism)
              ? rsa_object_bytes(wkey)
              : softkey_out_bound(pMechanism, true, klen);
    if (pWrappedKey == NULL) {
        *pulWrappedKeyLen = cap;
        goto put;
    }
    buf = malloc(cap ? cap : 1);
    if (buf == NULL) {
        rv = CKR_HOST_MEMORY;
        goto put;
    }
    len = cap;
    if (mech_is_rsa(pMechanism->mechanism) &&
        (s->token->pflags & PROVIDER_LOCAL_PUBLIC) &&
        (rv = provider_check_public(s, wkey, true)) != CKR_OK) {
        /* The version can no longer be used: no local wrap either. */
    } else if (mech_is_rsa(pMechanism->mechanism)) {
        if (!(s->token->pflags & PROVIDER_LOCAL_PUBLIC))
            rv = provider_crypt(s, POP_ENCRYPT, wkey, pMechanism, kval, klen,
                                buf, &len);
        else
            rv = wrap_local(wkey, pMechanism, kval, klen, buf, &len);
        if (rv == CKR_DATA_LEN_RANGE)
            rv = CKR_KEY_SIZE_RANGE;
    } else if (wkey->secret != NULL) {
        rv = softkey_crypt(pMechanism, true, wkey->secret, wkey->secret_len,
                           kval, klen, buf, &len);
        if (rv == CKR_DATA_LEN_RANGE)
            rv = CKR_KEY_SIZE_RANGE;
    } else if (wkey->ref != NULL &&
               !(s->token->pflags & PROVIDER_OWNS_SECRET_KEYS)) {
        /* A token secret key (keyvault) wraps in the module too. */
        rv = provider_crypt(s, POP_ENCRYPT, wkey, pMechanism, kval, klen, buf,
                            &len);
        if (rv == CKR_DATA_LEN_RANGE)
            rv = CKR_KEY_SIZE_RANGE;
    } else {
        rv = CKR_WRAPPING_KEY_TYPE_INCONSISTENT;
    }
    audit_record(s, wkey, "wrap", pMechanism->mechanism, rv,
                 (s->token->pflags & PROVIDER_LOCAL_PUBLIC) ? 0
                                                            : s->device_error);
    if (rv != CKR_OK)
        goto put;
    if (*pulWrappedKeyLen < len) {
        *pulWrappedKeyLen = len;
        rv = CKR_BUFFER_TOO_SMALL;
        goto put;
    }
    memcpy(pWrappedKey, buf, len);
    *pulWrappedKeyLen = len;
put:
    free(buf);
    if (fetched != NULL)
        secure_free(fetched);
    object_unref(wkey);
    object_unref(key);
    session_put(s);
    END_CALL;
}

CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                        CK_ATTRIBUTE_PTR pPublicKeyTemplate,
                        CK_ULONG ulPublicKeyAttributeCount,
                        CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
                        CK_ULONG ulPrivateKeyAttributeCount,
                        CK_OBJECT_HANDLE_PTR phPublicKey,
                        CK_OBJECT_HANDLE_PTR phPrivateKey)
{
    struct session *s;
    const struct pmech *pm;
    struct pobj *objs = NULL;
    char *uid_pub = NULL, *uid_priv = NULL;

    BEGIN_CALL(GenerateKeyPair);
    if (pMechanism == NULL || phPublicKey == NULL || phPrivateKey == NULL ||
        (pPublicKeyTemplate == NULL && ulPublicKeyAttributeCount > 0) ||
        (pPrivateKeyTemplate == NULL && ulPrivateKeyAttributeCount > 0)) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    pm = token_mech(s->token, pMechanism->mechanism);
    if (pm == NULL || !(pm->info.flags & CKF_GENERATE_KEY_PAIR)) {
        rv = CKR_MECHANISM_INVALID;
        goto put;
    }
    if (!session_is_rw(s)) {
        rv = CKR_SESSION_READ_ONLY;
        goto put;
    }
    rv = template_policy(s, pPublicKeyTemplate, ulPublicKeyAttributeCount);
    if (rv == CKR_OK)
        rv =
            template_policy(s, pPrivateKeyTemplate, ulPrivateKeyAttributeCount);
    if (rv != CKR_OK)
        goto put;
    objs = calloc(2, sizeof(*objs));
    if (objs == NULL) {
        rv = CKR_HOST_MEMORY;
        goto put;
    }
    rv = provider_generate_key_pair(
        s, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount,
        pPrivateKeyTemplate, ulPrivateKeyAttributeCount, &objs[0], &objs[1]);
    if (rv != CKR_OK) {
        free(objs);
        goto put;
    }
    uid_pub = objs[0].uid ? strdup(objs[0].uid) : NULL;
    uid_priv = objs[1].uid ? strdup(objs[1].uid) : NULL;
    object_merge(s->token, NULL, 0, objs, 2, false);
    /* A new version relabels the older ones: list again. */
    object_refresh(s, NULL, 0);
    rv = CKR_GENERAL_ERROR;
    if (uid_pub != NULL && uid_priv != NULL) {
        struct hmap_iter it;
        unsigned long k;
        void *v;
        *phPublicKey = *phPrivateKey = CK_INVALID_HANDLE;
        pthread_mutex_lock(&g.mutex);
        hmap_iter_init(&it, g.objects);
        while (hmap_iter_next(&it, &k, &v)) {
            struct object *o = v;
            if (o->token != s->token || o->uid == NULL)
                continue;
            if (strcmp(o->uid, uid_pub) == 0)
                *phPublicKey = k;
            if (strcmp(o->uid, uid_priv) == 0)
                *phPrivateKey = k;
        }
        pthread_mutex_unlock(&g.mutex);
        if (*phPublicKey != CK_INVALID_HANDLE &&
            *phPrivateKey != CK_INVALID_HANDLE)
            rv = CKR_OK;
    }
    if (rv == CKR_OK && audit_enabled()) {
        struct object *o;
        if (object_get(s, *phPrivateKey, &o) == CKR_OK) {
            audit_record(s, o, "generate", pMechanism->mechanism, rv,
                         s->device_error);
            object_unref(o);
        }
    }
put:
    free(uid_pub);
    free(uid_priv);
    session_put(s);
    END_CALL;
}
