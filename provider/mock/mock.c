/*
 * The mock back end, built only into the test module. Its keys are real
 * RSA keys in memory, so every operation can be checked; configuration
 * keys inject faults and latency:
 *
 *   [token test]
 *   backend = mock
 *   pin = 1234              # then C_Login is required
 *   fail-op = decrypt       # decrypt | unwrap | sign | list | login
 *   fail-rv = 0x30          # the CKR the failing operation returns
 *   fail-device-error = 503 # what ulDeviceError then says
 *   delay-ms = 5            # latency added to every private-key operation
 *
 * Keys: "mock-key" (current, CKA_ID 02) and its older version
 * "mock-key@01"; "sign-only" (CKA_ID 10) may only sign; "disabled-key"
 * (CKA_ID 20) is a disabled version.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_MOCK
#include "debug.h"
#include "provider.h"
#include "provider-util.h"
#include "secure.h"

struct mock_key {
    char name[64];
    CK_BYTE id[8];
    CK_ULONG id_len;
    bool enabled, current, sign_only, generated;
    EVP_PKEY *pkey;
};

struct mock_token {
    pthread_mutex_t lock;
    char *pin;
    size_t pin_len;
    char *fail_op;
    CK_RV fail_rv;
    CK_ULONG fail_dev;
    long delay_ms;
    struct mock_key *keys[64];
    size_t n_keys;
};

#define MOCK_POOL 4
static EVP_PKEY *pool[MOCK_POOL];
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static EVP_PKEY *new_rsa(unsigned bits)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *pk = NULL;

    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, (int)bits) <= 0 ||
        EVP_PKEY_keygen(ctx, &pk) <= 0)
        pk = NULL;
    EVP_PKEY_CTX_free(ctx);
    return pk;
}

static void make_pool(void)
{
    size_t i;

    for (i = 0; i < MOCK_POOL; i++)
        pool[i] = new_rsa(2048);
}

static struct mock_key *add_key(struct mock_token *mt, const char *name,
                                CK_BYTE id, bool current, bool enabled,
                                bool sign_only, EVP_PKEY *pk)
{
    struct mock_key *k;

    if (mt->n_keys == CMK_ARRAY_SIZE(mt->keys) || pk == NULL)
        return NULL;
    k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    snprintf(k->name, sizeof(k->name), "%s", name);
    k->id[0] = id;
    k->id_len = 1;
    k->current = current;
    k->enabled = enabled;
    k->sign_only = sign_only;
    EVP_PKEY_up_ref(pk);
    k->pkey = pk;
    mt->keys[mt->n_keys++] = k;
    return k;
}

static void mock_close(void *tok, bool in_child)
{
    struct mock_token *mt = tok;
    size_t i;

    (void)in_child;
    if (mt == NULL)
        return;
    for (i = 0; i < mt->n_keys; i++) {
        EVP_PKEY_free(mt->keys[i]->pkey);
        free(mt->keys[i]);
    }
    secure_free(mt->pin);
    free(mt->fail_op);
    pthread_mutex_destroy(&mt->lock);
    free(mt);
}

static CK_RV mock_open(const struct config_token *cfg, void **tok,
                       unsigned *flags, char *err, size_t errlen)
{
    struct mock_token *mt = calloc(1, sizeof(*mt));
    const char *v;
    long l = 0;
    int r;

    if (mt == NULL)
        return CKR_HOST_MEMORY;
    pthread_mutex_init(&mt->lock, NULL);
    pthread_once(&pool_once, make_pool);
    v = config_token_get(cfg, "pin");
    if (v != NULL) {
        mt->pin_len = strlen(v);
        mt->pin = secure_dup(v, mt->pin_len + 1);
    }
    v = config_token_get(cfg, "fail-op");
    if (v != NULL)
        mt->fail_op = strdup(v);
    v = config_token_get(cfg, "fail-rv");
    mt->fail_rv = v ? strtoul(v, NULL, 0) : CKR_DEVICE_ERROR;
    r = config_token_get_long(cfg, "fail-device-error", 0, 999, &l, err,
                              errlen);
    if (r < 0 || config_token_get_long(cfg, "delay-ms", 0, 10000, &mt->delay_ms,
                                       err, errlen) < 0) {
        mock_close(mt, false);
        return CKR_GENERAL_ERROR;
    }
    if (r == 1)
        mt->fail_dev = (CK_ULONG)l;
    add_key(mt, "mock-key", 0x01, false, true, false, pool[0]);
    add_key(mt, "mock-key", 0x02, true, true, false, pool[1]);
    add_key(mt, "sign-only", 0x10, true, true, true, pool[2]);
    add_key(mt, "disabled-key", 0x20, true, false, false, pool[3]);
    if (mt->n_keys != 4) {
        snprintf(err, errlen, "%s:%d: cannot make the mock keys", cfg->path,
                 cfg->line);
        mock_close(mt, false);
        return CKR_GENERAL_ERROR;
    }
    *flags = PROVIDER_LOCAL_PUBLIC | PROVIDER_RAW_RSA;
    *tok = mt;
    return CKR_OK;
}

static void mock_token_info(void *tok, struct provider_token_info *info)
{
    struct mock_token *mt = tok;

    memset(info, 0, sizeof(*info));
    snprintf(info->model, sizeof(info->model), "mock");
    snprintf(info->serial, sizeof(info->serial), "0001");
    info->login_required = mt->pin != NULL;
    info->min_pin = 1;
    info->max_pin = 64;
}

static const struct pmech mock_mechs[] = {
    {CKM_RSA_PKCS_KEY_PAIR_GEN, {2048, 4096, CKF_GENERATE_KEY_PAIR}},
    {CKM_RSA_PKCS, {2048, 4096, CKF_DECRYPT | CKF_UNWRAP | CKF_SIGN}},
    {CKM_RSA_PKCS_OAEP, {2048, 4096, CKF_DECRYPT | CKF_UNWRAP}},
    {CKM_RSA_PKCS_PSS, {2048, 4096, CKF_SIGN}},
};

static const struct pmech *mock_mechanisms(void *tok, CK_ULONG *count)
{
    *count = CMK_ARRAY_SIZE(mock_mechs);
    return mock_mechs;
}

static bool failing(struct pcall *c, const char *op, CK_RV *rv)
{
    struct mock_token *mt = c->tok;

    if (mt->fail_op == NULL || strcmp(mt->fail_op, op) != 0)
        return false;
    c->device_error = mt->fail_dev;
    *rv = mt->fail_rv;
    return true;
}

static void delay(struct mock_token *mt)
{
    struct timespec ts;

    if (mt->delay_ms <= 0)
        return;
    ts.tv_sec = mt->delay_ms / 1000;
    ts.tv_nsec = (mt->delay_ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static CK_RV mock_login(struct pcall *c, CK_USER_TYPE user,
                        const CK_UTF8CHAR *pin, CK_ULONG len)
{
    struct mock_token *mt = c->tok;
    CK_RV rv;

    if (failing(c, "login", &rv))
        return rv;
    if (user != CKU_USER)
        return CKR_PIN_INCORRECT;
    if (mt->pin == NULL)
        return CKR_OK;
    if (len != mt->pin_len || ct_memcmp(pin, mt->pin, len) != 0)
        return CKR_PIN_INCORRECT;
    return CKR_OK;
}

static int bn_param(EVP_PKEY *pk, const char *name, CK_BYTE **out,
                    CK_ULONG *len)
{
    BIGNUM *bn = NULL;
    int n;

    if (EVP_PKEY_get_bn_param(pk, name, &bn) != 1)
        return -1;
    n = BN_num_bytes(bn);
    *out = malloc(n > 0 ? (size_t)n : 1);
    if (*out == NULL) {
        BN_free(bn);
        return -1;
    }
    BN_bn2bin(bn, *out);
    *len = (CK_ULONG)n;
    BN_free(bn);
    return 0;
}

static int key_objects(struct mock_key *k, bool private_obj, struct pobj *priv,
                       struct pobj *pub)
{
    struct rsa_key_desc d;
    char uid[64], label[128], version[32];
    CK_BYTE *n = NULL, *e = NULL;
    CK_ULONG nlen = 0, elen = 0;
    int r;

    if (bn_param(k->pkey, OSSL_PKEY_PARAM_RSA_N, &n, &nlen) != 0 ||
        bn_param(k->pkey, OSSL_PKEY_PARAM_RSA_E, &e, &elen) != 0) {
        free(n);
        return -1;
    }
    snprintf(version, sizeof(version), "%02x", k->id[0]);
    snprintf(uid, sizeof(uid), "mock/%s", version);
    if (k->current)
        snprintf(label, sizeof(label), "%s", k->name);
    else
        snprintf(label, sizeof(label), "%s@%s", k->name, version);
    memset(&d, 0, sizeof(d));
    d.uid_prefix = uid;
    d.label = label;
    d.id = k->id;
    d.id_len = k->id_len;
    d.modulus = n;
    d.modulus_len = nlen;
    d.exponent = e;
    d.exponent_len = elen;
    d.decrypt = d.unwrap = k->enabled && !k->sign_only;
    d.sign = k->enabled;
    d.encrypt = d.wrap = !k->sign_only;
    d.verify = true;
    d.private_obj = private_obj;
    d.enabled = k->enabled;
    d.current = k->current;
    d.local = k->generated;
    d.backend = "mock";
    d.source = "mock:";
    d.key_name = k->name;
    d.version = version;
    d.recovery_level = "";
    d.key_ops = k->sign_only ? "sign,verify"
                             : "encrypt,decrypt,wrapKey,unwrapKey,sign,verify";
    d.key_type = "RSA";
    r = rsa_key_objects(&d, priv, pub);
    if (r == 0) {
        priv->ref = k;
        pub->ref = k;
    }
    free(n);
    free(e);
    return r;
}

static CK_RV mock_list(struct pcall *c, const CK_ATTRIBUTE *hint,
                       CK_ULONG nhint, struct pobj **objs, CK_ULONG *n,
                       bool *complete)
{
    struct mock_token *mt = c->tok;
    struct pobj *v;
    size_t i, k = 0;
    CK_RV rv;

    (void)hint;
    (void)nhint;
    if (failing(c, "list", &rv))
        return rv;
    pthread_mutex_lock(&mt->lock);
    v = calloc(mt->n_keys * 2 + 1, sizeof(*v));
    for (i = 0; v != NULL && i < mt->n_keys; i++) {
        if (key_objects(mt->keys[i], mt->pin != NULL, &v[k], &v[k + 1]) != 0)
            break;
        k += 2;
    }
    pthread_mutex_unlock(&mt->lock);
    if (v == NULL || k != mt->n_keys * 2) {
        for (i = 0; v != NULL && i <= k + 1 && i < mt->n_keys * 2; i++)
            pobj_clear(NULL, NULL, &v[i]);
        free(v);
        return CKR_HOST_MEMORY;
    }
    *objs = v;
    *n = k;
    *complete = true;
    return CKR_OK;
}

static void mock_ref_free(void *tok, void *ref)
{
    /* Keys live as long as the token. */
}

