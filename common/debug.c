/*
 * Logging and debug tracing.
 *
 * Each line is built in a local buffer and written with one write(2), so
 * lines from several threads or processes sharing a file never interleave.
 * The sink mutex is held while the sink changes and around that single
 * write, so a line never goes to a descriptor another thread just closed.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "debug.h"

#define LOG_LINE_MAX 4096

int cmk_log_threshold = CMK_LOG_WARNING;
unsigned cmk_debug_mask;

enum sink_kind {
    SINK_STDERR,
    SINK_SYSLOG,
    SINK_FILE,
};

static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;
static enum sink_kind sink = SINK_STDERR;
static int sink_fd = -1;
static bool env_override;

static const char *const level_names[] = {
    [CMK_LOG_ERROR] = "error",
    [CMK_LOG_WARNING] = "warning",
    [CMK_LOG_INFO] = "info",
    [CMK_LOG_DEBUG] = "debug",
};

static const struct {
    const char *name;
    unsigned flag;
} categories[] = {
    {"module", CMK_DEBUG_MODULE},     {"hsm", CMK_DEBUG_HSM},
    {"keyvault", CMK_DEBUG_KEYVAULT}, {"config", CMK_DEBUG_CONFIG},
    {"mock", CMK_DEBUG_MOCK},         {"http", CMK_DEBUG_HTTP},
    {"all", CMK_DEBUG_ALL},
};

int cmk_log_level_parse(const char *text, int *level)
{
    size_t i;

    if (text == NULL)
        return -1;
    for (i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(text, level_names[i]) == 0) {
            if (level != NULL)
                *level = (int)i;
            return 0;
        }
    }
    return -1;
}

/* Opens a log file for appending. Refuses a regular file that group or
 * others may write, since anyone could then forge or erase log lines.
 * Returns the descriptor, or -1 with errno set (EPERM for the mode). */
static int open_log_file(const char *path)
{
    struct stat st;
    int fd;

    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        errno = EISDIR;
        return -1;
    }
    if (S_ISREG(st.st_mode) && (st.st_mode & 022) != 0) {
        close(fd);
        errno = EPERM;
        return -1;
    }
    return fd;
}

void cmk_log_atfork_prepare(void)
{
    pthread_mutex_lock(&sink_lock);
}

void cmk_log_atfork_release(void)
{
    pthread_mutex_unlock(&sink_lock);
}

/* Replaces the sink. Caller holds sink_lock. */
static void set_sink_unlocked(enum sink_kind kind, int fd)
{
    if (sink == SINK_FILE && sink_fd >= 0)
        close(sink_fd);
    if (sink == SINK_SYSLOG && kind != SINK_SYSLOG)
        closelog();
    if (kind == SINK_SYSLOG && sink != SINK_SYSLOG)
        openlog("cmkp11", LOG_PID, LOG_USER);
    sink = kind;
    sink_fd = kind == SINK_FILE ? fd : -1;
}

