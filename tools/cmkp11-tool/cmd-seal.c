/*
 * cmkp11-tool seal and unseal: envelope encryption of files and streams in
 * the format of docs/seal-format.md, through the module only (rewrap is
 * cmd-rewrap.c; what they share, seal-int.h).
 *
 * seal: a fresh AES-256 data key (DEK) generated in the token, wrapped with
 * the CMK's current version (RSA-OAEP SHA-256), the data encrypted with it
 * by the module in 64 KiB AES-GCM segments.
 * unseal: the DEK unwrapped into a sensitive, non-extractable session key,
 * each segment decrypted and verified by the module.
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

#include "debug.h"
#include "keys.h"
#include "out.h"
#include "secure.h"
#include "seal-int.h"
#include "tool.h"

/* The segments encrypted at once on token ts: --threads, else the online
 * CPUs (at most TOOL_THREADS_DEFAULT_MAX) where the token does AES itself
 * (hsm: its lower module, a few hundred MB/s a core), else one. On a
 * keyvault token the module's AES runs at the speed of writing the
 * output already (docs/performance.md). */
static unsigned seg_threads(const struct tool_opts *o, const struct tstate *ts)
{
    long n;

    if (o->threads > 0)
        return (unsigned)o->threads;
    if (ts->t->keyvault)
        return 1;
    n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > TOOL_THREADS_DEFAULT_MAX ? TOOL_THREADS_DEFAULT_MAX
                                        : (unsigned)n;
}

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
    if (seal_header_set(h, 0, tg->ts->t->label, tg->key->name, tg->v->version,
                        tg->v->id, tg->v->id_len, wrapped, wlen) < 0 ||
        (hdr = seal_header_encode(h, hlen)) == NULL)
        efmt(err, "the header does not encode (a name longer than 65535 "
                  "bytes, or out of memory)");
out:
    free(wrapped);
    return hdr;
}

/* Seals in into out under tg: a new DEK, the header (in h), the
 * segments. */
static int seal_data(struct sctx *c, const struct target *tg, FILE *in,
                     FILE *out, struct seal_header *h, struct seg_stream *ss,
                     char *err)
{
    unsigned char *hdr = NULL;
    CK_OBJECT_HANDLE dek = 0;
    size_t hlen;
    int r = -1;

    if (dek_generate(c, tg, &dek, err) < 0 ||
        (hdr = header_new(c, tg, dek, h, &hlen, err)) == NULL)
        goto out;
    if (fwrite(hdr, 1, hlen, out) != hlen) {
        efmt(err, "writing the sealed data: %s", strerror(errno));
        goto out;
    }
    ss->op = SEG_ENCRYPT;
    ss->key = (struct seg_key){c, tg->ts, dek, h};
    ss->threads = seg_threads(c->o, tg->ts);
    ss->in = in;
    ss->out = out;
    ss->in_what = "the input";
    ss->out_what = "the sealed data";
    r = seg_run(ss, err);
out:
    dek_destroy(c, tg->ts, &dek);
    free(hdr);
    return r;
}

/* Seals in into out under the n keys tg (version 2): the DEK, random, is
 * wrapped under each (or split into shares, all), and encrypts the
 * segments on the first key's token. */
static int seal_data_multi(struct sctx *c, const struct target *tg, size_t n,
                           bool all, FILE *in, FILE *out, struct seal_header *h,
                           struct seg_stream *ss, char *err)
{
    unsigned char prefix[SEAL_PREFIX_LEN], *hdr = NULL;
    unsigned char *value = secure_alloc(SEAL_DEK_LEN);
    CK_OBJECT_HANDLE dek = 0;
    size_t hlen;
    int r = -1;

    if (value == NULL) {
        efmt(err, "out of memory");
        return -1;
    }
    if (getrandom(value, SEAL_DEK_LEN, 0) != SEAL_DEK_LEN ||
        getrandom(prefix, sizeof(prefix), 0) != (ssize_t)sizeof(prefix)) {
        efmt(err, "getrandom: %s", strerror(errno));
        goto out;
    }
    seal_fixed_init(h, prefix);
    seal_header_mode(h, SEAL_VERSION2, all);
    if (recip_wrap_all(c, h, tg, n, all, value, err) < 0)
        goto out;
    if ((hdr = seal_header_encode(h, &hlen)) == NULL) {
        efmt(err, "the header does not encode (a name too long, or out of "
                  "memory)");
        goto out;
    }
    if (dek_create(c, tg[0].ts, value, true, &dek, err) < 0)
        goto out;
    if (fwrite(hdr, 1, hlen, out) != hlen) {
        efmt(err, "writing the sealed data: %s", strerror(errno));
        goto out;
    }
    ss->op = SEG_ENCRYPT;
    ss->key = (struct seg_key){c, tg[0].ts, dek, h};
    ss->threads = seg_threads(c->o, tg[0].ts);
    ss->in = in;
    ss->out = out;
    ss->in_what = "the input";
    ss->out_what = "the sealed data";
    r = seg_run(ss, err);
out:
    dek_destroy(c, tg[0].ts, &dek);
    secure_free(value);
    free(hdr);
    return r;
}

