/*
 * Reading Key Vault and identity endpoint answers (kv-parse.h). json-c
 * asserts when an array function meets something else, so every field's
 * type is checked before it is read: a hostile or broken server gets
 * CKR_DEVICE_ERROR and a reason, never an abort. Numbers are clamped
 * before they become integers (docs/errors.md, "Malformed answers").
 */
#include "config.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kv-parse.h"
#include "kv.h"
#include "secure.h"

static CK_RV bad(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static CK_RV bad(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return CKR_DEVICE_ERROR;
}

json_object *kv_parse_body(const char *body, size_t len, char *why,
                           size_t whylen)
{
    json_tokener *tok;
    json_object *doc;

    snprintf(why, whylen, "the answer is not JSON");
    if (body == NULL || len == 0 || len > INT_MAX)
        return NULL;
    tok = json_tokener_new();
    if (tok == NULL)
        return NULL;
    doc = json_tokener_parse_ex(tok, body, (int)len);
    json_tokener_free(tok);
    if (doc != NULL && !json_object_is_type(doc, json_type_object)) {
        snprintf(why, whylen, "the answer is JSON but not an object");
        json_object_put(doc);
        return NULL;
    }
    return doc;
}

/* A member that may be absent: true if absent or of the type. */
static bool member(json_object *o, const char *key, json_type type,
                   json_object **v)
{
    *v = NULL;
    if (!json_object_object_get_ex(o, key, v) || *v == NULL) {
        *v = NULL;
        return true; /* absent, or null */
    }
    return json_object_is_type(*v, type);
}

/* A date (seconds since 1970): an integer or a float, clamped. */
static bool date(json_object *o, const char *key, long long *out)
{
    json_object *v;

    *out = 0;
    if (!json_object_object_get_ex(o, key, &v) || v == NULL)
        return true;
    if (json_object_is_type(v, json_type_int))
        *out = json_object_get_int64(v);
    else if (json_object_is_type(v, json_type_double))
        *out = kv_clamp_double(json_object_get_double(v), 0, KV_TIME_MAX);
    else
        return false;
    if (*out < 0)
        *out = 0;
    if (*out > KV_TIME_MAX)
        *out = KV_TIME_MAX;
    return true;
}

static CK_RV parse_attrs(json_object *a, struct kv_attrs *out, char *why,
                         size_t whylen)
{
    static const char *dates[] = {"nbf", "exp", "created", "updated"};
    long long *fields[] = {&out->nbf, &out->exp, &out->created, &out->updated};
    json_object *v;
    size_t i;

    memset(out, 0, sizeof(*out));
    out->enabled = true;
    if (!member(a, "enabled", json_type_boolean, &v))
        return bad(why, whylen, "attributes.%s is not a boolean", "enabled");
    if (v != NULL)
        out->enabled = json_object_get_boolean(v);
    for (i = 0; i < 4; i++)
        if (!date(a, dates[i], fields[i]))
            return bad(why, whylen, "attributes.%s is not a number", dates[i]);
    if (!member(a, "recoveryLevel", json_type_string, &v))
        return bad(why, whylen, "attributes.%s is not a string",
                   "recoveryLevel");
    out->recovery = v ? json_object_get_string(v) : NULL;
    return CKR_OK;
}

bool kv_split_kid(const char *kid, char *name, size_t nlen, char *version,
                  size_t vlen)
{
    const char *p = strstr(kid, "/keys/"), *s;

    if (p == NULL)
        return false;
    p += 6;
    s = strchr(p, '/');
    if (s == NULL || (size_t)(s - p) >= nlen || strlen(s + 1) >= vlen ||
        s[1] == '\0')
        return false;
    memcpy(name, p, (size_t)(s - p));
    name[s - p] = '\0';
    strcpy(version, s + 1);
    return true;
}

CK_RV kv_parse_listing(json_object *doc, struct kv_listing *out, char *why,
                       size_t whylen)
{
    json_object *value, *next;
    size_t i, n;
    CK_RV rv;

    memset(out, 0, sizeof(*out));
    if (!json_object_object_get_ex(doc, "value", &value) || value == NULL)
        return bad(why, whylen, "the listing has no %s array", "value");
    if (!json_object_is_type(value, json_type_array))
        return bad(why, whylen, "the listing's %s is not an array", "value");
    if (!member(doc, "nextLink", json_type_string, &next))
        return bad(why, whylen, "%s is not a string", "nextLink");
    n = json_object_array_length(value);
    out->items = calloc(n ? n : 1, sizeof(*out->items));
    if (out->items == NULL)
        return CKR_HOST_MEMORY;
    for (i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(value, i), *v;
        struct kv_item *it = &out->items[i];
        if (item == NULL || !json_object_is_type(item, json_type_object)) {
            rv = bad(why, whylen, "an entry of %s is not an object", "value");
            goto fail;
        }
        if (!json_object_object_get_ex(item, "kid", &v) ||
            !json_object_is_type(v, json_type_string)) {
            rv = bad(why, whylen, "an entry has no %s string", "kid");
            goto fail;
        }
        it->kid = json_object_get_string(v);
        if (!member(item, "attributes", json_type_object, &v)) {
            rv = bad(why, whylen, "an entry's %s is not an object",
                     "attributes");
            goto fail;
        }
        if (v != NULL) {
            it->has_attrs = true;
            rv = parse_attrs(v, &it->attrs, why, whylen);
            if (rv != CKR_OK)
                goto fail;
        }
    }
    out->n = n;
    out->next = next && json_object_get_string_len(next) > 0
                    ? json_object_get_string(next)
                    : NULL;
    return CKR_OK;
fail:
    kv_listing_clear(out);
    return rv;
}

void kv_listing_clear(struct kv_listing *l)
{
    free(l->items);
    memset(l, 0, sizeof(*l));
}

/* key_ops: an array of strings, joined with commas (what fits). */
static CK_RV parse_ops(json_object *ops, char *buf, size_t cap, char *why,
                       size_t whylen)
{
    size_t i, n, len = 0;

    buf[0] = '\0';
    if (ops == NULL)
        return CKR_OK;
    n = json_object_array_length(ops);
    for (i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(ops, i);
        const char *op;
        size_t ol;
        if (o == NULL || !json_object_is_type(o, json_type_string))
            return bad(why, whylen, "an entry of key.%s is not a string",
                       "key_ops");
        op = json_object_get_string(o);
        ol = strlen(op);
        if (len + ol + 2 > cap)
            continue; /* an unknown long name: the known ones are short */
        if (len > 0)
            buf[len++] = ',';
        memcpy(buf + len, op, ol + 1);
        len += ol;
    }
    return CKR_OK;
}

/* A base64url member into a malloc'd buffer. */
static CK_RV b64_member(json_object *key, const char *name, unsigned char **out,
                        size_t *len, char *why, size_t whylen)
{
    json_object *v;

    if (!json_object_object_get_ex(key, name, &v) ||
        !json_object_is_type(v, json_type_string))
        return bad(why, whylen, "an RSA key has no key.%s string", name);
    *out = kv_b64url_decode(json_object_get_string(v), len);
    if (*out == NULL)
        return bad(why, whylen, "key.%s is not base64url", name);
    if (*len == 0)
        return bad(why, whylen, "key.%s is empty", name);
    return CKR_OK;
}

CK_RV kv_parse_bundle(json_object *doc, struct kv_bundle *out, char *why,
                      size_t whylen)
{
    json_object *key, *v;
    size_t skip = 0;
    CK_RV rv;

    memset(out, 0, sizeof(*out));
    if (!json_object_object_get_ex(doc, "key", &key) ||
        !json_object_is_type(key, json_type_object))
        return bad(why, whylen, "the answer has no %s object", "key");
    if (!json_object_object_get_ex(key, "kid", &v) ||
        !json_object_is_type(v, json_type_string) ||
        !kv_split_kid(json_object_get_string(v), out->name, sizeof(out->name),
                      out->version, sizeof(out->version)))
        return bad(why, whylen, "key.%s is not a key version's identifier",
                   "kid");
    if (!json_object_object_get_ex(key, "kty", &v) ||
        !json_object_is_type(v, json_type_string))
        return bad(why, whylen, "the key has no %s string", "kty");
    out->kty = json_object_get_string(v);
    if (!member(key, "key_ops", json_type_array, &v))
        return bad(why, whylen, "key.%s is not an array", "key_ops");
    rv = parse_ops(v, out->ops, sizeof(out->ops), why, whylen);
    if (rv != CKR_OK)
        return rv;
    if (!member(doc, "attributes", json_type_object, &v)) {
        rv = bad(why, whylen, "%s is not an object", "attributes");
        goto fail;
    }
    if (v != NULL) {
        out->has_attrs = true;
        rv = parse_attrs(v, &out->attrs, why, whylen);
        if (rv != CKR_OK)
            goto fail;
    }
    if (strncmp(out->kty, "RSA", 3) == 0) {
        rv = b64_member(key, "n", &out->n, &out->nlen, why, whylen);
        if (rv == CKR_OK)
            rv = b64_member(key, "e", &out->e, &out->elen, why, whylen);
        if (rv != CKR_OK)
            goto fail;
        /* The modulus without leading zeros. */
        while (skip + 1 < out->nlen && out->n[skip] == 0)
            skip++;
        memmove(out->n, out->n + skip, out->nlen - skip);
        out->nlen -= skip;
        /* Key Vault's RSA keys have 2048 to 4096 bits: a modulus outside
         * 1024 .. 16384 bits, or even, is no key of a vault and is
         * refused here rather than turned into objects. */
        if (out->nlen < KV_RSA_MIN_BYTES || out->nlen > KV_RSA_MAX_BYTES ||
            (out->n[out->nlen - 1] & 1) == 0) {
            rv = bad(why, whylen,
                     "key.n is not an RSA modulus of %d to %d bits "
                     "(%zu bytes)",
                     KV_RSA_MIN_BYTES * 8, KV_RSA_MAX_BYTES * 8, out->nlen);
            goto fail;
        }
        while (out->elen > 1 && out->e[0] == 0) {
            memmove(out->e, out->e + 1, out->elen - 1);
            out->elen--;
        }
        if (out->elen > 4 || (out->e[out->elen - 1] & 1) == 0 ||
            (out->elen == 1 && out->e[0] < 3)) {
            rv = bad(why, whylen, "key.%s is not an RSA public exponent", "e");
            goto fail;
        }
    }
    return CKR_OK;
fail:
    kv_bundle_clear(out);
    return rv;
}

void kv_bundle_clear(struct kv_bundle *b)
{
    free(b->n);
    free(b->e);
    memset(b, 0, sizeof(*b));
}

CK_RV kv_parse_result(json_object *doc, unsigned char **out, size_t *len,
                      char *why, size_t whylen)
{
    json_object *v;
    char *s;
    size_t slen;

    *out = NULL;
    *len = 0;
    if (!json_object_object_get_ex(doc, "value", &v) ||
        !json_object_is_type(v, json_type_string))
        return bad(why, whylen, "the answer has no %s string", "value");
    s = (char *)json_object_get_string(v);
    slen = strlen(s);
    *out = kv_b64url_decode_secret(s, len);
    /* The document's copy is key material too; json-c frees unwiped. */
    secure_zero(s, slen);
    if (*out == NULL)
        return bad(why, whylen, "the answer's %s is not base64url", "value");
    return CKR_OK;
}

/* expires_in or expires_on: a number or a decimal string (IMDS and App
 * Service send strings). -1 when absent or unreadable. */
static long long seconds(json_object *doc, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(doc, key, &v) || v == NULL)
        return -1;
    if (!json_object_is_type(v, json_type_int) &&
        !json_object_is_type(v, json_type_double) &&
        !json_object_is_type(v, json_type_string))
        return -1;
    return kv_json_int(doc, key, -1);
}

