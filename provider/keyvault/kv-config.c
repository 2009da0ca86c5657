/*
 * The keyvault back end's configuration: a [token] section read into a
 * kv_token (vaults and replicas, authentication, limits), its token info,
 * mechanisms and login; closing it.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "debug.h"
#include "kv-cache.h"
#include "kv-token.h"
#include "secure.h"

/* ---- configuration ---- */

void kv_close(void *tok, bool in_child)
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
            attrs_release(v->pub);
            free(v->kty);
            free(v->key_ops);
            free(v->recovery);
            free(v);
        }
        free(k->name);
        free(k->latest);
        free(k);
    }
    kv_store_free(kt);
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
    secure_free(kt->pin);
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
        if (!kv_same_origin(u, u)) { /* kv_call relies on it for paths */
            snprintf(why, sizeof(why),
                     "%s%smust be an https:// URL with a host and no user "
                     "information",
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

/* The state directory exists, or could be made (its nearest existing
 * ancestor is writable): token secret keys may be made. No file is
 * touched here. */
static bool state_dir_usable(const char *dir)
{
    char buf[4096], *slash;
    struct stat st;

    if (snprintf(buf, sizeof(buf), "%s", dir) >= (int)sizeof(buf))
        return false;
    while (stat(buf, &st) != 0) {
        if (errno != ENOENT || (slash = strrchr(buf, '/')) == NULL)
            return false;
        slash[slash == buf ? 1 : 0] = '\0';
    }
    return S_ISDIR(st.st_mode) && access(buf, W_OK | X_OK) == 0;
}

CK_RV kv_open(const struct config_token *cfg, void **tok, unsigned *flags,
              char *err, size_t errlen)
{
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
    /* Token secret keys (kv-store.c): where they are kept, under which key. */
    v = config_token_get(cfg, "state-dir");
    if (v != NULL && v[0] != '/') {
        rv = bad(err, errlen, cfg, "state-dir", "must be an absolute path");
        goto fail;
    }
    kt->state_dir =
        v ? strdup(v)
          : kv_strdup_printf("%s/lib/cmkp11/%s", LOCALSTATEDIR, cfg->name);
    v = config_token_get(cfg, "wrapping-key");
    if (v != NULL) {
        char why[400];
        if (kv_check_key_name(v, why, sizeof(why)) != 0) {
            rv = bad(err, errlen, cfg, "wrapping-key", why);
            goto fail;
        }
        kt->wrapping_key = strdup(v);
    }
    if (kt->state_dir == NULL || (v != NULL && kt->wrapping_key == NULL)) {
        rv = CKR_HOST_MEMORY;
        goto fail;
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
        secure_free(buf);
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
    if (state_dir_usable(kt->state_dir))
        *flags |= PROVIDER_TOKEN_SECRET_KEYS;
    *tok = kt;
    return CKR_OK;
fail:
    kv_close(kt, false);
    return rv;
}

void kv_token_info(void *tok, struct provider_token_info *info)
{
    struct kv_token *kt = tok;
    unsigned char md[32];
    unsigned int mdlen = sizeof(md);

    memset(info, 0, sizeof(*info));
    snprintf(info->model, sizeof(info->model), "%s",
             kt->mhsm ? "Managed HSM" : "Key Vault");
    EVP_Digest(kt->host, strlen(kt->host), md, &mdlen, EVP_sha256(), NULL);
    cmk_hex(md, 8, info->serial);
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

const struct pmech *kv_mechanisms(void *tok, CK_ULONG *count)
{
    *count = CMK_ARRAY_SIZE(kv_mechs);
    return kv_mechs;
}

CK_RV kv_login(struct pcall *c, CK_USER_TYPE user, const CK_UTF8CHAR *pin,
               CK_ULONG len)
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
