/*
 * cmkp11-tool: what the commands share. Each command is one file
 * (cmd-NAME.c) with one entry point listed in main.c's command table.
 */
#ifndef CMKP11_TOOL_H
#define CMKP11_TOOL_H

#include <stdbool.h>

#include "p11.h"

/* Exit statuses. */
#define TOOL_OK      0
#define TOOL_FAILED  1
#define TOOL_USAGE   2
#define TOOL_REFUSED 3 /* retire: something still depends on the version */

/* Options common to every command. */
struct tool_opts {
    const char *module;   /* --module */
    struct tpin pin;      /* --pin / --pin-file */
    bool json;            /* --json */
    long min_key_bits;    /* --min-key-bits, 0 when not given */
    const char *key;      /* --key (seal): the first one */
    const char *keys[16]; /* every --key, in order */
    size_t nkeys;
    bool require_all;       /* --require-all (seal) */
    const char *add_key;    /* --add-key (rewrap) */
    const char *remove_key; /* --remove-key (rewrap) */
    const char *token;      /* --token (seal, unseal, rewrap) */
    const char *to;         /* --to (rewrap) */
    const char *output;     /* -o (seal, unseal) */
    /* retire */
    const char *paths[64]; /* --paths, repeated */
    size_t npaths;
    const char *audit_logs[16]; /* --audit-log, repeated */
    size_t naudit;
    long long since; /* --since, in seconds */
    bool since_set;
    bool dry_run; /* --dry-run */
    bool undo;    /* --undo */
    /* rotation-policy set: ISO 8601 durations, NULL when not given */
    const char *rotate_after, *rotate_before, *notify_before, *expire_after;
    bool if_due;  /* --if-due (rotate) */
    bool strict;  /* --strict (check): warnings fail */
    long threads; /* --threads (seal, unseal); 0 when not given */
};

/* --threads: the most that may be given, and the most the default (the
 * online CPUs) uses. */
#define TOOL_THREADS_MAX         64
#define TOOL_THREADS_DEFAULT_MAX 8

/* A command: argv[0] is the command's name; returns an exit status. */
typedef int (*tool_cmd_fn)(struct tmod *m, const struct tool_opts *o, int argc,
                           char **argv);

int cmd_list(struct tmod *m, const struct tool_opts *o, int argc, char **argv);
int cmd_check(struct tmod *m, const struct tool_opts *o, int argc, char **argv);
/* check FILE|DIR (cmd-check-sealed.c): whether the operand is a sealed
 * file or a directory, and the check of the sealed files there. */
bool check_is_sealed_path(const char *arg);
int cmd_check_sealed(struct tmod *m, const struct tool_opts *o, int argc,
                     char **argv);
int cmd_rotate(struct tmod *m, const struct tool_opts *o, int argc,
               char **argv);
/* seal and unseal (cmd-seal.c), rewrap (cmd-rewrap.c); their operands are
 * files. */
int cmd_seal(struct tmod *m, const struct tool_opts *o, int argc, char **argv);
int cmd_unseal(struct tmod *m, const struct tool_opts *o, int argc,
               char **argv);
int cmd_rewrap(struct tmod *m, const struct tool_opts *o, int argc,
               char **argv);

/* retire (cmd-retire.c); --since's "90m", "24h", "7d" in seconds. */
int cmd_retire(struct tmod *m, const struct tool_opts *o, int argc,
               char **argv);
int retire_parse_since(const char *s, long long *seconds);

struct jw;
/* rotation-policy get|set TOKEN KEY (cmd-policy.c). */
int cmd_rotation_policy(struct tmod *m, const struct tool_opts *o, int argc,
                        char **argv);
struct rotpolicy;
struct ttoken;
struct tversion;
/* CKA_CMK_ROTATION_POLICY of a version's private key, parsed. */
CK_RV tool_read_policy(struct tmod *m, CK_SESSION_HANDLE s,
                       CK_OBJECT_HANDLE priv, struct rotpolicy *p);
/* Key Vault: whether the vault refused this identity the policy (an empty
 * value read): CKA_CMK_REFUSED after a new listing. */
bool tool_policy_refused(struct tmod *m, CK_SESSION_HANDLE s,
                         CK_OBJECT_HANDLE priv);
/* rotate --if-due: 1 when cur's key is due for rotation by its policy, 0
 * when not, -1 when that cannot be told; why says which and why. */
int rotate_due(struct tmod *m, const struct tool_opts *o,
               const struct ttoken *t, const struct tversion *cur, char *why,
               size_t whylen);

struct jw;
struct tkey;
struct ttoken;

/* A version as a JSON object (list and rotate print the same shape). */
void tool_version_json(struct jw *w, const struct tversion *v);
/* The columns list prints for a version (cmd-list.c). */
#define TOOL_VERSION_COLS 9
extern const char *const tool_version_headers[TOOL_VERSION_COLS];
/* Fills cells (TOOL_VERSION_COLS of them) for key's version v; the strings
 * live in buf, of at least TOOL_VERSION_BUF bytes. */
#define TOOL_VERSION_BUF 256
void tool_version_cells(const struct tkey *key, const struct tversion *v,
                        const char **cells, char *buf);
/* "CKR_X" or "CKR_X (HTTP 403)" / "CKR_X (device error 5)". */
const char *tool_rv_text(const struct ttoken *t, CK_RV rv, CK_ULONG dev,
                         char *buf, size_t len);

/* Messages on stderr, prefixed with the program's name. */
void tool_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
