/*
 * The hsm back end: a new key pair, made the current version of its key.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "debug.h"
#include "hsm.h"

static CK_RV set_label(struct hsm_token *ht, CK_SESSION_HANDLE s,
                       CK_OBJECT_HANDLE h, const char *label)
{
    CK_ATTRIBUTE a = {CKA_LABEL, (void *)label, strlen(label)};

    if (h == 0)
        return CKR_OK;
    return LOWER(ht, C_SetAttributeValue, s, h, &a, 1);
}

/* The key's name: the label of the template (private, else public), or
 * "key". A name cannot hold '@', which separates a version's id. */
static CK_RV pair_name(const CK_ATTRIBUTE *pubt, CK_ULONG npub,
                       const CK_ATTRIBUTE *privt, CK_ULONG npriv, char *name,
                       size_t size)
{
    const CK_ATTRIBUTE *la = tmpl_find(privt, npriv, CKA_LABEL);

    if (la == NULL)
        la = tmpl_find(pubt, npub, CKA_LABEL);
    if (la == NULL || la->pValue == NULL || la->ulValueLen == 0 ||
        la->ulValueLen >= size)
        snprintf(name, size, "key");
    else
        snprintf(name, size, "%.*s", (int)la->ulValueLen,
                 (const char *)la->pValue);
    return strchr(name, '@') != NULL ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_OK;
}

/* The current version of a key, to be relabelled NAME@HEXID. */
struct current {
    bool found;
    CK_OBJECT_HANDLE priv, pub;
    char old_label[300];
};

/* Lists the token to know the current version of name (for its size, and
 * to relabel it); *bits, when 0, becomes its size or 2048. */
static CK_RV find_current(struct pcall *c, const char *name,
                          struct current *cur, CK_ULONG *bits)
{
    struct hsm_token *ht = c->tok;
    struct hsm_ver *v, *found = NULL;
    struct pobj *objs = NULL;
    CK_ULONG nobjs = 0, i;
    char idhex[20];
    bool complete;
    CK_RV rv;

    memset(cur, 0, sizeof(*cur));
    rv = hsm_list(c, NULL, 0, &objs, &nobjs, &complete);
    if (rv != CKR_OK)
        return rv;
    for (i = 0; i < nobjs; i++)
        pobj_clear(NULL, NULL, &objs[i]);
    free(objs);
    pthread_mutex_lock(&ht->lock);
    for (v = ht->versions; v != NULL; v = v->next)
        if (v->present && v->label && strcmp(v->label, name) == 0)
            found = v;
    if (found != NULL) {
        cur->found = true;
        cur->priv = found->priv;
        cur->pub = found->pub;
        cmk_hex_n(found->id, found->id_len, idhex, sizeof(idhex));
        snprintf(cur->old_label, sizeof(cur->old_label), "%s@%s", name, idhex);
    }
    pthread_mutex_unlock(&ht->lock);
    if (*bits == 0 && cur->found) {
        CK_ULONG nlen = 0;
        void *nm =
            hsm_get_attr(ht, hsm_lower_session(c),
                         cur->pub ? cur->pub : cur->priv, CKA_MODULUS, &nlen);
        *bits = nlen * 8;
        free(nm);
    }
    if (*bits == 0)
        *bits = 2048;
    return CKR_OK;
}

/* The pair in the lower token, under its temporary label. */
static CK_RV generate_pair(struct pcall *c, const CK_MECHANISM *m,
                           const char *label, CK_BYTE *id, CK_ULONG id_len,
                           CK_ULONG bits, CK_OBJECT_HANDLE *hpub,
                           CK_OBJECT_HANDLE *hpriv)
{
    struct hsm_token *ht = c->tok;
    CK_BYTE exp[] = {0x01, 0x00, 0x01};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_DATE today;
    CK_ATTRIBUTE pub[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, id, id_len},
        {CKA_MODULUS_BITS, &bits, sizeof(bits)},
        {CKA_PUBLIC_EXPONENT, exp, sizeof(exp)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_WRAP, &yes, sizeof(yes)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_START_DATE, &today, sizeof(today)},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, id, id_len},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_DECRYPT, &yes, sizeof(yes)},
        {CKA_UNWRAP, &yes, sizeof(yes)},
        {CKA_SIGN, &yes, sizeof(yes)},
    };
    time_t now = time(NULL);
    struct tm tm;
    char f[40];

    /* The day the version is made, on the public key: PKCS#11 keeps no
     * creation time, and rotation policies count from it (hsm-list.c,
     * start_date). Not on the private key: SoftHSM 2.6 fails to read a
     * date attribute of a private key back (CKR_GENERAL_ERROR). */
    gmtime_r(&now, &tm);
    snprintf(f, sizeof(f), "%04d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday);
    memcpy(today.year, f, 4);
    memcpy(today.month, f + 4, 2);
    memcpy(today.day, f + 6, 2);
    return LOWER(ht, C_GenerateKeyPair, hsm_lower_session(c), (CK_MECHANISM *)m,
                 pub, CMK_ARRAY_SIZE(pub), priv, CMK_ARRAY_SIZE(priv), hpub,
                 hpriv);
}

