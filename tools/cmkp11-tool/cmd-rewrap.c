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
#include "secure.h"
#include "seal-int.h"
#include "secret-keys.h"
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
    if (source_priv(c, src, &h->r[0], &priv, &fallback, err) < 0 ||
        dek_unwrap(c, src, priv, &h->r[0], same ? DEK_WRAPPABLE : DEK_READABLE,
                   &dek, err) < 0)
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
    if (seal_header_set(&nh, 0, tg->ts->t->label, tg->key->name, tg->v->version,
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
        snprintf(rf->from_token, sizeof(rf->from_token), "%s", h->r[0].token);
        snprintf(rf->key, sizeof(rf->key), "%s", h->r[0].key);
        snprintf(rf->from_version, sizeof(rf->from_version), "%s",
                 h->r[0].version);
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
    struct tstate *src = ts_by_label(c, h->r[0].token);

    if (src == NULL) {
        efmt(err, "no token %s (the token that sealed the file)",
             h->r[0].token);
        return NULL;
    }
    if (to != NULL)
        *tg = *to;
    else if (target_current(c, src, h->r[0].key, tg, err) < 0)
        return NULL;
    snprintf(rf->to_token, sizeof(rf->to_token), "%s", tg->ts->t->label);
    snprintf(rf->to_key, sizeof(rf->to_key), "%s", tg->key->name);
    snprintf(rf->to_version, sizeof(rf->to_version), "%s", tg->v->version);
    return src;
}

/* The first segment of f (after h) authenticates with the DEK value,
 * through the module on token s. */
static int first_segment(struct sctx *c, struct tstate *s,
                         const struct seal_header *h, FILE *f,
                         const unsigned char *value, char *err)
{
    CK_OBJECT_HANDLE dek = 0;
    struct seg_stream first;
    int r = -1;

    if (fseeko(f, (off_t)h->length, SEEK_SET) < 0) {
        efmt(err, "%s", strerror(errno));
        return -1;
    }
    if (dek_create(c, s, value, false, &dek, err) == 0) {
        first = (struct seg_stream){.op = SEG_DECRYPT,
                                    .key = {c, s, dek, h},
                                    .in = f,
                                    .in_what = "the file",
                                    .max = 1};
        r = seg_run(&first, err);
    }
    dek_destroy(c, s, &dek);
    return r;
}

/* A deep copy of h's fixed part and recipients. */
static int header_copy(struct seal_header *nh, const struct seal_header *h)
{
    size_t i;

    memset(nh, 0, sizeof(*nh));
    memcpy(nh->fixed, h->fixed, SEAL_FIXED_LEN);
    for (i = 0; i < h->n; i++) {
        const struct seal_recip *r = &h->r[i];
        if (seal_header_set(nh, i, r->token, r->key, r->version, r->key_id,
                            r->key_id_len, r->wrapped, r->wrapped_len) < 0)
            return -1;
    }
    return 0;
}

/* The recipients' keys for an all-of file: the current version of each. */
static int current_all(struct sctx *c, const struct seal_header *h,
                       struct target *tg, char *err)
{
    size_t i;

    for (i = 0; i < h->n; i++) {
        struct tstate *s = recip_token(c, h, i, err);
        if (s == NULL || target_current(c, s, h->r[i].key, &tg[i], err) < 0)
            return -1;
    }
    return 0;
}

/* Whether every recipient of h is at its key's current version. */
static bool all_current(struct sctx *c, const struct seal_header *h)
{
    struct target tg[SEAL_RECIP_MAX];
    char ignored[ERRLEN];
    size_t i;

    if (current_all(c, h, tg, ignored) < 0)
        return false;
    for (i = 0; i < h->n; i++)
        if (tg[i].v->id_len != h->r[i].key_id_len ||
            memcmp(tg[i].v->id, h->r[i].key_id, h->r[i].key_id_len) != 0)
            return false;
    return true;
}

/* The new recipients of nh (a copy of h, minus a removed one) with the DEK
 * value: any-of, --add-key's key added, and each key at its current
 * version when its token has one; all-of, new shares for every key. */
static int multi_wrap(struct sctx *c, struct seal_header *nh,
                      const struct target *add, const unsigned char *value,
                      char *err)
{
    struct target tg[SEAL_RECIP_MAX];
    size_t i, old = nh->n;

    memset(tg, 0, sizeof(tg));
    if (add != NULL) {
        if (nh->n == SEAL_RECIP_MAX) {
            efmt(err, "the file has %d keys already", SEAL_RECIP_MAX);
            return -1;
        }
        if (recip_wrap(c, nh, nh->n, add, value, err) < 0)
            return -1;
    }
    if (seal_header_all(nh)) {
        /* The added key as --add-key names it, the others current. */
        if (current_all(c, nh, tg, err) < 0)
            return -1;
        if (add != NULL)
            tg[old] = *add;
        return recip_wrap_all(c, nh, tg, nh->n, true, value, err);
    }
    for (i = 0; i < old; i++) {
        struct tstate *s = ts_by_label(c, nh->r[i].token);
        char ignored[ERRLEN];
        if (s == NULL || ts_load(c, s) != CKR_OK ||
            target_current(c, s, nh->r[i].key, &tg[i], ignored) < 0)
            continue; /* kept as it is */
        if (tg[i].v->id_len == nh->r[i].key_id_len &&
            memcmp(tg[i].v->id, nh->r[i].key_id, tg[i].v->id_len) == 0)
            continue;
        if (recip_wrap(c, nh, i, &tg[i], value, err) < 0)
            return -1;
    }
    return 0;
}

/* Lists why each recipient failed, after "CMD: PATH: ". */
static void multi_errors(const struct seal_header *h, const char *path,
                         char errs[][ERRLEN])
{
    char name[600];
    size_t i;

    for (i = 0; i < h->n; i++) {
        if (errs[i][0] == '\0')
            continue;
        recip_name(&h->r[i], name, sizeof(name));
        tool_error("rewrap: %s: recipient %zu of %zu, %s: %s", path, i + 1,
                   h->n, name, errs[i]);
    }
}

/* rewrap of a version 2 file, or --add-key / --remove-key on any: the DEK
 * from the recipients (with --remove-key on an any-of file, from those
 * that stay: the last way to unseal is never removed), checked against
 * the first segment, wrapped as multi_wrap says; the file rewritten with
 * the new header. */
static void rewrap_multi(struct sctx *c, const char *path, FILE *f,
                         const struct stat *st, struct seal_header *h,
                         struct progress *pg, struct rewrap_file *rf, char *err)
{
    static char errs[SEAL_RECIP_MAX][ERRLEN];
    unsigned char *value = secure_alloc(SEAL_DEK_LEN), *hdr = NULL;
    bool skip[SEAL_RECIP_MAX];
    struct seal_header nh;
    struct target add;
    ssize_t rm = -1;
    size_t used = 0, hlen;

    memset(skip, 0, sizeof(skip));
    memset(&nh, 0, sizeof(nh));
    if (value == NULL) {
        efmt(err, "out of memory");
        return;
    }
    if (c->o->to != NULL) {
        efmt(err, "--to replaces the one key of a file; for a file of "
                  "several keys give --add-key and --remove-key");
        goto out;
    }
    if (c->o->remove_key != NULL) {
        rm = recip_find(c, h, c->o->remove_key);
        if (rm == -2) {
            efmt(err,
                 "'%s' names several keys of the file: give the URI of "
                 "one (check FILE shows them)",
                 c->o->remove_key);
            goto out;
        }
        if (rm < 0 && c->o->add_key == NULL) {
            rf->result = RW_SKIPPED;
            goto out;
        }
        if (rm >= 0 && h->n == 1) {
            efmt(err,
                 "%s is the only key of the file: removing it would "
                 "leave no way to unseal it (refused)",
                 c->o->remove_key);
            goto out;
        }
        if (rm >= 0 && !seal_header_all(h))
            skip[rm] = true;
    }
    if (c->o->add_key != NULL) {
        size_t i;
        if (target_resolve(c, c->o->add_key, c->o->token, "--add-key", &add,
                           err) < 0)
            goto out;
        for (i = 0; i < h->n; i++)
            if ((ssize_t)i != rm &&
                strcmp(h->r[i].token, add.ts->t->label) == 0 &&
                strcmp(h->r[i].key, add.key->name) == 0) {
                rf->result = RW_SKIPPED;
                goto out;
            }
    }
    if (seal_header_all(h) && c->o->add_key == NULL && rm < 0 &&
        all_current(c, h)) {
        rf->result = RW_SKIPPED;
        goto out;
    }
    if (header_dek_value(c, h, skip, value, &used, errs, err) < 0) {
        multi_errors(h, path, errs);
        if (rm >= 0 && !seal_header_all(h))
            efmt(err,
                 "no key but %s can unseal the file now: removing it "
                 "would leave no way to unseal it (refused)",
                 c->o->remove_key);
        goto out;
    }
    {
        struct tstate *s = recip_token(c, h, used, err);
        if (s == NULL || first_segment(c, s, h, f, value, err) < 0)
            goto out;
    }
    if (header_copy(&nh, h) < 0) {
        efmt(err, "out of memory");
        goto out;
    }
    seal_header_mode(&nh, SEAL_VERSION2, seal_header_all(h));
    if (rm >= 0)
        seal_header_remove(&nh, (size_t)rm);
    if (multi_wrap(c, &nh, c->o->add_key != NULL ? &add : NULL, value, err) < 0)
        goto out;
    if ((hdr = seal_header_encode(&nh, &hlen)) == NULL) {
        efmt(err, "the header does not encode (out of memory)");
        goto out;
    }
    if (hlen == h->length && c->o->add_key == NULL && rm < 0) {
        unsigned char *old = malloc(hlen);
        bool same = old != NULL && fseeko(f, 0, SEEK_SET) == 0 &&
                    fread(old, 1, hlen, f) == hlen &&
                    memcmp(old, hdr, hlen) == 0;
        free(old);
        if (same) {
            rf->result = RW_SKIPPED;
            goto out;
        }
    }
    if (rewrap_write(path, f, st, h, hdr, hlen, pg, err) == 0)
        rf->result = RW_DONE;
out:
    if (rf->result != RW_FAILED)
        err[0] = '\0';
    free(hdr);
    seal_header_clear(&nh);
    secure_free(value);
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
    if (f == NULL)
        goto out;
    if (seal_header_version(&h) != SEAL_VERSION || c->o->add_key != NULL ||
        c->o->remove_key != NULL) {
        rewrap_multi(c, it->path, f, &st, &h, pg, rf, err);
        goto out;
    }
    if ((src = rewrap_target(c, to, &h, &tg, rf, err)) == NULL)
        goto out;
    if (strcmp(h.r[0].token, tg.ts->t->label) == 0 &&
        strcmp(h.r[0].key, tg.key->name) == 0 &&
        h.r[0].key_id_len == tg.v->id_len &&
        memcmp(h.r[0].key_id, tg.v->id, h.r[0].key_id_len) == 0)
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
    if (run->c.o->add_key != NULL || run->c.o->remove_key != NULL) {
        printf("rewrapped %lu file%s, skipped %lu %s %s, failed %lu\n",
               n[RW_DONE], n[RW_DONE] == 1 ? "" : "s", n[RW_SKIPPED],
               run->c.o->add_key != NULL ? "that have" : "without",
               run->c.o->add_key != NULL ? run->c.o->add_key
                                         : run->c.o->remove_key,
               n[RW_FAILED]);
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
    if (argc == 1) {
        /* rewrap --token TOKEN: the token's secret keys. */
        if (o->token == NULL || o->to != NULL || o->add_key != NULL ||
            o->remove_key != NULL) {
            tool_error("usage: cmkp11-tool rewrap FILE|DIR..., or rewrap "
                       "--token TOKEN for the token's secret keys");
            return TOOL_USAGE;
        }
        return secret_keys_rewrap(m, o);
    }
    tmp_signals_install();
    run.counts[RW_FAILED] =
        sealed_files_collect(&l, argc - 1, argv + 1, "rewrap");
    run.has_to = o->to != NULL;
    if (o->to != NULL && (o->add_key != NULL || o->remove_key != NULL)) {
        tool_error("rewrap --to replaces a file's one key: give --to, or "
                   "--add-key and --remove-key");
        sealed_files_free(&l);
        return TOOL_USAGE;
    }
    if (sctx_init(&run.c, m, o, err) < 0 ||
        (run.has_to &&
         target_resolve(&run.c, o->to, o->token, "--to", &run.to, err) < 0) ||
        (o->add_key != NULL && target_resolve(&run.c, o->add_key, o->token,
                                              "--add-key", &run.to, err) < 0)) {
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
