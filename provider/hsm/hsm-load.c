/*
 * The hsm back end: loading lower modules (one per file, shared by every
 * token that names it) and the fork gate every call into them goes
 * through.
 */
#include "config.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "debug.h"
#include "hsm.h"

/*
 * The fork gate. Every call into a lower module counts itself in
 * (gate.readers); the pthread_atfork prepare handler closes the gate
 * (gate.closed) and waits until no call is in progress, so a fork happens
 * only between lower calls and the child finds the lower module's own
 * locks and state as no thread was changing them: its C_Finalize and
 * C_Initialize in the child, and its destructors at exit(), then run
 * safely. A closed gate lets no new call in, so a steady stream of lower
 * calls does not hold a fork off. The depth count lets a thread that is
 * inside a lower call call again (and fork: the gate is then not closed,
 * a thread cannot wait for itself). The forking thread holds only the
 * gate's mutex across the fork, and the child unlocks it: unlike a
 * read-write lock (which records its writer's thread id, which the child
 * no longer has), a plain mutex can be released there. See
 * docs/locking.md.
 */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned readers; /* lower calls in progress */
    bool closed;      /* a fork is waiting or under way */
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false};
static __thread unsigned lower_depth;
static bool gate_held; /* by the forking thread, from prepare to release */
/* The loaded lower modules. */
static pthread_mutex_t libs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hsm_lib *libs;

void hsm_lower_enter(void)
{
    if (lower_depth++ > 0)
        return;
    pthread_mutex_lock(&gate.lock);
    while (gate.closed)
        pthread_cond_wait(&gate.cond, &gate.lock);
    gate.readers++;
    pthread_mutex_unlock(&gate.lock);
}

void hsm_lower_leave(void)
{
    if (--lower_depth > 0)
        return;
    pthread_mutex_lock(&gate.lock);
    if (--gate.readers == 0 && gate.closed)
        pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.lock);
}

void hsm_atfork(enum provider_fork phase)
{
    pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
    pthread_mutex_t fresh_mutex = PTHREAD_MUTEX_INITIALIZER;

    switch (phase) {
    case PROVIDER_FORK_PREPARE:
        if (lower_depth > 0)
            break;
        pthread_mutex_lock(&gate.lock);
        gate.closed = true;
        while (gate.readers > 0)
            pthread_cond_wait(&gate.cond, &gate.lock);
        gate_held = true; /* with gate.lock, until the fork is done */
        break;
    case PROVIDER_FORK_PARENT:
        if (gate_held) {
            gate_held = false;
            gate.closed = false;
            pthread_cond_broadcast(&gate.cond);
            pthread_mutex_unlock(&gate.lock);
        }
        break;
    case PROVIDER_FORK_CHILD:
        /* The parent's other threads are gone: no call is in progress but
         * this thread's own, and none waits on the condition variable
         * (whose waiters the child must not wait for: a fresh one). */
        memcpy(&gate.cond, &fresh_cond, sizeof(fresh_cond));
        gate.closed = false;
        gate.readers = lower_depth > 0 ? 1 : 0;
        if (gate_held) {
            gate_held = false;
            pthread_mutex_unlock(&gate.lock);
        } else {
            /* Not closed (a fork from inside a lower call): another
             * thread may have held the mutex. */
            memcpy(&gate.lock, &fresh_mutex, sizeof(fresh_mutex));
        }
        /* A thread of the parent may have been loading a module (the
         * list itself is consistent at every step). */
        memcpy(&libs_lock, &fresh_mutex, sizeof(fresh_mutex));
        break;
    }
}

CK_RV hsm_lower_done(struct hsm_token *ht, const char *fn, CK_RV rv)
{
    /* Inside the gate still: no fork while the health is updated. */
    hsm_lower_health(ht, fn, rv);
    hsm_lower_leave();
    if (rv != CKR_OK)
        cmk_debug("lower %s = %s", fn, cmk_rv_name(rv));
    return rv;
}

/* ---- Loading lower modules ---- */

