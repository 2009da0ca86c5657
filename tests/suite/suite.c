/*
 * One behavioural suite for every back end, in the manner of p11-kit's
 * test-mock.c (run against its proxy, rpc and log modules): the same
 * checks, through the PKCS#11 interface only, against
 *
 *   suite-mock      the mock back end (cmkp11-test.so, [token] backend = mock)
 *   suite-hsm       a SoftHSMv2 token (cmkp11.so, backend = hsm)
 *   suite-keyvault  the Key Vault emulator (cmkp11.so, backend = keyvault)
 *
 * One program; the name it runs under (tests/Makefile.am links the three
 * names to it) chooses the back end and its set-up. Where the back ends
 * legitimately differ, the difference is a capability flag in the table
 * below, and the check then asserts the other, documented result: nothing
 * is skipped.
 *
 * The expected codes are the PKCS#11 Base Specification's (2.40; 3.0 says
 * the same for these functions): section 5.2 for output in a
 * variable-length buffer (a NULL buffer asks for the length; a short one
 * is CKR_BUFFER_TOO_SMALL with the length needed; neither ends the
 * operation, a result or an error does), 5.7 for C_GetAttributeValue, and
 * each function's list of return values.
 */
#include "config.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "hsm-setup.h"
#include "kv-setup.h"
#include "p11.h"
#include "test.h"

/* The token requires C_Login with a user PIN (CKF_LOGIN_REQUIRED): its
 * private objects are invisible before it. Without it, C_Login as a user
 * has nothing to check and the session shows the user's state at once. */
#define CAP_LOGIN 0x1
/* C_Login as CKU_SO reaches a PIN check: the lower token's SO on hsm
 * tokens; the mock's, which refuses every SO PIN (tests/unit/test-sessions).
 * Keyvault tokens have no SO (docs/attributes.md): CKR_USER_TYPE_INVALID. */
#define CAP_SO 0x2
/* C_SetAttributeValue changes the application's secret keys (4.9:
 * CKA_SENSITIVE only to true, CKA_EXTRACTABLE only to false). Without it,
 * the lower token holds them (hsm tokens) and cmkp11 refuses every change
 * with CKR_ACTION_PROHIBITED (module/object.c), although the key reads
 * CKA_MODIFIABLE true from the lower token. */
#define CAP_SECRET_SET 0x4

/* HMAC-SHA256 signs with generic secrets shorter than 32 bytes, as RFC
 * 4231's test cases 1 and 2 need (20 and 4 bytes). Without it (hsm tokens
 * on SoftHSM 2.6: its SHA256-HMAC takes keys of 32 to 512 bytes) the
 * lower token refuses them: CKR_KEY_SIZE_RANGE, at C_Sign, where the
 * lower token's C_SignInit runs. */
#define CAP_HMAC_SHORT 0x8
/* CKM_SHA256_HMAC_GENERAL is offered (the module's own HMAC); SoftHSM
 * has none, so hsm tokens answer CKR_MECHANISM_INVALID. */
#define CAP_HMAC_GENERAL 0x10

/* CKA_TOKEN true makes a secret key a token object of the back end
 * (PROVIDER_TOKEN_SECRET_KEYS: hsm tokens, in the lower token; docs/hsm.md,
 * "Token secret keys"). Without it: CKR_TEMPLATE_INCONSISTENT, session keys
 * only (docs/attributes.md). */
#define CAP_TOKEN_SECRET 0x20

struct backend {
    const char *name;   /* the program's name is "suite-" name */
    const char *module; /* the environment variable naming the module */
    const char *key;    /* the label of the CMK's current version */
    const char *pin;    /* the user PIN */
    unsigned caps;
    char *(*setup)(void); /* returns the configuration's path */
};

static char *mock_setup(void)
{
    return p11_write_file("cmkp11.conf", "[cmkp11]\nlog-level = error\n\n"
                                         "[token mock]\nbackend = mock\n"
                                         "pin = 1234\n");
}

static char *hsm_suite_setup(void)
{
    return hsm_setup(NULL);
}

static char *kv_suite_setup(void)
{
    kv_start();
    kv_admin("create-key kvemu kek");
    /* Token secret keys are wrapped under kek (docs/keyvault.md). */
    return kv_conf("wrapping-key = kek\n");
}

static const struct backend backends[] = {
    {"mock", "CMKP11_TEST_MODULE", "mock-key", "1234",
     CAP_LOGIN | CAP_SO | CAP_SECRET_SET | CAP_HMAC_SHORT | CAP_HMAC_GENERAL,
     mock_setup},
    {"hsm", "CMKP11_MODULE", "kek", HSM_PIN,
     CAP_LOGIN | CAP_SO | CAP_TOKEN_SECRET, hsm_suite_setup},
    /* No pin-file: any PIN logs in (docs/keyvault.md). */
    {"keyvault", "CMKP11_MODULE", "kek", "",
     CAP_SECRET_SET | CAP_HMAC_SHORT | CAP_HMAC_GENERAL | CAP_TOKEN_SECRET,
     kv_suite_setup},
};

static const struct backend *be;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE sess;
static CK_OBJECT_HANDLE priv, pub;
static EVP_PKEY *pk;

static CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
static CK_KEY_TYPE aes_type = CKK_AES;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_RSA_PKCS_OAEP_PARAMS oaep256 = {CKM_SHA256, CKG_MGF1_SHA256,
                                          CKZ_DATA_SPECIFIED, NULL, 0};
static CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &oaep256, sizeof(oaep256)};

#define BAD_HANDLE 0x7777777UL

static bool has(unsigned cap)
{
    return (be->caps & cap) != 0;
}

static bool ossl_verify(const CK_BYTE *data, size_t len, const CK_BYTE *sig,
                        size_t siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool good = ctx != NULL &&
                EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pk) > 0 &&
                EVP_DigestVerify(ctx, sig, siglen, data, len) == 1;

    EVP_MD_CTX_free(ctx);
    return good;
}

/* An AES session key (32 bytes) made in the module; extra: more
 * attributes (n of them). */
static CK_RV gen_aes(CK_ATTRIBUTE *extra, CK_ULONG n, CK_OBJECT_HANDLE *h)
{
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[8] = {{CKA_VALUE_LEN, &len, sizeof(len)},
                         {CKA_TOKEN, &no, sizeof(no)}};

    if (n > 6)
        test_bail("gen_aes: too many attributes");
    if (n > 0)
        memcpy(&t[2], extra, n * sizeof(*extra));
    return p11->C_GenerateKey(sess, &m, t, n + 2, h);
}

