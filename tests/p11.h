/* Test helpers: load a module, write a configuration, find objects. */
#ifndef CMKP11_TEST_P11_H
#define CMKP11_TEST_P11_H

#include <openssl/types.h>

#include "compat.h"

extern CK_FUNCTION_LIST *p11;
extern void *p11_dl;

/* Loads $CMKP11_TEST_MODULE (or the given path) and its function list. */
void p11_load(const char *path);
/* A private directory for this test (under the current directory). */
const char *p11_tmpdir(void);
/* Writes text to NAME in the private directory, mode 0600; returns path. */
char *p11_write_file(const char *name, const char *text);
/* C_Initialize with OS locking and pReserved "conf=PATH". */
CK_RV p11_init(const char *conf_path);
CK_SESSION_HANDLE p11_open(CK_SLOT_ID slot, bool rw);
/* The first object of a class with a label (NULL: any), or 0. */
CK_OBJECT_HANDLE p11_find(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                          const char *label);
/* An AES key made in the module (session object). */
CK_OBJECT_HANDLE p11_aes_key(CK_SESSION_HANDLE s, CK_ULONG len,
                             bool extractable, bool sensitive);
/* A whole attribute into a malloc'd buffer. */
void *p11_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
               CK_ULONG *len);

/* The number of objects matching a template (at most 64), or 999 when
 * the search fails. */
CK_ULONG p11_count(CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n);
/* Calls every function that takes a session handle with h; returns how
 * many calls there were and sets *wrong to how many did not return want
 * (each named in a diagnostic). */
int p11_session_calls(CK_SESSION_HANDLE h, CK_RV want, int *wrong);
/* Writes text to path (any directory) with the given mode. */
void p11_write_path(const char *path, const char *text, unsigned mode);
/* A CK_BBOOL attribute: 1, 0, or -1 when C_GetAttributeValue fails. */
int p11_bool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t);
/* A CK_ULONG attribute, or (CK_ULONG)-1 when C_GetAttributeValue fails. */
CK_ULONG p11_ulong(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                   CK_ATTRIBUTE_TYPE t);
/* The public key of an object (CKA_PUBLIC_KEY_INFO), or NULL. */
EVP_PKEY *p11_public_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o);
/* RSA-OAEP encryption with OpenSSL alone (md for OAEP and MGF1; NULL:
 * SHA-1); returns the length, 0 on failure. */
size_t p11_oaep_wrap(EVP_PKEY *pk, const EVP_MD *md, const unsigned char *in,
                     size_t inlen, unsigned char *out);
/* Whether two AES keys are the same key: AES-GCM encryption with a and
 * decryption with b give back the plaintext. */
bool p11_same_aes_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a,
                      CK_OBJECT_HANDLE b);

#define MOCK_CONF                                                              \
    "[cmkp11]\nlog-level = error\n\n[token mock]\nbackend = mock\n"

#endif
