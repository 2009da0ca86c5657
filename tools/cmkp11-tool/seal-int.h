/*
 * cmkp11-tool seal, unseal and rewrap: what their files share.
 *
 *   seal.c, seal.h  the header's encoding (docs/seal-format.md)
 *   seal-file.c     temporary files, -o output, inputs, finding sealed files
 *   seal-key.c      tokens, the keys to wrap and unwrap with, the data key
 *   seal-stream.c   the segments: one loop to seal, unseal, verify, copy
 *   seal-par.c      the same for seal and unseal, several segments at once
 *   seal-recip.c    the recipients of a version 2 header (any-of, all-of)
 *   cmd-seal.c      seal and unseal
 *   cmd-rewrap.c    rewrap
 *   cmd-check-sealed.c  check FILE|DIR
 */
#ifndef CMKP11_TOOL_SEAL_INT_H
#define CMKP11_TOOL_SEAL_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <sys/types.h>

#include "keys.h"
#include "seal.h"

/* The size of every err buffer below. */
#define ERRLEN 768
/* A sealed segment: up to SEAL_SEGMENT bytes of data and the tag. */
#define SEG_CT (SEAL_SEGMENT + SEAL_TAG_LEN)

/* Writes a message to err (ERRLEN bytes). */
void efmt(char *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- temporary files (seal-file.c) ----------------------------------------
 * One at a time: ".NAME.cmkp11-tmp-XXXXXX" beside its target, mode 0600,
 * locked while it is written. A signal that ends the tool removes it.
 */

/* Installs the handlers that remove the temporary file on a signal. */
void tmp_signals_install(void);
/* Opens a new temporary file beside target. Returns the stream, or NULL
 * with err set. */
FILE *tmp_open(const char *target, char *err);
/* The path of the temporary file open now. */
const char *tmp_path_now(void);
/* Closes f (may be NULL) and removes the temporary file. */
void tmp_discard(FILE *f);
/* Flushes, syncs and closes f, sets its mode, renames it to target and
 * syncs the directory. On failure the temporary file is removed. */
int tmp_commit(FILE *f, const char *target, mode_t mode, char *err);

/* ---- -o output (seal-file.c) ----------------------------------------------
 */

struct outfile {
    FILE *f;
    bool std;     /* standard output */
    bool through; /* written through, not replaced */
    char *target; /* the regular file replaced */
    mode_t mode;  /* its mode after the rename */
    bool existed; /* keep the owner of the file replaced */
    uid_t uid;
    gid_t gid;
};

/* Opens -o path (NULL or "-": standard output) for plaintext (unseal) or
 * sealed data (seal). */
int outfile_open(struct outfile *o, const char *path, bool plaintext,
                 char *err);
void outfile_discard(struct outfile *o);
int outfile_commit(struct outfile *o, const char *path, char *err);

/* ---- inputs (seal-file.c) -------------------------------------------------
 */

/* "-" or NULL: standard input or output. */
bool path_is_stdio(const char *path);
/* "-", or a path to what standard output already is (/dev/stdout,
 * /dev/fd/1): no summary may be printed there. */
bool path_is_stdout(const char *path);
/* The input's name in messages. */
const char *path_in_name(const char *path);
/* Opens the input (NULL or "-": standard input); NULL after printing
 * why. */
FILE *input_open(const char *path);
void input_close(FILE *f);
/* Reads up to n bytes (fewer only at the end). Returns the count, or -1. */
ssize_t fread_full(FILE *f, unsigned char *buf, size_t n);
/* Reads the header of in; a message in err on failure. */
int header_read(FILE *in, struct seal_header *h, char *err);

/* ---- sealed files under directories (seal-file.c) -------------------------
 */

struct sealed_file {
    char *path;
    off_t size;
    bool named; /* given on the command line (else found in a directory) */
};

struct sealed_files {
    struct sealed_file *v;
    size_t n, cap;
    unsigned long long total;
};

/* Adds the operands: a directory's sealed regular files (in name order, at
 * any depth; stale temporary files are removed), the file a symbolic link
 * names, other files as given. Prints "CMD: PATH: why" for those that
 * cannot be read; returns their number. */
unsigned long sealed_files_collect(struct sealed_files *l, int argc,
                                   char **argv, const char *cmd);
void sealed_files_free(struct sealed_files *l);
/* Whether the file at path starts with the magic. */
bool file_is_sealed(const char *path);

/* ---- tokens (seal-key.c) --------------------------------------------------
 */

struct tool_opts;

/* A token: opened, logged in and its keys listed once, when first used. */
struct tstate {
    struct ttoken *t;
    bool loaded;
    CK_RV rv; /* of opening, logging in and listing */
    struct tkeys keys;
};

/* Every token of the module. */
struct sctx {
    struct tmod *m;
    const struct tool_opts *o;
    struct ttoken *toks;
    size_t ntok;
    struct tstate *st;
};

int sctx_init(struct sctx *c, struct tmod *m, const struct tool_opts *o,
              char *err);
void sctx_free(struct sctx *c);
/* Opens the token, logs in and lists its keys, once. */
CK_RV ts_load(struct sctx *c, struct tstate *s);
/* "token NAME: CKR_X" for a token that could not be loaded. */
void ts_error(struct sctx *c, struct tstate *s, CK_RV rv, char *err);
/* tool_rv_text() for the last call on s's session. */
const char *ts_rv_text(struct sctx *c, struct tstate *s, CK_RV rv, char *text,
                       size_t len);
struct tstate *ts_by_label(struct sctx *c, const char *label);
/* The token a --token argument (name or URI) selects; exactly one. */
struct tstate *ts_select(struct sctx *c, const char *arg, char *err);

/* ---- keys (seal-key.c) ----------------------------------------------------
 */

/* A key to wrap with: its token and version. */
struct target {
    struct tstate *ts;
    struct tkey *key;
    struct tversion *v;
};

/* Finds the key that key_arg (a name or a pkcs11: URI; NULL = the only key)
 * names, on the token token_arg names (NULL = any token), and its current
 * version (or the version the URI names). opt names the option in
 * messages. */
int target_resolve(struct sctx *c, const char *key_arg, const char *token_arg,
                   const char *opt, struct target *out, char *err);
/* The current version of key name on token s. */
int target_current(struct sctx *c, struct tstate *s, const char *name,
                   struct target *out, char *err);
/* The private-key object that unwraps the header's DEK on token s: the
 * version with the header's key id, else the key's label object (whose
 * unwrap-fallback tries the other versions; *fallback is then set). */
int source_priv(struct sctx *c, struct tstate *s, const struct seal_recip *h,
                CK_OBJECT_HANDLE *priv, bool *fallback, char *err);

/* ---- the data key (seal-key.c) --------------------------------------------
 * A session object. Each function returns 0, or -1 with err set.
 */

/* What an unwrapped DEK may do. */
enum dek_use {
    DEK_SEALED,    /* sensitive, not extractable: decrypt only */
    DEK_WRAPPABLE, /* sensitive, extractable: wrap on the same token */
    DEK_READABLE,  /* not sensitive: CKA_VALUE is read (another token) */
};

/* A new DEK on tg's token that encrypts and may be wrapped. */
int dek_generate(struct sctx *c, const struct target *tg, CK_OBJECT_HANDLE *dek,
                 char *err);
/* The DEK wrapped with tg's version, in a new buffer (free()). */
int dek_wrap(struct sctx *c, const struct target *tg, CK_OBJECT_HANDLE dek,
             unsigned char **wrapped, CK_ULONG *wlen, char *err);
/* The recipient's DEK (or share) unwrapped on token s with priv. */
int dek_unwrap(struct sctx *c, struct tstate *s, CK_OBJECT_HANDLE priv,
               const struct seal_recip *h, enum dek_use use,
               CK_OBJECT_HANDLE *dek, char *err);
/* The value of a DEK_READABLE key. */
int dek_read(struct sctx *c, struct tstate *s, CK_OBJECT_HANDLE dek,
             unsigned char value[SEAL_DEK_LEN], char *err);
/* A session key on s with this value, sensitive: decrypts only, or (when
 * encrypt) also encrypts and may be wrapped. */
int dek_create(struct sctx *c, struct tstate *s,
               const unsigned char value[SEAL_DEK_LEN], bool encrypt,
               CK_OBJECT_HANDLE *dek, char *err);
/* A copy on token to of a DEK_READABLE dek on token from: decrypts, may be
 * wrapped. The value passes through this process's memory only, wiped. */
int dek_move(struct sctx *c, struct tstate *from, CK_OBJECT_HANDLE dek,
             struct tstate *to, CK_OBJECT_HANDLE *out, char *err);
/* Destroys *dek (when not 0) and sets it to 0. */
void dek_destroy(struct sctx *c, struct tstate *s, CK_OBJECT_HANDLE *dek);

/* ---- recipients (seal-recip.c) --------------------------------------------
 */

/* "key K version V on token T". */
void recip_name(const struct seal_recip *r, char *out, size_t len);
/* The token of recipient i (--token for a version 1 file). NULL with err
 * set when there is none. */
struct tstate *recip_token(struct sctx *c, const struct seal_header *h,
                           size_t i, char *err);
/* The recipients in the order to try them: on tokens that open first,
 * then the others, each in the header's order. Returns h->n. */
size_t recip_order(struct sctx *c, const struct seal_header *h,
                   size_t order[SEAL_RECIP_MAX]);
/* Recipient i's wrapped key unwrapped on its token (*s) for use. */
int recip_unwrap(struct sctx *c, const struct seal_header *h, size_t i,
                 enum dek_use use, struct tstate **s, CK_OBJECT_HANDLE *dek,
                 bool *fallback, char *err);
/* The value recipient i's wrapped key holds (the DEK, or a share). */
int recip_value(struct sctx *c, const struct seal_header *h, size_t i,
                unsigned char value[SEAL_DEK_LEN], char *err);
/* The DEK's value: any-of, from the first recipient (recip_order, those
 * not skip[]ped) that unwraps it (*used); all-of, the XOR of every
 * share. errs[i]: why recipient i failed, or empty. */
int header_dek_value(struct sctx *c, const struct seal_header *h,
                     const bool *skip, unsigned char value[SEAL_DEK_LEN],
                     size_t *used, char errs[][ERRLEN], char *err);
/* value wrapped under tg as recipient i of h (replaced, or added when i is
 * h->n). */
int recip_wrap(struct sctx *c, struct seal_header *h, size_t i,
               const struct target *tg, const unsigned char value[SEAL_DEK_LEN],
               char *err);
/* Recipients 0..n-1 of h from tg[]: the DEK under each (any-of), or one
 * random share each whose XOR is the DEK (all). */
int recip_wrap_all(struct sctx *c, struct seal_header *h,
                   const struct target *tg, size_t n, bool all,
                   const unsigned char value[SEAL_DEK_LEN], char *err);
/* The recipient arg names: its URI, or its key name (on --token's token
 * when given); -1 when none, -2 when the name is that of several. */
ssize_t recip_find(struct sctx *c, const struct seal_header *h,
                   const char *arg);

/* ---- the progress bar (seal-stream.c) -------------------------------------
 */

/* A bar on standard error when it is a terminal (on). */
struct progress {
    bool on;
    unsigned long long total, done;
    size_t files, nfiles; /* rewrap: files done, files in all */
    struct timespec last;
};

/* seal and unseal: on for a large input (or one of unknown size). */
void progress_start(struct progress *p, FILE *in);
/* Draws at most every 100 ms, unless forced. */
void progress_draw(struct progress *p, bool force);
/* n more bytes done. */
void progress_add(struct progress *p, unsigned long long n);
/* All read: the full bar. */
void progress_finish(struct progress *p);
void progress_clear(struct progress *p);

/* ---- segments (seal-stream.c) ---------------------------------------------
 */

/* The data key of one sealed stream and where it is. */
struct seg_key {
    struct sctx *c;
    struct tstate *ts;           /* its token */
    CK_OBJECT_HANDLE dek;        /* a session object on ts */
    const struct seal_header *h; /* the fixed part: AAD and nonce prefix */
};

enum seg_op {
    SEG_ENCRYPT, /* data in, sealed segments out */
    SEG_DECRYPT, /* sealed segments in, verified data out (or no output) */
    SEG_COPY,    /* sealed segments in and out unchanged: no key */
};

/* One pass over the segments after a header. */
struct seg_stream {
    enum seg_op op;
    struct seg_key key; /* not for SEG_COPY */
    FILE *in;
    FILE *out;            /* NULL: nothing written (verify only) */
    const char *in_what;  /* in messages: "reading IN_WHAT: why" */
    const char *out_what; /* "writing OUT_WHAT: why" */
    unsigned long max;    /* stop after this many segments; 0: all */
    struct progress *pg;  /* advanced by the bytes read; or NULL */
    unsigned threads;     /* SEG_ENCRYPT, SEG_DECRYPT of all segments: more
                             than 1, that many segments at once (seal-par.c) */
    /* results */
    unsigned long long bytes; /* of data (not sealed) */
    unsigned long segments;
};

/* Reads s->in from its position to the end (or max segments), does s->op
 * to each segment, writes the result to s->out and flushes it. Nothing of
 * a segment is written before it is verified. Returns 0, or -1 with err
 * set (which segment, and why). */
int seg_run(struct seg_stream *s, char *err);

/* One segment as read: its bytes, index and whether it is the last. */
struct seg {
    const unsigned char *in;
    size_t len;
    uint32_t i;
    bool last;
};

/* Encrypts or decrypts (op) g with k on session sess into out (SEG_CT
 * bytes, *n of them used), with the messages of seg_run: 0, or -1 with
 * err set. */
int seg_crypt_one(const struct seg_key *k, CK_SESSION_HANDLE sess,
                  enum seg_op op, const struct seg *g, unsigned char *out,
                  CK_ULONG *n, char *err);

/* ---- segments in parallel (seal-par.c) ------------------------------------
 * s->threads workers, each with its own session on the key's token (the
 * data key is a session object, which every session of the process sees),
 * at most two segments each in flight, read and written by the workers in
 * order. The output and the messages are those of the one
 * loop: the first segment in order that fails is reported, and nothing
 * from it or after it is written.
 */
int seg_run_parallel(struct seg_stream *s, char *err);

#endif
