/*
 * The hsm back end: a local PKCS#11 token (SoftHSMv2, or any vendor HSM
 * library) loaded with dlopen. See docs/hsm.md. Internal to provider/hsm:
 * the front end sees only hsm_provider (provider.h).
 *
 *   hsm.c          opening a token, login, sessions; the provider table
 *   hsm-load.c     loading lower modules; the fork gate (LOWER)
 *   hsm-errors.c   lower CKR -> ours
 *   hsm-list.c     listing versions; the handles behind references
 *   hsm-oaep.c     OAEP over raw RSA where the lower token refuses it
 *   hsm-ops.c      operations forwarded to the lower token
 *   hsm-keypair.c  a new key pair as the current version of its key
 *   hsm-grace.c    the lower token's health, usage flags, offline-grace
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

/* A secret key in the lower token: a session object the provider made, or
 * a token object (made here or listed). */
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
    /* The lower token refused AES-GCM in C_*Update and C_*Final parts
     * (hsm-ops.c): single-part calls. Atomic. */
    bool gcm_single;
    /* The user's lower login, kept for the process once made (docs/hsm.md,
     * "Login"): HMAC-SHA256 of the PIN under pin_key, both in secure
     * memory, to check later C_Login calls without a lower C_Login.
     * Under lock. */
    unsigned char *pin_key, *pin_mac;
};

/* hsm-load.c: lower modules and the fork gate. */
CK_RV hsm_lib_open(const char *path, struct hsm_lib **out, char *err,
                   size_t errlen);
void hsm_lib_close(struct hsm_lib *lib, bool in_child);
void hsm_lower_enter(void);
void hsm_lower_leave(void);
CK_RV hsm_lower_done(struct hsm_token *ht, const char *fn, CK_RV rv);
void hsm_atfork(enum provider_fork phase);

/* Calls into the lower module go through this: inside the fork gate; a
 * missing function is CKR_FUNCTION_NOT_SUPPORTED, failures are traced, and
 * the lower token's health is followed (hsm_lower_health). */
#define LOWER(ht, fn, ...)                                                     \
    hsm_lower_done((ht), #fn,                                                  \
                   (hsm_lower_enter(), (ht)->lib->fl->fn != NULL               \
                                           ? (ht)->lib->fl->fn(__VA_ARGS__)    \
                                           : CKR_FUNCTION_NOT_SUPPORTED))

/* The lower session for a call: the caller's, or the anchor. */
static inline CK_SESSION_HANDLE hsm_lower_session(struct pcall *c)
{
    struct hsm_token *ht = c->tok;

    return c->sess != NULL ? *(CK_SESSION_HANDLE *)c->sess : ht->anchor;
}

/* hsm-errors.c */
CK_RV hsm_map_rv(CK_RV lower);
bool hsm_is_data_error(CK_RV rv);
CK_RV hsm_mapped(struct pcall *c, CK_RV lower);

/* hsm-list.c */
void *hsm_get_attr(struct hsm_token *ht, CK_SESSION_HANDLE s,
                   CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len);
CK_RV hsm_list(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
               struct pobj **objs, CK_ULONG *count, bool *complete);
void hsm_ref_free(void *tok, void *ref);
CK_OBJECT_HANDLE hsm_ref_handle(struct hsm_token *ht, void *ref,
                                bool private_half);

/* hsm-oaep.c */
bool hsm_oaep_is_local(struct hsm_token *ht, const CK_MECHANISM *m);
bool hsm_oaep_refused(struct hsm_token *ht, const CK_MECHANISM *m, CK_RV rv);
CK_RV hsm_oaep_decrypt_raw(struct pcall *c, CK_OBJECT_HANDLE priv,
                           const CK_MECHANISM *m, const CK_BYTE *in,
                           CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen);

/* hsm-ops.c */
CK_RV hsm_check_mechanism(void *tok, enum pop op, const CK_MECHANISM *m);
CK_RV hsm_crypt(struct pcall *c, enum pop op, void *key, const CK_MECHANISM *m,
                const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                CK_ULONG *outlen);
CK_RV hsm_unwrap(struct pcall *c, void *key, const CK_MECHANISM *m,
                 const CK_BYTE *wrapped, CK_ULONG len, const CK_ATTRIBUTE *tmpl,
                 CK_ULONG n, struct pobj *out);
CK_RV hsm_wrap(struct pcall *c, void *wrapping_key, const CK_MECHANISM *m,
               void *key, CK_BYTE *out, CK_ULONG *outlen);
CK_RV hsm_generate_key(struct pcall *c, const CK_MECHANISM *m,
                       const CK_ATTRIBUTE *tmpl, CK_ULONG n, struct pobj *out);
CK_RV hsm_create_object(struct pcall *c, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                        struct pobj *out);
CK_RV hsm_destroy_object(struct pcall *c, void *ref);
CK_RV hsm_get_value(struct pcall *c, void *ref, CK_BYTE *out, CK_ULONG *len);
CK_RV hsm_generate_random(struct pcall *c, CK_BYTE *out, CK_ULONG len);
/* Token secret keys (PROVIDER_TOKEN_SECRET_KEYS): a lower secret key as
 * the front end's object, and its uid. */
CK_RV hsm_secret_pobj(struct hsm_token *ht, CK_SESSION_HANDLE s,
                      CK_OBJECT_HANDLE h, struct pobj *out);
void hsm_secret_uid(CK_OBJECT_HANDLE h, char *buf, size_t len);

/* hsm-keypair.c */
CK_RV hsm_generate_key_pair(struct pcall *c, const CK_MECHANISM *m,
                            const CK_ATTRIBUTE *pubt, CK_ULONG npub,
                            const CK_ATTRIBUTE *privt, CK_ULONG npriv,
                            struct pobj *pub_out, struct pobj *priv_out);

/* hsm-grace.c: health, usage flags, offline-grace. */
int64_t hsm_now_ms(void);
bool hsm_lower_transient(CK_RV rv);
void hsm_lower_health(struct hsm_token *ht, const char *fn, CK_RV rv);
bool hsm_outage_keeps_listing(struct hsm_token *ht, CK_RV rv);

/* What a public operation needs of the private key's usage flags. */
enum usage { USE_WRAP, USE_ENCRYPT, USE_ANY };
CK_RV hsm_usage_check(struct pcall *c, void *key, enum usage use);
CK_RV hsm_usage_after(struct hsm_token *ht, void *ref, CK_RV rv);
CK_RV hsm_check_public(struct pcall *c, void *key, bool wrap);
/* CKA_CMK_ENABLED: the lower private key's usage flags (retire); the
 * provider's set_attributes. */
CK_RV hsm_set_enabled(struct pcall *c, void *ref, const CK_ATTRIBUTE *at);
CK_RV hsm_set_attributes(struct pcall *c, void *ref, const CK_ATTRIBUTE *tmpl,
                         CK_ULONG n);

/* hsm-policy.c: CKA_CMK_ROTATION_POLICY, kept on the lower token */
CK_RV hsm_get_attribute(struct pcall *c, void *ref, CK_ATTRIBUTE_TYPE type,
                        CK_BYTE **out, CK_ULONG *len);
CK_RV hsm_set_rotation_policy(struct pcall *c, void *ref,
                              const CK_ATTRIBUTE *at);

#endif
