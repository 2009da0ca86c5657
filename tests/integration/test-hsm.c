/*
 * The hsm back end against a real SoftHSMv2 token made for this run
 * (tests/softhsm-init.sh): versions, the main job (wrap and unwrap of AES
 * data keys with every OAEP variant and PKCS#1 v1.5), blobs made outside
 * the module, decrypt and sign checked with OpenSSL, and the error cases.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <glob.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "hsm-setup.h"
#include "p11.h"
#include "test.h"

static CK_SESSION_HANDLE sess;

static CK_OBJECT_HANDLE find_by_id(CK_OBJECT_CLASS cls, CK_BYTE id)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_ID, &id, 1},
    };
    CK_OBJECT_HANDLE h[4];
    CK_ULONG n = 0;

    if (p11->C_FindObjectsInit(sess, t, 2) != CKR_OK)
        return 0;
    p11->C_FindObjects(sess, h, 4, &n);
    p11->C_FindObjectsFinal(sess);
    return n == 1 ? h[0] : 0;
}

static const EVP_MD *md_of(CK_MECHANISM_TYPE h)
{
    switch (h) {
    case CKM_SHA_1:
        return EVP_sha1();
    case CKM_SHA224:
        return EVP_sha224();
    case CKM_SHA256:
        return EVP_sha256();
    case CKM_SHA384:
        return EVP_sha384();
    default:
        return EVP_sha512();
    }
}

static CK_RSA_PKCS_MGF_TYPE mgf_of(CK_MECHANISM_TYPE h)
{
    switch (h) {
    case CKM_SHA_1:
        return CKG_MGF1_SHA1;
    case CKM_SHA224:
        return CKG_MGF1_SHA224;
    case CKM_SHA256:
        return CKG_MGF1_SHA256;
    case CKM_SHA384:
        return CKG_MGF1_SHA384;
    default:
        return CKG_MGF1_SHA512;
    }
}

/* Encrypts with OpenSSL alone: what a consumer outside the module does. */
static size_t ossl_encrypt(EVP_PKEY *pk, CK_MECHANISM_TYPE hash, bool oaep,
                           const char *label, const unsigned char *in,
                           size_t inlen, unsigned char *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t olen = 512;

    EVP_PKEY_encrypt_init(ctx);
    if (oaep) {
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING);
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md_of(hash));
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md_of(hash));
        if (label != NULL)
            EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, OPENSSL_strdup(label),
                                             (int)strlen(label));
    } else {
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING);
    }
    if (EVP_PKEY_encrypt(ctx, out, &olen, in, inlen) <= 0)
        olen = 0;
    EVP_PKEY_CTX_free(ctx);
    return olen;
}

/* CKA_VALUE_LEN for unwrap() when not 0: CKM_RSA_PKCS needs it (implicit
 * rejection gives a key of that length whatever the padding). */
static CK_ULONG unwrap_len;

static CK_OBJECT_HANDLE unwrap(CK_OBJECT_HANDLE priv, CK_MECHANISM *m,
                               unsigned char *blob, CK_ULONG len,
                               bool extractable, CK_RV *rv)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE, ext = extractable, sens = !extractable;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &f, sizeof(f)},
        {CKA_ENCRYPT, &t, sizeof(t)},
        {CKA_DECRYPT, &t, sizeof(t)},
        {CKA_EXTRACTABLE, &ext, sizeof(ext)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_VALUE_LEN, &unwrap_len, sizeof(unwrap_len)},
    };
    CK_OBJECT_HANDLE h = 0;

    *rv = p11->C_UnwrapKey(sess, m, priv, blob, len, tmpl,
                           CMK_ARRAY_SIZE(tmpl) - (unwrap_len == 0), &h);
    return *rv == CKR_OK ? h : 0;
}

/* AES-GCM through the module: encrypt under a, decrypt under b. */
static bool same_key(CK_OBJECT_HANDLE a, CK_OBJECT_HANDLE b)
{
    CK_BYTE iv[12] = {1, 2, 3}, aad[4] = "hdr";
    CK_GCM_PARAMS gp = {iv, sizeof(iv), 96, aad, sizeof(aad), 128};
    CK_MECHANISM m = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_BYTE msg[] = "envelope-encrypted data", ct[128], pt[128];
    CK_ULONG clen = sizeof(ct), plen = sizeof(pt);

    if (p11->C_EncryptInit(sess, &m, a) != CKR_OK ||
        p11->C_Encrypt(sess, msg, sizeof(msg), ct, &clen) != CKR_OK ||
        p11->C_DecryptInit(sess, &m, b) != CKR_OK ||
        p11->C_Decrypt(sess, ct, clen, pt, &plen) != CKR_OK)
        return false;
    return plen == sizeof(msg) && memcmp(pt, msg, plen) == 0;
}

