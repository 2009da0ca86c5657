/*
 * The call layer from the front end into the providers (pcall.c): one
 * provider_<op>() per operation of struct provider_ops. Nothing else in
 * module/ calls through struct provider_ops.
 *
 * Each function that serves a session fills the call's context (struct
 * pcall) from it, answers for an optional operation the provider leaves
 * out, records the back end's status in the session (ulDeviceError),
 * audits where the operation is that one call (wrap, unwrap) and traces
 * the call and its result under CMKP11_DEBUG=module.
 */
#ifndef CMKP11_PCALL_H
#define CMKP11_PCALL_H

#include "module.h"

/* A token's life (slot.c). */
CK_RV provider_open(struct token *t, const struct config_token *ct, char *err,
                    size_t errlen);
void provider_close(struct token *t, bool in_child); /* NULL ptok: none */
void provider_token_info(struct token *t);
const struct pmech *provider_mechanisms(struct token *t, CK_ULONG *n);
/* The back ends' fork handlers, each provider once (general.c). */
void providers_atfork(enum provider_fork phase);

/* Releases a provider reference (an object's, a pobj's). */
void provider_ref_free(const struct token *t, void *ref);

/* Sessions and login. Without session_open, *psess is NULL. */
CK_RV provider_session_open(struct token *t, void **psess);
void provider_session_close(struct token *t, void *psess);
CK_RV provider_login(struct session *s, CK_USER_TYPE user,
                     const CK_UTF8CHAR *pin, CK_ULONG len);
void provider_logout(struct token *t);

CK_RV provider_list(struct session *s, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
                    struct pobj **objs, CK_ULONG *n, bool *complete);

/* Before a local public-key operation: CKR_OK where the provider has no
 * check_public or the key no reference. */
CK_RV provider_check_public(struct session *s, struct object *key, bool wrap);
/* At C_*Init: CKR_OK where the provider has no check_mechanism. */
CK_RV provider_check_mechanism(struct session *s, enum pop op,
                               const CK_MECHANISM *m);
/* One operation on a key the provider holds; CKR_KEY_FUNCTION_NOT_PERMITTED
 * for a key it does not. A PKCS#1 v1.5 decryption's result is not branched
 * on. On failure *outlen is 0. */
CK_RV provider_crypt(struct session *s, enum pop pop, struct object *key,
                     const CK_MECHANISM *m, const CK_BYTE *in, CK_ULONG inlen,
                     CK_BYTE *out, CK_ULONG *outlen);
/* A signature the module makes for itself with a key of a listing not yet
 * published (certs.c): the application's call is the listing, whose
 * device error stays. */
CK_RV provider_sign_listed(struct session *s, const struct pobj *p,
                           const CK_MECHANISM *m, const CK_BYTE *in,
                           CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen);

/* Secret keys the back end keeps (PROVIDER_OWNS_SECRET_KEYS). */
CK_RV provider_unwrap(struct session *s, struct object *key,
                      const CK_MECHANISM *m, const CK_BYTE *wrapped,
                      CK_ULONG len, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                      struct pobj *out); /* audited */
CK_RV provider_wrap(struct session *s, struct object *wkey,
                    const CK_MECHANISM *m, struct object *key, CK_BYTE *out,
                    CK_ULONG *outlen); /* audited when out is not NULL */
CK_RV provider_generate_key(struct session *s, const CK_MECHANISM *m,
                            const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                            struct pobj *out);
CK_RV provider_create_object(struct session *s, const CK_ATTRIBUTE *tmpl,
                             CK_ULONG n, struct pobj *out);
/* C_DestroyObject: CKR_OK where the provider has no destroy_object. */
CK_RV provider_destroy_object(struct session *s, void *ref);
/* C_SetAttributeValue on a back-end object: CKR_ACTION_PROHIBITED where
 * the provider has no set_attributes. */
CK_RV provider_set_attributes(struct session *s, void *ref,
                              const CK_ATTRIBUTE *tmpl, CK_ULONG n);
/* Cleanup: an object the application will never see (a publication that
 * failed, a closing session's objects). No result, no device error. */
void provider_discard_object(struct session *s, void *ref);
/* The value of a secret key the back end keeps, in secure memory (free
 * with secure_free(*value)); *value NULL and *len 0 where the
 * provider has no get_value. */
/* An attribute the provider reads only when asked (ops->get_attribute):
 * *value malloc'd (free()), or CKR_ATTRIBUTE_TYPE_INVALID. */
CK_RV provider_get_attribute(struct session *s, void *ref,
                             CK_ATTRIBUTE_TYPE type, CK_BYTE **value,
                             CK_ULONG *len);
CK_RV provider_read_value(struct session *s, void *ref, CK_BYTE **value,
                          CK_ULONG *len);

/* CKR_MECHANISM_INVALID where the provider makes no key pairs. */
CK_RV provider_generate_key_pair(struct session *s, const CK_MECHANISM *m,
                                 const CK_ATTRIBUTE *pub, CK_ULONG npub,
                                 const CK_ATTRIBUTE *priv, CK_ULONG npriv,
                                 struct pobj *pub_out, struct pobj *priv_out);
/* The back end's generator, or OpenSSL's where it has none. */
CK_RV provider_generate_random(struct session *s, CK_BYTE *out, CK_ULONG len);

#endif
