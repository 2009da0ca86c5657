/*
 * PKCS#1 v1.5 decryption with implicit rejection (pkcs1.c).
 */
#ifndef CMKP11_PKCS1_H
#define CMKP11_PKCS1_H

#include "module.h"

/* Reads rsa-pkcs1-decrypt for the token (after the provider's open). */
CK_RV pkcs1_setup(struct token *t, const struct config_token *ct);
/* True if this operation's padding is removed here. */
bool pkcs1_implicit(const struct token *t, const CK_MECHANISM *m,
                    const struct object *key);
/* Derives the key's secret once (one raw RSA operation); at C_*Init. */
CK_RV pkcs1_prepare(struct session *s, struct object *key);
/* Raw RSA in the back end, then the padding removed in constant time:
 * always CKR_OK for a ciphertext below the modulus. want: the message
 * length required (0: any). out has room for the modulus size. */
CK_RV pkcs1_decrypt(struct session *s, struct object *key, const CK_BYTE *in,
                    CK_ULONG inlen, CK_ULONG want, CK_BYTE *out,
                    CK_ULONG *outlen);
/* The decoding alone: em = c^d (k bytes). */
CK_RV pkcs1_decode(const unsigned char *secret, const CK_BYTE *c,
                   const CK_BYTE *em, CK_ULONG k, CK_ULONG want, CK_BYTE *out,
                   CK_ULONG *outlen);

#endif