static void test_versions(void)
{
    CK_OBJECT_HANDLE cur = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_OBJECT_HANDLE old = p11_find(sess, CKO_PRIVATE_KEY, "kek@01");
    CK_BBOOL *flag;
    CK_BYTE *id;
    char *s;

    ok(cur != 0 && old != 0 && cur != old,
       "kek and kek@01 are two private key objects");
    id = p11_attr(sess, cur, CKA_ID, NULL);
    ok(id && id[0] == 0x02, "the label object kek is the version with id 02");
    free(id);
    id = p11_attr(sess, old, CKA_ID, NULL);
    ok(id && id[0] == 0x01, "kek@01 is the version with id 01");
    free(id);
    ok(find_by_id(CKO_PRIVATE_KEY, 0x01) == old, "id 01 finds kek@01");
    ok(find_by_id(CKO_PUBLIC_KEY, 0x02) ==
           p11_find(sess, CKO_PUBLIC_KEY, "kek"),
       "id 02 finds the public half of kek");
    s = p11_attr(sess, old, CKA_CMK_KEY_NAME, NULL);
    ok(s && strcmp(s, "kek") == 0, "kek@01 is a version of key kek");
    free(s);
    flag = p11_attr(sess, cur, CKA_CMK_CURRENT, NULL);
    ok(flag && *flag, "kek is current");
    free(flag);
    flag = p11_attr(sess, old, CKA_CMK_CURRENT, NULL);
    ok(flag && !*flag, "kek@01 is not current");
    free(flag);
    s = p11_attr(sess, cur, CKA_CMK_BACKEND, NULL);
    ok(s && strcmp(s, "hsm") == 0, "vendor attribute: back end hsm");
    free(s);
    flag = p11_attr(sess, p11_find(sess, CKO_PRIVATE_KEY, "disabled"),
                    CKA_CMK_ENABLED, NULL);
    ok(flag && !*flag, "a pair without unwrap and decrypt is disabled");
    free(flag);
    flag = p11_attr(sess, cur, CKA_EXTRACTABLE, NULL);
    ok(flag && !*flag, "private keys are not extractable");
    free(flag);
    {
        CK_ATTRIBUTE a = {CKA_PRIVATE_EXPONENT, NULL, 0};
        is_rv(p11->C_GetAttributeValue(sess, cur, &a, 1),
              CKR_ATTRIBUTE_SENSITIVE, "the private exponent");
    }
}

struct variant {
    CK_MECHANISM_TYPE mech, hash;
    const char *label;
    const char *name;
};

static const struct variant variants[] = {
    {CKM_RSA_PKCS_OAEP, CKM_SHA_1, NULL, "OAEP SHA-1"},
    {CKM_RSA_PKCS_OAEP, CKM_SHA256, NULL, "OAEP SHA-256"},
    {CKM_RSA_PKCS_OAEP, CKM_SHA256, "ctx", "OAEP SHA-256 with a label"},
    {CKM_RSA_PKCS_OAEP, CKM_SHA224, NULL, "OAEP SHA-224"},
    {CKM_RSA_PKCS_OAEP, CKM_SHA384, NULL, "OAEP SHA-384"},
    {CKM_RSA_PKCS_OAEP, CKM_SHA512, "x", "OAEP SHA-512 with a label"},
    {CKM_RSA_PKCS, 0, NULL, "PKCS#1 v1.5"},
};

static void mech_of(const struct variant *v, CK_MECHANISM *m,
                    CK_RSA_PKCS_OAEP_PARAMS *p)
{
    memset(p, 0, sizeof(*p));
    p->hashAlg = v->hash;
    p->mgf = mgf_of(v->hash);
    p->source = CKZ_DATA_SPECIFIED;
    p->pSourceData = (void *)v->label;
    p->ulSourceDataLen = v->label ? strlen(v->label) : 0;
    m->mechanism = v->mech;
    m->pParameter = v->mech == CKM_RSA_PKCS_OAEP ? p : NULL;
    m->ulParameterLen = v->mech == CKM_RSA_PKCS_OAEP ? sizeof(*p) : 0;
}

