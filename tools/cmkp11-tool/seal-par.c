/*
 * cmkp11-tool seal and unseal: the segments in parallel, for a token that
 * does AES-GCM itself (an hsm token's lower module). Each worker, with its
 * own session, takes the next segment by reading it into a slot of a ring
 * (one worker reads at a time, in order), encrypts or decrypts it there,
 * and marks it done; whichever worker finds the next segment to write
 * done writes it and every done segment after it. No thread waits for
 * another's segment unless the ring is full, memory stays constant, and
 * the output is the one loop's byte for byte.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "seal-int.h"
#include "secure.h"
#include "tool.h"

/* Slots a worker: one being worked on, one waiting to be written. */
#define PAR_SLOTS_PER_WORKER 2

/* A segment in the ring: slot q % nslots holds segment q. */
struct pslot {
    unsigned char *in, *out; /* SEG_CT each, wiped when freed */
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
    /* Reading, one worker at a time: the next segment's index, and whether
     * the input has ended (after the last segment, or a failed read). */
    pthread_mutex_t rd;
    uint64_t next;
    bool ended;
    /* The rest: segments q < written are written; writing, a worker is
     * writing; stop, the first segment that failed (UINT64_MAX: none; read
     * atomically without mu) and err why. space: a slot was freed, or
     * stop set. */
    pthread_mutex_t mu;
    pthread_cond_t space;
    uint64_t written;
    bool writing;
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

/* Reads the next segment into its slot. Returns its index, or -1 when
 * there is none to take. A read that fails makes the segment fail. As the
 * one loop: a segment is the last when it is short or nothing follows it;
 * the first segment of an empty stream is empty, and the last. */
static int64_t take(struct par *p)
{
    struct seg_stream *s = p->s;
    size_t size = s->op == SEG_ENCRYPT ? SEAL_SEGMENT : SEG_CT;
    struct pslot *sl;
    ssize_t got;
    int c, saved;
    uint64_t q;

    pthread_mutex_lock(&p->rd);
    q = p->next;
    /* Slot q is free once segment q - nslots is written. */
    pthread_mutex_lock(&p->mu);
    while (!p->ended && !stopped(p) && q >= p->written + p->nslots)
        pthread_cond_wait(&p->space, &p->mu);
    pthread_mutex_unlock(&p->mu);
    if (p->ended || stopped(p)) {
        pthread_mutex_unlock(&p->rd);
        return -1;
    }
    p->next++;
    sl = slot_of(p, q);
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
    if (sl->last || sl->failed)
        p->ended = true;
    pthread_mutex_unlock(&p->rd);
    return (int64_t)q;
}

/* Writes segment sl (this thread is the only writer). Returns false with
 * sl->err set when it cannot. */
static bool write_slot(struct par *p, struct pslot *sl)
{
    struct seg_stream *s = p->s;

    if (s->out != NULL && sl->n > 0 &&
        fwrite(sl->out, 1, sl->n, s->out) != sl->n) {
        efmt(sl->err, "writing %s: %s", s->out_what, strerror(errno));
        return false;
    }
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
    while (!stopped(p) && (sl = slot_of(p, p->written))->done) {
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

    while ((q = take(p)) >= 0) {
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
        p->slots[i].in = secure_alloc(SEG_CT);
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

int seg_run_parallel(struct seg_stream *s, char *err)
{
    struct pworker *w = calloc(s->threads, sizeof(*w));
    struct par p;
    size_t n = 0;
    int r = -1;

    memset(&p, 0, sizeof(p));
    p.s = s;
    p.stop = UINT64_MAX;
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
    n = sessions_open(s, w, s->threads);
    if (workers_start(&p, w, n) == 0) {
        /* No thread: the one loop, on the tool's session. */
        workers_end(&p, w, n);
        s->threads = 1;
        r = seg_run(s, err);
        goto out;
    }
    workers_end(&p, w, n);
    if (p.stop != UINT64_MAX)
        memcpy(err, p.err, ERRLEN);
    else if (s->out != NULL && fflush(s->out) != 0)
        efmt(err, "writing %s: %s", s->out_what, strerror(errno));
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
