/*
 * Slots and tokens: one per [token NAME] section. Mechanisms are what the
 * provider reports plus what the module adds itself (hash-and-sign forms,
 * digests, and module-held secret keys when the back end keeps none).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "pcall.h"
#include "pkcs1.h"

static void pad(CK_UTF8CHAR *dst, size_t len, const char *src)
{
    size_t n = strlen(src);

    memset(dst, ' ', len);
    memcpy(dst, src, n < len ? n : len);
}

static CK_RV slot_get(CK_SLOT_ID id, struct token **t)
{
    if (id >= g.n_tokens)
        return CKR_SLOT_ID_INVALID;
    *t = &g.tokens[id];
    return CKR_OK;
}

CK_RV token_get(CK_SLOT_ID id, struct token **t)
{
    CK_RV rv = slot_get(id, t);

    if (rv == CKR_OK && (*t)->absent) {
        cmk_warning("token %s is not present: %s", (*t)->name,
                    (*t)->absent_reason ? (*t)->absent_reason : "");
        rv = CKR_TOKEN_NOT_PRESENT;
    }
    return rv;
}

const struct pmech *token_mech(const struct token *t, CK_MECHANISM_TYPE type)
{
    CK_ULONG i;

    for (i = 0; i < t->n_mechs; i++)
        if (t->mechs[i].type == type)
            return &t->mechs[i];
    return NULL;
}

static void add_mech(struct token *t, CK_MECHANISM_TYPE type, CK_ULONG min,
                     CK_ULONG max, CK_FLAGS flags)
{
    CK_ULONG i;

    for (i = 0; i < t->n_mechs; i++) {
        if (t->mechs[i].type == type) {
            t->mechs[i].info.flags |= flags;
            return;
        }
    }
    t->mechs[t->n_mechs].type = type;
    t->mechs[t->n_mechs].info.ulMinKeySize = min;
    t->mechs[t->n_mechs].info.ulMaxKeySize = max;
    t->mechs[t->n_mechs].info.flags = flags;
    t->n_mechs++;
}

static CK_RV build_mechanisms(struct token *t)
{
    static const CK_MECHANISM_TYPE pkcs_hash[] = {
        CKM_SHA1_RSA_PKCS, CKM_SHA224_RSA_PKCS, CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS};
    static const CK_MECHANISM_TYPE pss_hash[] = {
        CKM_SHA1_RSA_PKCS_PSS, CKM_SHA224_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS,
        CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS};
    static const CK_MECHANISM_TYPE digests[] = {
        CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512};
    const struct pmech *pm, *rsa_pkcs, *rsa_pss;
    CK_ULONG n = 0, i;

    pm = provider_mechanisms(t, &n);
    t->mechs = calloc(n + 32, sizeof(*t->mechs));
    if (t->mechs == NULL)
        return CKR_HOST_MEMORY;
    for (i = 0; i < n; i++)
        t->mechs[t->n_mechs++] = pm[i];

    rsa_pkcs = token_mech(t, CKM_RSA_PKCS);
    rsa_pss = token_mech(t, CKM_RSA_PKCS_PSS);
    if (rsa_pkcs && (rsa_pkcs->info.flags & CKF_SIGN)) {
        CK_ULONG lo = rsa_pkcs->info.ulMinKeySize;
        CK_ULONG hi = rsa_pkcs->info.ulMaxKeySize;
        for (i = 0; i < CMK_ARRAY_SIZE(pkcs_hash); i++)
            add_mech(t, pkcs_hash[i], lo, hi, CKF_SIGN | CKF_VERIFY);
    }
    if (rsa_pss && (rsa_pss->info.flags & CKF_SIGN)) {
        CK_ULONG lo = rsa_pss->info.ulMinKeySize;
        CK_ULONG hi = rsa_pss->info.ulMaxKeySize;
        for (i = 0; i < CMK_ARRAY_SIZE(pss_hash); i++)
            add_mech(t, pss_hash[i], lo, hi, CKF_SIGN | CKF_VERIFY);
    }
    if (t->pflags & PROVIDER_LOCAL_PUBLIC) {
        /* Public-key halves of what the back end does with private keys. */
        for (i = 0; i < t->n_mechs; i++) {
            CK_FLAGS f = t->mechs[i].info.flags;
            if (f & CKF_DECRYPT)
                t->mechs[i].info.flags |= CKF_ENCRYPT;
            if (f & CKF_UNWRAP)
                t->mechs[i].info.flags |= CKF_WRAP;
            if (f & CKF_SIGN)
                t->mechs[i].info.flags |= CKF_VERIFY;
        }
    }
    /* rsa-pkcs1-decrypt = refuse: no PKCS#1 v1.5 decryption at all. */
    for (i = 0; i < t->n_mechs; i++)
        if (t->mechs[i].type == CKM_RSA_PKCS && t->pkcs1 == CONFIG_PKCS1_REFUSE)
            t->mechs[i].info.flags &= ~(CKF_DECRYPT | CKF_UNWRAP);
    for (i = 0; i < CMK_ARRAY_SIZE(digests); i++)
        add_mech(t, digests[i], 0, 0, CKF_DIGEST);
    if (!(t->pflags & PROVIDER_OWNS_SECRET_KEYS)) {
        add_mech(t, CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE);
        add_mech(t, CKM_GENERIC_SECRET_KEY_GEN, 1, 512, CKF_GENERATE);
        add_mech(t, CKM_AES_GCM, 16, 32, CKF_ENCRYPT | CKF_DECRYPT);
        add_mech(t, CKM_AES_CBC_PAD, 16, 32,
                 CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP);
        add_mech(t, CKM_AES_KEY_WRAP, 16, 32,
                 CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP);
        add_mech(t, CKM_AES_KEY_WRAP_PAD, 16, 32,
                 CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP);
        /* Generic secrets of 1 to 512 bytes (attrpolicy.c). */
        add_mech(t, CKM_SHA256_HMAC, 1, 512, CKF_SIGN | CKF_VERIFY);
        add_mech(t, CKM_SHA256_HMAC_GENERAL, 1, 512, CKF_SIGN | CKF_VERIFY);
    }
    return CKR_OK;
}

