/*
 * Encrypt, decrypt, sign, verify and digest: operation state, validation
 * order, multi-part calls and the output-length convention.
 *
 * Every Init validates in the same order: arguments, session, operation
 * already active, key handle, mechanism on this token, key usage,
 * CKA_ALLOWED_MECHANISMS, key type, validity dates, mechanism parameters.
 * Every output follows PKCS#11 2.40 section 5.2: a NULL buffer returns a
 * sufficient size and keeps the operation; a short buffer returns
 * CKR_BUFFER_TOO_SMALL with the exact size and keeps the operation (and the
 * result, so a remote back end is not asked twice); anything else ends it.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "audit.h"
#include "call.h"
#include "crypto.h"
#include "pcall.h"
#include "pkcs1.h"
#include "rsa.h"
#include "secure.h"
#include "softkey.h"

static const struct {
    CK_ATTRIBUTE_TYPE usage;
    CK_FLAGS flag;
    CK_OBJECT_CLASS rsa_class;
    const char *name;
} op_spec[OP_COUNT] = {
    [OP_ENCRYPT] = {CKA_ENCRYPT, CKF_ENCRYPT, CKO_PUBLIC_KEY, "encrypt"},
    [OP_DECRYPT] = {CKA_DECRYPT, CKF_DECRYPT, CKO_PRIVATE_KEY, "decrypt"},
    [OP_SIGN] = {CKA_SIGN, CKF_SIGN, CKO_PRIVATE_KEY, "sign"},
    [OP_VERIFY] = {CKA_VERIFY, CKF_VERIFY, CKO_PUBLIC_KEY, "verify"},
    [OP_DIGEST] = {0, CKF_DIGEST, 0, "digest"},
};

bool mech_is_rsa(CK_MECHANISM_TYPE m)
{
    CK_MECHANISM_TYPE d;
    bool pss;

    return m == CKM_RSA_PKCS || m == CKM_RSA_PKCS_OAEP || m == CKM_RSA_X_509 ||
           m == CKM_RSA_PKCS_PSS || rsa_hash_sign_mech(m, &d, &pss);
}

static bool mech_is_aes(CK_MECHANISM_TYPE m)
{
    return m == CKM_AES_GCM || m == CKM_AES_CBC_PAD || m == CKM_AES_KEY_WRAP ||
           m == CKM_AES_KEY_WRAP_PAD || m == CKM_AES_ECB || m == CKM_AES_CBC;
}

/* Deep-copies the mechanism and its parameters into the operation. */
CK_RV op_copy_mech(struct op *op, const CK_MECHANISM *m)
{
    op->mech = *m;
    op->mech.pParameter = NULL;
    op->mech.ulParameterLen = 0;
    if (m->pParameter == NULL || m->ulParameterLen == 0)
        return CKR_OK;
    switch (m->mechanism) {
    case CKM_RSA_PKCS_OAEP: {
        CK_RSA_PKCS_OAEP_PARAMS *p = &op->param.oaep;
        *p = *(CK_RSA_PKCS_OAEP_PARAMS *)m->pParameter;
        if (p->ulSourceDataLen > 0) {
            op->param_data[0] = malloc(p->ulSourceDataLen);
            if (op->param_data[0] == NULL)
                return CKR_HOST_MEMORY;
            memcpy(op->param_data[0], p->pSourceData, p->ulSourceDataLen);
        }
        p->pSourceData = op->param_data[0];
        break;
    }
    case CKM_AES_GCM: {
        CK_GCM_PARAMS *p = &op->param.gcm;
        *p = *(CK_GCM_PARAMS *)m->pParameter;
        op->param_data[0] = malloc(p->ulIvLen + 1);
        op->param_data[1] = malloc(p->ulAADLen + 1);
        if (op->param_data[0] == NULL || op->param_data[1] == NULL)
            return CKR_HOST_MEMORY;
        memcpy(op->param_data[0], p->pIv, p->ulIvLen);
        if (p->ulAADLen > 0)
            memcpy(op->param_data[1], p->pAAD, p->ulAADLen);
        p->pIv = op->param_data[0];
        p->pAAD = op->param_data[1];
        break;
    }
    default:
        if (m->ulParameterLen > sizeof(op->param))
            return CKR_MECHANISM_PARAM_INVALID;
        memcpy(&op->param, m->pParameter, m->ulParameterLen);
        break;
    }
    op->mech.pParameter = &op->param;
    op->mech.ulParameterLen = m->ulParameterLen;
    return CKR_OK;
}

static bool allowed_mechanism(struct object *key, CK_MECHANISM_TYPE m)
{
    CK_ULONG len = 0, i;
    CK_MECHANISM_TYPE *list =
        object_get_value(key, CKA_ALLOWED_MECHANISMS, &len);
    bool ok = true;

    if (list != NULL && len >= sizeof(CK_MECHANISM_TYPE)) {
        ok = false;
        for (i = 0; i < len / sizeof(CK_MECHANISM_TYPE); i++)
            if (list[i] == m)
                ok = true;
    }
    free(list);
    return ok;
}

/* key_dates_valid() on the dates a back end published (CKA_CMK_NOT_BEFORE,
 * CKA_CMK_EXPIRES: decimal seconds, empty for none). */
