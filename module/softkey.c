#include "config.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "softkey.h"

/*
 * The ciphers, fetched once while the module is initialised (OpenSSL 3: a
 * legacy EVP_aes_*() given to EVP_CipherInit_ex is fetched again from the
 * provider at each call, by name under a lock, which costs as much as
 * sealing 4 KiB; docs/performance.md) and released by C_Finalize, so that
 * an application that unloads the module leaks none. A cipher that cannot
 * be fetched falls back to the legacy one.
 */
static const char *const cipher_names[4][3] = {
    {"AES-128-GCM", "AES-192-GCM", "AES-256-GCM"},
    {"AES-128-CBC", "AES-192-CBC", "AES-256-CBC"},
    {"AES-128-WRAP", "AES-192-WRAP", "AES-256-WRAP"},
    {"AES-128-WRAP-PAD", "AES-192-WRAP-PAD", "AES-256-WRAP-PAD"},
};
static EVP_CIPHER *fetched[4][3];

static const EVP_CIPHER *fetch_cipher(int row, int i)
{
    EVP_CIPHER *c = __atomic_load_n(&fetched[row][i], __ATOMIC_ACQUIRE);
    EVP_CIPHER *expected = NULL;

    if (c != NULL)
        return c;
    c = EVP_CIPHER_fetch(NULL, cipher_names[row][i], NULL);
    if (c == NULL)
        return NULL;
    /* Another thread may have fetched it meanwhile: keep the first. */
    if (!__atomic_compare_exchange_n(&fetched[row][i], &expected, c, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        EVP_CIPHER_free(c);
        c = expected;
    }
    return c;
}

void softkey_release(void)
{
    size_t i, j;

    for (i = 0; i < 4; i++)
        for (j = 0; j < 3; j++)
            EVP_CIPHER_free(
                __atomic_exchange_n(&fetched[i][j], NULL, __ATOMIC_ACQ_REL));
}

static const EVP_CIPHER *cipher_for(CK_MECHANISM_TYPE m, CK_ULONG key_len)
{
    int i = key_len == 16 ? 0 : key_len == 24 ? 1 : key_len == 32 ? 2 : -1;
    const EVP_CIPHER *c;
    int row;

    if (i < 0)
        return NULL;
    switch (m) {
    case CKM_AES_GCM:
        row = 0;
        break;
    case CKM_AES_CBC_PAD:
        row = 1;
        break;
    case CKM_AES_KEY_WRAP:
        row = 2;
        break;
    case CKM_AES_KEY_WRAP_PAD:
        row = 3;
        break;
    default:
        return NULL;
    }
    if ((c = fetch_cipher(row, i)) != NULL)
        return c;
    switch (m) {
    case CKM_AES_GCM:
        return (const EVP_CIPHER *[]){EVP_aes_128_gcm(), EVP_aes_192_gcm(),
                                      EVP_aes_256_gcm()}[i];
    case CKM_AES_CBC_PAD:
        return (const EVP_CIPHER *[]){EVP_aes_128_cbc(), EVP_aes_192_cbc(),
                                      EVP_aes_256_cbc()}[i];
    case CKM_AES_KEY_WRAP:
        return (const EVP_CIPHER *[]){EVP_aes_128_wrap(), EVP_aes_192_wrap(),
                                      EVP_aes_256_wrap()}[i];
    default:
        return (const EVP_CIPHER *[]){EVP_aes_128_wrap_pad(),
                                      EVP_aes_192_wrap_pad(),
                                      EVP_aes_256_wrap_pad()}[i];
    }
}

CK_RV softkey_check_mech(const CK_MECHANISM *m, CK_ULONG key_len)
{
    const CK_GCM_PARAMS *gcm;

    if (cipher_for(m->mechanism, key_len) == NULL)
        return cipher_for(m->mechanism, 32) ? CKR_KEY_SIZE_RANGE
                                            : CKR_MECHANISM_INVALID;
    switch (m->mechanism) {
    case CKM_AES_GCM:
        gcm = m->pParameter;
        if (gcm == NULL || m->ulParameterLen != sizeof(*gcm) ||
            gcm->pIv == NULL || gcm->ulIvLen == 0 || gcm->ulIvLen > 256 ||
            (gcm->pAAD == NULL && gcm->ulAADLen != 0) || gcm->ulTagBits < 96 ||
            gcm->ulTagBits > 128 || gcm->ulTagBits % 8 != 0)
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    case CKM_AES_CBC_PAD:
        if (m->pParameter == NULL || m->ulParameterLen != 16)
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    default:
        /* Key wrap: only the default initial values. */
        if (m->pParameter != NULL || m->ulParameterLen != 0)
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    }
}

CK_ULONG softkey_out_bound(const CK_MECHANISM *m, bool encrypt, CK_ULONG inlen)
{
    const CK_GCM_PARAMS *gcm = m->pParameter;

    switch (m->mechanism) {
    case CKM_AES_GCM:
        return encrypt ? inlen + gcm->ulTagBits / 8 : inlen;
    case CKM_AES_CBC_PAD:
        return encrypt ? (inlen / 16 + 1) * 16 : inlen;
    case CKM_AES_KEY_WRAP:
    case CKM_AES_KEY_WRAP_PAD:
        return encrypt ? (inlen + 7) / 8 * 8 + 8 : inlen;
    default:
        return inlen + 32;
    }
}

CK_RV softkey_crypt(const CK_MECHANISM *m, bool encrypt, const CK_BYTE *key,
                    CK_ULONG key_len, const CK_BYTE *in, CK_ULONG inlen,
                    CK_BYTE *out, CK_ULONG *outlen)
{
    const EVP_CIPHER *cipher = cipher_for(m->mechanism, key_len);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const CK_GCM_PARAMS *gcm = m->pParameter;
    const unsigned char *iv = NULL;
    CK_ULONG tag = 0, body = inlen;
    int n = 0, fin = 0;
    CK_RV rv = CKR_OK;

    if (cipher == NULL || ctx == NULL) {
        rv = cipher == NULL ? CKR_MECHANISM_INVALID : CKR_HOST_MEMORY;
        goto out;
    }
    if (inlen > 0x7fffffffUL) {
        rv = CKR_DATA_LEN_RANGE;
        goto out;
    }
    switch (m->mechanism) {
    case CKM_AES_GCM:
        tag = gcm->ulTagBits / 8;
        iv = gcm->pIv;
        if (!encrypt) {
            if (inlen < tag) {
                rv = CKR_ENCRYPTED_DATA_LEN_RANGE;
                goto out;
            }
            body = inlen - tag;
        }
        break;
    case CKM_AES_CBC_PAD:
        iv = m->pParameter;
        if (!encrypt && (inlen == 0 || inlen % 16 != 0)) {
            rv = CKR_ENCRYPTED_DATA_LEN_RANGE;
            goto out;
        }
        break;
    case CKM_AES_KEY_WRAP:
        EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
        if ((encrypt && (inlen < 16 || inlen % 8 != 0)) ||
            (!encrypt && (inlen < 24 || inlen % 8 != 0))) {
            rv = encrypt ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
            goto out;
        }
        break;
    case CKM_AES_KEY_WRAP_PAD:
        EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
        if ((encrypt && inlen == 0) ||
            (!encrypt && (inlen < 16 || inlen % 8 != 0))) {
            rv = encrypt ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
            goto out;
        }
        break;
    default:
        break;
    }

    if (m->mechanism != CKM_AES_GCM || gcm->ulIvLen == 12) {
        /* The cipher's own IV length (GCM: 96 bits, SP 800-38D 8.2): one
         * initialisation with the key and the IV. */
        if (EVP_CipherInit_ex2(ctx, cipher, key, iv, encrypt, NULL) != 1) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
    } else if (EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, encrypt) != 1 ||
               EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN,
                                   (int)gcm->ulIvLen, NULL) != 1 ||
               EVP_CipherInit_ex(ctx, NULL, NULL, key, iv, encrypt) != 1) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    if (m->mechanism == CKM_AES_GCM) {
        if (gcm->ulAADLen > 0 && EVP_CipherUpdate(ctx, NULL, &n, gcm->pAAD,
                                                  (int)gcm->ulAADLen) != 1) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
        if (!encrypt && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, (int)tag,
                                            (void *)(in + body)) != 1) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
    }
    n = 0;
    if (body > 0 && EVP_CipherUpdate(ctx, out, &n, in, (int)body) != 1) {
        rv = encrypt ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_INVALID;
        goto out;
    }
    if (EVP_CipherFinal_ex(ctx, out + n, &fin) != 1) {
        rv = encrypt ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_INVALID;
        goto out;
    }
    *outlen = (CK_ULONG)(n + fin);
    if (m->mechanism == CKM_AES_GCM && encrypt) {
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, (int)tag,
                                out + *outlen) != 1) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
        *outlen += tag;
    }
