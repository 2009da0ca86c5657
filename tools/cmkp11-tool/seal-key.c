/*
 * cmkp11-tool seal, unseal and rewrap: the tokens and keys a file is
 * sealed under, and the data key (DEK), through the module only.
 *
 * The DEK is an AES-256 session object: generated in the token by seal,
 * unwrapped from a header by unseal and rewrap, wrapped with a CMK version
 * (RSA-OAEP SHA-256, MGF1-SHA-256, no label: SEAL_WRAP_OAEP256).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "seal-int.h"
#include "secure.h"
#include "tool.h"

/* ---- tokens ---------------------------------------------------------------
 */

int sctx_init(struct sctx *c, struct tmod *m, const struct tool_opts *o,
              char *err)
{
    struct tsel all;
    size_t i;

    memset(c, 0, sizeof(*c));
    c->m = m;
    c->o = o;
    memset(&all, 0, sizeof(all));
    if (ttokens_find(m, &all, &c->toks, &c->ntok) < 0) {
        efmt(err, "cannot list the tokens");
        return -1;
    }
    c->st = calloc(c->ntok + 1, sizeof(*c->st));
    if (c->st == NULL) {
        efmt(err, "out of memory");
        return -1;
    }
    for (i = 0; i < c->ntok; i++)
        c->st[i].t = &c->toks[i];
    return 0;
}

void sctx_free(struct sctx *c)
{
    size_t i;

    for (i = 0; c->st != NULL && i < c->ntok; i++)
        tkeys_free(&c->st[i].keys);
    free(c->st);
    ttokens_free(c->m, c->toks, c->ntok);
    memset(c, 0, sizeof(*c));
}

CK_RV ts_load(struct sctx *c, struct tstate *s)
{
    if (s->loaded)
        return s->rv;
    s->loaded = true;
    s->rv = ttoken_open(c->m, s->t, &c->o->pin);
    if (s->rv == CKR_OK && s->t->login_rv != CKR_OK)
        s->rv = s->t->login_rv;
    if (s->rv == CKR_OK)
        s->rv = tkeys_load(c->m, s->t, &s->keys);
    return s->rv;
}

void ts_error(struct sctx *c, struct tstate *s, CK_RV rv, char *err)
{
    char text[128];

    efmt(err, "token %s: %s%s", s->t->label,
         tool_rv_text(s->t, rv,
                      s->t->open ? tmod_device_error(c->m, s->t->sess) : 0,
                      text, sizeof(text)),
         s->t->pin_missing ? ": give --pin or --pin-file" : "");
}

const char *ts_rv_text(struct sctx *c, struct tstate *s, CK_RV rv, char *text,
                       size_t len)
{
    return tool_rv_text(s->t, rv, tmod_device_error(c->m, s->t->sess), text,
                        len);
}

struct tstate *ts_by_label(struct sctx *c, const char *label)
{
    size_t i;

    for (i = 0; i < c->ntok; i++)
        if (strcmp(c->toks[i].label, label) == 0)
            return &c->st[i];
    return NULL;
}

struct tstate *ts_select(struct sctx *c, const char *arg, char *err)
{
    struct tstate *found = NULL;
    struct tsel sel;
    size_t i;

    if (tsel_parse(&sel, arg) < 0) {
        efmt(err, "--token: not a token name or pkcs11: URI");
        return NULL;
    }
    for (i = 0; i < c->ntok; i++) {
        if (!tsel_match_token(&sel, &c->toks[i].info, c->toks[i].label))
            continue;
        if (found != NULL) {
            efmt(err, "'%s' matches more than one token: name one", arg);
            tsel_clear(&sel);
            return NULL;
        }
        found = &c->st[i];
    }
    tsel_clear(&sel);
    if (found == NULL)
        efmt(err, "no token matches '%s'", arg);
    return found;
}

/* ---- keys to wrap with ----------------------------------------------------
 */

/* What a search for --key / --to found over the tokens. */
struct search {
    size_t cand, nmatch; /* tokens searched, keys matched */
    struct tstate *fail; /* a token that could not be read */
    CK_RV fail_rv;       /* and why */
    char names[256];     /* "token/key, ..." of the matches */
};