static void test_round_trips(void)
{
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_ULONG sizes[] = {16, 32};
    size_t i, j;

    for (i = 0; i < CMK_ARRAY_SIZE(variants); i++) {
        for (j = 0; j < 2; j++) {
            CK_RSA_PKCS_OAEP_PARAMS p;
            CK_MECHANISM m;
            CK_BYTE blob[512];
            CK_ULONG len = 0;
            CK_OBJECT_HANDLE dk = p11_aes_key(sess, sizes[j], true, true);
            CK_OBJECT_HANDLE back;
            CK_BBOOL *b;
            CK_RV rv;

            mech_of(&variants[i], &m, &p);
            rv = p11->C_WrapKey(sess, &m, pub, dk, NULL, &len);
            ok(rv == CKR_OK && len == 256, "%s: wrap length query (%lu)",
               variants[i].name, (unsigned long)len);
            len = sizeof(blob);
            rv = p11->C_WrapKey(sess, &m, pub, dk, blob, &len);
            is_rv(rv, CKR_OK, "wrap of a sensitive AES key");
            unwrap_len = m.mechanism == CKM_RSA_PKCS ? sizes[j] : 0;
            back = unwrap(priv, &m, blob, len, false, &rv);
            unwrap_len = 0;
            is_rv(rv, CKR_OK, "unwrap into the token");
            ok(same_key(dk, back),
               "%s AES-%lu: the unwrapped key decrypts what the original "
               "encrypted",
               variants[i].name, (unsigned long)sizes[j] * 8);
            b = p11_attr(sess, back, CKA_TOKEN, NULL);
            ok(b && !*b, "the unwrapped key is a session object");
            free(b);
            b = p11_attr(sess, back, CKA_SENSITIVE, NULL);
            ok(b && *b, "the unwrapped key is sensitive");
            free(b);
            p11->C_DestroyObject(sess, back);
            p11->C_DestroyObject(sess, dk);
        }
    }
}

static void test_external_blobs(void)
{
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    EVP_PKEY *pk = p11_public_key(sess, pub);
    size_t i;

    ok(pk != NULL, "CKA_PUBLIC_KEY_INFO gives OpenSSL the public key");
    for (i = 0; pk && i < CMK_ARRAY_SIZE(variants); i++) {
        CK_RSA_PKCS_OAEP_PARAMS p;
        CK_MECHANISM m;
        unsigned char key[32], blob[512];
        size_t blen;
        CK_OBJECT_HANDLE h;
        CK_ULONG vlen = 0;
        unsigned char *value;
        CK_RV rv;

        RAND_bytes(key, sizeof(key));
        blen = ossl_encrypt(pk, variants[i].hash,
                            variants[i].mech == CKM_RSA_PKCS_OAEP,
                            variants[i].label, key, sizeof(key), blob);
        mech_of(&variants[i], &m, &p);
        unwrap_len = m.mechanism == CKM_RSA_PKCS ? sizeof(key) : 0;
        h = unwrap(priv, &m, blob, (CK_ULONG)blen, true, &rv);
        unwrap_len = 0;
        is_rv(rv, CKR_OK, variants[i].name);
        value = p11_attr(sess, h, CKA_VALUE, &vlen);
        ok(value && vlen == 32 && memcmp(value, key, 32) == 0,
           "%s: a key wrapped by OpenSSL unwraps to the same bytes",
           variants[i].name);
        free(value);
        p11->C_DestroyObject(sess, h);
    }
    EVP_PKEY_free(pk);
}

