/*
 * cmkp11 - common definitions shared by the module, the providers and tests.
 *
 * p11-kit 0.23 and 0.24 ship a PKCS#11 2.40 header, p11-kit 0.25 and later a
 * 3.0 one. The few PKCS#11 3.0 types the module needs (interfaces, the 3.0
 * function list, the 3.0 entry points) are defined here only when configure
 * found that the installed header lacks them (HAVE_CK_INTERFACE,
 * HAVE_CK_FUNCTION_LIST_3_0, HAVE_DECL_C_GETINTERFACELIST, ...).
 */
#ifndef CMKP11_COMPAT_H
#define CMKP11_COMPAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <p11-kit/pkcs11.h>

#include "config.h"

#ifndef CKF_INTERFACE_FORK_SAFE
#define CKF_INTERFACE_FORK_SAFE 0x00000001UL
#endif

#if !HAVE_CK_INTERFACE
typedef struct CK_INTERFACE {
    CK_UTF8CHAR *pInterfaceName;
    CK_VOID_PTR pFunctionList;
    CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE *CK_INTERFACE_PTR;
typedef CK_INTERFACE_PTR *CK_INTERFACE_PTR_PTR;
#endif

#ifndef CKF_FIND_OBJECTS
#define CKF_FIND_OBJECTS 0x00000040UL /* PKCS#11 3.0, C_SessionCancel */
#endif

typedef CK_RV (*CK_C_GetInterfaceList_t)(CK_INTERFACE_PTR, CK_ULONG_PTR);
typedef CK_RV (*CK_C_GetInterface_t)(CK_UTF8CHAR_PTR, CK_VERSION_PTR,
                                     CK_INTERFACE_PTR_PTR, CK_FLAGS);

#if !HAVE_CK_FUNCTION_LIST_3_0
/* The PKCS#11 3.0 function list: the 2.40 list followed by the 3.0 calls. */
typedef struct CK_FUNCTION_LIST_3_0 {
    CK_VERSION version;
#define CMK_FN(name) CK_##name name;
    CMK_FN(C_Initialize)
    CMK_FN(C_Finalize)
    CMK_FN(C_GetInfo)
    CMK_FN(C_GetFunctionList)
    CMK_FN(C_GetSlotList)
    CMK_FN(C_GetSlotInfo)
    CMK_FN(C_GetTokenInfo)
    CMK_FN(C_GetMechanismList)
    CMK_FN(C_GetMechanismInfo)
    CMK_FN(C_InitToken)
    CMK_FN(C_InitPIN)
    CMK_FN(C_SetPIN)
    CMK_FN(C_OpenSession)
    CMK_FN(C_CloseSession)
    CMK_FN(C_CloseAllSessions)
    CMK_FN(C_GetSessionInfo)
    CMK_FN(C_GetOperationState)
    CMK_FN(C_SetOperationState)
    CMK_FN(C_Login)
    CMK_FN(C_Logout)
    CMK_FN(C_CreateObject)
    CMK_FN(C_CopyObject)
    CMK_FN(C_DestroyObject)
    CMK_FN(C_GetObjectSize)
    CMK_FN(C_GetAttributeValue)
    CMK_FN(C_SetAttributeValue)
    CMK_FN(C_FindObjectsInit)
    CMK_FN(C_FindObjects)
    CMK_FN(C_FindObjectsFinal)
    CMK_FN(C_EncryptInit)
    CMK_FN(C_Encrypt)
    CMK_FN(C_EncryptUpdate)
    CMK_FN(C_EncryptFinal)
    CMK_FN(C_DecryptInit)
    CMK_FN(C_Decrypt)
    CMK_FN(C_DecryptUpdate)
    CMK_FN(C_DecryptFinal)
    CMK_FN(C_DigestInit)
    CMK_FN(C_Digest)
    CMK_FN(C_DigestUpdate)
    CMK_FN(C_DigestKey)
    CMK_FN(C_DigestFinal)
    CMK_FN(C_SignInit)
    CMK_FN(C_Sign)
    CMK_FN(C_SignUpdate)
    CMK_FN(C_SignFinal)
    CMK_FN(C_SignRecoverInit)
    CMK_FN(C_SignRecover)
    CMK_FN(C_VerifyInit)
    CMK_FN(C_Verify)
    CMK_FN(C_VerifyUpdate)
    CMK_FN(C_VerifyFinal)
    CMK_FN(C_VerifyRecoverInit)
    CMK_FN(C_VerifyRecover)
    CMK_FN(C_DigestEncryptUpdate)
    CMK_FN(C_DecryptDigestUpdate)
    CMK_FN(C_SignEncryptUpdate)
    CMK_FN(C_DecryptVerifyUpdate)
    CMK_FN(C_GenerateKey)
    CMK_FN(C_GenerateKeyPair)
    CMK_FN(C_WrapKey)
    CMK_FN(C_UnwrapKey)
    CMK_FN(C_DeriveKey)
    CMK_FN(C_SeedRandom)
    CMK_FN(C_GenerateRandom)
    CMK_FN(C_GetFunctionStatus)
    CMK_FN(C_CancelFunction)
    CMK_FN(C_WaitForSlotEvent)
#undef CMK_FN
    /* PKCS#11 3.0 additions, in the order of the 3.0 header. */
    CK_C_GetInterfaceList_t C_GetInterfaceList;
    CK_C_GetInterface_t C_GetInterface;
    CK_RV(*C_LoginUser)
    (CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG,
     CK_UTF8CHAR_PTR, CK_ULONG);
    CK_RV (*C_SessionCancel)(CK_SESSION_HANDLE, CK_FLAGS);
    CK_RV(*C_MessageEncryptInit)
    (CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    CK_RV(*C_EncryptMessage)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    CK_RV(*C_EncryptMessageBegin)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    CK_RV(*C_EncryptMessageNext)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS);
    CK_RV (*C_MessageEncryptFinal)(CK_SESSION_HANDLE);
    CK_RV(*C_MessageDecryptInit)
    (CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    CK_RV(*C_DecryptMessage)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    CK_RV(*C_DecryptMessageBegin)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    CK_RV(*C_DecryptMessageNext)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS);
    CK_RV (*C_MessageDecryptFinal)(CK_SESSION_HANDLE);
    CK_RV(*C_MessageSignInit)
    (CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    CK_RV(*C_SignMessage)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG_PTR);
    CK_RV (*C_SignMessageBegin)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
    CK_RV(*C_SignMessageNext)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG_PTR);
    CK_RV (*C_MessageSignFinal)(CK_SESSION_HANDLE);
    CK_RV(*C_MessageVerifyInit)
    (CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    CK_RV(*C_VerifyMessage)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG);
    CK_RV (*C_VerifyMessageBegin)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
    CK_RV(*C_VerifyMessageNext)
    (CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
     CK_BYTE_PTR, CK_ULONG);
    CK_RV (*C_MessageVerifyFinal)(CK_SESSION_HANDLE);
} CK_FUNCTION_LIST_3_0;
#endif

