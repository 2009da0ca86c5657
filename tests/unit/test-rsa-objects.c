/*
 * rsa_key_objects() (module/rsa.c), which every back end uses to turn a
 * key version into its two objects: when it fails (here: an expiry date
 * gmtime() cannot represent, which a vault's "exp": 1e300 became before
 * dates were clamped) it leaves nothing allocated behind; the keyvault
 * back end leaked about 3 KB per listing. A leak checker run (make
 * memcheck, a sanitizer build) sees any that remains. And objects with one
 * public key share one EVP_PKEY.
 */
#include "config.h"

#include <string.h>

#include "module.h"
#include "rsa.h"
#include "test.h"

static bool cleared(const struct pobj *o)
{
    static const struct pobj zero;

    return memcmp(o, &zero, sizeof(zero)) == 0;
}

/* An object holding just a public key's modulus and exponent. */
static void key_object(struct object *o, const CK_BYTE *n, CK_ULONG nlen)
{
    static const CK_BYTE e[] = {1, 0, 1};

    memset(o, 0, sizeof(*o));
    attrs_set(&o->attrs, CKA_MODULUS, n, nlen);
    attrs_set(&o->attrs, CKA_PUBLIC_EXPONENT, e, sizeof(e));
    attrs_compact(&o->attrs);
}

/* rsa_object_pkey(): objects with the same public key (a version's private
 * and public objects, the same key in two vaults) share one EVP_PKEY; the
 * last release frees it (a leak checker sees it otherwise). */
static void test_shared_pkey(void)
{
    static CK_BYTE n1[256], n2[256];
    struct object a, b, c;
    EVP_PKEY *pa, *pb, *pc;

    memset(n1, 0xc5, sizeof(n1));
    memset(n2, 0xc5, sizeof(n2));
    n2[255] = 0xc7;
    key_object(&a, n1, sizeof(n1));
    key_object(&b, n1, sizeof(n1));
    key_object(&c, n2, sizeof(n2));
    pa = rsa_object_pkey(&a);
    pb = rsa_object_pkey(&b);
    pc = rsa_object_pkey(&c);
    ok(pa != NULL && pa == pb, "two objects of one key share its EVP_PKEY");
    ok(pc != NULL && pc != pa && EVP_PKEY_get_bits(pc) == 2048,
       "another modulus has its own");
    ok(rsa_object_pkey(&a) == pa, "the object keeps it");
    rsa_pkey_release(a.pkey);
    ok(rsa_object_pkey(&b) == pb && EVP_PKEY_get_bits(pb) == 2048,
       "released by one object, still there for the other");
    rsa_pkey_release(b.pkey);
    b.pkey = NULL;
    pb = rsa_object_pkey(&b);
    ok(pb != NULL && EVP_PKEY_get_bits(pb) == 2048,
       "built again after the last release");
    rsa_pkey_release(b.pkey);
    rsa_pkey_release(c.pkey);
    attrs_clear(&a.attrs);
    attrs_clear(&b.attrs);
    attrs_clear(&c.attrs);
}

int main(void)
{
    static CK_BYTE n[256], e[] = {1, 0, 1};
    struct rsa_key_desc d;
    struct pobj priv, pub;
    int i;

    memset(n, 0xc5, sizeof(n));
    memset(&d, 0, sizeof(d));
    d.uid_prefix = "kv/big/1";
    d.label = "big";
    d.key_name = "big";
    d.version = "1";
    d.exponent = e;
    d.exponent_len = sizeof(e);
    d.modulus = n;

    d.modulus_len = sizeof(n);
    ok(rsa_key_objects(&d, &priv, &pub) == 0 && priv.uid != NULL &&
           strcmp(pub.uid, "kv/big/1/public") == 0,
       "a 2048-bit key with sane dates gives two objects");
    pobj_clear(NULL, NULL, &priv);
    pobj_clear(NULL, NULL, &pub);

    /* Year 36 billion or so: no struct tm holds it. */
    d.expires = 1LL << 60;
    for (i = 0; i < 3; i++) {
        memset(&priv, 0x5a, sizeof(priv));
        memset(&pub, 0x5a, sizeof(pub));
        ok(rsa_key_objects(&d, &priv, &pub) == -1,
           "an expiry of 2^60 s is refused (try %d)", i + 1);
        ok(cleared(&priv) && cleared(&pub),
           "and both objects are left empty, nothing to free");
    }
    test_shared_pkey();
    return test_done();
}
