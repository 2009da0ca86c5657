/*
 * Objects: handles, the merge of provider listings, search and attributes.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "attrpolicy.h"
#include "audit.h"
#include "call.h"
#include "pcall.h"
#include "rsa.h"
#include "secure.h"

struct object *object_ref(struct object *o)
{
    __atomic_add_fetch(&o->refs, 1, __ATOMIC_ACQ_REL);
    return o;
}

void object_unref(struct object *o)
{
    if (o == NULL || __atomic_sub_fetch(&o->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    provider_ref_free(o->token, o->ref);
    attrs_clear(&o->attrs);
    secure_free(o->secret);
    secure_free(o->pkcs1_secret);
    free(o->uid);
    free(o);
}

static unsigned long uid_hash(const char *uid)
{
    unsigned long h = 1469598103934665603UL;

    for (; *uid; uid++) {
        h ^= (unsigned char)*uid;
        h *= 1099511628211UL;
    }
    return h;
}

static struct object *uid_find_unlocked(struct token *t, const char *uid)
{
    struct object *o = hmap_get(t->by_uid, uid_hash(uid));

    for (; o != NULL; o = o->uid_next)
        if (strcmp(o->uid, uid) == 0)
            return o;
    return NULL;
}

static int uid_insert_unlocked(struct token *t, struct object *o)
{
    unsigned long h = uid_hash(o->uid);

    o->uid_next = hmap_get(t->by_uid, h);
    return hmap_put(t->by_uid, h, o);
}

static void uid_remove_unlocked(struct token *t, struct object *o)
{
    unsigned long h = uid_hash(o->uid);
    struct object *head = hmap_get(t->by_uid, h), **pp;

    if (head == o) {
        if (o->uid_next != NULL)
            hmap_put(t->by_uid, h, o->uid_next);
        else
            hmap_take(t->by_uid, h);
        return;
    }
    for (pp = &head; *pp != NULL; pp = &(*pp)->uid_next) {
        if (*pp == o) {
            *pp = o->uid_next;
            return;
        }
    }
}

/* What the front end adds to every object a back end lists: the table's
 * defaults and, on the key versions a back end describes (those with
 * CKA_CMK_BACKEND, from rsa_key_objects), the configuration's
 * min-key-bits as CKA_CMK_MIN_BITS for cmkp11-tool check (docs/vendor.md).
 * Front-end policy: no provider reads the configuration. */
static int listed_attrs(struct attrs *a, bool token_object)
{
    if (attrpolicy_listed_defaults(a, token_object) != 0)
        return -1;
    if (attrs_find(a, CKA_CMK_BACKEND) == NULL)
        return 0;
    return attrs_set_ulong(a, CKA_CMK_MIN_BITS,
                           g.cfg != NULL ? (CK_ULONG)g.cfg->min_key_bits
                                         : 2048);
}

CK_RV object_publish(struct token *t, CK_SESSION_HANDLE sess, struct pobj *p,
                     unsigned char *secret, CK_ULONG secret_len,
                     CK_OBJECT_HANDLE *h)
{
    struct object *o = calloc(1, sizeof(*o));
    CK_RV rv = CKR_OK;

    if (o == NULL || listed_attrs(&p->attrs, sess == 0) != 0) {
        free(o);
        return CKR_HOST_MEMORY;
    }
    o->refs = 1;
    o->token = t;
    o->session = sess;
    o->uid = p->uid;
    /* A back end's listed objects share their values (attrs_compact); a
     * session object (an unwrapped or generated key) lives for a call or
     * two, and would only add the shared table's lock to every unwrap. */
    if (sess == 0)
        attrs_compact(&p->attrs);
    o->attrs = p->attrs;
    o->ref = p->ref;
    o->secret = secret;
    o->secret_len = secret_len;
    memset(p, 0, sizeof(*p));
    pthread_mutex_lock(&g.mutex);
    if (sess == 0 && o->uid != NULL) {
        /* A token object a listing published meanwhile (a key just made
         * in the back end): that object is this one. */
        struct object *had = uid_find_unlocked(t, o->uid);
        if (had != NULL && !had->gone) {
            *h = had->handle;
            pthread_mutex_unlock(&g.mutex);
            object_unref(o);
            return CKR_OK;
        }
    }
    o->handle = module_new_handle_unlocked();
    if (hmap_put(g.objects, o->handle, o) != 0)
        rv = CKR_HOST_MEMORY;
    else if (sess == 0 && o->uid != NULL && uid_insert_unlocked(t, o) != 0)
        rv = CKR_HOST_MEMORY;
    if (rv == CKR_OK)
        *h = o->handle;
    else
        hmap_take(g.objects, o->handle);
    pthread_mutex_unlock(&g.mutex);
    if (rv != CKR_OK) {
        o->secret = NULL; /* the caller still owns it */
        object_unref(o);
    }
    return rv;
}