CK_RV key_check_dates(struct object *key)
{
    CK_ULONG len;
    char *nbf = object_get_value(key, CKA_CMK_NOT_BEFORE, &len);
    char *exp = object_get_value(key, CKA_CMK_EXPIRES, &len);
    CK_RV rv = CKR_OK;

    if (!key_dates_valid(nbf ? atoll(nbf) : 0, exp ? atoll(exp) : 0,
                         (long long)time(NULL)))
        rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
    free(nbf);
    free(exp);
    return rv;
}

CK_RV key_check(struct session *s, struct object *key, const CK_MECHANISM *m,
                CK_ATTRIBUTE_TYPE usage, CK_FLAGS flag,
                CK_OBJECT_CLASS rsa_class)
{
    const struct pmech *pm = token_mech(s->token, m->mechanism);
    CK_OBJECT_CLASS cls = object_get_ulong(key, CKA_CLASS, ~0UL);
    CK_KEY_TYPE kt = object_get_ulong(key, CKA_KEY_TYPE, ~0UL);

    if (pm == NULL || !(pm->info.flags & flag))
        return CKR_MECHANISM_INVALID;
    if (usage != 0 && !object_get_bool(key, usage, false))
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (!allowed_mechanism(key, m->mechanism))
        return CKR_MECHANISM_INVALID;
    if (mech_is_rsa(m->mechanism)) {
        if (kt != CKK_RSA || cls != rsa_class)
            return CKR_KEY_TYPE_INCONSISTENT;
    } else if (mech_is_aes(m->mechanism)) {
        if (kt != CKK_AES || cls != CKO_SECRET_KEY)
            return CKR_KEY_TYPE_INCONSISTENT;
    } else if (softkey_is_hmac(m->mechanism)) {
        if (kt != CKK_GENERIC_SECRET || cls != CKO_SECRET_KEY)
            return CKR_KEY_TYPE_INCONSISTENT;
    }
    return CKR_OK;
}

/* PSS: the salt must fit the key (RFC 8017, 9.1.1: emLen >= hLen + sLen
 * + 2, emLen = ceil((modBits - 1) / 8)); every back end would refuse it,
 * but only when signing. */
static CK_RV pss_check_size(struct object *key, CK_RV rv, const CK_MECHANISM *m)
{
    const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
    CK_ULONG bits, em;
    int hlen;

    if (rv != CKR_OK)
        return rv;
    bits = object_get_ulong(key, CKA_MODULUS_BITS, 0);
    if (bits == 0)
        bits = rsa_object_bytes(key) * 8;
    em = (bits - 1 + 7) / 8;
    hlen = EVP_MD_get_size(rsa_md_for_mech(p->hashAlg));
    if (bits < 16 || hlen <= 0 || (CK_ULONG)hlen + p->sLen + 2 > em)
        return CKR_MECHANISM_PARAM_INVALID;
    return CKR_OK;
}

/* Mechanism parameters, after the key checks. */
CK_RV mech_check_params(struct object *key, const CK_MECHANISM *m)
{
    CK_MECHANISM_TYPE digest;
    bool pss;

    switch (m->mechanism) {
    case CKM_RSA_PKCS_OAEP:
        return rsa_check_oaep(m);
    case CKM_RSA_PKCS_PSS:
        return pss_check_size(key, rsa_check_pss(m, 0), m);
    case CKM_RSA_PKCS:
    case CKM_RSA_X_509:
        return CKR_OK;
    default:
        break;
    }
    if (rsa_hash_sign_mech(m->mechanism, &digest, &pss))
        return pss ? pss_check_size(key, rsa_check_pss(m, digest), m) : CKR_OK;
    if (softkey_is_hmac(m->mechanism)) {
        CK_ULONG maclen;
        return softkey_hmac_check(m, &maclen);
    }
    if (mech_is_aes(m->mechanism)) {
        CK_ULONG len = key->secret != NULL
                           ? key->secret_len
                           : object_get_ulong(key, CKA_VALUE_LEN, 0);
        /* A back end that keeps the key checks its length itself. */
        if (len == 0 && key->secret == NULL)
            len = 32;
        return softkey_check_mech(m, len);
    }
    return CKR_OK;
}

static CK_RV op_prepare(struct session *s, struct op *op, enum op_kind kind,
                        const CK_MECHANISM *m, struct object *key)
{
    CK_MECHANISM_TYPE digest;
    bool pss;
    CK_RV rv;

    rv = key_check(s, key, m, op_spec[kind].usage, op_spec[kind].flag,
                   op_spec[kind].rsa_class);
    if (rv == CKR_OK && (kind == OP_ENCRYPT || kind == OP_SIGN) &&
        mech_is_rsa(m->mechanism))
        rv = key_check_dates(key);
    if (rv == CKR_OK)
        rv = mech_check_params(key, m);
    if (rv == CKR_OK)
        rv = op_copy_mech(op, m);
    if (rv != CKR_OK)
        return rv;
    op->inner = m->mechanism;
    if (rsa_hash_sign_mech(m->mechanism, &digest, &pss)) {
        op->inner = pss ? CKM_RSA_PKCS_PSS : CKM_RSA_PKCS;
        op->md = EVP_MD_CTX_new();
        if (op->md == NULL ||
            EVP_DigestInit_ex(op->md, rsa_md_for_mech(digest), NULL) != 1)
            return CKR_HOST_MEMORY;
    }
    if ((kind == OP_DECRYPT || kind == OP_SIGN ||
         (kind == OP_VERIFY && op->inner == CKM_RSA_PKCS_PSS)) &&
        key->secret == NULL) {
        CK_MECHANISM inner = op->mech;
        inner.mechanism = op->inner;
        if (op->inner == CKM_RSA_PKCS) {
            inner.pParameter = NULL;
            inner.ulParameterLen = 0;
        }
        rv = provider_check_mechanism(s,
                                      kind == OP_SIGN     ? POP_SIGN
                                      : kind == OP_VERIFY ? POP_VERIFY
                                                          : POP_DECRYPT,
                                      &inner);
    }
    if (rv == CKR_OK && kind == OP_DECRYPT && pkcs1_implicit(s->token, m, key))
        rv = pkcs1_prepare(s, key);
    return rv;
}

