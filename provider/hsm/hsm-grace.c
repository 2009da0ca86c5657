/*
 * The hsm back end: the lower token's health (an outage is not evidence
 * about a key), the usage flags a public operation is checked against, and
 * the offline-grace that lets them serve through an outage. See
 * docs/hsm.md, "Revocation" and "Outages".
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "provider-util.h"
#include "debug.h"
#include "hsm.h"

#define HSM_OFFLINE_LOG_MS 60000 /* an outage is logged once a minute */

int64_t hsm_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What a lower token answers when it cannot be reached for a while (a
 * network HSM's link, a device reset, a card pulled): an outage, not
 * evidence about a key (docs/hsm.md, "Outages"). */
bool hsm_lower_transient(CK_RV rv)
{
    return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED ||
           rv == CKR_TOKEN_NOT_PRESENT;
}

/* Follows the lower token's health from every lower call's result: the
 * first transient failure starts an outage, which is logged then and once
 * a minute while calls keep failing; the first other answer ends it. Lock
 * free (atomics): it runs inside the fork gate, on every call. */
void hsm_lower_health(struct hsm_token *ht, const char *fn, CK_RV rv)
{
    int64_t since = __atomic_load_n(&ht->offline_since_ms, __ATOMIC_ACQUIRE);
    int64_t now, logged;
    const char *name = ht->name ? ht->name : "";

    if (!hsm_lower_transient(rv)) {
        if (since != 0 &&
            __atomic_compare_exchange_n(&ht->offline_since_ms, &since, 0, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            cmk_warning("token %s: the lower token answers again after "
                        "%lld s; offline-grace ends",
                        name, (long long)(hsm_now_ms() - since) / 1000);
        return;
    }
    now = hsm_now_ms();
    if (now == 0)
        now = 1;
    if (since == 0) {
        if (__atomic_compare_exchange_n(&ht->offline_since_ms, &since, now,
                                        false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&ht->offline_logged_ms, now, __ATOMIC_RELAXED);
            if (ht->grace_ms > 0)
                cmk_warning("token %s: the lower token fails (%s from %s); "
                            "versions whose usage flags were read within "
                            "refresh-interval + offline-grace (%ld s) keep "
                            "serving local encryption, operations in the "
                            "lower token fail",
                            name, cmk_rv_name(rv), fn, ht->grace_ms / 1000);
            else
                cmk_warning("token %s: the lower token fails (%s from %s); "
                            "offline-grace = 0: its keys stop",
                            name, cmk_rv_name(rv), fn);
        }
        return;
    }
    logged = __atomic_load_n(&ht->offline_logged_ms, __ATOMIC_RELAXED);
    if (now - logged >= HSM_OFFLINE_LOG_MS &&
        __atomic_compare_exchange_n(&ht->offline_logged_ms, &logged, now, false,
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        cmk_warning("token %s: the lower token still fails (%s), for %lld s",
                    name, cmk_rv_name(rv), (long long)(now - since) / 1000);
}

/* A listing failed with rv: an outage, for refresh-interval + offline-grace
 * from its start, keeps the objects of the last listing (if there was
 * one). */
bool hsm_outage_keeps_listing(struct hsm_token *ht, CK_RV rv)
{
    int64_t since = __atomic_load_n(&ht->offline_since_ms, __ATOMIC_ACQUIRE);

    return hsm_lower_transient(rv) && ht->grace_ms > 0 &&
           __atomic_load_n(&ht->listed, __ATOMIC_RELAXED) && since != 0 &&
           hsm_now_ms() < since + ht->refresh_ms + ht->grace_ms;
}

/* A failure that says nothing about the key: the input, the output
 * buffer, the mechanism or the template was wrong. */
static bool caller_error(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_WRAPPED_KEY_LEN_RANGE:
    case CKR_BUFFER_TOO_SMALL:
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_TEMPLATE_INCONSISTENT:
        return true;
    default:
        return false;
    }
}

/* The lower token answered an operation with this version (rv). A failure
 * that is not the caller's (caller_error) makes the next public operation
 * read the usage flags again, whatever their age; one other than an outage
 * (the token refused the version) also ends the version's offline-grace:
 * it is evidence, not unreachability. Returns rv. */
CK_RV hsm_usage_after(struct hsm_token *ht, void *ref, CK_RV rv)
{
    struct hsm_ver *v = ref;

    if (caller_error(rv) || v == NULL || v->kind != HSM_REF_VERSION)
        return rv;
    pthread_mutex_lock(&ht->lock);
    v->usage_at = 0;
    v->usage_gen++;
    if (rv != CKR_DEVICE_ERROR && rv != CKR_DEVICE_REMOVED)
        v->usage_ok_at = 0;
    pthread_mutex_unlock(&ht->lock);
    return rv;
}

/*
 * A version disabled (usage flags cleared) or deleted in the lower token
 * stops local wraps and encryptions within refresh-interval, as on a
 * keyvault token: the flags are read from the lower token (a file-store
 * round in SoftHSM, which would cost more than the RSA operation itself)
 * when the copy here is older than refresh-interval, at once after the
 * lower token failed an operation with the version, and at every use with
 * refresh-interval = 0. See docs/hsm.md, "Revocation".
 *
 * When that read fails transiently (lower_transient: an outage, not
 * evidence about the version), the flags last read serve until
 * refresh-interval + offline-grace after that read, and the operation is
 * audited as served offline; then the version stops with the lower
 * token's error, logged once. See docs/hsm.md, "Outages".
 */
/* Reads the usage flags of version v (private half priv) from the lower
 * token into *unw and *dec; through an outage, within the version's grace,
 * the flags last read serve and *offline is set. CKR_OK: the flags are
 * there to check. */
static CK_RV usage_read(struct pcall *c, struct hsm_ver *v,
                        CK_OBJECT_HANDLE priv, unsigned gen, int64_t now,
                        CK_BBOOL *unw, CK_BBOOL *dec, bool *offline)
{
    struct hsm_token *ht = c->tok;
    CK_ATTRIBUTE a[] = {
        {CKA_UNWRAP, unw, sizeof(*unw)},
        {CKA_DECRYPT, dec, sizeof(*dec)},
    };
    int64_t read_at = 0;
    bool stop_log = false;
    char label[160];
    CK_RV rv;

    rv = LOWER(ht, C_GetAttributeValue, hsm_lower_session(c), priv, a, 2);
    pthread_mutex_lock(&ht->lock);
    if (rv != CKR_OK && !hsm_lower_transient(rv)) {
        /* The token answered, refusing (the object gone): evidence,
         * no grace for the version until it reads again. */
        v->usage_at = v->usage_ok_at = 0;
    } else if (rv != CKR_OK) {
        v->usage_at = 0;
        read_at = v->usage_ok_at;
        if (ht->grace_ms > 0 && read_at != 0 && v->usage_priv == priv) {
            if (now < read_at + ht->refresh_ms + ht->grace_ms) {
                *offline = true;
                *unw = v->may_unwrap;
                *dec = v->may_decrypt;
            } else if (!v->grace_over_logged) {
                v->grace_over_logged = stop_log = true;
                /* Labels are replaced under the lock by listings. */
                snprintf(label, sizeof(label), "%s", v->label ? v->label : "?");
            }
        }
    } else if (v->usage_gen == gen) {
        /* Not if a failure came in meanwhile: what was read may be
         * older than it. The time is that of before the read. */
        v->usage_at = v->usage_ok_at = now > 0 ? now : 1;
        v->usage_priv = priv;
        v->may_unwrap = *unw;
        v->may_decrypt = *dec;
        v->grace_over_logged = false;
    }
    pthread_mutex_unlock(&ht->lock);
    if (stop_log)
        cmk_error("token %s: key %s stopped: the lower token has "
                  "failed (%s) past offline-grace (%ld s after "
                  "refresh-interval; its usage flags were last read "
                  "%lld s ago)",
                  ht->name, label, cmk_rv_name(rv), ht->grace_ms / 1000,
                  (long long)(now - read_at) / 1000);
    if (rv == CKR_OBJECT_HANDLE_INVALID)
        return CKR_KEY_HANDLE_INVALID;
    if (rv != CKR_OK && !*offline)
        return hsm_mapped(c, rv);
    return CKR_OK;
}

CK_RV hsm_usage_check(struct pcall *c, void *key, enum usage use)
{
    struct hsm_token *ht = c->tok;
    struct hsm_ver *v = key;
    CK_OBJECT_HANDLE priv;
    CK_BBOOL unw = CK_FALSE, dec = CK_FALSE;
    int64_t now = hsm_now_ms();
    unsigned gen;
    bool fresh, offline = false;
    CK_RV rv;

    audit_note_offline(false);
    if (v == NULL || v->kind != HSM_REF_VERSION)
        return CKR_OK; /* only versions have a private half */
    pthread_mutex_lock(&ht->lock);
    priv = v->priv;
    gen = v->usage_gen;
    fresh = ht->refresh_ms > 0 && v->usage_at != 0 && v->usage_priv == priv &&
            now - v->usage_at < ht->refresh_ms;
    if (fresh) {
        unw = v->may_unwrap;
        dec = v->may_decrypt;
    }
    pthread_mutex_unlock(&ht->lock);
    if (priv == 0)
        return CKR_OK; /* the private half is not visible (no login) */
    if (!fresh) {
        rv = usage_read(c, v, priv, gen, now, &unw, &dec, &offline);
        if (rv != CKR_OK)
            return rv;
    }
    if (!(use == USE_WRAP ? unw : use == USE_ENCRYPT ? dec : (unw || dec)))
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (offline)
        audit_note_offline(true);
    return CKR_OK;
}

CK_RV hsm_check_public(struct pcall *c, void *key, bool wrap)
{
    return hsm_usage_check(c, key, wrap ? USE_WRAP : USE_ENCRYPT);
}

/*
 * CKA_CMK_ENABLED of a version (cmkp11-tool retire; docs/hsm.md, "Retiring
 * a version"). Disabling clears the lower private key's CKA_DECRYPT,
 * CKA_UNWRAP and CKA_SIGN, the flags revocation and listing read (a
 * version is disabled when the first two are false). Which of them were
 * true is recorded first in a data object on the lower token, so that
 * enabling sets back exactly those, and the record travels with the token:
 *   CKA_CLASS CKO_DATA, CKA_TOKEN and CKA_PRIVATE true,
 *   CKA_APPLICATION "cmkp11 disabled-usage",
 *   CKA_LABEL "NAME@HEXID" (the key's name and the pair's CKA_ID, which no
 *   rotation changes, whatever the pair's own label becomes),
 *   CKA_VALUE the flags that were true, "decrypt,unwrap,sign" or fewer.
 * Enabling reads the record, sets those flags and destroys it. A version
 * disabled by other means has no record: each flag then comes from its
 * counterpart on the lower public key (CKA_ENCRYPT, CKA_WRAP, CKA_VERIFY),
 * and a pair whose public key permits neither encryption nor wrapping (or
 * that has none) gets CKA_DECRYPT and CKA_UNWRAP.
 */
#define USAGE_APP "cmkp11 disabled-usage"

static const CK_ATTRIBUTE_TYPE usage_flags[3] = {CKA_DECRYPT, CKA_UNWRAP,
                                                 CKA_SIGN};
static const char *const usage_names[3] = {"decrypt", "unwrap", "sign"};

/* The record of version v: *h 0 when there is none. label gets its label
 * (at least 200 bytes). */
static CK_RV usage_record_find(struct hsm_token *ht, CK_SESSION_HANDLE s,
                               struct hsm_ver *v, char *label, size_t len,
                               CK_OBJECT_HANDLE *h)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    char hex[2 * sizeof(v->id) + 1];
    CK_ULONG n = 0;
    CK_RV rv, rv2;

    pthread_mutex_lock(&ht->lock);
    cmk_hex_n(v->id, v->id_len, hex, sizeof(hex));
    snprintf(label, len, "%s@%s", v->name ? v->name : "", hex);
    pthread_mutex_unlock(&ht->lock);
    {
        CK_ATTRIBUTE tmpl[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_APPLICATION, (void *)USAGE_APP, strlen(USAGE_APP)},
            {CKA_LABEL, label, strlen(label)},
        };
        *h = 0;
        rv = LOWER(ht, C_FindObjectsInit, s, tmpl, CMK_ARRAY_SIZE(tmpl));
        if (rv != CKR_OK)
            return rv;
        rv = LOWER(ht, C_FindObjects, s, h, 1, &n);
        rv2 = LOWER(ht, C_FindObjectsFinal, s);
    }
    if (rv != CKR_OK || n == 0)
        *h = 0;
    return rv != CKR_OK ? rv : rv2;
}

/* Disabling: records the flags now true (f), replacing an older record. */
static CK_RV usage_record_write(struct hsm_token *ht, CK_SESSION_HANDLE s,
                                struct hsm_ver *v, const CK_BBOOL f[3])
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_OBJECT_HANDLE old, h = 0;
    char label[400], value[32] = "";
    size_t i;
    CK_RV rv;

    for (i = 0; i < 3; i++)
        if (f[i])
            snprintf(value + strlen(value), sizeof(value) - strlen(value),
                     "%s%s", value[0] ? "," : "", usage_names[i]);
    rv = usage_record_find(ht, s, v, label, sizeof(label), &old);
    if (rv != CKR_OK)
        return rv;
    {
        CK_ATTRIBUTE tmpl[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_APPLICATION, (void *)USAGE_APP, strlen(USAGE_APP)},
            {CKA_LABEL, label, strlen(label)},
            {CKA_VALUE, value, strlen(value)},
        };
        rv = LOWER(ht, C_CreateObject, s, tmpl, CMK_ARRAY_SIZE(tmpl), &h);
    }
    if (rv == CKR_OK && old != 0)
        (void)LOWER(ht, C_DestroyObject, s, old);
    return rv;
}

