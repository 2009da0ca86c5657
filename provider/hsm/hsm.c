/*
 * The hsm back end: presents the RSA key pairs of a lower PKCS#11 token as
 * versioned keys and forwards every operation to it.
 *
 * Versions: pairs labelled NAME or NAME@HEXID (HEXID = the pair's CKA_ID in
 * hex) are the versions of key NAME; the pair labelled exactly NAME is
 * current. A version whose private key has CKA_UNWRAP and CKA_DECRYPT false
 * is disabled.
 *
 * OAEP beyond the lower token: where the lower token refuses an OAEP
 * parameter set (SoftHSM 2.6.1 takes only SHA-1 without a label) but
 * decrypts with CKM_RSA_X_509, the raw RSA result is decoded here with
 * OpenSSL's constant-time OAEP check, and an unwrapped key enters the
 * lower token as a session object.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* RSA_padding_check_PKCS1_OAEP_mgf1 */
#include "config.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <p11-kit/uri.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "audit.h"
#include "debug.h"
#include "hsm.h"
#include "rsa.h"
#include "secure.h"
#include "softkey.h"

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

static void lower_enter(void)
{
    if (lower_depth++ > 0)
        return;
    pthread_mutex_lock(&gate.lock);
    while (gate.closed)
        pthread_cond_wait(&gate.cond, &gate.lock);
    gate.readers++;
    pthread_mutex_unlock(&gate.lock);
}

static void lower_leave(void)
{
    if (--lower_depth > 0)
        return;
    pthread_mutex_lock(&gate.lock);
    if (--gate.readers == 0 && gate.closed)
        pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.lock);
}

static void hsm_atfork(enum provider_fork phase)
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

/* Calls into the lower module go through this: inside the fork gate; a
 * missing function is CKR_FUNCTION_NOT_SUPPORTED, failures are traced, and
 * the lower token's health is followed (lower_health). */
#define LOWER(ht, fn, ...)                                                     \
    lower_done((ht), #fn,                                                      \
               (lower_enter(), (ht)->lib->fl->fn != NULL                       \
                                   ? (ht)->lib->fl->fn(__VA_ARGS__)            \
                                   : CKR_FUNCTION_NOT_SUPPORTED))

#define HSM_OFFLINE_LOG_MS 60000 /* an outage is logged once a minute */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What a lower token answers when it cannot be reached for a while (a
 * network HSM's link, a device reset, a card pulled): an outage, not
 * evidence about a key (docs/hsm.md, "Outages"). */
static bool lower_transient(CK_RV rv)
{
    return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED ||
           rv == CKR_TOKEN_NOT_PRESENT;
}

/* Follows the lower token's health from every lower call's result: the
 * first transient failure starts an outage, which is logged then and once
 * a minute while calls keep failing; the first other answer ends it. Lock
 * free (atomics): it runs inside the fork gate, on every call. */
