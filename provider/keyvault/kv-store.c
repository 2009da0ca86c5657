/*
 * The keyvault back end's token secret keys (docs/keyvault.md, "Token
 * secret keys"): AES and generic secret keys with CKA_TOKEN true, kept in
 * the token's state directory, one file per key, their value wrapped
 * (RSA-OAEP-SHA256) under a version of the wrapping key. The value is
 * unwrapped through the vault at first use and kept in secure memory while
 * the wrapping version may be used; operations run in the module
 * (softkey.c). The file's format: kv-skey.h.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "provider-util.h"
#include "debug.h"
#include "kv-skey.h"
#include "kv-token.h"
#include "secure.h"

static void skey_drop_value_unlocked(struct kv_skey *k)
{
    if (k->value != NULL)
        secure_free(k->value);
    k->value = NULL;
    k->value_len = 0;
}

void kv_store_free(struct kv_token *kt)
{
    struct kv_skey *k, *next;

    for (k = kt->skeys; k != NULL; k = next) {
        next = k->next;
        kv_skey_free(k);
    }
    kt->skeys = NULL;
    free(kt->state_dir);
    free(kt->wrapping_key);
}

struct kv_skey *kv_skey_of_unlocked(struct kv_token *kt, void *ref)
{
    struct kv_skey *k;

    for (k = kt->skeys; k != NULL; k = k->next)
        if ((void *)k == ref)
            return k;
    return NULL;
}

/* ---- reading a file ---- */

/* Why the state directory may not be used, or NULL: it must be ours, a
 * directory, and nobody else may write it. */
static const char *dir_problem(const struct stat *st)
{
    if (!S_ISDIR(st->st_mode))
        return "not a directory";
    if (st->st_uid != geteuid())
        return "owned by another user";
    if (st->st_mode & 022)
        return "writable by group or others";
    return NULL;
}

/* The state directory may be used; the reason it may not is logged. */
static bool dir_ok(struct kv_token *kt, const struct stat *st)
{
    const char *why = dir_problem(st);

    if (why != NULL)
        cmk_error("token %s: state-dir %s: %s; its secret keys are not used",
                  kt->name, kt->state_dir, why);
    return why == NULL;
}

/* Reads one file of the directory into the table (under the lock). */
static void scan_one_unlocked(struct kv_token *kt, int dfd, const char *name)
{
    char id[40], why[160] = "", *text = NULL;
    struct kv_skey *k, *nk, **pp;
    struct stat st = {0};
    size_t nlen = strlen(name), got = 0;
    ssize_t r;
    int fd;

    if (nlen != 32 + strlen(SK_SUFFIX) || strcmp(name + 32, SK_SUFFIX) != 0 ||
        !kv_skey_is_id(name, 32))
        return; /* temporary files (".ID.json.tmp.PID.SERIAL") and others */
    memcpy(id, name, 32);
    id[32] = '\0';
    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(why, sizeof(why), "cannot be read: %s", strerror(errno));
        goto bad;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077) != 0) {
        snprintf(why, sizeof(why),
                 "not a regular file of this user with mode 0600");
        goto bad;
    }
    for (k = kt->skeys; k != NULL; k = k->next)
        if (strcmp(k->id, id) == 0)
            break;
    if (k != NULL && !k->bad && k->dev == st.st_dev && k->ino == st.st_ino &&
        k->size == st.st_size && k->mtime.tv_sec == st.st_mtim.tv_sec &&
        k->mtime.tv_nsec == st.st_mtim.tv_nsec) {
        k->present = true; /* unchanged */
        close(fd);
        return;
    }
    if (k != NULL && k->bad && k->ino == st.st_ino && k->size == st.st_size &&
        k->mtime.tv_sec == st.st_mtim.tv_sec)
        goto quiet; /* logged already */
    if (st.st_size <= 0 || st.st_size > SK_MAX) {
        snprintf(why, sizeof(why), "empty or too large (%lld bytes)",
                 (long long)st.st_size);
        goto bad;
    }
    text = malloc((size_t)st.st_size + 1);
    if (text == NULL)
        goto quiet;
    while (got < (size_t)st.st_size &&
           (r = read(fd, text + got, (size_t)st.st_size - got)) > 0)
        got += (size_t)r;
    text[got] = '\0';
    nk = kv_skey_parse(text, got, id, why, sizeof(why));
    free(text);
    text = NULL;
    if (nk == NULL)
        goto bad;
    nk->dev = st.st_dev;
    nk->ino = st.st_ino;
    nk->size = st.st_size;
    nk->mtime = st.st_mtim;
    nk->present = true;
    if (k == NULL) {
        nk->next = kt->skeys;
        kt->skeys = nk;
    } else {
        /* Changed (rewrapped, or rewritten): the new content, in place,
         * so that the front end's reference stays valid. */
        struct kv_skey tmp = *k;
        skey_drop_value_unlocked(k);
        *k = *nk;
        k->next = tmp.next;
        tmp.next = NULL;
        tmp.value = NULL;
        *nk = tmp;
        kv_skey_free(nk);
    }
    close(fd);
    return;
bad:
    cmk_error("token %s: state file %s/%s skipped: %s", kt->name, kt->state_dir,
              name, why);
    for (pp = &kt->skeys; *pp != NULL; pp = &(*pp)->next)
        if (strcmp((*pp)->id, id) == 0)
            break;
    if (*pp == NULL && (k = calloc(1, sizeof(*k))) != NULL) {
        attrs_init(&k->attrs);
        k->id = strdup(id);
        if (k->id == NULL) {
            free(k);
            k = NULL;
        } else {
            k->next = kt->skeys;
            kt->skeys = k;
        }
    } else {
        k = *pp;
    }
    if (k != NULL) {
        skey_drop_value_unlocked(k);
        free(k->why);
        k->why = strdup(why);
        k->bad = true;
        k->present = false;
        k->ino = st.st_ino;
        k->size = st.st_size;
        k->mtime = st.st_mtim;
    }
quiet:
    if (fd >= 0)
        close(fd);
}