void cmk_log_init_env(void)
{
    const char *env = getenv("CMKP11_DEBUG");
    unsigned mask = 0;
    char *copy, *tok, *save = NULL;
    int fd = -1;
    size_t i;

    if (env == NULL || env[0] == '\0')
        return;
    copy = strdup(env);
    if (copy == NULL)
        return;
    for (tok = strtok_r(copy, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        if (strncmp(tok, "file:", 5) == 0) {
            if (fd >= 0)
                close(fd);
            fd = open_log_file(tok + 5);
            if (fd < 0)
                cmk_warning("CMKP11_DEBUG: %s: %s", tok + 5,
                            errno == EPERM ? "writable by group or others"
                                           : strerror(errno));
            continue;
        }
        for (i = 0; i < sizeof(categories) / sizeof(categories[0]); i++) {
            if (strcmp(tok, categories[i].name) == 0) {
                mask |= categories[i].flag;
                break;
            }
        }
        if (i == sizeof(categories) / sizeof(categories[0]))
            cmk_warning("CMKP11_DEBUG: unknown category '%s' ignored", tok);
    }
    free(copy);

    /* Naming only a file means "everything, there". */
    if (mask == 0)
        mask = CMK_DEBUG_ALL;

    pthread_mutex_lock(&sink_lock);
    if (fd >= 0)
        set_sink_unlocked(SINK_FILE, fd);
    env_override = true;
    cmk_debug_mask = mask;
    cmk_log_threshold = CMK_LOG_DEBUG;
    pthread_mutex_unlock(&sink_lock);
}

int cmk_log_configure(const char *level, const char *sink_name)
{
    enum sink_kind kind = SINK_STDERR;
    int lvl = cmk_log_threshold;
    int fd = -1;

    if (level != NULL && cmk_log_level_parse(level, &lvl) < 0) {
        cmk_error("log-level '%s' is not error, warning, info or debug", level);
        return -1;
    }
    if (sink_name != NULL) {
        if (strcmp(sink_name, "stderr") == 0) {
            kind = SINK_STDERR;
        } else if (strcmp(sink_name, "syslog") == 0) {
            kind = SINK_SYSLOG;
        } else if (sink_name[0] == '/') {
            kind = SINK_FILE;
        } else {
            cmk_error("log-file '%s' is not stderr, syslog or an absolute "
                      "path",
                      sink_name);
            return -1;
        }
    }

    /* CMKP11_DEBUG wins over the configuration. */
    pthread_mutex_lock(&sink_lock);
    if (env_override) {
        pthread_mutex_unlock(&sink_lock);
        return 0;
    }
    pthread_mutex_unlock(&sink_lock);

    if (kind == SINK_FILE) {
        fd = open_log_file(sink_name);
        if (fd < 0) {
            if (errno == EPERM)
                cmk_error("log-file %s: writable by group or others; "
                          "refusing it",
                          sink_name);
            else
                cmk_error("log-file %s: %s", sink_name, strerror(errno));
            return -1;
        }
    }

    pthread_mutex_lock(&sink_lock);
    if (sink_name != NULL)
        set_sink_unlocked(kind, fd);
    if (level != NULL) {
        cmk_log_threshold = lvl;
        cmk_debug_mask = lvl >= CMK_LOG_DEBUG ? CMK_DEBUG_ALL : 0;
    }
    pthread_mutex_unlock(&sink_lock);
    return 0;
}

void cmk_log_set_level(int level)
{
    if (level < CMK_LOG_ERROR || level > CMK_LOG_DEBUG)
        return;
    pthread_mutex_lock(&sink_lock);
    if (!env_override) {
        cmk_log_threshold = level;
        cmk_debug_mask = level >= CMK_LOG_DEBUG ? CMK_DEBUG_ALL : 0;
    }
    pthread_mutex_unlock(&sink_lock);
}

void cmk_log_close(void)
{
    pthread_mutex_lock(&sink_lock);
    set_sink_unlocked(SINK_STDERR, -1);
    pthread_mutex_unlock(&sink_lock);
}

static int syslog_priority(int level)
{
    switch (level) {
    case CMK_LOG_ERROR:
        return LOG_ERR;
    case CMK_LOG_WARNING:
        return LOG_WARNING;
    case CMK_LOG_INFO:
        return LOG_INFO;
    default:
        return LOG_DEBUG;
    }
}

/* Appends to buf at *pos, never beyond cap; *pos saturates at cap. */
static void append_v(char *buf, size_t cap, size_t *pos, const char *fmt,
                     va_list ap) __attribute__((format(printf, 4, 0)));
static void append_v(char *buf, size_t cap, size_t *pos, const char *fmt,
                     va_list ap)
{
    int n;

    if (*pos >= cap)
        return;
    n = vsnprintf(buf + *pos, cap - *pos, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n >= cap - *pos)
        *pos = cap;
    else
        *pos += (size_t)n;
}

static void append(char *buf, size_t cap, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t cap, size_t *pos, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    append_v(buf, cap, pos, fmt, ap);
    va_end(ap);
}

static void write_all(int fd, const char *buf, size_t len)
{
    ssize_t n;

    /* One call: a short write to a regular file or pipe of this size
     * does not happen in practice; retry only on EINTR. */
    do {
        n = write(fd, buf, len);
    } while (n < 0 && errno == EINTR);
}

static void emit(int level, const char *file, int line, const char *func,
                 const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));