/* Enabling: the flags the record holds (*found), or the public key's. */
static CK_RV usage_to_restore(struct hsm_token *ht, CK_SESSION_HANDLE s,
                              struct hsm_ver *v, CK_OBJECT_HANDLE pub,
                              CK_BBOOL f[3], CK_OBJECT_HANDLE *record)
{
    char label[400], value[64];
    CK_ATTRIBUTE va = {CKA_VALUE, value, sizeof(value) - 1};
    size_t i;
    CK_RV rv;

    rv = usage_record_find(ht, s, v, label, sizeof(label), record);
    if (rv != CKR_OK)
        return rv;
    if (*record != 0 &&
        LOWER(ht, C_GetAttributeValue, s, *record, &va, 1) == CKR_OK) {
        value[va.ulValueLen] = '\0';
        for (i = 0; i < 3; i++) {
            char *p = strstr(value, usage_names[i]);
            f[i] = p != NULL ? CK_TRUE : CK_FALSE;
        }
        return CKR_OK;
    }
    *record = 0;
    if (pub != 0) {
        CK_ATTRIBUTE q[] = {
            {CKA_ENCRYPT, &f[0], sizeof(f[0])},
            {CKA_WRAP, &f[1], sizeof(f[1])},
            {CKA_VERIFY, &f[2], sizeof(f[2])},
        };
        rv = LOWER(ht, C_GetAttributeValue, s, pub, q, CMK_ARRAY_SIZE(q));
        if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID)
            return rv;
        for (i = 0; i < CMK_ARRAY_SIZE(q); i++)
            if (q[i].ulValueLen != sizeof(f[i]))
                f[i] = CK_FALSE;
    }
    if (!f[0] && !f[1])
        f[0] = f[1] = CK_TRUE;
    return CKR_OK;
}

