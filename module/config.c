/*
 * The configuration file, cmkp11.conf(5).
 *
 * The parser works on a length-delimited buffer, one line at a time, and
 * never trusts the text: NUL bytes, overlong lines, CRLF line ends and a
 * missing final newline are all handled. Every error names the file and
 * line, and the key where there is one.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_CONFIG
#include "debug.h"
#include "secure.h"
#include "conf.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

#define CONFIG_DEFAULT_PATH SYSCONFDIR "/cmkp11/cmkp11.conf"
#define CONFIG_LINE_MAX     4096
#define TOKEN_NAME_MAX      32
#define KEY_NAME_MAX        64

#define DEFAULT_REFRESH_INTERVAL 60L
#define DEFAULT_OFFLINE_GRACE    900L
#define MAX_OFFLINE_GRACE        (86400L * 7)
#define DEFAULT_MIN_KEY_BITS     2048L
#define MAX_REFRESH_INTERVAL     (86400L * 365)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- choosing the file ---- */

static bool is_option_sep(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' ||
           c == ';';
}

char *config_choose_path(const char *reserved, char *err, size_t errlen)
{
    const char *env, *p, *found = NULL;
    size_t found_len = 0;
    char *path;

    if (reserved != NULL) {
        p = reserved;
        while (*p != '\0') {
            const char *start;
            size_t n;

            while (*p != '\0' && is_option_sep(*p))
                p++;
            start = p;
            while (*p != '\0' && !is_option_sep(*p))
                p++;
            n = (size_t)(p - start);
            if (n < 5 || strncmp(start, "conf=", 5) != 0)
                continue; /* other options are not ours to judge */
            if (n == 5) {
                set_err(err, errlen, "pReserved: conf= needs a path");
                return NULL;
            }
            if (found != NULL) {
                set_err(err, errlen, "pReserved: conf= given more than once");
                return NULL;
            }
            found = start + 5;
            found_len = n - 5;
        }
        if (found != NULL) {
            path = strndup(found, found_len);
            if (path == NULL)
                set_err(err, errlen, "out of memory");
            return path;
        }
    }

    env = getenv("CMKP11_CONF");
    path = strdup(env != NULL && env[0] != '\0' ? env : CONFIG_DEFAULT_PATH);
    if (path == NULL)
        set_err(err, errlen, "out of memory");
    return path;
}

const char *config_default_path(void)
{
    return CONFIG_DEFAULT_PATH;
}

/* ---- parsing ---- */

int config_pkcs1_parse(const char *text)
{
    if (strcmp(text, "implicit-rejection") == 0)
        return CONFIG_PKCS1_IMPLICIT;
    if (strcmp(text, "refuse") == 0)
        return CONFIG_PKCS1_REFUSE;
    if (strcmp(text, "allow") == 0)
        return CONFIG_PKCS1_ALLOW;
    return CONFIG_PKCS1_UNSET;
}

static const char *const global_keys[] = {
    "log-level",    "log-file",          "refresh-interval", "audit-log",
    "min-key-bits", "rsa-pkcs1-decrypt", "offline-grace",
};
#define N_GLOBAL_KEYS (sizeof(global_keys) / sizeof(global_keys[0]))

struct parser {
    struct config *cfg;
    const char *path;
    int line;
    /* The section being read; token is set for SECTION_TOKEN. */
    enum { SECTION_NONE, SECTION_GLOBAL, SECTION_TOKEN } section;
    struct config_token *token;
    /* Lines of the global keys seen (same order as global_keys). */
    int global_lines[N_GLOBAL_KEYS];
    int global_header_line;
    char *err;
    size_t errlen;
};

static char *trim(char *s)
{
    char *end;

    while (*s == ' ' || *s == '\t')
        s++;
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    return s;
}

/* Cuts a comment: '#' or ';' at the start of the line or after
 * whitespace. Elsewhere they belong to the value (URLs, for one). */
static void strip_comment(char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if ((s[i] == '#' || s[i] == ';') &&
            (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t')) {
            s[i] = '\0';
            return;
        }
    }
}