static void token_free_value(void *p)
{
    (void)p; /* objects are owned by g.objects */
}

CK_RV token_setup(struct token *t, const struct config_token *ct)
{
    const struct config_entry *unused;
    const char *backend;
    char err[512] = "";
    CK_ULONG i;
    CK_RV rv;

    memset(t, 0, sizeof(*t));
    backend = config_token_get(ct, "backend");
    if (backend == NULL) {
        cmk_error("%s:%d: [token %s]: backend is missing (hsm or keyvault)",
                  ct->path, ct->line, ct->name);
        return CKR_GENERAL_ERROR;
    }
    for (i = 0; cmk_providers[i] != NULL; i++)
        if (strcmp(cmk_providers[i]->name, backend) == 0)
            t->ops = cmk_providers[i];
    if (t->ops == NULL) {
        cmk_error("%s:%d: backend: unknown back end '%s'", ct->path,
                  config_token_line(ct, "backend"), backend);
        return CKR_GENERAL_ERROR;
    }
    t->name = strdup(ct->name);
    t->by_uid = hmap_new(token_free_value);
    if (t->name == NULL || t->by_uid == NULL)
        return CKR_HOST_MEMORY;
    /* Keys every back end shares. */
    t->unwrap_fallback = true;
    if (config_token_get_bool(ct, "unwrap-fallback", &t->unwrap_fallback, err,
                              sizeof(err)) < 0) {
        cmk_error("%s", err);
        return CKR_GENERAL_ERROR;
    }
    rv = certs_setup(t, ct);
    if (rv != CKR_OK)
        return rv;
    rv = provider_open(t, ct, err, sizeof(err));
    if (rv == CKR_DEVICE_ERROR) {
        /* The back end, not the file, is at fault: like p11-kit with a
         * module that fails, keep the other tokens and show this slot
         * without a token. */
        t->ptok = NULL;
        t->absent = true;
        t->absent_reason = strdup(err[0] ? err : "the back end did not start");
        cmk_error("token %s is not available, the other tokens work: %s",
                  t->name, err[0] ? err : "the back end did not start");
        return t->absent_reason ? CKR_OK : CKR_HOST_MEMORY;
    }
    if (rv != CKR_OK) {
        cmk_error("%s", err[0] ? err : "cannot open the token");
        return rv;
    }
    rv = pkcs1_setup(t, ct);
    unused = config_token_unused(ct);
    if (rv == CKR_OK && unused != NULL) {
        cmk_error("%s:%d: %s: unknown key for a %s token", ct->path,
                  unused->line, unused->key, backend);
        rv = CKR_GENERAL_ERROR;
    }
    if (rv != CKR_OK) {
        provider_close(t, false);
        return CKR_GENERAL_ERROR;
    }
    provider_token_info(t);
    return build_mechanisms(t);
}

