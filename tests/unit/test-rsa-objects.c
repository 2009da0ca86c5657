/*
 * rsa_key_objects() (module/rsa.c), which every back end uses to turn a
 * key version into its two objects: when it fails (here: an expiry date
 * gmtime() cannot represent, which a vault's "exp": 1e300 became before
 * dates were clamped) it leaves nothing allocated behind; the keyvault
 * back end leaked about 3 KB per listing. A leak checker run (make
 * memcheck, a sanitizer build) sees any that remains. And objects with one
 * public key share one EVP_PKEY, in a cache of bounded size. And both
 * objects' CKA_PUBLIC_KEY_INFO, which rsa_key_objects() encodes itself, is
 * byte for byte what OpenSSL's i2d_PUBKEY() writes for the same key.
 */
#include "config.h"

#include <string.h>

#include <openssl/x509.h>

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
 * and public objects, the same key in two vaults) share one EVP_PKEY, which
 * stays cached when the operation drops its reference. */
static void test_shared_pkey(void)
{
    static CK_BYTE n1[256], n2[256];
    struct object a, b, c;
    struct rsa_pkey *pa, *pb, *pc;
    size_t before = rsa_pkey_cached();

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
    ok(pc != NULL && pc != pa && EVP_PKEY_get_bits(rsa_pkey_evp(pc)) == 2048,
       "another modulus has its own");
    rsa_pkey_unref(pa);
    rsa_pkey_unref(pb);
    rsa_pkey_unref(pc);
    ok(rsa_pkey_cached() == before + 2, "both stay cached after use");
    pb = rsa_object_pkey(&b);
    ok(pb == pa && EVP_PKEY_get_bits(rsa_pkey_evp(pb)) == 2048,
       "the next use finds the cached key");
    rsa_pkey_unref(pb);
    attrs_clear(&a.attrs);
    attrs_clear(&b.attrs);
    attrs_clear(&c.attrs);
}

/* Use o[i]'s key once. */
static void use(struct object *o)
{
    rsa_pkey_unref(rsa_object_pkey(o));
}

/* The cache holds RSA_PKEY_CACHE_MAX keys, pushes out the least recently
 * used one, and never frees a key an operation still holds (a sanitizer
 * build or valgrind sees a use after free otherwise). */
static void test_bounded_pkeys(void)
{
    enum { N = RSA_PKEY_CACHE_MAX + 2 };
    static CK_BYTE n[N][256];
    static struct object o[N];
    struct rsa_pkey *h0, *h0b, *h2, *h3;
    int i;

    for (i = 0; i < N; i++) {
        memset(n[i], 0xd3, sizeof(n[i]));
        n[i][254] = (CK_BYTE)(i >> 8);
        n[i][255] = (CK_BYTE)i;
        key_object(&o[i], n[i], sizeof(n[i]));
    }
    h0 = rsa_object_pkey(&o[0]); /* held throughout */
    for (i = 1; i <= RSA_PKEY_CACHE_MAX; i++)
        use(&o[i]);
    ok(rsa_pkey_cached() == RSA_PKEY_CACHE_MAX,
       "%d distinct keys used: %d cached", RSA_PKEY_CACHE_MAX + 1,
       RSA_PKEY_CACHE_MAX);
    ok(h0 != NULL && EVP_PKEY_get_bits(rsa_pkey_evp(h0)) == 2048,
       "the least recently used key, pushed out, is still whole for the "
       "operation holding it");
    h0b = rsa_object_pkey(&o[0]);
    ok(h0b != NULL && h0b != h0 && EVP_PKEY_get_bits(rsa_pkey_evp(h0b)) == 2048,
       "its next use builds it again from the object's modulus");
    rsa_pkey_unref(h0);
    rsa_pkey_unref(h0b);

    /* Cached now, oldest first: o[2] .. o[MAX], o[0]. Use o[3] and o[2]
     * again; the next new key pushes out o[4], not them. */
    h3 = rsa_object_pkey(&o[3]);
    h2 = rsa_object_pkey(&o[2]);
    use(&o[N - 1]);
    ok(rsa_pkey_cached() == RSA_PKEY_CACHE_MAX, "still %d cached",
       RSA_PKEY_CACHE_MAX);
    h0b = rsa_object_pkey(&o[2]);
    ok(h0b == h2, "a key used recently stays cached");
    rsa_pkey_unref(h0b);
    h0b = rsa_object_pkey(&o[3]);
    ok(h0b == h3, "so does the one used just before it");
    rsa_pkey_unref(h0b);
    rsa_pkey_unref(h2);
    rsa_pkey_unref(h3);
    for (i = 0; i < N; i++)
        attrs_clear(&o[i].attrs);
    rsa_pkey_flush();
    ok(rsa_pkey_cached() == 0, "C_Finalize's flush empties the cache");
}

