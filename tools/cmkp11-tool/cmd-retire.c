/*
 * cmkp11-tool retire TOKEN KEY@VERSION: disables an old key version, only
 * after showing that nothing depends on it any more:
 *
 *   - no sealed file under --paths names it, as any recipient (format
 *     versions 1 and 2, docs/seal-format.md);
 *   - no record of the audit logs (--audit-log, the module's audit-log
 *     lines) used it within --since (default 24 hours).
 *
 * Otherwise it refuses (exit 3), lists the files and the processes and
 * hosts seen, and prints the rewrap command that frees the files. The
 * version is disabled through the module: C_SetAttributeValue with
 * CKA_CMK_ENABLED false on the version's private key (Key Vault: the
 * version's "enabled" attribute; hsm: the lower private key's usage
 * flags). --undo enables it again.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <json-c/json.h>

#include "keys.h"
#include "out.h"
#include "seal-int.h"
#include "secret-keys.h"
#include "tool.h"

#ifndef CMKP11_DEFAULT_MODULE
#define CMKP11_DEFAULT_MODULE "cmkp11.so"
#endif

/* A sealed file that names the version. */
struct dep_file {
    char *path;
    size_t recip, nrecip; /* which recipient (0-based), of how many */
    unsigned format;
};

/* A process seen in the audit records of the window. */
struct dep_proc {
    char host[128], process[128];
    long long pid;
    unsigned long ops;
    char operations[96]; /* "unwrap,wrap" */
    char last[40];       /* the newest record's time, as written */
    time_t last_t;
};

struct retire {
    struct ttoken *t;
    const char *name, *version;
    const unsigned char *id;
    size_t id_len;
    struct dep_file *files;
    size_t nfiles;
    unsigned long checked, unreadable;
    struct dep_proc *procs;
    size_t nprocs;
    unsigned long records, bad_lines;
    unsigned long tool_records; /* of cmkp11-tool itself: not counted */
    long long since;
};

int retire_parse_since(const char *s, long long *seconds)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || v < 0 || end[0] == '\0' || end[1] != '\0')
        return -1;
    switch (end[0]) {
    case 'm':
        v *= 60;
        break;
    case 'h':
        v *= 3600;
        break;
    case 'd':
        v *= 86400;
        break;
    default:
        return -1;
    }
    if (v < 0 || v > 3650LL * 86400)
        return -1;
    *seconds = v;
    return 0;
}

/* "2026-12-02T14:19:42.123Z" (the audit log's time) in seconds; -1 when
 * it is not one. */