/* Searches the keys ksel selects on the tokens tsel selects; the first
 * match goes to out. */
static void target_search(struct sctx *c, const struct tsel *ksel,
                          const struct tsel *tsel, struct target *out,
                          struct search *r)
{
    size_t i, j, len;

    for (i = 0; i < c->ntok; i++) {
        struct tstate *s = &c->st[i];
        CK_RV rv;
        if (!tsel_match_token(tsel, &s->t->info, s->t->label) ||
            (ksel->uri != NULL &&
             !tsel_match_token(ksel, &s->t->info, s->t->label)))
            continue;
        r->cand++;
        rv = ts_load(c, s);
        if (rv != CKR_OK) {
            r->fail = s;
            r->fail_rv = rv;
            continue;
        }
        tkeys_select(&s->keys, ksel);
        for (j = 0; j < s->keys.n; j++) {
            if (tkey_selected(&s->keys.k[j]) == NULL)
                continue;
            if (r->nmatch++ == 0) {
                out->ts = s;
                out->key = &s->keys.k[j];
            }
            len = strlen(r->names);
            if (len < 200)
                snprintf(r->names + len, sizeof(r->names) - len, "%s%s/%s",
                         r->nmatch > 1 ? ", " : "", s->t->label,
                         s->keys.k[j].name);
        }
    }
}

/* The one key found: the version a URI names (id=, object=NAME@VERSION),
 * else the current one. */
static int target_version(const char *key_arg, struct target *out, char *err)
{
    out->v = tkey_selected(out->key);
    if (out->v != NULL && !out->v->current &&
        (out->v->pub == 0 || !out->v->enabled)) {
        efmt(err,
             "'%s' names version %s of key %s on token %s, which %s; "
             "name the key alone for its current version",
             key_arg, out->v->version ? out->v->version : "?", out->key->name,
             out->ts->t->label,
             out->v->pub == 0 ? "has no public key object" : "is disabled");
        return -1;
    }
    if (out->v == NULL || out->v->pub == 0 || out->v->version == NULL) {
        efmt(err, "key %s on token %s has no usable current version",
             out->key->name, out->ts->t->label);
        return -1;
    }
    return 0;
}

/* Why the search r did not find exactly one key. */
static void target_explain(struct sctx *c, const struct search *r,
                           const char *key_arg, const char *token_arg,
                           const char *opt, char *err)
{
    if (r->nmatch > 1 && key_arg == NULL)
        efmt(err, "several keys (%s): give %s", r->names, opt);
    else if (r->nmatch > 1)
        efmt(err,
             "'%s' matches several keys (%s): give --token or a "
             "pkcs11: URI that names one",
             key_arg, r->names);
    else if (r->cand == 0)
        efmt(err, "no token matches '%s'", token_arg ? token_arg : "");
    else if (r->fail != NULL && r->cand == 1)
        ts_error(c, r->fail, r->fail_rv, err);
    else if (key_arg == NULL)
        efmt(err, "no key found: give %s", opt);
    else if (r->fail == NULL)
        efmt(err, "no key matches '%s'", key_arg);
    else
        efmt(err, "no key matches '%s' (token %s could not be read: %s)",
             key_arg, r->fail->t->label, trv_name(r->fail_rv));
}

int target_resolve(struct sctx *c, const char *key_arg, const char *token_arg,
                   const char *opt, struct target *out, char *err)
{
    struct tsel ksel, tsel;
    struct search r;
    int ret = -1;

    memset(out, 0, sizeof(*out));
    memset(&tsel, 0, sizeof(tsel));
    memset(&r, 0, sizeof(r));
    if (tsel_parse(&ksel, key_arg) < 0) {
        efmt(err, "%s: not a key name or pkcs11: URI", opt);
        return -1;
    }
    if (token_arg != NULL && tsel_parse(&tsel, token_arg) < 0) {
        efmt(err, "--token: not a token name or pkcs11: URI");
        goto out;
    }
    target_search(c, &ksel, &tsel, out, &r);
    if (r.nmatch == 1)
        ret = target_version(key_arg, out, err);
    else
        target_explain(c, &r, key_arg, token_arg, opt, err);
out:
    tsel_clear(&ksel);
    tsel_clear(&tsel);
    return ret;
}

