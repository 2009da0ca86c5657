/*
 * Secret keys held in the module's memory (back ends that keep none, such
 * as Key Vault): AES-GCM, AES-CBC-PAD and AES key wrap through OpenSSL.
 */
#ifndef CMKP11_SOFTKEY_H
#define CMKP11_SOFTKEY_H

#include "provider-util.h"

/* Checks a mechanism's parameters for use with a key of key_len bytes. */
CK_RV softkey_check_mech(const CK_MECHANISM *m, CK_ULONG key_len);
/* The most output an operation on inlen bytes can give. */
CK_ULONG softkey_out_bound(const CK_MECHANISM *m, bool encrypt, CK_ULONG inlen);
/* softkey_crypt() (provider-util.h): one whole encryption or decryption. */

#endif