CK_RV kv_parse_token(const char *body, size_t len, long long now, char **token,
                     long long *lifetime, char *why, size_t whylen)
{
    json_object *doc = kv_parse_body(body, len, why, whylen), *v;
    long long in, on;
    char *t;
    CK_RV rv = CKR_DEVICE_ERROR;

    *token = NULL;
    if (doc == NULL)
        return CKR_DEVICE_ERROR;
    if (!json_object_object_get_ex(doc, "access_token", &v) ||
        !json_object_is_type(v, json_type_string) ||
        json_object_get_string_len(v) == 0) {
        bad(why, whylen, "the answer has no %s string", "access_token");
        goto out;
    }
    t = (char *)json_object_get_string(v);
    in = seconds(doc, "expires_in");
    on = seconds(doc, "expires_on");
    if (in > 0)
        *lifetime = in;
    else if (on > 0 && on <= KV_TIME_MAX && now >= 0 && now <= KV_TIME_MAX)
        *lifetime = on - now;
    else
        *lifetime = 300;
    /* Not yet clamped below: the cache treats <= 0 as 300 s. */
    if (*lifetime > KV_LIFETIME_MAX)
        *lifetime = KV_LIFETIME_MAX;
    *token = secure_dup(t, strlen(t) + 1);
    rv = *token ? CKR_OK : CKR_HOST_MEMORY;
    /* The document holds the token too; json-c frees without wiping. */
    secure_zero(t, strlen(t));
out:
    json_object_put(doc);
    return rv;
}