static bool valid_key(const char *k)
{
    size_t i;

    if (k[0] == '\0' || strlen(k) > KEY_NAME_MAX)
        return false;
    if (!((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= '0' && k[0] <= '9')))
        return false;
    for (i = 0; k[i] != '\0'; i++) {
        char c = k[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

/* A token label: 1 to 32 bytes, no control characters, no ']'. Bytes
 * above 0x7f are allowed so that UTF-8 labels work. */
static const char *token_name_problem(const char *name)
{
    size_t i, n = strlen(name);

    if (n == 0)
        return "token name is empty";
    if (n > TOKEN_NAME_MAX)
        return "token name is longer than 32 bytes";
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f)
            return "token name has a control character";
        if (c == ']' || c == '[')
            return "token name has a bracket";
    }
    return NULL;
}

/* Parses a whole decimal number; false if it is not one or out of range. */
static bool parse_long(const char *s, long min, long max, long *v)
{
    char *end;
    long n;

    if (s == NULL || *s == '\0')
        return false;
    if (!(isdigit((unsigned char)s[0]) ||
          ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1]))))
        return false;
    errno = 0;
    n = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || n < min || n > max)
        return false;
    *v = n;
    return true;
}

static int parse_section(struct parser *ps, char *s)
{
    char *close = strrchr(s, ']');
    char *inner, *name;
    const char *problem;
    struct config_token *tokens;
    struct config *cfg = ps->cfg;
    size_t i;

    if (close == NULL) {
        set_err(ps->err, ps->errlen, "%s:%d: unterminated section header",
                ps->path, ps->line);
        return -1;
    }
    if (close[1] != '\0') {
        set_err(ps->err, ps->errlen, "%s:%d: text after section header",
                ps->path, ps->line);
        return -1;
    }
    *close = '\0';
    inner = trim(s + 1);

    if (strcmp(inner, "cmkp11") == 0) {
        if (ps->global_header_line != 0) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: duplicate section [cmkp11] (first at line %d)",
                    ps->path, ps->line, ps->global_header_line);
            return -1;
        }
        ps->global_header_line = ps->line;
        ps->section = SECTION_GLOBAL;
        ps->token = NULL;
        return 0;
    }

    if (strncmp(inner, "token", 5) != 0 ||
        (inner[5] != ' ' && inner[5] != '\t' && inner[5] != '\0')) {
        set_err(ps->err, ps->errlen, "%s:%d: unknown section [%.64s]", ps->path,
                ps->line, inner);
        return -1;
    }
    name = trim(inner + 5);
    problem = token_name_problem(name);
    if (problem != NULL) {
        set_err(ps->err, ps->errlen, "%s:%d: %s", ps->path, ps->line, problem);
        return -1;
    }
    for (i = 0; i < cfg->n_tokens; i++) {
        if (strcmp(cfg->tokens[i].name, name) == 0) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: duplicate token '%s' (first at line %d)", ps->path,
                    ps->line, name, cfg->tokens[i].line);
            return -1;
        }
    }

    tokens = realloc(cfg->tokens, (cfg->n_tokens + 1) * sizeof(*tokens));
    if (tokens == NULL)
        goto nomem;
    cfg->tokens = tokens;
    memset(&tokens[cfg->n_tokens], 0, sizeof(*tokens));
    tokens[cfg->n_tokens].name = strdup(name);
    if (tokens[cfg->n_tokens].name == NULL)
        goto nomem;
    tokens[cfg->n_tokens].line = ps->line;
    tokens[cfg->n_tokens].path = cfg->path;
    ps->token = &tokens[cfg->n_tokens];
    cfg->n_tokens++;
    ps->section = SECTION_TOKEN;
    return 0;

nomem:
    set_err(ps->err, ps->errlen, "%s:%d: out of memory", ps->path, ps->line);
    return -1;
}