CK_RV op_append(struct op *op, const CK_BYTE *in, CK_ULONG inlen)
{
    unsigned char *nb;
    CK_ULONG ncap;

    if (inlen == 0)
        return CKR_OK;
    if (op->len + inlen > CMK_MAX_MULTIPART || op->len + inlen < op->len)
        return CKR_DATA_LEN_RANGE;
    if (op->len + inlen > op->cap) {
        ncap = op->cap ? op->cap : 256;
        while (ncap < op->len + inlen)
            ncap *= 2;
        nb = secure_alloc(ncap);
        if (nb == NULL)
            return CKR_HOST_MEMORY;
        if (op->len > 0)
            memcpy(nb, op->buf, op->len);
        secure_free(op->buf);
        op->buf = nb;
        op->cap = ncap;
    }
    memcpy(op->buf + op->len, in, inlen);
    op->len += inlen;
    return CKR_OK;
}

static CK_ULONG op_bound(struct op *op, enum op_kind kind, CK_ULONG inlen)
{
    if (kind == OP_DIGEST)
        return (CK_ULONG)EVP_MD_get_size(rsa_md_for_mech(op->mech.mechanism));
    if (mech_is_rsa(op->mech.mechanism))
        return rsa_object_bytes(op->key);
    if (softkey_is_hmac(op->mech.mechanism)) {
        CK_ULONG maclen = 32;
        softkey_hmac_check(&op->mech, &maclen);
        return maclen;
    }
    if (op->key->secret != NULL)
        return softkey_out_bound(&op->mech, kind == OP_ENCRYPT, inlen);
    return inlen + 32;
}

/* Signs prepared input: a DigestInfo or data (CKM_RSA_PKCS), a digest
 * (PSS), or whatever the provider's own mechanism takes. */
static CK_RV sign_prepared(struct session *s, struct op *op, const CK_BYTE *in,
                           CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    CK_MECHANISM inner = op->mech;

    inner.mechanism = op->inner;
    if (op->inner == CKM_RSA_PKCS) {
        inner.pParameter = NULL;
        inner.ulParameterLen = 0;
    }
    return provider_crypt(s, POP_SIGN, op->key, &inner, in, inlen, out, outlen);
}

/* The actual computation, on whole (prepared) input. */
static CK_RV op_run(struct session *s, struct op *op, enum op_kind kind,
                    const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                    CK_ULONG *outlen)
{
    struct object *key = op->key;
    struct rsa_pkey *pk;

    switch (kind) {
    case OP_ENCRYPT:
        if (key->secret != NULL)
            return softkey_crypt(&op->mech, true, key->secret, key->secret_len,
                                 in, inlen, out, outlen);
        if (mech_is_rsa(op->mech.mechanism) &&
            (s->token->pflags & PROVIDER_LOCAL_PUBLIC)) {
            CK_RV rv = provider_check_public(s, key, false);
            if (rv != CKR_OK)
                return rv;
            pk = rsa_object_pkey(key);
            if (pk == NULL)
                return CKR_GENERAL_ERROR;
            rv = rsa_encrypt(rsa_pkey_evp(pk), &op->mech, in, inlen, out,
                             outlen);
            rsa_pkey_unref(pk);
            return rv;
        }
        return provider_crypt(s, POP_ENCRYPT, key, &op->mech, in, inlen, out,
                              outlen);
    case OP_DECRYPT:
        if (key->secret != NULL)
            return softkey_crypt(&op->mech, false, key->secret, key->secret_len,
                                 in, inlen, out, outlen);
        if (pkcs1_implicit(s->token, &op->mech, key))
            return pkcs1_decrypt(s, key, in, inlen, 0, out, outlen);
        return provider_crypt(s, POP_DECRYPT, key, &op->mech, in, inlen, out,
                              outlen);
    case OP_SIGN:
        if (key->secret != NULL && softkey_is_hmac(op->mech.mechanism))
            return softkey_hmac(&op->mech, key->secret, key->secret_len, in,
                                inlen, out, outlen);
        return sign_prepared(s, op, in, inlen, out, outlen);
    default:
        return CKR_GENERAL_ERROR;
    }
}

/* Hash-and-sign: the digest becomes the provider's input. */
static CK_RV sign_input(struct op *op, const CK_BYTE *data, CK_ULONG len,
                        bool final, CK_BYTE *buf, CK_ULONG *buflen)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    CK_MECHANISM_TYPE digest;
    bool pss;

    if (!rsa_hash_sign_mech(op->mech.mechanism, &digest, &pss)) {
        if (*buflen < len)
            return CKR_DATA_LEN_RANGE;
        memcpy(buf, data, len);
        *buflen = len;
        return CKR_OK;
    }
    if (!final && EVP_DigestUpdate(op->md, data, len) != 1)
        return CKR_GENERAL_ERROR;
    if (EVP_DigestFinal_ex(op->md, md, &mdlen) != 1)
        return CKR_GENERAL_ERROR;
    if (pss) {
        memcpy(buf, md, mdlen);
        *buflen = mdlen;
        return CKR_OK;
    }
    return rsa_digest_info(digest, md, mdlen, buf, buflen);
}

