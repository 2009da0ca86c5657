/*
 * rsa-pkcs1-decrypt: CKM_RSA_PKCS decryption and unwrapping with implicit
 * rejection (the default), refuse and allow, through PKCS#11. Built twice:
 * tests/unit/test-pkcs1 on the mock back end and, with PKCS1_HSM,
 * tests/integration/test-hsm-pkcs1 on SoftHSM (the mock run sets refuse
 * globally, which its second token inherits). Ciphertexts are made with
 * OpenSSL from the public key; raw RSA (no padding) makes blocks with
 * exactly the padding faults wanted.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"
#ifdef PKCS1_HSM
#include "integration/hsm-setup.h"
#define KEY "kek"
#else
#define KEY "mock-key"
#endif

static EVP_PKEY *pk;
static size_t k;

/* in (k bytes for raw, or a message) encrypted with padding pad. */
static size_t enc(int pad, const unsigned char *in, size_t inlen,
                  unsigned char *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t olen = 1024;

    if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, pad) <= 0 ||
        EVP_PKEY_encrypt(ctx, out, &olen, in, inlen) <= 0)
        olen = 0;
    EVP_PKEY_CTX_free(ctx);
    return olen;
}

/* An encryption block 00 02 PS 00 M with ps_len bytes of padding (first
 * bytes as given by lead), encrypted raw. */
static size_t block(const unsigned char lead[2], size_t ps_len,
                    const unsigned char *m, size_t mlen, unsigned char *out)
{
    unsigned char em[1024];
    size_t i;

    if (2 + ps_len + 1 + mlen != k)
        return 0;
    em[0] = lead[0];
    em[1] = lead[1];
    RAND_bytes(em + 2, (int)ps_len);
    for (i = 2; i < 2 + ps_len; i++)
        em[i] |= em[i] == 0;
    em[2 + ps_len] = 0;
    memcpy(em + 3 + ps_len, m, mlen);
    return enc(RSA_NO_PADDING, em, k, out);
}

static CK_RV decrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                     const unsigned char *c, size_t clen, unsigned char *out,
                     CK_ULONG *outlen)
{
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    CK_RV rv = p11->C_DecryptInit(s, &m, priv);

    *outlen = 1024;
    if (rv != CKR_OK)
        return rv;
    return p11->C_Decrypt(s, (CK_BYTE *)c, (CK_ULONG)clen, out, outlen);
}

static CK_RV unwrap(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                    const unsigned char *c, size_t clen, CK_ULONG value_len,
                    unsigned char *value, CK_ULONG *vlen)
{
    static CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    static CK_KEY_TYPE kt = CKK_AES;
    static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
    };
    CK_OBJECT_HANDLE h = 0;
    CK_ATTRIBUTE a = {CKA_VALUE, value, 64};
    CK_RV rv;

    *vlen = 0;
    rv = p11->C_UnwrapKey(s, &m, priv, (CK_BYTE *)c, (CK_ULONG)clen, t,
                          value_len ? 6 : 5, &h);
    if (rv != CKR_OK)
        return rv;
    rv = p11->C_GetAttributeValue(s, h, &a, 1);
    *vlen = a.ulValueLen;
    p11->C_DestroyObject(s, h);
    return rv;
}

