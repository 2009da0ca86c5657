/*
 * More distinct public keys than the module keeps built (RSA_PKEY_CACHE_MAX,
 * module/rsa.h), on a keyvault token (the Key Vault emulator): every key
 * in turn encrypts, wraps and verifies in the module, then the first keys
 * again, after the cache has pushed them out; each result is checked
 * through the token (decrypted, unwrapped, signed by the vault). Then 4
 * threads, each on its own session, go through all the keys at once from
 * different starting points, so that keys are pushed out while other
 * threads use them. Every key's CKA_PUBLIC_KEY_INFO, on both objects, is
 * OpenSSL's i2d_PUBKEY of its CKA_MODULUS and CKA_PUBLIC_EXPONENT, also
 * when the keys are listed again.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "kv-setup.h"
#include "p11.h"
#include "rsa.h"
#include "test.h"

#define NKEYS   (RSA_PKEY_CACHE_MAX + 8)
#define THREADS 4

static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE privs[NKEYS], pubs[NKEYS];

static CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
static CK_KEY_TYPE aes_type = CKK_AES;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_RSA_PKCS_OAEP_PARAMS oaep256 = {CKM_SHA256, CKG_MGF1_SHA256,
                                          CKZ_DATA_SPECIFIED, NULL, 0};
static CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &oaep256, sizeof(oaep256)};
static CK_MECHANISM sha256_rsa = {CKM_SHA256_RSA_PKCS, NULL, 0};

/* A session's data key, with a value the test knows. */
static CK_OBJECT_HANDLE data_key(CK_SESSION_HANDLE s, const CK_BYTE val[32])
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret_class, sizeof(secret_class)},
        {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        {CKA_VALUE, (void *)val, 32},
    };
    CK_OBJECT_HANDLE h = 0;

    if (p11->C_CreateObject(s, t, CMK_ARRAY_SIZE(t), &h) != CKR_OK)
        return 0;
    return h;
}

/* C_Encrypt with the public key, C_Decrypt with the private one. */
static const char *check_encrypt(CK_SESSION_HANDLE s, int i, unsigned tag)
{
    CK_BYTE msg[32], ct[512], pt[512];
    CK_ULONG ctlen = sizeof(ct), ptlen = sizeof(pt);

    memset(msg, (int)(tag & 0xff), sizeof(msg));
    msg[0] = (CK_BYTE)i;
    if (p11->C_EncryptInit(s, &oaep, pubs[i]) != CKR_OK ||
        p11->C_Encrypt(s, msg, sizeof(msg), ct, &ctlen) != CKR_OK ||
        ctlen != 256)
        return "C_Encrypt with the public key";
    if (p11->C_DecryptInit(s, &oaep, privs[i]) != CKR_OK ||
        p11->C_Decrypt(s, ct, ctlen, pt, &ptlen) != CKR_OK ||
        ptlen != sizeof(msg) || memcmp(pt, msg, sizeof(msg)) != 0)
        return "C_Decrypt gives back what was encrypted";
    return NULL;
}

/* C_WrapKey with the public key, C_UnwrapKey with the private one: the
 * same value. */
