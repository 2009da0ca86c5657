/*
 * The keyvault back end's helpers in memory, without a vault: the table
 * from Key Vault's answers to CKR codes (kv-errors.c, docs/errors.md),
 * base64url (kv-util.c; RFC 4648 section 5, its section 10 test vectors),
 * key names and key identifiers, the WWW-Authenticate challenge
 * (kv-request.c; RFC 9110 section 11.6.1), and the unwrap cache (cache.c: hits,
 * misses, coalesced waits, eviction, expiry and offline-grace, drops).
 * No test waits for a clock: expiry is a TTL of 0 (expired at once) or of
 * an hour (never within the test).
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv-cache.h"
#include "kv-parse.h"
#include "kv-token.h"
#include "kv.h"
#include "secure.h"
#include "test.h"

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- error mapping ---- */

static void map_is(long status, const char *body, CK_RV want,
                   const char *want_code, const char *what)
{
    char code[64], message[128];
    CK_RV rv =
        kv_map_http(status, body, code, sizeof(code), message, sizeof(message));

    is_rv(rv, want, what);
    ok(strcmp(code, want_code) == 0, "  error code '%s'", want_code);
    if (strcmp(code, want_code) != 0)
        test_diag("  got '%s'", code);
}

static void test_error_map(void)
{
    char code[64], message[16];
    CK_RV rv;

    /* The status alone (docs/errors.md, "Key Vault's answers"). */
    map_is(400, NULL, CKR_ENCRYPTED_DATA_INVALID, "", "400: the data");
    map_is(401, NULL, CKR_DEVICE_ERROR, "", "401: the identity");
    map_is(403, "", CKR_KEY_FUNCTION_NOT_PERMITTED, "", "403: not permitted");
    map_is(404, NULL, CKR_KEY_HANDLE_INVALID, "", "404: no such key");
    map_is(408, NULL, CKR_DEVICE_ERROR, "", "408");
    map_is(409, NULL, CKR_DEVICE_ERROR, "", "409");
    map_is(429, NULL, CKR_DEVICE_ERROR, "", "429: throttled");
    map_is(500, NULL, CKR_DEVICE_ERROR, "", "500");
    map_is(503, "not json", CKR_DEVICE_ERROR, "", "503 with a body not JSON");
    map_is(404, "{\"error\": 7}", CKR_KEY_HANDLE_INVALID, "",
           "404 whose error is not an object");

    /* The code decides where it is more precise than the status. */
    map_is(400, "{\"error\":{\"code\":\"KeyDisabled\",\"message\":\"m\"}}",
           CKR_KEY_FUNCTION_NOT_PERMITTED, "KeyDisabled",
           "400 KeyDisabled: not permitted");
    map_is(403, "{\"error\":{\"code\":\"ForbiddenByFirewall\"}}",
           CKR_DEVICE_ERROR, "ForbiddenByFirewall",
           "403 ForbiddenByFirewall: the network, not the key");
    map_is(403,
           "{\"error\":{\"code\":\"Forbidden\",\"innererror\":"
           "{\"code\":\"ForbiddenByRbac\"}}}",
           CKR_KEY_FUNCTION_NOT_PERMITTED, "ForbiddenByRbac",
           "the inner code is the one reported");
    map_is(400,
           "{\"error\":{\"code\":\"BadParameter\",\"innererror\":"
           "{\"code\":\"Outer\",\"innererror\":{\"code\":\"KeyExpired\"}}}}",
           CKR_KEY_FUNCTION_NOT_PERMITTED, "KeyExpired",
           "the innermost code, two levels down");
    map_is(400,
           "{\"error\":{\"code\":\"KeyNotYetValid\",\"innererror\":"
           "{\"code\":\"SomethingElse\"}}}",
           CKR_KEY_FUNCTION_NOT_PERMITTED, "SomethingElse",
           "an outer code in the table decides when the inner is not");
    map_is(409, "{\"error\":{\"code\":\"ObjectIsDeletedButRecoverable\"}}",
           CKR_KEY_HANDLE_INVALID, "ObjectIsDeletedButRecoverable",
           "a deleted key: no such key");
    map_is(400, "{\"error\":{\"code\":\"NoSuchCode\"}}",
           CKR_ENCRYPTED_DATA_INVALID, "NoSuchCode",
           "an unknown code: the status decides");
    map_is(404, "{\"error\":{\"code\":\"VaultNotFound\"}}", CKR_DEVICE_ERROR,
           "VaultNotFound", "404 VaultNotFound: the vault-url, not the key");
    map_is(400, "{\"error\":{\"code\":\"VaultNotFound\"}}",
           CKR_ENCRYPTED_DATA_INVALID, "VaultNotFound",
           "VaultNotFound's row is for a 404 only");

    /* Context rows: an operation's own codes. */
    is_rv(kv_map_context(KV_CTX_SIGN, 400, CKR_ENCRYPTED_DATA_INVALID),
          CKR_DATA_INVALID, "sign: a 400 is the data");
    is_rv(kv_map_context(KV_CTX_SIGN, 400, CKR_KEY_FUNCTION_NOT_PERMITTED),
          CKR_DATA_INVALID, "sign: a 400 whatever its code");
    is_rv(kv_map_context(KV_CTX_SIGN, 403, CKR_KEY_FUNCTION_NOT_PERMITTED),
          CKR_KEY_FUNCTION_NOT_PERMITTED, "sign: a 403 as the table says");
    is_rv(kv_map_context(KV_CTX_CREATE, 400, CKR_ENCRYPTED_DATA_INVALID),
          CKR_ENCRYPTED_DATA_INVALID, "create: a 400 as the table says");
    is_rv(kv_map_context(KV_CTX_CREATE, 409, CKR_KEY_HANDLE_INVALID),
          CKR_ATTRIBUTE_VALUE_INVALID, "create: a 409 is the label's value");
    is_rv(kv_map_context(KV_CTX_CREATE, 403, CKR_KEY_FUNCTION_NOT_PERMITTED),
          CKR_FUNCTION_FAILED, "create: a 403 is the function");
    is_rv(kv_map_context(KV_CTX_CREATE, 404, CKR_KEY_HANDLE_INVALID),
          CKR_FUNCTION_FAILED, "create: no such key is the function");
    is_rv(kv_map_context(KV_CTX_CREATE, 0, CKR_DEVICE_ERROR), CKR_DEVICE_ERROR,
          "create: unreachable stays so");

    rv = kv_map_http(403,
                     "{\"error\":{\"code\":\"AccessDenied\",\"message\":"
                     "\"a message longer than the buffer\"}}",
                     code, 8, message, sizeof(message));
    is_rv(rv, CKR_KEY_FUNCTION_NOT_PERMITTED, "AccessDenied");
    ok(strcmp(code, "AccessD") == 0, "  the code cut to its buffer");
    ok(strcmp(message, "a message longe") == 0,
       "  the message cut to its buffer");
}

