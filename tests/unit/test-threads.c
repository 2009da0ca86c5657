/*
 * Threads: eight workers unwrapping, generating and destroying keys at
 * once, readers calling C_GetSessionInfo and C_FindObjects beside them,
 * and C_CloseSession from one thread while another is inside a call.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"

#define CONF                                                                   \
    "[cmkp11]\nlog-level = error\n\n"                                          \
    "[token fast]\nbackend = mock\ndelay-ms = 0\n\n"                           \
    "[token slow]\nbackend = mock\ndelay-ms = 300\n"

#define WORKERS 8
#define READERS 2

/* Unwraps per worker (a multiple of 10: a tenth also run AES-GCM). */
static long iterations;
#define ITERATIONS iterations

static EVP_PKEY *pk;
static int done_workers;

static CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256,
                                       CKZ_DATA_SPECIFIED, NULL, 0};

struct worker {
    int id;
    int unwraps_ok, gcm_ok, keys_ok, failures;
    CK_RV first_error;
};

struct reader {
    int calls, failures;
    CK_RV first_error;
};

static void note(struct worker *w, CK_RV rv)
{
    if (rv != CKR_OK) {
        if (w->failures++ == 0)
            w->first_error = rv;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE priv, pub;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    CK_ATTRIBUTE plain[] = {{CKA_CLASS, &sk, sizeof(sk)},
                            {CKA_KEY_TYPE, &aes, sizeof(aes)},
                            {CKA_SENSITIVE, &f, sizeof(f)},
                            {CKA_EXTRACTABLE, &t, sizeof(t)}};
    int i;

    note(w, p11->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                               NULL, &s));
    priv = p11_find(s, CKO_PRIVATE_KEY, "mock-key");
    pub = p11_find(s, CKO_PUBLIC_KEY, "mock-key");
    if (priv == 0 || pub == 0)
        note(w, CKR_OBJECT_HANDLE_INVALID);
    for (i = 0; i < ITERATIONS && priv != 0; i++) {
        unsigned char key[32], wrapped[512], value[64];
        CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
        CK_OBJECT_HANDLE un = 0;
        size_t wl;
        CK_RV rv;

        RAND_bytes(key, sizeof(key));
        if (i % 2 == 0) {
            wl = p11_oaep_wrap(pk, EVP_sha256(), key, sizeof(key), wrapped);
        } else {
            /* Wrap through the module, with a fresh extractable key. */
            CK_OBJECT_HANDLE dek = 0;
            CK_BBOOL yes = CK_TRUE;
            CK_ATTRIBUTE ct[] = {{CKA_CLASS, &sk, sizeof(sk)},
                                 {CKA_KEY_TYPE, &aes, sizeof(aes)},
                                 {CKA_VALUE, key, sizeof(key)},
                                 {CKA_EXTRACTABLE, &yes, sizeof(yes)}};
            CK_ULONG l = sizeof(wrapped);
            rv = p11->C_CreateObject(s, ct, 4, &dek);
            if (rv == CKR_OK)
                rv = p11->C_WrapKey(s, &m, pub, dek, wrapped, &l);
            note(w, rv);
            note(w, p11->C_DestroyObject(s, dek));
            wl = rv == CKR_OK ? l : 0;
        }
        rv = p11->C_UnwrapKey(s, &m, priv, wrapped, wl, plain,
                              CMK_ARRAY_SIZE(plain), &un);
        note(w, rv);
        if (rv != CKR_OK)
            continue;
        rv = p11->C_GetAttributeValue(s, un, &v, 1);
        note(w, rv);
        if (rv == CKR_OK && v.ulValueLen == 32 && memcmp(value, key, 32) == 0)
            w->unwraps_ok++;
        else
            note(w, CKR_GENERAL_ERROR);
        if (i % 10 == 0) {
            CK_OBJECT_HANDLE gen = p11_aes_key(s, 32, false, true);
            if (gen != 0 && p11_same_aes_key(s, un, un) &&
                p11_same_aes_key(s, gen, gen))
                w->gcm_ok++;
            else
                note(w, CKR_GENERAL_ERROR);
            if (gen != 0 && p11->C_DestroyObject(s, gen) == CKR_OK)
                w->keys_ok++;
            else
                note(w, CKR_GENERAL_ERROR);
        }
        note(w, p11->C_DestroyObject(s, un));
    }
    note(w, p11->C_CloseSession(s));
    __atomic_add_fetch(&done_workers, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    CK_SESSION_HANDLE s = p11_open(0, false);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};

    while (__atomic_load_n(&done_workers, __ATOMIC_SEQ_CST) < WORKERS) {
        CK_SESSION_INFO si;
        CK_TOKEN_INFO ti;
        CK_OBJECT_HANDLE objs[32];
        CK_ULONG n = 0;
        CK_RV rv = p11->C_GetSessionInfo(s, &si);

        if (rv == CKR_OK && si.state != CKS_RO_PUBLIC_SESSION)
            rv = CKR_GENERAL_ERROR;
        if (rv == CKR_OK)
            rv = p11->C_GetTokenInfo(0, &ti);
        if (rv == CKR_OK)
            rv = p11->C_FindObjectsInit(s, &t, 1);
        if (rv == CKR_OK)
            rv = p11->C_FindObjects(s, objs, 32, &n);
        if (rv == CKR_OK)
            rv = p11->C_FindObjectsFinal(s);
        if (rv == CKR_OK && n != 4)
            rv = CKR_GENERAL_ERROR;
        r->calls++;
        if (rv != CKR_OK && r->failures++ == 0)
            r->first_error = rv;
    }
    if (p11->C_CloseSession(s) != CKR_OK)
        r->failures++;
    return NULL;
}

