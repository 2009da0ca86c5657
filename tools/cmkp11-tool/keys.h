/*
 * The keys of a token and their versions, as the module presents them:
 * key objects grouped by CKA_CMK_KEY_NAME, one version per CKA_ID.
 */
#ifndef CMKP11_TOOL_KEYS_H
#define CMKP11_TOOL_KEYS_H

#include "p11.h"

struct tversion {
    CK_OBJECT_HANDLE priv, pub; /* 0 when not visible */
    char *label, *version, *backend, *source, *recovery, *key_ops;
    char *key_type, *created, *updated, *not_before, *expires;
    char *refused;  /* CKA_CMK_REFUSED: permissions the vault refused */
    char *replicas; /* CKA_CMK_REPLICAS: one line per vault, or empty */
    unsigned char *id;
    size_t id_len;
    bool enabled, current;
    CK_ULONG bits;
    CK_ULONG min_bits;  /* CKA_CMK_MIN_BITS, 0 when absent */
    bool matched;       /* matched the selection */
    bool state_unknown; /* the private half is hidden (no login): enabled
                           and key_ops are not known */
};

struct tkey {
    char *name;
    struct tversion *v; /* the current one first, then newest first */
    size_t n;
};

struct tkeys {
    struct tkey *k; /* sorted by name */
    size_t n;
};

/* Reads the key objects of t's session. Returns the result of the search
 * (CKR_OK, or the failure of C_FindObjectsInit / C_FindObjects). */
CK_RV tkeys_load(struct tmod *m, struct ttoken *t, struct tkeys *out);
/* Adds the objects of version VERSION of key NAME (label NAME@VERSION),
 * which a module may read only when asked. */
CK_RV tkeys_load_version(struct tmod *m, struct ttoken *t, struct tkeys *k,
                         const char *name, const char *version);
/* Adds the objects a pkcs11: URI's object= and id= name (none for a name
 * or a URI without them). */
CK_RV tkeys_load_named(struct tmod *m, struct ttoken *t, struct tkeys *k,
                       const struct tsel *s);
void tkeys_free(struct tkeys *k);

/* Marks the versions that s selects: by key name for a plain name, by
 * p11_kit_uri_match_attributes (class, label, id) for a URI. Returns the
 * number of keys with a marked version. A NULL name and no URI selects
 * every current version. */
size_t tkeys_select(struct tkeys *k, const struct tsel *s);
/* The version of key to act on: the current one if marked, else the first
 * marked one; NULL when none is marked. */
struct tversion *tkey_selected(struct tkey *key);
struct tversion *tkey_current(struct tkey *key);
/* The key named name, or NULL. */
struct tkey *tkeys_find(struct tkeys *k, const char *name);

/* The version of key whose CKA_ID is id, or NULL. */
struct tversion *tkey_find_id(struct tkey *key, const unsigned char *id,
                              size_t id_len);
/* A deep copy (handles included); 0, or -1 when out of memory. */
int tversion_dup(struct tversion *dst, const struct tversion *src);
/* Frees what a version holds and zeroes it. */
void tversion_clear(struct tversion *v);

/* The version's CKA_ID in lower-case hex (out: 2 * id_len + 1 bytes). */
void tversion_id_hex(const struct tversion *v, char *out, size_t len);
/* One vault of a token with replicas, from CKA_CMK_REPLICAS. */
struct treplica {
    char url[256], state[16], latency[24], match[16], version[128];
    char recovery[64], error[160];
};

/* Line n (0-based) of v's CKA_CMK_REPLICAS; false past the last. */
bool tversion_replica(const struct tversion *v, size_t n, struct treplica *r);

/* Whether the comma-separated list ops contains op. */
bool tops_has(const char *ops, const char *op);

#endif
