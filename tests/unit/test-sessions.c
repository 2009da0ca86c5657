/*
 * Sessions and login: C_OpenSession, C_CloseSession, C_CloseAllSessions,
 * C_GetSessionInfo, C_Login, C_Logout, C_InitPIN, C_SetPIN,
 * C_GetOperationState, C_SetOperationState, C_GetFunctionStatus,
 * C_CancelFunction, and invalid session handles everywhere.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "p11.h"
#include "test.h"

#define CONF                                                                   \
    "[cmkp11]\nlog-level = error\n\n"                                          \
    "[token open]\nbackend = mock\n\n"                                         \
    "[token locked]\nbackend = mock\npin = 1234\n"

static CK_STATE state_of(CK_SESSION_HANDLE h)
{
    CK_SESSION_INFO si;

    if (p11->C_GetSessionInfo(h, &si) != CKR_OK)
        return (CK_STATE)-1;
    return si.state;
}

static CK_ULONG count_class(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls)
{
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};

    return p11_count(h, &t, 1);
}

static void test_open_close(void)
{
    CK_SESSION_HANDLE h = 0, h2 = 0;
    CK_SESSION_INFO si;

    is_rv(p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, NULL),
          CKR_ARGUMENTS_BAD, "C_OpenSession(NULL handle pointer)");
    is_rv(p11->C_OpenSession(0, CKF_RW_SESSION, NULL, NULL, &h),
          CKR_SESSION_PARALLEL_NOT_SUPPORTED, "no CKF_SERIAL_SESSION");
    is_rv(p11->C_OpenSession(0, 0, NULL, NULL, &h),
          CKR_SESSION_PARALLEL_NOT_SUPPORTED, "no flags");
    is_rv(p11->C_OpenSession(2, CKF_SERIAL_SESSION, NULL, NULL, &h),
          CKR_SLOT_ID_INVALID, "invalid slot");
    is_num(h, 0, "no handle after failures");
    is_rv(p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK,
          "C_OpenSession RO");
    is_rv(p11->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                             &h2),
          CKR_OK, "C_OpenSession RW");
    ok(h != 0 && h2 != 0 && h != h2, "distinct non-zero handles");
    is_rv(p11->C_GetSessionInfo(h, NULL), CKR_ARGUMENTS_BAD,
          "C_GetSessionInfo(NULL)");
    is_rv(p11->C_GetSessionInfo(h, &si), CKR_OK, "C_GetSessionInfo RO");
    is_num(si.slotID, 0, "slot id");
    is_num(si.state, CKS_RO_PUBLIC_SESSION, "RO public");
    is_num(si.flags, CKF_SERIAL_SESSION, "RO flags");
    is_num(si.ulDeviceError, 0, "no device error");
    is_rv(p11->C_GetSessionInfo(h2, &si), CKR_OK, "C_GetSessionInfo RW");
    is_num(si.state, CKS_RW_PUBLIC_SESSION, "RW public");
    is_num(si.flags, CKF_SERIAL_SESSION | CKF_RW_SESSION, "RW flags");
    is_rv(p11->C_CloseSession(h), CKR_OK, "C_CloseSession");
    is_rv(p11->C_CloseSession(h), CKR_SESSION_HANDLE_INVALID,
          "C_CloseSession twice");
    is_rv(p11->C_GetSessionInfo(h, &si), CKR_SESSION_HANDLE_INVALID,
          "closed session is invalid");
    is_rv(p11->C_CloseSession(0), CKR_SESSION_HANDLE_INVALID,
          "C_CloseSession(0)");
    is_rv(p11->C_GetSessionInfo(h2, &si), CKR_OK, "the other stays open");
    is_rv(p11->C_CloseAllSessions(5), CKR_SLOT_ID_INVALID,
          "C_CloseAllSessions invalid slot");
    is_rv(p11->C_CloseAllSessions(0), CKR_OK, "C_CloseAllSessions");
    is_rv(p11->C_GetSessionInfo(h2, &si), CKR_SESSION_HANDLE_INVALID,
          "closed by C_CloseAllSessions");
    is_rv(p11->C_CloseAllSessions(0), CKR_OK,
          "C_CloseAllSessions with nothing open");
}

static void test_login(void)
{
    CK_SESSION_HANDLE ro = p11_open(1, false), rw = p11_open(1, true);
    CK_SESSION_HANDLE other = p11_open(0, false), again;

    ok(ro && rw && other, "sessions on both tokens");
    is_num(count_class(ro, CKO_PRIVATE_KEY), 0,
           "private keys invisible before login");
    ok(count_class(ro, CKO_PUBLIC_KEY) >= 4, "public keys visible");
    ok(count_class(other, CKO_PRIVATE_KEY) >= 4,
       "private keys visible on a token without a pin");
    is_rv(p11->C_Logout(ro), CKR_USER_NOT_LOGGED_IN, "C_Logout not logged in");
    is_rv(p11->C_Login(ro, CKU_USER, (CK_UTF8CHAR *)"9999", 4),
          CKR_PIN_INCORRECT, "wrong PIN");
    is_rv(p11->C_Login(ro, CKU_USER, (CK_UTF8CHAR *)"123", 3),
          CKR_PIN_INCORRECT, "PIN prefix");
    is_rv(p11->C_Login(ro, CKU_USER, (CK_UTF8CHAR *)"12345", 5),
          CKR_PIN_INCORRECT, "PIN with an extra digit");
    is_num(state_of(ro), CKS_RO_PUBLIC_SESSION,
           "session usable and public after a wrong PIN");
    is_rv(p11->C_Login(ro, 42, (CK_UTF8CHAR *)"1234", 4), CKR_USER_TYPE_INVALID,
          "bad user type");
    is_rv(p11->C_Login(ro, CKU_USER, NULL, 4), CKR_ARGUMENTS_BAD,
          "NULL PIN with a length");
    is_rv(p11->C_Login(ro, CKU_USER, NULL, 0), CKR_ARGUMENTS_BAD,
          "NULL PIN (no protected path)");
    is_rv(p11->C_Login(ro, CKU_SO, (CK_UTF8CHAR *)"1234", 4),
          CKR_SESSION_READ_ONLY_EXISTS, "SO login with an RO session open");
    is_rv(p11->C_Login(ro, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR *)"1234", 4),
          CKR_USER_NOT_LOGGED_IN, "CONTEXT_SPECIFIC before login");
    is_rv(p11->C_Login(ro, CKU_USER, (CK_UTF8CHAR *)"1234", 4), CKR_OK,
          "right PIN");
    is_num(state_of(ro), CKS_RO_USER_FUNCTIONS, "RO user");
    is_num(state_of(rw), CKS_RW_USER_FUNCTIONS, "RW user (same token)");
    is_num(state_of(other), CKS_RO_PUBLIC_SESSION,
           "the other token is not logged in");
    is_rv(p11->C_Login(rw, CKU_USER, (CK_UTF8CHAR *)"1234", 4),
          CKR_USER_ALREADY_LOGGED_IN, "login again");
    is_rv(p11->C_Login(rw, CKU_SO, (CK_UTF8CHAR *)"1234", 4),
          CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "SO while user logged in");
    is_rv(p11->C_Login(rw, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR *)"1234", 4),
          CKR_OPERATION_NOT_INITIALIZED, "CONTEXT_SPECIFIC without an op");
    ok(count_class(ro, CKO_PRIVATE_KEY) >= 4, "private keys after login");
    again = p11_open(1, false);
    is_num(state_of(again), CKS_RO_USER_FUNCTIONS,
           "a new session of a logged-in token is a user session");
    p11->C_CloseSession(again);

    is_rv(p11->C_Logout(rw), CKR_OK, "C_Logout");
    is_num(state_of(ro), CKS_RO_PUBLIC_SESSION, "public after logout");
    is_num(count_class(ro, CKO_PRIVATE_KEY), 0,
           "private keys invisible after logout");
    is_rv(p11->C_Logout(rw), CKR_USER_NOT_LOGGED_IN, "C_Logout twice");

    /* A handle found while logged in is no longer usable. */
    p11->C_Login(ro, CKU_USER, (CK_UTF8CHAR *)"1234", 4);
    {
        CK_OBJECT_HANDLE priv = p11_find(ro, CKO_PRIVATE_KEY, "mock-key");
        CK_BBOOL b;
        CK_ATTRIBUTE a = {CKA_SIGN, &b, sizeof(b)};
        ok(priv != 0, "private key found after login");
        is_rv(p11->C_GetAttributeValue(ro, priv, &a, 1), CKR_OK,
              "its attributes while logged in");
        p11->C_Logout(ro);
        is_rv(p11->C_GetAttributeValue(ro, priv, &a, 1),
              CKR_OBJECT_HANDLE_INVALID, "hidden after logout");
    }

    /* Closing the token's last session logs out. */
    p11->C_Login(ro, CKU_USER, (CK_UTF8CHAR *)"1234", 4);
    is_num(state_of(rw), CKS_RW_USER_FUNCTIONS, "logged in again");
    p11->C_CloseSession(ro);
    is_num(state_of(rw), CKS_RW_USER_FUNCTIONS,
           "still logged in while a session remains");
    p11->C_CloseSession(rw);
    again = p11_open(1, true);
    is_num(state_of(again), CKS_RW_PUBLIC_SESSION,
           "closing the last session logged out");
    is_num(count_class(again, CKO_PRIVATE_KEY), 0,
           "and private keys are hidden again");
    p11->C_Login(again, CKU_USER, (CK_UTF8CHAR *)"1234", 4);
    p11->C_CloseAllSessions(1);
    again = p11_open(1, false);
    is_num(state_of(again), CKS_RO_PUBLIC_SESSION,
           "C_CloseAllSessions logged out");
    p11->C_CloseSession(again);

    /* SO: only with RW sessions; the mock refuses every SO PIN. */
    again = p11_open(1, true);
    is_rv(p11->C_Login(again, CKU_SO, (CK_UTF8CHAR *)"1234", 4),
          CKR_PIN_INCORRECT, "SO login reaches the back end");
    is_num(state_of(again), CKS_RW_PUBLIC_SESSION, "still public");
    p11->C_CloseSession(again);
    p11->C_CloseSession(other);
}