static int set_global(struct parser *ps, const char *key, const char *value)
{
    struct config *cfg = ps->cfg;
    size_t i;
    char **target = NULL;

    for (i = 0; i < N_GLOBAL_KEYS; i++) {
        if (strcmp(key, global_keys[i]) == 0)
            break;
    }
    if (i == N_GLOBAL_KEYS) {
        set_err(ps->err, ps->errlen, "%s:%d: %s: unknown key in [cmkp11]",
                ps->path, ps->line, key);
        return -1;
    }
    if (ps->global_lines[i] != 0) {
        set_err(ps->err, ps->errlen,
                "%s:%d: %s: duplicate key (first at line %d)", ps->path,
                ps->line, key, ps->global_lines[i]);
        return -1;
    }
    ps->global_lines[i] = ps->line;

    if (strcmp(key, "log-level") == 0) {
        if (cmk_log_level_parse(value, &cfg->log_level) < 0) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: %s: must be error, warning, info or debug",
                    ps->path, ps->line, key);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "refresh-interval") == 0) {
        if (!parse_long(value, 0, MAX_REFRESH_INTERVAL,
                        &cfg->refresh_interval)) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: %s: must be a number of seconds from 0 to %ld",
                    ps->path, ps->line, key, MAX_REFRESH_INTERVAL);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "offline-grace") == 0) {
        if (!parse_long(value, 0, MAX_OFFLINE_GRACE, &cfg->offline_grace)) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: %s: must be a number of seconds from 0 to %ld",
                    ps->path, ps->line, key, MAX_OFFLINE_GRACE);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "min-key-bits") == 0) {
        if (!parse_long(value, 512, 16384, &cfg->min_key_bits)) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: %s: must be a number from 512 to 16384", ps->path,
                    ps->line, key);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "rsa-pkcs1-decrypt") == 0) {
        cfg->rsa_pkcs1_decrypt = config_pkcs1_parse(value);
        if (cfg->rsa_pkcs1_decrypt == CONFIG_PKCS1_UNSET) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: %s: must be implicit-rejection, refuse or allow",
                    ps->path, ps->line, key);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "log-file") == 0) {
        if (strcmp(value, "stderr") != 0 && strcmp(value, "syslog") != 0 &&
            value[0] != '/') {
            set_err(ps->err, ps->errlen,
                    "%s:%d: %s: must be stderr, syslog or an absolute path",
                    ps->path, ps->line, key);
            return -1;
        }
        target = &cfg->log_file;
    } else {
        /* audit-log */
        if (value[0] != '/') {
            set_err(ps->err, ps->errlen, "%s:%d: %s: must be an absolute path",
                    ps->path, ps->line, key);
            return -1;
        }
        target = &cfg->audit_log;
    }
    *target = strdup(value);
    if (*target == NULL) {
        set_err(ps->err, ps->errlen, "%s:%d: out of memory", ps->path,
                ps->line);
        return -1;
    }
    return 0;
}

static int add_token_entry(struct parser *ps, const char *key,
                           const char *value)
{
    struct config_token *t = ps->token;
    struct config_entry *entries;
    size_t i;

    for (i = 0; i < t->n_entries; i++) {
        if (strcmp(t->entries[i].key, key) == 0) {
            set_err(ps->err, ps->errlen,
                    "%s:%d: %s: duplicate key (first at line %d)", ps->path,
                    ps->line, key, t->entries[i].line);
            return -1;
        }
    }
    entries = realloc(t->entries, (t->n_entries + 1) * sizeof(*entries));
    if (entries == NULL)
        goto nomem;
    t->entries = entries;
    entries[t->n_entries].key = strdup(key);
    entries[t->n_entries].value = strdup(value);
    entries[t->n_entries].line = ps->line;
    entries[t->n_entries].used = false;
    if (entries[t->n_entries].key == NULL ||
        entries[t->n_entries].value == NULL) {
        free(entries[t->n_entries].key);
        free(entries[t->n_entries].value);
        goto nomem;
    }
    t->n_entries++;
    return 0;

nomem:
    set_err(ps->err, ps->errlen, "%s:%d: out of memory", ps->path, ps->line);
    return -1;
}

