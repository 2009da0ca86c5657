/*
 * Access tokens for Key Vault, cached per resource and renewed before they
 * expire: client secret, client certificate (a signed JWT assertion),
 * workload identity (a federated token file), managed identity (IMDS or
 * App Service's IDENTITY_ENDPOINT), the Azure CLI, and a token file.
 * Secret, certificate and token files are read again at each token request
 * (so a replaced file is picked up), kept out of logs and wiped after use.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "debug.h"
#include "kv-parse.h"
#include "kv.h"
#include "secure.h"

#define KV_MAX_RESOURCES 8

struct kv_token_entry {
    char *resource;
    char *token; /* secure */
    size_t token_len;
    int64_t refresh_at_ms; /* monotonic: fetch a new one after this */
    int64_t expires_at_ms; /* monotonic: unusable after this */
    /* monotonic: when the request for it was sent. A token a vault
     * refused is replaced only by one asked for after the refusal: one
     * received after it may have been issued before, and be refused too
     * (tokens revoked at once, as the emulator's tokens/expire does). */
    int64_t requested_at_ms;
    int64_t renew_tried_ms; /* monotonic: the last renewal that failed */
};

struct kv_auth {
    struct kv_auth_config cfg;
    struct kv_http *http;
    pthread_mutex_t lock;       /* the cache */
    pthread_mutex_t fetch_lock; /* one fetch at a time */
    struct kv_token_entry entries[KV_MAX_RESOURCES];
    int n;
    struct stat token_file_st; /* access-token-file as last read */
};

extern char **environ;

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

const char *kv_mi_host_name(enum kv_mi_host h)
{
    static const char *names[] = {
        [KV_MI_IMDS] = "IMDS",
        [KV_MI_APP_SERVICE] = "App Service",
        [KV_MI_SERVICE_FABRIC] = "Service Fabric",
        [KV_MI_ARC] = "Azure Arc",
        [KV_MI_AZURE_ML] = "Azure ML",
        [KV_MI_CLOUD_SHELL] = "Cloud Shell",
    };
    return names[h];
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
    free(c->cert_file);
    free(c->cert_password_file);
    free(c->federated_token_file);
    free(c->token_file);
    free(c->object_id);
    free(c->resource_id);
    free(c->identity_thumbprint);
    free(c->msi_endpoint);
    free(c->arc_token_dir);
    secure_free(c->msi_secret);
    secure_free(c->secret_env);
    memset(c, 0, sizeof(*c));
}

/*
 * Which user-assigned selectors a host takes, as each names them
 * (azure-identity _credentials/imds.py, app_service.py, azure_ml.py,
 * cloud_shell.py, service_fabric.py, azure_arc.py): NULL, or what is wrong.
 */
static const char *mi_selector_problem(const struct kv_auth_config *c)
{
    int n = (c->client_id != NULL) + (c->object_id != NULL) +
            (c->resource_id != NULL);

    if (n > 1)
        return "give one of client-id, object-id and resource-id";
    if (n == 0)
        return NULL;
    switch (c->mi_host) {
    case KV_MI_IMDS:
    case KV_MI_APP_SERVICE:
        return NULL;
    case KV_MI_ARC:
        return "Azure Arc has no user-assigned identities: leave out "
               "client-id, object-id and resource-id (and AZURE_CLIENT_ID)";
    default:
        return c->client_id != NULL
                   ? NULL
                   : "this host takes a user-assigned identity by client-id "
                     "only";
    }
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
    a->cfg.cert_file = dup_or_null(cfg->cert_file);
    a->cfg.cert_password_file = dup_or_null(cfg->cert_password_file);
    a->cfg.federated_token_file = dup_or_null(cfg->federated_token_file);
    a->cfg.token_file = dup_or_null(cfg->token_file);
    a->cfg.retries = cfg->retries;
    a->cfg.mi_host = cfg->mi_host;
    a->cfg.object_id = dup_or_null(cfg->object_id);
    a->cfg.resource_id = dup_or_null(cfg->resource_id);
    a->cfg.identity_thumbprint = dup_or_null(cfg->identity_thumbprint);
    a->cfg.msi_endpoint = dup_or_null(cfg->msi_endpoint);
    a->cfg.arc_token_dir = dup_or_null(
        cfg->arc_token_dir ? cfg->arc_token_dir : "/var/opt/azcmagent/tokens");
    if (cfg->msi_secret != NULL)
        a->cfg.msi_secret =
            secure_dup(cfg->msi_secret, strlen(cfg->msi_secret) + 1);
    if (cfg->secret_env != NULL)
        a->cfg.secret_env =
            secure_dup(cfg->secret_env, strlen(cfg->secret_env) + 1);
    a->http = http;
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->fetch_lock, NULL);
    {
        const char *missing = NULL;
        switch (cfg->method) {
        case KV_AUTH_CLIENT_SECRET:
            if (a->cfg.client_id == NULL)
                missing = "client-id (or AZURE_CLIENT_ID)";
            else if (a->cfg.secret_file == NULL && a->cfg.secret_env == NULL)
                missing = "client-secret-file (or AZURE_CLIENT_SECRET)";
            break;
        case KV_AUTH_CLIENT_CERTIFICATE:
            if (a->cfg.client_id == NULL)
                missing = "client-id (or AZURE_CLIENT_ID)";
            else if (a->cfg.cert_file == NULL)
                missing = "client-certificate-file (or "
                          "AZURE_CLIENT_CERTIFICATE_PATH)";
            break;
        case KV_AUTH_WORKLOAD_IDENTITY:
            if (a->cfg.client_id == NULL)
                missing = "client-id (or AZURE_CLIENT_ID)";
            else if (a->cfg.federated_token_file == NULL)
                missing = "federated-token-file (or "
                          "AZURE_FEDERATED_TOKEN_FILE)";
            break;
        case KV_AUTH_ACCESS_TOKEN_FILE:
            if (a->cfg.token_file == NULL)
                missing = "access-token-file";
            break;
        case KV_AUTH_MANAGED_IDENTITY:
            missing = mi_selector_problem(&a->cfg);
            if (missing != NULL) {
                snprintf(err, errlen, "managed identity on %s: %s",
                         kv_mi_host_name(a->cfg.mi_host), missing);
                kv_auth_free(a);
                return CKR_GENERAL_ERROR;
            }
            break;
        default:
            break;
        }
        if (missing != NULL) {
            snprintf(err, errlen, "%s: missing for auth = %s", missing,
                     kv_auth_method_name(cfg->method));
            kv_auth_free(a);
            return CKR_GENERAL_ERROR;
        }
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
        secure_free(a->entries[i].token);
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
         (force && e->requested_at_ms > since_ms)))
        t = secure_dup(e->token, e->token_len + 1);
    pthread_mutex_unlock(&a->lock);
    return t;
}