static void lower_health(struct hsm_token *ht, const char *fn, CK_RV rv)
{
    int64_t since = __atomic_load_n(&ht->offline_since_ms, __ATOMIC_ACQUIRE);
    int64_t now, logged;
    const char *name = ht->name ? ht->name : "";

    if (!lower_transient(rv)) {
        if (since != 0 &&
            __atomic_compare_exchange_n(&ht->offline_since_ms, &since, 0, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            cmk_warning("token %s: the lower token answers again after "
                        "%lld s; offline-grace ends",
                        name, (long long)(now_ms() - since) / 1000);
        return;
    }
    now = now_ms();
    if (now == 0)
        now = 1;
    if (since == 0) {
        if (__atomic_compare_exchange_n(&ht->offline_since_ms, &since, now,
                                        false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&ht->offline_logged_ms, now, __ATOMIC_RELAXED);
            if (ht->grace_ms > 0)
                cmk_warning("token %s: the lower token fails (%s from %s); "
                            "versions whose usage flags were read within "
                            "refresh-interval + offline-grace (%ld s) keep "
                            "serving local encryption, operations in the "
                            "lower token fail",
                            name, cmk_rv_name(rv), fn, ht->grace_ms / 1000);
            else
                cmk_warning("token %s: the lower token fails (%s from %s); "
                            "offline-grace = 0: its keys stop",
                            name, cmk_rv_name(rv), fn);
        }
        return;
    }
    logged = __atomic_load_n(&ht->offline_logged_ms, __ATOMIC_RELAXED);
    if (now - logged >= HSM_OFFLINE_LOG_MS &&
        __atomic_compare_exchange_n(&ht->offline_logged_ms, &logged, now, false,
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        cmk_warning("token %s: the lower token still fails (%s), for %lld s",
                    name, cmk_rv_name(rv), (long long)(now - since) / 1000);
}

static CK_RV lower_done(struct hsm_token *ht, const char *fn, CK_RV rv)
{
    /* Inside the gate still: no fork while the health is updated. */
    lower_health(ht, fn, rv);
    lower_leave();
    if (rv != CKR_OK)
        cmk_debug("lower %s = %s", fn, cmk_rv_name(rv));
    return rv;
}

/* ---- Error mapping: one table, lower CKR -> ours. ---- */

static const struct {
    CK_RV lower, ours;
} rv_map[] = {
    /* The lower session or module went away under us: our session is
     * still valid, the device is not. */
    {CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_ERROR},
    {CKR_SESSION_CLOSED, CKR_DEVICE_ERROR},
    {CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR},
    {CKR_SESSION_COUNT, CKR_DEVICE_MEMORY},
    {CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_REMOVED},
    {CKR_TOKEN_NOT_RECOGNIZED, CKR_DEVICE_REMOVED},
    /* The key version was deleted from the lower token. */
    {CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID},
    /* SoftHSM answers unsupported mechanism parameters this way. */
    {CKR_ARGUMENTS_BAD, CKR_MECHANISM_PARAM_INVALID},
    {CKR_FUNCTION_NOT_SUPPORTED, CKR_FUNCTION_NOT_SUPPORTED},
};

/* Codes that mean the same thing on both sides pass through. */
static const CK_RV rv_same[] = {
    CKR_OK,
    CKR_HOST_MEMORY,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_ENCRYPTED_DATA_LEN_RANGE,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_SIZE_RANGE,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_KEY_NOT_WRAPPABLE,
    CKR_KEY_UNEXTRACTABLE,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_USER_TYPE_INVALID,
    CKR_SIGNATURE_INVALID,
    CKR_SIGNATURE_LEN_RANGE,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_WRAPPED_KEY_INVALID,
    CKR_WRAPPED_KEY_LEN_RANGE,
    CKR_WRAPPING_KEY_HANDLE_INVALID,
    CKR_WRAPPING_KEY_SIZE_RANGE,
    CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    CKR_UNWRAPPING_KEY_SIZE_RANGE,
    CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_BUFFER_TOO_SMALL,
    CKR_TOKEN_WRITE_PROTECTED,
    CKR_SESSION_READ_ONLY,
    CKR_ACTION_PROHIBITED,
    CKR_RANDOM_NO_RNG,
    CKR_FUNCTION_FAILED,
    CKR_GENERAL_ERROR,
};

CK_RV hsm_map_rv(CK_RV lower)
{
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(rv_map); i++)
        if (rv_map[i].lower == lower)
            return rv_map[i].ours;
    for (i = 0; i < CMK_ARRAY_SIZE(rv_same); i++)
        if (rv_same[i] == lower)
            return lower;
    return CKR_DEVICE_ERROR;
}

/* What a lower module may answer to a ciphertext it cannot decrypt. */
static bool is_data_error(CK_RV rv)
{
    return rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_DATA_INVALID ||
           rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED;
}

/* Records the lower code for ulDeviceError and maps it. */
static CK_RV mapped(struct pcall *c, CK_RV lower)
{
    if (lower != CKR_OK)
        c->device_error = lower;
    return hsm_map_rv(lower);
}

/* ---- Loading lower modules ---- */

static CK_RV lib_open(const char *path, struct hsm_lib **out, char *err,
                      size_t errlen)
{
    CK_C_INITIALIZE_ARGS args;
    CK_C_GetFunctionList gfl;
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
    l->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (l->dl == NULL) {
        snprintf(err, errlen, "module: cannot load %s: %s", path, dlerror());
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    gfl = (CK_C_GetFunctionList)dlsym(l->dl, "C_GetFunctionList");
    if (gfl != NULL) {
        lower_enter();
        rv = gfl(&l->fl);
        lower_leave();
    }
    if (gfl == NULL || rv != CKR_OK || l->fl == NULL) {
        snprintf(err, errlen, "module: %s is not a PKCS#11 module", path);
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    if (module_is_self(l->fl)) {
        snprintf(err, errlen,
                 "module: %s is cmkp11 itself; give the PKCS#11 library of "
                 "the HSM",
                 path);
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    (void)module_reentered();
    lower_enter();
    rv = l->fl->C_Initialize(&args);
    lower_leave();
    if (module_reentered()) {
        /* It loaded cmkp11 in turn (p11-kit's proxy, where cmkp11 is
         * registered), whose C_Initialize refused to run inside itself. */
        if (rv == CKR_OK) {
            lower_enter();
            l->fl->C_Finalize(NULL);
            lower_leave();
        }
        snprintf(err, errlen,
                 "module: %s loads cmkp11 itself (p11-kit's proxy, with "
                 "cmkp11 registered?); give the PKCS#11 library of the HSM",
                 path);
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        /* The application uses the same library directly. */
        rv = CKR_OK;
    } else if (rv == CKR_OK) {
        l->we_initialized = true;
    } else {
        snprintf(err, errlen, "module: %s: C_Initialize failed: %s", path,
                 cmk_rv_name(rv));
        rv = CKR_DEVICE_ERROR;
        goto fail;
    }
    l->users = 1;
    l->next = libs;
    libs = l;
    *out = l;
    goto out;
fail:
    if (l->dl != NULL)
        dlclose(l->dl);
    free(l->path);
    free(l);
out:
    pthread_mutex_unlock(&libs_lock);
    return rv;
}

static void lib_close(struct hsm_lib *lib, bool in_child)
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
        lower_enter();
        lib->fl->C_Finalize(NULL);
        lower_leave();
    }
    /* Not unloaded: a lower module may have registered handlers (atfork,
     * atexit) that must not point into unmapped code. */
    free(lib->path);
    free(lib);
}

/* ---- Opening a token ---- */

static void free_versions(struct hsm_token *ht)
{
    struct hsm_ver *v, *next;

    for (v = ht->versions; v != NULL; v = next) {
        next = v->next;
        free(v->name);
        free(v->label);
        free(v);
    }
    ht->versions = NULL;
}

static void hsm_close(void *tok, bool in_child)
{
    struct hsm_token *ht = tok;

    if (ht == NULL)
        return;
    if (ht->lib != NULL) {
        if (!in_child && ht->anchor != CK_INVALID_HANDLE) {
            if (ht->self_login || ht->pin_mac != NULL)
                LOWER(ht, C_Logout, ht->anchor);
            LOWER(ht, C_CloseSession, ht->anchor);
        }
        lib_close(ht->lib, in_child);
    }
    secure_free(ht->pin_key, 32);
    secure_free(ht->pin_mac, 32);
    free_versions(ht);
    config_free_list(ht->keys);
    free(ht->mechs);
    free(ht->module_path);
    free(ht->token_label);
    free(ht->token_uri);
    free(ht->name);
    pthread_mutex_destroy(&ht->lock);
    pthread_mutex_destroy(&ht->list_lock);
    free(ht);
}

static bool label_matches(const CK_UTF8CHAR *padded, const char *label)
{
    size_t n = strlen(label), i;

    if (n > 32 || memcmp(padded, label, n) != 0)
        return false;
    for (i = n; i < 32; i++)
        if (padded[i] != ' ')
            return false;
    return true;
}

static CK_RV find_slot(struct hsm_token *ht, const struct config_token *cfg,
                       char *err, size_t errlen)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    P11KitUri *uri = NULL;
    CK_RV rv;
    int found = 0;

    if (ht->token_uri != NULL) {
        uri = p11_kit_uri_new();
        if (uri == NULL ||
            p11_kit_uri_parse(ht->token_uri, P11_KIT_URI_FOR_TOKEN, uri) !=
                P11_KIT_URI_OK) {
            snprintf(err, errlen, "%s:%d: token-uri: not a PKCS#11 URI",
                     cfg->path, config_token_line(cfg, "token-uri"));
            p11_kit_uri_free(uri);
            return CKR_GENERAL_ERROR;
        }
    }
    rv = LOWER(ht, C_GetSlotList, CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > 0) {
        slots = calloc(n, sizeof(*slots));
        rv = slots ? LOWER(ht, C_GetSlotList, CK_TRUE, slots, &n)
                   : CKR_HOST_MEMORY;
    }
    for (i = 0; rv == CKR_OK && i < n && !found; i++) {
        CK_TOKEN_INFO ti;
        if (LOWER(ht, C_GetTokenInfo, slots[i], &ti) != CKR_OK)
            continue;
        if (uri != NULL ? p11_kit_uri_match_token_info(uri, &ti) == 1
                        : label_matches(ti.label, ht->token_label)) {
            ht->slot = slots[i];
            ht->tinfo = ti;
            found = 1;
        }
    }
    free(slots);
    p11_kit_uri_free(uri);
    if (rv == CKR_OK && !found) {
        snprintf(err, errlen, "%s:%d: %s: no token '%s' in %s", cfg->path,
                 config_token_line(cfg, uri ? "token-uri" : "token-label"),
                 ht->token_uri ? "token-uri" : "token-label",
                 ht->token_uri ? ht->token_uri : ht->token_label,
                 ht->module_path);
        rv = CKR_GENERAL_ERROR;
    } else if (rv != CKR_OK) {
        snprintf(err, errlen, "%s: listing slots failed: %s", ht->module_path,
                 cmk_rv_name(rv));
        rv = CKR_DEVICE_ERROR;
    }
    return rv;
}

/* The mechanisms this back end offers, from what the lower token has. */
static CK_RV load_mechanisms(struct hsm_token *ht)
{
    static const CK_MECHANISM_TYPE wanted[] = {
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_RSA_PKCS,
        CKM_RSA_PKCS_OAEP,
        CKM_RSA_PKCS_PSS,
        CKM_AES_KEY_GEN,
        CKM_GENERIC_SECRET_KEY_GEN,
        CKM_AES_GCM,
        CKM_AES_CBC_PAD,
        CKM_AES_KEY_WRAP,
        CKM_AES_KEY_WRAP_PAD,
    };
    CK_MECHANISM_INFO info;
    size_t i;

    ht->mechs = calloc(CMK_ARRAY_SIZE(wanted), sizeof(*ht->mechs));
    if (ht->mechs == NULL)
        return CKR_HOST_MEMORY;
    memset(&info, 0, sizeof(info));
    if (LOWER(ht, C_GetMechanismInfo, ht->slot, CKM_RSA_X_509, &info) ==
            CKR_OK &&
        (info.flags & CKF_DECRYPT))
        ht->has_raw = true;
    for (i = 0; i < CMK_ARRAY_SIZE(wanted); i++) {
        /* Zeroed each time: SoftHSM ORs flags into what it is given, so a
         * reused structure would carry CKF_GENERATE from CKM_AES_KEY_GEN
         * to the AES modes after it. */
        memset(&info, 0, sizeof(info));
        if (LOWER(ht, C_GetMechanismInfo, ht->slot, wanted[i], &info) != CKR_OK)
            continue;
        /* Public-key operations run here, with the cached public key. */
        info.flags &= ~(CKF_VERIFY | CKF_VERIFY_RECOVER | CKF_SIGN_RECOVER);
        if (wanted[i] == CKM_RSA_PKCS || wanted[i] == CKM_RSA_PKCS_OAEP)
            info.flags &= ~CKF_ENCRYPT;
        if (wanted[i] == CKM_RSA_PKCS_OAEP && ht->has_raw)
            info.flags |= CKF_DECRYPT | CKF_UNWRAP;
        ht->mechs[ht->n_mechs].type = wanted[i];
        ht->mechs[ht->n_mechs].info = info;
        ht->n_mechs++;
    }
    return CKR_OK;
}

static CK_RV hsm_open(const struct config_token *cfg, void **tok,
                      unsigned *flags, char *err, size_t errlen)
{
    struct hsm_token *ht = calloc(1, sizeof(*ht));
    const char *module, *label, *uri, *pin_file, *keys;
    char *pin = NULL;
    size_t pin_len = 0;
    CK_RV rv;

    if (ht == NULL)
        return CKR_HOST_MEMORY;
    pthread_mutex_init(&ht->lock, NULL);
    pthread_mutex_init(&ht->list_lock, NULL);
    ht->anchor = CK_INVALID_HANDLE;
    ht->refresh_ms = (cfg->global ? cfg->global->refresh_interval : 60) * 1000L;
    ht->name = strdup(cfg->name);
    if (ht->name == NULL) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    {
        long grace = cfg->global ? cfg->global->offline_grace : 900;
        if (config_token_get_long(cfg, "offline-grace", 0, 86400L * 7, &grace,
                                  err, errlen) < 0) {
            rv = CKR_GENERAL_ERROR;
            goto fail;
        }
        ht->grace_ms = grace * 1000L;
    }
    module = config_token_get(cfg, "module");
    label = config_token_get(cfg, "token-label");
    uri = config_token_get(cfg, "token-uri");
    pin_file = config_token_get(cfg, "pin-file");
    keys = config_token_get(cfg, "keys");
    if (module == NULL) {
        snprintf(err, errlen,
                 "%s:%d: [token %s]: module is missing (the PKCS#11 library "
                 "of the HSM, e.g. /usr/lib/softhsm/libsofthsm2.so)",
                 cfg->path, cfg->line, cfg->name);
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    if ((label == NULL) == (uri == NULL)) {
        snprintf(err, errlen,
                 "%s:%d: [token %s]: give one of token-label or token-uri",
                 cfg->path, cfg->line, cfg->name);
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    ht->module_path = strdup(module);
    ht->token_label = label ? strdup(label) : NULL;
    ht->token_uri = uri ? strdup(uri) : NULL;
    if (keys != NULL && (ht->keys = config_split_list(keys)) == NULL) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    if (pin_file != NULL && secure_read_secret_file(pin_file, 1, &pin, &pin_len,
                                                    err, errlen) != 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s:%d: pin-file: %s", cfg->path,
                 config_token_line(cfg, "pin-file"), err);
        snprintf(err, errlen, "%s", msg);
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    rv = lib_open(module, &ht->lib, err, errlen);
    if (rv != CKR_OK) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s:%d: %s", cfg->path,
                 config_token_line(cfg, "module"), err);
        snprintf(err, errlen, "%s", msg);
        goto fail;
    }
    rv = find_slot(ht, cfg, err, errlen);
    if (rv != CKR_OK)
        goto fail;
    rv = LOWER(ht, C_OpenSession, ht->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
               NULL, NULL, &ht->anchor);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "%s: cannot open a session on the token: %s",
                 module, cmk_rv_name(rv));
        rv = CKR_DEVICE_ERROR;
        goto fail;
    }
    if (pin != NULL) {
        rv = LOWER(ht, C_Login, ht->anchor, CKU_USER, (CK_UTF8CHAR *)pin,
                   (CK_ULONG)pin_len);
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
            snprintf(err, errlen,
                     "%s:%d: pin-file: the token refused the PIN "
                     "(%s)",
                     cfg->path, config_token_line(cfg, "pin-file"),
                     cmk_rv_name(rv));
            rv = CKR_GENERAL_ERROR;
            goto fail;
        }
        ht->self_login = true;
    }
    rv = load_mechanisms(ht);
    if (rv != CKR_OK)
        goto fail;
    secure_free(pin, pin_len + 1);
    *flags = PROVIDER_OWNS_SECRET_KEYS | PROVIDER_LOCAL_PUBLIC |
             (ht->has_raw ? PROVIDER_RAW_RSA : 0);
    *tok = ht;
    return CKR_OK;
fail:
    secure_free(pin, pin_len + 1);
    hsm_close(ht, false);
    return rv;
}