/*
 * A writer's temporary file ".ID.json.tmp.PID.SERIAL" left by a writer killed
 * before its rename is removed once nobody can be writing it: its PID is
 * no live process of this host (kill answers ESRCH) and it is older than
 * SK_TMP_MAX_AGE, since a writer of another host or PID namespace sharing
 * the directory is invisible to kill. Never this process's own: another
 * of its threads may be writing it.
 */
static void sweep_tmp_unlocked(struct kv_token *kt, int dfd, const char *name)
{
    pid_t pid = kv_skey_tmp_pid(name);
    time_t now = time(NULL);
    struct stat st;

    if (pid == 0 || pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH)
        return;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_mtime > now ||
        now - st.st_mtime < SK_TMP_MAX_AGE)
        return;
    if (unlinkat(dfd, name, 0) == 0)
        cmk_info("token %s: removed %s/%s, the temporary file of process "
                 "%ld, which ended before renaming it",
                 kt->name, kt->state_dir, name, (long)pid);
    else if (errno != ENOENT)
        cmk_warning("token %s: leftover temporary file %s/%s cannot be "
                    "removed: %s",
                    kt->name, kt->state_dir, name, strerror(errno));
}

/* Re-reads the directory when the last scan is older than
 * refresh-interval (or force). */
static void scan(struct kv_token *kt, bool force)
{
    struct kv_skey *k;
    struct dirent *de;
    struct stat st;
    DIR *d = NULL;
    int dfd;

    pthread_mutex_lock(&kt->lock);
    if (!force && !kv_stale(kt->scanned_at_ms, kt->refresh_ms)) {
        pthread_mutex_unlock(&kt->lock);
        return;
    }
    kt->scanned_at_ms = kv_now_ms();
    for (k = kt->skeys; k != NULL; k = k->next)
        k->seen = false;
    kt->state_why[0] = '\0';
    dfd = open(kt->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        /* No directory yet: no keys. Another error is logged once. */
        if (errno != ENOENT)
            snprintf(kt->state_why, sizeof(kt->state_why), "%s",
                     strerror(errno));
        if (kt->state_why[0] != '\0' && !kt->state_logged)
            cmk_error("token %s: state-dir %s: %s; its secret keys are not "
                      "used",
                      kt->name, kt->state_dir, kt->state_why);
        kt->state_logged = kt->state_why[0] != '\0';
    } else if (fstat(dfd, &st) != 0) {
        snprintf(kt->state_why, sizeof(kt->state_why), "%s", strerror(errno));
    } else if (!dir_ok(kt, &st)) {
        snprintf(kt->state_why, sizeof(kt->state_why), "%s", dir_problem(&st));
    } else if ((d = fdopendir(dfd)) != NULL) {
        while ((de = readdir(d)) != NULL) {
            sweep_tmp_unlocked(kt, dirfd(d), de->d_name);
            scan_one_unlocked(kt, dirfd(d), de->d_name);
            for (k = kt->skeys; k != NULL; k = k->next)
                if (k->id != NULL && strncmp(de->d_name, k->id, 32) == 0 &&
                    strcmp(de->d_name + 32, SK_SUFFIX) == 0)
                    k->seen = true;
        }
        closedir(d);
        dfd = -1;
    }
    if (dfd >= 0)
        close(dfd);
    for (k = kt->skeys; k != NULL; k = k->next) {
        if (!k->seen) {
            /* Destroyed (here or by another process). */
            if (k->present)
                cmk_debug("token %s: secret key %s is gone", kt->name, k->id);
            k->present = false;
            k->bad = false;
            free(k->why);
            k->why = NULL;
            skey_drop_value_unlocked(k);
        }
    }
    pthread_mutex_unlock(&kt->lock);
}

/* ---- listing ---- */

static int skey_pobj_unlocked(struct kv_token *kt, struct kv_skey *k,
                              struct pobj *p)
{
    int r = 0;

    memset(p, 0, sizeof(*p));
    attrs_init(&p->attrs);
    p->uid = strdup(k->uid);
    if (p->uid == NULL || attrs_copy(&p->attrs, &k->attrs) != 0)
        return -1;
    r |= attrs_set_bool(&p->attrs, CKA_TOKEN, CK_TRUE);
    r |= attrs_set_bool(&p->attrs, CKA_DESTROYABLE, CK_TRUE);
    r |= attrs_set_bool(&p->attrs, CKA_MODIFIABLE, CK_FALSE);
    r |= attrs_set_string(&p->attrs, CKA_CMK_BACKEND, "keyvault");
    r |= attrs_set_string(&p->attrs, CKA_CMK_SOURCE, kt->vault_url);
    r |= attrs_set_string(&p->attrs, CKA_CMK_KEY_NAME, k->cmk);
    r |= attrs_set_string(&p->attrs, CKA_CMK_VERSION, k->cmk_ver);
    r |= attrs_set_string(&p->attrs, CKA_CMK_WRAP_VERSION, k->cmk_ver);
    {
        struct kv_key *key = kv_key_get_unlocked(kt, k->cmk, false);
        struct kv_version *v =
            key ? kv_version_get_unlocked(key, k->cmk_ver) : NULL;
        if (v != NULL && v->loaded)
            r |= attrs_set_bool(&p->attrs, CKA_CMK_ENABLED,
                                key->exists && v->present &&
                                    kv_version_enabled_unlocked(kt, v));
    }
    p->ref = k;
    return r ? -1 : 0;
}

CK_RV kv_store_list(struct kv_token *kt, struct pobj **objs, CK_ULONG *count)
{
    struct kv_skey *k;
    struct pobj *out = *objs, *no;
    CK_ULONG n = *count, cap = *count;

    if (kt->state_dir == NULL)
        return CKR_OK;
    scan(kt, false);
    pthread_mutex_lock(&kt->lock);
    for (k = kt->skeys; k != NULL; k = k->next) {
        if (!k->present || k->bad)
            continue;
        if (n + 1 > cap) {
            cap = cap < 8 ? 16 : cap * 2;
            no = realloc(out, cap * sizeof(*out));
            if (no == NULL)
                break;
            out = no;
        }
        if (skey_pobj_unlocked(kt, k, &out[n]) == 0)
            n++;
        else
            pobj_clear(NULL, NULL, &out[n]);
    }
    pthread_mutex_unlock(&kt->lock);
    *objs = out;
    *count = n;
    return CKR_OK;
}

