/*
 * The keyvault back end's key table: keys, their versions as each replica
 * holds them, listing and refresh, and the token objects a listing makes.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "debug.h"
#include "kv-parse.h"
#include "kv-token.h"
#include "provider-util.h"

/* ---- keys and versions ---- */

struct kv_key *kv_key_get_unlocked(struct kv_token *kt, const char *name,
                                   bool create)
{
    struct kv_key *k;

    for (k = kt->keys; k != NULL; k = k->next)
        if (strcasecmp(k->name, name) == 0)
            return k;
    if (!create)
        return NULL;
    k = calloc(1, sizeof(*k));
    if (k == NULL || (k->name = strdup(name)) == NULL) {
        free(k);
        return NULL;
    }
    k->next = kt->keys;
    kt->keys = k;
    return k;
}

struct kv_version *kv_version_get_unlocked(struct kv_key *k,
                                           const char *version)
{
    struct kv_version *v;
    size_t i, len = strlen(version);

    for (v = k->versions; v != NULL; v = v->next)
        if (strcasecmp(v->version, version) == 0)
            return v;
    v = calloc(1, sizeof(*v));
    if (v == NULL || (v->version = strdup(version)) == NULL) {
        free(v);
        return NULL;
    }
    v->key = k;
    /* CKA_ID: a 32-hex-character version becomes its 16 raw bytes. */
    if (len == 32 && strspn(version, "0123456789abcdefABCDEF") == 32) {
        for (i = 0; i < 16; i++) {
            char b[3] = {version[2 * i], version[2 * i + 1], 0};
            v->id[i] = (CK_BYTE)strtoul(b, NULL, 16);
        }
        v->id_len = 16;
    } else {
        v->id_len = len < sizeof(v->id) ? len : sizeof(v->id);
        memcpy(v->id, version, v->id_len);
    }
    v->next = k->versions;
    k->versions = v;
    return v;
}

static void set_attributes(struct kv_version *v, const struct kv_attrs *a)
{
    v->enabled = a->enabled;
    v->nbf = a->nbf;
    v->exp = a->exp;
    v->created = a->created;
    v->updated = a->updated;
    if (a->recovery != NULL) {
        free(v->recovery);
        v->recovery = strdup(a->recovery);
    }
}

/* The SHA-256 of an RSA public key's DER SubjectPublicKeyInfo (what
 * `openssl pkey -pubin -outform DER | sha256sum` prints): how versions
 * are matched across replicas. */
/*
 * The public key (n, e) as its DER SubjectPublicKeyInfo, held in the cells
 * the published objects share (attrs_hold): their CKA_PUBLIC_KEY_INFO, and
 * their CKA_MODULUS inside it. out gets its SHA-256, *in_der where n lies
 * in it. NULL (out zeroed) if OpenSSL refuses the key or memory runs out.
 */
static const CK_ATTRIBUTE *spki_hold(const unsigned char *n, size_t nlen,
                                     const unsigned char *e, size_t elen,
                                     unsigned char out[32],
                                     const CK_BYTE **in_der)
{
    EVP_PKEY *pk = rsa_pkey_from_parts(n, nlen, e, elen);
    unsigned char *der = NULL;
    unsigned int mdlen = 32;
    int len = pk != NULL ? i2d_PUBKEY(pk, &der) : -1;
    const CK_ATTRIBUTE *held = NULL;

    memset(out, 0, 32);
    if (len > 0)
        held = attrs_hold(CKA_PUBLIC_KEY_INFO, der, (CK_ULONG)len);
    if (held != NULL)
        *in_der = memmem(held->pValue, held->ulValueLen, n, nlen);
    if (held != NULL && *in_der != NULL)
        EVP_Digest(der, (size_t)len, out, &mdlen, EVP_sha256(), NULL);
    else if (held != NULL) {
        attrs_release(held);
        held = NULL;
    }
    OPENSSL_free(der);
    EVP_PKEY_free(pk);
    return held;
}

/* Replica r's record of version (created when create is set). */
static struct kv_rver *rver_get_unlocked(struct kv_key *k, int r,
                                         const char *version, bool create)
{
    struct kv_rver *x;

    for (x = k->rv[r]; x != NULL; x = x->next)
        if (strcasecmp(x->version, version) == 0)
            return x;
    if (!create)
        return NULL;
    x = calloc(1, sizeof(*x));
    if (x == NULL || (x->version = strdup(version)) == NULL) {
        free(x);
        return NULL;
    }
    x->next = k->rv[r];
    k->rv[r] = x;
    return x;
}

static void rver_attrs(struct kv_rver *x, const struct kv_attrs *a)
{
    x->enabled = a->enabled;
    if (a->recovery != NULL) {
        free(x->recovery);
        x->recovery = strdup(a->recovery);
    }
}

/* The version of replica r with v's public key, or NULL: versions whose
 * public keys differ are not merged. Under the lock. */
struct kv_rver *kv_rver_match_unlocked(struct kv_key *k, int r,
                                       const struct kv_version *v)
{
    struct kv_rver *x;

    if (!v->loaded)
        return NULL;
    for (x = k->rv[r]; x != NULL; x = x->next)
        if (x->read && x->present && memcmp(x->spki, v->spki, 32) == 0)
            return x;
    return NULL;
}

/* Whether replica r holds any version of k (its last refresh found it). */
static bool rep_has_key_unlocked(struct kv_key *k, int r)
{
    struct kv_rver *x;

    for (x = k->rv[r]; x != NULL; x = x->next)
        if (x->present)
            return true;
    return false;
}

/*
 * A version is enabled when the vault its objects came from says so and
 * no replica that holds it says otherwise: a replica can revoke, never
 * undo a revocation (docs/keyvault.md, "Replicas").
 */
bool kv_version_enabled_unlocked(struct kv_token *kt,
                                 const struct kv_version *v)
{
    int r;

    if (!v->enabled)
        return false;
    for (r = 0; r < kt->nrep; r++) {
        struct kv_rver *x = kv_rver_match_unlocked(v->key, r, v);
        if (x != NULL && !x->enabled)
            return false;
    }
    return true;
}

