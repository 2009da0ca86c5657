/*
 * A PKCS#11 library for tests that forwards every call to a real one
 * (SoftHSMv2 by default) and makes the token fail on command, as a
 * network HSM whose link drops or a device that resets would: configured
 * as an hsm token's `module =`, it lets tests drive the hsm back end's
 * offline-grace (docs/hsm.md, "Outages") against a real lower token.
 *
 *   CMKP11_FAULT_MODULE  the library to forward to
 *                        (default /usr/lib/softhsm/libsofthsm2.so)
 *   CMKP11_FAULT_FILE    a file read at every call: absent or empty, calls
 *                        pass; otherwise its first word is the code every
 *                        token, session, object and crypto call returns
 *                        without reaching the real library: a name
 *                        (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
 *                        CKR_TOKEN_NOT_PRESENT) or a number (0x30)
 *   CMKP11_FAULT_PARTS   "refuse": C_EncryptUpdate, C_EncryptFinal,
 *                        C_DecryptUpdate and C_DecryptFinal answer
 *                        CKR_FUNCTION_NOT_SUPPORTED without reaching the
 *                        real library (whose operation stays active), as
 *                        a module that does AES-GCM only in one call
 *   CMKP11_FAULT_CALLS   a file each encryption and decryption call
 *                        appends its name to, a line a call
 *   CMKP11_FAULT_ATTRS   how C_GetAttributeValue answers:
 *                        "single": a template of more than one attribute
 *                        gets CKR_FUNCTION_FAILED without reaching the
 *                        real library, as a module that reads only one
 *                        attribute a call;
 *                        "overstate": a template of more than one
 *                        attribute that the real library answers with
 *                        CKR_OK says each value is a byte longer than the
 *                        buffer it was given, as a module that does not
 *                        follow the specification;
 *                        "long-date": every CKA_START_DATE is 200 bytes
 *                        (CKR_BUFFER_TOO_SMALL and CK_UNAVAILABLE_
 *                        INFORMATION for a smaller buffer, as the
 *                        specification says)
 *   CMKP11_FAULT_ATTR_LOG
 *                        a file each C_GetAttributeValue appends the size
 *                        of its template to, a line a call
 *
 * C_Initialize, C_Finalize, C_GetInfo, the slot list, C_CloseSession and
 * C_FindObjectsFinal always pass, so the real library is never left with
 * an operation or session its caller believes ended. Built only for
 * `make check`.
 */
#include "config.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

__attribute__((visibility("default"))) CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static void *real_dl;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST shim;

/* The code the control file asks for, CKR_OK if none. */
static CK_RV fault(void)
{
    const char *path = getenv("CMKP11_FAULT_FILE");
    char word[64] = "";
    FILE *f;

    if (path == NULL || (f = fopen(path, "r")) == NULL)
        return CKR_OK;
    if (fscanf(f, "%63s", word) != 1)
        word[0] = '\0';
    fclose(f);
    if (word[0] == '\0')
        return CKR_OK;
    if (strcmp(word, "CKR_DEVICE_ERROR") == 0)
        return CKR_DEVICE_ERROR;
    if (strcmp(word, "CKR_DEVICE_REMOVED") == 0)
        return CKR_DEVICE_REMOVED;
    if (strcmp(word, "CKR_TOKEN_NOT_PRESENT") == 0)
        return CKR_TOKEN_NOT_PRESENT;
    return (CK_RV)strtoul(word, NULL, 0);
}

/* Appends name to the call log, if one is asked for. */
static void called(const char *name)
{
    const char *path = getenv("CMKP11_FAULT_CALLS");
    FILE *f;

    if (path == NULL || (f = fopen(path, "a")) == NULL)
        return;
    fprintf(f, "%s\n", name);
    fclose(f);
}

static bool parts_refused(void)
{
    const char *v = getenv("CMKP11_FAULT_PARTS");

    return v != NULL && strcmp(v, "refuse") == 0;
}

