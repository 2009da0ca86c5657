/*
 * cmkp11-tool seal, unseal and rewrap: the files they read and write.
 * Temporary files beside their targets, replaced atomically; -o output;
 * inputs; finding the sealed files under directories.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compat.h"
#include "seal-int.h"
#include "tool.h"

#define TMP_TAG ".cmkp11-tmp-"

/* ---- messages -------------------------------------------------------------
 */

void efmt(char *err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, ERRLEN, fmt, ap);
    va_end(ap);
}

/* ---- temporary files ------------------------------------------------------
 * A temporary file beside its target, ".NAME.cmkp11-tmp-XXXXXX", mode 0600.
 * A signal that ends the tool removes it; SIGKILL leaves it, and rewrap
 * removes such leftovers (those nobody holds locked) in the directories it
 * walks.
 */

static char tmp_path[PATH_MAX];
static volatile sig_atomic_t tmp_active;

static void on_signal(int sig)
{
    if (tmp_active)
        unlink(tmp_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

void tmp_signals_install(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
    struct sigaction sa;
    size_t i;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (i = 0; i < CMK_ARRAY_SIZE(sigs); i++)
        sigaction(sigs[i], &sa, NULL);
}

static bool tmp_is_name(const char *name)
{
    const char *p = strstr(name, TMP_TAG);

    return name[0] == '.' && p != NULL && strlen(p) == strlen(TMP_TAG) + 6;
}

/* Opens a new temporary file beside target. Returns the stream, or NULL
 * with err set. */
FILE *tmp_open(const char *target, char *err)
{
    char *dcopy = strdup(target), *bcopy = strdup(target);
    const char *dir, *base;
    sigset_t all, old;
    FILE *f = NULL;
    int fd;

    if (dcopy == NULL || bcopy == NULL) {
        efmt(err, "out of memory");
        goto out;
    }
    dir = dirname(dcopy);
    base = basename(bcopy);
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    if (snprintf(tmp_path, sizeof(tmp_path), "%s/.%.180s" TMP_TAG "XXXXXX", dir,
                 base) >= (int)sizeof(tmp_path)) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        efmt(err, "%s: the path is too long", target);
        goto out;
    }
    fd = mkstemp(tmp_path);
    if (fd >= 0) {
        tmp_active = 1;
        /* Held while the file is written: rewrap's clean-up leaves locked
         * files alone. */
        flock(fd, LOCK_EX);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (fd < 0) {
        efmt(err, "cannot create a temporary file in %s: %s", dir,
             strerror(errno));
        goto out;
    }
    f = fdopen(fd, "wb");
    if (f == NULL) {
        efmt(err, "%s: %s", tmp_path, strerror(errno));
        close(fd);
        unlink(tmp_path);
        tmp_active = 0;
    }
out:
    free(dcopy);
    free(bcopy);
    return f;
}

/* Removes the temporary file (after a failure). */
void tmp_discard(FILE *f)
{
    if (f != NULL)
        fclose(f);
    if (tmp_active)
        unlink(tmp_path);
    tmp_active = 0;
}

const char *tmp_path_now(void)
{
    return tmp_path;
}

static int sync_dir_of(const char *path)
{
    char *copy = strdup(path);
    int fd, r = -1;

    if (copy == NULL)
        return -1;
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        r = fsync(fd);
        /* Some file systems cannot sync a directory: not a failure. */
        if (r < 0 && (errno == EINVAL || errno == EROFS))
            r = 0;
        close(fd);
    }
    free(copy);
    return r;
}

/* Flushes, syncs and closes the temporary file, sets its mode and renames
 * it to target, then syncs the directory. On failure the temporary file is
 * removed. */
int tmp_commit(FILE *f, const char *target, mode_t mode, char *err)
{
    int fd = fileno(f);

    if (fflush(f) != 0 || fchmod(fd, mode) < 0 || fsync(fd) < 0) {
        efmt(err, "writing %s: %s", tmp_path, strerror(errno));
        tmp_discard(f);
        return -1;
    }
    if (fclose(f) != 0) {
        efmt(err, "writing %s: %s", tmp_path, strerror(errno));
        tmp_discard(NULL);
        return -1;
    }
    if (rename(tmp_path, target) < 0) {
        efmt(err, "cannot rename %s to %s: %s", tmp_path, target,
             strerror(errno));
        tmp_discard(NULL);
        return -1;
    }
    tmp_active = 0;
    if (sync_dir_of(target) < 0) {
        efmt(err, "syncing the directory of %s: %s", target, strerror(errno));
        return -1;
    }
    return 0;
}

/* Removes a leftover temporary file if no process holds it. */
static void tmp_clean_stale(const char *path)
{
    struct stat a, b;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0)
        return;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0 && fstat(fd, &a) == 0 &&
        lstat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        unlink(path);
    close(fd);
}

