/*
 * cmkp11-tool output: aligned text tables and a small streaming JSON writer
 * with proper string escaping.
 */
#ifndef CMKP11_TOOL_OUT_H
#define CMKP11_TOOL_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define JW_MAX_DEPTH 16

/* A JSON writer: values are written as they come, pretty-printed with two
 * spaces a level. Inside an object, call jw_key() before each value. */
struct jw {
    FILE *f;
    int depth;
    bool first[JW_MAX_DEPTH];
    bool after_key;
};

void jw_init(struct jw *w, FILE *f);
void jw_begin_object(struct jw *w);
void jw_end_object(struct jw *w);
void jw_begin_array(struct jw *w);
void jw_end_array(struct jw *w);
void jw_key(struct jw *w, const char *key);
/* A string value; NULL writes null. Invalid UTF-8 becomes U+FFFD. */
void jw_string(struct jw *w, const char *s);
void jw_int(struct jw *w, long long v);
void jw_bool(struct jw *w, bool v);
void jw_null(struct jw *w);
/* Ends the document with a newline. */
void jw_finish(struct jw *w);

/* Key and value in one call. */
void jw_kv_string(struct jw *w, const char *key, const char *s);
void jw_kv_int(struct jw *w, const char *key, long long v);
void jw_kv_bool(struct jw *w, const char *key, bool v);
/* A decimal text (seconds) as a number, or null when empty or NULL. */
void jw_kv_epoch(struct jw *w, const char *key, const char *text);

/* Writes s as a JSON string literal, quotes included. */
void json_write_string(FILE *f, const char *s);

/* A text table: a header and rows of ncols cells, columns aligned. */
struct table;

struct table *table_new(size_t ncols, const char *const *headers);
/* Adds a row of ncols cells (copied; NULL or "" prints as "-"). Returns 0
 * or -1. */
int table_add(struct table *t, const char *const *cells);
/* Prints the table, each line starting with indent spaces. The last column
 * is not padded. */
void table_print(const struct table *t, FILE *f, int indent);
void table_free(struct table *t);

/* Seconds since the epoch (decimal text) as "YYYY-MM-DD HH:MM:SSZ", or "-"
 * when empty or NULL. Returns buf. */
const char *out_time(const char *epoch_text, char *buf, size_t len);
/* Parses a decimal text of seconds; 0 when empty, NULL or not a number. */
long long out_epoch(const char *text);

#endif
