/*
 * HTTPS transport with libcurl. Each token keeps a pool of easy handles;
 * a handle keeps its connection alive between requests, and the handles
 * share DNS answers and TLS sessions, so calls from many threads reuse
 * connections. TLS is always verified; ca-file adds trust anchors to the
 * system's. Proxies come from the usual environment variables (libcurl).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "debug.h"
#include "kv-parse.h"
#include "kv.h"
#include "secure.h"

#define KV_POOL_MAX 64
#define KV_MAX_BODY (4L * 1024 * 1024)

/* An idle handle, and the thread that used it last. */
struct kv_idle {
    CURL *c;
    pthread_t owner;
};

struct kv_http {
    pthread_mutex_t lock;
    struct kv_idle idle[KV_POOL_MAX];
    int n_idle;
    CURLSH *share;
    pthread_mutex_t share_lock[CURL_LOCK_DATA_LAST];
    long timeout_ms;
    char *ca_file;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int64_t kv_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access,
                       void *user)
{
    struct kv_http *kh = user;

    (void)h;
    (void)access;
    if (data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&kh->share_lock[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *user)
{
    struct kv_http *kh = user;

    (void)h;
    if (data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&kh->share_lock[data]);
}

struct kv_http *kv_http_new(const struct kv_http_opts *opts)
{
    struct kv_http *h;
    int i;

    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return NULL;
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    pthread_mutex_init(&h->lock, NULL);
    for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&h->share_lock[i], NULL);
    h->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    if (opts->ca_file != NULL && (h->ca_file = strdup(opts->ca_file)) == NULL)
        goto fail;
    h->share = curl_share_init();
    if (h->share == NULL)
        goto fail;
    curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(h->share, CURLSHOPT_USERDATA, h);
    curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    return h;
fail:
    kv_http_free(h, false);
    return NULL;
}

void kv_http_free(struct kv_http *h, bool in_child)
{
    int i;

    if (h == NULL)
        return;
    /* In a forked child the connections belong to the parent: closing
     * them would send TLS alerts on its sockets. They are left alone. */
    if (!in_child) {
        for (i = 0; i < h->n_idle; i++)
            curl_easy_cleanup(h->idle[i].c);
        if (h->share != NULL)
            curl_share_cleanup(h->share);
    }
    for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&h->share_lock[i]);
    pthread_mutex_destroy(&h->lock);
    free(h->ca_file);
    free(h);
}

/*
 * A thread takes back the handle it used last when it is idle, else the
 * one given back last. Handles that move between threads make each call
 * allocate in one thread's malloc arena what another thread frees (the
 * connection's TLS buffers, libcurl's per-transfer state): with many
 * threads the arenas' locks are then contended on every call and their
 * heaps grow and shrink (futex and mprotect calls; docs/performance.md,
 * "Many threads"). A thread that keeps its handle allocates and frees in
 * its own arena, as a client with a handle per thread does.
 */
static CURL *take_handle(struct kv_http *h)
{
    pthread_t self = pthread_self();
    CURL *c = NULL;
    int i;

    pthread_mutex_lock(&h->lock);
    for (i = h->n_idle - 1; i >= 0; i--) {
        if (pthread_equal(h->idle[i].owner, self))
            break;
    }
    if (i < 0 && h->n_idle > 0)
        i = h->n_idle - 1;
    if (i >= 0) {
        c = h->idle[i].c;
        h->idle[i] = h->idle[--h->n_idle];
    }
    pthread_mutex_unlock(&h->lock);
    if (c == NULL) {
        c = curl_easy_init();
        if (c != NULL)
            curl_easy_setopt(c, CURLOPT_SHARE, h->share);
    }
    return c;
}

static void give_handle(struct kv_http *h, CURL *c, bool keep)
{
    pthread_mutex_lock(&h->lock);
    if (keep && h->n_idle < KV_POOL_MAX) {
        h->idle[h->n_idle].c = c;
        h->idle[h->n_idle++].owner = pthread_self();
        c = NULL;
    }
    pthread_mutex_unlock(&h->lock);
    if (c != NULL)
        curl_easy_cleanup(c);
}

/*
 * Bodies may hold key material (unwrap, decrypt) or access tokens: they
 * are received into secure memory, and every buffer given up while the
 * body grows is wiped (docs/keyvault.md, "Answers in memory").
 */
static size_t on_body(char *data, size_t size, size_t n, void *user)
{
    struct kv_response *r = user;
    size_t len = size * n;
    char *nb;

    if (len > (size_t)KV_MAX_BODY || r->len + len + 1 > (size_t)KV_MAX_BODY)
        return 0;
    if (r->len + len + 1 > r->cap) {
        size_t ncap = r->cap ? r->cap : 1024;
        while (ncap < r->len + len + 1)
            ncap *= 2;
        nb = secure_alloc(ncap);
        if (nb == NULL)
            return 0;
        if (r->body != NULL)
            memcpy(nb, r->body, r->len);
        secure_free(r->body);
        r->body = nb;
        r->cap = ncap;
    }
    memcpy(r->body + r->len, data, len);
    r->len += len;
    r->body[r->len] = '\0';
    return len;
}

