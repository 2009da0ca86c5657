/*
 * The attribute and template policy: one table of what the specification
 * and cmkp11 allow for each attribute of each object class, applied by
 * the front end before any back end sees a template (docs/attributes.md).
 */
#ifndef CMKP11_ATTRPOLICY_H
#define CMKP11_ATTRPOLICY_H

#include <stdbool.h>

#include "attrs.h"

/* The object-creating calls, as the footnotes of PKCS#11 2.40 4.1
 * table 10 name them. */
enum ap_op { AP_CREATE, AP_GENERATE, AP_UNWRAP };

/* What every object-creating call checks in any template, whatever the
 * class and back end: one attribute with two values, and CKA_TRUSTED true
 * outside an SO session (so: the session is the SO's). */
CK_RV attrpolicy_template(const CK_ATTRIBUTE *tmpl, CK_ULONG n, bool so);

/*
 * Checks a secret key template for op against the table; CKA_TOKEN true
 * only with token_keys (the back end keeps token secret keys,
 * PROVIDER_TOKEN_SECRET_KEYS). kt and
 * value_len are in/out: what the mechanism or the value implies (0 =
 * unknown) and what the template asks for; on return kt is the key type.
 * token_keys: the back end keeps token secret keys
 * (PROVIDER_TOKEN_SECRET_KEYS); otherwise CKA_TOKEN true is refused.
 */
CK_RV attrpolicy_secret(enum ap_op op, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                        bool token_keys, CK_KEY_TYPE *kt, CK_ULONG *value_len);

/* Whether a key of type kt may have a value of len bytes (0: not known
 * yet): CKR_OK, CKR_ATTRIBUTE_VALUE_INVALID, or CKR_TEMPLATE_INCONSISTENT
 * for a key type cmkp11 does not make. */
CK_RV attrpolicy_length(CK_KEY_TYPE kt, CK_ULONG len);

/* The template with the defaults a back end that keeps its own secret
 * keys must be given (so that its own never apply). *out is tmpl or a
 * malloc'd copy; release it with attrpolicy_free_defaults(). */
CK_RV attrpolicy_with_defaults(const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                               CK_ATTRIBUTE **out, CK_ULONG *nout);
void attrpolicy_free_defaults(const CK_ATTRIBUTE *tmpl, CK_ATTRIBUTE *out);

/* Sets every default of the table for a new secret key in a. */
int attrpolicy_secret_defaults(struct attrs *a);
/* How many attributes attrpolicy_secret_defaults sets, at most. */
CK_ULONG attrpolicy_secret_defaults_count(void);

/* Fills in the attributes every listed object has, where the back end
 * left them out (token_object: a token object, not a session one). */
int attrpolicy_listed_defaults(struct attrs *a, bool token_object);

/* Whether the value of type is never returned by an object of class cls
 * that is sensitive or unextractable (footnote 7). */
bool attrpolicy_sensitive(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type);

/* Whether C_SetAttributeValue may set at on an object of class cls with
 * attributes a: CKR_OK, or the code to return. */
CK_RV attrpolicy_set(CK_OBJECT_CLASS cls, const struct attrs *a,
                     const CK_ATTRIBUTE *at);

/* Whether C_SetAttributeValue may hand type, on an object of class cls
 * that the back end holds, to the back end (provider set_attributes):
 * CKR_OK, CKR_ATTRIBUTE_VALUE_INVALID for a value of the wrong kind, or
 * CKR_ACTION_PROHIBITED (the back end's objects are read-only otherwise). */
CK_RV attrpolicy_provider_set(CK_OBJECT_CLASS cls, const CK_ATTRIBUTE *at);

#endif
