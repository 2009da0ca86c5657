/*
 * The hsm back end: operations forwarded to the lower token (decrypt,
 * sign, unwrap, wrap, secret keys, random), with OAEP done here over raw
 * RSA where the lower token refuses the parameters (hsm-oaep.c).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "provider-util.h"
#include "debug.h"
#include "hsm.h"
#include "secure.h"

/*
 * Parameters refused at C_*Init rather than at the operation: PSS whose
 * MGF1 hash is not the signature hash. SoftHSM (AsymSignInit and
 * AsymVerifyInit, SoftHSM 2.6.1) accepts only MGF1 of the same hash, and
 * would refuse it only at C_Sign here, where the lower C_SignInit runs.
 * Lengths, unknown hashes and salts too long for the key are checked by
 * the front end for every back end.
 */
CK_RV hsm_check_mechanism(void *tok, enum pop op, const CK_MECHANISM *m)
{
    static const struct {
        CK_MECHANISM_TYPE hash;
        CK_RSA_PKCS_MGF_TYPE mgf;
    } same[] = {
        {CKM_SHA_1, CKG_MGF1_SHA1},    {CKM_SHA224, CKG_MGF1_SHA224},
        {CKM_SHA256, CKG_MGF1_SHA256}, {CKM_SHA384, CKG_MGF1_SHA384},
        {CKM_SHA512, CKG_MGF1_SHA512},
    };
    const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
    size_t i;

    (void)tok;
    if (m->mechanism != CKM_RSA_PKCS_PSS ||
        (op != POP_SIGN && op != POP_VERIFY))
        return CKR_OK;
    if (p == NULL || m->ulParameterLen != sizeof(*p))
        return CKR_MECHANISM_PARAM_INVALID;
    for (i = 0; i < CMK_ARRAY_SIZE(same); i++)
        if (same[i].hash == p->hashAlg)
            return same[i].mgf == p->mgf ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
    return CKR_MECHANISM_PARAM_INVALID;
}

/*
 * AES-GCM goes to the lower token as C_*Update with the whole input and
 * C_*Final, the same operation in two calls (PKCS#11 3.0, 5.8 and 5.9).
 * SoftHSM 2.6.1's C_Encrypt appends the tag to its result by growing a
 * vector of the segment's size one byte past its capacity, which copies
 * the ciphertext a byte at a time; its C_EncryptUpdate and
 * C_EncryptFinal do not: a 64 KiB segment encrypts 2 to 3 times faster,
 * and decrypts 1.6 times faster (docs/performance.md). A lower module
 * that refuses the calls in parts (no function, CKR_FUNCTION_NOT_SUPPORTED,
 * or an operation its C_*Update does not know) gets single-part calls
 * from then on, for the rest of the process.
 */
static bool gcm_in_parts(struct hsm_token *ht, const CK_MECHANISM *m)
{
    return m->mechanism == CKM_AES_GCM &&
           !__atomic_load_n(&ht->gcm_single, __ATOMIC_RELAXED);
}

static bool parts_refused(CK_RV rv)
{
    return rv == CKR_FUNCTION_NOT_SUPPORTED ||
           rv == CKR_OPERATION_NOT_INITIALIZED || rv == CKR_MECHANISM_INVALID;
}

/* After C_*Init: the operation in parts into out (*outlen bytes, the whole
 * result's bound). When the lower module refuses the parts, the operation
 * again in one call, and single-part calls on this token from then on. */
