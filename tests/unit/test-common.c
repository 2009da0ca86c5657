/*
 * The common helpers: secure memory and files, constant-time helpers, the
 * hash map, the generated name tables and logging.
 */
#include "config.h"

#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "attrs.h"
#include "debug.h"
#include "hmap.h"
#include "jsonesc.h"
#include "rotpolicy.h"
#include "secure.h"
#include "p11.h"
#include "test.h"

static char tmpdir[] = "/tmp/cmkp11-test-common-XXXXXX";

static void test_secure_memory(void)
{
    unsigned char *p;
    size_t i;
    bool zero = true;
    static const char secret[] = "correct horse";

    p = secure_alloc(64);
    ok(p != NULL, "secure_alloc");
    for (i = 0; p != NULL && i < 64; i++)
        zero = zero && p[i] == 0;
    ok(zero, "secure_alloc returns zeroed memory");
    if (p != NULL) {
        memset(p, 0xa5, 64);
        secure_zero(p, 32);
        ok(p[0] == 0 && p[31] == 0 && p[32] == 0xa5,
           "secure_zero wipes exactly len bytes");
    }
    ok(secure_in_pool(p) && secure_size(p) >= 64,
       "a small secret is pooled; secure_size covers what was asked");
    if (p != NULL) {
        size_t size = secure_size(p);
        memset(p, 0xa5, size);
        secure_free(p);
        /* The pool stays mapped: the freed chunk can be read. */
        zero = true;
        for (i = 0; i < size; i++)
            zero = zero && p[i] == 0;
        ok(zero, "secure_free wipes the whole pooled chunk, no length given");
    }
    secure_free(NULL);

    p = secure_dup(secret, sizeof(secret));
    ok(p != NULL && memcmp(p, secret, sizeof(secret)) == 0, "secure_dup");
    secure_free(p);

    p = secure_alloc(0);
    ok(p != NULL, "secure_alloc(0) gives a freeable pointer");
    secure_free(p);

    /* Larger than the largest class: the heap fallback, wiped whole. */
    p = secure_alloc(8192);
    ok(p != NULL && !secure_in_pool(p) && secure_size(p) >= 8192,
       "a large buffer comes from the heap; secure_size covers it");
    if (p != NULL)
        memset(p, 0xa5, 8192);
    secure_free(p);

    /* A malloc'd buffer that held a secret is taken too. */
    p = malloc(100);
    ok(p != NULL && secure_size(p) >= 100, "secure_size of a malloc'd buffer");
    if (p != NULL)
        memset(p, 0xa5, 100);
    secure_free(p);
}

static void test_constant_time(void)
{
    ok(ct_is_zero(0) == ~0u, "ct_is_zero(0) is all ones");
    ok(ct_is_zero(1) == 0 && ct_is_zero(~0UL) == 0 &&
           ct_is_zero(1UL << (sizeof(long) * 8 - 1)) == 0,
       "ct_is_zero of non-zero is zero");
    ok(ct_eq(42, 42) == ~0u && ct_eq(42, 43) == 0, "ct_eq");
    ok(ct_select(ct_eq(1, 1), 7, 9) == 7 && ct_select(ct_eq(1, 2), 7, 9) == 9,
       "ct_select");
    ok(ct_memcmp("abcd", "abcd", 4) == 0, "ct_memcmp equal");
    ok(ct_memcmp("abcd", "abce", 4) != 0, "ct_memcmp differs in last byte");
    ok(ct_memcmp("x", "y", 0) == 0, "ct_memcmp of nothing");
}

