/*
 * The attribute and template policy, one table for every back end (mock,
 * hsm, keyvault). C_CreateObject, C_GenerateKey and C_UnwrapKey check a
 * template here before any provider sees it, whether the key will live
 * in this module or in the back end; C_GetAttributeValue and
 * C_SetAttributeValue ask the same table. docs/attributes.md describes
 * it.
 *
 * Each row cites the footnotes of PKCS#11 2.40 (base specification,
 * section 4.1, table 10, "Common footnotes for object attribute tables") that
 * the specification's attribute tables give it: table 15 (4.2, common
 * object), 17 (4.4, storage), 25 (4.7, common key), 27 (4.9, secret key)
 * and, for CKA_VALUE and CKA_VALUE_LEN, the AES and generic secret key
 * tables of the current mechanisms specification (2.40 2.8, 2.39); the
 * RSA private key table (2.1.3) for the private key rows.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "attrpolicy.h"
#include "module.h"

/* Footnote n of table 10, as a flag. */
#define FN(n)            (1u << ((n)-1))
#define FN_CREATE_REQ    FN(1)  /* must be given to C_CreateObject */
#define FN_CREATE_NO     FN(2)  /* must not be given to C_CreateObject */
#define FN_GENERATE_REQ  FN(3)  /* must be given to C_GenerateKey */
#define FN_GENERATE_NO   FN(4)  /* must not be given to C_GenerateKey */
#define FN_UNWRAP_REQ    FN(5)  /* must be given to C_UnwrapKey */
#define FN_UNWRAP_NO     FN(6)  /* must not be given to C_UnwrapKey */
#define FN_SENSITIVE     FN(7)  /* not revealed if sensitive/unextractable */
#define FN_SETTABLE      FN(8)  /* C_SetAttributeValue may change it */
#define FN_TOKEN_DEFAULT FN(9)  /* default is token-specific */
#define FN_SO_TRUE       FN(10) /* only the SO sets it to CK_TRUE */
#define FN_ONLY_TO_TRUE  FN(11) /* cannot change once CK_TRUE */
#define FN_ONLY_TO_FALSE FN(12) /* cannot change once CK_FALSE */
/* All three "must not be given": a read-only attribute the token sets. */
#define FN_READ_ONLY (FN_CREATE_NO | FN_GENERATE_NO | FN_UNWRAP_NO)

/* cmkp11's own flags, where it departs from or adds to the footnotes. */
#define AP_DOWN      0x1u /* default also given to a back end's own keys */
#define AP_UNWRAP_OK 0x2u /* accepted by C_UnwrapKey despite footnote 6 */
#define AP_COMPUTED  0x4u /* set from other attributes, not a default */

enum ap_kind { K_BOOL, K_ULONG, K_BYTES, K_DATE };
enum ap_default { D_NONE, D_FALSE, D_TRUE, D_EMPTY };

struct ap_rule {
    CK_OBJECT_CLASS cls;
    CK_ATTRIBUTE_TYPE type;
    enum ap_kind kind;
    unsigned fn;    /* the specification's footnotes, FN(n) */
    unsigned flags; /* AP_* */
    enum ap_default dflt;
};

#define SK CKO_SECRET_KEY
#define PK CKO_PRIVATE_KEY

