/*
 * Encrypt, decrypt, sign, verify, digest and random: each operation's
 * state machine, the output-length convention, RSA results checked with
 * OpenSSL, AES round trips checked with OpenSSL, and the mock's fault
 * injection reaching CKR codes and ulDeviceError.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"

#define CONF                                                                   \
    "[cmkp11]\nlog-level = error\n\n"                                          \
    "[token mock]\nbackend = mock\n\n"                                         \
    "[token failing]\nbackend = mock\nfail-op = decrypt\nfail-rv = 0x30\n"     \
    "fail-device-error = 503\n"

static CK_SESSION_HANDLE sess;
static CK_OBJECT_HANDLE priv, pub, so_priv, so_pub, dis_priv;
static EVP_PKEY *pk;

static const CK_BYTE msg[] = "the quick brown fox jumps over the lazy dog";

static CK_RSA_PKCS_OAEP_PARAMS oaep_sha1 = {CKM_SHA_1, CKG_MGF1_SHA1,
                                            CKZ_DATA_SPECIFIED, NULL, 0};
static CK_RSA_PKCS_OAEP_PARAMS oaep_sha256 = {CKM_SHA256, CKG_MGF1_SHA256,
                                              CKZ_DATA_SPECIFIED, NULL, 0};
static CK_RSA_PKCS_OAEP_PARAMS oaep_label = {
    CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, (void *)"my label", 8};

/* OpenSSL RSA encryption with the module's public key. */
static size_t ossl_encrypt(const CK_RSA_PKCS_OAEP_PARAMS *oaep,
                           const CK_BYTE *in, size_t inlen, CK_BYTE *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t olen = 512;
    int ok_ = ctx != NULL && EVP_PKEY_encrypt_init(ctx) > 0;

    if (ok_ && oaep == NULL) {
        ok_ = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0;
    } else if (ok_) {
        const EVP_MD *md =
            oaep->hashAlg == CKM_SHA_1 ? EVP_sha1() : EVP_sha256();
        ok_ = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
              EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) > 0 &&
              EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) > 0;
        if (ok_ && oaep->ulSourceDataLen > 0)
            ok_ = EVP_PKEY_CTX_set0_rsa_oaep_label(
                      ctx,
                      OPENSSL_memdup(oaep->pSourceData, oaep->ulSourceDataLen),
                      (int)oaep->ulSourceDataLen) > 0;
    }
    if (!ok_ || EVP_PKEY_encrypt(ctx, out, &olen, in, inlen) <= 0)
        olen = 0;
    EVP_PKEY_CTX_free(ctx);
    return olen;
}

static bool ossl_verify(const EVP_MD *md, int pad, const CK_BYTE *data,
                        size_t len, const CK_BYTE *sig, size_t siglen)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool good = false;

    if (mctx != NULL && EVP_DigestVerifyInit(mctx, &pctx, md, NULL, pk) == 1 &&
        EVP_PKEY_CTX_set_rsa_padding(pctx, pad) > 0 &&
        (pad != RSA_PKCS1_PSS_PADDING ||
         (EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, EVP_MD_get_size(md)) > 0 &&
          EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) > 0)))
        good = EVP_DigestVerify(mctx, sig, siglen, data, len) == 1;
    EVP_MD_CTX_free(mctx);
    return good;
}

static CK_RV decrypt(CK_MECHANISM *m, CK_OBJECT_HANDLE k, const CK_BYTE *in,
                     CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    CK_RV rv = p11->C_DecryptInit(sess, m, k);

    if (rv != CKR_OK)
        return rv;
    return p11->C_Decrypt(sess, (CK_BYTE *)in, inlen, out, outlen);
}

static CK_RV encrypt(CK_MECHANISM *m, CK_OBJECT_HANDLE k, const CK_BYTE *in,
                     CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    CK_RV rv = p11->C_EncryptInit(sess, m, k);

    if (rv != CKR_OK)
        return rv;
    return p11->C_Encrypt(sess, (CK_BYTE *)in, inlen, out, outlen);
}

static CK_RV sign(CK_MECHANISM *m, CK_OBJECT_HANDLE k, const CK_BYTE *in,
                  CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    CK_RV rv = p11->C_SignInit(sess, m, k);

    if (rv != CKR_OK)
        return rv;
    return p11->C_Sign(sess, (CK_BYTE *)in, inlen, out, outlen);
}

static CK_RV verify(CK_MECHANISM *m, CK_OBJECT_HANDLE k, const CK_BYTE *in,
                    CK_ULONG inlen, const CK_BYTE *sig, CK_ULONG siglen)
{
    CK_RV rv = p11->C_VerifyInit(sess, m, k);

    if (rv != CKR_OK)
        return rv;
    return p11->C_Verify(sess, (CK_BYTE *)in, inlen, (CK_BYTE *)sig, siglen);
}