/* What the token advertises, and parameters refused at Init (issue 18). */
static void test_truthful(CK_SLOT_ID slot)
{
    static const struct {
        CK_MECHANISM_TYPE m;
        CK_FLAGS flags;
        const char *name;
    } mi[] = {
        /* SoftHSM's own answers for these, with a zeroed structure. */
        {CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, "CKM_AES_GCM"},
        {CKM_AES_CBC_PAD, CKF_ENCRYPT | CKF_DECRYPT, "CKM_AES_CBC_PAD"},
        {CKM_AES_KEY_WRAP, CKF_WRAP | CKF_UNWRAP, "CKM_AES_KEY_WRAP"},
        {CKM_AES_KEY_GEN, CKF_GENERATE, "CKM_AES_KEY_GEN"},
        {CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE,
         "CKM_GENERIC_SECRET_KEY_GEN"},
    };
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA1, 32};
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256,
                                    CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM mp = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
    CK_MECHANISM raw = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    CK_MECHANISM mo = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_MECHANISM_INFO info;
    unsigned char sig[512], d[32] = {1};
    CK_ULONG siglen = sizeof(sig);
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(mi); i++) {
        memset(&info, 0xff, sizeof(info));
        is_rv(p11->C_GetMechanismInfo(slot, mi[i].m, &info), CKR_OK,
              mi[i].name);
        is_num(info.flags, mi[i].flags, "  %s: flags 0x%lx, no CKF_GENERATE",
               mi[i].name, (unsigned long)mi[i].flags);
    }

    is_rv(p11->C_SignInit(sess, &mp, priv), CKR_MECHANISM_PARAM_INVALID,
          "C_SignInit SHA256-RSA-PKCS-PSS with MGF1-SHA1");
    is_rv(p11->C_SignInit(sess, &raw, priv), CKR_MECHANISM_PARAM_INVALID,
          "C_SignInit RSA-PKCS-PSS with MGF1-SHA1");
    is_rv(p11->C_VerifyInit(sess, &mp, pub), CKR_MECHANISM_PARAM_INVALID,
          "C_VerifyInit SHA256-RSA-PKCS-PSS with MGF1-SHA1");
    pss.mgf = CKG_MGF1_SHA256;
    pss.sLen = 256 - 32 - 1; /* one more than a 2048-bit key holds */
    is_rv(p11->C_SignInit(sess, &mp, priv), CKR_MECHANISM_PARAM_INVALID,
          "C_SignInit PSS with a salt of 223 bytes (2048-bit key)");
    is_rv(p11->C_VerifyInit(sess, &mp, pub), CKR_MECHANISM_PARAM_INVALID,
          "C_VerifyInit PSS with a salt of 223 bytes");
    pss.sLen = 256 - 32 - 2;
    is_rv(p11->C_SignInit(sess, &raw, priv), CKR_OK,
          "C_SignInit PSS with the longest salt, 222 bytes");
    is_rv(p11->C_Sign(sess, d, sizeof(d), sig, &siglen), CKR_OK,
          "  and the signature is made");
    is_rv(p11->C_VerifyInit(sess, &raw, pub), CKR_OK, "  C_VerifyInit");
    is_rv(p11->C_Verify(sess, d, sizeof(d), sig, siglen), CKR_OK,
          "  it verifies");
    pss.sLen = 32;
    mp.ulParameterLen = sizeof(pss) - 1;
    is_rv(p11->C_SignInit(sess, &mp, priv), CKR_MECHANISM_PARAM_INVALID,
          "C_SignInit PSS with a short ulParameterLen");
    mp.ulParameterLen = sizeof(pss) + 8;
    is_rv(p11->C_VerifyInit(sess, &mp, pub), CKR_MECHANISM_PARAM_INVALID,
          "C_VerifyInit PSS with a long ulParameterLen");
    mo.ulParameterLen = sizeof(oaep) - 1;
    is_rv(p11->C_DecryptInit(sess, &mo, priv), CKR_MECHANISM_PARAM_INVALID,
          "C_DecryptInit OAEP with a short ulParameterLen");
    mo.ulParameterLen = sizeof(oaep);
    oaep.hashAlg = CKM_MD5;
    is_rv(p11->C_DecryptInit(sess, &mo, priv), CKR_MECHANISM_PARAM_INVALID,
          "C_DecryptInit OAEP with MD5");
}

/* SoftHSM's token file: rewritten in place at every lower C_Login. */
static long long token_file_stamp(const char *softhsm_dir)
{
    char pattern[600];
    struct stat st;
    glob_t gl;
    long long r = -1;

    snprintf(pattern, sizeof(pattern), "%s/tokens/*/token.object", softhsm_dir);
    if (glob(pattern, 0, NULL, &gl) == 0 && gl.gl_pathc == 1 &&
        stat(gl.gl_pathv[0], &st) == 0)
        r = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    globfree(&gl);
    return r;
}

/* One lower login per process (docs/hsm.md, "Login"): later C_Login and
 * C_Logout calls do not reach SoftHSM, whose file store rewrites the
 * token's file at each login. */
