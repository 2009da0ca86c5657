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
#include <time.h>
#include <unistd.h>

#include "keys.h"
#include "out.h"
#include "seal-int.h"
#include "secure.h"
#include "tool.h"

/* Encrypts or decrypts one segment through the module. */
static CK_RV seg_crypt(struct sctx *c, CK_SESSION_HANDLE s,
                       CK_OBJECT_HANDLE dek, const struct seal_header *h,
                       uint32_t i, bool last, bool encrypt,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, CK_ULONG *outlen)
{
    unsigned char nonce[SEAL_NONCE_LEN];
    CK_GCM_PARAMS gp;
    CK_MECHANISM mech = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_RV rv;

    seal_nonce(h, i, last, nonce);
    memset(&gp, 0, sizeof(gp));
    gp.pIv = nonce;
    gp.ulIvLen = sizeof(nonce);
    gp.ulIvBits = sizeof(nonce) * 8;
    gp.pAAD = (CK_BYTE *)h->fixed;
    gp.ulAADLen = SEAL_FIXED_LEN;
    gp.ulTagBits = SEAL_TAG_LEN * 8;
    *outlen = SEG_CT;
    if (encrypt) {
        rv = c->m->f->C_EncryptInit(s, &mech, dek);
        if (rv == CKR_OK)
            rv = c->m->f->C_Encrypt(s, (CK_BYTE *)in, inlen, out, outlen);
    } else {
        rv = c->m->f->C_DecryptInit(s, &mech, dek);
        if (rv == CKR_OK)
            rv = c->m->f->C_Decrypt(s, (CK_BYTE *)in, inlen, out, outlen);
    }
    return rv;
}

static bool is_auth_failure(CK_RV rv)
{
    return rv == CKR_ENCRYPTED_DATA_INVALID ||
           rv == CKR_ENCRYPTED_DATA_LEN_RANGE;
}

/* Why segment i (len bytes, last when the file ends after it) does not
 * authenticate: tries the other flag and nearby indices. */
static void seg_diagnose(struct sctx *c, CK_SESSION_HANDLE s,
                         CK_OBJECT_HANDLE dek, const struct seal_header *h,
                         uint32_t i, bool last, const unsigned char *in,
                         size_t len, unsigned char *scratch, char *err)
{
    CK_ULONG n;
    uint32_t j, lo = i > 16 ? i - 16 : 0;

    if (seg_crypt(c, s, dek, h, i, !last, false, in, len, scratch, &n) ==
        CKR_OK) {
        if (last)
            efmt(err,
                 "the file is truncated: it ends after segment %lu, which is "
                 "not the last one",
                 (unsigned long)i);
        else
            efmt(err,
                 "trailing data: bytes follow segment %lu, the last one "
                 "(appended or left over)",
                 (unsigned long)i);
        return;
    }
    for (j = lo; j < i + 16 && j >= lo; j++) {
        if (j == i)
            continue;
        if (seg_crypt(c, s, dek, h, j, false, false, in, len, scratch, &n) ==
                CKR_OK ||
            seg_crypt(c, s, dek, h, j, true, false, in, len, scratch, &n) ==
                CKR_OK) {
            efmt(err,
                 "the segments are reordered: segment %lu holds segment %lu",
                 (unsigned long)i, (unsigned long)j);
            return;
        }
    }
    if (last && len < SEG_CT)
        efmt(err,
             "segment %lu (the last, %zu bytes) does not authenticate: the "
             "file is altered, truncated inside a segment, or has bytes "
             "appended",
             (unsigned long)i, len);
    else
        efmt(err,
             "segment %lu does not authenticate: the data is altered (or "
             "was not sealed with this data key)",
             (unsigned long)i);
}

