/*
 * Logging. Messages for people go through cmk_log() at a level; debug
 * tracing is per category and costs one branch when off.
 *
 * CMKP11_DEBUG=module,hsm,keyvault,all[,file:PATH] turns debugging on for
 * the named categories (and overrides log-level/log-file); otherwise the
 * configuration's log-level and log-file apply. Secrets never reach a log:
 * callers pass names and sizes, never values.
 */
#ifndef CMKP11_DEBUG_H
#define CMKP11_DEBUG_H

#include <stdarg.h>

enum cmk_log_level {
    CMK_LOG_ERROR = 0,
    CMK_LOG_WARNING = 1,
    CMK_LOG_INFO = 2,
    CMK_LOG_DEBUG = 3,
};

enum cmk_debug_category {
    CMK_DEBUG_MODULE = 1 << 0,
    CMK_DEBUG_HSM = 1 << 1,
    CMK_DEBUG_KEYVAULT = 1 << 2,
    CMK_DEBUG_CONFIG = 1 << 3,
    CMK_DEBUG_MOCK = 1 << 4,
    CMK_DEBUG_HTTP = 1 << 5, /* one line per Key Vault or Entra request */
    CMK_DEBUG_ALL = 0xff,
};

extern int cmk_log_threshold;   /* messages at or below this level print */
extern unsigned cmk_debug_mask; /* categories with debug output on */

/* Sets up logging from the environment before the configuration is read. */
void cmk_log_init_env(void);
/* Applies the configuration's log-level and log-file unless CMKP11_DEBUG
 * overrides them. Returns 0, or -1 if the level or sink is not valid. */
int cmk_log_configure(const char *level, const char *sink);
int cmk_log_level_parse(const char *text, int *level);
/* Sets the threshold from the configuration unless CMKP11_DEBUG is set. */
void cmk_log_set_level(int level);
void cmk_log_close(void);
/* fork(): the sink's lock is held across it (see general.c). */
void cmk_log_atfork_prepare(void);
void cmk_log_atfork_release(void);

void cmk_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void cmk_debug_msg(unsigned category, const char *file, int line,
                   const char *func, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define cmk_error(...)   cmk_log(CMK_LOG_ERROR, __VA_ARGS__)
#define cmk_warning(...) cmk_log(CMK_LOG_WARNING, __VA_ARGS__)
#define cmk_info(...)    cmk_log(CMK_LOG_INFO, __VA_ARGS__)

#ifndef CMK_DEBUG_FLAG
#define CMK_DEBUG_FLAG CMK_DEBUG_MODULE
#endif

#define cmk_debug(...)                                                         \
    do {                                                                       \
        if (__builtin_expect(cmk_debug_mask & (CMK_DEBUG_FLAG), 0))            \
            cmk_debug_msg(CMK_DEBUG_FLAG, __FILE__, __LINE__, __func__,        \
                          __VA_ARGS__);                                        \
    } while (0)

/* Precondition checks for internal programming errors (not caller errors).
 * With CMKP11_STRICT=1 in the environment a failed one aborts. */
void cmk_precond_failed(const char *expr, const char *func);

#define return_val_if_fail(x, v)                                               \
    do {                                                                       \
        if (!(x)) {                                                            \
            cmk_precond_failed(#x, __func__);                                  \
            return v;                                                          \
        }                                                                      \
    } while (0)

/* Names for logs, from tables generated out of pkcs11.h. */
const char *cmk_rv_name(unsigned long rv);
const char *cmk_mech_name(unsigned long mech);
const char *cmk_attr_name(unsigned long type);

/* in as lowercase hexadecimal into out (2 * len + 1 bytes); returns out. */
char *cmk_hex(const void *in, size_t len, char *out);
/* As cmk_hex into out of outlen bytes, truncated: the first (outlen - 1) / 2
 * bytes of in at most (whole bytes only, never half of one), the rest
 * dropped; out is always NUL-terminated, except that nothing is written
 * when outlen is 0. For ids and names shown in logs and listings, where a
 * fixed buffer is enough. Returns out. */
char *cmk_hex_n(const void *in, size_t len, char *out, size_t outlen);

#endif
