/*
 * The keyvault back end: the RSA keys of an Azure Key Vault or Managed HSM
 * as versioned token objects.
 *
 * Loading is lazy: C_Initialize makes no request. A search by label loads
 * that key alone (its versions, then each version's public key once); a
 * search without a label lists the vault's keys (or the keys = allow-list).
 * What was loaded is refreshed when it is older than refresh-interval.
 * Private-key operations are REST calls on the version's kid; public-key
 * operations run in the module with the cached public key.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "audit.h"
#include "debug.h"
#include "kv-cache.h"
#include "kv-parse.h"
#include "kv.h"
#include "rsa.h"
#include "secure.h"

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
    CK_BYTE *n, *e;
    CK_ULONG nlen, elen;
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
};

#define KV_CIRCUIT_FAILURES 5
#define KV_CACHE_SIZE       4096 /* unwrap results kept at most */
#define KV_CIRCUIT_OPEN_MS  5000
#define KV_OFFLINE_LOG_MS   60000 /* the outage is logged once a minute */

/* Whether this thread's last kv_call failed for unreachability (transport,
 * 5xx, 429 after retries, the breaker open, the identity endpoint down),
 * not for revocation evidence (docs/keyvault.md, "Outages"). */
static __thread bool call_unreachable;
/* The vault this thread's last kv_call went to, for messages. */
static __thread const char *call_host;

/* ---- configuration ---- */

static void kv_close(void *tok, bool in_child)
{
    struct kv_token *kt = tok;
    struct kv_key *k, *kn;
    struct kv_version *v, *vn;
    struct kv_rver *r, *rn;
    int i;

    if (kt == NULL)
        return;
    for (k = kt->keys; k != NULL; k = kn) {
        kn = k->next;
        for (i = 0; i < KV_MAX_REPLICAS; i++)
            for (r = k->rv[i]; r != NULL; r = rn) {
                rn = r->next;
                free(r->version);
                free(r->recovery);
                free(r);
            }
        for (v = k->versions; v != NULL; v = vn) {
            vn = v->next;
            free(v->version);
            free(v->n);
            free(v->e);
            free(v->kty);
            free(v->key_ops);
            free(v->recovery);
            free(v);
        }
        free(k->name);
        free(k->latest);
        free(k);
    }
    kv_cache_free(kt->cache);
    kv_auth_free(kt->auth);
    kv_http_free(kt->http, in_child);
    config_free_list(kt->allow);
    free(kt->name);
    for (i = 0; i < kt->nrep; i++) {
        free(kt->rep[i].url);
        free(kt->rep[i].host);
    }
    free(kt->hosts);
    free(kt->resource);
    free(kt->tenant);
    free(kt->key_type);
    secure_free(kt->pin, kt->pin_len + 1);
    pthread_mutex_destroy(&kt->lock);
    free(kt);
}

static const char *env_or(const char *v, const char *env)
{
    const char *e;

    if (v != NULL)
        return v;
    e = getenv(env);
    return e != NULL && e[0] != '\0' ? e : NULL;
}

static CK_RV bad(char *err, size_t errlen, const struct config_token *cfg,
                 const char *key, const char *why)
{
    snprintf(err, errlen, "%s:%d: %s: %s", cfg->path,
             config_token_line(cfg, key), key, why);
    return CKR_GENERAL_ERROR;
}

/*
 * The managed identity host, from the environment, in the order of
 * azure-identity's ManagedIdentityCredential
 * (azure/identity/_credentials/managed_identity.py): IDENTITY_ENDPOINT
 * with IDENTITY_HEADER is Service Fabric when IDENTITY_SERVER_THUMBPRINT
 * is set, else App Service; with IMDS_ENDPOINT it is Azure Arc;
 * MSI_ENDPOINT is Azure ML with MSI_SECRET, else Cloud Shell; otherwise
 * IMDS. imds-endpoint in the file means IMDS.
 */
static void mi_detect(struct kv_auth_config *ac)
{
    const char *ie = env_or(NULL, "IDENTITY_ENDPOINT");
    const char *ih = env_or(NULL, "IDENTITY_HEADER");
    const char *me = env_or(NULL, "MSI_ENDPOINT");

    ac->mi_host = KV_MI_IMDS;
    if (ac->imds_endpoint != NULL)
        return;
    if (ie != NULL && ih != NULL) {
        ac->identity_endpoint = (char *)ie;
        ac->identity_header = (char *)ih;
        ac->identity_thumbprint =
            (char *)env_or(NULL, "IDENTITY_SERVER_THUMBPRINT");
        ac->mi_host =
            ac->identity_thumbprint ? KV_MI_SERVICE_FABRIC : KV_MI_APP_SERVICE;
    } else if (ie != NULL && env_or(NULL, "IMDS_ENDPOINT") != NULL) {
        ac->identity_endpoint = (char *)ie;
        ac->mi_host = KV_MI_ARC;
    } else if (ie == NULL && me != NULL) {
        ac->msi_endpoint = (char *)me;
        ac->msi_secret = (char *)env_or(NULL, "MSI_SECRET");
        ac->mi_host = ac->msi_secret ? KV_MI_AZURE_ML : KV_MI_CLOUD_SHELL;
    }
}

/*
 * Without auth =, the choice DefaultAzureCredential makes
 * (azure/identity/_credentials/default.py, environment.py): the
 * environment's service principal (a secret, else a certificate), then
 * workload identity when AZURE_FEDERATED_TOKEN_FILE is set, then managed
 * identity. A file that names a credential (client-secret-file,
 * client-certificate-file, federated-token-file) chooses it.
 */
static const char *default_auth(const struct config_token *cfg)
{
    bool sp = env_or(config_token_get(cfg, "tenant-id"), "AZURE_TENANT_ID") &&
              env_or(config_token_get(cfg, "client-id"), "AZURE_CLIENT_ID");

    if (config_token_get(cfg, "client-secret-file") != NULL)
        return "client-secret";
    if (config_token_get(cfg, "client-certificate-file") != NULL)
        return "client-certificate";
    if (config_token_get(cfg, "federated-token-file") != NULL)
        return "workload-identity";
    if (env_or(NULL, "AZURE_CLIENT_SECRET") != NULL &&
        (sp || env_or(config_token_get(cfg, "client-id"), "AZURE_CLIENT_ID")))
        return "client-secret";
    if (sp && env_or(NULL, "AZURE_CLIENT_CERTIFICATE_PATH") != NULL)
        return "client-certificate";
    if (sp && env_or(NULL, "AZURE_FEDERATED_TOKEN_FILE") != NULL)
        return "workload-identity";
    return "managed-identity";
}

/* The domain a host's token scope covers: the host without its first
 * label (NAME.vault.azure.net: vault.azure.net), port included. */
static const char *host_domain(const char *host)
{
    const char *d = strchr(host, '.');

    return d != NULL ? d + 1 : host;
}

/*
 * vault-url: one URL, or a comma-separated list of replicas holding the
 * same keys. One credential serves them all, so they must share a token
 * scope: the same kind (vault or Managed HSM) in the same cloud.
 */
static CK_RV parse_vaults(struct kv_token *kt, const struct config_token *cfg,
                          const char *text, char *err, size_t errlen)
{
    char **list = config_split_list(text), why[400];
    size_t len = 1;
    int i, j;

    if (list == NULL)
        return CKR_HOST_MEMORY;
    for (i = 0; list[i] != NULL; i++) {
        struct kv_replica *r;
        char *u = list[i];
        if (i >= KV_MAX_REPLICAS) {
            snprintf(why, sizeof(why), "at most %d vaults", KV_MAX_REPLICAS);
            goto bad_url;
        }
        if (strncmp(u, "https://", 8) != 0 || strlen(u) < 10) {
            snprintf(why, sizeof(why), "%s%smust be an https:// URL",
                     list[1] ? u : "", list[1] ? " " : "");
            goto bad_url;
        }
        while (u[strlen(u) - 1] == '/')
            u[strlen(u) - 1] = '\0';
        if (strchr(u + 8, '/') != NULL) {
            snprintf(why, sizeof(why),
                     "%s%smust name the vault only, without a path",
                     list[1] ? u : "", list[1] ? " " : "");
            goto bad_url;
        }
        for (j = 0; j < i; j++)
            if (strcasecmp(kt->rep[j].url, u) == 0) {
                snprintf(why, sizeof(why), "%s is listed twice", u);
                goto bad_url;
            }
        r = &kt->rep[i];
        r->index = i;
        r->url = strdup(u);
        r->host = strdup(u + 8);
        kt->nrep = i + 1;
        if (r->url == NULL || r->host == NULL) {
            config_free_list(list);
            return CKR_HOST_MEMORY;
        }
        if (i > 0 && ((strstr(r->host, ".managedhsm.") != NULL) != kt->mhsm ||
                      strcasecmp(host_domain(r->host),
                                 host_domain(kt->rep[0].host)) != 0)) {
            snprintf(why, sizeof(why),
                     "%s is not a %s in %s as %s is: replicas share one "
                     "credential and token scope",
                     u, kt->mhsm ? "Managed HSM" : "vault",
                     host_domain(kt->rep[0].host), kt->rep[0].url);
            goto bad_url;
        }
        if (i == 0)
            kt->mhsm = strstr(r->host, ".managedhsm.") != NULL;
        len += strlen(r->host) + 2;
    }
    config_free_list(list);
    if (kt->nrep == 0) {
        snprintf(why, sizeof(why), "must be an https:// URL");
        return bad(err, errlen, cfg, "vault-url", why);
    }
    kt->vault_url = kt->rep[0].url;
    kt->host = kt->rep[0].host;
    kt->hosts = calloc(1, len);
    if (kt->hosts == NULL)
        return CKR_HOST_MEMORY;
    for (i = 0; i < kt->nrep; i++) {
        if (i > 0)
            strcat(kt->hosts, ", ");
        strcat(kt->hosts, kt->rep[i].host);
    }
    return CKR_OK;
bad_url:
    config_free_list(list);
    return bad(err, errlen, cfg, "vault-url", why);
}