void token_teardown(struct token *t, bool in_child)
{
    provider_close(t, in_child);
    certs_teardown(t);
    hmap_free(t->by_uid);
    free(t->mechs);
    free(t->name);
    free(t->absent_reason);
    memset(t, 0, sizeof(*t));
}

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList,
                    CK_ULONG_PTR pulCount)
{
    CK_ULONG i, n = 0;

    BEGIN_CALL(GetSlotList);
    /* With tokenPresent, slots whose back end did not start are left out. */
    for (i = 0; i < g.n_tokens; i++)
        if (!tokenPresent || !g.tokens[i].absent)
            n++;
    if (pulCount == NULL) {
        rv = CKR_ARGUMENTS_BAD;
    } else if (pSlotList == NULL) {
        *pulCount = n;
    } else if (*pulCount < n) {
        *pulCount = n;
        rv = CKR_BUFFER_TOO_SMALL;
    } else {
        n = 0;
        for (i = 0; i < g.n_tokens; i++)
            if (!tokenPresent || !g.tokens[i].absent)
                pSlotList[n++] = g.tokens[i].slot_id;
        *pulCount = n;
    }
    END_CALL;
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    struct token *t;
    char desc[128];

    BEGIN_CALL(GetSlotInfo);
    if (pInfo == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = slot_get(slotID, &t);
    if (rv != CKR_OK)
        goto out;
    memset(pInfo, 0, sizeof(*pInfo));
    snprintf(desc, sizeof(desc), "cmkp11 %s token %s", t->ops->name, t->name);
    pad(pInfo->slotDescription, sizeof(pInfo->slotDescription), desc);
    pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), CMK_MANUFACTURER);
    pInfo->flags = (t->absent ? 0 : CKF_TOKEN_PRESENT) |
                   (t->info.hardware ? CKF_HW_SLOT : 0);
    pInfo->hardwareVersion.major = CMK_VERSION_MAJOR;
    pInfo->hardwareVersion.minor = CMK_VERSION_MINOR;
    pInfo->firmwareVersion = pInfo->hardwareVersion;
    END_CALL;
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    struct token *t;

    BEGIN_CALL(GetTokenInfo);
    if (pInfo == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = token_get(slotID, &t);
    if (rv != CKR_OK)
        goto out;
    memset(pInfo, 0, sizeof(*pInfo));
    pad(pInfo->label, sizeof(pInfo->label), t->name);
    pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), CMK_MANUFACTURER);
    pad(pInfo->model, sizeof(pInfo->model), t->info.model);
    pad(pInfo->serialNumber, sizeof(pInfo->serialNumber), t->info.serial);
    pInfo->flags = CKF_RNG | CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED;
    if (t->info.login_required)
        pInfo->flags |= CKF_LOGIN_REQUIRED;
    pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
    pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
    pthread_mutex_lock(&g.mutex);
    pInfo->ulSessionCount = t->n_sessions;
    pInfo->ulRwSessionCount = t->n_rw_sessions;
    pthread_mutex_unlock(&g.mutex);
    pInfo->ulMaxPinLen = t->info.max_pin ? t->info.max_pin : 256;
    pInfo->ulMinPinLen = t->info.min_pin;
    pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->hardwareVersion.major = CMK_VERSION_MAJOR;
    pInfo->hardwareVersion.minor = CMK_VERSION_MINOR;
    pInfo->firmwareVersion = pInfo->hardwareVersion;
    memset(pInfo->utcTime, ' ', sizeof(pInfo->utcTime));
    END_CALL;
}

CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList,
                         CK_ULONG_PTR pulCount)
{
    struct token *t;
    CK_ULONG i;

    BEGIN_CALL(GetMechanismList);
    if (pulCount == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = token_get(slotID, &t);
    if (rv != CKR_OK)
        goto out;
    if (pList == NULL) {
        *pulCount = t->n_mechs;
    } else if (*pulCount < t->n_mechs) {
        *pulCount = t->n_mechs;
        rv = CKR_BUFFER_TOO_SMALL;
    } else {
        for (i = 0; i < t->n_mechs; i++)
            pList[i] = t->mechs[i].type;
        *pulCount = t->n_mechs;
    }
    END_CALL;
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type,
                         CK_MECHANISM_INFO_PTR pInfo)
{
    const struct pmech *m;
    struct token *t;

    BEGIN_CALL(GetMechanismInfo);
    if (pInfo == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = token_get(slotID, &t);
    if (rv != CKR_OK)
        goto out;
    m = token_mech(t, type);
    if (m == NULL)
        rv = CKR_MECHANISM_INVALID;
    else
        *pInfo = m->info;
    END_CALL;
}

CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                  CK_UTF8CHAR_PTR pLabel)
{
    struct token *t;

    BEGIN_CALL(InitToken);
    if (pLabel == NULL)
        rv = CKR_ARGUMENTS_BAD;
    else
        rv = token_get(slotID, &t);
    /* Tokens are defined by the configuration and the back end. */
    if (rv == CKR_OK)
        rv = CKR_FUNCTION_NOT_SUPPORTED;
    END_CALL;
}

CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot,
                         CK_VOID_PTR pReserved)
{
    BEGIN_CALL(WaitForSlotEvent);
    rv = CKR_FUNCTION_NOT_SUPPORTED;
    END_CALL;
}
