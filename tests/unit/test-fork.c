/*
 * fork(): the child sees CKR_CRYPTOKI_NOT_INITIALIZED until it calls
 * C_Initialize, then works on its own; the parent is unaffected. Also a
 * fork while another thread of the parent is inside a slow call.
 * The child reports its checks through a pipe; the parent prints them.
 */
#include "config.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"

#define CONF                                                                   \
    "[cmkp11]\nlog-level = error\n\n"                                          \
    "[token fast]\nbackend = mock\n\n"                                         \
    "[token slow]\nbackend = mock\ndelay-ms = 200\n"

static char *conf;
static int report_fd = -1;

static CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256,
                                       CKZ_DATA_SPECIFIED, NULL, 0};

static void child_ok(bool cond, const char *what)
{
    dprintf(report_fd, "%d child: %s\n", cond ? 1 : 0, what);
}

static void child_rv(CK_RV got, CK_RV want, const char *what)
{
    dprintf(report_fd, "%d child: %s (0x%lx, want 0x%lx)\n",
            got == want ? 1 : 0, what, got, want);
}

/* Runs fn in a child; prints its checks as TAP; checks its exit. */
static void in_child(void (*fn)(void *), void *arg, const char *name)
{
    int p[2], status = 0;
    pid_t pid;
    FILE *f;
    char line[512];
    int lines = 0;

    if (pipe(p) != 0)
        test_bail("pipe");
    fflush(stdout);
    pid = fork();
    if (pid < 0)
        test_bail("fork");
    if (pid == 0) {
        close(p[0]);
        report_fd = p[1];
        alarm(20);
        fn(arg);
        close(p[1]);
        _exit(0);
    }
    close(p[1]);
    f = fdopen(p[0], "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        ok(line[0] == '1', "%s", line + 2);
        lines++;
    }
    if (f != NULL)
        fclose(f);
    waitpid(pid, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
       "%s: the child exited normally (status 0x%x)", name, status);
    ok(lines > 0, "%s: the child reported %d checks", name, lines);
}

struct ctx {
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE priv, pub;
    CK_SLOT_ID slot;
    unsigned char key[32];
    CK_BYTE wrapped[512];
    CK_ULONG wlen;
};

static CK_RV unwrap_check(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                          const struct ctx *c)
{
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &sk, sizeof(sk)},
                           {CKA_KEY_TYPE, &aes, sizeof(aes)},
                           {CKA_SENSITIVE, &f, sizeof(f)},
                           {CKA_EXTRACTABLE, &t, sizeof(t)}};
    CK_OBJECT_HANDLE un = 0;
    CK_BYTE value[64];
    CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
    CK_RV rv;

    rv = p11->C_UnwrapKey(s, &m, priv, (CK_BYTE *)c->wrapped, c->wlen, tmpl, 4,
                          &un);
    if (rv == CKR_OK)
        rv = p11->C_GetAttributeValue(s, un, &v, 1);
    if (rv == CKR_OK && (v.ulValueLen != 32 || memcmp(value, c->key, 32) != 0))
        rv = CKR_GENERAL_ERROR;
    if (un != 0)
        p11->C_DestroyObject(s, un);
    return rv;
}

/* Wraps a fresh random key under the slot's mock-key. */
static void prepare(struct ctx *c, CK_SLOT_ID slot)
{
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &sk, sizeof(sk)},
                        {CKA_KEY_TYPE, &aes, sizeof(aes)},
                        {CKA_VALUE, c->key, sizeof(c->key)},
                        {CKA_EXTRACTABLE, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE dek = 0;

    c->slot = slot;
    c->s = p11_open(slot, true);
    c->priv = p11_find(c->s, CKO_PRIVATE_KEY, "mock-key");
    c->pub = p11_find(c->s, CKO_PUBLIC_KEY, "mock-key");
    RAND_bytes(c->key, sizeof(c->key));
    c->wlen = sizeof(c->wrapped);
    if (c->s == 0 || c->priv == 0 || c->pub == 0 ||
        p11->C_CreateObject(c->s, t, 4, &dek) != CKR_OK ||
        p11->C_WrapKey(c->s, &m, c->pub, dek, c->wrapped, &c->wlen) != CKR_OK)
        test_bail("cannot prepare a wrapped key on slot %lu", slot);
    p11->C_DestroyObject(c->s, dek);
}