static const char *check_wrap(CK_SESSION_HANDLE s, int i, CK_OBJECT_HANDLE dek,
                              const CK_BYTE val[32])
{
    CK_ATTRIBUTE readable[] = {
        {CKA_CLASS, &secret_class, sizeof(secret_class)},
        {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
    };
    CK_BYTE blob[512], back[64];
    CK_ULONG len = sizeof(blob);
    CK_ATTRIBUTE va = {CKA_VALUE, back, sizeof(back)};
    CK_OBJECT_HANDLE h = 0;
    const char *err = NULL;

    if (p11->C_WrapKey(s, &oaep, pubs[i], dek, blob, &len) != CKR_OK ||
        len != 256)
        return "C_WrapKey with the public key";
    if (p11->C_UnwrapKey(s, &oaep, privs[i], blob, len, readable,
                         CMK_ARRAY_SIZE(readable), &h) != CKR_OK ||
        p11->C_GetAttributeValue(s, h, &va, 1) != CKR_OK ||
        va.ulValueLen != 32 || memcmp(back, val, 32) != 0)
        err = "C_UnwrapKey gives back the value wrapped";
    if (h != 0)
        p11->C_DestroyObject(s, h);
    return err;
}

/* C_Sign by the vault, C_Verify in the module; a changed signature is
 * refused. */
static const char *check_verify(CK_SESSION_HANDLE s, int i, unsigned tag)
{
    CK_BYTE data[64], sig[512];
    CK_ULONG siglen = sizeof(sig);

    memset(data, (int)(tag & 0xff), sizeof(data));
    data[0] = (CK_BYTE)i;
    if (p11->C_SignInit(s, &sha256_rsa, privs[i]) != CKR_OK ||
        p11->C_Sign(s, data, sizeof(data), sig, &siglen) != CKR_OK ||
        siglen != 256)
        return "C_Sign with the private key";
    if (p11->C_VerifyInit(s, &sha256_rsa, pubs[i]) != CKR_OK ||
        p11->C_Verify(s, data, sizeof(data), sig, siglen) != CKR_OK)
        return "C_Verify with the public key";
    sig[siglen - 1] ^= 1;
    if (p11->C_VerifyInit(s, &sha256_rsa, pubs[i]) != CKR_OK ||
        p11->C_Verify(s, data, sizeof(data), sig, siglen) !=
            CKR_SIGNATURE_INVALID)
        return "C_Verify refuses a changed signature";
    return NULL;
}

/* Every local operation of key i, each checked; NULL or what failed. */
static const char *use_key(CK_SESSION_HANDLE s, int i, CK_OBJECT_HANDLE dek,
                           const CK_BYTE val[32], unsigned tag)
{
    const char *err = check_encrypt(s, i, tag);

    if (err == NULL)
        err = check_wrap(s, i, dek, val);
    if (err == NULL)
        err = check_verify(s, i, tag);
    return err;
}

struct job {
    int n;
    int good;
    const char *first_error;
    int first_key;
};

static void *worker(void *arg)
{
    struct job *j = arg;
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE dek;
    CK_BYTE val[32];
    const char *err;
    int i, k;

    memset(val, 0x40 + j->n, sizeof(val));
    if (p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                           NULL, &s) != CKR_OK ||
        (dek = data_key(s, val)) == 0) {
        j->first_error = "C_OpenSession and a data key";
        return NULL;
    }
    for (i = 0; i < NKEYS; i++) {
        k = (i + j->n * NKEYS / THREADS) % NKEYS;
        err = use_key(s, k, dek, val, (unsigned)(j->n + 1));
        if (err == NULL) {
            j->good++;
        } else if (j->first_error == NULL) {
            j->first_error = err;
            j->first_key = k;
        }
    }
    p11->C_CloseSession(s);
    return NULL;
}

/* The DER SubjectPublicKeyInfo OpenSSL makes of a modulus and an exponent
 * (i2d_PUBKEY), or NULL. */
static unsigned char *openssl_spki(const CK_BYTE *n, CK_ULONG nlen,
                                   const CK_BYTE *e, CK_ULONG elen, int *len)
{
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL);
    BIGNUM *be = BN_bin2bn(e, (int)elen, NULL);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *pk = NULL;
    unsigned char *der = NULL;

    *len = -1;
    if (bn != NULL && be != NULL && b != NULL && ctx != NULL &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, be) &&
        (params = OSSL_PARAM_BLD_to_param(b)) != NULL &&
        EVP_PKEY_fromdata_init(ctx) > 0 &&
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) > 0)
        *len = i2d_PUBKEY(pk, &der);
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    BN_free(bn);
    BN_free(be);
    return der;
}

/* Whether both objects of key i read CKA_PUBLIC_KEY_INFO byte for byte as
 * OpenSSL's i2d_PUBKEY of their CKA_MODULUS and CKA_PUBLIC_EXPONENT, and
 * the same CKA_MODULUS. */