/* The template of an unwrapped AES key whose value the test may read. */
static CK_ATTRIBUTE readable_aes[] = {
    {CKA_CLASS, &secret_class, sizeof(secret_class)},
    {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
    {CKA_TOKEN, &no, sizeof(no)},
    {CKA_SENSITIVE, &no, sizeof(no)},
    {CKA_EXTRACTABLE, &yes, sizeof(yes)},
};

static void test_sessions(void)
{
    CK_SESSION_HANDLE h = 0;
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;

    is_rv(p11->C_OpenSession(slot, CKF_RW_SESSION, NULL, NULL, &h),
          CKR_SESSION_PARALLEL_NOT_SUPPORTED,
          "C_OpenSession without CKF_SERIAL_SESSION");
    is_rv(p11->C_OpenSession(BAD_HANDLE, CKF_SERIAL_SESSION, NULL, NULL, &h),
          CKR_SLOT_ID_INVALID, "C_OpenSession on a slot that is not there");
    is_rv(p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, NULL),
          CKR_ARGUMENTS_BAD, "C_OpenSession with a NULL handle pointer");
    is_rv(p11->C_GetTokenInfo(slot, &ti), CKR_OK, "C_GetTokenInfo");
    is_num(!!(ti.flags & CKF_LOGIN_REQUIRED), has(CAP_LOGIN),
           "CKF_LOGIN_REQUIRED %s", has(CAP_LOGIN) ? "set" : "clear");

    sess = p11_open(slot, true);
    ok(sess != 0, "C_OpenSession R/W");
    is_rv(p11->C_GetSessionInfo(sess, &si), CKR_OK, "C_GetSessionInfo");
    is_num(si.state, CKS_RW_PUBLIC_SESSION, "  state before C_Login");
    is_num(si.slotID, slot, "  the slot");
    is_rv(p11->C_Logout(sess), CKR_USER_NOT_LOGGED_IN,
          "C_Logout before C_Login");
    is_rv(p11->C_Login(sess, 7, NULL, 0), CKR_USER_TYPE_INVALID,
          "C_Login as user type 7");
    is_rv(p11->C_Login(sess, CKU_USER, NULL, 0), CKR_ARGUMENTS_BAD,
          "C_Login with a NULL PIN (no protected authentication path)");
    is_rv(p11->C_Login(sess, CKU_SO, (CK_UTF8CHAR *)"00000000", 8),
          has(CAP_SO) ? CKR_PIN_INCORRECT : CKR_USER_TYPE_INVALID,
          "C_Login as the SO with a wrong PIN");
    is_num(p11_find(sess, CKO_PRIVATE_KEY, be->key) != 0, !has(CAP_LOGIN),
           "the private key %s before C_Login",
           has(CAP_LOGIN) ? "is not found" : "is found");
    if (has(CAP_LOGIN)) {
        is_rv(p11->C_Logout(sess), CKR_USER_NOT_LOGGED_IN,
              "C_Logout before C_Login");
    }
    is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)"0000", 4),
          has(CAP_LOGIN) ? CKR_PIN_INCORRECT : CKR_OK,
          "C_Login with another PIN");
    if (!has(CAP_LOGIN))
        p11->C_Logout(sess);
    is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)be->pin, strlen(be->pin)),
          CKR_OK, "C_Login as the user");
    is_rv(p11->C_Login(sess, CKU_USER, (CK_UTF8CHAR *)be->pin, strlen(be->pin)),
          CKR_USER_ALREADY_LOGGED_IN, "C_Login again");
    is_rv(p11->C_GetSessionInfo(sess, &si), CKR_OK, "C_GetSessionInfo");
    is_num(si.state, CKS_RW_USER_FUNCTIONS, "  state after C_Login");

    h = p11_open(slot, false);
    is_rv(p11->C_GetSessionInfo(h, &si), CKR_OK,
          "a R/O session opened after C_Login");
    is_num(si.state, CKS_RO_USER_FUNCTIONS, "  shares the login");
    is_rv(p11->C_CloseSession(h), CKR_OK, "C_CloseSession");
    is_rv(p11->C_CloseSession(h), CKR_SESSION_HANDLE_INVALID,
          "C_CloseSession again");
    is_rv(p11->C_GetSessionInfo(h, &si), CKR_SESSION_HANDLE_INVALID,
          "C_GetSessionInfo on the closed session");
    is_rv(p11->C_GetSessionInfo(sess, NULL), CKR_ARGUMENTS_BAD,
          "C_GetSessionInfo with a NULL pointer");
}

static void test_objects(void)
{
    CK_BYTE buf[512];
    CK_ATTRIBUTE a = {CKA_MODULUS, NULL, 0};
    CK_ATTRIBUTE two[2] = {{CKA_LABEL, buf, sizeof(buf)},
                           {CKA_PRIVATE_EXPONENT, buf, sizeof(buf)}};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};

    priv = p11_find(sess, CKO_PRIVATE_KEY, be->key);
    pub = p11_find(sess, CKO_PUBLIC_KEY, be->key);
    ok(priv != 0 && pub != 0, "the CMK's private and public key by label");
    pk = pub ? p11_public_key(sess, pub) : NULL;
    if (pk == NULL)
        test_bail("no public key for %s", be->key);
    is_num(EVP_PKEY_get_bits(pk), 2048, "CKA_PUBLIC_KEY_INFO: RSA-2048");
    /* Stamped by the front end on every back end's key versions. */
    is_num(p11_ulong(sess, priv, CKA_CMK_MIN_BITS), 2048,
           "CKA_CMK_MIN_BITS: min-key-bits, 2048 by default");
    is_num(p11_ulong(sess, pub, CKA_CMK_MIN_BITS), 2048,
           "  on the public key too");

    is_rv(p11->C_GetAttributeValue(sess, priv, &a, 1), CKR_OK,
          "CKA_MODULUS length query");
    is_num(a.ulValueLen, 256, "  256 bytes");
    a.pValue = buf;
    a.ulValueLen = 255;
    is_rv(p11->C_GetAttributeValue(sess, priv, &a, 1), CKR_BUFFER_TOO_SMALL,
          "CKA_MODULUS into 255 bytes");
    is_num(a.ulValueLen, CK_UNAVAILABLE_INFORMATION,
           "  length CK_UNAVAILABLE_INFORMATION");
    is_rv(p11->C_GetAttributeValue(sess, priv, two, 2), CKR_ATTRIBUTE_SENSITIVE,
          "CKA_LABEL and CKA_PRIVATE_EXPONENT");
    is_num(two[0].ulValueLen, strlen(be->key), "  the label is returned");
    ok(memcmp(buf, be->key, strlen(be->key)) == 0, "  its bytes");
    is_num(two[1].ulValueLen, CK_UNAVAILABLE_INFORMATION,
           "  the exponent is CK_UNAVAILABLE_INFORMATION");
    a.type = CKA_VALUE_LEN;
    a.ulValueLen = sizeof(buf);
    is_rv(p11->C_GetAttributeValue(sess, priv, &a, 1),
          CKR_ATTRIBUTE_TYPE_INVALID, "CKA_VALUE_LEN of an RSA key");
    is_num(a.ulValueLen, CK_UNAVAILABLE_INFORMATION,
           "  length CK_UNAVAILABLE_INFORMATION");
    is_rv(p11->C_GetAttributeValue(sess, BAD_HANDLE, &a, 1),
          CKR_OBJECT_HANDLE_INVALID, "C_GetAttributeValue: a bad handle");
    is_rv(p11->C_GetAttributeValue(sess, priv, NULL, 1), CKR_ARGUMENTS_BAD,
          "C_GetAttributeValue: a NULL template");
    is_rv(p11->C_GetAttributeValue(BAD_HANDLE, priv, &a, 1),
          CKR_SESSION_HANDLE_INVALID, "C_GetAttributeValue: a bad session");

    is_rv(p11->C_FindObjects(sess, found, 4, &n), CKR_OPERATION_NOT_INITIALIZED,
          "C_FindObjects without C_FindObjectsInit");
    is_rv(p11->C_FindObjectsFinal(sess), CKR_OPERATION_NOT_INITIALIZED,
          "C_FindObjectsFinal without C_FindObjectsInit");
    is_rv(p11->C_FindObjectsInit(sess, &t, 1), CKR_OK, "C_FindObjectsInit");
    is_rv(p11->C_FindObjectsInit(sess, &t, 1), CKR_OPERATION_ACTIVE,
          "C_FindObjectsInit again");
    is_rv(p11->C_FindObjects(sess, found, 4, NULL), CKR_ARGUMENTS_BAD,
          "C_FindObjects with a NULL count");
    is_rv(p11->C_FindObjects(sess, found, 4, &n), CKR_OK, "C_FindObjects");
    ok(n >= 1, "  finds the private keys (%lu)", n);
    is_rv(p11->C_FindObjectsFinal(sess), CKR_OK, "C_FindObjectsFinal");
    is_rv(p11->C_FindObjectsInit(sess, NULL, 1), CKR_ARGUMENTS_BAD,
          "C_FindObjectsInit with a NULL template");
    is_rv(p11->C_DestroyObject(sess, BAD_HANDLE), CKR_OBJECT_HANDLE_INVALID,
          "C_DestroyObject: a bad handle");
}

