/*
 * A load client for tests: THREADS threads, each with its own session,
 * unwrap COUNT data keys through cmkp11 and check every result.
 *
 *   kv-unwrap MODULE TOKEN KEY THREADS COUNT [same|storm]
 *
 * Each thread wraps a fresh AES-256 key with the public key (RSA-OAEP-
 * SHA256, locally in the module), unwraps it with the private key (in the
 * back end), and checks that the unwrapped key decrypts AES-GCM data made
 * with the original. With "same", one blob is wrapped first and every
 * thread unwraps that same blob, all starting at once (for the unwrap
 * cache's coalescing). With "storm", every iteration also searches the
 * key pair by label again (C_FindObjectsInit, C_FindObjects,
 * C_FindObjectsFinal), so searches, wraps and unwraps of all threads
 * interleave: the thread-sanitizer gate runs this on each back end. When
 * CMKP11_TEST_PIN is set, the application logs in with it first. Prints
 * "unwraps=N failures=N seconds=S" and exits 0 only if every unwrap succeeded
 * and checked.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "p11.h"

static const char *token, *keyname;
static long count;
/* "same": the one blob, the key it wraps and data encrypted under it. */
static bool same, storm;
static CK_BYTE same_blob[512], same_ct[64];
static CK_ULONG same_blob_len, same_ct_len;
static pthread_barrier_t start;
static int failures;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static CK_SLOT_ID find_slot(void)
{
    CK_SLOT_ID slots[32];
    CK_ULONG n = 32, i;
    CK_TOKEN_INFO ti;
    size_t len = strlen(token);

    if (p11->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return (CK_SLOT_ID)-1;
    for (i = 0; i < n; i++)
        if (p11->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
            memcmp(ti.label, token, len) == 0 &&
            (len == 32 || ti.label[len] == ' '))
            return slots[i];
    return (CK_SLOT_ID)-1;
}

static bool one(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
                CK_OBJECT_HANDLE priv)
{
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256,
                                  CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_BYTE iv[12] = {9, 8, 7}, msg[] = "data under a data key", ct[64], pt[64],
            blob[512];
    CK_GCM_PARAMS gp = {iv, sizeof(iv), 96, NULL, 0, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &f, sizeof(f)},       {CKA_SENSITIVE, &t, sizeof(t)},
        {CKA_EXTRACTABLE, &f, sizeof(f)}, {CKA_DECRYPT, &t, sizeof(t)},
    };
    CK_ULONG blen = sizeof(blob), clen = sizeof(ct), plen = sizeof(pt);
    CK_OBJECT_HANDLE dk = p11_aes_key(s, 32, true, true), back = 0;
    bool ok = false;
    CK_RV rv;

    if (dk == 0)
        return false;
    if (p11->C_WrapKey(s, &oaep, pub, dk, blob, &blen) != CKR_OK ||
        p11->C_EncryptInit(s, &gcm, dk) != CKR_OK ||
        p11->C_Encrypt(s, msg, sizeof(msg), ct, &clen) != CKR_OK)
        goto out;
    rv = p11->C_UnwrapKey(s, &oaep, priv, blob, blen, tmpl,
                          sizeof(tmpl) / sizeof(tmpl[0]), &back);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_UnwrapKey: 0x%lx\n", rv);
        goto out;
    }
    ok = p11->C_DecryptInit(s, &gcm, back) == CKR_OK &&
         p11->C_Decrypt(s, ct, clen, pt, &plen) == CKR_OK &&
         plen == sizeof(msg) && memcmp(pt, msg, plen) == 0;
out:
    if (back != 0)
        p11->C_DestroyObject(s, back);
    p11->C_DestroyObject(s, dk);
    return ok;
}

static CK_GCM_PARAMS same_gcm = {
    (CK_BYTE *)"nonce-nonce!", 12, 96, NULL, 0, 128};

static bool one_same(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv)
{
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256,
                                  CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_MECHANISM gcm = {CKM_AES_GCM, &same_gcm, sizeof(same_gcm)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &f, sizeof(f)},       {CKA_SENSITIVE, &t, sizeof(t)},
        {CKA_EXTRACTABLE, &f, sizeof(f)}, {CKA_DECRYPT, &t, sizeof(t)},
    };
    CK_BYTE pt[64];
    CK_ULONG plen = sizeof(pt);
    CK_OBJECT_HANDLE back = 0;
    bool ok;

    if (p11->C_UnwrapKey(s, &oaep, priv, same_blob, same_blob_len, tmpl,
                         sizeof(tmpl) / sizeof(tmpl[0]), &back) != CKR_OK)
        return false;
    ok = p11->C_DecryptInit(s, &gcm, back) == CKR_OK &&
         p11->C_Decrypt(s, same_ct, same_ct_len, pt, &plen) == CKR_OK &&
         plen == 22 && memcmp(pt, "data under a data key", 22) == 0;
    p11->C_DestroyObject(s, back);
    return ok;
}

