/*
 * The sealed file format (docs/seal-format.md): the header's encoding and
 * decoding, and the per-segment nonce. No cryptography here: the tool does
 * that through the module.
 */
#ifndef CMKP11_TOOL_SEAL_H
#define CMKP11_TOOL_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SEAL_MAGIC        "CMKSEAL1"
#define SEAL_MAGIC_LEN    8
#define SEAL_VERSION      1
#define SEAL_WRAP_OAEP256 1 /* RSA-OAEP, SHA-256, MGF1-SHA-256, no label */
#define SEAL_FIXED_LEN    24
#define SEAL_PREFIX_LEN   7
#define SEAL_SEGMENT      65536u
#define SEAL_TAG_LEN      16
#define SEAL_NONCE_LEN    12
#define SEAL_DEK_LEN      32
/* The largest string a header holds (a u16 length). */
#define SEAL_STRING_MAX 65535u

struct seal_header {
    unsigned char fixed[SEAL_FIXED_LEN]; /* the AAD of every segment */
    char *token, *key, *version;         /* NUL-terminated */
    unsigned char *key_id;
    size_t key_id_len;
    unsigned char *wrapped;
    size_t wrapped_len;
    size_t length; /* bytes of the whole header as read or encoded */
};

/* Why a header does not read. */
enum seal_err {
    SEAL_OK = 0,
    SEAL_IO,         /* a read error (errno is set) */
    SEAL_NOT_SEALED, /* too short for a magic, or another magic */
    SEAL_BAD_VERSION,
    SEAL_BAD_FIELD,  /* flags, mechanism, segment size or reserved */
    SEAL_TRUNCATED,  /* the file ends inside the header */
    SEAL_BAD_STRING, /* an empty field, or a NUL inside a name */
    SEAL_NOMEM,
};

/* The fixed part for a new file with this nonce prefix. */
void seal_fixed_init(struct seal_header *h,
                     const unsigned char prefix[SEAL_PREFIX_LEN]);
/* Copies the strings into h (replacing any there). 0, or -1 when out of
 * memory or a field is too long. */
int seal_header_set(struct seal_header *h, const char *token, const char *key,
                    const char *version, const unsigned char *key_id,
                    size_t key_id_len, const unsigned char *wrapped,
                    size_t wrapped_len);
/* The encoded header in a new buffer (free()); sets h->length. NULL when
 * out of memory. */
unsigned char *seal_header_encode(struct seal_header *h, size_t *len);
/* Reads a header from f. On SEAL_BAD_* and SEAL_NOT_SEALED, err says what
 * is wrong in words. */
enum seal_err seal_header_read(FILE *f, struct seal_header *h, char *err,
                               size_t errlen);
void seal_header_clear(struct seal_header *h);

/* The nonce of segment i: prefix || u32 i || u8 last. */
void seal_nonce(const struct seal_header *h, uint32_t i, bool last,
                unsigned char nonce[SEAL_NONCE_LEN]);

/* Whether buf (len bytes) starts with the magic. */
bool seal_has_magic(const unsigned char *buf, size_t len);

#endif
