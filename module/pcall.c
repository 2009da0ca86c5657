/*
 * The call layer from the front end into the providers (pcall.h).
 *
 * Tracing: one line per call under CMKP11_DEBUG=module, "token NAME:
 * OPERATION ... = CKR_NAME (device error N)": names and result codes only,
 * never a PIN, key material or data. A PKCS#1 v1.5 decryption with
 * implicit rejection reaches the provider as raw RSA (CKM_RSA_X_509),
 * whose result does not depend on the padding; see pkcs1.c and
 * docs/architecture.md.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "audit.h"
#include "pcall.h"
#include "rsa.h"
#include "secure.h"

static const char *const pop_names[] = {
    [POP_ENCRYPT] = "encrypt", [POP_DECRYPT] = "decrypt",
    [POP_UNWRAP] = "unwrap",   [POP_SIGN] = "sign",
    [POP_VERIFY] = "verify",
};

/* One trace line for a call into token t's provider; m may be NULL. */
static void ptrace(const struct token *t, const char *op, const CK_MECHANISM *m,
                   CK_RV rv, CK_ULONG device_error)
{
    cmk_debug("token %s: %s%s%s = %s (device error %lu)", t->name, op,
              m != NULL ? " " : "",
              m != NULL ? cmk_mech_name(m->mechanism) : "", cmk_rv_name(rv),
              (unsigned long)device_error);
}

/* The context of a call made for session s. */
static struct pcall pcall_of(const struct session *s)
{
    struct pcall c = {.tok = s->token->ptok, .sess = s->psess};

    return c;
}

/* The end of a call made for session s: the back end's status for
 * ulDeviceError, and the trace line. */
static CK_RV pcall_end(struct session *s, const struct pcall *c, const char *op,
                       const CK_MECHANISM *m, CK_RV rv)
{
    s->device_error = c->device_error;
    ptrace(s->token, op, m, rv, c->device_error);
    return rv;
}

/* ---- A token's life ---- */

CK_RV provider_open(struct token *t, const struct config_token *ct, char *err,
                    size_t errlen)
{
    CK_RV rv;

    return_val_if_fail(t->ops != NULL && t->ptok == NULL, CKR_GENERAL_ERROR);
    rv = t->ops->open(ct, &t->ptok, &t->pflags, err, errlen);
    ptrace(t, "open", NULL, rv, 0);
    return rv;
}

void provider_close(struct token *t, bool in_child)
{
    if (t->ptok == NULL)
        return;
    t->ops->close(t->ptok, in_child);
    t->ptok = NULL;
    ptrace(t, in_child ? "close (in a forked child)" : "close", NULL, CKR_OK,
           0);
}

void provider_token_info(struct token *t)
{
    t->ops->token_info(t->ptok, &t->info);
}

const struct pmech *provider_mechanisms(struct token *t, CK_ULONG *n)
{
    *n = 0;
    return t->ops->mechanisms(t->ptok, n);
}

void providers_atfork(enum provider_fork phase)
{
    size_t i;

    for (i = 0; cmk_providers[i] != NULL; i++)
        if (cmk_providers[i]->atfork != NULL)
            cmk_providers[i]->atfork(phase);
}

/* Defined here, declared with the contract (provider.h): providers use it
 * too. */
void pobj_clear(const struct provider_ops *ops, void *tok, struct pobj *o)
{
    if (o == NULL)
        return;
    free(o->uid);
    attrs_clear(&o->attrs);
    if (o->ref != NULL && ops != NULL && ops->ref_free != NULL)
        ops->ref_free(tok, o->ref);
    memset(o, 0, sizeof(*o));
}

void provider_ref_free(const struct token *t, void *ref)
{
    /* A token torn down (or a forked child's) has no provider left. */
    if (ref != NULL && t != NULL && t->ops != NULL &&
        t->ops->ref_free != NULL && t->ptok != NULL)
        t->ops->ref_free(t->ptok, ref);
}

/* ---- Sessions and login ---- */

CK_RV provider_session_open(struct token *t, void **psess)
{
    CK_RV rv;

    *psess = NULL;
    if (t->ops->session_open == NULL)
        return CKR_OK;
    rv = t->ops->session_open(t->ptok, psess);
    ptrace(t, "session_open", NULL, rv, 0);
    return rv;
}