/* dlopen and C_GetFunctionList, refusing cmkp11 itself. */
static CK_RV lib_load(struct hsm_lib *l, const char *path, char *err,
                      size_t errlen)
{
    CK_C_GetFunctionList gfl;
    CK_RV rv = CKR_OK;

    l->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (l->dl == NULL) {
        snprintf(err, errlen, "module: cannot load %s: %s", path, dlerror());
        return CKR_GENERAL_ERROR;
    }
    gfl = (CK_C_GetFunctionList)dlsym(l->dl, "C_GetFunctionList");
    if (gfl != NULL) {
        hsm_lower_enter();
        rv = gfl(&l->fl);
        hsm_lower_leave();
    }
    if (gfl == NULL || rv != CKR_OK || l->fl == NULL) {
        snprintf(err, errlen, "module: %s is not a PKCS#11 module", path);
        return CKR_GENERAL_ERROR;
    }
    if (module_is_self(l->fl)) {
        snprintf(err, errlen,
                 "module: %s is cmkp11 itself; give the PKCS#11 library of "
                 "the HSM",
                 path);
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

/* The lower module's C_Initialize, unless the application already did. */
static CK_RV lib_init(struct hsm_lib *l, const char *path, char *err,
                      size_t errlen)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    (void)module_reentered();
    hsm_lower_enter();
    rv = l->fl->C_Initialize(&args);
    hsm_lower_leave();
    if (module_reentered()) {
        /* It loaded cmkp11 in turn (p11-kit's proxy, where cmkp11 is
         * registered), whose C_Initialize refused to run inside itself. */
        if (rv == CKR_OK) {
            hsm_lower_enter();
            l->fl->C_Finalize(NULL);
            hsm_lower_leave();
        }
        snprintf(err, errlen,
                 "module: %s loads cmkp11 itself (p11-kit's proxy, with "
                 "cmkp11 registered?); give the PKCS#11 library of the HSM",
                 path);
        return CKR_GENERAL_ERROR;
    }
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return CKR_OK; /* the application uses the same library directly */
    if (rv == CKR_OK) {
        l->we_initialized = true;
        return CKR_OK;
    }
    snprintf(err, errlen, "module: %s: C_Initialize failed: %s", path,
             cmk_rv_name(rv));
    return CKR_DEVICE_ERROR;
}

/* The lower module at path, loaded once for every token that names it. */
CK_RV hsm_lib_open(const char *path, struct hsm_lib **out, char *err,
                   size_t errlen)
{
    struct hsm_lib *l;
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&libs_lock);
    for (l = libs; l != NULL; l = l->next)
        if (strcmp(l->path, path) == 0)
            break;
    if (l != NULL) {
        l->users++;
        *out = l;
        goto out;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL || (l->path = strdup(path)) == NULL) {
        free(l);
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    rv = lib_load(l, path, err, errlen);
    if (rv == CKR_OK)
        rv = lib_init(l, path, err, errlen);
    if (rv != CKR_OK) {
        if (l->dl != NULL)
            dlclose(l->dl);
        free(l->path);
        free(l);
        goto out;
    }
    l->users = 1;
    l->next = libs;
    libs = l;
    *out = l;
out:
    pthread_mutex_unlock(&libs_lock);
    return rv;
}

void hsm_lib_close(struct hsm_lib *lib, bool in_child)
{
    struct hsm_lib **pp;

    pthread_mutex_lock(&libs_lock);
    if (--lib->users > 0) {
        pthread_mutex_unlock(&libs_lock);
        return;
    }
    for (pp = &libs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == lib) {
            *pp = lib->next;
            break;
        }
    }
    pthread_mutex_unlock(&libs_lock);
    /* In a forked child the lower module needs C_Finalize before it can be
     * initialised again (SoftHSM 2.6.1). */
    if (lib->we_initialized || in_child) {
        hsm_lower_enter();
        lib->fl->C_Finalize(NULL);
        hsm_lower_leave();
    }
    /* Not unloaded: a lower module may have registered handlers (atfork,
     * atexit) that must not point into unmapped code. */
    free(lib->path);
    free(lib);
}
