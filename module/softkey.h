/*
 * Secret keys held in the module's memory (back ends that keep none, such
 * as Key Vault): AES-GCM, AES-CBC-PAD and AES key wrap through OpenSSL,
 * and HMAC-SHA256 with generic secrets.
 */
#ifndef CMKP11_SOFTKEY_H
#define CMKP11_SOFTKEY_H

#include "provider-util.h"

/* Releases the ciphers fetched since C_Initialize (C_Finalize). */
void softkey_release(void);
/* Checks a mechanism's parameters for use with a key of key_len bytes. */
CK_RV softkey_check_mech(const CK_MECHANISM *m, CK_ULONG key_len);
/* The most output an operation on inlen bytes can give. */
CK_ULONG softkey_out_bound(const CK_MECHANISM *m, bool encrypt, CK_ULONG inlen);
/* softkey_crypt() (provider-util.h): one whole encryption or decryption. */

/* HMAC-SHA256 (CKM_SHA256_HMAC, CKM_SHA256_HMAC_GENERAL) with a generic
 * secret: whether m is one, its parameters' check (CKR_OK or
 * CKR_MECHANISM_PARAM_INVALID) with the MAC's length, and one MAC over
 * in into out (*outlen bytes: the MAC's length). */
bool softkey_is_hmac(CK_MECHANISM_TYPE m);
CK_RV softkey_hmac_check(const CK_MECHANISM *m, CK_ULONG *maclen);
CK_RV softkey_hmac(const CK_MECHANISM *m, const CK_BYTE *key, CK_ULONG key_len,
                   const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                   CK_ULONG *outlen);

#endif
