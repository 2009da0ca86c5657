/*
 * The keyvault back end's operations: mechanisms, the choice of replica,
 * REST decrypt/unwrap/sign with the unwrap cache, key generation; and the
 * provider_ops table.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "provider-util.h"
#include "debug.h"
#include "kv-cache.h"
#include "kv-parse.h"
#include "kv-token.h"
#include "secure.h"

/* ---- operations ---- */

static const char *oaep_alg(const CK_MECHANISM *m)
{
    const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;

    if (p == NULL || p->ulSourceDataLen != 0)
        return NULL; /* Key Vault takes no OAEP label */
    if (p->hashAlg == CKM_SHA_1 && p->mgf == CKG_MGF1_SHA1)
        return "RSA-OAEP";
    if (p->hashAlg == CKM_SHA256 && p->mgf == CKG_MGF1_SHA256)
        return "RSA-OAEP-256";
    return NULL;
}

/* DigestInfo prefixes Key Vault's RS* algorithms take the digest of. */
static const char *sign_alg(const CK_MECHANISM *m, const CK_BYTE *in,
                            CK_ULONG inlen, CK_ULONG *skip)
{
    static const struct {
        const char *alg;
        CK_ULONG hlen;
        CK_BYTE oid_last;
    } rs[] = {{"RS256", 32, 0x01}, {"RS384", 48, 0x02}, {"RS512", 64, 0x03}};
    static const CK_BYTE head[] = {0x06, 0x09, 0x60, 0x86, 0x48,
                                   0x01, 0x65, 0x03, 0x04, 0x02};
    size_t i;

    *skip = 0;
    if (m->mechanism == CKM_RSA_PKCS_PSS) {
        const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
        /* Key Vault's PS* use MGF1 with the same hash and a salt as long
         * as the hash. */
        if (p->hashAlg == CKM_SHA256 && p->mgf == CKG_MGF1_SHA256 &&
            p->sLen == 32 && inlen == 32)
            return "PS256";
        if (p->hashAlg == CKM_SHA384 && p->mgf == CKG_MGF1_SHA384 &&
            p->sLen == 48 && inlen == 48)
            return "PS384";
        if (p->hashAlg == CKM_SHA512 && p->mgf == CKG_MGF1_SHA512 &&
            p->sLen == 64 && inlen == 64)
            return "PS512";
        return NULL;
    }
    for (i = 0; i < CMK_ARRAY_SIZE(rs); i++) {
        CK_ULONG plen = 19;
        if (inlen == plen + rs[i].hlen && in[0] == 0x30 && in[2] == 0x30 &&
            memcmp(in + 4, head, sizeof(head)) == 0 &&
            in[4 + sizeof(head)] == rs[i].oid_last) {
            *skip = plen;
            return rs[i].alg;
        }
    }
    return "RSNULL"; /* the DigestInfo as it is */
}

static CK_RV kv_check_mechanism(void *tok, enum pop op, const CK_MECHANISM *m)
{
    const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
    CK_ULONG hlen;

    (void)tok;
    if (op == POP_VERIFY)
        return CKR_OK; /* verification is done in the module (OpenSSL) */
    switch (m->mechanism) {
    case CKM_RSA_PKCS_OAEP:
        return op != POP_SIGN && oaep_alg(m) != NULL
                   ? CKR_OK
                   : CKR_MECHANISM_PARAM_INVALID;
    case CKM_RSA_PKCS_PSS:
        if (p == NULL)
            return CKR_MECHANISM_PARAM_INVALID;
        hlen = p->hashAlg == CKM_SHA256   ? 32
               : p->hashAlg == CKM_SHA384 ? 48
               : p->hashAlg == CKM_SHA512 ? 64
                                          : 0;
        /* PS256/384/512: MGF1 of the same hash, salt as long as it. */
        if (hlen == 0 || p->sLen != hlen ||
            p->mgf != (hlen == 32   ? CKG_MGF1_SHA256
                       : hlen == 48 ? CKG_MGF1_SHA384
                                    : CKG_MGF1_SHA512))
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    default:
        return CKR_OK;
    }
}