/* The calls a child makes before C_Initialize. */
static void child_before_init(struct ctx *c)
{
    CK_INFO info;
    CK_SESSION_INFO si;
    CK_ULONG n = 0;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_HANDLE h;
    CK_BYTE buf[16];
    CK_ATTRIBUTE a = {CKA_LABEL, NULL, 0};

    child_rv(p11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED, "C_GetInfo");
    child_rv(p11->C_GetSlotList(CK_FALSE, NULL, &n),
             CKR_CRYPTOKI_NOT_INITIALIZED, "C_GetSlotList");
    child_rv(p11->C_GetSessionInfo(c->s, &si), CKR_CRYPTOKI_NOT_INITIALIZED,
             "C_GetSessionInfo of the parent's session");
    child_rv(p11->C_GetAttributeValue(c->s, c->priv, &a, 1),
             CKR_CRYPTOKI_NOT_INITIALIZED, "C_GetAttributeValue");
    child_rv(p11->C_FindObjectsInit(c->s, NULL, 0),
             CKR_CRYPTOKI_NOT_INITIALIZED, "C_FindObjectsInit");
    child_rv(p11->C_DecryptInit(c->s, &m, c->priv),
             CKR_CRYPTOKI_NOT_INITIALIZED, "C_DecryptInit");
    child_rv(
        p11->C_UnwrapKey(c->s, &m, c->priv, c->wrapped, c->wlen, NULL, 0, &h),
        CKR_CRYPTOKI_NOT_INITIALIZED, "C_UnwrapKey");
    child_rv(p11->C_GenerateRandom(c->s, buf, sizeof(buf)),
             CKR_CRYPTOKI_NOT_INITIALIZED, "C_GenerateRandom");
    child_rv(p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &h),
             CKR_CRYPTOKI_NOT_INITIALIZED, "C_OpenSession");
    child_rv(p11->C_CloseSession(c->s), CKR_CRYPTOKI_NOT_INITIALIZED,
             "C_CloseSession");
    child_rv(p11->C_CloseAllSessions(0), CKR_CRYPTOKI_NOT_INITIALIZED,
             "C_CloseAllSessions");
    child_rv(p11->C_Login(c->s, CKU_USER, (CK_UTF8CHAR *)"1", 1),
             CKR_CRYPTOKI_NOT_INITIALIZED, "C_Login");
    child_rv(p11->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED, "C_Finalize");
}

static void child_after_init(struct ctx *c)
{
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE priv;
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;
    CK_RV rv;

    rv = p11_init(conf);
    child_rv(rv, CKR_OK, "C_Initialize");
    if (rv != CKR_OK)
        return;
    child_rv(p11->C_GetSessionInfo(c->s, &si), CKR_SESSION_HANDLE_INVALID,
             "the parent's session handle means nothing here");
    child_rv(p11->C_GetTokenInfo(c->slot, &ti), CKR_OK, "C_GetTokenInfo");
    child_ok(ti.ulSessionCount == 0, "no sessions inherited");
    child_rv(p11->C_OpenSession(c->slot, CKF_SERIAL_SESSION, NULL, NULL, &s),
             CKR_OK, "C_OpenSession");
    priv = p11_find(s, CKO_PRIVATE_KEY, "mock-key");
    child_ok(priv != 0, "the key is found");
    child_rv(unwrap_check(s, priv, c), CKR_OK, "an unwrap works");
    child_rv(p11->C_CloseSession(s), CKR_OK, "C_CloseSession");
    child_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    child_rv(p11->C_GetSessionInfo(s, &si), CKR_CRYPTOKI_NOT_INITIALIZED,
             "after C_Finalize");
    child_rv(p11_init(conf), CKR_OK, "C_Initialize again");
    child_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize again");
}

static void child_simple(void *arg)
{
    child_before_init(arg);
    child_after_init(arg);
}

static void test_simple_fork(void)
{
    struct ctx c;
    CK_SESSION_INFO si;

    prepare(&c, 0);
    is_rv(unwrap_check(c.s, c.priv, &c), CKR_OK, "parent unwraps before fork");
    in_child(child_simple, &c, "plain fork");
    is_rv(p11->C_GetSessionInfo(c.s, &si), CKR_OK,
          "parent: the old session is still valid");
    is_rv(unwrap_check(c.s, c.priv, &c), CKR_OK,
          "parent: still unwraps with its old session");
    in_child(child_simple, &c, "second fork");
    is_rv(unwrap_check(c.s, c.priv, &c), CKR_OK,
          "parent: still unwraps after a second fork");
    p11->C_CloseSession(c.s);
}

struct busy {
    struct ctx *c;
    CK_RV rv;
    int started;
};

static void *busy_main(void *arg)
{
    struct busy *b = arg;

    __atomic_store_n(&b->started, 1, __ATOMIC_SEQ_CST);
    b->rv = unwrap_check(b->c->s, b->c->priv, b->c);
    return NULL;
}

static void child_busy(void *arg)
{
    /* The parent's other thread is inside C_UnwrapKey, holding the
     * module's read lock and its session's lock; alarm() bounds us. */
    child_rv(p11->C_GetInfo(&(CK_INFO){0}), CKR_CRYPTOKI_NOT_INITIALIZED,
             "C_GetInfo during the parent's slow call");
    child_after_init(arg);
}

static void test_fork_during_call(void)
{
    struct ctx c;
    struct busy b;
    pthread_t th;
    struct timespec ts = {0, 60 * 1000000L};

    prepare(&c, 1);
    memset(&b, 0, sizeof(b));
    b.c = &c;
    pthread_create(&th, NULL, busy_main, &b);
    while (!__atomic_load_n(&b.started, __ATOMIC_SEQ_CST))
        sched_yield();
    nanosleep(&ts, NULL);
    in_child(child_busy, &c, "fork during a slow call");
    pthread_join(th, NULL);
    is_rv(b.rv, CKR_OK, "parent: the slow call completed");
    is_rv(unwrap_check(c.s, c.priv, &c), CKR_OK,
          "parent: unwraps after the fork");
    p11->C_CloseSession(c.s);
}

int main(void)
{
    p11_load(NULL);
    conf = p11_write_file("fork.conf", CONF);
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    test_simple_fork();
    test_fork_during_call();
    is_rv(p11->C_Finalize(NULL), CKR_OK, "parent: C_Finalize");
    free(conf);
    return test_done();
}
