/*
 * Token secret keys as cmkp11-tool shows and rewraps them (secret-keys.c).
 */
#ifndef CMKP11_TOOL_SECRET_KEYS_H
#define CMKP11_TOOL_SECRET_KEYS_H

#include "keys.h"
#include "out.h"
#include "tool.h"

struct tskey {
    CK_OBJECT_HANDLE h;
    char *label, *id; /* id: CKA_ID in hex */
    CK_KEY_TYPE key_type;
    CK_ULONG len;
    char *cmk, *version; /* the wrapping key and version */
    bool enabled, state_known;
};

struct tskeys {
    struct tskey *k;
    size_t n;
};

/* The secret keys with CKA_TOKEN true of t's session. */
CK_RV tskeys_load(struct tmod *m, struct ttoken *t, struct tskeys *out);
void tskeys_free(struct tskeys *s);
/* list: a table after the versions (nothing when there are none), or the
 * "secret_keys" member of the token's JSON object. */
void tskeys_print(struct tskeys *s, struct tkeys *keys);
void tskeys_json(struct jw *w, struct tskeys *s, struct tkeys *keys);
/* rewrap --token TOKEN without files: the token's secret keys that are not
 * under the current version of their wrapping key, rewrapped under it. */
int secret_keys_rewrap(struct tmod *m, const struct tool_opts *o);

#endif