static CK_RV mock_crypt(struct pcall *c, enum pop op, void *key,
                        const CK_MECHANISM *m, const CK_BYTE *in,
                        CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    struct mock_key *k = key;
    EVP_PKEY_CTX *ctx;
    size_t olen = *outlen;
    CK_RV rv = CKR_OK;
    bool enabled;
    static const char *names[] = {"encrypt", "decrypt", "unwrap", "sign"};

    if (failing(c, names[op], &rv))
        return rv;
    delay(c->tok);
    pthread_mutex_lock(&((struct mock_token *)c->tok)->lock);
    enabled = k->enabled;
    pthread_mutex_unlock(&((struct mock_token *)c->tok)->lock);
    if (!enabled && op != POP_ENCRYPT) {
        c->device_error = 403;
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    }
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL);
    if (ctx == NULL)
        return CKR_HOST_MEMORY;
    if (op == POP_SIGN) {
        if (EVP_PKEY_sign_init(ctx) <= 0) {
            rv = CKR_GENERAL_ERROR;
        } else if (m->mechanism == CKM_RSA_PKCS_PSS) {
            const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
            if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
                EVP_PKEY_CTX_set_signature_md(
                    ctx, rsa_md_for_mech(p->hashAlg)) <= 0 ||
                EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, rsa_md_for_mgf(p->mgf)) <=
                    0 ||
                EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)p->sLen) <= 0)
                rv = CKR_MECHANISM_PARAM_INVALID;
        } else if (m->mechanism == CKM_RSA_PKCS) {
            if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
                rv = CKR_GENERAL_ERROR;
        } else {
            rv = CKR_MECHANISM_INVALID;
        }
        if (rv == CKR_OK && EVP_PKEY_sign(ctx, out, &olen, in, inlen) <= 0)
            rv = CKR_DATA_LEN_RANGE;
    } else if (op == POP_DECRYPT || op == POP_UNWRAP) {
        if (EVP_PKEY_decrypt_init(ctx) <= 0)
            rv = CKR_GENERAL_ERROR;
        else if (m->mechanism == CKM_RSA_PKCS_OAEP)
            rv = rsa_set_oaep(ctx, m);
        else if (m->mechanism == CKM_RSA_X_509) {
            /* Raw RSA, for implicit rejection in the module. */
            if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) <= 0)
                rv = CKR_GENERAL_ERROR;
        } else if (m->mechanism != CKM_RSA_PKCS ||
                   EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            rv = CKR_MECHANISM_INVALID;
#ifdef OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION
        /* A token's classic PKCS#1 v1.5 decryption, what "allow" offers:
         * OpenSSL >= 3.2 would otherwise reject implicitly itself. */
        if (rv == CKR_OK && m->mechanism == CKM_RSA_PKCS) {
            unsigned int off = 0;
            OSSL_PARAM params[] = {
                OSSL_PARAM_construct_uint(
                    OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION, &off),
                OSSL_PARAM_construct_end()};

            if (EVP_PKEY_CTX_set_params(ctx, params) <= 0)
                rv = CKR_GENERAL_ERROR;
        }
#endif
        if (rv == CKR_OK && inlen != (CK_ULONG)EVP_PKEY_get_size(k->pkey))
            rv = CKR_ENCRYPTED_DATA_LEN_RANGE;
        if (rv == CKR_OK && EVP_PKEY_decrypt(ctx, out, &olen, in, inlen) <= 0)
            rv = CKR_ENCRYPTED_DATA_INVALID;
    } else {
        rv = CKR_FUNCTION_NOT_SUPPORTED;
    }
    EVP_PKEY_CTX_free(ctx);
    if (rv == CKR_OK) {
        *outlen = olen;
        c->device_error = 0;
    }
    return rv;
}