void provider_session_close(struct token *t, void *psess)
{
    if (t->ops->session_close == NULL || psess == NULL)
        return;
    t->ops->session_close(t->ptok, psess);
    ptrace(t, "session_close", NULL, CKR_OK, 0);
}

/* The trace names the call and its result: never the PIN or its length. */
CK_RV provider_login(struct session *s, CK_USER_TYPE user,
                     const CK_UTF8CHAR *pin, CK_ULONG len)
{
    struct pcall c = pcall_of(s);
    CK_RV rv = CKR_OK;

    if (s->token->ops->login != NULL)
        rv = s->token->ops->login(&c, user, pin, len);
    return pcall_end(s, &c, user == CKU_SO ? "login (SO)" : "login", NULL, rv);
}

void provider_logout(struct token *t)
{
    struct pcall c = {.tok = t->ptok};
    CK_RV rv;

    if (t->ops->logout == NULL)
        return;
    rv = t->ops->logout(&c);
    ptrace(t, "logout", NULL, rv, c.device_error);
}

CK_RV provider_list(struct session *s, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
                    struct pobj **objs, CK_ULONG *n, bool *complete)
{
    struct pcall c = pcall_of(s);
    CK_RV rv = s->token->ops->list(&c, hint, nhint, objs, n, complete);

    return pcall_end(s, &c, "list", NULL, rv);
}

/* ---- Operations on keys ---- */

CK_RV provider_check_public(struct session *s, struct object *key, bool wrap)
{
    struct pcall c = pcall_of(s);
    CK_RV rv;

    if (s->token->ops->check_public == NULL || key->ref == NULL)
        return CKR_OK;
    rv = s->token->ops->check_public(&c, key->ref, wrap);
    return pcall_end(s, &c, wrap ? "check_public (wrap)" : "check_public", NULL,
                     rv);
}

CK_RV provider_check_mechanism(struct session *s, enum pop op,
                               const CK_MECHANISM *m)
{
    struct token *t = s->token;
    CK_RV rv;

    return_val_if_fail(op <= POP_VERIFY, CKR_GENERAL_ERROR);
    if (t->ops->check_mechanism == NULL)
        return CKR_OK;
    rv = t->ops->check_mechanism(t->ptok, op, m);
    ptrace(t, op == POP_VERIFY ? "check_mechanism (verify)" : "check_mechanism",
           m, rv, 0);
    return rv;
}

/*
 * The provider's crypt on a reference. A PKCS#1 v1.5 decryption reaches
 * here only with rsa-pkcs1-decrypt = allow (implicit rejection hands the
 * provider CKM_RSA_X_509): the back end's answer is the oracle that
 * setting accepts; the module adds no branch of its own on it, and the
 * trace names the result the caller receives anyway.
 */
static CK_RV crypt_ref(const struct token *t, struct pcall *c, enum pop pop,
                       void *ref, const CK_MECHANISM *m, const CK_BYTE *in,
                       CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    CK_RV rv = CKR_KEY_FUNCTION_NOT_PERMITTED;

    if (t->ops->crypt != NULL && ref != NULL)
        rv = t->ops->crypt(c, pop, ref, m, in, inlen, out, outlen);
    if (m->mechanism == CKM_RSA_PKCS &&
        (pop == POP_DECRYPT || pop == POP_UNWRAP)) {
        /* PKCS#1 v1.5: no branch on whether the padding was valid. */
        unsigned ok = ct_eq(rv, CKR_OK);
        *outlen = ct_select(ok, *outlen, 0);
        return ct_select(ok, CKR_OK, rv);
    }
    if (rv != CKR_OK)
        *outlen = 0;
    return rv;
}

/*
 * An RSA ciphertext or wrapped key is exactly as long as the modulus
 * (PKCS#11 Current Mechanisms, the tables of CKM_RSA_PKCS,
 * CKM_RSA_PKCS_OAEP and CKM_RSA_X_509: decryption and unwrapping take k
 * bytes, k the modulus length); any other length is the caller's
 * *_LEN_RANGE, checked here for every back end: a lower token says so
 * itself, a vault would answer 400 and it would become an invalid
 * ciphertext. The length is public: no secret depends on this branch.
 */
