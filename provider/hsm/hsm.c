/*
 * The hsm back end: presents the RSA key pairs of a lower PKCS#11 token as
 * versioned keys and forwards every operation to it.
 *
 * Versions: pairs labelled NAME or NAME@HEXID (HEXID = the pair's CKA_ID in
 * hex) are the versions of key NAME; the pair labelled exactly NAME is
 * current. A version whose private key has CKA_UNWRAP and CKA_DECRYPT false
 * is disabled.
 *
 * OAEP beyond the lower token: where the lower token refuses an OAEP
 * parameter set (SoftHSM 2.6.1 takes only SHA-1 without a label) but
 * decrypts with CKM_RSA_X_509, the raw RSA result is decoded in the module
 * (hsm-oaep.c), and an unwrapped key enters the lower token as a session
 * object.
 *
 * This file opens a token, logs in and opens sessions; hsm.h lists the
 * others, one concern each.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <p11-kit/uri.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_HSM
#include "debug.h"
#include "hsm.h"
#include "secure.h"

/* ---- Opening a token ---- */

static void free_versions(struct hsm_token *ht)
{
    struct hsm_ver *v, *next;

    for (v = ht->versions; v != NULL; v = next) {
        next = v->next;
        free(v->name);
        free(v->label);
        free(v);
    }
    ht->versions = NULL;
}

static void hsm_close(void *tok, bool in_child)
{
    struct hsm_token *ht = tok;

    if (ht == NULL)
        return;
    if (ht->lib != NULL) {
        if (!in_child && ht->anchor != CK_INVALID_HANDLE) {
            if (ht->self_login || ht->pin_mac != NULL)
                LOWER(ht, C_Logout, ht->anchor);
            LOWER(ht, C_CloseSession, ht->anchor);
        }
        hsm_lib_close(ht->lib, in_child);
    }
    secure_free(ht->pin_key);
    secure_free(ht->pin_mac);
    free_versions(ht);
    config_free_list(ht->keys);
    free(ht->mechs);
    free(ht->module_path);
    free(ht->token_label);
    free(ht->token_uri);
    free(ht->name);
    pthread_mutex_destroy(&ht->lock);
    pthread_mutex_destroy(&ht->list_lock);
    free(ht);
}

static bool label_matches(const CK_UTF8CHAR *padded, const char *label)
{
    size_t n = strlen(label), i;

    if (n > 32 || memcmp(padded, label, n) != 0)
        return false;
    for (i = n; i < 32; i++)
        if (padded[i] != ' ')
            return false;
    return true;
}

static CK_RV find_slot(struct hsm_token *ht, const struct config_token *cfg,
                       char *err, size_t errlen)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    P11KitUri *uri = NULL;
    CK_RV rv;
    int found = 0;

    if (ht->token_uri != NULL) {
        uri = p11_kit_uri_new();
        if (uri == NULL ||
            p11_kit_uri_parse(ht->token_uri, P11_KIT_URI_FOR_TOKEN, uri) !=
                P11_KIT_URI_OK) {
            snprintf(err, errlen, "%s:%d: token-uri: not a PKCS#11 URI",
                     cfg->path, config_token_line(cfg, "token-uri"));
            p11_kit_uri_free(uri);
            return CKR_GENERAL_ERROR;
        }
    }
    rv = LOWER(ht, C_GetSlotList, CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > 0) {
        slots = calloc(n, sizeof(*slots));
        rv = slots ? LOWER(ht, C_GetSlotList, CK_TRUE, slots, &n)
                   : CKR_HOST_MEMORY;
    }
    for (i = 0; rv == CKR_OK && i < n && !found; i++) {
        CK_TOKEN_INFO ti;
        if (LOWER(ht, C_GetTokenInfo, slots[i], &ti) != CKR_OK)
            continue;
        if (uri != NULL ? p11_kit_uri_match_token_info(uri, &ti) == 1
                        : label_matches(ti.label, ht->token_label)) {
            ht->slot = slots[i];
            ht->tinfo = ti;
            found = 1;
        }
    }
    free(slots);
    p11_kit_uri_free(uri);
    if (rv == CKR_OK && !found) {
        snprintf(err, errlen, "%s:%d: %s: no token '%s' in %s", cfg->path,
                 config_token_line(cfg, uri ? "token-uri" : "token-label"),
                 ht->token_uri ? "token-uri" : "token-label",
                 ht->token_uri ? ht->token_uri : ht->token_label,
                 ht->module_path);
        rv = CKR_GENERAL_ERROR;
    } else if (rv != CKR_OK) {
        snprintf(err, errlen, "%s: listing slots failed: %s", ht->module_path,
                 cmk_rv_name(rv));
        rv = CKR_DEVICE_ERROR;
    }
    return rv;
}

