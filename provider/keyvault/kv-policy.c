/*
 * A key's rotation policy (CKA_CMK_ROTATION_POLICY, docs/vendor.md): read
 * with GET /keys/NAME/rotationpolicy when a template asks for it, written
 * with PUT to the same path (Key Vault REST 7.3 and later: "Get Key Rotation
 * Policy", "Update Key Rotation Policy"). The vault rotates the key by itself
 * as the policy says; nothing here rotates.
 *
 * The service's body and the attribute's text (common/rotpolicy.h):
 *   Rotate, trigger timeAfterCreate   rotate-after
 *   Rotate, trigger timeBeforeExpiry  rotate-before-expiry
 *   Notify, trigger timeBeforeExpiry  notify-before
 *   attributes.expiryTime             expire-after
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "debug.h"
#include "kv-token.h"
#include "rotpolicy.h"

static void from_json(json_object *doc, struct rotpolicy *p)
{
    json_object *acts = NULL, *attrs = NULL;
    const char *s;
    size_t i, n;

    memset(p, 0, sizeof(*p));
    if (json_object_object_get_ex(doc, "lifetimeActions", &acts) &&
        json_object_is_type(acts, json_type_array)) {
        n = json_object_array_length(acts);
        for (i = 0; i < n; i++) {
            json_object *a = json_object_array_get_idx(acts, i), *trig = NULL,
                        *act = NULL;
            const char *type, *after, *before;
            char *dst = NULL;
            if (!json_object_object_get_ex(a, "trigger", &trig) ||
                !json_object_object_get_ex(a, "action", &act))
                continue;
            type = kv_json_str(act, "type");
            after = kv_json_str(trig, "timeAfterCreate");
            before = kv_json_str(trig, "timeBeforeExpiry");
            if (type == NULL)
                continue;
            if (strcasecmp(type, "Rotate") == 0 && after != NULL)
                dst = p->rotate_after;
            else if (strcasecmp(type, "Rotate") == 0 && before != NULL)
                dst = p->rotate_before;
            else if (strcasecmp(type, "Notify") == 0 && before != NULL)
                dst = p->notify_before;
            if (dst != NULL)
                snprintf(dst, ROTPOLICY_DUR_MAX, "%s",
                         after != NULL ? after : before);
        }
    }
    if (json_object_object_get_ex(doc, "attributes", &attrs) &&
        (s = kv_json_str(attrs, "expiryTime")) != NULL)
        snprintf(p->expire_after, ROTPOLICY_DUR_MAX, "%s", s);
}

static void add_action(json_object *acts, const char *type, const char *when,
                       const char *dur)
{
    json_object *a, *trig, *act;

    if (*dur == '\0')
        return;
    a = json_object_new_object();
    trig = json_object_new_object();
    act = json_object_new_object();
    json_object_object_add(trig, when, json_object_new_string(dur));
    json_object_object_add(act, "type", json_object_new_string(type));
    json_object_object_add(a, "trigger", trig);
    json_object_object_add(a, "action", act);
    json_object_array_add(acts, a);
}

static char *to_json(const struct rotpolicy *p)
{
    json_object *doc = json_object_new_object(),
                *acts = json_object_new_array(),
                *attrs = json_object_new_object();
    char *out;

    add_action(acts, "Rotate", "timeAfterCreate", p->rotate_after);
    add_action(acts, "Rotate", "timeBeforeExpiry", p->rotate_before);
    add_action(acts, "Notify", "timeBeforeExpiry", p->notify_before);
    if (*p->expire_after != '\0')
        json_object_object_add(attrs, "expiryTime",
                               json_object_new_string(p->expire_after));
    json_object_object_add(doc, "lifetimeActions", acts);
    json_object_object_add(doc, "attributes", attrs);
    out = strdup(json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN));
    json_object_put(doc);
    return out;
}

static char *policy_path(struct kv_version *v)
{
    char *esc = kv_url_escape(v->key->name), *path;

    path = esc ? kv_strdup_printf("/keys/%s/rotationpolicy", esc) : NULL;
    free(esc);
    return path;
}

static CK_RV text_out(const struct rotpolicy *p, CK_BYTE **out, CK_ULONG *len)
{
    char text[4 * (ROTPOLICY_DUR_MAX + 24)];

    rotpolicy_format(p, text, sizeof(text));
    *len = strlen(text);
    *out = malloc(*len + 1);
    if (*out == NULL)
        return CKR_HOST_MEMORY;
    memcpy(*out, text, *len + 1);
    return CKR_OK;
}

CK_RV kv_get_attribute(struct pcall *c, void *ref, CK_ATTRIBUTE_TYPE type,
                       CK_BYTE **out, CK_ULONG *len)
{
    struct kv_token *kt = c->tok;
    struct kv_version *v = ref;
    int64_t deadline = kv_now_ms() + kt->deadline_ms;
    struct rotpolicy p;
    struct kv_result res;
    char *path;
    CK_RV rv;

    if (type != CKA_CMK_ROTATION_POLICY)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    if ((path = policy_path(v)) == NULL)
        return CKR_HOST_MEMORY;
    memset(&p, 0, sizeof(p));
    rv = kv_call(kt, &kt->rep[0], c, "GET", path, NULL, deadline, true, &res);
    if (rv != CKR_OK && res.status == 403) {
        /* The identity lacks keys/getrotationpolicy: an empty value, and
         * the refusal in CKA_CMK_REFUSED from the next listing on. */
        kv_explain(kt, v->key->name, "get rotation policy", "getrotationpolicy",
                   &res, rv);
        pthread_mutex_lock(&kt->lock);
        kt->policy_refused = true;
        pthread_mutex_unlock(&kt->lock);
        rv = CKR_OK;
    } else if (rv != CKR_OK) {
        kv_explain(kt, v->key->name, "get rotation policy", "getrotationpolicy",
                   &res, rv);
    } else {
        from_json(res.doc, &p);
        pthread_mutex_lock(&kt->lock);
        kt->policy_refused = false;
        pthread_mutex_unlock(&kt->lock);
    }
    kv_result_clear(&res);
    free(path);
    return rv == CKR_OK ? text_out(&p, out, len) : rv;
}

