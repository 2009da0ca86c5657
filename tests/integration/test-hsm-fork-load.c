/*
 * fork() under load on the hsm back end: two threads of the parent unwrap
 * without pause on their own sessions (inside SoftHSM most of the time)
 * while the parent forks 20 children, one after another at different
 * points of the threads' work. Each child does one of:
 *   - exit() without C_Initialize (its calls are
 *     CKR_CRYPTOKI_NOT_INITIALIZED);
 *   - C_Initialize, log in, unwrap, C_Finalize, exit();
 *   - C_Initialize, log in, unwrap, exit() without C_Finalize.
 * Every child must end by itself with status 0 (each step gave the exact
 * CKR expected); one that is still running after a generous bound is
 * killed and counted as hung. The parent's threads must not see a single
 * failure either.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "hsm-setup.h"
#include "test.h"

/*
 * Under LeakSanitizer, a child forked while other threads ran sees what
 * those threads held (on stacks it cannot scan) as leaked: the children
 * make no check at exit, and the parent checks itself before it returns.
 */
const char *__lsan_default_options(void) __attribute__((visibility("default")));
const char *__lsan_default_options(void)
{
    return "leak_check_at_exit=0";
}
void __lsan_do_leak_check(void) __attribute__((weak));

#define CHILDREN 20
#define THREADS  2
/* Far beyond what a child needs (well under a second): only a hang gets
 * near it. */
#define CHILD_BOUND_S 120

static char *conf;
static char login_lock[600];
static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE priv;
static unsigned char key[32], blob[512];
static CK_ULONG blob_len;
static int stop;     /* atomic */
static long unwraps; /* atomic: progress of the parent's threads */
static int running;  /* atomic: the parent's threads still at work */

struct worker {
    int good, bad;
    CK_RV first_error;
};

static void *unwrapper(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE s = 0;
    CK_RV rv;

    rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                            NULL, &s);
    while (rv == CKR_OK && !__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        rv = hsm_unwrap_check(s, priv, blob, blob_len, key, sizeof(key));
        if (rv == CKR_OK) {
            w->good++;
            __atomic_add_fetch(&unwraps, 1, __ATOMIC_RELEASE);
        }
    }
    if (rv != CKR_OK) {
        w->bad++;
        w->first_error = rv;
    }
    if (s != 0)
        p11->C_CloseSession(s);
    __atomic_sub_fetch(&running, 1, __ATOMIC_RELEASE);
    return NULL;
}

enum mode { EXIT_UNINITIALISED, USE_AND_FINALIZE, USE_AND_EXIT, MODES };

static const char *const mode_name[MODES] = {
    "exit() without C_Initialize",
    "C_Initialize, unwrap, C_Finalize",
    "C_Initialize, unwrap, exit() without C_Finalize",
};

/* The child's steps; its exit status is the number of the first step that
 * did not give the expected CKR (0: all did). */
static const char *const step_name[] = {
    "all steps",
    "C_GetSlotList before C_Initialize is CKR_CRYPTOKI_NOT_INITIALIZED",
    "the parent's session is CKR_CRYPTOKI_NOT_INITIALIZED",
    "C_Initialize is CKR_OK",
    "C_GetSlotList is CKR_OK with one slot",
    "C_OpenSession is CKR_OK",
    "C_Login is CKR_OK",
    "the private key kek is found",
    "C_UnwrapKey is CKR_OK with the right value",
    "C_Finalize is CKR_OK",
};

static int child(enum mode mode, CK_SESSION_HANDLE parent_sess)
{
    CK_SESSION_INFO si;
    CK_SLOT_ID sl;
    CK_ULONG n = 1;
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE k;
    int lock;

    if (p11->C_GetSlotList(CK_TRUE, &sl, &n) != CKR_CRYPTOKI_NOT_INITIALIZED)
        return 1;
    if (p11->C_GetSessionInfo(parent_sess, &si) != CKR_CRYPTOKI_NOT_INITIALIZED)
        return 2;
    if (mode == EXIT_UNINITIALISED)
        return 0;
    /* SoftHSM 2.6.1 rewrites its token file at every C_Login, and a
     * process that reads it meanwhile (in its C_Initialize) does not find
     * the token: the children take turns from C_Initialize to C_Login. */
    lock = open(login_lock, O_RDWR | O_CREAT, 0600);
    if (lock >= 0)
        flock(lock, LOCK_EX);
    if (p11_init(conf) != CKR_OK)
        return 3;
    n = 1;
    if (p11->C_GetSlotList(CK_TRUE, &sl, &n) != CKR_OK || n != 1)
        return 4;
    if (p11->C_OpenSession(sl, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                           &s) != CKR_OK)
        return 5;
    if (p11->C_Login(s, CKU_USER, (CK_UTF8CHAR *)HSM_PIN, strlen(HSM_PIN)) !=
        CKR_OK)
        return 6;
    if (lock >= 0)
        close(lock);
    k = p11_find(s, CKO_PRIVATE_KEY, "kek");
    if (k == 0)
        return 7;
    if (hsm_unwrap_check(s, k, blob, blob_len, key, sizeof(key)) != CKR_OK)
        return 8;
    if (mode == USE_AND_FINALIZE && p11->C_Finalize(NULL) != CKR_OK)
        return 9;
    return 0;
}