static void test_attribute_policy(void)
{
    CK_OBJECT_HANDLE h = 0;
    CK_BYTE val[64];
    CK_ATTRIBUTE v = {CKA_VALUE, val, sizeof(val)};
    CK_ATTRIBUTE set = {CKA_SENSITIVE, &no, sizeof(no)};
    CK_ATTRIBUTE twice[2] = {{CKA_SENSITIVE, &yes, sizeof(yes)},
                             {CKA_SENSITIVE, &no, sizeof(no)}};
    CK_ATTRIBUTE trusted = {CKA_TRUSTED, &yes, sizeof(yes)};
    CK_BYTE label[] = "x";

    /* The CMK's private key: sensitive, not extractable, not modifiable
     * (4.4: CKA_MODIFIABLE false makes an object read-only; 5.7 names
     * CKR_ACTION_PROHIBITED for it). */
    is_num(p11_bool(sess, priv, CKA_SENSITIVE), 1, "CMK: CKA_SENSITIVE true");
    is_num(p11_bool(sess, priv, CKA_EXTRACTABLE), 0,
           "CMK: CKA_EXTRACTABLE false");
    is_num(p11_bool(sess, priv, CKA_MODIFIABLE), 0,
           "CMK: CKA_MODIFIABLE false");
    is_rv(p11->C_SetAttributeValue(sess, priv, &set, 1), CKR_ACTION_PROHIBITED,
          "CMK: CKA_SENSITIVE set to false");
    set.type = CKA_LABEL;
    set.pValue = label;
    set.ulValueLen = 1;
    is_rv(p11->C_SetAttributeValue(sess, priv, &set, 1), CKR_ACTION_PROHIBITED,
          "CMK: CKA_LABEL set");
    set.type = CKA_EXTRACTABLE;
    set.ulValueLen = sizeof(CK_BBOOL);
    is_num(p11_bool(sess, pub, CKA_TRUSTED), 0, "CMK public key: not trusted");

    /* A new secret key's defaults (docs/attributes.md). */
    is_rv(gen_aes(NULL, 0, &h), CKR_OK, "C_GenerateKey AES-256");
    is_num(p11_bool(sess, h, CKA_SENSITIVE), 0, "  CKA_SENSITIVE false");
    is_num(p11_bool(sess, h, CKA_EXTRACTABLE), 0, "  CKA_EXTRACTABLE false");
    is_num(p11_ulong(sess, h, CKA_VALUE_LEN), 32, "  CKA_VALUE_LEN 32");
    is_rv(p11->C_GetAttributeValue(sess, h, &v, 1), CKR_ATTRIBUTE_SENSITIVE,
          "  CKA_VALUE of an unextractable key");
    set.pValue = &yes;
    is_rv(p11->C_SetAttributeValue(sess, h, &set, 1),
          has(CAP_SECRET_SET) ? CKR_ATTRIBUTE_READ_ONLY : CKR_ACTION_PROHIBITED,
          "  CKA_EXTRACTABLE false to true");
    set.type = CKA_SENSITIVE;
    is_rv(p11->C_SetAttributeValue(sess, h, &set, 1),
          has(CAP_SECRET_SET) ? CKR_OK : CKR_ACTION_PROHIBITED,
          "  CKA_SENSITIVE false to true");
    is_num(p11_bool(sess, h, CKA_SENSITIVE), has(CAP_SECRET_SET),
           "  CKA_SENSITIVE %s", has(CAP_SECRET_SET) ? "true" : "unchanged");
    set.pValue = &no;
    is_rv(p11->C_SetAttributeValue(sess, h, &set, 1),
          has(CAP_SECRET_SET) ? CKR_ATTRIBUTE_READ_ONLY : CKR_ACTION_PROHIBITED,
          "  CKA_SENSITIVE true to false");
    is_rv(p11->C_SetAttributeValue(sess, h, twice, 2),
          CKR_TEMPLATE_INCONSISTENT, "  one attribute set to two values");
    is_rv(p11->C_DestroyObject(sess, h), CKR_OK, "  C_DestroyObject");
    is_rv(p11->C_DestroyObject(sess, h), CKR_OBJECT_HANDLE_INVALID,
          "  C_DestroyObject again");

    is_rv(gen_aes(twice, 2, &h), CKR_TEMPLATE_INCONSISTENT,
          "C_GenerateKey: one attribute given two values");
    twice[1].pValue = &yes;
    is_rv(gen_aes(twice, 2, &h), CKR_OK,
          "C_GenerateKey: the same value given twice");
    p11->C_DestroyObject(sess, h);
    /* 4.1.2 table 10 footnote 11: only the SO sets CKA_TRUSTED true. */
    is_rv(gen_aes(&trusted, 1, &h), CKR_ATTRIBUTE_READ_ONLY,
          "C_GenerateKey: CKA_TRUSTED true outside an SO session");
    is_rv(p11->C_Login(sess, CKU_SO, (CK_UTF8CHAR *)"12345678", 8),
          CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
          "C_Login as the SO while the user is logged in");
}

