/*
 * libFuzzer harness: every answer the keyvault back end reads, through
 * the same functions (provider/keyvault/kv-parse.c, kv-errors.c) with the
 * transport left out. The first byte chooses the reader, the rest is the
 * body (or the header value, or header lines).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kv-parse.h"
#include "kv.h"
#include "secure.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void listing(json_object *doc)
{
    struct kv_listing l;
    char why[128], name[256], version[128];
    size_t i;

    if (kv_parse_listing(doc, &l, why, sizeof(why)) != CKR_OK)
        return;
    for (i = 0; i < l.n; i++)
        (void)kv_split_kid(l.items[i].kid, name, sizeof(name), version,
                           sizeof(version));
    kv_listing_clear(&l);
}

static void bundle(json_object *doc)
{
    struct kv_bundle b;
    char why[128];

    if (kv_parse_bundle(doc, &b, why, sizeof(why)) != CKR_OK)
        return;
    if (b.n != NULL &&
        (b.nlen < KV_RSA_MIN_BYTES || (b.n[0] == 0 && b.nlen > 1)))
        abort(); /* the checks promise a modulus without leading zeros */
    kv_bundle_clear(&b);
}

static void result(json_object *doc)
{
    unsigned char *out;
    size_t len;
    char why[128];

    if (kv_parse_result(doc, &out, &len, why, sizeof(why)) != CKR_OK)
        return;
    if (len > secure_size(out))
        abort();
    secure_free(out);
}

/* Header lines as libcurl hands them over, one at a time with its line
 * end; a line "--body--" stands for the body's first bytes (after which
 * lines are trailers). */
static void header_lines(const char *text, size_t size)
{
    struct kv_response r;
    struct kv_headers hs = {&r, -1, -1, -1};
    static char body[] = "{}";
    const char *line = text, *end = text + size, *nl;
    size_t len;
    long ms;

    memset(&r, 0, sizeof(r));
    while (line < end) {
        nl = memchr(line, '\n', (size_t)(end - line));
        len = nl != NULL ? (size_t)(nl - line) + 1 : (size_t)(end - line);
        if (len >= 8 && memcmp(line, "--body--", 8) == 0)
            r.body = body;
        else
            kv_headers_line(&hs, line, len);
        line += len;
    }
    ms = kv_headers_retry_ms(&hs);
    if (ms < -1 || ms > KV_RETRY_AFTER_MAX_MS ||
        memchr(r.request_id, '\0', sizeof(r.request_id)) == NULL ||
        (r.www_authenticate != NULL && strlen(r.www_authenticate) >= size))
        abort();
    free(r.www_authenticate);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[128], code[64], msg[256], *body, *token;
    long long life;
    json_object *doc;
    unsigned sel;
    long ms;

    if (size < 1)
        return 0;
    sel = data[0];
    data++;
    size--;
    /* Bodies arrive NUL-terminated from the transport. */
    body = malloc(size + 1);
    if (body == NULL)
        return 0;
    memcpy(body, data, size);
    body[size] = '\0';
    switch (sel % 6) {
    case 0: /* GET /keys, GET /keys/NAME/versions */
    case 1: /* a key bundle */
    case 2: /* an operation result */
        doc = kv_parse_body(body, size, why, sizeof(why));
        if (doc != NULL) {
            if (sel % 6 == 0)
                listing(doc);
            else if (sel % 6 == 1)
                bundle(doc);
            else
                result(doc);
            json_object_put(doc);
        }
        break;
    case 3: /* an identity endpoint's token */
        if (kv_parse_token(body, size, (long long)(sel >> 3) * 86400 * 365,
                           &token, &life, why, sizeof(why)) == CKR_OK) {
            if (life > KV_LIFETIME_MAX)
                abort();
            secure_free(token);
        }
        break;
    case 4: /* an error answer */
        (void)kv_map_http(400 + (long)(sel >> 3), body, code, sizeof(code), msg,
                          sizeof(msg));
        break;
    default: /* Retry-After, retry-after-ms; or whole header lines */
        if (sel & 0x40) {
            header_lines(body, size);
            break;
        }
        ms = kv_parse_retry_ms(body, size, sel & 8 ? 1000 : 1);
        if (ms < -1 || ms > KV_RETRY_AFTER_MAX_MS)
            abort();
        break;
    }
    free(body);
    return 0;
}