static bool spki_exact(CK_SESSION_HANDLE s, int i)
{
    CK_ULONG nl = 0, el = 0, pl = 0, ql = 0, ml = 0;
    CK_BYTE *n = p11_attr(s, pubs[i], CKA_MODULUS, &nl);
    CK_BYTE *m = p11_attr(s, privs[i], CKA_MODULUS, &ml);
    CK_BYTE *e = p11_attr(s, pubs[i], CKA_PUBLIC_EXPONENT, &el);
    CK_BYTE *p = p11_attr(s, pubs[i], CKA_PUBLIC_KEY_INFO, &pl);
    CK_BYTE *q = p11_attr(s, privs[i], CKA_PUBLIC_KEY_INFO, &ql);
    unsigned char *want = NULL;
    int wl = -1;
    bool good;

    if (n != NULL && e != NULL)
        want = openssl_spki(n, nl, e, el, &wl);
    good = want != NULL && p != NULL && q != NULL && m != NULL && nl == 256 &&
           ml == nl && memcmp(m, n, nl) == 0 && (CK_ULONG)wl == pl &&
           (CK_ULONG)wl == ql && memcmp(p, want, pl) == 0 &&
           memcmp(q, want, ql) == 0;
    OPENSSL_free(want);
    free(n);
    free(m);
    free(e);
    free(p);
    free(q);
    return good;
}

static void find_keys(CK_SESSION_HANDLE s)
{
    char label[32];
    int i, found = 0;

    for (i = 0; i < NKEYS; i++) {
        snprintf(label, sizeof(label), "pk-%03d", i);
        privs[i] = p11_find(s, CKO_PRIVATE_KEY, label);
        pubs[i] = p11_find(s, CKO_PUBLIC_KEY, label);
        if (privs[i] != 0 && pubs[i] != 0)
            found++;
    }
    if (found != NKEYS)
        test_bail("%d of the %d key pairs found", found, NKEYS);
}

int main(void)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE dek;
    CK_BYTE val[32];
    CK_ULONG n = 1;
    char cmd[128];
    const char *err;
    pthread_t th[THREADS];
    struct job jobs[THREADS];
    int i, good;
    char *conf;

    kv_start();
    snprintf(cmd, sizeof(cmd), "create-key kvemu pk --count %d --distinct %d",
             NKEYS, NKEYS);
    kv_admin(cmd);
    conf = kv_conf(NULL);
    p11_load(getenv("CMKP11_MODULE"));
    is_rv(p11_init(conf), CKR_OK, "C_Initialize");
    is_rv(p11->C_GetSlotList(CK_TRUE, &slot, &n), CKR_OK, "C_GetSlotList");
    s = p11_open(slot, true);
    find_keys(s);
    for (i = 0, good = 0; i < NKEYS; i++)
        good += spki_exact(s, i);
    is_num(good, NKEYS,
           "CKA_PUBLIC_KEY_INFO of both objects of every key: OpenSSL's "
           "i2d_PUBKEY of its CKA_MODULUS and CKA_PUBLIC_EXPONENT, byte for "
           "byte");
    memset(val, 0x5c, sizeof(val));
    dek = data_key(s, val);
    ok(dek != 0, "a data key to wrap");

    /* One thread: every key, then the first ones again. */
    for (i = 0, good = 0, err = NULL; i < NKEYS; i++) {
        const char *e = use_key(s, i, dek, val, 0x11);
        if (e == NULL)
            good++;
        else if (err == NULL)
            err = e;
    }
    is_num(good, NKEYS, "%d distinct keys: encrypt, wrap and verify%s%s", NKEYS,
           err ? ", first failure: " : "", err ? err : "");
    for (i = 0, good = 0, err = NULL; i < 8; i++) {
        const char *e = use_key(s, i, dek, val, 0x22);
        if (e == NULL)
            good++;
        else if (err == NULL)
            err = e;
    }
    is_num(good, 8,
           "the first 8 again, pushed out of the cache meanwhile: "
           "the same results%s%s",
           err ? ", first failure: " : "", err ? err : "");

    /* Listed again: the objects made again from the back end's record. */
    find_keys(s);
    for (i = 0, good = 0; i < NKEYS; i++)
        good += spki_exact(s, i);
    is_num(good, NKEYS,
           "listed again: the same CKA_PUBLIC_KEY_INFO and "
           "CKA_MODULUS");

    /* Threads: keys pushed out while others use them. */
    memset(jobs, 0, sizeof(jobs));
    for (i = 0; i < THREADS; i++) {
        jobs[i].n = i;
        if (pthread_create(&th[i], NULL, worker, &jobs[i]) != 0)
            test_bail("pthread_create failed");
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        is_num(jobs[i].good, NKEYS, "thread %d: all %d keys checked", i, NKEYS);
        if (jobs[i].first_error != NULL)
            test_diag("  first failure: %s, key %d", jobs[i].first_error,
                      jobs[i].first_key);
    }

    p11->C_CloseSession(s);
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    free(conf);
    return test_done();
}