static void hsm_token_info(void *tok, struct provider_token_info *info)
{
    struct hsm_token *ht = tok;
    size_t n;

    memset(info, 0, sizeof(*info));
    memcpy(info->model, ht->tinfo.model, sizeof(ht->tinfo.model));
    memcpy(info->serial, ht->tinfo.serialNumber,
           sizeof(ht->tinfo.serialNumber));
    /* Trim the padding for the front end, which pads again. */
    for (n = sizeof(info->model); n > 0 && info->model[n - 1] == ' '; n--)
        info->model[n - 1] = '\0';
    for (n = sizeof(info->serial); n > 0 && info->serial[n - 1] == ' '; n--)
        info->serial[n - 1] = '\0';

    info->login_required =
        !ht->self_login && (ht->tinfo.flags & CKF_LOGIN_REQUIRED);
    info->hardware = (ht->tinfo.flags & CKF_HW_SLOT) != 0;
    info->min_pin = ht->tinfo.ulMinPinLen;
    info->max_pin = ht->tinfo.ulMaxPinLen;
}

static const struct pmech *hsm_mechanisms(void *tok, CK_ULONG *count)
{
    struct hsm_token *ht = tok;

    *count = ht->n_mechs;
    return ht->mechs;
}

/* The PIN's HMAC under the token's key (secure memory). */
static bool pin_mac(const unsigned char *key, const CK_UTF8CHAR *pin,
                    CK_ULONG len, unsigned char mac[32])
{
    unsigned int n = 0;

    return HMAC(EVP_sha256(), key, 32, pin, len, mac, &n) != NULL && n == 32;
}

/*
 * The lower token is logged in once per process: SoftHSM's file store
 * rewrites the token's own file at each C_Login, and a process killed
 * then loses the token (docs/hsm.md). After the first successful user
 * login the lower login is kept across C_Logout, and a later C_Login is
 * checked here against the PIN's HMAC, in constant time; the front end
 * hides private objects while its token is logged out.
 */
static CK_RV hsm_login(struct pcall *c, CK_USER_TYPE user,
                       const CK_UTF8CHAR *pin, CK_ULONG len)
{
    struct hsm_token *ht = c->tok;
    unsigned char mac[32], *key = NULL, *kept = NULL;
    bool have, verified;
    CK_RV rv;

    if (ht->self_login)
        return CKR_OK; /* logged in from pin-file; any PIN will do */
    pthread_mutex_lock(&ht->lock);
    have = ht->pin_mac != NULL;
    if (have && user == CKU_USER)
        rv = pin_mac(ht->pin_key, pin, len, mac) &&
                     ct_memcmp(mac, ht->pin_mac, sizeof(mac)) == 0
                 ? CKR_OK
                 : CKR_PIN_INCORRECT;
    pthread_mutex_unlock(&ht->lock);
    if (have && user == CKU_USER) {
        secure_zero(mac, sizeof(mac));
        return rv;
    }
    if (have) {
        /* Another user type: the kept user login must end first. */
        pthread_mutex_lock(&ht->lock);
        key = ht->pin_key, kept = ht->pin_mac;
        ht->pin_key = ht->pin_mac = NULL;
        pthread_mutex_unlock(&ht->lock);
        secure_free(key, 32);
        secure_free(kept, 32);
        key = kept = NULL;
        LOWER(ht, C_Logout, ht->anchor);
    }
    rv = LOWER(ht, C_Login, ht->anchor, user, (CK_UTF8CHAR *)pin, len);
    /* Only a PIN the lower token checked is kept: "already logged in"
     * (by the application itself, or another [token] over the same lower
     * token) says nothing about this one. */
    verified = rv == CKR_OK;
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK;
    if (verified && user == CKU_USER) {
        key = secure_alloc(32);
        kept = secure_alloc(32);
        if (key != NULL && kept != NULL && RAND_priv_bytes(key, 32) == 1 &&
            pin_mac(key, pin, len, kept)) {
            pthread_mutex_lock(&ht->lock);
            if (ht->pin_mac == NULL) {
                ht->pin_key = key, ht->pin_mac = kept;
                key = kept = NULL;
            }
            pthread_mutex_unlock(&ht->lock);
        }
        secure_free(key, 32);
        secure_free(kept, 32);
    }
    return mapped(c, rv);
}

static CK_RV hsm_logout(struct pcall *c)
{
    struct hsm_token *ht = c->tok;
    bool kept;

    if (ht->self_login)
        return CKR_OK;
    pthread_mutex_lock(&ht->lock);
    kept = ht->pin_mac != NULL;
    pthread_mutex_unlock(&ht->lock);
    if (kept)
        return CKR_OK; /* the lower login stays for the process */
    return mapped(c, LOWER(ht, C_Logout, ht->anchor));
}

static CK_RV hsm_session_open(void *tok, void **sess)
{
    struct hsm_token *ht = tok;
    CK_SESSION_HANDLE *h = malloc(sizeof(*h));
    CK_RV rv;

    if (h == NULL)
        return CKR_HOST_MEMORY;
    rv = LOWER(ht, C_OpenSession, ht->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
               NULL, NULL, h);
    if (rv != CKR_OK) {
        free(h);
        return hsm_map_rv(rv);
    }
    *sess = h;
    return CKR_OK;
}

static void hsm_session_close(void *tok, void *sess)
{
    struct hsm_token *ht = tok;
    CK_SESSION_HANDLE *h = sess;

    if (h == NULL)
        return;
    LOWER(ht, C_CloseSession, *h);
    free(h);
}

/* The lower session for a call: the caller's, or the anchor. */
static CK_SESSION_HANDLE lower_session(struct pcall *c)
{
    struct hsm_token *ht = c->tok;

    return c->sess != NULL ? *(CK_SESSION_HANDLE *)c->sess : ht->anchor;
}

/* ---- Listing ---- */

static void *get_attr(struct hsm_token *ht, CK_SESSION_HANDLE s,
                      CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    void *v;

    if (LOWER(ht, C_GetAttributeValue, s, o, &a, 1) != CKR_OK ||
        a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return NULL;
    v = malloc(a.ulValueLen + 1);
    if (v == NULL)
        return NULL;
    a.pValue = v;
    if (LOWER(ht, C_GetAttributeValue, s, o, &a, 1) != CKR_OK) {
        free(v);
        return NULL;
    }
    ((char *)v)[a.ulValueLen] = '\0';
    *len = a.ulValueLen;
    return v;
}

static bool get_bool(struct hsm_token *ht, CK_SESSION_HANDLE s,
                     CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};

    return LOWER(ht, C_GetAttributeValue, s, o, &a, 1) == CKR_OK && v;
}

static void hex(const CK_BYTE *b, CK_ULONG n, char *out, size_t outlen)
{
    CK_ULONG i;

    out[0] = '\0';
    for (i = 0; i < n && 2 * i + 2 < outlen; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* NAME@HEXID names a version of NAME when HEXID is its own CKA_ID. */
static char *key_name(const char *label, const CK_BYTE *id, CK_ULONG id_len)
{
    const char *at = strrchr(label, '@');
    char h[130];

    hex(id, id_len, h, sizeof(h));
    if (at != NULL && at != label && id_len > 0 && strcasecmp(at + 1, h) == 0)
        return strndup(label, (size_t)(at - label));
    return strdup(label);
}

static struct hsm_ver *version_find_unlocked(struct hsm_token *ht,
                                             const CK_BYTE *id, CK_ULONG id_len)
{
    struct hsm_ver *v;

    for (v = ht->versions; v != NULL; v = v->next)
        if (v->id_len == id_len && memcmp(v->id, id, id_len) == 0)
            return v;
    return NULL;
}

/* One lower key object: record it in its version. */
static void see_object(struct hsm_token *ht, CK_SESSION_HANDLE s,
                       CK_OBJECT_HANDLE o, bool is_private)
{
    CK_ULONG id_len = 0, label_len = 0;
    CK_BYTE *id = get_attr(ht, s, o, CKA_ID, &id_len);
    char *label = get_attr(ht, s, o, CKA_LABEL, &label_len);
    struct hsm_ver *v;
    char *name, *old_name = NULL, *old_label = NULL;

    if (id == NULL || label == NULL || id_len == 0 || id_len > 64)
        goto out;
    name = key_name(label, id, id_len);
    if (name == NULL || !config_list_allows(ht->keys, name)) {
        free(name);
        goto out;
    }
    pthread_mutex_lock(&ht->lock);
    v = version_find_unlocked(ht, id, id_len);
    if (v == NULL) {
        v = calloc(1, sizeof(*v));
        if (v != NULL) {
            v->kind = HSM_REF_VERSION;
            memcpy(v->id, id, id_len);
            v->id_len = id_len;
            v->next = ht->versions;
            ht->versions = v;
        }
    }
    if (v != NULL) {
        if (!v->seen || is_private) {
            /* Swapped under the lock, freed outside it: other listings
             * copy them under the same lock (version_copy). */
            old_name = v->name;
            old_label = v->label;
            v->name = name;
            v->label = label;
            name = label = NULL;
        }
        v->seen = true;
        if (is_private)
            v->next_priv = o;
        else
            v->next_pub = o;
    }
    pthread_mutex_unlock(&ht->lock);
    free(old_name);
    free(old_label);
    free(name);
out:
    free(id);
    free(label);
}

static CK_RV scan_class(struct hsm_token *ht, CK_SESSION_HANDLE s,
                        CK_OBJECT_CLASS cls)
{
    CK_KEY_TYPE kt = CKK_RSA;
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &t, sizeof(t)},
    };
    CK_OBJECT_HANDLE found[64];
    CK_ULONG n, i;
    CK_RV rv;

    rv = LOWER(ht, C_FindObjectsInit, s, tmpl, 3);
    if (rv != CKR_OK)
        return rv;
    do {
        n = 0;
        rv = LOWER(ht, C_FindObjects, s, found, CMK_ARRAY_SIZE(found), &n);
        for (i = 0; rv == CKR_OK && i < n; i++)
            see_object(ht, s, found[i], cls == CKO_PRIVATE_KEY);
    } while (rv == CKR_OK && n > 0);
    LOWER(ht, C_FindObjectsFinal, s);
    return rv;
}