static CK_RV crypt_parts(struct hsm_token *ht, CK_SESSION_HANDLE s, bool enc,
                         const CK_MECHANISM *m, CK_OBJECT_HANDLE h,
                         const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                         CK_ULONG *outlen)
{
    CK_ULONG cap = *outlen, n = cap, tail;
    CK_BYTE scratch[1] = {0};
    CK_RV rv;

    /* No input: a pointer all the same (SoftHSM refuses NULL here). */
    if (in == NULL)
        in = scratch;
    rv = enc ? LOWER(ht, C_EncryptUpdate, s, (CK_BYTE *)in, inlen, out, &n)
             : LOWER(ht, C_DecryptUpdate, s, (CK_BYTE *)in, inlen, out, &n);
    if (parts_refused(rv)) {
        __atomic_store_n(&ht->gcm_single, true, __ATOMIC_RELAXED);
        cmk_debug("the lower token refuses AES-GCM in parts (0x%lx): "
                  "single-part calls from now on",
                  (unsigned long)rv);
        /* Whether the refusal ended the lower operation or not, a new
         * C_*Init ends it (or fails with CKR_OPERATION_ACTIVE, and then
         * the single-part call finishes the one open). */
        rv = enc ? LOWER(ht, C_EncryptInit, s, (CK_MECHANISM *)m, h)
                 : LOWER(ht, C_DecryptInit, s, (CK_MECHANISM *)m, h);
        if (rv != CKR_OK && rv != CKR_OPERATION_ACTIVE)
            return rv;
        return enc ? LOWER(ht, C_Encrypt, s, (CK_BYTE *)in, inlen, out, outlen)
                   : LOWER(ht, C_Decrypt, s, (CK_BYTE *)in, inlen, out, outlen);
    }
    if (rv != CKR_OK)
        return rv;
    if (n > cap) /* a lower module that wrote past what it was given */
        return CKR_GENERAL_ERROR;
    tail = cap - n;
    rv = enc ? LOWER(ht, C_EncryptFinal, s, n < cap ? out + n : scratch, &tail)
             : LOWER(ht, C_DecryptFinal, s, n < cap ? out + n : scratch, &tail);
    if (rv == CKR_OK && tail > cap - n)
        return CKR_GENERAL_ERROR;
    if (rv == CKR_OK)
        *outlen = n + tail;
    return rv;
}

static CK_RV crypt_lower(struct pcall *c, enum pop op, void *key,
                         const CK_MECHANISM *m, const CK_BYTE *in,
                         CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_OBJECT_HANDLE h = hsm_ref_handle(ht, key, op != POP_ENCRYPT);
    CK_RV rv;

    if (h == 0)
        return CKR_KEY_HANDLE_INVALID;
    switch (op) {
    case POP_DECRYPT:
    case POP_UNWRAP:
        if (hsm_oaep_is_local(ht, m))
            return hsm_oaep_decrypt_raw(c, h, m, in, inlen, out, outlen);
        rv = LOWER(ht, C_DecryptInit, s, (CK_MECHANISM *)m, h);
        if (hsm_oaep_refused(ht, m, rv))
            return hsm_oaep_decrypt_raw(c, h, m, in, inlen, out, outlen);
        if (rv == CKR_OK) {
            if (gcm_in_parts(ht, m))
                rv = crypt_parts(ht, s, false, m, h, in, inlen, out, outlen);
            else
                rv = LOWER(ht, C_Decrypt, s, (CK_BYTE *)in, inlen, out, outlen);
            if (rv != CKR_OK && hsm_is_data_error(rv)) {
                c->device_error = rv;
                return CKR_ENCRYPTED_DATA_INVALID;
            }
        }
        return hsm_mapped(c, rv);
    case POP_SIGN:
        rv = LOWER(ht, C_SignInit, s, (CK_MECHANISM *)m, h);
        if (rv == CKR_OK)
            rv = LOWER(ht, C_Sign, s, (CK_BYTE *)in, inlen, out, outlen);
        return hsm_mapped(c, rv);
    case POP_ENCRYPT:
        rv = LOWER(ht, C_EncryptInit, s, (CK_MECHANISM *)m, h);
        if (rv == CKR_OK && gcm_in_parts(ht, m))
            rv = crypt_parts(ht, s, true, m, h, in, inlen, out, outlen);
        else if (rv == CKR_OK)
            rv = LOWER(ht, C_Encrypt, s, (CK_BYTE *)in, inlen, out, outlen);
        return hsm_mapped(c, rv);
    case POP_VERIFY:
        /* A secret key's MAC (provider.h): out is the signature. */
        rv = LOWER(ht, C_VerifyInit, s, (CK_MECHANISM *)m, h);
        if (rv == CKR_OK)
            rv = LOWER(ht, C_Verify, s, (CK_BYTE *)in, inlen, out, *outlen);
        return hsm_mapped(c, rv);
    }
    return CKR_GENERAL_ERROR;
}

/* The attributes of a lower secret key into out. One call for the
 * lengths, one for the values: this is on the unwrap path. Attributes the
 * lower token lacks are left out. */