/* ---- base64url ---- */

static bool decodes_to(const char *in, const void *want, size_t wantlen)
{
    size_t len = 999;
    unsigned char *out = kv_b64url_decode(in, &len);
    bool same = out != NULL && len == wantlen && memcmp(out, want, len) == 0;

    free(out);
    return same;
}

static void test_base64url(void)
{
    /* RFC 4648 section 10, without the padding (section 5 allows it to
     * be left out; Key Vault leaves it out). */
    static const char *vectors[][2] = {
        {"", ""},
        {"f", "Zg"},
        {"fo", "Zm8"},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg"},
        {"fooba", "Zm9vYmE"},
        {"foobar", "Zm9vYmFy"},
    };
    static const unsigned char url_chars[] = {0xfb, 0xff, 0xbf};
    unsigned char bytes[64], *out;
    size_t i, n, len, good = 0;
    char *enc;

    for (i = 0; i < CMK_ARRAY_SIZE(vectors); i++) {
        enc = kv_b64url_encode((const unsigned char *)vectors[i][0],
                               strlen(vectors[i][0]));
        ok(enc != NULL && strcmp(enc, vectors[i][1]) == 0,
           "encode '%s' is '%s'", vectors[i][0], vectors[i][1]);
        free(enc);
        ok(decodes_to(vectors[i][1], vectors[i][0], strlen(vectors[i][0])),
           "decode '%s'", vectors[i][1]);
    }
    enc = kv_b64url_encode(url_chars, sizeof(url_chars));
    ok(enc != NULL && strcmp(enc, "-_-_") == 0,
       "62 and 63 are '-' and '_' (section 5)");
    free(enc);
    ok(decodes_to("-_-_", url_chars, sizeof(url_chars)), "and decode back");
    ok(decodes_to("Zm8=", "fo", 2), "padding is accepted");
    ok(decodes_to("Zg==", "f", 1), "two padding characters");
    ok(kv_b64url_decode("Z", &len) == NULL, "one character alone: refused");
    ok(kv_b64url_decode("Zm9v!", &len) == NULL, "'!': refused");
    ok(kv_b64url_decode("Zm9v\n", &len) == NULL, "a newline: refused");
    ok(kv_b64url_decode("Zm=9", &len) == NULL, "padding inside: refused");

    for (n = 0; n <= sizeof(bytes); n++) {
        for (i = 0; i < n; i++)
            bytes[i] = (unsigned char)(i * 37 + n);
        enc = kv_b64url_encode(bytes, n);
        if (enc != NULL && strchr(enc, '=') == NULL &&
            strlen(enc) == (4 * n + 2) / 3 && decodes_to(enc, bytes, n))
            good++;
        free(enc);
    }
    is_num(good, sizeof(bytes) + 1,
           "0 to 64 bytes: unpadded, of the right length, round trip");

    out = kv_b64url_decode_secret("Zm9vYmFy", &len);
    ok(out != NULL && len == 6 && memcmp(out, "foobar", 6) == 0,
       "the secret decoder gives the same bytes");
    secure_free(out);
    ok(kv_b64url_decode_secret("Zm9v*", &len) == NULL,
       "the secret decoder refuses what the other does");

    enc = kv_concat("/keys/", "kek", "/", "", "/unwrapkey", NULL);
    ok(enc != NULL && strcmp(enc, "/keys/kek//unwrapkey") == 0,
       "kv_concat: the strings one after the other, an empty one too");
    free(enc);
    enc = kv_concat("", NULL);
    ok(enc != NULL && enc[0] == '\0', "kv_concat of an empty string: empty");
    free(enc);
}

