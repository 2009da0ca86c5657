/*
 * A keyvault token secret key's state file: reading, writing, the MAC and
 * the names of its files (kv-skey.h). Nothing here touches the directory
 * or the vault.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "debug.h"
#include "kv-skey.h"
#include "kv.h"
#include "secure.h"

bool kv_skey_is_id(const char *s, size_t len)
{
    size_t i;

    if (len != 32)
        return false;
    for (i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* A decimal number as the writer prints them (no sign, no leading zero,
 * at most 10 digits) from p up to end; 0 if it is not one. */
static unsigned long long decimal(const char *p, const char *end)
{
    unsigned long long v = 0;
    size_t digits = (size_t)(end - p), i;

    if (digits == 0 || digits > 10 || p[0] == '0')
        return 0;
    for (i = 0; i < digits; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    return v;
}

pid_t kv_skey_tmp_pid(const char *name)
{
    static const char mid[] = SK_SUFFIX ".tmp.";
    const char *p = name + 1 + 32 + sizeof(mid) - 1, *dot, *end;
    size_t n = strlen(name);
    unsigned long long pid;

    if (n <= 1 + 32 + sizeof(mid) - 1 || name[0] != '.' ||
        !kv_skey_is_id(name + 1, 32) ||
        memcmp(name + 33, mid, sizeof(mid) - 1) != 0)
        return 0;
    end = name + n;
    /* ".PID.SERIAL": one writer of several in the process. */
    dot = strchr(p, '.');
    if (dot != NULL && decimal(dot + 1, end) == 0)
        return 0;
    pid = decimal(p, dot != NULL ? dot : end);
    return pid > 0 && pid <= INT_MAX ? (pid_t)pid : 0;
}

void kv_skey_free(struct kv_skey *k)
{
    if (k == NULL)
        return;
    if (k->value != NULL)
        secure_free(k->value);
    attrs_clear(&k->attrs);
    free(k->id);
    free(k->uid);
    free(k->cmk);
    free(k->cmk_ver);
    free(k->wrapped);
    free(k->why);
    free(k);
}

/* ---- the MAC ---- */

static int mac_text(EVP_MAC_CTX *ctx, const char *s)
{
    return EVP_MAC_update(ctx, (const unsigned char *)s, strlen(s)) == 1 ? 0
                                                                         : -1;
}

int kv_skey_mac(const unsigned char *value, size_t vlen, const char *id,
                const char *cmk, const struct attrs *a, unsigned char out[32])
{
    static const char label[] = "cmkp11-secret-key attributes";
    unsigned char k[32];
    unsigned int klen = sizeof(k);
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[2];
    char head[64], *hex = NULL;
    size_t olen2 = 0;
    CK_ULONG i;
    int ok = 0;

    if (HMAC(EVP_sha256(), value, (int)vlen, (const unsigned char *)label,
             sizeof(label) - 1, k, &klen) == NULL ||
        ctx == NULL)
        goto out;
    params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_MAC_init(ctx, k, klen, params) != 1)
        goto out;
    /* The id and the name in full, however long (a file's name may be). */
    snprintf(head, sizeof(head), "%s/%d\n", SK_FORMAT, SK_VERSION);
    if (mac_text(ctx, head) != 0 || mac_text(ctx, id) != 0 ||
        mac_text(ctx, "\n") != 0 || mac_text(ctx, cmk) != 0 ||
        mac_text(ctx, "\n") != 0)
        goto out;
    for (i = 0; i < a->n; i++) {
        const CK_ATTRIBUTE *at = &a->v[i];
        char t[32];
        snprintf(t, sizeof(t), "%lx=", (unsigned long)at->type);
        hex = malloc(2 * at->ulValueLen + 2);
        if (hex == NULL)
            goto out;
        cmk_hex(at->pValue, at->ulValueLen, hex);
        strcat(hex, "\n");
        if (mac_text(ctx, t) != 0 || mac_text(ctx, hex) != 0)
            goto out;
        free(hex);
        hex = NULL;
    }
    ok = EVP_MAC_final(ctx, out, &olen2, 32) == 1 && olen2 == 32;
out:
    free(hex);
    OPENSSL_cleanse(k, sizeof(k));
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok ? 0 : -1;
}

/* ---- reading ---- */

static int unhex(const char *s, unsigned char *out, size_t max, size_t *len)
{
    size_t n = strlen(s), i;

    if (n % 2 != 0 || n / 2 > max)
        return -1;
    for (i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1 ||
            strchr("0123456789abcdefABCDEF", s[2 * i]) == NULL ||
            strchr("0123456789abcdefABCDEF", s[2 * i + 1]) == NULL)
            return -1;
        out[i] = (unsigned char)v;
    }
    *len = n / 2;
    return 0;
}