/*
 * The value of the last NAME header of the final response, or NULL: libcurl
 * (curl_easy_header, 7.84) keeps the headers of the transfer until the
 * handle's next one, without surrounding white space. CURLH_HEADER leaves
 * out a proxy's CONNECT answer and any 1xx response; a name repeated keeps
 * the last, as a parser of every line would.
 */
static const char *header(CURL *c, const char *name)
{
    struct curl_header *h;
    size_t n;

    if (curl_easy_header(c, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
        return NULL;
    n = h->amount;
    if (n > 1 &&
        curl_easy_header(c, name, n - 1, CURLH_HEADER, -1, &h) != CURLHE_OK)
        return NULL;
    return h->value;
}

/* What the response's headers say for the retry policy, the challenge
 * and the trace. retry-after-ms and x-ms-retry-after-ms (milliseconds)
 * come before Retry-After (seconds; an HTTP date is not used by Key Vault).
 */
static void read_headers(CURL *c, struct kv_response *r)
{
    static const char *const ms[] = {"retry-after-ms", "x-ms-retry-after-ms"};
    const char *v;
    size_t i;

    if ((v = header(c, "WWW-Authenticate")) != NULL)
        r->www_authenticate = strdup(v);
    if ((v = header(c, "x-ms-request-id")) != NULL)
        snprintf(r->request_id, sizeof(r->request_id), "%s", v);
    for (i = 0; i < sizeof(ms) / sizeof(ms[0]) && r->retry_after_ms < 0; i++)
        if ((v = header(c, ms[i])) != NULL)
            r->retry_after_ms = kv_parse_retry_ms(v, strlen(v), 1);
    if (r->retry_after_ms < 0 && (v = header(c, "Retry-After")) != NULL)
        r->retry_after_ms = kv_parse_retry_ms(v, strlen(v), 1000);
}

static CURLcode on_ssl_ctx(CURL *c, void *ssl_ctx, void *user)
{
    struct kv_http *h = user;
    X509_STORE *store = SSL_CTX_get_cert_store(ssl_ctx);

    (void)c;
    /* Added to the system's anchors, not instead of them. */
    if (h->ca_file != NULL && X509_STORE_load_file(store, h->ca_file) != 1)
        return CURLE_SSL_CACERT_BADFILE;
    return CURLE_OK;
}

/* ---- a server certificate pinned by its SHA-1 thumbprint ---- */

static pthread_once_t pin_once = PTHREAD_ONCE_INIT;
static int pin_index = -1;

static void pin_init(void)
{
    pin_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* Accepts the chain only for a leaf with the pinned thumbprint; the
 * issuers, names and dates are not checked (the pin is the trust). */
static int pin_verify(int ok, X509_STORE_CTX *st)
{
    SSL *ssl =
        X509_STORE_CTX_get_ex_data(st, SSL_get_ex_data_X509_STORE_CTX_idx());
    const char *pin =
        ssl ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), pin_index) : NULL;
    X509 *cert = X509_STORE_CTX_get_current_cert(st);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];

    (void)ok;
    if (X509_STORE_CTX_get_error_depth(st) > 0)
        return 1;
    if (pin == NULL || cert == NULL ||
        X509_digest(cert, EVP_sha1(), md, &n) != 1)
        return 0;
    cmk_hex(md, n, hex);
    if (strlen(pin) != 2 * n || strncasecmp(hex, pin, 2 * n) != 0) {
        cmk_error("the identity endpoint's certificate has thumbprint %s, "
                  "not the pinned %s: refused",
                  hex, pin);
        return 0;
    }
    X509_STORE_CTX_set_error(st, X509_V_OK);
    return 1;
}

static CURLcode on_ssl_ctx_pin(CURL *c, void *ssl_ctx, void *user)
{
    (void)c;
    pthread_once(&pin_once, pin_init);
    if (pin_index < 0 || SSL_CTX_set_ex_data(ssl_ctx, pin_index, user) != 1)
        return CURLE_SSL_CERTPROBLEM;
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_PEER, pin_verify);
    return CURLE_OK;
}

void kv_response_clear(struct kv_response *r)
{
    secure_free(r->body);
    free(r->www_authenticate);
    memset(r, 0, sizeof(*r));
    r->retry_after_ms = -1;
}

bool kv_http_tls_failure(CURLcode rc)
{
    return rc == CURLE_PEER_FAILED_VERIFICATION;
}

/* The origin ("https://host[:port]") and the path of url, the query left
 * out (it may carry what is not for a log). */
static void url_parts(const char *url, char *origin, size_t olen, char *path,
                      size_t plen)
{
    const char *h = strstr(url, "://"), *p;
    size_t n;

    h = h ? h + 3 : url;
    p = h + strcspn(h, "/?#");
    snprintf(origin, olen, "%.*s", (int)(p - url), url);
    n = strcspn(p, "?#");
    snprintf(path, plen, "%.*s", (int)n, n ? p : "/");
}