static CK_RV secret_attrs(struct hsm_token *ht, CK_SESSION_HANDLE s,
                          CK_OBJECT_HANDLE h, struct pobj *out)
{
    static const CK_ATTRIBUTE_TYPE copy[] = {
        CKA_CLASS,
        CKA_KEY_TYPE,
        CKA_TOKEN,
        CKA_PRIVATE,
        CKA_LABEL,
        CKA_ID,
        CKA_VALUE_LEN,
        CKA_SENSITIVE,
        CKA_EXTRACTABLE,
        CKA_ENCRYPT,
        CKA_DECRYPT,
        CKA_WRAP,
        CKA_UNWRAP,
        CKA_SIGN,
        CKA_VERIFY,
        CKA_DERIVE,
        CKA_LOCAL,
        CKA_ALWAYS_SENSITIVE,
        CKA_NEVER_EXTRACTABLE,
        CKA_MODIFIABLE,
        CKA_START_DATE,
        CKA_END_DATE,
        CKA_KEY_GEN_MECHANISM,
        CKA_WRAP_WITH_TRUSTED,
        CKA_TRUSTED,
    };
    CK_ATTRIBUTE t[CMK_ARRAY_SIZE(copy)];
    CK_BYTE buf[1024], *p = buf;
    size_t i;
    CK_RV rv;

    for (i = 0; i < CMK_ARRAY_SIZE(copy); i++) {
        t[i].type = copy[i];
        t[i].pValue = NULL;
        t[i].ulValueLen = 0;
    }
    rv = LOWER(ht, C_GetAttributeValue, s, h, t, CMK_ARRAY_SIZE(t));
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
        rv != CKR_ATTRIBUTE_SENSITIVE)
        return hsm_map_rv(rv);
    for (i = 0; i < CMK_ARRAY_SIZE(t); i++) {
        if (t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION ||
            t[i].ulValueLen > (CK_ULONG)(buf + sizeof(buf) - p)) {
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            continue;
        }
        t[i].pValue = p;
        p += t[i].ulValueLen;
    }
    {
        /* Ask again for those that have a value. */
        CK_ATTRIBUTE q[CMK_ARRAY_SIZE(copy)];
        CK_ULONG nq = 0;
        for (i = 0; i < CMK_ARRAY_SIZE(t); i++)
            if (t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION)
                q[nq++] = t[i];
        rv = LOWER(ht, C_GetAttributeValue, s, h, q, nq);
        if (rv != CKR_OK)
            return hsm_map_rv(rv);
        for (i = 0; i < nq; i++)
            if (attrs_set(&out->attrs, q[i].type, q[i].pValue,
                          q[i].ulValueLen) != 0) {
                attrs_clear(&out->attrs);
                return CKR_HOST_MEMORY;
            }
    }
    return CKR_OK;
}

/* The front end's uid of a token secret key in the lower token: its
 * handle, which the lower module keeps for the object's life in this
 * process (PKCS#11 2.40 2.5: object handles are the application's, not
 * the session's). */
void hsm_secret_uid(CK_OBJECT_HANDLE h, char *buf, size_t len)
{
    snprintf(buf, len, "hsm/secret/%lu", (unsigned long)h);
}

/* A lower secret key as the front end's object. A token object (CKA_TOKEN
 * true) gets its uid, and may be destroyed through this module. */
CK_RV hsm_secret_pobj(struct hsm_token *ht, CK_SESSION_HANDLE s,
                      CK_OBJECT_HANDLE h, struct pobj *out)
{
    struct hsm_secret *ref;
    char uid[64];
    CK_RV rv;

    memset(out, 0, sizeof(*out));
    rv = secret_attrs(ht, s, h, out);
    if (rv != CKR_OK)
        return rv;
    /* CKA_COPYABLE, CKA_DESTROYABLE: the front end's defaults, but a
     * token key made here is destroyed here too. */
    if (attrs_get_bool(&out->attrs, CKA_TOKEN, false)) {
        hsm_secret_uid(h, uid, sizeof(uid));
        out->uid = strdup(uid);
        if (out->uid == NULL ||
            attrs_set_bool(&out->attrs, CKA_DESTROYABLE, true) != 0) {
            pobj_clear(NULL, NULL, out);
            return CKR_HOST_MEMORY;
        }
    }
    ref = calloc(1, sizeof(*ref));
    if (ref == NULL) {
        pobj_clear(NULL, NULL, out);
        return CKR_HOST_MEMORY;
    }
    ref->kind = HSM_REF_SECRET;
    ref->h = h;
    out->ref = ref;
    return CKR_OK;
}

/* A copy of the template with CKA_TOKEN as the caller gave it, false when
 * absent: session keys are session objects of the caller's lower session,
 * token keys (PROVIDER_TOKEN_SECRET_KEYS) objects of the lower token. The
 * front end has checked the template (module/attrpolicy.c). */
