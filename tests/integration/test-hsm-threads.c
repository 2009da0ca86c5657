/*
 * Concurrency on the hsm back end: 8 threads, each on its own session,
 * unwrap 500 data keys each through cmkp11 (OAEP, SoftHSM underneath);
 * every unwrapped value is compared with the key that was wrapped. Then 8
 * threads search at once (each search lists the lower token again while
 * the others build objects from the versions it updates): every search
 * finds the token's five private keys with their labels.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "hsm-setup.h"
#include "test.h"

#define THREADS 8
#define BLOBS   4

/* Loop counts: 500 unwraps and 100 searches per thread, a tenth under
 * valgrind or TSan (test_scale). */
static int rounds, searches;
#define ROUNDS   rounds
#define SEARCHES searches

static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE priv;

struct job {
    int n;
    unsigned char key[BLOBS][32];
    unsigned char blob[BLOBS][512];
    CK_ULONG len[BLOBS];
    int good, bad;
    CK_RV first_error;
};

static void *worker(void *arg)
{
    struct job *j = arg;
    CK_SESSION_HANDLE s = 0;
    CK_RV rv;
    int i;

    rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                            NULL, &s);
    if (rv != CKR_OK) {
        j->first_error = rv;
        j->bad = ROUNDS;
        return NULL;
    }
    for (i = 0; i < ROUNDS; i++) {
        int k = (i + j->n) % BLOBS;
        rv = hsm_unwrap_check(s, priv, j->blob[k], j->len[k], j->key[k], 32);
        if (rv == CKR_OK) {
            j->good++;
        } else {
            if (j->bad++ == 0)
                j->first_error = rv;
        }
    }
    p11->C_CloseSession(s);
    return NULL;
}

/* The private keys of the test token (tests/softhsm-init.sh). */
static const char *const labels[] = {"kek@01", "kek", "dec-only", "disabled",
                                     "unwrap-only"};
#define N_LABELS (sizeof(labels) / sizeof(labels[0]))

struct search_job {
    int good, bad;
    CK_RV first_error;
};

/* One search for every private key: 0 when it finds each label once. */
static CK_RV search_once(CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
    CK_OBJECT_HANDLE h[16];
    CK_ULONG n = 0, i, k;
    unsigned seen = 0;
    CK_RV rv;

    rv = p11->C_FindObjectsInit(s, &t, 1);
    if (rv != CKR_OK)
        return rv;
    rv = p11->C_FindObjects(s, h, 16, &n);
    if (p11->C_FindObjectsFinal(s) != CKR_OK && rv == CKR_OK)
        rv = CKR_FUNCTION_FAILED;
    for (i = 0; rv == CKR_OK && i < n; i++) {
        char label[64];
        CK_ATTRIBUTE a = {CKA_LABEL, label, sizeof(label) - 1};
        rv = p11->C_GetAttributeValue(s, h[i], &a, 1);
        if (rv != CKR_OK)
            break;
        label[a.ulValueLen] = '\0';
        for (k = 0; k < N_LABELS; k++)
            if (strcmp(label, labels[k]) == 0 && !(seen & (1u << k)))
                break;
        if (k == N_LABELS)
            return CKR_GENERAL_ERROR; /* unknown or twice */
        seen |= 1u << k;
    }
    if (rv == CKR_OK && n != N_LABELS)
        rv = CKR_GENERAL_ERROR;
    return rv;
}

static void *searcher(void *arg)
{
    struct search_job *j = arg;
    CK_SESSION_HANDLE s = 0;
    CK_RV rv;
    int i;

    rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        j->first_error = rv;
        j->bad = SEARCHES;
        return NULL;
    }
    for (i = 0; i < SEARCHES; i++) {
        rv = search_once(s);
        if (rv == CKR_OK)
            j->good++;
        else if (j->bad++ == 0)
            j->first_error = rv;
    }
    p11->C_CloseSession(s);
    return NULL;
}

static void search_storm(void)
{
    pthread_t th[THREADS];
    static struct search_job jobs[THREADS];
    int i, good = 0, bad = 0;

    for (i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, searcher, &jobs[i]);
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        good += jobs[i].good;
        bad += jobs[i].bad;
        if (jobs[i].bad)
            test_diag("searcher %d: %d failures, first 0x%lx", i, jobs[i].bad,
                      jobs[i].first_error);
    }
    is_num(good, THREADS * SEARCHES,
           "%d threads x %d searches at once, each finds the five private "
           "keys by their labels",
           THREADS, SEARCHES);
    is_num(bad, 0, "no search failed");
}

int main(void)
{
    char *conf = hsm_setup(NULL);
    CK_SESSION_HANDLE s = hsm_open(conf);
    CK_ULONG n = 1;
    pthread_t th[THREADS];
    static struct job jobs[THREADS];
    EVP_PKEY *pk;
    int i, k, good = 0, bad = 0;
    size_t len;

    rounds = (int)test_scale(500);
    searches = (int)test_scale(100);
    p11->C_GetSlotList(CK_TRUE, &slot, &n);
    priv = p11_find(s, CKO_PRIVATE_KEY, "kek");
    pk = p11_public_key(s, p11_find(s, CKO_PUBLIC_KEY, "kek"));
    ok(priv != 0 && pk != NULL, "the key kek and its public key");
    for (i = 0; i < THREADS; i++) {
        jobs[i].n = i;
        for (k = 0; k < BLOBS; k++) {
            RAND_bytes(jobs[i].key[k], 32);
            len = pk ? p11_oaep_wrap(pk, NULL, jobs[i].key[k], 32,
                                     jobs[i].blob[k])
                     : 0;
            jobs[i].len[k] = (CK_ULONG)len;
        }
    }
    for (i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        good += jobs[i].good;
        bad += jobs[i].bad;
        if (jobs[i].bad)
            test_diag("thread %d: %d failures, first 0x%lx", i, jobs[i].bad,
                      jobs[i].first_error);
    }
    is_num(good, THREADS * ROUNDS,
           "%d threads x %d unwraps on their own sessions, every value right",
           THREADS, ROUNDS);
    is_num(bad, 0, "no unwrap failed");
    {
        CK_TOKEN_INFO ti;
        p11->C_GetTokenInfo(slot, &ti);
        is_num(ti.ulSessionCount, 1, "the threads' sessions are closed");
    }
    search_storm();
    EVP_PKEY_free(pk);
    is_rv(p11->C_CloseSession(s), CKR_OK, "close");
    is_rv(p11->C_Finalize(NULL), CKR_OK, "finalize");
    free(conf);
    return test_done();
}
