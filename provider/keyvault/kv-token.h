/*
 * The keyvault back end, inside (not a provider-facing header): the token,
 * its replicas, keys and versions, and what kv-config.c, kv-request.c,
 * kv-keys.c and kv-ops.c share.
 *
 * The token shows the RSA keys of an Azure Key Vault or Managed HSM as
 * versioned token objects.
 *
 * Loading is lazy: C_Initialize makes no request. A search by label loads
 * that key alone (its versions, then each version's public key once); a
 * search without a label lists the vault's keys (or the keys = allow-list).
 * What was loaded is refreshed when it is older than refresh-interval.
 * Private-key operations are REST calls on the version's kid; public-key
 * operations run in the module with the cached public key.
 */
#ifndef CMKP11_KV_TOKEN_H
#define CMKP11_KV_TOKEN_H

#include "kv.h"

struct kv_key;

/* A vault of vault-url: the first, or a replica holding the same key
 * material (docs/keyvault.md, "Replicas"). Its breaker and health are
 * under the token's lock. */
struct kv_replica {
    char *url;  /* https://host[:port], no trailing slash */
    char *host; /* host[:port] */
    int index;
    /* Circuit breaker: after KV_CIRCUIT_FAILURES calls in a row that found
     * the vault unavailable, calls fail fast for KV_CIRCUIT_OPEN_MS; then
     * one call probes. */
    int failures;
    int64_t open_until_ms;
    bool probing;
    bool asked;      /* a call was made */
    bool answered;   /* the last call reached it */
    int64_t ewma_ms; /* latency of answered calls (0: none yet) */
    char error[160]; /* why the last call failed, or "" */
    bool list_refused;
};

/* A version as one replica holds it: matched to the token's versions by
 * the SHA-256 of the public key (DER SubjectPublicKeyInfo). */
struct kv_rver {
    char *version;
    unsigned char spki[32];
    bool read;    /* spki is known */
    bool present; /* listed or read by the last refresh that reached it */
    bool enabled;
    char *recovery;
    struct kv_rver *next;
};

#define KV_MAX_REPLICAS 8

/* A key version. Versions are freed only when the token closes, so the
 * references the front end holds stay valid; fields change under the
 * token's lock. */
struct kv_version {
    struct kv_key *key;
    char *version;
    CK_BYTE id[64];
    CK_ULONG id_len;
    /* The public key: its DER SubjectPublicKeyInfo, held in the cells the
     * published objects share (attrs_hold), n inside it, and e. */
    const CK_ATTRIBUTE *pub;
    const CK_BYTE *n;
    CK_ULONG nlen;
    CK_BYTE e[4];
    CK_ULONG elen;
    char *kty;
    char *key_ops; /* "wrapKey,unwrapKey,..." */
    char *recovery;
    bool loaded;  /* n, e, kty and key_ops are known */
    bool present; /* exists, by the last listing or GET of the version */
    bool named;   /* asked for by name (NAME@VERSION): kept without a list */
    bool read;    /* its key bundle was read (RSA or not: not read again) */
    bool enabled;
    long long nbf, exp, created, updated;
    unsigned char spki[32];  /* SHA-256 of the public key's DER */
    unsigned differs_logged; /* replicas logged as not holding it */
    struct kv_version *next;
};

struct kv_key {
    char *name;
    char *latest; /* the version GET /keys/NAME answered: the current one */
    struct kv_version *versions;
    int64_t loaded_at_ms; /* 0: never */
    bool exists;
    bool not_rsa; /* its current version is EC or oct: skipped, not reloaded */
    int ref;      /* the replica its versions were last listed from */
    unsigned gone_on; /* replicas whose last answer was a 404 on the key */
    struct kv_rver *rv[KV_MAX_REPLICAS]; /* as each replica holds them */
    /* The newest loads (kv_token.load_seq when they asked the vault)
     * whose answers the key shows: its versions' presence and attributes
     * (seq), its current version (latest_seq), whether it exists
     * (exists_seq), what each replica holds (rseq). An older load that
     * ends later does not undo a newer one; each load sets what no newer
     * one has set yet, so that it ends with a whole view. */
    uint64_t seq, latest_seq, exists_seq;
    uint64_t rseq[KV_MAX_REPLICAS];
    struct kv_key *next;
};