static time_t audit_time(const char *s)
{
    struct tm tm;
    int n = 0;

    memset(&tm, 0, sizeof(tm));
    if (s == NULL ||
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
        return (time_t)-1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return timegm(&tm);
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static bool same_version(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcasecmp(a, b) == 0;
}

/* Adds op to the comma-separated list ops (at most len bytes). */
static void ops_add(char *ops, size_t len, const char *op)
{
    size_t n = strlen(ops);

    if (op == NULL || tops_has(ops, op))
        return;
    snprintf(ops + n, len - n, "%s%s", n ? "," : "", op);
}

static int proc_note(struct retire *r, const char *host, const char *process,
                     long long pid, const char *op, const char *when, time_t t)
{
    struct dep_proc *p = NULL, *np;
    size_t i;

    host = host ? host : "";
    process = process ? process : "";
    for (i = 0; i < r->nprocs && p == NULL; i++)
        if (r->procs[i].pid == pid && strcmp(r->procs[i].host, host) == 0 &&
            strcmp(r->procs[i].process, process) == 0)
            p = &r->procs[i];
    if (p == NULL) {
        np = realloc(r->procs, (r->nprocs + 1) * sizeof(*np));
        if (np == NULL)
            return -1;
        r->procs = np;
        p = &np[r->nprocs++];
        memset(p, 0, sizeof(*p));
        snprintf(p->host, sizeof(p->host), "%s", host);
        snprintf(p->process, sizeof(p->process), "%s", process);
        p->pid = pid;
    }
    p->ops++;
    ops_add(p->operations, sizeof(p->operations), op);
    if (p->last[0] == '\0' || t >= p->last_t) {
        p->last_t = t;
        snprintf(p->last, sizeof(p->last), "%s", when);
    }
    return 0;
}

/* One audit log: the records of the window that used the version. */
static int scan_audit(struct retire *r, const char *path, time_t now)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int ret = 0;

    if (f == NULL) {
        tool_error("retire: audit log %s: %s", path, strerror(errno));
        return -1;
    }
    while ((n = getline(&line, &cap, f)) > 0) {
        json_object *o, *pid;
        const char *when;
        time_t t;

        if (n <= 1)
            continue;
        o = json_tokener_parse(line);
        if (o == NULL || !json_object_is_type(o, json_type_object)) {
            r->bad_lines++;
            json_object_put(o);
            continue;
        }
        when = jstr(o, "time");
        t = audit_time(when);
        if (t == (time_t)-1) {
            r->bad_lines++;
        } else if ((long long)(now - t) <= r->since &&
                   strcmp(jstr(o, "token") ? jstr(o, "token") : "",
                          r->t->label) == 0 &&
                   strcmp(jstr(o, "key") ? jstr(o, "key") : "", r->name) == 0 &&
                   same_version(jstr(o, "version"), r->version)) {
            const char *op = jstr(o, "operation");
            /* Enabling or disabling the version is no use of it. */
            if (op != NULL &&
                (strcmp(op, "enable") == 0 || strcmp(op, "disable") == 0)) {
                json_object_put(o);
                continue;
            }
            /* cmkp11-tool's own records (seal, unseal, rewrap, check) are
             * of the sealed files --paths checks: the rewrap that freed
             * them used the version a moment ago. */
            if (strcmp(jstr(o, "process") ? jstr(o, "process") : "",
                       "cmkp11-tool") == 0) {
                r->tool_records++;
                json_object_put(o);
                continue;
            }
            r->records++;
            if (proc_note(r, jstr(o, "host"), jstr(o, "process"),
                          json_object_object_get_ex(o, "pid", &pid)
                              ? json_object_get_int64(pid)
                              : 0,
                          jstr(o, "operation"), when, t) < 0)
                ret = -1;
        }
        json_object_put(o);
    }
    if (ferror(f)) {
        tool_error("retire: audit log %s: %s", path, strerror(errno));
        ret = -1;
    }
    free(line);
    fclose(f);
    return ret;
}

/* Whether recipient rc names the version being retired: the same token
 * and key, and the version or its CKA_ID; on another token (the token was
 * renamed), the same key and a CKA_ID of 16 bytes or more (a Key Vault
 * version's, which no other version has). */
static bool names_version(const struct retire *r, const struct seal_recip *rc)
{
    bool same_id = r->id_len > 0 && rc->key_id_len == r->id_len &&
                   memcmp(rc->key_id, r->id, r->id_len) == 0;

    if (strcmp(rc->key, r->name) != 0)
        return false;
    if (strcmp(rc->token, r->t->label) != 0)
        return same_id && r->id_len >= 16;
    return same_id || same_version(rc->version, r->version);
}

static int scan_files(struct retire *r, const struct tool_opts *o)
{
    struct sealed_files l;
    char err[ERRLEN];
    size_t i, j;
    int ret = 0;

    memset(&l, 0, sizeof(l));
    r->unreadable =
        sealed_files_collect(&l, (int)o->npaths, (char **)o->paths, "retire");
    for (i = 0; i < l.n; i++) {
        struct seal_header h;
        FILE *f = fopen(l.v[i].path, "rb");

        memset(&h, 0, sizeof(h));
        if (f == NULL || header_read(f, &h, err) < 0) {
            /* Named on the command line but not sealed: not a file that
             * depends on anything; otherwise unreadable. */
            if (f != NULL && l.v[i].named && !file_is_sealed(l.v[i].path)) {
                fclose(f);
                continue;
            }
            tool_error("retire: %s: %s", l.v[i].path,
                       f == NULL ? strerror(errno) : err);
            seal_header_clear(&h);
            r->unreadable++;
            if (f != NULL)
                fclose(f);
            continue;
        }
        fclose(f);
        r->checked++;
        for (j = 0; j < h.n; j++) {
            struct dep_file *nf;
            if (!names_version(r, &h.r[j]))
                continue;
            nf = realloc(r->files, (r->nfiles + 1) * sizeof(*nf));
            if (nf == NULL ||
                (nf[r->nfiles].path = strdup(l.v[i].path)) == NULL) {
                if (nf != NULL)
                    r->files = nf;
                ret = -1;
                break;
            }
            r->files = nf;
            nf[r->nfiles].recip = j;
            nf[r->nfiles].nrecip = h.n;
            nf[r->nfiles].format = seal_header_version(&h);
            r->nfiles++;
            break;
        }
        seal_header_clear(&h);
    }
    sealed_files_free(&l);
    return ret;
}

/* s quoted for a POSIX shell where it needs it. */
static void shell_word(FILE *out, const char *s)
{
    const char *p;

    if (*s != '\0' && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrs"
                                "tuvwxyz0123456789_./-+=:,@%") == strlen(s)) {
        fputs(s, out);
        return;
    }
    fputc('\'', out);
    for (p = s; *p != '\0'; p++) {
        if (*p == '\'')
            fputs("'\\''", out);
        else
            fputc(*p, out);
    }
    fputc('\'', out);
}