int target_current(struct sctx *c, struct tstate *s, const char *name,
                   struct target *out, char *err)
{
    CK_RV rv = ts_load(c, s);

    memset(out, 0, sizeof(*out));
    if (rv != CKR_OK) {
        ts_error(c, s, rv, err);
        return -1;
    }
    out->ts = s;
    out->key = tkeys_find(&s->keys, name);
    out->v = out->key ? tkey_current(out->key) : NULL;
    if (out->v == NULL || out->v->pub == 0 || out->v->version == NULL) {
        efmt(err, "token %s has no current version of key %s", s->t->label,
             name);
        return -1;
    }
    return 0;
}

/* ---- keys to unwrap with --------------------------------------------------
 */

/* The version of the header's key with the header's key id: loaded by
 * NAME@VERSION when the token did not list it. NULL when there is none;
 * *key is the key (NULL when the token has none of that name). */
static struct tversion *header_version(struct sctx *c, struct tstate *s,
                                       const struct seal_recip *h,
                                       struct tkey **key)
{
    struct tversion *v;

    *key = tkeys_find(&s->keys, h->key);
    if (*key == NULL)
        return NULL;
    v = tkey_find_id(*key, h->key_id, h->key_id_len);
    if (v == NULL && tkeys_load_version(c->m, s->t, &s->keys, h->key,
                                        h->version) == CKR_OK) {
        *key = tkeys_find(&s->keys, h->key); /* the array may have moved */
        v = *key != NULL ? tkey_find_id(*key, h->key_id, h->key_id_len) : NULL;
    }
    return v;
}

int source_priv(struct sctx *c, struct tstate *s, const struct seal_recip *h,
                CK_OBJECT_HANDLE *priv, bool *fallback, char *err)
{
    struct tkey *key;
    struct tversion *v, *cur;
    CK_RV rv = ts_load(c, s);

    *fallback = false;
    if (rv != CKR_OK) {
        ts_error(c, s, rv, err);
        return -1;
    }
    v = header_version(c, s, h, &key);
    if (key == NULL) {
        efmt(err, "token %s has no key %s (the key the file names)",
             s->t->label, h->key);
        return -1;
    }
    if (v != NULL) {
        if (v->version != NULL && strcmp(v->version, h->version) != 0) {
            efmt(err,
                 "the header is altered: its key id is version %s of key %s, "
                 "not version %s",
                 v->version, key->name, h->version);
            return -1;
        }
        if (v->priv == 0) {
            efmt(err, "the private half of key %s version %s is not visible%s",
                 key->name, h->version,
                 s->t->pin_missing ? ": give --pin or --pin-file" : "");
            return -1;
        }
        *priv = v->priv;
        return 0;
    }
    cur = tkey_current(key);
    if (cur == NULL || cur->priv == 0) {
        efmt(err,
             "token %s has no version %s of key %s, and no label object "
             "to fall back to",
             s->t->label, h->version, h->key);
        return -1;
    }
    *fallback = true;
    *priv = cur->priv;
    return 0;
}

/* ---- the data key ---------------------------------------------------------
 */

static const CK_RSA_PKCS_OAEP_PARAMS oaep256 = {CKM_SHA256, CKG_MGF1_SHA256,
                                                CKZ_DATA_SPECIFIED, NULL, 0};

/* What a data key may do, and whether it leaves the token in the clear or
 * wrapped. */
enum {
    DEK_ENC = 1,
    DEK_DEC = 2,
    DEK_SENS = 4,
    DEK_EXTR = 8,
};

/* The template of every data key: a session AES key. */
struct dek_tmpl {
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    CK_ULONG len;
    CK_BBOOL no, enc, dec, sens, extr;
    CK_ATTRIBUTE a[8];
};

/* Fills t (used in place: it points into itself) and returns its count:
 * with CKA_VALUE when value is given, else CKA_VALUE_LEN when len is not 0
 * (C_GenerateKey), else neither (C_UnwrapKey: the wrapped key says). */