static void hex(const unsigned char *p, size_t n, char *out, size_t outlen)
{
    size_t i;

    out[0] = '\0';
    for (i = 0; i < n && 2 * i + 2 < outlen; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

/* ---- seal -----------------------------------------------------------------
 */

/* The progress bar on a terminal. */
struct progress {
    bool on;
    unsigned long long total, done;
    size_t files, nfiles;
    struct timespec last;
};

static void progress_draw(struct progress *p, bool force)
{
    struct timespec now;
    int width = 30, fill, pct;

    if (!p->on)
        return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!force && (now.tv_sec - p->last.tv_sec) * 1000 +
                          (now.tv_nsec - p->last.tv_nsec) / 1000000 <
                      100)
        return;
    p->last = now;
    pct = p->total ? (int)(p->done * 100 / p->total) : 100;
    fill = pct * width / 100;
    if (p->nfiles == 0 && p->total == 0) /* a pipe: its size is unknown */
        fprintf(stderr, "\r%.1f MiB", p->done / 1048576.0);
    else if (p->nfiles == 0)
        fprintf(stderr, "\r[%.*s%*s] %3d%%  %.1f/%.1f MiB", fill,
                "##############################", width - fill, "", pct,
                p->done / 1048576.0, p->total / 1048576.0);
    else
        fprintf(stderr, "\r[%.*s%*s] %3d%%  %zu/%zu files  %.1f/%.1f MiB", fill,
                "##############################", width - fill, "", pct,
                p->files, p->nfiles, p->done / 1048576.0, p->total / 1048576.0);
    fflush(stderr);
}

static void progress_clear(struct progress *p)
{
    if (p->on)
        fputs("\r\033[K", stderr);
}

/* seal and unseal: a bar on stderr when it is a terminal and the input
 * is large (or of unknown size), as rewrap shows; nothing otherwise. */
#define PROGRESS_MIN (1024UL * 1024)

static void progress_start(struct progress *p, FILE *in)
{
    struct stat st;

    memset(p, 0, sizeof(*p));
    if (!isatty(STDERR_FILENO))
        return;
    if (fstat(fileno(in), &st) == 0 && S_ISREG(st.st_mode)) {
        p->total = (unsigned long long)st.st_size;
        p->on = p->total >= PROGRESS_MIN;
    } else {
        p->on = true;
    }
}

/* All read (unseal counts segments, not the header): the full bar. */
static void progress_finish(struct progress *p)
{
    if (p->total > p->done)
        p->done = p->total;
    progress_draw(p, true);
}

static void progress_add(struct progress *p, unsigned long long n)
{
    p->done += n;
    if (p->total != 0 && p->done > p->total)
        p->total = p->done;
    progress_draw(p, false);
}

struct seal_result {
    unsigned long long bytes;
    unsigned long segments;
    struct progress pg;
};

static int seal_stream(struct sctx *c, const struct target *tg, FILE *in,
                       FILE *out, struct seal_result *res, char *err)
{
    CK_SESSION_HANDLE s = tg->ts->t->sess;
    CK_ULONG wlen = 0, n;
    unsigned char prefix[SEAL_PREFIX_LEN], *wrapped = NULL, *hdr = NULL;
    unsigned char *cur = NULL, *next = NULL, *ct = NULL, *tmp;
    struct seal_header h;
    CK_OBJECT_HANDLE dek = 0;
    ssize_t cur_len, next_len = 0;
    size_t hlen;
    uint32_t i = 0;
    char text[128];
    int r = -1;
    CK_RV rv;
    bool last;

    memset(&h, 0, sizeof(h));
    memset(res, 0, sizeof(*res));
    progress_start(&res->pg, in);
    if (dek_generate(c, tg, &dek, err) < 0 ||
        dek_wrap(c, tg, dek, &wrapped, &wlen, err) < 0)
        goto out;
    if (getrandom(prefix, sizeof(prefix), 0) != (ssize_t)sizeof(prefix)) {
        efmt(err, "getrandom: %s", strerror(errno));
        goto out;
    }
    seal_fixed_init(&h, prefix);
    if (seal_header_set(&h, tg->ts->t->label, tg->key->name, tg->v->version,
                        tg->v->id, tg->v->id_len, wrapped, wlen) < 0 ||
        (hdr = seal_header_encode(&h, &hlen)) == NULL) {
        efmt(err, "the header does not encode (a name longer than 65535 "
                  "bytes, or out of memory)");
        goto out;
    }
    cur = malloc(SEAL_SEGMENT);
    next = malloc(SEAL_SEGMENT);
    ct = malloc(SEG_CT);
    if (cur == NULL || next == NULL || ct == NULL) {
        efmt(err, "out of memory");
        goto out;
    }
    if (fwrite(hdr, 1, hlen, out) != hlen)
        goto write_error;
    cur_len = fread_full(in, cur, SEAL_SEGMENT);
    for (;;) {
        if (cur_len < 0)
            goto read_error;
        last = (size_t)cur_len < SEAL_SEGMENT;
        if (!last) {
            /* One segment ahead: the last flag needs to know. */
            next_len = fread_full(in, next, SEAL_SEGMENT);
            if (next_len < 0)
                goto read_error;
            last = next_len == 0;
        }
        rv = seg_crypt(c, s, dek, &h, i, last, true, cur, (size_t)cur_len, ct,
                       &n);
        if (rv != CKR_OK) {
            efmt(err, "C_Encrypt (AES-GCM, segment %lu) on token %s: %s",
                 (unsigned long)i, tg->ts->t->label,
                 tool_rv_text(tg->ts->t, rv, tmod_device_error(c->m, s), text,
                              sizeof(text)));
            goto out;
        }
        if (n != (CK_ULONG)cur_len + SEAL_TAG_LEN) {
            efmt(err, "C_Encrypt returned %lu bytes for %zd", n, cur_len);
            goto out;
        }
        if (fwrite(ct, 1, n, out) != n)
            goto write_error;
        res->bytes += (unsigned long long)cur_len;
        res->segments++;
        progress_add(&res->pg, (unsigned long long)cur_len);
        if (last)
            break;
        if (i == UINT32_MAX) {
            efmt(err, "the input is too large for the format (2^32 "
                      "segments)");
            goto out;
        }
        i++;
        tmp = cur;
        cur = next;
        next = tmp;
        cur_len = next_len;
    }
    if (fflush(out) != 0)
        goto write_error;
    r = 0;
    goto out;
read_error:
    efmt(err, "reading the input: %s", strerror(errno));
    goto out;
write_error:
    efmt(err, "writing the sealed data: %s", strerror(errno));
out:
    dek_destroy(c, tg->ts, &dek);
    if (cur != NULL)
        secure_free(cur, SEAL_SEGMENT);
    if (next != NULL)
        secure_free(next, SEAL_SEGMENT);
    free(ct);
    free(hdr);
    free(wrapped);
    seal_header_clear(&h);
    return r;
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

int cmd_seal(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    const char *inpath = argc > 1 ? argv[1] : NULL;
    const char *outpath = o->output;
    FILE *in = NULL, *out = NULL;
    struct outfile of;
    struct seal_result res;
    struct target tg;
    char err[ERRLEN];
    struct sctx c;
    struct jw w;
    int status = TOOL_FAILED, r;

    steady_heap();
    memset(&c, 0, sizeof(c));
    if (o->json && path_is_stdout(outpath)) {
        tool_error("seal --json prints a summary on standard output: give "
                   "-o FILE for the sealed data");
        return TOOL_USAGE;
    }
    if (path_is_stdout(outpath) && isatty(STDOUT_FILENO)) {
        tool_error("the sealed data is binary: give -o FILE, or redirect "
                   "standard output");
        return TOOL_USAGE;
    }
    tmp_signals_install();
    if (path_is_stdio(inpath)) {
        in = stdin;
    } else if ((in = fopen(inpath, "rb")) == NULL) {
        tool_error("%s: %s", inpath, strerror(errno));
        return TOOL_FAILED;
    }
    if (sctx_init(&c, m, o, err) < 0 ||
        target_resolve(&c, o->key, o->token, "--key", &tg, err) < 0)
        goto fail;
    if (path_is_stdio(outpath)) {
        out = stdout;
    } else if (outfile_open(&of, outpath, false, err) < 0) {
        goto fail;
    } else {
        out = of.f;
    }
    r = seal_stream(&c, &tg, in, out, &res, err);
    if (r == 0)
        progress_finish(&res.pg);
    progress_clear(&res.pg);
    if (r < 0) {
        if (out != stdout)
            outfile_discard(&of);
        goto fail;
    }
    if (out != stdout && outfile_commit(&of, outpath, err) < 0)
        goto fail;
    if (o->json) {
        jw_init(&w, stdout);
        jw_begin_object(&w);
        jw_kv_string(&w, "input", path_is_stdio(inpath) ? "-" : inpath);
        jw_kv_string(&w, "output", outpath);
        json_key_fields(&w, tg.ts->t->label, tg.key->name, tg.v->version,
                        tg.v->id, tg.v->id_len);
        jw_kv_int(&w, "bytes", (long long)res.bytes);
        jw_kv_int(&w, "segments", (long long)res.segments);
        jw_end_object(&w);
        jw_finish(&w);
    } else if (!path_is_stdout(outpath)) {
        printf("sealed %llu bytes from %s into %s under key %s version %s%s "
               "on token %s\n",
               res.bytes, path_in_name(inpath), outpath, tg.key->name,
               tg.v->version, tg.v->current ? "" : " (not the current version)",
               tg.ts->t->label);
    }
    status = TOOL_OK;
    goto out;
fail:
    tool_error("seal: %s", err);
out:
    if (in != NULL && in != stdin)
        fclose(in);
    sctx_free(&c);
    return status;
}

/* ---- unseal ---------------------------------------------------------------
 */

struct unseal_result {
    unsigned long long bytes;
    unsigned long segments;
    bool fallback;
    const char *token;
    struct progress pg;
};

/* Reads segments from in (after the header), writes verified plaintext to
 * out. */
static int unseal_segments(struct sctx *c, struct tstate *s,
                           CK_OBJECT_HANDLE dek, const struct seal_header *h,
                           FILE *in, FILE *out, struct unseal_result *res,
                           char *err)
{
    unsigned char *cur = malloc(SEG_CT), *next = malloc(SEG_CT);
    unsigned char *pt = secure_alloc(SEG_CT), *tmp;
    ssize_t cur_len, next_len = 0;
    CK_SESSION_HANDLE sess = s->t->sess;
    uint32_t i = 0;
    char text[128];
    int r = -1;
    CK_ULONG n;
    CK_RV rv;
    bool last;

    if (cur == NULL || next == NULL || pt == NULL) {
        efmt(err, "out of memory");
        goto out;
    }
    cur_len = fread_full(in, cur, SEG_CT);
    for (;;) {
        if (cur_len < 0)
            goto read_error;
        last = (size_t)cur_len < SEG_CT;
        if (!last) {
            next_len = fread_full(in, next, SEG_CT);
            if (next_len < 0)
                goto read_error;
            last = next_len == 0;
        }
        if (cur_len == 0) {
            efmt(err, "the file is truncated: it ends after the header, "
                      "without a segment");
            goto out;
        }
        if (cur_len < SEAL_TAG_LEN) {
            efmt(err,
                 "the file is truncated inside segment %lu (%zd bytes, "
                 "shorter than a tag)",
                 (unsigned long)i, cur_len);
            goto out;
        }
        rv = seg_crypt(c, sess, dek, h, i, last, false, cur, (size_t)cur_len,
                       pt, &n);
        if (is_auth_failure(rv)) {
            seg_diagnose(c, sess, dek, h, i, last, cur, (size_t)cur_len, pt,
                         err);
            goto out;
        }
        if (rv != CKR_OK) {
            efmt(err, "C_Decrypt (AES-GCM, segment %lu) on token %s: %s",
                 (unsigned long)i, s->t->label,
                 tool_rv_text(s->t, rv, tmod_device_error(c->m, sess), text,
                              sizeof(text)));
            goto out;
        }
        if (n > 0 && fwrite(pt, 1, n, out) != n) {
            efmt(err, "writing the data: %s", strerror(errno));
            goto out;
        }
        res->bytes += n;
        res->segments++;
        progress_add(&res->pg, (unsigned long long)cur_len);
        if (last)
            break;
        if (i == UINT32_MAX) {
            efmt(err, "more segments than the format allows");
            goto out;
        }
        i++;
        tmp = cur;
        cur = next;
        next = tmp;
        cur_len = next_len;
    }
    if (fflush(out) != 0) {
        efmt(err, "writing the data: %s", strerror(errno));
        goto out;
    }
    r = 0;
    goto out;
read_error:
    efmt(err, "reading the sealed data: %s", strerror(errno));
out:
    free(cur);
    free(next);
    if (pt != NULL)
        secure_free(pt, SEG_CT);
    return r;
}

/* Reads the header of in; a message in err on failure. */

int cmd_unseal(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    const char *inpath = argc > 1 ? argv[1] : NULL;
    const char *outpath = o->output;
    struct unseal_result res;
    struct seal_header h;
    struct tstate *s = NULL;
    CK_OBJECT_HANDLE priv = 0, dek = 0;
    FILE *in = NULL, *out = NULL;
    struct outfile of;
    char err[ERRLEN];
    struct sctx c;
    struct jw w;
    int status = TOOL_FAILED, r;

    steady_heap();
    memset(&c, 0, sizeof(c));
    memset(&h, 0, sizeof(h));
    memset(&res, 0, sizeof(res));
    if (o->json && path_is_stdout(outpath)) {
        tool_error("unseal --json prints a summary on standard output: give "
                   "-o FILE for the data");
        return TOOL_USAGE;
    }
    tmp_signals_install();
    if (path_is_stdio(inpath)) {
        in = stdin;
    } else if ((in = fopen(inpath, "rb")) == NULL) {
        tool_error("%s: %s", inpath, strerror(errno));
        return TOOL_FAILED;
    }
    if (header_read(in, &h, err) < 0 || sctx_init(&c, m, o, err) < 0)
        goto fail;
    if (o->token != NULL) {
        s = ts_select(&c, o->token, err);
    } else if ((s = ts_by_label(&c, h.token)) == NULL) {
        efmt(err, "no token %s (the token that sealed the file): give --token",
             h.token);
    }
    if (s == NULL || source_priv(&c, s, &h, &priv, &res.fallback, err) < 0)
        goto fail;
    if (res.fallback && !o->json)
        tool_error("key %s has no version %s on token %s: unwrapping through "
                   "the key's label object (unwrap-fallback)",
                   h.key, h.version, s->t->label);
    if (dek_unwrap(&c, s, priv, &h, DEK_SEALED, &dek, err) < 0)
        goto fail;
    if (path_is_stdio(outpath))
        out = stdout;
    else if (outfile_open(&of, outpath, true, err) < 0)
        goto fail;
    else
        out = of.f;
    progress_start(&res.pg, in);
    r = unseal_segments(&c, s, dek, &h, in, out, &res, err);
    if (r == 0)
        progress_finish(&res.pg);
    progress_clear(&res.pg);
    if (r < 0) {
        if (out != stdout)
            outfile_discard(&of);
        goto fail;
    }
    if (out != stdout && outfile_commit(&of, outpath, err) < 0)
        goto fail;
    if (o->json) {
        jw_init(&w, stdout);
        jw_begin_object(&w);
        jw_kv_string(&w, "input", path_is_stdio(inpath) ? "-" : inpath);
        jw_kv_string(&w, "output", outpath);
        json_key_fields(&w, s->t->label, h.key, h.version, h.key_id,
                        h.key_id_len);
        jw_kv_bool(&w, "fallback", res.fallback);
        jw_kv_int(&w, "bytes", (long long)res.bytes);
        jw_kv_int(&w, "segments", (long long)res.segments);
        jw_end_object(&w);
        jw_finish(&w);
    } else if (!path_is_stdout(outpath)) {
        printf("unsealed %llu bytes from %s into %s (key %s version %s on "
               "token %s)\n",
               res.bytes, path_in_name(inpath), outpath, h.key, h.version,
               s->t->label);
    }
    status = TOOL_OK;
    goto out;
fail:
    tool_error("unseal: %s: %s", path_in_name(inpath), err);
out:
    if (dek != 0)
        m->f->C_DestroyObject(s->t->sess, dek);
    if (in != NULL && in != stdin)
        fclose(in);
    seal_header_clear(&h);
    sctx_free(&c);
    return status;
}

/* ---- rewrap ---------------------------------------------------------------
 */

enum outcome { RW_DONE, RW_SKIPPED, RW_FAILED };

struct rewrap_file {
    enum outcome result;
    char from_token[64], from_version[160], to_token[64], to_version[160];
    char key[256], to_key[256];
};

/* The DEK wrapped for tg, from the header h read on token src. */
static int rewrap_dek(struct sctx *c, struct tstate *src,
                      const struct seal_header *h, const struct target *tg,
                      FILE *f, off_t rest, unsigned char **wrapped,
                      CK_ULONG *wlen, char *err)
{
    CK_SESSION_HANDLE ts = tg->ts->t->sess;
    CK_OBJECT_HANDLE priv = 0, dek = 0, tdek = 0;
    unsigned char *seg = NULL, *pt = NULL;
    bool same = src == tg->ts, fallback;
    ssize_t got;
    CK_ULONG n;
    int r = -1;
    CK_RV rv;

    *wrapped = NULL;
    if (source_priv(c, src, h, &priv, &fallback, err) < 0 ||
        dek_unwrap(c, src, priv, h, same ? DEK_WRAPPABLE : DEK_READABLE, &dek,
                   err) < 0)
        goto out;
    if (same)
        tdek = dek;
    else if (dek_move(c, src, dek, tg->ts, &tdek, err) < 0)
        goto out;
    /* The first segment must authenticate before anything is written. */
    seg = malloc(SEG_CT);
    pt = secure_alloc(SEG_CT);
    if (seg == NULL || pt == NULL) {
        efmt(err, "out of memory");
        goto out;
    }
    got = fread_full(f, seg, SEG_CT);
    if (got < 0) {
        efmt(err, "reading the file: %s", strerror(errno));
        goto out;
    }
    if (got < SEAL_TAG_LEN) {
        efmt(err, "the file is truncated: no complete first segment");
        goto out;
    }
    rv = seg_crypt(c, ts, tdek, h, 0, rest <= (off_t)SEG_CT, false, seg,
                   (size_t)got, pt, &n);
    if (rv != CKR_OK) {
        if (is_auth_failure(rv))
            efmt(err, "segment 0 does not authenticate with the data key: "
                      "the file is altered");
        else
            efmt(err, "C_Decrypt on token %s: %s", tg->ts->t->label,
                 trv_name(rv));
        goto out;
    }
    if (dek_wrap(c, tg, tdek, wrapped, wlen, err) < 0)
        goto out;
    r = 0;
out:
    if (tdek != dek)
        dek_destroy(c, tg->ts, &tdek);
    dek_destroy(c, src, &dek);
    if (pt != NULL)
        secure_free(pt, SEG_CT);
    free(seg);
    return r;
}

static int rewrap_one(struct sctx *c, const struct target *to,
                      const struct sealed_file *it, struct progress *pg,
                      struct rewrap_file *rf, char *err)
{
    struct seal_header h, nh;
    struct target tg;
    struct tstate *src;
    struct stat st, st2;
    unsigned char *wrapped = NULL, *hdr = NULL, *buf = NULL;
    CK_ULONG wlen = 0;
    FILE *f = NULL, *out = NULL;
    size_t hlen, k;
    ssize_t got;
    int r = -1;

    memset(&h, 0, sizeof(h));
    memset(&nh, 0, sizeof(nh));
    rf->result = RW_FAILED;
    f = fopen(it->path, "rb");
    if (f == NULL || fstat(fileno(f), &st) < 0) {
        efmt(err, "%s", strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        efmt(err, "not a regular file");
        goto out;
    }
    if (header_read(f, &h, err) < 0)
        goto out;
    snprintf(rf->from_token, sizeof(rf->from_token), "%s", h.token);
    snprintf(rf->key, sizeof(rf->key), "%s", h.key);
    snprintf(rf->from_version, sizeof(rf->from_version), "%s", h.version);
    src = ts_by_label(c, h.token);
    if (src == NULL) {
        efmt(err, "no token %s (the token that sealed the file)", h.token);
        goto out;
    }
    if (to != NULL) {
        tg = *to;
    } else if (target_current(c, src, h.key, &tg, err) < 0) {
        goto out;
    }
    snprintf(rf->to_token, sizeof(rf->to_token), "%s", tg.ts->t->label);
    snprintf(rf->to_key, sizeof(rf->to_key), "%s", tg.key->name);
    snprintf(rf->to_version, sizeof(rf->to_version), "%s", tg.v->version);
    if (strcmp(h.token, tg.ts->t->label) == 0 &&
        strcmp(h.key, tg.key->name) == 0 && h.key_id_len == tg.v->id_len &&
        memcmp(h.key_id, tg.v->id, h.key_id_len) == 0) {
        rf->result = RW_SKIPPED;
        r = 0;
        goto out;
    }
    if (rewrap_dek(c, src, &h, &tg, f, st.st_size - (off_t)h.length, &wrapped,
                   &wlen, err) < 0)
        goto out;
    /* The new header: the same fixed part, the new key and wrapped DEK. */
    memcpy(nh.fixed, h.fixed, SEAL_FIXED_LEN);
    if (seal_header_set(&nh, tg.ts->t->label, tg.key->name, tg.v->version,
                        tg.v->id, tg.v->id_len, wrapped, wlen) < 0 ||
        (hdr = seal_header_encode(&nh, &hlen)) == NULL ||
        (buf = malloc(SEG_CT)) == NULL) {
        efmt(err, "out of memory");
        goto out;
    }
    if (fseeko(f, (off_t)h.length, SEEK_SET) < 0) {
        efmt(err, "%s", strerror(errno));
        goto out;
    }
    out = tmp_open(it->path, err);
    if (out == NULL)
        goto out;
    if (fwrite(hdr, 1, hlen, out) != hlen)
        goto write_error;
    for (;;) {
        got = fread_full(f, buf, SEG_CT);
        if (got < 0) {
            efmt(err, "reading: %s", strerror(errno));
            tmp_discard(out);
            goto out;
        }
        if (got == 0)
            break;
        k = (size_t)got;
        if (fwrite(buf, 1, k, out) != k)
            goto write_error;
        pg->done += k;
        progress_draw(pg, false);
    }
    /* Another process replaced or changed the file meanwhile: keep its
     * version. */
    if (stat(it->path, &st2) < 0 || st2.st_ino != st.st_ino ||
        st2.st_dev != st.st_dev || st2.st_size != st.st_size ||
        st2.st_mtim.tv_sec != st.st_mtim.tv_sec ||
        st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec) {
        efmt(err, "the file changed while it was rewrapped: left as it is");
        tmp_discard(out);
        goto out;
    }
    if (fchown(fileno(out), st.st_uid, st.st_gid) < 0) {
        /* Not the owner: the file becomes ours, as any rewrite would. */
    }
    if (tmp_commit(out, it->path, st.st_mode & 07777, err) < 0)
        goto out;
    rf->result = RW_DONE;
    r = 0;
    goto out;
write_error:
    efmt(err, "writing %s: %s", tmp_path_now(), strerror(errno));
    tmp_discard(out);
out:
    if (f != NULL)
        fclose(f);
    free(wrapped);
    free(hdr);
    free(buf);
    seal_header_clear(&h);
    seal_header_clear(&nh);
    return r;
}

static const char *const outcome_names[] = {"rewrapped", "skipped", "failed"};

int cmd_rewrap(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    struct sealed_files l;
    struct target to;
    struct progress pg;
    struct rewrap_file rf;
    struct sctx c;
    char err[ERRLEN];
    unsigned long counts[3] = {0, 0, 0};
    char under[600] = "";
    bool mixed = false;
    struct jw w;
    size_t i;

    memset(&l, 0, sizeof(l));
    memset(&c, 0, sizeof(c));
    memset(&pg, 0, sizeof(pg));
    tmp_signals_install();
    counts[RW_FAILED] = sealed_files_collect(&l, argc - 1, argv + 1, "rewrap");
    if (sctx_init(&c, m, o, err) < 0 ||
        (o->to != NULL &&
         target_resolve(&c, o->to, o->token, "--to", &to, err) < 0)) {
        tool_error("rewrap: %s", err);
        sealed_files_free(&l);
        sctx_free(&c);
        return TOOL_FAILED;
    }
    pg.on = isatty(STDERR_FILENO) && l.n > 0;
    pg.total = l.total;
    pg.nfiles = l.n;
    if (o->json) {
        jw_init(&w, stdout);
        jw_begin_object(&w);
        jw_key(&w, "files");
        jw_begin_array(&w);
    }
    for (i = 0; i < l.n; i++) {
        unsigned long long before = pg.done;
        memset(&rf, 0, sizeof(rf));
        err[0] = '\0';
        progress_draw(&pg, true);
        if (!l.v[i].named && !file_is_sealed(l.v[i].path)) {
            pg.done = before + (unsigned long long)l.v[i].size;
            pg.files++;
            continue; /* changed since the walk */
        }
        rewrap_one(&c, o->to ? &to : NULL, &l.v[i], &pg, &rf, err);
        pg.done = before + (unsigned long long)l.v[i].size;
        pg.files++;
        counts[rf.result]++;
        if (rf.result == RW_FAILED) {
            progress_clear(&pg);
            tool_error("rewrap: %s: %s", l.v[i].path, err);
        } else if (rf.to_key[0] != '\0') {
            char u[600];
            snprintf(u, sizeof(u), "%s@%s", rf.to_key, rf.to_version);
            if (under[0] == '\0')
                snprintf(under, sizeof(under), "%s", u);
            else if (strcmp(under, u) != 0)
                mixed = true;
        }
        if (o->json) {
            jw_begin_object(&w);
            jw_kv_string(&w, "path", l.v[i].path);
            jw_kv_string(&w, "result", outcome_names[rf.result]);
            jw_key(&w, "from");
            if (rf.from_token[0] != '\0') {
                jw_begin_object(&w);
                jw_kv_string(&w, "token", rf.from_token);
                jw_kv_string(&w, "key", rf.key);
                jw_kv_string(&w, "version", rf.from_version);
                jw_end_object(&w);
            } else {
                jw_null(&w);
            }
            jw_key(&w, "to");
            if (rf.to_token[0] != '\0' && rf.result != RW_FAILED) {
                jw_begin_object(&w);
                jw_kv_string(&w, "token", rf.to_token);
                jw_kv_string(&w, "key", rf.to_key);
                jw_kv_string(&w, "version", rf.to_version);
                jw_end_object(&w);
            } else {
                jw_null(&w);
            }
            jw_kv_string(&w, "error", rf.result == RW_FAILED ? err : NULL);
            jw_end_object(&w);
        }
    }
    progress_draw(&pg, true);
    progress_clear(&pg);
    if (o->to != NULL)
        snprintf(under, sizeof(under), "%s@%s", to.key->name, to.v->version);
    if (o->json) {
        jw_end_array(&w);
        jw_kv_int(&w, "rewrapped", (long long)counts[RW_DONE]);
        jw_kv_int(&w, "skipped", (long long)counts[RW_SKIPPED]);
        jw_kv_int(&w, "failed", (long long)counts[RW_FAILED]);
        jw_end_object(&w);
        jw_finish(&w);
    } else {
        printf("rewrapped %lu file%s, skipped %lu already under %s, failed "
               "%lu\n",
               counts[RW_DONE], counts[RW_DONE] == 1 ? "" : "s",
               counts[RW_SKIPPED],
               mixed || under[0] == '\0' ? "their key's current version"
                                         : under,
               counts[RW_FAILED]);
    }
    sealed_files_free(&l);
    sctx_free(&c);
    return counts[RW_FAILED] > 0 ? TOOL_FAILED : TOOL_OK;
}