/* What a listing reads of a version, copied under the token's lock: another
 * listing may replace the label and name (see_object) and the handles
 * meanwhile. */
struct ver_copy {
    struct hsm_ver *ref;
    char *name, *label;
    CK_BYTE id[64];
    CK_ULONG id_len;
    CK_OBJECT_HANDLE priv, pub;
};

static int version_copy_unlocked(const struct hsm_ver *v, struct ver_copy *c)
{
    memset(c, 0, sizeof(*c));
    if (v->name == NULL || v->label == NULL)
        return -1;
    c->name = strdup(v->name);
    c->label = strdup(v->label);
    if (c->name == NULL || c->label == NULL) {
        free(c->name);
        free(c->label);
        return -1;
    }
    c->ref = (struct hsm_ver *)v;
    memcpy(c->id, v->id, v->id_len);
    c->id_len = v->id_len;
    c->priv = v->priv;
    c->pub = v->pub;
    return 0;
}

static int version_objects(struct hsm_token *ht, CK_SESSION_HANDLE s,
                           const struct ver_copy *v, struct pobj *priv,
                           struct pobj *pub)
{
    CK_OBJECT_HANDLE src = v->pub ? v->pub : v->priv;
    CK_ULONG nlen = 0, elen = 0, dlen = 0;
    CK_BYTE *n = get_attr(ht, s, src, CKA_MODULUS, &nlen);
    CK_BYTE *e = get_attr(ht, s, src, CKA_PUBLIC_EXPONENT, &elen);
    CK_DATE *start = get_attr(ht, s, src, CKA_START_DATE, &dlen);
    struct rsa_key_desc d;
    char uid[160], version[130], source[600], ops[128];
    CK_BYTE *nn;
    bool dec, unw, sig, wrp, enc;
    int r = -1;

    free(start); /* validity dates are not enforced on hsm keys */
    if (n == NULL || e == NULL || nlen == 0)
        goto out;
    nn = n;
    while (nlen > 1 && *nn == 0) {
        nn++;
        nlen--;
    }
    dec = v->priv && get_bool(ht, s, v->priv, CKA_DECRYPT);
    unw = v->priv && get_bool(ht, s, v->priv, CKA_UNWRAP);
    sig = v->priv && get_bool(ht, s, v->priv, CKA_SIGN);
    /* The lower public key's own flags, where it has one: what check
     * tells the user to set is what is used. */
    wrp = (dec || unw) && (!v->pub || get_bool(ht, s, v->pub, CKA_WRAP));
    enc = (dec || unw) && (!v->pub || get_bool(ht, s, v->pub, CKA_ENCRYPT));
    hex(v->id, v->id_len, version, sizeof(version));
    snprintf(uid, sizeof(uid), "hsm/%s", version);
    snprintf(source, sizeof(source), "%s;token=%s", ht->module_path,
             ht->token_label ? ht->token_label : ht->token_uri);
    snprintf(ops, sizeof(ops), "%s%s%s%s%s%s", dec ? "decrypt," : "",
             unw ? "unwrapKey," : "", sig ? "sign," : "", enc ? "encrypt," : "",
             wrp ? "wrapKey," : "", "verify");
    memset(&d, 0, sizeof(d));
    d.uid_prefix = uid;
    d.label = v->label;
    d.id = v->id;
    d.id_len = v->id_len;
    d.modulus = nn;
    d.modulus_len = nlen;
    d.exponent = e;
    d.exponent_len = elen;
    d.decrypt = dec;
    d.unwrap = unw;
    d.sign = sig && (dec || unw); /* a disabled version signs nothing */
    d.encrypt = enc;
    d.wrap = wrp;
    d.verify = true;
    d.private_obj = !ht->self_login;
    d.enabled = dec || unw;
    d.current = strcmp(v->label, v->name) == 0;
    d.local = v->priv && get_bool(ht, s, v->priv, CKA_LOCAL);
    d.backend = "hsm";
    d.source = source;
    d.key_name = v->name;
    d.version = version;
    d.recovery_level = "";
    d.key_ops = ops;
    d.key_type = "RSA";
    r = rsa_key_objects(&d, priv, pub);
    if (r == 0) {
        priv->ref = v->ref;
        pub->ref = v->ref;
    }
out:
    free(n);
    free(e);
    return r;
}

static CK_RV hsm_list(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
                      struct pobj **objs, CK_ULONG *count, bool *complete)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = lower_session(c);
    struct hsm_ver *v;
    struct ver_copy *list = NULL;
    struct pobj *out = NULL;
    size_t n = 0, i, k = 0;
    CK_RV rv;

    (void)hint;
    (void)nhint;
    /* One listing at a time; operations keep the handles of the last
     * complete listing until this one is done. */
    pthread_mutex_lock(&ht->list_lock);
    rv = scan_class(ht, s, CKO_PUBLIC_KEY);
    if (rv == CKR_OK)
        rv = scan_class(ht, s, CKO_PRIVATE_KEY);
    pthread_mutex_lock(&ht->lock);
    for (v = ht->versions; v != NULL; v = v->next) {
        if (rv == CKR_OK) {
            v->present = v->seen;
            v->priv = v->next_priv;
            v->pub = v->next_pub;
        }
        v->seen = false;
        v->next_priv = v->next_pub = 0;
    }
    pthread_mutex_unlock(&ht->lock);
    pthread_mutex_unlock(&ht->list_lock);
    if (rv != CKR_OK) {
        int64_t since =
            __atomic_load_n(&ht->offline_since_ms, __ATOMIC_ACQUIRE);
        if (lower_transient(rv) && ht->grace_ms > 0 &&
            __atomic_load_n(&ht->listed, __ATOMIC_RELAXED) && since != 0 &&
            now_ms() < since + ht->refresh_ms + ht->grace_ms) {
            /* An outage, for refresh-interval + offline-grace from its
             * start: the objects of the last listing stay (each version's
             * use is checked by usage_check, with its own grace). */
            c->device_error = rv;
            *objs = NULL;
            *count = 0;
            *complete = false;
            return CKR_OK;
        }
        return mapped(c, rv);
    }
    __atomic_store_n(&ht->listed, true, __ATOMIC_RELAXED);

    /* Built from copies: another listing may change the versions while
     * this one reads the lower token for their attributes. */
    pthread_mutex_lock(&ht->lock);
    for (n = 0, v = ht->versions; v != NULL; v = v->next)
        n++;
    list = calloc(n + 1, sizeof(*list));
    if (list == NULL)
        rv = CKR_HOST_MEMORY;
    n = 0;
    for (v = ht->versions; v != NULL && rv == CKR_OK; v = v->next)
        if (v->present) {
            if (version_copy_unlocked(v, &list[n]) != 0)
                rv = CKR_HOST_MEMORY;
            else
                n++;
        }
    pthread_mutex_unlock(&ht->lock);
    out = rv == CKR_OK ? calloc(2 * n + 1, sizeof(*out)) : NULL;
    for (i = 0; out != NULL && i < n; i++)
        if (version_objects(ht, s, &list[i], &out[k], &out[k + 1]) == 0)
            k += 2;
    for (i = 0; i < n; i++) {
        free(list[i].name);
        free(list[i].label);
    }
    free(list);
    if (out == NULL)
        return CKR_HOST_MEMORY;
    *objs = out;
    *count = k;
    *complete = true;
    return CKR_OK;
}

static void hsm_ref_free(void *tok, void *ref)
{
    int *kind = ref;

    /* Versions live as long as the token; secret key references are the
     * front end's to free. */
    if (kind != NULL && *kind == HSM_REF_SECRET)
        free(ref);
}

/* The lower handle behind a reference; 0 if it is not there now. */
static CK_OBJECT_HANDLE ref_handle(struct hsm_token *ht, void *ref,
                                   bool private_half)
{
    int *kind = ref;
    CK_OBJECT_HANDLE h = 0;

    if (kind == NULL)
        return 0;
    if (*kind == HSM_REF_SECRET)
        return ((struct hsm_secret *)ref)->h;
    pthread_mutex_lock(&ht->lock);
    h = private_half ? ((struct hsm_ver *)ref)->priv
                     : ((struct hsm_ver *)ref)->pub;
    pthread_mutex_unlock(&ht->lock);
    return h;
}