static void test_wrap_unwrap(void)
{
    CK_BYTE blob[512], val[64], junk[256];
    CK_ULONG len = 0, vlen;
    CK_OBJECT_HANDLE dek = 0, back = 0, ne = 0, wwt = 0;
    CK_ATTRIBUTE ext = {CKA_EXTRACTABLE, &yes, sizeof(yes)};
    CK_ATTRIBUTE ww[2] = {{CKA_EXTRACTABLE, &yes, sizeof(yes)},
                          {CKA_WRAP_WITH_TRUSTED, &yes, sizeof(yes)}};
    CK_MECHANISM x509 = {CKM_RSA_X_509, NULL, 0};
    CK_ATTRIBUTE no_type[] = {
        {CKA_CLASS, &secret_class, sizeof(secret_class)},
        {CKA_TOKEN, &no, sizeof(no)},
    };
    long i, rounds = test_scale(10), good = 0;

    is_rv(gen_aes(&ext, 1, &dek), CKR_OK, "an extractable AES key");
    is_rv(p11->C_WrapKey(sess, &oaep, pub, dek, NULL, &len), CKR_OK,
          "C_WrapKey length query");
    is_num(len, 256, "  256 bytes");
    len = 255;
    is_rv(p11->C_WrapKey(sess, &oaep, pub, dek, blob, &len),
          CKR_BUFFER_TOO_SMALL, "C_WrapKey into 255 bytes");
    is_num(len, 256, "  asks for 256");
    len = sizeof(blob);
    is_rv(p11->C_WrapKey(sess, &oaep, pub, dek, blob, &len), CKR_OK,
          "C_WrapKey under the CMK (OAEP SHA-256)");
    is_num(len, 256, "  256 bytes");
    is_rv(p11->C_UnwrapKey(sess, &oaep, priv, blob, len, readable_aes,
                           CMK_ARRAY_SIZE(readable_aes), &back),
          CKR_OK, "C_UnwrapKey with the CMK");
    vlen = p11_ulong(sess, back, CKA_VALUE_LEN);
    is_num(vlen, 32, "  a 32-byte key");
    ok(p11_same_aes_key(sess, dek, back),
       "  encrypts what the wrapped key decrypts (AES-GCM)");
    p11->C_DestroyObject(sess, back);

    /* Wrapped outside the module, unwrapped inside, value compared. */
    for (i = 0; i < rounds; i++) {
        CK_BYTE key[32];
        CK_ATTRIBUTE va = {CKA_VALUE, val, sizeof(val)};

        memset(key, (int)(0x11 * (i + 1)), sizeof(key));
        key[0] = (CK_BYTE)i;
        len = p11_oaep_wrap(pk, EVP_sha256(), key, sizeof(key), blob);
        back = 0;
        if (len == 256 &&
            p11->C_UnwrapKey(sess, &oaep, priv, blob, len, readable_aes,
                             CMK_ARRAY_SIZE(readable_aes), &back) == CKR_OK &&
            p11->C_GetAttributeValue(sess, back, &va, 1) == CKR_OK &&
            va.ulValueLen == 32 && memcmp(val, key, 32) == 0)
            good++;
        p11->C_DestroyObject(sess, back);
    }
    is_num(good, rounds, "%ld keys wrapped by OpenSSL unwrap to their value",
           rounds);

    /* What may not be wrapped (docs/attributes.md). */
    is_rv(gen_aes(NULL, 0, &ne), CKR_OK, "an unextractable AES key");
    len = sizeof(blob);
    is_rv(p11->C_WrapKey(sess, &oaep, pub, ne, blob, &len),
          CKR_KEY_UNEXTRACTABLE, "  C_WrapKey refuses it");
    is_rv(gen_aes(ww, 2, &wwt), CKR_OK, "a CKA_WRAP_WITH_TRUSTED key");
    len = 0;
    is_rv(p11->C_WrapKey(sess, &oaep, pub, wwt, NULL, &len),
          CKR_KEY_NOT_WRAPPABLE, "  its length query under an untrusted key");
    len = sizeof(blob);
    is_rv(p11->C_WrapKey(sess, &oaep, pub, wwt, blob, &len),
          CKR_KEY_NOT_WRAPPABLE, "  C_WrapKey under an untrusted key");
    ww[1].pValue = &no;
    is_rv(p11->C_SetAttributeValue(sess, wwt, &ww[1], 1),
          has(CAP_SECRET_SET) ? CKR_ATTRIBUTE_READ_ONLY : CKR_ACTION_PROHIBITED,
          "  CKA_WRAP_WITH_TRUSTED true to false");
    p11->C_DestroyObject(sess, ne);
    p11->C_DestroyObject(sess, wwt);

    /* Bad handles and arguments. */
    len = sizeof(blob);
    is_rv(p11->C_WrapKey(sess, &oaep, BAD_HANDLE, dek, blob, &len),
          CKR_WRAPPING_KEY_HANDLE_INVALID, "C_WrapKey: a bad wrapping key");
    is_rv(p11->C_WrapKey(sess, &oaep, pub, BAD_HANDLE, blob, &len),
          CKR_KEY_HANDLE_INVALID, "C_WrapKey: a bad key");
    is_rv(p11->C_WrapKey(sess, NULL, pub, dek, blob, &len), CKR_ARGUMENTS_BAD,
          "C_WrapKey: a NULL mechanism");
    is_rv(p11->C_WrapKey(sess, &oaep, pub, dek, blob, NULL), CKR_ARGUMENTS_BAD,
          "C_WrapKey: a NULL length");
    len = p11_oaep_wrap(pk, EVP_sha256(), val, 32, blob);
    is_rv(p11->C_UnwrapKey(sess, &oaep, BAD_HANDLE, blob, len, readable_aes,
                           CMK_ARRAY_SIZE(readable_aes), &back),
          CKR_UNWRAPPING_KEY_HANDLE_INVALID,
          "C_UnwrapKey: a bad unwrapping key");
    is_rv(p11->C_UnwrapKey(sess, &oaep, priv, blob, len, readable_aes,
                           CMK_ARRAY_SIZE(readable_aes), NULL),
          CKR_ARGUMENTS_BAD, "C_UnwrapKey: a NULL handle pointer");
    is_rv(p11->C_UnwrapKey(sess, &oaep, priv, blob, 255, readable_aes,
                           CMK_ARRAY_SIZE(readable_aes), &back),
          CKR_WRAPPED_KEY_LEN_RANGE, "C_UnwrapKey: 255 bytes");
    is_rv(p11->C_UnwrapKey(sess, &oaep, priv, blob, len, no_type,
                           CMK_ARRAY_SIZE(no_type), &back),
          CKR_TEMPLATE_INCOMPLETE, "C_UnwrapKey: no CKA_KEY_TYPE");
    is_rv(p11->C_UnwrapKey(sess, &x509, priv, blob, len, readable_aes,
                           CMK_ARRAY_SIZE(readable_aes), &back),
          CKR_MECHANISM_INVALID, "C_UnwrapKey: CKM_RSA_X_509");
    /* Below the modulus, but no OAEP block. */
    memset(junk, 0x01, sizeof(junk));
    is_rv(p11->C_UnwrapKey(sess, &oaep, priv, junk, sizeof(junk), readable_aes,
                           CMK_ARRAY_SIZE(readable_aes), &back),
          CKR_WRAPPED_KEY_INVALID, "C_UnwrapKey: not an OAEP block");
    p11->C_DestroyObject(sess, dek);
}

static void test_decrypt(void)
{
    static const CK_BYTE secret[32] = "thirty-two bytes of a data key!";
    CK_BYTE ct[512], pt[512], junk[256];
    CK_ULONG clen = p11_oaep_wrap(pk, EVP_sha256(), secret, sizeof(secret), ct),
             plen;
    CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
    CK_MECHANISM bare = {CKM_RSA_PKCS_OAEP, NULL, 0};

    is_num(clen, 256, "OpenSSL encrypts under the CMK");
    plen = sizeof(pt);
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen),
          CKR_OPERATION_NOT_INITIALIZED, "C_Decrypt without C_DecryptInit");
    is_rv(p11->C_DecryptInit(sess, &oaep, priv), CKR_OK,
          "C_DecryptInit OAEP SHA-256");
    is_rv(p11->C_DecryptInit(sess, &oaep, priv), CKR_OPERATION_ACTIVE,
          "C_DecryptInit again");
    plen = 0;
    is_rv(p11->C_Decrypt(sess, ct, clen, NULL, &plen), CKR_OK,
          "C_Decrypt length query");
    ok(plen >= sizeof(secret) && plen <= 256, "  room for the plaintext (%lu)",
       plen);
    plen = 8;
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen), CKR_BUFFER_TOO_SMALL,
          "C_Decrypt into 8 bytes");
    ok(plen >= sizeof(secret) && plen <= 256, "  asks for room (%lu)", plen);
    plen = sizeof(pt);
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen), CKR_OK, "C_Decrypt");
    ok(plen == sizeof(secret) && memcmp(pt, secret, plen) == 0,
       "  the plaintext OpenSSL encrypted");
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen),
          CKR_OPERATION_NOT_INITIALIZED, "  the operation ended with it");

    p11->C_DecryptInit(sess, &oaep, priv);
    plen = sizeof(pt);
    is_rv(p11->C_Decrypt(sess, ct, 255, pt, &plen),
          CKR_ENCRYPTED_DATA_LEN_RANGE, "C_Decrypt: 255 bytes");
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen),
          CKR_OPERATION_NOT_INITIALIZED, "  the error ended the operation");
    memset(junk, 0x01, sizeof(junk));
    p11->C_DecryptInit(sess, &oaep, priv);
    is_rv(p11->C_Decrypt(sess, junk, sizeof(junk), pt, &plen),
          CKR_ENCRYPTED_DATA_INVALID, "C_Decrypt: not an OAEP block");

    is_rv(p11->C_DecryptInit(sess, &oaep, BAD_HANDLE), CKR_KEY_HANDLE_INVALID,
          "C_DecryptInit: a bad key");
    is_rv(p11->C_DecryptInit(sess, &gcm, priv), CKR_KEY_TYPE_INCONSISTENT,
          "C_DecryptInit: AES-GCM with an RSA key");
    is_rv(p11->C_DecryptInit(sess, &bare, priv), CKR_MECHANISM_PARAM_INVALID,
          "C_DecryptInit: OAEP without parameters");
    is_rv(p11->C_DecryptInit(sess, NULL, priv), CKR_ARGUMENTS_BAD,
          "C_DecryptInit: a NULL mechanism");
    /* 5.1: a key whose attributes do not allow the use. */
    is_rv(p11->C_DecryptInit(sess, &oaep, pub), CKR_KEY_FUNCTION_NOT_PERMITTED,
          "C_DecryptInit: the public key");
}