long kv_parse_retry_ms(const char *v, size_t vlen, long scale)
{
    long long x = 0;
    size_t i;

    if (vlen == 0)
        return -1;
    for (i = 0; i < vlen; i++) {
        if (v[i] < '0' || v[i] > '9')
            return i > 0 && v[i] == '.' ? (long)(x * scale) : -1;
        if (x < KV_RETRY_AFTER_MAX_MS)
            x = x * 10 + (v[i] - '0');
        if (x * scale > KV_RETRY_AFTER_MAX_MS)
            return KV_RETRY_AFTER_MAX_MS;
    }
    return (long)(x * scale);
}

/* ---- response headers ----------------------------------------------------
 */

static void headers_reset(struct kv_headers *hs)
{
    free(hs->r->www_authenticate);
    hs->r->www_authenticate = NULL;
    hs->r->request_id[0] = '\0';
    hs->ms = hs->x_ms = hs->secs = -1;
}

/* Whether the n bytes at name are the header name want, a literal. */
#define HEADER_IS(name, n, want)                                               \
    ((n) == sizeof(want) - 1 && strncasecmp(name, want, n) == 0)

static bool blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

void kv_headers_line(struct kv_headers *hs, const char *data, size_t len)
{
    size_t nlen, vlen;
    const char *colon, *v;

    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        headers_reset(hs);
        return;
    }
    colon = memchr(data, ':', len);
    if (colon == NULL || hs->r->body != NULL)
        return;
    nlen = (size_t)(colon - data);
    v = colon + 1;
    vlen = len - nlen - 1;
    while (vlen > 0 && blank(*v)) {
        v++;
        vlen--;
    }
    while (vlen > 0 && blank(v[vlen - 1]))
        vlen--;
    if (HEADER_IS(data, nlen, "WWW-Authenticate")) {
        free(hs->r->www_authenticate);
        hs->r->www_authenticate = strndup(v, vlen);
    } else if (HEADER_IS(data, nlen, "x-ms-request-id")) {
        if (vlen >= sizeof(hs->r->request_id))
            vlen = sizeof(hs->r->request_id) - 1;
        memcpy(hs->r->request_id, v, vlen);
        hs->r->request_id[vlen] = '\0';
    } else if (HEADER_IS(data, nlen, "retry-after-ms")) {
        hs->ms = kv_parse_retry_ms(v, vlen, 1);
    } else if (HEADER_IS(data, nlen, "x-ms-retry-after-ms")) {
        hs->x_ms = kv_parse_retry_ms(v, vlen, 1);
    } else if (HEADER_IS(data, nlen, "Retry-After")) {
        hs->secs = kv_parse_retry_ms(v, vlen, 1000);
    }
}

long kv_headers_retry_ms(const struct kv_headers *hs)
{
    return hs->ms >= 0 ? hs->ms : hs->x_ms >= 0 ? hs->x_ms : hs->secs;
}