static void test_init_errors(void)
{
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &oaep_sha256, sizeof(oaep_sha256)};
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_MECHANISM x509 = {CKM_RSA_X_509, NULL, 0};
    CK_MECHANISM des = {CKM_DES3_CBC, NULL, 0};
    CK_RSA_PKCS_OAEP_PARAMS bad = oaep_sha256;
    CK_MECHANISM badm = {CKM_RSA_PKCS_OAEP, &bad, sizeof(bad)};
    CK_OBJECT_HANDLE aes = p11_aes_key(sess, 16, false, true);
    CK_BYTE out[512];
    CK_ULONG len = sizeof(out);

    is_rv(p11->C_DecryptInit(sess, NULL, priv), CKR_ARGUMENTS_BAD,
          "DecryptInit NULL mechanism");
    is_rv(p11->C_DecryptInit(sess, &oaep, 0), CKR_KEY_HANDLE_INVALID,
          "DecryptInit key handle 0");
    is_rv(p11->C_DecryptInit(sess, &oaep, 0x7ffffff0UL), CKR_KEY_HANDLE_INVALID,
          "DecryptInit unknown key handle");
    is_rv(p11->C_DecryptInit(sess, &x509, priv), CKR_MECHANISM_INVALID,
          "DecryptInit CKM_RSA_X_509 (not on this token)");
    is_rv(p11->C_DecryptInit(sess, &des, priv), CKR_MECHANISM_INVALID,
          "DecryptInit CKM_DES3_CBC");
    is_rv(p11->C_DecryptInit(sess, &oaep, so_priv),
          CKR_KEY_FUNCTION_NOT_PERMITTED, "DecryptInit with sign-only");
    is_rv(p11->C_DecryptInit(sess, &oaep, pub), CKR_KEY_FUNCTION_NOT_PERMITTED,
          "DecryptInit with a public key");
    is_rv(p11->C_DecryptInit(sess, &oaep, dis_priv),
          CKR_KEY_FUNCTION_NOT_PERMITTED, "DecryptInit with disabled-key");
    is_rv(p11->C_DecryptInit(sess, &pkcs, aes), CKR_KEY_TYPE_INCONSISTENT,
          "DecryptInit RSA mechanism with an AES key");
    is_rv(p11->C_EncryptInit(sess, &oaep, so_pub),
          CKR_KEY_FUNCTION_NOT_PERMITTED, "EncryptInit with sign-only public");
    is_rv(p11->C_SignInit(sess, &pkcs, pub), CKR_KEY_FUNCTION_NOT_PERMITTED,
          "SignInit with a public key");
    is_rv(p11->C_SignInit(sess, &pkcs, dis_priv),
          CKR_KEY_FUNCTION_NOT_PERMITTED, "SignInit with disabled-key");
    is_rv(p11->C_VerifyInit(sess, &pkcs, priv), CKR_KEY_FUNCTION_NOT_PERMITTED,
          "VerifyInit with a private key");
    {
        CK_BYTE iv[12] = {0};
        CK_GCM_PARAMS gp = {iv, 12, 96, NULL, 0, 128};
        CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
        is_rv(p11->C_DecryptInit(sess, &gcm, priv), CKR_KEY_TYPE_INCONSISTENT,
              "DecryptInit AES-GCM with an RSA key");
    }

    badm.pParameter = NULL;
    is_rv(p11->C_DecryptInit(sess, &badm, priv), CKR_MECHANISM_PARAM_INVALID,
          "OAEP without parameters");
    badm.pParameter = &bad;
    badm.ulParameterLen = 4;
    is_rv(p11->C_DecryptInit(sess, &badm, priv), CKR_MECHANISM_PARAM_INVALID,
          "OAEP parameters of the wrong size");
    badm.ulParameterLen = sizeof(bad);
    bad.hashAlg = CKM_MD5;
    is_rv(p11->C_DecryptInit(sess, &badm, priv), CKR_MECHANISM_PARAM_INVALID,
          "OAEP with MD5");
    bad.hashAlg = CKM_SHA256;
    bad.mgf = 0x99;
    is_rv(p11->C_DecryptInit(sess, &badm, priv), CKR_MECHANISM_PARAM_INVALID,
          "OAEP with an unknown MGF");
    bad.mgf = CKG_MGF1_SHA256;
    bad.source = 7;
    is_rv(p11->C_DecryptInit(sess, &badm, priv), CKR_MECHANISM_PARAM_INVALID,
          "OAEP with an unknown source");
    bad.source = CKZ_DATA_SPECIFIED;
    bad.ulSourceDataLen = 4;
    is_rv(p11->C_DecryptInit(sess, &badm, priv), CKR_MECHANISM_PARAM_INVALID,
          "OAEP label NULL with a length");

    is_rv(p11->C_Decrypt(sess, out, 256, out, &len),
          CKR_OPERATION_NOT_INITIALIZED, "Decrypt without Init");
    is_rv(p11->C_DecryptUpdate(sess, out, 256, out, &len),
          CKR_OPERATION_NOT_INITIALIZED, "DecryptUpdate without Init");
    is_rv(p11->C_DecryptFinal(sess, out, &len), CKR_OPERATION_NOT_INITIALIZED,
          "DecryptFinal without Init");
    is_rv(p11->C_Encrypt(sess, out, 16, out, &len),
          CKR_OPERATION_NOT_INITIALIZED, "Encrypt without Init");
    is_rv(p11->C_Sign(sess, out, 16, out, &len), CKR_OPERATION_NOT_INITIALIZED,
          "Sign without Init");
    is_rv(p11->C_SignUpdate(sess, out, 16), CKR_OPERATION_NOT_INITIALIZED,
          "SignUpdate without Init");
    is_rv(p11->C_SignFinal(sess, out, &len), CKR_OPERATION_NOT_INITIALIZED,
          "SignFinal without Init");
    is_rv(p11->C_Verify(sess, out, 16, out, 256), CKR_OPERATION_NOT_INITIALIZED,
          "Verify without Init");
    is_rv(p11->C_VerifyFinal(sess, out, 256), CKR_OPERATION_NOT_INITIALIZED,
          "VerifyFinal without Init");
    is_rv(p11->C_Digest(sess, out, 16, out, &len),
          CKR_OPERATION_NOT_INITIALIZED, "Digest without Init");
    is_rv(p11->C_DigestFinal(sess, out, &len), CKR_OPERATION_NOT_INITIALIZED,
          "DigestFinal without Init");

    /* Init twice: the first operation stays. */
    {
        CK_BYTE ct[512], pt[512];
        size_t clen = ossl_encrypt(&oaep_sha256, msg, sizeof(msg), ct);
        CK_ULONG plen = sizeof(pt);
        is_rv(p11->C_DecryptInit(sess, &oaep, priv), CKR_OK, "DecryptInit");
        is_rv(p11->C_DecryptInit(sess, &pkcs, priv), CKR_OPERATION_ACTIVE,
              "DecryptInit twice");
        is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen), CKR_OK,
              "the first (OAEP) operation is still the active one");
        ok(plen == sizeof(msg) && memcmp(pt, msg, plen) == 0, "  plaintext");
        is_rv(p11->C_SignInit(sess, &pkcs, priv), CKR_OK, "SignInit");
        is_rv(p11->C_SignInit(sess, &pkcs, priv), CKR_OPERATION_ACTIVE,
              "SignInit twice");
        is_rv(p11->C_DigestInit(sess, &(CK_MECHANISM){CKM_SHA256, NULL, 0}),
              CKR_OK, "a digest beside an active sign");
        plen = sizeof(pt);
        is_rv(p11->C_Digest(sess, (CK_BYTE *)msg, sizeof(msg), pt, &plen),
              CKR_OK, "the digest");
        plen = sizeof(pt);
        is_rv(p11->C_Sign(sess, pt, 32, pt, &plen), CKR_OK, "the sign");
    }
    p11->C_DestroyObject(sess, aes);
}

