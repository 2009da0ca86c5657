/*
 * cmkp11-tool seal, unseal and rewrap: the segments after the header, read
 * one at a time by the one loop here. Each segment is AES-256-GCM through
 * the module with the data key, the header's fixed part as AAD and the
 * nonce prefix || u32 index || u8 last (docs/seal-format.md); a segment
 * knows whether it is the last because the next one is read ahead.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "seal-int.h"
#include "secure.h"
#include "tool.h"

/* ---- the progress bar -----------------------------------------------------
 */

void progress_draw(struct progress *p, bool force)
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

void progress_clear(struct progress *p)
{
    if (p->on)
        fputs("\r\033[K", stderr);
}

/* seal and unseal: a bar on stderr when it is a terminal and the input
 * is large (or of unknown size), as rewrap shows; nothing otherwise. */
#define PROGRESS_MIN (1024UL * 1024)

void progress_start(struct progress *p, FILE *in)
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

void progress_finish(struct progress *p)
{
    if (p->total > p->done)
        p->done = p->total;
    progress_draw(p, true);
}

void progress_add(struct progress *p, unsigned long long n)
{
    p->done += n;
    if (p->total != 0 && p->done > p->total)
        p->total = p->done;
    progress_draw(p, false);
}

/* ---- reading segments -----------------------------------------------------
 */

/* Reads segments of size bytes, one ahead. */
struct seg_reader {
    FILE *f;
    size_t size;
    bool wipe; /* the buffers hold data, wiped when freed */
    unsigned char *cur, *next;
    size_t len, next_len; /* bytes in cur and next */
    uint32_t i;           /* cur's index */
    bool last;            /* cur is the last segment */
    bool started;
};

static int reader_init(struct seg_reader *r, FILE *f, size_t size, bool wipe)
{
    memset(r, 0, sizeof(*r));
    r->f = f;
    r->size = size;
    r->wipe = wipe;
    r->cur = malloc(size);
    r->next = malloc(size);
    return r->cur != NULL && r->next != NULL ? 0 : -1;
}

static void reader_free(struct seg_reader *r)
{
    if (r->wipe) {
        secure_free(r->cur);
        secure_free(r->next);
    } else {
        free(r->cur);
        free(r->next);
    }
    memset(r, 0, sizeof(*r));
}

/* The next segment into r->cur: 1, or 0 after the last one, -1 on a read
 * error (errno), -2 past the format's 2^32 segments. The first segment of
 * an empty stream is empty, and the last. */
static int reader_next(struct seg_reader *r)
{
    unsigned char *tmp;
    ssize_t got;

    if (!r->started) {
        r->started = true;
        got = fread_full(r->f, r->cur, r->size);
        if (got < 0)
            return -1;
        r->len = (size_t)got;
    } else if (r->last) {
        return 0;
    } else if (r->i == UINT32_MAX) {
        return -2;
    } else {
        r->i++;
        tmp = r->cur;
        r->cur = r->next;
        r->next = tmp;
        r->len = r->next_len;
    }
    r->last = r->len < r->size;
    if (!r->last) {
        got = fread_full(r->f, r->next, r->size);
        if (got < 0)
            return -1;
        r->next_len = (size_t)got;
        r->last = got == 0;
    }
    return 1;
}

/* ---- one segment ----------------------------------------------------------
 */

/* Encrypts or decrypts segment i through the module; out holds SEG_CT. */
static CK_RV seg_crypt(const struct seg_key *k, CK_SESSION_HANDLE s, uint32_t i,
                       bool last, bool encrypt, const unsigned char *in,
                       size_t inlen, unsigned char *out, CK_ULONG *outlen)
{
    CK_FUNCTION_LIST *f = k->c->m->f;
    unsigned char nonce[SEAL_NONCE_LEN], aad[SEAL_FIXED_LEN];
    CK_GCM_PARAMS gp;
    CK_MECHANISM mech = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_RV rv;

    seal_nonce(k->h, i, last, nonce);
    memset(&gp, 0, sizeof(gp));
    gp.pIv = nonce;
    gp.ulIvLen = sizeof(nonce);
    gp.ulIvBits = sizeof(nonce) * 8;
    seal_aad(k->h, aad);
    gp.pAAD = aad;
    gp.ulAADLen = SEAL_FIXED_LEN;
    gp.ulTagBits = SEAL_TAG_LEN * 8;
    *outlen = SEG_CT;
    if (encrypt) {
        rv = f->C_EncryptInit(s, &mech, k->dek);
        if (rv == CKR_OK)
            rv = f->C_Encrypt(s, (CK_BYTE *)in, inlen, out, outlen);
    } else {
        rv = f->C_DecryptInit(s, &mech, k->dek);
        if (rv == CKR_OK)
            rv = f->C_Decrypt(s, (CK_BYTE *)in, inlen, out, outlen);
    }
    return rv;
}

static bool is_auth_failure(CK_RV rv)
{
    return rv == CKR_ENCRYPTED_DATA_INVALID ||
           rv == CKR_ENCRYPTED_DATA_LEN_RANGE;
}

/* Whether segment i's bytes authenticate as segment j, last or not. */
static bool seg_is(const struct seg_key *k, CK_SESSION_HANDLE sess, uint32_t j,
                   bool last, const unsigned char *in, size_t len,
                   unsigned char *scratch)
{
    CK_ULONG n;

    return seg_crypt(k, sess, j, last, false, in, len, scratch, &n) == CKR_OK;
}

/* Why segment i (len bytes, last when the file ends after it) does not
 * authenticate: tries the other flag and nearby indices. */
