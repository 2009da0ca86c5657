/*
 * Key management: C_GenerateKey, C_CreateObject, C_WrapKey, C_UnwrapKey,
 * C_GenerateKeyPair (new keys and new versions), and the life of session
 * objects. Wrapped keys are cross-checked with OpenSSL.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"

static CK_SESSION_HANDLE sess;
static CK_OBJECT_HANDLE priv, pub;
static EVP_PKEY *pk;

static CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
static CK_KEY_TYPE aes_type = CKK_AES;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static CK_RSA_PKCS_OAEP_PARAMS oaep_sha1 = {CKM_SHA_1, CKG_MGF1_SHA1,
                                            CKZ_DATA_SPECIFIED, NULL, 0};
static CK_RSA_PKCS_OAEP_PARAMS oaep_sha256 = {CKM_SHA256, CKG_MGF1_SHA256,
                                              CKZ_DATA_SPECIFIED, NULL, 0};
static CK_RSA_PKCS_OAEP_PARAMS oaep_label = {
    CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, (void *)"kek label", 9};

/* Template for an unwrapped AES key: sensitive, not extractable. */
static CK_ATTRIBUTE unwrap_tmpl[] = {
    {CKA_CLASS, &secret_class, sizeof(secret_class)},
    {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
    {CKA_SENSITIVE, &yes, sizeof(yes)},
    {CKA_EXTRACTABLE, &no, sizeof(no)},
    {CKA_ENCRYPT, &yes, sizeof(yes)},
    {CKA_DECRYPT, &yes, sizeof(yes)},
};

static CK_RV gen_aes(CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *h)
{
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};

    return p11->C_GenerateKey(sess, &m, t, n, h);
}

