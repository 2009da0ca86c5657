/*
 * PKCS#1 v1.5 decryption without a padding oracle ("rsa-pkcs1-decrypt",
 * docs/cmkp11.conf.5, docs/architecture.md).
 *
 * implicit-rejection: the back end does raw RSA (CKM_RSA_X_509) and the
 * padding is removed here, in constant time, as OpenSSL 3.2 does
 * (draft-irtf-cfrg-rsa-guidance, "implicit rejection"; OpenSSL's
 * crypto/rsa/rsa_pk1.c): a ciphertext whose padding is invalid decrypts
 * to a pseudo-random message derived from a per-key secret and the
 * ciphertext, so the caller sees CKR_OK either way and the same answer
 * for the same ciphertext.
 *
 * The draft keys its derivation with a hash of the private exponent. The
 * module has no private key material, so the per-key secret is
 *
 *   x = 00 || (80|t1) || t2...   t = SHA-256 counter-mode expansion of
 *                                 "cmkp11 implicit rejection x" || n || i
 *   y = x^d mod n                  one raw RSA operation in the back end
 *   secret = SHA-256("cmkp11 implicit rejection secret" || y)
 *
 * y is an RSA signature on a full-domain hash of a fixed label: nobody
 * without the private key can compute it (RSA-FDH), and nothing this
 * module offers returns it: raw RSA is not offered, CKM_RSA_PKCS signing
 * only signs type 1 blocks (00 01 FF...) and x starts 00 8x, PSS is
 * randomised, and a decryption of x reveals part of y only if y is a well
 * formed encryption block, which the derivation skips (next i). The secret
 * is computed once per key version and process and kept in the secure
 * pool. Whoever holds the lower token's PIN can compute it, but can also
 * decrypt every ciphertext.
 *
 * Nothing on the decryption path branches on the padding: the raw
 * operation succeeds for any ciphertext below the modulus, the decoding is
 * branch-free, and the result (CKR_OK), the trace and the audit record are
 * the same for valid and invalid padding.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "crypto.h"
#include "pcall.h"
#include "pkcs1.h"
#include "rsa.h"
#include "secure.h"

#define SECRET_LEN  32
#define LEN_TRIES   128 /* candidate lengths, as in the draft */
#define MAX_DERIVES 16  /* x values tried before giving up */

CK_RV pkcs1_setup(struct token *t, const struct config_token *ct)
{
    const char *v = config_token_get(ct, "rsa-pkcs1-decrypt");
    bool raw = (t->pflags & PROVIDER_RAW_RSA) != 0;
    int mode = CONFIG_PKCS1_UNSET;

    if (v != NULL) {
        mode = config_pkcs1_parse(v);
        if (mode == CONFIG_PKCS1_UNSET) {
            cmk_error("%s:%d: rsa-pkcs1-decrypt: must be implicit-rejection, "
                      "refuse or allow",
                      ct->path, config_token_line(ct, "rsa-pkcs1-decrypt"));
            return CKR_GENERAL_ERROR;
        }
        if (mode == CONFIG_PKCS1_IMPLICIT && !raw) {
            cmk_error("%s:%d: rsa-pkcs1-decrypt: this token cannot do "
                      "implicit rejection (its back end removes the padding "
                      "itself, or has no raw RSA); use refuse or allow",
                      ct->path, config_token_line(ct, "rsa-pkcs1-decrypt"));
            return CKR_GENERAL_ERROR;
        }
    } else if (ct->global != NULL &&
               ct->global->rsa_pkcs1_decrypt != CONFIG_PKCS1_UNSET) {
        mode = ct->global->rsa_pkcs1_decrypt;
    }
    /* Where implicit rejection is impossible, refusing is the safe
     * default: the back end's own answer would be an oracle. */
    if (mode == CONFIG_PKCS1_UNSET || mode == CONFIG_PKCS1_IMPLICIT)
        mode = raw ? CONFIG_PKCS1_IMPLICIT : CONFIG_PKCS1_REFUSE;
    t->pkcs1 = mode;
    return CKR_OK;
}

bool pkcs1_implicit(const struct token *t, const CK_MECHANISM *m,
                    const struct object *key)
{
    return m->mechanism == CKM_RSA_PKCS && key->secret == NULL &&
           t->pkcs1 == CONFIG_PKCS1_IMPLICIT;
}