out:
    if (rv != CKR_OK)
        OPENSSL_cleanse(out, softkey_out_bound(m, encrypt, inlen));
    EVP_CIPHER_CTX_free(ctx);
    return rv;
}

bool softkey_is_hmac(CK_MECHANISM_TYPE m)
{
    return m == CKM_SHA256_HMAC || m == CKM_SHA256_HMAC_GENERAL;
}

/*
 * PKCS#11 3.0 Current Mechanisms 2.21 (2.40: 2.20): CKM_SHA256_HMAC has
 * no parameter and gives 32 bytes; CKM_SHA256_HMAC_GENERAL takes a
 * CK_MAC_GENERAL_PARAMS, the output length, 1 to 32 bytes.
 */
CK_RV softkey_hmac_check(const CK_MECHANISM *m, CK_ULONG *maclen)
{
    CK_ULONG len;

    if (m->mechanism == CKM_SHA256_HMAC) {
        if (m->pParameter != NULL || m->ulParameterLen != 0)
            return CKR_MECHANISM_PARAM_INVALID;
        *maclen = 32;
        return CKR_OK;
    }
    if (m->mechanism != CKM_SHA256_HMAC_GENERAL)
        return CKR_MECHANISM_INVALID;
    if (m->pParameter == NULL || m->ulParameterLen != sizeof(CK_ULONG))
        return CKR_MECHANISM_PARAM_INVALID;
    len = *(const CK_ULONG *)m->pParameter; /* CK_MAC_GENERAL_PARAMS */
    if (len == 0 || len > 32)
        return CKR_MECHANISM_PARAM_INVALID;
    *maclen = len;
    return CKR_OK;
}

CK_RV softkey_hmac(const CK_MECHANISM *m, const CK_BYTE *key, CK_ULONG key_len,
                   const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                   CK_ULONG *outlen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    CK_ULONG want = 0;
    CK_RV rv;

    rv = softkey_hmac_check(m, &want);
    if (rv != CKR_OK)
        return rv;
    if (key_len > 0x7fffffffUL)
        return CKR_KEY_SIZE_RANGE;
    if (HMAC(EVP_sha256(), key, (int)key_len,
             in != NULL ? in : (const CK_BYTE *)"", (size_t)inlen, mac,
             &n) == NULL ||
        n != 32) {
        OPENSSL_cleanse(mac, sizeof(mac));
        return CKR_GENERAL_ERROR;
    }
    memcpy(out, mac, want);
    OPENSSL_cleanse(mac, sizeof(mac));
    *outlen = want;
    return CKR_OK;
}
