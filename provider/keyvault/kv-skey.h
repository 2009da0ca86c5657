/*
 * A keyvault token secret key's state file (docs/keyvault.md, "Token
 * secret keys"): its reading from a buffer, its writing, its MAC and the
 * names of its files, with nothing of the directory or the vault
 * (kv-store.c does those). The fuzz harness tests/fuzz/fuzz-kv-store.c
 * drives these same functions.
 *
 * The file (format 1), JSON:
 *   {"format":"cmkp11-secret-key","version":1,"id":"<32 hex>",
 *    "wrapping-key":NAME,"wrapping-version":VERSION,
 *    "algorithm":"RSA-OAEP-256","wrapped":BASE64URL,
 *    "attributes":[["<type, hex>","<value, hex>"],...],"mac":"<64 hex>"}
 * mac = HMAC-SHA256(K, "cmkp11-secret-key/1\n" id "\n" NAME "\n"
 *                   ("<type>=<value hex>\n")*), with
 * K = HMAC-SHA256(value, "cmkp11-secret-key attributes"): whoever cannot
 * unwrap the value cannot change an attribute of the key unnoticed.
 */
#ifndef CMKP11_KV_SKEY_H
#define CMKP11_KV_SKEY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "attrs.h"

#define SK_FORMAT  "cmkp11-secret-key"
#define SK_VERSION 1
#define SK_SUFFIX  ".json"
#define SK_MAX     (256 * 1024) /* a larger file is not ours */
/* A temporary file ".ID.json.tmp.PID" whose writer is not a live process
 * of this host is removed once it is older than this: a writer of another
 * host (or PID namespace) sharing the directory is not seen by kill(). */
#define SK_TMP_MAX_AGE 600

struct kv_skey {
    char *id;  /* 32 hex digits: the file ID.json, the uid secret/ID */
    char *uid; /* "secret/ID" */
    struct attrs attrs;
    char *cmk;     /* wrapping key name */
    char *cmk_ver; /* wrapping version */
    unsigned char *wrapped;
    size_t wrapped_len;
    unsigned char mac[32];
    unsigned char *value; /* secure memory, NULL until unwrapped */
    size_t value_len;
    bool present; /* in the directory at the last scan */
    bool bad;     /* skipped: unreadable, or failed its integrity check */
    char *why;    /* why it is skipped (bad), or NULL */
    bool seen;    /* in the directory, during a scan */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    struct kv_skey *next;
};

/* s[0..len) is a key id: 32 lowercase hex digits. */
bool kv_skey_is_id(const char *s, size_t len);
/* The PID of a temporary file's name ".ID.json.tmp.PID.SERIAL" (or
 * ".ID.json.tmp.PID", as earlier releases name them), or 0 if name is not
 * one. */
pid_t kv_skey_tmp_pid(const char *name);

/* Parses one file's text (text[len] is a NUL) into a new key whose file
 * is ID.json; NULL with why set (no secret in it) if it is not a valid
 * file. The value is not known (not unwrapped, the MAC not checked). */
struct kv_skey *kv_skey_parse(const char *text, size_t len, const char *id,
                              char *why, size_t whylen);
/* The file's text (ending in a newline), or NULL on ENOMEM. */
char *kv_skey_json(const struct kv_skey *k);
/* The MAC of the key's id, wrapping key and attributes under its value. */
int kv_skey_mac(const unsigned char *value, size_t vlen, const char *id,
                const char *cmk, const struct attrs *a, unsigned char out[32]);
/* Frees k and everything it holds, the value wiped (NULL is fine). */
void kv_skey_free(struct kv_skey *k);

#endif