uint64_t kv_next_seq(struct kv_token *kt)
{
    uint64_t seq;

    pthread_mutex_lock(&kt->lock);
    seq = ++kt->load_seq;
    pthread_mutex_unlock(&kt->lock);
    return seq;
}

/* Whether answers asked for at seq may change what *mark says (they are
 * no older than the newest already taken); then they are the newest. */
static bool newer_unlocked(uint64_t *mark, uint64_t seq)
{
    if (seq < *mark)
        return false;
    *mark = seq;
    return true;
}

/*
 * Stores a key bundle (GET /keys/NAME[/VERSION]) read from replica rep
 * for the load numbered seq. From the replica the key's versions are
 * listed from (ref), the bundle is the version's; *out (if not NULL) gets
 * the version, which lives as long as the token. From any replica it is
 * that replica's record (*xout, if not NULL, as long-lived). The public
 * key is taken whenever; presence and attributes only from a load no
 * older than the one the key shows.
 */
CK_RV kv_take_bundle(struct kv_token *kt, struct kv_replica *rep, bool ref,
                     uint64_t seq, struct kv_key *k, json_object *doc,
                     const char *method, const char *path,
                     struct kv_version **out, struct kv_rver **xout)
{
    struct kv_bundle b;
    struct kv_version *v = NULL;
    struct kv_rver *x;
    unsigned char spki[32];
    const CK_ATTRIBUTE *pub = NULL;
    const CK_BYTE *n = NULL;
    char why[128];
    CK_RV rv = kv_parse_bundle(doc, &b, why, sizeof(why));

    if (rv != CKR_OK) {
        kv_malformed(kt, method, path, why);
        return rv;
    }
    memset(spki, 0, sizeof(spki));
    if (b.n != NULL && b.e != NULL && b.elen <= sizeof(v->e))
        pub = spki_hold(b.n, b.nlen, b.e, b.elen, spki, &n);
    pthread_mutex_lock(&kt->lock);
    x = rver_get_unlocked(k, rep->index, b.version, true);
    if (x != NULL) {
        x->read = pub != NULL;
        if (x->read)
            memcpy(x->spki, spki, 32);
    }
    if (x != NULL && newer_unlocked(&k->rseq[rep->index], seq)) {
        x->present = true;
        if (b.has_attrs)
            rver_attrs(x, &b.attrs);
    }
    if (ref)
        v = kv_version_get_unlocked(k, b.version);
    if (v != NULL) {
        bool fresh = newer_unlocked(&k->seq, seq);
        free(v->kty);
        v->kty = strdup(b.kty);
        if (pub != NULL) {
            /* The version keeps the public key where its objects do. */
            attrs_release(v->pub);
            v->pub = pub;
            v->n = n;
            v->nlen = b.nlen;
            memcpy(v->e, b.e, b.elen);
            v->elen = b.elen;
            memcpy(v->spki, spki, 32);
            pub = NULL;
        }
        if (fresh || v->key_ops == NULL) {
            free(v->key_ops);
            v->key_ops = strdup(b.ops);
        }
        if (fresh && b.has_attrs)
            set_attributes(v, &b.attrs);
        v->loaded = v->n != NULL && v->kty != NULL;
        v->read = true;
        if (fresh)
            v->present = true;
    }
    pthread_mutex_unlock(&kt->lock);
    attrs_release(pub);
    if (out != NULL)
        *out = v;
    if (xout != NULL)
        *xout = x;
    kv_bundle_clear(&b);
    return CKR_OK;
}

/* A 404 on the key, for the load numbered seq: it was deleted, and its
 * versions disappear (unless a newer load has found it since). */
static void key_gone(struct kv_token *kt, struct kv_key *k, uint64_t seq)
{
    bool fresh;

    pthread_mutex_lock(&kt->lock);
    fresh = newer_unlocked(&k->exists_seq, seq);
    if (fresh) {
        k->exists = false;
        k->loaded_at_ms = kv_now_ms();
    }
    pthread_mutex_unlock(&kt->lock);
    if (fresh)
        kv_unwrap_cache_prune(kt, k, true);
}

/* What a versions listing named, every page: each version's id and,
 * where the listing gives them, its attributes. */
struct listed_one {
    char *id;
    bool has_attrs;
    struct kv_attrs attrs; /* recovery: a copy */
};

struct listed {
    struct listed_one *v;
    size_t n, cap;
};

static bool listed_add(struct listed *l, const char *id,
                       const struct kv_item *it)
{
    struct listed_one *one;

    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct listed_one *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return false;
        l->v = v;
        l->cap = cap;
    }
    one = &l->v[l->n];
    memset(one, 0, sizeof(*one));
    one->has_attrs = it->has_attrs;
    one->attrs = it->attrs;
    one->attrs.recovery = NULL;
    if ((one->id = strdup(id)) == NULL ||
        (it->has_attrs && it->attrs.recovery != NULL &&
         (one->attrs.recovery = strdup(it->attrs.recovery)) == NULL)) {
        free(one->id);
        return false;
    }
    l->n++;
    return true;
}

/* Whether version id is there after the listing l: listed, or keep (the
 * current version, which a listing may not show yet). */
static bool listed_has(const struct listed *l, const char *keep, const char *id)
{
    size_t i;

    if (keep != NULL && strcasecmp(keep, id) == 0)
        return true;
    for (i = 0; i < l->n; i++)
        if (strcasecmp(l->v[i].id, id) == 0)
            return true;
    return false;
}

static void listed_clear(struct listed *l)
{
    size_t i;

    for (i = 0; i < l->n; i++) {
        free(l->v[i].id);
        free((char *)l->v[i].attrs.recovery);
    }
    free(l->v);
    memset(l, 0, sizeof(*l));
}

