/*
 * The keyvault back end: Azure Key Vault and Managed HSM keys over REST.
 * See docs/keyvault.md.
 */
#ifndef CMKP11_KV_H
#define CMKP11_KV_H

#include <pthread.h>
#include <stdint.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "provider.h"

#define KV_API_VERSION "7.4"

/* ---- transport (http.c) ---- */

struct kv_http;

struct kv_response {
    long status;   /* HTTP status, 0 on a transport error */
    CURLcode curl; /* the transport's result */
    char *body;    /* NUL-terminated, in secure memory */
    size_t len;
    size_t cap; /* the body's allocation */
    char *www_authenticate;
    long retry_after_ms; /* -1 if the response gave none */
    char request_id[80]; /* x-ms-request-id, for the trace and support */
};

struct kv_request {
    const char *method; /* GET, POST, PATCH, PUT, DELETE */
    const char *url;
    const char *body; /* JSON (or form data when form is set) */
    bool form;
    const char *bearer;   /* the access token, or NULL */
    const char **headers; /* extra "Name: value" lines, NULL-terminated */
    bool allow_http;      /* plain http: the IMDS endpoint only */
    int attempt;          /* retries before this one, for the trace */
    bool no_proxy;        /* never through a proxy (identity endpoints) */
    /* The server's certificate must have this SHA-1 thumbprint (hex); no
     * other check (Service Fabric's IDENTITY_SERVER_THUMBPRINT). */
    const char *pin_sha1;
};

/* Options for every request of one token. */
struct kv_http_opts {
    long timeout_ms;     /* one request */
    const char *ca_file; /* extra trust anchors, or NULL */
};

struct kv_http *kv_http_new(const struct kv_http_opts *opts);
/* in_child: forked; leaks the connections rather than shutting down TLS
 * on sockets the parent still uses. */
void kv_http_free(struct kv_http *h, bool in_child);
/* One request, no retries. timeout_ms caps this request (0: the default).
 * Returns 0, or -1 if memory ran out; transport errors are in r->curl. */
int kv_http_do(struct kv_http *h, const struct kv_request *req, long timeout_ms,
               struct kv_response *r);
void kv_response_clear(struct kv_response *r);
/* A certificate that did not verify: no retry will change that. */
bool kv_http_tls_failure(CURLcode rc);

/* ---- time ---- */
int64_t kv_now_ms(void); /* monotonic */
/* The wait before retry n (0 first) of a failed call: exponential from
 * first_ms, doubling up to 64 times it, with jitter of -20..+30 % (the
 * SDKs' exponential policy; docs/keyvault.md, "Transport"). kv-util.c. */
int64_t kv_backoff_ms(int64_t first_ms, int n);
void kv_sleep_ms(int64_t ms); /* nothing for ms <= 0 */

/* ---- authentication (auth.c) ---- */

enum kv_auth_method {
    KV_AUTH_MANAGED_IDENTITY,
    KV_AUTH_CLIENT_SECRET,
    KV_AUTH_CLIENT_CERTIFICATE,
    KV_AUTH_WORKLOAD_IDENTITY,
    KV_AUTH_AZURE_CLI,
    KV_AUTH_ACCESS_TOKEN_FILE,
};

struct kv_auth;

/* Where a managed identity's token comes from, detected from the
 * environment as azure-identity's ManagedIdentityCredential does
 * (azure/identity/_credentials/managed_identity.py). */
enum kv_mi_host {
    KV_MI_IMDS,           /* Azure VMs, AKS: 169.254.169.254 */
    KV_MI_APP_SERVICE,    /* IDENTITY_ENDPOINT + IDENTITY_HEADER */
    KV_MI_SERVICE_FABRIC, /* ... + IDENTITY_SERVER_THUMBPRINT */
    KV_MI_ARC,            /* IDENTITY_ENDPOINT + IMDS_ENDPOINT */
    KV_MI_AZURE_ML,       /* MSI_ENDPOINT + MSI_SECRET */
    KV_MI_CLOUD_SHELL,    /* MSI_ENDPOINT */
};