/*
 * A renewal that fails keeps the token in use until it expires, and is
 * not tried again for 30 s meanwhile: a token endpoint that is down or
 * hangs then costs one call in 30 s its wait, not every call, and the
 * vault (where revocation shows) stays reachable. As azure-identity does
 * (_internal/get_token_mixin.py: a failed refresh of a token that has
 * not expired returns the cached token; DEFAULT_TOKEN_REFRESH_RETRY_DELAY
 * = 30 s between refresh attempts).
 */
#define KV_RENEW_RETRY_MS 30000

/* A copy of the cached token while it has not expired, past its renewal
 * time too; with only_held_off, only while the last failed renewal is
 * recent. */
static char *cached_valid(struct kv_auth *a, const char *resource,
                          bool only_held_off, int64_t *expires_in_ms)
{
    struct kv_token_entry *e;
    int64_t now = kv_now_ms();
    char *t = NULL;

    pthread_mutex_lock(&a->lock);
    e = entry_unlocked(a, resource);
    if (e != NULL && e->token != NULL && now < e->expires_at_ms &&
        (!only_held_off || (e->renew_tried_ms != 0 &&
                            now - e->renew_tried_ms < KV_RENEW_RETRY_MS))) {
        t = secure_dup(e->token, e->token_len + 1);
        if (expires_in_ms != NULL)
            *expires_in_ms = e->expires_at_ms - now;
    }
    pthread_mutex_unlock(&a->lock);
    return t;
}

static void renew_failed(struct kv_auth *a, const char *resource)
{
    struct kv_token_entry *e;

    pthread_mutex_lock(&a->lock);
    e = entry_unlocked(a, resource);
    if (e != NULL)
        e->renew_tried_ms = kv_now_ms();
    pthread_mutex_unlock(&a->lock);
}

static void store(struct kv_auth *a, const char *resource, const char *token,
                  long long lifetime_s, int64_t requested_at_ms)
{
    struct kv_token_entry *e;
    int64_t now = kv_now_ms(), margin;

    if (lifetime_s <= 0)
        lifetime_s = 300;
    if (lifetime_s > KV_LIFETIME_MAX)
        lifetime_s = KV_LIFETIME_MAX; /* no overflow in * 1000 below */
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
        secure_free(e->token);
        e->token_len = strlen(token);
        e->token = secure_dup(token, e->token_len + 1);
        e->requested_at_ms = requested_at_ms;
        e->expires_at_ms = now + lifetime_s * 1000 - 10000;
        e->refresh_at_ms = now + lifetime_s * 1000 - margin;
        e->renew_tried_ms = 0;
    }
    pthread_mutex_unlock(&a->lock);
}

/*
 * An expires_on in the text form of App Service's 2017-09-01 API, which
 * Azure ML may answer too: "06/20/2019 02:57:58 +00:00" (Linux) or
 * "1/16/2020 5:24:12 AM +00:00" (Windows), as azure-identity's
 * _credentials/azure_ml.py (_parse_expires_on) reads it. Returns the
 * seconds left, or 300 when the text is not of that form.
 */
static long long expires_on_text(const char *body)
{
    struct tm tm;
    const char *end, *p = body ? strstr(body, "\"expires_on\"") : NULL;
    char s[64];
    size_t n;
    long long left;

    /* The text of "expires_on": "...", read from the body without parsing
     * it again (the body holds the token too). */
    if (p == NULL)
        return 300;
    p += strlen("\"expires_on\"");
    p += strspn(p, " \t\r\n");
    if (*p++ != ':')
        return 300;
    p += strspn(p, " \t\r\n");
    if (*p++ != '"' || (n = strcspn(p, "\"")) >= sizeof(s) || p[n] != '"')
        return 300;
    memcpy(s, p, n);
    s[n] = '\0';
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%m/%d/%Y %I:%M:%S %p +00:00", &tm);
    if (end == NULL || *end != '\0') {
        memset(&tm, 0, sizeof(tm));
        end = strptime(s, "%m/%d/%Y %H:%M:%S +00:00", &tm);
    }
    if (end == NULL || *end != '\0')
        return 300;
    left = (long long)timegm(&tm) - (long long)time(NULL);
    return left > 0 ? left : 300;
}

