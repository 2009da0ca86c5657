/*
 * One table from Key Vault's answers to CKR codes (docs/errors.md). The
 * error code in the body decides where it is more precise than the status.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "kv.h"

static const struct {
    const char *code; /* error.code or error.innererror.code; NULL: any */
    long status;      /* 0: any */
    CK_RV rv;
} map[] = {
    {"KeyDisabled", 0, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"KeyNotYetValid", 0, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"KeyExpired", 0, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"KeyOperationForbidden", 0, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"ForbiddenByRbac", 0, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"ForbiddenByPolicy", 0, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"AccessDenied", 0, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"ForbiddenByFirewall", 0, CKR_DEVICE_ERROR},
    {"KeyNotFound", 0, CKR_KEY_HANDLE_INVALID},
    {"ObjectIsDeletedButRecoverable", 0, CKR_KEY_HANDLE_INVALID},
    {"ObjectIsBeingDeleted", 0, CKR_KEY_HANDLE_INVALID},
    /* A typo in vault-url, not an empty vault. */
    {"VaultNotFound", 404, CKR_DEVICE_ERROR},
    {NULL, 400, CKR_ENCRYPTED_DATA_INVALID},
    {NULL, 401, CKR_DEVICE_ERROR},
    {NULL, 403, CKR_KEY_FUNCTION_NOT_PERMITTED},
    {NULL, 404, CKR_KEY_HANDLE_INVALID},
    {NULL, 408, CKR_DEVICE_ERROR},
    {NULL, 409, CKR_DEVICE_ERROR},
    {NULL, 429, CKR_DEVICE_ERROR},
};

static void find_code(json_object *err, char *code, size_t codelen)
{
    json_object *inner;
    const char *c = kv_json_str(err, "code");

    if (c != NULL)
        snprintf(code, codelen, "%s", c);
    /* The inner code is the precise one (ForbiddenByRbac, KeyDisabled). */
    while (err != NULL &&
           json_object_object_get_ex(err, "innererror", &inner) &&
           json_object_is_type(inner, json_type_object)) {
        c = kv_json_str(inner, "code");
        if (c != NULL)
            snprintf(code, codelen, "%s", c);
        err = inner;
    }
}

CK_RV kv_map_http(long status, const char *body, char *code, size_t codelen,
                  char *message, size_t msglen)
{
    json_object *doc = body ? json_tokener_parse(body) : NULL, *err = NULL;
    const char *m;
    char outer[64] = "";
    size_t i;
    CK_RV rv = CKR_DEVICE_ERROR;

    code[0] = '\0';
    message[0] = '\0';
    if (doc != NULL && json_object_object_get_ex(doc, "error", &err) &&
        json_object_is_type(err, json_type_object)) {
        find_code(err, code, codelen);
        m = kv_json_str(err, "message");
        if (m != NULL)
            snprintf(message, msglen, "%s", m);
        m = kv_json_str(err, "code");
        if (m != NULL)
            snprintf(outer, sizeof(outer), "%s", m);
    }
    for (i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (map[i].code != NULL &&
            (map[i].status == 0 || map[i].status == status) &&
            (strcmp(map[i].code, code) == 0 ||
             strcmp(map[i].code, outer) == 0)) {
            rv = map[i].rv;
            goto out;
        }
    }
    for (i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (map[i].code == NULL && map[i].status == status) {
            rv = map[i].rv;
            goto out;
        }
    }
out:
    json_object_put(doc);
    return rv;
}

/* Context rows: where an operation's codes differ from the table's. The
 * first row that fits decides. */
static const struct {
    enum kv_context ctx;
    long status; /* 0: any */
    CK_RV from;  /* what the table gave; CKR_OK: any */
    CK_RV rv;
} context[] = {
    /* C_Sign: the data, not the encrypted data (a 400 on sign). */
    {KV_CTX_SIGN, 400, CKR_OK, CKR_DATA_INVALID},
    /* C_GenerateKeyPair's codes: a 409 (the name held by a deleted key) is
     * the label's value; a 403 or a missing key the function. */
    {KV_CTX_CREATE, 409, CKR_OK, CKR_ATTRIBUTE_VALUE_INVALID},
    {KV_CTX_CREATE, 403, CKR_OK, CKR_FUNCTION_FAILED},
    {KV_CTX_CREATE, 0, CKR_KEY_HANDLE_INVALID, CKR_FUNCTION_FAILED},
    /* C_SetAttributeValue (Update Key): a 403 (no update permission) is
     * the function's failure; a version gone, the object's handle. */
    {KV_CTX_UPDATE, 403, CKR_OK, CKR_FUNCTION_FAILED},
    {KV_CTX_UPDATE, 0, CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID},
};

CK_RV kv_map_context(enum kv_context ctx, long status, CK_RV rv)
{
    size_t i;

    for (i = 0; i < sizeof(context) / sizeof(context[0]); i++)
        if (context[i].ctx == ctx &&
            (context[i].status == 0 || context[i].status == status) &&
            (context[i].from == CKR_OK || context[i].from == rv))
            return context[i].rv;
    return rv;
}