static int parse_assignment(struct parser *ps, char *s)
{
    char *eq = strchr(s, '=');
    char *key, *value;

    if (eq == NULL) {
        set_err(ps->err, ps->errlen, "%s:%d: expected 'key = value'", ps->path,
                ps->line);
        return -1;
    }
    *eq = '\0';
    key = trim(s);
    value = trim(eq + 1);

    if (key[0] == '\0') {
        set_err(ps->err, ps->errlen, "%s:%d: missing key before '='", ps->path,
                ps->line);
        return -1;
    }
    if (!valid_key(key)) {
        set_err(ps->err, ps->errlen,
                "%s:%d: %.64s: invalid key (lower-case letters, digits and "
                "dashes)",
                ps->path, ps->line, key);
        return -1;
    }
    if (ps->section == SECTION_NONE) {
        set_err(ps->err, ps->errlen,
                "%s:%d: %s: key outside any section ([cmkp11] or "
                "[token NAME])",
                ps->path, ps->line, key);
        return -1;
    }
    if (value[0] == '\0') {
        set_err(ps->err, ps->errlen, "%s:%d: %s: empty value", ps->path,
                ps->line, key);
        return -1;
    }
    if (ps->section == SECTION_GLOBAL)
        return set_global(ps, key, value);
    return add_token_entry(ps, key, value);
}

static int parse_line(struct parser *ps, const char *text, size_t len)
{
    char buf[CONFIG_LINE_MAX + 1];
    char *s;

    if (len > 0 && text[len - 1] == '\r')
        len--;
    if (memchr(text, '\0', len) != NULL) {
        set_err(ps->err, ps->errlen, "%s:%d: NUL byte in line", ps->path,
                ps->line);
        return -1;
    }
    if (len > CONFIG_LINE_MAX) {
        set_err(ps->err, ps->errlen, "%s:%d: line longer than %d bytes",
                ps->path, ps->line, CONFIG_LINE_MAX);
        return -1;
    }
    memcpy(buf, text, len);
    buf[len] = '\0';
    if (memchr(buf, '\r', len) != NULL) {
        set_err(ps->err, ps->errlen, "%s:%d: stray carriage return", ps->path,
                ps->line);
        return -1;
    }

    strip_comment(buf);
    s = trim(buf);
    if (s[0] == '\0')
        return 0;
    if (s[0] == '[')
        return parse_section(ps, s);
    return parse_assignment(ps, s);
}

struct config *config_parse(const char *path, const char *text, size_t len,
                            char *err, size_t errlen)
{
    struct parser ps;
    struct config *cfg;
    size_t pos = 0;

    set_err(err, errlen, "%s", "");
    if (path == NULL)
        path = "(configuration)";
    cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL || (cfg->path = strdup(path)) == NULL) {
        free(cfg);
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    cfg->log_level = CMK_LOG_WARNING;
    cfg->refresh_interval = DEFAULT_REFRESH_INTERVAL;
    cfg->offline_grace = DEFAULT_OFFLINE_GRACE;
    cfg->min_key_bits = DEFAULT_MIN_KEY_BITS;

    memset(&ps, 0, sizeof(ps));
    ps.cfg = cfg;
    ps.path = cfg->path;
    ps.section = SECTION_NONE;
    ps.err = err;
    ps.errlen = errlen;

    if (text == NULL)
        len = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t line_len = nl != NULL ? (size_t)(nl - (text + pos)) : len - pos;

        ps.line++;
        if (parse_line(&ps, text + pos, line_len) < 0) {
            cmk_debug("%s", err != NULL ? err : "configuration error");
            config_free(cfg);
            return NULL;
        }
        pos += line_len + (nl != NULL ? 1 : 0);
    }

    for (size_t t = 0; t < cfg->n_tokens; t++)
        cfg->tokens[t].global = cfg;
    cmk_debug("%s: %zu token(s)", cfg->path, cfg->n_tokens);
    return cfg;
}

struct config *config_load(const char *path, char *err, size_t errlen)
{
    struct config *cfg;
    char *text = NULL;
    size_t len = 0;

