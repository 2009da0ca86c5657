/*
 * Concurrency on the hsm back end: 8 threads, each on its own session,
 * unwrap 500 data keys each through cmkp11 (OAEP, SoftHSM underneath);
 * every unwrapped value is compared with the key that was wrapped.
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
#define ROUNDS  500
#define BLOBS   4

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

    p11->C_GetSlotList(CK_TRUE, &slot, &n);
    priv = p11_find(s, CKO_PRIVATE_KEY, "kek");
    pk = hsm_public_key(s, p11_find(s, CKO_PUBLIC_KEY, "kek"));
    ok(priv != 0 && pk != NULL, "the key kek and its public key");
    for (i = 0; i < THREADS; i++) {
        jobs[i].n = i;
        for (k = 0; k < BLOBS; k++) {
            RAND_bytes(jobs[i].key[k], 32);
            len =
                pk ? hsm_oaep_wrap(pk, jobs[i].key[k], 32, jobs[i].blob[k]) : 0;
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
    EVP_PKEY_free(pk);
    is_rv(p11->C_CloseSession(s), CKR_OK, "close");
    is_rv(p11->C_Finalize(NULL), CKR_OK, "finalize");
    return test_done();
}
