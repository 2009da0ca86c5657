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

int seal_header_set(struct seal_header *h, const char *token, const char *key,
                    const char *version, const unsigned char *key_id,
                    size_t key_id_len, const unsigned char *wrapped,
                    size_t wrapped_len)
{
    if (set_bytes((unsigned char **)&h->token, NULL,
                  (const unsigned char *)token, strlen(token)) < 0 ||
        set_bytes((unsigned char **)&h->key, NULL, (const unsigned char *)key,
                  strlen(key)) < 0 ||
        set_bytes((unsigned char **)&h->version, NULL,
                  (const unsigned char *)version, strlen(version)) < 0 ||
        set_bytes(&h->key_id, &h->key_id_len, key_id, key_id_len) < 0 ||
        set_bytes(&h->wrapped, &h->wrapped_len, wrapped, wrapped_len) < 0)
        return -1;
    return 0;
}

unsigned char *seal_header_encode(struct seal_header *h, size_t *len)
{
    const unsigned char *fields[5] = {
        (const unsigned char *)h->token, (const unsigned char *)h->key,
        (const unsigned char *)h->version, h->key_id, h->wrapped};
    size_t lens[5] = {strlen(h->token), strlen(h->key), strlen(h->version),
                      h->key_id_len, h->wrapped_len};
    size_t total = SEAL_FIXED_LEN, i;
    unsigned char *buf, *p;

    for (i = 0; i < 5; i++) {
        if (lens[i] > SEAL_STRING_MAX)
            return NULL;
        total += 2 + lens[i];
    }
    buf = malloc(total);
    if (buf == NULL)
        return NULL;
    memcpy(buf, h->fixed, SEAL_FIXED_LEN);
    p = buf + SEAL_FIXED_LEN;
    for (i = 0; i < 5; i++) {
        put_u16(p, (uint16_t)lens[i]);
        if (lens[i] > 0)
            memcpy(p + 2, fields[i], lens[i]);
        p += 2 + lens[i];
    }
    h->length = total;
    *len = total;
    return buf;
}

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

static const char *const field_names[5] = {"token", "key", "version", "key id",
                                           "wrapped key"};

/* Checks the fixed part (read in full). */
static enum seal_err fixed_check(const unsigned char *fixed, char *err,
                                 size_t errlen)
{
    if (fixed[8] != SEAL_VERSION) {
        snprintf(err, errlen,
                 "format version %u is not supported (this tool reads %u)",
                 fixed[8], (unsigned)SEAL_VERSION);
        return SEAL_BAD_VERSION;
    }
    if (fixed[9] != 0) {
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
 * buffer) into *val and *len; adds its size to h->length. */
static enum seal_err field_read(FILE *f, size_t i, struct seal_header *h,
                                unsigned char **val, size_t *len, char *err,
                                size_t errlen)
{
    unsigned char lenbuf[2];
    int r = read_exact(f, lenbuf, 2, NULL);

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
    if (*len == 0 || (i < 3 && memchr(*val, '\0', *len) != NULL)) {
        snprintf(err, errlen, "the header's %s field is %s", field_names[i],
                 *len == 0 ? "empty" : "not text");
        return SEAL_BAD_STRING;
    }
    return SEAL_OK;
}

enum seal_err seal_header_read(FILE *f, struct seal_header *h, char *err,
                               size_t errlen)
{
    unsigned char *vals[5] = {NULL, NULL, NULL, NULL, NULL};
    size_t lens[5] = {0, 0, 0, 0, 0}, got = 0, i;
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
    for (i = 0; i < 5 && e == SEAL_OK; i++)
        e = field_read(f, i, h, &vals[i], &lens[i], err, errlen);
    if (e != SEAL_OK) {
        for (i = 0; i < 5; i++)
            free(vals[i]);
        memset(h, 0, sizeof(*h));
        return e;
    }
    h->token = (char *)vals[0];
    h->key = (char *)vals[1];
    h->version = (char *)vals[2];
    h->key_id = vals[3];
    h->key_id_len = lens[3];
    h->wrapped = vals[4];
    h->wrapped_len = lens[4];
    return SEAL_OK;
}

void seal_header_clear(struct seal_header *h)
{
    free(h->token);
    free(h->key);
    free(h->version);
    free(h->key_id);
    free(h->wrapped);
    memset(h, 0, sizeof(*h));
}

void seal_nonce(const struct seal_header *h, uint32_t i, bool last,
                unsigned char nonce[SEAL_NONCE_LEN])
{
    memcpy(nonce, h->fixed + 16, SEAL_PREFIX_LEN);
    put_u32(nonce + SEAL_PREFIX_LEN, i);
    nonce[SEAL_NONCE_LEN - 1] = last ? 1 : 0;
}
