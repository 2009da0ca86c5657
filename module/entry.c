/*
 * The module's entry points: the PKCS#11 2.40 function list and the 3.0
 * interfaces. These three functions are the only exported symbols.
 */
#include "config.h"

#include <string.h>

#include "module.h"

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

static CK_RV not_supported(void)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
                         CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                         CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
    /* No token here has named users; a plain login is the same. */
    if (pUsername != NULL && ulUsernameLen > 0)
        return CKR_OPERATION_NOT_INITIALIZED;
    return C_Login(hSession, userType, pPin, ulPinLen);
}

static CK_RV C_SessionCancel(CK_SESSION_HANDLE hSession, CK_FLAGS flags)
{
    struct session *s;
    CK_RV rv = module_enter();
    int i;

    if (rv != CKR_OK)
        return rv;
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
    module_leave();
    return rv;
}

static CK_FUNCTION_LIST function_list = {
    .version = {2, 40},
    .C_Initialize = C_Initialize,
    .C_Finalize = C_Finalize,
    .C_GetInfo = C_GetInfo,
    .C_GetFunctionList = get_function_list,
    .C_GetSlotList = C_GetSlotList,
    .C_GetSlotInfo = C_GetSlotInfo,
    .C_GetTokenInfo = C_GetTokenInfo,
    .C_GetMechanismList = C_GetMechanismList,
    .C_GetMechanismInfo = C_GetMechanismInfo,
    .C_InitToken = C_InitToken,
    .C_InitPIN = C_InitPIN,
    .C_SetPIN = C_SetPIN,
    .C_OpenSession = C_OpenSession,
    .C_CloseSession = C_CloseSession,
    .C_CloseAllSessions = C_CloseAllSessions,
    .C_GetSessionInfo = C_GetSessionInfo,
    .C_GetOperationState = C_GetOperationState,
    .C_SetOperationState = C_SetOperationState,
    .C_Login = C_Login,
    .C_Logout = C_Logout,
    .C_CreateObject = C_CreateObject,
    .C_CopyObject = C_CopyObject,
    .C_DestroyObject = C_DestroyObject,
    .C_GetObjectSize = C_GetObjectSize,
    .C_GetAttributeValue = C_GetAttributeValue,
    .C_SetAttributeValue = C_SetAttributeValue,
    .C_FindObjectsInit = C_FindObjectsInit,
    .C_FindObjects = C_FindObjects,
    .C_FindObjectsFinal = C_FindObjectsFinal,
    .C_EncryptInit = C_EncryptInit,
    .C_Encrypt = C_Encrypt,
    .C_EncryptUpdate = C_EncryptUpdate,
    .C_EncryptFinal = C_EncryptFinal,
    .C_DecryptInit = C_DecryptInit,
    .C_Decrypt = C_Decrypt,
    .C_DecryptUpdate = C_DecryptUpdate,
    .C_DecryptFinal = C_DecryptFinal,
    .C_DigestInit = C_DigestInit,
    .C_Digest = C_Digest,
    .C_DigestUpdate = C_DigestUpdate,
    .C_DigestKey = C_DigestKey,
    .C_DigestFinal = C_DigestFinal,
    .C_SignInit = C_SignInit,
    .C_Sign = C_Sign,
    .C_SignUpdate = C_SignUpdate,
    .C_SignFinal = C_SignFinal,
    .C_SignRecoverInit = C_SignRecoverInit,
    .C_SignRecover = C_SignRecover,
    .C_VerifyInit = C_VerifyInit,
    .C_Verify = C_Verify,
    .C_VerifyUpdate = C_VerifyUpdate,
    .C_VerifyFinal = C_VerifyFinal,
    .C_VerifyRecoverInit = C_VerifyRecoverInit,
    .C_VerifyRecover = C_VerifyRecover,
    .C_DigestEncryptUpdate = C_DigestEncryptUpdate,
    .C_DecryptDigestUpdate = C_DecryptDigestUpdate,
    .C_SignEncryptUpdate = C_SignEncryptUpdate,
    .C_DecryptVerifyUpdate = C_DecryptVerifyUpdate,
    .C_GenerateKey = C_GenerateKey,
    .C_GenerateKeyPair = C_GenerateKeyPair,
    .C_WrapKey = C_WrapKey,
    .C_UnwrapKey = C_UnwrapKey,
    .C_DeriveKey = C_DeriveKey,
    .C_SeedRandom = C_SeedRandom,
    .C_GenerateRandom = C_GenerateRandom,
    .C_GetFunctionStatus = C_GetFunctionStatus,
    .C_CancelFunction = C_CancelFunction,
    .C_WaitForSlotEvent = C_WaitForSlotEvent,
};

