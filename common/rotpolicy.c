/*
 * The text form of a rotation policy (rotpolicy.h) and the Key Vault
 * service's rules for it.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "rotpolicy.h"

#define DAY 86400LL

int64_t rotpolicy_seconds(const char *text)
{
    /* Units in the order ISO 8601 writes them; the date part before T. */
    static const struct {
        char unit;
        bool time;
        int64_t secs;
    } units[] = {
        {'Y', false, 365 * DAY}, {'M', false, 30 * DAY}, {'D', false, DAY},
        {'H', true, 3600},       {'M', true, 60},        {'S', true, 1},
    };
    const char *p = text;
    size_t next = 0, i;
    bool in_time = false, any = false;
    int64_t total = 0;

    if (p == NULL || *p++ != 'P')
        return -1;
    while (*p != '\0') {
        int64_t n = 0;
        if (*p == 'T' && !in_time) {
            in_time = true;
            p++;
            if (*p == '\0')
                return -1;
            continue;
        }
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p)) {
            if (n > 100000)
                return -1;
            n = n * 10 + (*p++ - '0');
        }
        for (i = next; i < sizeof(units) / sizeof(units[0]); i++)
            if (units[i].unit == *p && units[i].time == in_time)
                break;
        if (i == sizeof(units) / sizeof(units[0]))
            return -1;
        total += n * units[i].secs;
        next = i + 1;
        any = true;
        p++;
    }
    return any ? total : -1;
}

static const struct {
    const char *name;
    size_t off;
} fields[] = {
    {"rotate-after", offsetof(struct rotpolicy, rotate_after)},
    {"rotate-before-expiry", offsetof(struct rotpolicy, rotate_before)},
    {"notify-before", offsetof(struct rotpolicy, notify_before)},
    {"expire-after", offsetof(struct rotpolicy, expire_after)},
};

#define NFIELDS     (sizeof(fields) / sizeof(fields[0]))
#define FIELD(p, i) ((char *)(p) + fields[i].off)

int rotpolicy_parse(const char *text, size_t len, struct rotpolicy *p,
                    char *why, size_t whylen)
{
    size_t at = 0, i;

    memset(p, 0, sizeof(*p));
    while (at < len) {
        size_t end = at, eq, nl, vl;
        while (end < len && text[end] != ';')
            end++;
        while (at < end && isspace((unsigned char)text[at]))
            at++;
        for (eq = at; eq < end && text[eq] != '='; eq++)
            ;
        if (at == end) {
            at = end + 1;
            continue;
        }
        if (eq == end) {
            snprintf(why, whylen, "'%.*s' is not FIELD=DURATION",
                     (int)(end - at), text + at);
            return -1;
        }
        nl = eq - at;
        while (nl > 0 && isspace((unsigned char)text[at + nl - 1]))
            nl--;
        for (i = 0; i < NFIELDS; i++)
            if (strlen(fields[i].name) == nl &&
                memcmp(fields[i].name, text + at, nl) == 0)
                break;
        if (i == NFIELDS) {
            snprintf(why, whylen,
                     "unknown field '%.*s' (rotate-after, "
                     "rotate-before-expiry, notify-before, expire-after)",
                     (int)nl, text + at);
            return -1;
        }
        eq++;
        while (eq < end && isspace((unsigned char)text[eq]))
            eq++;
        vl = end - eq;
        while (vl > 0 && isspace((unsigned char)text[eq + vl - 1]))
            vl--;
        if (vl == 0 || vl >= ROTPOLICY_DUR_MAX) {
            snprintf(why, whylen, "%s: not an ISO 8601 duration",
                     fields[i].name);
            return -1;
        }
        if (*FIELD(p, i) != '\0') {
            snprintf(why, whylen, "%s given twice", fields[i].name);
            return -1;
        }
        memcpy(FIELD(p, i), text + eq, vl);
        FIELD(p, i)[vl] = '\0';
        at = end + 1;
    }
    return 0;
}

/*
 * The rules Key Vault applies to updateKeyRotationPolicy, where each is
 * written down (tests/kvemu/kvemulib/vault.py serves the same ones with the
 * same texts; the service's own texts are not documented):
 * - a trigger is at least 7 days: "the minimum value is seven days from
 *   creation and seven days from expiration time"
 *   (learn.microsoft.com/azure/key-vault/keys/how-to-configure-key-rotation);
 * - expiryTime is at least 28 days (Update-AzKeyVaultKeyRotationPolicy
 *   -ExpiresIn: "It should be at least 28 days");
 * - a Rotate before expiry "requires 'Expiry Time' set on rotation policy"
 *   (the same page) and leaves at least 7 days after creation.
 */
int rotpolicy_check(const struct rotpolicy *p, char *why, size_t whylen)
{
    static const char *const what[NFIELDS] = {
        "timeAfterCreate of a Rotate",
        "timeBeforeExpiry of a Rotate",
        "timeBeforeExpiry of a Notify",
        NULL,
    };
    int64_t secs[NFIELDS];
    size_t i;

    for (i = 0; i < NFIELDS; i++) {
        const char *v = FIELD(p, i);
        secs[i] = 0;
        if (*v == '\0')
            continue;
        secs[i] = rotpolicy_seconds(v);
        if (secs[i] < 0) {
            snprintf(why, whylen, "Invalid ISO 8601 duration: '%s'", v);
            return -1;
        }
        if (what[i] != NULL && secs[i] < 7 * DAY) {
            snprintf(why, whylen,
                     "The %s action must be at least 7 days (P7D): %s.",
                     what[i], v);
            return -1;
        }
        if (what[i] == NULL && secs[i] < 28 * DAY) {
            snprintf(why, whylen,
                     "The expiryTime of a rotation policy must be at least "
                     "28 days (P28D): %s.",
                     v);
            return -1;
        }
    }
    if (*p->rotate_before != '\0') {
        if (*p->expire_after == '\0') {
            snprintf(why, whylen,
                     "A Rotate action with timeBeforeExpiry requires the "
                     "policy's expiryTime.");
            return -1;
        }
        if (secs[3] - secs[1] < 7 * DAY) {
            snprintf(why, whylen,
                     "The timeBeforeExpiry of a Rotate action must leave at "
                     "least 7 days (P7D) after creation: %s before %s.",
                     p->rotate_before, p->expire_after);
            return -1;
        }
    }
    return 0;
}

void rotpolicy_format(const struct rotpolicy *p, char *out, size_t outlen)
{
    size_t i, at = 0;

    if (outlen == 0)
        return;
    out[0] = '\0';
    for (i = 0; i < NFIELDS; i++) {
        int n;
        if (*FIELD(p, i) == '\0')
            continue;
        n = snprintf(out + at, outlen - at, "%s%s=%s", at ? ";" : "",
                     fields[i].name, FIELD(p, i));
        if (n < 0 || (size_t)n >= outlen - at)
            return;
        at += (size_t)n;
    }
}

bool rotpolicy_empty(const struct rotpolicy *p)
{
    size_t i;

    for (i = 0; i < NFIELDS; i++)
        if (*FIELD(p, i) != '\0')
            return false;
    return true;
}