static void test_workers(void)
{
    pthread_t wt[WORKERS], rt[READERS];
    struct worker w[WORKERS];
    struct reader r[READERS];
    int i, unwraps = 0, failures = 0;
    CK_TOKEN_INFO ti;

    memset(w, 0, sizeof(w));
    memset(r, 0, sizeof(r));
    for (i = 0; i < READERS; i++)
        pthread_create(&rt[i], NULL, reader_main, &r[i]);
    for (i = 0; i < WORKERS; i++) {
        w[i].id = i;
        pthread_create(&wt[i], NULL, worker_main, &w[i]);
    }
    for (i = 0; i < WORKERS; i++)
        pthread_join(wt[i], NULL);
    for (i = 0; i < READERS; i++)
        pthread_join(rt[i], NULL);
    for (i = 0; i < WORKERS; i++) {
        unwraps += w[i].unwraps_ok;
        failures += w[i].failures;
        if (w[i].failures)
            test_diag("worker %d: %d failures, first 0x%lx", i, w[i].failures,
                      w[i].first_error);
        is_num(w[i].gcm_ok, ITERATIONS / 10,
               "worker %d: AES-GCM round trips with unwrapped keys", i);
        is_num(w[i].keys_ok, ITERATIONS / 10,
               "worker %d: generated and destroyed session keys", i);
    }
    is_num(failures, 0, "no worker call failed");
    is_num(unwraps, WORKERS * ITERATIONS,
           "every OAEP unwrap gave the wrapped key (%d)", unwraps);
    for (i = 0; i < READERS; i++) {
        ok(r[i].calls > 0, "reader %d made %d rounds", i, r[i].calls);
        is_num(r[i].failures, 0, "reader %d: no failures (first 0x%lx)", i,
               r[i].first_error);
    }
    p11->C_GetTokenInfo(0, &ti);
    is_num(ti.ulSessionCount, 0, "every session was closed");
    {
        CK_SESSION_HANDLE s = p11_open(0, false);
        CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
        CK_ATTRIBUTE t = {CKA_CLASS, &sk, sizeof(sk)};
        CK_OBJECT_HANDLE objs[8];
        CK_ULONG n = 99;
        p11->C_FindObjectsInit(s, &t, 1);
        p11->C_FindObjects(s, objs, 8, &n);
        p11->C_FindObjectsFinal(s);
        is_num(n, 0, "no session key outlived its session");
        p11->C_CloseSession(s);
    }
}

