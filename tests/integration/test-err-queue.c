/*
 * The application's OpenSSL error queue across calls into cmkp11: the
 * module, a lower module (SoftHSM), libcurl and OpenSSL may push errors on
 * the calling thread's queue, and none may be left there when a call
 * returns. nginx fails a TLS handshake on any error it finds after
 * SSL_do_handshake(), whose signature came through libp11 and cmkp11.
 *
 *   test-err-queue            on an hsm token of its own (SoftHSM)
 *   test-err-queue TOKEN KEY  on TOKEN of $CMKP11_CONF (a keyvault token)
 *
 * Each case runs the first use of the token: C_Initialize, a session, a
 * login where the token wants one, a search, a signature, a wrap and an
 * unwrap, C_Finalize; after each call the queue must be as it was before:
 *   - empty, when the application had pushed nothing;
 *   - holding the application's own error, and only it, when it had.
 * Both in a fresh process, and in a child forked after the parent
 * initialised the module (the child's C_Initialize initialises the lower
 * module again: the case nginx's workers meet).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>

#include "hsm-setup.h"
#include "test.h"

#define APP_REASON 77

static const char *conf; /* for pReserved, or NULL: $CMKP11_CONF */
static const char *token = "local", *key = "kek";
static const char *failed_step;
static int app_line; /* where the application's error was raised */

static unsigned long app_error(void)
{
    return ERR_PACK(ERR_LIB_USER, 0, APP_REASON);
}

/* The queue holds nothing, or exactly the application's error. */
static bool queue_as_before(bool pushed)
{
    unsigned long want = pushed ? app_error() : 0;

    return ERR_peek_error() == want && ERR_peek_last_error() == want;
}

#define STEP(what, call, want)                                                 \
    do {                                                                       \
        CK_RV rv_ = (call);                                                    \
        if (rv_ != (want)) {                                                   \
            fprintf(stderr, "%s: 0x%lx, want 0x%lx\n", what, rv_,              \
                    (CK_RV)(want));                                            \
            failed_step = what;                                                \
            return 1;                                                          \
        }                                                                      \
        if (!queue_as_before(pushed)) {                                        \
            fprintf(stderr, "%s left errors on the queue:\n", what);           \
            ERR_print_errors_fp(stderr);                                       \
            failed_step = what;                                                \
            return 2;                                                          \
        }                                                                      \
    } while (0)

static CK_RV init(void)
{
    CK_C_INITIALIZE_ARGS a;
    char reserved[1024];

    if (conf == NULL)
        return p11->C_Initialize(NULL);
    memset(&a, 0, sizeof(a));
    a.flags = CKF_OS_LOCKING_OK;
    snprintf(reserved, sizeof(reserved), "conf=%s", conf);
    a.pReserved = reserved;
    return p11->C_Initialize(&a);
}

static CK_RV find_slot(CK_SLOT_ID *slot)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16, i;
    CK_TOKEN_INFO ti;
    size_t len = strlen(token);
    CK_RV rv = p11->C_GetSlotList(CK_TRUE, slots, &n);

    for (i = 0; rv == CKR_OK && i < n; i++) {
        rv = p11->C_GetTokenInfo(slots[i], &ti);
        if (rv == CKR_OK && memcmp(ti.label, token, len) == 0 &&
            ti.label[len] == ' ') {
            *slot = slots[i];
            return CKR_OK;
        }
    }
    return rv == CKR_OK ? CKR_SLOT_ID_INVALID : rv;
}

static CK_RV find_key(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                      CK_OBJECT_HANDLE *h)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)key, strlen(key)},
    };
    CK_ULONG n = 0;
    CK_RV rv = p11->C_FindObjectsInit(s, t, 2);

    if (rv == CKR_OK)
        rv = p11->C_FindObjects(s, h, 1, &n);
    if (rv == CKR_OK)
        rv = p11->C_FindObjectsFinal(s);
    return rv == CKR_OK && n != 1 ? CKR_OBJECT_HANDLE_INVALID : rv;
}

/* The first use of the token, checking the queue after each call; 0 when
 * every call gave CKR_OK and left the queue as it was. */