static CK_RV rsa_input_length(struct object *key, const CK_MECHANISM *m,
                              CK_ULONG inlen, CK_RV range)
{
    CK_ULONG k;

    if (m->mechanism != CKM_RSA_PKCS && m->mechanism != CKM_RSA_PKCS_OAEP &&
        m->mechanism != CKM_RSA_X_509)
        return CKR_OK;
    k = rsa_object_bytes(key);
    return k == 0 || inlen == k ? CKR_OK : range;
}

CK_RV provider_crypt(struct session *s, enum pop pop, struct object *key,
                     const CK_MECHANISM *m, const CK_BYTE *in, CK_ULONG inlen,
                     CK_BYTE *out, CK_ULONG *outlen)
{
    struct pcall c = pcall_of(s);
    CK_RV rv;

    return_val_if_fail(pop <= POP_VERIFY, CKR_GENERAL_ERROR);
    if (key->ref == NULL)
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    rv = pop == POP_DECRYPT
             ? rsa_input_length(key, m, inlen, CKR_ENCRYPTED_DATA_LEN_RANGE)
         : pop == POP_UNWRAP
             ? rsa_input_length(key, m, inlen, CKR_WRAPPED_KEY_LEN_RANGE)
             : CKR_OK;
    if (rv != CKR_OK) {
        *outlen = 0;
        return pcall_end(s, &c, pop_names[pop], m, rv);
    }
    rv = crypt_ref(s->token, &c, pop, key->ref, m, in, inlen, out, outlen);
    return pcall_end(s, &c, pop_names[pop], m, rv);
}

CK_RV provider_sign_listed(struct session *s, const struct pobj *p,
                           const CK_MECHANISM *m, const CK_BYTE *in,
                           CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen)
{
    struct pcall c = pcall_of(s);
    CK_RV rv =
        crypt_ref(s->token, &c, POP_SIGN, p->ref, m, in, inlen, out, outlen);

    ptrace(s->token, "sign (certificate)", m, rv, c.device_error);
    return rv;
}

/* ---- Secret keys the back end keeps ---- */

CK_RV provider_unwrap(struct session *s, struct object *key,
                      const CK_MECHANISM *m, const CK_BYTE *wrapped,
                      CK_ULONG len, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                      struct pobj *out)
{
    struct pcall c = pcall_of(s);
    CK_RV rv = CKR_FUNCTION_NOT_SUPPORTED;

    if (s->token->ops->unwrap != NULL)
        rv = s->token->ops->unwrap(&c, key->ref, m, wrapped, len, tmpl, n, out);
    audit_record(s, key, "unwrap", m->mechanism, rv, c.device_error);
    return pcall_end(s, &c, "unwrap", m, rv);
}

CK_RV provider_wrap(struct session *s, struct object *wkey,
                    const CK_MECHANISM *m, struct object *key, CK_BYTE *out,
                    CK_ULONG *outlen)
{
    struct pcall c = pcall_of(s);
    CK_RV rv = CKR_KEY_NOT_WRAPPABLE;

    if (s->token->ops->wrap != NULL)
        rv = s->token->ops->wrap(&c, wkey->ref, m, key->ref, out, outlen);
    /* A length query wraps nothing. */
    if (out != NULL)
        audit_record(s, wkey, "wrap", m->mechanism, rv, c.device_error);
    return pcall_end(s, &c, out != NULL ? "wrap" : "wrap (length)", m, rv);
}

CK_RV provider_generate_key(struct session *s, const CK_MECHANISM *m,
                            const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                            struct pobj *out)
{
    struct pcall c = pcall_of(s);
    CK_RV rv = CKR_FUNCTION_NOT_SUPPORTED;

    if (s->token->ops->generate_key != NULL)
        rv = s->token->ops->generate_key(&c, m, tmpl, n, out);
    return pcall_end(s, &c, "generate_key", m, rv);
}

