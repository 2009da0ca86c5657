/*
 * cmkp11-tool seal and unseal: the segments in parallel, for a token that
 * does AES-GCM itself (an hsm token's lower module). Each worker, with its
 * own session, takes the next segment by reading it into a slot of a ring,
 * encrypts or decrypts it there, and marks it done; whichever worker finds
 * the next segment to write done writes it and every done segment after
 * it. No thread waits for another's segment unless the ring is full,
 * memory stays constant, and the output is the one loop's byte for byte.
 *
 * An input that is a regular file (not empty, as /proc's files say they
 * are) is read where each segment lies, with pread(2), by all workers at
 * once: one call a segment, which reads one byte more to know whether
 * another follows. Any other input (a pipe, a terminal) is read in order,
 * one worker at a time. The output is written with write(2), one call a
 * segment, in order.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "seal-int.h"
#include "secure.h"
#include "tool.h"

/* Slots a worker: one being worked on, one waiting to be written. */
#define PAR_SLOTS_PER_WORKER 2

/* A slot's input buffer: a sealed segment, and the byte after it that a
 * positional read takes to know whether the input goes on. */
#define PAR_IN_LEN (SEG_CT + 1)

/* A segment in the ring: slot q % nslots holds segment q. */
struct pslot {
    unsigned char *in, *out; /* PAR_IN_LEN, SEG_CT; wiped when freed */
    size_t len;              /* bytes read */
    bool last;
    bool done;   /* worked on (or failed); not yet written */
    bool failed; /* ... and err says why */
    CK_ULONG n;  /* bytes in out */
    char err[ERRLEN];
};

struct par {
    struct seg_stream *s;
    struct pslot *slots;
    size_t nslots;
    /* positional: the input is a regular file, read with pread from base;
     * otherwise in order, one worker at a time under rd. */
    bool positional;
    off_t base;
    int in_fd, out_fd; /* out_fd -1: no output */
    pthread_mutex_t rd;
    /* Under mu: the next segment's index; whether the input has ended
     * (after the last segment, or a failed read); final, the first
     * segment known to be the last (UINT64_MAX: none yet), after which
     * nothing is written (a positional read past it, when the file grew
     * meanwhile, is dropped). Segments q < written are written; writing,
     * a worker is writing; consumed, the input bytes of those; stop, the
     * first segment that failed (UINT64_MAX: none; read atomically
     * without mu) and err why. space: a slot was freed, the input ended,
     * or stop set. */
    pthread_mutex_t mu;
    pthread_cond_t space;
    uint64_t next;
    bool ended;
    uint64_t final;
    uint64_t written;
    bool writing;
    unsigned long long consumed;
    uint64_t stop;
    char err[ERRLEN];
};

struct pworker {
    struct par *p;
    CK_SESSION_HANDLE sess;
    bool own; /* opened here, closed at the end */
    pthread_t th;
    bool started;
};

static struct pslot *slot_of(struct par *p, uint64_t q)
{
    return &p->slots[q % p->nslots];
}

static bool stopped(struct par *p)
{
    return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE) != UINT64_MAX;
}

/* The checks every segment read gets: a failed read, and the format's
 * limit on the number of segments. */
static void read_checks(struct par *p, struct pslot *sl, uint64_t q,
                        ssize_t got, int saved)
{
    struct seg_stream *s = p->s;

    if (got < 0) {
        efmt(sl->err, "reading %s: %s", s->in_what, strerror(saved));
        sl->failed = true;
    } else if (q > UINT32_MAX) {
        efmt(sl->err, "%s",
             s->op == SEG_ENCRYPT
                 ? "the input is too large for the format (2^32 segments)"
                 : "more segments than the format allows");
        sl->failed = true;
    }
    sl->len = got < 0 ? 0 : (size_t)got;
}

/* The next segment's index, once its slot is free (segment q - nslots
 * written); -1 when there is none to take. Called with mu held. */
static int64_t next_index(struct par *p)
{
    while (!p->ended && !stopped(p) && p->next >= p->written + p->nslots)
        pthread_cond_wait(&p->space, &p->mu);
    if (p->ended || stopped(p))
        return -1;
    return (int64_t)p->next++;
}

/* Reads the next segment into its slot, in order, one worker at a time.
 * Returns its index, or -1 when there is none to take. A read that fails
 * makes the segment fail. As the one loop: a segment is the last when it
 * is short or nothing follows it; the first segment of an empty stream is
 * empty, and the last. */