static void test_rsa_decrypt(void)
{
    static const struct {
        CK_MECHANISM_TYPE mech;
        CK_RSA_PKCS_OAEP_PARAMS *p;
        const char *name;
    } cases[] = {
        {CKM_RSA_PKCS, NULL, "RSA_PKCS"},
        {CKM_RSA_PKCS_OAEP, &oaep_sha1, "OAEP SHA-1"},
        {CKM_RSA_PKCS_OAEP, &oaep_sha256, "OAEP SHA-256"},
        {CKM_RSA_PKCS_OAEP, &oaep_label, "OAEP SHA-256 with a label"},
    };
    CK_BYTE ct[512], pt[512];
    CK_ULONG len, i;
    size_t clen;

    for (i = 0; i < CMK_ARRAY_SIZE(cases); i++) {
        CK_MECHANISM m = {cases[i].mech, cases[i].p,
                          cases[i].p ? sizeof(*cases[i].p) : 0};
        clen = ossl_encrypt(cases[i].p, msg, sizeof(msg), ct);
        ok(clen == 256, "%s: OpenSSL encrypted", cases[i].name);
        len = sizeof(pt);
        memset(pt, 0, sizeof(pt));
        is_rv(decrypt(&m, priv, ct, clen, pt, &len), CKR_OK, cases[i].name);
        ok(len == sizeof(msg) && memcmp(pt, msg, len) == 0,
           "%s: plaintext matches", cases[i].name);
        is_rv(p11->C_Decrypt(sess, ct, clen, pt, &len),
              CKR_OPERATION_NOT_INITIALIZED, "  and the operation has ended");
    }

    /* Length queries. */
    {
        CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep_sha256, sizeof(oaep_sha256)};
        CK_BYTE first[512];
        clen = ossl_encrypt(&oaep_sha256, msg, sizeof(msg), ct);
        is_rv(p11->C_DecryptInit(sess, &m, priv), CKR_OK, "DecryptInit");
        len = 0;
        is_rv(p11->C_Decrypt(sess, ct, clen, NULL, &len), CKR_OK,
              "Decrypt length query");
        ok(len >= sizeof(msg), "  a sufficient size (%lu)", len);
        len = 4;
        is_rv(p11->C_Decrypt(sess, ct, clen, pt, &len), CKR_BUFFER_TOO_SMALL,
              "Decrypt short buffer");
        is_num(len, sizeof(msg), "  gives the exact size");
        len = sizeof(msg) - 1;
        is_rv(p11->C_Decrypt(sess, ct, clen, pt, &len), CKR_BUFFER_TOO_SMALL,
              "Decrypt one byte short");
        len = sizeof(first);
        is_rv(p11->C_Decrypt(sess, ct, clen, first, &len), CKR_OK,
              "Decrypt with a big buffer");
        ok(len == sizeof(msg) && memcmp(first, msg, len) == 0,
           "  the same plaintext");
        is_rv(p11->C_Decrypt(sess, ct, clen, pt, &len),
              CKR_OPERATION_NOT_INITIALIZED, "  then the operation has ended");
    }

    /* Multi-part decrypt. */
    {
        CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep_sha1, sizeof(oaep_sha1)};
        clen = ossl_encrypt(&oaep_sha1, msg, sizeof(msg), ct);
        p11->C_DecryptInit(sess, &m, priv);
        len = sizeof(pt);
        is_rv(p11->C_DecryptUpdate(sess, ct, 100, pt, &len), CKR_OK,
              "DecryptUpdate");
        is_num(len, 0, "  no output yet");
        len = sizeof(pt);
        is_rv(p11->C_DecryptUpdate(sess, ct + 100, clen - 100, pt, &len),
              CKR_OK, "DecryptUpdate");
        len = 0;
        is_rv(p11->C_DecryptFinal(sess, NULL, &len), CKR_OK,
              "DecryptFinal length query");
        len = sizeof(pt);
        is_rv(p11->C_DecryptFinal(sess, pt, &len), CKR_OK, "DecryptFinal");
        ok(len == sizeof(msg) && memcmp(pt, msg, len) == 0,
           "multi-part plaintext");
    }

    /* Bad ciphertext. */
    {
        CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep_sha256, sizeof(oaep_sha256)};
        CK_MECHANISM ml = {CKM_RSA_PKCS_OAEP, &oaep_label, sizeof(oaep_label)};
        CK_MECHANISM mp = {CKM_RSA_PKCS, NULL, 0};
        CK_SESSION_INFO si;
        clen = ossl_encrypt(&oaep_sha256, msg, sizeof(msg), ct);
        ct[17] ^= 0x40;
        len = sizeof(pt);
        is_rv(decrypt(&m, priv, ct, clen, pt, &len), CKR_ENCRYPTED_DATA_INVALID,
              "corrupted OAEP ciphertext");
        is_rv(p11->C_Decrypt(sess, ct, clen, pt, &len),
              CKR_OPERATION_NOT_INITIALIZED, "  ends the operation");
        is_rv(p11->C_GetSessionInfo(sess, &si), CKR_OK, "  session usable");
        ct[17] ^= 0x40;
        len = sizeof(pt);
        is_rv(decrypt(&ml, priv, ct, clen, pt, &len),
              CKR_ENCRYPTED_DATA_INVALID, "OAEP with the wrong label");
        len = sizeof(pt);
        is_rv(decrypt(&m, priv, ct, clen - 1, pt, &len),
              CKR_ENCRYPTED_DATA_LEN_RANGE, "truncated ciphertext");
        clen = ossl_encrypt(NULL, msg, sizeof(msg), ct);
        ct[3] ^= 1;
        len = sizeof(pt);
        /* Implicit rejection (tests/pkcs1-test.c has the details). */
        is_rv(decrypt(&mp, priv, ct, clen, pt, &len), CKR_OK,
              "corrupted PKCS#1 v1.5 ciphertext: CKR_OK");
        ok(len != sizeof(msg) || memcmp(pt, msg, len) != 0,
           "  and not the message");
        clen = ossl_encrypt(&oaep_sha256, msg, sizeof(msg), ct);
        len = sizeof(pt);
        is_rv(decrypt(&m, priv, ct, clen, pt, &len), CKR_OK,
              "a good decrypt after the failures");
        ok(len == sizeof(msg) && memcmp(pt, msg, len) == 0, "  plaintext");
        len = sizeof(pt);
        {
            CK_OBJECT_HANDLE old =
                p11_find(sess, CKO_PRIVATE_KEY, "mock-key@01");
            is_rv(decrypt(&m, old, ct, clen, pt, &len),
                  CKR_ENCRYPTED_DATA_INVALID,
                  "another version's key cannot decrypt it");
        }
    }
}