/* A string without a NUL inside ("\u0000" would cut it short). */
static const char *jstring(json_object *v)
{
    const char *s;

    if (!json_object_is_type(v, json_type_string))
        return NULL;
    s = json_object_get_string(v);
    if (strlen(s) != (size_t)json_object_get_string_len(v))
        return NULL;
    return s;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v))
        return NULL;
    return jstring(v);
}

/* An attribute type as the writer writes it: lowercase hex, no sign,
 * prefix or space. */
static int attr_type(const char *s, CK_ATTRIBUTE_TYPE *type)
{
    size_t n = strspn(s, "0123456789abcdef");

    if (n == 0 || s[n] != '\0' || n > 2 * sizeof(unsigned long))
        return -1;
    *type = strtoul(s, NULL, 16);
    return 0;
}

/* A wrapping version: 1 to 127 printable ASCII characters, no "/" (it is
 * a path segment of the key's URL). */
static bool version_ok(const char *s)
{
    size_t i, n = strlen(s);

    for (i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~' || s[i] == '/')
            return false;
    return n > 0 && n < 128;
}

/* The attributes a file may hold: those the writer writes. Never the
 * value, CKA_TOKEN or a vendor attribute (the module adds those when it
 * lists the key); each once; the class, key type and length each a
 * CK_ULONG. */
static bool attr_ok(const struct attrs *a, CK_ATTRIBUTE_TYPE type, size_t len)
{
    if (type == CKA_VALUE || type == CKA_TOKEN || (type & CKA_VENDOR_DEFINED) ||
        attrs_find(a, type) != NULL)
        return false;
    if (type == CKA_CLASS || type == CKA_KEY_TYPE || type == CKA_VALUE_LEN)
        return len == sizeof(CK_ULONG);
    return true;
}

/* The "attributes" array into k: 0, -1 (why set) or -2 (no memory). */
static int parse_attributes(json_object *list, struct kv_skey *k, char *why,
                            size_t whylen)
{
    size_t i, n = json_object_array_length(list);
    unsigned char *buf = NULL;
    int r = 0;

    for (i = 0; r == 0 && i < n; i++) {
        json_object *pair = json_object_array_get_idx(list, i);
        const char *t = NULL, *s = NULL;
        CK_ATTRIBUTE_TYPE type = 0;
        size_t blen = 0;

        if (json_object_is_type(pair, json_type_array) &&
            json_object_array_length(pair) == 2) {
            t = jstring(json_object_array_get_idx(pair, 0));
            s = jstring(json_object_array_get_idx(pair, 1));
        }
        if (s != NULL && (buf = malloc(strlen(s) / 2 + 1)) == NULL) {
            r = -2;
            break;
        }
        if (t == NULL || s == NULL || attr_type(t, &type) != 0 ||
            unhex(s, buf, strlen(s) / 2, &blen) != 0 ||
            !attr_ok(&k->attrs, type, blen)) {
            snprintf(why, whylen, "attribute %zu malformed", i);
            r = -1;
        } else if (attrs_set(&k->attrs, type, buf, blen) != 0) {
            r = -2;
        }
        free(buf);
        buf = NULL;
    }
    return r;
}

struct kv_skey *kv_skey_parse(const char *text, size_t len, const char *id,
                              char *why, size_t whylen)
{
    json_tokener *tk = json_tokener_new();
    json_object *doc = NULL, *v, *list;
    struct kv_skey *k = NULL;
    const char *s;
    size_t mlen = 0, pend;

    if (tk != NULL)
        doc = json_tokener_parse_ex(tk, text, (int)len);
    pend = doc != NULL ? json_tokener_get_parse_end(tk) : 0;
    /* One document; trailing white space allowed (the writer ends with a
     * newline). A truncated file is not a document. */
    if (doc == NULL || pend > len ||
        strspn(text + pend, " \r\n\t") != len - pend) {
        snprintf(why, whylen, "not JSON (truncated?)");
        goto fail;
    }
    if ((s = jstr(doc, "format")) == NULL || strcmp(s, SK_FORMAT) != 0 ||
        !json_object_object_get_ex(doc, "version", &v) ||
        !json_object_is_type(v, json_type_int)) {
        snprintf(why, whylen, "not a %s file", SK_FORMAT);
        goto fail;
    }
    if (json_object_get_int(v) != SK_VERSION) {
        snprintf(why, whylen, "format version %d (this module reads %d)",
                 json_object_get_int(v), SK_VERSION);
        goto fail;
    }
    k = calloc(1, sizeof(*k));
    if (k == NULL)
        goto nomem;
    attrs_init(&k->attrs);
    if ((s = jstr(doc, "id")) == NULL || strcmp(s, id) != 0) {
        snprintf(why, whylen, "its id is not its file name");
        goto fail;
    }
    k->id = strdup(s);
    k->uid = kv_strdup_printf("secret/%s", s);
    s = jstr(doc, "wrapping-key");
    k->cmk = s && *s ? strdup(s) : NULL;
    s = jstr(doc, "wrapping-version");
    k->cmk_ver = s && *s ? strdup(s) : NULL;
    if (k->id == NULL || k->uid == NULL)
        goto nomem;
    if (k->cmk == NULL || k->cmk_ver == NULL) {
        snprintf(why, whylen, "no wrapping key or version");
        goto fail;
    }
    if (kv_check_key_name(k->cmk, why, whylen) != 0) {
        snprintf(why, whylen, "wrapping-key is not a Key Vault key name");
        goto fail;
    }
    if (!version_ok(k->cmk_ver)) {
        snprintf(why, whylen, "wrapping-version is not a version id");
        goto fail;
    }
    if ((s = jstr(doc, "algorithm")) == NULL ||
        strcmp(s, "RSA-OAEP-256") != 0) {
        snprintf(why, whylen, "unknown algorithm");
        goto fail;
    }
    if ((s = jstr(doc, "wrapped")) == NULL ||
        (k->wrapped = kv_b64url_decode(s, &k->wrapped_len)) == NULL ||
        k->wrapped_len == 0) {
        snprintf(why, whylen, "no wrapped value");
        goto fail;
    }
    if ((s = jstr(doc, "mac")) == NULL ||
        unhex(s, k->mac, sizeof(k->mac), &mlen) != 0 || mlen != 32) {
        snprintf(why, whylen, "no mac");
        goto fail;
    }
    if (!json_object_object_get_ex(doc, "attributes", &list) ||
        !json_object_is_type(list, json_type_array)) {
        snprintf(why, whylen, "no attributes");
        goto fail;
    }
    switch (parse_attributes(list, k, why, whylen)) {
    case -1:
        goto fail;
    case -2:
        goto nomem;
    }
    if (attrs_get_ulong(&k->attrs, CKA_CLASS, ~0UL) != CKO_SECRET_KEY ||
        attrs_find(&k->attrs, CKA_KEY_TYPE) == NULL) {
        snprintf(why, whylen, "not a secret key");
        goto fail;
    }
    json_object_put(doc);
    json_tokener_free(tk);
    return k;
nomem:
    snprintf(why, whylen, "out of memory");
fail:
    if (k != NULL)
        kv_skey_free(k);
    json_object_put(doc);
    if (tk != NULL)
        json_tokener_free(tk);
    return NULL;
}

/* ---- writing ---- */

char *kv_skey_json(const struct kv_skey *k)
{
    json_object *doc = json_object_new_object(),
                *list = json_object_new_array();
    char *b64 = kv_b64url_encode(k->wrapped, k->wrapped_len), mac[65];
    char *out = NULL;
    CK_ULONG i;

    if (doc == NULL || list == NULL || b64 == NULL)
        goto out;
    json_object_object_add(doc, "format", json_object_new_string(SK_FORMAT));
    json_object_object_add(doc, "version", json_object_new_int(SK_VERSION));
    json_object_object_add(doc, "id", json_object_new_string(k->id));
    json_object_object_add(doc, "wrapping-key", json_object_new_string(k->cmk));
    json_object_object_add(doc, "wrapping-version",
                           json_object_new_string(k->cmk_ver));
    json_object_object_add(doc, "algorithm",
                           json_object_new_string("RSA-OAEP-256"));
    json_object_object_add(doc, "wrapped", json_object_new_string(b64));
    for (i = 0; i < k->attrs.n; i++) {
        const CK_ATTRIBUTE *at = &k->attrs.v[i];
        json_object *pair = json_object_new_array();
        char t[32], *hex = malloc(2 * at->ulValueLen + 1);
        if (pair == NULL || hex == NULL) {
            free(hex);
            json_object_put(pair);
            goto out;
        }
        snprintf(t, sizeof(t), "%lx", (unsigned long)at->type);
        cmk_hex(at->pValue, at->ulValueLen, hex);
        json_object_array_add(pair, json_object_new_string(t));
        json_object_array_add(pair, json_object_new_string(hex));
        json_object_array_add(list, pair);
        free(hex);
    }
    json_object_object_add(doc, "attributes", list);
    list = NULL;
    json_object_object_add(doc, "mac",
                           json_object_new_string(cmk_hex(k->mac, 32, mac)));
    out =
        kv_strdup_printf("%s\n", json_object_to_json_string_ext(
                                     doc, JSON_C_TO_STRING_PRETTY |
                                              JSON_C_TO_STRING_NOSLASHESCAPE));
out:
    free(b64);
    json_object_put(list);
    json_object_put(doc);
    return out;
}