static void test_unsupported(void)
{
    CK_SESSION_HANDLE h = p11_open(0, true);
    CK_BYTE state[64];
    CK_ULONG len = sizeof(state);

    is_rv(p11->C_InitPIN(h, (CK_UTF8CHAR *)"1234", 4),
          CKR_FUNCTION_NOT_SUPPORTED, "C_InitPIN");
    is_rv(p11->C_SetPIN(h, (CK_UTF8CHAR *)"1234", 4, (CK_UTF8CHAR *)"5678", 4),
          CKR_FUNCTION_NOT_SUPPORTED, "C_SetPIN");
    is_rv(p11->C_GetOperationState(h, state, &len), CKR_FUNCTION_NOT_SUPPORTED,
          "C_GetOperationState");
    is_rv(p11->C_SetOperationState(h, state, 4, 0, 0),
          CKR_FUNCTION_NOT_SUPPORTED, "C_SetOperationState");
    is_rv(p11->C_GetFunctionStatus(h), CKR_FUNCTION_NOT_PARALLEL,
          "C_GetFunctionStatus");
    is_rv(p11->C_CancelFunction(h), CKR_FUNCTION_NOT_PARALLEL,
          "C_CancelFunction");
    p11->C_CloseSession(h);
}

/* Every function that takes a session handle, with a bad one. */
static void test_bad_handles(CK_SESSION_HANDLE h, const char *what)
{
    int bad, k = p11_session_calls(h, CKR_SESSION_HANDLE_INVALID, &bad);

    is_num(bad, 0, "%d session calls with %s: SESSION_HANDLE_INVALID", k, what);
}

int main(void)
{
    char *conf;
    CK_SESSION_HANDLE h, live;

    p11_load(NULL);
    conf = p11_write_file("sessions.conf", CONF);
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    test_open_close();
    test_login();
    test_unsupported();

    live = p11_open(0, true);
    test_bad_handles(0, "handle 0");
    test_bad_handles(0x7fffffff, "a never-issued handle");
    h = p11_open(0, true);
    p11->C_CloseSession(h);
    test_bad_handles(h, "a closed handle");
    is_num(state_of(live), CKS_RW_PUBLIC_SESSION,
           "a live session is untouched by all that");
    h = p11_open(1, true);
    p11->C_CloseAllSessions(1);
    test_bad_handles(h, "a handle closed by C_CloseAllSessions");

    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize with sessions open");
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    test_bad_handles(live, "a handle from before C_Finalize");
    p11->C_Finalize(NULL);
    free(conf);
    return test_done();
}
