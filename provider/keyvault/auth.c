/*
 * Access tokens for Key Vault: client secret, managed identity (IMDS or
 * App Service's IDENTITY_ENDPOINT), cached per resource and renewed before
 * they expire. Secrets are read from their files at each token request (so
 * a rotated file is picked up), kept out of logs and wiped after use.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "debug.h"
#include "kv.h"
#include "secure.h"

#define KV_MAX_RESOURCES 8

struct kv_token_entry {
    char *resource;
    char *token; /* secure */
    size_t token_len;
    int64_t refresh_at_ms; /* monotonic: fetch a new one after this */
    int64_t expires_at_ms; /* monotonic: unusable after this */
    int64_t fetched_at_ms;
};

struct kv_auth {
    struct kv_auth_config cfg;
    struct kv_http *http;
    pthread_mutex_t lock;       /* the cache */
    pthread_mutex_t fetch_lock; /* one fetch at a time */
    struct kv_token_entry entries[KV_MAX_RESOURCES];
    int n;
};

const char *kv_auth_method_name(enum kv_auth_method m)
{
    static const char *names[] = {
        [KV_AUTH_MANAGED_IDENTITY] = "managed-identity",
        [KV_AUTH_CLIENT_SECRET] = "client-secret",
        [KV_AUTH_CLIENT_CERTIFICATE] = "client-certificate",
        [KV_AUTH_WORKLOAD_IDENTITY] = "workload-identity",
        [KV_AUTH_AZURE_CLI] = "azure-cli",
        [KV_AUTH_ACCESS_TOKEN_FILE] = "access-token-file",
    };
    return names[m];
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static void config_clear(struct kv_auth_config *c)
{
    free(c->tenant_id);
    free(c->client_id);
    free(c->authority_host);
    free(c->secret_file);
    free(c->secondary_secret_file);
    free(c->imds_endpoint);
    free(c->identity_endpoint);
    free(c->identity_header);
    if (c->secret_env != NULL)
        secure_free(c->secret_env, strlen(c->secret_env) + 1);
    memset(c, 0, sizeof(*c));
}

CK_RV kv_auth_new(const struct kv_auth_config *cfg, struct kv_http *http,
                  struct kv_auth **out, char *err, size_t errlen)
{
    struct kv_auth *a = calloc(1, sizeof(*a));

    if (a == NULL)
        return CKR_HOST_MEMORY;
    a->cfg.method = cfg->method;
    a->cfg.tenant_id = dup_or_null(cfg->tenant_id);
    a->cfg.client_id = dup_or_null(cfg->client_id);
    a->cfg.authority_host = dup_or_null(cfg->authority_host);
    a->cfg.secret_file = dup_or_null(cfg->secret_file);
    a->cfg.secondary_secret_file = dup_or_null(cfg->secondary_secret_file);
    a->cfg.imds_endpoint = dup_or_null(cfg->imds_endpoint);
    a->cfg.identity_endpoint = dup_or_null(cfg->identity_endpoint);
    a->cfg.identity_header = dup_or_null(cfg->identity_header);
    if (cfg->secret_env != NULL)
        a->cfg.secret_env =
            secure_dup(cfg->secret_env, strlen(cfg->secret_env) + 1);
    a->http = http;
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->fetch_lock, NULL);
    if (cfg->method == KV_AUTH_CLIENT_SECRET && a->cfg.client_id == NULL) {
        snprintf(err, errlen,
                 "client-id: missing for auth = client-secret "
                 "(or set AZURE_CLIENT_ID)");
        kv_auth_free(a);
        return CKR_GENERAL_ERROR;
    }
    if (cfg->method == KV_AUTH_CLIENT_SECRET && a->cfg.secret_file == NULL &&
        a->cfg.secret_env == NULL) {
        snprintf(err, errlen,
                 "client-secret-file: missing for auth = "
                 "client-secret (or set AZURE_CLIENT_SECRET)");
        kv_auth_free(a);
        return CKR_GENERAL_ERROR;
    }
    *out = a;
    return CKR_OK;
}

