/*
 * libFuzzer harness: a keyvault token secret key's state file
 * (provider/keyvault/kv-skey.c), read as the module reads it from the
 * token's state directory. A file that reads is written again and must
 * read back to the same key; its MAC is computed under a fixed value.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kv-skey.h"

/* The file's name is ID.json: the seeds carry this id. */
#define FUZZ_ID "0123456789abcdef0123456789abcdef"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_attrs(const struct attrs *a, const struct attrs *b)
{
    CK_ULONG i;

    if (a->n != b->n)
        return false;
    for (i = 0; i < a->n; i++)
        if (a->v[i].type != b->v[i].type ||
            a->v[i].ulValueLen != b->v[i].ulValueLen ||
            (a->v[i].ulValueLen > 0 &&
             memcmp(a->v[i].pValue, b->v[i].pValue, a->v[i].ulValueLen) != 0))
            return false;
    return true;
}

static bool same_key(const struct kv_skey *a, const struct kv_skey *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->uid, b->uid) == 0 &&
           strcmp(a->cmk, b->cmk) == 0 && strcmp(a->cmk_ver, b->cmk_ver) == 0 &&
           a->wrapped_len == b->wrapped_len &&
           memcmp(a->wrapped, b->wrapped, a->wrapped_len) == 0 &&
           memcmp(a->mac, b->mac, sizeof(a->mac)) == 0 &&
           same_attrs(&a->attrs, &b->attrs);
}

/* What a key that reads promises the rest of the module. */
static void check_key(const struct kv_skey *k)
{
    const CK_ATTRIBUTE *cls = attrs_find(&k->attrs, CKA_CLASS);
    CK_OBJECT_CLASS c;

    if (k->id == NULL || strcmp(k->id, FUZZ_ID) != 0 || k->uid == NULL ||
        k->cmk == NULL || *k->cmk == '\0' || k->cmk_ver == NULL ||
        *k->cmk_ver == '\0' || k->wrapped == NULL || k->wrapped_len == 0 ||
        k->value != NULL || cls == NULL || cls->ulValueLen != sizeof(c) ||
        attrs_find(&k->attrs, CKA_KEY_TYPE) == NULL ||
        attrs_find(&k->attrs, CKA_VALUE) != NULL)
        abort();
    memcpy(&c, cls->pValue, sizeof(c));
    if (c != CKO_SECRET_KEY)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned char value[32] = {1, 2, 3};
    struct kv_skey *k, *again;
    unsigned char mac[32];
    char why[160], *text, *out;

    /* The module reads a file into a NUL-terminated buffer. */
    text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    why[0] = '\0';
    k = kv_skey_parse(text, size, FUZZ_ID, why, sizeof(why));
    free(text);
    if (k == NULL) {
        if (why[0] == '\0')
            abort(); /* a refusal always says why */
        return 0;
    }
    check_key(k);
    if (kv_skey_mac(value, sizeof(value), k->id, k->cmk, &k->attrs, mac) != 0)
        abort();
    out = kv_skey_json(k);
    if (out == NULL)
        abort();
    again = kv_skey_parse(out, strlen(out), FUZZ_ID, why, sizeof(why));
    if (again == NULL || !same_key(k, again))
        abort(); /* what the module writes, it reads back the same */
    kv_skey_free(again);
    kv_skey_free(k);
    free(out);
    return 0;
}