static const struct ap_rule rules[] = {
    /* Common object (table 15). */
    {SK, CKA_CLASS, K_ULONG, FN(1), AP_COMPUTED, D_NONE},
    /* Storage (table 17). CKA_TOKEN true only where the back end keeps
     * token secret keys (attrpolicy_secret(), PROVIDER_TOKEN_SECRET_KEYS). */
    {SK, CKA_TOKEN, K_BOOL, 0, 0, D_FALSE},
    {SK, CKA_PRIVATE, K_BOOL, 0, 0, D_FALSE},
    {SK, CKA_MODIFIABLE, K_BOOL, 0, 0, D_TRUE},
    {SK, CKA_LABEL, K_BYTES, FN(8), 0, D_EMPTY},
    {SK, CKA_COPYABLE, K_BOOL, 0, 0, D_FALSE},
    {SK, CKA_DESTROYABLE, K_BOOL, 0, 0, D_TRUE},
    /* Common key (table 25). Footnote 5: C_UnwrapKey needs CKA_KEY_TYPE;
     * RSA OAEP and PKCS #1 v1.5 unwrap imply no key type, so a template
     * without it is CKR_TEMPLATE_INCOMPLETE. */
    {SK, CKA_KEY_TYPE, K_ULONG, FN(1) | FN(5), AP_COMPUTED, D_NONE},
    {SK, CKA_ID, K_BYTES, FN(8), 0, D_EMPTY},
    {SK, CKA_START_DATE, K_DATE, FN(8), 0, D_EMPTY},
    {SK, CKA_END_DATE, K_DATE, FN(8), 0, D_EMPTY},
    /* No C_DeriveKey here: kept false and read-only. */
    {SK, CKA_DERIVE, K_BOOL, FN(8), 0, D_FALSE},
    {SK, CKA_LOCAL, K_BOOL, FN(2) | FN(4) | FN(6), AP_COMPUTED, D_NONE},
    {SK, CKA_KEY_GEN_MECHANISM, K_ULONG, FN(2) | FN(4) | FN(6), AP_COMPUTED,
     D_NONE},
    {SK, CKA_ALLOWED_MECHANISMS, K_BYTES, 0, 0, D_NONE},
    /* Secret key (table 27). CKA_SENSITIVE false is the specification's
     * default; CKA_EXTRACTABLE's is token-specific, false is SoftHSM's
     * choice and the safe one. */
    {SK, CKA_SENSITIVE, K_BOOL, FN(8) | FN(11), AP_DOWN, D_FALSE},
    {SK, CKA_ENCRYPT, K_BOOL, FN(8) | FN(9), 0, D_TRUE},
    {SK, CKA_DECRYPT, K_BOOL, FN(8) | FN(9), 0, D_TRUE},
    /* Lower tokens default these to true (SoftHSM): given down, so that
     * a generic secret signs (HMAC) on every back end only when asked. */
    {SK, CKA_SIGN, K_BOOL, FN(8) | FN(9), AP_DOWN, D_FALSE},
    {SK, CKA_VERIFY, K_BOOL, FN(8) | FN(9), AP_DOWN, D_FALSE},
    {SK, CKA_WRAP, K_BOOL, FN(8) | FN(9), 0, D_TRUE},
    {SK, CKA_UNWRAP, K_BOOL, FN(8) | FN(9), 0, D_TRUE},
    {SK, CKA_EXTRACTABLE, K_BOOL, FN(8) | FN(9) | FN(12), AP_DOWN, D_FALSE},
    {SK, CKA_ALWAYS_SENSITIVE, K_BOOL, FN(2) | FN(4) | FN(6), AP_COMPUTED,
     D_NONE},
    {SK, CKA_NEVER_EXTRACTABLE, K_BOOL, FN(2) | FN(4) | FN(6), AP_COMPUTED,
     D_NONE},
    {SK, CKA_WRAP_WITH_TRUSTED, K_BOOL, FN(11), 0, D_FALSE},
    {SK, CKA_TRUSTED, K_BOOL, FN(10), 0, D_FALSE},
    /* AES and generic secret keys (mechanisms 2.8, 2.39). CKA_VALUE_LEN
     * is accepted on unwrap as the length the key must have (and the
     * implicit-rejection unwrap needs it), as SoftHSM accepts it. */
    {SK, CKA_VALUE, K_BYTES, FN(1) | FN(4) | FN(6) | FN(7), 0, D_NONE},
    {SK, CKA_VALUE_LEN, K_ULONG, FN(2) | FN(3) | FN(6),
     AP_UNWRAP_OK | AP_COMPUTED, D_NONE},
    /* RSA private key (mechanisms 2.1.3): never leaves the back end. */
    {PK, CKA_VALUE, K_BYTES, FN(1) | FN(4) | FN(6) | FN(7), 0, D_NONE},
    {PK, CKA_PRIVATE_EXPONENT, K_BYTES, FN(1) | FN(4) | FN(6) | FN(7), 0,
     D_NONE},
    {PK, CKA_PRIME_1, K_BYTES, FN(4) | FN(6) | FN(7), 0, D_NONE},
    {PK, CKA_PRIME_2, K_BYTES, FN(4) | FN(6) | FN(7), 0, D_NONE},
    {PK, CKA_EXPONENT_1, K_BYTES, FN(4) | FN(6) | FN(7), 0, D_NONE},
    {PK, CKA_EXPONENT_2, K_BYTES, FN(4) | FN(6) | FN(7), 0, D_NONE},
    {PK, CKA_COEFFICIENT, K_BYTES, FN(4) | FN(6) | FN(7), 0, D_NONE},
};