static void test_login_once(const char *softhsm_dir)
{
    long long before = token_file_stamp(softhsm_dir);
    int i;

    ok(before > 0, "SoftHSM's token.object is there");
    for (i = 0; i < 5; i++) {
        is_rv(p11->C_Logout(sess), CKR_OK, "C_Logout");
        ok(p11_find(sess, CKO_PRIVATE_KEY, "kek") == 0,
           "  private keys are hidden again");
        is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)"12345", 5),
              CKR_PIN_INCORRECT, "  a wrong PIN");
        is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)"123", 3),
              CKR_PIN_INCORRECT, "  a prefix of the PIN");
        ok(p11_find(sess, CKO_PRIVATE_KEY, "kek") == 0, "  still hidden");
        is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)"1234", 4), CKR_OK,
              "  the right PIN");
        ok(p11_find(sess, CKO_PRIVATE_KEY, "kek") != 0,
           "  private keys are visible");
    }
    {
        CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
        CK_BYTE sig[512];
        CK_ULONG len = sizeof(sig);
        is_rv(p11->C_SignInit(sess, &m, p11_find(sess, CKO_PRIVATE_KEY, "kek")),
              CKR_OK, "sign after the logins");
        is_rv(p11->C_Sign(sess, (CK_BYTE *)"x", 1, sig, &len), CKR_OK,
              "  signs");
    }
    is_num(token_file_stamp(softhsm_dir), before,
           "SoftHSM's token.object was not rewritten: no lower C_Login");
}

static void test_decrypt_sign(void)
{
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_RSA_PKCS_OAEP_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA256,
                                 CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM ms = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_MECHANISM mp = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
    EVP_PKEY *pk = p11_public_key(sess, pub);
    unsigned char msg[] = "customer-managed key", ct[512], pt[512], sig[512];
    CK_ULONG ptlen = sizeof(pt), siglen = sizeof(sig);
    size_t clen;
    EVP_MD_CTX *md;
    EVP_PKEY_CTX *pctx = NULL;

    clen = ossl_encrypt(pk, CKM_SHA256, true, NULL, msg, sizeof(msg), ct);
    is_rv(p11->C_DecryptInit(sess, &m, priv), CKR_OK, "decrypt init");
    is_rv(p11->C_Decrypt(sess, ct, (CK_ULONG)clen, pt, &ptlen), CKR_OK,
          "OAEP-SHA256 decrypt");
    ok(ptlen == sizeof(msg) && memcmp(pt, msg, ptlen) == 0,
       "decrypt gives back what OpenSSL encrypted");

    is_rv(p11->C_SignInit(sess, &ms, priv), CKR_OK, "sign init");
    is_rv(p11->C_Sign(sess, msg, sizeof(msg), sig, &siglen), CKR_OK,
          "SHA256-RSA-PKCS sign");
    md = EVP_MD_CTX_new();
    ok(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
           EVP_DigestVerify(md, sig, siglen, msg, sizeof(msg)) == 1,
       "OpenSSL verifies the PKCS#1 signature");
    EVP_MD_CTX_free(md);
    is_rv(p11->C_VerifyInit(sess, &ms, pub), CKR_OK, "verify init");
    is_rv(p11->C_Verify(sess, msg, sizeof(msg), sig, siglen), CKR_OK,
          "the module verifies it too");

    siglen = sizeof(sig);
    is_rv(p11->C_SignInit(sess, &mp, priv), CKR_OK, "PSS sign init");
    is_rv(p11->C_SignUpdate(sess, msg, 5), CKR_OK, "PSS sign update");
    is_rv(p11->C_SignUpdate(sess, msg + 5, sizeof(msg) - 5), CKR_OK,
          "PSS sign update");
    is_rv(p11->C_SignFinal(sess, sig, &siglen), CKR_OK, "PSS sign final");
    md = EVP_MD_CTX_new();
    ok(EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, pk) == 1 &&
           EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
           EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) == 1 &&
           EVP_DigestVerify(md, sig, siglen, msg, sizeof(msg)) == 1,
       "OpenSSL verifies the multi-part PSS signature");
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
}

