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

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "audit.h"
#include "debug.h"
#include "kv-cache.h"
#include "kv-parse.h"
#include "kv.h"
#include "rsa.h"
#include "secure.h"

struct kv_key;

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
    struct kv_version *next;
};

struct kv_key {
    char *name;
    char *latest; /* the version GET /keys/NAME answered: the current one */
    struct kv_version *versions;
    int64_t loaded_at_ms; /* 0: never */
    bool exists;
    bool not_rsa; /* its current version is EC or oct: skipped, not reloaded */
    struct kv_key *next;
};

struct kv_token {
    pthread_mutex_t lock; /* keys, versions, the challenge */
    char *name;           /* the [token] section */
    char *vault_url;      /* https://host[:port], no trailing slash */
    char *host;           /* host[:port] */
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
    /* Circuit breaker, under lock: after KV_CIRCUIT_FAILURES calls in a row
     * that found the vault unavailable, calls fail fast for
     * KV_CIRCUIT_OPEN_MS; then one call probes. */
    int failures;
    int64_t open_until_ms;
    bool probing;
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

/* ---- configuration ---- */

static void kv_close(void *tok, bool in_child)
{
    struct kv_token *kt = tok;
    struct kv_key *k, *kn;
    struct kv_version *v, *vn;

    if (kt == NULL)
        return;
    for (k = kt->keys; k != NULL; k = kn) {
        kn = k->next;
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
    free(kt->vault_url);
    free(kt->host);
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
    if (strncmp(url, "https://", 8) != 0 || strlen(url) < 10) {
        rv = bad(err, errlen, cfg, "vault-url", "must be an https:// URL");
        goto fail;
    }
    kt->vault_url = strdup(url);
    while (kt->vault_url[strlen(kt->vault_url) - 1] == '/')
        kt->vault_url[strlen(kt->vault_url) - 1] = '\0';
    kt->host = strdup(kt->vault_url + 8);
    if (strchr(kt->host, '/') != NULL) {
        rv = bad(err, errlen, cfg, "vault-url",
                 "must name the vault only, without a path");
        goto fail;
    }
    kt->mhsm = strstr(kt->host, ".managedhsm.") != NULL;

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

static char *with_api_version(const struct kv_token *kt, const char *path)
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
    return kv_strdup_printf("%s%s%sapi-version=%s", kt->vault_url, path, sep,
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
static bool same_origin(const struct kv_token *kt, const char *url)
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
    hl = authority_len(kt->host, strlen(kt->host));
    return al == hl && strncasecmp(a, kt->host, al) == 0;
}

static bool circuit_allows(struct kv_token *kt)
{
    int64_t now = kv_now_ms();
    bool ok = true;

    pthread_mutex_lock(&kt->lock);
    if (kt->failures >= KV_CIRCUIT_FAILURES) {
        if (now < kt->open_until_ms || kt->probing)
            ok = false; /* open: fail fast instead of piling up */
        else
            kt->probing = true; /* half-open: this call probes */
    }
    pthread_mutex_unlock(&kt->lock);
    if (!ok)
        cmk_debug("token %s: circuit open, failing fast", kt->name);
    return ok;
}

static void circuit_record(struct kv_token *kt, bool unavailable)
{
    int64_t now = kv_now_ms();

    pthread_mutex_lock(&kt->lock);
    kt->probing = false;
    if (!unavailable && kt->offline_since_ms != 0) {
        cmk_warning("token %s: %s is reachable again after %lld s; "
                    "offline-grace ends",
                    kt->name, kt->host,
                    (long long)(now - kt->offline_since_ms) / 1000);
        kt->offline_since_ms = 0;
    } else if (unavailable && kt->offline_since_ms == 0) {
        kt->offline_since_ms = kt->offline_logged_ms = now;
        cmk_warning("token %s: %s is unreachable; keys loaded within "
                    "refresh-interval + offline-grace (%ld s) keep serving "
                    "local operations and cached unwraps",
                    kt->name, kt->host, kt->grace_ms / 1000);
    } else if (unavailable &&
               now - kt->offline_logged_ms >= KV_OFFLINE_LOG_MS) {
        kt->offline_logged_ms = now;
        cmk_warning("token %s: %s still unreachable, for %lld s", kt->name,
                    kt->host, (long long)(now - kt->offline_since_ms) / 1000);
    }
    if (!unavailable) {
        if (kt->failures >= KV_CIRCUIT_FAILURES)
            cmk_info("token %s: %s answers again", kt->name, kt->host);
        kt->failures = 0;
    } else if (++kt->failures >= KV_CIRCUIT_FAILURES) {
        kt->open_until_ms = kv_now_ms() + KV_CIRCUIT_OPEN_MS;
        if (kt->failures == KV_CIRCUIT_FAILURES)
            cmk_error("token %s: %s failed %d calls in a row; failing fast "
                      "for %d s before trying again",
                      kt->name, kt->host, kt->failures,
                      KV_CIRCUIT_OPEN_MS / 1000);
    }
    pthread_mutex_unlock(&kt->lock);
}

/* An answer that is not what the REST API describes (docs/errors.md). */
static void malformed(struct kv_token *kt, const char *method, const char *path,
                      const char *why)
{
    cmk_error("token %s: %s %s: malformed answer from %s: %s", kt->name, method,
              path, kt->host, why);
}

/*
 * One Key Vault call with the whole retry policy: the 401 challenge (once),
 * a refused token (refreshed once), retries of 408/429/5xx and transport
 * errors with backoff, all within the call's deadline.
 */
static CK_RV kv_call(struct kv_token *kt, struct pcall *c, const char *method,
                     const char *path, const char *body, int64_t deadline,
                     struct kv_result *res)
{
    char *url = with_api_version(kt, path), *token = NULL, *resource = NULL,
         *tenant = NULL;
    bool challenged = false, refreshed = false, unavailable = false;
    struct kv_request req;
    struct kv_response r;
    int attempt = 0;
    CK_RV rv = CKR_DEVICE_ERROR;

    memset(res, 0, sizeof(*res));
    if (url == NULL)
        return CKR_HOST_MEMORY;
    if (!same_origin(kt, url)) {
        char shown[128];
        snprintf(shown, sizeof(shown), "%.*s", (int)strcspn(url, "?#"), url);
        cmk_error("token %s: the vault sent a link to %s, which is not on "
                  "%s: not following it (the vault's token goes only to the "
                  "vault)",
                  kt->name, shown, kt->host);
        free(url);
        c->device_error = 0;
        return CKR_DEVICE_ERROR;
    }
    call_unreachable = false;
    if (!circuit_allows(kt)) {
        free(url);
        c->device_error = 0;
        call_unreachable = true;
        return CKR_DEVICE_ERROR;
    }
    for (;;) {
        long identity_status = 0;
        int64_t left = deadline - kv_now_ms();

        if (left <= 0) {
            cmk_error("token %s: %s %s: no answer within the deadline",
                      kt->name, method, path);
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
        if (kv_http_do(kt->http, &req, (long)left, &r) != 0) {
            kv_response_clear(&r);
            rv = CKR_HOST_MEMORY;
            break;
        }
        res->status = r.status;
        c->device_error = (CK_ULONG)r.status;
        if (r.curl == CURLE_OK && r.status == 401) {
            char *nres = NULL, *nten = NULL;
            bool parsed = parse_challenge(r.www_authenticate, &nres, &nten);
            if (parsed && !resource_matches(kt->host, nres)) {
                cmk_error("token %s: the vault's challenge names resource %s, "
                          "which %s is not part of; refusing it",
                          kt->name, nres, kt->host);
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
            cmk_error("token %s: the vault refused the credentials (401)",
                      kt->name);
            rv = CKR_DEVICE_ERROR;
            break;
        }
        if (r.curl == CURLE_OK && r.status >= 200 && r.status < 300) {
            char why[128];
            res->doc = r.len > 0
                           ? kv_parse_body(r.body, r.len, why, sizeof(why))
                           : NULL;
            if (r.len > 0 && res->doc == NULL) {
                malformed(kt, method, path, why);
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
                          kt->name, method, path, kt->host);
            else
                cmk_error("token %s: %s is unreachable: %s", kt->name, kt->host,
                          curl_easy_strerror(r.curl));
            rv = CKR_DEVICE_ERROR;
        } else {
            if (unavailable)
                cmk_error("token %s: %s answered %ld after %d retries",
                          kt->name, kt->host, r.status, attempt);
            rv = kv_map_http(r.status, r.body, res->code, sizeof(res->code),
                             res->message, sizeof(res->message));
            if (r.status == 404 && strcmp(res->code, "VaultNotFound") == 0) {
                /* A typo in vault-url, not an empty vault. */
                cmk_warning("token %s: the vault %s does not exist (404 "
                            "VaultNotFound: %s); check vault-url",
                            kt->name, kt->host, res->message);
                rv = CKR_DEVICE_ERROR;
            }
        }
        kv_response_clear(&r);
        break;
    }
    circuit_record(kt, unavailable);
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
    char said[sizeof(res->message)], action[64];

    if (strcmp(code, "VaultNotFound") == 0)
        return; /* kv_call said so */
    one_line(res->message, said, sizeof(said));
    if (res->status == 403 && (strcmp(code, "KeyDisabled") == 0))
        cmk_error("key %s in %s is disabled: %s refused (403 %s); enable "
                  "the key or use another version",
                  key, kt->host, op, code);
    else if (res->status == 403 && (strncmp(code, "KeyNotYetValid", 14) == 0 ||
                                    strncmp(code, "KeyExpired", 10) == 0))
        cmk_error("key %s in %s is outside its validity dates: %s refused "
                  "(403 %s)",
                  key, kt->host, op, code);
    else if (res->status == 403 && strcmp(code, "KeyOperationForbidden") == 0)
        cmk_error("key %s in %s does not permit %s (403 %s): add the "
                  "operation to the key's key_ops (az keyvault key "
                  "set-attributes --ops); the vault said: %s",
                  key, kt->host, op, code, said);
    else if (res->status == 403 && strcmp(code, "ForbiddenByFirewall") == 0)
        cmk_error("the network rules of %s refused this host: %s of key %s "
                  "(403 %s); this is the vault's firewall, not the "
                  "identity's permissions: allow this host's address in the "
                  "vault's networking settings or use a private endpoint; "
                  "the vault said: %s",
                  kt->host, op, key, code, said);
    else if (res->status == 403) {
        const char *a = rbac_action(perm);
        snprintf(action, sizeof(action), "Microsoft.KeyVault/%s/keys/%s%s",
                 kt->mhsm ? "managedHsm" : "vaults", a ? a : perm,
                 a ? "" : "/action");
        cmk_error("access to key %s in %s was denied (403 %s): %s needs the "
                  "keys %s permission; grant the identity %s (access policy) "
                  "or a role with %s (RBAC); the vault said: %s",
                  key, kt->host, code, op, perm, perm, action, said);
    } else if (res->status == 409)
        cmk_error("key %s in %s: %s refused (409 %s): the name is held by a "
                  "key being deleted or deleted but recoverable; recover or "
                  "purge it, or choose another name; the vault said: %s",
                  key, kt->host, op, code, said);
    else if (res->status == 404)
        cmk_error("key %s was not found in %s (404 %s): it was deleted or "
                  "the version does not exist; recover it or use another",
                  key, kt->host, code);
    else if (res->status == 400)
        cmk_error("key %s in %s: %s refused (400 %s): the data does not "
                  "fit this key",
                  key, kt->host, op, code);
    else if (res->status != 0)
        cmk_error("key %s in %s: %s failed (%ld %s): %s", key, kt->host, op,
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

/* Stores a key bundle (GET /keys/NAME[/VERSION]) in its version; *out (if
 * not NULL) gets the version, which lives as long as the token. */
static CK_RV take_bundle(struct kv_token *kt, struct kv_key *k,
                         json_object *doc, const char *method, const char *path,
                         struct kv_version **out)
{
    struct kv_bundle b;
    struct kv_version *v;
    char why[128];
    CK_RV rv = kv_parse_bundle(doc, &b, why, sizeof(why));

    if (rv != CKR_OK) {
        malformed(kt, method, path, why);
        return rv;
    }
    pthread_mutex_lock(&kt->lock);
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
 * GET /keys/NAME/versions, every page: marks the listed versions present.
 * Returns CKR_OK; *refused when the identity may not list (403), which is
 * logged once for the token and not asked again.
 */
static CK_RV list_versions(struct kv_token *kt, struct pcall *c,
                           struct kv_key *k, const char *esc, int64_t deadline,
                           bool *refused, bool *gone)
{
    struct kv_result res;
    char *path = kv_strdup_printf("/keys/%s/versions?maxresults=25", esc);
    struct kv_version *v;
    CK_RV rv = CKR_OK;

    *refused = *gone = false;
    while (path != NULL) {
        struct kv_listing l;
        char why[128];
        size_t i;

        rv = kv_call(kt, c, "GET", path, NULL, deadline, &res);
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
            kt->list_refused = true;
            pthread_mutex_unlock(&kt->lock);
            cmk_warning("token %s: listing the versions of key %s was "
                        "refused (403 %s): the identity lacks the keys list "
                        "permission; the current version comes from GET "
                        "/keys/%s and an older one only when something names "
                        "it (a sealed file, NAME@VERSION); unwrap-fallback "
                        "cannot try the others; the vault said: %s",
                        kt->name, k->name, res.code, k->name, said);
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
            v = version_get_unlocked(k, version);
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

/*
 * Loads (or refreshes) one key, with only the get permission if need be:
 * GET /keys/NAME gives the current version (the service's latest, not the
 * newest by created: versions can share a second, and the service lists
 * them by id); the versions listing, where the identity may list, finds the
 * others; without it, the versions already known and the one asked for
 * (want, or NULL) are read one by one with GET /keys/NAME/VERSION.
 */
static CK_RV load_key(struct kv_token *kt, struct pcall *c, const char *name,
                      const char *want, int64_t deadline)
{
    struct kv_key *k;
    struct kv_version *v, *latest = NULL;
    struct kv_result res;
    char *path, *esc = kv_url_escape(name), **fetch = NULL;
    size_t n_fetch = 0, i;
    bool list, refused = false, gone = false;
    CK_RV rv;

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

    /* The current version. */
    path = kv_strdup_printf("/keys/%s", esc);
    rv = path ? kv_call(kt, c, "GET", path, NULL, deadline, &res)
              : CKR_HOST_MEMORY;
    free(path);
    if (rv == CKR_KEY_HANDLE_INVALID && res.status == 404) {
        /* Deleted: its versions disappear. A name of keys = that is not
         * there is a mistake to report, not an empty list. */
        if (kt->allow != NULL && config_list_allows(kt->allow, name))
            cmk_warning("token %s: key %s of keys = is not in %s (404 %s: "
                        "%s); create it, or correct keys =",
                        kt->name, name, kt->host, res.code, res.message);
        result_clear(&res);
        free(esc);
        key_gone(kt, k);
        return CKR_OK;
    }
    if (rv != CKR_OK) {
        explain(kt, name, "get", "get", &res, rv);
        result_clear(&res);
        free(esc);
        return rv;
    }
    path = kv_strdup_printf("/keys/%s", esc);
    rv = take_bundle(kt, k, res.doc, "GET", path ? path : name, &latest);
    free(path);
    result_clear(&res);
    if (rv != CKR_OK || latest == NULL) {
        free(esc);
        return rv != CKR_OK ? rv : CKR_HOST_MEMORY;
    }

    /* The other versions. */
    pthread_mutex_lock(&kt->lock);
    list = !kt->list_refused;
    if (list)
        for (v = k->versions; v != NULL; v = v->next)
            v->present = v == latest;
    pthread_mutex_unlock(&kt->lock);
    if (list) {
        rv = list_versions(kt, c, k, esc, deadline, &refused, &gone);
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
    k->exists = true;
    pthread_mutex_unlock(&kt->lock);
    rv = fetch != NULL && k->latest != NULL ? CKR_OK : CKR_HOST_MEMORY;
    for (i = 0; rv == CKR_OK && i < n_fetch; i++) {
        path = fetch[i] ? kv_strdup_printf("/keys/%s/%s", esc, fetch[i]) : NULL;
        rv = path ? kv_call(kt, c, "GET", path, NULL, deadline, &res)
                  : CKR_HOST_MEMORY;
        if (rv == CKR_OK) {
            rv = take_bundle(kt, k, res.doc, "GET", path, NULL);
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
    free(esc);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&kt->lock);
        k->loaded_at_ms = kv_now_ms();
        pthread_mutex_unlock(&kt->lock);
        cache_prune(kt, k, false); /* versions revoked since */
    }
    return rv;
}

/* The names of the vault's keys (GET /keys, paged). */
static CK_RV load_names(struct kv_token *kt, struct pcall *c, int64_t deadline)
{
    char *path = strdup("/keys?maxresults=25");
    struct kv_result res;
    CK_RV rv = CKR_OK;

    while (path != NULL) {
        struct kv_listing l;
        char why[128];
        size_t i;

        rv = kv_call(kt, c, "GET", path, NULL, deadline, &res);
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
                      kt->name, kt->host, res.code, said);
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
static struct kv_version *current_unlocked(struct kv_key *k)
{
    struct kv_version *v;

    if (k->latest == NULL)
        return NULL;
    for (v = k->versions; v != NULL; v = v->next)
        if (strcasecmp(v->version, k->latest) == 0)
            return v->present && v->loaded && v->enabled ? v : NULL;
    return NULL;
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
    d.decrypt = v->enabled && has_op(v->key_ops, "decrypt");
    d.unwrap = v->enabled && has_op(v->key_ops, "unwrapKey");
    d.sign = v->enabled && has_op(v->key_ops, "sign");
    /* A wrap under a key that can no longer unwrap is refused here. */
    d.encrypt = v->enabled && has_op(v->key_ops, "encrypt");
    d.wrap = d.unwrap && has_op(v->key_ops, "wrapKey");
    d.verify = has_op(v->key_ops, "verify");
    d.private_obj = kt->pin != NULL;
    d.not_before = v->nbf;
    d.expires = v->exp;
    d.created = v->created;
    d.updated = v->updated;
    d.enabled = v->enabled;
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
    r = rsa_key_objects(&d, priv, pub);
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
        cur = current_unlocked(key);
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
    char *b64 = NULL, *body = NULL, *path = NULL, *name, *ver, *esc;
    char why[128];
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

    pthread_mutex_lock(&kt->lock);
    name = strdup(v->key->name);
    ver = strdup(v->version);
    pthread_mutex_unlock(&kt->lock);
    esc = name ? kv_url_escape(name) : NULL;
    b64 = kv_b64url_encode(in + skip, inlen - skip);
    if (esc != NULL && ver != NULL)
        path = kv_strdup_printf("/keys/%s/%s/%s", esc, ver, verbs[op]);
    if (b64 != NULL)
        body = kv_strdup_printf("{\"alg\":\"%s\",\"value\":\"%s\"}", alg, b64);
    if (path == NULL || body == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    rv = kv_call(kt, c, "POST", path, body, deadline, &res);
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
    free(ver);
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
    rv = kv_call(kt, c, "POST", path, body, deadline, &res);
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
        rv = take_bundle(kt, k, res.doc, "POST", path, NULL);
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
        r = version_objects_unlocked(kt, v, current_unlocked(k) == v, priv_out,
                                     pub_out);
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
        if (all || !k->exists || !v->present || !v->enabled ||
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

enum kv_use { USE_WRAP, USE_ENCRYPT, USE_UNWRAP };

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
                                   [USE_UNWRAP] = {"unwrapKey", "unwrapKey"}};
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
                          kt->name, name, kt->host, kt->grace_ms / 1000,
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
    else if (!v->enabled || !has_op(v->key_ops, ops[use][0]) ||
             !has_op(v->key_ops, ops[use][1]) ||
             (use != USE_UNWRAP && ((v->nbf != 0 && now < v->nbf) ||
                                    (v->exp != 0 && now >= v->exp))))
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
