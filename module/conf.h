/*
 * The configuration file (cmkp11.conf(5)): INI sections, "key = value",
 * '#' and ';' comments. [cmkp11] holds global settings; each [token NAME]
 * section becomes one slot whose token label is NAME.
 */
#ifndef CMKP11_CONFIG_H
#define CMKP11_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct config_entry {
    char *key;
    char *value;
    int line;
    bool used;
};

struct config;

struct config_token {
    const struct config *global; /* the [cmkp11] settings */
    char *name;
    int line; /* line of the [token NAME] header */
    const char *path;
    struct config_entry *entries;
    size_t n_entries;
};

struct config {
    char *path;
    int log_level;  /* enum cmk_log_level */
    char *log_file; /* "stderr", "syslog" or a path; NULL = stderr */
    long refresh_interval;
    long offline_grace; /* seconds; the default of each token's */
    long min_key_bits;
    char *audit_log;       /* NULL = off */
    int rsa_pkcs1_decrypt; /* enum config_pkcs1; CONFIG_PKCS1_UNSET = default */
    struct config_token *tokens;
    size_t n_tokens;
};

/* rsa-pkcs1-decrypt: what C_Decrypt and C_UnwrapKey do with CKM_RSA_PKCS
 * (docs/cmkp11.conf.5). */
enum config_pkcs1 {
    CONFIG_PKCS1_UNSET,
    CONFIG_PKCS1_IMPLICIT, /* implicit-rejection */
    CONFIG_PKCS1_REFUSE,   /* refuse */
    CONFIG_PKCS1_ALLOW,    /* allow */
};
/* The value for a setting's text, or CONFIG_PKCS1_UNSET if it is none. */
int config_pkcs1_parse(const char *text);

/*
 * Chooses the file: conf=PATH from pReserved (may be NULL) wins over
 * CMKP11_CONF, which wins over the default under sysconfdir. Returns a
 * newly allocated path, or NULL with err set if pReserved is malformed.
 */
char *config_choose_path(const char *reserved, char *err, size_t errlen);
/* The default path (SYSCONFDIR/cmkp11/cmkp11.conf). */
const char *config_default_path(void);

/* Parses the file. Returns NULL and writes "FILE:LINE: key: reason" to err
 * on any error; never crashes on bad input. */
struct config *config_load(const char *path, char *err, size_t errlen);
/* Parses text already in memory (tests, and config_load). */
struct config *config_parse(const char *path, const char *text, size_t len,
                            char *err, size_t errlen);
void config_free(struct config *cfg);

/* Token section lookups. Each marks the key as used; config_token_unused
 * reports the first key nothing asked for (a typo). */
const char *config_token_get(const struct config_token *t, const char *key);
/* The line of a key, for error messages (the section line if absent). */
int config_token_line(const struct config_token *t, const char *key);
/* 1 and *v set if present and valid, 0 if absent, -1 (err written) if bad. */
int config_token_get_bool(const struct config_token *t, const char *key,
                          bool *v, char *err, size_t errlen);
int config_token_get_long(const struct config_token *t, const char *key,
                          long min, long max, long *v, char *err,
                          size_t errlen);
const struct config_entry *config_token_unused(const struct config_token *t);

/* "a, b,c" as a NULL-terminated list of strings (keys =); NULL on ENOMEM. */
char **config_split_list(const char *text);
void config_free_list(char **list);
/* True if list is NULL (no allow-list) or holds s. */
bool config_list_allows(char *const *list, const char *s);

#endif