CK_RV hsm_set_enabled(struct pcall *c, void *ref, const CK_ATTRIBUTE *at)
{
    struct hsm_token *ht = c->tok;
    struct hsm_ver *v = ref;
    CK_BBOOL f[3] = {CK_FALSE, CK_FALSE, CK_FALSE};
    CK_BBOOL now[3] = {CK_FALSE, CK_FALSE, CK_FALSE};
    CK_ATTRIBUTE a[3];
    CK_SESSION_HANDLE s = hsm_lower_session(c);
    CK_OBJECT_HANDLE priv, pub, record = 0;
    bool on = *(const CK_BBOOL *)at->pValue != CK_FALSE;
    char label[160];
    size_t i;
    CK_RV rv;

    if (v == NULL || v->kind != HSM_REF_VERSION)
        return CKR_ATTRIBUTE_READ_ONLY;
    pthread_mutex_lock(&ht->lock);
    priv = v->priv;
    pub = v->pub;
    pthread_mutex_unlock(&ht->lock);
    if (priv == 0)
        return CKR_OBJECT_HANDLE_INVALID;
    for (i = 0; i < 3; i++) {
        a[i].type = usage_flags[i];
        a[i].pValue = &now[i];
        a[i].ulValueLen = sizeof(now[i]);
    }
    rv = LOWER(ht, C_GetAttributeValue, s, priv, a, 3);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID)
        return hsm_mapped(c, rv);
    for (i = 0; i < 3; i++) {
        if (a[i].ulValueLen != sizeof(now[i]))
            now[i] = CK_FALSE;
        a[i].pValue = &f[i];
        a[i].ulValueLen = sizeof(f[i]);
    }
    if (!on && (now[0] || now[1] || now[2]))
        rv = usage_record_write(ht, s, v, now); /* before anything changes */
    else if (on && !now[0] && !now[1])
        rv = usage_to_restore(ht, s, v, pub, f, &record);
    else
        memcpy(f, now, sizeof(f)); /* already as asked: set the same */
    if (rv == CKR_OK)
        rv = LOWER(ht, C_SetAttributeValue, s, priv, a, 3);
    if (rv == CKR_OK && record != 0)
        (void)LOWER(ht, C_DestroyObject, s, record);
    /* The flags are read again before the next public operation. */
    pthread_mutex_lock(&ht->lock);
    v->usage_at = 0;
    v->usage_gen++;
    pthread_mutex_unlock(&ht->lock);
    if (rv != CKR_OK)
        return hsm_mapped(c, rv);
    pthread_mutex_lock(&ht->lock); /* labels change under the lock */
    snprintf(label, sizeof(label), "%s", v->label ? v->label : "?");
    pthread_mutex_unlock(&ht->lock);
    cmk_info("token %s: version %s %s (lower CKA_DECRYPT %d, CKA_UNWRAP %d, "
             "CKA_SIGN %d)",
             ht->name, label, on ? "enabled" : "disabled", f[0], f[1], f[2]);
    return CKR_OK;
}

/* provider_ops.set_attributes: the vendor attributes the lower token
 * keeps (the front end let only those of attrpolicy.c through). */
CK_RV hsm_set_attributes(struct pcall *c, void *ref, const CK_ATTRIBUTE *tmpl,
                         CK_ULONG n)
{
    CK_ULONG i;
    CK_RV rv = CKR_OK;

    for (i = 0; rv == CKR_OK && i < n; i++) {
        if (tmpl[i].type == CKA_CMK_ENABLED)
            rv = hsm_set_enabled(c, ref, &tmpl[i]);
        else if (tmpl[i].type == CKA_CMK_ROTATION_POLICY)
            /* The policy belongs to the key: any version sets it. */
            rv = hsm_set_rotation_policy(c, ref, &tmpl[i]);
        else
            rv = CKR_ATTRIBUTE_READ_ONLY;
    }
    return rv;
}
