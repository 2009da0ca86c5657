/*
 * Sessions and login state.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "pcall.h"
#include "secure.h"

static void session_unref(struct session *s)
{
    CK_ULONG i;

    if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (i = 0; i < OP_COUNT; i++)
        op_reset(&s->ops[i]);
    free(s->found);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void op_reset(struct op *op)
{
    if (op->key != NULL)
        object_unref(op->key);
    if (op->md != NULL)
        EVP_MD_CTX_free(op->md);
    secure_free(op->buf);
    secure_free(op->result);
    free(op->param_data[0]);
    free(op->param_data[1]);
    secure_zero(op, sizeof(*op));
}

CK_RV session_get(CK_SESSION_HANDLE h, struct session **out)
{
    struct session *s;

    pthread_mutex_lock(&g.mutex);
    s = hmap_get(g.sessions, h);
    if (s != NULL)
        __atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_unlock(&g.mutex);
    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    pthread_mutex_lock(&s->lock);
    if (s->closed) {
        pthread_mutex_unlock(&s->lock);
        session_unref(s);
        return CKR_SESSION_HANDLE_INVALID;
    }
    *out = s;
    return CKR_OK;
}

void session_put(struct session *s)
{
    pthread_mutex_unlock(&s->lock);
    session_unref(s);
}

bool session_is_rw(const struct session *s)
{
    return (s->flags & CKF_RW_SESSION) != 0;
}

CK_STATE session_state_unlocked(const struct session *s)
{
    const struct token *t = s->token;
    bool rw = session_is_rw(s);

    if (t->logged_in && t->user == CKU_SO)
        return CKS_RW_SO_FUNCTIONS;
    if (t->logged_in)
        return rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
    return rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
}

/* Ends a session that is locked and out of the table. */
static void session_finish(struct session *s, bool in_child)
{
    CK_ULONG i;

    s->closed = true;
    for (i = 0; i < OP_COUNT; i++)
        op_reset(&s->ops[i]);
    s->find_active = false;
    if (!in_child) {
        object_destroy_session_objects(s);
        provider_session_close(s->token, s->psess);
    }
    s->psess = NULL;
}

/* Called with g.mutex held: a token's last session logs the user out. */
static bool account_close_unlocked(struct session *s)
{
    struct token *t = s->token;

    t->n_sessions--;
    if (session_is_rw(s))
        t->n_rw_sessions--;
    if (t->n_sessions == 0 && t->logged_in) {
        t->logged_in = false;
        return true;
    }
    return false;
}

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
                    CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
    struct session *s = NULL;
    struct token *t;

    BEGIN_CALL(OpenSession);
    if (phSession == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto done;
    }
    rv = token_get(slotID, &t);
    if (rv != CKR_OK)
        goto done;
    if (!(flags & CKF_SERIAL_SESSION)) {
        rv = CKR_SESSION_PARALLEL_NOT_SUPPORTED;
        goto done;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        rv = CKR_HOST_MEMORY;
        goto done;
    }
    s->refs = 1;
    s->token = t;
    s->flags = flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
    pthread_mutex_init(&s->lock, NULL);
    rv = provider_session_open(t, &s->psess);
    if (rv != CKR_OK)
        goto done;
    pthread_mutex_lock(&g.mutex);
    if (t->logged_in && t->user == CKU_SO && !(flags & CKF_RW_SESSION)) {
        rv = CKR_SESSION_READ_WRITE_SO_EXISTS;
    } else {
        s->handle = module_new_handle_unlocked();
        if (hmap_put(g.sessions, s->handle, s) != 0) {
            rv = CKR_HOST_MEMORY;
        } else {
            t->n_sessions++;
            if (flags & CKF_RW_SESSION)
                t->n_rw_sessions++;
            *phSession = s->handle;
            s = NULL;
        }
    }
    pthread_mutex_unlock(&g.mutex);
done:
    if (s != NULL) {
        provider_session_close(t, s->psess);
        pthread_mutex_destroy(&s->lock);
        free(s);
    }
    END_CALL;
}

static CK_RV close_one(CK_SESSION_HANDLE h)
{
    struct session *s;
    bool logout;

    pthread_mutex_lock(&g.mutex);
    s = hmap_take(g.sessions, h);
    logout = s != NULL && account_close_unlocked(s);
    pthread_mutex_unlock(&g.mutex);
    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    /* Wait for a call in progress on this session, then end it. */
    pthread_mutex_lock(&s->lock);
    session_finish(s, false);
    pthread_mutex_unlock(&s->lock);
    if (logout)
        provider_logout(s->token);
    session_unref(s);
    return CKR_OK;
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
    BEGIN_CALL(CloseSession);
    rv = close_one(hSession);
    END_CALL;
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
    struct token *t;
    struct hmap_iter it;
    unsigned long key;
    void *value;
    CK_SESSION_HANDLE *handles = NULL;
    CK_ULONG n = 0, i;

    BEGIN_CALL(CloseAllSessions);
    rv = token_get(slotID, &t);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&g.mutex);
    handles = calloc(hmap_count(g.sessions) + 1, sizeof(*handles));
    if (handles != NULL) {
        hmap_iter_init(&it, g.sessions);
        while (hmap_iter_next(&it, &key, &value))
            if (((struct session *)value)->token == t)
                handles[n++] = key;
    }
    pthread_mutex_unlock(&g.mutex);
    if (handles == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (i = 0; i < n; i++)
        close_one(handles[i]);
    free(handles);
    END_CALL;
}

