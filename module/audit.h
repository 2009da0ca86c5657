/*
 * The audit log (audit-log = PATH): one JSON line per operation with a
 * customer-managed key. Never key material, wrapped bytes or secrets.
 */
#ifndef CMKP11_AUDIT_H
#define CMKP11_AUDIT_H

#include "module.h"

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
/* Called by a back end during an operation: the next record of this thread
 * says it was served offline (offline-grace: "offline":true). */
void audit_note_offline(bool offline);

#endif