/* ---- OAEP done here over raw RSA ---- */

static int oaep_slot(const CK_RSA_PKCS_OAEP_PARAMS *p)
{
    static const CK_ULONG hashes[] = {CKM_SHA_1, CKM_SHA224, CKM_SHA256,
                                      CKM_SHA384, CKM_SHA512};
    static const CK_ULONG mgfs[] = {CKG_MGF1_SHA1, CKG_MGF1_SHA224,
                                    CKG_MGF1_SHA256, CKG_MGF1_SHA384,
                                    CKG_MGF1_SHA512};
    int h = -1, m = -1, i;

    for (i = 0; i < 5; i++) {
        if (hashes[i] == p->hashAlg)
            h = i;
        if (mgfs[i] == p->mgf)
            m = i;
    }
    if (h < 0 || m < 0)
        return -1;
    return (h * 8 + m) * 2 + (p->ulSourceDataLen > 0);
}

static bool oaep_is_local(struct hsm_token *ht, const CK_MECHANISM *m)
{
    int slot;
    bool local;

    if (m->mechanism != CKM_RSA_PKCS_OAEP || m->pParameter == NULL)
        return false;
    slot = oaep_slot(m->pParameter);
    if (slot < 0)
        return false;
    pthread_mutex_lock(&ht->lock);
    local = ht->oaep_local[slot];
    pthread_mutex_unlock(&ht->lock);
    return local;
}

static void oaep_mark_local(struct hsm_token *ht, const CK_MECHANISM *m)
{
    int slot = oaep_slot(m->pParameter);

    if (slot < 0)
        return;
    pthread_mutex_lock(&ht->lock);
    ht->oaep_local[slot] = true;
    pthread_mutex_unlock(&ht->lock);
    cmk_debug("OAEP parameter set %d is done in the module over raw RSA", slot);
}

/* Raw RSA through the lower key, then OAEP decoding in constant time. */
static CK_RV oaep_decrypt_raw(struct pcall *c, CK_OBJECT_HANDLE priv,
                              const CK_MECHANISM *m, const CK_BYTE *in,
                              CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;
    CK_MECHANISM raw = {CKM_RSA_X_509, NULL, 0};
    CK_SESSION_HANDLE s = lower_session(c);
    CK_ULONG blen = inlen, mlen;
    CK_BYTE *block = NULL, *em = NULL;
    CK_RV rv;
    int r;

    if (!ht->has_raw)
        return CKR_MECHANISM_PARAM_INVALID;
    {
        /* The ciphertext must be exactly as long as the modulus. */
        CK_ATTRIBUTE a = {CKA_MODULUS, NULL, 0};
        if (LOWER(ht, C_GetAttributeValue, s, priv, &a, 1) != CKR_OK)
            return mapped(c, CKR_KEY_HANDLE_INVALID);
        if (a.ulValueLen != inlen)
            return CKR_ENCRYPTED_DATA_LEN_RANGE;
    }
    /* Room for any modulus: a short input must not make the lower
     * operation stop at CKR_BUFFER_TOO_SMALL and stay active. */
    blen = inlen + 1024;
    block = secure_alloc(blen);
    em = secure_alloc(inlen + 1);
    if (block == NULL || em == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    rv = LOWER(ht, C_DecryptInit, s, &raw, priv);
    if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED) {
        /* Raw RSA needs CKA_DECRYPT on the lower key. */
        rv = CKR_MECHANISM_PARAM_INVALID;
        goto out;
    }
    if (rv != CKR_OK) {
        rv = mapped(c, rv);
        goto out;
    }
    rv = LOWER(ht, C_Decrypt, s, (CK_BYTE *)in, inlen, block, &blen);
    if (rv != CKR_OK) {
        /* Raw RSA refuses a ciphertext not below this key's modulus (a
         * blob made for another key); SoftHSM says so with a general
         * error. The ciphertext is the caller's input. */
        c->device_error = rv;
        rv = is_data_error(rv) ? CKR_ENCRYPTED_DATA_INVALID : hsm_map_rv(rv);
        goto out;
    }
    if (blen != inlen) {
        /* Raw RSA gives exactly the modulus size: the input was not. */
        rv = CKR_ENCRYPTED_DATA_LEN_RANGE;
        goto out;
    }
    /* The encoded message is exactly modulus-sized, leading zeros kept. */
    mlen = inlen;
    memcpy(em + (mlen - blen), block, blen);
    r = RSA_padding_check_PKCS1_OAEP_mgf1(
        out, (int)*outlen, em, (int)mlen, (int)mlen, p->pSourceData,
        (int)p->ulSourceDataLen, rsa_md_for_mech(p->hashAlg),
        rsa_md_for_mgf(p->mgf));
    rv = (CK_RV)ct_select(ct_eq((unsigned long)(r < 0), 0), CKR_OK,
                          CKR_ENCRYPTED_DATA_INVALID);
    *outlen = (CK_ULONG)ct_select(ct_eq(rv, CKR_OK), (unsigned long)r, 0);
out:
    secure_free(block, inlen + 1024);
    secure_free(em, inlen + 1);
    return rv;
}

/* ---- Operations ---- */

/*
 * Parameters refused at C_*Init rather than at the operation: PSS whose
 * MGF1 hash is not the signature hash. SoftHSM (AsymSignInit and
 * AsymVerifyInit, SoftHSM 2.6.1) accepts only MGF1 of the same hash, and
 * would refuse it only at C_Sign here, where the lower C_SignInit runs.
 * Lengths, unknown hashes and salts too long for the key are checked by
 * the front end for every back end.
 */
static CK_RV hsm_check_mechanism(void *tok, enum pop op, const CK_MECHANISM *m)
{
    static const struct {
        CK_MECHANISM_TYPE hash;
        CK_RSA_PKCS_MGF_TYPE mgf;
    } same[] = {
        {CKM_SHA_1, CKG_MGF1_SHA1},    {CKM_SHA224, CKG_MGF1_SHA224},
        {CKM_SHA256, CKG_MGF1_SHA256}, {CKM_SHA384, CKG_MGF1_SHA384},
        {CKM_SHA512, CKG_MGF1_SHA512},
    };
    const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
    size_t i;

    (void)tok;
    if (m->mechanism != CKM_RSA_PKCS_PSS ||
        (op != POP_SIGN && op != POP_VERIFY))
        return CKR_OK;
    if (p == NULL || m->ulParameterLen != sizeof(*p))
        return CKR_MECHANISM_PARAM_INVALID;
    for (i = 0; i < CMK_ARRAY_SIZE(same); i++)
        if (same[i].hash == p->hashAlg)
            return same[i].mgf == p->mgf ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
    return CKR_MECHANISM_PARAM_INVALID;
}

static CK_RV crypt_lower(struct pcall *c, enum pop op, void *key,
                         const CK_MECHANISM *m, const CK_BYTE *in,
                         CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = lower_session(c);
    CK_OBJECT_HANDLE h = ref_handle(ht, key, op != POP_ENCRYPT);
    CK_RV rv;

    if (h == 0)
        return CKR_KEY_HANDLE_INVALID;
    switch (op) {
    case POP_DECRYPT:
    case POP_UNWRAP:
        if (oaep_is_local(ht, m))
            return oaep_decrypt_raw(c, h, m, in, inlen, out, outlen);
        rv = LOWER(ht, C_DecryptInit, s, (CK_MECHANISM *)m, h);
        if ((rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID ||
             rv == CKR_MECHANISM_INVALID) &&
            m->mechanism == CKM_RSA_PKCS_OAEP && ht->has_raw) {
            oaep_mark_local(ht, m);
            return oaep_decrypt_raw(c, h, m, in, inlen, out, outlen);
        }
        if (rv == CKR_OK) {
            rv = LOWER(ht, C_Decrypt, s, (CK_BYTE *)in, inlen, out, outlen);
            if (rv != CKR_OK && is_data_error(rv)) {
                c->device_error = rv;
                return CKR_ENCRYPTED_DATA_INVALID;
            }
        }
        return mapped(c, rv);
    case POP_SIGN:
        rv = LOWER(ht, C_SignInit, s, (CK_MECHANISM *)m, h);
        if (rv == CKR_OK)
            rv = LOWER(ht, C_Sign, s, (CK_BYTE *)in, inlen, out, outlen);
        return mapped(c, rv);
    case POP_ENCRYPT:
        rv = LOWER(ht, C_EncryptInit, s, (CK_MECHANISM *)m, h);
        if (rv == CKR_OK)
            rv = LOWER(ht, C_Encrypt, s, (CK_BYTE *)in, inlen, out, outlen);
        return mapped(c, rv);
    case POP_VERIFY: /* done in the module */
        break;
    }
    return CKR_GENERAL_ERROR;
}