static void test_secure_file(void)
{
    char path[256], *buf = NULL;
    char err[512];
    size_t len = 0;
    int rc;

    snprintf(path, sizeof(path), "%s/secret", tmpdir);
    p11_write_path(path, "s3cr3t-value\r\n\n", 0600);
    rc = secure_read_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == 0 && len == 12 && strcmp(buf, "s3cr3t-value") == 0,
       "secure_read_file strips the line end");
    secure_free(buf);

    rc = secure_read_file(path, 0, &buf, &len, err, sizeof(err));
    ok(rc == 0 && len == 15 && buf[len] == '\0',
       "secure_read_file without strip keeps everything");
    secure_free(buf);

    chmod(path, 0644);
    rc = secure_read_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == 0, "mode 0644 is accepted (only writing is checked)");
    secure_free(buf);

    /* A secret: others may not read it; the group may. */
    chmod(path, 0604);
    buf = NULL;
    rc = secure_read_secret_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == -1 && buf == NULL && strncmp(err, path, strlen(path)) == 0 &&
           strstr(err, ": readable by others (mode 0604); refusing") != NULL &&
           strstr(err, "s3cr3t") == NULL,
       "secure_read_secret_file: 0604 refused, naming the file and mode");
    chmod(path, 0644);
    rc = secure_read_secret_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == -1 && strstr(err, "(mode 0644)") != NULL, "  and 0644");
    chmod(path, 0640);
    rc = secure_read_secret_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == 0 && strcmp(buf, "s3cr3t-value") == 0, "  0640 is accepted");
    secure_free(buf);
    chmod(path, 0660);
    buf = NULL;
    rc = secure_read_secret_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == -1 && strstr(err, "writable by group or others (mode 0660)"),
       "  0660 is refused");

    chmod(path, 0620);
    buf = NULL;
    rc = secure_read_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == -1 && buf == NULL && strstr(err, "writable by group") != NULL &&
           strstr(err, "0620") != NULL && strstr(err, "s3cr3t") == NULL,
       "group-writable file refused, contents not in the error");

    chmod(path, 0600);
    snprintf(path, sizeof(path), "%s/link", tmpdir);
    if (symlink("secret", path) == 0) {
        rc = secure_read_file(path, 1, &buf, &len, err, sizeof(err));
        ok(rc == 0 && strcmp(buf, "s3cr3t-value") == 0,
           "a symbolic link is followed");
        secure_free(buf);
        unlink(path);
    } else {
        test_skip("cannot make a symbolic link");
    }

    rc = secure_read_file(tmpdir, 1, &buf, &len, err, sizeof(err));
    ok(rc == -1 && strstr(err, "not a regular file") != NULL,
       "a directory is refused");

    snprintf(path, sizeof(path), "%s/missing", tmpdir);
    rc = secure_read_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == -1 && strncmp(err, path, strlen(path)) == 0 &&
           strstr(err, "No such file") != NULL,
       "a missing file names the path");

    snprintf(path, sizeof(path), "%s/empty", tmpdir);
    p11_write_path(path, "", 0600);
    rc = secure_read_file(path, 1, &buf, &len, err, sizeof(err));
    ok(rc == 0 && len == 0 && buf != NULL && buf[0] == '\0',
       "an empty file is an empty string");
    secure_free(buf);
    unlink(path);
    snprintf(path, sizeof(path), "%s/secret", tmpdir);
    unlink(path);
}

static int freed;
static void count_free(void *p)
{
    freed++;
    free(p);
}

static void test_hmap(void)
{
    struct hmap *m = hmap_new(count_free);
    struct hmap_iter it;
    unsigned long k, sum = 0;
    void *v;
    size_t n = 0;
    bool all = true;
    int *p;

    ok(m != NULL && hmap_count(m) == 0, "hmap_new is empty");
    for (k = 1; k <= 1000; k++) {
        p = malloc(sizeof(*p));
        *p = (int)k;
        if (hmap_put(m, k, p) < 0)
            all = false;
    }
    ok(all && hmap_count(m) == 1000, "1000 entries (the map grows)");
    for (k = 1; k <= 1000; k++) {
        p = hmap_get(m, k);
        all = all && p != NULL && *p == (int)k;
    }
    ok(all, "every key finds its value");
    ok(hmap_get(m, 0) == NULL && hmap_get(m, 1001) == NULL,
       "absent keys give NULL");

    freed = 0;
    p = malloc(sizeof(*p));
    *p = -1;
    hmap_put(m, 5, p);
    ok(freed == 1 && *(int *)hmap_get(m, 5) == -1 && hmap_count(m) == 1000,
       "replacing frees the old value");

    p = hmap_take(m, 6);
    ok(p != NULL && *p == 6 && freed == 1 && hmap_get(m, 6) == NULL,
       "hmap_take returns without freeing");
    free(p);
    ok(hmap_remove(m, 7) && freed == 2 && !hmap_remove(m, 7),
       "hmap_remove frees once");

    /* Remove the even keys while iterating. */
    hmap_iter_init(&it, m);
    while (hmap_iter_next(&it, &k, &v)) {
        n++;
        if (k % 2 == 0)
            hmap_iter_remove(&it, m);
    }
    ok(n == 998 && hmap_count(m) == 499, "iteration with removal");
    hmap_iter_init(&it, m);
    while (hmap_iter_next(&it, &k, &v))
        sum += k;
    ok(sum == 250000 - 7, "odd keys remain");

    /* Tombstones are reused: churn does not grow the map without bound. */
    for (k = 0; k < 100000; k++) {
        hmap_put(m, 5000 + k, NULL);
        hmap_remove(m, 5000 + k);
    }
    ok(hmap_count(m) == 499 && hmap_get(m, 999) != NULL, "churn");

    freed = 0;
    hmap_free(m);
    ok(freed == 499, "hmap_free frees the remaining values");
    hmap_free(NULL);
}

/* attrs_compact packs the array into shared cells; every change after it
 * still works and leaves the values intact. */