void kv_auth_free(struct kv_auth *a)
{
    int i;

    if (a == NULL)
        return;
    for (i = 0; i < a->n; i++) {
        free(a->entries[i].resource);
        secure_free(a->entries[i].token, a->entries[i].token_len + 1);
    }
    config_clear(&a->cfg);
    pthread_mutex_destroy(&a->lock);
    pthread_mutex_destroy(&a->fetch_lock);
    free(a);
}

static struct kv_token_entry *entry_unlocked(struct kv_auth *a,
                                             const char *resource)
{
    int i;

    for (i = 0; i < a->n; i++)
        if (strcmp(a->entries[i].resource, resource) == 0)
            return &a->entries[i];
    if (a->n == KV_MAX_RESOURCES)
        return NULL;
    a->entries[a->n].resource = strdup(resource);
    if (a->entries[a->n].resource == NULL)
        return NULL;
    return &a->entries[a->n++];
}

/* A copy of the cached token if it is still good. */
static char *cached(struct kv_auth *a, const char *resource, bool force,
                    int64_t since_ms)
{
    struct kv_token_entry *e;
    int64_t now = kv_now_ms();
    char *t = NULL;

    pthread_mutex_lock(&a->lock);
    e = entry_unlocked(a, resource);
    if (e != NULL && e->token != NULL && now < e->expires_at_ms &&
        ((!force && now < e->refresh_at_ms) ||
         (force && e->fetched_at_ms > since_ms)))
        t = secure_dup(e->token, e->token_len + 1);
    pthread_mutex_unlock(&a->lock);
    return t;
}

static void store(struct kv_auth *a, const char *resource, const char *token,
                  long long lifetime_s)
{
    struct kv_token_entry *e;
    int64_t now = kv_now_ms(), margin;

    if (lifetime_s <= 0)
        lifetime_s = 300;
    /* Renew at half-life for long tokens, else 5 minutes before expiry,
     * and never later than at 80 % of a short one's life. */
    if (lifetime_s >= 7200)
        margin = lifetime_s * 500;
    else if (lifetime_s > 600)
        margin = 300000;
    else
        margin = lifetime_s * 200;
    pthread_mutex_lock(&a->lock);
    e = entry_unlocked(a, resource);
    if (e != NULL) {
        if (e->token != NULL)
            secure_free(e->token, e->token_len + 1);
        e->token_len = strlen(token);
        e->token = secure_dup(token, e->token_len + 1);
        e->fetched_at_ms = now;
        e->expires_at_ms = now + lifetime_s * 1000 - 10000;
        e->refresh_at_ms = now + lifetime_s * 1000 - margin;
    }
    pthread_mutex_unlock(&a->lock);
}

/* Parses an identity endpoint's answer: the token and its lifetime. */
static CK_RV parse_token(const char *body, char **token, long long *lifetime)
{
    json_object *doc = json_tokener_parse(body);
    const char *t = kv_json_str(doc, "access_token");
    long long in = kv_json_int(doc, "expires_in", -1);
    long long on = kv_json_int(doc, "expires_on", -1);
    CK_RV rv = CKR_DEVICE_ERROR;

    if (t != NULL && t[0] != '\0') {
        *token = secure_dup(t, strlen(t) + 1);
        if (in > 0)
            *lifetime = in;
        else if (on > 0)
            *lifetime = on - (long long)time(NULL);
        else
            *lifetime = 300;
        rv = *token ? CKR_OK : CKR_HOST_MEMORY;
    }
    /* The document holds the token too; json-c frees without wiping. */
    if (doc != NULL && t != NULL)
        secure_zero((void *)t, strlen(t));
    json_object_put(doc);
    return rv;
}

static char *read_secret(const char *file, const char *env, size_t *len)
{
    char err[256];
    char *buf = NULL;

    if (file != NULL) {
        if (secure_read_file(file, 1, &buf, len, err, sizeof(err)) != 0) {
            cmk_error("client-secret-file: %s", err);
            return NULL;
        }
        return buf;
    }
    if (env != NULL) {
        *len = strlen(env);
        return secure_dup(env, *len + 1);
    }
    return NULL;
}

