/*
 * The module's entry points: the PKCS#11 2.40 function list and the 3.0
 * interfaces. These three functions are the only exported symbols.
 */
#include "config.h"

#include <string.h>

#include "call.h"

/* Prototypes of the C_ functions come from pkcs11.h through compat.h.
 * The three exported functions are interposable: another library in the
 * process (p11-kit's proxy, another module linked in) may define the same
 * names, so the function lists point at these local copies instead. */
static CK_RV get_function_list(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);
static CK_RV get_interface_list(CK_INTERFACE_PTR pInterfacesList,
                                CK_ULONG_PTR pulCount);
static CK_RV get_interface(CK_UTF8CHAR_PTR pInterfaceName,
                           CK_VERSION_PTR pVersion,
                           CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);

static CK_RV login_user(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
                        CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                        CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
    BEGIN_CALL(LoginUser);
    /* No token here has named users; a plain login is the same. */
    if (pUsername != NULL && ulUsernameLen > 0)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    else
        rv = session_login(hSession, userType, pPin, ulPinLen);
    END_CALL;
}

static CK_RV session_cancel(CK_SESSION_HANDLE hSession, CK_FLAGS flags)
{
    struct session *s;
    int i;

    BEGIN_CALL(SessionCancel);
    rv = session_get(hSession, &s);
    if (rv == CKR_OK) {
        if (flags & CKF_FIND_OBJECTS)
            s->find_active = false;
        for (i = 0; i < OP_COUNT; i++) {
            static const CK_FLAGS bit[OP_COUNT] = {[OP_ENCRYPT] = CKF_ENCRYPT,
                                                   [OP_DECRYPT] = CKF_DECRYPT,
                                                   [OP_SIGN] = CKF_SIGN,
                                                   [OP_VERIFY] = CKF_VERIFY,
                                                   [OP_DIGEST] = CKF_DIGEST};
            if (flags & bit[i])
                op_reset(&s->ops[i]);
        }
        session_put(s);
    }
    END_CALL;
}

/* PKCS#11 3.0's message-based functions, which no token here offers: each
 * answers CKR_FUNCTION_NOT_SUPPORTED under its own name in the trace. They
 * take no parameters and ignore the caller's. */
#define CMK_MESSAGE_FUNCTIONS(X)                                               \
    X(MessageEncryptInit)                                                      \
    X(EncryptMessage)                                                          \
    X(EncryptMessageBegin)                                                     \
    X(EncryptMessageNext)                                                      \
    X(MessageEncryptFinal)                                                     \
    X(MessageDecryptInit)                                                      \
    X(DecryptMessage)                                                          \
    X(DecryptMessageBegin)                                                     \
    X(DecryptMessageNext)                                                      \
    X(MessageDecryptFinal)                                                     \
    X(MessageSignInit)                                                         \
    X(SignMessage)                                                             \
    X(SignMessageBegin)                                                        \
    X(SignMessageNext)                                                         \
    X(MessageSignFinal)                                                        \
    X(MessageVerifyInit)                                                       \
    X(VerifyMessage)                                                           \
    X(VerifyMessageBegin)                                                      \
    X(VerifyMessageNext)                                                       \
    X(MessageVerifyFinal)

#define DEFINE_STUB(n)                                                         \
    static CK_RV stub_##n(void)                                                \
    {                                                                          \
        RETURN_CALL(n, CKR_FUNCTION_NOT_SUPPORTED);                            \
    }
CMK_MESSAGE_FUNCTIONS(DEFINE_STUB)

/* The PKCS#11 2.40 functions, shared by both function lists. F: the
 * function of that name; G: another implementation. */
#define CMK_FUNCTIONS_2_40(F, G)                                               \
    F(Initialize)                                                              \
    F(Finalize)                                                                \
    F(GetInfo)                                                                 \
    G(GetFunctionList, get_function_list)                                      \
    F(GetSlotList)                                                             \
    F(GetSlotInfo)                                                             \
    F(GetTokenInfo)                                                            \
    F(GetMechanismList)                                                        \
    F(GetMechanismInfo)                                                        \
    F(InitToken)                                                               \
    F(InitPIN)                                                                 \
    F(SetPIN)                                                                  \
    F(OpenSession)                                                             \
    F(CloseSession)                                                            \
    F(CloseAllSessions)                                                        \
    F(GetSessionInfo)                                                          \
    F(GetOperationState)                                                       \
    F(SetOperationState)                                                       \
    F(Login)                                                                   \
    F(Logout)                                                                  \
    F(CreateObject)                                                            \
    F(CopyObject)                                                              \
    F(DestroyObject)                                                           \
    F(GetObjectSize)                                                           \
    F(GetAttributeValue)                                                       \
    F(SetAttributeValue)                                                       \
    F(FindObjectsInit)                                                         \
    F(FindObjects)                                                             \
    F(FindObjectsFinal)                                                        \
    F(EncryptInit)                                                             \
    F(Encrypt)                                                                 \
    F(EncryptUpdate)                                                           \
    F(EncryptFinal)                                                            \
    F(DecryptInit)                                                             \
    F(Decrypt)                                                                 \
    F(DecryptUpdate)                                                           \
    F(DecryptFinal)                                                            \
    F(DigestInit)                                                              \
    F(Digest)                                                                  \
    F(DigestUpdate)                                                            \
    F(DigestKey)                                                               \
    F(DigestFinal)                                                             \
    F(SignInit)                                                                \
    F(Sign)                                                                    \
    F(SignUpdate)                                                              \
    F(SignFinal)                                                               \
    F(SignRecoverInit)                                                         \
    F(SignRecover)                                                             \
    F(VerifyInit)                                                              \
    F(Verify)                                                                  \
    F(VerifyUpdate)                                                            \
    F(VerifyFinal)                                                             \
    F(VerifyRecoverInit)                                                       \
    F(VerifyRecover)                                                           \
    F(DigestEncryptUpdate)                                                     \
    F(DecryptDigestUpdate)                                                     \
    F(SignEncryptUpdate)                                                       \
    F(DecryptVerifyUpdate)                                                     \
    F(GenerateKey)                                                             \
    F(GenerateKeyPair)                                                         \
    F(WrapKey)                                                                 \
    F(UnwrapKey)                                                               \
    F(DeriveKey)                                                               \
    F(SeedRandom)                                                              \
    F(GenerateRandom)                                                          \
    F(GetFunctionStatus)                                                       \
    F(CancelFunction)                                                          \
    F(WaitForSlotEvent)