/*
 * What a whole listing found, applied at once under the lock: the listed
 * versions (and keep, the current one) are present, with the attributes
 * listed, the others not. So a search or an operation on another thread
 * never sees a version absent because a listing of it is under way, and
 * a listing that fails part way changes nothing. Replica rep's records,
 * and the token's versions when rep is the one they are listed from
 * (ref), only from a load (seq) no older than the one they show.
 */
static void listed_apply(struct kv_token *kt, struct kv_replica *rep, bool ref,
                         struct kv_key *k, const char *keep, uint64_t seq,
                         const struct listed *l)
{
    struct kv_version *v;
    struct kv_rver *x;
    size_t i;

    pthread_mutex_lock(&kt->lock);
    if (newer_unlocked(&k->rseq[rep->index], seq)) {
        for (i = 0; i < l->n; i++) {
            x = rver_get_unlocked(k, rep->index, l->v[i].id, true);
            if (x != NULL && l->v[i].has_attrs)
                rver_attrs(x, &l->v[i].attrs);
        }
        for (x = k->rv[rep->index]; x != NULL; x = x->next)
            x->present = listed_has(l, keep, x->version);
    }
    if (ref && newer_unlocked(&k->seq, seq)) {
        for (i = 0; i < l->n; i++) {
            v = kv_version_get_unlocked(k, l->v[i].id);
            if (v != NULL && l->v[i].has_attrs)
                set_attributes(v, &l->v[i].attrs);
        }
        for (v = k->versions; v != NULL; v = v->next)
            v->present = listed_has(l, keep, v->version);
    }
    pthread_mutex_unlock(&kt->lock);
}

/*
 * GET /keys/NAME/versions on rep, every page: then marks the listed
 * versions present and the others absent (the token's versions too when
 * rep is the one they are listed from), keep (the version GET /keys/NAME
 * answered) present either way. Returns CKR_OK; *refused when the identity
 * may not list (403), which is logged once for the replica and not asked
 * again; *gone when the key is not there (404). Neither, nor an error,
 * changes which versions are present: after a refusal they are what the
 * last listing found until each is read by its id.
 */
static CK_RV list_versions(struct kv_token *kt, struct kv_replica *rep,
                           bool ref, struct pcall *c, struct kv_key *k,
                           const char *esc, const char *keep, uint64_t seq,
                           int64_t deadline, bool *refused, bool *gone)
{
    struct kv_result res;
    char *path = kv_strdup_printf("/keys/%s/versions?maxresults=25", esc);
    struct listed found = {NULL, 0, 0};
    CK_RV rv = path != NULL ? CKR_OK : CKR_HOST_MEMORY;

    *refused = *gone = false;
    while (path != NULL) {
        struct kv_listing l;
        char why[128];
        size_t i;

        /* With replicas, only the search for one that answers finds them
         * all unreachable (offline-grace). */
        rv = kv_call(kt, rep, c, "GET", path, NULL, deadline,
                     ref && kt->nrep == 1, &res);
        free(path);
        path = NULL;
        if (rv == CKR_KEY_HANDLE_INVALID && res.status == 404) {
            *gone = true;
            kv_result_clear(&res);
            listed_clear(&found);
            return CKR_OK;
        }
        if (res.status == 403 && strcmp(res.code, "ForbiddenByFirewall") != 0) {
            char said[sizeof(res.message)];
            kv_one_line(res.message, said, sizeof(said));
            pthread_mutex_lock(&kt->lock);
            rep->list_refused = true;
            if (ref)
                kt->list_refused = true;
            pthread_mutex_unlock(&kt->lock);
            cmk_warning("token %s: listing the versions of key %s%s%s was "
                        "refused (403 %s): the identity lacks the keys list "
                        "permission; the current version comes from GET "
                        "/keys/%s and an older one only when something names "
                        "it (a sealed file, NAME@VERSION); unwrap-fallback "
                        "cannot try the others; the vault said: %s",
                        kt->name, k->name, kt->nrep > 1 ? " in " : "",
                        kt->nrep > 1 ? rep->host : "", res.code, k->name, said);
            *refused = true;
            kv_result_clear(&res);
            listed_clear(&found);
            return CKR_OK;
        }
        if (rv != CKR_OK) {
            kv_explain(kt, k->name, "list versions", "list", &res, rv);
            kv_result_clear(&res);
            listed_clear(&found);
            return rv;
        }
        rv = kv_parse_listing(res.doc, &l, why, sizeof(why));
        if (rv != CKR_OK) {
            kv_malformed(kt, "GET", "(versions)", why);
            kv_result_clear(&res);
            listed_clear(&found);
            return rv;
        }
        for (i = 0; rv == CKR_OK && i < l.n; i++) {
            char kname[256], version[128];
            if (kv_split_kid(l.items[i].kid, kname, sizeof(kname), version,
                             sizeof(version)) &&
                !listed_add(&found, version, &l.items[i]))
                rv = CKR_HOST_MEMORY;
        }
        if (rv == CKR_OK && l.next != NULL && (path = strdup(l.next)) == NULL)
            rv = CKR_HOST_MEMORY;
        kv_listing_clear(&l);
        kv_result_clear(&res);
    }
    if (rv == CKR_OK)
        listed_apply(kt, rep, ref, k, keep, seq, &found);
    listed_clear(&found);
    return rv;
}

/* Replica rep said the key is not there (404), for the load numbered
 * seq: it holds no version of it (unless a newer load has found it since). */
static void rep_gone(struct kv_token *kt, struct kv_replica *rep,
                     struct kv_key *k, uint64_t seq)
{
    struct kv_rver *x;

    pthread_mutex_lock(&kt->lock);
    if (newer_unlocked(&k->rseq[rep->index], seq)) {
        k->gone_on |= 1u << rep->index;
        for (x = k->rv[rep->index]; x != NULL; x = x->next)
            x->present = false;
    }
    pthread_mutex_unlock(&kt->lock);
}

#define REP_OK      0 /* read, or unreachable (what it said last stands) */
#define REP_GONE    1 /* the key is not in it: revocation evidence */
#define REP_REFUSED 2 /* it refused: revocation evidence, rv says which */