static void test_implicit(CK_SESSION_HANDLE s)
{
    static const unsigned char msg[] = "a message of 33 bytes, say, here";
    static const unsigned char ok02[2] = {0x00, 0x02}, ok01[2] = {0x00, 0x01};
    CK_OBJECT_HANDLE priv = p11_find(s, CKO_PRIVATE_KEY, KEY);
    unsigned char c[1024], c2[1024], out[1024], out2[1024], m[1024];
    unsigned char key[32], v[64], v2[64];
    CK_ULONG len, len2, vlen, vlen2;
    size_t clen, c2len;

    ok(priv != 0, "implicit rejection: the key " KEY);
    /* A valid ciphertext: the message. */
    clen = enc(RSA_PKCS1_PADDING, msg, sizeof(msg), c);
    is_rv(decrypt(s, priv, c, clen, out, &len), CKR_OK, "valid ciphertext");
    ok(len == sizeof(msg) && memcmp(out, msg, len) == 0, "  the message");
    /* The longest message: eight bytes of padding exactly. */
    RAND_bytes(m, (int)(k - 11));
    clen = block(ok02, 8, m, k - 11, c);
    is_rv(decrypt(s, priv, c, clen, out, &len), CKR_OK,
          "valid block, 8 bytes of padding");
    ok(len == k - 11 && memcmp(out, m, len) == 0, "  the %lu-byte message",
       (unsigned long)(k - 11));
    /* An empty message: the separator is the last byte. */
    clen = block(ok02, k - 3, m, 0, c);
    is_rv(decrypt(s, priv, c, clen, out, &len), CKR_OK, "valid empty message");
    is_num(len, 0, "  is empty");

    /* Seven bytes of padding: invalid, yet CKR_OK and a stable answer. */
    RAND_bytes(m, (int)(k - 10));
    clen = block(ok02, 7, m, k - 10, c);
    is_rv(decrypt(s, priv, c, clen, out, &len), CKR_OK,
          "7 bytes of padding: CKR_OK (implicit rejection)");
    is_rv(decrypt(s, priv, c, clen, out2, &len2), CKR_OK, "  again");
    ok(len == len2 && memcmp(out, out2, len) == 0, "  the same %lu bytes twice",
       (unsigned long)len);
    ok(len <= k - 11, "  no longer than a message can be");
    ok(len < 8 || memcmp(out, m + (k - 10 - len), len) != 0,
       "  not the bytes after the padding");
    /* 00 01 (a signature block): another pseudo-random answer. */
    RAND_bytes(m, (int)(k - 11));
    c2len = block(ok01, 8, m, k - 11, c2);
    is_rv(decrypt(s, priv, c2, c2len, out2, &len2), CKR_OK,
          "00 01 block: CKR_OK");
    ok(len != len2 || memcmp(out, out2, len) != 0,
       "  different bytes for a different ciphertext");
    /* A corrupted real ciphertext. */
    clen = enc(RSA_PKCS1_PADDING, msg, sizeof(msg), c);
    c[5] ^= 0x10;
    is_rv(decrypt(s, priv, c, clen, out, &len), CKR_OK,
          "corrupted ciphertext: CKR_OK");
    ok(len != sizeof(msg) || memcmp(out, msg, len) != 0, "  not the message");
    is_rv(decrypt(s, priv, c, clen, out2, &len2), CKR_OK, "  again");
    ok(len == len2 && memcmp(out, out2, len) == 0, "  the same bytes");
    /* What is public is still an error. */
    is_rv(decrypt(s, priv, c, clen - 1, out, &len),
          CKR_ENCRYPTED_DATA_LEN_RANGE, "a short ciphertext");
    memset(c, 0xff, k);
    is_rv(decrypt(s, priv, c, k, out, &len), CKR_ENCRYPTED_DATA_INVALID,
          "a ciphertext above the modulus");

    /* C_UnwrapKey: the template's length, always. */
    RAND_bytes(key, sizeof(key));
    clen = enc(RSA_PKCS1_PADDING, key, sizeof(key), c);
    is_rv(unwrap(s, priv, c, clen, 32, v, &vlen), CKR_OK,
          "unwrap a valid blob");
    ok(vlen == 32 && memcmp(v, key, 32) == 0, "  the key's value");
    is_rv(unwrap(s, priv, c, clen, 0, v, &vlen), CKR_TEMPLATE_INCOMPLETE,
          "unwrap without CKA_VALUE_LEN");
    is_rv(unwrap(s, priv, c, clen, 16, v, &vlen), CKR_OK,
          "a 32-byte key unwrapped as 16 bytes: CKR_OK");
    ok(vlen == 16 && memcmp(v, key, 16) != 0 && memcmp(v, key + 16, 16) != 0,
       "  16 pseudo-random bytes, none of the key's");
    RAND_bytes(m, (int)(k - 10));
    c2len = block(ok02, 7, m, k - 10, c2); /* 7 bytes of padding: invalid */
    is_rv(unwrap(s, priv, c2, c2len, 32, v, &vlen), CKR_OK,
          "unwrap a blob with invalid padding: CKR_OK");
    is_num(vlen, 32, "  a key of the requested 32 bytes");
    is_rv(unwrap(s, priv, c2, c2len, 32, v2, &vlen2), CKR_OK, "  again");
    ok(vlen2 == 32 && memcmp(v, v2, 32) == 0, "  the same value");
    {
        /* Without CKA_SENSITIVE and CKA_EXTRACTABLE: the defaults every
         * unwrap has (false, false). */
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_KEY_TYPE aes = CKK_AES;
        CK_ULONG vl = 32;
        CK_BBOOL sens = 0x55, ext = 0x55;
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_KEY_TYPE, &aes, sizeof(aes)},
            {CKA_VALUE_LEN, &vl, sizeof(vl)},
        };
        CK_ATTRIBUTE a[] = {
            {CKA_SENSITIVE, &sens, sizeof(sens)},
            {CKA_EXTRACTABLE, &ext, sizeof(ext)},
        };
        CK_MECHANISM m1 = {CKM_RSA_PKCS, NULL, 0};
        CK_OBJECT_HANDLE h = 0;
        is_rv(p11->C_UnwrapKey(s, &m1, priv, c, (CK_ULONG)clen, t, 3, &h),
              CKR_OK, "unwrap with a minimal template");
        is_rv(p11->C_GetAttributeValue(s, h, a, 2), CKR_OK, "  its flags");
        ok(sens == CK_FALSE && ext == CK_FALSE,
           "  not sensitive, not extractable (the shared defaults)");
        p11->C_DestroyObject(s, h);
    }
    c[7] ^= 1;
    is_rv(unwrap(s, priv, c, clen, 32, v2, &vlen2), CKR_OK,
          "unwrap a corrupted blob: CKR_OK");
    ok(vlen2 == 32 && memcmp(v, v2, 32) != 0 && memcmp(key, v2, 32) != 0,
       "  another value, not the key");
