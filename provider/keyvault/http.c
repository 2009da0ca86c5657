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

/* What a request's header lines begin with: its Content-Type. */
enum kv_hdr_kind { HDR_NONE, HDR_GET, HDR_EMPTY, HDR_FORM, HDR_JSON };

/*
 * A pooled handle and what it keeps from one request to the next, as
 * libcurl keeps a handle's options: the options every request sets alike
 * are set once, those that depend on the request (protocols, proxy, the
 * certificate pin) when they change, and the header lines are kept while
 * the next request asks for the same ones (the same Content-Type and
 * bearer token, no extra lines). The lines hold the token: they are
 * wiped before they are freed, whenever the token changes or the handle
 * goes.
 */
struct kv_conn {
    CURL *c;
    pthread_t owner; /* the thread that used it last */
    struct curl_slist *headers;
    enum kv_hdr_kind kind; /* HDR_NONE: nothing to keep */
    bool set;              /* the request-dependent options below are set */
    bool allow_http, no_proxy;
    const char *pin_sha1;
};

struct kv_http {
    pthread_mutex_t lock;
    struct kv_conn *idle[KV_POOL_MAX];
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

/* Frees header lines, wiped: the last one may hold a bearer token. */
static void headers_free(struct curl_slist *headers)
{
    struct curl_slist *l;

    for (l = headers; l != NULL; l = l->next)
        secure_zero(l->data, strlen(l->data));
    curl_slist_free_all(headers);
}

/* In a forked child the connections belong to the parent: closing them
 * would send TLS alerts on its sockets. They are left alone. */
static void conn_free(struct kv_conn *k, bool in_child)
{
    if (!in_child)
        curl_easy_cleanup(k->c);
    headers_free(k->headers);
    free(k);
}

void kv_http_free(struct kv_http *h, bool in_child)
{
    int i;

    if (h == NULL)
        return;
    for (i = 0; i < h->n_idle; i++)
        conn_free(h->idle[i], in_child);
    if (!in_child && h->share != NULL)
        curl_share_cleanup(h->share);
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
static size_t on_body(char *data, size_t size, size_t n, void *user);
static size_t on_header(char *data, size_t size, size_t n, void *user);

/* A new handle with the options every request sets alike. */
static struct kv_conn *conn_new(struct kv_http *h)
{
    struct kv_conn *k = calloc(1, sizeof(*k));

    if (k == NULL)
        return NULL;
    k->c = curl_easy_init();
    if (k->c == NULL) {
        free(k);
        return NULL;
    }
    curl_easy_setopt(k->c, CURLOPT_SHARE, h->share);
    curl_easy_setopt(k->c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(k->c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(k->c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(k->c, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(k->c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(k->c, CURLOPT_USERAGENT, "cmkp11/" PACKAGE_VERSION);
    curl_easy_setopt(k->c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(k->c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(k->c, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    return k;
}

static struct kv_conn *take_handle(struct kv_http *h)
{
    pthread_t self = pthread_self();
    struct kv_conn *k = NULL;
    int i;

    pthread_mutex_lock(&h->lock);
    for (i = h->n_idle - 1; i >= 0; i--) {
        if (pthread_equal(h->idle[i]->owner, self))
            break;
    }
    if (i < 0 && h->n_idle > 0)
        i = h->n_idle - 1;
    if (i >= 0) {
        k = h->idle[i];
        h->idle[i] = h->idle[--h->n_idle];
    }
    pthread_mutex_unlock(&h->lock);
    return k != NULL ? k : conn_new(h);
}

static void give_handle(struct kv_http *h, struct kv_conn *k, bool keep)
{
    pthread_mutex_lock(&h->lock);
    if (keep && h->n_idle < KV_POOL_MAX) {
        k->owner = pthread_self();
        h->idle[h->n_idle++] = k;
        k = NULL;
    }
    pthread_mutex_unlock(&h->lock);
    if (k != NULL)
        conn_free(k, false);
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

/* The response's header lines, read as libcurl hands them over
 * (kv_headers_line, kv-parse.c). */
static size_t on_header(char *data, size_t size, size_t n, void *user)
{
    kv_headers_line(user, data, size * n);
    return size * n;
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

/* The protocols, the proxy rule and the TLS checks of this request, set
 * again only when they differ from the handle's last request. */
static void conn_options(struct kv_http *h, struct kv_conn *k,
                         const struct kv_request *req)
{
    CURL *c = k->c;

    if (k->set && k->allow_http == req->allow_http &&
        k->no_proxy == req->no_proxy && k->pin_sha1 == req->pin_sha1)
        return;
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
    k->set = true;
    k->allow_http = req->allow_http;
    k->no_proxy = req->no_proxy;
    k->pin_sha1 = req->pin_sha1;
}

#define BEARER_PREFIX "Authorization: Bearer "

/* Whether the handle's kept lines are those the request needs. */
static bool headers_fit(const struct kv_conn *k, enum kv_hdr_kind kind,
                        const struct kv_request *req)
{
    const struct curl_slist *l = k->headers;
    const size_t n = sizeof(BEARER_PREFIX) - 1;
    bool has;

    if (k->kind != kind || kind == HDR_NONE || req->headers != NULL ||
        l == NULL)
        return false;
    while (l->next != NULL)
        l = l->next;
    has = strncmp(l->data, BEARER_PREFIX, n) == 0;
    if (req->bearer == NULL)
        return !has;
    return has && strcmp(l->data + n, req->bearer) == 0;
}

/* The request's header lines on the handle: those kept when they fit,
 * else new ones (and the old wiped and freed). Lines with extra headers
 * (identity requests) are not kept. */
static void conn_headers(struct kv_conn *k, enum kv_hdr_kind kind,
                         const struct kv_request *req)
{
    static const char *const ctype[] = {
        [HDR_EMPTY] = "Content-Type:",
        [HDR_FORM] = "Content-Type: application/x-www-form-urlencoded",
        [HDR_JSON] = "Content-Type: application/json"};
    struct curl_slist *headers = NULL, *old = k->headers;
    int i;

    if (headers_fit(k, kind, req))
        return;
    if (kind != HDR_GET)
        headers = curl_slist_append(headers, ctype[kind]);
    headers = curl_slist_append(headers, "Accept: application/json");
    headers = curl_slist_append(headers, "Expect:");
    for (i = 0; req->headers != NULL && req->headers[i] != NULL; i++)
        headers = curl_slist_append(headers, req->headers[i]);
    if (req->bearer != NULL) {
        size_t len = strlen(req->bearer) + sizeof(BEARER_PREFIX);
        char *auth = secure_alloc(len);
        if (auth != NULL) {
            snprintf(auth, len, BEARER_PREFIX "%s", req->bearer);
            headers = curl_slist_append(headers, auth);
        }
        secure_free(auth);
    }
    curl_easy_setopt(k->c, CURLOPT_HTTPHEADER, headers);
    headers_free(old);
    k->headers = headers;
    k->kind = req->headers == NULL && headers != NULL ? kind : HDR_NONE;
}

int kv_http_do(struct kv_http *h, const struct kv_request *req, long timeout_ms,
               struct kv_response *r)
{
    enum kv_hdr_kind kind = HDR_GET;
    char errbuf[CURL_ERROR_SIZE] = "";
    char host[256], path[512];
    int64_t start = kv_now_ms();
    struct kv_headers hs = {r, -1, -1, -1};
    struct kv_conn *k;
    CURL *c;

    memset(r, 0, sizeof(*r));
    r->retry_after_ms = -1;
    k = take_handle(h);
    if (k == NULL)
        return -1;
    c = k->c;
    if (timeout_ms <= 0 || timeout_ms > h->timeout_ms)
        timeout_ms = h->timeout_ms;

    conn_options(h, k, req);
    curl_easy_setopt(c, CURLOPT_URL, req->url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hs);
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
        kind = body[0] == '\0' ? HDR_EMPTY : req->form ? HDR_FORM : HDR_JSON;
    }
    conn_headers(k, kind, req);

    r->curl = curl_easy_perform(c);
    r->retry_after_ms = kv_headers_retry_ms(&hs);
    if (r->curl == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    else if (kv_http_tls_failure(r->curl)) {
        url_parts(req->url, host, sizeof(host), path, sizeof(path));
        tls_failure(c, host, errbuf);
    }
    /* The request trace (log-level = debug, CMKP11_DEBUG=http): never the
     * query, a header or a body. */
    if (cmk_debug_mask & CMK_DEBUG_HTTP) {
        url_parts(req->url, host, sizeof(host), path, sizeof(path));
        cmk_debug_msg(CMK_DEBUG_HTTP, __FILE__, __LINE__, __func__,
                      "%s %s%s: %ld%s%s, x-ms-request-id %s, %lld ms, "
                      "retry %d",
                      req->method, host, path, r->status,
                      r->curl != CURLE_OK ? " " : "",
                      r->curl != CURLE_OK ? curl_easy_strerror(r->curl) : "",
                      r->request_id[0] ? r->request_id : "-",
                      (long long)(kv_now_ms() - start), req->attempt);
    }
    if (r->body == NULL) {
        r->body = secure_alloc(1);
        r->cap = 1;
        r->len = 0;
    }
    /* Drop every reference to this request's data before pooling; the
     * header lines stay with the handle when they may serve the next. */
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, NULL);
    if (k->kind == HDR_NONE) {
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
        headers_free(k->headers);
        k->headers = NULL;
    }
    give_handle(h, k, r->curl == CURLE_OK);
    return r->body != NULL ? 0 : -1;
}