struct kv_token {
    pthread_mutex_t lock; /* keys, versions, the challenge */
    char *name;           /* the [token] section */
    char *vault_url;      /* the first vault: https://host[:port] */
    char *host;           /* host[:port] of the first vault */
    struct kv_replica rep[KV_MAX_REPLICAS];
    int nrep;
    char *hosts; /* every vault's host, for messages */
    bool mhsm;
    struct kv_http *http;
    struct kv_auth *auth;
    char *resource; /* from the 401 challenge */
    char *tenant;
    char **allow; /* keys =, NULL-terminated, or NULL */
    struct kv_key *keys;
    uint64_t load_seq; /* loads of a key started, under lock (kv_key.seq) */
    int64_t names_loaded_at_ms;
    long refresh_ms;
    long deadline_ms;
    long retries;
    bool local_public;
    char *key_type; /* RSA | RSA-HSM */
    char *pin;
    size_t pin_len;
    struct kv_cache *cache; /* unwrap-cache, or NULL */
    /* offline-grace, under lock: since when no call reached the vault (0:
     * it answers), and when that was last logged. */
    long grace_ms;
    int64_t offline_since_ms;
    int64_t offline_logged_ms;
    /* The identity may not list a key's versions (403 once): versions are
     * then read one by one, only those something names. */
    bool list_refused;
    /* A rotation policy read was refused (403): CKA_CMK_REFUSED says so. */
    bool policy_refused;
    /* Token secret keys (kv-store.c), under lock: state-dir (NULL: none),
     * wrapping-key (NULL: the only key), the keys as last scanned. */
    char *state_dir;
    char *wrapping_key;
    struct kv_skey *skeys;
    int64_t scanned_at_ms;
    bool state_logged;   /* the state directory's error was logged */
    char state_why[128]; /* why the last scan did not read it, or "" */
};

#define KV_CIRCUIT_FAILURES 5
#define KV_CACHE_SIZE       4096 /* unwrap results kept at most */
#define KV_CIRCUIT_OPEN_MS  5000
#define KV_OFFLINE_LOG_MS   60000 /* the outage is logged once a minute */

/* Whether this thread's last kv_call failed for unreachability (transport,
 * 5xx, 429 after retries, the breaker open, the identity endpoint down),
 * not for revocation evidence (docs/keyvault.md, "Outages"). */
extern __thread bool kv_call_unreachable;
/* The vault this thread's last kv_call went to, for messages. */
extern __thread const char *kv_call_host;

struct kv_result {
    long status;
    json_object *doc; /* parsed body of a 2xx answer */
    char code[64];    /* Key Vault's error code */
    char message[512];
};

/* kv-config.c */
CK_RV kv_open(const struct config_token *cfg, void **tok, unsigned *flags,
              char *err, size_t errlen);
void kv_close(void *tok, bool in_child);
void kv_token_info(void *tok, struct provider_token_info *info);
const struct pmech *kv_mechanisms(void *tok, CK_ULONG *count);
CK_RV kv_login(struct pcall *c, CK_USER_TYPE user, const CK_UTF8CHAR *pin,
               CK_ULONG len);

/* kv-request.c */
void kv_explain(struct kv_token *kt, const char *key, const char *op,
                const char *perm, const struct kv_result *res, CK_RV rv);
void kv_malformed(struct kv_token *kt, const char *method, const char *path,
                  const char *why);
void kv_one_line(const char *in, char *out, size_t len);
void kv_result_clear(struct kv_result *res);
bool kv_rep_available_unlocked(const struct kv_replica *rep, int64_t now);
bool kv_parse_challenge(const char *h, char **resource, char **tenant);
/* Whether url (a link the vault sent) is on the vault at vault_url: https,
 * no user information, the same host and port. */
bool kv_same_origin(const char *vault_url, const char *url);
CK_RV kv_call(struct kv_token *kt, struct kv_replica *rep, struct pcall *c,
              const char *method, const char *path, const char *body,
              int64_t deadline, bool last, struct kv_result *res);

