/*
 * cmkp11-tool seal, unseal and rewrap: what their files share.
 *
 *   seal.c, seal.h  the header's encoding (docs/seal-format.md)
 *   seal-file.c     temporary files, -o output, inputs, finding sealed files
 *   cmd-seal.c      the commands
 */
#ifndef CMKP11_TOOL_SEAL_INT_H
#define CMKP11_TOOL_SEAL_INT_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/types.h>

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
    bool through; /* written through, not replaced */
    char *target; /* the regular file replaced */
    mode_t mode;  /* its mode after the rename */
    bool existed; /* keep the owner of the file replaced */
    uid_t uid;
    gid_t gid;
};

/* Opens -o path for plaintext (unseal) or sealed data (seal). */
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

#endif