static void test_attrs_packed(void)
{
    static const unsigned char modulus[256] = {0xc3, 1, 2, 3, [255] = 0x9d};
    struct attrs a, b, c;
    CK_ATTRIBUTE *at;
    size_t cells0 = attrs_cells_count();

    attrs_init(&a);
    ok(attrs_compact(&a) == 0 && a.packed == 0, "an empty array is not packed");
    ok(attrs_set_ulong(&a, CKA_CLASS, CKO_PUBLIC_KEY) == 0 &&
           attrs_set_bool(&a, CKA_ENCRYPT, CK_TRUE) == 0 &&
           attrs_set(&a, CKA_MODULUS, modulus, sizeof(modulus)) == 0 &&
           attrs_set(&a, CKA_SUBJECT, NULL, 0) == 0 &&
           attrs_set_string(&a, CKA_LABEL, "kek") == 0,
       "five attributes");
    ok(attrs_compact(&a) == 0 && a.own == 2 && a.shape != NULL &&
           a.packed == 3 * sizeof(void *) && a.alloc == 5 && a.v == NULL &&
           attrs_cells_count() == cells0 + 5,
       "packed: five cells, all new: the modulus and the label (short, but "
       "it names the object) its own, the three small values in a shape");
    at = attrs_find(&a, CKA_MODULUS);
    ok(at != NULL && at->ulValueLen == 256 &&
           memcmp(at->pValue, modulus, 256) == 0,
       "the modulus survives packing");
    ok(attrs_get_ulong(&a, CKA_CLASS, 0) == CKO_PUBLIC_KEY &&
           attrs_get_bool(&a, CKA_ENCRYPT, false) &&
           attrs_find(&a, CKA_SUBJECT)->ulValueLen == 0,
       "small values and an empty one survive");

    /* A second array with the same modulus and label, another class, and
     * a secret value: shares four cells, the secret is its own. */
    attrs_init(&c);
    ok(attrs_set_ulong(&c, CKA_CLASS, CKO_PRIVATE_KEY) == 0 &&
           attrs_set(&c, CKA_MODULUS, modulus, sizeof(modulus)) == 0 &&
           attrs_set(&c, CKA_SUBJECT, NULL, 0) == 0 &&
           attrs_set_string(&c, CKA_LABEL, "kek") == 0 &&
           attrs_set(&c, CKA_VALUE, "secret", 6) == 0 &&
           attrs_compact(&c) == 0 && attrs_cells_count() == cells0 + 6,
       "equal attributes share a cell; a secret value is not shared");
    ok(attrs_find(&c, CKA_MODULUS) == attrs_find(&a, CKA_MODULUS) &&
           attrs_find(&c, CKA_CLASS) != attrs_find(&a, CKA_CLASS) &&
           attrs_find(&c, CKA_VALUE)->ulValueLen == 6 &&
           memcmp(attrs_find(&c, CKA_VALUE)->pValue, "secret", 6) == 0,
       "the modulus is held once");
    attrs_clear(&c);
    ok(attrs_cells_count() == cells0 + 5 &&
           memcmp(attrs_find(&a, CKA_MODULUS)->pValue, modulus, 256) == 0,
       "clearing one leaves the other's cells");
    ok(attrs_compact(&a) == 0, "packing twice is harmless");

    ok(attrs_copy(&b, &a) == 0 && b.packed == 0 && b.n == 5 &&
           attrs_match(&b, b.v, b.n) &&
           memcmp(attrs_find(&b, CKA_MODULUS)->pValue, modulus, 256) == 0 &&
           attrs_find(&b, CKA_MODULUS) != attrs_find(&a, CKA_MODULUS),
       "a copy of a packed array is an ordinary one with the same values");
    attrs_clear(&b);

    ok(attrs_set_string(&a, CKA_LABEL, "kek@2") == 0 && a.packed == 0 &&
           attrs_find(&a, CKA_LABEL)->ulValueLen == 5 &&
           memcmp(attrs_find(&a, CKA_LABEL)->pValue, "kek@2", 5) == 0 &&
           memcmp(attrs_find(&a, CKA_MODULUS)->pValue, modulus, 256) == 0,
       "replacing a value unpacks, the others intact");
    ok(attrs_compact(&a) == 0 && a.packed > 0 &&
           attrs_set_bool(&a, CKA_VERIFY, CK_TRUE) == 0 && a.n == 6 &&
           attrs_get_bool(&a, CKA_VERIFY, false) &&
           attrs_get_ulong(&a, CKA_CLASS, 0) == CKO_PUBLIC_KEY,
       "adding to a packed array");
    ok(attrs_compact(&a) == 0 && attrs_remove(&a, CKA_ENCRYPT) == 1 &&
           a.n == 5 && attrs_find(&a, CKA_ENCRYPT) == NULL &&
           memcmp(attrs_find(&a, CKA_MODULUS)->pValue, modulus, 256) == 0,
       "removing from a packed array");
    ok(attrs_compact(&a) == 0 && attrs_remove(&a, CKA_TRUSTED) == 0 &&
           a.packed > 0,
       "removing an absent attribute leaves it packed");
    attrs_clear(&a);
    ok(a.v == NULL && a.n == 0 && a.packed == 0 &&
           attrs_cells_count() == cells0,
       "cleared, its cells gone");
}

/* A modulus packed with a CKA_PUBLIC_KEY_INFO that holds its bytes lies
 * inside that cell, which it holds; attrs_hold keeps a value in the cells
 * the packed arrays share. The values read are the same bytes. */