static void test_sign(void)
{
    static const CK_BYTE data[] = "the data the CMK signs";
    CK_BYTE sig[512];
    CK_ULONG slen = 0;
    CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_RSA_PKCS_PSS_PARAMS pp = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM pss = {CKM_SHA256_RSA_PKCS_PSS, &pp, sizeof(pp)};

    is_rv(p11->C_Sign(sess, (CK_BYTE *)data, sizeof(data), NULL, &slen),
          CKR_OPERATION_NOT_INITIALIZED, "C_Sign without C_SignInit");
    is_rv(p11->C_SignInit(sess, &m, priv), CKR_OK,
          "C_SignInit SHA256-RSA-PKCS");
    is_rv(p11->C_SignInit(sess, &m, priv), CKR_OPERATION_ACTIVE,
          "C_SignInit again");
    is_rv(p11->C_Sign(sess, (CK_BYTE *)data, sizeof(data), NULL, &slen), CKR_OK,
          "C_Sign length query");
    is_num(slen, 256, "  256 bytes");
    slen = 100;
    is_rv(p11->C_Sign(sess, (CK_BYTE *)data, sizeof(data), sig, &slen),
          CKR_BUFFER_TOO_SMALL, "C_Sign into 100 bytes");
    is_num(slen, 256, "  asks for 256");
    slen = sizeof(sig);
    is_rv(p11->C_Sign(sess, (CK_BYTE *)data, sizeof(data), sig, &slen), CKR_OK,
          "C_Sign");
    ok(slen == 256 && ossl_verify(data, sizeof(data), sig, slen),
       "  OpenSSL verifies the signature");
    is_rv(p11->C_Sign(sess, (CK_BYTE *)data, sizeof(data), sig, &slen),
          CKR_OPERATION_NOT_INITIALIZED, "  the operation ended with it");

    is_rv(p11->C_VerifyInit(sess, &m, pub), CKR_OK, "C_VerifyInit");
    is_rv(p11->C_Verify(sess, (CK_BYTE *)data, sizeof(data), sig, 256), CKR_OK,
          "C_Verify the signature");
    p11->C_VerifyInit(sess, &m, pub);
    is_rv(p11->C_Verify(sess, (CK_BYTE *)data, sizeof(data) - 1, sig, 256),
          CKR_SIGNATURE_INVALID, "C_Verify other data");
    p11->C_VerifyInit(sess, &m, pub);
    is_rv(p11->C_Verify(sess, (CK_BYTE *)data, sizeof(data), sig, 255),
          CKR_SIGNATURE_LEN_RANGE, "C_Verify 255 bytes");

    is_rv(p11->C_SignInit(sess, &pss, priv), CKR_OK, "C_SignInit PSS SHA-256");
    slen = sizeof(sig);
    is_rv(p11->C_Sign(sess, (CK_BYTE *)data, sizeof(data), sig, &slen), CKR_OK,
          "C_Sign PSS");
    p11->C_VerifyInit(sess, &pss, pub);
    is_rv(p11->C_Verify(sess, (CK_BYTE *)data, sizeof(data), sig, slen), CKR_OK,
          "  C_Verify PSS");

    is_rv(p11->C_SignInit(sess, &m, BAD_HANDLE), CKR_KEY_HANDLE_INVALID,
          "C_SignInit: a bad key");
    is_rv(p11->C_SignInit(sess, &m, pub), CKR_KEY_FUNCTION_NOT_PERMITTED,
          "C_SignInit: the public key");
    is_rv(p11->C_SignInit(BAD_HANDLE, &m, priv), CKR_SESSION_HANDLE_INVALID,
          "C_SignInit: a bad session");
}

/* A new key: the same on every back end (docs/hsm.md, docs/keyvault.md:
 * a new label makes a new key, in the lower token or the vault). */
