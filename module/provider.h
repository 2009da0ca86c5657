/*
 * The contract between the Cryptoki front end and a back end ("provider").
 *
 * The front end owns every Cryptoki rule: initialisation, slots, sessions,
 * handles, login state, operation state, attribute policy and the buffer
 * conventions. A provider sees none of that: it reports the objects of its
 * token (struct pobj), each with a reference of its own, and performs single
 * operations on those references. Providers never see application handles.
 *
 * Threading: every function may be called from several threads at once; a
 * provider locks what it shares. The front end holds none of its locks while
 * it calls a provider.
 */
#ifndef CMKP11_PROVIDER_H
#define CMKP11_PROVIDER_H

#include "compat.h"
#include "attrs.h"
#include "conf.h"

struct provider_ops;

/* An object a provider reports: a key version's private or public half, a
 * certificate, or a secret key the provider keeps. */
struct pobj {
    char *uid;          /* stable identity within the token (malloc'd) */
    struct attrs attrs; /* every attribute except secret values */
    void *ref;          /* the provider's reference; see ops->ref_free */
};

void pobj_clear(const struct provider_ops *ops, void *tok, struct pobj *o);

/* The context of one PKCS#11 call. */
struct pcall {
    void *tok;             /* from ops->open */
    void *sess;            /* from ops->session_open, or NULL */
    CK_ULONG device_error; /* out: HTTP status or the lower module's CKR */
};

struct provider_token_info {
    char model[17];
    char serial[17];
    bool login_required; /* C_Login is needed before private objects */
    bool hardware;       /* CKF_HW_SLOT */
    CK_ULONG min_pin, max_pin;
};

struct pmech {
    CK_MECHANISM_TYPE type;
    CK_MECHANISM_INFO info;
};

enum pop {
    POP_ENCRYPT,
    POP_DECRYPT,
    POP_UNWRAP, /* an RSA decryption on behalf of C_UnwrapKey */
    POP_SIGN,
    /* check_mechanism only for public keys: verification runs in the
     * module. For a secret key the back end keeps (an HMAC), crypt()
     * verifies: in is the data, out the signature and *outlen its
     * length; the answer is CKR_OK or CKR_SIGNATURE_INVALID. */
    POP_VERIFY,
};

/* The pthread_atfork phases, for ops->atfork. */
enum provider_fork {
    PROVIDER_FORK_PREPARE,
    PROVIDER_FORK_PARENT,
    PROVIDER_FORK_CHILD,
};

/* Provider flags, returned by open(). */
#define PROVIDER_OWNS_SECRET_KEYS 0x1 /* secret keys live in the back end */
#define PROVIDER_LOCAL_PUBLIC     0x2 /* RSA encrypt/wrap/verify run here */
/* crypt() does raw RSA (CKM_RSA_X_509) for POP_DECRYPT, so that PKCS#1
 * v1.5 padding can be removed in the module (implicit rejection). */
#define PROVIDER_RAW_RSA 0x4
/* Secret keys may be token objects (CKA_TOKEN true), kept by the back end
 * across processes and listed by list() with a stable uid: in the lower
 * token (hsm, with PROVIDER_OWNS_SECRET_KEYS), or wrapped under the CMK in
 * the token's state directory (keyvault); other back ends make session
 * keys only. */
#define PROVIDER_TOKEN_SECRET_KEYS 0x8

struct provider_ops {
    const char *name; /* the "backend =" value */

    /* Reads the token's section and prepares the token. Should do no slow
     * I/O: C_Initialize must stay fast. err gets "FILE:LINE: key: reason". */
    CK_RV(*open)
    (const struct config_token *cfg, void **tok, unsigned *flags, char *err,
     size_t errlen);
    /* in_child: the process forked since open; release without touching
     * anything the parent still uses (sockets, the lower module's state). */
    void (*close)(void *tok, bool in_child);
    void (*token_info)(void *tok, struct provider_token_info *info);
    /* The mechanisms the back end performs on its keys. */
    const struct pmech *(*mechanisms)(void *tok, CK_ULONG *count);

    CK_RV(*login)
    (struct pcall *c, CK_USER_TYPE user, const CK_UTF8CHAR *pin, CK_ULONG len);
    CK_RV (*logout)(struct pcall *c);

    /* Optional: per-session state (a lower session for session objects). */
    CK_RV (*session_open)(void *tok, void **sess);
    void (*session_close)(void *tok, void *sess);

    /*
     * Lists the token's objects. hint is the application's search template
     * (may be empty): the provider may use it to fetch less, and returns a
     * superset of the matching objects. With *complete set, every object
     * that matches hint and is absent from the list is gone. The provider
     * decides when to refresh from the back end (refresh-interval).
     * The front end takes ownership of the returned array and its pobjs.
     */
    CK_RV(*list)
    (struct pcall *c, const CK_ATTRIBUTE *hint, CK_ULONG nhint,
     struct pobj **objs, CK_ULONG *n, bool *complete);
    /* Releases a reference from a pobj. */
    void (*ref_free)(void *tok, void *ref);