#ifdef PKCS1_HSM
    /* Raw RSA in SoftHSM needs CKA_DECRYPT on the lower key. */
    priv = p11_find(s, CKO_PRIVATE_KEY, "unwrap-only");
    is_rv(unwrap(s, priv, c, clen, 32, v, &vlen),
          CKR_KEY_FUNCTION_NOT_PERMITTED,
          "unwrap-only key (no raw RSA): CKR_KEY_FUNCTION_NOT_PERMITTED");
#endif
}

static void test_refuse(CK_SESSION_HANDLE s, CK_SLOT_ID slot)
{
    static const unsigned char msg[] = "refused";
    CK_OBJECT_HANDLE priv = p11_find(s, CKO_PRIVATE_KEY, KEY);
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    CK_MECHANISM_INFO mi;
    unsigned char c[1024], out[1024], v[64];
    CK_ULONG len, vlen;
    size_t clen = enc(RSA_PKCS1_PADDING, msg, sizeof(msg), c);

    is_rv(p11->C_GetMechanismInfo(slot, CKM_RSA_PKCS, &mi), CKR_OK,
          "refuse: C_GetMechanismInfo CKM_RSA_PKCS");
    ok(!(mi.flags & (CKF_DECRYPT | CKF_UNWRAP)),
       "  neither decrypt nor unwrap");
    ok((mi.flags & (CKF_ENCRYPT | CKF_SIGN)) == (CKF_ENCRYPT | CKF_SIGN),
       "  still encrypt and sign");
    is_rv(p11->C_DecryptInit(s, &m, priv), CKR_MECHANISM_INVALID,
          "refuse: C_DecryptInit CKM_RSA_PKCS");
    is_rv(unwrap(s, priv, c, clen, 16, v, &vlen), CKR_MECHANISM_INVALID,
          "refuse: C_UnwrapKey CKM_RSA_PKCS");
    (void)out;
    (void)len;
}