/* The attributes of a lower secret key, for the front end's object. */
static CK_RV secret_pobj(struct hsm_token *ht, CK_SESSION_HANDLE s,
                         CK_OBJECT_HANDLE h, struct pobj *out)
{
    static const CK_ATTRIBUTE_TYPE copy[] = {
        CKA_CLASS,
        CKA_KEY_TYPE,
        CKA_TOKEN,
        CKA_PRIVATE,
        CKA_LABEL,
        CKA_ID,
        CKA_VALUE_LEN,
        CKA_SENSITIVE,
        CKA_EXTRACTABLE,
        CKA_ENCRYPT,
        CKA_DECRYPT,
        CKA_WRAP,
        CKA_UNWRAP,
        CKA_SIGN,
        CKA_VERIFY,
        CKA_DERIVE,
        CKA_LOCAL,
        CKA_ALWAYS_SENSITIVE,
        CKA_NEVER_EXTRACTABLE,
        CKA_MODIFIABLE,
        CKA_START_DATE,
        CKA_END_DATE,
        CKA_KEY_GEN_MECHANISM,
        CKA_WRAP_WITH_TRUSTED,
        CKA_TRUSTED,
    };
    CK_ATTRIBUTE t[CMK_ARRAY_SIZE(copy)];
    CK_BYTE buf[1024], *p = buf;
    struct hsm_secret *ref;
    size_t i;
    CK_RV rv;

    /* One call for the lengths, one for the values: this is on the
     * unwrap path. Attributes the lower token lacks are left out. */
    memset(out, 0, sizeof(*out));
    for (i = 0; i < CMK_ARRAY_SIZE(copy); i++) {
        t[i].type = copy[i];
        t[i].pValue = NULL;
        t[i].ulValueLen = 0;
    }
    rv = LOWER(ht, C_GetAttributeValue, s, h, t, CMK_ARRAY_SIZE(t));
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
        rv != CKR_ATTRIBUTE_SENSITIVE)
        return hsm_map_rv(rv);
    for (i = 0; i < CMK_ARRAY_SIZE(t); i++) {
        if (t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION ||
            t[i].ulValueLen > (CK_ULONG)(buf + sizeof(buf) - p)) {
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            continue;
        }
        t[i].pValue = p;
        p += t[i].ulValueLen;
    }
    {
        /* Ask again for those that have a value. */
        CK_ATTRIBUTE q[CMK_ARRAY_SIZE(copy)];
        CK_ULONG nq = 0;
        for (i = 0; i < CMK_ARRAY_SIZE(t); i++)
            if (t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION)
                q[nq++] = t[i];
        rv = LOWER(ht, C_GetAttributeValue, s, h, q, nq);
        if (rv != CKR_OK)
            return hsm_map_rv(rv);
        for (i = 0; i < nq; i++)
            if (attrs_set(&out->attrs, q[i].type, q[i].pValue,
                          q[i].ulValueLen) != 0) {
                attrs_clear(&out->attrs);
                return CKR_HOST_MEMORY;
            }
    }
    attrs_set_bool(&out->attrs, CKA_COPYABLE, CK_FALSE);
    attrs_set_bool(&out->attrs, CKA_DESTROYABLE, CK_TRUE);
    ref = calloc(1, sizeof(*ref));
    if (ref == NULL) {
        attrs_clear(&out->attrs);
        return CKR_HOST_MEMORY;
    }
    ref->kind = HSM_REF_SECRET;
    ref->h = h;
    out->ref = ref;
    return CKR_OK;
}

/* A copy of the template with CKA_TOKEN false: the keys this back end
 * makes are session objects of the caller's lower session. */
static CK_RV session_template(const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                              CK_ATTRIBUTE **out, CK_ULONG *nout)
{
    static CK_BBOOL no = CK_FALSE;
    CK_BBOOL token = CK_FALSE;
    CK_ATTRIBUTE *t;
    CK_ULONG i, k = 0;

    if (tmpl_find_bool(tmpl, n, CKA_TOKEN, &token) < 0)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (token)
        return CKR_TEMPLATE_INCONSISTENT;
    t = calloc(n + 1, sizeof(*t));
    if (t == NULL)
        return CKR_HOST_MEMORY;
    for (i = 0; i < n; i++)
        if (tmpl[i].type != CKA_TOKEN)
            t[k++] = tmpl[i];
    t[k].type = CKA_TOKEN;
    t[k].pValue = &no;
    t[k].ulValueLen = sizeof(no);
    *out = t;
    *nout = k + 1;
    return CKR_OK;
}

static CK_RV unwrap_lower(struct pcall *c, void *key, const CK_MECHANISM *m,
                          const CK_BYTE *wrapped, CK_ULONG len,
                          const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                          struct pobj *out)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = lower_session(c);
    CK_OBJECT_HANDLE priv = ref_handle(ht, key, true), h = 0;
    CK_ATTRIBUTE *t = NULL, *t2 = NULL;
    CK_ULONG nt = 0, keylen;
    CK_BYTE *value = NULL;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_RV rv;

    if (priv == 0)
        return CKR_UNWRAPPING_KEY_HANDLE_INVALID;
    rv = session_template(tmpl, n, &t, &nt);
    if (rv != CKR_OK)
        return rv;
    if (!oaep_is_local(ht, m)) {
        rv = LOWER(ht, C_UnwrapKey, s, (CK_MECHANISM *)m, priv,
                   (CK_BYTE *)wrapped, len, t, nt, &h);
        if (rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID ||
            rv == CKR_MECHANISM_INVALID) {
            if (m->mechanism == CKM_RSA_PKCS_OAEP && ht->has_raw)
                oaep_mark_local(ht, m);
        }
        if (!oaep_is_local(ht, m)) {
            /* SoftHSM reports a blob it cannot decrypt as a general
             * error; the blob is the only input the caller controls. */
            if (rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_GENERAL_ERROR)
                rv = CKR_WRAPPED_KEY_INVALID;
            if (rv == CKR_ENCRYPTED_DATA_LEN_RANGE)
                rv = CKR_WRAPPED_KEY_LEN_RANGE;
            rv = mapped(c, rv);
            goto done;
        }
    }
    /* Decrypt here, then the key enters the token as a session object. */
    keylen = len;
    value = secure_alloc(len + 1);
    if (value == NULL) {
        rv = CKR_HOST_MEMORY;
        goto done;
    }
    rv = oaep_decrypt_raw(c, priv, m, wrapped, len, value, &keylen);
    if (rv == CKR_ENCRYPTED_DATA_INVALID)
        rv = CKR_WRAPPED_KEY_INVALID;
    if (rv == CKR_ENCRYPTED_DATA_LEN_RANGE)
        rv = CKR_WRAPPED_KEY_LEN_RANGE;
    if (rv != CKR_OK)
        goto done;
    t2 = calloc(nt + 2, sizeof(*t2));
    if (t2 == NULL) {
        rv = CKR_HOST_MEMORY;
        goto done;
    }
    memcpy(t2, t, nt * sizeof(*t));
    if (tmpl_find(t, nt, CKA_CLASS) == NULL) {
        t2[nt].type = CKA_CLASS;
        t2[nt].pValue = &cls;
        t2[nt].ulValueLen = sizeof(cls);
        nt++;
    }
    {
        CK_ULONG i, k = 0;
        /* CKA_VALUE_LEN may not accompany CKA_VALUE in C_CreateObject. */
        CK_ULONG want;
        if (tmpl_find_ulong(t2, nt, CKA_VALUE_LEN, &want) == 1 &&
            want != keylen) {
            rv = CKR_WRAPPED_KEY_INVALID;
            goto done;
        }
        for (i = 0; i < nt; i++)
            if (t2[i].type != CKA_VALUE_LEN)
                t2[k++] = t2[i];
        nt = k;
    }
    t2[nt].type = CKA_VALUE;
    t2[nt].pValue = value;
    t2[nt].ulValueLen = keylen;
    nt++;
    rv = mapped(c, LOWER(ht, C_CreateObject, s, t2, nt, &h));
done:
    if (rv == CKR_OK) {
        rv = secret_pobj(ht, s, h, out);
        if (rv != CKR_OK)
            LOWER(ht, C_DestroyObject, s, h);
    }
    secure_free(value, len + 1);
    free(t);
    free(t2);
    return rv;
}

/* The value of a lower secret key, by wrapping it under a temporary AES
 * key: the lower token still enforces CKA_EXTRACTABLE. */
static CK_RV extract_value(struct pcall *c, CK_OBJECT_HANDLE h, CK_BYTE *out,
                           CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = lower_session(c);
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_ULONG klen = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE_LEN, &klen, sizeof(klen)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        {CKA_WRAP, &yes, sizeof(yes)},
    };
    CK_BYTE kek[32], blob[600];
    CK_ATTRIBUTE kv = {CKA_VALUE, kek, sizeof(kek)};
    CK_ULONG blen = sizeof(blob);
    CK_OBJECT_HANDLE tmp = 0;
    CK_RV rv;

    rv = LOWER(ht, C_GenerateKey, s, &gen, t, CMK_ARRAY_SIZE(t), &tmp);
    if (rv == CKR_OK)
        rv = LOWER(ht, C_WrapKey, s, &kwp, tmp, h, blob, &blen);
    if (rv == CKR_OK)
        rv = LOWER(ht, C_GetAttributeValue, s, tmp, &kv, 1);
    if (tmp != 0)
        LOWER(ht, C_DestroyObject, s, tmp);
    if (rv == CKR_OK)
        rv = softkey_crypt(&kwp, false, kek, sizeof(kek), blob, blen, out,
                           outlen);
    secure_zero(kek, sizeof(kek));
    secure_zero(blob, sizeof(blob));
    return rv == CKR_OK ? CKR_OK : mapped(c, rv);
}

/* What a public operation needs of the private key's usage flags. */
enum usage { USE_WRAP, USE_ENCRYPT, USE_ANY };
static CK_RV usage_check(struct pcall *c, void *key, enum usage use);