static void seg_diagnose(const struct seg_key *k, CK_SESSION_HANDLE sess,
                         uint32_t i, bool last, const unsigned char *in,
                         size_t len, unsigned char *scratch, char *err)
{
    uint32_t j, lo = i > 16 ? i - 16 : 0;

    if (seg_is(k, sess, i, !last, in, len, scratch)) {
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
        if (j != i && (seg_is(k, sess, j, false, in, len, scratch) ||
                       seg_is(k, sess, j, true, in, len, scratch))) {
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

/* A call on segment g failed with rv (not an authentication failure). */
static void seg_error(const struct seg_key *k, CK_SESSION_HANDLE sess,
                      const struct seg *g, const char *call, CK_RV rv,
                      char *err)
{
    char text[128];

    efmt(err, "%s (AES-GCM, segment %lu) on token %s: %s", call,
         (unsigned long)g->i, k->ts->t->label,
         tool_rv_text(k->ts->t, rv, tmod_device_error(k->c->m, sess), text,
                      sizeof(text)));
}

static int seg_encrypt(const struct seg_key *k, CK_SESSION_HANDLE sess,
                       const struct seg *g, unsigned char *ct, CK_ULONG *n,
                       char *err)
{
    CK_RV rv = seg_crypt(k, sess, g->i, g->last, true, g->in, g->len, ct, n);

    if (rv != CKR_OK) {
        seg_error(k, sess, g, "C_Encrypt", rv, err);
        return -1;
    }
    if (*n != (CK_ULONG)g->len + SEAL_TAG_LEN) {
        efmt(err, "C_Encrypt returned %lu bytes for %zu", *n, g->len);
        return -1;
    }
    return 0;
}

static int seg_decrypt(const struct seg_key *k, CK_SESSION_HANDLE sess,
                       const struct seg *g, unsigned char *pt, CK_ULONG *n,
                       char *err)
{
    CK_RV rv;

    if (g->len == 0) {
        efmt(err, "the file is truncated: it ends after the header, "
                  "without a segment");
        return -1;
    }
    if (g->len < SEAL_TAG_LEN) {
        efmt(err,
             "the file is truncated inside segment %lu (%zu bytes, "
             "shorter than a tag)",
             (unsigned long)g->i, g->len);
        return -1;
    }
    rv = seg_crypt(k, sess, g->i, g->last, false, g->in, g->len, pt, n);
    if (is_auth_failure(rv)) {
        seg_diagnose(k, sess, g->i, g->last, g->in, g->len, pt, err);
        return -1;
    }
    if (rv != CKR_OK) {
        seg_error(k, sess, g, "C_Decrypt", rv, err);
        return -1;
    }
    return 0;
}

int seg_crypt_one(const struct seg_key *k, CK_SESSION_HANDLE sess,
                  enum seg_op op, const struct seg *g, unsigned char *out,
                  CK_ULONG *n, char *err)
{
    *n = g->len;
    if (op == SEG_ENCRYPT)
        return seg_encrypt(k, sess, g, out, n, err);
    if (op == SEG_DECRYPT)
        return seg_decrypt(k, sess, g, out, n, err);
    return 0;
}

/* The segment in r through s->op, written to s->out; buf holds SEG_CT. */
static int seg_one(struct seg_stream *s, const struct seg_reader *r,
                   unsigned char *buf, char *err)
{
    const unsigned char *data = s->op == SEG_COPY ? r->cur : buf;
    struct seg g = {r->cur, r->len, r->i, r->last};
    CK_SESSION_HANDLE sess = s->op == SEG_COPY ? 0 : s->key.ts->t->sess;
    CK_ULONG n;

    if (seg_crypt_one(&s->key, sess, s->op, &g, buf, &n, err) < 0)
        return -1;
    if (s->out != NULL && n > 0 && fwrite(data, 1, n, s->out) != n) {
        efmt(err, "writing %s: %s", s->out_what, strerror(errno));
        return -1;
    }
    s->bytes += s->op == SEG_DECRYPT ? n : r->len;
    s->segments++;
    if (s->pg != NULL)
        progress_add(s->pg, r->len);
    return 0;
}

/* ---- the loop -------------------------------------------------------------
 */

int seg_run(struct seg_stream *s, char *err)
{
    struct seg_reader r;
    bool data_in = s->op == SEG_ENCRYPT;
    unsigned char *buf = NULL;
    int got = 0, ret = -1;

    if (s->threads > 1 && s->op != SEG_COPY && s->max == 0)
        return seg_run_parallel(s, err);
    s->bytes = 0;
    s->segments = 0;
    if (s->op == SEG_ENCRYPT)
        buf = malloc(SEG_CT);
    else if (s->op == SEG_DECRYPT)
        buf = secure_alloc(SEG_CT);
    if (reader_init(&r, s->in, data_in ? SEAL_SEGMENT : SEG_CT, data_in) < 0 ||
        (buf == NULL && s->op != SEG_COPY)) {
        efmt(err, "out of memory");
        goto out;
    }
    while ((s->max == 0 || s->segments < s->max) && (got = reader_next(&r)) > 0)
        if (seg_one(s, &r, buf, err) < 0)
            goto out;
    if (got == -1)
        efmt(err, "reading %s: %s", s->in_what, strerror(errno));
    else if (got == -2)
        efmt(err, "%s",
             data_in ? "the input is too large for the format (2^32 segments)"
                     : "more segments than the format allows");
    else if (s->out != NULL && fflush(s->out) != 0)
        efmt(err, "writing %s: %s", s->out_what, strerror(errno));
    else
        ret = 0;
out:
    reader_free(&r);
    if (s->op == SEG_DECRYPT)
        secure_free(buf);
    else
        free(buf);
    return ret;
}
