#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "kv.h"
#include "secure.h"

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t kv_b64url_len(size_t len)
{
    return len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
}

void kv_b64url_write(char *out, const unsigned char *in, size_t len)
{
    size_t i;

    for (i = 0; i + 3 <= len; i += 3) {
        unsigned long v = (unsigned long)in[i] << 16 |
                          (unsigned long)in[i + 1] << 8 | in[i + 2];
        *out++ = b64url[v >> 18];
        *out++ = b64url[(v >> 12) & 63];
        *out++ = b64url[(v >> 6) & 63];
        *out++ = b64url[v & 63];
    }
    if (len - i == 1) {
        *out++ = b64url[in[i] >> 2];
        *out = b64url[(in[i] & 3) << 4];
    } else if (len - i == 2) {
        *out++ = b64url[in[i] >> 2];
        *out++ = b64url[(in[i] & 3) << 4 | in[i + 1] >> 4];
        *out = b64url[(in[i + 1] & 15) << 2];
    }
}

char *kv_b64url_encode(const unsigned char *in, size_t len)
{
    size_t n = kv_b64url_len(len);
    char *out = len < SIZE_MAX / 2 ? malloc(n + 1) : NULL;

    if (out == NULL)
        return NULL;
    kv_b64url_write(out, in, len);
    out[n] = '\0';
    return out;
}

char *kv_concat(const char *s, ...)
{
    va_list ap;
    const char *p;
    size_t n = 0, l;
    char *out, *o;

    va_start(ap, s);
    for (p = s; p != NULL; p = va_arg(ap, const char *)) {
        l = strlen(p);
        if (l > SIZE_MAX / 2 - n) {
            va_end(ap);
            return NULL;
        }
        n += l;
    }
    va_end(ap);
    out = o = malloc(n + 1);
    if (out == NULL)
        return NULL;
    va_start(ap, s);
    for (p = s; p != NULL; p = va_arg(ap, const char *)) {
        l = strlen(p);
        memcpy(o, p, l);
        o += l;
    }
    va_end(ap);
    *o = '\0';
    return out;
}

/* The working copy is wiped: it may be key material in base64. */
static unsigned char *b64url_decode(const char *in, size_t *len, bool secret)
{
    size_t n = strlen(in), cap = n + 4, i, pad;
    char *tmp = n < INT_MAX - 4 ? secure_alloc(cap) : NULL;
    unsigned char *out = NULL;
    int w;

    if (tmp == NULL)
        goto fail;
    out = secret ? secure_alloc(cap) : malloc(cap);
    if (out == NULL)
        goto fail;
    while (n > 0 && in[n - 1] == '=')
        n--;
    for (i = 0; i < n; i++) {
        char ch = in[i];
        if (ch == '-')
            ch = '+';
        else if (ch == '_')
            ch = '/';
        else if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                   (ch >= '0' && ch <= '9') || ch == '+' || ch == '/'))
            goto fail;
        tmp[i] = ch;
    }
    pad = (4 - n % 4) % 4;
    if (pad == 3)
        goto fail;
    memset(tmp + n, '=', pad);
    n += pad;
    w = EVP_DecodeBlock(out, (unsigned char *)tmp, (int)n);
    if (w < 0)
        goto fail;
    *len = (size_t)w - pad;
    secure_free(tmp);
    return out;
fail:
    secure_free(tmp);
    secure_free(out); /* secure_alloc'd or malloc'd: either is taken */
    return NULL;
}

unsigned char *kv_b64url_decode(const char *in, size_t *len)
{
    return b64url_decode(in, len, false);
}

unsigned char *kv_b64url_decode_secret(const char *in, size_t *len)
{
    return b64url_decode(in, len, true);
}

char *kv_strdup_printf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* Percent-encodes all but RFC 3986's unreserved characters, as
 * curl_easy_escape does; kept because it escapes client secrets too, into
 * one buffer the caller wipes, where libcurl's growing buffer would leave
 * copies in freed memory. */
char *kv_url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *p = out;

    if (out == NULL)
        return NULL;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
            (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' ||
            ch == '~') {
            *p++ = (char)ch;
        } else {
            *p++ = '%';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    *p = '\0';
    return out;
}

const char *kv_json_str(json_object *o, const char *key)
{
    json_object *v;

    if (o == NULL || !json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

bool kv_json_bool(json_object *o, const char *key, bool dflt)
{
    json_object *v;

    if (o == NULL || !json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_boolean))
        return dflt;
    return json_object_get_boolean(v);
}

long long kv_clamp_double(double d, long long lo, long long hi)
{
    /* A cast of a value outside long long (or NaN) is undefined. */
    if (isnan(d))
        return lo;
    if (d <= (double)lo)
        return lo;
    if (d >= (double)hi)
        return hi;
    return (long long)d;
}

long long kv_json_int(json_object *o, const char *key, long long dflt)
{
    json_object *v;

    if (o == NULL || !json_object_object_get_ex(o, key, &v))
        return dflt;
    if (json_object_is_type(v, json_type_int))
        return (long long)json_object_get_int64(v);
    if (json_object_is_type(v, json_type_double))
        return kv_clamp_double(json_object_get_double(v), LLONG_MIN / 2,
                               LLONG_MAX / 2);
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        char *end;
        long long n;
        errno = 0;
        n = strtoll(s, &end, 10);
        return end != s && *end == '\0' && errno == 0 ? n : dflt;
    }
    return dflt;
}

/*
 * Object names in Key Vault: 1 to 127 characters, 0-9, a-z, A-Z and "-"
 * ("Vault-name and Object-name" in "About keys, secrets and certificates",
 * Azure Key Vault documentation). A URL is the usual mistake: the key
 * identifier pasted where its name belongs.
 */
int kv_check_key_name(const char *name, char *why, size_t len)
{
    size_t i, n = strlen(name);

    if (strstr(name, "://") != NULL || strncmp(name, "https:", 6) == 0) {
        snprintf(why, len,
                 "'%s' is a URL; keys = takes key names (the part after "
                 "/keys/ in a key identifier), the vault is vault-url",
                 name);
        return -1;
    }
    for (i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || c == '-'))
            break;
    }
    if (n == 0 || n > 127 || i < n) {
        snprintf(why, len,
                 "'%s' is not a Key Vault key name (1 to 127 letters, "
                 "digits and hyphens)",
                 name);
        return -1;
    }
    return 0;
}

int64_t kv_backoff_ms(int64_t first_ms, int n)
{
    unsigned char rnd = 0;
    int64_t base = first_ms * ((int64_t)1 << (n < 6 ? n : 6));

    RAND_bytes(&rnd, 1);
    return base * (80 + rnd % 51) / 100;
}

void kv_sleep_ms(int64_t ms)
{
    struct timespec ts;

    if (ms <= 0)
        return;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}
