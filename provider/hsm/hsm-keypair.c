/*
 * The hsm back end: a new key pair, made the current version of its key.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    const CK_ATTRIBUTE *la = tmpl_find(privt, npriv, CKA_LABEL);
    CK_BYTE id[8], exp[] = {0x01, 0x00, 0x01};
    CK_ULONG bits = 0;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    char name[256], tmp_label[300], old_label[300], idhex[20];
    struct hsm_ver *cur = NULL, *v;
    CK_OBJECT_HANDLE hpub = 0, hpriv = 0, old_priv = 0, old_pub = 0;
    struct pobj *objs = NULL;
    CK_ULONG nobjs = 0, i;
    bool complete;
    CK_RV rv;

    if (la == NULL)
        la = tmpl_find(pubt, npub, CKA_LABEL);
    if (la == NULL || la->pValue == NULL || la->ulValueLen == 0 ||
        la->ulValueLen >= sizeof(name))
        snprintf(name, sizeof(name), "key");
    else
        snprintf(name, sizeof(name), "%.*s", (int)la->ulValueLen,
                 (const char *)la->pValue);
    if (strchr(name, '@') != NULL)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (tmpl_find_ulong(pubt, npub, CKA_MODULUS_BITS, &bits) < 0)
        return CKR_ATTRIBUTE_VALUE_INVALID;

    /* Know the current version (for its size, and to relabel it). */
    rv = hsm_list(c, NULL, 0, &objs, &nobjs, &complete);
    if (rv != CKR_OK)
        return rv;
    for (i = 0; i < nobjs; i++)
        pobj_clear(NULL, NULL, &objs[i]);
    free(objs);
    pthread_mutex_lock(&ht->lock);
    for (v = ht->versions; v != NULL; v = v->next)
        if (v->present && v->label && strcmp(v->label, name) == 0)
            cur = v;
    if (cur != NULL) {
        old_priv = cur->priv;
        old_pub = cur->pub;
        hsm_hex(cur->id, cur->id_len, idhex, sizeof(idhex));
        snprintf(old_label, sizeof(old_label), "%s@%s", name, idhex);
    }
    pthread_mutex_unlock(&ht->lock);
    if (bits == 0 && cur != NULL) {
        CK_ULONG nlen = 0;
        void *nm = hsm_get_attr(ht, s, old_pub ? old_pub : old_priv,
                                CKA_MODULUS, &nlen);
        bits = nlen * 8;
        free(nm);
    }
    if (bits == 0)
        bits = 2048;

    if (RAND_bytes(id, sizeof(id)) != 1)
        return CKR_FUNCTION_FAILED;
    hsm_hex(id, sizeof(id), idhex, sizeof(idhex));
    snprintf(tmp_label, sizeof(tmp_label), "%s@%s", name, idhex);
    {
        CK_ATTRIBUTE pub[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &no, sizeof(no)},
            {CKA_LABEL, tmp_label, strlen(tmp_label)},
            {CKA_ID, id, sizeof(id)},
            {CKA_MODULUS_BITS, &bits, sizeof(bits)},
            {CKA_PUBLIC_EXPONENT, exp, sizeof(exp)},
            {CKA_ENCRYPT, &yes, sizeof(yes)},
            {CKA_WRAP, &yes, sizeof(yes)},
            {CKA_VERIFY, &yes, sizeof(yes)},
        };
        CK_ATTRIBUTE priv[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_LABEL, tmp_label, strlen(tmp_label)},
            {CKA_ID, id, sizeof(id)},
            {CKA_SENSITIVE, &yes, sizeof(yes)},
            {CKA_EXTRACTABLE, &no, sizeof(no)},
            {CKA_DECRYPT, &yes, sizeof(yes)},
            {CKA_UNWRAP, &yes, sizeof(yes)},
            {CKA_SIGN, &yes, sizeof(yes)},
        };
        rv = LOWER(ht, C_GenerateKeyPair, s, (CK_MECHANISM *)m, pub,
                   CMK_ARRAY_SIZE(pub), priv, CMK_ARRAY_SIZE(priv), &hpub,
                   &hpriv);
    }
    if (rv != CKR_OK)
        return hsm_mapped(c, rv);
    if (cur != NULL) {
        rv = set_label(ht, s, old_priv, old_label);
        if (rv == CKR_OK)
            rv = set_label(ht, s, old_pub, old_label);
    }
    if (rv == CKR_OK)
        rv = set_label(ht, s, hpriv, name);
    if (rv == CKR_OK)
        rv = set_label(ht, s, hpub, name);
    if (rv != CKR_OK)
        return hsm_mapped(c, rv);

    /* Report the new pair as the listing will show it. */
    rv = hsm_list(c, NULL, 0, &objs, &nobjs, &complete);
    if (rv != CKR_OK)
        return rv;
    rv = CKR_GENERAL_ERROR;
    for (i = 0; i < nobjs; i++) {
        CK_ATTRIBUTE *ida = attrs_find(&objs[i].attrs, CKA_ID);
        CK_OBJECT_CLASS cls = attrs_get_ulong(&objs[i].attrs, CKA_CLASS, ~0UL);
        if (ida != NULL && ida->ulValueLen == sizeof(id) &&
            memcmp(ida->pValue, id, sizeof(id)) == 0) {
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
    if (pub_out->uid != NULL && priv_out->uid != NULL)
        rv = CKR_OK;
    cmk_info("token %s: new key pair %s (version %s)",
             ht->token_label ? ht->token_label : ht->token_uri, name, idhex);
    return rv;
}
