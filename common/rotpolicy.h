/*
 * A key's rotation policy as CKA_CMK_ROTATION_POLICY carries it
 * (docs/vendor.md): text of "field=DURATION" pairs separated by ";", the
 * durations in ISO 8601 (P90D, P2Y, P1Y6M, PT12H):
 *
 *   rotate-after=P90D;rotate-before-expiry=P30D;notify-before=P30D;
 *   expire-after=P2Y
 *
 * Every field is optional; the empty text is "no policy". The rules are the
 * Key Vault service's (rotpolicy_check), so that a policy an hsm token keeps
 * would be accepted by a vault too.
 */
#ifndef CMKP11_ROTPOLICY_H
#define CMKP11_ROTPOLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ROTPOLICY_DUR_MAX 32

struct rotpolicy {
    /* Each an ISO 8601 duration, or "" when absent. */
    char rotate_after[ROTPOLICY_DUR_MAX];  /* Rotate, timeAfterCreate */
    char rotate_before[ROTPOLICY_DUR_MAX]; /* Rotate, timeBeforeExpiry */
    char notify_before[ROTPOLICY_DUR_MAX]; /* Notify, timeBeforeExpiry */
    char expire_after[ROTPOLICY_DUR_MAX];  /* attributes.expiryTime */
};

/* The seconds an ISO 8601 duration stands for, counting a year as 365 days
 * and a month as 30 (as Key Vault does for expiryTime); -1 when text is not
 * a duration PnYnMnDTnHnMnS. */
int64_t rotpolicy_seconds(const char *text);

/* Parses text (len bytes, not NUL-terminated) into p. 0, or -1 with why. */
int rotpolicy_parse(const char *text, size_t len, struct rotpolicy *p,
                    char *why, size_t whylen);
/* The service's rules (docs/vendor.md): 0, or -1 with why. */
int rotpolicy_check(const struct rotpolicy *p, char *why, size_t whylen);
/* The text form of p; out gets "" for an empty policy. */
void rotpolicy_format(const struct rotpolicy *p, char *out, size_t outlen);
bool rotpolicy_empty(const struct rotpolicy *p);

#endif
