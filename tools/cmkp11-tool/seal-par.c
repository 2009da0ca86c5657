/*
 * cmkp11-tool seal and unseal: the segments in parallel, for a token that
 * does AES-GCM itself (an hsm token's lower module, SoftHSM at a sixth of
 * OpenSSL's speed). Workers, each with its own session, take the segments
 * in order; this thread reads them (one ahead, for the last flag) into a
 * ring of four segments a worker and writes the results in order, so
 * memory stays constant and the output is the one loop's byte for byte.
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

/* Segments in flight a worker: this thread refills half of them at a time
 * while the workers go on with the other half. */
#define PAR_SLOTS_PER_WORKER 4

/* A segment in flight: slot q % nslots holds segment q. */
struct pslot {
    unsigned char *in, *out; /* SEG_CT each, wiped when freed */
    size_t len;
    bool last;
    bool done;   /* a worker finished it */
    bool failed; /* ... and err says why */
    CK_ULONG n;  /* bytes in out */
    char err[ERRLEN];
};

struct par {
    struct seg_stream *s;
    pthread_mutex_t mu;
    pthread_cond_t work; /* a segment to take, or the end */
    pthread_cond_t main; /* a segment done */
    struct pslot *slots;
    size_t nslots;
    /* Segments q < published may be taken; q < taken have been; q < written
     * are written. read: the next to read into (published or one more,
     * held back until the next read tells whether it is the last). */
    uint64_t published, taken, written, read;
    uint64_t stop;       /* the first segment that failed (or not to start) */
    bool ended;          /* nothing more to read */
    bool quit;           /* workers return */
    char rd_err[ERRLEN]; /* why reading stopped at segment stop */
    bool rd_failed;
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

/* Whether this thread has work: the first segment failed, or it is done
 * and the workers are down to half the ring (each wake-up writes and reads
 * several segments; a busy machine delays it). With the lock. */
static bool main_needed(struct par *p)
{
    uint64_t end = p->published < p->stop ? p->published : p->stop;

    if (p->written == p->stop)
        return true;
    if (p->written >= p->published || !slot_of(p, p->written)->done)
        return false;
    return p->ended || end <= p->taken || end - p->taken <= p->nslots / 2;
}

static void worker_one(struct pworker *w, uint64_t q)
{
    struct par *p = w->p;
    struct pslot *sl = slot_of(p, q);
    struct seg g = {sl->in, sl->len, (uint32_t)q, sl->last};
    int r;

    r = seg_crypt_one(&p->s->key, w->sess, p->s->op, &g, sl->out, &sl->n,
                      sl->err);
    pthread_mutex_lock(&p->mu);
    sl->done = true;
    sl->failed = r < 0;
    if (r < 0 && q < p->stop)
        p->stop = q; /* the others take nothing after it */
    if (main_needed(p))
        pthread_cond_signal(&p->main);
    pthread_mutex_unlock(&p->mu);
}

static void *worker_main(void *arg)
{
    struct pworker *w = arg;
    struct par *p = w->p;
    uint64_t q;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->taken < p->published && p->taken < p->stop) {
            q = p->taken++;
            pthread_mutex_unlock(&p->mu);
            worker_one(w, q);
            pthread_mutex_lock(&p->mu);
        } else if (p->quit) {
            break;
        } else {
            pthread_cond_wait(&p->work, &p->mu);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- reading: called without the lock, on slot p->read ------------------
 */

/* Makes segment q available to the workers (with the lock). */
static void publish(struct par *p, bool last)
{
    slot_of(p, p->published)->last = last;
    p->published++;
    pthread_cond_signal(&p->work);
}

/* Reading stopped before segment p->published (with the lock). */
static void read_failed(struct par *p)
{
    p->rd_failed = true;
    p->ended = true;
    if (p->published < p->stop)
        p->stop = p->published;
}

/* Reads the next segment; updates the counters with the lock. As the one
 * loop: a segment is done once the next one is read (or the input ends),
 * and not at all when that read fails. */
static void read_one(struct par *p)
{
    size_t size = p->s->op == SEG_ENCRYPT ? SEAL_SEGMENT : SEG_CT;
    struct pslot *sl = slot_of(p, p->read);
    bool held = p->read > p->published; /* the one before waits for this */
    ssize_t got = fread_full(p->s->in, sl->in, size);
    int saved = errno;

    pthread_mutex_lock(&p->mu);
    if (got < 0) {
        efmt(p->rd_err, "reading %s: %s", p->s->in_what, strerror(saved));
        read_failed(p);
    } else if (got == 0 && held) {
        publish(p, true);
        p->ended = true;
    } else {
        /* The first segment of an empty stream is empty, and the last. */
        if (held)
            publish(p, false);
        if (p->read > UINT32_MAX) {
            efmt(p->rd_err, "%s",
                 p->s->op == SEG_ENCRYPT
                     ? "the input is too large for the format (2^32 segments)"
                     : "more segments than the format allows");
            read_failed(p);
        } else {
            sl->len = (size_t)got;
            sl->done = sl->failed = false;
            p->read++;
            if ((size_t)got < size) {
                publish(p, true);
                p->ended = true;
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/* ---- writing: segment p->written, done -----------------------------------
 */

static int write_one(struct par *p, struct pslot *sl, char *err)
{
    struct seg_stream *s = p->s;

    if (s->out != NULL && sl->n > 0 &&
        fwrite(sl->out, 1, sl->n, s->out) != sl->n) {
        efmt(err, "writing %s: %s", s->out_what, strerror(errno));
        return -1;
    }
    s->bytes += s->op == SEG_DECRYPT ? sl->n : sl->len;
    s->segments++;
    if (s->pg != NULL)
        progress_add(s->pg, sl->len);
    return 0;
}

/* What this thread does next: 1 write, 2 read, 0 finished, -1 failed (err
 * set), 3 wait. With the lock. */
static int next_step(struct par *p, char *err)
{
    struct pslot *head = slot_of(p, p->written);

    if (p->written == p->stop) {
        if (p->rd_failed && !(p->written < p->published && head->failed))
            efmt(err, "%s", p->rd_err);
        else
            memcpy(err, head->err, ERRLEN);
        return -1;
    }
    if (p->written < p->published && head->done)
        return 1;
    if (!p->ended && p->stop == UINT64_MAX && p->read - p->written < p->nslots)
        return 2;
    if (p->ended && p->written == p->published)
        return 0;
    return 3;
}

/* The loop of this thread: read ahead, write in order. */
static int par_loop(struct par *p, char *err)
{
    int step;

    for (;;) {
        pthread_mutex_lock(&p->mu);
        while ((step = next_step(p, err)) == 3)
            pthread_cond_wait(&p->main, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (step <= 0)
            return step;
        if (step == 2) {
            read_one(p);
            continue;
        }
        if (write_one(p, slot_of(p, p->written), err) < 0)
            return -1;
        pthread_mutex_lock(&p->mu);
        p->written++;
        pthread_mutex_unlock(&p->mu);
    }
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

static void workers_stop(struct par *p, struct pworker *w, size_t n)
{
    CK_FUNCTION_LIST *f = p->s->key.c->m->f;
    size_t i;

    pthread_mutex_lock(&p->mu);
    p->quit = true;
    p->stop = 0; /* after a failure here: take nothing more */
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (i = 0; i < n; i++) {
        if (w[i].started)
            pthread_join(w[i].th, NULL);
        if (w[i].own)
            f->C_CloseSession(w[i].sess);
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
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.work, NULL);
    pthread_cond_init(&p.main, NULL);
    if (w == NULL ||
        slots_alloc(&p, (size_t)s->threads * PAR_SLOTS_PER_WORKER) < 0) {
        efmt(err, "out of memory");
        goto out;
    }
    n = sessions_open(s, w, s->threads);
    if (workers_start(&p, w, n) == 0) {
        /* No thread: the one loop, on the tool's session. */
        workers_stop(&p, w, n);
        n = 0;
        s->threads = 1;
        r = seg_run(s, err);
        goto out;
    }
    r = par_loop(&p, err);
    if (r == 0 && s->out != NULL && fflush(s->out) != 0) {
        efmt(err, "writing %s: %s", s->out_what, strerror(errno));
        r = -1;
    }
out:
    if (w != NULL)
        workers_stop(&p, w, n);
    slots_free(&p);
    free(w);
    pthread_cond_destroy(&p.main);
    pthread_cond_destroy(&p.work);
    pthread_mutex_destroy(&p.mu);
    return r;
}
