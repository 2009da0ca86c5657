/* Shared by crypto.c and keys.c. */
#ifndef CMKP11_CRYPTO_H
#define CMKP11_CRYPTO_H

#include "module.h"

bool mech_is_rsa(CK_MECHANISM_TYPE m);
CK_RV op_copy_mech(struct op *op, const CK_MECHANISM *m);
CK_RV op_append(struct op *op, const CK_BYTE *in, CK_ULONG inlen);
void op_end(struct op *op);
CK_RV key_check(struct session *s, struct object *key, const CK_MECHANISM *m,
                CK_ATTRIBUTE_TYPE usage, CK_FLAGS flag,
                CK_OBJECT_CLASS rsa_class);
CK_RV key_check_dates(struct object *key);
CK_RV mech_check_params(struct object *key, const CK_MECHANISM *m);

#endif