static void test_rsa_encrypt(void)
{
    CK_MECHANISM ms[] = {
        {CKM_RSA_PKCS_OAEP, &oaep_sha256, sizeof(oaep_sha256)},
        {CKM_RSA_PKCS_OAEP, &oaep_label, sizeof(oaep_label)},
        {CKM_RSA_PKCS_OAEP, &oaep_sha1, sizeof(oaep_sha1)},
        {CKM_RSA_PKCS, NULL, 0},
    };
    CK_BYTE ct[512], ct2[512], pt[512];
    CK_ULONG clen, len, i;

    for (i = 0; i < CMK_ARRAY_SIZE(ms); i++) {
        clen = sizeof(ct);
        is_rv(encrypt(&ms[i], pub, msg, sizeof(msg), ct, &clen), CKR_OK,
              "encrypt with the public key");
        is_num(clen, 256, "  modulus-sized ciphertext");
        len = sizeof(pt);
        is_rv(decrypt(&ms[i], priv, ct, clen, pt, &len), CKR_OK,
              "  decrypts through the module");
        ok(len == sizeof(msg) && memcmp(pt, msg, len) == 0, "  round trip");
    }
    is_rv(p11->C_EncryptInit(sess, &ms[0], pub), CKR_OK, "EncryptInit");
    clen = 0;
    is_rv(p11->C_Encrypt(sess, (CK_BYTE *)msg, sizeof(msg), NULL, &clen),
          CKR_OK, "Encrypt length query");
    is_num(clen, 256, "  256");
    clen = 10;
    is_rv(p11->C_Encrypt(sess, (CK_BYTE *)msg, sizeof(msg), ct, &clen),
          CKR_BUFFER_TOO_SMALL, "Encrypt short buffer");
    is_num(clen, 256, "  256");
    clen = sizeof(ct2);
    is_rv(p11->C_Encrypt(sess, (CK_BYTE *)msg, sizeof(msg), ct2, &clen), CKR_OK,
          "Encrypt");
    len = sizeof(pt);
    is_rv(decrypt(&ms[0], priv, ct2, clen, pt, &len), CKR_OK,
          "  and it decrypts");
    {
        CK_BYTE big[300] = {1};
        clen = sizeof(ct);
        is_rv(encrypt(&ms[0], pub, big, sizeof(big), ct, &clen),
              CKR_DATA_LEN_RANGE, "Encrypt too much data for OAEP");
    }
}

