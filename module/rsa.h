/*
 * RSA helpers: local public-key operations with OpenSSL, mechanism
 * parameters, DigestInfo encoding, and the attributes of RSA key objects
 * that every provider presents the same way. The front end's view; what
 * providers may call is in provider-util.h.
 */
#ifndef CMKP11_RSA_H
#define CMKP11_RSA_H

#include <openssl/evp.h>

#include "module.h"
#include "provider-util.h"

/* For hash-and-sign mechanisms: the digest (CKM_SHA*), and whether PSS. */
bool rsa_hash_sign_mech(CK_MECHANISM_TYPE m, CK_MECHANISM_TYPE *digest,
                        bool *pss);

/* Checks OAEP/PSS parameters. */
CK_RV rsa_check_oaep(const CK_MECHANISM *m);
CK_RV rsa_check_pss(const CK_MECHANISM *m, CK_MECHANISM_TYPE hash_mech);

/* DigestInfo = prefix || digest for a CKM_SHA* mechanism. */
CK_RV rsa_digest_info(CK_MECHANISM_TYPE digest, const CK_BYTE *hash,
                      CK_ULONG hlen, CK_BYTE *out, CK_ULONG *outlen);

/* The object's public key, built once from CKA_MODULUS and
 * CKA_PUBLIC_EXPONENT and shared by every object with the same key.
 * Borrowed; valid while the object is referenced. */
EVP_PKEY *rsa_object_pkey(struct object *o);
/* Drops an object's reference (object_unref). */
void rsa_pkey_release(struct rsa_pkey *k);
/* Fork: the shared key table's lock (general.c's handlers). */
void rsa_atfork_prepare(void);
void rsa_atfork_release(void);
CK_ULONG rsa_object_bytes(struct object *o);

/* Local verification. For CKM_RSA_PKCS, data is the DigestInfo (or any
 * data); for PSS, data is the digest. */
CK_RV rsa_verify(EVP_PKEY *pk, const CK_MECHANISM *m, const CK_BYTE *data,
                 CK_ULONG len, const CK_BYTE *sig, CK_ULONG siglen);

#endif
