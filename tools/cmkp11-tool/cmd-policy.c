/*
 * cmkp11-tool rotation-policy get|set TOKEN KEY: a key's rotation policy,
 * the vendor attribute CKA_CMK_ROTATION_POLICY of its current version's
 * private key (docs/vendor.md). Key Vault keeps the policy and rotates by
 * it; on hsm tokens cmkp11 keeps it and `rotate --if-due` acts on it
 * (rotate_due below).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keys.h"
#include "out.h"
#include "rotpolicy.h"
#include "tool.h"

#define DAY 86400LL

CK_RV tool_read_policy(struct tmod *m, CK_SESSION_HANDLE s,
                       CK_OBJECT_HANDLE priv, struct rotpolicy *p)
{
    /* One call with room enough: on Key Vault each read is a request. */
    char buf[1024];
    CK_ATTRIBUTE a = {CKA_CMK_ROTATION_POLICY, buf, sizeof(buf) - 1};
    char why[160];
    CK_RV rv;

    memset(p, 0, sizeof(*p));
    rv = m->f->C_GetAttributeValue(s, priv, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if (rotpolicy_parse(buf, a.ulValueLen, p, why, sizeof(why)) < 0) {
        tool_error("the module's rotation policy '%.*s': %s", (int)a.ulValueLen,
                   buf, why);
        return CKR_DEVICE_ERROR;
    }
    return CKR_OK;
}

bool tool_policy_refused(struct tmod *m, CK_SESSION_HANDLE s,
                         CK_OBJECT_HANDLE priv)
{
    /* A vault always has a policy (its default notifies 30 days before
     * expiry): an empty one is a refusal, which the module records in
     * CKA_CMK_REFUSED at the next listing. A search lists again. */
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE any = {CKA_CLASS, &cls, sizeof(cls)};
    char *refused;
    bool r;

    if (m->f->C_FindObjectsInit(s, &any, 1) == CKR_OK)
        m->f->C_FindObjectsFinal(s);
    refused = tattr_string(m, s, priv, CKA_CMK_REFUSED);
    r = refused != NULL && tops_has(refused, "getrotationpolicy");
    free(refused);
    return r;
}

/* The token and key of TOKEN KEY (argv[0], argv[1]), opened. */
struct keyctx {
    struct tsel tsel, ksel;
    struct ttoken *toks, *t;
    size_t ntok;
    struct tkeys keys;
    struct tkey *key;
};

static void keyctx_free(struct tmod *m, struct keyctx *k)
{
    tkeys_free(&k->keys);
    ttokens_free(m, k->toks, k->ntok);
    tsel_clear(&k->tsel);
    tsel_clear(&k->ksel);
}

static int keyctx_open(struct tmod *m, const struct tool_opts *o,
                       const char *token, const char *key, struct keyctx *k)
{
    char text[128];
    size_t i, nkeys;
    CK_RV rv;

    memset(k, 0, sizeof(*k));
    if (tsel_parse(&k->tsel, token) < 0 || tsel_parse(&k->ksel, key) < 0)
        return TOOL_USAGE;
    if (ttokens_find(m, &k->tsel, &k->toks, &k->ntok) < 0)
        return TOOL_FAILED;
    for (i = 0; i < k->ntok; i++) {
        if (k->ksel.uri != NULL &&
            !tsel_match_token(&k->ksel, &k->toks[i].info, k->toks[i].label))
            continue;
        if (k->t != NULL) {
            tool_error("'%s' matches more than one token: name one", token);
            return TOOL_FAILED;
        }
        k->t = &k->toks[i];
    }
    if (k->t == NULL) {
        tool_error("no token matches '%s'", token);
        return TOOL_FAILED;
    }
    rv = ttoken_open(m, k->t, &o->pin);
    if (rv == CKR_OK && k->t->login_rv != CKR_OK)
        rv = k->t->login_rv;
    if (rv == CKR_OK)
        rv = tkeys_load(m, k->t, &k->keys);
    if (rv != CKR_OK) {
        tool_error("token %s: %s%s", k->t->label,
                   tool_rv_text(k->t, rv, tmod_device_error(m, k->t->sess),
                                text, sizeof(text)),
                   k->t->pin_missing ? ": give --pin or --pin-file" : "");
        return TOOL_FAILED;
    }
    nkeys = tkeys_select(&k->keys, &k->ksel);
    if (nkeys != 1) {
        tool_error(nkeys == 0 ? "no key matches '%s' on token %s"
                              : "'%s' matches more than one key on token %s",
                   key, k->t->label);
        return TOOL_FAILED;
    }
    for (i = 0; i < k->keys.n; i++)
        if (tkey_selected(&k->keys.k[i]) != NULL)
            k->key = &k->keys.k[i];
    return TOOL_OK;
}