/* kv-keys.c */
bool kv_stale(int64_t at, long refresh_ms);
bool kv_has_op(const char *ops, const char *op);
/* A new number for what the vault is asked next (kv_key.seq). */
uint64_t kv_next_seq(struct kv_token *kt);
CK_RV kv_take_bundle(struct kv_token *kt, struct kv_replica *rep, bool ref,
                     uint64_t seq, struct kv_key *k, json_object *doc,
                     const char *method, const char *path,
                     struct kv_version **out, struct kv_rver **xout);
CK_RV kv_load_key(struct kv_token *kt, struct pcall *c, const char *name,
                  const char *want, int64_t deadline);
struct kv_version *kv_current_unlocked(struct kv_token *kt, struct kv_key *k);
struct kv_key *kv_key_get_unlocked(struct kv_token *kt, const char *name,
                                   bool create);
struct kv_version *kv_version_get_unlocked(struct kv_key *k,
                                           const char *version);
bool kv_version_enabled_unlocked(struct kv_token *kt,
                                 const struct kv_version *v);
int kv_version_objects_unlocked(struct kv_token *kt, struct kv_version *v,
                                bool current, struct pobj *priv,
                                struct pobj *pub);
struct kv_rver *kv_rver_match_unlocked(struct kv_key *k, int r,
                                       const struct kv_version *v);
CK_RV kv_list(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
              struct pobj **objs, CK_ULONG *count, bool *complete);
void kv_ref_free(void *tok, void *ref);

/* kv-ops.c */
void kv_unwrap_cache_prune(struct kv_token *kt, struct kv_key *k, bool all);
/* CKA_CMK_ENABLED of version ref (Update Key). */
CK_RV kv_set_enabled(struct pcall *c, void *ref, const CK_ATTRIBUTE *at);
/* Whether v may unwrap now (reloaded after refresh-interval, offline-grace
 * as for every unwrap). */
CK_RV kv_version_check(struct kv_token *kt, struct pcall *c,
                       struct kv_version *v);
/* RSA-OAEP-256 unwrapKey of in with v, through the vault. */
CK_RV kv_unwrap_oaep256(struct pcall *c, struct kv_version *v,
                        const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                        CK_ULONG *outlen);

/* kv-keys.c: the vault's keys alone (kv_list adds the token secret keys). */
CK_RV kv_list_keys(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
                   struct pobj **objs, CK_ULONG *count, bool *complete);

/* kv-store.c: token secret keys (docs/keyvault.md, "Token secret keys") */
struct kv_skey;
void kv_store_free(struct kv_token *kt);
/* The key behind a front-end reference, or NULL (a key version). */
struct kv_skey *kv_skey_of_unlocked(struct kv_token *kt, void *ref);
/* Appends the state directory's keys (re-read after refresh-interval). */
CK_RV kv_store_list(struct kv_token *kt, struct pobj **objs, CK_ULONG *count);
/* A new key from the front end's complete template (CKA_VALUE included). */
CK_RV kv_store_create(struct pcall *c, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                      struct pobj *out);
CK_RV kv_store_destroy(struct pcall *c, struct kv_skey *k);
CK_RV kv_store_crypt(struct pcall *c, enum pop op, struct kv_skey *k,
                     const CK_MECHANISM *m, const CK_BYTE *in, CK_ULONG inlen,
                     CK_BYTE *out, CK_ULONG *outlen);
CK_RV kv_store_get_value(struct pcall *c, struct kv_skey *k, CK_BYTE *out,
                         CK_ULONG *outlen);
CK_RV kv_store_rewrap(struct pcall *c, struct kv_skey *k, const char *want);
/* CKA_CMK_STATE_FILES: every listed key's MAC checked (unwrapped through
 * the vault if not yet), then one line "PATH\tWHY\n" per file skipped
 * (first the directory's, if it was not read). */
CK_RV kv_store_state_files(struct pcall *c, CK_BYTE **out, CK_ULONG *len);
CK_RV kv_store_set_attributes(struct pcall *c, struct kv_skey *k,
                              const CK_ATTRIBUTE *tmpl, CK_ULONG n);

/* kv-policy.c: CKA_CMK_ROTATION_POLICY */
CK_RV kv_get_attribute(struct pcall *c, void *ref, CK_ATTRIBUTE_TYPE type,
                       CK_BYTE **out, CK_ULONG *len);
CK_RV kv_set_rotation_policy(struct pcall *c, void *ref,
                             const CK_ATTRIBUTE *at);

#endif