/* The rewrap command that moves the files to their keys' current
 * versions, into a new buffer (free()). */
static char *rewrap_command(const struct retire *r, const struct tool_opts *o)
{
    char *buf = NULL;
    size_t len = 0, i;
    FILE *m = open_memstream(&buf, &len);

    if (m == NULL)
        return NULL;
    fputs("cmkp11-tool ", m);
    if (strcmp(o->module, CMKP11_DEFAULT_MODULE) != 0) {
        fputs("--module ", m);
        shell_word(m, o->module);
        fputc(' ', m);
    }
    fputs("rewrap", m);
    for (i = 0; i < r->nfiles; i++)
        if (r->files[i].path[0] == '-') {
            fputs(" --", m); /* no option */
            break;
        }
    for (i = 0; i < r->nfiles; i++) {
        fputc(' ', m);
        shell_word(m, r->files[i].path);
    }
    if (fclose(m) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static const char *since_text(long long s, char *buf, size_t len)
{
    if (s % 86400 == 0 && s > 86400)
        snprintf(buf, len, "%lldd", s / 86400);
    else if (s % 3600 == 0 && s > 0)
        snprintf(buf, len, "%lldh", s / 3600);
    else
        snprintf(buf, len, "%lldm", s / 60);
    return buf;
}

static void print_json(const struct retire *r, const struct tool_opts *o,
                       const char *result, const char *reason, const char *cmd)
{
    struct jw w;
    size_t i;

    jw_init(&w, stdout);
    jw_begin_object(&w);
    jw_kv_string(&w, "token", r->t->label);
    jw_kv_string(&w, "key", r->name);
    jw_kv_string(&w, "version", r->version);
    jw_kv_string(&w, "result", result);
    jw_kv_string(&w, "reason", reason);
    jw_kv_bool(&w, "dry_run", o->dry_run);
    jw_kv_int(&w, "files_checked", (long long)r->checked);
    jw_key(&w, "files");
    jw_begin_array(&w);
    for (i = 0; i < r->nfiles; i++) {
        jw_begin_object(&w);
        jw_kv_string(&w, "path", r->files[i].path);
        jw_kv_int(&w, "format", r->files[i].format);
        jw_kv_int(&w, "recipient", (long long)r->files[i].recip + 1);
        jw_kv_int(&w, "recipients", (long long)r->files[i].nrecip);
        jw_end_object(&w);
    }
    jw_end_array(&w);
    jw_kv_int(&w, "since_seconds", r->since);
    jw_kv_int(&w, "audit_records", (long long)r->records);
    jw_kv_int(&w, "tool_records", (long long)r->tool_records);
    jw_key(&w, "processes");
    jw_begin_array(&w);
    for (i = 0; i < r->nprocs; i++) {
        const struct dep_proc *p = &r->procs[i];
        jw_begin_object(&w);
        jw_kv_string(&w, "host", p->host[0] ? p->host : NULL);
        jw_kv_string(&w, "process", p->process[0] ? p->process : NULL);
        jw_kv_int(&w, "pid", p->pid);
        jw_kv_int(&w, "operations", (long long)p->ops);
        jw_kv_string(&w, "operation_names", p->operations);
        jw_kv_string(&w, "last", p->last);
        jw_end_object(&w);
    }
    jw_end_array(&w);
    jw_kv_string(&w, "rewrap_command", cmd);
    jw_end_object(&w);
    jw_finish(&w);
}

/* What still depends on the version, in words. */
static void print_dependants(const struct retire *r, const struct tool_opts *o,
                             const char *cmd)
{
    char since[32];
    size_t i;

    if (r->nfiles > 0) {
        printf("Sealed files that name it (%zu):\n", r->nfiles);
        for (i = 0; i < r->nfiles; i++)
            printf("  %s (format %u, key %zu of %zu)\n", r->files[i].path,
                   r->files[i].format, r->files[i].recip + 1,
                   r->files[i].nrecip);
        printf("Free them (each moves to its keys' current versions; the "
               "data is not re-encrypted):\n  %s\n",
               cmd ? cmd : "cmkp11-tool rewrap FILE...");
        if (r->t->info.flags & CKF_LOGIN_REQUIRED)
            printf("  (with the token's PIN, as for this command: --pin-file "
                   "FILE or CMKP11_PIN)\n");
    }
    if (r->nprocs > 0) {
        printf("Processes that used it in the last %s (%lu audit "
               "record%s):\n",
               since_text(r->since, since, sizeof(since)), r->records,
               r->records == 1 ? "" : "s");
        for (i = 0; i < r->nprocs && i < 20; i++) {
            const struct dep_proc *p = &r->procs[i];
            printf("  %s (pid %lld) on host %s: %lu operation%s (%s), last "
                   "at %s\n",
                   p->process[0] ? p->process : "a process", p->pid,
                   p->host[0] ? p->host : "(not recorded)", p->ops,
                   p->ops == 1 ? "" : "s", p->operations, p->last);
        }
        if (r->nprocs > 20)
            printf("  and %zu more (--json lists every one)\n", r->nprocs - 20);
        printf("They must stop using it (restart them, so that they wrap "
               "under the current\nversion, and rewrap what they read) "
               "before it is retired.\n");
    }
    (void)o;
}

/* The records left out of the audit check, in words. */
static void print_not_counted(const struct retire *r)
{
    if (r->tool_records > 0)
        printf("Not counted: %lu audit record%s of cmkp11-tool itself (the "
               "sealed files it\nseals, unseals and rewraps are what --paths "
               "checks)\n",
               r->tool_records, r->tool_records == 1 ? "" : "s");
}

/* A keyvault token's secret keys wrapped under the version
 * (docs/keyvault.md, "Token secret keys") stop with it: refused, with
 * the command that moves them. Returns the number of such keys. */
static size_t secret_keys_depend(struct tmod *m, const struct tool_opts *o,
                                 const struct retire *r)
{
    struct tskeys sk = {0};
    char cmd[128];
    size_t i, n = 0;

    if (!r->t->keyvault || tskeys_load(m, r->t, &sk) != CKR_OK) {
        tskeys_free(&sk);
        return 0;
    }
    for (i = 0; i < sk.n; i++)
        if (sk.k[i].cmk != NULL && strcmp(sk.k[i].cmk, r->name) == 0 &&
            same_version(sk.k[i].version, r->version))
            n++;
    snprintf(cmd, sizeof(cmd), "cmkp11-tool rewrap --token %s", r->t->label);
    if (n > 0 && o->json) {
        print_json(r, o, "refused", "token secret keys are wrapped under it",
                   cmd);
    } else if (n > 0) {
        printf("Token %s, key %s: version %s NOT retired: token secret keys "
               "are wrapped under it\n",
               r->t->label, r->name, r->version);
        printf("Secret keys wrapped under it (%zu):\n", n);
        for (i = 0; i < sk.n; i++)
            if (sk.k[i].cmk != NULL && strcmp(sk.k[i].cmk, r->name) == 0 &&
                same_version(sk.k[i].version, r->version))
                printf("  %s (id %s)\n", sk.k[i].label ? sk.k[i].label : "",
                       sk.k[i].id ? sk.k[i].id : "");
        printf("Free them (their values do not change):\n  %s\n", cmd);
    }
    tskeys_free(&sk);
    return n;
}

/* The token, the key and the version named by the operands. */
static int resolve(struct tmod *m, const struct tool_opts *o, const char *tok,
                   const char *kv, struct ttoken **toks, size_t *ntok,
                   struct ttoken **t, struct tkeys *keys, char *name,
                   size_t namelen, char *version, size_t verlen)
{
    const char *at = strrchr(kv, '@');
    struct tsel tsel;
    char text[128];
    size_t i;
    CK_RV rv;

    if (at == NULL || at == kv || at[1] == '\0' ||
        strncmp(kv, "pkcs11:", 7) == 0) {
        tool_error("retire: name the version as KEY@VERSION (as list shows "
                   "it), not '%s'",
                   kv);
        return TOOL_USAGE;
    }
    snprintf(name, namelen, "%.*s", (int)(at - kv), kv);
    snprintf(version, verlen, "%s", at + 1);
    if (tsel_parse(&tsel, tok) < 0)
        return TOOL_USAGE;
    if (ttokens_find(m, &tsel, toks, ntok) < 0) {
        tsel_clear(&tsel);
        return TOOL_FAILED;
    }
    tsel_clear(&tsel);
    for (i = 0, *t = NULL; i < *ntok; i++) {
        if (*t != NULL) {
            tool_error("'%s' matches more than one token: name one", tok);
            return TOOL_FAILED;
        }
        *t = &(*toks)[i];
    }
    if (*t == NULL) {
        tool_error("no token matches '%s'", tok);
        return TOOL_FAILED;
    }
    rv = ttoken_open(m, *t, &o->pin);
    if (rv == CKR_OK && (*t)->login_rv != CKR_OK)
        rv = (*t)->login_rv;
    if (rv == CKR_OK)
        rv = tkeys_load(m, *t, keys);
    if (rv == CKR_OK)
        rv = tkeys_load_version(m, *t, keys, name, version);
    if (rv != CKR_OK) {
        tool_error("token %s: %s%s", (*t)->label,
                   tool_rv_text(*t, rv, tmod_device_error(m, (*t)->sess), text,
                                sizeof(text)),
                   (*t)->pin_missing ? ": give --pin or --pin-file" : "");
        return TOOL_FAILED;
    }
    return TOOL_OK;
}

static struct tversion *find_version(struct tkeys *keys, const char *name,
                                     const char *version)
{
    struct tkey *key = tkeys_find(keys, name);
    size_t i;

    for (i = 0; key != NULL && i < key->n; i++)
        if (same_version(key->v[i].version, version))
            return &key->v[i];
    return NULL;
}

/* C_SetAttributeValue CKA_CMK_ENABLED on the version's private key, then
 * the version as the module shows it now. */
static int set_enabled(struct tmod *m, struct ttoken *t, struct tkeys *keys,
                       const char *name, const char *version, bool on)
{
    struct tversion *v = find_version(keys, name, version);
    CK_BBOOL val = on ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE a = {CKA_CMK_ENABLED, &val, sizeof(val)};
    char text[128];
    CK_RV rv;

    if (v == NULL || v->priv == 0) {
        tool_error("retire: key %s version %s on token %s: the private key "
                   "is not visible%s",
                   name, version, t->label,
                   t->pin_missing ? ": give --pin or --pin-file" : "");
        return -1;
    }
    rv = m->f->C_SetAttributeValue(t->sess, v->priv, &a, 1);
    if (rv != CKR_OK) {
        tool_error("retire: C_SetAttributeValue CKA_CMK_ENABLED=%s on key %s "
                   "version %s, token %s: %s",
                   on ? "true" : "false", name, version, t->label,
                   tool_rv_text(t, rv, tmod_device_error(m, t->sess), text,
                                sizeof(text)));
        return -1;
    }
    tkeys_free(keys);
    rv = tkeys_load(m, t, keys);
    if (rv == CKR_OK)
        rv = tkeys_load_version(m, t, keys, name, version);
    v = rv == CKR_OK ? find_version(keys, name, version) : NULL;
    if (v == NULL || v->enabled != on) {
        tool_error("retire: key %s version %s on token %s: the module "
                   "accepted the change, but the version reads as %s",
                   name, version, t->label,
                   v == NULL    ? "gone"
                   : v->enabled ? "enabled"
                                : "disabled");
        return -1;
    }
    return 0;
}

int cmd_retire(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    struct ttoken *toks = NULL;
    struct tkeys keys = {0};
    struct retire r;
    struct tversion *v;
    char name[256], version[160], since[32], *cmd = NULL;
    const char *reason = NULL;
    size_t ntok = 0, i;
    int status;
    time_t now = time(NULL);

    memset(&r, 0, sizeof(r));
    (void)argc;
    if (!o->undo && o->npaths == 0 && o->naudit == 0) {
        /* Nothing to show that the version is unused. */
        tool_error("retire: give --paths DIR (where sealed files are) or "
                   "--audit-log FILE (the module's audit log), or both: "
                   "what must no longer use the version");
        return TOOL_USAGE;
    }
    status = resolve(m, o, argv[1], argv[2], &toks, &ntok, &r.t, &keys, name,
                     sizeof(name), version, sizeof(version));
    if (status != TOOL_OK)
        goto out;
    status = TOOL_FAILED;
    r.name = name;
    r.version = version;
    r.since = o->since_set ? o->since : 24 * 3600;
    v = find_version(&keys, name, version);
    if (v == NULL) {
        tool_error("retire: token %s has no key %s with a version %s (see "
                   "cmkp11-tool list %s)",
                   r.t->label, name, version, r.t->label);
        goto out;
    }
    r.id = v->id;
    r.id_len = v->id_len;
    if (o->undo) {
        if (o->dry_run) {
            printf("Token %s, key %s: version %s would be enabled again "
                   "(dry run: nothing changed)\n",
                   r.t->label, name, version);
            status = TOOL_OK;
        } else if (set_enabled(m, r.t, &keys, name, version, true) == 0) {
            printf("Token %s, key %s: version %s enabled again\n", r.t->label,
                   name, version);
            status = TOOL_OK;
        }
        goto out;
    }
    if (v->current) {
        if (o->json)
            print_json(&r, o, "refused", "the current version", NULL);
        tool_error("retire: version %s is the current version of key %s on "
                   "token %s: new wraps use it, so it cannot be retired; "
                   "rotate the key first (cmkp11-tool rotate %s %s), rewrap "
                   "the files under it, then retire it",
                   version, name, r.t->label, r.t->label, name);
        status = TOOL_REFUSED;
        goto out;
    }
    if (secret_keys_depend(m, o, &r) != 0) {
        status = TOOL_REFUSED;
        goto out;
    }
    if (scan_files(&r, o) < 0) {
        tool_error("retire: out of memory");
        goto out;
    }
    for (i = 0; i < o->naudit; i++)
        if (scan_audit(&r, o->audit_logs[i], now) < 0)
            goto out;
    if (r.bad_lines > 0)
        tool_error("retire: warning: %lu audit line%s not an audit record: "
                   "skipped",
                   r.bad_lines, r.bad_lines == 1 ? " is" : "s are");
    if (r.nfiles > 0 && (cmd = rewrap_command(&r, o)) == NULL) {
        tool_error("retire: out of memory");
        goto out;
    }
    if (r.unreadable > 0) {
        /* What could not be read may name the version. */
        tool_error("retire: %lu path%s could not be read: cannot show that "
                   "nothing depends on version %s (not retired)",
                   r.unreadable, r.unreadable == 1 ? "" : "s", version);
        goto out;
    }
    if (r.nfiles > 0 || r.nprocs > 0) {
        reason = r.nfiles > 0 && r.nprocs > 0 ? "sealed files and audit "
                                                "records depend on it"
                 : r.nfiles > 0               ? "sealed files depend on it"
                                              : "audit records show it in use";
        if (o->json) {
            print_json(&r, o, "refused", reason, cmd);
        } else {
            printf("Token %s, key %s: version %s NOT retired: %s\n", r.t->label,
                   name, version, reason);
            print_dependants(&r, o, cmd);
            print_not_counted(&r);
        }
        status = TOOL_REFUSED;
        goto out;
    }
    if (!v->enabled) {
        reason = "already disabled";
        if (o->json)
            print_json(&r, o, "already-disabled", reason, NULL);
        else
            printf("Token %s, key %s: version %s is already disabled; "
                   "nothing depends on it\n",
                   r.t->label, name, version);
        status = TOOL_OK;
        goto out;
    }
    if (!o->dry_run && set_enabled(m, r.t, &keys, name, version, false) < 0)
        goto out;
    if (o->json) {
        print_json(&r, o, o->dry_run ? "would-retire" : "retired",
                   "nothing depends on it", NULL);
    } else {
        printf("Token %s, key %s: version %s %s: no sealed file under the "
               "paths names it (%lu checked) and no audit record in the last "
               "%s used it (%zu log%s read)\n",
               r.t->label, name, version,
               o->dry_run ? "can be retired (dry run: nothing changed)"
                          : "retired (disabled)",
               r.checked, since_text(r.since, since, sizeof(since)), o->naudit,
               o->naudit == 1 ? "" : "s");
        print_not_counted(&r);
    }
    status = TOOL_OK;
out:
    for (i = 0; i < r.nfiles; i++)
        free(r.files[i].path);
    free(r.files);
    free(r.procs);
    free(cmd);
    tkeys_free(&keys);
    ttokens_free(m, toks, ntok);
    return status;
}