void sessions_destroy_all(bool in_child)
{
    struct hmap_iter it;
    unsigned long key;
    void *value;

    if (g.sessions == NULL)
        return;
    hmap_iter_init(&it, g.sessions);
    while (hmap_iter_next(&it, &key, &value)) {
        struct session *s = value;
        if (in_child) {
            /* The lock may have been held by a thread of the parent. */
            pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
            memcpy(&s->lock, &fresh, sizeof(fresh));
        }
        pthread_mutex_lock(&s->lock);
        session_finish(s, in_child);
        pthread_mutex_unlock(&s->lock);
        if (in_child)
            s->refs = 1;
        session_unref(s);
    }
    hmap_free(g.sessions);
    g.sessions = hmap_new(NULL);
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
    struct session *s;

    BEGIN_CALL(GetSessionInfo);
    if (pInfo == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    memset(pInfo, 0, sizeof(*pInfo));
    pInfo->slotID = s->token->slot_id;
    pInfo->flags = s->flags;
    pInfo->ulDeviceError = s->device_error;
    pthread_mutex_lock(&g.mutex);
    pInfo->state = session_state_unlocked(s);
    pthread_mutex_unlock(&g.mutex);
    session_put(s);
    END_CALL;
}

/* C_Login and C_LoginUser, inside their frame. */
CK_RV session_login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
                    CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    struct session *s;
    struct token *t;
    CK_RV rv = session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    t = s->token;
    if (userType != CKU_USER && userType != CKU_SO &&
        userType != CKU_CONTEXT_SPECIFIC) {
        rv = CKR_USER_TYPE_INVALID;
        goto put;
    }
    if (pPin == NULL && ulPinLen != 0) {
        rv = CKR_ARGUMENTS_BAD;
        goto put;
    }
    if (pPin == NULL) {
        /* No protected authentication path on these tokens. */
        rv = CKR_ARGUMENTS_BAD;
        goto put;
    }
    pthread_mutex_lock(&g.mutex);
    if (userType == CKU_CONTEXT_SPECIFIC) {
        /* No key here has CKA_ALWAYS_AUTHENTICATE. */
        rv = t->logged_in ? CKR_OPERATION_NOT_INITIALIZED
                          : CKR_USER_NOT_LOGGED_IN;
    } else if (t->logged_in) {
        rv = t->user == userType ? CKR_USER_ALREADY_LOGGED_IN
                                 : CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
    } else if (userType == CKU_SO && t->n_sessions != t->n_rw_sessions) {
        rv = CKR_SESSION_READ_ONLY_EXISTS;
    }
    pthread_mutex_unlock(&g.mutex);
    if (rv != CKR_OK)
        goto put;

    rv = provider_login(s, userType, pPin, ulPinLen);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&g.mutex);
        if (t->logged_in) {
            rv = CKR_USER_ALREADY_LOGGED_IN;
        } else {
            t->logged_in = true;
            t->user = userType;
        }
        pthread_mutex_unlock(&g.mutex);
    }
put:
    session_put(s);
    return rv;
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
              CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    BEGIN_CALL(Login);
    rv = session_login(hSession, userType, pPin, ulPinLen);
    END_CALL;
}

CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
    struct session *s;
    bool was;

    BEGIN_CALL(Logout);
    rv = session_get(hSession, &s);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&g.mutex);
    was = s->token->logged_in;
    s->token->logged_in = false;
    pthread_mutex_unlock(&g.mutex);
    if (!was)
        rv = CKR_USER_NOT_LOGGED_IN;
    else
        provider_logout(s->token);
    session_put(s);
    END_CALL;
}

CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin,
                CK_ULONG ulPinLen)
{
    /* PINs come from the configuration (pin-file) or the lower token's own
     * tools; they cannot be set through this module. */
    SESSION_ONLY_CALL(InitPIN, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin,
               CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen)
{
    /* PINs come from the configuration (pin-file) or the lower token's own
     * tools; they cannot be set through this module. */
    SESSION_ONLY_CALL(SetPIN, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

/* For calls that need only a valid session (inside their frame): their
 * result once it is. */
CK_RV session_only(CK_SESSION_HANDLE hSession, CK_RV result)
{
    struct session *s;
    CK_RV rv = session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    session_put(s);
    return result;
}

CK_RV C_GetOperationState(CK_SESSION_HANDLE hSession,
                          CK_BYTE_PTR pOperationState,
                          CK_ULONG_PTR pulOperationStateLen)
{
    SESSION_ONLY_CALL(GetOperationState, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_SetOperationState(CK_SESSION_HANDLE hSession,
                          CK_BYTE_PTR pOperationState,
                          CK_ULONG ulOperationStateLen,
                          CK_OBJECT_HANDLE hEncryptionKey,
                          CK_OBJECT_HANDLE hAuthenticationKey)
{
    SESSION_ONLY_CALL(SetOperationState, hSession, CKR_FUNCTION_NOT_SUPPORTED);
}

CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
    SESSION_ONLY_CALL(GetFunctionStatus, hSession, CKR_FUNCTION_NOT_PARALLEL);
}

CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession)
{
    SESSION_ONLY_CALL(CancelFunction, hSession, CKR_FUNCTION_NOT_PARALLEL);
}