static void test_attrs_inside(void)
{
    static unsigned char spki[294], modulus[256];
    struct attrs a, b;
    const CK_ATTRIBUTE *held, *n, *s;
    size_t cells0 = attrs_cells_count(), i;

    for (i = 0; i < sizeof(spki); i++)
        spki[i] = (unsigned char)(i * 7 + 3);
    memcpy(modulus, spki + 33, sizeof(modulus));
    held = attrs_hold(CKA_PUBLIC_KEY_INFO, spki, sizeof(spki));
    ok(held != NULL && held->ulValueLen == sizeof(spki) &&
           memcmp(held->pValue, spki, sizeof(spki)) == 0 &&
           attrs_cells_count() == cells0 + 1,
       "attrs_hold: a shared cell with the value");
    ok(attrs_hold(CKA_VALUE, "secret", 6) == NULL,
       "attrs_hold refuses a value that may be secret");

    attrs_init(&a);
    ok(attrs_set(&a, CKA_MODULUS, modulus, sizeof(modulus)) == 0 &&
           attrs_set(&a, CKA_PUBLIC_KEY_INFO, spki, sizeof(spki)) == 0 &&
           attrs_compact(&a) == 0 && attrs_cells_count() == cells0 + 2,
       "packed: the held SubjectPublicKeyInfo and a modulus cell");
    n = attrs_find(&a, CKA_MODULUS);
    s = attrs_find(&a, CKA_PUBLIC_KEY_INFO);
    ok(s == held, "the array shares the held cell");
    ok(n != NULL && n->ulValueLen == sizeof(modulus) &&
           memcmp(n->pValue, modulus, sizeof(modulus)) == 0 &&
           (const unsigned char *)n->pValue ==
               (const unsigned char *)s->pValue + 33,
       "the modulus is read inside the SubjectPublicKeyInfo, not copied");

    attrs_init(&b);
    ok(attrs_set(&b, CKA_MODULUS, modulus, sizeof(modulus)) == 0 &&
           attrs_compact(&b) == 0 && attrs_find(&b, CKA_MODULUS) == n &&
           attrs_cells_count() == cells0 + 2,
       "another array with that modulus shares the inside cell");
    attrs_release(held);
    attrs_clear(&a);
    ok(attrs_cells_count() == cells0 + 2 &&
           memcmp(attrs_find(&b, CKA_MODULUS)->pValue, modulus,
                  sizeof(modulus)) == 0,
       "the inside cell keeps the cell it lies in");
    attrs_clear(&b);
    ok(attrs_cells_count() == cells0, "both gone with the last array");

    attrs_init(&a);
    modulus[0] ^= 1;
    ok(attrs_set(&a, CKA_MODULUS, modulus, sizeof(modulus)) == 0 &&
           attrs_set(&a, CKA_PUBLIC_KEY_INFO, spki, sizeof(spki)) == 0 &&
           attrs_compact(&a) == 0 &&
           memcmp(attrs_find(&a, CKA_MODULUS)->pValue, modulus,
                  sizeof(modulus)) == 0 &&
           attrs_find(&a, CKA_MODULUS)->pValue !=
               (unsigned char *)attrs_find(&a, CKA_PUBLIC_KEY_INFO)->pValue +
                   33,
       "a modulus the SubjectPublicKeyInfo does not hold has its own bytes");
    attrs_clear(&a);
    ok(attrs_cells_count() == cells0, "cleared");
    attrs_release(NULL);
}

/* Packed arrays with the same small values (flags, classes: a CK_ULONG or
 * less) share one vector of them, their shape; each keeps its other
 * cells in a vector of its own. */
static void test_attrs_shapes(void)
{
    struct attrs a, b, c;
    size_t cells0 = attrs_cells_count();

    attrs_init(&a);
    attrs_init(&b);
    attrs_init(&c);
    ok(attrs_set_ulong(&a, CKA_CLASS, CKO_PUBLIC_KEY) == 0 &&
           attrs_set_string(&a, CKA_LABEL, "the first key") == 0 &&
           attrs_set_bool(&a, CKA_ENCRYPT, CK_TRUE) == 0 &&
           attrs_set_ulong(&b, CKA_CLASS, CKO_PUBLIC_KEY) == 0 &&
           attrs_set_string(&b, CKA_LABEL, "the second key") == 0 &&
           attrs_set_bool(&b, CKA_ENCRYPT, CK_TRUE) == 0 &&
           attrs_set_ulong(&c, CKA_CLASS, CKO_PRIVATE_KEY) == 0 &&
           attrs_set_string(&c, CKA_LABEL, "the first key") == 0 &&
           attrs_set_bool(&c, CKA_ENCRYPT, CK_TRUE) == 0 &&
           attrs_compact(&a) == 0 && attrs_compact(&b) == 0 &&
           attrs_compact(&c) == 0,
       "three arrays packed");
    ok(a.shape != NULL && a.shape == b.shape && a.own == 1 && b.own == 1 &&
           a.packed == 2 * sizeof(void *),
       "the same flags: one shape, the label a cell of each one's own");
    ok(c.shape != NULL && c.shape != a.shape &&
           attrs_find(&c, CKA_LABEL) == attrs_find(&a, CKA_LABEL) &&
           attrs_cells_count() == cells0 + 5,
       "another class: another shape; the equal label one cell");
    ok(attrs_get_ulong(&a, CKA_CLASS, 0) == CKO_PUBLIC_KEY &&
           attrs_get_ulong(&c, CKA_CLASS, 0) == CKO_PRIVATE_KEY &&
           attrs_get_bool(&b, CKA_ENCRYPT, false) &&
           attrs_find(&b, CKA_LABEL)->ulValueLen == 14 &&
           memcmp(attrs_find(&b, CKA_LABEL)->pValue, "the second key", 14) == 0,
       "the values read through own cells and shapes");
    attrs_clear(&a);
    ok(attrs_get_ulong(&b, CKA_CLASS, 0) == CKO_PUBLIC_KEY &&
           attrs_get_bool(&b, CKA_ENCRYPT, false) &&
           attrs_cells_count() == cells0 + 5,
       "clearing one array leaves the shape to the other");
    ok(attrs_set_bool(&b, CKA_ENCRYPT, CK_FALSE) == 0 && b.packed == 0 &&
           b.shape == NULL && !attrs_get_bool(&b, CKA_ENCRYPT, true) &&
           attrs_get_ulong(&b, CKA_CLASS, 0) == CKO_PUBLIC_KEY &&
           attrs_compact(&b) == 0 && b.shape != c.shape && b.own == 1,
       "a change unpacks; packed again, another shape");
    attrs_clear(&b);
    attrs_clear(&c);
    ok(attrs_cells_count() == cells0, "all cells gone with the arrays");
}

