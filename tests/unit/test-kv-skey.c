/*
 * A keyvault token secret key's state file in memory (kv-skey.c,
 * docs/keyvault.md "Token secret keys"): the files the module wrote (the
 * fuzz harness's seeds) read and written back, each refusal with the
 * reason the log gives, the MAC against values computed apart (Python's
 * hmac), and the names of the writers' temporary files.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"
#include "kv-skey.h"
#include "secure.h"
#include "test.h"

#define ID "0123456789abcdef0123456789abcdef"

static char *read_seed(const char *name, size_t *len)
{
    const char *dir = getenv("srcdir");
    char path[1024], *text = NULL;
    long n;
    FILE *f;

    snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/kv-store/%s",
             dir ? dir : ".", name);
    f = fopen(path, "rb");
    if (f == NULL)
        test_bail("%s: cannot be read", path);
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 &&
        fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1)) != NULL &&
        fread(text, 1, (size_t)n, f) == (size_t)n) {
        text[n] = '\0';
        *len = (size_t)n;
    } else {
        test_bail("%s: cannot be read", path);
    }
    fclose(f);
    return text;
}

/* Parses text; why is the refusal's reason ("" when it reads). */
static struct kv_skey *parse(const char *text, char *why, size_t whylen)
{
    struct kv_skey *k;

    why[0] = '\0';
    k = kv_skey_parse(text, strlen(text), ID, why, whylen);
    if (k != NULL)
        why[0] = '\0';
    return k;
}

static void test_seeds(void)
{
    static const char *const names[] = {"aes-256-sensitive", "aes-128-imported",
                                        "generic-secret-hmac", "compact"};
    size_t i, len;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char why[160], *text = read_seed(names[i], &len), *out;
        struct kv_skey *k = kv_skey_parse(text, len, ID, why, sizeof(why));
        struct kv_skey *again = NULL;

        ok(k != NULL, "%s: reads", names[i]);
        if (k == NULL) {
            test_diag("  %s", why);
            free(text);
            continue;
        }
        ok(strcmp(k->cmk, "kek") == 0 && strcmp(k->uid, "secret/" ID) == 0 &&
               k->wrapped_len == 256 && k->value == NULL,
           "%s: wrapping key kek, uid secret/ID, 256 wrapped bytes, no value",
           names[i]);
        out = kv_skey_json(k);
        again =
            out ? kv_skey_parse(out, strlen(out), ID, why, sizeof(why)) : NULL;
        ok(again != NULL && again->attrs.n == k->attrs.n &&
               strcmp(again->cmk_ver, k->cmk_ver) == 0 &&
               memcmp(again->mac, k->mac, 32) == 0,
           "%s: written again, reads back the same", names[i]);
        kv_skey_free(again);
        kv_skey_free(k);
        free(out);
        free(text);
    }
}

static void test_seed_refusals(void)
{
    static const struct {
        const char *name, *why;
    } cases[] = {
        {"truncated", "not JSON (truncated?)"},
        {"version-2", "format version 2 (this module reads 1)"},
        {"attribute-twice", "attribute 1 malformed"},
        {"attribute-value", "attribute 1 malformed"},
        {"short-mac", "no mac"},
    };
    size_t i, len;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char why[160] = "", *text = read_seed(cases[i].name, &len);
        struct kv_skey *k = kv_skey_parse(text, len, ID, why, sizeof(why));

        ok(k == NULL && strcmp(why, cases[i].why) == 0, "%s: refused (%s)",
           cases[i].name, cases[i].why);
        if (k != NULL || strcmp(why, cases[i].why) != 0)
            test_diag("  got '%s'", why);
        kv_skey_free(k);
        free(text);
    }
}

/* A file of format 1 with these fields; attrs is added after the class
 * and key type (an AES key). */
static char *file_text(const char *format, const char *cmk, const char *ver,
                       const char *attrs)
{
    CK_ULONG cls = CKO_SECRET_KEY, type = CKK_AES;
    char chex[2 * sizeof(CK_ULONG) + 1], thex[2 * sizeof(CK_ULONG) + 1];
    static char text[2048];

    cmk_hex(&cls, sizeof(cls), chex);
    cmk_hex(&type, sizeof(type), thex);
    snprintf(text, sizeof(text),
             "{\"format\":\"%s\",\"version\":1,\"id\":\"" ID "\","
             "\"wrapping-key\":\"%s\",\"wrapping-version\":\"%s\","
             "\"algorithm\":\"RSA-OAEP-256\",\"wrapped\":\"AQID\","
             "\"attributes\":[[\"0\",\"%s\"],[\"100\",\"%s\"]%s],"
             "\"mac\":\"%064d\"}\n",
             format, cmk, ver, chex, thex, attrs, 0);
    return text;
}

static void refused(const char *format, const char *cmk, const char *ver,
                    const char *attrs, const char *want, const char *what)
{
    char why[160];
    struct kv_skey *k =
        parse(file_text(format, cmk, ver, attrs), why, sizeof(why));

    ok(k == NULL && strcmp(why, want) == 0, "%s: refused (%s)", what, want);
    if (k != NULL || strcmp(why, want) != 0)
        test_diag("  got '%s'", why);
    kv_skey_free(k);
}