static void test_errors(void)
{
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_RSA_PKCS_OAEP_PARAMS p1 = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED,
                                  NULL, 0};
    CK_RSA_PKCS_OAEP_PARAMS p2 = {CKM_SHA256, CKG_MGF1_SHA256,
                                  CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m1 = {CKM_RSA_PKCS_OAEP, &p1, sizeof(p1)};
    CK_MECHANISM m2 = {CKM_RSA_PKCS_OAEP, &p2, sizeof(p2)};
    CK_OBJECT_HANDLE dk = p11_aes_key(sess, 32, true, false);
    CK_BYTE blob[512], bad[512];
    CK_ULONG len = sizeof(blob);
    CK_SESSION_INFO si;
    CK_RV rv;

    is_rv(p11->C_WrapKey(sess, &m2, pub, dk, blob, &len), CKR_OK,
          "wrap a data key (OAEP-SHA256)");
    memcpy(bad, blob, len);
    bad[len / 2] ^= 0x40;
    unwrap(priv, &m2, bad, len, false, &rv);
    is_rv(rv, CKR_WRAPPED_KEY_INVALID, "a corrupted OAEP-SHA256 blob");
    unwrap(priv, &m2, blob, len - 10, false, &rv);
    is_rv(rv, CKR_WRAPPED_KEY_LEN_RANGE, "a truncated blob");
    len = sizeof(blob);
    is_rv(p11->C_WrapKey(sess, &m1, pub, dk, blob, &len), CKR_OK,
          "wrap a data key (OAEP-SHA1, done by the token)");
    memcpy(bad, blob, len);
    bad[3] ^= 0x01;
    unwrap(priv, &m1, bad, len, false, &rv);
    is_rv(rv, CKR_WRAPPED_KEY_INVALID, "a corrupted OAEP-SHA1 blob");
    is_rv(p11->C_GetSessionInfo(sess, &si), CKR_OK,
          "the session is still usable");
    ok(same_key(dk, unwrap(priv, &m1, blob, len, false, &rv)),
       "and the intact blob still unwraps");

    unwrap(p11_find(sess, CKO_PRIVATE_KEY, "dec-only"), &m1, blob, len, false,
           &rv);
    is_rv(rv, CKR_KEY_FUNCTION_NOT_PERMITTED,
          "unwrap with a key that lacks CKA_UNWRAP");
    unwrap(p11_find(sess, CKO_PRIVATE_KEY, "disabled"), &m1, blob, len, false,
           &rv);
    is_rv(rv, CKR_KEY_FUNCTION_NOT_PERMITTED, "unwrap with a disabled version");
    {
        CK_OBJECT_HANDLE uo = p11_find(sess, CKO_PRIVATE_KEY, "unwrap-only");
        CK_OBJECT_HANDLE uop = p11_find(sess, CKO_PUBLIC_KEY, "unwrap-only");
        len = sizeof(blob);
        p11->C_WrapKey(sess, &m2, uop, dk, blob, &len);
        unwrap(uo, &m2, blob, len, false, &rv);
        is_rv(rv, CKR_MECHANISM_PARAM_INVALID,
              "OAEP-SHA256 over raw RSA needs CKA_DECRYPT on the lower key");
        len = sizeof(blob);
        p11->C_WrapKey(sess, &m1, uop, dk, blob, &len);
        ok(same_key(dk, unwrap(uo, &m1, blob, len, false, &rv)),
           "while OAEP-SHA1, which the token does itself, works");
    }
}

/* A consumer outside the module: openssl pkeyutl with the public key. */
static void test_openssl_cli(void)
{
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_ULONG len = 0;
    unsigned char *der = p11_attr(sess, pub, CKA_PUBLIC_KEY_INFO, &len);
    const char *dir = p11_tmpdir();
    const char *hashes[] = {"sha1", "sha256", "sha384", "sha512"};
    CK_MECHANISM_TYPE h[] = {CKM_SHA_1, CKM_SHA256, CKM_SHA384, CKM_SHA512};
    char cmd[1024], path[512];
    unsigned char key[32], blob[512];
    FILE *f;
    size_t i, n;

    snprintf(path, sizeof(path), "%s/kek.der", dir);
    f = fopen(path, "wb");
    fwrite(der, 1, len, f);
    fclose(f);
    free(der);
    RAND_bytes(key, sizeof(key));
    snprintf(path, sizeof(path), "%s/dek.bin", dir);
    f = fopen(path, "wb");
    fwrite(key, 1, sizeof(key), f);
    fclose(f);
    for (i = 0; i < CMK_ARRAY_SIZE(hashes); i++) {
        CK_RSA_PKCS_OAEP_PARAMS p = {h[i], mgf_of(h[i]), CKZ_DATA_SPECIFIED,
                                     NULL, 0};
        CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
        CK_OBJECT_HANDLE k;
        unsigned char *value;
        CK_ULONG vlen = 0;
        CK_RV rv;

        snprintf(cmd, sizeof(cmd),
                 "openssl pkeyutl -encrypt -pubin -keyform DER -inkey "
                 "%s/kek.der -in %s/dek.bin -out %s/dek.%s -pkeyopt "
                 "rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:%s -pkeyopt "
                 "rsa_mgf1_md:%s",
                 dir, dir, dir, hashes[i], hashes[i], hashes[i]);
        ok(system(cmd) == 0, "openssl pkeyutl wraps with OAEP-%s", hashes[i]);
        snprintf(path, sizeof(path), "%s/dek.%s", dir, hashes[i]);
        f = fopen(path, "rb");
        n = f ? fread(blob, 1, sizeof(blob), f) : 0;
        if (f)
            fclose(f);
        k = unwrap(priv, &m, blob, (CK_ULONG)n, true, &rv);
        value = p11_attr(sess, k, CKA_VALUE, &vlen);
        ok(rv == CKR_OK && value && vlen == 32 && !memcmp(value, key, 32),
           "cmkp11 unwraps the openssl pkeyutl blob (OAEP-%s)", hashes[i]);
        free(value);
    }
}