/* The mechanisms this back end offers, from what the lower token has. */
static CK_RV load_mechanisms(struct hsm_token *ht)
{
    static const CK_MECHANISM_TYPE wanted[] = {
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_RSA_PKCS,
        CKM_RSA_PKCS_OAEP,
        CKM_RSA_PKCS_PSS,
        CKM_AES_KEY_GEN,
        CKM_GENERIC_SECRET_KEY_GEN,
        CKM_AES_GCM,
        CKM_AES_CBC_PAD,
        CKM_AES_KEY_WRAP,
        CKM_AES_KEY_WRAP_PAD,
        CKM_SHA256_HMAC,
        CKM_SHA256_HMAC_GENERAL,
    };
    CK_MECHANISM_INFO info;
    size_t i;

    ht->mechs = calloc(CMK_ARRAY_SIZE(wanted), sizeof(*ht->mechs));
    if (ht->mechs == NULL)
        return CKR_HOST_MEMORY;
    memset(&info, 0, sizeof(info));
    if (LOWER(ht, C_GetMechanismInfo, ht->slot, CKM_RSA_X_509, &info) ==
            CKR_OK &&
        (info.flags & CKF_DECRYPT))
        ht->has_raw = true;
    for (i = 0; i < CMK_ARRAY_SIZE(wanted); i++) {
        /* Zeroed each time: SoftHSM ORs flags into what it is given, so a
         * reused structure would carry CKF_GENERATE from CKM_AES_KEY_GEN
         * to the AES modes after it. */
        memset(&info, 0, sizeof(info));
        if (LOWER(ht, C_GetMechanismInfo, ht->slot, wanted[i], &info) != CKR_OK)
            continue;
        /* Public-key operations run here, with the cached public key;
         * HMAC verification runs in the lower token, which keeps the key. */
        info.flags &= ~(CKF_VERIFY_RECOVER | CKF_SIGN_RECOVER);
        if (wanted[i] != CKM_SHA256_HMAC &&
            wanted[i] != CKM_SHA256_HMAC_GENERAL)
            info.flags &= ~CKF_VERIFY;
        if (wanted[i] == CKM_RSA_PKCS || wanted[i] == CKM_RSA_PKCS_OAEP)
            info.flags &= ~CKF_ENCRYPT;
        if (wanted[i] == CKM_RSA_PKCS_OAEP && ht->has_raw)
            info.flags |= CKF_DECRYPT | CKF_UNWRAP;
        ht->mechs[ht->n_mechs].type = wanted[i];
        ht->mechs[ht->n_mechs].info = info;
        ht->n_mechs++;
    }
    return CKR_OK;
}

/* The [token] section's settings. */
static CK_RV open_config(struct hsm_token *ht, const struct config_token *cfg,
                         char *err, size_t errlen)
{
    const char *module, *label, *uri, *keys;
    long grace = cfg->global ? cfg->global->offline_grace : 900;

    ht->refresh_ms = (cfg->global ? cfg->global->refresh_interval : 60) * 1000L;
    ht->name = strdup(cfg->name);
    if (ht->name == NULL)
        return CKR_HOST_MEMORY;
    if (config_token_get_long(cfg, "offline-grace", 0, 86400L * 7, &grace, err,
                              errlen) < 0)
        return CKR_GENERAL_ERROR;
    ht->grace_ms = grace * 1000L;
    module = config_token_get(cfg, "module");
    label = config_token_get(cfg, "token-label");
    uri = config_token_get(cfg, "token-uri");
    keys = config_token_get(cfg, "keys");
    if (module == NULL) {
        snprintf(err, errlen,
                 "%s:%d: [token %s]: module is missing (the PKCS#11 library "
                 "of the HSM, e.g. /usr/lib/softhsm/libsofthsm2.so)",
                 cfg->path, cfg->line, cfg->name);
        return CKR_GENERAL_ERROR;
    }
    if ((label == NULL) == (uri == NULL)) {
        snprintf(err, errlen,
                 "%s:%d: [token %s]: give one of token-label or token-uri",
                 cfg->path, cfg->line, cfg->name);
        return CKR_GENERAL_ERROR;
    }
    ht->module_path = strdup(module);
    ht->token_label = label ? strdup(label) : NULL;
    ht->token_uri = uri ? strdup(uri) : NULL;
    if (ht->module_path == NULL)
        return CKR_HOST_MEMORY;
    if (keys != NULL && (ht->keys = config_split_list(keys)) == NULL)
        return CKR_HOST_MEMORY;
    return CKR_OK;
}

/* The lower module, its token, the anchor session (logged in when the
 * section gives a pin-file) and the mechanisms. */