static void test_allow(CK_SESSION_HANDLE s)
{
    static const unsigned char msg[] = "allowed";
    CK_OBJECT_HANDLE priv = p11_find(s, CKO_PRIVATE_KEY, KEY);
    unsigned char c[1024], out[1024], v[64];
    CK_ULONG len, vlen;
    size_t clen = enc(RSA_PKCS1_PADDING, msg, sizeof(msg), c);

    is_rv(decrypt(s, priv, c, clen, out, &len), CKR_OK,
          "allow: valid ciphertext");
    ok(len == sizeof(msg) && memcmp(out, msg, len) == 0, "  the message");
    c[5] ^= 0x10;
    is_rv(decrypt(s, priv, c, clen, out, &len), CKR_ENCRYPTED_DATA_INVALID,
          "allow: invalid padding is CKR_ENCRYPTED_DATA_INVALID (the oracle)");
    is_rv(unwrap(s, priv, c, clen, 16, v, &vlen), CKR_WRAPPED_KEY_INVALID,
          "allow: unwrap of it is CKR_WRAPPED_KEY_INVALID");
}

int main(void)
{
    CK_SLOT_ID slots[3];
    CK_ULONG n = 3;
    CK_SESSION_HANDLE s;
    char text[2048], *conf;
#ifdef PKCS1_HSM
    char *pin;
    const char *tok = "backend = hsm\nmodule = /usr/lib/softhsm/libsofthsm2.so"
                      "\ntoken-label = cmk\npin-file = ";

    free(hsm_setup(NULL));
    pin = p11_write_file("pin", HSM_PIN "\n");
    snprintf(text, sizeof(text),
             "[cmkp11]\nlog-level = error\n\n[token dflt]\n%s%s\n\n"
             "[token refuse]\n%s%s\nrsa-pkcs1-decrypt = refuse\n\n"
             "[token allow]\n%s%s\nrsa-pkcs1-decrypt = allow\n",
             tok, pin, tok, pin, tok, pin);
    free(pin);
#else
    /* The global setting, which the second token inherits. */
    snprintf(text, sizeof(text),
             "[cmkp11]\nlog-level = error\nrsa-pkcs1-decrypt = refuse\n\n"
             "[token dflt]\nbackend = mock\n"
             "rsa-pkcs1-decrypt = implicit-rejection\n\n"
             "[token refuse]\nbackend = mock\n\n"
             "[token allow]\nbackend = mock\nrsa-pkcs1-decrypt = allow\n");
#endif
    conf = p11_write_file("pkcs1.conf", text);
#ifdef PKCS1_HSM
    p11_load(getenv("CMKP11_MODULE"));
#else
    p11_load(NULL);
#endif
    is_rv(p11_init(conf), CKR_OK, "C_Initialize");
    is_rv(p11->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK, "three slots");
    if (n != 3)
        test_bail("want three slots, got %lu", (unsigned long)n);
    s = p11_open(slots[0], true);
    pk = p11_public_key(s, p11_find(s, CKO_PUBLIC_KEY, KEY));
    if (pk == NULL)
        test_bail("no public key " KEY);
    k = (size_t)EVP_PKEY_get_size(pk);
    test_implicit(s);
    s = p11_open(slots[1], true);
    test_refuse(s, slots[1]);
    s = p11_open(slots[2], true);
    test_allow(s);
    EVP_PKEY_free(pk);
    p11->C_Finalize(NULL);
    free(conf);
    return test_done();
}
