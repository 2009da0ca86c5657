/*
 * cmkp11-tool rotate TOKEN KEY: a new version of KEY through
 * C_GenerateKeyPair with the key's label (Key Vault "rotate"; on hsm a new
 * pair under the same label with a new CKA_ID), then the old and the new
 * current versions.
 *
 * With --if-due, only when the key's rotation policy says so (cmd-policy.c,
 * rotate_due), on hsm tokens; Key Vault rotates by the policy itself, so
 * there the command says so and does nothing.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "out.h"
#include "tool.h"

static CK_RV generate(struct tmod *m, CK_SESSION_HANDLE s, const char *name)
{
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    /* No CKA_MODULUS_BITS: the new version has the current one's size
     * (Key Vault "rotate"). */
    CK_ATTRIBUTE pub[] = {
        {CKA_LABEL, (void *)name, strlen(name)},
        {CKA_TOKEN, &yes, sizeof(yes)},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_LABEL, (void *)name, strlen(name)},
        {CKA_TOKEN, &yes, sizeof(yes)},
    };
    CK_OBJECT_HANDLE hpub = 0, hpriv = 0;

    return m->f->C_GenerateKeyPair(s, &mech, pub, CMK_ARRAY_SIZE(pub), priv,
                                   CMK_ARRAY_SIZE(priv), &hpub, &hpriv);
}

/* --if-due when nothing is rotated: why, as text or JSON. */
static void print_not_rotated(const struct tool_opts *o, const char *token,
                              const char *key, int due, const char *why)
{
    struct jw w;

    if (o->json) {
        jw_init(&w, stdout);
        jw_begin_object(&w);
        jw_kv_string(&w, "token", token);
        jw_kv_string(&w, "key", key);
        jw_kv_bool(&w, "due", false);
        jw_kv_bool(&w, "rotated", false);
        jw_kv_string(&w, "reason", why);
        jw_end_object(&w);
        jw_finish(&w);
    } else if (due == 0) {
        printf("Token %s, key %s: not rotated: %s\n", token, key, why);
    }
}

static void print_text(const char *token, const char *key,
                       const struct tversion *old, const struct tversion *nv)
{
    const char *cells[TOOL_VERSION_COLS], *headers[TOOL_VERSION_COLS + 1];
    char buf[TOOL_VERSION_BUF];
    struct tkey k = {(char *)key, NULL, 0};
    struct table *tab;
    size_t i;

    headers[0] = "";
    for (i = 0; i < TOOL_VERSION_COLS; i++)
        headers[i + 1] = tool_version_headers[i];
    tab = table_new(TOOL_VERSION_COLS + 1, headers);
    printf("Token %s, key %s: rotated to version %s\n", token, key,
           nv->version ? nv->version : "?");
    if (tab == NULL)
        return;
    {
        const char *row[TOOL_VERSION_COLS + 1];
        const struct tversion *vs[2] = {old, nv};
        const char *names[2] = {"old", "new"};
        for (i = 0; i < 2; i++) {
            if (vs[i] == NULL)
                continue;
            tool_version_cells(&k, vs[i], cells, buf);
            row[0] = names[i];
            memcpy(row + 1, cells, sizeof(cells));
            table_add(tab, row);
        }
    }
    table_print(tab, stdout, 2);
    table_free(tab);
}