/* A replica answering this much faster goes first (EWMA, ms). */
#define KV_FASTER_FACTOR 4
#define KV_FASTER_MS     200

/*
 * The vaults a private-key operation on v goes to, in order, with v's
 * version id in each: those holding v's public key, in vault-url order,
 * the ones whose breaker is open last; one answering KV_FASTER_FACTOR
 * times faster (and KV_FASTER_MS sooner) than the first goes first.
 * Under the lock; vers[i] are copies.
 */
static int replica_order_unlocked(struct kv_token *kt, struct kv_version *v,
                                  int *order, char **vers)
{
    int64_t now = kv_now_ms();
    int n = 0, pass, r, best = -1, i;

    if (kt->nrep == 1) {
        order[0] = 0;
        vers[0] = strdup(v->version);
        return 1;
    }
    for (pass = 0; pass < 2; pass++)
        for (r = 0; r < kt->nrep; r++) {
            struct kv_rver *x = kv_rver_match_unlocked(v->key, r, v);
            if (x == NULL ||
                kv_rep_available_unlocked(&kt->rep[r], now) != !pass)
                continue;
            order[n] = r;
            vers[n++] = strdup(x->version);
        }
    if (n == 0) {
        order[0] = v->key->ref;
        vers[0] = strdup(v->version);
        return 1;
    }
    for (i = 0; i < n; i++) {
        const struct kv_replica *rp = &kt->rep[order[i]];
        if (!kv_rep_available_unlocked(rp, now) || rp->ewma_ms == 0)
            continue;
        if (best < 0 || rp->ewma_ms < kt->rep[order[best]].ewma_ms)
            best = i;
    }
    if (best > 0 && kt->rep[order[0]].ewma_ms > 0 &&
        kt->rep[order[best]].ewma_ms * KV_FASTER_FACTOR <
            kt->rep[order[0]].ewma_ms &&
        kt->rep[order[0]].ewma_ms - kt->rep[order[best]].ewma_ms >
            KV_FASTER_MS) {
        int o = order[best];
        char *s = vers[best];
        memmove(order + 1, order, (size_t)best * sizeof(*order));
        memmove(vers + 1, vers, (size_t)best * sizeof(*vers));
        order[0] = o;
        vers[0] = s;
    }
    return n;
}

enum kv_use { USE_WRAP, USE_ENCRYPT, USE_UNWRAP, USE_REMOTE };

static CK_RV version_usable(struct kv_token *kt, struct pcall *c,
                            struct kv_version *v, enum kv_use use);

/* {"alg":ALG,"value":BASE64URL(in)}, in one allocation: in may be a
 * plaintext (encrypt), so no growing buffer leaves copies of it. */
static char *crypt_body(const char *alg, const CK_BYTE *in, CK_ULONG inlen)
{
    static const char value[] = "\",\"value\":\"", end[] = "\"}";
    size_t alen = strlen(alg), blen = kv_b64url_len(inlen);
    char *body = malloc(8 + alen + sizeof(value) - 1 + blen + sizeof(end));
    char *o = body;

    if (body == NULL)
        return NULL;
    memcpy(o, "{\"alg\":\"", 8);
    memcpy(o += 8, alg, alen);
    memcpy(o += alen, value, sizeof(value) - 1);
    kv_b64url_write(o += sizeof(value) - 1, in, inlen);
    memcpy(o + blen, end, sizeof(end));
    return body;
}

/*
 * A private-key operation: on the first vault of replica_order; when it
 * is unreachable, on the next, within the same deadline. An answer that
 * refuses (revocation evidence, a bad input) is never a reason to try
 * another vault.
 */