/* Parses an identity endpoint's answer: the token and its lifetime. */
static CK_RV parse_token(const struct kv_response *r, const char *where,
                         char **token, long long *lifetime)
{
    char why[128];
    CK_RV rv = kv_parse_token(r->body, r->len, (long long)time(NULL), token,
                              lifetime, why, sizeof(why));

    if (rv == CKR_DEVICE_ERROR)
        cmk_error("malformed answer from the identity endpoint %s: %s", where,
                  why);
    else if (rv == CKR_OK && *lifetime == 300)
        *lifetime = expires_on_text(r->body);
    return rv;
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

/* ---- credentials for the token endpoint ---- */

/* Secrets others can read are refused (secure_read_secret_file), except
 * the federated token: Kubernetes writes that short-lived, audience-bound
 * token itself, 0644 by default in a projected volume. */
/* A credential file: its end of line stripped (text), or whole (a
 * certificate file: a PKCS#12 file is binary, and may end with any byte). */
static char *read_file_secret(const char *what, const char *file, bool text,
                              size_t *len)
{
    char err[300];
    char *buf = NULL;
    int r =
        strcmp(what, "federated-token-file") == 0
            ? secure_read_file(file, text, &buf, len, err, sizeof(err))
            : secure_read_secret_file(file, text, &buf, len, err, sizeof(err));

    if (r != 0) {
        cmk_error("%s: %s", what, err);
        return NULL;
    }
    return buf;
}

/* A JWT part: o's compact JSON (json-c escapes the strings) in base64url;
 * o is released. */
static char *b64url_json(json_object *o)
{
    const char *json =
        o != NULL
            ? json_object_to_json_string_ext(
                  o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
            : NULL;
    char *out = json != NULL ? kv_b64url_encode((const unsigned char *)json,
                                                strlen(json))
                             : NULL;

    json_object_put(o);
    return out;
}

/* The JWT header and claims (RFC 7519; Entra ID's "certificate
 * credentials": aud the token endpoint, iss and sub the client id). */
static json_object *jwt_header(const char *x5t)
{
    json_object *o = json_object_new_object();

    if (o != NULL) {
        json_object_object_add(o, "alg", json_object_new_string("RS256"));
        json_object_object_add(o, "typ", json_object_new_string("JWT"));
        json_object_object_add(o, "x5t", json_object_new_string(x5t));
    }
    return o;
}

static json_object *jwt_claims(const char *aud, const char *client_id,
                               const char *jti, long long now)
{
    json_object *o = json_object_new_object();

    if (o != NULL) {
        json_object_object_add(o, "aud", json_object_new_string(aud));
        json_object_object_add(o, "iss", json_object_new_string(client_id));
        json_object_object_add(o, "sub", json_object_new_string(client_id));
        json_object_object_add(o, "jti", json_object_new_string(jti));
        json_object_object_add(o, "nbf", json_object_new_int64(now));
        json_object_object_add(o, "exp", json_object_new_int64(now + 600));
    }
    return o;
}

/* Loads the certificate and its key: PEM (both in one file; an encrypted
 * key opens with client-certificate-password-file), or PKCS#12 with that
 * password. */
static int load_certificate(struct kv_auth *a, X509 **cert, EVP_PKEY **key)
{
    size_t len = 0, plen = 0;
    char *data = read_file_secret("client-certificate-file", a->cfg.cert_file,
                                  false, &len);
    char *pass = NULL, none[1] = "";
    BIO *bio;
    int r = -1;

    *cert = NULL;
    *key = NULL;
    if (data == NULL)
        return -1;
    bio = BIO_new_mem_buf(data, (int)len);
    if (a->cfg.cert_password_file != NULL)
        pass = read_file_secret("client-certificate-password-file",
                                a->cfg.cert_password_file, true, &plen);
    if (bio != NULL && strstr(data, "-----BEGIN") != NULL) {
        *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        BIO_reset(bio);
        /* OpenSSL's default callback takes the last argument as the
         * passphrase (PEM_read_bio_PrivateKey(3)); "" for none, so that an
         * encrypted key without a password file fails instead of asking
         * the terminal. */
        *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, pass ? pass : none);
    } else if (bio != NULL) {
        PKCS12 *p12 = d2i_PKCS12_bio(bio, NULL);
        if (p12 == NULL ||
            !PKCS12_parse(p12, pass ? pass : "", key, cert, NULL))
            cmk_error("client-certificate-file: %s is neither PEM nor a "
                      "PKCS#12 file this password opens",
                      a->cfg.cert_file);
        PKCS12_free(p12);
    }
    BIO_free(bio);
    secure_free(data);
    secure_free(pass);
    /* A key that did not open leaves OpenSSL's errors on this thread's
     * queue, where the application's next TLS call would find them. */
    ERR_clear_error();
    if (*cert != NULL && *key != NULL)
        r = 0;
    else
        cmk_error("client-certificate-file: %s must hold the certificate "
                  "and its private key",
                  a->cfg.cert_file);
    return r;
}

/* A client assertion: a JWT signed with the certificate's key (RS256),
 * naming the certificate by its SHA-1 thumbprint (x5t). */
static char *client_assertion(struct kv_auth *a, const char *token_url)
{
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    unsigned char sha1[20], jti[16], sig[1024];
    unsigned int n = sizeof(sha1);
    size_t siglen = sizeof(sig);
    char *x5t = NULL, *h = NULL, *c = NULL, *input = NULL, *s64 = NULL,
         *jwt = NULL, jtihex[33];
    long long now = (long long)time(NULL);
    EVP_MD_CTX *md = NULL;

    if (load_certificate(a, &cert, &key) != 0)
        goto out;
    X509_digest(cert, EVP_sha1(), sha1, &n);
    RAND_bytes(jti, sizeof(jti));
    cmk_hex(jti, sizeof(jti), jtihex);
    x5t = kv_b64url_encode(sha1, n);
    h = b64url_json(jwt_header(x5t ? x5t : ""));
    c = b64url_json(jwt_claims(token_url, a->cfg.client_id, jtihex, now));
    input = h && c ? kv_strdup_printf("%s.%s", h, c) : NULL;
    md = EVP_MD_CTX_new();
    if (input == NULL || md == NULL ||
        EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, sig, &siglen, (unsigned char *)input,
                       strlen(input)) != 1)
        goto out;
    s64 = kv_b64url_encode(sig, siglen);
    if (s64 != NULL)
        jwt = kv_strdup_printf("%s.%s", input, s64);
out:
    EVP_MD_CTX_free(md);
    X509_free(cert);
    EVP_PKEY_free(key);
    free(x5t);
    free(h);
    free(c);
    free(input);
    free(s64);
    return jwt;
}

