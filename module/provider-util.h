/*
 * What a provider may use of the front end besides the contract
 * (provider.h): RSA helpers, the description of a key version as the
 * objects every back end presents the same way, AES for secret keys held
 * in memory, and the audit note of an offline answer. Providers include
 * this and provider.h, never module.h: the front end's state (sessions,
 * objects, configuration) is not theirs to read.
 */
#ifndef CMKP11_PROVIDER_UTIL_H
#define CMKP11_PROVIDER_UTIL_H

#include <stdbool.h>

#include <openssl/evp.h>

#include "provider.h"

/* The EVP_MD for a CKM_SHA* / CKG_MGF1_SHA* value, or NULL. */
const EVP_MD *rsa_md_for_mech(CK_MECHANISM_TYPE m);
const EVP_MD *rsa_md_for_mgf(CK_RSA_PKCS_MGF_TYPE mgf);

/* A public key from its modulus and exponent (big-endian bytes). */
EVP_PKEY *rsa_pkey_from_parts(const CK_BYTE *n, CK_ULONG nlen, const CK_BYTE *e,
                              CK_ULONG elen);

/* Sets CKM_RSA_PKCS_OAEP's parameters (hash, MGF1, label) on a context. */
CK_RV rsa_set_oaep(EVP_PKEY_CTX *ctx, const CK_MECHANISM *m);

/* Local public-key encryption (CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP). */
CK_RV rsa_encrypt(EVP_PKEY *pk, const CK_MECHANISM *m, const CK_BYTE *in,
                  CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen);

/* Key Vault's rule for a key version's dates (seconds since the epoch, 0:
 * none): outside [not_before, expires) encrypt, wrap and sign are refused;
 * decrypt, unwrap and verify still work. The front end applies it at every
 * Init (key_check_dates), a back end when it checks a version again. */
static inline bool key_dates_valid(long long not_before, long long expires,
                                   long long now)
{
    return (not_before == 0 || now >= not_before) &&
           (expires == 0 || now < expires);
}

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

/* Builds the private and public key objects' attributes (the front end
 * adds its own, such as CKA_CMK_MIN_BITS, when it publishes them). 0, or
 * -1 with nothing left to free in priv and pub. */
int rsa_key_objects(const struct rsa_key_desc *d, struct pobj *priv,
                    struct pobj *pub);

/* One whole AES encryption or decryption (softkey.h has the rest). out
 * has softkey_out_bound() bytes. */
CK_RV softkey_crypt(const CK_MECHANISM *m, bool encrypt, const CK_BYTE *key,
                    CK_ULONG key_len, const CK_BYTE *in, CK_ULONG inlen,
                    CK_BYTE *out, CK_ULONG *outlen);

/* Called by a back end during an operation: the next audit record of this
 * thread says it was served offline (offline-grace: "offline":true). */
void audit_note_offline(bool offline);

#endif