/* attrs_reserve: one allocation that attrs_set fills while it has room;
 * replacing and removing stay in it, a change that does not fit leaves
 * every value its own allocation with the values intact. */
static void test_attrs_reserved(void)
{
    static char label[] = "dek", id[] = "\x01\x02";
    const CK_ATTRIBUTE tmpl[] = {{CKA_LABEL, label, 3}, {CKA_ID, id, 2}};
    struct attrs a;
    size_t room = attrs_value_room(tmpl, 2), cells0 = attrs_cells_count();
    CK_ATTRIBUTE *at;
    void *block;

    ok(room == 2 * sizeof(CK_ULONG), "two short values: two aligned slots");
    attrs_init(&a);
    ok(attrs_reserve(&a, 4, room + 2 * sizeof(CK_ULONG)) == 0 && a.block > 0 &&
           a.n == 0 && a.alloc == 4,
       "reserved: room for four attributes");
    block = a.v;
    ok(attrs_reserve(&a, 4, 8) == -1, "reserving twice is refused");
    ok(attrs_merge(&a, tmpl, 2) == 0 &&
           attrs_set_ulong(&a, CKA_CLASS, CKO_SECRET_KEY) == 0 &&
           attrs_set_bool(&a, CKA_SENSITIVE, CK_TRUE) == 0 && a.n == 4 &&
           a.v == block && a.block_used == a.block,
       "four attributes filled the block, no other allocation");
    at = attrs_find(&a, CKA_LABEL);
    ok(at != NULL && at->ulValueLen == 3 && memcmp(at->pValue, "dek", 3) == 0 &&
           (unsigned char *)at->pValue > (unsigned char *)block &&
           attrs_get_ulong(&a, CKA_CLASS, 0) == CKO_SECRET_KEY &&
           ((uintptr_t)attrs_find(&a, CKA_CLASS)->pValue % sizeof(CK_ULONG)) ==
               0,
       "the values are in the block, a CK_ULONG aligned");
    ok(attrs_remove(&a, CKA_ID) == 1 && a.n == 3 && a.v == block &&
           attrs_find(&a, CKA_ID) == NULL &&
           attrs_get_bool(&a, CKA_SENSITIVE, false),
       "removing stays in the block");
    ok(attrs_set_bool(&a, CKA_SENSITIVE, CK_FALSE) == 0 && a.block == 0 &&
           a.v != block && a.n == 3 &&
           !attrs_get_bool(&a, CKA_SENSITIVE, true) &&
           memcmp(attrs_find(&a, CKA_LABEL)->pValue, "dek", 3) == 0 &&
           attrs_get_ulong(&a, CKA_CLASS, 0) == CKO_SECRET_KEY,
       "a change without room: ordinary values, the others intact");
    attrs_clear(&a);

    attrs_init(&a);
    ok(attrs_reserve(&a, 2, 16) == 0 && attrs_merge(&a, tmpl, 2) == 0 &&
           attrs_set(&a, CKA_VALUE, "secret", 6) == 0 && a.block == 0 &&
           a.n == 3 &&
           memcmp(attrs_find(&a, CKA_ID)->pValue, "\x01\x02", 2) == 0,
       "a third attribute in room for two: ordinary values");
    attrs_clear(&a);

    attrs_init(&a);
    ok(attrs_reserve(&a, 3, 24) == 0 && attrs_merge(&a, tmpl, 2) == 0 &&
           attrs_compact(&a) == 0 && a.packed > 0 && a.block == 0 &&
           attrs_cells_count() == cells0 + 2 &&
           memcmp(attrs_find(&a, CKA_LABEL)->pValue, "dek", 3) == 0,
       "a reserved array packs");
    attrs_clear(&a);
    ok(a.v == NULL && a.block == 0 && attrs_cells_count() == cells0, "cleared");
    ok(attrs_value_room(&(CK_ATTRIBUTE){CKA_LABEL, NULL, (CK_ULONG)-1}, 1) ==
           SIZE_MAX,
       "an absurd length: no room to reserve");
}