/*
 * The form fields that prove the identity: client_secret=..., or a client
 * assertion. which: 0 the primary credential, 1 the secondary secret.
 * Returns a secure string, or NULL.
 */
static char *credential_fields(struct kv_auth *a, const char *token_url,
                               int which)
{
    static const char assertion_type[] =
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3A"
        "client-assertion-type%3Ajwt-bearer&client_assertion=";
    size_t len = 0;
    char *raw = NULL, *esc, *out;

    switch (a->cfg.method) {
    case KV_AUTH_CLIENT_SECRET:
        if (which == 1)
            raw =
                a->cfg.secondary_secret_file
                    ? read_file_secret("secondary-client-secret-file",
                                       a->cfg.secondary_secret_file, true, &len)
                    : NULL;
        else if (a->cfg.secret_file != NULL)
            raw = read_file_secret("client-secret-file", a->cfg.secret_file,
                                   true, &len);
        else if (a->cfg.secret_env != NULL)
            raw = secure_dup(a->cfg.secret_env,
                             (len = strlen(a->cfg.secret_env)) + 1);
        break;
    case KV_AUTH_CLIENT_CERTIFICATE:
        if (which == 0 && (raw = client_assertion(a, token_url)) != NULL)
            len = strlen(raw);
        break;
    case KV_AUTH_WORKLOAD_IDENTITY:
        if (which == 0)
            raw = read_file_secret("federated-token-file",
                                   a->cfg.federated_token_file, true, &len);
        break;
    default:
        break;
    }
    if (raw == NULL)
        return NULL;
    esc = kv_url_escape(raw);
    secure_free(raw);
    if (esc == NULL)
        return NULL;
    len = strlen(esc) + sizeof(assertion_type) + 32;
    out = secure_alloc(len);
    if (out != NULL)
        snprintf(out, len, "%s%s",
                 a->cfg.method == KV_AUTH_CLIENT_SECRET ? "client_secret="
                                                        : assertion_type,
                 esc);
    secure_free(esc);
    return out;
}

/* A token request's status for the retry loop: the HTTP status, 0 for a
 * transport error (retried), or KV_FETCH_TLS for a certificate that failed
 * verification, which no retry mends (the reason is already logged). */
#define KV_FETCH_TLS (-2L)

static long fetch_status(const struct kv_response *r)
{
    return kv_http_tls_failure(r->curl) ? KV_FETCH_TLS : r->status;
}

/* The Entra token endpoint, with the primary credential and then, if it
 * was refused, the secondary one (credential rotation). */
