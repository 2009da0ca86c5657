/*
 * Token secret keys (keyvault tokens: docs/keyvault.md, "Token secret
 * keys"): listed by `list`, rewrapped by `rewrap --token TOKEN` under the
 * current version of their wrapping key, through CKA_CMK_WRAP_VERSION
 * (docs/vendor.md).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "out.h"
#include "secret-keys.h"
#include "tool.h"

void tskeys_free(struct tskeys *s)
{
    size_t i;

    for (i = 0; i < s->n; i++) {
        free(s->k[i].label);
        free(s->k[i].id);
        free(s->k[i].cmk);
        free(s->k[i].version);
    }
    free(s->k);
    memset(s, 0, sizeof(*s));
}

CK_RV tskeys_load(struct tmod *m, struct ttoken *t, struct tskeys *out)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_TOKEN, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE h[64];
    CK_ULONG got = 0, i;
    CK_RV rv;

    memset(out, 0, sizeof(*out));
    rv = m->f->C_FindObjectsInit(t->sess, tmpl, 2);
    while (rv == CKR_OK) {
        struct tskey *nk;
        rv = m->f->C_FindObjects(t->sess, h, 64, &got);
        if (rv != CKR_OK || got == 0)
            break;
        nk = realloc(out->k, (out->n + got) * sizeof(*nk));
        if (nk == NULL) {
            rv = CKR_HOST_MEMORY;
            break;
        }
        out->k = nk;
        for (i = 0; i < got; i++) {
            struct tskey *k = &out->k[out->n++];
            unsigned char *id;
            size_t idlen = 0;
            memset(k, 0, sizeof(*k));
            k->h = h[i];
            k->label = tattr_string(m, t->sess, h[i], CKA_LABEL);
            id = tattr_bytes(m, t->sess, h[i], CKA_ID, &idlen);
            k->id = malloc(2 * idlen + 1);
            if (k->id != NULL) {
                size_t j;
                for (j = 0; j < idlen; j++)
                    sprintf(k->id + 2 * j, "%02x", id[j]);
                k->id[2 * idlen] = '\0';
            }
            free(id);
            k->key_type = tattr_ulong(m, t->sess, h[i], CKA_KEY_TYPE, NULL);
            k->len = tattr_ulong(m, t->sess, h[i], CKA_VALUE_LEN, NULL);
            k->cmk = tattr_string(m, t->sess, h[i], CKA_CMK_KEY_NAME);
            k->version = tattr_string(m, t->sess, h[i], CKA_CMK_WRAP_VERSION);
            k->enabled =
                tattr_bool(m, t->sess, h[i], CKA_CMK_ENABLED, &k->state_known);
        }
    }
    if (rv != CKR_OPERATION_NOT_INITIALIZED)
        (void)m->f->C_FindObjectsFinal(t->sess);
    return rv;
}

/* Whether k is wrapped under the current version of its wrapping key. */
static const char *current_of(struct tkeys *keys, const struct tskey *k)
{
    struct tkey *key = k->cmk ? tkeys_find(keys, k->cmk) : NULL;
    struct tversion *cur = key ? tkey_current(key) : NULL;

    return cur ? cur->version : NULL;
}

static const char *const headers[] = {"SECRET KEY", "ID",         "TYPE",
                                      "BITS",       "WRAPPED BY", "VERSION",
                                      "CURRENT",    "STATE"};

void tskeys_print(struct tskeys *s, struct tkeys *keys)
{
    struct table *tab;
    char bits[24];
    size_t i;

    if (s->n == 0)
        return;
    tab = table_new(8, headers);
    if (tab == NULL)
        return;
    for (i = 0; i < s->n; i++) {
        const struct tskey *k = &s->k[i];
        const char *cur = current_of(keys, k);
        const char *cells[8];
        snprintf(bits, sizeof(bits), "%lu", k->len * 8);
        cells[0] = k->label ? k->label : "";
        cells[1] = k->id ? k->id : "";
        cells[2] = k->key_type == CKK_AES ? "AES" : "GENERIC";
        cells[3] = bits;
        cells[4] = k->cmk ? k->cmk : "";
        cells[5] = k->version ? k->version : "";
        cells[6] = cur == NULL                                  ? "unknown"
                   : k->version && strcmp(cur, k->version) == 0 ? "yes"
                                                                : "no";
        cells[7] = !k->state_known ? "unknown"
                   : k->enabled    ? "enabled"
                                   : "disabled";
        table_add(tab, cells);
    }
    printf("  secret keys:\n");
    table_print(tab, stdout, 2);
    table_free(tab);
}