/* ---- -o output --------------------------------------------------------------
 * What -o FILE does, as cp, gpg -o and openssl enc -out do:
 * - a regular file (or a symbolic link to one) is replaced atomically: a
 *   temporary file beside the link's target, synced and renamed over it;
 *   the link stays;
 * - anything else (a device such as /dev/null, a FIFO, a socket) and every
 *   path under /dev or /proc (/dev/stdout, /dev/fd/N: what the shell opened)
 *   is written through: opened and written, never replaced;
 * - a directory is refused;
 * - plaintext never gets a wider mode than 0600: a new file is 0600, an
 *   existing one keeps its mode with the group and other bits removed
 *   (0644 becomes 0600, 0400 stays 0400). Sealed data keeps the existing
 *   file's mode, or gets 0666 less the umask.
 */

static mode_t file_mode(void)
{
    mode_t um = umask(077);

    umask(um);
    return 0666 & ~um;
}

/* "-", or a path to what standard output already is (/dev/stdout,
 * /dev/fd/1): no summary may be printed there. */
bool path_is_stdout(const char *path)
{
    struct stat a, b;

    if (path == NULL || strcmp(path, "-") == 0)
        return true;
    return (strncmp(path, "/dev/", 5) == 0 ||
            strncmp(path, "/proc/", 6) == 0) &&
           stat(path, &a) == 0 && fstat(STDOUT_FILENO, &b) == 0 &&
           a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static bool is_through_path(const char *path)
{
    return strncmp(path, "/dev/", 5) == 0 || strncmp(path, "/proc/", 6) == 0;
}

/* Replaces the file at target (o->target, NULL when out of memory) by a
 * temporary file beside it. */
static int outfile_tmp(struct outfile *o, const char *path, char *err)
{
    if (o->target == NULL) {
        efmt(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    o->f = tmp_open(o->target, err);
    if (o->f == NULL) {
        free(o->target);
        o->target = NULL;
        return -1;
    }
    return 0;
}

/* A path that stat() did not find. */
static int outfile_new(struct outfile *o, const char *path, bool plaintext,
                       char *err)
{
    struct stat lst;

    if (errno != ENOENT) {
        efmt(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (lstat(path, &lst) == 0) {
        efmt(err,
             "%s: a symbolic link to a file that does not exist; "
             "refusing to write through it",
             path);
        return -1;
    }
    o->target = strdup(path);
    o->mode = plaintext ? 0600 : file_mode();
    return outfile_tmp(o, path, err);
}

/* A device, FIFO, socket, or a path under /dev or /proc. */
static int outfile_through(struct outfile *o, const char *path,
                           const struct stat *st, char *err)
{
    /* O_TRUNC only matters when /dev/stdout is a regular file. */
    int fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC |
                            (S_ISREG(st->st_mode) ? O_TRUNC : 0));

    if (fd < 0 || (o->f = fdopen(fd, "wb")) == NULL) {
        efmt(err, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    o->through = true;
    return 0;
}

/* An existing regular file, or a symbolic link to one. */
static int outfile_replace(struct outfile *o, const char *path,
                           const struct stat *st, bool plaintext, char *err)
{
    if (access(path, W_OK) < 0) {
        efmt(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    /* A symbolic link: its target is replaced, the link stays. */
    o->target = realpath(path, NULL);
    o->mode = plaintext ? (st->st_mode & 0600) : (st->st_mode & 07777);
    o->existed = true;
    o->uid = st->st_uid;
    o->gid = st->st_gid;
    return outfile_tmp(o, path, err);
}

int outfile_open(struct outfile *o, const char *path, bool plaintext, char *err)
{
    struct stat st;

    memset(o, 0, sizeof(*o));
    if (path_is_stdio(path)) {
        o->f = stdout;
        o->std = true;
        return 0;
    }
    if (stat(path, &st) < 0)
        return outfile_new(o, path, plaintext, err);
    if (S_ISDIR(st.st_mode)) {
        efmt(err, "%s: is a directory; give a file name", path);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || is_through_path(path))
        return outfile_through(o, path, &st, err);
    return outfile_replace(o, path, &st, plaintext, err);
}

void outfile_discard(struct outfile *o)
{
    if (o->through)
        fclose(o->f);
    else if (!o->std)
        tmp_discard(o->f);
    free(o->target);
    memset(o, 0, sizeof(*o));
}

int outfile_commit(struct outfile *o, const char *path, char *err)
{
    int r = 0;

    if (o->std) {
        /* Standard output: flushed by the writer, closed at exit. */
    } else if (o->through) {
        if (fflush(o->f) != 0 || ferror(o->f)) {
            efmt(err, "writing %s: %s", path, strerror(errno));
            r = -1;
        }
        if (fclose(o->f) != 0 && r == 0) {
            efmt(err, "writing %s: %s", path, strerror(errno));
            r = -1;
        }
    } else {
        if (o->existed && fchown(fileno(o->f), o->uid, o->gid) < 0) {
            /* Not the owner: the file becomes ours, as any rewrite would. */
        }
        r = tmp_commit(o->f, o->target, o->mode, err);
    }
    free(o->target);
    memset(o, 0, sizeof(*o));
    return r;
}

/* ---- inputs ---------------------------------------------------------------
 */

/* Reads up to n bytes (fewer only at the end). Returns the count, or -1. */
ssize_t fread_full(FILE *f, unsigned char *buf, size_t n)
{
    size_t got = fread(buf, 1, n, f);

    if (got < n && ferror(f))
        return -1;
    return (ssize_t)got;
}

const char *path_in_name(const char *path)
{
    return path == NULL || strcmp(path, "-") == 0 ? "standard input" : path;
}

bool path_is_stdio(const char *path)
{
    return path == NULL || strcmp(path, "-") == 0;
}

FILE *input_open(const char *path)
{
    FILE *f;

    if (path_is_stdio(path))
        return stdin;
    f = fopen(path, "rb");
    if (f == NULL)
        tool_error("%s: %s", path, strerror(errno));
    return f;
}

void input_close(FILE *f)
{
    if (f != NULL && f != stdin)
        fclose(f);
}

int header_read(FILE *in, struct seal_header *h, char *err)
{
    char why[256];
    enum seal_err e = seal_header_read(in, h, why, sizeof(why));

    if (e == SEAL_OK)
        return 0;
    if (e == SEAL_IO)
        efmt(err, "%s", strerror(errno));
    else if (e == SEAL_NOMEM)
        efmt(err, "out of memory");
    else
        efmt(err, "%s", why);
    return -1;
}

/* ---- sealed files under directories --------------------------------------
 */

static int sealed_files_add(struct sealed_files *l, const char *path,
                            off_t size, bool named)
{
    struct sealed_file *nv;

    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        nv = realloc(l->v, l->cap * sizeof(*nv));
        if (nv == NULL)
            return -1;
        l->v = nv;
    }
    l->v[l->n].path = strdup(path);
    if (l->v[l->n].path == NULL)
        return -1;
    l->v[l->n].size = size;
    l->v[l->n].named = named;
    l->total += (unsigned long long)size;
    l->n++;
    return 0;
}

void sealed_files_free(struct sealed_files *l)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        free(l->v[i].path);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

bool file_is_sealed(const char *path)
{
    unsigned char buf[SEAL_MAGIC_LEN];
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return false;
    n = read(fd, buf, sizeof(buf));
    close(fd);
    return n == (ssize_t)sizeof(buf) && seal_has_magic(buf, sizeof(buf));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in dir but "." and "..", sorted (free each and the array).
 * -1 when dir cannot be opened. */
static int dir_names(const char *dir, char ***names, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **nn;
    size_t cap = 0;

    *names = NULL;
    *n = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            nn = realloc(*names, cap * sizeof(*nn));
            if (nn == NULL)
                break;
            *names = nn;
        }
        if (((*names)[*n] = strdup(e->d_name)) != NULL)
            (*n)++;
    }
    closedir(d);
    if (*n > 0)
        qsort(*names, *n, sizeof(**names), cmp_str);
    return 0;
}

/* Adds the sealed regular files under dir, in name order; removes stale
 * temporary files. Returns the number of directories that could not be
 * read. */
static unsigned long walk(struct sealed_files *l, const char *dir, int depth,
                          const char *cmd)
{
    char **names, path[PATH_MAX];
    unsigned long bad = 0;
    struct stat st;
    size_t n, i;

    if (depth > 64)
        return 0;
    if (dir_names(dir, &names, &n) < 0) {
        tool_error("%s: %s: %s", cmd, dir, strerror(errno));
        return 1;
    }
    for (i = 0; i < n; i++) {
        if (snprintf(path, sizeof(path), "%s/%s", dir, names[i]) >=
                (int)sizeof(path) ||
            lstat(path, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            bad += walk(l, path, depth + 1, cmd);
        } else if (S_ISREG(st.st_mode)) {
            if (tmp_is_name(names[i]))
                tmp_clean_stale(path);
            else if (file_is_sealed(path) &&
                     sealed_files_add(l, path, st.st_size, false) < 0)
                bad++;
        }
    }
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return bad;
}

unsigned long sealed_files_collect(struct sealed_files *l, int argc,
                                   char **argv, const char *cmd)
{
    unsigned long bad = 0;
    struct stat st;
    char *real;
    int a;

    for (a = 0; a < argc; a++) {
        if (stat(argv[a], &st) < 0) {
            tool_error("%s: %s: %s", cmd, argv[a], strerror(errno));
            bad++;
        } else if (S_ISDIR(st.st_mode)) {
            bad += walk(l, argv[a], 0, cmd);
        } else if ((real = realpath(argv[a], NULL)) != NULL) {
            /* A symbolic link: the file it names is rewritten. */
            if (sealed_files_add(l, real, st.st_size, true) < 0)
                bad++;
            free(real);
        } else {
            tool_error("%s: %s: %s", cmd, argv[a], strerror(errno));
            bad++;
        }
    }
    return bad;
}