#define FORWARD(fn, params, args)                                              \
    static CK_RV shim_##fn params                                              \
    {                                                                          \
        CK_RV rv = fault();                                                    \
        return rv != CKR_OK ? rv : real->fn args;                              \
    }

FORWARD(C_GetTokenInfo, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b))
FORWARD(C_GetMechanismList,
        (CK_SLOT_ID a, CK_MECHANISM_TYPE_PTR b, CK_ULONG_PTR c), (a, b, c))
FORWARD(C_GetMechanismInfo,
        (CK_SLOT_ID a, CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))
FORWARD(C_OpenSession,
        (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d,
         CK_SESSION_HANDLE_PTR e),
        (a, b, c, d, e))
FORWARD(C_GetSessionInfo, (CK_SESSION_HANDLE a, CK_SESSION_INFO_PTR b), (a, b))
FORWARD(C_Login,
        (CK_SESSION_HANDLE a, CK_USER_TYPE b, CK_UTF8CHAR_PTR c, CK_ULONG d),
        (a, b, c, d))
FORWARD(C_Logout, (CK_SESSION_HANDLE a), (a))
FORWARD(C_CreateObject,
        (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c,
         CK_OBJECT_HANDLE_PTR d),
        (a, b, c, d))
FORWARD(C_DestroyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
static bool mode_is(const char *mode, const char *want)
{
    return mode != NULL && strcmp(mode, want) == 0;
}

static CK_RV shim_C_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                                      CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    const char *mode = getenv("CMKP11_FAULT_ATTRS");
    const char *log = getenv("CMKP11_FAULT_ATTR_LOG");
    CK_RV rv = fault();
    CK_ULONG i, size[16];
    FILE *f;

    if (log != NULL && (f = fopen(log, "a")) != NULL) {
        fprintf(f, "%lu\n", (unsigned long)n);
        fclose(f);
    }
    if (rv == CKR_OK && n > 1 && mode_is(mode, "single"))
        rv = CKR_FUNCTION_FAILED;
    if (rv != CKR_OK)
        return rv;
    for (i = 0; i < n && i < 16; i++)
        size[i] = t[i].ulValueLen;
    rv = real->C_GetAttributeValue(s, o, t, n);
    if (rv == CKR_OK && n > 1 && n <= 16 && mode_is(mode, "overstate"))
        for (i = 0; i < n; i++)
            if (t[i].pValue != NULL)
                t[i].ulValueLen = size[i] + 1;
    for (i = 0; mode_is(mode, "long-date") && i < n; i++) {
        if (t[i].type != CKA_START_DATE)
            continue;
        if (t[i].pValue == NULL) {
            t[i].ulValueLen = 200;
        } else if (t[i].ulValueLen < 200) {
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_BUFFER_TOO_SMALL;
        } else {
            memset(t[i].pValue, 'X', 200);
            t[i].ulValueLen = 200;
        }
    }
    return rv;
}
FORWARD(C_SetAttributeValue,
        (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c,
         CK_ULONG d),
        (a, b, c, d))
FORWARD(C_FindObjectsInit,
        (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c))
FORWARD(C_FindObjects,
        (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c,
         CK_ULONG_PTR d),
        (a, b, c, d))
/* An encryption or decryption call: logged, and refused in parts when
 * asked (parts true). */
