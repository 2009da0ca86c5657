/*
 * A consumer in the shape of the Kubernetes KMS v2 plugin over PKCS#11
 * (the reference is the mock plugin of kubernetes/kms,
 * internal/plugins/_mock: a SoftHSM token, an AES-256 key made with
 * "pkcs11-tool --keygen", found by its label, data sealed with AES-GCM):
 *
 *   load the module, C_Initialize, the slot whose token has the label,
 *   a R/W session, C_Login as the user, the one secret key of type AES
 *   with the key label; then for each round a random 12-byte nonce from
 *   C_GenerateRandom, AES-GCM with a 16-byte tag and additional data,
 *   C_Encrypt, C_Decrypt, compared; a changed tag and other additional
 *   data must be CKR_ENCRYPTED_DATA_INVALID.
 *
 * k8s-kms --module PATH --token LABEL --label KEY --pin PIN [--rounds N]
 *
 * The module's configuration comes from the environment (CMKP11_CONF), as
 * for any application. Prints one line per failure and a summary; exits 0
 * when every round passed, 2 when the key is not found, 1 otherwise.
 */
#include "config.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"

static CK_FUNCTION_LIST *f;
static int failures;

static void fail(const char *what, CK_RV rv)
{
    printf("k8s-kms: %s: 0x%lx\n", what, (unsigned long)rv);
    failures++;
}

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[32];
    CK_ULONG n = 32, i;
    CK_TOKEN_INFO ti;
    size_t len = strlen(label);

    if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return (CK_SLOT_ID)-1;
    for (i = 0; i < n; i++) {
        size_t k;
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK || len > 32 ||
            memcmp(ti.label, label, len) != 0)
            continue;
        for (k = len; k < 32 && ti.label[k] == ' '; k++)
            ;
        if (k == 32)
            return slots[i];
    }
    return (CK_SLOT_ID)-1;
}

/* The plugin's lookup: exactly one AES secret key with the label. */
static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;

    if (f->C_FindObjectsInit(s, t, 3) != CKR_OK)
        return 0;
    if (f->C_FindObjects(s, found, 2, &n) != CKR_OK)
        n = 0;
    f->C_FindObjectsFinal(s);
    if (n > 1)
        printf("k8s-kms: %lu keys have the label %s\n", (unsigned long)n,
               label);
    return n == 1 ? found[0] : 0;
}