/*
 * Refreshes what replica rep (not the one the versions are listed from)
 * holds of key k: its current version, its versions listing (or, without
 * the list permission, the token's versions by id), and the public key of
 * each version not read yet. An unreachable replica keeps what it said
 * last; a replica that says the key is gone or refuses is revocation
 * evidence (REP_GONE, REP_REFUSED with *rvp).
 */
static int load_replica(struct kv_token *kt, struct kv_replica *rep,
                        struct pcall *c, struct kv_key *k, const char *esc,
                        uint64_t seq, int64_t deadline, CK_RV *rvp)
{
    struct kv_result res;
    struct kv_version *v;
    struct kv_rver *x, *cur = NULL;
    char *path = kv_strdup_printf("/keys/%s", esc), **fetch = NULL;
    bool refused = false, gone = false;
    size_t n = 0, i;
    int out = REP_OK;
    CK_RV rv;

    *rvp = CKR_OK;
    rv = path ? kv_call(kt, rep, c, "GET", path, NULL, deadline, false, &res)
              : CKR_HOST_MEMORY;
    if (rv != CKR_OK && kv_call_unreachable) {
        kv_result_clear(&res);
        free(path);
        return REP_OK;
    }
    if (rv == CKR_KEY_HANDLE_INVALID && res.status == 404) {
        rep_gone(kt, rep, k, seq);
        cmk_error("token %s: key %s is not in %s, a replica of %s (404 %s): "
                  "the key is treated as deleted (a replica never undoes a "
                  "revocation); copy it there with backup and restore, or "
                  "remove the replica from vault-url",
                  kt->name, k->name, rep->url, kt->vault_url, res.code);
        kv_result_clear(&res);
        free(path);
        return REP_GONE;
    }
    if (rv != CKR_OK) {
        kv_explain(kt, k->name, "get", "get", &res, rv);
        *rvp = rv == CKR_HOST_MEMORY || res.status == 0 ? CKR_DEVICE_ERROR : rv;
        kv_result_clear(&res);
        free(path);
        return REP_REFUSED;
    }
    /* cur: the replica's current version, as it answered. */
    rv = kv_take_bundle(kt, rep, false, seq, k, res.doc, "GET", path, NULL,
                        &cur);
    kv_result_clear(&res);
    free(path);
    if (rv != CKR_OK || cur == NULL)
        return REP_OK;
    pthread_mutex_lock(&kt->lock);
    if (seq >= k->rseq[rep->index])
        k->gone_on &= ~(1u << rep->index);
    refused = rep->list_refused;
    pthread_mutex_unlock(&kt->lock);
    if (!refused) {
        rv = list_versions(kt, rep, false, c, k, esc, cur->version, seq,
                           deadline, &refused, &gone);
        if (gone) {
            rep_gone(kt, rep, k, seq);
            return REP_GONE;
        }
        if (rv != CKR_OK)
            return REP_OK;
    }
    pthread_mutex_lock(&kt->lock);
    for (v = k->versions; v != NULL; v = v->next)
        n++;
    for (x = k->rv[rep->index]; x != NULL; x = x->next)
        n++;
    fetch = calloc(n + 1, sizeof(*fetch));
    n = 0;
    if (fetch != NULL && refused) {
        /* The token's versions by id (backup and restore keep them). */
        for (v = k->versions; v != NULL; v = v->next)
            if (v->present && v->loaded &&
                strcasecmp(v->version, cur->version) != 0)
                fetch[n++] = strdup(v->version);
    } else if (fetch != NULL) {
        for (x = k->rv[rep->index]; x != NULL; x = x->next)
            if (x->present && !x->read)
                fetch[n++] = strdup(x->version);
    }
    pthread_mutex_unlock(&kt->lock);
    for (i = 0; i < n; i++) {
        path = fetch[i] ? kv_strdup_printf("/keys/%s/%s", esc, fetch[i]) : NULL;
        rv = path
                 ? kv_call(kt, rep, c, "GET", path, NULL, deadline, false, &res)
                 : CKR_HOST_MEMORY;
        if (rv == CKR_OK) {
            kv_take_bundle(kt, rep, false, seq, k, res.doc, "GET", path, NULL,
                           NULL);
        } else if (res.status == 404) {
            pthread_mutex_lock(&kt->lock);
            x = rver_get_unlocked(k, rep->index, fetch[i], false);
            if (x != NULL && seq >= k->rseq[rep->index])
                x->present = false;
            pthread_mutex_unlock(&kt->lock);
        }
        kv_result_clear(&res);
        free(path);
        if (rv != CKR_OK && kv_call_unreachable)
            break;
    }
    for (i = 0; fetch != NULL && i < n; i++)
        free(fetch[i]);
    free(fetch);
    return out;
}

/* Whether replica r holds key k but none of the versions its objects
 * show (read from another replica): other key material. */
static bool replica_differs_unlocked(struct kv_key *k, int r)
{
    struct kv_version *v;

    if (!rep_has_key_unlocked(k, r))
        return false;
    for (v = k->versions; v != NULL; v = v->next)
        if (v->present && v->loaded && kv_rver_match_unlocked(k, r, v) == NULL)
            return true;
    return false;
}

/* Logs, once each, the versions a replica holds the key without: their
 * public keys differ, so they are not merged. */
static void log_differences(struct kv_token *kt, struct kv_key *k)
{
    struct kv_version *v;
    int r;

    pthread_mutex_lock(&kt->lock);
    for (v = k->versions; v != NULL; v = v->next) {
        if (!v->present || !v->loaded)
            continue;
        for (r = 0; r < kt->nrep; r++) {
            unsigned bit = 1u << r;
            bool differs = r != k->ref && rep_has_key_unlocked(k, r) &&
                           kv_rver_match_unlocked(k, r, v) == NULL;
            if (differs && !(v->differs_logged & bit)) {
                char hex[17];
                cmk_hex(v->spki, 8, hex);
                cmk_error("token %s: replica %s holds key %s without version "
                          "%s's public key (SHA-256 %s...): its versions "
                          "differ and are not merged; %s does not serve "
                          "that version",
                          kt->name, kt->rep[r].url, k->name, v->version, hex,
                          kt->rep[r].url);
                v->differs_logged |= bit;
            } else if (!differs) {
                v->differs_logged &= ~bit;
            }
        }
    }
    pthread_mutex_unlock(&kt->lock);
}