/* The key types cmkp11 makes, and the lengths of their values (AES:
 * FIPS 197; generic secrets: up to a 4096-bit HMAC key). */
static const struct {
    CK_KEY_TYPE kt;
    CK_ULONG min, max, step;
} key_types[] = {
    {CKK_AES, 16, 32, 8},
    {CKK_GENERIC_SECRET, 1, 512, 1},
};

static const struct ap_rule *rule(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type)
{
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(rules); i++)
        if (rules[i].cls == cls && rules[i].type == type)
            return &rules[i];
    return NULL;
}

CK_RV attrpolicy_template(const CK_ATTRIBUTE *tmpl, CK_ULONG n, bool so)
{
    CK_BBOOL trusted = CK_FALSE;

    /* 4.1.1: conflicting values; the same value twice counts once. */
    if (tmpl_conflicting(tmpl, n))
        return CKR_TEMPLATE_INCONSISTENT;
    /* Footnote 10 on CKA_TRUSTED; SoftHSM's code for it. */
    if (tmpl_find_bool(tmpl, n, CKA_TRUSTED, &trusted) == 1 && trusted && !so)
        return CKR_ATTRIBUTE_READ_ONLY;
    return CKR_OK;
}

static CK_RV value_check(const struct ap_rule *r, const CK_ATTRIBUTE *at)
{
    if (at->pValue == NULL && at->ulValueLen != 0)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    switch (r->kind) {
    case K_BOOL:
        return at->ulValueLen == sizeof(CK_BBOOL) ? CKR_OK
                                                  : CKR_ATTRIBUTE_VALUE_INVALID;
    case K_ULONG:
        return at->ulValueLen == sizeof(CK_ULONG) ? CKR_OK
                                                  : CKR_ATTRIBUTE_VALUE_INVALID;
    case K_DATE:
        return at->ulValueLen == 0 || at->ulValueLen == sizeof(CK_DATE)
                   ? CKR_OK
                   : CKR_ATTRIBUTE_VALUE_INVALID;
    default:
        return CKR_OK;
    }
}

/* Footnotes 2, 4, 6: given to a call that must not get it. */
static CK_RV op_check(const struct ap_rule *r, enum ap_op op)
{
    static const unsigned no[] = {FN_CREATE_NO, FN_GENERATE_NO, FN_UNWRAP_NO};

    if ((r->fn & FN_READ_ONLY) == FN_READ_ONLY)
        return CKR_ATTRIBUTE_READ_ONLY; /* 4.1.1: a read-only attribute */
    if (op == AP_UNWRAP && (r->flags & AP_UNWRAP_OK))
        return CKR_OK;
    return (r->fn & no[op]) ? CKR_TEMPLATE_INCONSISTENT : CKR_OK;
}

/* Footnotes 1, 3, 5: left out of a call that needs it. kt is the key type
 * the mechanism implies (0: none), which stands for a CKA_KEY_TYPE the
 * template leaves out: C_GenerateKey's mechanism names one; the RSA
 * unwrap mechanisms name none, so footnote 5 holds for them. */
static CK_RV required_check(const CK_ATTRIBUTE *tmpl, CK_ULONG n, enum ap_op op,
                            CK_KEY_TYPE kt)
{
    static const unsigned req[] = {FN_CREATE_REQ, FN_GENERATE_REQ,
                                   FN_UNWRAP_REQ};
    const CK_ATTRIBUTE *at;
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(rules); i++) {
        if (rules[i].cls != SK || !(rules[i].fn & req[op]))
            continue;
        if (rules[i].type == CKA_KEY_TYPE && kt != 0)
            continue;
        at = tmpl_find(tmpl, n, rules[i].type);
        if (at == NULL || at->ulValueLen == 0)
            return CKR_TEMPLATE_INCOMPLETE;
        /* A length of zero asks for nothing (C_GenerateKey). */
        if (rules[i].type == CKA_VALUE_LEN && *(CK_ULONG *)at->pValue == 0)
            return CKR_TEMPLATE_INCOMPLETE;
    }
    return CKR_OK;
}

CK_RV attrpolicy_length(CK_KEY_TYPE kt, CK_ULONG len)
{
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(key_types); i++) {
        if (key_types[i].kt != kt)
            continue;
        if (len == 0) /* not known yet (unwrap) */
            return CKR_OK;
        if (len < key_types[i].min || len > key_types[i].max ||
            (len - key_types[i].min) % key_types[i].step != 0)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        return CKR_OK;
    }
    return CKR_TEMPLATE_INCONSISTENT; /* a key type cmkp11 does not make */
}

