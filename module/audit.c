/*
 * The audit log. Each record is one line of JSON written with a single
 * write(2) on a descriptor opened with O_APPEND, so lines from many
 * threads and processes never interleave.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "jsonesc.h"
#include "secure.h"

static int audit_fd = -1;
/* Who writes the records: the host's name and the program's, read when
 * the log opens (cmkp11-tool retire lists them, docs/cmkp11.conf.5). */
static char audit_host[256], audit_process[64];

int audit_open(const char *path, char *err, size_t errlen)
{
    int fd;

    audit_close();
    if (path == NULL)
        return 0;
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
              0600);
    if (fd < 0) {
        snprintf(err, errlen, "audit-log: cannot open %s: %s", path,
                 strerror(errno));
        return -1;
    }
    if (secure_check_fd(fd, path, err, errlen) != 0) {
        close(fd);
        return -1;
    }
    audit_fd = fd;
    if (gethostname(audit_host, sizeof(audit_host)) != 0)
        audit_host[0] = '\0';
    audit_host[sizeof(audit_host) - 1] = '\0';
    snprintf(audit_process, sizeof(audit_process), "%s",
             program_invocation_short_name);
    return 0;
}

void audit_close(void)
{
    if (audit_fd >= 0)
        close(audit_fd);
    audit_fd = -1;
}

bool audit_enabled(void)
{
    return audit_fd >= 0;
}

/*
 * A line is built in a fixed buffer by a builder that never writes past
 * it: every string field is cut to AUDIT_FIELD_MAX bytes of its value
 * (at a character boundary, then "..." marks the cut), so even a field of
 * control characters (6 bytes each when escaped) fits.
 */
#define AUDIT_FIELD_MAX 256
#define AUDIT_LINE_MAX  8192

struct line {
    char buf[AUDIT_LINE_MAX];
    size_t len;
    bool full; /* something did not fit (not expected: see above) */
};

static void put_raw(struct line *l, const char *s, size_t n)
{
    /* Two bytes stay free for the closing "}\n". */
    if (l->full || n > sizeof(l->buf) - 2 - l->len) {
        l->full = true;
        return;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void put_fmt(struct line *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put_fmt(struct line *l, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        l->full = true;
    else
        put_raw(l, tmp, (size_t)n);
}

/* s as a JSON string: quoted, escaped, invalid UTF-8 as U+FFFD, cut at
 * AUDIT_FIELD_MAX bytes of s. */
static void put_string(struct line *l, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, used, len;
    char esc[8];

    put_raw(l, "\"", 1);
    while (i < n) {
        if (i >= AUDIT_FIELD_MAX) {
            put_raw(l, "...", 3);
            break;
        }
        len = cmk_json_char(s + i, n - i, esc, &used);
        put_raw(l, esc, len);
        i += used;
    }
    put_raw(l, "\"", 1);
}

static void put_attr(struct line *l, struct object *o, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG n = 0;
    char *v = object_get_value(o, type, &n);

    put_string(l, v ? v : "", v ? n : 0);
    free(v);
}

static __thread bool served_offline;

void audit_note_offline(bool offline)
{
    served_offline = offline;
}

void audit_record(struct session *s, struct object *key, const char *op,
                  CK_MECHANISM_TYPE mech, CK_RV rv, CK_ULONG http_status)
{
    bool offline = served_offline;

    struct line *l;
    struct timespec ts;
    struct tm tm;
    CK_ULONG n = 0;
    void *name;

    served_offline = false;
    if (audit_fd < 0 || key == NULL)
        return;
    /* Only customer-managed keys: objects with a key name. */
    name = object_get_value(key, CKA_CMK_KEY_NAME, &n);
    if (name == NULL)
        return;
    free(name);
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    put_fmt(l,
            "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\","
            "\"pid\":%ld,\"host\":",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
            tm.tm_sec, ts.tv_nsec / 1000000, (long)getpid());
    put_string(l, audit_host, strlen(audit_host));
    put_raw(l, ",\"process\":", 11);
    put_string(l, audit_process, strlen(audit_process));
    put_raw(l, ",\"token\":", 9);
    put_string(l, s->token->name, strlen(s->token->name));
    put_raw(l, ",\"key\":", 7);
    put_attr(l, key, CKA_CMK_KEY_NAME);
    put_raw(l, ",\"version\":", 11);
    put_attr(l, key, CKA_CMK_VERSION);
    /* No mechanism (enable, disable): null. */
    if (mech == CK_UNAVAILABLE_INFORMATION)
        put_fmt(l, ",\"operation\":\"%s\",\"mechanism\":null", op);
    else
        put_fmt(l, ",\"operation\":\"%s\",\"mechanism\":\"%s\"", op,
                cmk_mech_name(mech));
    put_fmt(l, ",\"result\":\"%s\",\"http_status\":%lu", cmk_rv_name(rv),
            (unsigned long)http_status);
    if (offline && rv == CKR_OK) /* served, not merely attempted */
        put_raw(l, ",\"offline\":true", 15);
    if (l->full) {
        cmk_debug("audit-log: a record did not fit in %d bytes",
                  AUDIT_LINE_MAX);
    } else {
        /* put_raw kept two bytes free for these. */
        memcpy(l->buf + l->len, "}\n", 2);
        l->len += 2;
        /* One write: an O_APPEND write lands whole at the end of the
         * file. */
        if (write(audit_fd, l->buf, l->len) < 0)
            cmk_debug("audit-log: write failed: %s", strerror(errno));
    }
    free(l);
}