static void print_policy(const struct tool_opts *o, const char *token,
                         const char *key, const struct rotpolicy *p,
                         bool denied)
{
    static const char *const names[] = {"rotate-after", "rotate-before-expiry",
                                        "notify-before", "expire-after"};
    const char *vals[4] = {p->rotate_after, p->rotate_before, p->notify_before,
                           p->expire_after};
    char text[4 * (ROTPOLICY_DUR_MAX + 24)];
    struct jw w;
    size_t i;

    rotpolicy_format(p, text, sizeof(text));
    if (o->json) {
        jw_init(&w, stdout);
        jw_begin_object(&w);
        jw_kv_string(&w, "token", token);
        jw_kv_string(&w, "key", key);
        jw_kv_string(&w, "policy", text);
        for (i = 0; i < 4; i++)
            jw_kv_string(&w, names[i], *vals[i] ? vals[i] : NULL);
        jw_kv_bool(&w, "refused", denied);
        jw_end_object(&w);
        jw_finish(&w);
        return;
    }
    if (rotpolicy_empty(p)) {
        printf("Token %s, key %s: no rotation policy%s\n", token, key,
               denied ? " known: the vault refused getrotationpolicy" : "");
        return;
    }
    printf("Token %s, key %s: rotation policy %s\n", token, key, text);
    for (i = 0; i < 4; i++)
        printf("  %-21s %s\n", names[i], *vals[i] ? vals[i] : "-");
}

/* The private key of key's current version, or 0 with a message. */
static CK_OBJECT_HANDLE policy_object(const struct keyctx *k,
                                      struct tversion **vout)
{
    struct tversion *v = tkey_current(k->key);

    *vout = v;
    if (v == NULL || v->priv == 0) {
        tool_error("key %s on token %s: the current version's private key "
                   "is not visible%s",
                   k->key->name, k->t->label,
                   k->t->pin_missing ? ": give --pin or --pin-file" : "");
        return 0;
    }
    return v->priv;
}

static int policy_from_opts(const struct tool_opts *o, struct rotpolicy *p)
{
    const char *in[4] = {o->rotate_after, o->rotate_before, o->notify_before,
                         o->expire_after};
    char *out[4] = {p->rotate_after, p->rotate_before, p->notify_before,
                    p->expire_after};
    static const char *const opt[4] = {"--rotate-after",
                                       "--rotate-before-expiry",
                                       "--notify-before", "--expire-after"};
    char why[256];
    size_t i;
    bool any = false;

    memset(p, 0, sizeof(*p));
    for (i = 0; i < 4; i++) {
        if (in[i] == NULL)
            continue;
        any = true;
        if (strlen(in[i]) >= ROTPOLICY_DUR_MAX ||
            rotpolicy_seconds(in[i]) < 0) {
            tool_error("%s: '%s' is not an ISO 8601 duration (for "
                       "example P90D, P1Y, P1Y6M)",
                       opt[i], in[i]);
            return TOOL_USAGE;
        }
        snprintf(out[i], ROTPOLICY_DUR_MAX, "%s", in[i]);
    }
    if (!any) {
        tool_error("rotation-policy set: give at least one of "
                   "--rotate-after, --rotate-before-expiry, --notify-before, "
                   "--expire-after");
        return TOOL_USAGE;
    }
    if (rotpolicy_check(p, why, sizeof(why)) < 0) {
        tool_error("rotation policy refused: %s", why);
        return TOOL_USAGE;
    }
    return TOOL_OK;
}

