#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jsonesc.h"
#include "out.h"

/* ---- JSON ---------------------------------------------------------------- */

void json_write_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), used;
    char esc[8];

    fputc('"', f);
    while (n > 0) {
        fwrite(esc, 1, cmk_json_char(p, n, esc, &used), f);
        p += used;
        n -= used;
    }
    fputc('"', f);
}

void jw_init(struct jw *w, FILE *f)
{
    memset(w, 0, sizeof(*w));
    w->f = f;
    w->first[0] = true;
}

static void indent(struct jw *w)
{
    int i;

    fputc('\n', w->f);
    for (i = 0; i < w->depth; i++)
        fputs("  ", w->f);
}

/* Before any value: a comma and a new line unless it follows a key. */
static void before_value(struct jw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0) {
        if (!w->first[w->depth])
            fputc(',', w->f);
        indent(w);
    }
    w->first[w->depth] = false;
}

static void open_container(struct jw *w, char c)
{
    before_value(w);
    fputc(c, w->f);
    if (w->depth + 1 < JW_MAX_DEPTH)
        w->depth++;
    w->first[w->depth] = true;
}

static void close_container(struct jw *w, char c)
{
    bool empty = w->first[w->depth];

    if (w->depth > 0)
        w->depth--;
    if (!empty)
        indent(w);
    fputc(c, w->f);
}

void jw_begin_object(struct jw *w)
{
    open_container(w, '{');
}

void jw_end_object(struct jw *w)
{
    close_container(w, '}');
}

void jw_begin_array(struct jw *w)
{
    open_container(w, '[');
}

void jw_end_array(struct jw *w)
{
    close_container(w, ']');
}

void jw_key(struct jw *w, const char *key)
{
    before_value(w);
    json_write_string(w->f, key);
    fputs(": ", w->f);
    w->after_key = true;
}

void jw_string(struct jw *w, const char *s)
{
    before_value(w);
    if (s == NULL)
        fputs("null", w->f);
    else
        json_write_string(w->f, s);
}

void jw_int(struct jw *w, long long v)
{
    before_value(w);
    fprintf(w->f, "%lld", v);
}

void jw_bool(struct jw *w, bool v)
{
    before_value(w);
    fputs(v ? "true" : "false", w->f);
}

void jw_null(struct jw *w)
{
    before_value(w);
    fputs("null", w->f);
}

void jw_finish(struct jw *w)
{
    fputc('\n', w->f);
}

void jw_kv_string(struct jw *w, const char *key, const char *s)
{
    jw_key(w, key);
    jw_string(w, s);
}

void jw_kv_int(struct jw *w, const char *key, long long v)
{
    jw_key(w, key);
    jw_int(w, v);
}

void jw_kv_bool(struct jw *w, const char *key, bool v)
{
    jw_key(w, key);
    jw_bool(w, v);
}

void jw_kv_epoch(struct jw *w, const char *key, const char *text)
{
    long long t = out_epoch(text);

    jw_key(w, key);
    if (t > 0)
        jw_int(w, t);
    else
        jw_null(w);
}

/* ---- tables -------------------------------------------------------------- */

struct table {
    size_t ncols, nrows, cap;
    char **cells; /* (nrows + 1) * ncols; row 0 is the header */
};

static char *dup_cell(const char *s, bool header)
{
    if (header)
        return strdup(s != NULL ? s : "");
    return strdup(s != NULL && *s != '\0' ? s : "-");
}

struct table *table_new(size_t ncols, const char *const *headers)
{
    struct table *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    t->ncols = ncols;
    if (table_add(t, headers) < 0) {
        table_free(t);
        return NULL;
    }
    return t;
}

int table_add(struct table *t, const char *const *cells)
{
    size_t i;

    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        char **c = realloc(t->cells, cap * t->ncols * sizeof(*c));
        if (c == NULL)
            return -1;
        t->cells = c;
        t->cap = cap;
    }
    for (i = 0; i < t->ncols; i++) {
        t->cells[t->nrows * t->ncols + i] = dup_cell(cells[i], t->nrows == 0);
        if (t->cells[t->nrows * t->ncols + i] == NULL) {
            while (i-- > 0)
                free(t->cells[t->nrows * t->ncols + i]);
            return -1;
        }
    }
    t->nrows++;
    return 0;
}

/* Display width: UTF-8 continuation bytes take no column. */
static size_t width(const char *s)
{
    size_t n = 0;

    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            n++;
    return n;
}

void table_print(const struct table *t, FILE *f, int indent_by)
{
    size_t *w = calloc(t->ncols, sizeof(*w));
    size_t r, c, k;

    if (w == NULL)
        return;
    for (r = 0; r < t->nrows; r++)
        for (c = 0; c < t->ncols; c++) {
            size_t n = width(t->cells[r * t->ncols + c]);
            if (n > w[c])
                w[c] = n;
        }
    for (r = 0; r < t->nrows; r++) {
        fprintf(f, "%*s", indent_by, "");
        for (c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            fputs(cell, f);
            if (c + 1 < t->ncols)
                for (k = width(cell); k < w[c] + 2; k++)
                    fputc(' ', f);
        }
        fputc('\n', f);
    }
    free(w);
}

void table_free(struct table *t)
{
    size_t i;

    if (t == NULL)
        return;
    for (i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* ---- times --------------------------------------------------------------- */

long long out_epoch(const char *text)
{
    char *end;
    long long v;

    if (text == NULL || *text == '\0')
        return 0;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < 0)
        return 0;
    return v;
}

const char *out_time(const char *epoch_text, char *buf, size_t len)
{
    long long v = out_epoch(epoch_text);
    time_t t = (time_t)v;
    struct tm tm;

    if (v <= 0 || gmtime_r(&t, &tm) == NULL ||
        strftime(buf, len, "%Y-%m-%d %H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "-");
    return buf;
}