CK_RV attrpolicy_secret(enum ap_op op, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                        bool token_keys, CK_KEY_TYPE *kt, CK_ULONG *value_len)
{
    const struct ap_rule *r;
    const CK_ATTRIBUTE *val;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE tkt;
    CK_ULONG i, vlen;
    CK_BBOOL token;
    CK_RV rv;

    /* The class decides the rows: only secret keys are made here. */
    if (tmpl_find_ulong(tmpl, n, CKA_CLASS, &cls) == 1 && cls != SK)
        return CKR_TEMPLATE_INCONSISTENT;
    for (i = 0; i < n; i++) {
        r = rule(SK, tmpl[i].type);
        if (r == NULL)
            return CKR_ATTRIBUTE_TYPE_INVALID;
        rv = value_check(r, &tmpl[i]);
        if (rv == CKR_OK)
            rv = op_check(r, op);
        if (rv != CKR_OK)
            return rv;
    }
    rv = required_check(tmpl, n, op, *kt);
    if (rv != CKR_OK)
        return rv;
    /* Session objects only, unless the back end keeps token keys. */
    if (!token_keys && tmpl_find_bool(tmpl, n, CKA_TOKEN, &token) == 1 && token)
        return CKR_TEMPLATE_INCONSISTENT;
    /* Given, or implied by the mechanism (required_check saw to it). */
    if (tmpl_find_ulong(tmpl, n, CKA_KEY_TYPE, &tkt) == 1) {
        if (*kt != 0 && *kt != tkt)
            return CKR_TEMPLATE_INCONSISTENT;
        *kt = tkt;
    }
    val = tmpl_find(tmpl, n, CKA_VALUE);
    if (val != NULL)
        *value_len = val->ulValueLen;
    if (tmpl_find_ulong(tmpl, n, CKA_VALUE_LEN, &vlen) == 1) {
        if (*value_len != 0 && *value_len != vlen)
            return CKR_TEMPLATE_INCONSISTENT;
        *value_len = vlen;
    }
    return attrpolicy_length(*kt, *value_len);
}

CK_RV attrpolicy_with_defaults(const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                               CK_ATTRIBUTE **out, CK_ULONG *nout)
{
    static const CK_BBOOL bools[] = {CK_FALSE, CK_TRUE};
    CK_ULONG i, m = n;

    *out = (CK_ATTRIBUTE *)tmpl;
    *nout = n;
    for (i = 0; i < CMK_ARRAY_SIZE(rules); i++)
        if ((rules[i].flags & AP_DOWN) &&
            tmpl_find(tmpl, n, rules[i].type) == NULL)
            m++;
    if (m == n)
        return CKR_OK;
    *out = calloc(m, sizeof(**out));
    if (*out == NULL)
        return CKR_HOST_MEMORY;
    if (n > 0)
        memcpy(*out, tmpl, n * sizeof(*tmpl));
    for (i = 0; i < CMK_ARRAY_SIZE(rules); i++) {
        if (!(rules[i].flags & AP_DOWN) ||
            tmpl_find(tmpl, n, rules[i].type) != NULL)
            continue;
        /* AP_DOWN rows are booleans with a default. */
        (*out)[*nout].type = rules[i].type;
        (*out)[*nout].pValue = (void *)&bools[rules[i].dflt == D_TRUE];
        (*out)[*nout].ulValueLen = sizeof(CK_BBOOL);
        (*nout)++;
    }
    return CKR_OK;
}

void attrpolicy_free_defaults(const CK_ATTRIBUTE *tmpl, CK_ATTRIBUTE *out)
{
    if (out != tmpl)
        free(out);
}

int attrpolicy_secret_defaults(struct attrs *a)
{
    size_t i;
    int r = 0;

    for (i = 0; i < CMK_ARRAY_SIZE(rules); i++) {
        if (rules[i].cls != SK)
            continue;
        switch (rules[i].dflt) {
        case D_FALSE:
        case D_TRUE:
            r |= attrs_set_bool(a, rules[i].type, rules[i].dflt == D_TRUE);
            break;
        case D_EMPTY:
            r |= attrs_set(a, rules[i].type, NULL, 0);
            break;
        default:
            break;
        }
    }
    return r;
}

CK_ULONG attrpolicy_secret_defaults_count(void)
{
    size_t i;
    CK_ULONG n = 0;

    for (i = 0; i < CMK_ARRAY_SIZE(rules); i++)
        if (rules[i].cls == SK && rules[i].dflt != D_NONE)
            n++;
    return n;
}

