/* cmkp11-tool list [TOKEN]: tokens, keys and versions. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "out.h"
#include "secret-keys.h"
#include "tool.h"

const char *const tool_version_headers[TOOL_VERSION_COLS] = {
    "KEY",  "VERSION", "CURRENT",    "STATE",   "TYPE",
    "BITS", "CREATED", "NOT-BEFORE", "EXPIRES",
};

const char *tool_rv_text(const struct ttoken *t, CK_RV rv, CK_ULONG dev,
                         char *buf, size_t len)
{
    if (dev == 0)
        snprintf(buf, len, "%s", trv_name(rv));
    else if (t->keyvault)
        snprintf(buf, len, "%s (HTTP %lu)", trv_name(rv), dev);
    else
        snprintf(buf, len, "%s (lower token: %s)", trv_name(rv), trv_name(dev));
    return buf;
}

void tool_version_cells(const struct tkey *key, const struct tversion *v,
                        const char **cells, char *buf)
{
    char *created = buf, *nbf = buf + 32, *exp = buf + 64, *bits = buf + 96;

    snprintf(bits, 32, "%lu", v->bits);
    cells[0] = key->name;
    cells[1] = v->version;
    cells[2] = v->current ? "yes" : "no";
    cells[3] = v->state_unknown ? "unknown"
               : v->enabled     ? "enabled"
                                : "disabled";
    cells[4] = v->key_type;
    cells[5] = bits;
    cells[6] = out_time(v->created, created, 32);
    cells[7] = out_time(v->not_before, nbf, 32);
    cells[8] = out_time(v->expires, exp, 32);
}

void tool_version_json(struct jw *w, const struct tversion *v)
{
    char id[2 * 64 + 1];
    const char *p, *e;
    char op[64];

    tversion_id_hex(v, id, sizeof(id));
    jw_begin_object(w);
    jw_kv_string(w, "version", v->version);
    jw_kv_string(w, "id", id);
    jw_kv_string(w, "label", v->label);
    jw_kv_bool(w, "current", v->current);
    jw_key(w, "enabled");
    if (v->state_unknown)
        jw_null(w);
    else
        jw_bool(w, v->enabled);
    jw_kv_string(w, "key_type", v->key_type);
    jw_kv_int(w, "bits", (long long)v->bits);
    jw_kv_epoch(w, "created", v->created);
    jw_kv_epoch(w, "updated", v->updated);
    jw_kv_epoch(w, "not_before", v->not_before);
    jw_kv_epoch(w, "expires", v->expires);
    jw_key(w, "key_ops");
    jw_begin_array(w);
    for (p = v->key_ops; p != NULL && *p != '\0'; p = e + 1) {
        e = strchr(p, ',');
        snprintf(op, sizeof(op), "%.*s", (int)(e ? (size_t)(e - p) : strlen(p)),
                 p);
        if (op[0] != '\0')
            jw_string(w, op);
        if (e == NULL)
            break;
    }
    jw_end_array(w);
    jw_kv_string(w, "recovery_level",
                 v->recovery && *v->recovery ? v->recovery : NULL);
    jw_kv_bool(w, "private_key_visible", v->priv != 0);
    if (v->replicas != NULL && v->replicas[0] != '\0') {
        struct treplica r;
        size_t i;
        jw_key(w, "replicas");
        jw_begin_array(w);
        for (i = 0; tversion_replica(v, i, &r); i++) {
            jw_begin_object(w);
            jw_kv_string(w, "url", r.url);
            jw_kv_string(w, "state", r.state);
            jw_kv_bool(w, "reachable", strcmp(r.state, "healthy") == 0);
            jw_key(w, "latency_ms");
            if (r.latency[0] != '\0')
                jw_int(w, atoll(r.latency));
            else
                jw_null(w);
            jw_kv_string(w, "public_key", r.match);
            jw_kv_string(w, "version", r.version[0] ? r.version : NULL);
            jw_kv_string(w, "recovery_level",
                         r.recovery[0] ? r.recovery : NULL);
            jw_kv_string(w, "error", r.error[0] ? r.error : NULL);
            jw_end_object(w);
        }
        jw_end_array(w);
    }
    jw_end_object(w);
}

/* The back end and source of a token, from its first key. */
static void token_source(const struct ttoken *t, const struct tkeys *k,
                         const char **backend, const char **source)
{
    *backend = t->keyvault ? "keyvault" : "hsm";
    *source = NULL;
    if (k->n > 0 && k->k[0].n > 0) {
        if (k->k[0].v[0].backend != NULL)
            *backend = k->k[0].v[0].backend;
        *source = k->k[0].v[0].source;
    }
}

static void list_json(struct jw *w, struct ttoken *t, CK_RV rv, CK_ULONG dev,
                      struct tkeys *k, struct tskeys *sk)
{
    const char *backend, *source;
    struct tversion *cur;
    char text[128];
    size_t i, j;

