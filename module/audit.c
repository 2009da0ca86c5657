/*
 * The audit log. Each record is one line of JSON written with a single
 * write(2) on a descriptor opened with O_APPEND, so lines from many
 * threads and processes never interleave.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "secure.h"

static int audit_fd = -1;

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

/* Appends s as a JSON string (quoted, escaped) to buf. */
static void put_string(char *buf, size_t cap, size_t *len, const char *s,
                       size_t n)
{
    size_t i;

    if (*len + 2 >= cap)
        return;
    buf[(*len)++] = '"';
    for (i = 0; i < n && *len + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[(*len)++] = '\\';
            buf[(*len)++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            *len += (size_t)snprintf(buf + *len, cap - *len, "\\u%04x", c);
        } else {
            buf[(*len)++] = (char)c;
        }
    }
    buf[(*len)++] = '"';
}

static void put_attr(char *buf, size_t cap, size_t *len, struct object *o,
                     CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG n = 0;
    char *v = object_get_value(o, type, &n);

    put_string(buf, cap, len, v ? v : "", v ? n : 0);
    free(v);
}

void audit_record(struct session *s, struct object *key, const char *op,
                  CK_MECHANISM_TYPE mech, CK_RV rv, CK_ULONG http_status)
{
    char buf[1024];
    size_t len = 0;
    struct timespec ts;
    struct tm tm;
    CK_ULONG n = 0;
    void *name;

    if (audit_fd < 0 || key == NULL)
        return;
    /* Only customer-managed keys: objects with a key name. */
    name = object_get_value(key, CKA_CMK_KEY_NAME, &n);
    if (name == NULL)
        return;
    free(name);
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    len += (size_t)snprintf(
        buf, sizeof(buf),
        "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\","
        "\"pid\":%ld,\"token\":",
        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
        tm.tm_sec, ts.tv_nsec / 1000000, (long)getpid());
    put_string(buf, sizeof(buf), &len, s->token->name, strlen(s->token->name));
    len += (size_t)snprintf(buf + len, sizeof(buf) - len, ",\"key\":");
    put_attr(buf, sizeof(buf), &len, key, CKA_CMK_KEY_NAME);
    len += (size_t)snprintf(buf + len, sizeof(buf) - len, ",\"version\":");
    put_attr(buf, sizeof(buf), &len, key, CKA_CMK_VERSION);
    len += (size_t)snprintf(buf + len, sizeof(buf) - len,
                            ",\"operation\":\"%s\",\"mechanism\":\"%s\","
                            "\"result\":\"%s\",\"http_status\":%lu}\n",
                            op, cmk_mech_name(mech), cmk_rv_name(rv),
                            (unsigned long)http_status);
    if (len >= sizeof(buf)) {
        len = sizeof(buf) - 1;
        buf[len - 1] = '\n';
    }
    /* One write: an O_APPEND write lands whole at the end of the file. */
    if (write(audit_fd, buf, len) < 0)
        cmk_debug("audit-log: write failed: %s", strerror(errno));
}