    if (path == NULL) {
        set_err(err, errlen, "no configuration file given");
        return NULL;
    }
    /* Same rules as for secrets: a configuration others can write could
     * point the module at their own back end. */
    if (secure_read_file(path, 0, &text, &len, err, errlen) < 0)
        return NULL;
    cfg = config_parse(path, text, len, err, errlen);
    secure_free(text);
    return cfg;
}

void config_free(struct config *cfg)
{
    size_t i, j;

    if (cfg == NULL)
        return;
    for (i = 0; i < cfg->n_tokens; i++) {
        struct config_token *t = &cfg->tokens[i];
        for (j = 0; j < t->n_entries; j++) {
            free(t->entries[j].key);
            free(t->entries[j].value);
        }
        free(t->entries);
        free(t->name);
    }
    free(cfg->tokens);
    free(cfg->log_file);
    free(cfg->audit_log);
    free(cfg->path);
    free(cfg);
}

/* ---- token lookups ---- */

static struct config_entry *find_entry(const struct config_token *t,
                                       const char *key)
{
    size_t i;

    if (t == NULL || key == NULL)
        return NULL;
    for (i = 0; i < t->n_entries; i++) {
        if (strcmp(t->entries[i].key, key) == 0)
            return &t->entries[i];
    }
    return NULL;
}

const char *config_token_get(const struct config_token *t, const char *key)
{
    struct config_entry *e = find_entry(t, key);

    if (e == NULL)
        return NULL;
    e->used = true;
    return e->value;
}

int config_token_line(const struct config_token *t, const char *key)
{
    struct config_entry *e = find_entry(t, key);

    if (e != NULL)
        return e->line;
    return t != NULL ? t->line : 0;
}

int config_token_get_bool(const struct config_token *t, const char *key,
                          bool *v, char *err, size_t errlen)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    struct config_entry *e = find_entry(t, key);
    size_t i;

    if (e == NULL)
        return 0;
    e->used = true;
    for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(e->value, yes[i]) == 0) {
            if (v != NULL)
                *v = true;
            return 1;
        }
        if (strcasecmp(e->value, no[i]) == 0) {
            if (v != NULL)
                *v = false;
            return 1;
        }
    }
    set_err(err, errlen, "%s:%d: %s: must be yes or no, not '%.32s'",
            t->path != NULL ? t->path : "(configuration)", e->line, key,
            e->value);
    return -1;
}

int config_token_get_long(const struct config_token *t, const char *key,
                          long min, long max, long *v, char *err, size_t errlen)
{
    struct config_entry *e = find_entry(t, key);
    long n;

    if (e == NULL)
        return 0;
    e->used = true;
    if (!parse_long(e->value, min, max, &n)) {
        set_err(err, errlen, "%s:%d: %s: must be a number from %ld to %ld",
                t->path != NULL ? t->path : "(configuration)", e->line, key,
                min, max);
        return -1;
    }
    if (v != NULL)
        *v = n;
    return 1;
}

const struct config_entry *config_token_unused(const struct config_token *t)
{
    size_t i;

    if (t == NULL)
        return NULL;
    for (i = 0; i < t->n_entries; i++) {
        if (!t->entries[i].used)
            return &t->entries[i];
    }
    return NULL;
}

char **config_split_list(const char *text)
{
    char **list = calloc(strlen(text) / 2 + 2, sizeof(*list));
    const char *p = text;
    size_t n = 0;

    if (list == NULL)
        return NULL;
    while (*p != '\0') {
        const char *start, *end;
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        start = p;
        while (*p != '\0' && *p != ',')
            p++;
        end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end > start) {
            list[n] = strndup(start, (size_t)(end - start));
            if (list[n] == NULL) {
                config_free_list(list);
                return NULL;
            }
            n++;
        }
    }
    return list;
}

void config_free_list(char **list)
{
    size_t i;

    for (i = 0; list != NULL && list[i] != NULL; i++)
        free(list[i]);
    free(list);
}

bool config_list_allows(char *const *list, const char *s)
{
    size_t i;

    if (list == NULL)
        return true;
    for (i = 0; list[i] != NULL; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}