static CK_RV hsm_wrap(struct pcall *c, void *wrapping_key,
                      const CK_MECHANISM *m, void *key, CK_BYTE *out,
                      CK_ULONG *outlen)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = lower_session(c);
    CK_OBJECT_HANDLE wh = ref_handle(ht, wrapping_key, false);
    CK_OBJECT_HANDLE kh = ref_handle(ht, key, false);
    CK_BYTE value[600];
    CK_ULONG vlen = sizeof(value), nlen = 0, elen = 0;
    CK_BYTE *n = NULL, *e = NULL;
    EVP_PKEY *pk = NULL;
    CK_RV rv;

    if (wh == 0)
        return CKR_WRAPPING_KEY_HANDLE_INVALID;
    if (kh == 0)
        return CKR_KEY_HANDLE_INVALID;
    /* The lower token would wrap with a disabled or deleted version's
     * public key. Disabled, not CKA_UNWRAP alone: a version that may only
     * decrypt still wraps keys the lower token holds (docs/hsm.md). */
    rv = usage_check(c, wrapping_key, USE_ANY);
    if (rv != CKR_OK)
        return rv;
    if (!oaep_is_local(ht, m)) {
        rv = LOWER(ht, C_WrapKey, s, (CK_MECHANISM *)m, wh, kh, out, outlen);
        if (!((rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID) &&
              m->mechanism == CKM_RSA_PKCS_OAEP && ht->has_raw))
            return mapped(c, rv);
        oaep_mark_local(ht, m);
    }
    /* OAEP the lower token cannot do: encrypt here with the public key. */
    n = get_attr(ht, s, wh, CKA_MODULUS, &nlen);
    e = get_attr(ht, s, wh, CKA_PUBLIC_EXPONENT, &elen);
    if (n == NULL || e == NULL) {
        rv = CKR_WRAPPING_KEY_HANDLE_INVALID;
        goto out;
    }
    if (out == NULL) {
        *outlen = nlen;
        rv = CKR_OK;
        goto out;
    }
    rv = extract_value(c, kh, value, &vlen);
    if (rv != CKR_OK)
        goto out;
    pk = rsa_pkey_from_parts(n, nlen, e, elen);
    if (pk == NULL) {
        rv = CKR_GENERAL_ERROR;
        goto out;
    }
    {
        CK_BYTE tmp[1024];
        CK_ULONG tlen = sizeof(tmp);
        rv = rsa_encrypt(pk, m, value, vlen, tmp, &tlen);
        if (rv == CKR_OK && *outlen < tlen) {
            *outlen = tlen;
            rv = CKR_BUFFER_TOO_SMALL;
        } else if (rv == CKR_OK) {
            memcpy(out, tmp, tlen);
            *outlen = tlen;
        }
    }
out:
    secure_zero(value, sizeof(value));
    EVP_PKEY_free(pk);
    free(n);
    free(e);
    return rv;
}

/* A secret key made in the caller's lower session: generated (m set) or
 * created from the template's value (m NULL). */
static CK_RV new_secret(struct pcall *c, const CK_MECHANISM *m,
                        const CK_ATTRIBUTE *tmpl, CK_ULONG n, struct pobj *out)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = lower_session(c);
    CK_ATTRIBUTE *t = NULL;
    CK_ULONG nt = 0;
    CK_OBJECT_HANDLE h = 0;
    CK_RV rv;

    rv = session_template(tmpl, n, &t, &nt);
    if (rv != CKR_OK)
        return rv;
    rv = m != NULL ? LOWER(ht, C_GenerateKey, s, (CK_MECHANISM *)m, t, nt, &h)
                   : LOWER(ht, C_CreateObject, s, t, nt, &h);
    rv = mapped(c, rv);
    free(t);
    if (rv == CKR_OK) {
        rv = secret_pobj(ht, s, h, out);
        if (rv != CKR_OK)
            LOWER(ht, C_DestroyObject, s, h);
    }
    return rv;
}

static CK_RV hsm_generate_key(struct pcall *c, const CK_MECHANISM *m,
                              const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                              struct pobj *out)
{
    return new_secret(c, m, tmpl, n, out);
}

static CK_RV hsm_create_object(struct pcall *c, const CK_ATTRIBUTE *tmpl,
                               CK_ULONG n, struct pobj *out)
{
    return new_secret(c, NULL, tmpl, n, out);
}

static CK_RV hsm_destroy_object(struct pcall *c, void *ref)
{
    struct hsm_token *ht = c->tok;
    int *kind = ref;

    if (kind == NULL || *kind != HSM_REF_SECRET)
        return CKR_ACTION_PROHIBITED;
    return mapped(c, LOWER(ht, C_DestroyObject, lower_session(c),
                           ((struct hsm_secret *)ref)->h));
}

static CK_RV hsm_get_value(struct pcall *c, void *ref, CK_BYTE *out,
                           CK_ULONG *len)
{
    struct hsm_token *ht = c->tok;
    CK_OBJECT_HANDLE h = ref_handle(ht, ref, false);
    CK_ATTRIBUTE a = {CKA_VALUE, out, *len};
    CK_RV rv;

    if (h == 0)
        return CKR_OBJECT_HANDLE_INVALID;
    rv = LOWER(ht, C_GetAttributeValue, lower_session(c), h, &a, 1);
    if (rv == CKR_OK)
        *len = a.ulValueLen;
    return mapped(c, rv);
}

static CK_RV set_label(struct hsm_token *ht, CK_SESSION_HANDLE s,
                       CK_OBJECT_HANDLE h, const char *label)
{
    CK_ATTRIBUTE a = {CKA_LABEL, (void *)label, strlen(label)};

    if (h == 0)
        return CKR_OK;
    return LOWER(ht, C_SetAttributeValue, s, h, &a, 1);
}

/*
 * A new key pair. With the label of an existing key it becomes the new
 * current version: made under a temporary label, then the old current
 * pair is relabelled NAME@HEXID, then the new one takes NAME. An
 * interruption leaves every version reachable.
 */
static CK_RV hsm_generate_key_pair(struct pcall *c, const CK_MECHANISM *m,
                                   const CK_ATTRIBUTE *pubt, CK_ULONG npub,
                                   const CK_ATTRIBUTE *privt, CK_ULONG npriv,
                                   struct pobj *pub_out, struct pobj *priv_out)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = lower_session(c);
    const CK_ATTRIBUTE *la = tmpl_find(privt, npriv, CKA_LABEL);
    CK_BYTE id[8], exp[] = {0x01, 0x00, 0x01};
    CK_ULONG bits = 0;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    char name[256], tmp_label[300], old_label[300], idhex[20];
    struct hsm_ver *cur = NULL, *v;
    CK_OBJECT_HANDLE hpub = 0, hpriv = 0, old_priv = 0, old_pub = 0;
    struct pobj *objs = NULL;
    CK_ULONG nobjs = 0, i;
    bool complete;
    CK_RV rv;

    if (la == NULL)
        la = tmpl_find(pubt, npub, CKA_LABEL);
    if (la == NULL || la->pValue == NULL || la->ulValueLen == 0 ||
        la->ulValueLen >= sizeof(name))
        snprintf(name, sizeof(name), "key");
    else
        snprintf(name, sizeof(name), "%.*s", (int)la->ulValueLen,
                 (const char *)la->pValue);
    if (strchr(name, '@') != NULL)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (tmpl_find_ulong(pubt, npub, CKA_MODULUS_BITS, &bits) < 0)
        return CKR_ATTRIBUTE_VALUE_INVALID;

    /* Know the current version (for its size, and to relabel it). */
    rv = hsm_list(c, NULL, 0, &objs, &nobjs, &complete);
    if (rv != CKR_OK)
        return rv;
    for (i = 0; i < nobjs; i++)
        pobj_clear(NULL, NULL, &objs[i]);
    free(objs);
    pthread_mutex_lock(&ht->lock);
    for (v = ht->versions; v != NULL; v = v->next)
        if (v->present && v->label && strcmp(v->label, name) == 0)
            cur = v;
    if (cur != NULL) {
        old_priv = cur->priv;
        old_pub = cur->pub;
        hex(cur->id, cur->id_len, idhex, sizeof(idhex));
        snprintf(old_label, sizeof(old_label), "%s@%s", name, idhex);
    }
    pthread_mutex_unlock(&ht->lock);
    if (bits == 0 && cur != NULL) {
        CK_ULONG nlen = 0;
        void *nm =
            get_attr(ht, s, old_pub ? old_pub : old_priv, CKA_MODULUS, &nlen);
        bits = nlen * 8;
        free(nm);
    }
    if (bits == 0)
        bits = 2048;

    if (RAND_bytes(id, sizeof(id)) != 1)
        return CKR_FUNCTION_FAILED;
    hex(id, sizeof(id), idhex, sizeof(idhex));
    snprintf(tmp_label, sizeof(tmp_label), "%s@%s", name, idhex);
    {
        CK_ATTRIBUTE pub[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &no, sizeof(no)},
            {CKA_LABEL, tmp_label, strlen(tmp_label)},
            {CKA_ID, id, sizeof(id)},
            {CKA_MODULUS_BITS, &bits, sizeof(bits)},
            {CKA_PUBLIC_EXPONENT, exp, sizeof(exp)},
            {CKA_ENCRYPT, &yes, sizeof(yes)},
            {CKA_WRAP, &yes, sizeof(yes)},
            {CKA_VERIFY, &yes, sizeof(yes)},
        };
        CK_ATTRIBUTE priv[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_LABEL, tmp_label, strlen(tmp_label)},
            {CKA_ID, id, sizeof(id)},
            {CKA_SENSITIVE, &yes, sizeof(yes)},
            {CKA_EXTRACTABLE, &no, sizeof(no)},
            {CKA_DECRYPT, &yes, sizeof(yes)},
            {CKA_UNWRAP, &yes, sizeof(yes)},
            {CKA_SIGN, &yes, sizeof(yes)},
        };
        rv = LOWER(ht, C_GenerateKeyPair, s, (CK_MECHANISM *)m, pub,
                   CMK_ARRAY_SIZE(pub), priv, CMK_ARRAY_SIZE(priv), &hpub,
                   &hpriv);
    }
    if (rv != CKR_OK)
        return mapped(c, rv);
    if (cur != NULL) {
        rv = set_label(ht, s, old_priv, old_label);
        if (rv == CKR_OK)
            rv = set_label(ht, s, old_pub, old_label);
    }
    if (rv == CKR_OK)
        rv = set_label(ht, s, hpriv, name);
    if (rv == CKR_OK)
        rv = set_label(ht, s, hpub, name);
    if (rv != CKR_OK)
        return mapped(c, rv);

    /* Report the new pair as the listing will show it. */
    rv = hsm_list(c, NULL, 0, &objs, &nobjs, &complete);
    if (rv != CKR_OK)
        return rv;
    rv = CKR_GENERAL_ERROR;
    for (i = 0; i < nobjs; i++) {
        CK_ATTRIBUTE *ida = attrs_find(&objs[i].attrs, CKA_ID);
        CK_OBJECT_CLASS cls = attrs_get_ulong(&objs[i].attrs, CKA_CLASS, ~0UL);
        if (ida != NULL && ida->ulValueLen == sizeof(id) &&
            memcmp(ida->pValue, id, sizeof(id)) == 0) {
            if (cls == CKO_PUBLIC_KEY) {
                *pub_out = objs[i];
                memset(&objs[i], 0, sizeof(objs[i]));
            } else if (cls == CKO_PRIVATE_KEY) {
                *priv_out = objs[i];
                memset(&objs[i], 0, sizeof(objs[i]));
            }
        }
        pobj_clear(NULL, NULL, &objs[i]);
    }
    free(objs);
    if (pub_out->uid != NULL && priv_out->uid != NULL)
        rv = CKR_OK;
    cmk_info("token %s: new key pair %s (version %s)",
             ht->token_label ? ht->token_label : ht->token_uri, name, idhex);
    return rv;
}

