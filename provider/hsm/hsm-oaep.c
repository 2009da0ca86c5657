/*
 * The hsm back end: OAEP beyond the lower token. Where the lower token
 * refuses an OAEP parameter set (SoftHSM 2.6.1 takes only SHA-1 without a
 * label) but decrypts with CKM_RSA_X_509, the raw RSA result is decoded
 * here with OpenSSL's constant-time OAEP check.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* RSA_padding_check_PKCS1_OAEP_mgf1 */
#include "config.h"

#include <string.h>

#include <openssl/rsa.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "debug.h"
#include "hsm.h"
#include "provider-util.h"
#include "secure.h"

static int oaep_slot(const CK_RSA_PKCS_OAEP_PARAMS *p)
{
    static const CK_ULONG hashes[] = {CKM_SHA_1, CKM_SHA224, CKM_SHA256,
                                      CKM_SHA384, CKM_SHA512};
    static const CK_ULONG mgfs[] = {CKG_MGF1_SHA1, CKG_MGF1_SHA224,
                                    CKG_MGF1_SHA256, CKG_MGF1_SHA384,
                                    CKG_MGF1_SHA512};
    int h = -1, m = -1, i;

    for (i = 0; i < 5; i++) {
        if (hashes[i] == p->hashAlg)
            h = i;
        if (mgfs[i] == p->mgf)
            m = i;
    }
    if (h < 0 || m < 0)
        return -1;
    return (h * 8 + m) * 2 + (p->ulSourceDataLen > 0);
}

bool hsm_oaep_is_local(struct hsm_token *ht, const CK_MECHANISM *m)
{
    int slot;
    bool local;

    if (m->mechanism != CKM_RSA_PKCS_OAEP || m->pParameter == NULL)
        return false;
    slot = oaep_slot(m->pParameter);
    if (slot < 0)
        return false;
    pthread_mutex_lock(&ht->lock);
    local = ht->oaep_local[slot];
    pthread_mutex_unlock(&ht->lock);
    return local;
}

static void oaep_mark_local(struct hsm_token *ht, const CK_MECHANISM *m)
{
    int slot = oaep_slot(m->pParameter);

    if (slot < 0)
        return;
    pthread_mutex_lock(&ht->lock);
    ht->oaep_local[slot] = true;
    pthread_mutex_unlock(&ht->lock);
    cmk_debug("OAEP parameter set %d is done in the module over raw RSA", slot);
}

/* Whether the lower token refused (rv) an OAEP parameter set that raw RSA
 * can do here; it then goes through raw RSA from now on. */
bool hsm_oaep_refused(struct hsm_token *ht, const CK_MECHANISM *m, CK_RV rv)
{
    if ((rv != CKR_ARGUMENTS_BAD && rv != CKR_MECHANISM_PARAM_INVALID &&
         rv != CKR_MECHANISM_INVALID) ||
        m->mechanism != CKM_RSA_PKCS_OAEP || !ht->has_raw)
        return false;
    oaep_mark_local(ht, m);
    return true;
}

/* Raw RSA through the lower key, then OAEP decoding in constant time. */
CK_RV hsm_oaep_decrypt_raw(struct pcall *c, CK_OBJECT_HANDLE priv,
                           const CK_MECHANISM *m, const CK_BYTE *in,
                           CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;
    CK_MECHANISM raw = {CKM_RSA_X_509, NULL, 0};
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_ULONG blen = inlen, mlen;
    CK_BYTE *block = NULL, *em = NULL;
    CK_RV rv;
    int r;

    if (!ht->has_raw)
        return CKR_MECHANISM_PARAM_INVALID;
    {
        /* The ciphertext must be exactly as long as the modulus. */
        CK_ATTRIBUTE a = {CKA_MODULUS, NULL, 0};
        if (LOWER(ht, C_GetAttributeValue, s, priv, &a, 1) != CKR_OK)
            return hsm_mapped(c, CKR_KEY_HANDLE_INVALID);
        if (a.ulValueLen != inlen)
            return CKR_ENCRYPTED_DATA_LEN_RANGE;
    }
    /* Room for any modulus: a short input must not make the lower
     * operation stop at CKR_BUFFER_TOO_SMALL and stay active. */
    blen = inlen + 1024;
    block = secure_alloc(blen);
    em = secure_alloc(inlen + 1);
    if (block == NULL || em == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    rv = LOWER(ht, C_DecryptInit, s, &raw, priv);
    if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED) {
        /* Raw RSA needs CKA_DECRYPT on the lower key. */
        rv = CKR_MECHANISM_PARAM_INVALID;
        goto out;
    }
    if (rv != CKR_OK) {
        rv = hsm_mapped(c, rv);
        goto out;
    }
    rv = LOWER(ht, C_Decrypt, s, (CK_BYTE *)in, inlen, block, &blen);
    if (rv != CKR_OK) {
        /* Raw RSA refuses a ciphertext not below this key's modulus (a
         * blob made for another key); SoftHSM says so with a general
         * error. The ciphertext is the caller's input. */
        c->device_error = rv;
        rv =
            hsm_is_data_error(rv) ? CKR_ENCRYPTED_DATA_INVALID : hsm_map_rv(rv);
        goto out;
    }
    if (blen != inlen) {
        /* Raw RSA gives exactly the modulus size: the input was not. */
        rv = CKR_ENCRYPTED_DATA_LEN_RANGE;
        goto out;
    }
    /* The encoded message is exactly modulus-sized, leading zeros kept. */
    mlen = inlen;
    memcpy(em + (mlen - blen), block, blen);
    r = RSA_padding_check_PKCS1_OAEP_mgf1(
        out, (int)*outlen, em, (int)mlen, (int)mlen, p->pSourceData,
        (int)p->ulSourceDataLen, rsa_md_for_mech(p->hashAlg),
        rsa_md_for_mgf(p->mgf));
    rv = (CK_RV)ct_select(ct_eq((unsigned long)(r < 0), 0), CKR_OK,
                          CKR_ENCRYPTED_DATA_INVALID);
    *outlen = (CK_ULONG)ct_select(ct_eq(rv, CKR_OK), (unsigned long)r, 0);
out:
    secure_free(block);
    secure_free(em);
    return rv;
}