void tskeys_json(struct jw *w, struct tskeys *s, struct tkeys *keys)
{
    size_t i;

    jw_key(w, "secret_keys");
    jw_begin_array(w);
    for (i = 0; i < s->n; i++) {
        const struct tskey *k = &s->k[i];
        const char *cur = current_of(keys, k);
        jw_begin_object(w);
        jw_kv_string(w, "label", k->label);
        jw_kv_string(w, "id", k->id);
        jw_kv_string(w, "key_type", k->key_type == CKK_AES ? "AES" : "GENERIC");
        jw_kv_int(w, "bits", (long long)k->len * 8);
        jw_kv_string(w, "wrapping_key", k->cmk);
        jw_kv_string(w, "wrapping_version", k->version);
        jw_key(w, "current");
        if (cur == NULL)
            jw_null(w);
        else
            jw_bool(w, k->version != NULL && strcmp(cur, k->version) == 0);
        jw_key(w, "enabled");
        if (!k->state_known)
            jw_null(w);
        else
            jw_bool(w, k->enabled);
        jw_end_object(w);
    }
    jw_end_array(w);
}

int secret_keys_rewrap(struct tmod *m, const struct tool_opts *o)
{
    struct tsel sel;
    struct ttoken *toks = NULL;
    struct tkeys keys = {0};
    struct tskeys sk = {0};
    size_t ntok = 0, i, done = 0, skipped = 0, failed = 0;
    char text[128];
    int status = TOOL_FAILED;
    CK_RV rv;

    if (tsel_parse(&sel, o->token) < 0)
        return TOOL_USAGE;
    if (ttokens_find(m, &sel, &toks, &ntok) < 0)
        goto out;
    if (ntok != 1) {
        tool_error(ntok ? "'%s' matches more than one token: name one"
                        : "no token matches '%s'",
                   o->token);
        goto out;
    }
    rv = ttoken_open(m, &toks[0], &o->pin);
    if (rv == CKR_OK && toks[0].login_rv != CKR_OK)
        rv = toks[0].login_rv;
    if (rv == CKR_OK)
        rv = tkeys_load(m, &toks[0], &keys);
    if (rv == CKR_OK)
        rv = tskeys_load(m, &toks[0], &sk);
    if (rv != CKR_OK) {
        tool_error("token %s: %s", toks[0].label,
                   tool_rv_text(&toks[0], rv,
                                tmod_device_error(m, toks[0].sess), text,
                                sizeof(text)));
        goto out;
    }
    for (i = 0; i < sk.n; i++) {
        struct tskey *k = &sk.k[i];
        const char *cur = current_of(&keys, k);
        CK_ATTRIBUTE a = {CKA_CMK_WRAP_VERSION, (void *)cur,
                          cur ? strlen(cur) : 0};
        const char *label = k->label && *k->label ? k->label : k->id;
        if (cur == NULL) {
            tool_error("secret key %s: the current version of %s is not "
                       "visible",
                       label, k->cmk ? k->cmk : "its wrapping key");
            failed++;
            continue;
        }
        if (k->version != NULL && strcmp(cur, k->version) == 0) {
            if (!o->json)
                printf("secret key %s: skipped (under the current version "
                       "%s of %s)\n",
                       label, cur, k->cmk);
            skipped++;
            continue;
        }
        rv = m->f->C_SetAttributeValue(toks[0].sess, k->h, &a, 1);
        if (rv != CKR_OK) {
            tool_error("secret key %s: %s", label,
                       tool_rv_text(&toks[0], rv,
                                    tmod_device_error(m, toks[0].sess), text,
                                    sizeof(text)));
            failed++;
            continue;
        }
        if (!o->json)
            printf("secret key %s: rewrapped under %s version %s (was %s)\n",
                   label, k->cmk, cur, k->version ? k->version : "?");
        done++;
    }
    if (o->json)
        printf("{\"secret_keys\":{\"rewrapped\":%zu,\"skipped\":%zu,"
               "\"failed\":%zu}}\n",
               done, skipped, failed);
    else
        printf("%zu rewrapped, %zu skipped, %zu failed\n", done, skipped,
               failed);
    status = failed ? TOOL_FAILED : TOOL_OK;
out:
    tskeys_free(&sk);
    tkeys_free(&keys);
    ttokens_free(m, toks, ntok);
    tsel_clear(&sel);
    return status;
}
