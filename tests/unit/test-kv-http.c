/*
 * The keyvault transport's answers in memory (docs/keyvault.md, "Answers
 * in memory"): a body is received into the secure pool, is whole when it
 * grows, and is wiped when the response is cleared; the value of a result
 * is wiped in the parsed document; absurd Retry-After headers are
 * clamped; the header lines a pooled handle keeps follow the bearer
 * token; only the final response's headers count. A small HTTP server in
 * a thread answers kv_http_do().
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kv-parse.h"
#include "kv.h"
#include "secure.h"
#include "test.h"

static int listen_fd;
static const char *answer_headers;
static const char *answer_interim = ""; /* a 1xx response before the answer */
static char *answer_body;
static char last_request[8192]; /* the request line and headers */

/* One answer per connection, until the listening socket is closed. */
static void *serve(void *arg)
{
    (void)arg;
    for (;;) {
        char req[8192], head[512];
        size_t got = 0;
        ssize_t n;
        int fd = accept(listen_fd, NULL, NULL);

        if (fd < 0)
            return NULL;
        while (got < sizeof(req) - 1 &&
               (n = read(fd, req + got, sizeof(req) - 1 - got)) > 0) {
            got += (size_t)n;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n") != NULL)
                break;
        }
        memcpy(last_request, req, got + 1);
        snprintf(head, sizeof(head),
                 "%sHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n%s\r\n",
                 answer_interim, strlen(answer_body), answer_headers);
        if (write(fd, head, strlen(head)) < 0 ||
            write(fd, answer_body, strlen(answer_body)) < 0)
            test_diag("write failed");
        close(fd);
    }
}