/* ---- names and identifiers ---- */

static void test_names(void)
{
    char name[128], version[64], why[256], longname[130];

    ok(kv_check_key_name("kek-2", why, sizeof(why)) == 0, "kek-2: a name");
    ok(kv_check_key_name("", why, sizeof(why)) == -1, "empty: not a name");
    ok(kv_check_key_name("a_b", why, sizeof(why)) == -1, "'_': not a name");
    ok(strstr(why, "1 to 127 letters, digits and hyphens") != NULL,
       "  the message says what a name is");
    memset(longname, 'k', 127);
    longname[127] = '\0';
    ok(kv_check_key_name(longname, why, sizeof(why)) == 0, "127 characters");
    longname[127] = 'k';
    longname[128] = '\0';
    ok(kv_check_key_name(longname, why, sizeof(why)) == -1, "128: too long");
    ok(kv_check_key_name("https://v.vault.azure.net/keys/kek", why,
                         sizeof(why)) == -1,
       "a key identifier: not a name");
    ok(strstr(why, "is a URL") != NULL, "  the message says it is a URL");

    ok(kv_split_kid("https://v.vault.azure.net/keys/kek/0123abcd", name,
                    sizeof(name), version, sizeof(version)) &&
           strcmp(name, "kek") == 0 && strcmp(version, "0123abcd") == 0,
       "a key identifier: its name and version");
    ok(!kv_split_kid("https://v.vault.azure.net/keys/kek", name, sizeof(name),
                     version, sizeof(version)),
       "no version: refused");
    ok(!kv_split_kid("https://v.vault.azure.net/keys/kek/", name, sizeof(name),
                     version, sizeof(version)),
       "an empty version: refused");
    ok(!kv_split_kid("https://v.vault.azure.net/secrets/kek/01", name,
                     sizeof(name), version, sizeof(version)),
       "not under /keys/: refused");
    ok(!kv_split_kid("https://v.vault.azure.net/keys/kek/0123", name, 3,
                     version, sizeof(version)),
       "a name longer than its buffer: refused");
}

/* ---- the 401 challenge ---- */

/* want_res NULL: the challenge is refused. */
static void challenge_is(const char *h, const char *want_res,
                         const char *want_tenant, const char *what)
{
    char *res = NULL, *tenant = NULL;
    bool parsed = kv_parse_challenge(h, &res, &tenant);

    if (want_res == NULL) {
        ok(!parsed, "%s: refused", what);
        return;
    }
    ok(parsed, "%s: read", what);
    ok(res != NULL && strcmp(res, want_res) == 0, "  resource %s", want_res);
    if (res != NULL && strcmp(res, want_res) != 0)
        test_diag("  got '%s'", res);
    if (want_tenant == NULL)
        ok(tenant == NULL, "  no tenant");
    else
        ok(tenant != NULL && strcmp(tenant, want_tenant) == 0, "  tenant %s",
           want_tenant);
    if (tenant != NULL && (want_tenant == NULL || strcmp(tenant, want_tenant)))
        test_diag("  got tenant '%s'", tenant);
    free(res);
    free(tenant);
}