static void emit(int level, const char *file, int line, const char *func,
                 const char *fmt, va_list ap)
{
    char buf[LOG_LINE_MAX];
    size_t cap = sizeof(buf) - 1; /* room for the final newline */
    size_t pos = 0, msg_start;
    struct timespec ts;
    struct tm tm;
    int saved_errno = errno;
    const char *lname;

    if (level < CMK_LOG_ERROR)
        level = CMK_LOG_ERROR;
    if (level > CMK_LOG_DEBUG)
        level = CMK_LOG_DEBUG;
    lname = level_names[level];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    pos = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    append(buf, cap, &pos, ".%03ldZ cmkp11[%ld] %s: ", ts.tv_nsec / 1000000L,
           (long)getpid(), lname);
    msg_start = pos;
    if (file != NULL)
        append(buf, cap, &pos, "%s:%d %s(): ", file, line, func);
    append_v(buf, cap, &pos, fmt, ap);
    if (pos >= cap) {
        pos = cap;
        memcpy(buf + pos - 3, "...", 3);
    }
    /* A message ending in newline gets no second one. */
    while (pos > msg_start && buf[pos - 1] == '\n')
        pos--;
    buf[pos++] = '\n';

    pthread_mutex_lock(&sink_lock);
    switch (sink) {
    case SINK_SYSLOG:
        syslog(syslog_priority(level), "%.*s", (int)(pos - 1 - msg_start),
               buf + msg_start);
        break;
    case SINK_FILE:
        write_all(sink_fd, buf, pos);
        break;
    case SINK_STDERR:
    default:
        write_all(STDERR_FILENO, buf, pos);
        break;
    }
    pthread_mutex_unlock(&sink_lock);
    errno = saved_errno;
}

void cmk_log(int level, const char *fmt, ...)
{
    va_list ap;

    if (level > cmk_log_threshold)
        return;
    va_start(ap, fmt);
    emit(level, NULL, 0, NULL, fmt, ap);
    va_end(ap);
}

void cmk_debug_msg(unsigned category, const char *file, int line,
                   const char *func, const char *fmt, ...)
{
    const char *base;
    va_list ap;

    if ((cmk_debug_mask & category) == 0 || cmk_log_threshold < CMK_LOG_DEBUG)
        return;
    base = file != NULL ? strrchr(file, '/') : NULL;
    va_start(ap, fmt);
    emit(CMK_LOG_DEBUG, base != NULL ? base + 1 : (file ? file : "?"), line,
         func != NULL ? func : "?", fmt, ap);
    va_end(ap);
}

void cmk_precond_failed(const char *expr, const char *func)
{
    const char *strict = getenv("CMKP11_STRICT");

    cmk_error("%s: internal error: '%s' is not true", func ? func : "?",
              expr ? expr : "?");
    if (strict != NULL && strcmp(strict, "1") == 0)
        abort();
}

char *cmk_hex(const void *in, size_t len, char *out)
{
    return cmk_hex_n(in, len, out, 2 * len + 1);
}

char *cmk_hex_n(const void *in, size_t len, char *out, size_t outlen)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *b = in;
    size_t i;

    if (outlen == 0)
        return out;
    for (i = 0; i < len && 2 * i + 2 < outlen; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * i] = '\0';
    return out;
}