static CK_RV session_template(const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                              CK_ATTRIBUTE **out, CK_ULONG *nout)
{
    static CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE *t;
    CK_ULONG k = n;

    t = calloc(n + 1, sizeof(*t));
    if (t == NULL)
        return CKR_HOST_MEMORY;
    if (n > 0)
        memcpy(t, tmpl, n * sizeof(*t));
    if (tmpl_find(tmpl, n, CKA_TOKEN) == NULL) {
        t[k].type = CKA_TOKEN;
        t[k].pValue = &no;
        t[k].ulValueLen = sizeof(no);
        k++;
    }
    *out = t;
    *nout = k;
    return CKR_OK;
}

/* A decrypt code as unwrap's: the ciphertext is the wrapped key. */
static CK_RV as_unwrap_rv(CK_RV rv)
{
    if (rv == CKR_ENCRYPTED_DATA_INVALID)
        return CKR_WRAPPED_KEY_INVALID;
    if (rv == CKR_ENCRYPTED_DATA_LEN_RANGE)
        return CKR_WRAPPED_KEY_LEN_RANGE;
    return rv;
}

/* An unwrapped value enters the lower token as a session object made from
 * the session template t. */
static CK_RV create_unwrapped(struct pcall *c, const CK_ATTRIBUTE *t,
                              CK_ULONG nt, CK_BYTE *value, CK_ULONG keylen,
                              CK_OBJECT_HANDLE *h)
{
    struct hsm_token *ht = c->tok;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE *t2;
    CK_ULONG want, i, k = 0;
    CK_RV rv;

    t2 = calloc(nt + 2, sizeof(*t2));
    if (t2 == NULL)
        return CKR_HOST_MEMORY;
    /* CKA_VALUE_LEN may not accompany CKA_VALUE in C_CreateObject. */
    if (tmpl_find_ulong(t, nt, CKA_VALUE_LEN, &want) == 1 && want != keylen) {
        free(t2);
        return CKR_WRAPPED_KEY_INVALID;
    }
    for (i = 0; i < nt; i++)
        if (t[i].type != CKA_VALUE_LEN)
            t2[k++] = t[i];
    if (tmpl_find(t, nt, CKA_CLASS) == NULL) {
        t2[k].type = CKA_CLASS;
        t2[k].pValue = &cls;
        t2[k].ulValueLen = sizeof(cls);
        k++;
    }
    t2[k].type = CKA_VALUE;
    t2[k].pValue = value;
    t2[k].ulValueLen = keylen;
    k++;
    rv = hsm_mapped(c,
                    LOWER(ht, C_CreateObject, hsm_lower_session(c), t2, k, h));
    free(t2);
    return rv;
}

/* Unwrap with OAEP over raw RSA here, then into the lower token. */
static CK_RV unwrap_local(struct pcall *c, CK_OBJECT_HANDLE priv,
                          const CK_MECHANISM *m, const CK_BYTE *wrapped,
                          CK_ULONG len, const CK_ATTRIBUTE *t, CK_ULONG nt,
                          CK_OBJECT_HANDLE *h)
{
    CK_ULONG keylen = len;
    CK_BYTE *value = secure_alloc(len + 1);
    CK_RV rv;

    if (value == NULL)
        return CKR_HOST_MEMORY;
    rv = as_unwrap_rv(
        hsm_oaep_decrypt_raw(c, priv, m, wrapped, len, value, &keylen));
    if (rv == CKR_OK)
        rv = create_unwrapped(c, t, nt, value, keylen, h);
    secure_free(value);
    return rv;
}

static CK_RV unwrap_lower(struct pcall *c, void *key, const CK_MECHANISM *m,
                          const CK_BYTE *wrapped, CK_ULONG len,
                          const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                          struct pobj *out)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_OBJECT_HANDLE priv = hsm_ref_handle(ht, key, true), h = 0;
    CK_ATTRIBUTE *t = NULL;
    CK_ULONG nt = 0;
    CK_RV rv;

    if (priv == 0)
        return CKR_UNWRAPPING_KEY_HANDLE_INVALID;
    rv = session_template(tmpl, n, &t, &nt);
    if (rv != CKR_OK)
        return rv;
    if (!hsm_oaep_is_local(ht, m)) {
        rv = LOWER(ht, C_UnwrapKey, s, (CK_MECHANISM *)m, priv,
                   (CK_BYTE *)wrapped, len, t, nt, &h);
        (void)hsm_oaep_refused(ht, m, rv);
        if (!hsm_oaep_is_local(ht, m)) {
            /* SoftHSM reports a blob it cannot decrypt as a general
             * error; the blob is the only input the caller controls. */
            if (rv == CKR_GENERAL_ERROR)
                rv = CKR_WRAPPED_KEY_INVALID;
            rv = hsm_mapped(c, as_unwrap_rv(rv));
            goto done;
        }
    }
    rv = unwrap_local(c, priv, m, wrapped, len, t, nt, &h);