#define FORWARD_CRYPT(fn, parts, params, args)                                 \
    static CK_RV shim_##fn params                                              \
    {                                                                          \
        CK_RV rv = fault();                                                    \
                                                                               \
        called(#fn);                                                           \
        if (rv == CKR_OK && (parts) && parts_refused())                        \
            rv = CKR_FUNCTION_NOT_SUPPORTED;                                   \
        return rv != CKR_OK ? rv : real->fn args;                              \
    }

FORWARD_CRYPT(C_EncryptInit, false,
              (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c),
              (a, b, c))
FORWARD_CRYPT(C_Encrypt, false,
              (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
               CK_ULONG_PTR e),
              (a, b, c, d, e))
FORWARD_CRYPT(C_EncryptUpdate, true,
              (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
               CK_ULONG_PTR e),
              (a, b, c, d, e))
FORWARD_CRYPT(C_EncryptFinal, true,
              (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FORWARD_CRYPT(C_DecryptInit, false,
              (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c),
              (a, b, c))
FORWARD_CRYPT(C_Decrypt, false,
              (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
               CK_ULONG_PTR e),
              (a, b, c, d, e))
FORWARD_CRYPT(C_DecryptUpdate, true,
              (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
               CK_ULONG_PTR e),
              (a, b, c, d, e))
FORWARD_CRYPT(C_DecryptFinal, true,
              (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
FORWARD(C_SignInit,
        (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c),
        (a, b, c))
FORWARD(C_Sign,
        (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d,
         CK_ULONG_PTR e),
        (a, b, c, d, e))
FORWARD(C_GenerateKey,
        (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c,
         CK_ULONG d, CK_OBJECT_HANDLE_PTR e),
        (a, b, c, d, e))
FORWARD(C_GenerateKeyPair,
        (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c,
         CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g,
         CK_OBJECT_HANDLE_PTR h),
        (a, b, c, d, e, f, g, h))
FORWARD(C_WrapKey,
        (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c,
         CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f),
        (a, b, c, d, e, f))
FORWARD(C_UnwrapKey,
        (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c,
         CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g,
         CK_OBJECT_HANDLE_PTR h),
        (a, b, c, d, e, f, g, h))
FORWARD(C_GenerateRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c),
        (a, b, c))

__attribute__((visibility("default"))) CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    const char *path = getenv("CMKP11_FAULT_MODULE");
    CK_C_GetFunctionList gfl;
    CK_RV rv;

    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    if (real == NULL) {
        real_dl =
            dlopen(path != NULL ? path : "/usr/lib/softhsm/libsofthsm2.so",
                   RTLD_NOW | RTLD_LOCAL);
        if (real_dl == NULL)
            return CKR_GENERAL_ERROR;
        gfl = (CK_C_GetFunctionList)dlsym(real_dl, "C_GetFunctionList");
        if (gfl == NULL || (rv = gfl(&real)) != CKR_OK || real == NULL)
            return CKR_GENERAL_ERROR;
        /* Everything passes through, then the calls that fail on
         * command are replaced. */
        memcpy(&shim, real, sizeof(shim));
#define SHIM(fn) shim.fn = shim_##fn
        SHIM(C_GetTokenInfo);
        SHIM(C_GetMechanismList);
        SHIM(C_GetMechanismInfo);
        SHIM(C_OpenSession);
        SHIM(C_GetSessionInfo);
        SHIM(C_Login);
        SHIM(C_Logout);
        SHIM(C_CreateObject);
        SHIM(C_DestroyObject);
        SHIM(C_GetAttributeValue);
        SHIM(C_SetAttributeValue);
        SHIM(C_FindObjectsInit);
        SHIM(C_FindObjects);
        SHIM(C_EncryptInit);
        SHIM(C_Encrypt);
        SHIM(C_EncryptUpdate);
        SHIM(C_EncryptFinal);
        SHIM(C_DecryptInit);
        SHIM(C_Decrypt);
        SHIM(C_DecryptUpdate);
        SHIM(C_DecryptFinal);
        SHIM(C_SignInit);
        SHIM(C_Sign);
        SHIM(C_GenerateKey);
        SHIM(C_GenerateKeyPair);
        SHIM(C_WrapKey);
        SHIM(C_UnwrapKey);
        SHIM(C_GenerateRandom);
#undef SHIM
        shim.C_GetFunctionList = C_GetFunctionList;
    }
    *list = &shim;
    return CKR_OK;
}