static void test_generate_key(void)
{
    CK_ULONG sizes[] = {16, 24, 32}, len = 16, i, bad = 20;
    CK_OBJECT_HANDLE h = 0, h2 = 0;
    CK_ATTRIBUTE t[3] = {{CKA_VALUE_LEN, &len, sizeof(len)},
                         {CKA_TOKEN, &yes, sizeof(yes)},
                         {CKA_LABEL, (void *)"dek", 3}};

    for (i = 0; i < 3; i++) {
        len = sizes[i];
        h = 0;
        is_rv(gen_aes(t, 1, &h), CKR_OK, "C_GenerateKey AES");
        is_num(p11_ulong(sess, h, CKA_VALUE_LEN), sizes[i],
               "  CKA_VALUE_LEN %lu", sizes[i]);
        is_num(p11_ulong(sess, h, CKA_KEY_TYPE), CKK_AES, "  CKK_AES");
        is_num(p11_ulong(sess, h, CKA_KEY_GEN_MECHANISM), CKM_AES_KEY_GEN,
               "  CKA_KEY_GEN_MECHANISM");
        ok(p11_same_aes_key(sess, h, h), "  usable for AES-GCM");
        p11->C_DestroyObject(sess, h);
    }
    is_rv(gen_aes(&t[2], 1, &h), CKR_TEMPLATE_INCOMPLETE,
          "no CKA_VALUE_LEN: TEMPLATE_INCOMPLETE");
    t[0].pValue = &bad;
    is_rv(gen_aes(t, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID,
          "CKA_VALUE_LEN 20: ATTRIBUTE_VALUE_INVALID");
    t[0].pValue = &len;
    len = 16;
    is_rv(gen_aes(t, 2, &h), CKR_TEMPLATE_INCONSISTENT,
          "CKA_TOKEN true: TEMPLATE_INCONSISTENT");
    t[0].ulValueLen = 4;
    is_rv(gen_aes(t, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID,
          "CKA_VALUE_LEN of the wrong size");
    t[0].ulValueLen = sizeof(len);
    {
        CK_ATTRIBUTE u[2] = {{CKA_VALUE_LEN, &len, sizeof(len)},
                             {CKA_MODULUS_BITS, &len, sizeof(len)}};
        is_rv(gen_aes(u, 2, &h), CKR_ATTRIBUTE_TYPE_INVALID,
              "an attribute secret keys do not have");
        u[1].type = CKA_KEY_TYPE;
        u[1].pValue = &(CK_KEY_TYPE){CKK_DES3};
        is_rv(gen_aes(u, 2, &h), CKR_TEMPLATE_INCONSISTENT,
              "CKK_DES3 with CKM_AES_KEY_GEN");
        u[1].type = CKA_CLASS;
        u[1].pValue = &(CK_OBJECT_CLASS){CKO_PRIVATE_KEY};
        is_rv(gen_aes(u, 2, &h), CKR_TEMPLATE_INCONSISTENT,
              "CKO_PRIVATE_KEY with CKM_AES_KEY_GEN");
    }
    is_rv(p11->C_GenerateKey(sess, NULL, t, 1, &h), CKR_ARGUMENTS_BAD,
          "NULL mechanism");
    is_rv(gen_aes(t, 1, NULL), CKR_ARGUMENTS_BAD, "NULL handle pointer");
    is_rv(p11->C_GenerateKey(sess, &(CK_MECHANISM){CKM_DES3_KEY_GEN, NULL, 0},
                             t, 1, &h),
          CKR_MECHANISM_INVALID, "CKM_DES3_KEY_GEN");
    is_rv(p11->C_GenerateKey(
              sess, &(CK_MECHANISM){CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0}, t, 1,
              &h),
          CKR_MECHANISM_INVALID, "a key-pair mechanism in C_GenerateKey");
    len = 40;
    is_rv(p11->C_GenerateKey(
              sess, &(CK_MECHANISM){CKM_GENERIC_SECRET_KEY_GEN, NULL, 0}, t, 1,
              &h2),
          CKR_OK, "CKM_GENERIC_SECRET_KEY_GEN 40 bytes");
    is_num(p11_ulong(sess, h2, CKA_KEY_TYPE), CKK_GENERIC_SECRET,
           "  CKK_GENERIC_SECRET");
    is_num(p11_ulong(sess, h2, CKA_VALUE_LEN), 40, "  40 bytes");
    p11->C_DestroyObject(sess, h2);
}

static void test_create_object(void)
{
    static const CK_BYTE v[16] = "sixteen byte key";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &secret_class, sizeof(secret_class)},
                        {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
                        {CKA_VALUE, (void *)v, 16},
                        {CKA_EXTRACTABLE, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE h = 0;
    CK_BYTE out[32];
    CK_ATTRIBUTE val = {CKA_VALUE, out, sizeof(out)};

    is_rv(p11->C_CreateObject(sess, t, 4, &h), CKR_OK,
          "C_CreateObject AES key");
    is_num(p11_ulong(sess, h, CKA_VALUE_LEN), 16, "  CKA_VALUE_LEN");
    ok(p11_bool(sess, h, CKA_SENSITIVE) == 0, "  not sensitive by default");
    is_rv(p11->C_GetAttributeValue(sess, h, &val, 1), CKR_OK, "  CKA_VALUE");
    ok(val.ulValueLen == 16 && memcmp(out, v, 16) == 0, "  the value given");
    p11->C_DestroyObject(sess, h);
    is_rv(p11->C_CreateObject(sess, &t[1], 3, &h), CKR_TEMPLATE_INCOMPLETE,
          "no CKA_CLASS");
    is_rv(p11->C_CreateObject(sess, t, 2, &h), CKR_TEMPLATE_INCOMPLETE,
          "no CKA_VALUE");
    t[2].ulValueLen = 15;
    is_rv(p11->C_CreateObject(sess, t, 3, &h), CKR_ATTRIBUTE_VALUE_INVALID,
          "a 15-byte AES key");
    t[2].ulValueLen = 16;
    is_rv(p11->C_CreateObject(sess, t, 3, NULL), CKR_ARGUMENTS_BAD,
          "NULL handle pointer");
    {
        CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
        CK_ATTRIBUTE p[1] = {{CKA_CLASS, &pc, sizeof(pc)}};
        is_rv(p11->C_CreateObject(sess, p, 1, &h), CKR_TEMPLATE_INCONSISTENT,
              "a public key object");
    }
}

static size_t ossl_wrap(const CK_RSA_PKCS_OAEP_PARAMS *oaep, const CK_BYTE *in,
                        size_t inlen, CK_BYTE *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t olen = 512;
    const EVP_MD *md = oaep->hashAlg == CKM_SHA_1 ? EVP_sha1() : EVP_sha256();

    if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 ||
        (oaep->ulSourceDataLen > 0 &&
         EVP_PKEY_CTX_set0_rsa_oaep_label(
             ctx, OPENSSL_memdup(oaep->pSourceData, oaep->ulSourceDataLen),
             (int)oaep->ulSourceDataLen) <= 0) ||
        EVP_PKEY_encrypt(ctx, out, &olen, in, inlen) <= 0)
        olen = 0;
    EVP_PKEY_CTX_free(ctx);
    return olen;
}

static void test_rsa_wrap(void)
{
    CK_MECHANISM ms[] = {
        {CKM_RSA_PKCS_OAEP, &oaep_sha1, sizeof(oaep_sha1)},
        {CKM_RSA_PKCS_OAEP, &oaep_sha256, sizeof(oaep_sha256)},
        {CKM_RSA_PKCS_OAEP, &oaep_label, sizeof(oaep_label)},
        {CKM_RSA_PKCS, NULL, 0},
    };
    static const char *names[] = {"OAEP SHA-1", "OAEP SHA-256",
                                  "OAEP with a label", "RSA_PKCS"};
    CK_OBJECT_HANDLE dek = p11_aes_key(sess, 32, true, false);
    CK_OBJECT_HANDLE locked = p11_aes_key(sess, 32, false, true);
    CK_OBJECT_HANDLE un = 0;
    CK_BYTE wrapped[512];
    CK_ULONG wlen, i;
    CK_SESSION_INFO si;

    ok(dek && locked, "AES data keys");
    for (i = 0; i < CMK_ARRAY_SIZE(ms); i++) {
        wlen = sizeof(wrapped);
        un = 0;
        is_rv(p11->C_WrapKey(sess, &ms[i], pub, dek, wrapped, &wlen), CKR_OK,
              names[i]);
        is_num(wlen, 256, "  wrapped key is modulus-sized");
        {
            /* CKM_RSA_PKCS (implicit rejection) needs CKA_VALUE_LEN. */
            CK_ULONG n = CMK_ARRAY_SIZE(unwrap_tmpl), vl = 32;
            CK_ATTRIBUTE t[CMK_ARRAY_SIZE(unwrap_tmpl) + 1];
            memcpy(t, unwrap_tmpl, sizeof(unwrap_tmpl));
            t[n].type = CKA_VALUE_LEN;
            t[n].pValue = &vl;
            t[n].ulValueLen = sizeof(vl);
            if (ms[i].mechanism == CKM_RSA_PKCS)
                n++;
            is_rv(
                p11->C_UnwrapKey(sess, &ms[i], priv, wrapped, wlen, t, n, &un),
                CKR_OK, "  C_UnwrapKey");
        }
        ok(un != 0 && un != dek, "  a new handle");
        ok(p11_same_aes_key(sess, dek, un),
           "  GCM under the original decrypts under it");
        ok(p11_same_aes_key(sess, un, dek), "  and the other way round");
        ok(p11_bool(sess, un, CKA_SENSITIVE) == 1 &&
               p11_bool(sess, un, CKA_EXTRACTABLE) == 0,
           "  sensitive and not extractable");
        ok(p11_bool(sess, un, CKA_ALWAYS_SENSITIVE) == 0 &&
               p11_bool(sess, un, CKA_NEVER_EXTRACTABLE) == 0 &&
               p11_bool(sess, un, CKA_LOCAL) == 0,
           "  not ALWAYS_SENSITIVE, NEVER_EXTRACTABLE or LOCAL");
        is_num(p11_ulong(sess, un, CKA_VALUE_LEN), 32, "  CKA_VALUE_LEN 32");
        p11->C_DestroyObject(sess, un);
    }

    /* Length query and short buffer. */
    wlen = 0;
    is_rv(p11->C_WrapKey(sess, &ms[1], pub, dek, NULL, &wlen), CKR_OK,
          "C_WrapKey length query");
    is_num(wlen, 256, "  256");
    wlen = 16;
    is_rv(p11->C_WrapKey(sess, &ms[1], pub, dek, wrapped, &wlen),
          CKR_BUFFER_TOO_SMALL, "C_WrapKey short buffer");
    is_num(wlen, 256, "  256");

    /* A wrapped key made by OpenSSL. */
    {
        static const CK_BYTE kv[32] = "a data key from somewhere else!";
        CK_BYTE iv[12] = "nonce nonce!", ct[64];
        CK_GCM_PARAMS gp = {iv, 12, 96, NULL, 0, 128};
        CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
        CK_ULONG clen = sizeof(ct);
        unsigned char ref[64];
        int n1 = 0, n2 = 0, good;
        EVP_CIPHER_CTX *c;
        size_t l = ossl_wrap(&oaep_label, kv, 32, wrapped);

        un = 0;
        is_rv(p11->C_UnwrapKey(sess, &ms[2], priv, wrapped, l, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_OK, "unwrap an OpenSSL-wrapped key");
        is_rv(p11->C_EncryptInit(sess, &gcm, un), CKR_OK, "  EncryptInit");
        is_rv(p11->C_Encrypt(sess, iv, 12, ct, &clen), CKR_OK, "  Encrypt");
        c = EVP_CIPHER_CTX_new();
        good =
            EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) &&
            EVP_DecryptInit_ex(c, NULL, NULL, kv, iv) &&
            EVP_DecryptUpdate(c, ref, &n1, ct, (int)clen - 16) &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, ct + clen - 16) &&
            EVP_DecryptFinal_ex(c, ref + n1, &n2) == 1;
        EVP_CIPHER_CTX_free(c);
        ok(good && n1 + n2 == 12 && memcmp(ref, iv, 12) == 0,
           "  the unwrapped key is the one OpenSSL wrapped");
        p11->C_DestroyObject(sess, un);

        /* Wrong label, corrupted, truncated. */
        un = 0;
        is_rv(p11->C_UnwrapKey(sess, &ms[1], priv, wrapped, l, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_WRAPPED_KEY_INVALID, "unwrap without the label");
        wrapped[40] ^= 0x10;
        is_rv(p11->C_UnwrapKey(sess, &ms[2], priv, wrapped, l, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_WRAPPED_KEY_INVALID, "corrupted wrapped key");
        wrapped[40] ^= 0x10;
        is_rv(p11->C_UnwrapKey(sess, &ms[2], priv, wrapped, l - 3, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_WRAPPED_KEY_LEN_RANGE, "truncated wrapped key");
        is_num(un, 0, "  no handle after failures");
        is_rv(p11->C_GetSessionInfo(sess, &si), CKR_OK, "  session usable");
        is_rv(p11->C_UnwrapKey(sess, &ms[2], priv, wrapped, l, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_OK, "  and the good one still unwraps");
        p11->C_DestroyObject(sess, un);
        {
            CK_ULONG want = 16;
            CK_ATTRIBUTE t16[3] = {
                {CKA_CLASS, &secret_class, sizeof(secret_class)},
                {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
                {CKA_VALUE_LEN, &want, sizeof(want)}};
            un = 0;
            ok(p11->C_UnwrapKey(sess, &ms[2], priv, wrapped, l, t16, 3, &un) !=
                       CKR_OK &&
                   un == 0,
               "a 32-byte key with CKA_VALUE_LEN 16 in the template fails");
        }
        {
            CK_OBJECT_HANDLE old =
                p11_find(sess, CKO_PRIVATE_KEY, "mock-key@01");
            is_rv(p11->C_UnwrapKey(sess, &ms[2], old, wrapped, l, unwrap_tmpl,
                                   CMK_ARRAY_SIZE(unwrap_tmpl), &un),
                  CKR_WRAPPED_KEY_INVALID,
                  "another version's object cannot unwrap it");
        }
    }

    /* Refusals. */
    wlen = sizeof(wrapped);
    is_rv(p11->C_WrapKey(sess, &ms[1], pub, locked, wrapped, &wlen),
          CKR_KEY_UNEXTRACTABLE, "wrap an unextractable key");
    is_rv(p11->C_WrapKey(sess, &ms[1], 0x7ffffff0UL, dek, wrapped, &wlen),
          CKR_WRAPPING_KEY_HANDLE_INVALID, "invalid wrapping key handle");
    is_rv(p11->C_WrapKey(sess, &ms[1], pub, 0x7ffffff0UL, wrapped, &wlen),
          CKR_KEY_HANDLE_INVALID, "invalid key handle");
    is_rv(p11->C_WrapKey(sess, &ms[1], priv, dek, wrapped, &wlen),
          CKR_KEY_FUNCTION_NOT_PERMITTED, "wrap with the private key");
    is_rv(p11->C_WrapKey(sess, NULL, pub, dek, wrapped, &wlen),
          CKR_ARGUMENTS_BAD, "wrap NULL mechanism");
    {
        CK_OBJECT_HANDLE sop = p11_find(sess, CKO_PUBLIC_KEY, "sign-only");
        is_rv(p11->C_WrapKey(sess, &ms[1], sop, dek, wrapped, &wlen),
              CKR_KEY_FUNCTION_NOT_PERMITTED, "wrap with sign-only");
    }
    {
        CK_RSA_PKCS_OAEP_PARAMS bad = oaep_sha256;
        CK_MECHANISM bm = {CKM_RSA_PKCS_OAEP, &bad, sizeof(bad)};
        bad.hashAlg = CKM_MD5;
        is_rv(p11->C_WrapKey(sess, &bm, pub, dek, wrapped, &wlen),
              CKR_MECHANISM_PARAM_INVALID, "wrap with bad OAEP parameters");
        wlen = sizeof(wrapped);
        p11->C_WrapKey(sess, &ms[1], pub, dek, wrapped, &wlen);
        is_rv(p11->C_UnwrapKey(sess, &bm, priv, wrapped, wlen, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_MECHANISM_PARAM_INVALID, "unwrap with bad OAEP parameters");
    }
    is_rv(p11->C_UnwrapKey(sess, &ms[1], 0x7ffffff0UL, wrapped, wlen,
                           unwrap_tmpl, CMK_ARRAY_SIZE(unwrap_tmpl), &un),
          CKR_UNWRAPPING_KEY_HANDLE_INVALID, "invalid unwrapping key handle");
    {
        CK_OBJECT_HANDLE dis = p11_find(sess, CKO_PRIVATE_KEY, "disabled-key");
        CK_OBJECT_HANDLE so = p11_find(sess, CKO_PRIVATE_KEY, "sign-only");
        is_rv(p11->C_UnwrapKey(sess, &ms[1], dis, wrapped, wlen, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_KEY_FUNCTION_NOT_PERMITTED, "unwrap with disabled-key");
        is_rv(p11->C_UnwrapKey(sess, &ms[1], so, wrapped, wlen, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_KEY_FUNCTION_NOT_PERMITTED, "unwrap with sign-only");
    }
    is_rv(p11->C_UnwrapKey(sess, &ms[1], pub, wrapped, wlen, unwrap_tmpl,
                           CMK_ARRAY_SIZE(unwrap_tmpl), &un),
          CKR_KEY_FUNCTION_NOT_PERMITTED, "unwrap with the public key");
    is_rv(p11->C_UnwrapKey(sess, &ms[1], priv, NULL, wlen, unwrap_tmpl,
                           CMK_ARRAY_SIZE(unwrap_tmpl), &un),
          CKR_ARGUMENTS_BAD, "unwrap NULL wrapped key");
    {
        CK_ATTRIBUTE tok[3] = {{CKA_CLASS, &secret_class, sizeof(secret_class)},
                               {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
                               {CKA_TOKEN, &yes, sizeof(yes)}};
        is_rv(p11->C_UnwrapKey(sess, &ms[1], priv, wrapped, wlen, tok, 3, &un),
              CKR_TEMPLATE_INCONSISTENT, "unwrap into a token object");
        /* 2.40 table 10 footnote 5: no key type, and OAEP implies none. */
        is_rv(p11->C_UnwrapKey(sess, &ms[1], priv, wrapped, wlen, tok, 1, &un),
              CKR_TEMPLATE_INCOMPLETE, "unwrap without CKA_KEY_TYPE");
    }
    p11->C_DestroyObject(sess, dek);
    p11->C_DestroyObject(sess, locked);
}

static void test_aes_wrap(void)
{
    CK_OBJECT_HANDLE kek = p11_aes_key(sess, 16, false, true);
    CK_OBJECT_HANDLE dek = p11_aes_key(sess, 32, true, true);
    CK_MECHANISM mechs[] = {{CKM_AES_KEY_WRAP, NULL, 0},
                            {CKM_AES_KEY_WRAP_PAD, NULL, 0}};
    CK_BYTE wrapped[64];
    CK_ULONG wlen, i;
    CK_OBJECT_HANDLE un;

    ok(kek && dek, "AES KEK and data key");
    for (i = 0; i < 2; i++) {
        wlen = 0;
        is_rv(p11->C_WrapKey(sess, &mechs[i], kek, dek, NULL, &wlen), CKR_OK,
              "AES wrap length query");
        ok(wlen >= 40, "  at least 40");
        wlen = sizeof(wrapped);
        is_rv(p11->C_WrapKey(sess, &mechs[i], kek, dek, wrapped, &wlen), CKR_OK,
              "AES key wrap of an AES key");
        is_num(wlen, 40, "  40 bytes");
        un = 0;
        is_rv(p11->C_UnwrapKey(sess, &mechs[i], kek, wrapped, wlen, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_OK, "  unwrap");
        ok(p11_same_aes_key(sess, dek, un), "  the same key");
        p11->C_DestroyObject(sess, un);
        wrapped[9] ^= 4;
        is_rv(p11->C_UnwrapKey(sess, &mechs[i], kek, wrapped, wlen, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_WRAPPED_KEY_INVALID, "  corrupted");
    }
    p11->C_DestroyObject(sess, kek);
    p11->C_DestroyObject(sess, dek);
}

static CK_ULONG count_label(const char *label)
{
    CK_ATTRIBUTE t = {CKA_LABEL, (void *)label, strlen(label)};

    return p11_count(sess, &t, 1);
}

static void test_key_pair(void)
{
    CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048, small = 1024;
    CK_ATTRIBUTE pubt[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)},
                           {CKA_LABEL, (void *)"mock-key", 8}};
    CK_ATTRIBUTE privt[] = {{CKA_LABEL, (void *)"mock-key", 8}};
    CK_OBJECT_HANDLE npub = 0, npriv = 0, again;
    CK_SESSION_HANDLE ro = p11_open(0, false);
    CK_BYTE id2 = 0x02;
    CK_ATTRIBUTE by_id = {CKA_ID, &id2, 1};
    CK_OBJECT_HANDLE objs[4];
    CK_ULONG n = 0, len = 0;
    CK_BYTE *label, *m1, *m2;
    CK_BYTE ct[512], pt[512];
    CK_ULONG clen = sizeof(ct), plen = sizeof(pt);
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &oaep_sha256, sizeof(oaep_sha256)};

    /* Data wrapped under the current version before the rotation. */
    p11->C_EncryptInit(sess, &oaep, pub);
    p11->C_Encrypt(sess, (CK_BYTE *)"old data", 8, ct, &clen);

    is_rv(p11->C_GenerateKeyPair(ro, &m, pubt, 2, privt, 1, &npub, &npriv),
          CKR_SESSION_READ_ONLY, "C_GenerateKeyPair in an RO session");
    is_rv(p11->C_GenerateKeyPair(sess, NULL, pubt, 2, privt, 1, &npub, &npriv),
          CKR_ARGUMENTS_BAD, "NULL mechanism");
    is_rv(p11->C_GenerateKeyPair(sess, &m, pubt, 2, privt, 1, NULL, &npriv),
          CKR_ARGUMENTS_BAD, "NULL handle pointer");
    is_rv(p11->C_GenerateKeyPair(sess,
                                 &(CK_MECHANISM){CKM_EC_KEY_PAIR_GEN, NULL, 0},
                                 pubt, 2, privt, 1, &npub, &npriv),
          CKR_MECHANISM_INVALID, "CKM_EC_KEY_PAIR_GEN");
    pubt[0].pValue = &small;
    is_rv(p11->C_GenerateKeyPair(sess, &m, pubt, 2, privt, 1, &npub, &npriv),
          CKR_KEY_SIZE_RANGE, "1024 bits");
    pubt[0].pValue = &bits;
    is_num(count_label("mock-key"), 2, "one current pair before");

    is_rv(p11->C_GenerateKeyPair(sess, &m, pubt, 2, privt, 1, &npub, &npriv),
          CKR_OK, "C_GenerateKeyPair with label mock-key");
    ok(npub && npriv && npub != pub && npriv != priv, "new handles");
    is_num(p11_ulong(sess, npriv, CKA_CLASS), CKO_PRIVATE_KEY, "  private key");
    is_num(p11_ulong(sess, npub, CKA_CLASS), CKO_PUBLIC_KEY, "  public key");
    ok(p11_bool(sess, npriv, CKA_LOCAL) == 1, "  CKA_LOCAL");
    ok(p11_bool(sess, npriv, CKA_CMK_CURRENT) == 1, "  current");
    is_num(count_label("mock-key"), 2, "label mock-key: still one pair");
    is_num(count_label("mock-key@02"), 2, "the old current is mock-key@02");
    again = p11_find(sess, CKO_PRIVATE_KEY, "mock-key");
    is_num(again, npriv, "label mock-key now finds the new version");

    p11->C_FindObjectsInit(sess, &by_id, 1);
    p11->C_FindObjects(sess, objs, 4, &n);
    p11->C_FindObjectsFinal(sess);
    is_num(n, 2, "CKA_ID 02 finds the old pair");
    ok(n >= 1 && (objs[0] == priv || objs[0] == pub) &&
           (n < 2 || objs[1] == priv || objs[1] == pub),
       "  with the same handles as before");
    label = p11_attr(sess, priv, CKA_LABEL, &len);
    ok(label && len == 11 && memcmp(label, "mock-key@02", 11) == 0,
       "an old handle now reads label mock-key@02");
    free(label);
    ok(p11_bool(sess, priv, CKA_CMK_CURRENT) == 0, "  and is not current");
    m1 = p11_attr(sess, pub, CKA_MODULUS, &len);
    m2 = p11_attr(sess, npub, CKA_MODULUS, &n);
    ok(m1 && m2 && len == n && memcmp(m1, m2, len) != 0, "a different modulus");
    free(m1);
    free(m2);
    is_rv(p11->C_DecryptInit(sess, &oaep, priv), CKR_OK,
          "the old handle still decrypts");
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen), CKR_OK,
          "  data wrapped before the rotation");
    ok(plen == 8 && memcmp(pt, "old data", 8) == 0, "  plaintext");
    {
        CK_OBJECT_HANDLE dek = p11_aes_key(sess, 16, true, false), un = 0;
        CK_BYTE w[512];
        CK_ULONG wl = sizeof(w);
        is_rv(p11->C_WrapKey(sess, &oaep, npub, dek, w, &wl), CKR_OK,
              "wrap under the new version");
        is_rv(p11->C_UnwrapKey(sess, &oaep, npriv, w, wl, unwrap_tmpl,
                               CMK_ARRAY_SIZE(unwrap_tmpl), &un),
              CKR_OK, "  unwrap under the new version");
        ok(p11_same_aes_key(sess, dek, un), "  the same key");
    }
    {
        CK_ATTRIBUTE nt[] = {{CKA_LABEL, (void *)"brand-new", 9}};
        CK_OBJECT_HANDLE a = 0, b = 0;
        is_rv(p11->C_GenerateKeyPair(sess, &m, NULL, 0, nt, 1, &a, &b), CKR_OK,
              "C_GenerateKeyPair of a new key");
        is_num(count_label("brand-new"), 2, "  one pair labelled brand-new");
        is_num(count_label("mock-key"), 2, "  mock-key unchanged");
    }
    p11->C_CloseSession(ro);
}

static void test_session_objects(void)
{
    CK_SESSION_HANDLE a = p11_open(0, false), b = p11_open(0, false);
    CK_OBJECT_HANDLE ka, kb;
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &sk, sizeof(sk)};
    CK_OBJECT_HANDLE objs[16];
    CK_ULONG n = 0, vlen;
    CK_ATTRIBUTE v = {CKA_VALUE_LEN, &vlen, sizeof(vlen)};
    CK_SESSION_HANDLE keep = sess;

    sess = a;
    ka = p11_aes_key(a, 16, false, true);
    sess = b;
    kb = p11_aes_key(b, 16, false, true);
    sess = keep;
    ok(ka && kb, "a key in each session");
    p11->C_FindObjectsInit(b, &t, 1);
    p11->C_FindObjects(b, objs, 16, &n);
    p11->C_FindObjectsFinal(b);
    ok(n >= 2, "both visible");
    is_rv(p11->C_CloseSession(a), CKR_OK, "close the first session");
    is_rv(p11->C_GetAttributeValue(b, ka, &v, 1), CKR_OBJECT_HANDLE_INVALID,
          "its session object vanished");
    is_rv(p11->C_GetAttributeValue(b, kb, &v, 1), CKR_OK,
          "the other session's object remains");
    p11->C_FindObjectsInit(b, &t, 1);
    p11->C_FindObjects(b, objs, 16, &n);
    p11->C_FindObjectsFinal(b);
    is_num(n, 1, "one secret key left");
    p11->C_CloseSession(b);
}

/* C_CopyObject and C_SetAttributeValue with one attribute given twice,
 * and the one-way CKA_WRAP_WITH_TRUSTED (docs/attributes.md). */
static void test_policy(void)
{
    CK_OBJECT_HANDLE k = p11_aes_key(sess, 16, true, false), copy = 0;
    char a[] = "a", b[] = "b";
    CK_ATTRIBUTE two[] = {{CKA_LABEL, a, 1}, {CKA_LABEL, b, 1}};
    CK_ATTRIBUTE same[] = {{CKA_LABEL, a, 1}, {CKA_LABEL, a, 1}};
    CK_ATTRIBUTE wwt_on = {CKA_WRAP_WITH_TRUSTED, &yes, sizeof(yes)};
    CK_ATTRIBUTE wwt_off = {CKA_WRAP_WITH_TRUSTED, &no, sizeof(no)};
    CK_ATTRIBUTE trusted = {CKA_TRUSTED, &yes, sizeof(yes)};
    CK_ATTRIBUTE lbl = {CKA_LABEL, NULL, 0};

    ok(k != 0, "an extractable AES key");
    is_rv(p11->C_CopyObject(sess, k, two, 2, &copy), CKR_TEMPLATE_INCONSISTENT,
          "C_CopyObject with two labels");
    is_rv(p11->C_CopyObject(sess, k, same, 2, &copy), CKR_ACTION_PROHIBITED,
          "C_CopyObject with one label twice: not copyable");
    is_rv(p11->C_SetAttributeValue(sess, k, two, 2), CKR_TEMPLATE_INCONSISTENT,
          "C_SetAttributeValue with two labels");
    p11->C_GetAttributeValue(sess, k, &lbl, 1);
    is_num(lbl.ulValueLen, 0, "  the label is unchanged");
    is_rv(p11->C_SetAttributeValue(sess, k, same, 2), CKR_OK,
          "C_SetAttributeValue with one label twice");
    is_rv(p11->C_SetAttributeValue(sess, k, &trusted, 1),
          CKR_ATTRIBUTE_READ_ONLY, "CKA_TRUSTED cannot be set");
    is_rv(p11->C_SetAttributeValue(sess, k, &wwt_on, 1), CKR_OK,
          "CKA_WRAP_WITH_TRUSTED false to true");
    ok(p11_bool(sess, k, CKA_WRAP_WITH_TRUSTED) == 1, "  now true");
    is_rv(p11->C_SetAttributeValue(sess, k, &wwt_off, 1),
          CKR_ATTRIBUTE_READ_ONLY, "and not back to false");
    is_rv(p11->C_WrapKey(sess,
                         &(CK_MECHANISM){CKM_RSA_PKCS_OAEP, &oaep_sha256,
                                         sizeof(oaep_sha256)},
                         pub, k, NULL, &(CK_ULONG){0}),
          CKR_KEY_NOT_WRAPPABLE,
          "its length query under the untrusted public key");
    p11->C_DestroyObject(sess, k);
}

/* C_SetAttributeValue as the table in module/attrpolicy.c says: the
 * footnote-8 attributes change, with values of their kind; CKA_SENSITIVE
 * and CKA_EXTRACTABLE one way only (footnotes 11, 12); the rest, and
 * CKA_DERIVE (no key derives here), are read-only. */
static void test_set_table(void)
{
    CK_OBJECT_HANDLE k = p11_aes_key(sess, 16, true, false);
    CK_DATE date = {{'2', '0', '3', '0'}, {'0', '1'}, {'3', '1'}};
    CK_BYTE three[3] = {'2', '0', '3'};
    CK_ULONG four = 4;
    CK_ATTRIBUTE start = {CKA_START_DATE, &date, sizeof(date)};
    CK_ATTRIBUTE short_date = {CKA_START_DATE, three, sizeof(three)};
    CK_ATTRIBUTE wide_bool = {CKA_ENCRYPT, &four, sizeof(four)};
    CK_ATTRIBUTE no_label = {CKA_LABEL, NULL, 5};
    CK_ATTRIBUTE derive = {CKA_DERIVE, &yes, sizeof(yes)};
    CK_ATTRIBUTE local = {CKA_LOCAL, &no, sizeof(no)};
    CK_ATTRIBUTE sens_on = {CKA_SENSITIVE, &yes, sizeof(yes)};
    CK_ATTRIBUTE sens_off = {CKA_SENSITIVE, &no, sizeof(no)};
    CK_ATTRIBUTE ext_off = {CKA_EXTRACTABLE, &no, sizeof(no)};
    CK_ATTRIBUTE ext_on = {CKA_EXTRACTABLE, &yes, sizeof(yes)};
    CK_ATTRIBUTE check = {CKA_CHECK_VALUE, three, sizeof(three)};

    ok(k != 0, "an extractable AES key");
    is_rv(p11->C_SetAttributeValue(sess, k, &start, 1), CKR_OK,
          "CKA_START_DATE, a CK_DATE");
    is_rv(p11->C_SetAttributeValue(sess, k, &short_date, 1),
          CKR_ATTRIBUTE_VALUE_INVALID, "CKA_START_DATE of three bytes");
    is_rv(p11->C_SetAttributeValue(sess, k, &wide_bool, 1),
          CKR_ATTRIBUTE_VALUE_INVALID, "CKA_ENCRYPT of a CK_ULONG");
    is_rv(p11->C_SetAttributeValue(sess, k, &no_label, 1),
          CKR_ATTRIBUTE_VALUE_INVALID, "CKA_LABEL of 5 bytes at NULL");
    is_rv(p11->C_SetAttributeValue(sess, k, &derive, 1),
          CKR_ATTRIBUTE_READ_ONLY, "CKA_DERIVE");
    is_rv(p11->C_SetAttributeValue(sess, k, &local, 1), CKR_ATTRIBUTE_READ_ONLY,
          "CKA_LOCAL");
    is_rv(p11->C_SetAttributeValue(sess, k, &check, 1),
          CKR_ATTRIBUTE_TYPE_INVALID, "CKA_CHECK_VALUE, which it lacks");
    is_rv(p11->C_SetAttributeValue(sess, k, &ext_off, 1), CKR_OK,
          "CKA_EXTRACTABLE true to false");
    is_rv(p11->C_SetAttributeValue(sess, k, &ext_on, 1),
          CKR_ATTRIBUTE_READ_ONLY, "  and not back to true");
    is_rv(p11->C_SetAttributeValue(sess, k, &sens_on, 1), CKR_OK,
          "CKA_SENSITIVE false to true");
    is_rv(p11->C_SetAttributeValue(sess, k, &sens_off, 1),
          CKR_ATTRIBUTE_READ_ONLY, "  and not back to false");
    p11->C_DestroyObject(sess, k);
}

int main(void)
{
    char *conf;

    p11_load(NULL);
    conf = p11_write_file("keys.conf", MOCK_CONF);
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    sess = p11_open(0, true);
    priv = p11_find(sess, CKO_PRIVATE_KEY, "mock-key");
    pub = p11_find(sess, CKO_PUBLIC_KEY, "mock-key");
    pk = p11_public_key(sess, pub);
    if (!sess || !priv || !pub || !pk)
        test_bail("mock keys not found");
    test_generate_key();
    test_create_object();
    test_rsa_wrap();
    test_aes_wrap();
    test_session_objects();
    test_key_pair();
    test_policy();
    test_set_table();
    EVP_PKEY_free(pk);
    p11->C_CloseSession(sess);
    p11->C_Finalize(NULL);
    free(conf);
    return test_done();
}
