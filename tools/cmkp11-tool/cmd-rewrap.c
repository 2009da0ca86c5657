/*
 * cmkp11-tool rewrap: sealed files (docs/seal-format.md) put under another
 * key version or key without decrypting their data. The DEK is unwrapped
 * and wrapped again under the new version, once the first segment
 * authenticates with it; the segments are copied unchanged and the file is
 * replaced by a rename, atomically. Directories are walked for sealed
 * files (seal-file.c).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keys.h"
#include "out.h"
#include "seal-int.h"
#include "tool.h"

enum outcome { RW_DONE, RW_SKIPPED, RW_FAILED };

static const char *const outcome_names[] = {"rewrapped", "skipped", "failed"};

/* What became of one file. */
struct rewrap_file {
    enum outcome result;
    char from_token[64], from_version[160], to_token[64], to_version[160];
    char key[256], to_key[256];
};

/* The DEK of the header h (read from f, on token src) wrapped for tg, once
 * the first segment authenticates with it: a file that does not is left
 * as it is. */
static int rewrap_dek(struct sctx *c, struct tstate *src,
                      const struct seal_header *h, const struct target *tg,
                      FILE *f, unsigned char **wrapped, CK_ULONG *wlen,
                      char *err)
{
    CK_OBJECT_HANDLE priv = 0, dek = 0, tdek = 0;
    bool same = src == tg->ts, fallback;
    struct seg_stream first;
    int r = -1;

    *wrapped = NULL;
    if (source_priv(c, src, h, &priv, &fallback, err) < 0 ||
        dek_unwrap(c, src, priv, h, same ? DEK_WRAPPABLE : DEK_READABLE, &dek,
                   err) < 0)
        goto out;
    if (same)
        tdek = dek;
    else if (dek_move(c, src, dek, tg->ts, &tdek, err) < 0)
        goto out;
    first = (struct seg_stream){.op = SEG_DECRYPT,
                                .key = {c, tg->ts, tdek, h},
                                .in = f,
                                .in_what = "the file",
                                .max = 1};
    if (seg_run(&first, err) == 0 &&
        dek_wrap(c, tg, tdek, wrapped, wlen, err) == 0)
        r = 0;
out:
    if (tdek != dek)
        dek_destroy(c, tg->ts, &tdek);
    dek_destroy(c, src, &dek);
    return r;
}

/* The header h with tg's key and wrapped DEK, encoded (free()). */
static unsigned char *rewrap_header(struct sctx *c, struct tstate *src,
                                    const struct seal_header *h,
                                    const struct target *tg, FILE *f,
                                    size_t *hlen, char *err)
{
    struct seal_header nh;
    unsigned char *wrapped, *hdr = NULL;
    CK_ULONG wlen;

    if (rewrap_dek(c, src, h, tg, f, &wrapped, &wlen, err) < 0)
        return NULL;
    /* The same fixed part, the new key and wrapped DEK. */
    memset(&nh, 0, sizeof(nh));
    memcpy(nh.fixed, h->fixed, SEAL_FIXED_LEN);
    if (seal_header_set(&nh, tg->ts->t->label, tg->key->name, tg->v->version,
                        tg->v->id, tg->v->id_len, wrapped, wlen) < 0 ||
        (hdr = seal_header_encode(&nh, hlen)) == NULL)
        efmt(err, "out of memory");
    free(wrapped);
    seal_header_clear(&nh);
    return hdr;
}

/* Whether the file at path is still the one st describes. */
static bool file_unchanged(const char *path, const struct stat *st)
{
    struct stat now;

    return stat(path, &now) == 0 && now.st_ino == st->st_ino &&
           now.st_dev == st->st_dev && now.st_size == st->st_size &&
           now.st_mtim.tv_sec == st->st_mtim.tv_sec &&
           now.st_mtim.tv_nsec == st->st_mtim.tv_nsec;
}

/* Writes the file at path (open as f, st, header h) again with the header
 * hdr and the same segments, and renames it over path. */