static void describe_failure(struct kv_auth *a, const char *where,
                             const struct kv_response *r)
{
    json_object *doc = r->body ? json_tokener_parse(r->body) : NULL;
    const char *code = kv_json_str(doc, "error");

    if (r->curl != CURLE_OK)
        cmk_error("cannot obtain a token (%s) from %s: %s",
                  kv_auth_method_name(a->cfg.method), where,
                  curl_easy_strerror(r->curl));
    else
        cmk_error("cannot obtain a token (%s) from %s (%ld %s): check the "
                  "identity's client id and credentials",
                  kv_auth_method_name(a->cfg.method), where, r->status,
                  code ? code : "");
    json_object_put(doc);
}

static CK_RV fetch_client_secret(struct kv_auth *a, const char *resource,
                                 const char *tenant, int64_t deadline,
                                 char **token, long long *lifetime,
                                 long *status)
{
    const char *files[2] = {a->cfg.secret_file, a->cfg.secondary_secret_file};
    const char *host = a->cfg.authority_host
                           ? a->cfg.authority_host
                           : "https://login.microsoftonline.com";
    char *url = NULL, *scope_raw = NULL, *scope = NULL, *cid = NULL;
    CK_RV rv = CKR_DEVICE_ERROR;
    int i;

    if (tenant == NULL) {
        cmk_error("client-secret: no tenant: set tenant-id or AZURE_TENANT_ID");
        return CKR_DEVICE_ERROR;
    }
    url = kv_strdup_printf("%s%s%s/oauth2/v2.0/token", host,
                           host[strlen(host) - 1] == '/' ? "" : "/", tenant);
    scope_raw = kv_strdup_printf("%s/.default", resource);
    scope = scope_raw ? kv_url_escape(scope_raw) : NULL;
    cid = kv_url_escape(a->cfg.client_id);
    if (url == NULL || scope == NULL || cid == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (i = 0; i < 2; i++) {
        struct kv_request req;
        struct kv_response r;
        size_t slen = 0, blen;
        char *secret, *esc, *body;

        if (i == 1 && files[1] == NULL)
            break;
        secret =
            read_secret(files[i], i == 0 ? a->cfg.secret_env : NULL, &slen);
        if (secret == NULL)
            continue;
        esc = kv_url_escape(secret);
        secure_free(secret, slen + 1);
        if (esc == NULL) {
            rv = CKR_HOST_MEMORY;
            break;
        }
        blen = strlen(esc) + strlen(cid) + strlen(scope) + 128;
        body = secure_alloc(blen);
        if (body != NULL)
            snprintf(body, blen,
                     "grant_type=client_credentials&client_id=%s&"
                     "client_secret=%s&scope=%s",
                     cid, esc, scope);
        secure_free(esc, strlen(esc) + 1);
        if (body == NULL) {
            rv = CKR_HOST_MEMORY;
            break;
        }
        memset(&req, 0, sizeof(req));
        req.method = "POST";
        req.url = url;
        req.body = body;
        req.form = true;
        kv_http_do(a->http, &req, (long)(deadline - kv_now_ms()), &r);
        secure_free(body, blen);
        *status = r.status;
        if (r.curl == CURLE_OK && r.status == 200) {
            rv = parse_token(r.body, token, lifetime);
            kv_response_clear(&r);
            if (rv == CKR_OK && i == 1)
                cmk_warning("the client secret in %s was refused; the "
                            "secondary secret in %s worked: update the first",
                            files[0] ? files[0] : "AZURE_CLIENT_SECRET",
                            files[1]);
            break;
        }
        describe_failure(a, url, &r);
        /* Only a refused credential makes the secondary worth a try. */
        if (r.curl != CURLE_OK || (r.status != 400 && r.status != 401)) {
            kv_response_clear(&r);
            break;
        }
        kv_response_clear(&r);
    }
out:
    free(url);
    free(scope_raw);
    free(scope);
    free(cid);
    return rv;
}

static CK_RV fetch_managed_identity(struct kv_auth *a, const char *resource,
                                    int64_t deadline, char **token,
                                    long long *lifetime, long *status)
{
    char *res = kv_url_escape(resource), *url = NULL, *hdr = NULL;
    char *cid = a->cfg.client_id ? kv_url_escape(a->cfg.client_id) : NULL;
    const char *headers[2] = {NULL, NULL};
    struct kv_request req;
    struct kv_response r;
    CK_RV rv = CKR_DEVICE_ERROR;

    if (res == NULL)
        return CKR_HOST_MEMORY;
    if (a->cfg.identity_endpoint != NULL && a->cfg.identity_header != NULL) {
        /* App Service and Functions. */
        url = kv_strdup_printf("%s?api-version=2019-08-01&resource=%s%s%s",
                               a->cfg.identity_endpoint, res,
                               cid ? "&client_id=" : "", cid ? cid : "");
        hdr = kv_strdup_printf("X-IDENTITY-HEADER: %s", a->cfg.identity_header);
    } else {
        const char *base = a->cfg.imds_endpoint ? a->cfg.imds_endpoint
                                                : "http://169.254.169.254";
        url = kv_strdup_printf("%s/metadata/identity/oauth2/token?api-version="
                               "2018-02-01&resource=%s%s%s",
                               base, res, cid ? "&client_id=" : "",
                               cid ? cid : "");
        hdr = strdup("Metadata: true");
    }
    if (url == NULL || hdr == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    headers[0] = hdr;
    memset(&req, 0, sizeof(req));
    req.method = "GET";
    req.url = url;
    req.headers = headers;
    req.allow_http = true; /* IMDS is plain http by design */
    kv_http_do(a->http, &req, (long)(deadline - kv_now_ms()), &r);
    *status = r.status;
    if (r.curl == CURLE_OK && r.status == 200)
        rv = parse_token(r.body, token, lifetime);
    else
        describe_failure(a, url, &r);
    kv_response_clear(&r);
out:
    free(res);
    free(cid);
    free(url);
    if (hdr != NULL)
        secure_free(hdr, strlen(hdr) + 1);
    return rv;
}

CK_RV kv_auth_token(struct kv_auth *a, const char *resource, const char *tenant,
                    bool force, int64_t deadline_ms, char **token,
                    long *http_status)
{
    int64_t asked = kv_now_ms();
    long long lifetime = 0;
    char *t;
    CK_RV rv;

    *http_status = 0;
    t = cached(a, resource, force, INT64_MAX);
    if (t != NULL && !force) {
        *token = t;
        return CKR_OK;
    }
    if (t != NULL)
        secure_free(t, strlen(t) + 1);
    pthread_mutex_lock(&a->fetch_lock);
    /* Another thread may have fetched one while this one waited. */
    t = cached(a, resource, force, force ? asked : INT64_MAX);
    if (t != NULL) {
        pthread_mutex_unlock(&a->fetch_lock);
        *token = t;
        return CKR_OK;
    }
    if (a->cfg.tenant_id != NULL)
        tenant = a->cfg.tenant_id;
    switch (a->cfg.method) {
    case KV_AUTH_CLIENT_SECRET:
        rv = fetch_client_secret(a, resource, tenant, deadline_ms, &t,
                                 &lifetime, http_status);
        break;
    case KV_AUTH_MANAGED_IDENTITY:
        rv = fetch_managed_identity(a, resource, deadline_ms, &t, &lifetime,
                                    http_status);
        break;
    default:
        cmk_error("auth = %s is not available in this build",
                  kv_auth_method_name(a->cfg.method));
        rv = CKR_DEVICE_ERROR;
        break;
    }
    if (rv == CKR_OK) {
        store(a, resource, t, lifetime);
        *token = t;
        cmk_debug("new token for %s (%lld s)", resource, lifetime);
    }
    pthread_mutex_unlock(&a->fetch_lock);
    return rv;
}