static CK_FUNCTION_LIST_3_0 function_list_3 = {
    .version = {3, 0},
    .C_Initialize = C_Initialize,
    .C_Finalize = C_Finalize,
    .C_GetInfo = C_GetInfo,
    .C_GetFunctionList = get_function_list,
    .C_GetSlotList = C_GetSlotList,
    .C_GetSlotInfo = C_GetSlotInfo,
    .C_GetTokenInfo = C_GetTokenInfo,
    .C_GetMechanismList = C_GetMechanismList,
    .C_GetMechanismInfo = C_GetMechanismInfo,
    .C_InitToken = C_InitToken,
    .C_InitPIN = C_InitPIN,
    .C_SetPIN = C_SetPIN,
    .C_OpenSession = C_OpenSession,
    .C_CloseSession = C_CloseSession,
    .C_CloseAllSessions = C_CloseAllSessions,
    .C_GetSessionInfo = C_GetSessionInfo,
    .C_GetOperationState = C_GetOperationState,
    .C_SetOperationState = C_SetOperationState,
    .C_Login = C_Login,
    .C_Logout = C_Logout,
    .C_CreateObject = C_CreateObject,
    .C_CopyObject = C_CopyObject,
    .C_DestroyObject = C_DestroyObject,
    .C_GetObjectSize = C_GetObjectSize,
    .C_GetAttributeValue = C_GetAttributeValue,
    .C_SetAttributeValue = C_SetAttributeValue,
    .C_FindObjectsInit = C_FindObjectsInit,
    .C_FindObjects = C_FindObjects,
    .C_FindObjectsFinal = C_FindObjectsFinal,
    .C_EncryptInit = C_EncryptInit,
    .C_Encrypt = C_Encrypt,
    .C_EncryptUpdate = C_EncryptUpdate,
    .C_EncryptFinal = C_EncryptFinal,
    .C_DecryptInit = C_DecryptInit,
    .C_Decrypt = C_Decrypt,
    .C_DecryptUpdate = C_DecryptUpdate,
    .C_DecryptFinal = C_DecryptFinal,
    .C_DigestInit = C_DigestInit,
    .C_Digest = C_Digest,
    .C_DigestUpdate = C_DigestUpdate,
    .C_DigestKey = C_DigestKey,
    .C_DigestFinal = C_DigestFinal,
    .C_SignInit = C_SignInit,
    .C_Sign = C_Sign,
    .C_SignUpdate = C_SignUpdate,
    .C_SignFinal = C_SignFinal,
    .C_SignRecoverInit = C_SignRecoverInit,
    .C_SignRecover = C_SignRecover,
    .C_VerifyInit = C_VerifyInit,
    .C_Verify = C_Verify,
    .C_VerifyUpdate = C_VerifyUpdate,
    .C_VerifyFinal = C_VerifyFinal,
    .C_VerifyRecoverInit = C_VerifyRecoverInit,
    .C_VerifyRecover = C_VerifyRecover,
    .C_DigestEncryptUpdate = C_DigestEncryptUpdate,
    .C_DecryptDigestUpdate = C_DecryptDigestUpdate,
    .C_SignEncryptUpdate = C_SignEncryptUpdate,
    .C_DecryptVerifyUpdate = C_DecryptVerifyUpdate,
    .C_GenerateKey = C_GenerateKey,
    .C_GenerateKeyPair = C_GenerateKeyPair,
    .C_WrapKey = C_WrapKey,
    .C_UnwrapKey = C_UnwrapKey,
    .C_DeriveKey = C_DeriveKey,
    .C_SeedRandom = C_SeedRandom,
    .C_GenerateRandom = C_GenerateRandom,
    .C_GetFunctionStatus = C_GetFunctionStatus,
    .C_CancelFunction = C_CancelFunction,
    .C_WaitForSlotEvent = C_WaitForSlotEvent,
    .C_GetInterfaceList = get_interface_list,
    .C_GetInterface = get_interface,
    .C_LoginUser = C_LoginUser,
    .C_SessionCancel = C_SessionCancel,
    .C_MessageEncryptInit = (void *)not_supported,
    .C_EncryptMessage = (void *)not_supported,
    .C_EncryptMessageBegin = (void *)not_supported,
    .C_EncryptMessageNext = (void *)not_supported,
    .C_MessageEncryptFinal = (void *)not_supported,
    .C_MessageDecryptInit = (void *)not_supported,
    .C_DecryptMessage = (void *)not_supported,
    .C_DecryptMessageBegin = (void *)not_supported,
    .C_DecryptMessageNext = (void *)not_supported,
    .C_MessageDecryptFinal = (void *)not_supported,
    .C_MessageSignInit = (void *)not_supported,
    .C_SignMessage = (void *)not_supported,
    .C_SignMessageBegin = (void *)not_supported,
    .C_SignMessageNext = (void *)not_supported,
    .C_MessageSignFinal = (void *)not_supported,
    .C_MessageVerifyInit = (void *)not_supported,
    .C_VerifyMessage = (void *)not_supported,
    .C_VerifyMessageBegin = (void *)not_supported,
    .C_VerifyMessageNext = (void *)not_supported,
    .C_MessageVerifyFinal = (void *)not_supported,
};

static CK_UTF8CHAR interface_name[] = "PKCS 11";

static CK_INTERFACE interfaces[] = {
    {interface_name, &function_list_3, 0},
    {interface_name, &function_list, 0},
};

static CK_RV get_function_list(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (ppFunctionList == NULL)
        return CKR_ARGUMENTS_BAD;
    *ppFunctionList = &function_list;
    return CKR_OK;
}

static CK_RV get_interface_list(CK_INTERFACE_PTR pInterfacesList,
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

static CK_RV get_interface(CK_UTF8CHAR_PTR pInterfaceName,
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
