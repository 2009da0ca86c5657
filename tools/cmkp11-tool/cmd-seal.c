/*
 * cmkp11-tool seal, unseal and rewrap: envelope encryption of files and
 * streams in the format of docs/seal-format.md, through the module only.
 *
 * seal: a fresh AES-256 data key (DEK) generated in the token, wrapped with
 * the CMK's current version (RSA-OAEP SHA-256), the data encrypted with it
 * by the module in 64 KiB AES-GCM segments.
 * unseal: the DEK unwrapped into a sensitive, non-extractable session key,
 * each segment decrypted and verified by the module.
 * rewrap: the DEK unwrapped and wrapped again under another version or key,
 * the segments copied unchanged; the file is replaced by a rename.
 */
#include "config.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keys.h"
#include "out.h"
#include "seal-int.h"
#include "tool.h"

/* ---- seal -----------------------------------------------------------------
 */

/* The new header of a file sealed with dek under tg, encoded (free()). */
static unsigned char *header_new(struct sctx *c, const struct target *tg,
                                 CK_OBJECT_HANDLE dek, struct seal_header *h,
                                 size_t *hlen, char *err)
{
    unsigned char prefix[SEAL_PREFIX_LEN], *wrapped, *hdr = NULL;
    CK_ULONG wlen;

    if (dek_wrap(c, tg, dek, &wrapped, &wlen, err) < 0)
        return NULL;
    if (getrandom(prefix, sizeof(prefix), 0) != (ssize_t)sizeof(prefix)) {
        efmt(err, "getrandom: %s", strerror(errno));
        goto out;
    }
    seal_fixed_init(h, prefix);
    if (seal_header_set(h, tg->ts->t->label, tg->key->name, tg->v->version,
                        tg->v->id, tg->v->id_len, wrapped, wlen) < 0 ||
        (hdr = seal_header_encode(h, hlen)) == NULL)
        efmt(err, "the header does not encode (a name longer than 65535 "
                  "bytes, or out of memory)");
out:
    free(wrapped);
    return hdr;
}

/* Seals in into out under tg: a new DEK, the header, the segments. */
static int seal_data(struct sctx *c, const struct target *tg, FILE *in,
                     FILE *out, struct seg_stream *ss, char *err)
{
    struct seal_header h;
    unsigned char *hdr = NULL;
    CK_OBJECT_HANDLE dek = 0;
    size_t hlen;
    int r = -1;

    memset(&h, 0, sizeof(h));
    if (dek_generate(c, tg, &dek, err) < 0 ||
        (hdr = header_new(c, tg, dek, &h, &hlen, err)) == NULL)
        goto out;
    if (fwrite(hdr, 1, hlen, out) != hlen) {
        efmt(err, "writing the sealed data: %s", strerror(errno));
        goto out;
    }
    ss->op = SEG_ENCRYPT;
    ss->key = (struct seg_key){c, tg->ts, dek, &h};
    ss->in = in;
    ss->out = out;
    ss->in_what = "the input";
    ss->out_what = "the sealed data";
    r = seg_run(ss, err);
out:
    dek_destroy(c, tg->ts, &dek);
    free(hdr);
    seal_header_clear(&h);
    return r;
}