static int64_t take_in_order(struct par *p)
{
    struct seg_stream *s = p->s;
    size_t size = s->op == SEG_ENCRYPT ? SEAL_SEGMENT : SEG_CT;
    struct pslot *sl;
    ssize_t got;
    int c, saved;
    int64_t q;

    pthread_mutex_lock(&p->rd);
    pthread_mutex_lock(&p->mu);
    q = next_index(p);
    pthread_mutex_unlock(&p->mu);
    if (q < 0) {
        pthread_mutex_unlock(&p->rd);
        return -1;
    }
    sl = slot_of(p, (uint64_t)q);
    sl->failed = false;
    sl->last = false;
    got = fread_full(s->in, sl->in, size);
    saved = errno;
    if (got >= 0 && (size_t)got == size) {
        /* Whether anything follows: a byte read and put back. */
        c = getc(s->in);
        saved = errno;
        if (c != EOF)
            ungetc(c, s->in);
        else if (ferror(s->in))
            got = -1;
        else
            sl->last = true;
    } else if (got >= 0) {
        sl->last = true;
    }
    read_checks(p, sl, (uint64_t)q, got, saved);
    if (sl->last || sl->failed) {
        pthread_mutex_lock(&p->mu);
        p->ended = true;
        pthread_cond_broadcast(&p->space);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->rd);
    return q;
}

/* pread of up to n bytes at off, to the end of the file: the bytes read,
 * or -1 with errno set. */
