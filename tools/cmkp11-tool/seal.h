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
#define SEAL_VERSION      1    /* one key */
#define SEAL_VERSION2     2    /* several recipients */
#define SEAL_FLAG_ALL     0x01 /* version 2: every recipient is needed */
#define SEAL_RECIP_MAX    16
#define SEAL_WRAP_OAEP256 1 /* RSA-OAEP, SHA-256, MGF1-SHA-256, no label */
#define SEAL_FIXED_LEN    24
#define SEAL_PREFIX_LEN   7
#define SEAL_SEGMENT      65536u
#define SEAL_TAG_LEN      16
#define SEAL_NONCE_LEN    12
#define SEAL_DEK_LEN      32
/* The largest string a header holds (a u16 length). */
#define SEAL_STRING_MAX 65535u

/* A key the file is sealed under. Version 1 holds one; version 2 one to
 * SEAL_RECIP_MAX, each named by a pkcs11: URI (token=, object=). */
struct seal_recip {
    char *token, *key, *version; /* NUL-terminated */
    unsigned char *key_id;
    size_t key_id_len;
    unsigned char *wrapped; /* the DEK (any-of) or this one's share */
    size_t wrapped_len;
};

struct seal_header {
    unsigned char fixed[SEAL_FIXED_LEN]; /* version, flags, nonce prefix */
    struct seal_recip r[SEAL_RECIP_MAX];
    size_t n;      /* recipients */
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
/* Copies the strings into h's recipient i (replacing any there; i may be
 * h->n, which adds one). 0, or -1 when out of memory, a field is too long
 * or there are SEAL_RECIP_MAX recipients already. */
int seal_header_set(struct seal_header *h, size_t i, const char *token,
                    const char *key, const char *version,
                    const unsigned char *key_id, size_t key_id_len,
                    const unsigned char *wrapped, size_t wrapped_len);
/* Removes recipient i. */
void seal_header_remove(struct seal_header *h, size_t i);
/* Sets the format version (SEAL_VERSION or SEAL_VERSION2) and, for
 * version 2, whether every recipient is needed. */
void seal_header_mode(struct seal_header *h, unsigned version, bool all);
/* The header's format version, and whether it is all-of. */
unsigned seal_header_version(const struct seal_header *h);
bool seal_header_all(const struct seal_header *h);
/* The AAD of every segment: the fixed part as version 1 writes it
 * (version 1, flags 0), so that a header's recipients and version change
 * without touching the segments. */
void seal_aad(const struct seal_header *h, unsigned char aad[SEAL_FIXED_LEN]);
/* The recipient's pkcs11: URI ("pkcs11:token=T;object=K", RFC 7512
 * percent-encoding) in a new string (free()), or NULL. */
char *seal_recip_uri(const struct seal_recip *r);
/* The encoded header in a new buffer (free()); sets h->length. NULL when
 * out of memory, or when the recipients do not fit the version (version
 * 1: exactly one). */
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