int cmd_rotate(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    struct tsel tsel, ksel;
    struct ttoken *toks = NULL, *t;
    struct tkeys keys = {0};
    struct tversion old, *cur, *fresh, *shown_old = NULL;
    struct tkey *key;
    char name[256], text[128], why[512] = "";
    size_t ntok = 0, nkeys, i;
    int status = TOOL_FAILED;
    bool have_old = false;
    struct jw w;
    CK_RV rv;

    memset(&ksel, 0, sizeof(ksel));
    memset(&old, 0, sizeof(old));
    if (tsel_parse(&tsel, argv[1]) < 0)
        return TOOL_USAGE;
    if (tsel_parse(&ksel, argc > 2 ? argv[2] : argv[1]) < 0)
        goto usage;
    if (argc == 2 && (tsel.uri == NULL || !tsel_has_object(&tsel))) {
        tool_error("usage: cmkp11-tool rotate TOKEN KEY (or a pkcs11: URI "
                   "naming both)");
        goto usage;
    }
    if (ttokens_find(m, &tsel, &toks, &ntok) < 0)
        goto out;
    for (i = 0; i < ntok && ksel.uri != NULL; i++)
        if (!tsel_match_token(&ksel, &toks[i].info, toks[i].label))
            toks[i].slot = (CK_SLOT_ID)-1;
    for (i = 0, t = NULL; i < ntok; i++) {
        if (toks[i].slot == (CK_SLOT_ID)-1)
            continue;
        if (t != NULL) {
            tool_error("'%s' matches more than one token: name one", argv[1]);
            goto out;
        }
        t = &toks[i];
    }
    if (t == NULL) {
        tool_error("no token matches '%s'", argv[1]);
        goto out;
    }
    rv = ttoken_open(m, t, &o->pin);
    if (rv == CKR_OK && t->login_rv != CKR_OK)
        rv = t->login_rv;
    if (rv == CKR_OK)
        rv = tkeys_load(m, t, &keys);
    if (rv != CKR_OK) {
        tool_error("token %s: %s%s", t->label,
                   tool_rv_text(t, rv, tmod_device_error(m, t->sess), text,
                                sizeof(text)),
                   t->pin_missing ? ": give --pin or --pin-file" : "");
        goto out;
    }
    nkeys = tkeys_select(&keys, &ksel);
    if (nkeys != 1) {
        tool_error(nkeys == 0 ? "no key matches '%s' on token %s"
                              : "'%s' matches more than one key on token %s",
                   argc > 2 ? argv[2] : argv[1], t->label);
        goto out;
    }
    for (key = NULL, i = 0; i < keys.n; i++)
        if (tkey_selected(&keys.k[i]) != NULL)
            key = &keys.k[i];
    snprintf(name, sizeof(name), "%s", key->name);
    cur = tkey_current(key);
    if (cur != NULL) {
        if (tversion_dup(&old, cur) < 0)
            goto out;
        have_old = true;
        shown_old = &old;
    }
    if (o->if_due) {
        int due;
        if (t->keyvault) {
            snprintf(why, sizeof(why),
                     "Key Vault rotates this key itself as its rotation "
                     "policy says (cmkp11-tool rotation-policy get)");
            due = 0;
        } else {
            due = rotate_due(m, o, t, cur, why, sizeof(why));
        }
        if (due < 0)
            tool_error("key %s on token %s: %s", name, t->label, why);
        if (due <= 0) {
            print_not_rotated(o, t->label, name, due, why);
            status = due < 0 ? TOOL_FAILED : TOOL_OK;
            goto out;
        }
        if (!o->json)
            printf("Token %s, key %s: due: %s\n", t->label, name, why);
    }
    rv = generate(m, t->sess, name);
    if (rv != CKR_OK) {
        tool_error("C_GenerateKeyPair for key %s on token %s: %s", name,
                   t->label,
                   tool_rv_text(t, rv, tmod_device_error(m, t->sess), text,
                                sizeof(text)));
        goto out;
    }
    tkeys_free(&keys);
    rv = tkeys_load(m, t, &keys);
    key = rv == CKR_OK ? tkeys_find(&keys, name) : NULL;
    cur = key ? tkey_current(key) : NULL;
    if (cur == NULL) {
        tool_error("key %s on token %s: the new version is not visible (%s)",
                   name, t->label, trv_name(rv));
        goto out;
    }
    /* The old version as it is now (no longer current), if still there. */
    if (have_old && (fresh = tkey_find_id(key, old.id, old.id_len)) != NULL)
        shown_old = fresh;
    if (o->json) {
        jw_init(&w, stdout);
        jw_begin_object(&w);
        jw_kv_string(&w, "token", t->label);
        jw_kv_string(&w, "key", name);
        if (o->if_due) {
            jw_kv_bool(&w, "due", true);
            jw_kv_bool(&w, "rotated", true);
            jw_kv_string(&w, "reason", why);
        }
        jw_key(&w, "old");
        if (shown_old != NULL)
            tool_version_json(&w, shown_old);
        else
            jw_null(&w);
        jw_key(&w, "new");
        tool_version_json(&w, cur);
        jw_end_object(&w);
        jw_finish(&w);
    } else {
        print_text(t->label, name, shown_old, cur);
    }
    status = TOOL_OK;
out:
    tversion_clear(&old);
    tkeys_free(&keys);
    ttokens_free(m, toks, ntok);
    tsel_clear(&tsel);
    tsel_clear(&ksel);
    return status;
usage:
    tsel_clear(&tsel);
    tsel_clear(&ksel);
    return TOOL_USAGE;
}