/* CKA_PUBLIC_KEY_INFO of both objects of (N, E) against i2d_PUBKEY. */
static void spki_case(const char *what, const CK_BYTE *n, CK_ULONG nlen,
                      const CK_BYTE *e, CK_ULONG elen)
{
    struct rsa_key_desc d;
    struct pobj priv, pub;
    EVP_PKEY *pk = rsa_pkey_from_parts(n, nlen, e, elen);
    unsigned char *der = NULL;
    int len = pk ? i2d_PUBKEY(pk, &der) : -1;
    const CK_ATTRIBUTE *a, *b;

    memset(&d, 0, sizeof(d));
    d.uid_prefix = "t/spki/1";
    d.label = d.key_name = "spki";
    d.version = "1";
    d.modulus = n;
    d.modulus_len = nlen;
    d.exponent = e;
    d.exponent_len = elen;
    if (rsa_key_objects(&d, &priv, &pub) != 0) {
        ok(0, "%s: rsa_key_objects", what);
        goto out;
    }
    a = attrs_find(&priv.attrs, CKA_PUBLIC_KEY_INFO);
    b = attrs_find(&pub.attrs, CKA_PUBLIC_KEY_INFO);
    ok(len > 0 && a && b && a->ulValueLen == (CK_ULONG)len &&
           b->ulValueLen == (CK_ULONG)len &&
           memcmp(a->pValue, der, (size_t)len) == 0 &&
           memcmp(b->pValue, der, (size_t)len) == 0,
       "%s: CKA_PUBLIC_KEY_INFO of both objects is OpenSSL's DER (%d bytes)",
       what, len);
    pobj_clear(NULL, NULL, &priv);
    pobj_clear(NULL, NULL, &pub);
out:
    OPENSSL_free(der);
    EVP_PKEY_free(pk);
}

static void test_spki(void)
{
    static CK_BYTE n[1024], e[] = {1, 0, 1}, e3[] = {3},
                            e_lead[] = {0, 0, 1, 0, 1}, e_high[] = {0x81};
    size_t i;

    for (i = 0; i < sizeof(n); i++)
        n[i] = (CK_BYTE)(0x9b ^ (i * 7));
    n[0] = 0xc1; /* the high bit set: a zero byte before it */
    spki_case("2048 bits", n, 256, e, sizeof(e));
    spki_case("3072 bits, e = 3", n, 384, e3, sizeof(e3));
    spki_case("8192 bits", n, 1024, e, sizeof(e));
    spki_case("a 64-byte modulus (short lengths)", n, 64, e, sizeof(e));
    spki_case("an exponent with its high bit set", n, 256, e_high,
              sizeof(e_high));
    spki_case("an exponent with leading zero bytes", n, 256, e_lead,
              sizeof(e_lead));
    n[0] = 0x41; /* no high bit */
    spki_case("a modulus whose top bit is clear", n, 256, e, sizeof(e));
    n[0] = 0;
    n[1] = 0;
    n[2] = 0x85; /* leading zero bytes, as a JWK \"n\" may carry one */
    spki_case("a modulus with two leading zero bytes", n, 258, e, sizeof(e));
    n[2] = 0x05;
    spki_case("leading zero bytes, then no high bit", n, 258, e, sizeof(e));
    n[0] = 0x80;
    spki_case("a 127-byte INTEGER: the longest short length", n, 126, e,
              sizeof(e));
    spki_case("a 128-byte INTEGER: the shortest long length", n, 127, e,
              sizeof(e));
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
    test_bounded_pkeys();
    test_spki();
    return test_done();
}