static CK_RV kv_crypt_remote(struct pcall *c, enum pop op, void *key,
                             const CK_MECHANISM *m, const CK_BYTE *in,
                             CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    static const char *verbs[] = {[POP_ENCRYPT] = "encrypt",
                                  [POP_DECRYPT] = "decrypt",
                                  [POP_UNWRAP] = "unwrapkey",
                                  [POP_SIGN] = "sign"};
    struct kv_token *kt = c->tok;
    struct kv_version *v = key;
    int64_t deadline = kv_now_ms() + kt->deadline_ms;
    const char *alg = NULL;
    CK_ULONG skip = 0;
    struct kv_result res;
    char *body = NULL, *path = NULL, *name, *esc;
    char why[128], *vers[KV_MAX_REPLICAS] = {NULL};
    int order[KV_MAX_REPLICAS], n = 0, i;
    unsigned char *dec = NULL;
    size_t declen = 0;
    CK_RV rv;

    if (op == POP_SIGN)
        alg = sign_alg(m, in, inlen, &skip);
    else if (m->mechanism == CKM_RSA_PKCS_OAEP)
        alg = oaep_alg(m);
    else if (m->mechanism == CKM_RSA_PKCS)
        alg = "RSA1_5";
    if (alg == NULL)
        return CKR_MECHANISM_PARAM_INVALID;

    if (kt->nrep > 1) {
        /* What any replica said stands (a refresh within
         * refresh-interval): a replica never undoes a revocation. */
        rv = version_usable(kt, c, v, USE_REMOTE);
        if (rv != CKR_OK)
            return rv;
    }
    pthread_mutex_lock(&kt->lock);
    name = strdup(v->key->name);
    n = replica_order_unlocked(kt, v, order, vers);
    pthread_mutex_unlock(&kt->lock);
    esc = name ? kv_url_escape(name) : NULL;
    body = crypt_body(alg, in + skip, inlen - skip);
    if (esc == NULL || body == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (i = 0; i < n; i++) {
        struct kv_replica *rep = &kt->rep[order[i]];
        int64_t left = deadline - kv_now_ms();
        free(path);
        path = vers[i] ? kv_concat("/keys/", esc, "/", vers[i], "/", verbs[op],
                                   NULL)
                       : NULL;
        if (path == NULL) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        /* An unreachable vault leaves the next one time to answer. */
        rv = kv_call(kt, rep, c, "POST", path, body,
                     kv_now_ms() + left / (n - i), i == n - 1, &res);
        if (rv == CKR_OK || !kv_call_unreachable || i == n - 1)
            break;
        kv_result_clear(&res);
        cmk_info("token %s: %s of key %s: %s unreachable, trying %s", kt->name,
                 verbs[op], name, rep->host, kt->rep[order[i + 1]].host);
    }
    if (rv != CKR_OK && res.status == 404) {
        /* The version is gone (the key deleted, or deleted and created
         * again): the next search loads the key again instead of serving
         * the dead version until refresh-interval. */
        pthread_mutex_lock(&kt->lock);
        v->key->loaded_at_ms = 0;
        pthread_mutex_unlock(&kt->lock);
    }
    if (rv != CKR_OK) {
        if (op == POP_SIGN)
            rv = kv_map_context(KV_CTX_SIGN, res.status, rv);
        kv_explain(kt, name, verbs[op],
                   op == POP_UNWRAP ? "unwrapKey" : verbs[op], &res, rv);
        kv_result_clear(&res);
        goto out;
    }
    rv = kv_parse_result(res.doc, &dec, &declen, why, sizeof(why));
    if (rv != CKR_OK) {
        kv_malformed(kt, "POST", path, why);
    } else if (declen > *outlen) {
        rv = CKR_BUFFER_TOO_SMALL;
    } else {
        memcpy(out, dec, declen);
        *outlen = (CK_ULONG)declen;
    }
    kv_result_clear(&res);
out:
    secure_free(dec);
    secure_free(body);
    free(path);
    free(name);
    for (i = 0; i < n; i++)
        free(vers[i]);
    free(esc);
    return rv;
}

/*
 * C_GenerateKeyPair: a new key, or a new version of an existing one
 * (rotate when the template gives no size, create when it gives one).
 */
static CK_RV kv_generate_key_pair(struct pcall *c, const CK_MECHANISM *mech,
                                  const CK_ATTRIBUTE *pubt, CK_ULONG npub,
                                  const CK_ATTRIBUTE *privt, CK_ULONG npriv,
                                  struct pobj *pub_out, struct pobj *priv_out)
{
    struct kv_token *kt = c->tok;
    const CK_ATTRIBUTE *la = tmpl_find(privt, npriv, CKA_LABEL);
    int64_t deadline = kv_now_ms() + kt->deadline_ms;
    CK_ULONG bits = 0;
    char name[128], version[128], *esc = NULL, *path = NULL, *body = NULL;
    char bad_name[400];
    struct kv_result res;
    struct kv_key *k;
    struct kv_version *v;
    bool exists;
    uint64_t seq;
    CK_RV rv;
    int r = -1;

    if (la == NULL)
        la = tmpl_find(pubt, npub, CKA_LABEL);
    if (la == NULL || la->pValue == NULL || la->ulValueLen == 0 ||
        la->ulValueLen >= sizeof(name)) {
        cmk_warning("key pair generation: a Key Vault key needs a name: give "
                    "CKA_LABEL (1 to 127 letters, digits and hyphens)");
        return CKR_TEMPLATE_INCOMPLETE;
    }
    memcpy(name, la->pValue, la->ulValueLen);
    name[la->ulValueLen] = '\0';
    if (kv_check_key_name(name, bad_name, sizeof(bad_name)) != 0) {
        cmk_warning("key pair generation: CKA_LABEL %s", bad_name);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if (!config_list_allows(kt->allow, name)) {
        cmk_warning("key pair generation: '%s' is not in this token's keys = "
                    "list; add it there to create it, or name a key that is",
                    name);
        return CKR_TEMPLATE_INCONSISTENT;
    }
    if (kt->nrep > 1) {
        /* A key or version made in one vault would be missing from the
         * others, which is revocation evidence (docs/keyvault.md). */
        cmk_warning("key pair generation: token %s has replicas (%s): "
                    "create or rotate the key in one vault, then copy it to "
                    "the others with backup and restore",
                    kt->name, kt->hosts);
        return CKR_FUNCTION_FAILED;
    }
    if (tmpl_find_ulong(pubt, npub, CKA_MODULUS_BITS, &bits) < 0 ||
        (bits != 0 && bits != 2048 && bits != 3072 && bits != 4096))
        return CKR_KEY_SIZE_RANGE;

    rv = kv_load_key(kt, c, name, NULL, deadline);
    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&kt->lock);
    k = kv_key_get_unlocked(kt, name, false);
    exists = k != NULL && k->exists;
    pthread_mutex_unlock(&kt->lock);
    esc = kv_url_escape(name);
    if (exists && bits == 0) {
        /* No body, so no Content-Type (keys.json: rotate takes none). */
        path = kv_strdup_printf("/keys/%s/rotate", esc);
        body = strdup("");
    } else {
        path = kv_strdup_printf("/keys/%s/create", esc);
        body = kv_strdup_printf(
            "{\"kty\":\"%s\",\"key_size\":%lu,\"key_ops\":[\"encrypt\","
            "\"decrypt\",\"sign\",\"verify\",\"wrapKey\",\"unwrapKey\"]}",
            kt->key_type, bits ? (unsigned long)bits : 2048UL);
    }
    if (esc == NULL || path == NULL || body == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    seq = kv_next_seq(kt); /* before the request: its answer is newer */
    rv = kv_call(kt, &kt->rep[0], c, "POST", path, body, deadline, true, &res);
    if (rv != CKR_OK) {
        kv_explain(kt, name, exists && bits == 0 ? "rotate" : "create",
                   exists && bits == 0 ? "rotate" : "create", &res, rv);
        rv = kv_map_context(KV_CTX_CREATE, res.status, rv);
        kv_result_clear(&res);
        goto out;
    }
    {
        struct kv_bundle b;
        char why[128];
        rv = kv_parse_bundle(res.doc, &b, why, sizeof(why));
        if (rv != CKR_OK) {
            kv_malformed(kt, "POST", path, why);
            kv_result_clear(&res);
            goto out;
        }
        snprintf(version, sizeof(version), "%s", b.version);
        kv_bundle_clear(&b);
    }
    pthread_mutex_lock(&kt->lock);
    k = kv_key_get_unlocked(kt, name, true);
    pthread_mutex_unlock(&kt->lock);
    if (k != NULL)
        rv = kv_take_bundle(kt, &kt->rep[0], true, seq, k, res.doc, "POST",
                            path, NULL, NULL);
    kv_result_clear(&res);
    if (rv != CKR_OK)
        goto out;
    cmk_info("token %s: key %s has a new version %s", kt->name, name, version);
    /* Reload so that the new version is current and the old relabelled. */
    rv = kv_load_key(kt, c, name, NULL, deadline);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&kt->lock);
    k = kv_key_get_unlocked(kt, name, false);
    v = k ? kv_version_get_unlocked(k, version) : NULL;
    if (v != NULL && v->loaded)
        r = kv_version_objects_unlocked(kt, v, kv_current_unlocked(kt, k) == v,
                                        priv_out, pub_out);
    pthread_mutex_unlock(&kt->lock);
    rv = r == 0 ? CKR_OK : CKR_DEVICE_ERROR;
out:
    free(esc);
    free(path);
    free(body);
    return rv;
}

static bool version_in(const void *version, void *arg)
{
    struct kv_version **list = arg;

    for (; *list != NULL; list++)
        if (*list == version)
            return true;
    return false;
}

/* Drops the cached unwraps of key k: all of them, or (all false) those of
 * versions that can no longer unwrap. */
void kv_unwrap_cache_prune(struct kv_token *kt, struct kv_key *k, bool all)
{
    struct kv_version *v, **bad;
    size_t n = 0, dropped;

    if (kt->cache == NULL)
        return;
    pthread_mutex_lock(&kt->lock);
    for (v = k->versions; v != NULL; v = v->next)
        n++;
    bad = calloc(n + 1, sizeof(*bad));
    n = 0;
    for (v = k->versions; bad != NULL && v != NULL; v = v->next)
        if (all || !k->exists || !v->present ||
            !kv_version_enabled_unlocked(kt, v) ||
            !kv_has_op(v->key_ops, "unwrapKey"))
            bad[n++] = v;
    pthread_mutex_unlock(&kt->lock);
    if (bad == NULL) {
        kv_cache_drop(kt->cache, NULL, NULL);
        return;
    }
    dropped = n > 0 ? kv_cache_drop(kt->cache, version_in, bad) : 0;
    if (dropped > 0)
        cmk_info("token %s: %zu cached unwrap(s) of key %s dropped", kt->name,
                 dropped, k->name);
    free(bad);
}

/*
 * Revocation reaches what the module does without the vault (local wraps
 * and encryptions, cached unwraps) within refresh-interval: a stale key is
 * loaded again, and a version that is gone, disabled, out of its dates (for
 * wrap and encrypt) or without the permission refuses.
 */
static CK_RV version_usable(struct kv_token *kt, struct pcall *c,
                            struct kv_version *v, enum kv_use use)
{
    static const char *ops[][2] = {[USE_WRAP] = {"wrapKey", "unwrapKey"},
                                   [USE_ENCRYPT] = {"encrypt", "decrypt"},
                                   [USE_UNWRAP] = {"unwrapKey", "unwrapKey"},
                                   [USE_REMOTE] = {NULL, NULL}};
    long long now = (long long)time(NULL);
    char *name = NULL;
    bool need;
    CK_RV rv = CKR_OK;

    audit_note_offline(false);
    pthread_mutex_lock(&kt->lock);
    need = kv_stale(v->key->loaded_at_ms, kt->refresh_ms);
    if (need)
        name = strdup(v->key->name);
    pthread_mutex_unlock(&kt->lock);
    if (need) {
        if (name == NULL)
            return CKR_HOST_MEMORY;
        rv = kv_load_key(kt, c, name, NULL, kv_now_ms() + kt->deadline_ms);
        if (rv != CKR_OK && kv_call_unreachable && kt->grace_ms > 0) {
            /* An outage, not revocation evidence: what was loaded serves
             * until refresh-interval + offline-grace after the last
             * contact, then the key stops as on revocation. */
            int64_t loaded, until;
            pthread_mutex_lock(&kt->lock);
            loaded = v->key->loaded_at_ms;
            pthread_mutex_unlock(&kt->lock);
            until = loaded + kt->refresh_ms + kt->grace_ms;
            if (loaded != 0 && kv_now_ms() < until) {
                rv = CKR_OK;
                audit_note_offline(true);
            } else {
                cmk_error("token %s: key %s stopped: %s has been unreachable "
                          "past offline-grace (%ld s after the last refresh "
                          "of the key, %lld s ago)",
                          kt->name, name, kt->hosts, kt->grace_ms / 1000,
                          loaded ? (long long)(kv_now_ms() - loaded) / 1000
                                 : -1LL);
            }
        }
        free(name);
        if (rv != CKR_OK) {
            kv_unwrap_cache_prune(kt, v->key, true);
            return rv;
        }
    }
    pthread_mutex_lock(&kt->lock);
    if (!v->key->exists || !v->present)
        rv = CKR_KEY_HANDLE_INVALID;
    else if (!kv_version_enabled_unlocked(kt, v))
        rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
    else if (use != USE_REMOTE &&
             (!kv_has_op(v->key_ops, ops[use][0]) ||
              !kv_has_op(v->key_ops, ops[use][1]) ||
              (use != USE_UNWRAP && !key_dates_valid(v->nbf, v->exp, now))))
        rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
    pthread_mutex_unlock(&kt->lock);
    if (rv != CKR_OK) {
        kv_unwrap_cache_prune(kt, v->key, false);
        cmk_error("token %s: version %s of key %s can no longer be used "
                  "(%s)",
                  kt->name, v->version, v->key->name, cmk_rv_name(rv));
    }
    return rv;
}

static CK_RV kv_check_public(struct pcall *c, void *key, bool wrap)
{
    struct kv_token *kt = c->tok;
    bool secret;

    pthread_mutex_lock(&kt->lock);
    secret = kv_skey_of_unlocked(kt, key) != NULL;
    pthread_mutex_unlock(&kt->lock);
    if (secret)
        return CKR_OK; /* checked at each use (kv-store.c) */
    return version_usable(c->tok, c, key, wrap ? USE_WRAP : USE_ENCRYPT);
}

CK_RV kv_version_check(struct kv_token *kt, struct pcall *c,
                       struct kv_version *v)
{
    return version_usable(kt, c, v, USE_UNWRAP);
}

CK_RV kv_unwrap_oaep256(struct pcall *c, struct kv_version *v,
                        const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                        CK_ULONG *outlen)
{
    CK_RSA_PKCS_OAEP_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA256,
                                 CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};

    return kv_crypt_remote(c, POP_UNWRAP, v, &m, in, inlen, out, outlen);
}