static int rewrap_write(const char *path, FILE *f, const struct stat *st,
                        const struct seal_header *h, const unsigned char *hdr,
                        size_t hlen, struct progress *pg, char *err)
{
    struct seg_stream copy;
    FILE *out;

    if (fseeko(f, (off_t)h->length, SEEK_SET) < 0) {
        efmt(err, "%s", strerror(errno));
        return -1;
    }
    if ((out = tmp_open(path, err)) == NULL)
        return -1;
    copy = (struct seg_stream){.op = SEG_COPY,
                               .in = f,
                               .out = out,
                               .in_what = "the file",
                               .out_what = tmp_path_now(),
                               .pg = pg};
    if (fwrite(hdr, 1, hlen, out) != hlen) {
        efmt(err, "writing %s: %s", tmp_path_now(), strerror(errno));
        goto fail;
    }
    if (seg_run(&copy, err) < 0)
        goto fail;
    /* Another process replaced or changed the file meanwhile: keep its
     * version. */
    if (!file_unchanged(path, st)) {
        efmt(err, "the file changed while it was rewrapped: left as it is");
        goto fail;
    }
    if (fchown(fileno(out), st->st_uid, st->st_gid) < 0) {
        /* Not the owner: the file becomes ours, as any rewrite would. */
    }
    return tmp_commit(out, path, st->st_mode & 07777, err);
fail:
    tmp_discard(out);
    return -1;
}

/* Opens a file to rewrap and reads its header. */
static FILE *rewrap_open(const char *path, struct stat *st,
                         struct seal_header *h, struct rewrap_file *rf,
                         char *err)
{
    FILE *f = fopen(path, "rb");

    if (f == NULL || fstat(fileno(f), st) < 0) {
        efmt(err, "%s", strerror(errno));
    } else if (!S_ISREG(st->st_mode)) {
        efmt(err, "not a regular file");
    } else if (header_read(f, h, err) == 0) {
        snprintf(rf->from_token, sizeof(rf->from_token), "%s", h->token);
        snprintf(rf->key, sizeof(rf->key), "%s", h->key);
        snprintf(rf->from_version, sizeof(rf->from_version), "%s", h->version);
        return f;
    }
    if (f != NULL)
        fclose(f);
    return NULL;
}

/* The token that sealed the file, and the key to wrap with: to, else the
 * current version of the file's key. */
static struct tstate *rewrap_target(struct sctx *c, const struct target *to,
                                    const struct seal_header *h,
                                    struct target *tg, struct rewrap_file *rf,
                                    char *err)
{
    struct tstate *src = ts_by_label(c, h->token);

    if (src == NULL) {
        efmt(err, "no token %s (the token that sealed the file)", h->token);
        return NULL;
    }
    if (to != NULL)
        *tg = *to;
    else if (target_current(c, src, h->key, tg, err) < 0)
        return NULL;
    snprintf(rf->to_token, sizeof(rf->to_token), "%s", tg->ts->t->label);
    snprintf(rf->to_key, sizeof(rf->to_key), "%s", tg->key->name);
    snprintf(rf->to_version, sizeof(rf->to_version), "%s", tg->v->version);
    return src;
}

static void rewrap_one(struct sctx *c, const struct target *to,
                       const struct sealed_file *it, struct progress *pg,
                       struct rewrap_file *rf, char *err)
{
    struct seal_header h;
    struct target tg;
    struct tstate *src;
    struct stat st;
    unsigned char *hdr = NULL;
    size_t hlen;
    FILE *f;

    memset(&h, 0, sizeof(h));
    rf->result = RW_FAILED;
    f = rewrap_open(it->path, &st, &h, rf, err);
    if (f == NULL || (src = rewrap_target(c, to, &h, &tg, rf, err)) == NULL)
        goto out;
    if (strcmp(h.token, tg.ts->t->label) == 0 &&
        strcmp(h.key, tg.key->name) == 0 && h.key_id_len == tg.v->id_len &&
        memcmp(h.key_id, tg.v->id, h.key_id_len) == 0)
        rf->result = RW_SKIPPED;
    else if ((hdr = rewrap_header(c, src, &h, &tg, f, &hlen, err)) != NULL &&
             rewrap_write(it->path, f, &st, &h, hdr, hlen, pg, err) == 0)
        rf->result = RW_DONE;
out:
    if (f != NULL)
        fclose(f);
    free(hdr);
    seal_header_clear(&h);
}

/* A rewrap over many files: what it counts and prints. */
struct rewrap_run {
    struct sctx c;
    struct target to; /* --to */
    bool has_to;
    struct progress pg;
    unsigned long counts[3];
    char under[600]; /* KEY@VERSION the files are under now */
    bool mixed;      /* more than one */
    bool json;
    struct jw w;
};

static void json_from_to(struct jw *w, const char *name, bool present,
                         const char *token, const char *key,
                         const char *version)
{
    jw_key(w, name);
    if (!present) {
        jw_null(w);
        return;
    }
    jw_begin_object(w);
    jw_kv_string(w, "token", token);
    jw_kv_string(w, "key", key);
    jw_kv_string(w, "version", version);
    jw_end_object(w);
}

