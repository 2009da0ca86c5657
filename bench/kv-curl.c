/*
 * kv-curl - the baseline clients of the Key Vault benchmark: Key Vault
 * unwrapkey requests straight through libcurl, without cmkp11.
 *
 *   kv-curl [-d SECONDS] [-t N[,N...]] [-w WARMUP] [-f] [-v]
 *           VAULT-URL KEY LOGIN-URL TENANT CLIENT-ID SECRET-FILE CA-FILE
 *
 * Set-up: a bearer token from Entra ID (client credentials with the client
 * secret read from SECRET-FILE, POST LOGIN-URL/TENANT/oauth2/v2.0/token,
 * scope derived from the vault host as Microsoft's C++ SDK does), the
 * current version of KEY (GET VAULT-URL/keys/KEY), and an AES-256 key
 * wrapped locally with its public key (RSA-OAEP-256).
 *
 * Each measured operation is POST {kid}/unwrapkey?api-version=7.4 with
 * {"alg":"RSA-OAEP-256","value":BASE64URL}; the answer is parsed (json-c)
 * and its value must decode to the AES key. Every thread has its own
 * libcurl easy handle.
 *
 * Default (keep-alive): the easy handle, and so its connection, is reused
 * for every request of the thread, with the one bearer token from set-up;
 * TLS is verified against CA-FILE, HTTP/2 is asked for where offered.
 *
 * -f (fresh): each operation is what an engine without a connection pool or
 * a token cache does: a new easy handle and a new connection
 * (CURLOPT_FRESH_CONNECT, CURLOPT_FORBID_REUSE) for a new token request,
 * then another one for the unwrap.
 *
 * Output, one line per thread count on stdout, as p11bench:
 *   OP THREADS OPS_PER_SECOND OPS_PER_CPU_SECOND
 * with OP "curl-unwrap" or "curl-fresh-unwrap". Exit status 1 when a
 * request fails.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#define MAX_THREADS 64
#define API         "api-version=7.4"

struct bench {
    const char *ca_file;
    char *token_url;  /* LOGIN-URL/TENANT/oauth2/v2.0/token */
    char *token_form; /* the client-credentials form */
    char *token;      /* keep-alive: the bearer token of set-up */
    char *unwrap_url; /* {kid}/unwrapkey?api-version=7.4 */
    char *unwrap_body;
    unsigned char aes_key[32];
    int fresh;

    double seconds;
    unsigned long warmup;
    pthread_barrier_t start;
    atomic_int stop;
    int verbose;
};

struct buf {
    char *data;
    size_t len, cap;
};

struct worker {
    struct bench *b;
    pthread_t tid;
    CURL *curl; /* keep-alive: this thread's handle */
    struct curl_slist *headers;
    struct buf body;
    unsigned long ops;
    struct timespec t0, t1;
    int failed;
    char err[512];
};

static const char *prog = "kv-curl";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(3);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: %s [-d SECONDS] [-t N[,N...]] [-w WARMUP] [-f] [-v]\n"
            "          VAULT-URL KEY LOGIN-URL TENANT CLIENT-ID SECRET-FILE "
            "CA-FILE\n"
            "  -d SECONDS  length of each measurement (default 3)\n"
            "  -t LIST     thread counts (default 1)\n"
            "  -w WARMUP   untimed operations per thread first (default 5)\n"
            "  -f          new connection and new token for every unwrap\n"
            "  -v          details on stderr\n"
            "output, one line per measurement:\n"
            "  OP THREADS OPS_PER_SECOND OPS_PER_CPU_SECOND\n",
            prog);
    exit(2);
}

static char *xasprintf(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        die("out of memory");
    return s;
}