CK_RV kv_set_rotation_policy(struct pcall *c, void *ref, const CK_ATTRIBUTE *at)
{
    struct kv_token *kt = c->tok;
    struct kv_version *v = ref;
    int64_t deadline = kv_now_ms() + kt->deadline_ms;
    struct rotpolicy p;
    struct kv_result res;
    char why[256], *path = NULL, *body = NULL;
    CK_RV rv;

    if (rotpolicy_parse(at->pValue, at->ulValueLen, &p, why, sizeof(why)) < 0 ||
        rotpolicy_check(&p, why, sizeof(why)) < 0) {
        cmk_error("key %s: rotation policy refused: %s", v->key->name, why);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if ((path = policy_path(v)) == NULL || (body = to_json(&p)) == NULL) {
        free(path);
        return CKR_HOST_MEMORY;
    }
    rv = kv_call(kt, &kt->rep[0], c, "PUT", path, body, deadline, true, &res);
    if (rv != CKR_OK && res.status == 400) {
        /* The vault's rules (BadParameter): its words. */
        char said[sizeof(res.message)];
        kv_one_line(res.message, said, sizeof(said));
        cmk_error("key %s in %s: rotation policy refused (400 %s): %s",
                  v->key->name, kv_call_host ? kv_call_host : kt->host,
                  res.code, said);
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
    } else if (rv != CKR_OK) {
        kv_explain(kt, v->key->name, "set rotation policy", "setrotationpolicy",
                   &res, rv);
    } else {
        cmk_info("token %s: key %s has the rotation policy '%.*s'", kt->name,
                 v->key->name, (int)at->ulValueLen, (const char *)at->pValue);
    }
    kv_result_clear(&res);
    free(path);
    free(body);
    return rv;
}