/* Logs the application in (a session kept open for the run's length). */
static bool login(CK_SLOT_ID slot)
{
    const char *pin = getenv("CMKP11_TEST_PIN");
    CK_SESSION_HANDLE s = p11_open(slot, true);
    CK_RV rv;

    if (s == 0)
        return false;
    rv = p11->C_Login(s, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        fprintf(stderr, "C_Login: 0x%lx\n", rv);
        return false;
    }
    return true;
}

/* Wraps the one blob of "same" mode. */
static bool make_same(CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE s = p11_open(slot, true);
    CK_OBJECT_HANDLE pub = p11_find(s, CKO_PUBLIC_KEY, keyname);
    CK_OBJECT_HANDLE dk = p11_aes_key(s, 32, true, true);
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256,
                                  CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_MECHANISM gcm = {CKM_AES_GCM, &same_gcm, sizeof(same_gcm)};
    bool ok;

    same_blob_len = sizeof(same_blob);
    same_ct_len = sizeof(same_ct);
    ok = pub != 0 && dk != 0 &&
         p11->C_WrapKey(s, &oaep, pub, dk, same_blob, &same_blob_len) ==
             CKR_OK &&
         p11->C_EncryptInit(s, &gcm, dk) == CKR_OK &&
         p11->C_Encrypt(s, (CK_BYTE *)"data under a data key", 22, same_ct,
                        &same_ct_len) == CKR_OK;
    p11->C_CloseSession(s);
    return ok;
}

static void *worker(void *arg)
{
    CK_SLOT_ID slot = *(CK_SLOT_ID *)arg;
    CK_SESSION_HANDLE s = p11_open(slot, true);
    CK_OBJECT_HANDLE pub = p11_find(s, CKO_PUBLIC_KEY, keyname);
    CK_OBJECT_HANDLE priv = p11_find(s, CKO_PRIVATE_KEY, keyname);
    long i;
    int bad = 0;

    if (s == 0 || pub == 0 || priv == 0) {
        bad = (int)count;
        fprintf(stderr, "no session or key %s\n", keyname);
    }
    if (same)
        pthread_barrier_wait(&start); /* all threads unwrap at once */
    for (i = 0; bad == 0 && i < count; i++) {
        if (storm) {
            pub = p11_find(s, CKO_PUBLIC_KEY, keyname);
            priv = p11_find(s, CKO_PRIVATE_KEY, keyname);
            if (pub == 0 || priv == 0) {
                fprintf(stderr, "search %ld: key %s not found\n", i, keyname);
                bad++;
                break;
            }
        }
        if (!(same ? one_same(s, priv) : one(s, pub, priv)))
            bad++;
    }
    p11->C_CloseSession(s);
    pthread_mutex_lock(&lock);
    failures += bad;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t th[64];
    CK_SLOT_ID slot;
    struct timespec a, b;
    long nthreads, i;
    CK_RV rv;

    if (argc != 6 && !(argc == 7 && (strcmp(argv[6], "same") == 0 ||
                                     strcmp(argv[6], "storm") == 0))) {
        fprintf(stderr,
                "usage: %s MODULE TOKEN KEY THREADS COUNT [same|storm]\n",
                argv[0]);
        return 2;
    }
    same = argc == 7 && strcmp(argv[6], "same") == 0;
    storm = argc == 7 && strcmp(argv[6], "storm") == 0;
    token = argv[2];
    keyname = argv[3];
    nthreads = atol(argv[4]);
    count = atol(argv[5]);
    if (nthreads < 1 || nthreads > 64 || count < 1)
        return 2;
    p11_load(argv[1]);
    clock_gettime(CLOCK_MONOTONIC, &a);
    rv = p11->C_Initialize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_Initialize: 0x%lx\n", rv);
        return 1;
    }
    slot = find_slot();
    if (slot == (CK_SLOT_ID)-1) {
        fprintf(stderr, "no token %s\n", token);
        return 1;
    }
    if (getenv("CMKP11_TEST_PIN") != NULL && !login(slot))
        return 1;
    if (same && !make_same(slot)) {
        fprintf(stderr, "cannot wrap the blob\n");
        return 1;
    }
    pthread_barrier_init(&start, NULL, (unsigned)nthreads);
    for (i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, worker, &slot);
    for (i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    p11->C_Finalize(NULL);
    printf("unwraps=%ld failures=%d seconds=%.3f\n", nthreads * count, failures,
           (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return failures == 0 ? 0 : 1;
}