static CK_RV mock_generate_key_pair(struct pcall *c, const CK_MECHANISM *mech,
                                    const CK_ATTRIBUTE *pubt, CK_ULONG npub,
                                    const CK_ATTRIBUTE *privt, CK_ULONG npriv,
                                    struct pobj *pub_out, struct pobj *priv_out)
{
    struct mock_token *mt = c->tok;
    const CK_ATTRIBUTE *label = tmpl_find(privt, npriv, CKA_LABEL);
    CK_ULONG bits = 2048;
    char name[64] = "generated";
    struct mock_key *k;
    EVP_PKEY *pk;
    CK_BYTE id = 0x40;
    size_t i;
    int r;

    if (label == NULL)
        label = tmpl_find(pubt, npub, CKA_LABEL);
    if (label != NULL && label->pValue != NULL && label->ulValueLen > 0 &&
        label->ulValueLen < sizeof(name)) {
        memcpy(name, label->pValue, label->ulValueLen);
        name[label->ulValueLen] = '\0';
    }
    if (tmpl_find_ulong(pubt, npub, CKA_MODULUS_BITS, &bits) < 0 ||
        bits < 2048 || bits > 4096)
        return CKR_KEY_SIZE_RANGE;
    pk = new_rsa((unsigned)bits);
    if (pk == NULL)
        return CKR_DEVICE_ERROR;
    pthread_mutex_lock(&mt->lock);
    for (i = 0; i < mt->n_keys; i++) {
        if (mt->keys[i]->id[0] >= id)
            id = (CK_BYTE)(mt->keys[i]->id[0] + 1);
        if (strcmp(mt->keys[i]->name, name) == 0)
            mt->keys[i]->current = false; /* a new version */
    }
    k = add_key(mt, name, id, true, true, false, pk);
    if (k != NULL)
        k->generated = true;
    pthread_mutex_unlock(&mt->lock);
    EVP_PKEY_free(pk);
    if (k == NULL)
        return CKR_DEVICE_MEMORY;
    r = key_objects(k, mt->pin != NULL, priv_out, pub_out);
    return r == 0 ? CKR_OK : CKR_HOST_MEMORY;
}

/* CKA_CMK_ENABLED: the version enabled or disabled, as a vault's
 * "enabled" attribute. */
static CK_RV mock_set_attributes(struct pcall *c, void *ref,
                                 const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    struct mock_token *mt = c->tok;
    struct mock_key *k = ref;
    CK_ULONG i;
    CK_RV rv;

    if (failing(c, "set_attributes", &rv))
        return rv;
    for (i = 0; i < n; i++)
        if (tmpl[i].type != CKA_CMK_ENABLED)
            return CKR_ATTRIBUTE_READ_ONLY;
    pthread_mutex_lock(&mt->lock);
    for (i = 0; i < n; i++)
        k->enabled = *(const CK_BBOOL *)tmpl[i].pValue != CK_FALSE;
    pthread_mutex_unlock(&mt->lock);
    return CKR_OK;
}

const struct provider_ops mock_provider = {
    .name = "mock",
    .open = mock_open,
    .close = mock_close,
    .token_info = mock_token_info,
    .mechanisms = mock_mechanisms,
    .login = mock_login,
    .list = mock_list,
    .ref_free = mock_ref_free,
    .crypt = mock_crypt,
    .generate_key_pair = mock_generate_key_pair,
    .set_attributes = mock_set_attributes,
};
