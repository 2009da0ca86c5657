/*
 * Process exit with cmkp11 and a SoftHSM token loaded, sessions open and
 * keys used: consumers that call C_Finalize from an atexit handler
 * (registered before C_Initialize, so it runs after the lower module's
 * destructors, or after it, so it runs before them), one that calls it
 * from a destructor, and ones that never call it, with sessions or an
 * operation left active. None may crash: each child must exit with
 * status 0 and no signal.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "hsm-setup.h"
#include "test.h"

static const char *conf;

static void finalize_at_exit(void)
{
    CK_RV rv = p11->C_Finalize(NULL);

    /* Any answer but a crash; a second C_Finalize is refused. */
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_NOT_INITIALIZED)
        _exit(3);
}

static void close_all_at_exit(void)
{
    p11->C_CloseAllSessions(0);
    p11->C_Finalize(NULL);
}

static int dtor_finalize;

__attribute__((destructor)) static void finalize_in_destructor(void)
{
    if (dtor_finalize && p11 != NULL)
        p11->C_Finalize(NULL);
}

/* Loads the module, opens sessions and unwraps: a consumer at work. */
static void work(bool leave_operation)
{
    CK_SESSION_HANDLE s = hsm_open(conf), s2;
    CK_OBJECT_HANDLE priv = p11_find(s, CKO_PRIVATE_KEY, "kek");
    EVP_PKEY *pk = p11_public_key(s, p11_find(s, CKO_PUBLIC_KEY, "kek"));
    unsigned char key[32], blob[512];
    CK_ULONG len;
    CK_SLOT_ID slot = 0;
    CK_ULONG n = 1;

    RAND_bytes(key, sizeof(key));
    len = pk ? (CK_ULONG)p11_oaep_wrap(pk, NULL, key, sizeof(key), blob) : 0;
    if (priv == 0 || hsm_unwrap_check(s, priv, blob, len, key, 32) != CKR_OK)
        _exit(2);
    p11->C_GetSlotList(CK_TRUE, &slot, &n);
    s2 = p11_open(slot, false);
    (void)p11_aes_key(s2, 32, false, true); /* a session key left behind */
    if (leave_operation) {
        CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
        p11->C_SignInit(s2, &m, priv);
        p11->C_SignUpdate(s2, key, sizeof(key));
    }
    EVP_PKEY_free(pk);
}

enum scenario {
    ATEXIT_BEFORE_INIT,
    ATEXIT_AFTER_INIT,
    ATEXIT_CLOSE_ALL,
    DESTRUCTOR,
    NEVER,
    NEVER_WITH_OPERATION,
    SCENARIOS
};

static const char *const names[SCENARIOS] = {
    "C_Finalize in an atexit handler registered before C_Initialize",
    "C_Finalize in an atexit handler registered after C_Initialize",
    "C_CloseAllSessions and C_Finalize at exit (as libp11 does)",
    "C_Finalize in a destructor",
    "never C_Finalize, sessions open",
    "never C_Finalize, a multi-part sign left active",
};

static void run(enum scenario sc)
{
    switch (sc) {
    case ATEXIT_BEFORE_INIT:
        atexit(finalize_at_exit);
        work(false);
        break;
    case ATEXIT_AFTER_INIT:
        work(false);
        atexit(finalize_at_exit);
        break;
    case ATEXIT_CLOSE_ALL:
        atexit(close_all_at_exit);
        work(false);
        break;
    case DESTRUCTOR:
        dtor_finalize = 1;
        work(false);
        break;
    case NEVER:
        work(false);
        break;
    case NEVER_WITH_OPERATION:
        work(true);
        break;
    case SCENARIOS:
        break;
    }
    exit(0);
}

int main(void)
{
    int sc, st;
    pid_t pid;

    conf = hsm_setup(NULL);
    for (sc = 0; sc < SCENARIOS; sc++) {
        fflush(stdout);
        pid = fork();
        if (pid == 0)
            run((enum scenario)sc);
        ok(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
               WEXITSTATUS(st) == 0,
           "%s: exit status 0, no signal", names[sc]);
        if (WIFSIGNALED(st))
            test_diag("  killed by signal %d", WTERMSIG(st));
        else if (WIFEXITED(st) && WEXITSTATUS(st) != 0)
            test_diag("  exit status %d", WEXITSTATUS(st));
    }
    return test_done();
}
