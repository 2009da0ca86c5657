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

/* How many public keys of local operations are kept built (module/rsa.c):
 * with the Montgomery context OpenSSL adds on first use, about 2.5 KiB
 * each for RSA-2048. */
#define RSA_PKEY_CACHE_MAX 128

/* The object's public key, from CKA_MODULUS and CKA_PUBLIC_EXPONENT, for
 * a local operation: shared by every object with the same key and kept in
 * a cache of the most recently used keys (module/rsa.c). The caller holds
 * the reference for the length of its operation and drops it with
 * rsa_pkey_unref(); NULL if the object has no public key or it cannot be
 * built. */
struct rsa_pkey *rsa_object_pkey(struct object *o);
/* The key itself; valid while the reference is held. */
EVP_PKEY *rsa_pkey_evp(const struct rsa_pkey *k);
void rsa_pkey_unref(struct rsa_pkey *k);
/* Empties the cache (C_Finalize); a key an operation still holds is freed
 * when it is dropped. */
void rsa_pkey_flush(void);
/* How many keys the cache holds. */
size_t rsa_pkey_cached(void);
/* Fork: the shared key table's lock (general.c's handlers). */
void rsa_atfork_prepare(void);
void rsa_atfork_release(void);
CK_ULONG rsa_object_bytes(struct object *o);

/* Local verification. For CKM_RSA_PKCS, data is the DigestInfo (or any
 * data); for PSS, data is the digest. */
CK_RV rsa_verify(EVP_PKEY *pk, const CK_MECHANISM *m, const CK_BYTE *data,
                 CK_ULONG len, const CK_BYTE *sig, CK_ULONG siglen);

#endif
