/*
 * cmkp11-tool check FILE|DIR: for each sealed file, which of its keys
 * (recipients) can unwrap its data key now, through the module, and
 * whether that is enough to unseal it (any one key, or every key of a
 * file sealed with --require-all).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "out.h"
#include "seal-int.h"
#include "tool.h"

bool check_is_sealed_path(const char *arg)
{
    struct stat st;

    if (strncmp(arg, "pkcs11:", 7) == 0 || stat(arg, &st) < 0)
        return false;
    /* A directory, a sealed file, or a path (with a slash) to any
     * regular file; a token label that is also a file name in the current
     * directory is a token unless that file is sealed. */
    return S_ISDIR(st.st_mode) ||
           (S_ISREG(st.st_mode) &&
            (file_is_sealed(arg) || strchr(arg, '/') != NULL));
}

/* Checks each recipient of the file at path; false when it cannot be
 * unsealed now (or not read). */
static bool check_file(struct sctx *c, const char *path, struct jw *w)
{
    static char errs[SEAL_RECIP_MAX][ERRLEN];
    struct seal_header h;
    struct tstate *s = NULL;
    CK_OBJECT_HANDLE dek = 0;
    char err[ERRLEN], name[600];
    size_t i, can = 0;
    bool ok;
    FILE *f = fopen(path, "rb");

    memset(&h, 0, sizeof(h));
    if (f == NULL || header_read(f, &h, err) < 0) {
        if (f == NULL)
            efmt(err, "cannot be read");
        if (w != NULL) {
            jw_begin_object(w);
            jw_kv_string(w, "path", path);
            jw_kv_bool(w, "unsealable", false);
            jw_kv_string(w, "error", err);
            jw_end_object(w);
        } else {
            printf("%s: FAIL: %s\n", path, err);
        }
        if (f != NULL)
            fclose(f);
        return false;
    }
    fclose(f);
    for (i = 0; i < h.n; i++) {
        errs[i][0] = '\0';
        if (recip_unwrap(c, &h, i, DEK_SEALED, &s, &dek, NULL, errs[i]) == 0)
            can++;
        if (s != NULL)
            dek_destroy(c, s, &dek);
        s = NULL;
    }
    ok = seal_header_all(&h) ? can == h.n : can > 0;
    if (w != NULL) {
        jw_begin_object(w);
        jw_kv_string(w, "path", path);
        jw_kv_int(w, "format", seal_header_version(&h));
        jw_kv_string(w, "mode", seal_header_all(&h) ? "all-of" : "any-of");
        jw_kv_bool(w, "unsealable", ok);
        jw_key(w, "recipients");
        jw_begin_array(w);
    } else {
        printf("%s: %s: %zu of %zu key%s can unwrap the data key (%s)\n", path,
               ok ? "PASS" : "FAIL", can, h.n, h.n == 1 ? "" : "s",
               seal_header_all(&h) ? "every key is needed"
                                   : "any one key unseals");
    }
    for (i = 0; i < h.n; i++) {
        char *uri = seal_recip_uri(&h.r[i]);
        recip_name(&h.r[i], name, sizeof(name));
        if (w != NULL) {
            jw_begin_object(w);
            jw_kv_string(w, "uri", uri);
            jw_kv_string(w, "version", h.r[i].version);
            jw_kv_bool(w, "can_unwrap", errs[i][0] == '\0');
            jw_kv_string(w, "error", errs[i][0] ? errs[i] : NULL);
            jw_end_object(w);
        } else if (errs[i][0] == '\0') {
            printf("  %s: can unwrap\n", name);
        } else {
            printf("  %s: cannot: %s\n", name, errs[i]);
        }
        free(uri);
    }
    if (w != NULL) {
        jw_end_array(w);
        jw_end_object(w);
    }
    seal_header_clear(&h);
    return ok;
}

int cmd_check_sealed(struct tmod *m, const struct tool_opts *o, int argc,
                     char **argv)
{
    struct sealed_files l;
    unsigned long bad;
    char err[ERRLEN];
    struct sctx c;
    struct jw w;
    size_t i;

    memset(&l, 0, sizeof(l));
    bad = sealed_files_collect(&l, argc - 1, argv + 1, "check");
    if (sctx_init(&c, m, o, err) < 0) {
        tool_error("check: %s", err);
        sealed_files_free(&l);
        return TOOL_FAILED;
    }
    if (o->json) {
        jw_init(&w, stdout);
        jw_begin_object(&w);
        jw_key(&w, "files");
        jw_begin_array(&w);
    }
    for (i = 0; i < l.n; i++)
        if ((l.v[i].named || file_is_sealed(l.v[i].path)) &&
            !check_file(&c, l.v[i].path, o->json ? &w : NULL))
            bad++;
    if (o->json) {
        jw_end_array(&w);
        jw_kv_string(&w, "result", bad == 0 ? "PASS" : "FAIL");
        jw_kv_int(&w, "files_checked", (long long)l.n);
        jw_kv_int(&w, "cannot_unseal", (long long)bad);
        jw_end_object(&w);
        jw_finish(&w);
    } else {
        printf("%zu sealed file%s, %lu that cannot be unsealed now\n", l.n,
               l.n == 1 ? "" : "s", bad);
    }
    sealed_files_free(&l);
    sctx_free(&c);
    return bad == 0 ? TOOL_OK : TOOL_FAILED;
}