/* out = SHA-256 counter-mode expansion of label || data || i. */
static int expand(const char *label, const CK_BYTE *data, CK_ULONG dlen,
                  unsigned i, CK_BYTE *out, CK_ULONG outlen)
{
    unsigned char md[32], ctr[6];
    CK_ULONG pos;
    unsigned j = 0;
    int ok = 1;

    for (pos = 0; ok && pos < outlen; pos += 32, j++) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        ctr[0] = (unsigned char)(i >> 8), ctr[1] = (unsigned char)i;
        ctr[2] = (unsigned char)(j >> 24), ctr[3] = (unsigned char)(j >> 16);
        ctr[4] = (unsigned char)(j >> 8), ctr[5] = (unsigned char)j;
        ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, label, strlen(label)) == 1 &&
             EVP_DigestUpdate(ctx, data, dlen) == 1 &&
             EVP_DigestUpdate(ctx, ctr, sizeof(ctr)) == 1 &&
             EVP_DigestFinal_ex(ctx, md, NULL) == 1;
        EVP_MD_CTX_free(ctx);
        if (ok)
            memcpy(out + pos, md, outlen - pos < 32 ? outlen - pos : 32);
    }
    secure_zero(md, sizeof(md));
    return ok;
}

/* One raw RSA private operation through the back end: exactly k bytes. */
static CK_RV raw_rsa(struct session *s, struct object *key, const CK_BYTE *in,
                     CK_ULONG k, CK_BYTE *out)
{
    CK_MECHANISM raw = {CKM_RSA_X_509, NULL, 0};
    CK_BYTE *tmp = secure_alloc(k + 1024);
    CK_ULONG len = k + 1024;
    CK_RV rv;

    if (tmp == NULL)
        return CKR_HOST_MEMORY;
    rv = provider_crypt(s, POP_DECRYPT, key, &raw, in, k, tmp, &len);
    if (rv == CKR_OK && (len > k || len == 0))
        rv = CKR_DEVICE_ERROR;
    if (rv == CKR_OK) {
        /* Leading zeros kept: the block is as long as the modulus. */
        memset(out, 0, k - len);
        memcpy(out + (k - len), tmp, len);
    }
    secure_free(tmp);
    return rv;
}