static void hex(const unsigned char *p, size_t n, char *out, size_t outlen)
{
    size_t i;

    out[0] = '\0';
    for (i = 0; i < n && 2 * i + 2 < outlen; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

static void json_key_fields(struct jw *w, const char *token, const char *key,
                            const char *version, const unsigned char *id,
                            size_t id_len)
{
    char idhex[2 * 64 + 1];

    hex(id, id_len < 64 ? id_len : 64, idhex, sizeof(idhex));
    jw_kv_string(w, "token", token);
    jw_kv_string(w, "key", key);
    jw_kv_string(w, "version", version);
    jw_kv_string(w, "key_id", idhex);
}

/* What seal and unseal print on success: a JSON summary with --json, else
 * a line unless the data went to standard output. */
struct report {
    const char *inpath, *outpath;
    const char *token, *key, *version;
    const unsigned char *id;
    size_t id_len;
    const struct seg_stream *ss;
};

static void report_json(const struct report *r, int fallback)
{
    struct jw w;

    jw_init(&w, stdout);
    jw_begin_object(&w);
    jw_kv_string(&w, "input", path_is_stdio(r->inpath) ? "-" : r->inpath);
    jw_kv_string(&w, "output", r->outpath);
    json_key_fields(&w, r->token, r->key, r->version, r->id, r->id_len);
    if (fallback >= 0)
        jw_kv_bool(&w, "fallback", fallback);
    jw_kv_int(&w, "bytes", (long long)r->ss->bytes);
    jw_kv_int(&w, "segments", (long long)r->ss->segments);
    jw_end_object(&w);
    jw_finish(&w);
}

/*
 * Segment by segment, the lower module allocates and frees buffers of
 * about 64 KiB (SoftHSM: several per C_Encrypt). With glibc's adaptive
 * thresholds those come from mmap or from the top of the heap, given back
 * at each free and faulted in, zeroed, again at the next segment: two page
 * faults for every 8 KiB sealed, a third of the CPU time of a seal on an
 * hsm token (docs/performance.md). Fixed thresholds of 1 MiB keep them in
 * the heap; memory stays constant, at most 1 MiB more kept free.
 */
static void steady_heap(void)
{
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
#endif
}

/* Ends the output after the work returned r: the bar filled and cleared,
 * the output committed, or discarded on a failure. */
static int output_end(struct outfile *of, struct progress *pg, int r,
                      const char *outpath, char *err)
{
    if (r == 0)
        progress_finish(pg);
    progress_clear(pg);
    if (r < 0) {
        outfile_discard(of);
        return -1;
    }
    return outfile_commit(of, outpath, err);
}

/* seal's refusals before anything is read. */
static int seal_usage(const struct tool_opts *o)
{
    if (o->json && path_is_stdout(o->output)) {
        tool_error("seal --json prints a summary on standard output: give "
                   "-o FILE for the sealed data");
        return -1;
    }
    if (path_is_stdout(o->output) && isatty(STDOUT_FILENO)) {
        tool_error("the sealed data is binary: give -o FILE, or redirect "
                   "standard output");
        return -1;
    }
    return 0;
}

int cmd_seal(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    const char *inpath = argc > 1 ? argv[1] : NULL;
    struct seg_stream ss;
    struct progress pg;
    struct outfile of;
    struct target tg;
    char err[ERRLEN];
    struct sctx c;
    FILE *in;
    int r;

    steady_heap();
    memset(&c, 0, sizeof(c));
    memset(&ss, 0, sizeof(ss));
    if (seal_usage(o) < 0)
        return TOOL_USAGE;
    tmp_signals_install();
    if ((in = input_open(inpath)) == NULL)
        return TOOL_FAILED;
    if (sctx_init(&c, m, o, err) < 0 ||
        target_resolve(&c, o->key, o->token, "--key", &tg, err) < 0 ||
        outfile_open(&of, o->output, false, err) < 0) {
        r = -1;
    } else {
        progress_start(&pg, in);
        ss.pg = &pg;
        r = output_end(&of, &pg, seal_data(&c, &tg, in, of.f, &ss, err),
                       o->output, err);
    }
    if (r < 0) {
        tool_error("seal: %s", err);
    } else if (o->json) {
        struct report rp = {.inpath = inpath,
                            .outpath = o->output,
                            .token = tg.ts->t->label,
                            .key = tg.key->name,
                            .version = tg.v->version,
                            .id = tg.v->id,
                            .id_len = tg.v->id_len,
                            .ss = &ss};
        report_json(&rp, -1);
    } else if (!path_is_stdout(o->output)) {
        printf("sealed %llu bytes from %s into %s under key %s version %s%s "
               "on token %s\n",
               ss.bytes, path_in_name(inpath), o->output, tg.key->name,
               tg.v->version, tg.v->current ? "" : " (not the current version)",
               tg.ts->t->label);
    }
    input_close(in);
    sctx_free(&c);
    return r < 0 ? TOOL_FAILED : TOOL_OK;
}

/* ---- unseal ---------------------------------------------------------------
 */

/* The header's DEK on the token --token names, else the one that sealed
 * the file: a sensitive session key that only decrypts. */
static int unseal_key(struct sctx *c, const struct seal_header *h,
                      struct tstate **s, CK_OBJECT_HANDLE *dek, bool *fallback,
                      char *err)
{
    CK_OBJECT_HANDLE priv = 0;

    if (c->o->token != NULL) {
        *s = ts_select(c, c->o->token, err);
    } else if ((*s = ts_by_label(c, h->token)) == NULL) {
        efmt(err, "no token %s (the token that sealed the file): give --token",
             h->token);
    }
    if (*s == NULL || source_priv(c, *s, h, &priv, fallback, err) < 0)
        return -1;
    if (*fallback && !c->o->json)
        tool_error("key %s has no version %s on token %s: unwrapping through "
                   "the key's label object (unwrap-fallback)",
                   h->key, h->version, (*s)->t->label);
    return dek_unwrap(c, *s, priv, h, DEK_SEALED, dek, err);
}

int cmd_unseal(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    const char *inpath = argc > 1 ? argv[1] : NULL;
    struct seg_stream ss;
    struct seal_header h;
    struct tstate *s = NULL;
    CK_OBJECT_HANDLE dek = 0;
    struct progress pg;
    struct outfile of;
    bool fallback = false;
    char err[ERRLEN];
    struct sctx c;
    FILE *in;
    int r;

    steady_heap();
    memset(&c, 0, sizeof(c));
    memset(&h, 0, sizeof(h));
    if (o->json && path_is_stdout(o->output)) {
        tool_error("unseal --json prints a summary on standard output: give "
                   "-o FILE for the data");
        return TOOL_USAGE;
    }
    tmp_signals_install();
    if ((in = input_open(inpath)) == NULL)
        return TOOL_FAILED;
    if (header_read(in, &h, err) < 0 || sctx_init(&c, m, o, err) < 0 ||
        unseal_key(&c, &h, &s, &dek, &fallback, err) < 0 ||
        outfile_open(&of, o->output, true, err) < 0) {
        r = -1;
    } else {
        ss = (struct seg_stream){.op = SEG_DECRYPT,
                                 .key = {&c, s, dek, &h},
                                 .in = in,
                                 .out = of.f,
                                 .in_what = "the sealed data",
                                 .out_what = "the data",
                                 .pg = &pg};
        progress_start(&pg, in);
        r = output_end(&of, &pg, seg_run(&ss, err), o->output, err);
    }
    if (r < 0) {
        tool_error("unseal: %s: %s", path_in_name(inpath), err);
    } else if (o->json) {
        struct report rp = {.inpath = inpath,
                            .outpath = o->output,
                            .token = s->t->label,
                            .key = h.key,
                            .version = h.version,
                            .id = h.key_id,
                            .id_len = h.key_id_len,
                            .ss = &ss};
        report_json(&rp, fallback);
    } else if (!path_is_stdout(o->output)) {
        printf("unsealed %llu bytes from %s into %s (key %s version %s on "
               "token %s)\n",
               ss.bytes, path_in_name(inpath), o->output, h.key, h.version,
               s->t->label);
    }
    if (s != NULL)
        dek_destroy(&c, s, &dek);
    input_close(in);
    seal_header_clear(&h);
    sctx_free(&c);
    return r < 0 ? TOOL_FAILED : TOOL_OK;
}

/* ---- rewrap ---------------------------------------------------------------
 */

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