static void test_key_pair(void)
{
    static const char label[] = "suite-new";
    CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ULONG bits = 2048;
    CK_ATTRIBUTE pubt[] = {{CKA_LABEL, (void *)label, strlen(label)},
                           {CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    CK_ATTRIBUTE privt[] = {{CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE npub = 0, npriv = 0, back = 0;
    CK_BYTE key[32], blob[512], val[64];
    CK_ATTRIBUTE va = {CKA_VALUE, val, sizeof(val)};
    EVP_PKEY *npk;
    CK_ULONG len;

    is_rv(p11->C_GenerateKeyPair(sess, &m, pubt, 2, privt, 1, NULL, &npriv),
          CKR_ARGUMENTS_BAD, "C_GenerateKeyPair: a NULL handle pointer");
    is_rv(p11->C_GenerateKeyPair(sess, &m, pubt, 2, privt, 1, &npub, &npriv),
          CKR_OK, "C_GenerateKeyPair: a new key");
    ok(npub != 0 && npriv != 0, "  two handles");
    ok(p11_find(sess, CKO_PRIVATE_KEY, label) == npriv &&
           p11_find(sess, CKO_PUBLIC_KEY, label) == npub,
       "  found by its label");
    is_num(p11_bool(sess, npriv, CKA_SENSITIVE), 1, "  sensitive");
    is_num(p11_bool(sess, npriv, CKA_EXTRACTABLE), 0, "  not extractable");
    npk = p11_public_key(sess, npub);
    is_num(npk ? EVP_PKEY_get_bits(npk) : 0, 2048, "  RSA-2048");
    ok(npk != NULL && EVP_PKEY_eq(npk, pk) != 1, "  not the CMK's key");
    memset(key, 0x5a, sizeof(key));
    len = npk ? p11_oaep_wrap(npk, EVP_sha256(), key, sizeof(key), blob) : 0;
    is_rv(p11->C_UnwrapKey(sess, &oaep, npriv, blob, len, readable_aes,
                           CMK_ARRAY_SIZE(readable_aes), &back),
          CKR_OK, "  unwraps what OpenSSL wrapped under it");
    ok(p11->C_GetAttributeValue(sess, back, &va, 1) == CKR_OK &&
           va.ulValueLen == 32 && memcmp(val, key, 32) == 0,
       "  to the value wrapped");
    p11->C_DestroyObject(sess, back);
    EVP_PKEY_free(npk);
}

/* RFC 4231 (HMAC-SHA-256 test vectors): test cases 1, 2, 5 (truncated to
 * 128 bits) and 6 (a key longer than the block). */
static struct {
    const char *name;
    CK_BYTE key[131];
    CK_ULONG key_len;
    const char *data;
    CK_BYTE mac[32];
    CK_ULONG mac_len;
} rfc4231[] = {
    {"RFC 4231 test case 1",
     {0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b,
      0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b},
     20,
     "Hi There",
     {0xb0, 0x34, 0x4c, 0x61, 0xd8, 0xdb, 0x38, 0x53, 0x5c, 0xa8, 0xaf,
      0xce, 0xaf, 0x0b, 0xf1, 0x2b, 0x88, 0x1d, 0xc2, 0x00, 0xc9, 0x83,
      0x3d, 0xa7, 0x26, 0xe9, 0x37, 0x6c, 0x2e, 0x32, 0xcf, 0xf7},
     32},
    {"RFC 4231 test case 2",
     {'J', 'e', 'f', 'e'},
     4,
     "what do ya want for nothing?",
     {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
      0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27,
      0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43},
     32},
    {"RFC 4231 test case 5",
     {0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c,
      0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c},
     20,
     "Test With Truncation",
     {0xa3, 0xb6, 0x16, 0x74, 0x73, 0x10, 0x0e, 0xe0, 0x6e, 0x0c, 0x79, 0x6c,
      0x29, 0x55, 0x55, 0x2b},
     16},
    {"RFC 4231 test case 6",
     {0}, /* 131 bytes of 0xaa, set in test_hmac */
     131,
     "Test Using Larger Than Block-Size Key - Hash Key First",
     {0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f, 0x0d, 0x8a, 0x26,
      0xaa, 0xcb, 0xf5, 0xb7, 0x7f, 0x8e, 0x0b, 0xc6, 0x21, 0x37, 0x28,
      0xc5, 0x14, 0x05, 0x46, 0x04, 0x0f, 0x0e, 0xe3, 0x7f, 0x54},
     32},
};

/* is_rv with a formatted description. */
#define is_rvf(got, want, ...)                                                 \
    do {                                                                       \
        char what_[200];                                                       \
        snprintf(what_, sizeof(what_), __VA_ARGS__);                           \
        is_rv((got), (want), what_);                                           \
    } while (0)

/* A generic secret session key with this value, for HMAC (CKA_SIGN and
 * CKA_VERIFY default to false: docs/attributes.md). */
static CK_RV hmac_key(const CK_BYTE *value, CK_ULONG len, bool usage,
                      CK_OBJECT_HANDLE *h)
{
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret_class, sizeof(secret_class)},
        {CKA_KEY_TYPE, &gen, sizeof(gen)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_VALUE, (void *)value, len},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_VERIFY, &yes, sizeof(yes)},
    };

    return p11->C_CreateObject(sess, t, usage ? 6 : 4, h);
}

/* One test case: C_Sign (length query, short buffer, result), multi-part
 * signing, C_Verify and C_VerifyUpdate/Final, a changed MAC, a MAC one
 * byte short. */
static void hmac_case(size_t i)
{
    CK_ULONG general_len = rfc4231[i].mac_len;
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE *data = (CK_BYTE *)rfc4231[i].data, mac[64];
    CK_ULONG dlen = strlen(rfc4231[i].data), mlen, want = 32;
    CK_OBJECT_HANDLE k = 0;
    const char *name = rfc4231[i].name;
    bool truncated = rfc4231[i].mac_len < 32;

    if (truncated) {
        m.mechanism = CKM_SHA256_HMAC_GENERAL;
        m.pParameter = &general_len;
        m.ulParameterLen = sizeof(general_len);
        want = general_len;
    }
    is_rvf(hmac_key(rfc4231[i].key, rfc4231[i].key_len, true, &k), CKR_OK,
           "%s: C_CreateObject of a %lu-byte generic secret", name,
           rfc4231[i].key_len);
    if (truncated && !has(CAP_HMAC_GENERAL)) {
        is_rvf(p11->C_SignInit(sess, &m, k), CKR_MECHANISM_INVALID,
               "%s: CKM_SHA256_HMAC_GENERAL is not offered", name);
        p11->C_DestroyObject(sess, k);
        return;
    }
    is_rvf(p11->C_SignInit(sess, &m, k), CKR_OK, "%s: C_SignInit", name);
    if (rfc4231[i].key_len < 32 && !has(CAP_HMAC_SHORT)) {
        mlen = sizeof(mac);
        is_rvf(p11->C_Sign(sess, data, dlen, mac, &mlen), CKR_KEY_SIZE_RANGE,
               "%s: the lower token refuses a key under 32 bytes", name);
        p11->C_DestroyObject(sess, k);
        return;
    }
    mlen = 0;
    is_rvf(p11->C_Sign(sess, data, dlen, NULL, &mlen), CKR_OK,
           "%s: C_Sign length query", name);
    is_num(mlen, want, "  %lu bytes", want);
    mlen = want - 1;
    is_rvf(p11->C_Sign(sess, data, dlen, mac, &mlen), CKR_BUFFER_TOO_SMALL,
           "  C_Sign into %lu bytes", want - 1);
    is_num(mlen, want, "  asks for %lu", want);
    mlen = sizeof(mac);
    is_rvf(p11->C_Sign(sess, data, dlen, mac, &mlen), CKR_OK, "  C_Sign");
    ok(mlen == rfc4231[i].mac_len &&
           memcmp(mac, rfc4231[i].mac, rfc4231[i].mac_len) == 0,
       "  the RFC's MAC");

    memset(mac, 0, sizeof(mac));
    p11->C_SignInit(sess, &m, k);
    is_rvf(p11->C_SignUpdate(sess, data, 3), CKR_OK, "  C_SignUpdate, 3 bytes");
    is_rvf(p11->C_SignUpdate(sess, data + 3, dlen - 3), CKR_OK,
           "  C_SignUpdate, the rest");
    mlen = sizeof(mac);
    is_rvf(p11->C_SignFinal(sess, mac, &mlen), CKR_OK, "  C_SignFinal");
    ok(mlen == rfc4231[i].mac_len &&
           memcmp(mac, rfc4231[i].mac, rfc4231[i].mac_len) == 0,
       "  the RFC's MAC in parts");

    is_rvf(p11->C_VerifyInit(sess, &m, k), CKR_OK, "  C_VerifyInit");
    is_rvf(p11->C_Verify(sess, data, dlen, (CK_BYTE *)rfc4231[i].mac, want),
           CKR_OK, "  C_Verify the RFC's MAC");
    p11->C_VerifyInit(sess, &m, k);
    p11->C_VerifyUpdate(sess, data, 5);
    p11->C_VerifyUpdate(sess, data + 5, dlen - 5);
    is_rvf(p11->C_VerifyFinal(sess, (CK_BYTE *)rfc4231[i].mac, want), CKR_OK,
           "  C_VerifyUpdate, C_VerifyFinal");
    memcpy(mac, rfc4231[i].mac, want);
    mac[want - 1] ^= 0x01;
    p11->C_VerifyInit(sess, &m, k);
    is_rvf(p11->C_Verify(sess, data, dlen, mac, want), CKR_SIGNATURE_INVALID,
           "  C_Verify a MAC with its last bit changed");
    p11->C_VerifyInit(sess, &m, k);
    is_rvf(p11->C_Verify(sess, data, dlen, (CK_BYTE *)rfc4231[i].mac, want - 1),
           CKR_SIGNATURE_LEN_RANGE, "  C_Verify a MAC one byte short");
    is_rvf(p11->C_Verify(sess, data, dlen, (CK_BYTE *)rfc4231[i].mac, want),
           CKR_OPERATION_NOT_INITIALIZED, "  which ended the operation");
    p11->C_DestroyObject(sess, k);
}

/* HMAC-SHA256 with generic secrets (PKCS#11 3.0 Current Mechanisms 2.21). */
static void test_hmac(void)
{
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    CK_ULONG param = 16;
    CK_MECHANISM with_param = {CKM_SHA256_HMAC, &param, sizeof(param)};
    CK_MECHANISM_INFO mi;
    CK_OBJECT_HANDLE k = 0, aes = 0;
    CK_BYTE key[32];
    size_t i;

    memset(rfc4231[3].key, 0xaa, sizeof(rfc4231[3].key));
    is_rvf(p11->C_GetMechanismInfo(slot, CKM_SHA256_HMAC, &mi), CKR_OK,
           "C_GetMechanismInfo SHA256-HMAC");
    is_num(mi.flags & (CKF_SIGN | CKF_VERIFY), CKF_SIGN | CKF_VERIFY,
           "  sign, verify");
    is_rvf(p11->C_GetMechanismInfo(slot, CKM_SHA256_HMAC_GENERAL, &mi),
           has(CAP_HMAC_GENERAL) ? CKR_OK : CKR_MECHANISM_INVALID,
           "C_GetMechanismInfo SHA256-HMAC-GENERAL");
    for (i = 0; i < CMK_ARRAY_SIZE(rfc4231); i++)
        hmac_case(i);

    memset(key, 0x42, sizeof(key));
    is_rvf(hmac_key(key, sizeof(key), false, &k), CKR_OK,
           "a generic secret with the default usage");
    is_rvf(p11->C_SignInit(sess, &m, k), CKR_KEY_FUNCTION_NOT_PERMITTED,
           "  C_SignInit: CKA_SIGN is false");
    is_rvf(p11->C_VerifyInit(sess, &m, k), CKR_KEY_FUNCTION_NOT_PERMITTED,
           "  C_VerifyInit: CKA_VERIFY is false");
    p11->C_DestroyObject(sess, k);
    is_rvf(hmac_key(key, sizeof(key), true, &k), CKR_OK,
           "a generic secret that signs");
    is_rvf(p11->C_SignInit(sess, &with_param, k), CKR_MECHANISM_PARAM_INVALID,
           "  C_SignInit: SHA256-HMAC with a parameter");
    if (has(CAP_HMAC_GENERAL)) {
        CK_MECHANISM g = {CKM_SHA256_HMAC_GENERAL, &param, sizeof(param)};
        param = 33;
        is_rvf(p11->C_SignInit(sess, &g, k), CKR_MECHANISM_PARAM_INVALID,
               "  C_SignInit: SHA256-HMAC-GENERAL of 33 bytes");
        param = 0;
        is_rvf(p11->C_SignInit(sess, &g, k), CKR_MECHANISM_PARAM_INVALID,
               "  C_SignInit: SHA256-HMAC-GENERAL of 0 bytes");
    }
    is_rvf(gen_aes(NULL, 0, &aes), CKR_OK, "an AES key");
    is_rvf(p11->C_SignInit(sess, &m, aes), CKR_KEY_FUNCTION_NOT_PERMITTED,
           "  C_SignInit SHA256-HMAC: CKA_SIGN false");
    p11->C_DestroyObject(sess, aes);
    {
        CK_ATTRIBUTE sign = {CKA_SIGN, &yes, sizeof(yes)};
        is_rvf(gen_aes(&sign, 1, &aes), CKR_OK, "an AES key that signs");
        is_rvf(p11->C_SignInit(sess, &m, aes), CKR_KEY_TYPE_INCONSISTENT,
               "  C_SignInit SHA256-HMAC: CKR_KEY_TYPE_INCONSISTENT");
        p11->C_DestroyObject(sess, aes);
    }
    p11->C_DestroyObject(sess, k);
}

/* AES-256-GCM of data with OpenSSL, to compare with a key's output. */
static bool ossl_gcm(const CK_BYTE key[32], const CK_BYTE iv[12],
                     const CK_BYTE *data, int len, CK_BYTE *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    bool good =
        ctx != NULL &&
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
        EVP_EncryptUpdate(ctx, out, &n, data, len) == 1 &&
        EVP_EncryptFinal_ex(ctx, out + n, &m) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out + len) == 1;

    EVP_CIPHER_CTX_free(ctx);
    return good;
}