#define LIST_F(n)       .C_##n = C_##n,
#define LIST_G(n, impl) .C_##n = impl,
#define LIST_STUB(n)    .C_##n = (void *)stub_##n,

/* clang-format off */
static CK_FUNCTION_LIST function_list = {
    .version = {2, 40},
    CMK_FUNCTIONS_2_40(LIST_F, LIST_G)
};

static CK_FUNCTION_LIST_3_0 function_list_3 = {
    .version = {3, 0},
    CMK_FUNCTIONS_2_40(LIST_F, LIST_G)
    .C_GetInterfaceList = get_interface_list,
    .C_GetInterface = get_interface,
    .C_LoginUser = login_user,
    .C_SessionCancel = session_cancel,
    CMK_MESSAGE_FUNCTIONS(LIST_STUB)
};
/* clang-format on */

static CK_UTF8CHAR interface_name[] = "PKCS 11";

/* pInterfaceName is CK_UTF8CHAR * in the OASIS header and p11-kit 0.24's
 * compat.h, char * in p11-kit 0.25's pkcs11.h. */
static CK_INTERFACE interfaces[] = {
    {(void *)interface_name, &function_list_3, 0},
    {(void *)interface_name, &function_list, 0},
};

static CK_RV get_function_list(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (ppFunctionList == NULL)
        RETURN_CALL(GetFunctionList, CKR_ARGUMENTS_BAD);
    *ppFunctionList = &function_list;
    RETURN_CALL(GetFunctionList, CKR_OK);
}

static CK_RV list_interfaces(CK_INTERFACE_PTR pInterfacesList,
                             CK_ULONG_PTR pulCount)
{
    CK_ULONG n = CMK_ARRAY_SIZE(interfaces);

    if (pulCount == NULL)
        return CKR_ARGUMENTS_BAD;
    if (pInterfacesList == NULL) {
        *pulCount = n;
        return CKR_OK;
    }
    if (*pulCount < n) {
        *pulCount = n;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(pInterfacesList, interfaces, sizeof(interfaces));
    *pulCount = n;
    return CKR_OK;
}

static CK_RV get_interface_list(CK_INTERFACE_PTR pInterfacesList,
                                CK_ULONG_PTR pulCount)
{
    RETURN_CALL(GetInterfaceList, list_interfaces(pInterfacesList, pulCount));
}

static CK_RV find_interface(CK_UTF8CHAR_PTR pInterfaceName,
                            CK_VERSION_PTR pVersion,
                            CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    size_t i;

    if (ppInterface == NULL)
        return CKR_ARGUMENTS_BAD;
    for (i = 0; i < CMK_ARRAY_SIZE(interfaces); i++) {
        CK_VERSION *v = interfaces[i].pFunctionList;
        if (pInterfaceName != NULL &&
            strcmp((char *)pInterfaceName, (char *)interface_name) != 0)
            continue;
        if (pVersion != NULL &&
            (pVersion->major != v->major || pVersion->minor != v->minor))
            continue;
        if ((interfaces[i].flags & flags) != flags)
            continue;
        *ppInterface = &interfaces[i];
        return CKR_OK;
    }
    return CKR_ARGUMENTS_BAD;
}

static CK_RV get_interface(CK_UTF8CHAR_PTR pInterfaceName,
                           CK_VERSION_PTR pVersion,
                           CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    RETURN_CALL(GetInterface,
                find_interface(pInterfaceName, pVersion, ppInterface, flags));
}

CMK_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    return get_function_list(ppFunctionList);
}

CMK_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList,
                                    CK_ULONG_PTR pulCount)
{
    return get_interface_list(pInterfacesList, pulCount);
}

CMK_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName,
                                CK_VERSION_PTR pVersion,
                                CK_INTERFACE_PTR_PTR ppInterface,
                                CK_FLAGS flags)
{
    return get_interface(pInterfaceName, pVersion, ppInterface, flags);
}