static void test_challenge(void)
{
    /* Key Vault's own, as the SDKs' recordings show it. */
    challenge_is("Bearer authorization=\"https://login.microsoftonline.com/"
                 "72f988bf-86f1-41af-91ab-2d7cd011db47\", "
                 "resource=\"https://vault.azure.net\"",
                 "https://vault.azure.net",
                 "72f988bf-86f1-41af-91ab-2d7cd011db47",
                 "authorization and resource");
    challenge_is("Bearer authorization_uri=\"https://login.example/tenant-1/"
                 "oauth2/authorize\", scope=\"https://vault.azure.net/"
                 ".default\"",
                 "https://vault.azure.net", "tenant-1",
                 "authorization_uri and scope alone");
    challenge_is("bearer resource=https://managedhsm.azure.net/,"
                 "Authorization=https://login.example/t2",
                 "https://managedhsm.azure.net", "t2",
                 "tokens unquoted, names in any case, the slash dropped");
    challenge_is("Bearer resource=\"https://vault.azure.net\", "
                 "authorization=\"https://login.example\"",
                 "https://vault.azure.net", NULL,
                 "an authority with no tenant in its path");
    challenge_is("Bearer error=\"invalid_token\", error_description=\"expired"
                 ", renew it\", resource=\"https://vault.azure.net\", "
                 "authorization=\"https://login.example/t3\"",
                 "https://vault.azure.net", "t3",
                 "a quoted value with a comma");
    challenge_is("Bearer error_description=\"say \\\"resource=x\\\", "
                 "twice\", resource=\"https://vault.azure.net\"",
                 "https://vault.azure.net", NULL,
                 "a quoted value with escaped quotes, a comma and an '='");
    challenge_is("Bearer resource=\"https://vault.azure.net/a\\\\b\"",
                 "https://vault.azure.net/a\\b", NULL,
                 "a quoted-pair undone in the value");
    challenge_is("Basic realm=\"vault\", Bearer authorization=\"https://"
                 "login.example/t4\", resource=\"https://vault.azure.net\", "
                 "PoP authorization=\"https://login.example/t5\", "
                 "resource=\"https://other.example\"",
                 "https://vault.azure.net", "t4",
                 "several challenges: the Bearer one's parameters only");
    challenge_is("Bearer resource=\"https://vault.azure.net\", Bearer "
                 "resource=\"https://other.example\"",
                 "https://vault.azure.net", NULL,
                 "two Bearer challenges: the first");
    challenge_is(NULL, NULL, NULL, "no header");
    challenge_is("", NULL, NULL, "an empty header");
    challenge_is("Bearer", NULL, NULL, "Bearer with no parameter");
    challenge_is("Basic realm=\"https://vault.azure.net\"", NULL, NULL,
                 "no Bearer challenge");
    challenge_is("Basic resource=\"https://vault.azure.net\"", NULL, NULL,
                 "a resource in another scheme's challenge");
    challenge_is("BearerX resource=\"https://vault.azure.net\"", NULL, NULL,
                 "a scheme that only begins with Bearer");
    challenge_is("Bearer authorization=\"https://login.example/t6\"", NULL,
                 NULL, "no resource or scope");
    challenge_is("Bearer resource=\"https://vault.azure.net", NULL, NULL,
                 "a quote left open");
    challenge_is("Bearer =\"https://vault.azure.net\"", NULL, NULL,
                 "a parameter with no name");
    challenge_is("Bearer \"https://vault.azure.net\"", NULL, NULL,
                 "a quoted string where a name belongs");
}

/* ---- links the vault sends ---- */

