/*
 * A key's rotation policy on an hsm token (CKA_CMK_ROTATION_POLICY,
 * docs/hsm.md "Rotation policies"). No service rotates these keys: cmkp11
 * keeps the policy, and `cmkp11-tool rotate --if-due` acts on it.
 *
 * The policy is a data object on the lower token, so that it travels with
 * the token (a copy or backup of the token, another host using it):
 *   CKA_CLASS CKO_DATA, CKA_TOKEN and CKA_PRIVATE true,
 *   CKA_APPLICATION "cmkp11 rotation-policy", CKA_LABEL the key's name,
 *   CKA_VALUE the policy's text (common/rotpolicy.h).
 * The listing scans key classes only, so the object is never shown as a
 * token object; it is private, so it is read and written after C_Login.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "debug.h"
#include "hsm.h"
#include "rotpolicy.h"

#define POLICY_APP "cmkp11 rotation-policy"

static char *ref_name(struct hsm_token *ht, void *ref)
{
    char *name = NULL;

    if (ref == NULL || *(int *)ref != HSM_REF_VERSION)
        return NULL;
    pthread_mutex_lock(&ht->lock);
    if (((struct hsm_ver *)ref)->name != NULL)
        name = strdup(((struct hsm_ver *)ref)->name);
    pthread_mutex_unlock(&ht->lock);
    return name;
}

/* The policy object of key name: *h 0 when there is none. */
static CK_RV find_policy(struct hsm_token *ht, CK_SESSION_HANDLE s,
                         const char *name, CK_OBJECT_HANDLE *h)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_APPLICATION, (void *)POLICY_APP, strlen(POLICY_APP)},
        {CKA_LABEL, (void *)name, strlen(name)},
    };
    CK_ULONG n = 0;
    CK_RV rv, rv2;

    *h = 0;
    rv = LOWER(ht, C_FindObjectsInit, s, tmpl, CMK_ARRAY_SIZE(tmpl));
    if (rv != CKR_OK)
        return rv;
    rv = LOWER(ht, C_FindObjects, s, h, 1, &n);
    rv2 = LOWER(ht, C_FindObjectsFinal, s);
    if (rv == CKR_OK && n == 0)
        *h = 0;
    return rv != CKR_OK ? rv : rv2;
}

CK_RV hsm_get_attribute(struct pcall *c, void *ref, CK_ATTRIBUTE_TYPE type,
                        CK_BYTE **out, CK_ULONG *len)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_OBJECT_HANDLE h;
    CK_ULONG n = 0;
    char *name;
    CK_RV rv;

    if (type != CKA_CMK_ROTATION_POLICY)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    if ((name = ref_name(ht, ref)) == NULL)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    rv = find_policy(ht, s, name, &h);
    free(name);
    if (rv == CKR_OK && h != 0) {
        void *v = hsm_get_attr(ht, s, h, CKA_VALUE, &n);
        if (v == NULL)
            return hsm_mapped(c, CKR_DEVICE_ERROR);
        *out = v;
        *len = n;
        return CKR_OK;
    }
    if (rv != CKR_OK)
        return hsm_mapped(c, rv);
    /* No policy: an empty value. */
    if ((*out = calloc(1, 1)) == NULL)
        return CKR_HOST_MEMORY;
    *len = 0;
    return CKR_OK;
}

CK_RV hsm_set_rotation_policy(struct pcall *c, void *ref,
                              const CK_ATTRIBUTE *at)
{
    struct hsm_token *ht = c->tok;
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    struct rotpolicy p;
    CK_OBJECT_HANDLE h;
    char why[256], text[4 * (ROTPOLICY_DUR_MAX + 24)], *name;
    CK_RV rv;

    if ((name = ref_name(ht, ref)) == NULL)
        return CKR_ATTRIBUTE_READ_ONLY;
    if (rotpolicy_parse(at->pValue, at->ulValueLen, &p, why, sizeof(why)) < 0 ||
        rotpolicy_check(&p, why, sizeof(why)) < 0) {
        cmk_error("key %s: rotation policy refused: %s", name, why);
        free(name);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    rotpolicy_format(&p, text, sizeof(text));
    rv = find_policy(ht, s, name, &h);
    if (rv == CKR_OK && h != 0) {
        /* Replaced, not edited: a lower token may refuse to change
         * CKA_VALUE of a data object. */
        rv = LOWER(ht, C_DestroyObject, s, h);
    }
    if (rv == CKR_OK && text[0] != '\0') {
        CK_ATTRIBUTE tmpl[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_APPLICATION, (void *)POLICY_APP, strlen(POLICY_APP)},
            {CKA_LABEL, name, strlen(name)},
            {CKA_VALUE, text, strlen(text)},
        };
        rv = LOWER(ht, C_CreateObject, s, tmpl, CMK_ARRAY_SIZE(tmpl), &h);
    }
    if (rv == CKR_OK)
        cmk_info("token %s: key %s has the rotation policy '%s'", ht->name,
                 name, text);
    free(name);
    return hsm_mapped(c, rv);
}