static bool all_zero(const unsigned char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

int main(void)
{
    struct kv_http_opts opts = {5000, NULL};
    struct kv_http *h;
    struct kv_request req;
    struct kv_response r;
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    pthread_t th;
    char url[64], why[128];
    unsigned char *p, *dec;
    size_t cap, declen, i;
    json_object *doc;
    const char *v;
    static const char secret[] = "0123456789abcdef0123456789abcdef";
    char *b64 = kv_b64url_encode((const unsigned char *)secret, 32);

    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa, salen) != 0 ||
        listen(listen_fd, 4) != 0 ||
        getsockname(listen_fd, (struct sockaddr *)&sa, &salen) != 0)
        test_bail("cannot listen on 127.0.0.1");
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/keys/k/v/unwrapkey",
             (unsigned)ntohs(sa.sin_port));
    pthread_create(&th, NULL, serve, NULL);
    h = kv_http_new(&opts);
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = url;
    req.body = "{}";
    req.allow_http = true;

    /* An unwrap result. */
    answer_headers = "";
    answer_body = kv_strdup_printf("{\"kid\":\"https://v/keys/k/v\","
                                   "\"value\":\"%s\"}",
                                   b64);
    ok(kv_http_do(h, &req, 0, &r) == 0 && r.status == 200,
       "an unwrap answer is received");
    ok(r.len == strlen(answer_body) && strcmp(r.body, answer_body) == 0,
       "the body is whole");
    ok(secure_in_pool(r.body), "the body is in the secure pool");
    doc = kv_parse_body(r.body, r.len, why, sizeof(why));
    ok(doc != NULL, "it parses");
    v = kv_json_str(doc, "value");
    is_rv(kv_parse_result(doc, &dec, &declen, why, sizeof(why)), CKR_OK,
          "kv_parse_result");
    ok(declen == 32 && memcmp(dec, secret, 32) == 0, "the value is decoded");
    ok(secure_in_pool(dec), "into the secure pool");
    ok(v != NULL && all_zero((const unsigned char *)v, strlen(b64)),
       "the value's base64url in the parsed document is wiped");
    secure_free(dec);
    json_object_put(doc);
    p = (unsigned char *)r.body;
    cap = r.cap;
    kv_response_clear(&r);
    /* The pool stays mapped: what was the body can be read after. */
    ok(all_zero(p, cap),
       "the body is wiped when the response is cleared "
       "(%zu bytes)",
       cap);
    ok(r.body == NULL && r.len == 0, "and forgotten");
    free(answer_body);

    /* A body that grows past the first buffers is still whole. */
    answer_body = malloc(20001);
    for (i = 0; i < 20000; i++)
        answer_body[i] = (char)('a' + i % 26);
    answer_body[0] = '"';
    answer_body[19999] = '"';
    answer_body[20000] = '\0';
    ok(kv_http_do(h, &req, 0, &r) == 0 && r.len == 20000 &&
           memcmp(r.body, answer_body, 20001) == 0,
       "a 20000-byte body arrives whole through the growing buffer");
    kv_response_clear(&r);
    free(answer_body);

    /* Retry-After: clamped to an hour, never overflowing. */
    answer_body = strdup("{}");
    {
        static const struct {
            const char *header;
            long want;
        } ra[] = {
            {"Retry-After: 99999999999999999999999\r\n", 3600000},
            {"Retry-After: 18446744073709551617\r\n", 3600000},
            {"Retry-After: 7\r\n", 7000},
            {"Retry-After: -5\r\n", -1},
            {"Retry-After: soon\r\n", -1},
            {"Retry-After: 1.5\r\n", 1000},
            {"retry-after-ms: 99999999999999999999\r\n", 3600000},
            {"x-ms-retry-after-ms: 250\r\n", 250},
            {"retry-after-ms: -1\r\n", -1},
        };
        for (i = 0; i < sizeof(ra) / sizeof(ra[0]); i++) {
            answer_headers = ra[i].header;
            ok(kv_http_do(h, &req, 0, &r) == 0 &&
                   r.retry_after_ms == ra[i].want,
               "%.*s: %ld ms", (int)strcspn(ra[i].header, "\r"), ra[i].header,
               ra[i].want);
            if (r.retry_after_ms != ra[i].want)
                test_diag("  got %ld", r.retry_after_ms);
            kv_response_clear(&r);
        }
    }

    /* The header lines kept on the pooled handle follow the token. */
    answer_headers = "";
    req.bearer = "token-one";
    ok(kv_http_do(h, &req, 0, &r) == 0 &&
           strstr(last_request, "\r\nAuthorization: Bearer token-one\r\n") &&
           strstr(last_request, "\r\nContent-Type: application/json\r\n"),
       "the bearer token and the content type are sent");
    kv_response_clear(&r);
    ok(kv_http_do(h, &req, 0, &r) == 0 &&
           strstr(last_request, "\r\nAuthorization: Bearer token-one\r\n"),
       "and again on the kept lines");
    kv_response_clear(&r);
    req.bearer = "token-two";
    ok(kv_http_do(h, &req, 0, &r) == 0 &&
           strstr(last_request, "\r\nAuthorization: Bearer token-two\r\n") &&
           strstr(last_request, "token-one") == NULL,
       "a new token: the new one only");
    kv_response_clear(&r);
    {
        const char *extra[] = {"Metadata: true", NULL};
        req.headers = extra;
        ok(kv_http_do(h, &req, 0, &r) == 0 &&
               strstr(last_request, "\r\nMetadata: true\r\n") &&
               strstr(last_request, "token-two"),
           "an extra line is sent");
        kv_response_clear(&r);
        req.headers = NULL;
    }
    req.bearer = NULL;
    req.method = "GET";
    ok(kv_http_do(h, &req, 0, &r) == 0 &&
           strncmp(last_request, "GET ", 4) == 0 &&
           strstr(last_request, "Metadata") == NULL &&
           strstr(last_request, "Authorization") == NULL &&
           strstr(last_request, "Content-Type") == NULL,
       "a GET without a token: neither the extra line nor a token is left");
    kv_response_clear(&r);
    req.method = "POST";

    /* Headers: a name repeated counts by its last value; a 1xx response's
     * headers do not count. */
    answer_interim = "HTTP/1.1 100 Continue\r\nx-ms-request-id: interim\r\n"
                     "Retry-After: 9\r\nWWW-Authenticate: Bearer a=1\r\n\r\n";
    answer_headers = "Retry-After: 3\r\nretry-after: 7 \r\n"
                     "x-ms-request-id:  abc-123\r\n"
                     "WWW-Authenticate: Bearer resource=\"https://v\"\r\n";
    ok(kv_http_do(h, &req, 0, &r) == 0 && r.retry_after_ms == 7000 &&
           strcmp(r.request_id, "abc-123") == 0 && r.www_authenticate != NULL &&
           strcmp(r.www_authenticate, "Bearer resource=\"https://v\"") == 0,
       "the final response's headers, the last of a repeated one");
    if (r.retry_after_ms != 7000 || strcmp(r.request_id, "abc-123") != 0)
        test_diag("  got %ld, '%s'", r.retry_after_ms, r.request_id);
    kv_response_clear(&r);
    answer_interim = "";
    answer_headers = "x-ms-retry-after-ms: 250\r\nRetry-After: 2\r\n";
    ok(kv_http_do(h, &req, 0, &r) == 0 && r.retry_after_ms == 250 &&
           r.request_id[0] == '\0' && r.www_authenticate == NULL,
       "x-ms-retry-after-ms before Retry-After; no request id, no challenge");
    kv_response_clear(&r);
    free(answer_body);

    kv_http_free(h, false);
    shutdown(listen_fd, SHUT_RDWR);
    close(listen_fd);
    pthread_join(th, NULL);
    free(b64);
    return test_done();
}