CK_RV provider_create_object(struct session *s, const CK_ATTRIBUTE *tmpl,
                             CK_ULONG n, struct pobj *out)
{
    struct pcall c = pcall_of(s);
    CK_RV rv = CKR_FUNCTION_NOT_SUPPORTED;

    if (s->token->ops->create_object != NULL)
        rv = s->token->ops->create_object(&c, tmpl, n, out);
    return pcall_end(s, &c, "create_object", NULL, rv);
}

CK_RV provider_destroy_object(struct session *s, void *ref)
{
    struct pcall c = pcall_of(s);

    if (s->token->ops->destroy_object == NULL)
        return CKR_OK;
    return pcall_end(s, &c, "destroy_object", NULL,
                     s->token->ops->destroy_object(&c, ref));
}

CK_RV provider_set_attributes(struct session *s, void *ref,
                              const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    struct pcall c = pcall_of(s);

    if (s->token->ops->set_attributes == NULL || ref == NULL)
        return CKR_ACTION_PROHIBITED;
    return pcall_end(s, &c, "set_attributes", NULL,
                     s->token->ops->set_attributes(&c, ref, tmpl, n));
}

void provider_discard_object(struct session *s, void *ref)
{
    struct pcall c = pcall_of(s);
    CK_RV rv;

    if (s->token->ops->destroy_object == NULL || ref == NULL)
        return;
    rv = s->token->ops->destroy_object(&c, ref);
    ptrace(s->token, "destroy_object (discarded)", NULL, rv, c.device_error);
}

CK_RV provider_read_value(struct session *s, void *ref, CK_BYTE **value,
                          CK_ULONG *len)
{
    const struct provider_ops *ops = s->token->ops;
    struct pcall c = pcall_of(s);
    CK_BYTE *buf = NULL;
    CK_ULONG n = 0;
    CK_RV rv;

    *value = NULL;
    *len = 0;
    if (ops->get_value == NULL)
        return CKR_OK;
    rv = ops->get_value(&c, ref, NULL, &n);
    if (rv == CKR_OK && (buf = secure_alloc(n + 1)) == NULL)
        rv = CKR_HOST_MEMORY;
    if (rv == CKR_OK)
        rv = ops->get_value(&c, ref, buf, &n);
    if (rv == CKR_OK) {
        *value = buf;
        *len = n;
    } else {
        secure_free(buf);
    }
    return pcall_end(s, &c, "get_value", NULL, rv);
}

CK_RV provider_get_attribute(struct session *s, void *ref,
                             CK_ATTRIBUTE_TYPE type, CK_BYTE **value,
                             CK_ULONG *len)
{
    const struct provider_ops *ops = s->token->ops;
    struct pcall c = pcall_of(s);

    *value = NULL;
    *len = 0;
    if (ops->get_attribute == NULL || ref == NULL)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    return pcall_end(s, &c, "get_attribute", NULL,
                     ops->get_attribute(&c, ref, type, value, len));
}

/* ---- Key pairs and random ---- */

CK_RV provider_generate_key_pair(struct session *s, const CK_MECHANISM *m,
                                 const CK_ATTRIBUTE *pub, CK_ULONG npub,
                                 const CK_ATTRIBUTE *priv, CK_ULONG npriv,
                                 struct pobj *pub_out, struct pobj *priv_out)
{
    struct pcall c = pcall_of(s);
    CK_RV rv = CKR_MECHANISM_INVALID;

    if (s->token->ops->generate_key_pair != NULL)
        rv = s->token->ops->generate_key_pair(&c, m, pub, npub, priv, npriv,
                                              pub_out, priv_out);
    return pcall_end(s, &c, "generate_key_pair", m, rv);
}

CK_RV provider_generate_random(struct session *s, CK_BYTE *out, CK_ULONG len)
{
    struct pcall c = pcall_of(s);

    if (len == 0)
        return CKR_OK;
    if (s->token->ops->generate_random == NULL)
        return len > 0x7fffffffUL || RAND_bytes(out, (int)len) != 1
                   ? CKR_FUNCTION_FAILED
                   : CKR_OK;
    return pcall_end(s, &c, "generate_random", NULL,
                     s->token->ops->generate_random(&c, out, len));
}