void op_end(struct op *op)
{
    op_reset(op);
}

static void input_hash(const CK_BYTE *in, CK_ULONG len, unsigned char *h)
{
    unsigned int hl = 32;

    EVP_Digest(in, len, h, &hl, EVP_sha256(), NULL);
}

/*
 * The output convention. in is the whole prepared input of the call.
 */
/*
 * Data encrypted under an older version, decrypted through the key's label
 * object (the current version): with unwrap-fallback, OAEP tries the other
 * enabled versions as C_UnwrapKey does; otherwise the log says they exist
 * and how to name one. Never PKCS#1 v1.5 (see key_fallback_versions).
 */
static CK_RV decrypt_older(struct session *s, struct op *op, const CK_BYTE *in,
                           CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen,
                           CK_ULONG cap)
{
    struct object *others[CMK_FALLBACK_MAX], *current = op->key;
    CK_ULONG n, i, len = *outlen;
    CK_RV rv = CKR_ENCRYPTED_DATA_INVALID, r;
    char *name, *ver;
    CK_ULONG vlen = 0;

    if (op->mech.mechanism != CKM_RSA_PKCS_OAEP || current->secret != NULL ||
        !object_get_bool(current, CKA_CMK_CURRENT, false))
        return rv;
    n = key_fallback_versions(s, current, CKA_DECRYPT, others);
    if (n == 0)
        return rv;
    name = object_get_value(current, CKA_CMK_KEY_NAME, &vlen);
    if (!s->token->unwrap_fallback) {
        ver = object_get_value(others[0], CKA_CMK_VERSION, &vlen);
        cmk_warning("token %s: key %s: the data does not decrypt with the "
                    "current version and %lu older version(s) exist: set "
                    "unwrap-fallback = yes, or name one as object=%s@%s",
                    s->token->name, name ? name : "?", (unsigned long)n,
                    name ? name : "NAME", ver ? ver : "VERSION");
        free(ver);
    }
    for (i = 0; s->token->unwrap_fallback && i < n; i++) {
        op->key = others[i];
        len = cap;
        r = op_run(s, op, OP_DECRYPT, in, inlen, out, &len);
        if (r == CKR_OK) {
            ver = object_get_value(others[i], CKA_CMK_VERSION, &vlen);
            cmk_info("token %s: key %s: the data was encrypted under an older "
                     "version (%s); decrypted with it",
                     s->token->name, name ? name : "?", ver ? ver : "?");
            free(ver);
            *outlen = len;
            rv = CKR_OK;
            break;
        }
        if (r != CKR_ENCRYPTED_DATA_INVALID)
            break; /* not a wrong-version answer: stop here */
    }
    op->key = current;
    free(name);
    for (i = 0; i < n; i++)
        object_unref(others[i]);
    return rv;
}

/* GCM parameters whose tag is whole bytes and at most 16 of them. */
static bool gcm_exact(const CK_MECHANISM *m)
{
    const CK_GCM_PARAMS *p = m->pParameter;

    return p != NULL && m->ulParameterLen == sizeof(*p) &&
           p->ulTagBits % 8 == 0 && p->ulTagBits <= 128;
}

/*
 * Whether the result goes straight into the caller's buffer, without a
 * copy through secure memory (sealing and unsealing a file is one call per
 * 64 KiB segment, docs/performance.md): the room given it, or 0. Only into
 * a buffer that does not overlap the input and holds
 * - for encryption, the whole result (ciphertext is no secret; AES-GCM's
 *   is exactly the input and the tag, PKCS#11 3.0, 2.12.5);
 * - for AES-GCM decryption, as much as the ciphertext (which every lower
 *   token accepts: SoftHSM's C_DecryptUpdate asks for that much). The
 *   plaintext is the caller's only once the tag is checked: on any failure
 *   the buffer is wiped (deliver), so nothing unverified stays in it
 *   (OpenSSL, and a lower token, may write plaintext before they check
 *   the tag).
 */
static CK_ULONG direct_cap(struct op *op, enum op_kind kind, const CK_BYTE *in,
                           CK_ULONG inlen, const CK_BYTE *out, CK_ULONG outlen)
{
    bool gcm = op->mech.mechanism == CKM_AES_GCM && gcm_exact(&op->mech);
    CK_ULONG cap;

    if (kind == OP_ENCRYPT)
        cap = gcm ? softkey_out_bound(&op->mech, true, inlen)
                  : op_bound(op, kind, inlen);
    else if (kind == OP_DECRYPT && gcm)
        cap = inlen;
    else
        return 0;
    if (cap == 0 || outlen < cap ||
        !((uintptr_t)out + cap <= (uintptr_t)in ||
          (uintptr_t)in + inlen <= (uintptr_t)out))
        return 0;
    return cap;
}