static void test_refusals(void)
{
    static const char *const types[] = {
        "0x3", " 3", "+3", "-3", "3 ", "C", "00000000000000003", ""};
    char why[160], attr[64];
    struct kv_skey *k;
    size_t i;

    k = parse(file_text(SK_FORMAT, "kek", "v1", ",[\"3\",\"6b\"]"), why,
              sizeof(why));
    ok(k != NULL && k->attrs.n == 3 && k->wrapped_len == 3,
       "a minimal file reads: class, key type, label; 3 wrapped bytes");
    kv_skey_free(k);
    /* Attribute types as the writer writes them: lowercase hex only. */
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        snprintf(attr, sizeof(attr), ",[\"%s\",\"6b\"]", types[i]);
        snprintf(why, sizeof(why), "attribute type '%s'", types[i]);
        refused(SK_FORMAT, "kek", "v1", attr, "attribute 2 malformed", why);
    }
    /* What the writer never writes. */
    refused(SK_FORMAT, "kek", "v1", ",[\"11\",\"00\"]", "attribute 2 malformed",
            "CKA_VALUE");
    refused(SK_FORMAT, "kek", "v1", ",[\"1\",\"01\"]", "attribute 2 malformed",
            "CKA_TOKEN");
    refused(SK_FORMAT, "kek", "v1", ",[\"80000000\",\"01\"]",
            "attribute 2 malformed", "a vendor attribute");
    refused(SK_FORMAT, "kek", "v1", ",[\"161\",\"20000000\"]",
            "attribute 2 malformed", "a CKA_VALUE_LEN of 4 bytes");
    refused(SK_FORMAT, "kek", "v1", ",[\"3\",\"6b\\u00006b\"]",
            "attribute 2 malformed", "a NUL inside a value's hex");
    refused(SK_FORMAT "\\u0000x", "kek", "v1", "", "not a " SK_FORMAT " file",
            "a NUL inside the format's name");
    refused(SK_FORMAT, "a/b", "v1", "",
            "wrapping-key is not a Key Vault key name",
            "a wrapping key name with a slash");
    refused(SK_FORMAT, "https://v.vault.azure.net/keys/kek", "v1", "",
            "wrapping-key is not a Key Vault key name",
            "a key identifier as the wrapping key");
    refused(SK_FORMAT, "kek", "v/1", "", "wrapping-version is not a version id",
            "a wrapping version with a slash");
    refused(SK_FORMAT, "kek", "", "", "no wrapping key or version",
            "an empty wrapping version");
}

static void mac_is(const char *cmk, const char *want, const char *what)
{
    static const unsigned char value[32] = {1, 2, 3};
    static const unsigned char cls[8] = {4}; /* as a file holds it */
    unsigned char mac[32];
    char hex[65] = "";
    struct attrs a;

    attrs_init(&a);
    attrs_set(&a, CKA_CLASS, cls, sizeof(cls));
    attrs_set(&a, CKA_LABEL, "abc", 3);
    attrs_set(&a, CKA_ID, "", 0);
    ok(kv_skey_mac(value, sizeof(value), ID, cmk, &a, mac) == 0 &&
           strcmp(cmk_hex(mac, 32, hex), want) == 0,
       "%s", what);
    if (strcmp(hex, want) != 0)
        test_diag("  got %s\n  want %s", hex, want);
    attrs_clear(&a);
}

static void test_mac(void)
{
    char longname[301];

    mac_is("kek",
           "0d6f7403b564652fcb5d711c9a58f87435ecd90960660a287495df691b945aed",
           "the MAC of a key under wrapping key kek: the documented text");
    memset(longname, 'k', 300);
    longname[300] = '\0';
    mac_is(longname,
           "49d148ab38332d733e1d2b87344937c00498afba21cbfe8f4af4bdc5e49f479f",
           "the MAC covers a 300-character name in full");
}

static void test_tmp_names(void)
{
    static const struct {
        const char *name;
        long pid;
    } cases[] = {
        {"." ID ".json.tmp.4242", 4242},
        {"." ID ".json.tmp.1", 1},
        {"." ID ".json.tmp.2147483647", 2147483647},
        {"." ID ".json.tmp.2147483648", 0},
        {"." ID ".json.tmp.99999999999", 0},
        {"." ID ".json.tmp.0", 0},
        {"." ID ".json.tmp.0123", 0},
        {"." ID ".json.tmp.-1", 0},
        {"." ID ".json.tmp.+1", 0},
        {"." ID ".json.tmp.12x", 0},
        {"." ID ".json.tmp.", 0},
        {"." ID ".json.tmp.4242.1", 4242},
        {"." ID ".json.tmp.4242.9999999999", 4242},
        {"." ID ".json.tmp.2147483647.17", 2147483647},
        {"." ID ".json.tmp.4242.", 0},
        {"." ID ".json.tmp.4242.0", 0},
        {"." ID ".json.tmp.4242.01", 0},
        {"." ID ".json.tmp.4242.1.2", 0},
        {"." ID ".json.tmp.4242.x", 0},
        {"." ID ".json.tmp..1", 0},
        {"." ID ".json.tmp.0.1", 0},
        {ID ".json", 0},
        {ID ".json.tmp.12", 0},
        {".0123456789ABCDEF0123456789abcdef.json.tmp.12", 0},
        {".0123456789abcdef.json.tmp.12", 0},
        {"." ID ".jsn.tmp.12", 0},
        {".", 0},
        {"", 0},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        is_num(kv_skey_tmp_pid(cases[i].name), cases[i].pid,
               "temporary file name '%s': pid %ld", cases[i].name,
               cases[i].pid);
}

int main(void)
{
    test_seeds();
    test_seed_refusals();
    test_refusals();
    test_mac();
    test_tmp_names();
    return test_done();
}
