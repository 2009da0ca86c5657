/*
 * The keyvault back end's reading of answers: key listings, key bundles,
 * operation results and identity endpoint tokens. Each function takes the
 * parsed document (or the body) and nothing of the transport, checks the
 * type of every field it reads, and on anything unexpected returns
 * CKR_DEVICE_ERROR with a reason in why (no secret in it). The fuzz
 * harnesses in tests/fuzz drive these same functions.
 */
#ifndef CMKP11_KV_PARSE_H
#define CMKP11_KV_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "compat.h"

/* Dates from a vault are clamped into 1970-01-01 .. 9999-12-31. */
#define KV_TIME_MAX 253402300799LL
/* RSA moduli accepted from a vault: 1024 to 16384 bits. */
#define KV_RSA_MIN_BYTES 128
#define KV_RSA_MAX_BYTES 2048
/* A token lifetime is clamped to at most a year. */
#define KV_LIFETIME_MAX (366LL * 24 * 3600)

/* A JSON answer body: the document (an object) or NULL with why set. */
json_object *kv_parse_body(const char *body, size_t len, char *why,
                           size_t whylen);

/* A key's attributes object. */
struct kv_attrs {
    bool enabled;
    long long nbf, exp, created, updated; /* seconds; 0: none */
    const char *recovery;                 /* into the document, or NULL */
};

/* Splits https://vault/keys/NAME/VERSION. */
bool kv_split_kid(const char *kid, char *name, size_t nlen, char *version,
                  size_t vlen);

/* One entry of GET /keys or GET /keys/NAME/versions. */
struct kv_item {
    const char *kid; /* into the document */
    bool has_attrs;
    struct kv_attrs attrs;
};

struct kv_listing {
    struct kv_item *items; /* malloc'd */
    size_t n;
    const char *next; /* nextLink, or NULL for the last page */
};

CK_RV kv_parse_listing(json_object *doc, struct kv_listing *out, char *why,
                       size_t whylen);
void kv_listing_clear(struct kv_listing *l);

/* A key bundle (GET /keys/NAME/VERSION, create, rotate). */
struct kv_bundle {
    char name[256], version[128];
    const char *kty;  /* into the document */
    unsigned char *n; /* malloc'd, without leading zeros; NULL if not RSA */
    unsigned char *e;
    size_t nlen, elen;
    char ops[256]; /* "wrapKey,unwrapKey,..." */
    bool has_attrs;
    struct kv_attrs attrs;
};

CK_RV kv_parse_bundle(json_object *doc, struct kv_bundle *out, char *why,
                      size_t whylen);
void kv_bundle_clear(struct kv_bundle *b);

/* The value of an operation's answer ({"kid":...,"value":B64URL}), decoded
 * into secure memory: free with secure_free(*out). The string in the
 * document is wiped. */
CK_RV kv_parse_result(json_object *doc, unsigned char **out, size_t *len,
                      char *why, size_t whylen);

/*
 * An identity endpoint's token answer (Entra ID, IMDS, App Service): the
 * access token, a secure copy for secure_free(), and its
 * lifetime in seconds from expires_in or expires_on (now: the current
 * time), at most KV_LIFETIME_MAX; 300 when neither is given.
 * The token's characters in the parsed document are wiped.
 */
CK_RV kv_parse_token(const char *body, size_t len, long long now, char **token,
                     long long *lifetime, char *why, size_t whylen);

/* A server's wait is honoured up to this (then the deadline decides). */
#define KV_RETRY_AFTER_MAX_MS (3600L * 1000)
/* Retry-After (scale 1000: seconds) or retry-after-ms (scale 1): vlen
 * bytes of header value, in milliseconds clamped into 0 ..
 * KV_RETRY_AFTER_MAX_MS; a fraction is dropped; -1 if it is not a
 * number (an HTTP date included: Key Vault sends none). */
long kv_parse_retry_ms(const char *v, size_t vlen, long scale);

/*
 * What an answer's headers say for the retry policy, the challenge and the
 * trace, read as libcurl hands over each line (http.c; one pass, no
 * lookup after the transfer): into r's www_authenticate (malloc'd; the
 * caller frees it) and request_id, and the retry delays here. Only the
 * final response counts: a status line starts over (a 1xx answer, a
 * proxy's CONNECT answer), and lines after the body has started (r->body
 * set: trailers) are not headers. A name repeated counts by its last
 * value. Start with ms, x_ms and secs at -1.
 */
struct kv_response;
struct kv_headers {
    struct kv_response *r;
    long ms, x_ms, secs;
};
void kv_headers_line(struct kv_headers *hs, const char *data, size_t len);
/* retry-after-ms and x-ms-retry-after-ms (milliseconds) before Retry-After
 * (seconds; an HTTP date is not used by Key Vault); -1 if none. */
long kv_headers_retry_ms(const struct kv_headers *hs);

#endif