static CK_RV deliver(struct session *s, struct op *op, enum op_kind kind,
                     const CK_BYTE *in, CK_ULONG inlen, CK_BYTE_PTR out,
                     CK_ULONG_PTR outlen)
{
    unsigned char h[32];
    unsigned char *res = NULL;
    CK_ULONG cap, len;
    bool cached = false;
    CK_RV rv;

    if (op->result != NULL) {
        input_hash(in, inlen, h);
        cached = ct_memcmp(h, op->in_hash, sizeof(h)) == 0;
        if (!cached) {
            secure_free(op->result);
            op->result = NULL;
            op->result_len = 0;
        }
    }
    if (out == NULL) {
        *outlen = cached ? op->result_len : op_bound(op, kind, inlen);
        return CKR_OK;
    }
    cap = direct_cap(op, kind, in, inlen, out, *outlen);
    if (!cached && cap > 0) {
        len = cap;
        s->device_error = 0;
        rv = op_run(s, op, kind, in, inlen, out, &len);
        audit_record(s, op->key, op_spec[kind].name, op->mech.mechanism, rv,
                     s->device_error);
        if (rv == CKR_OK)
            *outlen = len;
        else if (kind == OP_DECRYPT)
            secure_zero(out, cap);
        op_end(op);
        return rv;
    }
    if (cached) {
        res = op->result;
        len = op->result_len;
    } else {
        cap = op_bound(op, kind, inlen);
        res = secure_alloc(cap ? cap : 1);
        if (res == NULL) {
            op_end(op);
            return CKR_HOST_MEMORY;
        }
        len = cap;
        s->device_error = 0;
        rv = op_run(s, op, kind, in, inlen, res, &len);
        if (rv == CKR_ENCRYPTED_DATA_INVALID && kind == OP_DECRYPT)
            rv = decrypt_older(s, op, in, inlen, res, &len, cap);
        audit_record(s, op->key, op_spec[kind].name, op->mech.mechanism, rv,
                     s->device_error);
        if (rv != CKR_OK) {
            secure_free(res);
            op_end(op);
            return rv;
        }
    }
    if (*outlen < len) {
        if (!cached) {
            op->result = res;
            op->result_len = len;
            input_hash(in, inlen, op->in_hash);
        }
        *outlen = len;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(out, res, len);
    *outlen = len;
    if (!cached)
        secure_free(res);
    op_end(op);
    return CKR_OK;
}

static CK_RV op_init(CK_SESSION_HANDLE hSession, enum op_kind kind,
                     CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    struct session *s;
    struct object *key = NULL;
    struct op *op;
    CK_RV rv;

    if (pMechanism == NULL)
        return CKR_ARGUMENTS_BAD;
    cmk_debug("%s with %s", op_spec[kind].name,
              cmk_mech_name(pMechanism->mechanism));
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        return rv;
    op = &s->ops[kind];
    if (op->active) {
        rv = CKR_OPERATION_ACTIVE;
        goto put;
    }
    if (object_get(s, hKey, &key) != CKR_OK) {
        rv = CKR_KEY_HANDLE_INVALID;
        goto put;
    }
    op->key = key;
    rv = op_prepare(s, op, kind, pMechanism, key);
    if (rv != CKR_OK)
        op_reset(op);
    else
        op->active = true;
put:
    session_put(s);
    return rv;
}

/* Looks up the session (locked) and its active operation of this kind. */
static CK_RV op_get(CK_SESSION_HANDLE hSession, enum op_kind kind,
                    struct session **s, struct op **op)
{
    CK_RV rv;

    return_val_if_fail(kind < OP_COUNT, CKR_GENERAL_ERROR);
    rv = session_get(hSession, s);
    if (rv != CKR_OK)
        return rv;
    *op = &(*s)->ops[kind];
    if (!(*op)->active) {
        session_put(*s);
        return CKR_OPERATION_NOT_INITIALIZED;
    }
    return CKR_OK;
}

/*
 * The frame of a call on an active operation: BEGIN_CALL, then the
 * session and its operation of this kind (or the call ends), and at the
 * end the session released. Sets s and op.
 */
#define BEGIN_OP_CALL(name, h, kind)                                           \
    BEGIN_CALL(name);                                                          \
    rv = op_get((h), (kind), &s, &op);                                         \
    if (rv != CKR_OK)                                                          \
    goto out

#define END_OP_CALL                                                            \
    session_put(s);                                                            \
    END_CALL

/* Single-part encrypt or decrypt. */
static CK_RV crypt_once(struct session *s, struct op *op, enum op_kind kind,
                        CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
                        CK_ULONG_PTR outlen)
{
    if ((in == NULL && inlen > 0) || outlen == NULL) {
        op_end(op);
        return CKR_ARGUMENTS_BAD;
    }
    if (op->updated)
        return CKR_OPERATION_ACTIVE;
    return deliver(s, op, kind, in, inlen, out, outlen);
}

/* Whole-message mechanisms: the input is kept, the output comes at Final. */
static CK_RV crypt_update(struct op *op, CK_BYTE_PTR in, CK_ULONG inlen,
                          CK_ULONG_PTR outlen)
{
    CK_RV rv = CKR_ARGUMENTS_BAD;

    if ((in != NULL || inlen == 0) && outlen != NULL)
        rv = op_append(op, in, inlen);
    if (rv != CKR_OK) {
        op_end(op);
        return rv;
    }
    op->updated = true;
    *outlen = 0;
    return CKR_OK;
}

static CK_RV crypt_final(struct session *s, struct op *op, enum op_kind kind,
                         CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
    if (outlen == NULL) {
        op_end(op);
        return CKR_ARGUMENTS_BAD;
    }
    return deliver(s, op, kind, op->buf, op->len, out, outlen);
}

/*
 * C_EncryptInit, C_Encrypt, C_EncryptUpdate and C_EncryptFinal, and the
 * four C_Decrypt functions: the same frames around the same helpers.
 */
#define CRYPT_CALLS(Op, kind)                                                  \
    CK_RV C_##Op##Init(CK_SESSION_HANDLE hSession,                             \
                       CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)     \
    {                                                                          \
        BEGIN_CALL(Op##Init);                                                  \
        rv = op_init(hSession, (kind), pMechanism, hKey);                      \
        END_CALL;                                                              \
    }                                                                          \
                                                                               \
    CK_RV C_##Op(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn,                  \
                 CK_ULONG ulInLen, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOutLen)   \
    {                                                                          \
        struct session *s;                                                     \
        struct op *op;                                                         \
                                                                               \
        BEGIN_OP_CALL(Op, hSession, (kind));                                   \
        rv = crypt_once(s, op, (kind), pIn, ulInLen, pOut, pulOutLen);         \
        END_OP_CALL;                                                           \
    }                                                                          \
                                                                               \
    CK_RV C_##Op##Update(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,        \
                         CK_ULONG ulPartLen, CK_BYTE_PTR pOutPart,             \
                         CK_ULONG_PTR pulOutPartLen)                           \
    {                                                                          \
        struct session *s;                                                     \
        struct op *op;                                                         \
                                                                               \
        BEGIN_OP_CALL(Op##Update, hSession, (kind));                           \
        rv = crypt_update(op, pPart, ulPartLen, pulOutPartLen);                \
        END_OP_CALL;                                                           \
    }                                                                          \
                                                                               \
    CK_RV C_##Op##Final(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart,     \
                        CK_ULONG_PTR pulLastPartLen)                           \
    {                                                                          \
        struct session *s;                                                     \
        struct op *op;                                                         \
                                                                               \
        BEGIN_OP_CALL(Op##Final, hSession, (kind));                            \
        rv = crypt_final(s, op, (kind), pLastPart, pulLastPartLen);            \
        END_OP_CALL;                                                           \
    }

CRYPT_CALLS(Encrypt, OP_ENCRYPT)
CRYPT_CALLS(Decrypt, OP_DECRYPT)

CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                 CK_OBJECT_HANDLE hKey)
{
    BEGIN_CALL(SignInit);
    rv = op_init(hSession, OP_SIGN, pMechanism, hKey);
    END_CALL;
}