static void test_rotation(void)
{
    CK_OBJECT_HANDLE old = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_OBJECT_HANDLE oldpub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    CK_OBJECT_HANDLE pub = 0, priv = 0, cur;
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_RSA_PKCS_OAEP_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA256,
                                 CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
    char kek[] = "kek";
    CK_ATTRIBUTE lt[] = {{CKA_LABEL, kek, 3}};
    CK_OBJECT_HANDLE dk = p11_aes_key(sess, 32, true, false);
    CK_BYTE blob[512];
    CK_ULONG len = sizeof(blob);
    char *label;
    CK_BYTE *id;
    CK_RV rv;

    p11->C_WrapKey(sess, &m, oldpub, dk, blob, &len);
    rv = p11->C_GenerateKeyPair(sess, &gen, lt, 1, lt, 1, &pub, &priv);
    is_rv(rv, CKR_OK, "a new version of kek");
    cur = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    ok(cur == priv && cur != old, "the label now names the new version");
    label = p11_attr(sess, old, CKA_LABEL, NULL);
    ok(label && strcmp(label, "kek@02") == 0,
       "the old handle keeps its version, relabelled kek@02 (%s)",
       label ? label : "?");
    free(label);
    id = p11_attr(sess, old, CKA_ID, NULL);
    ok(id && id[0] == 0x02, "and keeps its CKA_ID");
    free(id);
    ok(same_key(dk, unwrap(old, &m, blob, len, false, &rv)),
       "data wrapped under the old version unwraps through its object");
}

int main(void)
{
    char dir[512], *conf;
    CK_SLOT_ID slots[4];
    CK_ULONG n = 4;
    CK_TOKEN_INFO ti;

    conf = hsm_setup(NULL);
    snprintf(dir, sizeof(dir), "%s/softhsm", p11_tmpdir());
    p11_load(getenv("CMKP11_MODULE"));
    is_rv(p11_init(conf), CKR_OK, "C_Initialize with an hsm token");
    is_rv(p11->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK, "slot list");
    is_num(n, 1, "one slot");
    is_rv(p11->C_GetTokenInfo(slots[0], &ti), CKR_OK, "token info");
    ok(memcmp(ti.label, "local ", 6) == 0, "the token label is the section");
    ok(ti.flags & CKF_LOGIN_REQUIRED, "SoftHSM requires a login");
    sess = p11_open(slots[0], true);
    ok(p11_find(sess, CKO_PRIVATE_KEY, "kek") == 0,
       "private keys are hidden before login");
    ok(p11_find(sess, CKO_PUBLIC_KEY, "kek") != 0, "public keys are not");
    is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)"9999", 4),
          CKR_PIN_INCORRECT, "a wrong PIN");
    is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)"1234", 4), CKR_OK,
          "the right PIN, after a wrong one, on the same session");

    test_login_once(dir);
    test_versions();
    test_round_trips();
    test_external_blobs();
    test_decrypt_sign();
    test_truthful(slots[0]);
    test_errors();
    test_openssl_cli();
    test_rotation();

    is_rv(p11->C_CloseSession(sess), CKR_OK, "close");
    is_rv(p11->C_Finalize(NULL), CKR_OK, "finalize");
    free(conf);
    return test_done();
}
