#include "config.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"
#include "p11.h"
#include "secure.h"
#include "tool.h"

int tmod_load(struct tmod *m, const char *path)
{
    CK_C_GetFunctionList get_list;
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    memset(m, 0, sizeof(*m));
    m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (m->dl == NULL) {
        tool_error("cannot load the module %s: %s", path, dlerror());
        return -1;
    }
    *(void **)&get_list = dlsym(m->dl, "C_GetFunctionList");
    if (get_list == NULL) {
        tool_error("%s is not a PKCS#11 module (no C_GetFunctionList)", path);
        goto fail;
    }
    rv = get_list(&m->f);
    if (rv != CKR_OK || m->f == NULL) {
        tool_error("C_GetFunctionList of %s: %s", path, trv_name(rv));
        goto fail;
    }
    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    rv = m->f->C_Initialize(&args);
    if (rv != CKR_OK) {
        tool_error("C_Initialize of %s: %s (see the module's log: its "
                   "configuration file may be missing or wrong)",
                   path, trv_name(rv));
        goto fail;
    }
    m->initialized = true;
    return 0;
fail:
    dlclose(m->dl);
    memset(m, 0, sizeof(*m));
    return -1;
}

void tmod_unload(struct tmod *m)
{
    if (m->initialized)
        m->f->C_Finalize(NULL);
    if (m->dl != NULL)
        dlclose(m->dl);
    memset(m, 0, sizeof(*m));
}

const char *trv_name(CK_RV rv)
{
    return cmk_rv_name(rv);
}

void tfield(char *out, const CK_UTF8CHAR *field, size_t len)
{
    memcpy(out, field, len);
    out[len] = '\0';
    while (len > 0 && (out[len - 1] == ' ' || out[len - 1] == '\0'))
        out[--len] = '\0';
}

/* ---- selection ----------------------------------------------------------- */

int tsel_parse(struct tsel *s, const char *arg)
{
    int r;

    memset(s, 0, sizeof(*s));
    if (arg == NULL)
        return 0;
    if (strncmp(arg, "pkcs11:", 7) != 0) {
        s->name = arg;
        return 0;
    }
    s->uri = p11_kit_uri_new();
    if (s->uri == NULL) {
        tool_error("out of memory");
        return -1;
    }
    r = p11_kit_uri_parse(arg, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, s->uri);
    if (r != P11_KIT_URI_OK) {
        tool_error("%s: %s", arg, p11_kit_uri_message(r));
        tsel_clear(s);
        return -1;
    }
    return 0;
}

void tsel_clear(struct tsel *s)
{
    if (s->uri != NULL)
        p11_kit_uri_free(s->uri);
    memset(s, 0, sizeof(*s));
}

bool tsel_match_token(const struct tsel *s, const CK_TOKEN_INFO *info,
                      const char *label)
{
    if (s->uri != NULL)
        return p11_kit_uri_match_token_info(s->uri, info) == 1;
    if (s->name != NULL)
        return strcmp(s->name, label) == 0;
    return true;
}

bool tsel_has_object(const struct tsel *s)
{
    CK_ATTRIBUTE_TYPE types[] = {CKA_LABEL, CKA_ID, CKA_CLASS};
    size_t i;

    if (s->uri == NULL)
        return false;
    for (i = 0; i < CMK_ARRAY_SIZE(types); i++)
        if (p11_kit_uri_get_attribute(s->uri, types[i]) != NULL)
            return true;
    return false;
}

/* ---- tokens -------------------------------------------------------------- */

int ttokens_find(struct tmod *m, const struct tsel *s, struct ttoken **out,
                 size_t *n)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG count = 0, i;
    struct ttoken *t = NULL;
    size_t k = 0;
    CK_RV rv;

    *out = NULL;
    *n = 0;
    rv = m->f->C_GetSlotList(CK_TRUE, NULL, &count);
    if (rv == CKR_OK && count > 0) {
        slots = calloc(count, sizeof(*slots));
        t = calloc(count, sizeof(*t));
        if (slots == NULL || t == NULL)
            rv = CKR_HOST_MEMORY;
        else
            rv = m->f->C_GetSlotList(CK_TRUE, slots, &count);
    }
    if (rv != CKR_OK) {
        tool_error("C_GetSlotList: %s", trv_name(rv));
        free(slots);
        free(t);
        return -1;
    }
    for (i = 0; i < count; i++) {
        struct ttoken *x = &t[k];
        memset(x, 0, sizeof(*x));
        if (m->f->C_GetTokenInfo(slots[i], &x->info) != CKR_OK)
            continue;
        x->slot = slots[i];
        tfield(x->label, x->info.label, sizeof(x->info.label));
        tfield(x->model, x->info.model, sizeof(x->info.model));
        x->keyvault = strcmp(x->model, "Key Vault") == 0 ||
                      strcmp(x->model, "Managed HSM") == 0;
        if (tsel_match_token(s, &x->info, x->label))
            k++;
    }
    free(slots);
    *out = t;
    *n = k;
    return 0;
}