/* Prepares the provider's input for a signature once, keeping it in
 * op->buf so a repeated call (after a length query) signs the same. */
static CK_RV sign_prepare_once(struct op *op, const CK_BYTE *data, CK_ULONG len,
                               bool final)
{
    CK_BYTE buf[EVP_MAX_MD_SIZE + 32];
    CK_ULONG blen = sizeof(buf);
    CK_MECHANISM_TYPE digest;
    bool pss;
    CK_RV rv;

    if (!rsa_hash_sign_mech(op->mech.mechanism, &digest, &pss)) {
        if (final)
            return CKR_OK; /* op->buf already holds the data */
        return op_append(op, data, len);
    }
    if (op->md == NULL)
        return CKR_OK; /* done on an earlier call */
    rv = sign_input(op, data, len, final, buf, &blen);
    EVP_MD_CTX_free(op->md);
    op->md = NULL;
    if (rv == CKR_OK)
        rv = op_append(op, buf, blen);
    secure_zero(buf, sizeof(buf));
    return rv;
}

CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
             CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(Sign, hSession, OP_SIGN);
    if ((pData == NULL && ulDataLen > 0) || pulSignatureLen == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        op_end(op);
    } else if (op->updated) {
        rv = CKR_OPERATION_ACTIVE;
    } else {
        if (op->len == 0 || op->md != NULL) {
            op->len = 0;
            rv = sign_prepare_once(op, pData, ulDataLen, false);
        }
        if (rv == CKR_OK)
            rv = deliver(s, op, OP_SIGN, op->buf, op->len, pSignature,
                         pulSignatureLen);
        else
            op_end(op);
    }
    END_OP_CALL;
}

CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,
                   CK_ULONG ulPartLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(SignUpdate, hSession, OP_SIGN);
    if (pPart == NULL && ulPartLen > 0) {
        rv = CKR_ARGUMENTS_BAD;
    } else if (op->md != NULL) {
        if (EVP_DigestUpdate(op->md, pPart, ulPartLen) != 1)
            rv = CKR_GENERAL_ERROR;
    } else if (op->result == NULL) {
        rv = op_append(op, pPart, ulPartLen);
    } else {
        rv = CKR_OPERATION_ACTIVE;
    }
    if (rv == CKR_OK)
        op->updated = true;
    else
        op_end(op);
    END_OP_CALL;
}

CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                  CK_ULONG_PTR pulSignatureLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(SignFinal, hSession, OP_SIGN);
    if (pulSignatureLen == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        op_end(op);
    } else {
        rv = sign_prepare_once(op, NULL, 0, true);
        if (rv == CKR_OK)
            rv = deliver(s, op, OP_SIGN, op->buf, op->len, pSignature,
                         pulSignatureLen);
        else
            op_end(op);
    }
    END_OP_CALL;
}

CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                   CK_OBJECT_HANDLE hKey)
{
    BEGIN_CALL(VerifyInit);
    rv = op_init(hSession, OP_VERIFY, pMechanism, hKey);
    END_CALL;
}