int cmd_rotation_policy(struct tmod *m, const struct tool_opts *o, int argc,
                        char **argv)
{
    struct keyctx k;
    struct rotpolicy p;
    struct tversion *v;
    CK_OBJECT_HANDLE h;
    char text[4 * (ROTPOLICY_DUR_MAX + 24)], rvt[128];
    bool set, denied = false;
    int status;
    CK_RV rv;

    (void)argc;
    if (strcmp(argv[1], "get") != 0 && strcmp(argv[1], "set") != 0) {
        tool_error("usage: cmkp11-tool rotation-policy get|set TOKEN KEY");
        return TOOL_USAGE;
    }
    set = strcmp(argv[1], "set") == 0;
    if (!set && (o->rotate_after || o->rotate_before || o->notify_before ||
                 o->expire_after)) {
        tool_error("rotation-policy get takes no policy options");
        return TOOL_USAGE;
    }
    if (set && (status = policy_from_opts(o, &p)) != TOOL_OK)
        return status;
    status = keyctx_open(m, o, argv[2], argv[3], &k);
    if (status != TOOL_OK)
        goto out;
    status = TOOL_FAILED;
    if ((h = policy_object(&k, &v)) == 0)
        goto out;
    if (set) {
        CK_ATTRIBUTE a = {CKA_CMK_ROTATION_POLICY, text, 0};
        rotpolicy_format(&p, text, sizeof(text));
        a.ulValueLen = strlen(text);
        rv = m->f->C_SetAttributeValue(k.t->sess, h, &a, 1);
        if (rv != CKR_OK) {
            tool_error("setting the rotation policy of key %s on token %s: "
                       "%s%s",
                       k.key->name, k.t->label,
                       tool_rv_text(k.t, rv, tmod_device_error(m, k.t->sess),
                                    rvt, sizeof(rvt)),
                       rv == CKR_ATTRIBUTE_VALUE_INVALID
                           ? " (the back end refused the policy: see the "
                             "module's log)"
                           : "");
            goto out;
        }
    }
    rv = tool_read_policy(m, k.t->sess, h, &p);
    if (rv != CKR_OK) {
        tool_error("reading the rotation policy of key %s on token %s: %s",
                   k.key->name, k.t->label,
                   tool_rv_text(k.t, rv, tmod_device_error(m, k.t->sess), rvt,
                                sizeof(rvt)));
        goto out;
    }
    if (rotpolicy_empty(&p) && k.t->keyvault)
        denied = tool_policy_refused(m, k.t->sess, h);
    print_policy(o, k.t->label, k.key->name, &p, denied);
    status = TOOL_OK;
out:
    keyctx_free(m, &k);
    return status;
}

static void day_text(long long t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%d", &tm);
}

int rotate_due(struct tmod *m, const struct tool_opts *o,
               const struct ttoken *t, const struct tversion *cur, char *why,
               size_t whylen)
{
    struct rotpolicy p;
    long long now = (long long)time(NULL), created, expiry, after, before;
    char a[16], b[16], rvt[128];
    CK_RV rv;

    (void)o;
    if (cur == NULL || cur->priv == 0) {
        snprintf(why, whylen,
                 "the current version's private key is not "
                 "visible: give --pin or --pin-file");
        return -1;
    }
    rv = tool_read_policy(m, t->sess, cur->priv, &p);
    if (rv != CKR_OK) {
        snprintf(why, whylen, "the rotation policy could not be read: %s",
                 tool_rv_text(t, rv, tmod_device_error(m, t->sess), rvt,
                              sizeof(rvt)));
        return -1;
    }
    if (*p.rotate_after == '\0' && *p.rotate_before == '\0') {
        snprintf(why, whylen,
                 "the key's rotation policy has no Rotate action (%s)",
                 rotpolicy_empty(&p) ? "no policy" : "notify only");
        return 0;
    }
    created = out_epoch(cur->created);
    expiry = out_epoch(cur->expires);
    if (expiry == 0 && created > 0 && *p.expire_after != '\0')
        expiry = created + rotpolicy_seconds(p.expire_after);
    after = *p.rotate_after ? rotpolicy_seconds(p.rotate_after) : -1;
    before = *p.rotate_before ? rotpolicy_seconds(p.rotate_before) : -1;
    day_text(created, a, sizeof(a));
    if (after >= 0 && created > 0 && now - created >= after) {
        snprintf(why, whylen,
                 "version %s was made on %s, %lld days ago: rotate-after "
                 "%s is reached",
                 cur->version, a, (now - created) / DAY, p.rotate_after);
        return 1;
    }
    if (before >= 0 && expiry > 0 && expiry - now <= before) {
        day_text(expiry, b, sizeof(b));
        snprintf(why, whylen,
                 "version %s expires on %s, in %lld days: "
                 "rotate-before-expiry %s is reached",
                 cur->version, b, (expiry - now) / DAY, p.rotate_before);
        return 1;
    }
    if (after >= 0 && created > 0) {
        day_text(created + after, b, sizeof(b));
        snprintf(why, whylen,
                 "version %s was made on %s, %lld days ago: rotate-after %s "
                 "is due on %s",
                 cur->version, a, (now - created) / DAY, p.rotate_after, b);
    } else if (before >= 0 && expiry > 0) {
        day_text(expiry - before, b, sizeof(b));
        snprintf(why, whylen, "rotate-before-expiry %s is due on %s",
                 p.rotate_before, b);
    } else if (after >= 0) {
        snprintf(why, whylen,
                 "version %s has no creation day (on hsm: CKA_START_DATE of "
                 "its public key in the lower token): rotate-after cannot be "
                 "applied",
                 cur->version);
        return -1;
    } else {
        snprintf(why, whylen,
                 "version %s has no expiry date (on hsm: a creation day and "
                 "the policy's expire-after): rotate-before-expiry cannot be "
                 "applied",
                 cur->version);
        return -1;
    }
    return 0;
}