static ssize_t pread_full(int fd, unsigned char *buf, size_t n, off_t off)
{
    size_t have = 0;
    ssize_t got;

    while (have < n) {
        got = pread(fd, buf + have, n - have, off + (off_t)have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            break;
        have += (size_t)got;
    }
    return (ssize_t)have;
}

/* Reads the next segment where it lies in the file, with the byte after
 * it: the segment is the last when that byte is not there. Workers read
 * at once; the first segment found to be the last ends the input. */
static int64_t take_positional(struct par *p)
{
    struct seg_stream *s = p->s;
    size_t size = s->op == SEG_ENCRYPT ? SEAL_SEGMENT : SEG_CT;
    struct pslot *sl;
    ssize_t got;
    int64_t q;
    int saved;

    pthread_mutex_lock(&p->mu);
    q = next_index(p);
    pthread_mutex_unlock(&p->mu);
    if (q < 0)
        return -1;
    sl = slot_of(p, (uint64_t)q);
    sl->failed = false;
    got = pread_full(p->in_fd, sl->in, size + 1,
                     p->base + (off_t)((uint64_t)q * size));
    saved = errno;
    sl->last = got >= 0 && (size_t)got <= size;
    if (got > (ssize_t)size)
        got = (ssize_t)size;
    read_checks(p, sl, (uint64_t)q, got, saved);
    if (sl->last || sl->failed) {
        pthread_mutex_lock(&p->mu);
        p->ended = true;
        if ((uint64_t)q < p->final)
            p->final = (uint64_t)q;
        pthread_cond_broadcast(&p->space);
        pthread_mutex_unlock(&p->mu);
    }
    return q;
}

/* Writes segment sl (this thread is the only writer). Returns false with
 * sl->err set when it cannot. */
static bool write_slot(struct par *p, struct pslot *sl)
{
    struct seg_stream *s = p->s;
    size_t done = 0;
    ssize_t w;

    while (p->out_fd >= 0 && done < sl->n) {
        w = write(p->out_fd, sl->out + done, sl->n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            efmt(sl->err, "writing %s: %s", s->out_what,
                 w < 0 ? strerror(errno) : "nothing written");
            return false;
        }
        done += (size_t)w;
    }
    p->consumed += sl->len;
    s->bytes += s->op == SEG_DECRYPT ? sl->n : sl->len;
    s->segments++;
    if (s->pg != NULL)
        progress_add(s->pg, sl->len);
    return true;
}

/* Segment q is done: writes it and the done segments after it when no
 * other worker is writing (that one then writes them). The first segment
 * in order that failed, in its work or its writing, stops everything. */
static void finish(struct par *p, uint64_t q)
{
    struct pslot *sl;
    bool ok;

    pthread_mutex_lock(&p->mu);
    slot_of(p, q)->done = true;
    if (p->writing) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    p->writing = true;
    while (!stopped(p) && p->written <= p->final &&
           (sl = slot_of(p, p->written))->done) {
        ok = !sl->failed;
        if (ok) {
            pthread_mutex_unlock(&p->mu);
            ok = write_slot(p, sl);
            pthread_mutex_lock(&p->mu);
        }
        if (!ok) {
            memcpy(p->err, sl->err, ERRLEN);
            __atomic_store_n(&p->stop, p->written, __ATOMIC_RELEASE);
            pthread_cond_broadcast(&p->space);
            break;
        }
        sl->done = false;
        p->written++;
        pthread_cond_broadcast(&p->space);
    }
    p->writing = false;
    pthread_mutex_unlock(&p->mu);
}

static void *worker_main(void *arg)
{
    struct pworker *w = arg;
    struct par *p = w->p;
    struct pslot *sl;
    int64_t q;

    while ((q = p->positional ? take_positional(p) : take_in_order(p)) >= 0) {
        sl = slot_of(p, (uint64_t)q);
        sl->n = 0;
        if (!sl->failed) {
            struct seg g = {sl->in, sl->len, (uint32_t)q, sl->last};

            sl->failed = seg_crypt_one(&p->s->key, w->sess, p->s->op, &g,
                                       sl->out, &sl->n, sl->err) < 0;
        }
        finish(p, (uint64_t)q);
    }
    return NULL;
}

/* ---- set-up ---------------------------------------------------------------
 */

static int slots_alloc(struct par *p, size_t n)
{
    size_t i;

    p->slots = calloc(n, sizeof(*p->slots));
    if (p->slots == NULL)
        return -1;
    p->nslots = n;
    for (i = 0; i < n; i++) {
        p->slots[i].in = secure_alloc(PAR_IN_LEN);
        p->slots[i].out = secure_alloc(SEG_CT);
        if (p->slots[i].in == NULL || p->slots[i].out == NULL)
            return -1;
    }
    return 0;
}

static void slots_free(struct par *p)
{
    size_t i;

    for (i = 0; p->slots != NULL && i < p->nslots; i++) {
        secure_free(p->slots[i].in);
        secure_free(p->slots[i].out);
    }
    free(p->slots);
}

/* The workers' sessions: the tool's own for the first, new ones for the
 * others; fewer workers when the token opens no more. Returns their
 * number. */
static size_t sessions_open(struct seg_stream *s, struct pworker *w, size_t n)
{
    CK_FUNCTION_LIST *f = s->key.c->m->f;
    size_t i;

    w[0].sess = s->key.ts->t->sess;
    for (i = 1; i < n; i++) {
        if (f->C_OpenSession(s->key.ts->t->slot, CKF_SERIAL_SESSION, NULL, NULL,
                             &w[i].sess) != CKR_OK)
            break;
        w[i].own = true;
    }
    return i;
}

/* Starts the workers with every signal blocked: the handlers that remove
 * the temporary file run on this thread, as without workers. Returns how
 * many started. */
static size_t workers_start(struct par *p, struct pworker *w, size_t n)
{
    sigset_t all, old;
    size_t i;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (i = 0; i < n; i++) {
        w[i].p = p;
        if (pthread_create(&w[i].th, NULL, worker_main, &w[i]) != 0)
            break;
        w[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return i;
}

/* Waits for the workers and closes their sessions. */
static void workers_end(struct par *p, struct pworker *w, size_t n)
{
    CK_FUNCTION_LIST *f = p->s->key.c->m->f;
    size_t i;

    for (i = 0; i < n; i++) {
        if (w[i].started)
            pthread_join(w[i].th, NULL);
        w[i].started = false;
        if (w[i].own)
            f->C_CloseSession(w[i].sess);
        w[i].own = false;
    }
}

/* The descriptors the workers read and write: what the streams hold is
 * flushed first (the header written), and the input is read where each
 * segment lies when it is a regular file whose position is known. */
static int io_open(struct par *p, char *err)
{
    struct seg_stream *s = p->s;
    struct stat st;

    p->out_fd = -1;
    if (s->out != NULL) {
        if (fflush(s->out) != 0) {
            efmt(err, "writing %s: %s", s->out_what, strerror(errno));
            return -1;
        }
        p->out_fd = fileno(s->out);
        if (p->out_fd < 0) {
            efmt(err, "writing %s: %s", s->out_what, strerror(EBADF));
            return -1;
        }
    }
    /* Not a file whose size says nothing (/proc), nor offsets of 32 bits
     * (2 GiB). */
    p->in_fd = fileno(s->in);
    if (sizeof(off_t) >= 8 && p->in_fd >= 0 && fstat(p->in_fd, &st) == 0 &&
        S_ISREG(st.st_mode) && st.st_size > 0 && (p->base = ftello(s->in)) >= 0)
        p->positional = true;
    return 0;
}

int seg_run_parallel(struct seg_stream *s, char *err)
{
    struct pworker *w = calloc(s->threads, sizeof(*w));
    struct par p;
    size_t n = 0;
    int r = -1;

    memset(&p, 0, sizeof(p));
    p.s = s;
    p.stop = UINT64_MAX;
    p.final = UINT64_MAX;
    s->bytes = 0;
    s->segments = 0;
    pthread_mutex_init(&p.rd, NULL);
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.space, NULL);
    if (w == NULL ||
        slots_alloc(&p, (size_t)s->threads * PAR_SLOTS_PER_WORKER) < 0) {
        efmt(err, "out of memory");
        goto out;
    }
    if (io_open(&p, err) < 0)
        goto out;
    n = sessions_open(s, w, s->threads);
    if (workers_start(&p, w, n) == 0) {
        /* No thread: the one loop, on the tool's session. */
        workers_end(&p, w, n);
        s->threads = 1;
        r = seg_run(s, err);
        goto out;
    }
    workers_end(&p, w, n);
    /* The input where the one loop leaves it: after the last segment. */
    if (p.positional)
        (void)fseeko(s->in, p.base + (off_t)p.consumed, SEEK_SET);
    if (p.stop != UINT64_MAX)
        memcpy(err, p.err, ERRLEN);
    else
        r = 0;
out:
    if (w != NULL)
        workers_end(&p, w, n);
    slots_free(&p);
    free(w);
    pthread_cond_destroy(&p.space);
    pthread_mutex_destroy(&p.mu);
    pthread_mutex_destroy(&p.rd);
    return r;
}
