/*
 * The hsm back end: a local PKCS#11 token (SoftHSMv2, or any vendor HSM
 * library) loaded with dlopen. See docs/hsm.md.
 */
#ifndef CMKP11_HSM_H
#define CMKP11_HSM_H

#include <pthread.h>
#include <stdint.h>

#include "provider.h"

/* A loaded lower module, shared by every token that names the same file. */
struct hsm_lib {
    char *path;
    void *dl;
    CK_FUNCTION_LIST *fl;
    int users;
    bool we_initialized;
    struct hsm_lib *next;
};

/* One key version: a pair in the lower token. Versions are never freed
 * before the token closes, so references to them stay valid; their lower
 * handles are updated in place (under the token's lock) at each listing. */
struct hsm_ver {
    int kind; /* HSM_REF_VERSION */
    char *name;
    char *label;
    CK_BYTE id[64];
    CK_ULONG id_len;
    CK_OBJECT_HANDLE priv, pub; /* 0 = not visible in the lower token */
    bool present;
    /* filled by a listing in progress */
    bool seen;
    CK_OBJECT_HANDLE next_priv, next_pub;
    /* The private key's CKA_UNWRAP and CKA_DECRYPT as last read for a
     * public operation (hsm_check_public): read again when older than
     * refresh-interval, when the handle changed, and after the lower token
     * failed an operation with this version (usage_gen counts those). */
    int64_t usage_at; /* monotonic ms; 0 = to be read */
    CK_OBJECT_HANDLE usage_priv;
    unsigned usage_gen;
    bool may_unwrap, may_decrypt;
    /* offline-grace: when the flags were last read (0: never, or the lower
     * token refused an operation with the version since: no grace), and
     * whether the end of the grace was logged. */
    int64_t usage_ok_at;
    bool grace_over_logged;
    struct hsm_ver *next;
};

/* A secret key the provider made in the lower token (a session object). */
struct hsm_secret {
    int kind; /* HSM_REF_SECRET */
    CK_OBJECT_HANDLE h;
};

#define HSM_REF_VERSION 1
#define HSM_REF_SECRET  2

/* OAEP parameter sets the lower module refused, so they go through raw
 * RSA here: bit (hash index * 8 + mgf index) * 2 + has-label. */
#define HSM_OAEP_SLOTS 128

struct hsm_token {
    pthread_mutex_t lock;      /* versions and the OAEP table */
    pthread_mutex_t list_lock; /* one listing at a time */
    struct hsm_lib *lib;
    char *module_path;
    char *token_label;
    char *token_uri;
    CK_SLOT_ID slot;
    CK_TOKEN_INFO tinfo;
    CK_SESSION_HANDLE anchor; /* keeps login state; used for listing */
    bool self_login;          /* logged in from pin-file */
    char **keys;              /* allow-list, NULL-terminated, or NULL */
    struct hsm_ver *versions;
    long refresh_ms; /* refresh-interval; 0: usage read at every use */
    /* offline-grace (docs/hsm.md, "Outages"): how long past refresh-interval
     * the usage flags last read serve local public-key operations while the
     * lower token fails transiently; 0: not at all. */
    long grace_ms;
    char *name; /* the [token] section's */
    /* Since when the lower token fails transiently (0: it answers) and
     * when that was last logged (monotonic ms), and whether a listing
     * succeeded; atomic, read and written outside any lock. */
    int64_t offline_since_ms;
    int64_t offline_logged_ms;
    bool listed;
    struct pmech *mechs;
    CK_ULONG n_mechs;
    bool has_raw; /* the lower token decrypts with CKM_RSA_X_509 */
    bool oaep_local[HSM_OAEP_SLOTS];
    /* The user's lower login, kept for the process once made (docs/hsm.md,
     * "Login"): HMAC-SHA256 of the PIN under pin_key, both in secure
     * memory, to check later C_Login calls without a lower C_Login.
     * Under lock. */
    unsigned char *pin_key, *pin_mac;
};

CK_RV hsm_map_rv(CK_RV lower);

#endif