/*
 * Loads (or refreshes) one key, with only the get permission if need be:
 * GET /keys/NAME gives the current version (the service's latest, not the
 * newest by created: versions can share a second, and the service lists
 * them by id); the versions listing, where the identity may list, finds the
 * others; without it, the versions already known and the one asked for
 * (want, or NULL) are read one by one with GET /keys/NAME/VERSION.
 * With replicas the versions come from the first vault of vault-url that
 * answers; then every other replica is read (load_replica).
 */
CK_RV kv_load_key(struct kv_token *kt, struct pcall *c, const char *name,
                  const char *want, int64_t deadline)
{
    struct kv_key *k;
    struct kv_version *v, *latest = NULL;
    struct kv_replica *rep = NULL;
    struct kv_result res;
    char *path, *esc = kv_url_escape(name), **fetch = NULL;
    size_t n_fetch = 0, i, ncand = 0, first = 0, chosen = 0;
    bool list, refused = false, gone = false;
    int r, cand[KV_MAX_REPLICAS];
    uint64_t seq;
    CK_RV rv = CKR_DEVICE_ERROR;

    if (esc == NULL)
        return CKR_HOST_MEMORY;
    pthread_mutex_lock(&kt->lock);
    k = kv_key_get_unlocked(kt, name, true);
    if (k != NULL && want != NULL &&
        (v = kv_version_get_unlocked(k, want)) != NULL)
        v->named = true;
    pthread_mutex_unlock(&kt->lock);
    if (k == NULL) {
        free(esc);
        return CKR_HOST_MEMORY;
    }

    /* The current version, from the first vault that answers; never from
     * one known to hold other key material (its versions are not
     * merged, so they never stand in for the others'). */
    pthread_mutex_lock(&kt->lock);
    for (r = 0; r < kt->nrep; r++)
        if (r == 0 || !replica_differs_unlocked(k, r))
            cand[ncand++] = r;
    pthread_mutex_unlock(&kt->lock);
    /* A vault that stops answering between the key and its versions
     * hands the whole read to the next one (first: where to start). */
again:
    rep = NULL;
    latest = NULL;
    seq = kv_next_seq(kt);
    path = kv_strdup_printf("/keys/%s", esc);
    for (i = first; path != NULL && i < ncand; i++) {
        /* An unreachable vault leaves the others time to answer. */
        int64_t left = deadline - kv_now_ms();
        int64_t until = kv_now_ms() + left / (int64_t)(ncand - i);
        rep = &kt->rep[cand[i]];
        rv =
            kv_call(kt, rep, c, "GET", path, NULL, until, i == ncand - 1, &res);
        if (rv == CKR_OK || !kv_call_unreachable)
            break;
        kv_result_clear(&res);
    }
    free(path);
    chosen = i;
    if (rep == NULL) {
        free(esc);
        return CKR_HOST_MEMORY;
    }
    if (rv == CKR_KEY_HANDLE_INVALID && res.status == 404) {
        /* Deleted: its versions disappear. A name of keys = that is not
         * there is a mistake to report, not an empty list. */
        if (kt->allow != NULL && config_list_allows(kt->allow, name))
            cmk_warning("token %s: key %s of keys = is not in %s (404 %s: "
                        "%s); create it, or correct keys =",
                        kt->name, name, rep->host, res.code, res.message);
        kv_result_clear(&res);
        free(esc);
        key_gone(kt, k, seq);
        return CKR_OK;
    }
    if (rv != CKR_OK) {
        if (i < ncand)
            kv_explain(kt, name, "get", "get", &res, rv);
        kv_result_clear(&res);
        free(esc);
        return rv;
    }
    pthread_mutex_lock(&kt->lock);
    if (seq >= k->rseq[rep->index]) {
        k->ref = rep->index;
        k->gone_on &= ~(1u << rep->index);
    }
    pthread_mutex_unlock(&kt->lock);
    path = kv_strdup_printf("/keys/%s", esc);
    rv = kv_take_bundle(kt, rep, true, seq, k, res.doc, "GET",
                        path ? path : name, &latest, NULL);
    free(path);
    kv_result_clear(&res);
    if (rv != CKR_OK || latest == NULL) {
        free(esc);
        return rv != CKR_OK ? rv : CKR_HOST_MEMORY;
    }

    /* The other versions. */
    pthread_mutex_lock(&kt->lock);
    list = !rep->list_refused;
    pthread_mutex_unlock(&kt->lock);
    if (list) {
        rv = list_versions(kt, rep, true, c, k, esc, latest->version, seq,
                           deadline, &refused, &gone);
        if (rv != CKR_OK && !gone && kv_call_unreachable &&
            chosen + 1 < ncand) {
            first = chosen + 1;
            goto again;
        }
        if (rv != CKR_OK || gone) {
            free(esc);
            if (gone)
                key_gone(kt, k, seq);
            return rv;
        }
    }
    pthread_mutex_lock(&kt->lock);
    if (newer_unlocked(&k->latest_seq, seq)) { /* else a later one has ended */
        free(k->latest);
        k->latest = strdup(latest->version);
    }
    if (latest->kty != NULL && strncmp(latest->kty, "RSA", 3) != 0 &&
        !k->not_rsa) {
        k->not_rsa = true;
        cmk_info("token %s: key %s is %s, not RSA: skipped (not loaded "
                 "again unless searched by its label)",
                 kt->name, name, latest->kty);
    }
    for (v = k->versions; v != NULL; v = v->next)
        n_fetch++;
    fetch = calloc(n_fetch + 1, sizeof(*fetch));
    n_fetch = 0;
    for (v = k->versions; fetch != NULL && v != NULL; v = v->next) {
        bool need;
        if (v == latest)
            continue;
        if (list && !refused)
            need = v->present && !v->read; /* listed, bundle not yet read */
        else
            need = v->loaded || v->named || v->present; /* known: again */
        if (need)
            fetch[n_fetch++] = strdup(v->version);
    }
    /* A replica that said the key is gone keeps it gone until it holds
     * the key again (read below). */
    if (newer_unlocked(&k->exists_seq, seq))
        k->exists = k->gone_on == 0;
    /* Read here: another search may be loading the same key. */
    rv = fetch != NULL && k->latest != NULL ? CKR_OK : CKR_HOST_MEMORY;
    pthread_mutex_unlock(&kt->lock);
    for (i = 0; rv == CKR_OK && i < n_fetch; i++) {
        path = fetch[i] ? kv_strdup_printf("/keys/%s/%s", esc, fetch[i]) : NULL;
        rv = path ? kv_call(kt, rep, c, "GET", path, NULL, deadline,
                            kt->nrep == 1, &res)
                  : CKR_HOST_MEMORY;
        if (rv == CKR_OK) {
            rv = kv_take_bundle(kt, rep, true, seq, k, res.doc, "GET", path,
                                NULL, NULL);
        } else if (res.status == 404) {
            rv = CKR_OK; /* deleted since, or never was */
            pthread_mutex_lock(&kt->lock);
            v = kv_version_get_unlocked(k, fetch[i]);
            if (v != NULL && seq >= k->seq)
                v->present = v->named = false;
            pthread_mutex_unlock(&kt->lock);
        } else {
            kv_explain(kt, name, "get", "get", &res, rv);
        }
        kv_result_clear(&res);
        free(path);
    }
    for (i = 0; fetch != NULL && i < n_fetch; i++)
        free(fetch[i]);
    free(fetch);
    fetch = NULL;
    if (rv != CKR_OK && kv_call_unreachable && chosen + 1 < ncand) {
        first = chosen + 1;
        n_fetch = 0;
        goto again;
    }
    /* The replicas: revocation evidence from any of them stops the key. */
    for (r = 0; rv == CKR_OK && r < kt->nrep; r++) {
        CK_RV rrv = CKR_OK;
        int got;
        if (r <= rep->index)
            continue; /* the one read above, or found unreachable */
        got = load_replica(kt, &kt->rep[r], c, k, esc, seq, deadline, &rrv);
        if (got == REP_GONE) {
            free(esc);
            key_gone(kt, k, seq);
            return CKR_OK;
        }
        if (got == REP_REFUSED) {
            kv_call_unreachable = false;
            rv = rrv;
        }
    }
    free(esc);
    if (rv == CKR_OK) {
        if (kt->nrep > 1)
            log_differences(kt, k);
        pthread_mutex_lock(&kt->lock);
        if (newer_unlocked(&k->exists_seq, seq)) {
            k->exists = k->gone_on == 0;
            k->loaded_at_ms = kv_now_ms();
        }
        pthread_mutex_unlock(&kt->lock);
        kv_unwrap_cache_prune(kt, k, false); /* versions revoked since */
    }
    return rv;
}