CK_RV ttoken_open(struct tmod *m, struct ttoken *t, const struct tpin *pin)
{
    CK_RV rv;

    rv = m->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                             NULL, &t->sess);
    if (rv == CKR_TOKEN_WRITE_PROTECTED)
        rv = m->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL,
                                 &t->sess);
    if (rv != CKR_OK)
        return rv;
    t->open = true;
    t->login_rv = CKR_OK;
    if (!(t->info.flags & CKF_LOGIN_REQUIRED))
        return CKR_OK;
    if (pin == NULL || pin->value == NULL) {
        t->pin_missing = true;
        t->login_rv = CKR_USER_NOT_LOGGED_IN;
        return CKR_OK;
    }
    t->login_rv =
        m->f->C_Login(t->sess, CKU_USER, (CK_UTF8CHAR *)pin->value, pin->len);
    if (t->login_rv == CKR_USER_ALREADY_LOGGED_IN)
        t->login_rv = CKR_OK;
    t->logged_in = t->login_rv == CKR_OK;
    return CKR_OK;
}

void ttokens_free(struct tmod *m, struct ttoken *t, size_t n)
{
    size_t i;

    for (i = 0; t != NULL && i < n; i++) {
        if (!t[i].open)
            continue;
        if (t[i].logged_in)
            m->f->C_Logout(t[i].sess);
        m->f->C_CloseSession(t[i].sess);
    }
    free(t);
}

CK_ULONG tmod_device_error(struct tmod *m, CK_SESSION_HANDLE sess)
{
    CK_SESSION_INFO si;

    if (m->f->C_GetSessionInfo(sess, &si) != CKR_OK)
        return 0;
    return si.ulDeviceError;
}

/* ---- attributes ---------------------------------------------------------- */

void *tattr_bytes(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                  CK_ATTRIBUTE_TYPE type, size_t *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    unsigned char *buf;

    *len = 0;
    if (m->f->C_GetAttributeValue(s, h, &a, 1) != CKR_OK ||
        a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return NULL;
    buf = malloc(a.ulValueLen + 1);
    if (buf == NULL)
        return NULL;
    a.pValue = buf;
    if (m->f->C_GetAttributeValue(s, h, &a, 1) != CKR_OK ||
        a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        free(buf);
        return NULL;
    }
    buf[a.ulValueLen] = '\0';
    *len = a.ulValueLen;
    return buf;
}

char *tattr_string(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                   CK_ATTRIBUTE_TYPE type)
{
    size_t len;
    char *v = tattr_bytes(m, s, h, type, &len);

    if (v != NULL && strlen(v) != len) {
        free(v); /* an embedded NUL: not text */
        return NULL;
    }
    return v;
}

bool tattr_bool(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                CK_ATTRIBUTE_TYPE type, bool *present)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};
    bool ok = m->f->C_GetAttributeValue(s, h, &a, 1) == CKR_OK &&
              a.ulValueLen == sizeof(v);

    if (present != NULL)
        *present = ok;
    return ok && v == CK_TRUE;
}

CK_ULONG tattr_ulong(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                     CK_ATTRIBUTE_TYPE type, bool *present)
{
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};
    bool ok = m->f->C_GetAttributeValue(s, h, &a, 1) == CKR_OK &&
              a.ulValueLen == sizeof(v);

    if (present != NULL)
        *present = ok;
    return ok ? v : 0;
}

/* ---- PINs ---------------------------------------------------------------- */

int tpin_from_arg(struct tpin *p, char *arg)
{
    size_t len = strlen(arg);

    tpin_free(p);
    p->value = secure_dup(arg, len + 1);
    if (p->value == NULL) {
        tool_error("out of memory");
        return -1;
    }
    p->len = len;
    /* Do not leave the PIN readable in the process's arguments. */
    secure_zero(arg, len);
    return 0;
}

/* CMKP11_PIN, when set: only the user and root can read a process's
 * environment (/proc/PID/environ is mode 0400). Wiped and removed once
 * read. */
int tpin_from_env(struct tpin *p)
{
    char *v = getenv("CMKP11_PIN");
    size_t len;

    if (v == NULL || v[0] == '\0')
        return 0;
    len = strlen(v);
    tpin_free(p);
    p->value = secure_dup(v, len + 1);
    if (p->value == NULL) {
        tool_error("out of memory");
        return -1;
    }
    p->len = len;
    secure_zero(v, len);
    unsetenv("CMKP11_PIN");
    return 0;
}

int tpin_from_file(struct tpin *p, const char *path)
{
    char err[256];

    tpin_free(p);
    if (secure_read_secret_file(path, 1, &p->value, &p->len, err, sizeof(err)) <
        0) {
        tool_error("PIN file: %s", err);
        p->value = NULL;
        p->len = 0;
        return -1;
    }
    return 0;
}

void tpin_free(struct tpin *p)
{
    secure_free(p->value);
    p->value = NULL;
    p->len = 0;
}