struct slow_call {
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE key;
    unsigned char wrapped[512];
    size_t wlen;
    CK_RV init_rv, rv;
    CK_BYTE out[512];
    CK_ULONG outlen;
};

static void *slow_main(void *arg)
{
    struct slow_call *c = arg;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};

    c->outlen = sizeof(c->out);
    c->init_rv = p11->C_DecryptInit(c->s, &m, c->key);
    c->rv = p11->C_Decrypt(c->s, c->wrapped, c->wlen, c->out, &c->outlen);
    return NULL;
}

static void test_close_during_call(void)
{
    static const unsigned char secret[] = "secret in flight";
    struct slow_call c;
    pthread_t th;
    struct timespec ts = {0, 100 * 1000000L};
    CK_SESSION_INFO si;
    CK_SESSION_HANDLE other;

    memset(&c, 0, sizeof(c));
    c.s = p11_open(1, false);
    c.key = p11_find(c.s, CKO_PRIVATE_KEY, "mock-key");
    other = p11_open(1, false);
    ok(c.s && c.key && other, "slow token: session and key");
    {
        /* The slow token has its own key of the same name. */
        CK_ULONG len = 0;
        unsigned char *der =
            p11_attr(c.s, p11_find(c.s, CKO_PUBLIC_KEY, "mock-key"),
                     CKA_PUBLIC_KEY_INFO, &len);
        const unsigned char *p = der;
        EVP_PKEY *keep = pk;
        pk = der ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;
        c.wlen = pk ? p11_oaep_wrap(pk, EVP_sha256(), secret, sizeof(secret),
                                    c.wrapped)
                    : 0;
        EVP_PKEY_free(pk);
        pk = keep;
        free(der);
    }
    pthread_create(&th, NULL, slow_main, &c);
    nanosleep(&ts, NULL);
    is_rv(p11->C_CloseSession(c.s), CKR_OK,
          "C_CloseSession while another thread is in C_Decrypt");
    pthread_join(th, NULL);
    is_rv(c.init_rv, CKR_OK, "the DecryptInit had succeeded");
    ok(c.rv == CKR_SESSION_HANDLE_INVALID || c.rv == CKR_SESSION_CLOSED ||
           (c.rv == CKR_OK && c.outlen == sizeof(secret) &&
            memcmp(c.out, secret, sizeof(secret)) == 0),
       "the call finished or failed cleanly (0x%lx)", c.rv);
    is_rv(p11->C_GetSessionInfo(c.s, &si), CKR_SESSION_HANDLE_INVALID,
          "the session is closed");
    is_rv(p11->C_GetSessionInfo(other, &si), CKR_OK,
          "another session of the token is fine");

    /* The same with C_CloseAllSessions. */
    c.s = other;
    pthread_create(&th, NULL, slow_main, &c);
    nanosleep(&ts, NULL);
    is_rv(p11->C_CloseAllSessions(1), CKR_OK,
          "C_CloseAllSessions while a call is in progress");
    pthread_join(th, NULL);
    ok(c.rv == CKR_SESSION_HANDLE_INVALID || c.rv == CKR_SESSION_CLOSED ||
           c.rv == CKR_OK,
       "the call finished or failed cleanly (0x%lx)", c.rv);
    is_rv(p11->C_GetSessionInfo(other, &si), CKR_SESSION_HANDLE_INVALID,
          "closed");
}

int main(void)
{
    char *conf;
    CK_SESSION_HANDLE s;
    CK_ULONG len = 0;
    unsigned char *der;
    const unsigned char *p;

    iterations = test_scale(200) / 10 * 10;
    p11_load(NULL);
    conf = p11_write_file("threads.conf", CONF);
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    s = p11_open(0, false);
    der = p11_attr(s, p11_find(s, CKO_PUBLIC_KEY, "mock-key"),
                   CKA_PUBLIC_KEY_INFO, &len);
    p = der;
    pk = der ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;
    free(der);
    p11->C_CloseSession(s);
    if (pk == NULL)
        test_bail("no public key");
    test_workers();
    test_close_during_call();
    EVP_PKEY_free(pk);
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    free(conf);
    return test_done();
}
