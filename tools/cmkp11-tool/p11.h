/*
 * cmkp11-tool's PKCS#11 side: loading the module, choosing tokens by label
 * or pkcs11: URI (RFC 7512), logging in, and reading attributes.
 */
#ifndef CMKP11_TOOL_P11_H
#define CMKP11_TOOL_P11_H

#include <stdbool.h>
#include <stddef.h>

#include <p11-kit/uri.h>

#include "compat.h"

/* The loaded module. */
struct tmod {
    void *dl;
    CK_FUNCTION_LIST *f;
    bool initialized;
};

/* A PIN in secure memory. */
struct tpin {
    char *value; /* NULL when none was given */
    size_t len;
};

/* A token and the session the tool uses on it. */
struct ttoken {
    CK_SLOT_ID slot;
    CK_TOKEN_INFO info;
    char label[33];
    char model[17];
    CK_SESSION_HANDLE sess;
    bool open;
    bool logged_in;
    CK_RV login_rv;   /* CKR_OK, or why the login failed */
    bool pin_missing; /* a login is required and no PIN was given */
    bool keyvault;    /* a Key Vault or Managed HSM token (else hsm) */
};

/* A selection: a plain name or a parsed pkcs11: URI. */
struct tsel {
    const char *name; /* plain name, or NULL */
    P11KitUri *uri;   /* parsed URI, or NULL */
};

/* Loads the module at path and calls C_Initialize. Returns 0, or -1 after
 * printing why. */
int tmod_load(struct tmod *m, const char *path);
/* Closes sessions, calls C_Finalize and unloads. */
void tmod_unload(struct tmod *m);

/* Parses arg (NULL = everything) as a URI when it starts with "pkcs11:",
 * else as a name. Returns 0, or -1 after printing why (a usage error). */
int tsel_parse(struct tsel *s, const char *arg);
void tsel_clear(struct tsel *s);
/* Whether s selects a token with this info. */
bool tsel_match_token(const struct tsel *s, const CK_TOKEN_INFO *info,
                      const char *label);
/* Whether s names object attributes (object=, id=, type=). */
bool tsel_has_object(const struct tsel *s);

/* The tokens that match s, in slot order. Returns 0 (possibly none), or -1
 * after printing why. */
int ttokens_find(struct tmod *m, const struct tsel *s, struct ttoken **out,
                 size_t *n);
/* Opens a session on t and logs in when the token requires it and pin has
 * a value. The session is read-write where the token allows. Returns the
 * result of C_OpenSession; login results go to t->login_rv. */
CK_RV ttoken_open(struct tmod *m, struct ttoken *t, const struct tpin *pin);
void ttokens_free(struct tmod *m, struct ttoken *t, size_t n);

/* The back end's code for the last call on sess (ulDeviceError). */
CK_ULONG tmod_device_error(struct tmod *m, CK_SESSION_HANDLE sess);

/* Attribute reads. Absent or unreadable attributes give NULL / false. */
char *tattr_string(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                   CK_ATTRIBUTE_TYPE type);
void *tattr_bytes(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                  CK_ATTRIBUTE_TYPE type, size_t *len);
bool tattr_bool(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                CK_ATTRIBUTE_TYPE type, bool *present);
CK_ULONG tattr_ulong(struct tmod *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                     CK_ATTRIBUTE_TYPE type, bool *present);

/* PINs: from the command line (copied; the argument is wiped) or from a
 * file that group and others may not write. Return 0, or -1 after
 * printing why. */
int tpin_from_arg(struct tpin *p, char *arg);
int tpin_from_file(struct tpin *p, const char *path);
/* The PIN from CMKP11_PIN, if set (0 when it is not). */
int tpin_from_env(struct tpin *p);
void tpin_free(struct tpin *p);

/* A CKR's name ("CKR_DEVICE_ERROR"). */
const char *trv_name(CK_RV rv);

/* Copies a space-padded PKCS#11 text field of len bytes into out (len + 1
 * bytes), without the padding. */
void tfield(char *out, const CK_UTF8CHAR *field, size_t len);

#endif