static void test_names(void)
{
    ok(strcmp(cmk_rv_name(CKR_OK), "CKR_OK") == 0, "CKR_OK");
    ok(strcmp(cmk_rv_name(CKR_BUFFER_TOO_SMALL), "CKR_BUFFER_TOO_SMALL") == 0,
       "CKR_BUFFER_TOO_SMALL");
    ok(strcmp(cmk_rv_name(CKR_VENDOR_DEFINED), "CKR_VENDOR_DEFINED") == 0,
       "CKR_VENDOR_DEFINED (the last)");
    ok(strcmp(cmk_rv_name(0x7ffffffeUL), "CKR_(unknown)") == 0, "unknown CKR");
    ok(strcmp(cmk_mech_name(CKM_RSA_PKCS_OAEP), "CKM_RSA_PKCS_OAEP") == 0,
       "CKM_RSA_PKCS_OAEP");
    ok(strcmp(cmk_mech_name(CKM_RSA_PKCS_KEY_PAIR_GEN),
              "CKM_RSA_PKCS_KEY_PAIR_GEN") == 0,
       "CKM 0 (the first)");
    ok(strcmp(cmk_mech_name(CKM_EC_KEY_PAIR_GEN), "CKM_EC_KEY_PAIR_GEN") == 0,
       "deprecated alias loses");
    ok(strcmp(cmk_attr_name(CKA_ALLOWED_MECHANISMS),
              "CKA_ALLOWED_MECHANISMS") == 0,
       "array attribute");
    /* CKA_CMK_KEY_OPS in compat.h: CKA_VENDOR_DEFINED | "CM" << 16 | 9. */
    ok(strcmp(cmk_attr_name(CKA_VENDOR_DEFINED | 0x434D0009UL),
              "CKA_CMK_KEY_OPS") == 0,
       "vendor attribute");
    ok(strcmp(cmk_attr_name(0x7fffffffUL), "CKA_(unknown)") == 0,
       "unknown CKA");
}

static void test_hex(void)
{
    static const unsigned char in[] = {0x00, 0x0f, 0xa5, 0xff, 0x10};
    char out[2 * sizeof(in) + 1];

    memset(out, 'x', sizeof(out));
    ok(cmk_hex(in, sizeof(in), out) == out, "cmk_hex returns its buffer");
    ok(strcmp(out, "000fa5ff10") == 0, "cmk_hex: lowercase, two digits a byte");
    ok(strcmp(cmk_hex(in, 0, out), "") == 0, "cmk_hex of nothing: empty");

    /* cmk_hex_n: whole bytes that fit with the NUL, nothing past outlen. */
    memset(out, 'x', sizeof(out));
    ok(cmk_hex_n(in, sizeof(in), out, sizeof(out)) == out,
       "cmk_hex_n returns its buffer");
    ok(strcmp(out, "000fa5ff10") == 0, "cmk_hex_n: all of it when it fits");
    memset(out, 'x', sizeof(out));
    cmk_hex_n(in, sizeof(in), out, 7);
    ok(strcmp(out, "000fa5") == 0 && out[7] == 'x',
       "cmk_hex_n into 7: three bytes, NUL at 6, out[7] untouched");
    memset(out, 'x', sizeof(out));
    cmk_hex_n(in, sizeof(in), out, 6);
    ok(strcmp(out, "000f") == 0 && out[5] == 'x',
       "cmk_hex_n into 6: two bytes (no half byte), NUL at 4");
    memset(out, 'x', sizeof(out));
    cmk_hex_n(in, sizeof(in), out, 1);
    ok(out[0] == '\0' && out[1] == 'x', "cmk_hex_n into 1: empty string");
    memset(out, 'x', sizeof(out));
    cmk_hex_n(in, sizeof(in), out, 0);
    ok(out[0] == 'x', "cmk_hex_n into 0: nothing written");
    memset(out, 'x', sizeof(out));
    ok(strcmp(cmk_hex_n(in, 0, out, sizeof(out)), "") == 0,
       "cmk_hex_n of nothing: empty");
}