int attrpolicy_listed_defaults(struct attrs *a, bool token_object)
{
    /* What a back end's listing leaves out: its objects are not to be
     * changed, copied or (token objects) destroyed through this module. */
    static const struct {
        CK_ATTRIBUTE_TYPE type;
        int value; /* 0, 1, or -1: true for a session object */
    } listed[] = {
        {CKA_PRIVATE, 0},
        {CKA_MODIFIABLE, 0},
        {CKA_COPYABLE, 0},
        {CKA_DESTROYABLE, -1},
    };
    size_t i;
    bool v;

    if (attrs_find(a, CKA_TOKEN) == NULL &&
        attrs_set_bool(a, CKA_TOKEN, token_object))
        return -1;
    if (attrs_find(a, CKA_LABEL) == NULL && attrs_set(a, CKA_LABEL, "", 0))
        return -1;
    for (i = 0; i < CMK_ARRAY_SIZE(listed); i++) {
        v = listed[i].value < 0 ? !token_object : listed[i].value != 0;
        if (attrs_find(a, listed[i].type) == NULL &&
            attrs_set_bool(a, listed[i].type, v))
            return -1;
    }
    return 0;
}

bool attrpolicy_sensitive(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type)
{
    const struct ap_rule *r = rule(cls, type);

    return r != NULL && (r->fn & FN_SENSITIVE);
}

CK_RV attrpolicy_set(CK_OBJECT_CLASS cls, const struct attrs *a,
                     const CK_ATTRIBUTE *at)
{
    const struct ap_rule *r = rule(cls, at->type);
    CK_RV rv;
    bool v;

    if (r == NULL)
        return attrs_find(a, at->type) ? CKR_ATTRIBUTE_READ_ONLY
                                       : CKR_ATTRIBUTE_TYPE_INVALID;
    /* Footnote 8, and 11 or 12 (changed one way only), except CKA_DERIVE:
     * no key derives here. A key's value never changes after creation. */
    if (!(r->fn & (FN_SETTABLE | FN_ONLY_TO_TRUE | FN_ONLY_TO_FALSE)) ||
        at->type == CKA_DERIVE)
        return CKR_ATTRIBUTE_READ_ONLY;
    rv = value_check(r, at);
    if (rv != CKR_OK || r->kind != K_BOOL)
        return rv;
    v = *(const CK_BBOOL *)at->pValue != CK_FALSE;
    /* Footnotes 11 and 12: read-only once true, once false. */
    if ((r->fn & FN_ONLY_TO_TRUE) && !v && attrs_get_bool(a, at->type, false))
        return CKR_ATTRIBUTE_READ_ONLY;
    if ((r->fn & FN_ONLY_TO_FALSE) && v && !attrs_get_bool(a, at->type, false))
        return CKR_ATTRIBUTE_READ_ONLY;
    return CKR_OK;
}

/*
 * The attributes of objects the back end holds that C_SetAttributeValue
 * hands to it, and the kind of value each takes (docs/vendor.md).
 */
static const struct {
    CK_OBJECT_CLASS cls; /* ~0UL: any class */
    CK_ATTRIBUTE_TYPE type;
    enum ap_kind kind;
} provider_settable[] = {
    /* A key version enabled or disabled (retire, and its undoing). */
    {CKO_PRIVATE_KEY, CKA_CMK_ENABLED, K_BOOL},
    /* The key's rotation policy, as text (docs/vendor.md). */
    {CKO_PRIVATE_KEY, CKA_CMK_ROTATION_POLICY, K_BYTES},
    /* A token secret key rewrapped under a version of its wrapping key. */
    {CKO_SECRET_KEY, CKA_CMK_WRAP_VERSION, K_BYTES},
};

CK_RV attrpolicy_provider_set(CK_OBJECT_CLASS cls, const CK_ATTRIBUTE *at)
{
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(provider_settable); i++) {
        if (provider_settable[i].type != at->type ||
            (provider_settable[i].cls != ~0UL &&
             provider_settable[i].cls != cls))
            continue;
        if (at->pValue == NULL && at->ulValueLen > 0)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        if (provider_settable[i].kind == K_BOOL &&
            at->ulValueLen != sizeof(CK_BBOOL))
            return CKR_ATTRIBUTE_VALUE_INVALID;
        return CKR_OK;
    }
    return CKR_ACTION_PROHIBITED;
}