static CK_RV kv_open(const struct config_token *cfg, void **tok,
                     unsigned *flags, char *err, size_t errlen)
{
    static const char *other_keys[] = {"unwrap-fallback"};
    struct kv_token *kt = calloc(1, sizeof(*kt));
    struct kv_auth_config ac;
    struct kv_http_opts ho;
    const char *url, *auth, *v;
    long timeout = 10, deadline = 30, retries = 4, cache_s = 0;
    bool local = true;
    size_t i;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (kt == NULL)
        return CKR_HOST_MEMORY;
    memset(&ac, 0, sizeof(ac));
    pthread_mutex_init(&kt->lock, NULL);
    kt->name = strdup(cfg->name);
    kt->refresh_ms = (cfg->global ? cfg->global->refresh_interval : 60) * 1000L;

    url = config_token_get(cfg, "vault-url");
    if (url == NULL)
        url = env_or(NULL, "VAULT_URL");
    if (url == NULL) {
        snprintf(err, errlen,
                 "%s:%d: [token %s]: vault-url is missing (https://NAME."
                 "vault.azure.net or https://NAME.managedhsm.azure.net)",
                 cfg->path, cfg->line, cfg->name);
        goto fail;
    }
    rv = parse_vaults(kt, cfg, url, err, errlen);
    if (rv != CKR_OK)
        goto fail;
    rv = CKR_GENERAL_ERROR;

    if (config_token_get_long(cfg, "timeout", 1, 3600, &timeout, err, errlen) <
            0 ||
        config_token_get_long(cfg, "deadline", 1, 3600, &deadline, err,
                              errlen) < 0 ||
        config_token_get_long(cfg, "retries", 0, 20, &retries, err, errlen) <
            0 ||
        config_token_get_bool(cfg, "local-public-ops", &local, err, errlen) < 0)
        goto fail;
    if (config_token_get_long(cfg, "unwrap-cache", 0, 86400, &cache_s, err,
                              errlen) < 0)
        goto fail;
    if (cache_s > 0 &&
        (kt->cache = kv_cache_new(cache_s * 1000L, KV_CACHE_SIZE)) == NULL) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    kt->grace_ms = (cfg->global ? cfg->global->offline_grace : 900) * 1000L;
    {
        long grace = kt->grace_ms / 1000;
        if (config_token_get_long(cfg, "offline-grace", 0, 86400L * 7, &grace,
                                  err, errlen) < 0)
            goto fail;
        kt->grace_ms = grace * 1000L;
    }
    kt->deadline_ms = deadline * 1000;
    kt->retries = retries;
    kt->local_public = local;
    v = config_token_get(cfg, "key-type");
    if (v != NULL && strcmp(v, "RSA") != 0 && strcmp(v, "RSA-HSM") != 0) {
        rv = bad(err, errlen, cfg, "key-type", "must be RSA or RSA-HSM");
        goto fail;
    }
    kt->key_type = strdup(v ? v : (kt->mhsm ? "RSA-HSM" : "RSA"));
    v = config_token_get(cfg, "keys");
    if (v != NULL && (kt->allow = config_split_list(v)) == NULL) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    for (i = 0; kt->allow != NULL && kt->allow[i] != NULL; i++) {
        char why[400];
        if (kv_check_key_name(kt->allow[i], why, sizeof(why)) != 0) {
            rv = bad(err, errlen, cfg, "keys", why);
            goto fail;
        }
    }
    v = config_token_get(cfg, "pin-file");
    if (v != NULL) {
        char msg[300];
        if (secure_read_secret_file(v, 1, &kt->pin, &kt->pin_len, msg,
                                    sizeof(msg))) {
            rv = bad(err, errlen, cfg, "pin-file", msg);
            goto fail;
        }
    }
    for (i = 0; i < CMK_ARRAY_SIZE(other_keys); i++)
        (void)config_token_get(cfg, other_keys[i]);

    auth = config_token_get(cfg, "auth");
    if (auth == NULL)
        auth = default_auth(cfg);
    if (strcmp(auth, "client-secret") == 0) {
        ac.method = KV_AUTH_CLIENT_SECRET;
    } else if (strcmp(auth, "managed-identity") == 0) {
        ac.method = KV_AUTH_MANAGED_IDENTITY;
    } else if (strcmp(auth, "client-certificate") == 0) {
        ac.method = KV_AUTH_CLIENT_CERTIFICATE;
    } else if (strcmp(auth, "workload-identity") == 0) {
        ac.method = KV_AUTH_WORKLOAD_IDENTITY;
    } else if (strcmp(auth, "azure-cli") == 0) {
        ac.method = KV_AUTH_AZURE_CLI;
    } else if (strcmp(auth, "access-token-file") == 0) {
        ac.method = KV_AUTH_ACCESS_TOKEN_FILE;
    } else {
        rv = bad(err, errlen, cfg, "auth",
                 "unknown method (managed-identity, client-secret, "
                 "client-certificate, workload-identity, azure-cli, "
                 "access-token-file)");
        goto fail;
    }
    ac.cert_file =
        (char *)env_or(config_token_get(cfg, "client-certificate-file"),
                       "AZURE_CLIENT_CERTIFICATE_PATH");
    ac.cert_password_file =
        (char *)config_token_get(cfg, "client-certificate-password-file");
    ac.federated_token_file =
        (char *)env_or(config_token_get(cfg, "federated-token-file"),
                       "AZURE_FEDERATED_TOKEN_FILE");
    ac.token_file = (char *)config_token_get(cfg, "access-token-file");
    /* Keys the file leaves out come from the variables the SDKs read. */
    ac.tenant_id =
        (char *)env_or(config_token_get(cfg, "tenant-id"), "AZURE_TENANT_ID");
    ac.client_id =
        (char *)env_or(config_token_get(cfg, "client-id"), "AZURE_CLIENT_ID");
    ac.authority_host = (char *)env_or(config_token_get(cfg, "authority-host"),
                                       "AZURE_AUTHORITY_HOST");
    ac.secret_file = (char *)config_token_get(cfg, "client-secret-file");
    ac.secondary_secret_file =
        (char *)config_token_get(cfg, "secondary-client-secret-file");
    ac.imds_endpoint = (char *)config_token_get(cfg, "imds-endpoint");
    ac.object_id = (char *)config_token_get(cfg, "object-id");
    ac.resource_id = (char *)config_token_get(cfg, "resource-id");
    ac.arc_token_dir = (char *)config_token_get(cfg, "arc-token-directory");
    ac.retries = retries;
    if (ac.method == KV_AUTH_MANAGED_IDENTITY)
        mi_detect(&ac);
    if (ac.method == KV_AUTH_CLIENT_SECRET && ac.secret_file == NULL)
        ac.secret_env = (char *)env_or(NULL, "AZURE_CLIENT_SECRET");

    memset(&ho, 0, sizeof(ho));
    ho.timeout_ms = timeout * 1000;
    ho.ca_file = config_token_get(cfg, "ca-file");
    if (ho.ca_file != NULL) {
        char msg[300], *buf = NULL;
        size_t blen = 0;
        if (secure_read_file(ho.ca_file, 0, &buf, &blen, msg, sizeof(msg))) {
            rv = bad(err, errlen, cfg, "ca-file", msg);
            goto fail;
        }
        secure_free(buf, blen + 1);
    }
    kt->http = kv_http_new(&ho);
    if (kt->http == NULL) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    {
        char msg[300] = "";
        rv = kv_auth_new(&ac, kt->http, &kt->auth, msg, sizeof(msg));
        if (rv != CKR_OK) {
            snprintf(err, errlen, "%s:%d: [token %s]: %s", cfg->path, cfg->line,
                     cfg->name, msg);
            goto fail;
        }
    }
    *flags = kt->local_public ? PROVIDER_LOCAL_PUBLIC : 0;
    *tok = kt;
    return CKR_OK;
fail:
    kv_close(kt, false);
    return rv;
}