static int first_use(bool pushed, bool finalize)
{
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256,
                                  CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_MECHANISM sha256_rsa = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_MECHANISM aes_gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG klen = 32, blen, slen;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE gen[] = {
        {CKA_VALUE_LEN, &klen, sizeof(klen)},
        {CKA_TOKEN, &f, sizeof(f)},
        {CKA_EXTRACTABLE, &t, sizeof(t)},
    };
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &f, sizeof(f)},       {CKA_SENSITIVE, &t, sizeof(t)},
        {CKA_EXTRACTABLE, &f, sizeof(f)}, {CKA_DECRYPT, &t, sizeof(t)},
    };
    CK_BYTE msg[] = "signed through cmkp11", sig[512], blob[512];
    CK_SLOT_ID slot = 0;
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE priv = 0, pub = 0, dk = 0, back = 0;
    CK_TOKEN_INFO ti;

    if (pushed) {
        app_line = __LINE__ + 1;
        ERR_raise_data(ERR_LIB_USER, APP_REASON, "the application's own");
    }
    STEP("C_Initialize", init(), CKR_OK);
    STEP("C_GetSlotList and C_GetTokenInfo", find_slot(&slot), CKR_OK);
    STEP("C_OpenSession",
         p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                            NULL, &s),
         CKR_OK);
    STEP("C_GetTokenInfo", p11->C_GetTokenInfo(slot, &ti), CKR_OK);
    if (ti.flags & CKF_LOGIN_REQUIRED)
        STEP("C_Login",
             p11->C_Login(s, CKU_USER, (CK_UTF8CHAR *)HSM_PIN, strlen(HSM_PIN)),
             CKR_OK);
    STEP("a search for the private key", find_key(s, CKO_PRIVATE_KEY, &priv),
         CKR_OK);
    STEP("a search for the public key", find_key(s, CKO_PUBLIC_KEY, &pub),
         CKR_OK);
    STEP("C_SignInit", p11->C_SignInit(s, &sha256_rsa, priv), CKR_OK);
    slen = sizeof(sig);
    STEP("C_Sign", p11->C_Sign(s, msg, sizeof(msg) - 1, sig, &slen), CKR_OK);
    STEP("C_GenerateKey",
         p11->C_GenerateKey(s, &aes_gen, gen, CMK_ARRAY_SIZE(gen), &dk),
         CKR_OK);
    blen = sizeof(blob);
    STEP("C_WrapKey", p11->C_WrapKey(s, &oaep, pub, dk, blob, &blen), CKR_OK);
    STEP("C_UnwrapKey",
         p11->C_UnwrapKey(s, &oaep, priv, blob, blen, tmpl,
                          CMK_ARRAY_SIZE(tmpl), &back),
         CKR_OK);
    STEP("C_CloseSession", p11->C_CloseSession(s), CKR_OK);
    if (finalize)
        STEP("C_Finalize", p11->C_Finalize(NULL), CKR_OK);
    if (pushed) {
        /* Exactly the application's error, which it can still read. */
        const char *file = NULL, *func = NULL, *data = NULL;
        int line = 0, flags = 0;
        unsigned long e = ERR_get_error_all(&file, &line, &func, &data, &flags);
        if (e != app_error() || data == NULL ||
            strcmp(data, "the application's own") != 0 || file == NULL ||
            strstr(file, "test-err-queue.c") == NULL || line != app_line ||
            ERR_get_error() != 0) {
            failed_step = "the application's error at the end";
            return 3;
        }
    }
    return 0;
}

/* The same in a child forked after the parent initialised the module. */
static int in_child(bool pushed)
{
    pid_t pid;
    int st = 0;

    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        /* The parent's queue is the child's too: start as it started. */
        ERR_clear_error();
        _exit(first_use(pushed, true));
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
    char *own_conf = NULL;
    int r;

    if (argc == 3) {
        token = argv[1];
        key = argv[2];
    } else {
        conf = own_conf = hsm_setup(NULL);
    }
    p11_load(getenv("CMKP11_MODULE"));

    r = first_use(false, true);
    ok(r == 0, "%s: first use in a fresh process leaves the queue empty%s%s",
       token, r ? ": not after " : "", r ? failed_step : "");
    ok(ERR_peek_error() == 0, "%s: and the queue is empty", token);
    r = first_use(true, true);
    ok(r == 0,
       "%s: with an error of the application's own, it stays, alone%s%s", token,
       r ? ": not after " : "", r ? failed_step : "");

    /* Initialised in the parent, then forked (nginx's master and
     * workers). */
    ERR_clear_error();
    is_rv(init(), CKR_OK, "C_Initialize in the parent");
    r = in_child(false);
    ok(r == 0, "%s: first use in a forked child leaves the queue empty (%d)",
       token, r);
    r = in_child(true);
    ok(r == 0,
       "%s: in a forked child, the application's error stays, alone (%d)",
       token, r);
    ok(ERR_peek_error() == 0, "%s: the parent's queue is still empty", token);
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize in the parent");
    free(own_conf);
    return test_done();
}