/* The names of the vault's keys (GET /keys, paged), from the first vault
 * of vault-url that answers. */
static CK_RV load_names(struct kv_token *kt, struct pcall *c, int64_t deadline)
{
    char *path = strdup("/keys?maxresults=25");
    struct kv_replica *rep = &kt->rep[0];
    struct kv_result res;
    bool first = true;
    CK_RV rv = CKR_OK;
    int r = 0;

    while (path != NULL) {
        struct kv_listing l;
        char why[128];
        size_t i;

        rv = kv_call(kt, rep, c, "GET", path, NULL, deadline,
                     !first || r == kt->nrep - 1, &res);
        if (rv != CKR_OK && kv_call_unreachable && first && r + 1 < kt->nrep) {
            kv_result_clear(&res);
            rep = &kt->rep[++r];
            continue; /* the first page from the next vault */
        }
        first = false;
        free(path);
        path = NULL;
        if (rv != CKR_OK && res.status == 403 &&
            strcmp(res.code, "ForbiddenByFirewall") != 0) {
            char said[sizeof(res.message)];
            kv_one_line(res.message, said, sizeof(said));
            cmk_error("token %s: listing the keys of %s was denied (403 %s): "
                      "a search without a label lists the vault, which needs "
                      "the keys list permission; grant list, or name the keys "
                      "in keys = (then get, wrapKey and unwrapKey are "
                      "enough); the vault said: %s",
                      kt->name, rep->host, res.code, said);
            kv_result_clear(&res);
            return rv;
        }
        if (rv != CKR_OK) {
            kv_explain(kt, "(all)", "list keys", "list", &res, rv);
            kv_result_clear(&res);
            return rv;
        }
        rv = kv_parse_listing(res.doc, &l, why, sizeof(why));
        if (rv != CKR_OK) {
            kv_malformed(kt, "GET", "/keys", why);
            kv_result_clear(&res);
            return rv;
        }
        pthread_mutex_lock(&kt->lock);
        for (i = 0; i < l.n; i++) {
            const char *p = strstr(l.items[i].kid, "/keys/");
            if (p != NULL && strchr(p + 6, '/') == NULL &&
                config_list_allows(kt->allow, p + 6))
                kv_key_get_unlocked(kt, p + 6, true);
        }
        pthread_mutex_unlock(&kt->lock);
        if (l.next != NULL)
            path = strdup(l.next);
        kv_listing_clear(&l);
        kv_result_clear(&res);
    }
    pthread_mutex_lock(&kt->lock);
    kt->names_loaded_at_ms = kv_now_ms();
    pthread_mutex_unlock(&kt->lock);
    return rv;
}