static void test_sign_verify(void)
{
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_MECHANISM s256 = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_RSA_PKCS_PSS_PARAMS pp = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM pss256 = {CKM_SHA256_RSA_PKCS_PSS, &pp, sizeof(pp)};
    CK_MECHANISM pss = {CKM_RSA_PKCS_PSS, &pp, sizeof(pp)};
    static const CK_BYTE di_prefix[] = {
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
        0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    CK_BYTE di[51], hash[32], sig[512], sig2[512], sig3[512];
    CK_ULONG len, len2, len3;
    unsigned hl = 32;

    EVP_Digest(msg, sizeof(msg), hash, &hl, EVP_sha256(), NULL);
    memcpy(di, di_prefix, sizeof(di_prefix));
    memcpy(di + sizeof(di_prefix), hash, 32);

    /* CKM_RSA_PKCS on a DigestInfo. */
    len = sizeof(sig);
    is_rv(sign(&pkcs, priv, di, sizeof(di), sig, &len), CKR_OK,
          "Sign CKM_RSA_PKCS (DigestInfo)");
    is_num(len, 256, "  256-byte signature");
    ok(ossl_verify(EVP_sha256(), RSA_PKCS1_PADDING, msg, sizeof(msg), sig, len),
       "  OpenSSL verifies it as sha256WithRSAEncryption");
    is_rv(verify(&pkcs, pub, di, sizeof(di), sig, len), CKR_OK,
          "  C_Verify CKM_RSA_PKCS");

    /* SHA256_RSA_PKCS single-part, with length queries. */
    is_rv(p11->C_SignInit(sess, &s256, priv), CKR_OK, "SignInit SHA256");
    len2 = 0;
    is_rv(p11->C_Sign(sess, (CK_BYTE *)msg, sizeof(msg), NULL, &len2), CKR_OK,
          "Sign length query");
    is_num(len2, 256, "  256");
    len2 = 100;
    is_rv(p11->C_Sign(sess, (CK_BYTE *)msg, sizeof(msg), sig2, &len2),
          CKR_BUFFER_TOO_SMALL, "Sign short buffer");
    is_num(len2, 256, "  exact size");
    len2 = sizeof(sig2);
    is_rv(p11->C_Sign(sess, (CK_BYTE *)msg, sizeof(msg), sig2, &len2), CKR_OK,
          "Sign SHA256_RSA_PKCS");
    ok(len2 == len && memcmp(sig, sig2, len) == 0,
       "  equals CKM_RSA_PKCS on the DigestInfo");
    is_rv(p11->C_Sign(sess, (CK_BYTE *)msg, sizeof(msg), sig2, &len2),
          CKR_OPERATION_NOT_INITIALIZED, "  then the operation has ended");

    /* Multi-part. */
    is_rv(p11->C_SignInit(sess, &s256, priv), CKR_OK, "SignInit multi-part");
    is_rv(p11->C_SignUpdate(sess, (CK_BYTE *)msg, 10), CKR_OK, "SignUpdate");
    is_rv(p11->C_SignUpdate(sess, (CK_BYTE *)msg + 10, 0), CKR_OK,
          "SignUpdate empty");
    is_rv(p11->C_SignUpdate(sess, (CK_BYTE *)msg + 10, sizeof(msg) - 10),
          CKR_OK, "SignUpdate");
    len3 = 0;
    is_rv(p11->C_SignFinal(sess, NULL, &len3), CKR_OK,
          "SignFinal length query");
    is_num(len3, 256, "  256");
    len3 = 255;
    is_rv(p11->C_SignFinal(sess, sig3, &len3), CKR_BUFFER_TOO_SMALL,
          "SignFinal short buffer");
    len3 = sizeof(sig3);
    is_rv(p11->C_SignFinal(sess, sig3, &len3), CKR_OK, "SignFinal");
    ok(len3 == len && memcmp(sig3, sig, len) == 0,
       "  multi-part signature equals single-part");
    is_rv(p11->C_SignFinal(sess, sig3, &len3), CKR_OPERATION_NOT_INITIALIZED,
          "  then the operation has ended");

    /* Verify, single and multi-part, good and bad. */
    is_rv(verify(&s256, pub, msg, sizeof(msg), sig, len), CKR_OK,
          "C_Verify SHA256_RSA_PKCS");
    is_rv(p11->C_VerifyInit(sess, &s256, pub), CKR_OK, "VerifyInit");
    is_rv(p11->C_VerifyUpdate(sess, (CK_BYTE *)msg, 5), CKR_OK, "VerifyUpdate");
    is_rv(p11->C_VerifyUpdate(sess, (CK_BYTE *)msg + 5, sizeof(msg) - 5),
          CKR_OK, "VerifyUpdate");
    is_rv(p11->C_VerifyFinal(sess, sig, len), CKR_OK, "VerifyFinal");
    is_rv(p11->C_VerifyFinal(sess, sig, len), CKR_OPERATION_NOT_INITIALIZED,
          "  then the operation has ended");
    sig[100] ^= 1;
    is_rv(verify(&s256, pub, msg, sizeof(msg), sig, len), CKR_SIGNATURE_INVALID,
          "bad signature");
    is_rv(p11->C_Verify(sess, (CK_BYTE *)msg, sizeof(msg), sig, len),
          CKR_OPERATION_NOT_INITIALIZED, "  ends the operation");
    sig[100] ^= 1;
    is_rv(verify(&s256, pub, msg, sizeof(msg) - 1, sig, len),
          CKR_SIGNATURE_INVALID, "other data");
    is_rv(verify(&s256, pub, msg, sizeof(msg), sig, len - 1),
          CKR_SIGNATURE_LEN_RANGE, "short signature");
    is_rv(p11->C_VerifyInit(sess, &s256, pub), CKR_OK, "VerifyInit");
    p11->C_VerifyUpdate(sess, (CK_BYTE *)msg, 3);
    is_rv(p11->C_VerifyFinal(sess, sig, len), CKR_SIGNATURE_INVALID,
          "multi-part verify of a prefix");
    {
        CK_OBJECT_HANDLE old = p11_find(sess, CKO_PUBLIC_KEY, "mock-key@01");
        is_rv(verify(&s256, old, msg, sizeof(msg), sig, len),
              CKR_SIGNATURE_INVALID, "another version's key");
    }

    /* PSS. */
    len = sizeof(sig);
    is_rv(sign(&pss256, priv, msg, sizeof(msg), sig, &len), CKR_OK,
          "Sign SHA256_RSA_PKCS_PSS");
    ok(ossl_verify(EVP_sha256(), RSA_PKCS1_PSS_PADDING, msg, sizeof(msg), sig,
                   len),
       "  OpenSSL verifies it");
    is_rv(verify(&pss256, pub, msg, sizeof(msg), sig, len), CKR_OK,
          "  C_Verify");
    is_rv(verify(&pss, pub, hash, 32, sig, len), CKR_OK,
          "  C_Verify RSA_PKCS_PSS on the hash");
    len = sizeof(sig);
    is_rv(sign(&pss, priv, hash, sizeof(hash), sig, &len), CKR_OK,
          "Sign RSA_PKCS_PSS (a digest)");
    ok(ossl_verify(EVP_sha256(), RSA_PKCS1_PSS_PADDING, msg, sizeof(msg), sig,
                   len),
       "  OpenSSL verifies it");
    is_rv(verify(&pss256, pub, msg, sizeof(msg), sig, len), CKR_OK,
          "  C_Verify SHA256_RSA_PKCS_PSS");
    sig[0] ^= 0x80;
    is_rv(verify(&pss256, pub, msg, sizeof(msg), sig, len),
          CKR_SIGNATURE_INVALID, "  bad PSS signature");

    /* Bad PSS parameters. */
    pp.hashAlg = CKM_SHA384;
    is_rv(p11->C_SignInit(sess, &pss256, priv), CKR_MECHANISM_PARAM_INVALID,
          "SHA256_RSA_PKCS_PSS naming SHA-384");
    pp.hashAlg = CKM_SHA256;
    pss.ulParameterLen = 3;
    is_rv(p11->C_SignInit(sess, &pss, priv), CKR_MECHANISM_PARAM_INVALID,
          "PSS parameters of the wrong size");
    pss.pParameter = NULL;
    pss.ulParameterLen = 0;
    is_rv(p11->C_SignInit(sess, &pss, priv), CKR_MECHANISM_PARAM_INVALID,
          "PSS without parameters");
    pp.mgf = 0x1234;
    is_rv(p11->C_VerifyInit(sess, &pss256, pub), CKR_MECHANISM_PARAM_INVALID,
          "PSS with an unknown MGF");
    pp.mgf = CKG_MGF1_SHA256;

    /* sign-only signs. */
    len = sizeof(sig);
    is_rv(sign(&s256, so_priv, msg, sizeof(msg), sig, &len), CKR_OK,
          "sign-only signs");
    is_rv(verify(&s256, so_pub, msg, sizeof(msg), sig, len), CKR_OK,
          "  and its public key verifies");
}

static void test_digest(void)
{
    CK_MECHANISM m = {CKM_SHA256, NULL, 0};
    CK_BYTE want[32], got[64];
    CK_ULONG len;
    unsigned wl = 32;

    EVP_Digest(msg, sizeof(msg), want, &wl, EVP_sha256(), NULL);
    is_rv(p11->C_DigestInit(sess, NULL), CKR_ARGUMENTS_BAD, "DigestInit(NULL)");
    is_rv(p11->C_DigestInit(sess, &(CK_MECHANISM){CKM_RSA_PKCS, NULL, 0}),
          CKR_MECHANISM_INVALID, "DigestInit with CKM_RSA_PKCS");
    is_rv(p11->C_DigestInit(sess, &(CK_MECHANISM){CKM_MD5, NULL, 0}),
          CKR_MECHANISM_INVALID, "DigestInit with CKM_MD5");
    is_rv(p11->C_DigestInit(sess, &m), CKR_OK, "DigestInit SHA256");
    is_rv(p11->C_DigestInit(sess, &m), CKR_OPERATION_ACTIVE,
          "DigestInit twice");
    len = 0;
    is_rv(p11->C_Digest(sess, (CK_BYTE *)msg, sizeof(msg), NULL, &len), CKR_OK,
          "Digest length query");
    is_num(len, 32, "  32");
    len = 31;
    is_rv(p11->C_Digest(sess, (CK_BYTE *)msg, sizeof(msg), got, &len),
          CKR_BUFFER_TOO_SMALL, "Digest short buffer");
    is_num(len, 32, "  32");
    len = sizeof(got);
    is_rv(p11->C_Digest(sess, (CK_BYTE *)msg, sizeof(msg), got, &len), CKR_OK,
          "Digest");
    ok(len == 32 && memcmp(got, want, 32) == 0, "  equals OpenSSL's SHA-256");
    is_rv(p11->C_Digest(sess, (CK_BYTE *)msg, sizeof(msg), got, &len),
          CKR_OPERATION_NOT_INITIALIZED, "  then the operation has ended");

    p11->C_DigestInit(sess, &m);
    is_rv(p11->C_DigestUpdate(sess, (CK_BYTE *)msg, 7), CKR_OK, "DigestUpdate");
    is_rv(p11->C_DigestUpdate(sess, (CK_BYTE *)msg + 7, sizeof(msg) - 7),
          CKR_OK, "DigestUpdate");
    len = 8;
    is_rv(p11->C_DigestFinal(sess, got, &len), CKR_BUFFER_TOO_SMALL,
          "DigestFinal short buffer");
    len = sizeof(got);
    is_rv(p11->C_DigestFinal(sess, got, &len), CKR_OK, "DigestFinal");
    ok(len == 32 && memcmp(got, want, 32) == 0, "  multi-part equals OpenSSL");

    {
        static const CK_BYTE kv[16] = "0123456789ABCDEF";
        CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
        CK_KEY_TYPE aes = CKK_AES;
        CK_BBOOL f = CK_FALSE, tr = CK_TRUE;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &sk, sizeof(sk)},
                            {CKA_KEY_TYPE, &aes, sizeof(aes)},
                            {CKA_VALUE, (void *)kv, 16},
                            {CKA_SENSITIVE, &f, sizeof(f)},
                            {CKA_EXTRACTABLE, &tr, sizeof(tr)}};
        CK_OBJECT_HANDLE k = 0, sens = p11_aes_key(sess, 16, false, true);
        CK_BYTE kh[32];
        unsigned kl = 32;
        p11->C_CreateObject(sess, t, 5, &k);
        EVP_Digest(kv, 16, kh, &kl, EVP_sha256(), NULL);
        p11->C_DigestInit(sess, &m);
        is_rv(p11->C_DigestKey(sess, k), CKR_OK, "DigestKey");
        len = sizeof(got);
        p11->C_DigestFinal(sess, got, &len);
        ok(len == 32 && memcmp(got, kh, 32) == 0, "  digest of the key value");
        p11->C_DigestInit(sess, &m);
        is_rv(p11->C_DigestKey(sess, sens), CKR_KEY_INDIGESTIBLE,
              "DigestKey of a sensitive key");
        p11->C_DestroyObject(sess, k);
        p11->C_DestroyObject(sess, sens);
    }
}