static void object_forget_unlocked(struct object *o)
{
    o->gone = true;
    if (o->session == 0 && o->uid != NULL)
        uid_remove_unlocked(o->token, o);
    hmap_take(g.objects, o->handle);
}

void object_merge(struct token *t, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
                  struct pobj *objs, CK_ULONG n, bool complete)
{
    struct hmap *seen = hmap_new(NULL);
    void **refs = calloc(n + 1, sizeof(*refs));
    CK_ULONG i, n_refs = 0;
    struct object **drop = NULL;
    CK_ULONG n_drop = 0;

    pthread_mutex_lock(&g.mutex);
    for (i = 0; i < n; i++) {
        struct pobj *p = &objs[i];
        struct object *o;
        CK_OBJECT_HANDLE h;

        if (p->uid == NULL)
            continue;
        o = uid_find_unlocked(t, p->uid);
        if (o != NULL && listed_attrs(&p->attrs, true) == 0) {
            /* Same object: new attributes, the old reference stays. */
            attrs_clear(&o->attrs);
            attrs_compact(&p->attrs);
            o->attrs = p->attrs;
            attrs_init(&p->attrs);
            if (refs != NULL)
                refs[n_refs++] = p->ref;
            p->ref = NULL;
            if (seen)
                hmap_put(seen, o->handle, o);
            continue;
        }
        pthread_mutex_unlock(&g.mutex);
        if (object_publish(t, 0, p, NULL, 0, &h) == CKR_OK && seen) {
            pthread_mutex_lock(&g.mutex);
            hmap_put(seen, h, hmap_get(g.objects, h));
        } else {
            pthread_mutex_lock(&g.mutex);
        }
    }
    if (complete && seen != NULL) {
        struct hmap_iter it;
        unsigned long key;
        void *value;

        drop = calloc(hmap_count(g.objects) + 1, sizeof(*drop));
        hmap_iter_init(&it, g.objects);
        while (drop != NULL && hmap_iter_next(&it, &key, &value)) {
            struct object *o = value;
            if (o->token == t && o->session == 0 &&
                hmap_get(seen, key) == NULL &&
                attrs_match(&o->attrs, hint, nhint))
                drop[n_drop++] = o;
        }
        for (i = 0; i < n_drop; i++)
            object_forget_unlocked(drop[i]);
    }
    pthread_mutex_unlock(&g.mutex);

    for (i = 0; i < n_drop; i++) {
        cmk_debug("object %s is gone from token %s", drop[i]->uid, t->name);
        object_unref(drop[i]);
    }
    free(drop);
    for (i = 0; i < n_refs; i++)
        provider_ref_free(t, refs[i]);
    free(refs);
    for (i = 0; i < n; i++)
        pobj_clear(t->ops, t->ptok, &objs[i]);
    free(objs);
    hmap_free(seen);
}

CK_RV object_refresh(struct session *s, const CK_ATTRIBUTE *hint,
                     CK_ULONG nhint)
{
    struct token *t = s->token;
    struct pobj *objs = NULL;
    CK_ATTRIBUTE *wide = calloc(nhint + 1, sizeof(*wide));
    const CK_ATTRIBUTE *phint;
    CK_ULONG n = 0, nphint = 0;
    bool complete = false;
    CK_RV rv;

    if (wide == NULL)
        return CKR_HOST_MEMORY;
    phint = certs_hint(t, hint, nhint, wide, &nphint);
    rv = provider_list(s, phint, nphint, &objs, &n, &complete);
    free(wide);
    if (rv != CKR_OK)
        return rv;
    certs_add(s, &objs, &n);
    object_merge(t, hint, nhint, objs, n, complete);
    return CKR_OK;
}