done:
    if (rv == CKR_OK) {
        rv = hsm_secret_pobj(ht, s, h, out);
        if (rv != CKR_OK)
            LOWER(ht, C_DestroyObject, s, h);
    }
    free(t);
    return rv;
}

/* The value of a lower secret key, by wrapping it under a temporary AES
 * key: the lower token still enforces CKA_EXTRACTABLE. */
static CK_RV extract_value(struct pcall *c, CK_OBJECT_HANDLE h, CK_BYTE *out,
                           CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_ULONG klen = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE_LEN, &klen, sizeof(klen)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        {CKA_WRAP, &yes, sizeof(yes)},
    };
    CK_BYTE kek[32], blob[600];
    CK_ATTRIBUTE kv = {CKA_VALUE, kek, sizeof(kek)};
    CK_ULONG blen = sizeof(blob);
    CK_OBJECT_HANDLE tmp = 0;
    CK_RV rv;

    rv = LOWER(ht, C_GenerateKey, s, &gen, t, CMK_ARRAY_SIZE(t), &tmp);
    if (rv == CKR_OK)
        rv = LOWER(ht, C_WrapKey, s, &kwp, tmp, h, blob, &blen);
    if (rv == CKR_OK)
        rv = LOWER(ht, C_GetAttributeValue, s, tmp, &kv, 1);
    if (tmp != 0)
        LOWER(ht, C_DestroyObject, s, tmp);
    if (rv == CKR_OK)
        rv = softkey_crypt(&kwp, false, kek, sizeof(kek), blob, blen, out,
                           outlen);
    secure_zero(kek, sizeof(kek));
    secure_zero(blob, sizeof(blob));
    return rv == CKR_OK ? CKR_OK : hsm_mapped(c, rv);
}

CK_RV hsm_wrap(struct pcall *c, void *wrapping_key, const CK_MECHANISM *m,
               void *key, CK_BYTE *out, CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_OBJECT_HANDLE wh = hsm_ref_handle(ht, wrapping_key, false);
    CK_OBJECT_HANDLE kh = hsm_ref_handle(ht, key, false);
    CK_BYTE value[600];
    CK_ULONG vlen = sizeof(value), nlen = 0, elen = 0;
    CK_BYTE *n = NULL, *e = NULL;
    EVP_PKEY *pk = NULL;
    CK_RV rv;

    if (wh == 0)
        return CKR_WRAPPING_KEY_HANDLE_INVALID;
    if (kh == 0)
        return CKR_KEY_HANDLE_INVALID;
    /* The lower token would wrap with a disabled or deleted version's
     * public key. Disabled, not CKA_UNWRAP alone: a version that may only
     * decrypt still wraps keys the lower token holds (docs/hsm.md). */
    rv = hsm_usage_check(c, wrapping_key, USE_ANY);
    if (rv != CKR_OK)
        return rv;
    if (!hsm_oaep_is_local(ht, m)) {
        rv = LOWER(ht, C_WrapKey, s, (CK_MECHANISM *)m, wh, kh, out, outlen);
        /* A mechanism the lower token lacks for wrapping stays
         * CKR_MECHANISM_INVALID. */
        if (rv == CKR_MECHANISM_INVALID || !hsm_oaep_refused(ht, m, rv))
            return hsm_mapped(c, rv);
    }
    /* OAEP the lower token cannot do: encrypt here with the public key. */
    n = hsm_get_attr(ht, s, wh, CKA_MODULUS, &nlen);
    e = hsm_get_attr(ht, s, wh, CKA_PUBLIC_EXPONENT, &elen);
    if (n == NULL || e == NULL) {
        rv = CKR_WRAPPING_KEY_HANDLE_INVALID;
        goto out;
    }
    if (out == NULL) {
        *outlen = nlen;
        rv = CKR_OK;
        goto out;
    }
    rv = extract_value(c, kh, value, &vlen);
    if (rv != CKR_OK)
        goto out;
    pk = rsa_pkey_from_parts(n, nlen, e, elen);
    if (pk == NULL) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    {
        CK_BYTE tmp[1024];
        CK_ULONG tlen = sizeof(tmp);
        rv = rsa_encrypt(pk, m, value, vlen, tmp, &tlen);
        if (rv == CKR_OK && *outlen < tlen) {
            *outlen = tlen;
            rv = CKR_BUFFER_TOO_SMALL;
        } else if (rv == CKR_OK) {
            memcpy(out, tmp, tlen);
            *outlen = tlen;
        }
    }
out:
    secure_zero(value, sizeof(value));
    EVP_PKEY_free(pk);
    free(n);
    free(e);
    return rv;
}