static void test_logging(void)
{
    char path[256], buf[4096];
    int level = -1, fd, status = 0;
    ssize_t n;
    pid_t pid;

    ok(cmk_log_level_parse("error", &level) == 0 && level == CMK_LOG_ERROR,
       "level error");
    ok(cmk_log_level_parse("debug", &level) == 0 && level == CMK_LOG_DEBUG,
       "level debug");
    ok(cmk_log_level_parse("Debug", &level) == -1 &&
           cmk_log_level_parse("", &level) == -1 &&
           cmk_log_level_parse(NULL, &level) == -1,
       "bad levels refused");

    /* The refusals log errors; keep them out of the test output. */
    cmk_log_threshold = -1;
    ok(cmk_log_configure("loud", NULL) == -1, "configure refuses bad level");
    ok(cmk_log_configure(NULL, "relative.log") == -1,
       "configure refuses a relative sink");

    snprintf(path, sizeof(path), "%s/bad.log", tmpdir);
    p11_write_path(path, "", 0666);
    ok(cmk_log_configure(NULL, path) == -1,
       "configure refuses a world-writable log file");
    unlink(path);
    cmk_log_threshold = CMK_LOG_WARNING;

    snprintf(path, sizeof(path), "%s/cmkp11.log", tmpdir);
    ok(cmk_log_configure("info", path) == 0, "configure a log file");
    is_num(cmk_log_threshold, CMK_LOG_INFO, "threshold info");
    cmk_info("hello %d", 42);
    cmk_debug("not shown at info");
    ok(cmk_log_configure("debug", NULL) == 0 && cmk_debug_mask != 0,
       "debug level turns debug categories on");
    cmk_debug("traced");
    cmk_log_close();
    cmk_log_configure("warning", NULL);

    fd = open(path, O_RDONLY);
    n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    ok(n > 24 && buf[4] == '-' && buf[10] == 'T' && buf[19] == '.' &&
           buf[23] == 'Z',
       "line starts with an ISO-8601 UTC time with milliseconds");
    ok(strstr(buf, " cmkp11[") != NULL && strstr(buf, "] info: hello 42\n"),
       "process, level and message");
    ok(strstr(buf, "not shown") == NULL, "debug off at info");
    ok(strstr(buf, "debug: test-common.c:") != NULL &&
           strstr(buf, "test_logging(): traced\n") != NULL,
       "debug line carries file:line func()");
    unlink(path);

    cmk_log_set_level(CMK_LOG_INFO);
    is_num(cmk_log_threshold, CMK_LOG_INFO, "cmk_log_set_level");
    cmk_log_set_level(CMK_LOG_WARNING);

    unsetenv("CMKP11_STRICT");
    cmk_log_threshold = -1; /* keep the test output clean */
    cmk_precond_failed("x != NULL", __func__);
    cmk_log_threshold = CMK_LOG_WARNING;
    ok(1, "a failed precondition without CMKP11_STRICT returns");

    pid = fork();
    if (pid == 0) {
        cmk_log_threshold = -1;
        setenv("CMKP11_STRICT", "1", 1);
        cmk_precond_failed("x != NULL", __func__);
        _exit(0);
    }
    ok(pid > 0 && waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) &&
           WTERMSIG(status) == SIGABRT,
       "with CMKP11_STRICT=1 a failed precondition aborts");
}

/* Last: CMKP11_DEBUG's override lasts for the rest of the process. */
static void test_debug_env(void)
{
    char path[256], buf[4096];
    int fd;
    ssize_t n;

    snprintf(path, sizeof(path), "%s/env.log", tmpdir);
    snprintf(buf, sizeof(buf), "hsm,config,file:%s", path);
    setenv("CMKP11_DEBUG", buf, 1);
    cmk_log_init_env();
    is_num(cmk_log_threshold, CMK_LOG_DEBUG, "CMKP11_DEBUG: threshold debug");
    is_num(cmk_debug_mask, CMK_DEBUG_HSM | CMK_DEBUG_CONFIG,
           "CMKP11_DEBUG: categories hsm and config");
    ok(cmk_log_configure("error", "stderr") == 0 &&
           cmk_log_threshold == CMK_LOG_DEBUG,
       "the configuration does not override CMKP11_DEBUG");
    cmk_log_set_level(CMK_LOG_ERROR);
    is_num(cmk_log_threshold, CMK_LOG_DEBUG, "nor does cmk_log_set_level");
    cmk_debug_msg(CMK_DEBUG_HSM, "hsm.c", 7, "f", "to the file");
    cmk_debug_msg(CMK_DEBUG_KEYVAULT, "kv.c", 7, "f", "category off");
    cmk_log_close();
    unsetenv("CMKP11_DEBUG");

    fd = open(path, O_RDONLY);
    n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    ok(strstr(buf, "debug: hsm.c:7 f(): to the file\n") != NULL &&
           strstr(buf, "category off") == NULL,
       "CMKP11_DEBUG file: sink and category filter");
    unlink(path);
}

/* A rotation policy's text (common/rotpolicy.h): durations, parsing,
 * Key Vault's rules, the text written back. */
static int parse(const char *text, struct rotpolicy *p, char *why,
                 size_t whylen)
{
    return rotpolicy_parse(text, strlen(text), p, why, whylen);
}