CK_RV pkcs1_prepare(struct session *s, struct object *key)
{
    static const char xlabel[] = "cmkp11 implicit rejection x";
    static const char slabel[] = "cmkp11 implicit rejection secret";
    unsigned char *secret, *expected = NULL;
    CK_ULONG k = rsa_object_bytes(key), nlen = 0;
    CK_BYTE *n = NULL, *x = NULL, *y = NULL;
    CK_RV rv = CKR_GENERAL_ERROR;
    unsigned i;

    if (__atomic_load_n(&key->pkcs1_secret, __ATOMIC_ACQUIRE) != NULL)
        return CKR_OK;
    n = object_get_value(key, CKA_MODULUS, &nlen);
    x = secure_alloc(k + 1);
    y = secure_alloc(k + 1);
    secret = secure_alloc(SECRET_LEN);
    if (n == NULL || nlen != k || k < 64 || x == NULL || y == NULL ||
        secret == NULL) {
        rv = n == NULL || nlen != k ? CKR_KEY_TYPE_INCONSISTENT
                                    : CKR_HOST_MEMORY;
        goto out;
    }
    for (i = 0; i < MAX_DERIVES; i++) {
        if (!expand(xlabel, n, nlen, i, x, k)) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
        x[0] = 0x00;  /* below the modulus, whose first byte is not 0 */
        x[1] |= 0x80; /* never a type 1 (signature) block */
        rv = raw_rsa(s, key, x, k, y);
        if (rv != CKR_OK)
            goto out;
        /* A y that looks like an encryption block could be partly
         * revealed by decrypting x: take the next x. */
        if (!(y[0] == 0x00 && y[1] == 0x02))
            break;
    }
    if (i == MAX_DERIVES || !expand(slabel, y, k, 0, secret, SECRET_LEN)) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    if (__atomic_compare_exchange_n(&key->pkcs1_secret, &expected, secret,
                                    false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        secret = NULL; /* the object owns it */
    rv = CKR_OK;
out:
    if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
        cmk_error("token %s: implicit rejection needs raw RSA with this key "
                  "(the hsm back end: CKA_DECRYPT on the lower private key)",
                  s->token->name);
    secure_free(secret);
    secure_free(x);
    secure_free(y);
    free(n);
    return rv;
}

/*
 * The draft's PRF: the HMAC-SHA256 under kdk of
 * i (2 bytes) || label || bits (2 bytes), for i = 0, 1, ... concatenated.
 */
static int prf(const unsigned char *kdk, const char *label, CK_BYTE *out,
               CK_ULONG len)
{
    unsigned char block[32], msg[64];
    size_t llen = strlen(label);
    unsigned bits = (unsigned)(len * 8), i = 0;
    CK_ULONG pos;
    int ok = 1;

    if (llen > sizeof(msg) - 4)
        return 0;
    memcpy(msg + 2, label, llen);
    msg[2 + llen] = (unsigned char)(bits >> 8);
    msg[3 + llen] = (unsigned char)bits;
    for (pos = 0; ok && pos < len; pos += 32, i++) {
        unsigned int mdlen = 0;
        msg[0] = (unsigned char)(i >> 8), msg[1] = (unsigned char)i;
        ok = HMAC(EVP_sha256(), kdk, 32, msg, llen + 4, block, &mdlen) != NULL;
        if (ok)
            memcpy(out + pos, block, len - pos < 32 ? len - pos : 32);
    }
    secure_zero(block, sizeof(block));
    return ok;
}

/* Constant-time helpers on small unsigned values (below 2^31). */
static unsigned ct_lt(unsigned long a, unsigned long b)
{
    /* a - b wraps (top bit set) exactly when a < b, for a, b < 2^63. */
    return (unsigned)(0 - ((a - b) >> (sizeof(unsigned long) * 8 - 1)));
}

CK_RV pkcs1_decode(const unsigned char *secret, const CK_BYTE *c,
                   const CK_BYTE *em, CK_ULONG k, CK_ULONG want, CK_BYTE *out,
                   CK_ULONG *outlen)
{
    unsigned char kdk[32], lens[LEN_TRIES * 2];
    unsigned char *synth = secure_alloc(k);
    unsigned int kdklen = 0;
    unsigned long max_sep = k - 10, mask, synth_len = 0, zero_at = 0;
    unsigned long msg_at, synth_at, len, i, j;
    unsigned good, found = 0;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (synth == NULL)
        return CKR_HOST_MEMORY;
    /* KDK = HMAC-SHA256(secret, ciphertext). */
    if (HMAC(EVP_sha256(), secret, SECRET_LEN, c, k, kdk, &kdklen) == NULL ||
        !prf(kdk, "message", synth, k) ||
        !prf(kdk, "length", lens, sizeof(lens)))
        goto out;
    if (want != 0) {
        /* A known length (an unwrapped key's CKA_VALUE_LEN): the
         * replacement has it too, as TLS does with its premaster secret
         * (RFC 5246, 7.4.7.1). */
        synth_len = want;
    } else {
        /* The draft: the last of 128 candidates, masked to the next power
         * of two, that is below k - 10 (a message has at most k - 11). */
        mask = max_sep;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        for (i = 0; i < LEN_TRIES; i++) {
            unsigned long cand =
                (((unsigned long)lens[2 * i] << 8) | lens[2 * i + 1]) & mask;
            synth_len = ct_select(ct_lt(cand, max_sep), cand, synth_len);
        }
    }
    /* 00 02, then at least 8 non-zero bytes, then 00, then the message. */
    good = ct_is_zero(em[0]) & ct_eq(em[1], 2);
    for (i = 2; i < k; i++) {
        unsigned z = ct_is_zero(em[i]);
        zero_at = ct_select(~found & z, i, zero_at);
        found |= z;
    }
    good &= found & ~ct_lt(zero_at, 10);
    msg_at = zero_at + 1;
    if (want != 0)
        good &= ct_eq(k - msg_at, want);
    synth_at = k - synth_len;
    msg_at = ct_select(good, msg_at, synth_at);
    len = k - msg_at;
    /* Reads both buffers at every position: the choice is not in the
     * access pattern. */
    for (i = msg_at, j = 0; i < k; i++, j++)
        out[j] = (CK_BYTE)ct_select(good, em[i], synth[i]);
    *outlen = len;
    rv = CKR_OK;
out:
    secure_zero(kdk, sizeof(kdk));
    secure_zero(lens, sizeof(lens));
    secure_free(synth);
    return rv;
}

CK_RV pkcs1_decrypt(struct session *s, struct object *key, const CK_BYTE *in,
                    CK_ULONG inlen, CK_ULONG want, CK_BYTE *out,
                    CK_ULONG *outlen)
{
    CK_ULONG k = rsa_object_bytes(key), nlen = 0;
    CK_BYTE *n = NULL, *em = NULL;
    const unsigned char *secret;
    CK_RV rv;

    /* What is public: the length, and the ciphertext below the modulus. */
    if (inlen != k)
        return CKR_ENCRYPTED_DATA_LEN_RANGE;
    if (want > k - 11)
        return CKR_ENCRYPTED_DATA_INVALID;
    rv = pkcs1_prepare(s, key);
    if (rv != CKR_OK)
        return rv;
    secret = __atomic_load_n(&key->pkcs1_secret, __ATOMIC_ACQUIRE);
    n = object_get_value(key, CKA_MODULUS, &nlen);
    if (n == NULL || nlen != k) {
        free(n);
        return CKR_GENERAL_ERROR;
    }
    if (memcmp(in, n, k) >= 0) {
        free(n);
        return CKR_ENCRYPTED_DATA_INVALID;
    }
    free(n);
    em = secure_alloc(k);
    if (em == NULL)
        return CKR_HOST_MEMORY;
    rv = raw_rsa(s, key, in, k, em);
    if (rv == CKR_OK && *outlen < k)
        rv = CKR_BUFFER_TOO_SMALL;
    if (rv == CKR_OK)
        rv = pkcs1_decode(secret, in, em, k, want, out, outlen);
    secure_free(em);
    return rv;
}
