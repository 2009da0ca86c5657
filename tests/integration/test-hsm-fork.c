/*
 * fork() on the hsm back end: in the child every call returns
 * CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize; then it logs
 * in and unwraps (with the lower SoftHSM module initialised afresh), and
 * so does the parent, before and after the child is done.
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

/* Bits of the child's exit status. */
#define C_NOT_INIT_SLOTS   0x01
#define C_NOT_INIT_SESSION 0x02
#define C_REINIT           0x04
#define C_LOGIN            0x08
#define C_UNWRAP           0x10
#define C_FINALIZE         0x20

static int child(const char *conf, CK_SESSION_HANDLE parent_sess,
                 const unsigned char *key, const unsigned char *blob,
                 CK_ULONG len)
{
    CK_SESSION_INFO si;
    CK_SLOT_ID slot;
    CK_ULONG n = 1;
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE priv;
    int r = 0;

    if (p11->C_GetSlotList(CK_TRUE, &slot, &n) == CKR_CRYPTOKI_NOT_INITIALIZED)
        r |= C_NOT_INIT_SLOTS;
    if (p11->C_GetSessionInfo(parent_sess, &si) == CKR_CRYPTOKI_NOT_INITIALIZED)
        r |= C_NOT_INIT_SESSION;
    if (p11_init(conf) == CKR_OK)
        r |= C_REINIT;
    n = 1;
    if (p11->C_GetSlotList(CK_TRUE, &slot, &n) == CKR_OK &&
        p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                           NULL, &s) == CKR_OK &&
        p11->C_Login(s, CKU_USER, (CK_UTF8CHAR *)HSM_PIN, strlen(HSM_PIN)) ==
            CKR_OK)
        r |= C_LOGIN;
    priv = p11_find(s, CKO_PRIVATE_KEY, "kek");
    if (priv != 0 && hsm_unwrap_check(s, priv, blob, len, key, 32) == CKR_OK)
        r |= C_UNWRAP;
    if (p11->C_Finalize(NULL) == CKR_OK)
        r |= C_FINALIZE;
    return r;
}

int main(void)
{
    char *conf = hsm_setup(NULL);
    CK_SESSION_HANDLE s = hsm_open(conf);
    CK_OBJECT_HANDLE priv = p11_find(s, CKO_PRIVATE_KEY, "kek");
    EVP_PKEY *pk = p11_public_key(s, p11_find(s, CKO_PUBLIC_KEY, "kek"));
    unsigned char key[32], blob[512];
    CK_ULONG len = 0;
    pid_t pid;
    int st = 0, r, round;

    RAND_bytes(key, sizeof(key));
    if (pk != NULL)
        len = (CK_ULONG)p11_oaep_wrap(pk, NULL, key, sizeof(key), blob);
    ok(priv != 0 && len == 256, "a data key wrapped under kek");
    is_rv(hsm_unwrap_check(s, priv, blob, len, key, 32), CKR_OK,
          "the parent unwraps before the fork");

    for (round = 0; round < 2; round++) {
        fflush(stdout);
        pid = fork();
        if (pid == 0)
            _exit(child(conf, s, key, blob, len));
        if (round == 1) {
            /* The parent works while the child does. */
            is_rv(hsm_unwrap_check(s, priv, blob, len, key, 32), CKR_OK,
                  "the parent unwraps while a child runs");
        }
        ok(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st),
           "child %d exits normally", round + 1);
        r = WIFEXITED(st) ? WEXITSTATUS(st) : 0;
        ok(r & C_NOT_INIT_SLOTS,
           "child %d: C_GetSlotList is CKR_CRYPTOKI_NOT_INITIALIZED",
           round + 1);
        ok(r & C_NOT_INIT_SESSION,
           "child %d: the parent's session is CKR_CRYPTOKI_NOT_INITIALIZED",
           round + 1);
        ok(r & C_REINIT, "child %d: C_Initialize", round + 1);
        ok(r & C_LOGIN, "child %d: open a session and log in", round + 1);
        ok(r & C_UNWRAP, "child %d: unwrap the data key", round + 1);
        ok(r & C_FINALIZE, "child %d: C_Finalize", round + 1);
        is_rv(hsm_unwrap_check(s, priv, blob, len, key, 32), CKR_OK,
              "the parent still unwraps after the child");
    }
    EVP_PKEY_free(pk);
    is_rv(p11->C_Finalize(NULL), CKR_OK, "finalize");
    free(conf);
    return test_done();
}