/* The lower token failed an operation with this version: the next public
 * operation reads its usage flags again, whatever their age. A failure
 * other than an outage (the token refused the version) also ends the
 * version's offline-grace: it is evidence, not unreachability. */
static void usage_forget(struct hsm_token *ht, void *ref, CK_RV rv)
{
    struct hsm_ver *v = ref;

    if (v == NULL || v->kind != HSM_REF_VERSION)
        return;
    pthread_mutex_lock(&ht->lock);
    v->usage_at = 0;
    v->usage_gen++;
    if (rv != CKR_DEVICE_ERROR && rv != CKR_DEVICE_REMOVED)
        v->usage_ok_at = 0;
    pthread_mutex_unlock(&ht->lock);
}

/*
 * A version disabled (usage flags cleared) or deleted in the lower token
 * stops local wraps and encryptions within refresh-interval, as on a
 * keyvault token: the flags are read from the lower token (a file-store
 * round in SoftHSM, which would cost more than the RSA operation itself)
 * when the copy here is older than refresh-interval, at once after the
 * lower token failed an operation with the version, and at every use with
 * refresh-interval = 0. See docs/hsm.md, "Revocation".
 *
 * When that read fails transiently (lower_transient: an outage, not
 * evidence about the version), the flags last read serve until
 * refresh-interval + offline-grace after that read, and the operation is
 * audited as served offline; then the version stops with the lower
 * token's error, logged once. See docs/hsm.md, "Outages".
 */
static CK_RV usage_check(struct pcall *c, void *key, enum usage use)
{
    struct hsm_token *ht = c->tok;
    struct hsm_ver *v = key;
    CK_OBJECT_HANDLE priv;
    CK_BBOOL unw = CK_FALSE, dec = CK_FALSE;
    CK_ATTRIBUTE a[] = {
        {CKA_UNWRAP, &unw, sizeof(unw)},
        {CKA_DECRYPT, &dec, sizeof(dec)},
    };
    int64_t now = now_ms(), read_at = 0;
    unsigned gen;
    bool fresh, offline = false, stop_log = false;
    char label[160];
    CK_RV rv;

    audit_note_offline(false);
    if (v == NULL || v->kind != HSM_REF_VERSION)
        return CKR_OK; /* only versions have a private half */
    pthread_mutex_lock(&ht->lock);
    priv = v->priv;
    gen = v->usage_gen;
    fresh = ht->refresh_ms > 0 && v->usage_at != 0 && v->usage_priv == priv &&
            now - v->usage_at < ht->refresh_ms;
    if (fresh) {
        unw = v->may_unwrap;
        dec = v->may_decrypt;
    }
    pthread_mutex_unlock(&ht->lock);
    if (priv == 0)
        return CKR_OK; /* the private half is not visible (no login) */
    if (!fresh) {
        rv = LOWER(ht, C_GetAttributeValue, lower_session(c), priv, a, 2);
        pthread_mutex_lock(&ht->lock);
        if (rv != CKR_OK && !lower_transient(rv)) {
            /* The token answered, refusing (the object gone): evidence,
             * no grace for the version until it reads again. */
            v->usage_at = v->usage_ok_at = 0;
        } else if (rv != CKR_OK) {
            v->usage_at = 0;
            read_at = v->usage_ok_at;
            if (lower_transient(rv) && ht->grace_ms > 0 && read_at != 0 &&
                v->usage_priv == priv) {
                if (now < read_at + ht->refresh_ms + ht->grace_ms) {
                    offline = true;
                    unw = v->may_unwrap;
                    dec = v->may_decrypt;
                } else if (!v->grace_over_logged) {
                    v->grace_over_logged = stop_log = true;
                    /* Labels are replaced under the lock by listings. */
                    snprintf(label, sizeof(label), "%s",
                             v->label ? v->label : "?");
                }
            }
        } else if (v->usage_gen == gen) {
            /* Not if a failure came in meanwhile: what was read may be
             * older than it. The time is that of before the read. */
            v->usage_at = v->usage_ok_at = now > 0 ? now : 1;
            v->usage_priv = priv;
            v->may_unwrap = unw;
            v->may_decrypt = dec;
            v->grace_over_logged = false;
        }
        pthread_mutex_unlock(&ht->lock);
        if (stop_log)
            cmk_error("token %s: key %s stopped: the lower token has "
                      "failed (%s) past offline-grace (%ld s after "
                      "refresh-interval; its usage flags were last read "
                      "%lld s ago)",
                      ht->name, label, cmk_rv_name(rv), ht->grace_ms / 1000,
                      (long long)(now - read_at) / 1000);
        if (rv == CKR_OBJECT_HANDLE_INVALID)
            return CKR_KEY_HANDLE_INVALID;
        if (rv != CKR_OK && !offline)
            return mapped(c, rv);
    }
    if (!(use == USE_WRAP ? unw : use == USE_ENCRYPT ? dec : (unw || dec)))
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (offline)
        audit_note_offline(true);
    return CKR_OK;
}

static CK_RV hsm_check_public(struct pcall *c, void *key, bool wrap)
{
    return usage_check(c, key, wrap ? USE_WRAP : USE_ENCRYPT);
}

/* A failure that says nothing about the key: the input, the output
 * buffer, the mechanism or the template was wrong. */
static bool caller_error(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_WRAPPED_KEY_LEN_RANGE:
    case CKR_BUFFER_TOO_SMALL:
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_TEMPLATE_INCONSISTENT:
        return true;
    default:
        return false;
    }
}

static CK_RV hsm_crypt(struct pcall *c, enum pop op, void *key,
                       const CK_MECHANISM *m, const CK_BYTE *in, CK_ULONG inlen,
                       CK_BYTE *out, CK_ULONG *outlen)
{
    CK_RV rv;

    audit_note_offline(false);
    rv = crypt_lower(c, op, key, m, in, inlen, out, outlen);
    if (!caller_error(rv))
        usage_forget(c->tok, key, rv);
    return rv;
}

static CK_RV hsm_unwrap(struct pcall *c, void *key, const CK_MECHANISM *m,
                        const CK_BYTE *wrapped, CK_ULONG len,
                        const CK_ATTRIBUTE *tmpl, CK_ULONG n, struct pobj *out)
{
    CK_RV rv;

    audit_note_offline(false);
    rv = unwrap_lower(c, key, m, wrapped, len, tmpl, n, out);
    if (!caller_error(rv))
        usage_forget(c->tok, key, rv);
    return rv;
}

static CK_RV hsm_generate_random(struct pcall *c, CK_BYTE *out, CK_ULONG len)
{
    struct hsm_token *ht = c->tok;

    return mapped(c, LOWER(ht, C_GenerateRandom, lower_session(c), out, len));
}

const struct provider_ops hsm_provider = {
    .name = "hsm",
    .open = hsm_open,
    .close = hsm_close,
    .token_info = hsm_token_info,
    .mechanisms = hsm_mechanisms,
    .login = hsm_login,
    .logout = hsm_logout,
    .session_open = hsm_session_open,
    .session_close = hsm_session_close,
    .list = hsm_list,
    .ref_free = hsm_ref_free,
    .check_public = hsm_check_public,
    .check_mechanism = hsm_check_mechanism,
    .crypt = hsm_crypt,
    .unwrap = hsm_unwrap,
    .wrap = hsm_wrap,
    .generate_key = hsm_generate_key,
    .create_object = hsm_create_object,
    .destroy_object = hsm_destroy_object,
    .get_value = hsm_get_value,
    .generate_key_pair = hsm_generate_key_pair,
    .generate_random = hsm_generate_random,
    .atfork = hsm_atfork,
};