    /* Optional: before a local public-key operation (a wrap, or with
     * wrap false an encryption) the provider confirms the version may
     * still be used, refreshing what it knows when that is older than
     * refresh-interval, so a revoked key stops being used locally too. */
    CK_RV (*check_public)(struct pcall *c, void *key, bool wrap);

    /* Optional: refuses at C_*Init what the back end cannot express
     * (CKR_MECHANISM_PARAM_INVALID), with the mechanism crypt() will get. */
    CK_RV (*check_mechanism)(void *tok, enum pop op, const CK_MECHANISM *mech);

    /*
     * One operation with a key the provider holds. in/out are whole; the
     * front end handles multi-part calls and the caller's length rules, and
     * passes an out buffer large enough for the result (RSA: modulus size;
     * symmetric: inlen + 32). POP_SIGN gets CKM_RSA_PKCS (a DigestInfo)
     * or CKM_RSA_PKCS_PSS (a digest), or the provider's own mechanisms.
     */
    CK_RV(*crypt)
    (struct pcall *c, enum pop op, void *key, const CK_MECHANISM *mech,
     const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out, CK_ULONG *outlen);

    /* PROVIDER_OWNS_SECRET_KEYS: the key objects live in the back end. */
    CK_RV(*unwrap)
    (struct pcall *c, void *key, const CK_MECHANISM *mech,
     const CK_BYTE *wrapped, CK_ULONG len, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
     struct pobj *out);
    CK_RV(*wrap)
    (struct pcall *c, void *wrapping_key, const CK_MECHANISM *mech, void *key,
     CK_BYTE *out, CK_ULONG *outlen);
    CK_RV(*generate_key)
    (struct pcall *c, const CK_MECHANISM *mech, const CK_ATTRIBUTE *tmpl,
     CK_ULONG n, struct pobj *out);
    CK_RV(*create_object)
    (struct pcall *c, const CK_ATTRIBUTE *tmpl, CK_ULONG n, struct pobj *out);
    CK_RV (*destroy_object)(struct pcall *c, void *ref);
    /* The value of a secret key the provider keeps, for C_GetAttributeValue
     * (the front end has checked CKA_SENSITIVE and CKA_EXTRACTABLE). With
     * a NULL out, the length. */
    CK_RV (*get_value)(struct pcall *c, void *ref, CK_BYTE *out, CK_ULONG *len);
    /* Optional: C_SetAttributeValue on an object the back end holds. The
     * template holds only attributes attrpolicy_provider_settable() lets
     * through (vendor attributes such as CKA_CMK_ENABLED), each once; the
     * provider answers CKR_ATTRIBUTE_READ_ONLY for one it does not change.
     * The front end lists the token again after a success. */
    CK_RV(*set_attributes)
    (struct pcall *c, void *ref, const CK_ATTRIBUTE *tmpl, CK_ULONG n);

    /* Key pairs made in the back end (a new key, or a new version). */
    CK_RV(*generate_key_pair)
    (struct pcall *c, const CK_MECHANISM *mech, const CK_ATTRIBUTE *pub,
     CK_ULONG npub, const CK_ATTRIBUTE *priv, CK_ULONG npriv,
     struct pobj *pub_out, struct pobj *priv_out);
    /* Optional; the module uses OpenSSL's generator when absent. */
    CK_RV (*generate_random)(struct pcall *c, CK_BYTE *out, CK_ULONG len);

    /* Optional: called by the module's pthread_atfork handlers, outside
     * (before, in PROVIDER_FORK_PREPARE) every lock of the front end. */
    void (*atfork)(enum provider_fork phase);

    /* Optional: an attribute of a back-end object read only when a
     * C_GetAttributeValue template names it, because reading it costs a
     * request of its own (CKA_CMK_ROTATION_POLICY; object.c lists them).
     * *out: malloc'd, freed by the caller; CKR_ATTRIBUTE_TYPE_INVALID when
     * the object has no such attribute. */
    CK_RV(*get_attribute)
    (struct pcall *c, void *ref, CK_ATTRIBUTE_TYPE type, CK_BYTE **out,
     CK_ULONG *len);
};

/* For a back end that loads another PKCS#11 module: whether fl is this
 * module's own function list, and whether this thread's C_Initialize was
 * called again since the last look (the other module loads this one: a
 * nested call returns CKR_GENERAL_ERROR at once). */
bool module_is_self(const CK_FUNCTION_LIST *fl);
bool module_reentered(void);

/* The providers built into this module, NULL-terminated. */
extern const struct provider_ops *const cmk_providers[];

#endif