/* Secret keys with CKA_TOKEN true: token objects where the back end keeps
 * them, found by label from another session, used, destroyed. */
static void test_token_keys(void)
{
    static const char label[] = "suite-token-aes";
    static const CK_BYTE data[] = "sealed by a token key";
    CK_KEY_TYPE aes = CKK_AES;
    CK_BYTE key[32], iv[12] = "nonce-twelve", ct[64], ref[64];
    CK_GCM_PARAMS gp = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32, clen = sizeof(ct);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret_class, sizeof(secret_class)},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_LABEL, (void *)label, sizeof(label) - 1},
        {CKA_VALUE, key, sizeof(key)},
    };
    CK_ATTRIBUTE g[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_VALUE_LEN, &len, sizeof(len)},
    };
    CK_OBJECT_HANDLE h = 0, h2 = 0;
    CK_SESSION_HANDLE ro = p11_open(slot, false), other = p11_open(slot, true);
    bool token = has(CAP_TOKEN_SECRET);

    memset(key, 0x3c, sizeof(key));
    is_rv(p11->C_GenerateKey(ro, &gen, g, 2, &h2),
          token ? CKR_SESSION_READ_ONLY : CKR_TEMPLATE_INCONSISTENT,
          "C_GenerateKey CKA_TOKEN true in a R/O session");
    is_rv(p11->C_CreateObject(sess, t, CMK_ARRAY_SIZE(t), &h),
          token ? CKR_OK : CKR_TEMPLATE_INCONSISTENT,
          "C_CreateObject of an AES key with CKA_TOKEN true");
    if (!token) {
        p11->C_CloseSession(ro);
        p11->C_CloseSession(other);
        return;
    }
    is_num(p11_bool(sess, h, CKA_TOKEN), 1, "  CKA_TOKEN true");
    is_num(p11_bool(sess, h, CKA_DESTROYABLE), 1, "  CKA_DESTROYABLE true");
    ok(p11_find(other, CKO_SECRET_KEY, label) == h,
       "  another session finds it by label, with the same handle");
    ok(p11_find(ro, CKO_SECRET_KEY, label) == h, "  so does a R/O session");
    is_rv(p11->C_EncryptInit(ro, &gcm, h), CKR_OK,
          "  C_EncryptInit AES-GCM in the R/O session");
    is_rv(p11->C_Encrypt(ro, (CK_BYTE *)data, sizeof(data), ct, &clen), CKR_OK,
          "  C_Encrypt");
    ok(clen == sizeof(data) + 16 &&
           ossl_gcm(key, iv, data, sizeof(data), ref) &&
           memcmp(ct, ref, clen) == 0,
       "  what OpenSSL gives with the key's value");
    is_rv(p11->C_CloseSession(other), CKR_OK, "  another session closes");
    ok(p11_find(sess, CKO_SECRET_KEY, label) == h, "  the key stays");
    is_rv(p11->C_DestroyObject(ro, h), CKR_SESSION_READ_ONLY,
          "  C_DestroyObject in a R/O session");
    is_rv(p11->C_DestroyObject(sess, h), CKR_OK, "  C_DestroyObject");
    ok(p11_find(sess, CKO_SECRET_KEY, label) == 0, "  no longer found");
    is_rv(p11->C_GenerateKey(sess, &gen, g, 2, &h2), CKR_OK,
          "C_GenerateKey CKA_TOKEN true");
    is_num(p11_bool(sess, h2, CKA_TOKEN), 1, "  CKA_TOKEN true");
    is_rv(p11->C_DestroyObject(sess, h2), CKR_OK, "  C_DestroyObject");
    p11->C_CloseSession(ro);
}