static CK_ULONG dek_template(struct dek_tmpl *t, const unsigned char *value,
                             CK_ULONG len, unsigned flags)
{
    CK_ULONG n = 0;

    t->cls = CKO_SECRET_KEY;
    t->type = CKK_AES;
    t->len = len;
    t->no = CK_FALSE;
    t->enc = (flags & DEK_ENC) ? CK_TRUE : CK_FALSE;
    t->dec = (flags & DEK_DEC) ? CK_TRUE : CK_FALSE;
    t->sens = (flags & DEK_SENS) ? CK_TRUE : CK_FALSE;
    t->extr = (flags & DEK_EXTR) ? CK_TRUE : CK_FALSE;
    t->a[n++] = (CK_ATTRIBUTE){CKA_CLASS, &t->cls, sizeof(t->cls)};
    t->a[n++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &t->type, sizeof(t->type)};
    t->a[n++] = (CK_ATTRIBUTE){CKA_TOKEN, &t->no, sizeof(t->no)};
    if (value != NULL)
        t->a[n++] = (CK_ATTRIBUTE){CKA_VALUE, (void *)value, len};
    else if (len != 0)
        t->a[n++] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &t->len, sizeof(t->len)};
    t->a[n++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &t->enc, sizeof(t->enc)};
    t->a[n++] = (CK_ATTRIBUTE){CKA_DECRYPT, &t->dec, sizeof(t->dec)};
    t->a[n++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &t->sens, sizeof(t->sens)};
    t->a[n++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &t->extr, sizeof(t->extr)};
    return n;
}

/* A data key of value on token s. */
static int dek_object(struct sctx *c, struct tstate *s,
                      const unsigned char value[SEAL_DEK_LEN], unsigned flags,
                      CK_OBJECT_HANDLE *dek, char *err)
{
    struct dek_tmpl t;
    CK_ULONG n = dek_template(&t, value, SEAL_DEK_LEN, flags);
    char text[128];
    CK_RV rv;

    *dek = 0;
    rv = c->m->f->C_CreateObject(s->t->sess, t.a, n, dek);
    if (rv != CKR_OK) {
        efmt(err, "C_CreateObject (the data key) on token %s: %s", s->t->label,
             ts_rv_text(c, s, rv, text, sizeof(text)));
        return -1;
    }
    return 0;
}

int dek_generate(struct sctx *c, const struct target *tg, CK_OBJECT_HANDLE *dek,
                 char *err)
{
    struct dek_tmpl t;
    CK_ULONG n =
        dek_template(&t, NULL, SEAL_DEK_LEN, DEK_ENC | DEK_SENS | DEK_EXTR);
    CK_MECHANISM kgen = {CKM_AES_KEY_GEN, NULL, 0};
    char text[128];
    CK_RV rv;

    *dek = 0;
    rv = c->m->f->C_GenerateKey(tg->ts->t->sess, &kgen, t.a, n, dek);
    if (rv != CKR_OK) {
        efmt(err, "C_GenerateKey (the AES-256 data key) on token %s: %s",
             tg->ts->t->label, ts_rv_text(c, tg->ts, rv, text, sizeof(text)));
        return -1;
    }
    return 0;
}

int dek_wrap(struct sctx *c, const struct target *tg, CK_OBJECT_HANDLE dek,
             unsigned char **wrapped, CK_ULONG *wlen, char *err)
{
    CK_SESSION_HANDLE s = tg->ts->t->sess;
    CK_MECHANISM wrap = {CKM_RSA_PKCS_OAEP, (void *)&oaep256, sizeof(oaep256)};
    char text[128];
    CK_RV rv;

    *wrapped = NULL;
    *wlen = 0;
    rv = c->m->f->C_WrapKey(s, &wrap, tg->v->pub, dek, NULL, wlen);
    if (rv == CKR_OK && (*wrapped = malloc(*wlen ? *wlen : 1)) == NULL)
        rv = CKR_HOST_MEMORY;
    if (rv == CKR_OK)
        rv = c->m->f->C_WrapKey(s, &wrap, tg->v->pub, dek, *wrapped, wlen);
    if (rv != CKR_OK) {
        efmt(err, "C_WrapKey with key %s version %s on token %s: %s",
             tg->key->name, tg->v->version, tg->ts->t->label,
             ts_rv_text(c, tg->ts, rv, text, sizeof(text)));
        free(*wrapped);
        *wrapped = NULL;
        return -1;
    }
    return 0;
}