/*
 * HMAC verification: the signature must be as long as the MAC (PKCS#11
 * 3.0 Current Mechanisms 2.21: CKR_SIGNATURE_LEN_RANGE otherwise), and is
 * compared in constant time with the MAC computed here, or checked by the
 * back end that keeps the key (POP_VERIFY).
 */
static CK_RV verify_hmac(struct session *s, struct op *op, const CK_BYTE *data,
                         CK_ULONG len, const CK_BYTE *sig, CK_ULONG siglen)
{
    CK_BYTE mac[32];
    CK_ULONG maclen = 0, outlen = sizeof(mac);
    struct object *key = op->key;
    CK_RV rv;

    rv = softkey_hmac_check(&op->mech, &maclen);
    if (rv != CKR_OK)
        return rv;
    if (siglen != maclen)
        return CKR_SIGNATURE_LEN_RANGE;
    if (key->secret == NULL) {
        outlen = siglen;
        return provider_crypt(s, POP_VERIFY, key, &op->mech, data, len,
                              (CK_BYTE *)sig, &outlen);
    }
    rv = softkey_hmac(&op->mech, key->secret, key->secret_len, data, len, mac,
                      &outlen);
    if (rv == CKR_OK && CRYPTO_memcmp(mac, sig, maclen) != 0)
        rv = CKR_SIGNATURE_INVALID;
    secure_zero(mac, sizeof(mac));
    return rv;
}

static CK_RV verify_run(struct session *s, struct op *op, const CK_BYTE *data,
                        CK_ULONG len, bool final, const CK_BYTE *sig,
                        CK_ULONG siglen)
{
    CK_BYTE buf[EVP_MAX_MD_SIZE + 32];
    CK_ULONG blen = sizeof(buf);
    CK_MECHANISM inner = op->mech;
    struct rsa_pkey *pk;
    CK_RV rv;

    if (softkey_is_hmac(op->mech.mechanism))
        return final ? verify_hmac(s, op, op->buf, op->len, sig, siglen)
                     : verify_hmac(s, op, data, len, sig, siglen);
    inner.mechanism = op->inner;
    if (op->md != NULL) {
        rv = sign_input(op, data, len, final, buf, &blen);
        if (rv != CKR_OK)
            return rv;
        data = buf;
        len = blen;
    } else if (final) {
        data = op->buf;
        len = op->len;
    }
    pk = rsa_object_pkey(op->key);
    if (pk == NULL)
        return CKR_GENERAL_ERROR;
    rv = rsa_verify(rsa_pkey_evp(pk), &inner, data, len, sig, siglen);
    rsa_pkey_unref(pk);
    return rv;
}

CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData,
               CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
               CK_ULONG ulSignatureLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(Verify, hSession, OP_VERIFY);
    if ((pData == NULL && ulDataLen > 0) || pSignature == NULL)
        rv = CKR_ARGUMENTS_BAD;
    else if (op->updated)
        rv = CKR_OPERATION_ACTIVE;
    else
        rv = verify_run(s, op, pData, ulDataLen, false, pSignature,
                        ulSignatureLen);
    if (rv != CKR_OPERATION_ACTIVE && rv != CKR_ARGUMENTS_BAD)
        audit_record(s, op->key, "verify", op->mech.mechanism, rv, 0);
    if (rv != CKR_OPERATION_ACTIVE)
        op_end(op);
    END_OP_CALL;
}

CK_RV C_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,
                     CK_ULONG ulPartLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(VerifyUpdate, hSession, OP_VERIFY);
    if (pPart == NULL && ulPartLen > 0)
        rv = CKR_ARGUMENTS_BAD;
    else if (op->md != NULL)
        rv = EVP_DigestUpdate(op->md, pPart, ulPartLen) == 1
                 ? CKR_OK
                 : CKR_GENERAL_ERROR;
    else
        rv = op_append(op, pPart, ulPartLen);
    if (rv == CKR_OK)
        op->updated = true;
    else
        op_end(op);
    END_OP_CALL;
}

CK_RV C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                    CK_ULONG ulSignatureLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(VerifyFinal, hSession, OP_VERIFY);
    if (pSignature == NULL)
        rv = CKR_ARGUMENTS_BAD;
    else
        rv = verify_run(s, op, NULL, 0, true, pSignature, ulSignatureLen);
    if (rv != CKR_ARGUMENTS_BAD)
        audit_record(s, op->key, "verify", op->mech.mechanism, rv, 0);
    op_end(op);
    END_OP_CALL;
}