/* The front end's reference: a token secret key, or NULL (a version). */
static struct kv_skey *skey_of(struct kv_token *kt, void *ref)
{
    struct kv_skey *k;

    pthread_mutex_lock(&kt->lock);
    k = kv_skey_of_unlocked(kt, ref);
    pthread_mutex_unlock(&kt->lock);
    return k;
}

static CK_RV kv_create_object(struct pcall *c, const CK_ATTRIBUTE *tmpl,
                              CK_ULONG n, struct pobj *out)
{
    return kv_store_create(c, tmpl, n, out);
}

static CK_RV kv_destroy_object(struct pcall *c, void *ref)
{
    struct kv_skey *k = skey_of(c->tok, ref);

    return k ? kv_store_destroy(c, k) : CKR_ACTION_PROHIBITED;
}

static CK_RV kv_get_value(struct pcall *c, void *ref, CK_BYTE *out,
                          CK_ULONG *len)
{
    struct kv_skey *k = skey_of(c->tok, ref);

    return k ? kv_store_get_value(c, k, out, len) : CKR_ATTRIBUTE_SENSITIVE;
}

static CK_RV kv_crypt(struct pcall *c, enum pop op, void *key,
                      const CK_MECHANISM *m, const CK_BYTE *in, CK_ULONG inlen,
                      CK_BYTE *out, CK_ULONG *outlen)
{
    struct kv_token *kt = c->tok;
    struct kv_version *v = key;
    unsigned char id[32];
    size_t len = *outlen;
    const char *alg;
    bool offline;
    CK_RV rv;
    int r;

    audit_note_offline(false);
    {
        struct kv_skey *sk = skey_of(kt, key);
        if (sk != NULL)
            return kv_store_crypt(c, op, sk, m, in, inlen, out, outlen);
    }
    if (op != POP_UNWRAP || kt->cache == NULL)
        return kv_crypt_remote(c, op, key, m, in, inlen, out, outlen);
    alg = m->mechanism == CKM_RSA_PKCS_OAEP ? oaep_alg(m)
          : m->mechanism == CKM_RSA_PKCS    ? "RSA1_5"
                                            : NULL;
    if (alg == NULL)
        return CKR_MECHANISM_PARAM_INVALID;
    rv = version_usable(kt, c, v, USE_UNWRAP);
    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&kt->lock);
    offline =
        kt->grace_ms > 0 && kt->offline_since_ms != 0 &&
        kv_now_ms() < v->key->loaded_at_ms + kt->refresh_ms + kt->grace_ms;
    pthread_mutex_unlock(&kt->lock);
    kv_cache_id(v, alg, in, inlen, id);
    r = kv_cache_get(kt->cache, id, v, kv_now_ms() + kt->deadline_ms, offline,
                     out, &len);
    if (r == KV_CACHE_HIT && offline)
        audit_note_offline(true);
    if (r == KV_CACHE_HIT) {
        *outlen = (CK_ULONG)len;
        c->device_error = 0;
        return CKR_OK;
    }
    audit_note_offline(false);
    rv = kv_crypt_remote(c, op, key, m, in, inlen, out, outlen);
    if (r == KV_CACHE_MISS && rv == CKR_OK) {
        kv_cache_put(kt->cache, id, out, *outlen);
    } else if (r == KV_CACHE_MISS && rv == CKR_DEVICE_ERROR &&
               kv_call_unreachable) {
        /* The vault is unreachable: an expired entry serves within
         * offline-grace. */
        pthread_mutex_lock(&kt->lock);
        offline =
            kt->grace_ms > 0 && v->key->loaded_at_ms != 0 &&
            kv_now_ms() < v->key->loaded_at_ms + kt->refresh_ms + kt->grace_ms;
        pthread_mutex_unlock(&kt->lock);
        len = *outlen;
        if (!offline)
            kv_cache_abandon(kt->cache, id);
        else if (kv_cache_stale(kt->cache, id, out, &len) == KV_CACHE_HIT) {
            *outlen = (CK_ULONG)len;
            c->device_error = 0;
            audit_note_offline(true);
            rv = CKR_OK;
        }
    } else if (r == KV_CACHE_MISS) {
        kv_cache_abandon(kt->cache, id);
    }
    if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED || rv == CKR_KEY_HANDLE_INVALID)
        kv_unwrap_cache_prune(kt, v->key, true);
    return rv;
}

