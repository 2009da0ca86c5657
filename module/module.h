/*
 * The front end's internal state: tokens (slots), sessions, objects and
 * operations. See docs/locking.md for the lock order:
 *   g.rwlock (read: every call; write: C_Initialize/C_Finalize)
 *     -> session->lock (the session's operation state, held across I/O)
 *       -> g.mutex (tables and login state; never held across I/O)
 * Objects and sessions are reference-counted so that nothing is freed
 * while a call uses it.
 */
#ifndef CMKP11_MODULE_H
#define CMKP11_MODULE_H

#include <pthread.h>
#include <sys/types.h>

#include <openssl/evp.h>

#include "compat.h"
#include "attrs.h"
#include "conf.h"
#include "debug.h"
#include "hmap.h"
#include "provider.h"

#define CMK_MANUFACTURER        "cmkp11"
#define CMK_LIBRARY_DESCRIPTION "cmkp11 customer-managed keys"
#define CMK_VERSION_MAJOR       0
#define CMK_VERSION_MINOR       1

/* Largest input kept for a multi-part operation that must see all its data
 * (RSA, AES-GCM decrypt, key wrap). */
#define CMK_MAX_MULTIPART (64UL * 1024 * 1024)

/* Certificate objects beside private keys (certs.c). */
enum certs_mode {
    CERTS_NONE,
    CERTS_GENERATE, /* self-signed through the key */
    CERTS_DIR,      /* PEM files from a directory */
};

struct cert_entry;

struct token {
    CK_SLOT_ID slot_id;
    char *name;
    const struct provider_ops *ops;
    void *ptok;
    unsigned pflags;
    struct provider_token_info info;
    bool unwrap_fallback; /* unwrap-fallback: try older versions (OAEP) */
    int pkcs1;            /* rsa-pkcs1-decrypt: enum config_pkcs1 */
    /* The back end failed to start (the lower library's C_Initialize, the
     * vault's credentials): the slot stays, without a token, so the other
     * tokens keep working. absent_reason says why, for the log. */
    bool absent;
    char *absent_reason;
    struct pmech *mechs; /* the provider's and the module's own */
    CK_ULONG n_mechs;
    /* under g.mutex: */
    bool logged_in;
    CK_USER_TYPE user;
    CK_ULONG n_sessions, n_rw_sessions;
    struct hmap *by_uid; /* hash of uid -> struct object * (token objects) */
    enum certs_mode cert_mode;
    char *cert_dir;
    struct cert_entry *certs; /* under g.mutex */
};

struct object {
    int refs; /* atomic */
    CK_OBJECT_HANDLE handle;
    struct token *token;
    CK_SESSION_HANDLE session; /* owning session, 0 for token objects */
    char *uid;
    struct object *uid_next; /* chain in token->by_uid */
    struct attrs attrs;      /* under g.mutex once published */
    void *ref;               /* the provider's reference, or NULL */
    unsigned char *secret;   /* a module-held secret key's value */
    CK_ULONG secret_len;
    bool gone; /* no longer in the back end */
    /* Implicit rejection's per-key secret (pkcs1.c), secure memory. */
    unsigned char *pkcs1_secret;
};

enum op_kind {
    OP_ENCRYPT,
    OP_DECRYPT,
    OP_SIGN,
    OP_VERIFY,
    OP_DIGEST,
    OP_COUNT,
};

struct op {
    bool active;
    bool updated; /* a multi-part call was made */
    CK_MECHANISM mech;
    union {
        CK_RSA_PKCS_OAEP_PARAMS oaep;
        CK_RSA_PKCS_PSS_PARAMS pss;
        CK_GCM_PARAMS gcm;
        CK_BYTE iv[16];
    } param;
    unsigned char *param_data[2]; /* copies of OAEP label, GCM IV and AAD */
    struct object *key;
    EVP_MD_CTX *md;          /* hash-and-sign, verify and digest */
    CK_MECHANISM_TYPE inner; /* the mechanism the provider gets */
    unsigned char *buf;      /* accumulated input (secure) */
    CK_ULONG len, cap;
    unsigned char *result; /* output kept after CKR_BUFFER_TOO_SMALL */
    CK_ULONG result_len;
    unsigned char in_hash[32]; /* which input that output belongs to */
};