bool object_visible_unlocked(const struct session *s, const struct object *o)
{
    const struct token *t = s->token;

    if (o->gone || o->token != t)
        return false;
    if (t->info.login_required && !t->logged_in &&
        attrs_get_bool(&o->attrs, CKA_PRIVATE, false))
        return false;
    return true;
}

CK_RV object_get(struct session *s, CK_OBJECT_HANDLE h, struct object **out)
{
    struct object *o;
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;

    pthread_mutex_lock(&g.mutex);
    o = hmap_get(g.objects, h);
    if (o != NULL && object_visible_unlocked(s, o)) {
        *out = object_ref(o);
        rv = CKR_OK;
    }
    pthread_mutex_unlock(&g.mutex);
    return rv;
}

bool object_get_bool(struct object *o, CK_ATTRIBUTE_TYPE type, bool dflt)
{
    bool v;

    pthread_mutex_lock(&g.mutex);
    v = attrs_get_bool(&o->attrs, type, dflt);
    pthread_mutex_unlock(&g.mutex);
    return v;
}

CK_ULONG object_get_ulong(struct object *o, CK_ATTRIBUTE_TYPE type,
                          CK_ULONG dflt)
{
    CK_ULONG v;

    pthread_mutex_lock(&g.mutex);
    v = attrs_get_ulong(&o->attrs, type, dflt);
    pthread_mutex_unlock(&g.mutex);
    return v;
}

void *object_get_value(struct object *o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len)
{
    CK_ATTRIBUTE *at;
    void *copy = NULL;

    pthread_mutex_lock(&g.mutex);
    at = attrs_find(&o->attrs, type);
    if (at != NULL) {
        copy = malloc(at->ulValueLen + 1);
        if (copy != NULL) {
            if (at->ulValueLen > 0)
                memcpy(copy, at->pValue, at->ulValueLen);
            ((char *)copy)[at->ulValueLen] = '\0';
            *len = at->ulValueLen;
        }
    }
    pthread_mutex_unlock(&g.mutex);
    return copy;
}

void object_destroy_session_objects(struct session *s)
{
    struct hmap_iter it;
    unsigned long key;
    void *value;
    struct object **list;
    CK_ULONG n = 0, i;

    pthread_mutex_lock(&g.mutex);
    list = calloc(hmap_count(g.objects) + 1, sizeof(*list));
    hmap_iter_init(&it, g.objects);
    while (list != NULL && hmap_iter_next(&it, &key, &value)) {
        struct object *o = value;
        if (o->session == s->handle)
            list[n++] = o;
    }
    for (i = 0; i < n; i++)
        object_forget_unlocked(list[i]);
    pthread_mutex_unlock(&g.mutex);
    for (i = 0; i < n; i++) {
        provider_discard_object(s, list[i]->ref);
        object_unref(list[i]);
    }
    free(list);
}

void objects_destroy_token(struct token *t, bool in_child)
{
    struct hmap_iter it;
    unsigned long key;
    void *value;
    struct object **list;
    CK_ULONG n = 0, i;

    if (g.objects == NULL)
        return;
    list = calloc(hmap_count(g.objects) + 1, sizeof(*list));
    hmap_iter_init(&it, g.objects);
    while (list != NULL && hmap_iter_next(&it, &key, &value)) {
        struct object *o = value;
        if (o->token == t)
            list[n++] = o;
    }
    for (i = 0; i < n; i++) {
        object_forget_unlocked(list[i]);
        if (in_child) {
            /* Other threads of the parent held references; drop the
             * provider reference without calling into the provider. */
            list[i]->refs = 1;
            list[i]->ref = NULL;
        }
        object_unref(list[i]);
    }
    free(list);
}

static bool secret_readable_unlocked(struct object *o)
{
    CK_OBJECT_CLASS cls = attrs_get_ulong(&o->attrs, CKA_CLASS, ~0UL);

    return cls == CKO_SECRET_KEY && (o->secret != NULL || o->ref != NULL) &&
           !attrs_get_bool(&o->attrs, CKA_SENSITIVE, true) &&
           attrs_get_bool(&o->attrs, CKA_EXTRACTABLE, false);
}

/* The attributes of back-end objects read only when a template names them
 * (provider_ops.get_attribute), each a request of its own. */