/* Waits for the parent's threads to finish one more unwrap each (about),
 * so that forks fall at different points of their work. */
static void await_progress(void)
{
    long start = __atomic_load_n(&unwraps, __ATOMIC_ACQUIRE);
    struct timespec ts = {0, 1000000};

    while (__atomic_load_n(&unwraps, __ATOMIC_ACQUIRE) < start + THREADS &&
           __atomic_load_n(&running, __ATOMIC_ACQUIRE) > 0)
        nanosleep(&ts, NULL);
}

int main(void)
{
    CK_SESSION_HANDLE s;
    pthread_t th[THREADS];
    static struct worker workers[THREADS];
    pid_t pids[CHILDREN];
    int status[CHILDREN];
    bool done[CHILDREN];
    EVP_PKEY *pk;
    CK_ULONG n = 1;
    int i, left, hung = 0, crashed = 0, wrong = 0, good = 0, bad = 0;
    time_t deadline;

    conf = hsm_setup(NULL);
    snprintf(login_lock, sizeof(login_lock), "%s/login.lock", p11_tmpdir());
    s = hsm_open(conf);
    p11->C_GetSlotList(CK_TRUE, &slot, &n);
    priv = p11_find(s, CKO_PRIVATE_KEY, "kek");
    pk = p11_public_key(s, p11_find(s, CKO_PUBLIC_KEY, "kek"));
    RAND_bytes(key, sizeof(key));
    blob_len =
        pk ? (CK_ULONG)p11_oaep_wrap(pk, NULL, key, sizeof(key), blob) : 0;
    EVP_PKEY_free(pk);
    ok(priv != 0 && blob_len == 256, "a data key wrapped under kek");
    is_rv(hsm_unwrap_check(s, priv, blob, blob_len, key, sizeof(key)), CKR_OK,
          "the parent unwraps it");

    running = THREADS;
    for (i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, unwrapper, &workers[i]);
    for (i = 0; i < CHILDREN; i++) {
        await_progress();
        fflush(stdout);
        pids[i] = fork();
        if (pids[i] == 0) {
            alarm(CHILD_BOUND_S); /* the child's own bound */
            exit(child((enum mode)(i % MODES), s));
        }
        done[i] = pids[i] < 0;
        status[i] = 0;
        if (pids[i] < 0)
            test_diag("fork: %s", strerror(errno));
    }

    /* Every child ends by itself, or is killed at the bound. */
    deadline = time(NULL) + CHILD_BOUND_S + 10;
    for (left = CHILDREN; left > 0;) {
        struct timespec ts = {0, 10000000};
        for (i = 0; i < CHILDREN; i++) {
            if (done[i] || waitpid(pids[i], &status[i], WNOHANG) != pids[i])
                continue;
            done[i] = true;
            left--;
        }
        if (left > 0 && time(NULL) > deadline) {
            for (i = 0; i < CHILDREN; i++)
                if (!done[i]) {
                    kill(pids[i], SIGKILL);
                    waitpid(pids[i], &status[i], 0);
                    status[i] = -1;
                    done[i] = true;
                    left--;
                }
        }
        if (left > 0)
            nanosleep(&ts, NULL);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        good += workers[i].good;
        bad += workers[i].bad;
        if (workers[i].bad)
            test_diag("parent thread %d: failed with 0x%lx", i,
                      workers[i].first_error);
    }

    for (i = 0; i < CHILDREN; i++) {
        int st = status[i];
        const char *what = mode_name[i % MODES];
        if (pids[i] < 0) {
            crashed++;
        } else if (st == -1 || (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)) {
            hung++;
            test_diag("child %d (%s) hung", i, what);
        } else if (WIFSIGNALED(st)) {
            crashed++;
            test_diag("child %d (%s) died of signal %d", i, what, WTERMSIG(st));
        } else if (WEXITSTATUS(st) != 0) {
            wrong++;
            test_diag("child %d (%s): not so: %s", i, what,
                      WEXITSTATUS(st) < (int)CMK_ARRAY_SIZE(step_name)
                          ? step_name[WEXITSTATUS(st)]
                          : "(exit status unknown)");
        }
    }
    is_num(hung, 0, "%d children forked under load: none hangs", CHILDREN);
    is_num(crashed, 0, "none crashes");
    is_num(wrong, 0, "each child's calls give the exact CKRs");
    ok(good > 0, "the parent's threads unwrapped meanwhile (%d)", good);
    is_num(bad, 0, "no unwrap of the parent's threads failed");
    is_rv(hsm_unwrap_check(s, priv, blob, blob_len, key, sizeof(key)), CKR_OK,
          "the parent still unwraps after its children");
    is_rv(p11->C_Finalize(NULL), CKR_OK, "finalize");
    free(conf);
    if (__lsan_do_leak_check != NULL)
        __lsan_do_leak_check();
    return test_done();
}