struct kv_auth_config {
    enum kv_auth_method method;
    char *tenant_id;
    char *client_id;
    char *authority_host; /* https://login.microsoftonline.com */
    char *secret_file;    /* client-secret-file */
    char *secondary_secret_file;
    char *imds_endpoint;     /* http://169.254.169.254 or a test endpoint */
    char *identity_endpoint; /* App Service: IDENTITY_ENDPOINT */
    char *identity_header;
    char *secret_env; /* AZURE_CLIENT_SECRET, when no file is set */
    char *cert_file;  /* client-certificate-file: PEM or PKCS#12 */
    char *cert_password_file;
    char *federated_token_file;
    char *token_file; /* access-token-file */
    long retries;     /* of a token request the identity endpoint failed */
    /* Managed identity: the host, and a user-assigned identity by object
     * id or resource id (client_id above is the third selector). */
    enum kv_mi_host mi_host;
    char *object_id;
    char *resource_id;
    char *identity_thumbprint; /* IDENTITY_SERVER_THUMBPRINT */
    char *msi_endpoint;        /* MSI_ENDPOINT */
    char *msi_secret;          /* MSI_SECRET */
    char *arc_token_dir;       /* where Arc's challenge files must be */
};

const char *kv_mi_host_name(enum kv_mi_host h);

CK_RV kv_auth_new(const struct kv_auth_config *cfg, struct kv_http *http,
                  struct kv_auth **out, char *err, size_t errlen);
void kv_auth_free(struct kv_auth *a);
/*
 * A bearer token for resource (e.g. https://vault.azure.net), from the
 * cache or fetched. force: the cached one was refused; fetch a new one.
 * tenant: from the vault's challenge, used when none is configured.
 * *token is a secure copy for the caller to secure_free().
 * http_status gets the identity endpoint's status on failure.
 */
CK_RV kv_auth_token(struct kv_auth *a, const char *resource, const char *tenant,
                    bool force, int64_t deadline_ms, char **token,
                    long *http_status);
const char *kv_auth_method_name(enum kv_auth_method m);

/* ---- errors (kv-errors.c) ---- */

/* The CKR for a failed response; fills code with Key Vault's error code. */
CK_RV kv_map_http(long status, const char *body, char *code, size_t codelen,
                  char *message, size_t msglen);

/* What an operation's own codes make of a refusal kv_map_http mapped to rv
 * (the context rows of kv-errors.c). */
enum kv_context { KV_CTX_SIGN, KV_CTX_CREATE, KV_CTX_UPDATE };
CK_RV kv_map_context(enum kv_context ctx, long status, CK_RV rv);

/* ---- helpers (kv-util.c) ---- */
/* 0 if name is a Key Vault key name (1 to 127 ASCII letters, digits and
 * hyphens); otherwise -1 with why written. */
int kv_check_key_name(const char *name, char *why, size_t len);

char *kv_b64url_encode(const unsigned char *in, size_t len);
/* The characters of base64url (no padding) for len bytes, and the
 * encoding written at out (that many characters, no NUL). */
size_t kv_b64url_len(size_t len);
void kv_b64url_write(char *out, const unsigned char *in, size_t len);
/* The strings up to NULL, one after the other, in one allocation of
 * their length (nothing left behind by a growing buffer). */
char *kv_concat(const char *s, ...) __attribute__((sentinel));
/* Decodes base64url (padded or not); returns a malloc'd buffer. */
unsigned char *kv_b64url_decode(const char *in, size_t *len);
/* The same into secure memory: free with secure_free(p). */
unsigned char *kv_b64url_decode_secret(const char *in, size_t *len);
char *kv_strdup_printf(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
char *kv_url_escape(const char *s);
const char *kv_json_str(json_object *o, const char *key);
bool kv_json_bool(json_object *o, const char *key, bool dflt);
/* A number (integer, float or decimal string); a float is clamped into
 * [LLONG_MIN / 2, LLONG_MAX / 2], NaN is the lower bound. */
long long kv_json_int(json_object *o, const char *key, long long dflt);
/* d as an integer within [lo, hi] (NaN: lo), without undefined casts. */
long long kv_clamp_double(double d, long long lo, long long hi);

#endif