static double elapsed(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) +
           (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec ||
           (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* ---- base64url ---------------------------------------------------------- */

static char *b64url_encode(const unsigned char *in, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    size_t i, n;

    if (!out)
        die("out of memory");
    n = (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return out;
}

/* Decodes S (base64url, padded or not) into OUT; returns the length or -1. */
static long b64url_decode(const char *s, unsigned char *out, size_t out_size)
{
    size_t len = strlen(s), i, pad;
    char tmp[2048];
    int n;

    while (len > 0 && s[len - 1] == '=')
        len--;
    pad = (4 - len % 4) % 4;
    if (len + pad >= sizeof(tmp) || pad == 3 || (len + pad) / 4 * 3 > out_size)
        return -1;
    for (i = 0; i < len; i++)
        tmp[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    for (i = 0; i < pad; i++)
        tmp[len + i] = '=';
    tmp[len + pad] = '\0';
    n = EVP_DecodeBlock(out, (unsigned char *)tmp, (int)(len + pad));
    if (n < 0)
        return -1;
    return (long)(n - (int)pad);
}

/* ---- HTTP ----------------------------------------------------------------
 */

static size_t on_body(char *data, size_t size, size_t n, void *user)
{
    struct buf *b = user;
    size_t len = size * n;

    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;

        while (cap < b->len + len + 1)
            cap *= 2;
        p = realloc(b->data, cap);
        if (!p)
            return 0;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

/* A handle with the options every request has. */
static CURL *new_handle(struct bench *b, struct buf *body, int fresh)
{
    CURL *c = curl_easy_init();

    if (!c)
        die("curl_easy_init failed");
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_CAINFO, b->ca_file);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    if (fresh) {
        curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
    }
    return c;
}

/*
 * Performs a request on C (POST when POST_BODY is set) and returns the
 * parsed JSON answer, or NULL with ERR set; status must be 200.
 */
static json_object *perform(CURL *c, struct buf *body, const char *url,
                            struct curl_slist *headers, const char *post_body,
                            char *err, size_t err_size)
{
    json_object *j;
    CURLcode rc;
    long status = 0;

    body->len = 0;
    if (body->data)
        body->data[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    if (post_body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post_body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(post_body));
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    rc = curl_easy_perform(c);
    if (rc != CURLE_OK) {
        snprintf(err, err_size, "%s: %s", url, curl_easy_strerror(rc));
        return NULL;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        snprintf(err, err_size, "%s: HTTP %ld: %.200s", url, status,
                 body->data ? body->data : "");
        return NULL;
    }
    j = body->data ? json_tokener_parse(body->data) : NULL;
    if (!j)
        snprintf(err, err_size, "%s: the answer is not JSON", url);
    return j;
}

static const char *json_str(json_object *j, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(j, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

/* "Authorization: Bearer ..." for a new token, or NULL with ERR set. */
static char *get_token(struct bench *b, int fresh, char *err, size_t err_size)
{
    struct buf body = {0};
    struct curl_slist *h = NULL;
    CURL *c = new_handle(b, &body, fresh);
    json_object *j;
    const char *tok;
    char *auth = NULL;

    h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:");
    j = perform(c, &body, b->token_url, h, b->token_form, err, err_size);
    if (j) {
        tok = json_str(j, "access_token");
        if (tok)
            auth = xasprintf("Authorization: Bearer %s", tok);
        else
            snprintf(err, err_size, "no access_token in the answer");
        json_object_put(j);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    free(body.data);
    return auth;
}

static struct curl_slist *vault_headers(const char *auth)
{
    struct curl_slist *h = NULL;

    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:");
    return curl_slist_append(h, auth);
}

/* ---- the operation -------------------------------------------------------
 */

static void fail(struct worker *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail(struct worker *w, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(w->err, sizeof(w->err), fmt, ap);
    va_end(ap);
    w->failed = 1;
}

/* One unwrap on C with HEADERS; checks the answer. Returns 0 or -1. */
static int unwrap_on(struct worker *w, CURL *c, struct curl_slist *headers)
{
    struct bench *b = w->b;
    unsigned char key[64];
    json_object *j;
    const char *v;
    long n;

    j = perform(c, &w->body, b->unwrap_url, headers, b->unwrap_body, w->err,
                sizeof(w->err));
    if (!j) {
        w->failed = 1;
        return -1;
    }
    v = json_str(j, "value");
    n = v ? b64url_decode(v, key, sizeof(key)) : -1;
    json_object_put(j);
    if (n != (long)sizeof(b->aes_key) || memcmp(key, b->aes_key, 32) != 0) {
        fail(w, "unwrapkey: not the key that was wrapped");
        return -1;
    }
    return 0;
}

static int run_op(struct worker *w)
{
    struct bench *b = w->b;
    struct curl_slist *h;
    char *auth;
    CURL *c;
    int rv;

    if (!b->fresh)
        return unwrap_on(w, w->curl, w->headers);
    auth = get_token(b, 1, w->err, sizeof(w->err));
    if (!auth) {
        w->failed = 1;
        return -1;
    }
    h = vault_headers(auth);
    c = new_handle(b, &w->body, 1);
    rv = unwrap_on(w, c, h);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    free(auth);
    return rv;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct bench *b = w->b;
    unsigned long i;

    for (i = 0; i < b->warmup && !w->failed; i++)
        run_op(w);
    pthread_barrier_wait(&b->start);
    clock_gettime(CLOCK_MONOTONIC, &w->t0);
    while (!w->failed &&
           !atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        if (run_op(w) == 0)
            w->ops++;
    }
    clock_gettime(CLOCK_MONOTONIC, &w->t1);
    if (w->failed)
        atomic_store(&b->stop, 1);
    return NULL;
}

/* As p11bench's measure(): ops/s, *PER_CPU ops per CPU second, or -1. */
static double measure(struct bench *b, unsigned nthreads, double *per_cpu)
{
    static struct worker w[MAX_THREADS];
    struct timespec t0, t1, d;
    double cpu0, cpu;
    unsigned long total = 0;
    unsigned i;
    int failed = 0;

    memset(w, 0, sizeof(w));
    atomic_store(&b->stop, 0);
    if (pthread_barrier_init(&b->start, NULL, nthreads + 1) != 0)
        die("pthread_barrier_init failed");
    for (i = 0; i < nthreads; i++) {
        w[i].b = b;
        if (!b->fresh) {
            w[i].curl = new_handle(b, &w[i].body, 0);
            w[i].headers = vault_headers(b->token);
        }
        if (pthread_create(&w[i].tid, NULL, worker_main, &w[i]) != 0)
            die("pthread_create failed");
    }
    pthread_barrier_wait(&b->start);
    cpu0 = cpu_seconds();
    d.tv_sec = (time_t)b->seconds;
    d.tv_nsec = (long)((b->seconds - (double)d.tv_sec) * 1e9);
    while (nanosleep(&d, &d) != 0 && errno == EINTR)
        ;
    atomic_store(&b->stop, 1);
    for (i = 0; i < nthreads; i++)
        pthread_join(w[i].tid, NULL);
    cpu = cpu_seconds() - cpu0;
    pthread_barrier_destroy(&b->start);

    t0 = w[0].t0;
    t1 = w[0].t1;
    for (i = 0; i < nthreads; i++) {
        if (ts_before(&w[i].t0, &t0))
            t0 = w[i].t0;
        if (ts_before(&t1, &w[i].t1))
            t1 = w[i].t1;
        total += w[i].ops;
        if (w[i].failed) {
            fprintf(stderr, "%s: thread %u: %s\n", prog, i + 1, w[i].err);
            failed = 1;
        }
        if (w[i].curl)
            curl_easy_cleanup(w[i].curl);
        curl_slist_free_all(w[i].headers);
        free(w[i].body.data);
    }
    if (b->verbose)
        fprintf(stderr, "%s: x%u: %lu ops in %.3f s, %.3f s of CPU\n", prog,
                nthreads, total, elapsed(&t0, &t1), cpu);
    if (failed)
        return -1;
    *per_cpu = cpu > 0 ? (double)total / cpu : 0;
    return elapsed(&t0, &t1) > 0 ? (double)total / elapsed(&t0, &t1) : 0;
}

/* ---- set-up --------------------------------------------------------------
 */

static char *read_secret(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    size_t n;

    if (!f || !fgets(line, sizeof(line), f))
        die("cannot read %s", path);
    fclose(f);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    return strdup(line);
}

/* https://NAME.vault.example:443 -> https://vault.example:443/.default */
static char *scope_for(const char *vault_url)
{
    const char *host = strstr(vault_url, "://");
    const char *dot;
    size_t n;

    if (!host)
        die("bad vault URL: %s", vault_url);
    host += 3;
    dot = strchr(host, '.');
    if (!dot)
        die("bad vault URL: %s", vault_url);
    n = strcspn(dot + 1, "/");
    return xasprintf("https://%.*s/.default", (int)n, dot + 1);
}

static EVP_PKEY *jwk_public(json_object *jwk)
{
    unsigned char n[1024], e[16];
    const char *sn = json_str(jwk, "n"), *se = json_str(jwk, "e");
    long nl = sn ? b64url_decode(sn, n, sizeof(n)) : -1;
    long el = se ? b64url_decode(se, e, sizeof(e)) : -1;
    BIGNUM *bn_n, *bn_e;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx;
    EVP_PKEY *key = NULL;

    if (nl <= 0 || el <= 0)
        die("the key has no RSA public key");
    bn_n = BN_bin2bn(n, (int)nl, NULL);
    bn_e = BN_bin2bn(e, (int)el, NULL);
    if (!bld || !bn_n || !bn_e ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) ||
        !(params = OSSL_PARAM_BLD_to_param(bld)))
        die("public key parameters");
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        die("public key");
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return key;
}

/* Fetches the key, wraps b->aes_key with it, sets the unwrap request. */
static void setup_key(struct bench *b, const char *vault_url, const char *name)
{
    struct buf body = {0};
    struct curl_slist *h = vault_headers(b->token);
    CURL *c = new_handle(b, &body, 0);
    char err[512], *url, *wrapped_b64;
    json_object *j, *jwk;
    const char *kid;
    unsigned char wrapped[1024];
    size_t wlen = sizeof(wrapped);
    EVP_PKEY_CTX *ctx;
    EVP_PKEY *pub;

    url = xasprintf("%s/keys/%s?" API, vault_url, name);
    j = perform(c, &body, url, h, NULL, err, sizeof(err));
    if (!j)
        die("%s", err);
    if (!json_object_object_get_ex(j, "key", &jwk) ||
        !(kid = json_str(jwk, "kid")))
        die("%s: no key.kid in the answer", url);
    pub = jwk_public(jwk);
    b->unwrap_url = xasprintf("%s/unwrapkey?" API, kid);
    json_object_put(j);

    if (RAND_bytes(b->aes_key, sizeof(b->aes_key)) != 1)
        die("RAND_bytes failed");
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
    if (!ctx || EVP_PKEY_encrypt_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) <= 0 ||
        EVP_PKEY_encrypt(ctx, wrapped, &wlen, b->aes_key, sizeof(b->aes_key)) <=
            0)
        die("RSA-OAEP-256 encryption failed");
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pub);
    wrapped_b64 = b64url_encode(wrapped, wlen);
    b->unwrap_body =
        xasprintf("{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}", wrapped_b64);
    free(wrapped_b64);
    free(url);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    free(body.data);
}

static unsigned long parse_ulong(const char *s, const char *what)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v == ULONG_MAX)
        die("bad %s: %s", what, s);
    return v;
}

int main(int argc, char **argv)
{
    static struct bench b;
    unsigned threads[16];
    size_t nthreads = 0, i;
    const char *thread_list = "1";
    char *copy, *tok, *save, *secret, *scope, *e_scope, *e_id, *e_secret;
    char err[512];
    int opt, failed = 0;

    b.seconds = 3;
    b.warmup = 5;
    while ((opt = getopt(argc, argv, "d:t:w:fvh")) != -1) {
        switch (opt) {
        case 'd':
            b.seconds = strtod(optarg, NULL);
            if (!(b.seconds > 0 && b.seconds < 86400))
                die("bad duration: %s", optarg);
            break;
        case 't':
            thread_list = optarg;
            break;
        case 'w':
            b.warmup = parse_ulong(optarg, "warm-up count");
            break;
        case 'f':
            b.fresh = 1;
            break;
        case 'v':
            b.verbose = 1;
            break;
        default:
            usage();
        }
    }
    if (argc - optind != 7)
        usage();
    copy = strdup(thread_list);
    for (tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        unsigned long n = parse_ulong(tok, "thread count");

        if (n < 1 || n > MAX_THREADS || nthreads == sizeof(threads) / 4)
            die("bad thread count: %s", tok);
        threads[nthreads++] = (unsigned)n;
    }
    free(copy);
    if (nthreads == 0)
        usage();

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        die("curl_global_init failed");
    b.ca_file = argv[optind + 6];
    b.token_url = xasprintf("%s/%s/oauth2/v2.0/token", argv[optind + 2],
                            argv[optind + 3]);
    secret = read_secret(argv[optind + 5]);
    scope = scope_for(argv[optind]);
    e_scope = curl_easy_escape(NULL, scope, 0);
    e_id = curl_easy_escape(NULL, argv[optind + 4], 0);
    e_secret = curl_easy_escape(NULL, secret, 0);
    if (!e_scope || !e_id || !e_secret)
        die("out of memory");
    b.token_form = xasprintf("grant_type=client_credentials&client_id=%s"
                             "&client_secret=%s&scope=%s",
                             e_id, e_secret, e_scope);
    curl_free(e_scope);
    curl_free(e_id);
    curl_free(e_secret);
    free(scope);
    free(secret);
    b.token = get_token(&b, 0, err, sizeof(err));
    if (!b.token)
        die("token: %s", err);
    setup_key(&b, argv[optind], argv[optind + 1]);

    for (i = 0; i < nthreads; i++) {
        double rate, per_cpu = 0;

        rate = measure(&b, threads[i], &per_cpu);
        if (rate < 0) {
            failed = 1;
            continue;
        }
        printf("%s %u %.1f %.1f\n",
               b.fresh ? "curl-fresh-unwrap" : "curl-unwrap", threads[i], rate,
               per_cpu);
        fflush(stdout);
    }
    free(b.token);
    free(b.token_url);
    free(b.token_form);
    free(b.unwrap_url);
    free(b.unwrap_body);
    curl_global_cleanup();
    return failed ? 1 : 0;
}