static CK_RV gcm(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, bool encrypt,
                 CK_BYTE *nonce, CK_BYTE *aad, CK_ULONG aad_len,
                 const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                 CK_ULONG *outlen)
{
    CK_GCM_PARAMS p = {nonce, 12, 96, aad, aad_len, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
    CK_ULONG need = 0;
    CK_RV rv;

    rv = encrypt ? f->C_EncryptInit(s, &m, key) : f->C_DecryptInit(s, &m, key);
    if (rv != CKR_OK)
        return rv;
    /* The length query first, as the plugin's PKCS#11 layer does. */
    rv = encrypt ? f->C_Encrypt(s, (CK_BYTE *)in, inlen, NULL, &need)
                 : f->C_Decrypt(s, (CK_BYTE *)in, inlen, NULL, &need);
    if (rv != CKR_OK)
        return rv;
    if (need > *outlen) {
        /* A buffer as large as asked for: sufficient, not exact (PKCS#11
         * 2.40 5.2); the callers' have room for 48 more bytes. */
        printf("k8s-kms: %lu bytes asked for %lu\n", (unsigned long)need,
               (unsigned long)inlen);
        return CKR_BUFFER_TOO_SMALL;
    }
    return encrypt ? f->C_Encrypt(s, (CK_BYTE *)in, inlen, out, outlen)
                   : f->C_Decrypt(s, (CK_BYTE *)in, inlen, out, outlen);
}

static void round_trip(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, long i,
                       CK_BYTE *last_nonce)
{
    CK_BYTE nonce[12], aad[64], pt[4096], ct[4096 + 64], back[4096 + 64];
    CK_ULONG len, clen = sizeof(ct), blen = sizeof(back);
    CK_ULONG aad_len;
    CK_RV rv;

    /* A data encryption key of KMS v2 is 32 bytes; other sizes too. */
    len = i % 3 == 0 ? 32 : (CK_ULONG)(1 + (i * 397) % sizeof(pt));
    aad_len = (CK_ULONG)snprintf((char *)aad, sizeof(aad),
                                 "kms-v2 uid %ld annotations", i);
    if ((rv = f->C_GenerateRandom(s, nonce, sizeof(nonce))) != CKR_OK ||
        (rv = f->C_GenerateRandom(s, pt, len)) != CKR_OK) {
        fail("C_GenerateRandom", rv);
        return;
    }
    if (memcmp(nonce, last_nonce, sizeof(nonce)) == 0)
        fail("the same nonce twice", CKR_OK);
    memcpy(last_nonce, nonce, sizeof(nonce));
    rv = gcm(s, key, true, nonce, aad, aad_len, pt, len, ct, &clen);
    if (rv != CKR_OK || clen != len + 16) {
        fail("C_Encrypt (or its length)", rv);
        return;
    }
    rv = gcm(s, key, false, nonce, aad, aad_len, ct, clen, back, &blen);
    if (rv != CKR_OK || blen != len || memcmp(back, pt, len) != 0) {
        fail("C_Decrypt gives back the plaintext", rv);
        return;
    }
    /* NIST SP 800-38D 7.2: a wrong tag or other data: FAIL, no plaintext;
     * PKCS#11 3.0 Current Mechanisms 2.12.5: CKR_ENCRYPTED_DATA_INVALID. */
    ct[clen - 1] ^= 0x80;
    blen = sizeof(back);
    rv = gcm(s, key, false, nonce, aad, aad_len, ct, clen, back, &blen);
    if (rv != CKR_ENCRYPTED_DATA_INVALID)
        fail("a changed tag is CKR_ENCRYPTED_DATA_INVALID", rv);
    ct[clen - 1] ^= 0x80;
    aad[0] ^= 0x01;
    blen = sizeof(back);
    rv = gcm(s, key, false, nonce, aad, aad_len, ct, clen, back, &blen);
    if (rv != CKR_ENCRYPTED_DATA_INVALID)
        fail("other additional data is CKR_ENCRYPTED_DATA_INVALID", rv);
}

int main(int argc, char **argv)
{
    const char *module = NULL, *token = NULL, *label = NULL, *pin = NULL;
    long rounds = 100, i;
    CK_C_INITIALIZE_ARGS ia;
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE key;
    CK_SLOT_ID slot;
    CK_BYTE last_nonce[12] = {0};
    CK_RV rv;
    void *dl;
    int a;

    for (a = 1; a + 1 < argc; a += 2) {
        if (strcmp(argv[a], "--module") == 0)
            module = argv[a + 1];
        else if (strcmp(argv[a], "--token") == 0)
            token = argv[a + 1];
        else if (strcmp(argv[a], "--label") == 0)
            label = argv[a + 1];
        else if (strcmp(argv[a], "--pin") == 0)
            pin = argv[a + 1];
        else if (strcmp(argv[a], "--rounds") == 0)
            rounds = strtol(argv[a + 1], NULL, 10);
        else
            break;
    }
    if (a != argc || module == NULL || token == NULL || label == NULL ||
        pin == NULL || rounds < 1) {
        fprintf(stderr, "usage: k8s-kms --module PATH --token LABEL --label "
                        "KEY --pin PIN [--rounds N]\n");
        return 1;
    }
    dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    get =
        dl ? (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(dl, "C_GetFunctionList")
           : NULL;
    if (get == NULL || get(&f) != CKR_OK) {
        printf("k8s-kms: cannot load %s\n", module);
        return 1;
    }
    memset(&ia, 0, sizeof(ia));
    ia.flags = CKF_OS_LOCKING_OK;
    rv = f->C_Initialize(&ia);
    if (rv != CKR_OK) {
        fail("C_Initialize", rv);
        return 1;
    }
    slot = find_slot(token);
    if (slot == (CK_SLOT_ID)-1 ||
        (rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                               NULL, &s)) != CKR_OK ||
        (rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin))) !=
            CKR_OK) {
        fail("no token, session or login", rv);
        f->C_Finalize(NULL);
        return 1;
    }
    key = find_key(s, label);
    if (key == 0) {
        printf("k8s-kms: no AES key labelled %s\n", label);
        f->C_Finalize(NULL);
        return 2;
    }
    for (i = 0; i < rounds; i++)
        round_trip(s, key, i, last_nonce);
    f->C_Logout(s);
    f->C_CloseSession(s);
    f->C_Finalize(NULL);
    dlclose(dl);
    printf("k8s-kms: %ld rounds, %d failures\n", rounds, failures);
    return failures == 0 ? 0 : 1;
}