/*
 * The certificate did not verify: which host, what OpenSSL said (the
 * verify result: untrusted issuer, expired...; or libcurl's host name
 * check), and the remedy. Not retried: the answer would be the same.
 */
static void tls_failure(CURL *c, const char *origin, const char *errbuf)
{
    const char *host = strstr(origin, "://");
    long vr = 0;
    const char *why;

    curl_easy_getinfo(c, CURLINFO_SSL_VERIFYRESULT, &vr);
    /* A name that does not match is libcurl's own check, which leaves no
     * particular verify result: its message says it. */
    if (vr != X509_V_OK && vr != X509_V_ERR_UNSPECIFIED)
        why = X509_verify_cert_error_string(vr);
    else
        why = errbuf[0] ? errbuf : "verification failed";
    cmk_error("TLS: the certificate of %s was not accepted: %s; if a CA of "
              "your own issued it, name its certificate (PEM) in ca-file, "
              "which adds trust anchors to the system's",
              host ? host + 3 : origin, why);
}

int kv_http_do(struct kv_http *h, const struct kv_request *req, long timeout_ms,
               struct kv_response *r)
{
    struct curl_slist *headers = NULL;
    char *auth = NULL, errbuf[CURL_ERROR_SIZE] = "";
    char host[256], path[512];
    size_t auth_len = 0;
    int64_t start = kv_now_ms();
    CURL *c;
    int i;

    memset(r, 0, sizeof(*r));
    r->retry_after_ms = -1;
    c = take_handle(h);
    if (c == NULL)
        return -1;
    if (timeout_ms <= 0 || timeout_ms > h->timeout_ms)
        timeout_ms = h->timeout_ms;

    curl_easy_setopt(c, CURLOPT_URL, req->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR,
                     req->allow_http ? "http,https" : "https");
    if (req->pin_sha1 != NULL) {
        /* The pin replaces the chain and name checks; no TLS session is
         * resumed, so every handshake sees the certificate. */
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_SESSIONID_CACHE, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx_pin);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, (void *)req->pin_sha1);
    } else {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(c, CURLOPT_SSL_SESSIONID_CACHE, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, h);
    }
    /* Identity endpoints are local to the host: never through a proxy. */
    curl_easy_setopt(c, CURLOPT_NOPROXY, req->no_proxy ? "*" : NULL);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "cmkp11/" PACKAGE_VERSION);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    if (strcmp(req->method, "GET") != 0) {
        const char *body = req->body ? req->body : "";
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        if (strcmp(req->method, "POST") != 0)
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req->method);
        /* An empty body (rotate) goes without a content type. */
        headers = curl_slist_append(
            headers, body[0] == '\0' ? "Content-Type:"
                     : req->form
                         ? "Content-Type: application/x-www-form-urlencoded"
                         : "Content-Type: application/json");
    }
    headers = curl_slist_append(headers, "Accept: application/json");
    headers = curl_slist_append(headers, "Expect:");
    for (i = 0; req->headers != NULL && req->headers[i] != NULL; i++)
        headers = curl_slist_append(headers, req->headers[i]);
    if (req->bearer != NULL) {
        auth_len = strlen(req->bearer) + 32;
        auth = secure_alloc(auth_len);
        if (auth != NULL) {
            snprintf(auth, auth_len, "Authorization: Bearer %s", req->bearer);
            headers = curl_slist_append(headers, auth);
        }
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);

    r->curl = curl_easy_perform(c);
    read_headers(c, r);
    url_parts(req->url, host, sizeof(host), path, sizeof(path));
    if (r->curl == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    else if (kv_http_tls_failure(r->curl))
        tls_failure(c, host, errbuf);
    /* The request trace (log-level = debug, CMKP11_DEBUG=http): never the
     * query, a header or a body. */
    if (cmk_debug_mask & CMK_DEBUG_HTTP)
        cmk_debug_msg(CMK_DEBUG_HTTP, __FILE__, __LINE__, __func__,
                      "%s %s%s: %ld%s%s, x-ms-request-id %s, %lld ms, "
                      "retry %d",
                      req->method, host, path, r->status,
                      r->curl != CURLE_OK ? " " : "",
                      r->curl != CURLE_OK ? curl_easy_strerror(r->curl) : "",
                      r->request_id[0] ? r->request_id : "-",
                      (long long)(kv_now_ms() - start), req->attempt);
    if (r->body == NULL) {
        r->body = secure_alloc(1);
        r->cap = 1;
        r->len = 0;
    }
    /* Drop every reference to this request's data before pooling. */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    if (headers != NULL) {
        /* The header list holds a copy of the bearer token. */
        struct curl_slist *l;
        for (l = headers; l != NULL; l = l->next)
            secure_zero(l->data, strlen(l->data));
        curl_slist_free_all(headers);
    }
    secure_free(auth);
    give_handle(h, c, r->curl == CURLE_OK);
    return r->body != NULL ? 0 : -1;
}
