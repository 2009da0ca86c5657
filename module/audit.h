/*
 * The audit log (audit-log = PATH): one JSON line per operation with a
 * customer-managed key. Never key material, wrapped bytes or secrets.
 */
#ifndef CMKP11_AUDIT_H
#define CMKP11_AUDIT_H

#include "module.h"
#include "provider-util.h"

/* Opens the file named by the configuration (NULL: audit off). Returns 0,
 * or -1 with err set. */
int audit_open(const char *path, char *err, size_t errlen);
void audit_close(void);
bool audit_enabled(void);
/* Records an operation on key (a back-end key object; others are not
 * audited). http_status: the back end's status, 0 for a local one; mech
 * CK_UNAVAILABLE_INFORMATION: none (enable, disable), written as null. */
void audit_record(struct session *s, struct object *key, const char *op,
                  CK_MECHANISM_TYPE mech, CK_RV rv, CK_ULONG http_status);
/* audit_note_offline() (provider-util.h): a back end's offline answer. */

#endif