/* Why C_UnwrapKey of the header's DEK failed with rv. */
static void unwrap_error(struct sctx *c, struct tstate *s,
                         const struct seal_recip *h, CK_RV rv, char *err)
{
    char text[128];

    ts_rv_text(c, s, rv, text, sizeof(text));
    switch (rv) {
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_WRAPPED_KEY_LEN_RANGE:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
        efmt(err,
             "the data key does not unwrap with key %s on token %s (%s): the "
             "wrapped key is altered, or the file was sealed under another "
             "key",
             h->key, s->t->label, text);
        break;
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
        efmt(err,
             "key %s version %s on token %s may not unwrap (%s): it is "
             "disabled, outside its dates, or lacks the unwrap permission",
             h->key, h->version, s->t->label, text);
        break;
    default:
        efmt(err, "C_UnwrapKey with key %s on token %s: %s", h->key,
             s->t->label, text);
        break;
    }
}

int dek_unwrap(struct sctx *c, struct tstate *s, CK_OBJECT_HANDLE priv,
               const struct seal_recip *h, enum dek_use use,
               CK_OBJECT_HANDLE *dek, char *err)
{
    struct dek_tmpl t;
    CK_ULONG n = dek_template(&t, NULL, 0,
                              DEK_DEC | (use == DEK_READABLE ? 0 : DEK_SENS) |
                                  (use == DEK_SEALED ? 0 : DEK_EXTR));
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, (void *)&oaep256, sizeof(oaep256)};
    CK_ULONG vlen;
    CK_RV rv;

    *dek = 0;
    rv = c->m->f->C_UnwrapKey(s->t->sess, &mech, priv, h->wrapped,
                              h->wrapped_len, t.a, n, dek);
    if (rv != CKR_OK) {
        unwrap_error(c, s, h, rv, err);
        return -1;
    }
    vlen = tattr_ulong(c->m, s->t->sess, *dek, CKA_VALUE_LEN, NULL);
    if (vlen != SEAL_DEK_LEN) {
        dek_destroy(c, s, dek);
        efmt(err,
             "the data key is %lu bytes, not %d: not a file this "
             "tool sealed",
             vlen, SEAL_DEK_LEN);
        return -1;
    }
    return 0;
}

int dek_move(struct sctx *c, struct tstate *from, CK_OBJECT_HANDLE dek,
             struct tstate *to, CK_OBJECT_HANDLE *out, char *err)
{
    unsigned char *value = secure_alloc(SEAL_DEK_LEN);
    int ret;

    *out = 0;
    if (value == NULL) {
        efmt(err, "out of memory");
        return -1;
    }
    ret = dek_read(c, from, dek, value, err);
    if (ret == 0)
        ret = dek_object(c, to, value, DEK_DEC | DEK_SENS | DEK_EXTR, out, err);
    secure_free(value);
    return ret;
}

void dek_destroy(struct sctx *c, struct tstate *s, CK_OBJECT_HANDLE *dek)
{
    if (*dek != 0)
        c->m->f->C_DestroyObject(s->t->sess, *dek);
    *dek = 0;
}

int dek_read(struct sctx *c, struct tstate *s, CK_OBJECT_HANDLE dek,
             unsigned char value[SEAL_DEK_LEN], char *err)
{
    CK_ATTRIBUTE va = {CKA_VALUE, value, SEAL_DEK_LEN};
    CK_RV rv = c->m->f->C_GetAttributeValue(s->t->sess, dek, &va, 1);

    if (rv != CKR_OK || va.ulValueLen != SEAL_DEK_LEN) {
        efmt(err, "reading the data key on token %s: %s", s->t->label,
             trv_name(rv));
        return -1;
    }
    return 0;
}

int dek_create(struct sctx *c, struct tstate *s,
               const unsigned char value[SEAL_DEK_LEN], bool encrypt,
               CK_OBJECT_HANDLE *dek, char *err)
{
    return dek_object(c, s, value,
                      DEK_DEC | DEK_SENS | (encrypt ? DEK_ENC | DEK_EXTR : 0),
                      dek, err);
}