bool kv_has_op(const char *ops, const char *op)
{
    size_t n = strlen(op);
    const char *p = ops;

    while (p != NULL && *p) {
        if (strncmp(p, op, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return true;
        p = strchr(p, ',');
        if (p != NULL)
            p++;
    }
    return false;
}

/* The current version: the one GET /keys/NAME answered (the service's
 * latest), when it is enabled; a disabled latest leaves no current one. */
struct kv_version *kv_current_unlocked(struct kv_token *kt, struct kv_key *k)
{
    struct kv_version *v;

    if (k->latest == NULL)
        return NULL;
    for (v = k->versions; v != NULL; v = v->next)
        if (strcasecmp(v->version, k->latest) == 0)
            return v->present && v->loaded && kv_version_enabled_unlocked(kt, v)
                       ? v
                       : NULL;
    return NULL;
}

/* A replica's state for CKA_CMK_REPLICAS (docs/vendor.md). */
static const char *rep_state_unlocked(const struct kv_replica *rep, int64_t now)
{
    if (rep->failures >= KV_CIRCUIT_FAILURES && now < rep->open_until_ms)
        return "open";
    if (!rep->asked)
        return "unknown";
    return rep->answered ? "healthy" : "unreachable";
}

/*
 * CKA_CMK_REPLICAS of version v: one line per vault of vault-url, fields
 * separated by tabs: URL, state, latency (ms, empty when unknown), whether
 * it holds v's public key (same, differs, unknown), its version id,
 * recoveryLevel, its last error. NULL with a single vault.
 */
static char *replicas_text_unlocked(struct kv_token *kt, struct kv_version *v)
{
    size_t cap = 1, len = 0;
    int64_t now = kv_now_ms();
    char *out;
    int r;

    if (kt->nrep < 2)
        return NULL;
    for (r = 0; r < kt->nrep; r++)
        cap += strlen(kt->rep[r].url) + sizeof(kt->rep[r].error) + 400;
    out = malloc(cap);
    if (out == NULL)
        return NULL;
    out[0] = '\0';
    for (r = 0; r < kt->nrep; r++) {
        const struct kv_replica *rep = &kt->rep[r];
        struct kv_rver *x = kv_rver_match_unlocked(v->key, r, v);
        const char *match = x != NULL                         ? "same"
                            : rep_has_key_unlocked(v->key, r) ? "differs"
                                                              : "unknown";
        char lat[32] = "";
        if (rep->ewma_ms > 0)
            snprintf(lat, sizeof(lat), "%lld", (long long)rep->ewma_ms);
        len += (size_t)snprintf(
            out + len, cap - len, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rep->url,
            rep_state_unlocked(rep, now), lat, match, x ? x->version : "",
            x && x->recovery ? x->recovery : "", rep->error);
        if (len >= cap)
            break;
    }
    return out;
}

int kv_version_objects_unlocked(struct kv_token *kt, struct kv_version *v,
                                bool current, struct pobj *priv,
                                struct pobj *pub)
{
    struct rsa_key_desc d;
    char uid[512], label[512];
    bool enabled = kv_version_enabled_unlocked(kt, v);
    char *replicas = replicas_text_unlocked(kt, v);
    int r;

    snprintf(uid, sizeof(uid), "kv/%s/%s", v->key->name, v->version);
    if (current)
        snprintf(label, sizeof(label), "%s", v->key->name);
    else
        snprintf(label, sizeof(label), "%s@%s", v->key->name, v->version);
    memset(&d, 0, sizeof(d));
    d.uid_prefix = uid;
    d.label = label;
    d.id = v->id;
    d.id_len = v->id_len;
    d.modulus = v->n;
    d.modulus_len = v->nlen;
    d.exponent = v->e;
    d.exponent_len = v->elen;
    d.decrypt = enabled && kv_has_op(v->key_ops, "decrypt");
    d.unwrap = enabled && kv_has_op(v->key_ops, "unwrapKey");
    d.sign = enabled && kv_has_op(v->key_ops, "sign");
    /* A wrap under a key that can no longer unwrap is refused here. */
    d.encrypt = enabled && kv_has_op(v->key_ops, "encrypt");
    d.wrap = d.unwrap && kv_has_op(v->key_ops, "wrapKey");
    d.verify = kv_has_op(v->key_ops, "verify");
    d.private_obj = kt->pin != NULL;
    d.not_before = v->nbf;
    d.expires = v->exp;
    d.created = v->created;
    d.updated = v->updated;
    d.enabled = enabled;
    d.current = current;
    d.local = true;
    d.backend = "keyvault";
    d.source = kt->vault_url;
    d.key_name = v->key->name;
    d.version = v->version;
    d.recovery_level = v->recovery ? v->recovery : "";
    d.key_ops = v->key_ops ? v->key_ops : "";
    d.key_type = v->kty;
    d.refused = kt->list_refused && kt->policy_refused
                    ? "list,getrotationpolicy"
                : kt->list_refused   ? "list"
                : kt->policy_refused ? "getrotationpolicy"
                                     : "";
    d.replicas = replicas;
    r = rsa_key_objects(&d, priv, pub);
    free(replicas);
    if (r == 0) {
        priv->ref = v;
        pub->ref = v;
    }
    return r;
}

bool kv_stale(int64_t at, long refresh_ms)
{
    if (at == 0)
        return true;
    if (refresh_ms <= 0)
        return false; /* refresh-interval = 0: only at start */
    return kv_now_ms() - at >= refresh_ms;
}

CK_RV kv_list_keys(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
                   struct pobj **objs, CK_ULONG *count, bool *complete)
{
    struct kv_token *kt = c->tok;
    const CK_ATTRIBUTE *la = tmpl_find(hint, nhint, CKA_LABEL);
    int64_t deadline = kv_now_ms() + kt->deadline_ms;
    char name[256] = "", want[128] = "", **names = NULL;
    bool label_at = false; /* the label was NAME@VERSION */
    size_t n_names = 0, i, k = 0, cap = 0;
    struct pobj *out = NULL;
    struct kv_key *key;
    CK_RV rv = CKR_OK, first_error = CKR_OK;

    if (la != NULL && la->pValue != NULL && la->ulValueLen > 0 &&
        la->ulValueLen < sizeof(name)) {
        char *at;
        memcpy(name, la->pValue, la->ulValueLen);
        name[la->ulValueLen] = '\0';
        at = strchr(name, '@');
        if (at != NULL) {
            /* NAME@VERSION: that version, read alone if it is not known. */
            if (strlen(at + 1) < sizeof(want) && at[1] != '\0' &&
                strchr(at + 1, '/') == NULL)
                snprintf(want, sizeof(want), "%s", at + 1);
            label_at = true;
            *at = '\0';
        }
    }
    if ((name[0] != '\0' || kt->allow != NULL) && want[0] == '\0') {
        /* A CKA_ID (pkcs11:id=...) is a version's 16 bytes: that version
         * of the key searched for (or of each key in keys =) is read
         * alone if it is not known. */
        const CK_ATTRIBUTE *ia = tmpl_find(hint, nhint, CKA_ID);
        if (ia != NULL && ia->pValue != NULL && ia->ulValueLen == 16)
            cmk_hex(ia->pValue, 16, want);
    }
    /* Which keys this search needs. */
    if (name[0] != '\0') {
        names = calloc(2, sizeof(*names));
        if (names != NULL && config_list_allows(kt->allow, name))
            names[n_names++] = strdup(name);
    } else if (kt->allow != NULL) {
        for (i = 0; kt->allow[i] != NULL; i++)
            ;
        names = calloc(i + 1, sizeof(*names));
        for (i = 0; names != NULL && kt->allow[i] != NULL; i++)
            names[n_names++] = strdup(kt->allow[i]);
    } else {
        bool need;
        pthread_mutex_lock(&kt->lock);
        need = kv_stale(kt->names_loaded_at_ms, kt->refresh_ms);
        pthread_mutex_unlock(&kt->lock);
        if (need)
            first_error = load_names(kt, c, deadline);
        pthread_mutex_lock(&kt->lock);
        for (key = kt->keys; key != NULL; key = key->next)
            n_names++;
        names = calloc(n_names + 1, sizeof(*names));
        n_names = 0;
        for (key = kt->keys; names != NULL && key != NULL; key = key->next)
            names[n_names++] = strdup(key->name);
        pthread_mutex_unlock(&kt->lock);
    }
    if (names == NULL)
        return CKR_HOST_MEMORY;

    for (i = 0; i < n_names; i++) {
        bool need;
        pthread_mutex_lock(&kt->lock);
        key = kv_key_get_unlocked(kt, names[i], true);
        need = key != NULL && kv_stale(key->loaded_at_ms, kt->refresh_ms) &&
               !(key->not_rsa && name[0] == '\0');
        if (key != NULL && !need && want[0] != '\0' && key->exists) {
            struct kv_version *wv;
            for (wv = key->versions; wv != NULL; wv = wv->next)
                if (strcasecmp(wv->version, want) == 0)
                    break;
            /* Also when the version asked for is the current one here: a
             * search for NAME@VERSION expects an older version, so the
             * key may have been rotated since it was loaded. */
            need = wv == NULL || !wv->present || !wv->loaded ||
                   (label_at && key->latest != NULL &&
                    strcasecmp(key->latest, want) == 0);
        }
        pthread_mutex_unlock(&kt->lock);
        if (need) {
            rv = kv_load_key(kt, c, names[i], want[0] ? want : NULL, deadline);
            if (rv != CKR_OK && first_error == CKR_OK)
                first_error = rv;
        }
    }

    pthread_mutex_lock(&kt->lock);
    for (i = 0; i < n_names; i++) {
        struct kv_version *v, *cur;
        key = kv_key_get_unlocked(kt, names[i], false);
        if (key == NULL || !key->exists)
            continue;
        cur = kv_current_unlocked(kt, key);
        for (v = key->versions; v != NULL; v = v->next) {
            if (!v->present || !v->loaded || v->kty == NULL ||
                strncmp(v->kty, "RSA", 3) != 0)
                continue;
            if (k + 2 > cap) {
                struct pobj *no;
                cap = cap ? cap * 2 : 16;
                no = realloc(out, cap * sizeof(*out));
                if (no == NULL)
                    break;
                out = no;
            }
            if (kv_version_objects_unlocked(kt, v, v == cur, &out[k],
                                            &out[k + 1]) == 0)
                k += 2;
        }
    }
    pthread_mutex_unlock(&kt->lock);
    for (i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (first_error != CKR_OK && k == 0) {
        free(out);
        return first_error;
    }
    *objs = out;
    *count = k;
    /* After a failed refresh, keep what the front end has. */
    *complete = first_error == CKR_OK;
    return CKR_OK;
}

/* The vault's keys, then the token secret keys of the state directory. A
 * search for secret keys asks the vault nothing; one the vault does not
 * answer still lists the secret keys. */
CK_RV kv_list(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
              struct pobj **objs, CK_ULONG *count, bool *complete)
{
    struct kv_token *kt = c->tok;
    CK_OBJECT_CLASS cls;
    CK_RV rv = CKR_OK;

    *objs = NULL;
    *count = 0;
    *complete = true;
    if (tmpl_find_ulong(hint, nhint, CKA_CLASS, &cls) != 1 ||
        cls != CKO_SECRET_KEY)
        rv = kv_list_keys(c, hint, nhint, objs, count, complete);
    if (rv != CKR_OK) {
        *objs = NULL;
        *count = 0;
        *complete = false;
    }
    if (kv_store_list(kt, objs, count) != CKR_OK ||
        (rv != CKR_OK && *count == 0)) {
        return rv != CKR_OK ? rv : CKR_HOST_MEMORY;
    }
    return CKR_OK;
}

void kv_ref_free(void *tok, void *ref)
{
    /* Versions live as long as the token. */
}