CK_RV C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism)
{
    struct session *s;
    struct op *op;
    const struct pmech *pm;

    BEGIN_CALL(DigestInit);
    if (pMechanism == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    op = &s->ops[OP_DIGEST];
    pm = token_mech(s->token, pMechanism->mechanism);
    if (op->active) {
        rv = CKR_OPERATION_ACTIVE;
    } else if (pm == NULL || !(pm->info.flags & CKF_DIGEST) ||
               rsa_md_for_mech(pMechanism->mechanism) == NULL) {
        rv = CKR_MECHANISM_INVALID;
    } else {
        op->mech.mechanism = pMechanism->mechanism;
        op->md = EVP_MD_CTX_new();
        if (op->md == NULL ||
            EVP_DigestInit_ex(op->md, rsa_md_for_mech(op->mech.mechanism),
                              NULL) != 1) {
            rv = CKR_HOST_MEMORY;
            op_reset(op);
        } else {
            op->active = true;
        }
    }
    session_put(s);
    END_CALL;
}

/* Digest output: the digest is computed once and kept for a repeat. */
static CK_RV digest_deliver(struct op *op, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
    CK_ULONG size =
        (CK_ULONG)EVP_MD_get_size(rsa_md_for_mech(op->mech.mechanism));
    unsigned int n = 0;

    if (out == NULL) {
        *outlen = size;
        return CKR_OK;
    }
    if (*outlen < size) {
        *outlen = size;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (EVP_DigestFinal_ex(op->md, out, &n) != 1) {
        op_end(op);
        return CKR_GENERAL_ERROR;
    }
    *outlen = n;
    op_end(op);
    return CKR_OK;
}

CK_RV C_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData,
               CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
               CK_ULONG_PTR pulDigestLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(Digest, hSession, OP_DIGEST);
    if ((pData == NULL && ulDataLen > 0) || pulDigestLen == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        op_end(op);
    } else if (op->updated) {
        rv = CKR_OPERATION_ACTIVE;
    } else if (pDigest == NULL ||
               *pulDigestLen <
                   (CK_ULONG)EVP_MD_get_size(EVP_MD_CTX_get0_md(op->md))) {
        rv = digest_deliver(op, pDigest, pulDigestLen);
    } else if (EVP_DigestUpdate(op->md, pData, ulDataLen) != 1) {
        rv = CKR_GENERAL_ERROR;
        op_end(op);
    } else {
        rv = digest_deliver(op, pDigest, pulDigestLen);
    }
    END_OP_CALL;
}

CK_RV C_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,
                     CK_ULONG ulPartLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(DigestUpdate, hSession, OP_DIGEST);
    if (pPart == NULL && ulPartLen > 0)
        rv = CKR_ARGUMENTS_BAD;
    else if (EVP_DigestUpdate(op->md, pPart, ulPartLen) != 1)
        rv = CKR_GENERAL_ERROR;
    if (rv == CKR_OK)
        op->updated = true;
    else
        op_end(op);
    END_OP_CALL;
}

CK_RV C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
    struct session *s;
    struct op *op;
    struct object *key;

    BEGIN_OP_CALL(DigestKey, hSession, OP_DIGEST);
    if (object_get(s, hKey, &key) != CKR_OK) {
        rv = CKR_KEY_HANDLE_INVALID;
    } else {
        if (key->secret == NULL || object_get_bool(key, CKA_SENSITIVE, true) ||
            !object_get_bool(key, CKA_EXTRACTABLE, false))
            rv = CKR_KEY_INDIGESTIBLE;
        else if (EVP_DigestUpdate(op->md, key->secret, key->secret_len) != 1)
            rv = CKR_GENERAL_ERROR;
        object_unref(key);
    }
    if (rv == CKR_OK)
        op->updated = true;
    else
        op_end(op);
    END_OP_CALL;
}

CK_RV C_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest,
                    CK_ULONG_PTR pulDigestLen)
{
    struct session *s;
    struct op *op;

    BEGIN_OP_CALL(DigestFinal, hSession, OP_DIGEST);
    if (pulDigestLen == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        op_end(op);
    } else {
        rv = digest_deliver(op, pDigest, pulDigestLen);
    }
    END_OP_CALL;
}

CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData,
                       CK_ULONG ulRandomLen)
{
    struct session *s;

    BEGIN_CALL(GenerateRandom);
    if (pRandomData == NULL && ulRandomLen > 0) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    rv = provider_generate_random(s, pRandomData, ulRandomLen);
    session_put(s);
    END_CALL;
}

CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed,
                   CK_ULONG ulSeedLen)
{
    struct session *s;

    BEGIN_CALL(SeedRandom);
    if (pSeed == NULL && ulSeedLen > 0) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv == CKR_OK) {
        rv = CKR_RANDOM_SEED_NOT_SUPPORTED;
        session_put(s);
    }
    END_CALL;
}

/* Functions this module does not offer; they still check their state. */
CK_RV C_SignRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                        CK_OBJECT_HANDLE hKey)
{
    SESSION_ONLY_CALL(SignRecoverInit, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_SignRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData,
                    CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                    CK_ULONG_PTR pulSignatureLen)
{
    SESSION_ONLY_CALL(SignRecover, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE hSession,
                          CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    SESSION_ONLY_CALL(VerifyRecoverInit, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_VerifyRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                      CK_ULONG ulSignatureLen, CK_BYTE_PTR pData,
                      CK_ULONG_PTR pulDataLen)
{
    SESSION_ONLY_CALL(VerifyRecover, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,
                            CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
                            CK_ULONG_PTR pulEncryptedPartLen)
{
    SESSION_ONLY_CALL(DigestEncryptUpdate, hSession,
                      CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE hSession,
                            CK_BYTE_PTR pEncryptedPart,
                            CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
                            CK_ULONG_PTR pulPartLen)
{
    SESSION_ONLY_CALL(DecryptDigestUpdate, hSession,
                      CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart,
                          CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
                          CK_ULONG_PTR pulEncryptedPartLen)
{
    SESSION_ONLY_CALL(SignEncryptUpdate, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE hSession,
                            CK_BYTE_PTR pEncryptedPart,
                            CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
                            CK_ULONG_PTR pulPartLen)
{
    SESSION_ONLY_CALL(DecryptVerifyUpdate, hSession,
                      CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                  CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate,
                  CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
    SESSION_ONLY_CALL(DeriveKey, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}