/* A secret key made in the caller's lower session: generated (m set) or
 * created from the template's value (m NULL). */
static CK_RV new_secret(struct pcall *c, const CK_MECHANISM *m,
                        const CK_ATTRIBUTE *tmpl, CK_ULONG n, struct pobj *out)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_ATTRIBUTE *t = NULL;
    CK_ULONG nt = 0;
    CK_OBJECT_HANDLE h = 0;
    CK_RV rv;

    rv = session_template(tmpl, n, &t, &nt);
    if (rv != CKR_OK)
        return rv;
    rv = m != NULL ? LOWER(ht, C_GenerateKey, s, (CK_MECHANISM *)m, t, nt, &h)
                   : LOWER(ht, C_CreateObject, s, t, nt, &h);
    rv = hsm_mapped(c, rv);
    free(t);
    if (rv == CKR_OK) {
        rv = hsm_secret_pobj(ht, s, h, out);
        if (rv != CKR_OK)
            LOWER(ht, C_DestroyObject, s, h);
    }
    return rv;
}

CK_RV hsm_generate_key(struct pcall *c, const CK_MECHANISM *m,
                       const CK_ATTRIBUTE *tmpl, CK_ULONG n, struct pobj *out)
{
    return new_secret(c, m, tmpl, n, out);
}

CK_RV hsm_create_object(struct pcall *c, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                        struct pobj *out)
{
    return new_secret(c, NULL, tmpl, n, out);
}

CK_RV hsm_destroy_object(struct pcall *c, void *ref)
{
    struct hsm_token *ht = c->tok;
    int *kind = ref;

    if (kind == NULL || *kind != HSM_REF_SECRET)
        return CKR_ACTION_PROHIBITED;
    return hsm_mapped(c, LOWER(ht, C_DestroyObject, hsm_lower_session(c),
                               ((struct hsm_secret *)ref)->h));
}

CK_RV hsm_get_value(struct pcall *c, void *ref, CK_BYTE *out, CK_ULONG *len)
{
    struct hsm_token *ht = c->tok;
    CK_OBJECT_HANDLE h = hsm_ref_handle(ht, ref, false);
    CK_ATTRIBUTE a = {CKA_VALUE, out, *len};
    CK_RV rv;

    if (h == 0)
        return CKR_OBJECT_HANDLE_INVALID;
    rv = LOWER(ht, C_GetAttributeValue, hsm_lower_session(c), h, &a, 1);
    if (rv == CKR_OK)
        *len = a.ulValueLen;
    return hsm_mapped(c, rv);
}

CK_RV hsm_crypt(struct pcall *c, enum pop op, void *key, const CK_MECHANISM *m,
                const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                CK_ULONG *outlen)
{
    audit_note_offline(false);
    return hsm_usage_after(c->tok, key,
                           crypt_lower(c, op, key, m, in, inlen, out, outlen));
}

CK_RV hsm_unwrap(struct pcall *c, void *key, const CK_MECHANISM *m,
                 const CK_BYTE *wrapped, CK_ULONG len, const CK_ATTRIBUTE *tmpl,
                 CK_ULONG n, struct pobj *out)
{
    audit_note_offline(false);
    return hsm_usage_after(c->tok, key,
                           unwrap_lower(c, key, m, wrapped, len, tmpl, n, out));
}

CK_RV hsm_generate_random(struct pcall *c, CK_BYTE *out, CK_ULONG len)
{
    struct hsm_token *ht = c->tok;

    return hsm_mapped(
        c, LOWER(ht, C_GenerateRandom, hsm_lower_session(c), out, len));
}