static CK_OBJECT_HANDLE known_aes(const CK_BYTE *value, CK_ULONG len)
{
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &sk, sizeof(sk)},
                        {CKA_KEY_TYPE, &aes, sizeof(aes)},
                        {CKA_VALUE, (void *)value, len}};
    CK_OBJECT_HANDLE h = 0;

    if (p11->C_CreateObject(sess, t, 3, &h) != CKR_OK)
        return 0;
    return h;
}

static void test_aes(void)
{
    static const CK_BYTE kv[32] = "an AES-256 key of 32 bytes here";
    CK_OBJECT_HANDLE key = known_aes(kv, 32);
    CK_OBJECT_HANDLE gen = p11_aes_key(sess, 16, false, true);
    CK_BYTE iv[12] = "twelve bytes", cbciv[16] = "sixteen byte iv";
    CK_BYTE aad[] = "header";
    CK_GCM_PARAMS gp = {iv, 12, 96, aad, 6, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, cbciv, 16};
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_BYTE ct[256], pt[256], ref[256];
    CK_ULONG clen, len;
    int n1 = 0, n2 = 0;

    ok(key != 0 && gen != 0, "AES keys");

    /* GCM, checked with OpenSSL. */
    clen = 0;
    is_rv(p11->C_EncryptInit(sess, &gcm, key), CKR_OK, "GCM EncryptInit");
    is_rv(p11->C_Encrypt(sess, (CK_BYTE *)msg, sizeof(msg), NULL, &clen),
          CKR_OK, "GCM length query");
    is_num(clen, sizeof(msg) + 16, "  data + tag");
    clen = sizeof(ct);
    is_rv(p11->C_Encrypt(sess, (CK_BYTE *)msg, sizeof(msg), ct, &clen), CKR_OK,
          "GCM Encrypt");
    {
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        int good =
            EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) &&
            EVP_DecryptInit_ex(c, NULL, NULL, kv, iv) &&
            EVP_DecryptUpdate(c, NULL, &n1, aad, 6) &&
            EVP_DecryptUpdate(c, ref, &n1, ct, (int)clen - 16) &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, ct + clen - 16) &&
            EVP_DecryptFinal_ex(c, ref + n1, &n2) == 1;
        ok(good && n1 + n2 == (int)sizeof(msg) &&
               memcmp(ref, msg, sizeof(msg)) == 0,
           "  OpenSSL decrypts and authenticates it");
        EVP_CIPHER_CTX_free(c);
    }
    len = sizeof(pt);
    is_rv(decrypt(&gcm, key, ct, clen, pt, &len), CKR_OK, "GCM Decrypt");
    ok(len == sizeof(msg) && memcmp(pt, msg, len) == 0, "  round trip");
    ct[clen - 1] ^= 1;
    len = sizeof(pt);
    is_rv(decrypt(&gcm, key, ct, clen, pt, &len), CKR_ENCRYPTED_DATA_INVALID,
          "GCM tag tampering");
    ct[clen - 1] ^= 1;
    ct[0] ^= 1;
    len = sizeof(pt);
    is_rv(decrypt(&gcm, key, ct, clen, pt, &len), CKR_ENCRYPTED_DATA_INVALID,
          "GCM ciphertext tampering");
    ct[0] ^= 1;
    aad[0] ^= 1;
    len = sizeof(pt);
    is_rv(decrypt(&gcm, key, ct, clen, pt, &len), CKR_ENCRYPTED_DATA_INVALID,
          "GCM other AAD");
    aad[0] ^= 1;
    len = sizeof(pt);
    is_rv(decrypt(&gcm, key, ct, 8, pt, &len), CKR_ENCRYPTED_DATA_LEN_RANGE,
          "GCM shorter than the tag");

    /* GCM multi-part, with a generated sensitive key. */
    is_rv(p11->C_EncryptInit(sess, &gcm, gen), CKR_OK, "GCM multi-part");
    len = sizeof(ct);
    p11->C_EncryptUpdate(sess, (CK_BYTE *)msg, 20, ct, &len);
    len = sizeof(ct);
    p11->C_EncryptUpdate(sess, (CK_BYTE *)msg + 20, sizeof(msg) - 20, ct, &len);
    clen = sizeof(ct);
    is_rv(p11->C_EncryptFinal(sess, ct, &clen), CKR_OK, "  EncryptFinal");
    is_rv(p11->C_DecryptInit(sess, &gcm, gen), CKR_OK, "  DecryptInit");
    len = sizeof(pt);
    p11->C_DecryptUpdate(sess, ct, 30, pt, &len);
    len = sizeof(pt);
    p11->C_DecryptUpdate(sess, ct + 30, clen - 30, pt, &len);
    len = sizeof(pt);
    is_rv(p11->C_DecryptFinal(sess, pt, &len), CKR_OK, "  DecryptFinal");
    ok(len == sizeof(msg) && memcmp(pt, msg, len) == 0,
       "  multi-part round trip");

    /* GCM parameters. */
    gcm.pParameter = NULL;
    is_rv(p11->C_EncryptInit(sess, &gcm, key), CKR_MECHANISM_PARAM_INVALID,
          "GCM without parameters");
    gcm.pParameter = &gp;
    gp.ulTagBits = 64;
    is_rv(p11->C_EncryptInit(sess, &gcm, key), CKR_MECHANISM_PARAM_INVALID,
          "GCM 64-bit tag");
    gp.ulTagBits = 128;
    gp.ulIvLen = 0;
    is_rv(p11->C_EncryptInit(sess, &gcm, key), CKR_MECHANISM_PARAM_INVALID,
          "GCM empty IV");
    gp.ulIvLen = 12;
    cbc.ulParameterLen = 8;
    is_rv(p11->C_EncryptInit(sess, &cbc, key), CKR_MECHANISM_PARAM_INVALID,
          "CBC_PAD with an 8-byte IV");
    cbc.ulParameterLen = 16;
    is_rv(
        p11->C_EncryptInit(sess, &(CK_MECHANISM){CKM_AES_KEY_WRAP, iv, 8}, key),
        CKR_MECHANISM_PARAM_INVALID, "KEY_WRAP with an IV");
    is_rv(p11->C_EncryptInit(sess, &cbc, pub), CKR_KEY_TYPE_INCONSISTENT,
          "CBC_PAD with an RSA public key");

    /* CBC_PAD, checked with OpenSSL. */
    clen = sizeof(ct);
    is_rv(encrypt(&cbc, key, msg, sizeof(msg), ct, &clen), CKR_OK,
          "CBC_PAD Encrypt");
    is_num(clen, (sizeof(msg) / 16 + 1) * 16, "  padded length");
    {
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        int good = EVP_DecryptInit_ex(c, EVP_aes_256_cbc(), NULL, kv, cbciv) &&
                   EVP_DecryptUpdate(c, ref, &n1, ct, (int)clen) &&
                   EVP_DecryptFinal_ex(c, ref + n1, &n2) == 1;
        ok(good && n1 + n2 == (int)sizeof(msg) &&
               memcmp(ref, msg, sizeof(msg)) == 0,
           "  OpenSSL decrypts it");
        EVP_CIPHER_CTX_free(c);
    }
    len = sizeof(pt);
    is_rv(decrypt(&cbc, key, ct, clen, pt, &len), CKR_OK, "CBC_PAD Decrypt");
    ok(len == sizeof(msg) && memcmp(pt, msg, len) == 0, "  round trip");
    len = sizeof(pt);
    is_rv(decrypt(&cbc, key, ct, clen - 1, pt, &len),
          CKR_ENCRYPTED_DATA_LEN_RANGE, "CBC_PAD not a block multiple");

    /* Key wrap (RFC 3394) and with padding (RFC 5649). */
    clen = sizeof(ct);
    is_rv(encrypt(&kw, gen, kv, 32, ct, &clen), CKR_OK, "KEY_WRAP Encrypt");
    is_num(clen, 40, "  32 + 8 bytes");
    len = sizeof(pt);
    is_rv(decrypt(&kw, gen, ct, clen, pt, &len), CKR_OK, "KEY_WRAP Decrypt");
    ok(len == 32 && memcmp(pt, kv, 32) == 0, "  round trip");
    ct[5] ^= 1;
    len = sizeof(pt);
    is_rv(decrypt(&kw, gen, ct, clen, pt, &len), CKR_ENCRYPTED_DATA_INVALID,
          "KEY_WRAP integrity check");
    clen = sizeof(ct);
    is_rv(encrypt(&kw, gen, kv, 20, ct, &clen), CKR_DATA_LEN_RANGE,
          "KEY_WRAP of 20 bytes");
    clen = sizeof(ct);
    is_rv(encrypt(&kwp, key, kv, 20, ct, &clen), CKR_OK,
          "KEY_WRAP_PAD of 20 bytes");
    is_num(clen, 32, "  padded to 24 + 8");
    {
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        int good;
        EVP_CIPHER_CTX_set_flags(c, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
        good = EVP_DecryptInit_ex(c, EVP_aes_256_wrap_pad(), NULL, kv, NULL) &&
               EVP_DecryptUpdate(c, ref, &n1, ct, (int)clen) &&
               EVP_DecryptFinal_ex(c, ref + n1, &n2) == 1;
        ok(good && n1 + n2 == 20 && memcmp(ref, kv, 20) == 0,
           "  OpenSSL unwraps it");
        EVP_CIPHER_CTX_free(c);
    }
    len = sizeof(pt);
    is_rv(decrypt(&kwp, key, ct, clen, pt, &len), CKR_OK,
          "KEY_WRAP_PAD Decrypt");
    ok(len == 20 && memcmp(pt, kv, 20) == 0, "  round trip");
    p11->C_DestroyObject(sess, key);
    p11->C_DestroyObject(sess, gen);
}