static CK_RV fetch_from_authority(struct kv_auth *a, const char *resource,
                                  const char *tenant, int64_t deadline,
                                  char **token, long long *lifetime,
                                  long *status)
{
    const char *host = a->cfg.authority_host
                           ? a->cfg.authority_host
                           : "https://login.microsoftonline.com";
    char *url = NULL, *scope_raw = NULL, *scope = NULL, *cid = NULL;
    CK_RV rv = CKR_DEVICE_ERROR;
    int i;

    if (tenant == NULL) {
        cmk_error("%s: no tenant: set tenant-id or AZURE_TENANT_ID",
                  kv_auth_method_name(a->cfg.method));
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
        char *cred = credential_fields(a, url, i), *body;
        size_t blen;

        if (cred == NULL) {
            if (i == 0)
                continue; /* logged; the secondary may still work */
            break;
        }
        blen = strlen(cred) + strlen(cid) + strlen(scope) + 96;
        body = secure_alloc(blen);
        if (body != NULL)
            snprintf(body, blen,
                     "grant_type=client_credentials&client_id=%s&%s&scope=%s",
                     cid, cred, scope);
        secure_free(cred);
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
        secure_free(body);
        *status = fetch_status(&r);
        if (r.curl == CURLE_OK && r.status == 200) {
            rv = parse_token(&r, url, token, lifetime);
            kv_response_clear(&r);
            if (rv == CKR_OK && i == 1)
                cmk_warning("the client secret was refused and the secondary "
                            "secret in %s worked: replace the first one",
                            a->cfg.secondary_secret_file);
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

/* Runs argv (no shell) and collects its standard output, within the
 * deadline. Returns the exit status, or -1. */
static int run_capture(char *const argv[], int64_t deadline, char **out,
                       size_t *outlen)
{
    posix_spawn_file_actions_t fa;
    int pipefd[2], status = -1, devnull;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    pid_t pid;

    *out = NULL;
    if (buf == NULL || pipe2(pipefd, O_CLOEXEC) != 0) {
        free(buf);
        return -1;
    }
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
    if (devnull >= 0) {
        posix_spawn_file_actions_adddup2(&fa, devnull, 0);
        posix_spawn_file_actions_adddup2(&fa, devnull, 2);
    }
    if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) != 0)
        pid = -1;
    posix_spawn_file_actions_destroy(&fa);
    close(pipefd[1]);
    if (devnull >= 0)
        close(devnull);
    while (pid > 0) {
        struct pollfd p = {pipefd[0], POLLIN, 0};
        int64_t left = deadline - kv_now_ms();
        ssize_t n;
        if (left <= 0 || poll(&p, 1, (int)(left > 1000 ? 1000 : left)) < 0) {
            if (left <= 0) {
                kill(pid, SIGKILL);
                break;
            }
            if (errno == EINTR)
                continue;
            break;
        }
        if (!(p.revents & (POLLIN | POLLHUP)))
            continue;
        if (len + 4096 > cap && len < 1024 * 1024) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL)
                break;
            buf = nb;
            cap *= 2;
        }
        n = read(pipefd[0], buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(pipefd[0]);
    if (pid > 0 && waitpid(pid, &status, 0) < 0)
        status = -1;
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* az account get-access-token: accessToken and expires_on (or the older
 * expiresOn, local time). */
static CK_RV fetch_azure_cli(struct kv_auth *a, const char *resource,
                             int64_t deadline, char **token,
                             long long *lifetime)
{
    char *argv[10], *out = NULL;
    size_t len = 0;
    json_object *doc;
    const char *t;
    long long on;
    CK_RV rv = CKR_DEVICE_ERROR;
    int n = 0, st;

    argv[n++] = (char *)"az";
    argv[n++] = (char *)"account";
    argv[n++] = (char *)"get-access-token";
    argv[n++] = (char *)"--output";
    argv[n++] = (char *)"json";
    argv[n++] = (char *)"--resource";
    argv[n++] = (char *)resource;
    if (a->cfg.tenant_id != NULL) {
        argv[n++] = (char *)"--tenant";
        argv[n++] = a->cfg.tenant_id;
    }
    argv[n] = NULL;
    st = run_capture(argv, deadline, &out, &len);
    if (st != 0) {
        cmk_error("azure-cli: 'az account get-access-token' failed (%s); run "
                  "'az login' as the user of this process",
                  st < 0 ? "not run or timed out" : "non-zero exit");
        goto out;
    }
    doc = json_tokener_parse(out);
    t = kv_json_str(doc, "accessToken");
    on = kv_json_int(doc, "expires_on", -1);
    if (on < 0) {
        const char *eo = kv_json_str(doc, "expiresOn");
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        if (eo != NULL && strptime(eo, "%Y-%m-%d %H:%M:%S", &tm) != NULL) {
            tm.tm_isdst = -1;
            on = (long long)mktime(&tm);
        }
    }
    if (t != NULL && t[0] != '\0') {
        *token = secure_dup(t, strlen(t) + 1);
        *lifetime = on > 0 ? on - (long long)time(NULL) : 300;
        rv = *token ? CKR_OK : CKR_HOST_MEMORY;
        secure_zero((void *)t, strlen(t));
    } else {
        cmk_error("azure-cli: no accessToken in the output of 'az account "
                  "get-access-token'");
    }
    json_object_put(doc);
out:
    secure_free(out);
    return rv;
}

/* The lifetime a JWT's exp claim gives, or -1. */
static long long jwt_lifetime(const char *jwt)
{
    const char *p = strchr(jwt, '.'), *q;
    unsigned char *claims;
    size_t len = 0;
    char *part;
    json_object *doc;
    long long exp;

    if (p == NULL || (q = strchr(p + 1, '.')) == NULL)
        return -1;
    part = strndup(p + 1, (size_t)(q - p - 1));
    claims = part ? kv_b64url_decode(part, &len) : NULL;
    free(part);
    if (claims == NULL)
        return -1;
    part = strndup((char *)claims, len);
    free(claims);
    doc = part ? json_tokener_parse(part) : NULL;
    free(part);
    exp = kv_json_int(doc, "exp", -1);
    json_object_put(doc);
    return exp > 0 ? exp - (long long)time(NULL) : -1;
}

/* access-token-file: a bearer token someone else keeps fresh. */
static CK_RV fetch_token_file(struct kv_auth *a, char **token,
                              long long *lifetime)
{
    size_t len = 0;
    char *t =
        read_file_secret("access-token-file", a->cfg.token_file, true, &len);
    long long life;

    if (t == NULL)
        return CKR_DEVICE_ERROR;
    if (len == 0) {
        cmk_error("access-token-file: %s is empty", a->cfg.token_file);
        secure_free(t);
        return CKR_DEVICE_ERROR;
    }
    life = jwt_lifetime(t);
    *lifetime = life > 0 ? life : 3600;
    *token = t;
    return CKR_OK;
}

/* True when the token file changed since it was last read. */
static bool token_file_changed(struct kv_auth *a)
{
    struct stat st;
    bool changed;

    if (stat(a->cfg.token_file, &st) != 0)
        return true;
    pthread_mutex_lock(&a->lock);
    changed = st.st_ino != a->token_file_st.st_ino ||
              st.st_size != a->token_file_st.st_size ||
              st.st_mtim.tv_sec != a->token_file_st.st_mtim.tv_sec ||
              st.st_mtim.tv_nsec != a->token_file_st.st_mtim.tv_nsec;
    if (changed)
        a->token_file_st = st;
    pthread_mutex_unlock(&a->lock);
    return changed;
}

/* "&NAME=VALUE" for the user-assigned identity, in the host's spelling,
 * or "" (a malloc'd string either way). */
static char *mi_selector(const struct kv_auth *a, const char *lead)
{
    const char *name = NULL, *value = NULL;
    char *esc, *out;

    if (a->cfg.client_id != NULL) {
        value = a->cfg.client_id;
        /* Azure ML's 2017-09-01 API spells it clientid (azure_ml.py). */
        name = a->cfg.mi_host == KV_MI_AZURE_ML ? "clientid" : "client_id";
    } else if (a->cfg.object_id != NULL) {
        value = a->cfg.object_id;
        /* App Service's 2019-08-01 API: principal_id (app_service.py
         * documentation); IMDS: object_id (imds.py). */
        name =
            a->cfg.mi_host == KV_MI_APP_SERVICE ? "principal_id" : "object_id";
    } else if (a->cfg.resource_id != NULL) {
        value = a->cfg.resource_id;
        name = a->cfg.mi_host == KV_MI_APP_SERVICE ? "mi_res_id" : "msi_res_id";
    }
    if (name == NULL)
        return strdup("");
    esc = kv_url_escape(value);
    out = esc ? kv_strdup_printf("%s%s=%s", lead, name, esc) : NULL;
    free(esc);
    return out;
}

/*
 * Azure Arc's challenge: the 401's "WWW-Authenticate: Basic realm=FILE"
 * names a file the caller must read to prove it runs on the machine. As
 * azure-identity's _credentials/azure_arc.py (_validate_key_file) checks:
 * FILE must lie directly in the Arc tokens directory, end in .key and hold
 * at most 4096 bytes. Returns "Authorization: Basic CONTENTS" in secure
 * memory, or NULL after logging why.
 */
static char *arc_answer(const struct kv_auth *a, const char *challenge)
{
    const char *p, *dir = a->cfg.arc_token_dir;
    char path[4096], *data = NULL, *out = NULL, real[PATH_MAX],
                     realdir[PATH_MAX];
    size_t n, dl = 0;
    struct stat st;

    if (challenge == NULL || strncasecmp(challenge, "Basic", 5) != 0 ||
        (p = strchr(challenge, '=')) == NULL) {
        cmk_error("Azure Arc: the identity endpoint's 401 names no key file "
                  "(WWW-Authenticate: %s)",
                  challenge ? challenge : "(none)");
        return NULL;
    }
    p++;
    n = strlen(p);
    if (n >= 2 && p[0] == '"' && p[n - 1] == '"') {
        p++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof(path)) {
        cmk_error("Azure Arc: the key file path is empty or too long");
        return NULL;
    }
    memcpy(path, p, n);
    path[n] = '\0';
    if (realpath(path, real) == NULL || realpath(dir, realdir) == NULL ||
        strncmp(real, realdir, strlen(realdir)) != 0 ||
        real[strlen(realdir)] != '/' ||
        strchr(real + strlen(realdir) + 1, '/') != NULL) {
        cmk_error("Azure Arc: the key file %s is not in %s: refused", path,
                  dir);
        return NULL;
    }
    if (n < 5 || strcmp(path + n - 4, ".key") != 0 || stat(real, &st) != 0 ||
        !S_ISREG(st.st_mode) || st.st_size > 4096) {
        cmk_error("Azure Arc: the key file %s must be a .key file of at most "
                  "4096 bytes",
                  path);
        return NULL;
    }
    {
        /* The Arc agent owns the file (group himds): only its place, name
         * and size are checked, not the owner and mode of a secret file. */
        int fd = open(real, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        ssize_t got = 0;
        data = secure_alloc(4097);
        if (fd < 0 || data == NULL) {
            cmk_error("Azure Arc: cannot read the key file %s: %s", real,
                      fd < 0 ? strerror(errno) : "out of memory");
            if (fd >= 0)
                close(fd);
            secure_free(data);
            return NULL;
        }
        while (dl < 4096 && (got = read(fd, data + dl, 4096 - dl)) > 0)
            dl += (size_t)got;
        close(fd);
        data[dl] = '\0';
    }
    while (dl > 0 && (data[dl - 1] == '\n' || data[dl - 1] == '\r'))
        data[--dl] = '\0';
    n = dl + 32;
    out = secure_alloc(n);
    if (out != NULL)
        snprintf(out, n, "Authorization: Basic %s", data);
    secure_free(data);
    return out;
}

/*
 * A token from the managed identity endpoint of the host (wire formats of
 * azure-identity's _credentials/imds.py, app_service.py,
 * service_fabric.py, azure_arc.py, azure_ml.py and cloud_shell.py). These
 * endpoints are local to the host: never through a proxy.
 */
static CK_RV fetch_managed_identity(struct kv_auth *a, const char *resource,
                                    int64_t deadline, char **token,
                                    long long *lifetime, long *status)
{
    char *res = kv_url_escape(resource), *url = NULL, *hdr = NULL, *sel = NULL,
         *body = NULL, *basic = NULL;
    const char *headers[4] = {NULL, NULL, NULL, NULL};
    struct kv_request req;
    struct kv_response r;
    CK_RV rv = CKR_DEVICE_ERROR;

    if (res == NULL)
        return CKR_HOST_MEMORY;
    memset(&req, 0, sizeof(req));
    req.method = "GET";
    req.allow_http = true; /* the endpoints are plain http on the host */
    req.no_proxy = true;
    switch (a->cfg.mi_host) {
    case KV_MI_APP_SERVICE:
        sel = mi_selector(a, "&");
        url = kv_strdup_printf("%s?api-version=2019-08-01&resource=%s%s",
                               a->cfg.identity_endpoint, res, sel);
        hdr = kv_strdup_printf("X-IDENTITY-HEADER: %s", a->cfg.identity_header);
        break;
    case KV_MI_SERVICE_FABRIC:
        sel = mi_selector(a, "&");
        url =
            kv_strdup_printf("%s?api-version=2019-07-01-preview&resource=%s%s",
                             a->cfg.identity_endpoint, res, sel);
        hdr = kv_strdup_printf("Secret: %s", a->cfg.identity_header);
        req.pin_sha1 = a->cfg.identity_thumbprint;
        break;
    case KV_MI_ARC:
        sel = strdup("");
        url = kv_strdup_printf("%s?api-version=2019-11-01&resource=%s",
                               a->cfg.identity_endpoint, res);
        hdr = strdup("Metadata: true");
        break;
    case KV_MI_AZURE_ML:
        sel = mi_selector(a, "&");
        url = kv_strdup_printf("%s?api-version=2017-09-01&resource=%s%s",
                               a->cfg.msi_endpoint, res, sel);
        hdr = kv_strdup_printf("secret: %s", a->cfg.msi_secret);
        break;
    case KV_MI_CLOUD_SHELL:
        sel = mi_selector(a, "&");
        url = strdup(a->cfg.msi_endpoint);
        body = sel ? kv_strdup_printf("resource=%s%s", res, sel) : NULL;
        hdr = strdup("Metadata: true");
        req.method = "POST";
        req.form = true;
        req.body = body;
        break;
    case KV_MI_IMDS:
    default: {
        const char *base = a->cfg.imds_endpoint ? a->cfg.imds_endpoint
                                                : "http://169.254.169.254";
        sel = mi_selector(a, "&");
        url = kv_strdup_printf("%s/metadata/identity/oauth2/token?api-version="
                               "2018-02-01&resource=%s%s",
                               base, res, sel);
        hdr = strdup("Metadata: true");
        break;
    }
    }
    if (url == NULL || hdr == NULL || sel == NULL ||
        (req.form && body == NULL)) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    headers[0] = hdr;
    req.url = url;
    req.headers = headers;
    kv_http_do(a->http, &req, (long)(deadline - kv_now_ms()), &r);
    if (a->cfg.mi_host == KV_MI_ARC && r.curl == CURLE_OK && r.status == 401) {
        /* Arc's challenge, then the same request with the file's secret. */
        basic = arc_answer(a, r.www_authenticate);
        kv_response_clear(&r);
        if (basic == NULL) {
            *status = 401;
            goto out;
        }
        headers[1] = basic;
        kv_http_do(a->http, &req, (long)(deadline - kv_now_ms()), &r);
    }
    *status = fetch_status(&r);
    if (r.curl == CURLE_OK && r.status == 200)
        rv = parse_token(&r, url, token, lifetime);
    else
        describe_failure(a, url, &r);
    kv_response_clear(&r);
out:
    free(res);
    free(sel);
    free(url);
    free(body);
    secure_free(hdr);
    secure_free(basic);
    return rv;
}

/* Identity endpoint answers worth another try: throttling, server errors,
 * transport errors; from IMDS also 404 and every 5xx (azure-identity
 * _credentials/imds.py: retry_on_status_codes 404, 429, 500-599) and 410
 * while it updates (see kv_auth_token). */
static bool fetch_retriable(const struct kv_auth *a, long status)
{
    bool imds = a->cfg.method == KV_AUTH_MANAGED_IDENTITY &&
                a->cfg.mi_host == KV_MI_IMDS;

    if (a->cfg.method != KV_AUTH_CLIENT_SECRET &&
        a->cfg.method != KV_AUTH_CLIENT_CERTIFICATE &&
        a->cfg.method != KV_AUTH_WORKLOAD_IDENTITY &&
        a->cfg.method != KV_AUTH_MANAGED_IDENTITY)
        return false;
    if (imds &&
        (status == 404 || status == 410 || (status >= 500 && status <= 599)))
        return true;
    return status == 0 || status == 408 || status == 429 || status == 500 ||
           status == 502 || status == 503 || status == 504 ||
           (status == 410 && a->cfg.method == KV_AUTH_MANAGED_IDENTITY);
}

/* IMDS answers 410 while it updates, for up to 70 s; the first token
 * request keeps trying that long, within the call's deadline
 * (learn.microsoft.com, "How to use managed identities for Azure
 * resources on an Azure VM to acquire an access token": retry guidance). */
#define KV_IMDS_410_MS 70000

/* The fetch lock is taken with a deadline on the monotonic clock.
 * ThreadSanitizer's runtime (clang 14) does not intercept
 * pthread_mutex_clocklock, so it would see the lock released but never
 * taken; in that build only, the wall clock's pthread_mutex_timedlock. */
#if defined(__SANITIZE_THREAD__)
#define CMK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CMK_TSAN 1
#endif
#endif
#ifdef CMK_TSAN
#define LOCK_CLOCK CLOCK_REALTIME
static int timed_lock(pthread_mutex_t *m, const struct timespec *until)
{
    return pthread_mutex_timedlock(m, until);
}
#else
#define LOCK_CLOCK CLOCK_MONOTONIC
static int timed_lock(pthread_mutex_t *m, const struct timespec *until)
{
    return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, until);
}
#endif

CK_RV kv_auth_token(struct kv_auth *a, const char *resource, const char *tenant,
                    bool force, int64_t deadline_ms, char **token,
                    long *http_status)
{
    /* With force, only a token fetched after this moment will do. */
    int64_t since = kv_now_ms();
    long long lifetime = 0;
    char *t = NULL;
    int64_t requested;
    int attempt;
    CK_RV rv;

    *http_status = 0;
    if (a->cfg.method == KV_AUTH_ACCESS_TOKEN_FILE && token_file_changed(a)) {
        force = true; /* the file was replaced: read it again now */
        since = INT64_MAX;
    }
    if (!force) {
        t = cached(a, resource, false, 0);
        if (t == NULL)
            t = cached_valid(a, resource, true, NULL);
        if (t != NULL) {
            *token = t;
            return CKR_OK;
        }
    }
    /* One fetch at a time, but nobody waits for it past the deadline:
     * when the identity endpoint hangs, the threads queued behind a fetch
     * must not each start another one after their time is up. */
    {
        int64_t left = deadline_ms - kv_now_ms();
        struct timespec until;

        clock_gettime(LOCK_CLOCK, &until);
        if (left < 0)
            left = 0;
        until.tv_sec += left / 1000;
        until.tv_nsec += (left % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (timed_lock(&a->fetch_lock, &until) != 0) {
            cmk_error("cannot obtain a token (%s) for %s within the "
                      "deadline: another request for it is still waiting",
                      kv_auth_method_name(a->cfg.method), resource);
            return CKR_DEVICE_ERROR;
        }
    }
    /* Another thread may have fetched one while this one waited. */
    t = cached(a, resource, force, since);
    if (t != NULL) {
        pthread_mutex_unlock(&a->fetch_lock);
        *token = t;
        return CKR_OK;
    }
    if (deadline_ms - kv_now_ms() <= 0) {
        /* Waited until the end of the call: no time left for a request
         * (which would otherwise get the full timeout). */
        pthread_mutex_unlock(&a->fetch_lock);
        cmk_error("cannot obtain a token (%s) for %s within the deadline",
                  kv_auth_method_name(a->cfg.method), resource);
        return CKR_DEVICE_ERROR;
    }
    if (a->cfg.tenant_id != NULL)
        tenant = a->cfg.tenant_id;
    if (!force) {
        /* A renewal, while the current token is good: it may take half
         * of what is left of the call, which the vault request needs. */
        char *held = cached_valid(a, resource, false, NULL);

        if (held != NULL) {
            secure_free(held);
            deadline_ms = kv_now_ms() + (deadline_ms - kv_now_ms()) / 2;
        }
    }
    requested = kv_now_ms();
    for (attempt = 0;; attempt++) {
        int64_t wait;

        /* -1: no request was made; 0: a transport error. */
        *http_status = -1;
        switch (a->cfg.method) {
        case KV_AUTH_CLIENT_SECRET:
        case KV_AUTH_CLIENT_CERTIFICATE:
        case KV_AUTH_WORKLOAD_IDENTITY:
            rv = fetch_from_authority(a, resource, tenant, deadline_ms, &t,
                                      &lifetime, http_status);
            break;
        case KV_AUTH_MANAGED_IDENTITY:
            rv = fetch_managed_identity(a, resource, deadline_ms, &t, &lifetime,
                                        http_status);
            break;
        case KV_AUTH_AZURE_CLI:
            rv = fetch_azure_cli(a, resource, deadline_ms, &t, &lifetime);
            break;
        case KV_AUTH_ACCESS_TOKEN_FILE:
            rv = fetch_token_file(a, &t, &lifetime);
            break;
        default:
            rv = CKR_DEVICE_ERROR;
            break;
        }
        if (rv == CKR_OK || !fetch_retriable(a, *http_status))
            break;
        if (attempt >= a->cfg.retries &&
            !(*http_status == 410 &&
              a->cfg.method == KV_AUTH_MANAGED_IDENTITY &&
              kv_now_ms() - since < KV_IMDS_410_MS))
            break;
        /* A busy or restarting identity endpoint: as the SDKs do, try
         * again after a backoff, within the call's deadline. */
        wait = kv_backoff_ms(800, attempt < 4 ? attempt : 4);
        if (kv_now_ms() + wait >= deadline_ms)
            break;
        cmk_debug("token request: %ld; retry %d in %lld ms", *http_status,
                  attempt + 1, (long long)wait);
        kv_sleep_ms(wait);
    }
    if (*http_status < 0)
        *http_status = 0;
    if (rv == CKR_OK) {
        store(a, resource, t, lifetime, requested);
        *token = t;
        cmk_debug("new token for %s (%lld s)", resource, lifetime);
    } else if (!force) {
        int64_t left = 0;

        t = cached_valid(a, resource, false, &left);
        if (t != NULL) {
            renew_failed(a, resource);
            cmk_warning("renewing the token (%s) for %s failed; the current "
                        "one is used until it expires in %lld s, and "
                        "renewal is tried again in %d s",
                        kv_auth_method_name(a->cfg.method), resource,
                        (long long)(left / 1000), KV_RENEW_RETRY_MS / 1000);
            *token = t;
            rv = CKR_OK;
        }
    }
    pthread_mutex_unlock(&a->fetch_lock);
    return rv;
}