static CK_RV open_lower(struct hsm_token *ht, const struct config_token *cfg,
                        const char *pin, size_t pin_len, char *err,
                        size_t errlen)
{
    CK_RV rv;

    rv = hsm_lib_open(ht->module_path, &ht->lib, err, errlen);
    if (rv != CKR_OK) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s:%d: %s", cfg->path,
                 config_token_line(cfg, "module"), err);
        snprintf(err, errlen, "%s", msg);
        return rv;
    }
    rv = find_slot(ht, cfg, err, errlen);
    if (rv != CKR_OK)
        return rv;
    rv = LOWER(ht, C_OpenSession, ht->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
               NULL, NULL, &ht->anchor);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "%s: cannot open a session on the token: %s",
                 ht->module_path, cmk_rv_name(rv));
        return CKR_DEVICE_ERROR;
    }
    if (pin != NULL) {
        rv = LOWER(ht, C_Login, ht->anchor, CKU_USER, (CK_UTF8CHAR *)pin,
                   (CK_ULONG)pin_len);
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
            snprintf(err, errlen,
                     "%s:%d: pin-file: the token refused the PIN "
                     "(%s)",
                     cfg->path, config_token_line(cfg, "pin-file"),
                     cmk_rv_name(rv));
            return CKR_GENERAL_ERROR;
        }
        ht->self_login = true;
    }
    return load_mechanisms(ht);
}

static CK_RV hsm_open(const struct config_token *cfg, void **tok,
                      unsigned *flags, char *err, size_t errlen)
{
    struct hsm_token *ht = calloc(1, sizeof(*ht));
    const char *pin_file;
    char *pin = NULL;
    size_t pin_len = 0;
    CK_RV rv;

    if (ht == NULL)
        return CKR_HOST_MEMORY;
    pthread_mutex_init(&ht->lock, NULL);
    pthread_mutex_init(&ht->list_lock, NULL);
    ht->anchor = CK_INVALID_HANDLE;
    rv = open_config(ht, cfg, err, errlen);
    if (rv != CKR_OK)
        goto fail;
    pin_file = config_token_get(cfg, "pin-file");
    if (pin_file != NULL && secure_read_secret_file(pin_file, 1, &pin, &pin_len,
                                                    err, errlen) != 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s:%d: pin-file: %s", cfg->path,
                 config_token_line(cfg, "pin-file"), err);
        snprintf(err, errlen, "%s", msg);
        rv = CKR_GENERAL_ERROR;
        goto fail;
    }
    rv = open_lower(ht, cfg, pin, pin_len, err, errlen);
    if (rv != CKR_OK)
        goto fail;
    secure_free(pin);
    *flags = PROVIDER_OWNS_SECRET_KEYS | PROVIDER_TOKEN_SECRET_KEYS |
             PROVIDER_LOCAL_PUBLIC | (ht->has_raw ? PROVIDER_RAW_RSA : 0);
    *tok = ht;
    return CKR_OK;
fail:
    secure_free(pin);
    hsm_close(ht, false);
    return rv;
}

static void hsm_token_info(void *tok, struct provider_token_info *info)
{
    struct hsm_token *ht = tok;
    size_t n;

    memset(info, 0, sizeof(*info));
    memcpy(info->model, ht->tinfo.model, sizeof(ht->tinfo.model));
    memcpy(info->serial, ht->tinfo.serialNumber,
           sizeof(ht->tinfo.serialNumber));
    /* Trim the padding for the front end, which pads again. */
    for (n = sizeof(info->model); n > 0 && info->model[n - 1] == ' '; n--)
        info->model[n - 1] = '\0';
    for (n = sizeof(info->serial); n > 0 && info->serial[n - 1] == ' '; n--)
        info->serial[n - 1] = '\0';

    info->login_required =
        !ht->self_login && (ht->tinfo.flags & CKF_LOGIN_REQUIRED);
    info->hardware = (ht->tinfo.flags & CKF_HW_SLOT) != 0;
    info->min_pin = ht->tinfo.ulMinPinLen;
    info->max_pin = ht->tinfo.ulMaxPinLen;
}

static const struct pmech *hsm_mechanisms(void *tok, CK_ULONG *count)
{
    struct hsm_token *ht = tok;

    *count = ht->n_mechs;
    return ht->mechs;
}

/* The PIN's HMAC under the token's key (secure memory). */
static bool pin_mac(const unsigned char *key, const CK_UTF8CHAR *pin,
                    CK_ULONG len, unsigned char mac[32])
{
    unsigned int n = 0;

    return HMAC(EVP_sha256(), key, 32, pin, len, mac, &n) != NULL && n == 32;
}

/*
 * The lower token is logged in once per process: SoftHSM's file store
 * rewrites the token's own file at each C_Login, and a process killed
 * then loses the token (docs/hsm.md). After the first successful user
 * login the lower login is kept across C_Logout, and a later C_Login is
 * checked here against the PIN's HMAC, in constant time; the front end
 * hides private objects while its token is logged out.
 */