/* ---- writing ---- */

/* mkdir -p: the state directory itself with mode 0700, missing parents
 * (such as $(localstatedir)/lib/cmkp11) with 0755. */
static int make_dirs(const char *path)
{
    char buf[PATH_MAX], *p;

    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -1;
    for (p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/*
 * A key's file is written atomically: a temporary file beside it, written
 * and fsync'd (tmp_write), renamed over the name (tmp_rename), the
 * directory fsync'd (tmp_end). A writer killed at any point leaves the old
 * file or the new one, never a part. The rename of a rewrap is made under
 * the token's lock, and only over the key's file (tmp_replace), so that a
 * destroy or a scan sees the old file or the new one, never a file put
 * back after a destroy. CMKP11_TEST_STORE_PAUSE (tests only,
 * docs/keyvault.md) stops the process (SIGSTOP) between the write and the
 * rename.
 */
struct tmp_file {
    int dfd;        /* the state directory */
    char tmp[128];  /* ".ID.json.tmp.PID.SERIAL" */
    char final[64]; /* "ID.json" */
};

/* The end of a write: the directory fsync'd after a rename (rv CKR_OK),
 * else the temporary file removed. */
static void tmp_end(struct kv_token *kt, struct tmp_file *w, CK_RV rv)
{
    if (rv != CKR_OK)
        unlinkat(w->dfd, w->tmp, 0);
    else if (fsync(w->dfd) != 0)
        cmk_error("token %s: state-dir %s: fsync: %s", kt->name, kt->state_dir,
                  strerror(errno));
    close(w->dfd);
    w->dfd = -1;
}

static int write_all(int fd, const char *text, size_t len)
{
    size_t off = 0;
    ssize_t r;

    while (off < len && (r = write(fd, text + off, len - off)) > 0)
        off += (size_t)r;
    return off == len ? 0 : -1;
}

static unsigned tmp_serial; /* atomic: each temporary file's own name */

/* Makes k's temporary file, a name no one else has (not even a process
 * of another PID namespace with the same PID): O_EXCL, the next serial
 * while the name is taken. The descriptor, or -1 (errno). */
static int tmp_open(struct tmp_file *w, const struct kv_skey *k)
{
    int fd = -1, i;

    for (i = 0; fd < 0 && i < 16; i++) {
        unsigned serial = __atomic_add_fetch(&tmp_serial, 1, __ATOMIC_RELAXED);
        snprintf(w->tmp, sizeof(w->tmp), ".%s%s.tmp.%ld.%u", k->id, SK_SUFFIX,
                 (long)getpid(), serial != 0 ? serial : 1);
        fd = openat(w->dfd, w->tmp,
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    return fd;
}

/* Writes k's file under its temporary name (w->dfd open on success). */
static CK_RV tmp_write(struct kv_token *kt, const struct kv_skey *k,
                       struct tmp_file *w)
{
    struct stat st;
    char *text;
    int fd, err = 0;

    snprintf(w->final, sizeof(w->final), "%s%s", k->id, SK_SUFFIX);
    if (make_dirs(kt->state_dir) != 0) {
        cmk_error("token %s: state-dir %s cannot be made: %s", kt->name,
                  kt->state_dir, strerror(errno));
        return CKR_DEVICE_ERROR;
    }
    w->dfd = open(kt->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (w->dfd < 0 || fstat(w->dfd, &st) != 0 || !dir_ok(kt, &st)) {
        if (w->dfd >= 0)
            close(w->dfd);
        return CKR_DEVICE_ERROR;
    }
    text = kv_skey_json(k);
    if (text == NULL) {
        close(w->dfd);
        return CKR_HOST_MEMORY;
    }
    fd = tmp_open(w, k);
    if (fd < 0) {
        cmk_error("token %s: state file %s/%s cannot be written: %s", kt->name,
                  kt->state_dir, w->tmp, strerror(errno));
        free(text);
        close(w->dfd);
        return CKR_DEVICE_ERROR;
    }
    errno = 0;
    if (write_all(fd, text, strlen(text)) != 0 || fsync(fd) != 0)
        err = errno ? errno : EIO;
    if (close(fd) != 0 && err == 0)
        err = errno;
    free(text);
    if (err != 0) {
        cmk_error("token %s: state file %s/%s cannot be written: %s", kt->name,
                  kt->state_dir, w->final, strerror(err));
        tmp_end(kt, w, CKR_DEVICE_ERROR);
        return CKR_DEVICE_ERROR;
    }
    if (getenv("CMKP11_TEST_STORE_PAUSE") != NULL)
        raise(SIGSTOP);
    return CKR_OK;
}

/* Renames the temporary file over the key's; written: what the next scan
 * compares, so that it does not read it again. */
static CK_RV tmp_rename(struct kv_token *kt, struct tmp_file *w,
                        struct stat *written)
{
    if (renameat(w->dfd, w->tmp, w->dfd, w->final) != 0) {
        cmk_error("token %s: state file %s/%s cannot be written: %s", kt->name,
                  kt->state_dir, w->final, strerror(errno));
        return CKR_DEVICE_ERROR;
    }
    if (fstatat(w->dfd, w->final, written, AT_SYMLINK_NOFOLLOW) != 0)
        memset(written, 0, sizeof(*written));
    return CKR_OK;
}

/*
 * Puts the rewrap's file in the place of the key's, only while the key's
 * file is there: the two names are exchanged, which fails when the key's
 * is gone (destroyed, by this process or another: CKR_OBJECT_HANDLE_INVALID),
 * and the old file, now under the temporary name, is removed. Where the
 * file system cannot exchange names, the key's file is looked at, then
 * renamed over (another process's destroy between the two is undone).
 */
static CK_RV tmp_replace(struct kv_token *kt, struct tmp_file *w,
                         struct stat *written)
{
    struct stat st;

#ifdef RENAME_EXCHANGE
    if (renameat2(w->dfd, w->tmp, w->dfd, w->final, RENAME_EXCHANGE) == 0) {
        if (unlinkat(w->dfd, w->tmp, 0) != 0)
            cmk_warning("token %s: the replaced file %s/%s cannot be removed: "
                        "%s",
                        kt->name, kt->state_dir, w->tmp, strerror(errno));
        if (fstatat(w->dfd, w->final, written, AT_SYMLINK_NOFOLLOW) != 0)
            memset(written, 0, sizeof(*written));
        return CKR_OK;
    }
    if (errno == ENOENT)
        return CKR_OBJECT_HANDLE_INVALID;
    if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
        cmk_error("token %s: state file %s/%s cannot be written: %s", kt->name,
                  kt->state_dir, w->final, strerror(errno));
        return CKR_DEVICE_ERROR;
    }
#endif
    if (fstatat(w->dfd, w->final, &st, AT_SYMLINK_NOFOLLOW) != 0 &&
        errno == ENOENT)
        return CKR_OBJECT_HANDLE_INVALID;
    return tmp_rename(kt, w, written);
}

/* Writes a new key's file (its name is new: no lock needed). */
static CK_RV skey_write(struct kv_token *kt, const struct kv_skey *k,
                        struct stat *written)
{
    struct tmp_file w;
    CK_RV rv;

    rv = tmp_write(kt, k, &w);
    if (rv != CKR_OK)
        return rv;
    rv = tmp_rename(kt, &w, written);
    tmp_end(kt, &w, rv);
    return rv;
}

/* ---- the wrapping key ---- */

/* The wrapping key's name: wrapping-key, else the only key of the token. */
static CK_RV wrapping_key_name(struct kv_token *kt, struct pcall *c, char **out)
{
    struct pobj *objs = NULL;
    CK_ULONG n = 0, i;
    bool complete = false;
    char *only = NULL;
    int count = 0;
    CK_RV rv;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE hint = {CKA_CLASS, &cls, sizeof(cls)};

    if (kt->wrapping_key != NULL) {
        *out = strdup(kt->wrapping_key);
        return *out ? CKR_OK : CKR_HOST_MEMORY;
    }
    rv = kv_list_keys(c, &hint, 1, &objs, &n, &complete);
    if (rv != CKR_OK)
        return rv;
    for (i = 0; i < n; i++) {
        CK_ATTRIBUTE *a = attrs_find(&objs[i].attrs, CKA_CMK_KEY_NAME);
        if (a != NULL &&
            attrs_get_ulong(&objs[i].attrs, CKA_CLASS, 0) == CKO_PRIVATE_KEY) {
            if (only == NULL || strlen(only) != a->ulValueLen ||
                memcmp(only, a->pValue, a->ulValueLen) != 0) {
                count++;
                free(only);
                only = strndup(a->pValue, a->ulValueLen);
            }
        }
        pobj_clear(NULL, NULL, &objs[i]);
    }
    free(objs);
    if (count != 1) {
        cmk_error("token %s: a token secret key needs a wrapping key: the "
                  "token has %d keys; set wrapping-key = NAME in its [token] "
                  "section",
                  kt->name, count);
        free(only);
        return CKR_TEMPLATE_INCONSISTENT;
    }
    *out = only;
    return only ? CKR_OK : CKR_HOST_MEMORY;
}

/* The version a key is to be wrapped under: want, or the current one.
 * Loads the key; copies out its version id and public key. */
static CK_RV wrapping_version(struct kv_token *kt, struct pcall *c,
                              const char *name, const char *want, char **ver,
                              EVP_PKEY **pk)
{
    struct kv_key *k;
    struct kv_version *v;
    CK_RV rv;

    rv = kv_load_key(kt, c, name, want, kv_now_ms() + kt->deadline_ms);
    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&kt->lock);
    k = kv_key_get_unlocked(kt, name, false);
    v = k == NULL || !k->exists ? NULL
        : want != NULL          ? kv_version_get_unlocked(k, want)
                                : kv_current_unlocked(kt, k);
    if (v == NULL || !v->present || !v->loaded || v->n == NULL) {
        rv = CKR_KEY_HANDLE_INVALID;
    } else if (!kv_version_enabled_unlocked(kt, v) ||
               !kv_has_op(v->key_ops, "wrapKey") ||
               !kv_has_op(v->key_ops, "unwrapKey")) {
        rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
    } else {
        *ver = strdup(v->version);
        *pk = rsa_pkey_from_parts(v->n, v->nlen, v->e, v->elen);
        if (*ver == NULL || *pk == NULL) {
            free(*ver);
            EVP_PKEY_free(*pk);
            *pk = NULL;
            rv = CKR_HOST_MEMORY;
        }
    }
    pthread_mutex_unlock(&kt->lock);
    if (rv != CKR_OK)
        cmk_error("token %s: key %s%s%s cannot wrap a token secret key (%s)",
                  kt->name, name, want ? " version " : "", want ? want : "",
                  cmk_rv_name(rv));
    return rv;
}

static CK_RV oaep_wrap(EVP_PKEY *pk, const unsigned char *value, size_t len,
                       unsigned char **out, size_t *outlen)
{
    CK_RSA_PKCS_OAEP_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA256,
                                 CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
    CK_ULONG n = (CK_ULONG)EVP_PKEY_get_size(pk);
    CK_RV rv;

    *out = malloc(n ? n : 1);
    if (*out == NULL)
        return CKR_HOST_MEMORY;
    rv = rsa_encrypt(pk, &m, value, len, *out, &n);
    if (rv != CKR_OK) {
        free(*out);
        *out = NULL;
        return rv == CKR_DATA_LEN_RANGE ? CKR_KEY_SIZE_RANGE : rv;
    }
    *outlen = n;
    return CKR_OK;
}

/* ---- creating, destroying ---- */

CK_RV kv_store_create(struct pcall *c, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                      struct pobj *out)
{
    struct kv_token *kt = c->tok;
    const CK_ATTRIBUTE *val = tmpl_find(tmpl, n, CKA_VALUE);
    struct kv_skey *k, *e;
    struct stat st;
    unsigned char rnd[16];
    char idhex[33];
    EVP_PKEY *pk = NULL;
    CK_ULONG i;
    CK_RV rv;

    if (kt->state_dir == NULL)
        return CKR_TEMPLATE_INCONSISTENT;
    if (val == NULL || val->pValue == NULL || val->ulValueLen == 0)
        return CKR_TEMPLATE_INCOMPLETE;
    k = calloc(1, sizeof(*k));
    if (k == NULL)
        return CKR_HOST_MEMORY;
    attrs_init(&k->attrs);
    for (i = 0; i < n; i++) {
        /* What the front end built; the token's own attributes are added
         * when listed. */
        if (tmpl[i].type == CKA_VALUE || tmpl[i].type == CKA_TOKEN ||
            (tmpl[i].type & CKA_VENDOR_DEFINED))
            continue;
        if (attrs_set(&k->attrs, tmpl[i].type, tmpl[i].pValue,
                      tmpl[i].ulValueLen) != 0) {
            rv = CKR_HOST_MEMORY;
            goto fail;
        }
    }
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        rv = CKR_FUNCTION_FAILED;
        goto fail;
    }
    k->id = strdup(cmk_hex(rnd, sizeof(rnd), idhex));
    k->uid = kv_strdup_printf("secret/%s", idhex);
    k->value = secure_dup(val->pValue, val->ulValueLen);
    k->value_len = val->ulValueLen;
    if (k->id == NULL || k->uid == NULL || k->value == NULL) {
        rv = CKR_HOST_MEMORY;
        goto fail;
    }
    rv = wrapping_key_name(kt, c, &k->cmk);
    if (rv == CKR_OK)
        rv = wrapping_version(kt, c, k->cmk, NULL, &k->cmk_ver, &pk);
    if (rv == CKR_OK)
        rv =
            oaep_wrap(pk, k->value, k->value_len, &k->wrapped, &k->wrapped_len);
    if (rv == CKR_KEY_SIZE_RANGE) {
        /* Longer than one RSA-OAEP-SHA256 block of the wrapping key
         * (190 bytes under RSA 2048): the template's length is refused. */
        cmk_error("token %s: a %zu-byte secret key does not fit one "
                  "RSA-OAEP-SHA256 block of key %s",
                  kt->name, k->value_len, k->cmk);
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if (rv == CKR_OK && kv_skey_mac(k->value, k->value_len, k->id, k->cmk,
                                    &k->attrs, k->mac) != 0)
        rv = CKR_FUNCTION_FAILED;
    if (rv == CKR_OK)
        rv = skey_write(kt, k, &st);
    EVP_PKEY_free(pk);
    if (rv != CKR_OK)
        goto fail;
    k->dev = st.st_dev;
    k->ino = st.st_ino;
    k->size = st.st_size;
    k->mtime = st.st_mtim;
    k->present = true;
    pthread_mutex_lock(&kt->lock);
    for (e = kt->skeys; e != NULL; e = e->next)
        if (e->id != NULL && strcmp(e->id, k->id) == 0)
            break;
    if (e != NULL) {
        /* A scan of another thread read the file first: that entry. */
        if (e->value == NULL) {
            e->value = k->value;
            e->value_len = k->value_len;
            k->value = NULL;
        }
        kv_skey_free(k);
        k = e;
    } else {
        k->next = kt->skeys;
        kt->skeys = k;
    }
    if (skey_pobj_unlocked(kt, k, out) != 0)
        rv = CKR_HOST_MEMORY;
    pthread_mutex_unlock(&kt->lock);
    if (rv != CKR_OK)
        pobj_clear(NULL, NULL, out);
    return rv;
fail:
    kv_skey_free(k);
    return rv;
}

CK_RV kv_store_destroy(struct pcall *c, struct kv_skey *k)
{
    struct kv_token *kt = c->tok;
    char name[64];
    int dfd;
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&kt->lock);
    snprintf(name, sizeof(name), "%s%s", k->id, SK_SUFFIX);
    dfd = open(kt->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || (unlinkat(dfd, name, 0) != 0 && errno != ENOENT)) {
        cmk_error("token %s: state file %s/%s cannot be removed: %s", kt->name,
                  kt->state_dir, name, strerror(errno));
        rv = CKR_DEVICE_ERROR;
    } else {
        fsync(dfd);
        k->present = false;
        skey_drop_value_unlocked(k);
    }
    if (dfd >= 0)
        close(dfd);
    pthread_mutex_unlock(&kt->lock);
    return rv;
}

/* ---- using ---- */

/* Whether mac is the MAC of the key's id, wrapping key and attributes
 * under value. */
static bool mac_ok(const unsigned char *value, size_t len, const char *id,
                   const char *cmk, const struct attrs *a,
                   const unsigned char mac[32])
{
    unsigned char want[32];
    bool ok = kv_skey_mac(value, len, id, cmk, a, want) == 0 &&
              CRYPTO_memcmp(want, mac, 32) == 0;

    OPENSSL_cleanse(want, sizeof(want));
    return ok;
}

/* The value of k, unwrapped through the vault at first use, while the
 * wrapping version may be used (checked on every use; reloaded after
 * refresh-interval). Copies it to buf (room for 512 bytes). */
static CK_RV skey_value(struct pcall *c, struct kv_skey *k, unsigned char *buf,
                        size_t *len)
{
    struct kv_token *kt = c->tok;
    struct kv_key *key;
    struct kv_version *v = NULL;
    char *cmk = NULL, *ver = NULL, *id = NULL;
    unsigned char *plain = NULL, mac[32], *wrapped = NULL;
    CK_ULONG plen = 0;
    size_t cap = 0, wlen = 0;
    struct attrs a;
    int tries = 0;
    CK_RV rv;

    attrs_init(&a);
    /* What other processes did (destroyed, rewrapped) counts within
     * refresh-interval, as for the wrapping version's state. */
    scan(kt, false);
again:
    pthread_mutex_lock(&kt->lock);
    if (!k->present || k->bad) {
        pthread_mutex_unlock(&kt->lock);
        return CKR_KEY_HANDLE_INVALID;
    }
    key = kv_key_get_unlocked(kt, k->cmk, false);
    v = key ? kv_version_get_unlocked(key, k->cmk_ver) : NULL;
    if (v != NULL && k->value != NULL && k->value_len <= 512) {
        /* In use already: a copy, if the version may still be used. */
        memcpy(buf, k->value, k->value_len);
        *len = k->value_len;
        pthread_mutex_unlock(&kt->lock);
        rv = kv_version_check(kt, c, v);
        if (rv != CKR_OK) {
            OPENSSL_cleanse(buf, *len);
            pthread_mutex_lock(&kt->lock);
            skey_drop_value_unlocked(k);
            pthread_mutex_unlock(&kt->lock);
        }
        return rv;
    }
    cmk = strdup(k->cmk);
    ver = strdup(k->cmk_ver);
    key = kv_key_get_unlocked(kt, k->cmk, false);
    v = key ? kv_version_get_unlocked(key, k->cmk_ver) : NULL;
    pthread_mutex_unlock(&kt->lock);
    if (cmk == NULL || ver == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    if (v == NULL) {
        rv = kv_load_key(kt, c, cmk, ver, kv_now_ms() + kt->deadline_ms);
        pthread_mutex_lock(&kt->lock);
        key = kv_key_get_unlocked(kt, cmk, false);
        v = key ? kv_version_get_unlocked(key, ver) : NULL;
        pthread_mutex_unlock(&kt->lock);
        if (v == NULL) {
            cmk_error("token %s: the wrapping key %s version %s of a token "
                      "secret key is not found (%s)",
                      kt->name, cmk, ver, cmk_rv_name(rv));
            rv = CKR_KEY_HANDLE_INVALID;
            goto out;
        }
    }
    /* The key's life follows its wrapping version. */
    rv = kv_version_check(kt, c, v);
    if (rv != CKR_OK) {
        pthread_mutex_lock(&kt->lock);
        skey_drop_value_unlocked(k);
        pthread_mutex_unlock(&kt->lock);
        goto out;
    }
    pthread_mutex_lock(&kt->lock);
    if (k->value != NULL && k->value_len <= 512) {
        memcpy(buf, k->value, k->value_len);
        *len = k->value_len;
        pthread_mutex_unlock(&kt->lock);
        goto out;
    }
    if (strcmp(k->cmk_ver, ver) != 0) {
        /* Rewrapped meanwhile: its value is now wrapped under another
         * version, which is checked instead. */
        pthread_mutex_unlock(&kt->lock);
        free(cmk);
        free(ver);
        cmk = ver = NULL;
        if (++tries < 3)
            goto again;
        cmk_error("token %s: secret key %s is rewrapped again and again "
                  "while it is used; try again",
                  kt->name, k->id);
        rv = CKR_FUNCTION_FAILED;
        goto out;
    }
    /* First use: unwrap through the vault, then check the mac. */
    plain = secure_alloc(cap = k->wrapped_len + 1);
    wrapped = malloc(k->wrapped_len);
    wlen = k->wrapped_len;
    if (wrapped != NULL)
        memcpy(wrapped, k->wrapped, wlen);
    id = strdup(k->id);
    if (attrs_copy(&a, &k->attrs) != 0 || plain == NULL || wrapped == NULL ||
        id == NULL) {
        pthread_mutex_unlock(&kt->lock);
        free(wrapped);
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    memcpy(mac, k->mac, 32);
    pthread_mutex_unlock(&kt->lock);
    plen = cap;
    rv = kv_unwrap_oaep256(c, v, wrapped, wlen, plain, &plen);
    free(wrapped);
    if (rv != CKR_OK) {
        cmk_error("token %s: secret key %s: the vault did not unwrap its "
                  "value (%s)",
                  kt->name, id, cmk_rv_name(rv));
        goto out;
    }
    if (plen == 0 || plen > 512 || !mac_ok(plain, plen, id, cmk, &a, mac)) {
        cmk_error("token %s: state file %s/%s%s skipped: its integrity "
                  "check failed (attributes or value altered)",
                  kt->name, kt->state_dir, id, SK_SUFFIX);
        /* The file checked, unless a scan has read another since. */
        pthread_mutex_lock(&kt->lock);
        if (memcmp(k->mac, mac, 32) == 0) {
            k->bad = true;
            free(k->why);
            k->why = strdup("its integrity check failed (attributes or "
                            "value altered)");
        }
        pthread_mutex_unlock(&kt->lock);
        rv = CKR_KEY_HANDLE_INVALID;
        goto out;
    }
    /* Kept only beside what it was checked with: a scan may have put
     * another file's attributes and MAC in k meanwhile (this use goes on
     * with the file it read; the next checks k's own). */
    pthread_mutex_lock(&kt->lock);
    if (k->value == NULL && k->present && !k->bad &&
        mac_ok(plain, plen, k->id, k->cmk, &k->attrs, k->mac)) {
        k->value = secure_dup(plain, plen);
        k->value_len = k->value ? plen : 0;
    }
    pthread_mutex_unlock(&kt->lock);
    memcpy(buf, plain, plen);
    *len = plen;
out:
    if (plain != NULL)
        secure_free(plain);
    attrs_clear(&a);
    free(cmk);
    free(ver);
    free(id);
    return rv;
}

/* The listed keys whose MAC was not checked yet (under the lock): the
 * references stay valid while the token is open. */
static size_t unchecked_unlocked(struct kv_token *kt, struct kv_skey ***out)
{
    struct kv_skey *k, **v;
    size_t n = 0;

    for (k = kt->skeys; k != NULL; k = k->next)
        n += k->present && !k->bad && k->value == NULL;
    *out = v = n ? calloc(n, sizeof(*v)) : NULL;
    if (v == NULL)
        return 0;
    n = 0;
    for (k = kt->skeys; k != NULL; k = k->next)
        if (k->present && !k->bad && k->value == NULL)
            v[n++] = k;
    return n;
}

/* The skipped files, one line "PATH\tWHY\n" each, after the directory's
 * own when it was not read (under the lock). */
static char *skipped_text_unlocked(struct kv_token *kt)
{
    struct kv_skey *k;
    size_t len = 1, off = 0;
    char *text;

    for (k = kt->skeys; k != NULL; k = k->next)
        if (k->bad)
            len += strlen(kt->state_dir) + strlen(k->id) + strlen(SK_SUFFIX) +
                   (k->why ? strlen(k->why) : 7) + 3;
    len += strlen(kt->state_dir) + strlen(kt->state_why) + 2;
    text = malloc(len);
    if (text == NULL)
        return NULL;
    text[0] = '\0';
    if (kt->state_why[0] != '\0') /* the directory itself, not read */
        off += (size_t)snprintf(text, len, "%s\t%s\n", kt->state_dir,
                                kt->state_why);
    for (k = kt->skeys; k != NULL; k = k->next)
        if (k->bad)
            off += (size_t)snprintf(text + off, len - off, "%s/%s%s\t%s\n",
                                    kt->state_dir, k->id, SK_SUFFIX,
                                    k->why ? k->why : "skipped");
    return text;
}

CK_RV kv_store_state_files(struct pcall *c, CK_BYTE **out, CK_ULONG *len)
{
    struct kv_token *kt = c->tok;
    unsigned char value[512];
    struct kv_skey **todo = NULL;
    size_t n, i, vlen;
    char *text;

    if (kt->state_dir == NULL) {
        text = strdup("");
    } else {
        scan(kt, true);
        pthread_mutex_lock(&kt->lock);
        n = unchecked_unlocked(kt, &todo);
        pthread_mutex_unlock(&kt->lock);
        /* Their first use: the unwrap, then the MAC. Another failure (the
         * version disabled, the vault away) is the key's, not its file's. */
        for (i = 0; i < n; i++)
            if (skey_value(c, todo[i], value, &vlen) == CKR_OK)
                OPENSSL_cleanse(value, vlen);
        free(todo);
        pthread_mutex_lock(&kt->lock);
        text = skipped_text_unlocked(kt);
        pthread_mutex_unlock(&kt->lock);
    }
    if (text == NULL)
        return CKR_HOST_MEMORY;
    *out = (CK_BYTE *)text;
    *len = strlen(text);
    return CKR_OK;
}

/* HMAC-SHA256 (RFC 2104) for CKM_SHA256_HMAC and _GENERAL, whose
 * parameters the front end checked (its length, 1 to 32); POP_VERIFY
 * compares with the signature in out in constant time. */
static CK_RV skey_hmac(enum pop op, const CK_MECHANISM *m,
                       const unsigned char *key, size_t keylen,
                       const CK_BYTE *in, CK_ULONG inlen, CK_BYTE *out,
                       CK_ULONG *outlen)
{
    unsigned char mac[32];
    unsigned int mlen = 0;
    CK_ULONG want = 32;
    CK_RV rv = CKR_OK;

    if (m->mechanism == CKM_SHA256_HMAC_GENERAL) {
        if (m->pParameter == NULL || m->ulParameterLen != sizeof(CK_ULONG))
            return CKR_MECHANISM_PARAM_INVALID;
        want = *(const CK_ULONG *)m->pParameter;
        if (want == 0 || want > 32)
            return CKR_MECHANISM_PARAM_INVALID;
    }
    if (HMAC(EVP_sha256(), key, (int)keylen, in, inlen, mac, &mlen) == NULL ||
        mlen != 32)
        rv = CKR_FUNCTION_FAILED;
    else if (op == POP_VERIFY)
        rv = *outlen != want                      ? CKR_SIGNATURE_LEN_RANGE
             : CRYPTO_memcmp(mac, out, want) != 0 ? CKR_SIGNATURE_INVALID
                                                  : CKR_OK;
    else if (*outlen < want)
        rv = CKR_BUFFER_TOO_SMALL;
    else {
        memcpy(out, mac, want);
        *outlen = want;
    }
    OPENSSL_cleanse(mac, sizeof(mac));
    return rv;
}

CK_RV kv_store_crypt(struct pcall *c, enum pop op, struct kv_skey *k,
                     const CK_MECHANISM *m, const CK_BYTE *in, CK_ULONG inlen,
                     CK_BYTE *out, CK_ULONG *outlen)
{
    bool hmac = m->mechanism == CKM_SHA256_HMAC ||
                m->mechanism == CKM_SHA256_HMAC_GENERAL;
    unsigned char value[512];
    size_t len = 0;
    CK_RV rv;

    c->device_error = 0;
    if ((op == POP_SIGN || op == POP_VERIFY) != hmac)
        return CKR_MECHANISM_INVALID;
    rv = skey_value(c, k, value, &len);
    if (rv != CKR_OK)
        return rv;
    /* The front end checked the mechanism's parameters against the key's
     * CKA_VALUE_LEN (the value's length, bound by the MAC) and gives an out
     * buffer the operation's largest output fits. */
    if (hmac)
        rv = skey_hmac(op, m, value, len, in, inlen, out, outlen);
    else
        rv = softkey_crypt(m, op == POP_ENCRYPT, value, len, in, inlen, out,
                           outlen);
    OPENSSL_cleanse(value, sizeof(value));
    return rv;
}

CK_RV kv_store_get_value(struct pcall *c, struct kv_skey *k, CK_BYTE *out,
                         CK_ULONG *outlen)
{
    struct kv_token *kt = c->tok;
    unsigned char value[512];
    size_t len = 0;
    CK_RV rv;

    if (out == NULL) {
        pthread_mutex_lock(&kt->lock);
        *outlen = attrs_get_ulong(&k->attrs, CKA_VALUE_LEN, 0);
        pthread_mutex_unlock(&kt->lock);
        return CKR_OK;
    }
    rv = skey_value(c, k, value, &len);
    /* A value that cannot be had (its file altered, the version revoked)
     * is not revealed: the answer C_GetAttributeValue has for it. */
    if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
        rv = CKR_ATTRIBUTE_SENSITIVE;
    if (rv == CKR_OK && *outlen < len)
        rv = CKR_BUFFER_TOO_SMALL;
    if (rv == CKR_OK) {
        memcpy(out, value, len);
        *outlen = len;
    }
    OPENSSL_cleanse(value, sizeof(value));
    return rv;
}

/* Whether k left the directory: destroyed, here or by another process
 * (not a file skipped). */
static bool skey_gone(struct kv_token *kt, struct kv_skey *k)
{
    bool gone;

    pthread_mutex_lock(&kt->lock);
    gone = !k->present && !k->bad;
    pthread_mutex_unlock(&kt->lock);
    return gone;
}

/*
 * The rewrap's new file, written as copy, takes the place of k's (under
 * the lock, as kv_store_destroy removes it): only while k is in the
 * directory, so that a key destroyed during the rewrap stays destroyed,
 * also by another process since the last scan (tmp_replace). k then holds
 * the new wrapping.
 */
static CK_RV rewrap_commit(struct kv_token *kt, struct kv_skey *k,
                           struct kv_skey *copy, struct tmp_file *w)
{
    struct stat st;
    CK_RV rv;

    pthread_mutex_lock(&kt->lock);
    if (k->bad) {
        cmk_error("token %s: secret key %s not rewrapped: its file was "
                  "skipped meanwhile (%s)",
                  kt->name, k->id, k->why ? k->why : "unreadable");
        rv = CKR_KEY_HANDLE_INVALID;
    } else if (!k->present) {
        rv = CKR_OBJECT_HANDLE_INVALID;
    } else {
        rv = tmp_replace(kt, w, &st);
        if (rv == CKR_OBJECT_HANDLE_INVALID) {
            k->present = false;
            skey_drop_value_unlocked(k);
        }
    }
    if (rv == CKR_OBJECT_HANDLE_INVALID)
        cmk_info("token %s: secret key %s was destroyed during its rewrap: "
                 "its file is not written again",
                 kt->name, k->id);
    if (rv == CKR_OK) {
        free(k->cmk_ver);
        k->cmk_ver = copy->cmk_ver;
        copy->cmk_ver = NULL;
        free(k->wrapped);
        k->wrapped = copy->wrapped;
        k->wrapped_len = copy->wrapped_len;
        copy->wrapped = NULL;
        k->dev = st.st_dev;
        k->ino = st.st_ino;
        k->size = st.st_size;
        k->mtime = st.st_mtim;
        cmk_info("token %s: secret key %s rewrapped under %s version %s",
                 kt->name, k->id, k->cmk, k->cmk_ver);
    }
    pthread_mutex_unlock(&kt->lock);
    return rv;
}

/*
 * Rewraps k under version want of its wrapping key (NULL or "": the
 * current one): the same value, a new file. The value is unwrapped with
 * the version that wraps it now, so that one must still be usable. A key
 * destroyed before or during the rewrap: CKR_OBJECT_HANDLE_INVALID, as the
 * front end answers for an object gone.
 */
CK_RV kv_store_rewrap(struct pcall *c, struct kv_skey *k, const char *want)
{
    struct kv_token *kt = c->tok;
    unsigned char value[512];
    size_t len = 0;
    struct kv_skey copy;
    struct tmp_file w;
    EVP_PKEY *pk = NULL;
    char *ver = NULL;
    CK_RV rv;

    rv = skey_value(c, k, value, &len);
    if (rv == CKR_KEY_HANDLE_INVALID && skey_gone(kt, k))
        rv = CKR_OBJECT_HANDLE_INVALID;
    if (rv != CKR_OK)
        return rv;
    memset(&copy, 0, sizeof(copy));
    pthread_mutex_lock(&kt->lock);
    copy.id = strdup(k->id);
    copy.cmk = strdup(k->cmk);
    attrs_init(&copy.attrs);
    if (attrs_copy(&copy.attrs, &k->attrs) != 0 || copy.id == NULL ||
        copy.cmk == NULL)
        rv = CKR_HOST_MEMORY;
    memcpy(copy.mac, k->mac, 32);
    pthread_mutex_unlock(&kt->lock);
    if (rv == CKR_OK)
        rv = wrapping_version(kt, c, copy.cmk, want && *want ? want : NULL,
                              &ver, &pk);
    if (rv == CKR_OK)
        rv = oaep_wrap(pk, value, len, &copy.wrapped, &copy.wrapped_len);
    copy.cmk_ver = ver;
    if (rv == CKR_OK)
        rv = tmp_write(kt, &copy, &w);
    if (rv == CKR_OK) {
        rv = rewrap_commit(kt, k, &copy, &w);
        tmp_end(kt, &w, rv);
    }
    EVP_PKEY_free(pk);
    OPENSSL_cleanse(value, sizeof(value));
    attrs_clear(&copy.attrs);
    free(copy.id);
    free(copy.cmk);
    free(copy.cmk_ver);
    free(copy.wrapped);
    return rv;
}

CK_RV kv_store_set_attributes(struct pcall *c, struct kv_skey *k,
                              const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    char ver[128];
    CK_ULONG i;
    CK_RV rv = CKR_OK;

    for (i = 0; rv == CKR_OK && i < n; i++) {
        if (tmpl[i].type != CKA_CMK_WRAP_VERSION)
            return CKR_ATTRIBUTE_READ_ONLY;
        /* A version id (empty: the current version). */
        if (tmpl[i].ulValueLen >= sizeof(ver) ||
            (tmpl[i].ulValueLen > 0 &&
             (memchr(tmpl[i].pValue, '/', tmpl[i].ulValueLen) != NULL ||
              memchr(tmpl[i].pValue, '\0', tmpl[i].ulValueLen) != NULL)))
            return CKR_ATTRIBUTE_VALUE_INVALID;
        if (tmpl[i].ulValueLen > 0)
            memcpy(ver, tmpl[i].pValue, tmpl[i].ulValueLen);
        ver[tmpl[i].ulValueLen] = '\0';
        rv = kv_store_rewrap(c, k, ver);
    }
    return rv;
}