static const CK_ATTRIBUTE_TYPE on_demand[] = {CKA_CMK_ROTATION_POLICY,
                                              CKA_CMK_STATE_FILES};

static bool is_on_demand(CK_ATTRIBUTE_TYPE type)
{
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(on_demand); i++)
        if (on_demand[i] == type)
            return true;
    return false;
}

/* Reads the on-demand attributes tmpl names into read[] (type
 * CK_UNAVAILABLE_INFORMATION where the provider has none). */
static CK_RV read_on_demand(struct session *s, struct object *o,
                            const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                            CK_ATTRIBUTE read[])
{
    size_t i;
    CK_RV rv;

    for (i = 0; i < CMK_ARRAY_SIZE(on_demand); i++) {
        read[i].type = CK_UNAVAILABLE_INFORMATION;
        read[i].pValue = NULL;
        read[i].ulValueLen = 0;
    }
    if (o->ref == NULL)
        return CKR_OK;
    for (i = 0; i < CMK_ARRAY_SIZE(on_demand); i++) {
        CK_BYTE *v = NULL;
        CK_ULONG len = 0;
        if (tmpl_find(tmpl, n, on_demand[i]) == NULL)
            continue;
        rv = provider_get_attribute(s, o->ref, on_demand[i], &v, &len);
        if (rv == CKR_ATTRIBUTE_TYPE_INVALID)
            continue;
        if (rv != CKR_OK)
            return rv;
        read[i].type = on_demand[i];
        read[i].pValue = v;
        read[i].ulValueLen = len;
    }
    return CKR_OK;
}

/* fetched: the value of a back-end secret key, read before the lock;
 * extra: the on-demand attributes read before it. */
static CK_RV get_one_unlocked(struct object *o, CK_ATTRIBUTE *at,
                              const CK_BYTE *fetched, CK_ULONG fetched_len,
                              const CK_ATTRIBUTE *extra)
{
    CK_OBJECT_CLASS cls = attrs_get_ulong(&o->attrs, CKA_CLASS, ~0UL);
    const void *value;
    CK_ULONG len;
    const CK_ATTRIBUTE *have;

    if (attrpolicy_sensitive(cls, at->type)) {
        /* PKCS#11 2.40 4.1.5: sensitive or unextractable. Private key
         * material never reaches this module at all. */
        if (!secret_readable_unlocked(o)) {
            at->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            return CKR_ATTRIBUTE_SENSITIVE;
        }
        value = o->secret != NULL ? o->secret : fetched;
        len = o->secret != NULL ? o->secret_len : fetched_len;
    } else {
        have = attrs_find(&o->attrs, at->type);
        for (size_t i = 0; have == NULL && is_on_demand(at->type) &&
                           i < CMK_ARRAY_SIZE(on_demand);
             i++)
            if (extra[i].type == at->type)
                have = &extra[i];
        if (have == NULL) {
            at->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            return CKR_ATTRIBUTE_TYPE_INVALID;
        }
        value = have->pValue;
        len = have->ulValueLen;
    }
    if (at->pValue == NULL) {
        at->ulValueLen = len;
        return CKR_OK;
    }
    if (at->ulValueLen < len) {
        at->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (len > 0)
        memcpy(at->pValue, value, len);
    at->ulValueLen = len;
    return CKR_OK;
}

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                          CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    struct session *s;
    struct object *o;
    CK_BYTE *fetched = NULL;
    CK_ULONG i, fetched_len = 0;
    CK_ATTRIBUTE extra[CMK_ARRAY_SIZE(on_demand)];
    CK_RV r;

    BEGIN_CALL(GetAttributeValue);
    memset(extra, 0, sizeof(extra));
    if (pTemplate == NULL && ulCount > 0) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    rv = object_get(s, hObject, &o);
    if (rv == CKR_OK && o->secret == NULL && o->ref != NULL &&
        tmpl_find(pTemplate, ulCount, CKA_VALUE) != NULL) {
        bool readable;
        pthread_mutex_lock(&g.mutex);
        readable = secret_readable_unlocked(o);
        pthread_mutex_unlock(&g.mutex);
        if (readable)
            rv = provider_read_value(s, o->ref, &fetched, &fetched_len);
        if (rv != CKR_OK) {
            object_unref(o);
            goto put;
        }
    }
    if (rv == CKR_OK) {
        rv = read_on_demand(s, o, pTemplate, ulCount, extra);
        if (rv != CKR_OK) {
            object_unref(o);
            goto put;
        }
    }
    if (rv == CKR_OK) {
        pthread_mutex_lock(&g.mutex);
        for (i = 0; i < ulCount; i++) {
            r = get_one_unlocked(o, &pTemplate[i], fetched, fetched_len, extra);
            if (r != CKR_OK && rv == CKR_OK)
                rv = r;
        }
        pthread_mutex_unlock(&g.mutex);
        object_unref(o);
    }
put:
    secure_free(fetched);
    for (i = 0; i < CMK_ARRAY_SIZE(extra); i++)
        free(extra[i].pValue);
    session_put(s);
    END_CALL;
}

