/*
 * RSA helpers: local public-key operations with OpenSSL, mechanism
 * parameters, DigestInfo encoding, and the attributes of RSA key objects
 * that every provider presents the same way.
 */
#ifndef CMKP11_RSA_H
#define CMKP11_RSA_H

#include <openssl/evp.h>

#include "module.h"

/* The EVP_MD for a CKM_SHA* / CKG_MGF1_SHA* value, or NULL. */
const EVP_MD *rsa_md_for_mech(CK_MECHANISM_TYPE m);
const EVP_MD *rsa_md_for_mgf(CK_RSA_PKCS_MGF_TYPE mgf);
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
/* A public key from its modulus and exponent (big-endian bytes). */
EVP_PKEY *rsa_pkey_from_parts(const CK_BYTE *n, CK_ULONG nlen, const CK_BYTE *e,
                              CK_ULONG elen);

/* Sets CKM_RSA_PKCS_OAEP's parameters (hash, MGF1, label) on a context. */
CK_RV rsa_set_oaep(EVP_PKEY_CTX *ctx, const CK_MECHANISM *m);

/* Local public-key encryption (CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP). */
CK_RV rsa_encrypt(EVP_PKEY *pk, const CK_MECHANISM *m, const CK_BYTE *in,
                  CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen);
/* Local verification. For CKM_RSA_PKCS, data is the DigestInfo (or any
 * data); for PSS, data is the digest. */
CK_RV rsa_verify(EVP_PKEY *pk, const CK_MECHANISM *m, const CK_BYTE *data,
                 CK_ULONG len, const CK_BYTE *sig, CK_ULONG siglen);

/* A description of one RSA key version, for rsa_key_objects(). */
struct rsa_key_desc {
    const char *uid_prefix; /* unique within the token */
    const char *label;      /* NAME or NAME@VERSION */
    const CK_BYTE *id;      /* CKA_ID */
    CK_ULONG id_len;
    const CK_BYTE *modulus;
    CK_ULONG modulus_len;
    const CK_BYTE *exponent;
    CK_ULONG exponent_len;
    bool decrypt, unwrap, sign;    /* private-key usage (false when disabled) */
    bool encrypt, wrap, verify;    /* public-key usage */
    bool private_obj;              /* CKA_PRIVATE on the private key */
    long long not_before, expires; /* 0 = none; seconds since the epoch */
    long long created, updated;
    bool enabled, current;
    bool local;          /* CKA_LOCAL: generated in the back end */
    const char *backend; /* vendor attributes */
    const char *source;
    const char *key_name;
    const char *version;
    const char *recovery_level;
    const char *key_ops;
    const char *key_type;
    const char *refused;  /* key permissions the back end was refused */
    const char *replicas; /* CKA_CMK_REPLICAS, or NULL */
};

/* Builds the private and public key objects' attributes. 0, or -1 with
 * nothing left to free in priv and pub. */
int rsa_key_objects(const struct rsa_key_desc *d, struct pobj *priv,
                    struct pobj *pub);

#endif