/*
 * CKA_CMK_ENABLED set on a version's private key: the version's "enabled"
 * attribute, changed with Key Vault's Update Key
 * (PATCH /keys/NAME/VERSION, body {"attributes":{"enabled":false}}; the
 * answer is the whole key bundle; the identity needs the keys update
 * permission). cmkp11-tool retire disables an old version this way, and
 * retire --undo enables it again.
 */
CK_RV kv_set_enabled(struct pcall *c, void *ref, const CK_ATTRIBUTE *at)
{
    struct kv_token *kt = c->tok;
    struct kv_version *v = ref;
    int64_t deadline = kv_now_ms() + kt->deadline_ms;
    char *name = NULL, *version = NULL, *esc = NULL, *vesc = NULL;
    char *path = NULL;
    struct kv_result res;
    struct kv_key *k;
    bool on = *(const CK_BBOOL *)at->pValue != CK_FALSE;
    uint64_t seq;
    CK_RV rv;

    if (kt->nrep > 1) {
        /* A version enabled in one vault and not in the others would be
         * read as disabled (the replicas disagree); each vault is its
         * own resource. */
        cmk_warning("token %s has replicas (%s): enable or disable the "
                    "version in each vault (az keyvault key set-attributes "
                    "--enabled), not through cmkp11",
                    kt->name, kt->hosts);
        return CKR_FUNCTION_FAILED;
    }
    pthread_mutex_lock(&kt->lock);
    k = v->key;
    name = strdup(k->name);
    version = strdup(v->version);
    pthread_mutex_unlock(&kt->lock);
    if (name != NULL && version != NULL) {
        esc = kv_url_escape(name);
        vesc = kv_url_escape(version);
    }
    if (esc != NULL && vesc != NULL)
        path = kv_strdup_printf("/keys/%s/%s", esc, vesc);
    if (path == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    seq = kv_next_seq(kt); /* before the request: its answer is newer */
    rv = kv_call(kt, &kt->rep[0], c, "PATCH", path,
                 on ? "{\"attributes\":{\"enabled\":true}}"
                    : "{\"attributes\":{\"enabled\":false}}",
                 deadline, true, &res);
    if (rv != CKR_OK) {
        kv_explain(kt, name, on ? "enable" : "disable", "update", &res, rv);
        rv = kv_map_context(KV_CTX_UPDATE, res.status, rv);
        kv_result_clear(&res);
        goto out;
    }
    /* The answer is the version's bundle, "enabled" as it is now. */
    rv = kv_take_bundle(kt, &kt->rep[0], true, seq, k, res.doc, "PATCH", path,
                        NULL, NULL);
    kv_result_clear(&res);
    if (rv != CKR_OK)
        goto out;
    cmk_info("token %s: version %s of key %s %s", kt->name, version, name,
             on ? "enabled" : "disabled");
    if (!on)
        kv_unwrap_cache_prune(kt, k, false);
out:
    free(path);
    free(esc);
    free(vesc);
    free(name);
    free(version);
    return rv;
}

/* provider_ops.set_attributes: the vendor attributes the vault changes
 * (the front end let only those of attrpolicy.c through); on a token
 * secret key, CKA_CMK_WRAP_VERSION rewraps it (kv-store.c). */
static CK_RV kv_set_attributes(struct pcall *c, void *ref,
                               const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    struct kv_skey *k = skey_of(c->tok, ref);
    CK_ULONG i;
    CK_RV rv = CKR_OK;

    if (k != NULL)
        return kv_store_set_attributes(c, k, tmpl, n);
    for (i = 0; rv == CKR_OK && i < n; i++) {
        if (tmpl[i].type == CKA_CMK_ENABLED)
            rv = kv_set_enabled(c, ref, &tmpl[i]);
        else if (tmpl[i].type == CKA_CMK_ROTATION_POLICY)
            /* The policy belongs to the key: any version sets it. */
            rv = kv_set_rotation_policy(c, ref, &tmpl[i]);
        else
            rv = CKR_ATTRIBUTE_READ_ONLY;
    }
    return rv;
}

/* provider_ops.get_attribute: a key version's on-demand attributes; a
 * token secret key has none (its references are not versions). */
static CK_RV kv_get_attribute_ref(struct pcall *c, void *ref,
                                  CK_ATTRIBUTE_TYPE type, CK_BYTE **out,
                                  CK_ULONG *len)
{
    if (skey_of(c->tok, ref) != NULL)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    if (type == CKA_CMK_STATE_FILES)
        return kv_store_state_files(c, out, len);
    return kv_get_attribute(c, ref, type, out, len);
}

const struct provider_ops keyvault_provider = {
    .name = "keyvault",
    .open = kv_open,
    .close = kv_close,
    .token_info = kv_token_info,
    .mechanisms = kv_mechanisms,
    .login = kv_login,
    .list = kv_list,
    .ref_free = kv_ref_free,
    .check_public = kv_check_public,
    .check_mechanism = kv_check_mechanism,
    .crypt = kv_crypt,
    .create_object = kv_create_object,
    .destroy_object = kv_destroy_object,
    .get_value = kv_get_value,
    .generate_key_pair = kv_generate_key_pair,
    .set_attributes = kv_set_attributes,
    .get_attribute = kv_get_attribute_ref,
};
