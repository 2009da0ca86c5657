/*
 * rsa_key_objects() (module/rsa.c), which every back end uses to turn a
 * key version into its two objects: when it fails (here: an expiry date
 * gmtime() cannot represent, which a vault's "exp": 1e300 became before
 * dates were clamped) it leaves nothing allocated behind; the keyvault
 * back end leaked about 3 KB per listing. A leak checker run (make
 * memcheck, a sanitizer build) sees any that remains.
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
    return test_done();
}