struct session {
    int refs; /* atomic */
    CK_SESSION_HANDLE handle;
    struct token *token;
    CK_FLAGS flags;
    pthread_mutex_t lock;
    void *psess;
    CK_ULONG device_error;
    bool closed;
    /* object search, under lock */
    bool find_active;
    CK_OBJECT_HANDLE *found;
    CK_ULONG n_found, found_pos;
    struct op ops[OP_COUNT];
};

struct module_state {
    pthread_rwlock_t rwlock;
    pthread_mutex_t mutex;
    bool initialized;
    unsigned long generation; /* fork generation at C_Initialize */
    struct config *cfg;
    struct token *tokens;
    CK_ULONG n_tokens;
    struct hmap *sessions; /* handle -> struct session * */
    struct hmap *objects;  /* handle -> struct object * */
    CK_ULONG next_handle;
};

extern struct module_state g;

/* general.c */
CK_RV module_enter(void); /* read lock + initialised check */
void module_leave(void);
CK_ULONG module_new_handle_unlocked(void);

/* slot.c */
CK_RV token_get(CK_SLOT_ID id, struct token **t);
CK_RV token_setup(struct token *t, const struct config_token *ct);
void token_teardown(struct token *t, bool in_child);
const struct pmech *token_mech(const struct token *t, CK_MECHANISM_TYPE type);

/* session.c */
CK_RV session_get(CK_SESSION_HANDLE h, struct session **s); /* ref+lock */
void session_put(struct session *s);                        /* unlock+unref */
void session_close_all_unlocked(struct token *t);
bool session_is_rw(const struct session *s);
CK_STATE session_state_unlocked(const struct session *s);
void op_reset(struct op *op);
void sessions_destroy_all(bool in_child);
CK_RV session_only(CK_SESSION_HANDLE h, CK_RV result);
CK_RV session_login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                    CK_ULONG len);

/* object.c */
void object_unref(struct object *o);
struct object *object_ref(struct object *o);
/* Finds a handle visible to the session; returns a reference. */
CK_RV object_get(struct session *s, CK_OBJECT_HANDLE h, struct object **o);
/* Publishes a new object (token object if sess == 0) and sets *h. */
CK_RV object_publish(struct token *t, CK_SESSION_HANDLE sess, struct pobj *p,
                     unsigned char *secret, CK_ULONG secret_len,
                     CK_OBJECT_HANDLE *h);
/* Merges a provider listing into the token's objects. Takes the pobjs. */
void object_merge(struct token *t, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
                  struct pobj *objs, CK_ULONG n, bool complete);
CK_RV object_refresh(struct session *s, const CK_ATTRIBUTE *hint,
                     CK_ULONG nhint);
void object_destroy_session_objects(struct session *s);
void objects_destroy_token(struct token *t, bool in_child);
bool object_visible_unlocked(const struct session *s, const struct object *o);
/* Copies attributes out under the lock. */
bool object_get_bool(struct object *o, CK_ATTRIBUTE_TYPE type, bool dflt);
CK_ULONG object_get_ulong(struct object *o, CK_ATTRIBUTE_TYPE type,
                          CK_ULONG dflt);
/* A copy of one attribute's value (malloc'd), or NULL. */
void *object_get_value(struct object *o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len);

/* certs.c: certificate objects beside private keys ("certificates =") */
CK_RV certs_setup(struct token *t, const struct config_token *ct);
void certs_teardown(struct token *t);
/* The search hint to give the provider, so that its listing holds every
 * private key whose certificate matches hint (buf: room for n). */
const CK_ATTRIBUTE *certs_hint(const struct token *t, const CK_ATTRIBUTE *hint,
                               CK_ULONG n, CK_ATTRIBUTE *buf, CK_ULONG *nout);
/* Adds certificate objects for the private keys of a provider listing,
 * and their subject to the keys. May reallocate *objs. */
void certs_add(struct session *s, struct pobj **objs, CK_ULONG *n);

/* keys.c: secret keys and templates */
/* Version-aware RSA decryption (OAEP): the key's other enabled versions
 * with usage true (CKA_UNWRAP, CKA_DECRYPT), newest first, referenced. */
#define CMK_FALLBACK_MAX 8
CK_ULONG key_fallback_versions(struct session *s, struct object *key,
                               CK_ATTRIBUTE_TYPE usage, struct object **out);

#endif