/* Counts, reports and (--json) prints what became of the file at path. */
static void rewrap_note(struct rewrap_run *run, const char *path,
                        const struct rewrap_file *rf, const char *err)
{
    char u[600];

    run->counts[rf->result]++;
    if (rf->result == RW_FAILED) {
        progress_clear(&run->pg);
        tool_error("rewrap: %s: %s", path, err);
    } else if (rf->to_key[0] != '\0') {
        snprintf(u, sizeof(u), "%s@%s", rf->to_key, rf->to_version);
        if (run->under[0] == '\0')
            snprintf(run->under, sizeof(run->under), "%s", u);
        else if (strcmp(run->under, u) != 0)
            run->mixed = true;
    }
    if (!run->json)
        return;
    jw_begin_object(&run->w);
    jw_kv_string(&run->w, "path", path);
    jw_kv_string(&run->w, "result", outcome_names[rf->result]);
    json_from_to(&run->w, "from", rf->from_token[0] != '\0', rf->from_token,
                 rf->key, rf->from_version);
    json_from_to(&run->w, "to",
                 rf->to_token[0] != '\0' && rf->result != RW_FAILED,
                 rf->to_token, rf->to_key, rf->to_version);
    jw_kv_string(&run->w, "error", rf->result == RW_FAILED ? err : NULL);
    jw_end_object(&run->w);
}

static void rewrap_summary(struct rewrap_run *run)
{
    const unsigned long *n = run->counts;

    if (run->has_to)
        snprintf(run->under, sizeof(run->under), "%s@%s", run->to.key->name,
                 run->to.v->version);
    if (run->json) {
        jw_end_array(&run->w);
        jw_kv_int(&run->w, "rewrapped", (long long)n[RW_DONE]);
        jw_kv_int(&run->w, "skipped", (long long)n[RW_SKIPPED]);
        jw_kv_int(&run->w, "failed", (long long)n[RW_FAILED]);
        jw_end_object(&run->w);
        jw_finish(&run->w);
        return;
    }
    printf("rewrapped %lu file%s, skipped %lu already under %s, failed %lu\n",
           n[RW_DONE], n[RW_DONE] == 1 ? "" : "s", n[RW_SKIPPED],
           run->mixed || run->under[0] == '\0' ? "their key's current version"
                                               : run->under,
           n[RW_FAILED]);
}

/* Rewraps the file it; the bar advances by its size. */
static void rewrap_item(struct rewrap_run *run, const struct sealed_file *it)
{
    unsigned long long before = run->pg.done;
    struct rewrap_file rf;
    char err[ERRLEN];

    memset(&rf, 0, sizeof(rf));
    err[0] = '\0';
    progress_draw(&run->pg, true);
    /* A file found by the walk may have changed since. */
    if (it->named || file_is_sealed(it->path)) {
        rewrap_one(&run->c, run->has_to ? &run->to : NULL, it, &run->pg, &rf,
                   err);
        rewrap_note(run, it->path, &rf, err);
    }
    run->pg.done = before + (unsigned long long)it->size;
    run->pg.files++;
}

int cmd_rewrap(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    struct sealed_files l;
    struct rewrap_run run;
    char err[ERRLEN];
    size_t i;

    memset(&l, 0, sizeof(l));
    memset(&run, 0, sizeof(run));
    tmp_signals_install();
    run.counts[RW_FAILED] =
        sealed_files_collect(&l, argc - 1, argv + 1, "rewrap");
    run.has_to = o->to != NULL;
    if (sctx_init(&run.c, m, o, err) < 0 ||
        (run.has_to &&
         target_resolve(&run.c, o->to, o->token, "--to", &run.to, err) < 0)) {
        tool_error("rewrap: %s", err);
        sealed_files_free(&l);
        sctx_free(&run.c);
        return TOOL_FAILED;
    }
    run.pg.on = isatty(STDERR_FILENO) && l.n > 0;
    run.pg.total = l.total;
    run.pg.nfiles = l.n;
    run.json = o->json;
    if (run.json) {
        jw_init(&run.w, stdout);
        jw_begin_object(&run.w);
        jw_key(&run.w, "files");
        jw_begin_array(&run.w);
    }
    for (i = 0; i < l.n; i++)
        rewrap_item(&run, &l.v[i]);
    progress_draw(&run.pg, true);
    progress_clear(&run.pg);
    rewrap_summary(&run);
    sealed_files_free(&l);
    sctx_free(&run.c);
    return run.counts[RW_FAILED] > 0 ? TOOL_FAILED : TOOL_OK;
}