static CK_RV hsm_login(struct pcall *c, CK_USER_TYPE user,
                       const CK_UTF8CHAR *pin, CK_ULONG len)
{
    struct hsm_token *ht = c->tok;
    unsigned char mac[32], *key = NULL, *kept = NULL;
    bool have, verified;
    CK_RV rv;

    if (ht->self_login)
        return CKR_OK; /* logged in from pin-file; any PIN will do */
    pthread_mutex_lock(&ht->lock);
    have = ht->pin_mac != NULL;
    if (have && user == CKU_USER)
        rv = pin_mac(ht->pin_key, pin, len, mac) &&
                     ct_memcmp(mac, ht->pin_mac, sizeof(mac)) == 0
                 ? CKR_OK
                 : CKR_PIN_INCORRECT;
    pthread_mutex_unlock(&ht->lock);
    if (have && user == CKU_USER) {
        secure_zero(mac, sizeof(mac));
        return rv;
    }
    if (have) {
        /* Another user type: the kept user login must end first. */
        pthread_mutex_lock(&ht->lock);
        key = ht->pin_key, kept = ht->pin_mac;
        ht->pin_key = ht->pin_mac = NULL;
        pthread_mutex_unlock(&ht->lock);
        secure_free(key);
        secure_free(kept);
        key = kept = NULL;
        LOWER(ht, C_Logout, ht->anchor);
    }
    rv = LOWER(ht, C_Login, ht->anchor, user, (CK_UTF8CHAR *)pin, len);
    /* Only a PIN the lower token checked is kept: "already logged in"
     * (by the application itself, or another [token] over the same lower
     * token) says nothing about this one. */
    verified = rv == CKR_OK;
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK;
    if (verified && user == CKU_USER) {
        key = secure_alloc(32);
        kept = secure_alloc(32);
        if (key != NULL && kept != NULL && RAND_priv_bytes(key, 32) == 1 &&
            pin_mac(key, pin, len, kept)) {
            pthread_mutex_lock(&ht->lock);
            if (ht->pin_mac == NULL) {
                ht->pin_key = key, ht->pin_mac = kept;
                key = kept = NULL;
            }
            pthread_mutex_unlock(&ht->lock);
        }
        secure_free(key);
        secure_free(kept);
    }
    return hsm_mapped(c, rv);
}

static CK_RV hsm_logout(struct pcall *c)
{
    struct hsm_token *ht = c->tok;
    bool kept;

    if (ht->self_login)
        return CKR_OK;
    pthread_mutex_lock(&ht->lock);
    kept = ht->pin_mac != NULL;
    pthread_mutex_unlock(&ht->lock);
    if (kept)
        return CKR_OK; /* the lower login stays for the process */
    return hsm_mapped(c, LOWER(ht, C_Logout, ht->anchor));
}

static CK_RV hsm_session_open(void *tok, void **sess)
{
    struct hsm_token *ht = tok;
    CK_SESSION_HANDLE *h = malloc(sizeof(*h));
    CK_RV rv;

    if (h == NULL)
        return CKR_HOST_MEMORY;
    rv = LOWER(ht, C_OpenSession, ht->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
               NULL, NULL, h);
    if (rv != CKR_OK) {
        free(h);
        return hsm_map_rv(rv);
    }
    *sess = h;
    return CKR_OK;
}

static void hsm_session_close(void *tok, void *sess)
{
    struct hsm_token *ht = tok;
    CK_SESSION_HANDLE *h = sess;

    if (h == NULL)
        return;
    LOWER(ht, C_CloseSession, *h);
    free(h);
}

const struct provider_ops hsm_provider = {
    .name = "hsm",
    .open = hsm_open,
    .close = hsm_close,
    .token_info = hsm_token_info,
    .mechanisms = hsm_mechanisms,
    .login = hsm_login,
    .logout = hsm_logout,
    .session_open = hsm_session_open,
    .session_close = hsm_session_close,
    .list = hsm_list,
    .ref_free = hsm_ref_free,
    .check_public = hsm_check_public,
    .check_mechanism = hsm_check_mechanism,
    .crypt = hsm_crypt,
    .unwrap = hsm_unwrap,
    .wrap = hsm_wrap,
    .generate_key = hsm_generate_key,
    .create_object = hsm_create_object,
    .destroy_object = hsm_destroy_object,
    .get_value = hsm_get_value,
    .generate_key_pair = hsm_generate_key_pair,
    .generate_random = hsm_generate_random,
    .set_attributes = hsm_set_attributes,
    .atfork = hsm_atfork,
    .get_attribute = hsm_get_attribute,
};