static void test_rotpolicy(void)
{
    static const struct {
        const char *text;
        long long secs;
    } durs[] = {
        {"P7D", 7 * 86400LL},
        {"P1Y", 365 * 86400LL},
        {"P1Y6M", (365 + 180) * 86400LL},
        {"P1DT12H", 86400LL + 12 * 3600},
        {"PT90M", 90 * 60},
        {"P", -1},
        {"PT", -1},
        {"P1D2Y", -1}, /* out of order */
        {"P1H", -1},   /* hours belong after T */
        {"90D", -1},
        {"P-1D", -1},
        {"P1W", -1}, /* not taken (Key Vault's examples never use weeks) */
    };
    struct rotpolicy p;
    char why[256], out[256];
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(durs); i++)
        is_num(rotpolicy_seconds(durs[i].text), durs[i].secs,
               "rotpolicy_seconds(%s)", durs[i].text);

    ok(parse(" notify-before = P30D ;rotate-after=P90D;", &p, why,
             sizeof(why)) == 0 &&
           strcmp(p.rotate_after, "P90D") == 0 &&
           strcmp(p.notify_before, "P30D") == 0 && p.expire_after[0] == '\0',
       "parse: spaces and an empty last pair");
    rotpolicy_format(&p, out, sizeof(out));
    ok(strcmp(out, "rotate-after=P90D;notify-before=P30D") == 0,
       "format: the fields in their order");
    ok(parse("", &p, why, sizeof(why)) == 0 && rotpolicy_empty(&p),
       "the empty text is no policy");
    ok(parse("rotate=P90D", &p, why, sizeof(why)) < 0 &&
           strstr(why, "unknown field 'rotate'") != NULL,
       "parse: an unknown field");
    ok(parse("rotate-after=P9D;rotate-after=P9D", &p, why, sizeof(why)) < 0 &&
           strstr(why, "given twice") != NULL,
       "parse: a field twice");
    ok(parse("rotate-after", &p, why, sizeof(why)) < 0, "parse: no '='");

    parse("rotate-after=P1D", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) < 0 &&
           strcmp(why, "The timeAfterCreate of a Rotate action must be at "
                       "least 7 days (P7D): P1D.") == 0,
       "check: rotate-after under 7 days");
    parse("rotate-after=P7D;expire-after=P28D", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) == 0, "check: the minimums pass");
    parse("expire-after=P27D", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) < 0 && strstr(why, "28 days"),
       "check: expire-after under 28 days");
    parse("rotate-before-expiry=P30D", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) < 0 &&
           strstr(why, "requires the policy's expiryTime"),
       "check: rotate-before-expiry without expire-after");
    parse("rotate-before-expiry=P22D;expire-after=P28D", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) < 0 &&
           strstr(why, "leave at least 7 days"),
       "check: rotate-before-expiry leaving under 7 days");
    parse("rotate-before-expiry=P21D;expire-after=P28D", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) == 0,
       "check: rotate-before-expiry leaving exactly 7 days");
    parse("notify-before=P6D", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) < 0,
       "check: notify-before under 7 days");
    parse("expire-after=2Y", &p, why, sizeof(why));
    ok(rotpolicy_check(&p, why, sizeof(why)) < 0 &&
           strcmp(why, "Invalid ISO 8601 duration: '2Y'") == 0,
       "check: not a duration");
}

static void is_str(const char *got, const char *want, const char *what)
{
    ok(strcmp(got, want) == 0, "%s", what);
    if (strcmp(got, want) != 0)
        test_diag("  got \"%s\", want \"%s\"", got, want);
}

/* A whole string through cmk_json_char, as the audit log and the tool
 * write it. */
static void json_of(const char *in, size_t n, char *out, size_t cap)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t len, used, k = 0;
    char c[8];

    while (n > 0 && k + 7 < cap) {
        len = cmk_json_char(s, n, c, &used);
        memcpy(out + k, c, len);
        k += len;
        s += used;
        n -= used;
    }
    out[k] = '\0';
}

/* RFC 8259 section 7 (escapes) and RFC 3629 section 3 (well-formed
 * UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF). */
static void test_json(void)
{
    char out[128];

    json_of("a\"b\\c/", 6, out, sizeof(out));
    is_str(out, "a\\\"b\\\\c/", "quote and backslash escaped, '/' kept");
    json_of("\b\f\n\r\t", 5, out, sizeof(out));
    is_str(out, "\\b\\f\\n\\r\\t", "the five short escapes");
    json_of("\x01\x1f\x7f", 3, out, sizeof(out));
    is_str(out, "\\u0001\\u001f\\u007f", "other controls and DEL as \\u00XX");
    json_of("x\0y", 3, out, sizeof(out));
    is_str(out, "x\\u0000y", "a NUL inside a counted string");
    json_of("\xc3\xa9\xe2\x82\xac\xf0\x9f\x94\x91", 9, out, sizeof(out));
    is_str(out, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x94\x91",
           "well-formed 2-, 3- and 4-byte characters copied");
    json_of("\xc0\xaf", 2, out, sizeof(out));
    is_str(out, "\\ufffd\\ufffd", "an overlong '/' is two U+FFFD");
    json_of("\xed\xa0\x80", 3, out, sizeof(out));
    is_str(out, "\\ufffd\\ufffd\\ufffd", "a surrogate is not a character");
    json_of("\xf4\x90\x80\x80", 4, out, sizeof(out));
    is_str(out, "\\ufffd\\ufffd\\ufffd\\ufffd", "beyond U+10FFFF");
    json_of("\xe2\x82", 2, out, sizeof(out));
    is_str(out, "\\ufffd\\ufffd", "a character cut short");
    is_num(cmk_utf8_len((const unsigned char *)"\xe2\x82\xac", 2), 0,
           "cmk_utf8_len: not past n");
}

int main(void)
{
    if (mkdtemp(tmpdir) == NULL)
        test_bail("mkdtemp failed");
    test_secure_memory();
    test_constant_time();
    test_secure_file();
    test_hmap();
    test_attrs_packed();
    test_attrs_inside();
    test_attrs_shapes();
    test_attrs_reserved();
    test_names();
    test_hex();
    test_logging();
    test_debug_env();
    test_rotpolicy();
    test_json();
    rmdir(tmpdir);
    return test_done();
}
