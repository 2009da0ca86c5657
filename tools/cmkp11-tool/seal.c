#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "seal.h"

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint16_t get_u16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | p[3];
}

bool seal_has_magic(const unsigned char *buf, size_t len)
{
    return len >= SEAL_MAGIC_LEN &&
           memcmp(buf, SEAL_MAGIC, SEAL_MAGIC_LEN) == 0;
}

void seal_fixed_init(struct seal_header *h,
                     const unsigned char prefix[SEAL_PREFIX_LEN])
{
    unsigned char *f = h->fixed;

    memset(f, 0, SEAL_FIXED_LEN);
    memcpy(f, SEAL_MAGIC, SEAL_MAGIC_LEN);
    f[8] = SEAL_VERSION;
    f[9] = 0;
    put_u16(f + 10, SEAL_WRAP_OAEP256);
    put_u32(f + 12, SEAL_SEGMENT);
    memcpy(f + 16, prefix, SEAL_PREFIX_LEN);
    f[23] = 0;
}

static int set_bytes(unsigned char **to, size_t *to_len,
                     const unsigned char *from, size_t len)
{
    unsigned char *p;

    if (len > SEAL_STRING_MAX)
        return -1;
    p = malloc(len + 1);
    if (p == NULL)
        return -1;
    if (len > 0)
        memcpy(p, from, len);
    p[len] = '\0';
    free(*to);
    *to = p;
    if (to_len != NULL)
        *to_len = len;
    return 0;
}

static void recip_clear(struct seal_recip *r)
{
    free(r->token);
    free(r->key);
    free(r->version);
    free(r->key_id);
    free(r->wrapped);
    memset(r, 0, sizeof(*r));
}

int seal_header_set(struct seal_header *h, size_t i, const char *token,
                    const char *key, const char *version,
                    const unsigned char *key_id, size_t key_id_len,
                    const unsigned char *wrapped, size_t wrapped_len)
{
    struct seal_recip *r;

    if (i > h->n || i >= SEAL_RECIP_MAX)
        return -1;
    r = &h->r[i];
    if (i == h->n)
        h->n++;
    if (set_bytes((unsigned char **)&r->token, NULL,
                  (const unsigned char *)token, strlen(token)) < 0 ||
        set_bytes((unsigned char **)&r->key, NULL, (const unsigned char *)key,
                  strlen(key)) < 0 ||
        set_bytes((unsigned char **)&r->version, NULL,
                  (const unsigned char *)version, strlen(version)) < 0 ||
        set_bytes(&r->key_id, &r->key_id_len, key_id, key_id_len) < 0 ||
        set_bytes(&r->wrapped, &r->wrapped_len, wrapped, wrapped_len) < 0)
        return -1;
    return 0;
}

void seal_header_remove(struct seal_header *h, size_t i)
{
    if (i >= h->n)
        return;
    recip_clear(&h->r[i]);
    memmove(&h->r[i], &h->r[i + 1], (h->n - i - 1) * sizeof(h->r[0]));
    h->n--;
    memset(&h->r[h->n], 0, sizeof(h->r[0]));
}

void seal_header_mode(struct seal_header *h, unsigned version, bool all)
{
    h->fixed[8] = (unsigned char)version;
    h->fixed[9] = version == SEAL_VERSION2 && all ? SEAL_FLAG_ALL : 0;
}

unsigned seal_header_version(const struct seal_header *h)
{
    return h->fixed[8];
}

bool seal_header_all(const struct seal_header *h)
{
    return h->fixed[8] == SEAL_VERSION2 && (h->fixed[9] & SEAL_FLAG_ALL);
}

void seal_aad(const struct seal_header *h, unsigned char aad[SEAL_FIXED_LEN])
{
    memcpy(aad, h->fixed, SEAL_FIXED_LEN);
    aad[8] = SEAL_VERSION;
    aad[9] = 0;
}

/* ---- pkcs11: URIs of recipients (RFC 7512) ---------------------------------
 * Only unreserved characters (ALPHA DIGIT - . _ ~) stay as they are; every
 * other byte is %XX, upper-case: one spelling per name, so a header that
 * reads encodes back to the same bytes.
 */

