/*
 * C_Initialize, C_Finalize, C_GetInfo; initialisation state and fork.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "audit.h"
#include "call.h"
#include "pcall.h"
#include "softkey.h"
#include "rsa.h"
#include "secure.h"

struct module_state g = {
    .rwlock = PTHREAD_RWLOCK_INITIALIZER,
    .mutex = PTHREAD_MUTEX_INITIALIZER,
};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/*
 * Fork: the prepare handler takes the table mutex so the child sees
 * consistent tables; the child gets fresh locks (another thread of the
 * parent may have held the rwlock) and, through the pid check in
 * module_enter(), CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize.
 */
/* The locks a fork must not split, outermost first: the back ends' (the
 * hsm back end waits there for the calls into lower modules in progress,
 * which must not need a lock held meanwhile), the module's tables, then
 * the secure memory pool and the log sink (taken inside it). */
static void atfork_prepare(void)
{
    providers_atfork(PROVIDER_FORK_PREPARE);
    pthread_mutex_lock(&g.mutex);
    rsa_atfork_prepare();
    attrs_atfork_prepare();
    secure_atfork_prepare();
    cmk_log_atfork_prepare();
}

static void atfork_parent(void)
{
    cmk_log_atfork_release();
    secure_atfork_release();
    attrs_atfork_release();
    rsa_atfork_release();
    pthread_mutex_unlock(&g.mutex);
    providers_atfork(PROVIDER_FORK_PARENT);
}

/* Forks since the library was loaded; a module initialised in another
 * generation belongs to a parent. Cheaper than getpid() on every call. */
static unsigned long fork_generation;

static void atfork_child(void)
{
    pthread_rwlock_t fresh = PTHREAD_RWLOCK_INITIALIZER;

    fork_generation++;
    memcpy(&g.rwlock, &fresh, sizeof(fresh));
    cmk_log_atfork_release();
    secure_atfork_release();
    attrs_atfork_release();
    rsa_atfork_release();
    pthread_mutex_unlock(&g.mutex);
    providers_atfork(PROVIDER_FORK_CHILD);
}

static void register_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/*
 * Process exit. Lower modules loaded in C_Initialize (SoftHSM) register
 * their own destructors, which exit() runs before handlers registered
 * earlier, such as the one in which OpenSSL's cleanup makes libp11 call
 * C_CloseAllSessions and C_Finalize. This handler, registered after the
 * first successful C_Initialize, runs before those destructors: from then
 * on the module calls no back end. Calls return
 * CKR_CRYPTOKI_NOT_INITIALIZED and C_Finalize only marks the module
 * finalised; the process is ending and keeps its memory.
 */
static bool exiting;
static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;

static void module_at_exit(void)
{
    __atomic_store_n(&exiting, true, __ATOMIC_RELEASE);
}

static void register_atexit(void)
{
    atexit(module_at_exit);
}

static bool is_exiting(void)
{
    return __atomic_load_n(&exiting, __ATOMIC_ACQUIRE);
}

/*
 * The application's OpenSSL error queue (one per thread) is left as it
 * was: whatever the module, a lower module (SoftHSM's C_Initialize in a
 * forked child, say), libcurl or OpenSSL push on it during a call is
 * dropped when the call returns, and errors the application had before
 * are put back (libcurl clears the queue before its TLS calls, so marks
 * would not keep them). An application that checks the queue after its
 * own OpenSSL call (nginx after a TLS handshake, whose signature came
 * through libp11 and this module) would otherwise fail on errors that are
 * not its own. Only the outermost entry of a thread saves and restores.
 */
struct saved_error {
    unsigned long code;
    char *file, *func, *data; /* copies: OpenSSL frees its own */
    int line;
};

#define SAVED_ERRORS 16 /* OpenSSL keeps no more (ERR_NUM_ERRORS) */

static __thread struct {
    unsigned depth;
    int n;
    struct saved_error e[SAVED_ERRORS];
} errq;

static void err_save(void)
{
    const char *file, *func, *data;
    unsigned long code;
    int line, flags;

    if (errq.depth++ > 0 || ERR_peek_error() == 0)
        return;
    while (errq.n < SAVED_ERRORS &&
           (code = ERR_get_error_all(&file, &line, &func, &data, &flags)) !=
               0) {
        struct saved_error *e = &errq.e[errq.n++];
        e->code = code;
        e->file = file != NULL ? strdup(file) : NULL;
        e->line = line;
        e->func = func != NULL ? strdup(func) : NULL;
        e->data = (flags & ERR_TXT_STRING) && data[0] ? strdup(data) : NULL;
    }
}