    token_source(t, k, &backend, &source);
    jw_begin_object(w);
    jw_kv_string(w, "token", t->label);
    jw_kv_int(w, "slot", (long long)t->slot);
    jw_kv_string(w, "model", t->model);
    jw_kv_string(w, "backend", backend);
    jw_kv_string(w, "source", source);
    jw_kv_bool(w, "login_required", (t->info.flags & CKF_LOGIN_REQUIRED) != 0);
    jw_kv_bool(w, "logged_in", t->logged_in);
    jw_key(w, "error");
    if (rv == CKR_OK && (t->login_rv == CKR_OK || t->pin_missing)) {
        jw_null(w);
    } else {
        CK_RV e = rv != CKR_OK ? rv : t->login_rv;
        jw_begin_object(w);
        jw_kv_string(w, "ckr", trv_name(e));
        jw_kv_int(w, "device_error", (long long)dev);
        jw_kv_string(w, "message", tool_rv_text(t, e, dev, text, sizeof(text)));
        jw_end_object(w);
    }
    jw_key(w, "keys");
    jw_begin_array(w);
    for (i = 0; i < k->n; i++) {
        struct tkey *key = &k->k[i];
        bool any = false;
        for (j = 0; j < key->n; j++)
            any |= key->v[j].matched;
        if (!any)
            continue;
        cur = tkey_current(key);
        jw_begin_object(w);
        jw_kv_string(w, "key", key->name);
        jw_kv_string(w, "backend", key->v[0].backend);
        jw_kv_string(w, "source", key->v[0].source);
        jw_kv_string(w, "current_version", cur ? cur->version : NULL);
        jw_key(w, "versions");
        jw_begin_array(w);
        for (j = 0; j < key->n; j++)
            tool_version_json(w, &key->v[j]);
        jw_end_array(w);
        jw_end_object(w);
    }
    jw_end_array(w);
    if (sk->n > 0)
        tskeys_json(w, sk, k);
    jw_end_object(w);
}

static int list_text(struct ttoken *t, CK_RV rv, CK_ULONG dev, struct tkeys *k,
                     struct tskeys *sk)
{
    const char *backend, *source, *cells[TOOL_VERSION_COLS];
    char buf[TOOL_VERSION_BUF], text[128];
    struct table *tab;
    size_t i, j, shown = 0;

    token_source(t, k, &backend, &source);
    printf("Token %s (%s, %s%s%s)\n", t->label, t->model, backend,
           source ? ", " : "", source ? source : "");
    if (t->pin_missing)
        printf("  not logged in: private keys may be hidden (give --pin or "
               "--pin-file)\n");
    else if (t->login_rv != CKR_OK)
        printf("  login failed: %s\n",
               tool_rv_text(t, t->login_rv, 0, text, sizeof(text)));
    if (rv != CKR_OK) {
        printf("  listing the keys failed: %s\n",
               tool_rv_text(t, rv, dev, text, sizeof(text)));
        return -1;
    }
    tab = table_new(TOOL_VERSION_COLS, tool_version_headers);
    if (tab == NULL)
        return -1;
    for (i = 0; i < k->n; i++) {
        struct tkey *key = &k->k[i];
        bool any = false;
        for (j = 0; j < key->n; j++)
            any |= key->v[j].matched;
        if (!any)
            continue;
        for (j = 0; j < key->n; j++) {
            tool_version_cells(key, &key->v[j], cells, buf);
            table_add(tab, cells);
            shown++;
        }
    }
    if (shown > 0)
        table_print(tab, stdout, 2);
    else
        printf("  no keys\n");
    table_free(tab);
    tskeys_print(sk, k);
    return 0;
}

int cmd_list(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    struct tsel sel;
    struct ttoken *toks = NULL;
    size_t n = 0, i;
    struct jw w;
    int status = TOOL_OK;

    if (tsel_parse(&sel, argc > 1 ? argv[1] : NULL) < 0)
        return TOOL_USAGE;
    if (ttokens_find(m, &sel, &toks, &n) < 0) {
        tsel_clear(&sel);
        return TOOL_FAILED;
    }
    if (n == 0 && argc > 1) {
        tool_error("no token matches '%s'", argv[1]);
        status = TOOL_FAILED;
    }
    jw_init(&w, stdout);
    if (o->json) {
        jw_begin_object(&w);
        jw_key(&w, "tokens");
        jw_begin_array(&w);
    }
    for (i = 0; i < n; i++) {
        struct tkeys keys = {0};
        struct tskeys sk = {0};
        CK_ULONG dev = 0;
        CK_RV rv = ttoken_open(m, &toks[i], &o->pin);

        if (rv == CKR_OK) {
            rv = tkeys_load(m, &toks[i], &keys);
            if (rv == CKR_OK)
                rv = tkeys_load_named(m, &toks[i], &keys, &sel);
            /* Token secret keys (keyvault's state-dir), when listed. */
            if (rv == CKR_OK && sel.uri == NULL && toks[i].keyvault &&
                tskeys_load(m, &toks[i], &sk) != CKR_OK)
                tskeys_free(&sk);
            if (rv != CKR_OK)
                dev = tmod_device_error(m, toks[i].sess);
        }
        /* A token's name selects the token only; a URI may also name
         * objects, which then select keys. */
        if (sel.uri != NULL) {
            tkeys_select(&keys, &sel);
        } else {
            struct tsel all = {0};
            tkeys_select(&keys, &all);
        }
        /* Without a PIN the public halves are listed: not a failure. */
        if (rv != CKR_OK ||
            (toks[i].login_rv != CKR_OK && !toks[i].pin_missing))
            status = TOOL_FAILED;
        if (o->json)
            list_json(&w, &toks[i], rv, dev, &keys, &sk);
        else {
            if (i > 0)
                putchar('\n');
            list_text(&toks[i], rv, dev, &keys, &sk);
        }
        tskeys_free(&sk);
        tkeys_free(&keys);
    }
    if (o->json) {
        jw_end_array(&w);
        jw_end_object(&w);
        jw_finish(&w);
    }
    ttokens_free(m, toks, n);
    tsel_clear(&sel);
    return status;
}