static bool uri_plain(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

static size_t uri_put(char *out, const char *s)
{
    static const char hexd[] = "0123456789ABCDEF";
    size_t n = 0;

    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (uri_plain(c)) {
            if (out != NULL)
                out[n] = (char)c;
            n++;
        } else {
            if (out != NULL) {
                out[n] = '%';
                out[n + 1] = hexd[c >> 4];
                out[n + 2] = hexd[c & 15];
            }
            n += 3;
        }
    }
    return n;
}

char *seal_recip_uri(const struct seal_recip *r)
{
    size_t n = 7 + 6 + uri_put(NULL, r->token) + 8 + uri_put(NULL, r->key);
    char *u = malloc(n + 1), *p;

    if (u == NULL)
        return NULL;
    p = u;
    memcpy(p, "pkcs11:token=", 13);
    p += 13;
    p += uri_put(p, r->token);
    memcpy(p, ";object=", 8);
    p += 8;
    p += uri_put(p, r->key);
    *p = '\0';
    return u;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes the len bytes at s (canonical spelling only) into a new
 * string. NULL when not canonical, empty, or holding a NUL. */
static char *uri_take(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    size_t i, n = 0;

    if (out == NULL || len == 0)
        goto bad;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int hi, lo;
        if (uri_plain(c)) {
            out[n++] = (char)c;
            continue;
        }
        if (c != '%' || i + 2 >= len)
            goto bad;
        hi = hexval(s[i + 1]);
        lo = hexval(s[i + 2]);
        if (hi < 0 || lo < 0)
            goto bad;
        c = (unsigned char)(hi << 4 | lo);
        if (c == 0 || uri_plain(c))
            goto bad;
        out[n++] = (char)c;
        i += 2;
    }
    out[n] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* Parses "pkcs11:token=T;object=K" (len bytes) into r's token and key. */
static int uri_parse(const unsigned char *u, size_t len, struct seal_recip *r)
{
    const char *s = (const char *)u, *semi;

    if (len < 13 || memcmp(s, "pkcs11:token=", 13) != 0)
        return -1;
    semi = memchr(s + 13, ';', len - 13);
    if (semi == NULL || (size_t)(s + len - semi) < 8 ||
        memcmp(semi, ";object=", 8) != 0)
        return -1;
    r->token = uri_take(s + 13, (size_t)(semi - s - 13));
    r->key = uri_take(semi + 8, (size_t)(s + len - semi - 8));
    return r->token != NULL && r->key != NULL ? 0 : -1;
}

/* ---- encoding -----------------------------------------------------------
 */

struct wbuf {
    unsigned char *p;
    size_t len;
};

static void put_field(struct wbuf *b, const void *v, size_t len)
{
    if (b->p != NULL) {
        put_u16(b->p + b->len, (uint16_t)len);
        if (len > 0)
            memcpy(b->p + b->len + 2, v, len);
    }
    b->len += 2 + len;
}

/* Writes the variable part to b (or counts it when b->p is NULL). */
static int encode_var(const struct seal_header *h, struct wbuf *b)
{
    size_t i;

    if (h->fixed[8] == SEAL_VERSION) {
        const struct seal_recip *r = &h->r[0];
        put_field(b, r->token, strlen(r->token));
        put_field(b, r->key, strlen(r->key));
        put_field(b, r->version, strlen(r->version));
        put_field(b, r->key_id, r->key_id_len);
        put_field(b, r->wrapped, r->wrapped_len);
        return 0;
    }
    if (b->p != NULL)
        b->p[b->len] = (unsigned char)h->n;
    b->len++;
    for (i = 0; i < h->n; i++) {
        const struct seal_recip *r = &h->r[i];
        char *uri = seal_recip_uri(r);
        if (uri == NULL || strlen(uri) > SEAL_STRING_MAX) {
            free(uri);
            return -1;
        }
        put_field(b, uri, strlen(uri));
        free(uri);
        put_field(b, r->version, strlen(r->version));
        put_field(b, r->key_id, r->key_id_len);
        put_field(b, r->wrapped, r->wrapped_len);
    }
    return 0;
}

unsigned char *seal_header_encode(struct seal_header *h, size_t *len)
{
    struct wbuf b = {NULL, SEAL_FIXED_LEN};
    size_t i;

    if (h->n == 0 || (h->fixed[8] == SEAL_VERSION && h->n != 1) ||
        (h->fixed[8] != SEAL_VERSION && h->fixed[8] != SEAL_VERSION2))
        return NULL;
    for (i = 0; i < h->n; i++)
        if (strlen(h->r[i].token) > SEAL_STRING_MAX / 4 ||
            strlen(h->r[i].key) > SEAL_STRING_MAX / 4 ||
            strlen(h->r[i].version) > SEAL_STRING_MAX)
            return NULL;
    if (encode_var(h, &b) < 0)
        return NULL;
    b.p = malloc(b.len);
    if (b.p == NULL)
        return NULL;
    memcpy(b.p, h->fixed, SEAL_FIXED_LEN);
    b.len = SEAL_FIXED_LEN;
    if (encode_var(h, &b) < 0) {
        free(b.p);
        return NULL;
    }
    h->length = b.len;
    *len = b.len;
    return b.p;
}

/* ---- decoding -----------------------------------------------------------
 */

/* Reads n bytes: 0, 1 at the end of the file (fewer read, count in *got),
 * -1 on a read error. */
static int read_exact(FILE *f, void *buf, size_t n, size_t *got)
{
    size_t r = fread(buf, 1, n, f);

    if (got != NULL)
        *got = r;
    if (r == n)
        return 0;
    return ferror(f) ? -1 : 1;
}

static const char *const field_names[6] = {"token",  "key",         "version",
                                           "key id", "wrapped key", "uri"};

/* Checks the fixed part (read in full). */
static enum seal_err fixed_check(const unsigned char *fixed, char *err,
                                 size_t errlen)
{
    if (fixed[8] != SEAL_VERSION && fixed[8] != SEAL_VERSION2) {
        snprintf(err, errlen,
                 "format version %u is not supported (this tool reads %u "
                 "and %u)",
                 fixed[8], (unsigned)SEAL_VERSION, (unsigned)SEAL_VERSION2);
        return SEAL_BAD_VERSION;
    }
    if (fixed[9] != 0 &&
        !(fixed[8] == SEAL_VERSION2 && fixed[9] == SEAL_FLAG_ALL)) {
        snprintf(err, errlen, "unknown flags 0x%02x in the header", fixed[9]);
        return SEAL_BAD_FIELD;
    }
    if (get_u16(fixed + 10) != SEAL_WRAP_OAEP256) {
        snprintf(err, errlen, "unknown wrap mechanism %u in the header",
                 get_u16(fixed + 10));
        return SEAL_BAD_FIELD;
    }
    if (get_u32(fixed + 12) != SEAL_SEGMENT) {
        snprintf(err, errlen, "segment size %lu in the header (must be %u)",
                 (unsigned long)get_u32(fixed + 12), SEAL_SEGMENT);
        return SEAL_BAD_FIELD;
    }
    if (fixed[23] != 0) {
        snprintf(err, errlen, "the reserved byte of the header is not 0");
        return SEAL_BAD_FIELD;
    }
    return SEAL_OK;
}

/* Reads field i (u16 length, then the bytes, NUL-terminated in a new
 * buffer) into *val and *len; adds its size to h->length. Fields 0-2 and
 * 5 are text. */
static enum seal_err field_read(FILE *f, size_t i, struct seal_header *h,
                                unsigned char **val, size_t *len, char *err,
                                size_t errlen)
{
    unsigned char lenbuf[2];
    int r = read_exact(f, lenbuf, 2, NULL);

    *val = NULL;
    if (r == 0) {
        *len = get_u16(lenbuf);
        *val = malloc(*len + 1);
        if (*val == NULL)
            return SEAL_NOMEM;
        (*val)[*len] = '\0';
        r = read_exact(f, *val, *len, NULL);
    }
    if (r < 0)
        return SEAL_IO;
    if (r > 0) {
        snprintf(err, errlen,
                 "the header is truncated (in the %s field): a cut-off file",
                 field_names[i]);
        return SEAL_TRUNCATED;
    }
    h->length += 2 + *len;
    if (*len == 0 || ((i < 3 || i == 5) && memchr(*val, '\0', *len) != NULL)) {
        snprintf(err, errlen, "the header's %s field is %s", field_names[i],
                 *len == 0 ? "empty" : "not text");
        return SEAL_BAD_STRING;
    }
    return SEAL_OK;
}

static enum seal_err read_v1(FILE *f, struct seal_header *h, char *err,
                             size_t errlen)
{
    struct seal_recip *r = &h->r[0];
    unsigned char *vals[5] = {NULL, NULL, NULL, NULL, NULL};
    size_t lens[5] = {0, 0, 0, 0, 0}, i;
    enum seal_err e = SEAL_OK;

    h->n = 1;
    for (i = 0; i < 5 && e == SEAL_OK; i++)
        e = field_read(f, i, h, &vals[i], &lens[i], err, errlen);
    r->token = (char *)vals[0];
    r->key = (char *)vals[1];
    r->version = (char *)vals[2];
    r->key_id = vals[3];
    r->key_id_len = lens[3];
    r->wrapped = vals[4];
    r->wrapped_len = lens[4];
    return e;
}

static enum seal_err read_recip(FILE *f, struct seal_header *h,
                                struct seal_recip *r, char *err, size_t errlen)
{
    unsigned char *uri = NULL, *ver = NULL;
    size_t len, vlen;
    enum seal_err e = field_read(f, 5, h, &uri, &len, err, errlen);

    if (e == SEAL_OK && uri_parse(uri, len, r) < 0) {
        snprintf(err, errlen,
                 "the header's recipient %zu is not a pkcs11:token=...;"
                 "object=... URI in canonical form",
                 h->n);
        e = SEAL_BAD_STRING;
    }
    free(uri);
    if (e == SEAL_OK)
        e = field_read(f, 2, h, &ver, &vlen, err, errlen);
    r->version = (char *)ver;
    if (e == SEAL_OK)
        e = field_read(f, 3, h, &r->key_id, &r->key_id_len, err, errlen);
    if (e == SEAL_OK)
        e = field_read(f, 4, h, &r->wrapped, &r->wrapped_len, err, errlen);
    return e;
}

static enum seal_err read_v2(FILE *f, struct seal_header *h, char *err,
                             size_t errlen)
{
    unsigned char count;
    enum seal_err e = SEAL_OK;
    size_t i;
    int r = read_exact(f, &count, 1, NULL);

    if (r < 0)
        return SEAL_IO;
    if (r > 0) {
        snprintf(err, errlen,
                 "the header is truncated (in the recipient count): a "
                 "cut-off file");
        return SEAL_TRUNCATED;
    }
    h->length++;
    if (count == 0 || count > SEAL_RECIP_MAX) {
        snprintf(err, errlen, "the header holds %u recipients (1 to %u)", count,
                 SEAL_RECIP_MAX);
        return SEAL_BAD_FIELD;
    }
    for (i = 0; i < count && e == SEAL_OK; i++) {
        h->n = i + 1;
        e = read_recip(f, h, &h->r[i], err, errlen);
    }
    return e;
}

enum seal_err seal_header_read(FILE *f, struct seal_header *h, char *err,
                               size_t errlen)
{
    size_t got = 0;
    enum seal_err e = SEAL_OK;
    int r;

    memset(h, 0, sizeof(*h));
    err[0] = '\0';
    r = read_exact(f, h->fixed, SEAL_FIXED_LEN, &got);
    if (r < 0)
        return SEAL_IO;
    if (got < SEAL_MAGIC_LEN || !seal_has_magic(h->fixed, got)) {
        snprintf(err, errlen, "not a sealed file (no %s magic)", SEAL_MAGIC);
        return SEAL_NOT_SEALED;
    }
    if (r > 0) {
        snprintf(err, errlen, "the header is truncated (%zu bytes)", got);
        return SEAL_TRUNCATED;
    }
    e = fixed_check(h->fixed, err, errlen);
    if (e != SEAL_OK)
        return e;
    h->length = SEAL_FIXED_LEN;
    e = h->fixed[8] == SEAL_VERSION ? read_v1(f, h, err, errlen)
                                    : read_v2(f, h, err, errlen);
    if (e != SEAL_OK)
        seal_header_clear(h);
    return e;
}

void seal_header_clear(struct seal_header *h)
{
    size_t i;

    for (i = 0; i < SEAL_RECIP_MAX; i++)
        recip_clear(&h->r[i]);
    memset(h, 0, sizeof(*h));
}

void seal_nonce(const struct seal_header *h, uint32_t i, bool last,
                unsigned char nonce[SEAL_NONCE_LEN])
{
    memcpy(nonce, h->fixed + 16, SEAL_PREFIX_LEN);
    put_u32(nonce + SEAL_PREFIX_LEN, i);
    nonce[SEAL_NONCE_LEN - 1] = last ? 1 : 0;
}