/* The n keys of --key, each once. */
static int targets_resolve(struct sctx *c, const struct tool_opts *o,
                           struct target *tg, char *err)
{
    size_t i, j;

    for (i = 0; i < o->nkeys; i++) {
        if (target_resolve(c, o->keys[i], o->token, "--key", &tg[i], err) < 0)
            return -1;
        for (j = 0; j < i; j++)
            if (tg[j].key == tg[i].key) {
                efmt(err, "key %s on token %s is given twice", tg[i].key->name,
                     tg[i].ts->t->label);
                return -1;
            }
    }
    return 0;
}

/* What seal and unseal print with --json: the file's key as its header
 * names it, the token used, and what the segments held. fallback < 0:
 * not printed. */
static void report_json(const char *inpath, const char *outpath,
                        const char *token, const struct seal_header *hd,
                        size_t used, const struct seg_stream *ss, int fallback)
{
    const struct seal_recip *h = &hd->r[used];
    char idhex[2 * 64 + 1];
    struct jw w;
    size_t i;

    cmk_hex_n(h->key_id, h->key_id_len, idhex, sizeof(idhex));
    jw_init(&w, stdout);
    jw_begin_object(&w);
    jw_kv_string(&w, "input", path_is_stdio(inpath) ? "-" : inpath);
    jw_kv_string(&w, "output", outpath);
    jw_kv_string(&w, "token", token);
    jw_kv_string(&w, "key", h->key);
    jw_kv_string(&w, "version", h->version);
    jw_kv_string(&w, "key_id", idhex);
    if (fallback >= 0)
        jw_kv_bool(&w, "fallback", fallback);
    jw_kv_int(&w, "format", seal_header_version(hd));
    jw_kv_string(&w, "mode", seal_header_all(hd) ? "all-of" : "any-of");
    if (fallback >= 0)
        jw_kv_int(&w, "recipient", (long long)used + 1);
    jw_key(&w, "recipients");
    jw_begin_array(&w);
    for (i = 0; i < hd->n; i++) {
        char *uri = seal_recip_uri(&hd->r[i]);
        jw_begin_object(&w);
        jw_kv_string(&w, "uri", uri);
        jw_kv_string(&w, "token", hd->r[i].token);
        jw_kv_string(&w, "key", hd->r[i].key);
        jw_kv_string(&w, "version", hd->r[i].version);
        jw_end_object(&w);
        free(uri);
    }
    jw_end_array(&w);
    jw_kv_int(&w, "bytes", (long long)ss->bytes);
    jw_kv_int(&w, "segments", (long long)ss->segments);
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
    if (o->require_all && o->nkeys < 2) {
        tool_error("seal --require-all needs two --key or more");
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
    struct seal_header h;
    struct progress pg;
    struct outfile of;
    struct target tgs[CMK_ARRAY_SIZE(o->keys)], tg;
    bool multi = o->nkeys > 1 || o->require_all;
    char err[ERRLEN];
    struct sctx c;
    FILE *in;
    size_t i;
    int r;

    steady_heap();
    memset(&c, 0, sizeof(c));
    memset(&tg, 0, sizeof(tg));
    memset(&ss, 0, sizeof(ss));
    memset(&h, 0, sizeof(h));
    if (seal_usage(o) < 0)
        return TOOL_USAGE;
    tmp_signals_install();
    if ((in = input_open(inpath)) == NULL)
        return TOOL_FAILED;
    if (sctx_init(&c, m, o, err) < 0 ||
        (multi ? targets_resolve(&c, o, tgs, err)
               : target_resolve(&c, o->key, o->token, "--key", &tg, err)) < 0 ||
        outfile_open(&of, o->output, false, err) < 0) {
        r = -1;
    } else {
        progress_start(&pg, in);
        ss.pg = &pg;
        if (multi)
            tg = tgs[0];
        r = output_end(&of, &pg,
                       multi
                           ? seal_data_multi(&c, tgs, o->nkeys, o->require_all,
                                             in, of.f, &h, &ss, err)
                           : seal_data(&c, &tg, in, of.f, &h, &ss, err),
                       o->output, err);
    }
    if (r < 0) {
        tool_error("seal: %s", err);
    } else if (o->json) {
        report_json(inpath, o->output, tg.ts->t->label, &h, 0, &ss, -1);
    } else if (multi && !path_is_stdout(o->output)) {
        printf("sealed %llu bytes from %s into %s under %s of %zu keys:",
               ss.bytes, path_in_name(inpath), o->output,
               o->require_all ? "all" : "any one", o->nkeys);
        for (i = 0; i < o->nkeys; i++)
            printf("%s key %s version %s on token %s", i ? "," : "",
                   tgs[i].key->name, tgs[i].v->version, tgs[i].ts->t->label);
        printf("\n");
    } else if (!path_is_stdout(o->output)) {
        printf("sealed %llu bytes from %s into %s under key %s version %s%s "
               "on token %s\n",
               ss.bytes, path_in_name(inpath), o->output, tg.key->name,
               tg.v->version, tg.v->current ? "" : " (not the current version)",
               tg.ts->t->label);
    }
    input_close(in);
    seal_header_clear(&h);
    sctx_free(&c);
    return r < 0 ? TOOL_FAILED : TOOL_OK;
}

/* ---- unseal ---------------------------------------------------------------
 */

/* The header's DEK on the token of a recipient: a sensitive session key
 * that only decrypts. Any-of: the recipients in recip_order, the first
 * that unwraps; all-of: every share, the DEK made on the first recipient's
 * token. *used is the recipient (any-of) or the first one (all-of). Why
 * each recipient failed is printed when none could, or when another one
 * did. */
static int unseal_key(struct sctx *c, const struct seal_header *h,
                      struct tstate **s, CK_OBJECT_HANDLE *dek, bool *fallback,
                      size_t *used, char *err)
{
    static char errs[SEAL_RECIP_MAX][ERRLEN];
    size_t order[SEAL_RECIP_MAX], n, i, nerr = 0;
    unsigned char *value;
    char name[600];
    int r = -1;

    if (h->n == 1) {
        *used = 0;
        if (recip_unwrap(c, h, 0, DEK_SEALED, s, dek, fallback, err) < 0)
            return -1;
        r = 0;
    } else if (seal_header_all(h)) {
        value = secure_alloc(SEAL_DEK_LEN);
        if (value == NULL) {
            efmt(err, "out of memory");
            return -1;
        }
        if (header_dek_value(c, h, NULL, value, used, errs, err) == 0 &&
            (*s = recip_token(c, h, *used, err)) != NULL &&
            dek_create(c, *s, value, false, dek, err) == 0)
            r = 0;
        secure_free(value);
    } else {
        n = recip_order(c, h, order);
        for (i = 0; i < n; i++) {
            errs[order[i]][0] = '\0';
            if (recip_unwrap(c, h, order[i], DEK_SEALED, s, dek, fallback,
                             errs[order[i]]) == 0) {
                *used = order[i];
                r = 0;
                break;
            }
        }
        if (r < 0)
            efmt(err, "no recipient can unwrap the data key");
    }
    for (i = 0; h->n > 1 && i < h->n; i++) {
        if (errs[i][0] == '\0' || (r == 0 && seal_header_all(h)))
            continue;
        recip_name(&h->r[i], name, sizeof(name));
        if (!c->o->json || r < 0)
            tool_error("unseal: recipient %zu of %zu, %s: %s", i + 1, h->n,
                       name, errs[i]);
        errs[i][0] = '\0';
        nerr++;
    }
    if (r == 0 && *fallback && !c->o->json)
        tool_error("key %s has no version %s on token %s: unwrapping through "
                   "the key's label object (unwrap-fallback)",
                   h->r[*used].key, h->r[*used].version, (*s)->t->label);
    if (r == 0 && nerr > 0 && !c->o->json) {
        recip_name(&h->r[*used], name, sizeof(name));
        tool_error("unseal: unsealing through recipient %zu of %zu, %s",
                   *used + 1, h->n, name);
    }
    return r;
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
    size_t used = 0;
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
        unseal_key(&c, &h, &s, &dek, &fallback, &used, err) < 0 ||
        outfile_open(&of, o->output, true, err) < 0) {
        r = -1;
    } else {
        ss = (struct seg_stream){.op = SEG_DECRYPT,
                                 .key = {&c, s, dek, &h},
                                 .in = in,
                                 .out = of.f,
                                 .in_what = "the sealed data",
                                 .out_what = "the data",
                                 .pg = &pg,
                                 .threads = seg_threads(o, s)};
        progress_start(&pg, in);
        r = output_end(&of, &pg, seg_run(&ss, err), o->output, err);
    }
    if (r < 0) {
        tool_error("unseal: %s: %s", path_in_name(inpath), err);
    } else if (o->json) {
        report_json(inpath, o->output, s->t->label, &h, used, &ss, fallback);
    } else if (!path_is_stdout(o->output) && h.n > 1) {
        printf("unsealed %llu bytes from %s into %s (%s, recipient %zu of %zu: "
               "key %s version %s on token %s)\n",
               ss.bytes, path_in_name(inpath), o->output,
               seal_header_all(&h) ? "all-of" : "any-of", used + 1, h.n,
               h.r[used].key, h.r[used].version, s->t->label);
    } else if (!path_is_stdout(o->output)) {
        printf("unsealed %llu bytes from %s into %s (key %s version %s on "
               "token %s)\n",
               ss.bytes, path_in_name(inpath), o->output, h.r[0].key,
               h.r[0].version, s->t->label);
    }
    if (s != NULL)
        dek_destroy(&c, s, &dek);
    input_close(in);
    seal_header_clear(&h);
    sctx_free(&c);
    return r < 0 ? TOOL_FAILED : TOOL_OK;
}
