/*
 * Attribute arrays: CK_ATTRIBUTE vectors whose values the array owns.
 */
#ifndef CMKP11_ATTRS_H
#define CMKP11_ATTRS_H

#include "compat.h"

struct attr_cell;
struct attr_shape;

struct attrs {
    CK_ATTRIBUTE *v; /* NULL once packed */
    CK_ULONG n;
    CK_ULONG alloc;
    /* Once packed (attrs_compact): the n attributes as cells shared with
     * every other packed array that holds the same type and value, and
     * the bytes of that vector; 0 while the values are the array's own. */
    struct attr_cell **cells;
    size_t packed;
    /* Packed: the first own attributes are cells, the others those of
     * its shape (its small values, held once for all the arrays that
     * have the same). */
    CK_ULONG own;
    struct attr_shape *shape;
    /* Made by attrs_reserve: the bytes of the one allocation that holds
     * the vector and the values, and how many of them are used; 0 while
     * each value is an allocation of its own. */
    size_t block, block_used;
};

void attrs_init(struct attrs *a);
/* Frees the values (wiping them) and the vector. */
void attrs_clear(struct attrs *a);
/* Makes an empty array one allocation with room for n attributes and
 * value_bytes bytes of values (attrs_value_room), which attrs_set fills
 * while they fit: an array that lives for a call or two (a session key)
 * then costs one allocation, not one per value. A change that does not
 * fit gives every value its own allocation first. -1 on ENOMEM or an
 * array that is not empty (left as it was). */
int attrs_reserve(struct attrs *a, CK_ULONG n, size_t value_bytes);
/* The bytes values of these lengths take in a reserved array, or
 * SIZE_MAX when that overflows. */
size_t attrs_value_room(const CK_ATTRIBUTE *t, CK_ULONG n);
/* Sets (adds or replaces) an attribute, copying the value. -1 on ENOMEM. */
int attrs_set(struct attrs *a, CK_ATTRIBUTE_TYPE type, const void *value,
              CK_ULONG len);
int attrs_set_bool(struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_BBOOL v);
int attrs_set_ulong(struct attrs *a, CK_ATTRIBUTE_TYPE type, CK_ULONG v);
int attrs_set_string(struct attrs *a, CK_ATTRIBUTE_TYPE type, const char *s);
int attrs_copy(struct attrs *dst, const struct attrs *src);
/* Adds every attribute of the template (replacing). */
int attrs_merge(struct attrs *a, const CK_ATTRIBUTE *tmpl, CK_ULONG n);
/* Borrows the attribute, or NULL. Read only: in a packed array it is
 * shared with other arrays. */
CK_ATTRIBUTE *attrs_find(const struct attrs *a, CK_ATTRIBUTE_TYPE type);
int attrs_remove(struct attrs *a, CK_ATTRIBUTE_TYPE type);
/* Packs the array for long-lived objects: a vector of pointers to cells,
 * each one (type, value) held once however many packed arrays have it
 * (the private and public objects of a key share their modulus, SPKI,
 * label and vendor attributes; every object shares its flags), counted.
 * Secret values (CKA_VALUE, RSA private components) get cells of their
 * own. A later change unpacks it first. -1 on ENOMEM (the array is left
 * as it was). */
int attrs_compact(struct attrs *a);
/* A counted reference to the shared cell for (type, value), the one every
 * packed array with that attribute shares: a record that lives as long as
 * the objects made from it (a back end's key version) keeps a value there
 * rather than a copy of its own. Read only. NULL on ENOMEM or for a type
 * that may be secret (never shared). attrs_release (NULL is fine) gives it
 * back. A modulus packed with its CKA_PUBLIC_KEY_INFO is held inside it,
 * once. */
const CK_ATTRIBUTE *attrs_hold(CK_ATTRIBUTE_TYPE type, const void *value,
                               CK_ULONG len);
void attrs_release(const CK_ATTRIBUTE *held);
/* Fork: the shared cells' lock. */
void attrs_atfork_prepare(void);
void attrs_atfork_release(void);
/* Cells in use (tests). */
size_t attrs_cells_count(void);

/* Lookups in a caller's template. find_* return 1 if found and valid,
 * 0 if absent, -1 if present with a bad length. */
const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *t, CK_ULONG n,
                              CK_ATTRIBUTE_TYPE type);
int tmpl_find_bool(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type,
                   CK_BBOOL *v);
int tmpl_find_ulong(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type,
                    CK_ULONG *v);
/* True if the template gives one attribute twice with different values:
 * PKCS#11 2.40 4.1.1 makes conflicting values CKR_TEMPLATE_INCONSISTENT
 * and lets the same value given twice count once. */
bool tmpl_conflicting(const CK_ATTRIBUTE *t, CK_ULONG n);

/* True if every attribute of the template is present in a with an equal
 * value (the FindObjects rule). */
bool attrs_match(const struct attrs *a, const CK_ATTRIBUTE *tmpl, CK_ULONG n);

bool attrs_get_bool(const struct attrs *a, CK_ATTRIBUTE_TYPE type, bool dflt);
CK_ULONG attrs_get_ulong(const struct attrs *a, CK_ATTRIBUTE_TYPE type,
                         CK_ULONG dflt);

#endif