static void test_same_origin(void)
{
    static const char *vault = "https://kv1.vault.azure.net";
    static const struct {
        const char *url;
        bool same;
        const char *what;
    } cases[] = {
        {"https://kv1.vault.azure.net/keys?api-version=7.4&$skiptoken=x", true,
         "a nextLink on the vault"},
        {"https://KV1.Vault.Azure.NET/keys", true, "the host in another case"},
        {"https://kv1.vault.azure.net:443/keys", true,
         "the default port named"},
        {"http://kv1.vault.azure.net/keys", false, "http"},
        {"https://kv1.vault.azure.net:8443/keys", false, "another port"},
        {"https://kv2.vault.azure.net/keys", false, "another vault"},
        {"https://kv1.vault.azure.net.example/keys", false,
         "a host that only begins with the vault's"},
        {"https://user@kv1.vault.azure.net/keys", false, "user information"},
        {"https://:pw@kv1.vault.azure.net/keys", false, "a password"},
        {"https://kv1.vault.azure.net@evil.example/keys", false,
         "the vault as user information of another host"},
        {"/keys?$skiptoken=x", false, "a relative link"},
        {"", false, "empty"},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ok(kv_same_origin(vault, cases[i].url) == cases[i].same, "%s: %s",
           cases[i].what, cases[i].same ? "followed" : "not followed");
    ok(kv_same_origin("https://127.0.0.1:8443", "https://127.0.0.1:8443/k"),
       "a vault on a port: the same port");
    ok(!kv_same_origin("https://127.0.0.1:8443", "https://127.0.0.1/k"),
       "a vault on a port: not 443");
}

/* ---- the unwrap cache ---- */

static const int version_a = 1, version_b = 2;
static const unsigned char blob[256] = {1, 2, 3};

struct waiter {
    struct kv_cache *c;
    const unsigned char *id;
    int r;
    unsigned char out[64];
    size_t len;
};

static void *wait_for(void *arg)
{
    struct waiter *w = arg;

    w->len = sizeof(w->out);
    /* The deadline bounds the wait; the answer ends it. */
    w->r = kv_cache_get(w->c, w->id, &version_a, now_ms() + 60000, false,
                        w->out, &w->len);
    return NULL;
}

static bool is_version_a(const void *version, void *arg)
{
    (void)arg;
    return version == &version_a;
}

static void test_cache_ids(void)
{
    unsigned char a[32], b[32];

    kv_cache_id(&version_a, "RSA-OAEP-256", blob, sizeof(blob), a);
    kv_cache_id(&version_a, "RSA-OAEP-256", blob, sizeof(blob), b);
    ok(memcmp(a, b, 32) == 0, "the same unwrap: the same id");
    kv_cache_id(&version_b, "RSA-OAEP-256", blob, sizeof(blob), b);
    ok(memcmp(a, b, 32) != 0, "another key version: another id");
    kv_cache_id(&version_a, "RSA-OAEP", blob, sizeof(blob), b);
    ok(memcmp(a, b, 32) != 0, "another algorithm: another id");
    kv_cache_id(&version_a, "RSA-OAEP-256", blob, sizeof(blob) - 1, b);
    ok(memcmp(a, b, 32) != 0, "other bytes: another id");
}

static void test_cache(void)
{
    static const unsigned char dek[32] = "a data key of thirty-two bytes!";
    unsigned char ida[32], idb[32], idc[32], out[64];
    struct kv_cache *c = kv_cache_new(3600 * 1000L, 2);
    struct waiter w;
    pthread_t th;
    size_t len;

    kv_cache_id(&version_a, "RSA-OAEP-256", blob, sizeof(blob), ida);
    kv_cache_id(&version_a, "RSA-OAEP-256", blob, 100, idb);
    kv_cache_id(&version_b, "RSA-OAEP-256", blob, sizeof(blob), idc);

    len = sizeof(out);
    is_num(kv_cache_get(c, ida, &version_a, now_ms(), false, out, &len),
           KV_CACHE_MISS, "the first unwrap: a miss (ask the vault)");
    len = sizeof(out);
    is_num(kv_cache_get(c, ida, &version_a, now_ms() - 1, false, out, &len),
           KV_CACHE_BYPASS,
           "the same unwrap while the first is pending, past its deadline: "
           "bypass");

    /* A second caller waits for the first one's answer. */
    w.c = c;
    w.id = ida;
    if (pthread_create(&th, NULL, wait_for, &w) != 0)
        test_bail("pthread_create");
    kv_cache_put(c, ida, dek, sizeof(dek));
    pthread_join(th, NULL);
    is_num(w.r, KV_CACHE_HIT, "a waiting caller gets the answer");
    ok(w.len == sizeof(dek) && memcmp(w.out, dek, w.len) == 0,
       "  the value put");

    len = sizeof(out);
    is_num(kv_cache_get(c, ida, &version_a, now_ms(), false, out, &len),
           KV_CACHE_HIT, "the same unwrap again: a hit");
    ok(len == sizeof(dek) && memcmp(out, dek, len) == 0, "  the value");
    len = 16;
    is_num(kv_cache_get(c, ida, &version_a, now_ms(), false, out, &len),
           KV_CACHE_BYPASS, "a buffer too small for it: bypass");

    len = sizeof(out);
    is_num(kv_cache_get(c, idb, &version_a, now_ms(), false, out, &len),
           KV_CACHE_MISS, "another unwrap: a miss");
    kv_cache_abandon(c, idb);
    len = sizeof(out);
    is_num(kv_cache_get(c, idb, &version_a, now_ms(), false, out, &len),
           KV_CACHE_MISS, "after the vault failed (abandoned): a miss again");

    /* Full (two entries, one pending): the ready one makes room. */
    len = sizeof(out);
    is_num(kv_cache_get(c, idc, &version_b, now_ms(), false, out, &len),
           KV_CACHE_MISS, "a third unwrap in a cache of two: a miss");
    len = sizeof(out);
    is_num(kv_cache_get(c, ida, &version_a, now_ms(), false, out, &len),
           KV_CACHE_BYPASS, "the evicted one, with both slots pending: bypass");
    kv_cache_put(c, idb, dek, 16);
    kv_cache_put(c, idc, dek, 24);
    is_num(kv_cache_drop(c, is_version_a, NULL), 1,
           "dropping one key version's entries");
    len = sizeof(out);
    is_num(kv_cache_get(c, idc, &version_b, now_ms(), false, out, &len),
           KV_CACHE_HIT, "  the other version's stays");
    is_num(len, 24, "  with its value");
    is_num(kv_cache_drop(c, NULL, NULL), 1, "dropping all");
    len = sizeof(out);
    is_num(kv_cache_get(c, idc, &version_b, now_ms(), false, out, &len),
           KV_CACHE_MISS, "  then a miss");
    kv_cache_abandon(c, idc);
    kv_cache_free(c);
}

/* TTL 0: every value is expired as soon as it is put. */
static void test_cache_expiry(void)
{
    static const unsigned char dek[16] = "sixteen byte key";
    unsigned char id[32], idn[32], out[64];
    struct kv_cache *c = kv_cache_new(0, 4);
    size_t len;

    kv_cache_id(&version_a, "RSA-OAEP-256", blob, sizeof(blob), id);
    kv_cache_id(&version_b, "RSA-OAEP-256", blob, sizeof(blob), idn);
    len = sizeof(out);
    kv_cache_get(c, id, &version_a, now_ms(), false, out, &len);
    kv_cache_put(c, id, dek, sizeof(dek));
    len = sizeof(out);
    is_num(kv_cache_get(c, id, &version_a, now_ms(), false, out, &len),
           KV_CACHE_MISS, "an expired value: a miss (ask the vault again)");
    len = sizeof(out);
    is_num(kv_cache_stale(c, id, out, &len), KV_CACHE_HIT,
           "the vault unreachable: the expired value is served");
    ok(len == sizeof(dek) && memcmp(out, dek, len) == 0, "  its bytes");
    len = sizeof(out);
    is_num(kv_cache_get(c, id, &version_a, now_ms(), false, out, &len),
           KV_CACHE_MISS, "  and asked for again next time");
    kv_cache_abandon(c, id);
    len = sizeof(out);
    is_num(kv_cache_get(c, id, &version_a, now_ms(), false, out, &len),
           KV_CACHE_MISS, "abandoned: gone");
    kv_cache_put(c, id, dek, sizeof(dek));
    len = sizeof(out);
    is_num(kv_cache_get(c, id, &version_a, now_ms(), true, out, &len),
           KV_CACHE_HIT,
           "past_ttl (offline-grace): an expired value is served");
    len = sizeof(out);
    kv_cache_get(c, idn, &version_b, now_ms(), false, out, &len);
    len = sizeof(out);
    is_num(kv_cache_stale(c, idn, out, &len), KV_CACHE_MISS,
           "no value yet and the vault unreachable: a miss");
    len = sizeof(out);
    is_num(kv_cache_get(c, idn, &version_b, now_ms(), false, out, &len),
           KV_CACHE_MISS, "  and the entry is gone");
    kv_cache_abandon(c, idn);
    kv_cache_free(c);
}

int main(void)
{
    test_error_map();
    test_base64url();
    test_names();
    test_challenge();
    test_same_origin();
    test_cache_ids();
    test_cache();
    test_cache_expiry();
    return test_done();
}