/* The old current pair becomes NAME@HEXID, then the new one takes NAME. */
static CK_RV relabel(struct pcall *c, const struct current *cur,
                     const char *name, CK_OBJECT_HANDLE hpub,
                     CK_OBJECT_HANDLE hpriv)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_RV rv = CKR_OK;

    if (cur->found) {
        rv = set_label(ht, s, cur->priv, cur->old_label);
        if (rv == CKR_OK)
            rv = set_label(ht, s, cur->pub, cur->old_label);
    }
    if (rv == CKR_OK)
        rv = set_label(ht, s, hpriv, name);
    if (rv == CKR_OK)
        rv = set_label(ht, s, hpub, name);
    return rv;
}

/* The new pair as the listing shows it; *found if both halves are there. */
static CK_RV report_pair(struct pcall *c, const CK_BYTE *id, CK_ULONG id_len,
                         struct pobj *pub_out, struct pobj *priv_out,
                         bool *found)
{
    struct pobj *objs = NULL;
    CK_ULONG nobjs = 0, i;
    bool complete;
    CK_RV rv;

    rv = hsm_list(c, NULL, 0, &objs, &nobjs, &complete);
    if (rv != CKR_OK)
        return rv;
    for (i = 0; i < nobjs; i++) {
        CK_ATTRIBUTE *ida = attrs_find(&objs[i].attrs, CKA_ID);
        CK_OBJECT_CLASS cls = attrs_get_ulong(&objs[i].attrs, CKA_CLASS, ~0UL);
        if (ida != NULL && ida->ulValueLen == id_len &&
            memcmp(ida->pValue, id, id_len) == 0) {
            if (cls == CKO_PUBLIC_KEY) {
                *pub_out = objs[i];
                memset(&objs[i], 0, sizeof(objs[i]));
            } else if (cls == CKO_PRIVATE_KEY) {
                *priv_out = objs[i];
                memset(&objs[i], 0, sizeof(objs[i]));
            }
        }
        pobj_clear(NULL, NULL, &objs[i]);
    }
    free(objs);
    *found = pub_out->uid != NULL && priv_out->uid != NULL;
    return CKR_OK;
}

/*
 * A new key pair. With the label of an existing key it becomes the new
 * current version: made under a temporary label, then the old current
 * pair is relabelled NAME@HEXID, then the new one takes NAME. An
 * interruption leaves every version reachable.
 */
CK_RV hsm_generate_key_pair(struct pcall *c, const CK_MECHANISM *m,
                            const CK_ATTRIBUTE *pubt, CK_ULONG npub,
                            const CK_ATTRIBUTE *privt, CK_ULONG npriv,
                            struct pobj *pub_out, struct pobj *priv_out)
{
    struct hsm_token *ht = c->tok;
    CK_BYTE id[8];
    CK_ULONG bits = 0;
    char name[256], tmp_label[300], idhex[20];
    struct current cur;
    CK_OBJECT_HANDLE hpub = 0, hpriv = 0;
    bool found;
    CK_RV rv;

    rv = pair_name(pubt, npub, privt, npriv, name, sizeof(name));
    if (rv != CKR_OK)
        return rv;
    if (tmpl_find_ulong(pubt, npub, CKA_MODULUS_BITS, &bits) < 0)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    rv = find_current(c, name, &cur, &bits);
    if (rv != CKR_OK)
        return rv;
    if (RAND_bytes(id, sizeof(id)) != 1)
        return CKR_FUNCTION_FAILED;
    cmk_hex_n(id, sizeof(id), idhex, sizeof(idhex));
    snprintf(tmp_label, sizeof(tmp_label), "%s@%s", name, idhex);
    rv = generate_pair(c, m, tmp_label, id, sizeof(id), bits, &hpub, &hpriv);
    if (rv == CKR_OK)
        rv = relabel(c, &cur, name, hpub, hpriv);
    if (rv != CKR_OK)
        return hsm_mapped(c, rv);
    rv = report_pair(c, id, sizeof(id), pub_out, priv_out, &found);
    if (rv != CKR_OK)
        return rv;
    cmk_info("token %s: new key pair %s (version %s)",
             ht->token_label ? ht->token_label : ht->token_uri, name, idhex);
    return found ? CKR_OK : CKR_GENERAL_ERROR;
}