/* C_SetAttributeValue on an object the back end holds: only the vendor
 * attributes attrpolicy_provider_set() lets through, handed to the back
 * end; then the token is listed again, so the caller sees the new state.
 * Called and returns with g.mutex held; releases it around the call. */
static CK_RV set_in_provider(struct session *s, struct object *o,
                             const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    CK_OBJECT_CLASS cls = attrs_get_ulong(&o->attrs, CKA_CLASS, ~0UL);
    CK_ULONG i;
    CK_RV rv = CKR_OK;

    for (i = 0; rv == CKR_OK && i < n; i++)
        rv = attrpolicy_provider_set(cls, &tmpl[i]);
    if (rv == CKR_OK && o->session == 0 && !session_is_rw(s))
        rv = CKR_SESSION_READ_ONLY;
    if (rv != CKR_OK || n == 0)
        return rv;
    pthread_mutex_unlock(&g.mutex);
    rv = provider_set_attributes(s, o->ref, tmpl, n);
    /* A version enabled or disabled is audited, as a key operation is
     * (cmkp11-tool retire; docs/cmkp11.conf.5, audit-log). */
    for (i = 0; i < n; i++)
        if (tmpl[i].type == CKA_CMK_ENABLED)
            audit_record(
                s, o, *(const CK_BBOOL *)tmpl[i].pValue ? "enable" : "disable",
                CK_UNAVAILABLE_INFORMATION, rv, s->device_error);
    if (rv == CKR_OK)
        (void)object_refresh(s, NULL, 0);
    pthread_mutex_lock(&g.mutex);
    return rv;
}

CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                          CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    struct session *s;
    struct object *o;
    CK_ULONG i;

    BEGIN_CALL(SetAttributeValue);
    if (pTemplate == NULL && ulCount > 0) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    rv = object_get(s, hObject, &o);
    if (rv != CKR_OK)
        goto put;
    pthread_mutex_lock(&g.mutex);
    if (tmpl_conflicting(pTemplate, ulCount)) {
        /* One attribute given two values (5.7 lists this code). */
        rv = CKR_TEMPLATE_INCONSISTENT;
    } else if (o->ref != NULL && (o->session == 0 || o->gone)) {
        /* Key objects of the back end: vendor attributes only. */
        rv = o->gone ? CKR_OBJECT_HANDLE_INVALID
                     : set_in_provider(s, o, pTemplate, ulCount);
        goto unlock;
    } else if (o->session == 0 || o->ref != NULL ||
               !attrs_get_bool(&o->attrs, CKA_MODIFIABLE, true)) {
        /* Other objects of the back end are read-only here. */
        rv = CKR_ACTION_PROHIBITED;
    }
    /* What may change, and how (attrpolicy.c). */
    for (i = 0; rv == CKR_OK && i < ulCount; i++)
        rv = attrpolicy_set(attrs_get_ulong(&o->attrs, CKA_CLASS, ~0UL),
                            &o->attrs, &pTemplate[i]);
    if (rv == CKR_OK && attrs_merge(&o->attrs, pTemplate, ulCount) != 0)
        rv = CKR_HOST_MEMORY;
unlock:
    pthread_mutex_unlock(&g.mutex);
    object_unref(o);
put:
    session_put(s);
    END_CALL;
}

CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                      CK_ULONG_PTR pulSize)
{
    struct session *s;
    struct object *o;

    BEGIN_CALL(GetObjectSize);
    if (pulSize == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    rv = object_get(s, hObject, &o);
    if (rv == CKR_OK) {
        *pulSize = CK_UNAVAILABLE_INFORMATION;
        object_unref(o);
    }
    session_put(s);
    END_CALL;
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate,
                        CK_ULONG ulCount)
{
    struct session *s;
    struct hmap_iter it;
    unsigned long key;
    void *value;

    BEGIN_CALL(FindObjectsInit);
    if (pTemplate == NULL && ulCount > 0) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    if (s->find_active) {
        rv = CKR_OPERATION_ACTIVE;
        goto put;
    }
    rv = object_refresh(s, pTemplate, ulCount);
    if (rv != CKR_OK)
        goto put;
    free(s->found);
    s->n_found = s->found_pos = 0;
    pthread_mutex_lock(&g.mutex);
    s->found = calloc(hmap_count(g.objects) + 1, sizeof(*s->found));
    hmap_iter_init(&it, g.objects);
    while (s->found != NULL && hmap_iter_next(&it, &key, &value)) {
        struct object *o = value;
        if (object_visible_unlocked(s, o) &&
            attrs_match(&o->attrs, pTemplate, ulCount))
            s->found[s->n_found++] = key;
    }
    pthread_mutex_unlock(&g.mutex);
    if (s->found == NULL) {
        rv = CKR_HOST_MEMORY;
        goto put;
    }
    s->find_active = true;
put:
    session_put(s);
    END_CALL;
}

CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject,
                    CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
    struct session *s;
    CK_ULONG n = 0;

    BEGIN_CALL(FindObjects);
    if (phObject == NULL || pulObjectCount == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    if (!s->find_active) {
        rv = CKR_OPERATION_NOT_INITIALIZED;
    } else {
        while (n < ulMaxObjectCount && s->found_pos < s->n_found)
            phObject[n++] = s->found[s->found_pos++];
        *pulObjectCount = n;
    }
    session_put(s);
    END_CALL;
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
    struct session *s;

    BEGIN_CALL(FindObjectsFinal);
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    if (!s->find_active) {
        rv = CKR_OPERATION_NOT_INITIALIZED;
    } else {
        s->find_active = false;
        free(s->found);
        s->found = NULL;
        s->n_found = s->found_pos = 0;
    }
    session_put(s);
    END_CALL;
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
    struct session *s;
    struct object *o;

    BEGIN_CALL(DestroyObject);
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    rv = object_get(s, hObject, &o);
    if (rv != CKR_OK)
        goto put;
    pthread_mutex_lock(&g.mutex);
    if (o->session == 0 && !session_is_rw(s))
        rv = CKR_SESSION_READ_ONLY;
    else if (!attrs_get_bool(&o->attrs, CKA_DESTROYABLE, true))
        rv = CKR_ACTION_PROHIBITED;
    else if (o->gone)
        rv = CKR_OBJECT_HANDLE_INVALID;
    if (rv == CKR_OK && o->ref != NULL) {
        pthread_mutex_unlock(&g.mutex);
        rv = provider_destroy_object(s, o->ref);
        pthread_mutex_lock(&g.mutex);
    }
    if (rv == CKR_OK && !o->gone) {
        object_forget_unlocked(o);
        pthread_mutex_unlock(&g.mutex);
        object_unref(o); /* the table's reference */
    } else {
        pthread_mutex_unlock(&g.mutex);
    }
    object_unref(o);
put:
    session_put(s);
    END_CALL;
}

CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                   CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                   CK_OBJECT_HANDLE_PTR phNewObject)
{
    struct session *s;
    struct object *o;

    BEGIN_CALL(CopyObject);
    if ((pTemplate == NULL && ulCount > 0) || phNewObject == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    rv = object_get(s, hObject, &o);
    if (rv == CKR_OK) {
        /* CKA_COPYABLE is false on every object of this module; a
         * template with conflicting values is refused first, as for every
         * object-creating call (2.40 4.1.1). */
        rv = tmpl_conflicting(pTemplate, ulCount) ? CKR_TEMPLATE_INCONSISTENT
                                                  : CKR_ACTION_PROHIBITED;
        object_unref(o);
    }
    session_put(s);
    END_CALL;
}