/* The 3.0 entry points (p11-kit's 2.40 header does not declare them). */
#if !HAVE_DECL_C_GETINTERFACELIST
CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList,
                         CK_ULONG_PTR pulCount);
#endif
#if !HAVE_DECL_C_GETINTERFACE
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);
#endif

/* Vendor attributes: CKA_VENDOR_DEFINED | "CM" << 16 | n (docs/vendor.md). */
#define CKA_CMK_BASE            (CKA_VENDOR_DEFINED | 0x434D0000UL)
#define CKA_CMK_BACKEND         (CKA_CMK_BASE + 1) /* "hsm" | "keyvault" */
#define CKA_CMK_SOURCE          (CKA_CMK_BASE + 2) /* vault or module URL */
#define CKA_CMK_KEY_NAME        (CKA_CMK_BASE + 3) /* key name, no version */
#define CKA_CMK_VERSION         (CKA_CMK_BASE + 4) /* version string */
#define CKA_CMK_ENABLED         (CKA_CMK_BASE + 5) /* CK_BBOOL */
#define CKA_CMK_CREATED         (CKA_CMK_BASE + 6) /* seconds, decimal text */
#define CKA_CMK_UPDATED         (CKA_CMK_BASE + 7) /* seconds, decimal text */
#define CKA_CMK_RECOVERY        (CKA_CMK_BASE + 8) /* recoveryLevel */
#define CKA_CMK_KEY_OPS         (CKA_CMK_BASE + 9) /* "wrapKey,unwrapKey,..." */
#define CKA_CMK_CURRENT         (CKA_CMK_BASE + 10) /* CK_BBOOL */
#define CKA_CMK_KEY_TYPE        (CKA_CMK_BASE + 11) /* "RSA" | "RSA-HSM" */
#define CKA_CMK_NOT_BEFORE      (CKA_CMK_BASE + 12) /* seconds, decimal text */
#define CKA_CMK_EXPIRES         (CKA_CMK_BASE + 13) /* seconds, decimal text */
#define CKA_CMK_MIN_BITS        (CKA_CMK_BASE + 14) /* CK_ULONG, min-key-bits */
#define CKA_CMK_REFUSED         (CKA_CMK_BASE + 15) /* "list": permissions refused */
#define CKA_CMK_REPLICAS        (CKA_CMK_BASE + 16) /* per-replica state lines */
#define CKA_CMK_ROTATION_POLICY (CKA_CMK_BASE + 17) /* the key's policy */
/* A token secret key's wrapping version; set: rewrap under it. */
#define CKA_CMK_WRAP_VERSION (CKA_CMK_BASE + 18) /* token secret keys */
/* A keyvault token's state files that are skipped, one line each. */
#define CKA_CMK_STATE_FILES (CKA_CMK_BASE + 19) /* "PATH\tWHY\n"... */

#define CMK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define CMK_EXPORT __attribute__((visibility("default")))

#endif