static void err_restore(void)
{
    int i;

    if (--errq.depth > 0)
        return;
    if (ERR_peek_error() != 0)
        ERR_clear_error();
    for (i = 0; i < errq.n; i++) {
        struct saved_error *e = &errq.e[i];
        ERR_new();
        ERR_set_debug(e->file, e->line, e->func);
        if (e->data != NULL)
            ERR_set_error(ERR_GET_LIB(e->code), ERR_GET_REASON(e->code), "%s",
                          e->data);
        else
            ERR_set_error(ERR_GET_LIB(e->code), ERR_GET_REASON(e->code), NULL);
        free(e->file);
        free(e->func);
        free(e->data);
    }
    errq.n = 0;
}

CK_RV module_enter(void)
{
    pthread_rwlock_rdlock(&g.rwlock);
    if (!g.initialized || g.generation != fork_generation || is_exiting()) {
        pthread_rwlock_unlock(&g.rwlock);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    err_save();
    return CKR_OK;
}

void module_leave(void)
{
    err_restore();
    pthread_rwlock_unlock(&g.rwlock);
}

CK_ULONG module_new_handle_unlocked(void)
{
    /* Handles are never reused within one initialisation. */
    return ++g.next_handle;
}

static void session_free_value(void *p)
{
    (void)p; /* sessions are released by sessions_destroy_all */
}

static void object_free_value(void *p)
{
    object_unref(p);
}

/* Releases everything; in a forked child, without touching what the
 * parent still uses. Called with the write lock held. */
static void teardown_unlocked(bool in_child)
{
    CK_ULONG i;

    sessions_destroy_all(in_child);
    for (i = 0; i < g.n_tokens; i++)
        objects_destroy_token(&g.tokens[i], in_child);
    hmap_free(g.objects);
    g.objects = NULL;
    for (i = 0; i < g.n_tokens; i++)
        token_teardown(&g.tokens[i], in_child);
    hmap_free(g.sessions);
    g.sessions = NULL;
    free(g.tokens);
    g.tokens = NULL;
    g.n_tokens = 0;
    config_free(g.cfg);
    g.cfg = NULL;
    g.initialized = false;
    audit_close();
    cmk_log_close();
}

static CK_RV check_init_args(CK_C_INITIALIZE_ARGS *args, const char **reserved)
{
    bool all, none;

    *reserved = NULL;
    if (args == NULL)
        return CKR_OK;
    none = args->CreateMutex == NULL && args->DestroyMutex == NULL &&
           args->LockMutex == NULL && args->UnlockMutex == NULL;
    all = args->CreateMutex != NULL && args->DestroyMutex != NULL &&
          args->LockMutex != NULL && args->UnlockMutex != NULL;
    if (!all && !none)
        return CKR_ARGUMENTS_BAD;
    /*
     * The module locks with the operating system's primitives. An
     * application that supplies its own mutex functions without allowing
     * OS locking asks for something this module cannot do.
     */
    if (all && !(args->flags & CKF_OS_LOCKING_OK))
        return CKR_CANT_LOCK;
    *reserved = args->pReserved;
    return CKR_OK;
}

static CK_RV do_initialize(CK_VOID_PTR pInitArgs)
{
    CK_C_INITIALIZE_ARGS *args = pInitArgs;
    const char *reserved = NULL;
    char err[512] = "";
    char *path = NULL;
    struct config *cfg = NULL;
    CK_ULONG i;
    CK_RV rv;

    rv = check_init_args(args, &reserved);
    if (rv != CKR_OK)
        return rv;

    if (g.initialized) {
        if (g.generation == fork_generation)
            return CKR_CRYPTOKI_ALREADY_INITIALIZED;
        /* A forked child re-initialising: drop the parent's state. */
        teardown_unlocked(true);
    }

    cmk_log_init_env();
    path = config_choose_path(reserved, err, sizeof(err));
    if (path == NULL) {
        cmk_error("C_Initialize: %s", err);
        return CKR_ARGUMENTS_BAD;
    }
    if (strcmp(path, config_default_path()) == 0 && access(path, F_OK) != 0 &&
        errno == ENOENT) {
        /* Installed but not configured yet: every tool that loads all
         * p11-kit modules would print an error. No file at the default
         * path means no tokens; a file named explicitly must exist. */
        cmk_debug("%s does not exist: no tokens", path);
        cfg = config_parse(path, "", 0, err, sizeof(err));
    } else {
        cfg = config_load(path, err, sizeof(err));
    }
    free(path);
    if (cfg == NULL) {
        cmk_error("%s", err);
        return CKR_GENERAL_ERROR;
    }
    if (cmk_log_configure(NULL, cfg->log_file) != 0) {
        cmk_error("%s: log-file: cannot use '%s'", cfg->path,
                  cfg->log_file ? cfg->log_file : "");
        config_free(cfg);
        return CKR_GENERAL_ERROR;
    }
    cmk_log_set_level(cfg->log_level);
    if (audit_open(cfg->audit_log, err, sizeof(err)) != 0) {
        cmk_error("%s: %s", cfg->path, err);
        config_free(cfg);
        return CKR_GENERAL_ERROR;
    }

    g.cfg = cfg;
    g.sessions = hmap_new(session_free_value);
    g.objects = hmap_new(object_free_value);
    g.tokens = calloc(cfg->n_tokens ? cfg->n_tokens : 1, sizeof(*g.tokens));
    if (g.sessions == NULL || g.objects == NULL || g.tokens == NULL) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    g.generation = fork_generation;
    g.next_handle = 0;
    for (i = 0; i < cfg->n_tokens; i++) {
        rv = token_setup(&g.tokens[i], &cfg->tokens[i]);
        if (rv != CKR_OK) {
            /* Not counted yet, so teardown would not see it. */
            token_teardown(&g.tokens[i], false);
            goto fail;
        }
        g.tokens[i].slot_id = i;
        g.n_tokens++;
    }
    g.initialized = true;
    cmk_debug("initialised from %s with %lu token(s)", cfg->path,
              (unsigned long)g.n_tokens);
    return CKR_OK;

fail:
    g.initialized = true;
    teardown_unlocked(false);
    return rv;
}

/*
 * A token whose module is cmkp11 again (module = this library, or
 * p11-kit's proxy with cmkp11 registered) makes C_Initialize call the
 * lower module's C_Initialize, which calls this one, in the same thread,
 * with the write lock held. That nested call returns at once, and the back
 * end that loaded the lower module learns it (module_reentered) and fails
 * with an error naming its configuration line.
 */
static __thread bool in_initialize;
static __thread bool initialize_reentered;

bool module_is_self(const CK_FUNCTION_LIST *fl)
{
    return fl != NULL && fl->C_Initialize == C_Initialize;
}

bool module_reentered(void)
{
    bool r = initialize_reentered;

    initialize_reentered = false;
    return r;
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    CK_RV rv;

    if (in_initialize) {
        initialize_reentered = true;
        RETURN_CALL(Initialize, CKR_GENERAL_ERROR);
    }
    pthread_once(&atfork_once, register_atfork);
    pthread_rwlock_wrlock(&g.rwlock);
    in_initialize = true;
    initialize_reentered = false;
    err_save();
    rv = is_exiting() ? CKR_CRYPTOKI_NOT_INITIALIZED : do_initialize(pInitArgs);
    err_restore();
    in_initialize = false;
    pthread_rwlock_unlock(&g.rwlock);
    if (rv == CKR_OK)
        pthread_once(&atexit_once, register_atexit);
    RETURN_CALL(Initialize, rv);
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    CK_RV rv = CKR_OK;

    if (pReserved != NULL)
        RETURN_CALL(Finalize, CKR_ARGUMENTS_BAD);
    pthread_rwlock_wrlock(&g.rwlock);
    err_save();
    if (!g.initialized || g.generation != fork_generation)
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else if (is_exiting())
        g.initialized = false; /* no back end may be called any more */
    else {
        teardown_unlocked(false);
        softkey_release();
        rsa_pkey_flush();
    }
    err_restore();
    pthread_rwlock_unlock(&g.rwlock);
    RETURN_CALL(Finalize, rv);
}

static void pad(CK_UTF8CHAR *dst, size_t len, const char *src)
{
    size_t n = strlen(src);

    memset(dst, ' ', len);
    memcpy(dst, src, n < len ? n : len);
}

CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
    BEGIN_CALL(GetInfo);
    if (pInfo == NULL) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        memset(pInfo, 0, sizeof(*pInfo));
        pInfo->cryptokiVersion.major = 2;
        pInfo->cryptokiVersion.minor = 40;
        pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID),
            CMK_MANUFACTURER);
        pad(pInfo->libraryDescription, sizeof(pInfo->libraryDescription),
            CMK_LIBRARY_DESCRIPTION);
        pInfo->libraryVersion.major = CMK_VERSION_MAJOR;
        pInfo->libraryVersion.minor = CMK_VERSION_MINOR;
    }
    END_CALL;
}