static void kv_token_info(void *tok, struct provider_token_info *info)
{
    struct kv_token *kt = tok;
    unsigned char md[32];
    unsigned int mdlen = sizeof(md);
    int i;

    memset(info, 0, sizeof(*info));
    snprintf(info->model, sizeof(info->model), "%s",
             kt->mhsm ? "Managed HSM" : "Key Vault");
    EVP_Digest(kt->host, strlen(kt->host), md, &mdlen, EVP_sha256(), NULL);
    for (i = 0; i < 8; i++)
        snprintf(info->serial + 2 * i, 3, "%02x", md[i]);
    info->login_required = kt->pin != NULL;
    info->hardware = kt->mhsm;
    info->min_pin = 1;
    info->max_pin = 256;
}

static const struct pmech kv_mechs[] = {
    {CKM_RSA_PKCS_KEY_PAIR_GEN, {2048, 4096, CKF_GENERATE_KEY_PAIR}},
    {CKM_RSA_PKCS, {2048, 4096, CKF_DECRYPT | CKF_UNWRAP | CKF_SIGN}},
    {CKM_RSA_PKCS_OAEP, {2048, 4096, CKF_DECRYPT | CKF_UNWRAP}},
    {CKM_RSA_PKCS_PSS, {2048, 4096, CKF_SIGN}},
};

static const struct pmech *kv_mechanisms(void *tok, CK_ULONG *count)
{
    *count = CMK_ARRAY_SIZE(kv_mechs);
    return kv_mechs;
}

static CK_RV kv_login(struct pcall *c, CK_USER_TYPE user,
                      const CK_UTF8CHAR *pin, CK_ULONG len)
{
    struct kv_token *kt = c->tok;

    if (user != CKU_USER)
        return CKR_USER_TYPE_INVALID;
    if (kt->pin == NULL)
        return CKR_OK; /* no PIN configured: any will do */
    if (len != kt->pin_len || ct_memcmp(pin, kt->pin, len) != 0)
        return CKR_PIN_INCORRECT;
    return CKR_OK;
}

/* ---- requests: challenge, token, retries ---- */

/* Parses a Bearer challenge: resource (or scope) and the tenant. A
 * challenge may give scope= alone (https://vault.azure.net/.default): the
 * SDKs take the resource from it then (azure-keyvault-keys,
 * _shared/http_challenge.py, get_resource and get_scope). */
static bool parse_challenge(const char *h, char **resource, char **tenant)
{
    char *res = NULL, *auth = NULL, *scope = NULL;
    const char *p;

    if (h == NULL || strncasecmp(h, "Bearer", 6) != 0)
        return false;
    for (p = h + 6; *p;) {
        const char *name, *val;
        size_t nlen, vlen;
        while (*p == ' ' || *p == ',')
            p++;
        name = p;
        while (*p && *p != '=')
            p++;
        nlen = (size_t)(p - name);
        if (*p != '=')
            break;
        p++;
        if (*p == '"') {
            val = ++p;
            while (*p && *p != '"')
                p++;
            vlen = (size_t)(p - val);
            if (*p == '"')
                p++;
        } else {
            val = p;
            while (*p && *p != ',')
                p++;
            vlen = (size_t)(p - val);
        }
        if (nlen == 8 && strncasecmp(name, "resource", 8) == 0) {
            free(res);
            res = strndup(val, vlen);
        } else if (nlen == 5 && strncasecmp(name, "scope", 5) == 0) {
            free(scope);
            scope = strndup(val, vlen);
        } else if ((nlen == 13 &&
                    strncasecmp(name, "authorization", 13) == 0) ||
                   (nlen == 17 &&
                    strncasecmp(name, "authorization_uri", 17) == 0)) {
            free(auth);
            auth = strndup(val, vlen);
        }
    }
    if (res == NULL && scope != NULL) {
        size_t sl = strlen(scope);
        if (sl > 9 && strcmp(scope + sl - 9, "/.default") == 0)
            scope[sl - 9] = '\0';
        res = scope;
        scope = NULL;
    }
    free(scope);
    if (res == NULL) {
        free(auth);
        return false;
    }
    while (strlen(res) > 0 && res[strlen(res) - 1] == '/')
        res[strlen(res) - 1] = '\0';
    *resource = res;
    *tenant = NULL;
    if (auth != NULL) {
        /* https://login.example/{tenant}[/...] */
        const char *s = strstr(auth, "://");
        s = s ? strchr(s + 3, '/') : NULL;
        if (s != NULL) {
            const char *e = strchr(s + 1, '/');
            *tenant = e ? strndup(s + 1, (size_t)(e - s - 1)) : strdup(s + 1);
        }
        free(auth);
    }
    return true;
}

/* The vault host must lie in the resource's domain, as the SDKs check. */
static bool resource_matches(const char *vault_host, const char *resource)
{
    const char *rh = strstr(resource, "://");
    size_t vl = strlen(vault_host), rl;

    if (rh == NULL)
        return false;
    rh += 3;
    rl = strlen(rh);
    return vl > rl + 1 && strcasecmp(vault_host + vl - rl, rh) == 0 &&
           vault_host[vl - rl - 1] == '.';
}