static void test_random(void)
{
    CK_BYTE a[32], b[32], z[32];

    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    memset(z, 0, sizeof(z));
    is_rv(p11->C_GenerateRandom(sess, NULL, 16), CKR_ARGUMENTS_BAD,
          "GenerateRandom(NULL, 16)");
    is_rv(p11->C_GenerateRandom(sess, NULL, 0), CKR_OK,
          "GenerateRandom(NULL, 0)");
    is_rv(p11->C_GenerateRandom(sess, a, sizeof(a)), CKR_OK, "GenerateRandom");
    is_rv(p11->C_GenerateRandom(sess, b, sizeof(b)), CKR_OK,
          "GenerateRandom again");
    ok(memcmp(a, z, 32) != 0 && memcmp(a, b, 32) != 0,
       "random bytes differ from zero and from each other");
    is_rv(p11->C_SeedRandom(sess, a, 8), CKR_RANDOM_SEED_NOT_SUPPORTED,
          "SeedRandom");
    is_rv(p11->C_SeedRandom(sess, NULL, 8), CKR_ARGUMENTS_BAD,
          "SeedRandom(NULL, 8)");
}

static void test_faults(void)
{
    CK_SESSION_HANDLE fs = p11_open(1, false), keep = sess;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep_sha256, sizeof(oaep_sha256)};
    CK_MECHANISM s256 = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_OBJECT_HANDLE k;
    CK_SESSION_INFO si;
    CK_BYTE ct[512], pt[512];
    CK_ULONG len = sizeof(pt);
    size_t clen;

    sess = fs;
    k = p11_find(fs, CKO_PRIVATE_KEY, "mock-key");
    ok(fs != 0 && k != 0, "failing token: session and key");
    clen = ossl_encrypt(&oaep_sha256, msg, sizeof(msg), ct);
    is_rv(p11->C_GetSessionInfo(fs, &si), CKR_OK, "GetSessionInfo");
    is_num(si.ulDeviceError, 0, "no device error before");
    is_rv(decrypt(&m, k, ct, clen, pt, &len), CKR_DEVICE_ERROR,
          "fail-op = decrypt gives fail-rv CKR_DEVICE_ERROR");
    is_rv(p11->C_GetSessionInfo(fs, &si), CKR_OK, "GetSessionInfo");
    is_num(si.ulDeviceError, 503, "ulDeviceError 503");
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &len),
          CKR_OPERATION_NOT_INITIALIZED, "the failed operation has ended");
    len = sizeof(pt);
    is_rv(sign(&s256, k, msg, sizeof(msg), pt, &len), CKR_OK,
          "other operations still work");
    is_rv(p11->C_GetSessionInfo(fs, &si), CKR_OK, "GetSessionInfo");
    is_num(si.ulDeviceError, 0, "a success clears ulDeviceError");
    p11->C_CloseSession(fs);
    sess = keep;
}

int main(void)
{
    char *conf;

    p11_load(NULL);
    conf = p11_write_file("crypto.conf", CONF);
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    sess = p11_open(0, false);
    priv = p11_find(sess, CKO_PRIVATE_KEY, "mock-key");
    pub = p11_find(sess, CKO_PUBLIC_KEY, "mock-key");
    so_priv = p11_find(sess, CKO_PRIVATE_KEY, "sign-only");
    so_pub = p11_find(sess, CKO_PUBLIC_KEY, "sign-only");
    dis_priv = p11_find(sess, CKO_PRIVATE_KEY, "disabled-key");
    if (!sess || !priv || !pub || !so_priv || !so_pub || !dis_priv)
        test_bail("mock keys not found");
    pk = p11_public_key(sess, pub);
    if (pk == NULL)
        test_bail("CKA_PUBLIC_KEY_INFO does not parse");
    test_init_errors();
    test_rsa_decrypt();
    test_rsa_encrypt();
    test_sign_verify();
    test_digest();
    test_aes();
    test_random();
    test_faults();
    EVP_PKEY_free(pk);
    p11->C_CloseSession(sess);
    p11->C_Finalize(NULL);
    free(conf);
    return test_done();
}