/* AES-GCM decryption into the caller's buffer: the plaintext when the tag
 * holds, into a buffer as long as the ciphertext or as the plaintext; when
 * it does not, CKR_ENCRYPTED_DATA_INVALID and no plaintext left in the
 * buffer (the module decrypts straight into a buffer as long as the
 * ciphertext and wipes it on failure, docs/architecture.md). */
static void test_gcm_decrypt(void)
{
    static const CK_BYTE data[] = "an unsealed segment of plaintext data";
    CK_KEY_TYPE aes = CKK_AES;
    CK_BYTE key[32], iv[12] = "twelve-bytes", ct[64], ref[64], pt[64];
    CK_GCM_PARAMS gp = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ULONG clen = sizeof(ct), plen, i;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret_class, sizeof(secret_class)},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_DECRYPT, &yes, sizeof(yes)},
        {CKA_VALUE, key, sizeof(key)},
    };
    CK_OBJECT_HANDLE h = 0;
    bool zero;

    memset(key, 0x5a, sizeof(key));
    is_rv(p11->C_CreateObject(sess, t, CMK_ARRAY_SIZE(t), &h), CKR_OK,
          "AES-GCM decryption: a session AES key");
    is_rv(p11->C_EncryptInit(sess, &gcm, h), CKR_OK, "  C_EncryptInit");
    is_rv(p11->C_Encrypt(sess, (CK_BYTE *)data, sizeof(data), ct, &clen),
          CKR_OK, "  C_Encrypt");
    ok(clen == sizeof(data) + 16 &&
           ossl_gcm(key, iv, data, sizeof(data), ref) &&
           memcmp(ct, ref, clen) == 0,
       "  what OpenSSL gives");
    for (i = 0; i < 2; i++) {
        /* A buffer as long as the ciphertext, then one as the plaintext. */
        plen = i == 0 ? clen : sizeof(data);
        memset(pt, 0xaa, sizeof(pt));
        is_rv(p11->C_DecryptInit(sess, &gcm, h), CKR_OK, "  C_DecryptInit");
        is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen), CKR_OK,
              i == 0 ? "  C_Decrypt into the ciphertext's length"
                     : "  C_Decrypt into the plaintext's length");
        ok(plen == sizeof(data) && memcmp(pt, data, plen) == 0,
           "  the plaintext");
    }
    ct[clen - 1] ^= 1;
    memset(pt, 0xaa, sizeof(pt));
    plen = clen;
    is_rv(p11->C_DecryptInit(sess, &gcm, h), CKR_OK, "  C_DecryptInit");
    is_rv(p11->C_Decrypt(sess, ct, clen, pt, &plen), CKR_ENCRYPTED_DATA_INVALID,
          "  C_Decrypt with the tag altered");
    for (zero = true, i = 0; i < clen; i++)
        zero = zero && pt[i] == 0;
    ok(zero && pt[clen] == 0xaa,
       "  the buffer wiped (as long as the ciphertext), nothing past it");
    ct[clen - 1] ^= 1;
    is_rv(p11->C_DestroyObject(sess, h), CKR_OK, "  C_DestroyObject");
}

static void test_mechanisms(void)
{
    CK_MECHANISM_INFO mi;
    CK_MECHANISM_TYPE one;
    CK_ULONG n = 0, n2 = 1;
    CK_BYTE rnd[32], zero[32] = {0};

    is_rv(p11->C_GetMechanismList(slot, NULL, &n), CKR_OK,
          "C_GetMechanismList length query");
    ok(n > 1, "  more than one (%lu)", n);
    is_rv(p11->C_GetMechanismList(slot, &one, &n2), CKR_BUFFER_TOO_SMALL,
          "C_GetMechanismList into one");
    is_num(n2, n, "  asks for all");
    is_rv(p11->C_GetMechanismList(BAD_HANDLE, NULL, &n), CKR_SLOT_ID_INVALID,
          "C_GetMechanismList: a bad slot");
    is_rv(p11->C_GetMechanismInfo(slot, CKM_RSA_PKCS_OAEP, &mi), CKR_OK,
          "C_GetMechanismInfo RSA-OAEP");
    is_num(mi.flags & (CKF_DECRYPT | CKF_UNWRAP | CKF_ENCRYPT | CKF_WRAP),
           CKF_DECRYPT | CKF_UNWRAP | CKF_ENCRYPT | CKF_WRAP,
           "  decrypt, unwrap, encrypt, wrap");
    ok(mi.ulMinKeySize <= 2048 && mi.ulMaxKeySize >= 2048,
       "  2048 bits within %lu..%lu", mi.ulMinKeySize, mi.ulMaxKeySize);
    is_rv(p11->C_GetMechanismInfo(slot, CKM_DES_ECB, &mi),
          CKR_MECHANISM_INVALID, "C_GetMechanismInfo: DES-ECB");
    is_rv(p11->C_GenerateRandom(sess, rnd, sizeof(rnd)), CKR_OK,
          "C_GenerateRandom");
    ok(memcmp(rnd, zero, sizeof(rnd)) != 0, "  not all zero");
    is_rv(p11->C_GenerateRandom(sess, NULL, 4), CKR_ARGUMENTS_BAD,
          "C_GenerateRandom into NULL");
}

static void test_end(void)
{
    CK_SESSION_INFO si;
    int calls, wrong;

    is_rv(p11->C_Logout(sess), CKR_OK, "C_Logout");
    if (has(CAP_LOGIN))
        ok(p11_find(sess, CKO_PRIVATE_KEY, be->key) == 0,
           "  the private key is gone from view");
    is_rv(p11->C_CloseAllSessions(slot), CKR_OK, "C_CloseAllSessions");
    is_rv(p11->C_GetSessionInfo(sess, &si), CKR_SESSION_HANDLE_INVALID,
          "  the session is closed");
    calls = p11_session_calls(sess, CKR_SESSION_HANDLE_INVALID, &wrong);
    is_num(wrong, 0, "%d session calls with it: CKR_SESSION_HANDLE_INVALID",
           calls);
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    is_rv(p11->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED,
          "C_Finalize again");
}

int main(int argc, char **argv)
{
    const char *name = argc > 0 ? strrchr(argv[0], '/') : NULL;
    char *conf;
    CK_ULONG n = 1;
    size_t i;

    name = name ? name + 1 : argv[0];
    if (strncmp(name, "lt-", 3) == 0)
        name += 3;
    for (i = 0; i < CMK_ARRAY_SIZE(backends); i++)
        if (strncmp(name, "suite-", 6) == 0 &&
            strcmp(name + 6, backends[i].name) == 0)
            be = &backends[i];
    if (be == NULL)
        test_bail("run as suite-mock, suite-hsm or suite-keyvault, not %s",
                  name);
    test_diag("back end: %s", be->name);
    conf = be->setup();
    p11_load(getenv(be->module));
    is_rv(p11_init(conf), CKR_OK, "C_Initialize");
    is_rv(p11->C_GetSlotList(CK_TRUE, &slot, &n), CKR_OK, "C_GetSlotList");
    is_num(n, 1, "one slot");

    test_sessions();
    test_objects();
    test_attribute_policy();
    test_wrap_unwrap();
    test_decrypt();
    test_sign();
    test_key_pair();
    test_hmac();
    test_token_keys();
    test_gcm_decrypt();
    test_mechanisms();
    test_end();

    EVP_PKEY_free(pk);
    free(conf);
    dlclose(p11_dl);
    return test_done();
}