static bool retriable(const struct kv_response *r)
{
    if (r->curl != CURLE_OK) /* a certificate that failed stays so */
        return !kv_http_tls_failure(r->curl);
    return r->status == 408 || r->status == 429 || r->status == 500 ||
           r->status == 502 || r->status == 503 || r->status == 504;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts;

    if (ms <= 0)
        return;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

/* Backoff before retry n (0-based): Retry-After when given; otherwise
 * exponential from 800 ms (1 s for 429) with jitter of -20..+30 %. */
static int64_t backoff_ms(const struct kv_response *r, int n)
{
    unsigned char rnd;
    int64_t base;

    if (r->retry_after_ms >= 0)
        return r->retry_after_ms;
    base = (r->status == 429 ? 1000 : 800) * ((int64_t)1 << (n < 6 ? n : 6));
    RAND_bytes(&rnd, 1);
    return base * (80 + rnd % 51) / 100;
}

struct kv_result {
    long status;
    json_object *doc; /* parsed body of a 2xx answer */
    char code[64];    /* Key Vault's error code */
    char message[512];
};

static void result_clear(struct kv_result *res)
{
    json_object_put(res->doc);
    memset(res, 0, sizeof(*res));
}

static char *with_api_version(const struct kv_replica *rep, const char *path)
{
    const char *sep;

    if (strncmp(path, "https://", 8) == 0) {
        sep = strchr(path, '?') ? "&" : "?";
        if (strstr(path, "api-version=") != NULL)
            return strdup(path);
        return kv_strdup_printf("%s%sapi-version=%s", path, sep,
                                KV_API_VERSION);
    }
    sep = strchr(path, '?') ? "&" : "?";
    return kv_strdup_printf("%s%s%sapi-version=%s", rep->url, path, sep,
                            KV_API_VERSION);
}

/* host[:port] without a default :443. */
static size_t authority_len(const char *a, size_t len)
{
    if (len > 4 && memcmp(a + len - 4, ":443", 4) == 0)
        return len - 4;
    return len;
}

/*
 * Whether an absolute URL (a nextLink) is on the vault's own origin:
 * https, the vault's host and port (:443 or none). The vault's token goes
 * nowhere else; Microsoft's SDKs likewise keep the challenge per host and
 * give another host nothing until it passes its own challenge
 * (azure-keyvault-keys, _shared/challenge_auth_policy.py and
 * _shared/http_challenge_cache.py, keyed by the URL's netloc).
 */
static bool same_origin(const struct kv_replica *rep, const char *url)
{
    const char *a, *e;
    size_t al, hl;

    if (strncasecmp(url, "https://", 8) != 0)
        return false;
    a = url + 8;
    e = a + strcspn(a, "/?#");
    if (memchr(a, '@', (size_t)(e - a)) != NULL)
        return false; /* user information: not the vault */
    al = authority_len(a, (size_t)(e - a));
    hl = authority_len(rep->host, strlen(rep->host));
    return al == hl && strncasecmp(a, rep->host, al) == 0;
}

static bool circuit_allows(struct kv_token *kt, struct kv_replica *rep)
{
    int64_t now = kv_now_ms();
    bool ok = true;

    pthread_mutex_lock(&kt->lock);
    rep->asked = true;
    if (rep->failures >= KV_CIRCUIT_FAILURES) {
        if (now < rep->open_until_ms || rep->probing)
            ok = false; /* open: fail fast instead of piling up */
        else
            rep->probing = true; /* half-open: this call probes */
    }
    pthread_mutex_unlock(&kt->lock);
    if (!ok)
        cmk_debug("token %s: circuit of %s open, failing fast", kt->name,
                  rep->host);
    return ok;
}

/* Whether a call to rep would be made now (its breaker closed, or its
 * cool-down over and no probe under way). Under the lock. */
static bool rep_available_unlocked(const struct kv_replica *rep, int64_t now)
{
    return rep->failures < KV_CIRCUIT_FAILURES ||
           (now >= rep->open_until_ms && !rep->probing);
}

/*
 * The token's reachability, for offline-grace: unreachable when a call
 * found no vault of vault-url answering (the last replica tried), reached
 * again as soon as any vault answers.
 */
static void token_reach(struct kv_token *kt, bool unavailable)
{
    int64_t now = kv_now_ms();
    const char *what = kt->nrep > 1 ? "every vault of vault-url" : kt->host;

    pthread_mutex_lock(&kt->lock);
    if (!unavailable && kt->offline_since_ms != 0) {
        cmk_warning("token %s: %s is reachable again after %lld s; "
                    "offline-grace ends",
                    kt->name, kt->nrep > 1 ? call_host : kt->host,
                    (long long)(now - kt->offline_since_ms) / 1000);
        kt->offline_since_ms = 0;
    } else if (unavailable && kt->offline_since_ms == 0) {
        kt->offline_since_ms = kt->offline_logged_ms = now;
        cmk_warning("token %s: %s is unreachable; keys loaded within "
                    "refresh-interval + offline-grace (%ld s) keep serving "
                    "local operations and cached unwraps%s%s",
                    kt->name, what, kt->grace_ms / 1000,
                    kt->nrep > 1 ? ": " : "", kt->nrep > 1 ? kt->hosts : "");
    } else if (unavailable &&
               now - kt->offline_logged_ms >= KV_OFFLINE_LOG_MS) {
        kt->offline_logged_ms = now;
        cmk_warning("token %s: %s still unreachable, for %lld s", kt->name,
                    what, (long long)(now - kt->offline_since_ms) / 1000);
    }
    pthread_mutex_unlock(&kt->lock);
}

/* A replica's breaker and health after a call: latency_ms >= 0 when it
 * answered (any status), why when it did not or refused. */
static void circuit_record(struct kv_token *kt, struct kv_replica *rep,
                           bool unavailable, int64_t latency_ms,
                           const char *why)
{
    pthread_mutex_lock(&kt->lock);
    rep->probing = false;
    snprintf(rep->error, sizeof(rep->error), "%s", why ? why : "");
    if (latency_ms >= 0) {
        int64_t l = latency_ms > 0 ? latency_ms : 1; /* 0: none yet */
        rep->answered = true;
        rep->ewma_ms = rep->ewma_ms == 0 ? l : (rep->ewma_ms * 3 + l) / 4;
    }
    if (!unavailable) {
        if (rep->failures >= KV_CIRCUIT_FAILURES)
            cmk_info("token %s: %s answers again%s", kt->name, rep->host,
                     kt->nrep > 1 ? "; traffic returns to it" : "");
        rep->failures = 0;
    } else {
        rep->answered = false;
        if (++rep->failures >= KV_CIRCUIT_FAILURES) {
            rep->open_until_ms = kv_now_ms() + KV_CIRCUIT_OPEN_MS;
            if (rep->failures == KV_CIRCUIT_FAILURES)
                cmk_error("token %s: %s failed %d calls in a row; failing "
                          "fast for %d s before trying again",
                          kt->name, rep->host, rep->failures,
                          KV_CIRCUIT_OPEN_MS / 1000);
        }
    }
    pthread_mutex_unlock(&kt->lock);
}

/* An answer that is not what the REST API describes (docs/errors.md). */
static void malformed(struct kv_token *kt, const char *method, const char *path,
                      const char *why)
{
    cmk_error("token %s: %s %s: malformed answer from %s: %s", kt->name, method,
              path, call_host ? call_host : kt->host, why);
}

/*
 * One Key Vault call to one vault of vault-url with the whole retry
 * policy: the 401 challenge (once), a refused token (refreshed once),
 * retries of 408/429/5xx and transport errors with backoff, all within
 * the call's deadline. last: no other vault will be tried after this one
 * (its unreachability is the token's, for offline-grace).
 */
static CK_RV kv_call(struct kv_token *kt, struct kv_replica *rep,
                     struct pcall *c, const char *method, const char *path,
                     const char *body, int64_t deadline, bool last,
                     struct kv_result *res)
{
    char *url = with_api_version(rep, path), *token = NULL, *resource = NULL,
         *tenant = NULL;
    bool challenged = false, refreshed = false, unavailable = false;
    struct kv_request req;
    struct kv_response r;
    int attempt = 0;
    int64_t latency = -1;
    char why[160] = "";
    CK_RV rv = CKR_DEVICE_ERROR;

    memset(res, 0, sizeof(*res));
    call_host = rep->host;
    if (url == NULL)
        return CKR_HOST_MEMORY;
    if (!same_origin(rep, url)) {
        char shown[128];
        snprintf(shown, sizeof(shown), "%.*s", (int)strcspn(url, "?#"), url);
        cmk_error("token %s: the vault sent a link to %s, which is not on "
                  "%s: not following it (the vault's token goes only to the "
                  "vault)",
                  kt->name, shown, rep->host);
        free(url);
        c->device_error = 0;
        return CKR_DEVICE_ERROR;
    }
    call_unreachable = false;
    if (!circuit_allows(kt, rep)) {
        free(url);
        c->device_error = 0;
        call_unreachable = true;
        if (last)
            token_reach(kt, true);
        return CKR_DEVICE_ERROR;
    }
    for (;;) {
        long identity_status = 0;
        int64_t left = deadline - kv_now_ms();

        if (left <= 0) {
            cmk_error("token %s: %s %s: no answer from %s within the "
                      "deadline",
                      kt->name, method, path, rep->host);
            snprintf(why, sizeof(why), "no answer within the deadline");
            rv = CKR_DEVICE_ERROR;
            unavailable = true;
            break;
        }
        pthread_mutex_lock(&kt->lock);
        free(resource);
        free(tenant);
        resource = kt->resource ? strdup(kt->resource) : NULL;
        tenant = kt->tenant ? strdup(kt->tenant) : NULL;
        pthread_mutex_unlock(&kt->lock);
        if (resource != NULL && token == NULL) {
            rv = kv_auth_token(kt->auth, resource, tenant, refreshed, deadline,
                               &token, &identity_status);
            if (rv != CKR_OK) {
                c->device_error = (CK_ULONG)identity_status;
                /* Unreachable or 5xx/429: an outage; any other answer
                 * (the identity does not exist, a refused secret) is
                 * revocation evidence. */
                unavailable = identity_status <= 0 || identity_status == 410 ||
                              identity_status == 429 || identity_status >= 500;
                snprintf(why, sizeof(why), "no token (identity endpoint: %ld)",
                         identity_status);
                rv = CKR_DEVICE_ERROR;
                break;
            }
        }
        memset(&req, 0, sizeof(req));
        req.method = method;
        req.url = url;
        req.body = body;
        req.bearer = token;
        req.attempt = attempt;
        {
            int64_t t0 = kv_now_ms();
            if (kv_http_do(kt->http, &req, (long)left, &r) != 0) {
                kv_response_clear(&r);
                rv = CKR_HOST_MEMORY;
                break;
            }
            if (r.curl == CURLE_OK)
                latency = kv_now_ms() - t0;
        }
        res->status = r.status;
        c->device_error = (CK_ULONG)r.status;
        if (r.curl == CURLE_OK && r.status == 401) {
            char *nres = NULL, *nten = NULL;
            bool parsed = parse_challenge(r.www_authenticate, &nres, &nten);
            if (parsed && !resource_matches(rep->host, nres)) {
                cmk_error("token %s: the vault's challenge names resource %s, "
                          "which %s is not part of; refusing it",
                          kt->name, nres, rep->host);
                free(nres);
                free(nten);
                kv_response_clear(&r);
                rv = CKR_DEVICE_ERROR;
                break;
            }
            if (parsed) {
                pthread_mutex_lock(&kt->lock);
                free(kt->resource);
                free(kt->tenant);
                kt->resource = nres;
                kt->tenant = nten;
                pthread_mutex_unlock(&kt->lock);
            }
            kv_response_clear(&r);
            if (token == NULL && parsed && !challenged) {
                challenged = true; /* the first request of this vault */
                continue;
            }
            if (token != NULL && !refreshed) {
                /* Expired or revoked token: fetch a new one, once. */
                secure_free(token, strlen(token) + 1);
                token = NULL;
                refreshed = true;
                continue;
            }
            cmk_error("token %s: %s refused the credentials (401)", kt->name,
                      rep->host);
            snprintf(why, sizeof(why), "401: the credentials were refused");
            rv = CKR_DEVICE_ERROR;
            break;
        }
        if (r.curl == CURLE_OK && r.status >= 200 && r.status < 300) {
            char bad_body[128];
            res->doc = r.len > 0 ? kv_parse_body(r.body, r.len, bad_body,
                                                 sizeof(bad_body))
                                 : NULL;
            if (r.len > 0 && res->doc == NULL) {
                malformed(kt, method, path, bad_body);
                rv = CKR_DEVICE_ERROR;
            } else {
                rv = CKR_OK;
            }
            kv_response_clear(&r);
            break;
        }
        if (retriable(&r) && attempt < kt->retries) {
            int64_t wait = backoff_ms(&r, attempt);
            if (kv_now_ms() + wait < deadline) {
                cmk_info("token %s: %s %s: %ld %s; retry %d in %lld ms",
                         kt->name, method, path, r.status,
                         r.curl ? curl_easy_strerror(r.curl) : "", attempt + 1,
                         (long long)wait);
                kv_response_clear(&r);
                attempt++;
                sleep_ms(wait);
                continue;
            }
        }
        unavailable = retriable(&r);
        if (r.curl != CURLE_OK) {
            if (kv_http_tls_failure(r.curl)) /* the reason is logged */
                cmk_error("token %s: %s %s: not sent, %s's certificate was "
                          "not accepted",
                          kt->name, method, path, rep->host);
            else
                cmk_error("token %s: %s is unreachable: %s", kt->name,
                          rep->host, curl_easy_strerror(r.curl));
            snprintf(why, sizeof(why), "%s", curl_easy_strerror(r.curl));
            rv = CKR_DEVICE_ERROR;
        } else {
            if (unavailable)
                cmk_error("token %s: %s answered %ld after %d retries",
                          kt->name, rep->host, r.status, attempt);
            rv = kv_map_http(r.status, r.body, res->code, sizeof(res->code),
                             res->message, sizeof(res->message));
            snprintf(why, sizeof(why), "HTTP %ld%s%s", r.status,
                     res->code[0] ? " " : "", res->code);
            if (r.status == 404 && strcmp(res->code, "VaultNotFound") == 0) {
                /* A typo in vault-url, not an empty vault. */
                cmk_warning("token %s: the vault %s does not exist (404 "
                            "VaultNotFound: %s); check vault-url",
                            kt->name, rep->host, res->message);
                rv = CKR_DEVICE_ERROR;
            }
        }
        kv_response_clear(&r);
        break;
    }
    circuit_record(kt, rep, unavailable, latency, why);
    if (!unavailable || last)
        token_reach(kt, unavailable);
    call_unreachable = unavailable;
    if (token != NULL)
        secure_free(token, strlen(token) + 1);
    free(url);
    free(resource);
    free(tenant);
    return rv;
}

/* The vault's own message, on one line (RBAC messages hold CR LF). */
static void one_line(const char *in, char *out, size_t len)
{
    size_t i = 0;
    bool space = false;

    for (; *in != '\0' && i + 1 < len; in++) {
        if (*in == '\r' || *in == '\n' || *in == '\t' || *in == ' ') {
            space = i > 0;
            continue;
        }
        if ((unsigned char)*in < 0x20)
            continue;
        if (space && i + 2 < len)
            out[i++] = ' ';
        space = false;
        out[i++] = *in;
    }
    out[i] = '\0';
}

/*
 * The RBAC data action that covers an access-policy key permission
 * (learn.microsoft.com, "Azure built-in roles for Key Vault data plane
 * operations"; keys/read covers both get and list).
 */
static const char *rbac_action(const char *perm)
{
    if (strcmp(perm, "get") == 0 || strcmp(perm, "list") == 0)
        return "read";
    if (strcmp(perm, "update") == 0)
        return "write";
    return NULL; /* the others are "<perm>/action" */
}

/*
 * A message a person can act on, for a failed key operation. perm is the
 * key permission the refused request needed (access-policy name): a 403
 * names it, and the RBAC action that covers it; a 403 from the firewall
 * says it is the network rule, not the identity.
 */
static void explain(struct kv_token *kt, const char *key, const char *op,
                    const char *perm, const struct kv_result *res, CK_RV rv)
{
    const char *code = res->code[0] ? res->code : "";
    const char *host = call_host ? call_host : kt->host;
    char said[sizeof(res->message)], action[64];

    if (strcmp(code, "VaultNotFound") == 0)
        return; /* kv_call said so */
    one_line(res->message, said, sizeof(said));
    if (res->status == 403 && (strcmp(code, "KeyDisabled") == 0))
        cmk_error("key %s in %s is disabled: %s refused (403 %s); enable "
                  "the key or use another version",
                  key, host, op, code);
    else if (res->status == 403 && (strncmp(code, "KeyNotYetValid", 14) == 0 ||
                                    strncmp(code, "KeyExpired", 10) == 0))
        cmk_error("key %s in %s is outside its validity dates: %s refused "
                  "(403 %s)",
                  key, host, op, code);
    else if (res->status == 403 && strcmp(code, "KeyOperationForbidden") == 0)
        cmk_error("key %s in %s does not permit %s (403 %s): add the "
                  "operation to the key's key_ops (az keyvault key "
                  "set-attributes --ops); the vault said: %s",
                  key, host, op, code, said);
    else if (res->status == 403 && strcmp(code, "ForbiddenByFirewall") == 0)
        cmk_error("the network rules of %s refused this host: %s of key %s "
                  "(403 %s); this is the vault's firewall, not the "
                  "identity's permissions: allow this host's address in the "
                  "vault's networking settings or use a private endpoint; "
                  "the vault said: %s",
                  host, op, key, code, said);
    else if (res->status == 403) {
        const char *a = rbac_action(perm);
        snprintf(action, sizeof(action), "Microsoft.KeyVault/%s/keys/%s%s",
                 kt->mhsm ? "managedHsm" : "vaults", a ? a : perm,
                 a ? "" : "/action");
        cmk_error("access to key %s in %s was denied (403 %s): %s needs the "
                  "keys %s permission; grant the identity %s (access policy) "
                  "or a role with %s (RBAC); the vault said: %s",
                  key, host, code, op, perm, perm, action, said);
    } else if (res->status == 409)
        cmk_error("key %s in %s: %s refused (409 %s): the name is held by a "
                  "key being deleted or deleted but recoverable; recover or "
                  "purge it, or choose another name; the vault said: %s",
                  key, host, op, code, said);
    else if (res->status == 404)
        cmk_error("key %s was not found in %s (404 %s): it was deleted or "
                  "the version does not exist; recover it or use another",
                  key, host, code);
    else if (res->status == 400)
        cmk_error("key %s in %s: %s refused (400 %s): the data does not "
                  "fit this key",
                  key, host, op, code);
    else if (res->status != 0)
        cmk_error("key %s in %s: %s failed (%ld %s): %s", key, host, op,
                  res->status, code, cmk_rv_name(rv));
}

/* ---- keys and versions ---- */

static void cache_prune(struct kv_token *kt, struct kv_key *k, bool all);

static struct kv_key *key_get_unlocked(struct kv_token *kt, const char *name,
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

static struct kv_version *version_get_unlocked(struct kv_key *k,
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
static void spki_hash(const unsigned char *n, size_t nlen,
                      const unsigned char *e, size_t elen,
                      unsigned char out[32])
{
    EVP_PKEY *pk = rsa_pkey_from_parts(n, nlen, e, elen);
    unsigned char *der = NULL;
    unsigned int mdlen = 32;
    int len = pk != NULL ? i2d_PUBKEY(pk, &der) : -1;

    memset(out, 0, 32);
    if (len > 0)
        EVP_Digest(der, (size_t)len, out, &mdlen, EVP_sha256(), NULL);
    OPENSSL_free(der);
    EVP_PKEY_free(pk);
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
static struct kv_rver *rver_match_unlocked(struct kv_key *k, int r,
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
static bool version_enabled_unlocked(struct kv_token *kt,
                                     const struct kv_version *v)
{
    int r;

    if (!v->enabled)
        return false;
    for (r = 0; r < kt->nrep; r++) {
        struct kv_rver *x = rver_match_unlocked(v->key, r, v);
        if (x != NULL && !x->enabled)
            return false;
    }
    return true;
}

/*
 * Stores a key bundle (GET /keys/NAME[/VERSION]) read from replica rep.
 * From the replica the key's versions are listed from (ref), the bundle
 * is the version's; *out (if not NULL) gets the version, which lives as
 * long as the token. From any replica it is that replica's record.
 */
static CK_RV take_bundle(struct kv_token *kt, struct kv_replica *rep, bool ref,
                         struct kv_key *k, json_object *doc, const char *method,
                         const char *path, struct kv_version **out)
{
    struct kv_bundle b;
    struct kv_version *v = NULL;
    struct kv_rver *x;
    unsigned char spki[32];
    char why[128];
    CK_RV rv = kv_parse_bundle(doc, &b, why, sizeof(why));

    if (rv != CKR_OK) {
        malformed(kt, method, path, why);
        return rv;
    }
    if (b.n != NULL && b.e != NULL)
        spki_hash(b.n, b.nlen, b.e, b.elen, spki);
    pthread_mutex_lock(&kt->lock);
    x = rver_get_unlocked(k, rep->index, b.version, true);
    if (x != NULL) {
        x->read = b.n != NULL && b.e != NULL;
        if (x->read)
            memcpy(x->spki, spki, 32);
        x->present = true;
        if (b.has_attrs)
            rver_attrs(x, &b.attrs);
    }
    if (ref)
        v = version_get_unlocked(k, b.version);
    if (v != NULL) {
        free(v->kty);
        v->kty = strdup(b.kty);
        if (b.n != NULL && b.e != NULL) {
            free(v->n);
            free(v->e);
            v->n = b.n;
            v->nlen = b.nlen;
            v->e = b.e;
            v->elen = b.elen;
            memcpy(v->spki, spki, 32);
            b.n = b.e = NULL;
        }
        free(v->key_ops);
        v->key_ops = strdup(b.ops);
        if (b.has_attrs)
            set_attributes(v, &b.attrs);
        v->loaded = v->n != NULL && v->e != NULL && v->kty != NULL;
        v->read = true;
        v->present = true;
    }
    pthread_mutex_unlock(&kt->lock);
    if (out != NULL)
        *out = v;
    kv_bundle_clear(&b);
    return CKR_OK;
}

/* A 404 on the key: it was deleted, and its versions disappear. */
static void key_gone(struct kv_token *kt, struct kv_key *k)
{
    pthread_mutex_lock(&kt->lock);
    k->exists = false;
    k->loaded_at_ms = kv_now_ms();
    pthread_mutex_unlock(&kt->lock);
    cache_prune(kt, k, true);
}

/*
 * GET /keys/NAME/versions on rep, every page: marks the listed versions
 * present (the token's versions too when rep is the one they are listed
 * from). Returns CKR_OK; *refused when the identity may not list (403),
 * which is logged once for the replica and not asked again.
 */
static CK_RV list_versions(struct kv_token *kt, struct kv_replica *rep,
                           bool ref, struct pcall *c, struct kv_key *k,
                           const char *esc, int64_t deadline, bool *refused,
                           bool *gone)
{
    struct kv_result res;
    char *path = kv_strdup_printf("/keys/%s/versions?maxresults=25", esc);
    struct kv_version *v;
    struct kv_rver *x;
    CK_RV rv = CKR_OK;

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
            result_clear(&res);
            return CKR_OK;
        }
        if (res.status == 403 && strcmp(res.code, "ForbiddenByFirewall") != 0) {
            char said[sizeof(res.message)];
            one_line(res.message, said, sizeof(said));
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
            result_clear(&res);
            return CKR_OK;
        }
        if (rv != CKR_OK) {
            explain(kt, k->name, "list versions", "list", &res, rv);
            result_clear(&res);
            return rv;
        }
        rv = kv_parse_listing(res.doc, &l, why, sizeof(why));
        if (rv != CKR_OK) {
            malformed(kt, "GET", "(versions)", why);
            result_clear(&res);
            return rv;
        }
        pthread_mutex_lock(&kt->lock);
        for (i = 0; i < l.n; i++) {
            char kname[256], version[128];
            if (!kv_split_kid(l.items[i].kid, kname, sizeof(kname), version,
                              sizeof(version)))
                continue;
            x = rver_get_unlocked(k, rep->index, version, true);
            if (x != NULL) {
                x->present = true;
                if (l.items[i].has_attrs)
                    rver_attrs(x, &l.items[i].attrs);
            }
            v = ref ? version_get_unlocked(k, version) : NULL;
            if (v == NULL)
                continue;
            v->present = true;
            if (l.items[i].has_attrs)
                set_attributes(v, &l.items[i].attrs);
        }
        pthread_mutex_unlock(&kt->lock);
        if (l.next != NULL)
            path = strdup(l.next);
        kv_listing_clear(&l);
        result_clear(&res);
    }
    return rv;
}

/* Marks replica r's versions of k absent until a listing finds them. */
static void rver_unmark(struct kv_token *kt, struct kv_key *k, int r,
                        const char *keep)
{
    struct kv_rver *x;

    pthread_mutex_lock(&kt->lock);
    for (x = k->rv[r]; x != NULL; x = x->next)
        x->present = keep != NULL && strcasecmp(x->version, keep) == 0;
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
                        int64_t deadline, CK_RV *rvp)
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
    if (rv != CKR_OK && call_unreachable) {
        result_clear(&res);
        free(path);
        return REP_OK;
    }
    if (rv == CKR_KEY_HANDLE_INVALID && res.status == 404) {
        pthread_mutex_lock(&kt->lock);
        k->gone_on |= 1u << rep->index;
        pthread_mutex_unlock(&kt->lock);
        cmk_error("token %s: key %s is not in %s, a replica of %s (404 %s): "
                  "the key is treated as deleted (a replica never undoes a "
                  "revocation); copy it there with backup and restore, or "
                  "remove the replica from vault-url",
                  kt->name, k->name, rep->url, kt->vault_url, res.code);
        result_clear(&res);
        free(path);
        rver_unmark(kt, k, rep->index, NULL);
        return REP_GONE;
    }
    if (rv != CKR_OK) {
        explain(kt, k->name, "get", "get", &res, rv);
        *rvp = rv == CKR_HOST_MEMORY || res.status == 0 ? CKR_DEVICE_ERROR : rv;
        result_clear(&res);
        free(path);
        return REP_REFUSED;
    }
    rv = take_bundle(kt, rep, false, k, res.doc, "GET", path, NULL);
    result_clear(&res);
    free(path);
    if (rv != CKR_OK)
        return REP_OK;
    pthread_mutex_lock(&kt->lock);
    k->gone_on &= ~(1u << rep->index);
    for (x = k->rv[rep->index]; x != NULL; x = x->next)
        if (x->present)
            cur = x;
    refused = rep->list_refused;
    pthread_mutex_unlock(&kt->lock);
    if (!refused) {
        rver_unmark(kt, k, rep->index, cur ? cur->version : NULL);
        rv =
            list_versions(kt, rep, false, c, k, esc, deadline, &refused, &gone);
        if (gone) {
            pthread_mutex_lock(&kt->lock);
            k->gone_on |= 1u << rep->index;
            pthread_mutex_unlock(&kt->lock);
            rver_unmark(kt, k, rep->index, NULL);
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
                (cur == NULL || strcasecmp(v->version, cur->version) != 0))
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
            take_bundle(kt, rep, false, k, res.doc, "GET", path, NULL);
        } else if (res.status == 404) {
            pthread_mutex_lock(&kt->lock);
            x = rver_get_unlocked(k, rep->index, fetch[i], false);
            if (x != NULL)
                x->present = false;
            pthread_mutex_unlock(&kt->lock);
        }
        result_clear(&res);
        free(path);
        if (rv != CKR_OK && call_unreachable)
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
        if (v->present && v->loaded && rver_match_unlocked(k, r, v) == NULL)
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
                           rver_match_unlocked(k, r, v) == NULL;
            if (differs && !(v->differs_logged & bit)) {
                char hex[17];
                int i;
                for (i = 0; i < 8; i++)
                    snprintf(hex + 2 * i, 3, "%02x", v->spki[i]);
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
static CK_RV load_key(struct kv_token *kt, struct pcall *c, const char *name,
                      const char *want, int64_t deadline)
{
    struct kv_key *k;
    struct kv_version *v, *latest = NULL;
    struct kv_replica *rep = NULL;
    struct kv_result res;
    char *path, *esc = kv_url_escape(name), **fetch = NULL;
    size_t n_fetch = 0, i, ncand = 0;
    bool list, refused = false, gone = false;
    int r, cand[KV_MAX_REPLICAS];
    CK_RV rv = CKR_DEVICE_ERROR;

    if (esc == NULL)
        return CKR_HOST_MEMORY;
    pthread_mutex_lock(&kt->lock);
    k = key_get_unlocked(kt, name, true);
    if (k != NULL && want != NULL &&
        (v = version_get_unlocked(k, want)) != NULL)
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
    path = kv_strdup_printf("/keys/%s", esc);
    for (i = 0; path != NULL && i < ncand; i++) {
        /* An unreachable vault leaves the others time to answer. */
        int64_t left = deadline - kv_now_ms();
        int64_t until = kv_now_ms() + left / (int64_t)(ncand - i);
        rep = &kt->rep[cand[i]];
        rv =
            kv_call(kt, rep, c, "GET", path, NULL, until, i == ncand - 1, &res);
        if (rv == CKR_OK || !call_unreachable)
            break;
        result_clear(&res);
    }
    free(path);
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
        result_clear(&res);
        free(esc);
        key_gone(kt, k);
        return CKR_OK;
    }
    if (rv != CKR_OK) {
        if (i < ncand)
            explain(kt, name, "get", "get", &res, rv);
        result_clear(&res);
        free(esc);
        return rv;
    }
    pthread_mutex_lock(&kt->lock);
    k->ref = rep->index;
    k->gone_on &= ~(1u << rep->index);
    pthread_mutex_unlock(&kt->lock);
    path = kv_strdup_printf("/keys/%s", esc);
    rv = take_bundle(kt, rep, true, k, res.doc, "GET", path ? path : name,
                     &latest);
    free(path);
    result_clear(&res);
    if (rv != CKR_OK || latest == NULL) {
        free(esc);
        return rv != CKR_OK ? rv : CKR_HOST_MEMORY;
    }

    /* The other versions. */
    pthread_mutex_lock(&kt->lock);
    list = !rep->list_refused;
    if (list)
        for (v = k->versions; v != NULL; v = v->next)
            v->present = v == latest;
    pthread_mutex_unlock(&kt->lock);
    if (list) {
        rver_unmark(kt, k, rep->index, latest->version);
        rv = list_versions(kt, rep, true, c, k, esc, deadline, &refused, &gone);
        if (rv != CKR_OK || gone) {
            free(esc);
            if (gone)
                key_gone(kt, k);
            return rv;
        }
    }
    pthread_mutex_lock(&kt->lock);
    free(k->latest);
    k->latest = strdup(latest->version);
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
    k->exists = k->gone_on == 0;
    pthread_mutex_unlock(&kt->lock);
    rv = fetch != NULL && k->latest != NULL ? CKR_OK : CKR_HOST_MEMORY;
    for (i = 0; rv == CKR_OK && i < n_fetch; i++) {
        path = fetch[i] ? kv_strdup_printf("/keys/%s/%s", esc, fetch[i]) : NULL;
        rv = path ? kv_call(kt, rep, c, "GET", path, NULL, deadline,
                            kt->nrep == 1, &res)
                  : CKR_HOST_MEMORY;
        if (rv == CKR_OK) {
            rv = take_bundle(kt, rep, true, k, res.doc, "GET", path, NULL);
        } else if (res.status == 404) {
            rv = CKR_OK; /* deleted since, or never was */
            pthread_mutex_lock(&kt->lock);
            v = version_get_unlocked(k, fetch[i]);
            if (v != NULL)
                v->present = v->named = false;
            pthread_mutex_unlock(&kt->lock);
        } else {
            explain(kt, name, "get", "get", &res, rv);
        }
        result_clear(&res);
        free(path);
    }
    for (i = 0; fetch != NULL && i < n_fetch; i++)
        free(fetch[i]);
    free(fetch);
    /* The replicas: revocation evidence from any of them stops the key. */
    for (r = 0; rv == CKR_OK && r < kt->nrep; r++) {
        CK_RV rrv = CKR_OK;
        int got;
        if (r <= rep->index)
            continue; /* the one read above, or found unreachable */
        got = load_replica(kt, &kt->rep[r], c, k, esc, deadline, &rrv);
        if (got == REP_GONE) {
            free(esc);
            key_gone(kt, k);
            return CKR_OK;
        }
        if (got == REP_REFUSED) {
            call_unreachable = false;
            rv = rrv;
        }
    }
    free(esc);
    if (rv == CKR_OK) {
        if (kt->nrep > 1)
            log_differences(kt, k);
        pthread_mutex_lock(&kt->lock);
        k->exists = k->gone_on == 0;
        k->loaded_at_ms = kv_now_ms();
        pthread_mutex_unlock(&kt->lock);
        cache_prune(kt, k, false); /* versions revoked since */
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
        if (rv != CKR_OK && call_unreachable && first && r + 1 < kt->nrep) {
            result_clear(&res);
            rep = &kt->rep[++r];
            continue; /* the first page from the next vault */
        }
        first = false;
        free(path);
        path = NULL;
        if (rv != CKR_OK && res.status == 403 &&
            strcmp(res.code, "ForbiddenByFirewall") != 0) {
            char said[sizeof(res.message)];
            one_line(res.message, said, sizeof(said));
            cmk_error("token %s: listing the keys of %s was denied (403 %s): "
                      "a search without a label lists the vault, which needs "
                      "the keys list permission; grant list, or name the keys "
                      "in keys = (then get, wrapKey and unwrapKey are "
                      "enough); the vault said: %s",
                      kt->name, rep->host, res.code, said);
            result_clear(&res);
            return rv;
        }
        if (rv != CKR_OK) {
            explain(kt, "(all)", "list keys", "list", &res, rv);
            result_clear(&res);
            return rv;
        }
        rv = kv_parse_listing(res.doc, &l, why, sizeof(why));
        if (rv != CKR_OK) {
            malformed(kt, "GET", "/keys", why);
            result_clear(&res);
            return rv;
        }
        pthread_mutex_lock(&kt->lock);
        for (i = 0; i < l.n; i++) {
            const char *p = strstr(l.items[i].kid, "/keys/");
            if (p != NULL && strchr(p + 6, '/') == NULL &&
                config_list_allows(kt->allow, p + 6))
                key_get_unlocked(kt, p + 6, true);
        }
        pthread_mutex_unlock(&kt->lock);
        if (l.next != NULL)
            path = strdup(l.next);
        kv_listing_clear(&l);
        result_clear(&res);
    }
    pthread_mutex_lock(&kt->lock);
    kt->names_loaded_at_ms = kv_now_ms();
    pthread_mutex_unlock(&kt->lock);
    return rv;
}

static bool has_op(const char *ops, const char *op)
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
static struct kv_version *current_unlocked(struct kv_token *kt,
                                           struct kv_key *k)
{
    struct kv_version *v;

    if (k->latest == NULL)
        return NULL;
    for (v = k->versions; v != NULL; v = v->next)
        if (strcasecmp(v->version, k->latest) == 0)
            return v->present && v->loaded && version_enabled_unlocked(kt, v)
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
        struct kv_rver *x = rver_match_unlocked(v->key, r, v);
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

static int version_objects_unlocked(struct kv_token *kt, struct kv_version *v,
                                    bool current, struct pobj *priv,
                                    struct pobj *pub)
{
    struct rsa_key_desc d;
    char uid[512], label[512];
    long long now = (long long)time(NULL);
    bool in_dates =
        (v->nbf == 0 || now >= v->nbf) && (v->exp == 0 || now < v->exp);
    bool enabled = version_enabled_unlocked(kt, v);
    char *replicas = replicas_text_unlocked(kt, v);
    int r;

    (void)in_dates;
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
    d.decrypt = enabled && has_op(v->key_ops, "decrypt");
    d.unwrap = enabled && has_op(v->key_ops, "unwrapKey");
    d.sign = enabled && has_op(v->key_ops, "sign");
    /* A wrap under a key that can no longer unwrap is refused here. */
    d.encrypt = enabled && has_op(v->key_ops, "encrypt");
    d.wrap = d.unwrap && has_op(v->key_ops, "wrapKey");
    d.verify = has_op(v->key_ops, "verify");
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
    d.refused = kt->list_refused ? "list" : "";
    d.replicas = replicas;
    r = rsa_key_objects(&d, priv, pub);
    free(replicas);
    if (r == 0) {
        priv->ref = v;
        pub->ref = v;
    }
    return r;
}

static bool stale(int64_t at, long refresh_ms)
{
    if (at == 0)
        return true;
    if (refresh_ms <= 0)
        return false; /* refresh-interval = 0: only at start */
    return kv_now_ms() - at >= refresh_ms;
}

static CK_RV kv_list(struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
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
        if (ia != NULL && ia->pValue != NULL && ia->ulValueLen == 16) {
            const CK_BYTE *b = ia->pValue;
            for (i = 0; i < 16; i++)
                snprintf(want + 2 * i, 3, "%02x", b[i]);
        }
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
        need = stale(kt->names_loaded_at_ms, kt->refresh_ms);
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
        key = key_get_unlocked(kt, names[i], true);
        need = key != NULL && stale(key->loaded_at_ms, kt->refresh_ms) &&
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
            rv = load_key(kt, c, names[i], want[0] ? want : NULL, deadline);
            if (rv != CKR_OK && first_error == CKR_OK)
                first_error = rv;
        }
    }

    pthread_mutex_lock(&kt->lock);
    for (i = 0; i < n_names; i++) {
        struct kv_version *v, *cur;
        key = key_get_unlocked(kt, names[i], false);
        if (key == NULL || !key->exists)
            continue;
        cur = current_unlocked(kt, key);
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
            if (version_objects_unlocked(kt, v, v == cur, &out[k],
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

static void kv_ref_free(void *tok, void *ref)
{
    /* Versions live as long as the token. */
}

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
            struct kv_rver *x = rver_match_unlocked(v->key, r, v);
            if (x == NULL || rep_available_unlocked(&kt->rep[r], now) != !pass)
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
        if (!rep_available_unlocked(rp, now) || rp->ewma_ms == 0)
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
    char *b64 = NULL, *body = NULL, *path = NULL, *name, *esc;
    char why[128], *vers[KV_MAX_REPLICAS] = {NULL};
    int order[KV_MAX_REPLICAS], n = 0, i;
    unsigned char *dec = NULL;
    size_t declen = 0, deccap = 0;
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
    b64 = kv_b64url_encode(in + skip, inlen - skip);
    if (b64 != NULL)
        body = kv_strdup_printf("{\"alg\":\"%s\",\"value\":\"%s\"}", alg, b64);
    if (esc == NULL || body == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (i = 0; i < n; i++) {
        struct kv_replica *rep = &kt->rep[order[i]];
        int64_t left = deadline - kv_now_ms();
        free(path);
        path = vers[i]
                   ? kv_strdup_printf("/keys/%s/%s/%s", esc, vers[i], verbs[op])
                   : NULL;
        if (path == NULL) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        /* An unreachable vault leaves the next one time to answer. */
        rv = kv_call(kt, rep, c, "POST", path, body,
                     kv_now_ms() + left / (n - i), i == n - 1, &res);
        if (rv == CKR_OK || !call_unreachable || i == n - 1)
            break;
        result_clear(&res);
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
        if (res.status == 400 && op == POP_SIGN)
            rv = CKR_DATA_INVALID;
        explain(kt, name, verbs[op], op == POP_UNWRAP ? "unwrapKey" : verbs[op],
                &res, rv);
        result_clear(&res);
        goto out;
    }
    rv = kv_parse_result(res.doc, &dec, &declen, &deccap, why, sizeof(why));
    if (rv != CKR_OK) {
        malformed(kt, "POST", path, why);
    } else if (declen > *outlen) {
        rv = CKR_BUFFER_TOO_SMALL;
    } else {
        memcpy(out, dec, declen);
        *outlen = (CK_ULONG)declen;
    }
    result_clear(&res);
out:
    if (dec != NULL)
        secure_free(dec, deccap);
    if (b64 != NULL)
        secure_free(b64, strlen(b64) + 1);
    if (body != NULL)
        secure_free(body, strlen(body) + 1);
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

    rv = load_key(kt, c, name, NULL, deadline);
    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&kt->lock);
    k = key_get_unlocked(kt, name, false);
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
    rv = kv_call(kt, &kt->rep[0], c, "POST", path, body, deadline, true, &res);
    if (rv != CKR_OK) {
        explain(kt, name, exists && bits == 0 ? "rotate" : "create",
                exists && bits == 0 ? "rotate" : "create", &res, rv);
        /* Codes C_GenerateKeyPair may return: a 409 (the name held by a
         * deleted key) is the label's value; a 403 or 404 the function. */
        if (res.status == 409)
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
        else if (res.status == 403 || rv == CKR_KEY_HANDLE_INVALID)
            rv = CKR_FUNCTION_FAILED;
        result_clear(&res);
        goto out;
    }
    {
        struct kv_bundle b;
        char why[128];
        rv = kv_parse_bundle(res.doc, &b, why, sizeof(why));
        if (rv != CKR_OK) {
            malformed(kt, "POST", path, why);
            result_clear(&res);
            goto out;
        }
        snprintf(version, sizeof(version), "%s", b.version);
        kv_bundle_clear(&b);
    }
    pthread_mutex_lock(&kt->lock);
    k = key_get_unlocked(kt, name, true);
    pthread_mutex_unlock(&kt->lock);
    if (k != NULL)
        rv = take_bundle(kt, &kt->rep[0], true, k, res.doc, "POST", path, NULL);
    result_clear(&res);
    if (rv != CKR_OK)
        goto out;
    cmk_info("token %s: key %s has a new version %s", kt->name, name, version);
    /* Reload so that the new version is current and the old relabelled. */
    rv = load_key(kt, c, name, NULL, deadline);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&kt->lock);
    k = key_get_unlocked(kt, name, false);
    v = k ? version_get_unlocked(k, version) : NULL;
    if (v != NULL && v->loaded)
        r = version_objects_unlocked(kt, v, current_unlocked(kt, k) == v,
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
static void cache_prune(struct kv_token *kt, struct kv_key *k, bool all)
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
            !version_enabled_unlocked(kt, v) ||
            !has_op(v->key_ops, "unwrapKey"))
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
    need = stale(v->key->loaded_at_ms, kt->refresh_ms);
    if (need)
        name = strdup(v->key->name);
    pthread_mutex_unlock(&kt->lock);
    if (need) {
        if (name == NULL)
            return CKR_HOST_MEMORY;
        rv = load_key(kt, c, name, NULL, kv_now_ms() + kt->deadline_ms);
        if (rv != CKR_OK && call_unreachable && kt->grace_ms > 0) {
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
            cache_prune(kt, v->key, true);
            return rv;
        }
    }
    pthread_mutex_lock(&kt->lock);
    if (!v->key->exists || !v->present)
        rv = CKR_KEY_HANDLE_INVALID;
    else if (!version_enabled_unlocked(kt, v))
        rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
    else if (use != USE_REMOTE &&
             (!has_op(v->key_ops, ops[use][0]) ||
              !has_op(v->key_ops, ops[use][1]) ||
              (use != USE_UNWRAP && ((v->nbf != 0 && now < v->nbf) ||
                                     (v->exp != 0 && now >= v->exp)))))
        rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
    pthread_mutex_unlock(&kt->lock);
    if (rv != CKR_OK) {
        cache_prune(kt, v->key, false);
        cmk_error("token %s: version %s of key %s can no longer be used "
                  "(%s)",
                  kt->name, v->version, v->key->name, cmk_rv_name(rv));
    }
    return rv;
}

static CK_RV kv_check_public(struct pcall *c, void *key, bool wrap)
{
    return version_usable(c->tok, c, key, wrap ? USE_WRAP : USE_ENCRYPT);
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
               call_unreachable) {
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
        cache_prune(kt, v->key, true);
    return rv;
}

static CK_RV kv_generate_random(struct pcall *c, CK_BYTE *out, CK_ULONG len)
{
    (void)c;
    return RAND_bytes(out, (int)len) == 1 ? CKR_OK : CKR_FUNCTION_FAILED;
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
    .generate_key_pair = kv_generate_key_pair,
    .generate_random = kv_generate_random,
};
