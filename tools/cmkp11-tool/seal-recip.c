/*
 * cmkp11-tool seal, unseal, rewrap and check: the recipients of a version 2
 * header (docs/seal-format.md). Any-of: the DEK wrapped under each
 * recipient, any one unwraps it. All-of: the DEK is the XOR of one random
 * share per recipient, each wrapped under its recipient; every one is
 * needed. Each wrap and unwrap goes through the module, on the token of
 * its recipient.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "seal-int.h"
#include "secure.h"
#include "tool.h"

void recip_name(const struct seal_recip *r, char *out, size_t len)
{
    snprintf(out, len, "key %s version %s on token %s", r->key, r->version,
             r->token);
}

struct tstate *recip_token(struct sctx *c, const struct seal_header *h,
                           size_t i, char *err)
{
    struct tstate *s;

    /* --token names the token of a version 1 file (a renamed token, or
     * another token with the same key); for several recipients it only
     * chooses among them. */
    if (c->o->token != NULL && h->n == 1)
        return ts_select(c, c->o->token, err);
    s = ts_by_label(c, h->r[i].token);
    if (s == NULL && h->n == 1)
        efmt(err, "no token %s (the token that sealed the file): give --token",
             h->r[i].token);
    else if (s == NULL)
        efmt(err, "no token %s in the configuration", h->r[i].token);
    else if (c->o->token != NULL && ts_select(c, c->o->token, err) != s) {
        efmt(err, "not on the token --token names");
        s = NULL;
    }
    return s;
}

size_t recip_order(struct sctx *c, const struct seal_header *h,
                   size_t order[SEAL_RECIP_MAX])
{
    size_t i, n = 0, pass;

    /* Available tokens first (opened, logged in, keys listed), then the
     * others, each in the header's order. */
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < h->n; i++) {
            struct tstate *s = ts_by_label(c, h->r[i].token);
            bool up = s != NULL && ts_load(c, s) == CKR_OK;
            if (up == (pass == 0))
                order[n++] = i;
        }
    return n;
}

int recip_unwrap(struct sctx *c, const struct seal_header *h, size_t i,
                 enum dek_use use, struct tstate **s, CK_OBJECT_HANDLE *dek,
                 bool *fallback, char *err)
{
    CK_OBJECT_HANDLE priv = 0;
    bool fb = false;

    *dek = 0;
    *s = recip_token(c, h, i, err);
    if (*s == NULL || source_priv(c, *s, &h->r[i], &priv, &fb, err) < 0 ||
        dek_unwrap(c, *s, priv, &h->r[i], use, dek, err) < 0)
        return -1;
    if (fallback != NULL)
        *fallback = fb;
    return 0;
}

int recip_value(struct sctx *c, const struct seal_header *h, size_t i,
                unsigned char value[SEAL_DEK_LEN], char *err)
{
    struct tstate *s = NULL;
    CK_OBJECT_HANDLE k = 0;
    int r = -1;

    if (recip_unwrap(c, h, i, DEK_READABLE, &s, &k, NULL, err) == 0 &&
        dek_read(c, s, k, value, err) == 0)
        r = 0;
    if (s != NULL)
        dek_destroy(c, s, &k);
    return r;
}

int header_dek_value(struct sctx *c, const struct seal_header *h,
                     const bool *skip, unsigned char value[SEAL_DEK_LEN],
                     size_t *used, char errs[][ERRLEN], char *err)
{
    unsigned char *share = secure_alloc(SEAL_DEK_LEN);
    size_t order[SEAL_RECIP_MAX], n, i, j, bad = 0;
    int r = -1;

    if (share == NULL) {
        efmt(err, "out of memory");
        return -1;
    }
    for (i = 0; i < h->n; i++)
        errs[i][0] = '\0';
    n = recip_order(c, h, order);
    memset(value, 0, SEAL_DEK_LEN);
    for (i = 0; i < n; i++) {
        size_t k = order[i];
        if (skip != NULL && skip[k])
            continue;
        if (recip_value(c, h, k, share, errs[k]) < 0) {
            bad++;
            continue;
        }
        if (!seal_header_all(h)) {
            memcpy(value, share, SEAL_DEK_LEN);
            *used = k;
            r = 0;
            goto out;
        }
        for (j = 0; j < SEAL_DEK_LEN; j++)
            value[j] ^= share[j];
    }
    if (seal_header_all(h) && bad == 0) {
        *used = order[0];
        r = 0;
    } else if (seal_header_all(h)) {
        efmt(err,
             "every recipient is needed (all-of), and %zu of %zu cannot "
             "unwrap their share",
             bad, h->n);
    } else {
        efmt(err, "no recipient can unwrap the data key");
    }
out:
    secure_free(share);
    if (r < 0)
        memset(value, 0, SEAL_DEK_LEN);
    return r;
}

int recip_wrap(struct sctx *c, struct seal_header *h, size_t i,
               const struct target *tg, const unsigned char value[SEAL_DEK_LEN],
               char *err)
{
    CK_OBJECT_HANDLE k = 0;
    unsigned char *w = NULL;
    CK_ULONG wl = 0;
    int r = -1;

    if (dek_create(c, tg->ts, value, true, &k, err) == 0 &&
        dek_wrap(c, tg, k, &w, &wl, err) == 0) {
        if (seal_header_set(h, i, tg->ts->t->label, tg->key->name,
                            tg->v->version, tg->v->id, tg->v->id_len, w,
                            wl) < 0)
            efmt(err, "out of memory, or a name too long for the header");
        else
            r = 0;
    }
    free(w);
    dek_destroy(c, tg->ts, &k);
    return r;
}

int recip_wrap_all(struct sctx *c, struct seal_header *h,
                   const struct target *tg, size_t n, bool all,
                   const unsigned char value[SEAL_DEK_LEN], char *err)
{
    unsigned char *share = secure_alloc(SEAL_DEK_LEN);
    unsigned char *rest = secure_alloc(SEAL_DEK_LEN);
    size_t i, j;
    int r = 0;

    if (share == NULL || rest == NULL) {
        efmt(err, "out of memory");
        r = -1;
        goto out;
    }
    /* All-of: n - 1 independent random shares, the last one the DEK XOR
     * all of them. */
    memcpy(rest, value, SEAL_DEK_LEN);
    for (i = 0; i < n && r == 0; i++) {
        if (!all || i == n - 1) {
            memcpy(share, all ? rest : value, SEAL_DEK_LEN);
        } else if (getrandom(share, SEAL_DEK_LEN, 0) != SEAL_DEK_LEN) {
            efmt(err, "getrandom: %s", strerror(errno));
            r = -1;
            break;
        } else {
            for (j = 0; j < SEAL_DEK_LEN; j++)
                rest[j] ^= share[j];
        }
        r = recip_wrap(c, h, i, &tg[i], share, err);
    }
out:
    secure_free(share);
    secure_free(rest);
    return r;
}

ssize_t recip_find(struct sctx *c, const struct seal_header *h, const char *arg)
{
    ssize_t found = -1;
    size_t i;

    for (i = 0; i < h->n; i++) {
        char *uri = seal_recip_uri(&h->r[i]);
        bool match = uri != NULL && strcmp(uri, arg) == 0;
        free(uri);
        if (match)
            return (ssize_t)i;
        if (strcmp(h->r[i].key, arg) == 0 &&
            (c->o->token == NULL || strcmp(c->o->token, h->r[i].token) == 0)) {
            if (found >= 0)
                return -2;
            found = (ssize_t)i;
        }
    }
    return found;
}
