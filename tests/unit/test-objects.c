/*
 * Objects: C_FindObjects*, C_GetAttributeValue, C_SetAttributeValue,
 * C_DestroyObject, C_CopyObject, C_GetObjectSize, and the attributes
 * product.md promises on key objects.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"

static CK_SESSION_HANDLE sess;

static CK_ULONG find_all(CK_ATTRIBUTE *t, CK_ULONG nt, CK_OBJECT_HANDLE *out,
                         CK_ULONG max)
{
    CK_ULONG n = 0;

    if (p11->C_FindObjectsInit(sess, t, nt) != CKR_OK)
        return 999;
    if (p11->C_FindObjects(sess, out, max, &n) != CKR_OK)
        n = 999;
    p11->C_FindObjectsFinal(sess);
    return n;
}

static bool attr_is(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type,
                    const void *want, CK_ULONG len)
{
    CK_ULONG got = 0;
    void *v = p11_attr(sess, o, type, &got);
    bool same = v != NULL && got == len && memcmp(v, want, len) == 0;

    free(v);
    return same;
}

static void test_find(void)
{
    CK_OBJECT_HANDLE objs[64], page;
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY, pub = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE by_class = {CKA_CLASS, &priv, sizeof(priv)};
    CK_ATTRIBUTE by_label = {CKA_LABEL, (void *)"mock-key", 8};
    CK_BYTE id1 = 0x01, id2 = 0x02;
    CK_ATTRIBUTE by_id = {CKA_ID, &id1, 1};
    CK_ATTRIBUTE bad_type = {0x7fff0001UL, &id1, 1};
    CK_ULONG n = 0, total = 0, i, calls = 0;
    bool two_classes;

    is_rv(p11->C_FindObjectsInit(sess, NULL, 1), CKR_ARGUMENTS_BAD,
          "C_FindObjectsInit(NULL template, count 1)");
    is_rv(p11->C_FindObjects(sess, objs, 4, &n), CKR_OPERATION_NOT_INITIALIZED,
          "C_FindObjects without Init");
    is_rv(p11->C_FindObjectsFinal(sess), CKR_OPERATION_NOT_INITIALIZED,
          "C_FindObjectsFinal without Init");
    is_rv(p11->C_FindObjectsInit(sess, NULL, 0), CKR_OK,
          "C_FindObjectsInit(NULL, 0)");
    is_rv(p11->C_FindObjectsInit(sess, NULL, 0), CKR_OPERATION_ACTIVE,
          "C_FindObjectsInit twice");
    is_rv(p11->C_FindObjects(sess, NULL, 4, &n), CKR_ARGUMENTS_BAD,
          "C_FindObjects(NULL handles)");
    is_rv(p11->C_FindObjects(sess, objs, 4, NULL), CKR_ARGUMENTS_BAD,
          "C_FindObjects(NULL count)");
    is_rv(p11->C_FindObjects(sess, objs, 64, &n), CKR_OK, "C_FindObjects");
    is_num(n, 8, "four key versions, eight objects");
    is_rv(p11->C_FindObjects(sess, objs, 64, &n), CKR_OK,
          "C_FindObjects after the end");
    is_num(n, 0, "nothing more");
    is_rv(p11->C_FindObjectsFinal(sess), CKR_OK, "C_FindObjectsFinal");
    is_rv(p11->C_FindObjectsFinal(sess), CKR_OPERATION_NOT_INITIALIZED,
          "C_FindObjectsFinal twice");

    is_num(find_all(&by_class, 1, objs, 64), 4, "four private keys");
    by_class.pValue = &pub;
    is_num(find_all(&by_class, 1, objs, 64), 4, "four public keys");

    n = find_all(&by_label, 1, objs, 64);
    is_num(n, 2, "label mock-key: one pair, the current version");
    two_classes = n == 2;
    for (i = 0; i < n && i < 2; i++) {
        ok(attr_is(objs[i], CKA_ID, &id2, 1), "  object %lu has CKA_ID 02", i);
        ok(p11_bool(sess, objs[i], CKA_CMK_CURRENT) == 1, "  and is current");
    }
    if (two_classes) {
        CK_ULONG la = 0, lb = 0;
        CK_OBJECT_CLASS *ca = p11_attr(sess, objs[0], CKA_CLASS, &la);
        CK_OBJECT_CLASS *cb = p11_attr(sess, objs[1], CKA_CLASS, &lb);
        ok(ca && cb && *ca != *cb, "a private and a public key");
        free(ca);
        free(cb);
    }
    n = find_all(&by_id, 1, objs, 64);
    is_num(n, 2, "CKA_ID 01: the old version's pair");
    for (i = 0; i < n && i < 2; i++) {
        ok(attr_is(objs[i], CKA_LABEL, "mock-key@01", 11),
           "  labelled mock-key@01");
        ok(p11_bool(sess, objs[i], CKA_CMK_CURRENT) == 0, "  and not current");
    }
    {
        CK_ATTRIBUTE both[2] = {{CKA_LABEL, (void *)"mock-key", 8},
                                {CKA_ID, &id1, 1}};
        is_num(find_all(both, 2, objs, 64), 0,
               "label mock-key with the old CKA_ID: nothing");
    }
    is_num(find_all(&bad_type, 1, objs, 64), 0,
           "an attribute no object has: nothing");
    {
        CK_ATTRIBUTE none = {CKA_LABEL, (void *)"no-such-key", 11};
        is_num(find_all(&none, 1, objs, 64), 0, "unknown label: nothing");
    }

    /* Paging, one at a time. */
    is_rv(p11->C_FindObjectsInit(sess, NULL, 0), CKR_OK, "Init for paging");
    for (;;) {
        n = 0;
        if (p11->C_FindObjects(sess, &page, 1, &n) != CKR_OK || n == 0)
            break;
        calls++;
        total += n;
        if (n > 1 || calls > 20)
            break;
        for (i = 0; i < total - 1; i++)
            if (objs[i] == page)
                total = 1000;
        if (total < 64)
            objs[total - 1] = page;
    }
    p11->C_FindObjectsFinal(sess);
    is_num(total, 8, "paging with max 1 gives eight distinct objects");
    is_num(calls, 8, "in eight calls");
}

static void test_rsa_attributes(void)
{
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "mock-key");
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "mock-key");
    CK_OBJECT_HANDLE dis = p11_find(sess, CKO_PRIVATE_KEY, "disabled-key");
    CK_OBJECT_HANDLE so = p11_find(sess, CKO_PRIVATE_KEY, "sign-only");
    CK_OBJECT_HANDLE sop = p11_find(sess, CKO_PUBLIC_KEY, "sign-only");
    CK_BYTE *n1, *n2, *e, *spki;
    CK_ULONG l1 = 0, l2 = 0, le = 0, ls = 0, bits = 0;
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE a[2] = {{CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_MODULUS_BITS, &bits, sizeof(bits)}};

    ok(priv && pub && dis && so && sop, "mock keys found");
    ok(p11_bool(sess, priv, CKA_SENSITIVE) == 1, "private: CKA_SENSITIVE");
    ok(p11_bool(sess, priv, CKA_ALWAYS_SENSITIVE) == 1,
       "private: CKA_ALWAYS_SENSITIVE");
    ok(p11_bool(sess, priv, CKA_NEVER_EXTRACTABLE) == 1,
       "private: CKA_NEVER_EXTRACTABLE");
    ok(p11_bool(sess, priv, CKA_EXTRACTABLE) == 0,
       "private: not CKA_EXTRACTABLE");
    ok(p11_bool(sess, priv, CKA_TOKEN) == 1, "private: CKA_TOKEN");
    ok(p11_bool(sess, priv, CKA_DECRYPT) == 1 &&
           p11_bool(sess, priv, CKA_UNWRAP) == 1 &&
           p11_bool(sess, priv, CKA_SIGN) == 1,
       "private: decrypt, unwrap, sign");
    ok(p11_bool(sess, pub, CKA_ENCRYPT) == 1 &&
           p11_bool(sess, pub, CKA_WRAP) == 1 &&
           p11_bool(sess, pub, CKA_VERIFY) == 1,
       "public: encrypt, wrap, verify");
    ok(p11_bool(sess, priv, CKA_MODIFIABLE) == 0 &&
           p11_bool(sess, priv, CKA_COPYABLE) == 0,
       "token keys are neither modifiable nor copyable");
    ok(p11_bool(sess, dis, CKA_DECRYPT) == 0 &&
           p11_bool(sess, dis, CKA_UNWRAP) == 0 &&
           p11_bool(sess, dis, CKA_SIGN) == 0,
       "disabled-key: no decrypt, unwrap or sign");
    ok(p11_bool(sess, dis, CKA_CMK_ENABLED) == 0,
       "disabled-key: CKA_CMK_ENABLED");
    ok(p11_bool(sess, priv, CKA_CMK_ENABLED) == 1, "mock-key: CKA_CMK_ENABLED");
    ok(p11_bool(sess, so, CKA_UNWRAP) == 0 &&
           p11_bool(sess, so, CKA_DECRYPT) == 0,
       "sign-only: no unwrap, no decrypt");
    ok(p11_bool(sess, so, CKA_SIGN) == 1, "sign-only: sign");
    ok(p11_bool(sess, sop, CKA_WRAP) == 0 &&
           p11_bool(sess, sop, CKA_ENCRYPT) == 0 &&
           p11_bool(sess, sop, CKA_VERIFY) == 1,
       "sign-only public: verify only");

    is_rv(p11->C_GetAttributeValue(sess, priv, a, 2), CKR_OK,
          "key type and size");
    is_num(kt, CKK_RSA, "CKK_RSA");
    is_num(bits, 2048, "2048 bits");

    n1 = p11_attr(sess, priv, CKA_MODULUS, &l1);
    n2 = p11_attr(sess, pub, CKA_MODULUS, &l2);
    e = p11_attr(sess, pub, CKA_PUBLIC_EXPONENT, &le);
    spki = p11_attr(sess, priv, CKA_PUBLIC_KEY_INFO, &ls);
    ok(n1 && n2 && l1 == 256 && l1 == l2 && memcmp(n1, n2, l1) == 0,
       "both halves have the same 256-byte modulus");
    if (n1 && e && spki) {
        const unsigned char *p = spki;
        EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)ls);
        BIGNUM *bn = NULL, *be = NULL;
        BIGNUM *mn = BN_bin2bn(n1, (int)l1, NULL);
        BIGNUM *me = BN_bin2bn(e, (int)le, NULL);
        ok(pk != NULL &&
               EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &bn) == 1 &&
               EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &be) == 1 &&
               BN_cmp(bn, mn) == 0 && BN_cmp(be, me) == 0,
           "CKA_PUBLIC_KEY_INFO matches CKA_MODULUS and CKA_PUBLIC_EXPONENT");
        BN_free(bn);
        BN_free(be);
        BN_free(mn);
        BN_free(me);
        EVP_PKEY_free(pk);
    } else {
        ok(0, "CKA_PUBLIC_KEY_INFO matches CKA_MODULUS and exponent");
    }
    free(n1);
    free(n2);
    free(e);
    free(spki);

    /* Vendor attributes. */
    ok(attr_is(priv, CKA_CMK_BACKEND, "mock", 4), "CKA_CMK_BACKEND");
    ok(attr_is(priv, CKA_CMK_KEY_NAME, "mock-key", 8), "CKA_CMK_KEY_NAME");
    ok(attr_is(pub, CKA_CMK_VERSION, "02", 2), "CKA_CMK_VERSION");
    ok(attr_is(so, CKA_CMK_KEY_OPS, "sign,verify", 11), "CKA_CMK_KEY_OPS");
    ok(attr_is(priv, CKA_CMK_KEY_TYPE, "RSA", 3), "CKA_CMK_KEY_TYPE");
    ok(p11_bool(sess, priv, CKA_CMK_CURRENT) == 1, "CKA_CMK_CURRENT");
}

static void test_get_attribute_rules(void)
{
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "mock-key");
    CK_BYTE small[4], label[64], exp[512];
    CK_BBOOL sign = 0;
    CK_OBJECT_CLASS cls = 0;
    CK_ATTRIBUTE q = {CKA_LABEL, NULL, 0};
    CK_ATTRIBUTE three[3] = {{CKA_CLASS, &cls, sizeof(cls)},
                             {0x7fff0002UL, label, sizeof(label)},
                             {CKA_SIGN, &sign, sizeof(sign)}};
    CK_ATTRIBUTE sens[2] = {{CKA_PRIVATE_EXPONENT, exp, sizeof(exp)},
                            {CKA_LABEL, label, sizeof(label)}};

    is_rv(p11->C_GetAttributeValue(sess, priv, NULL, 1), CKR_ARGUMENTS_BAD,
          "NULL template");
    is_rv(p11->C_GetAttributeValue(sess, priv, &q, 1), CKR_OK,
          "length query with NULL pValue");
    is_num(q.ulValueLen, 8, "CKA_LABEL length");
    q.pValue = small;
    q.ulValueLen = sizeof(small);
    is_rv(p11->C_GetAttributeValue(sess, priv, &q, 1), CKR_BUFFER_TOO_SMALL,
          "short buffer");
    is_num(q.ulValueLen, CK_UNAVAILABLE_INFORMATION,
           "short buffer: CK_UNAVAILABLE_INFORMATION");
    is_rv(p11->C_GetAttributeValue(sess, priv, three, 3),
          CKR_ATTRIBUTE_TYPE_INVALID, "unknown attribute");
    is_num(three[1].ulValueLen, CK_UNAVAILABLE_INFORMATION,
           "unknown attribute: CK_UNAVAILABLE_INFORMATION");
    is_num(cls, CKO_PRIVATE_KEY, "the attribute before it is filled");
    ok(sign == CK_TRUE && three[2].ulValueLen == 1,
       "the attribute after it is filled");
    is_rv(p11->C_GetAttributeValue(sess, priv, sens, 2),
          CKR_ATTRIBUTE_SENSITIVE, "CKA_PRIVATE_EXPONENT");
    is_num(sens[0].ulValueLen, CK_UNAVAILABLE_INFORMATION,
           "sensitive: CK_UNAVAILABLE_INFORMATION");
    ok(sens[1].ulValueLen == 8 && memcmp(label, "mock-key", 8) == 0,
       "the label in the same call is filled");
    sens[0].type = CKA_PRIME_1;
    sens[0].ulValueLen = sizeof(exp);
    is_rv(p11->C_GetAttributeValue(sess, priv, sens, 1),
          CKR_ATTRIBUTE_SENSITIVE, "CKA_PRIME_1");
    is_rv(p11->C_GetAttributeValue(sess, 0, &q, 1), CKR_OBJECT_HANDLE_INVALID,
          "object handle 0");
    is_rv(p11->C_GetAttributeValue(sess, 0x7ffffff0UL, &q, 1),
          CKR_OBJECT_HANDLE_INVALID, "unknown object handle");
    is_rv(p11->C_GetAttributeValue(sess, priv, NULL, 0), CKR_OK,
          "empty template");
}

static void test_secret_keys(void)
{
    static const CK_BYTE value[16] = "0123456789abcdef";
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &sk, sizeof(sk)},     {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_VALUE, (void *)value, 16},   {CKA_SENSITIVE, &f, sizeof(f)},
        {CKA_EXTRACTABLE, &t, sizeof(t)}, {CKA_LABEL, (void *)"plain", 5},
    };
    CK_OBJECT_HANDLE plain = 0, secret, objs[64], copy = 0;
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "mock-key");
    CK_SESSION_HANDLE other = p11_open(0, false);
    CK_BYTE buf[64];
    CK_ATTRIBUTE v = {CKA_VALUE, buf, sizeof(buf)};
    CK_ATTRIBUTE set;
    CK_ATTRIBUTE by_class = {CKA_CLASS, &sk, sizeof(sk)};
    CK_ULONG size = 0;

    is_rv(p11->C_CreateObject(sess, tmpl, CMK_ARRAY_SIZE(tmpl), &plain), CKR_OK,
          "C_CreateObject AES key");
    secret = p11_aes_key(sess, 32, false, true);
    ok(secret != 0, "sensitive AES key generated");
    is_rv(p11->C_GetAttributeValue(sess, plain, &v, 1), CKR_OK,
          "CKA_VALUE of a non-sensitive extractable key");
    ok(v.ulValueLen == 16 && memcmp(buf, value, 16) == 0, "  is the value");
    v.ulValueLen = sizeof(buf);
    is_rv(p11->C_GetAttributeValue(sess, secret, &v, 1),
          CKR_ATTRIBUTE_SENSITIVE, "CKA_VALUE of a sensitive key");
    is_num(v.ulValueLen, CK_UNAVAILABLE_INFORMATION, "  unavailable");
    ok(p11_bool(sess, secret, CKA_ALWAYS_SENSITIVE) == 1 &&
           p11_bool(sess, secret, CKA_NEVER_EXTRACTABLE) == 1 &&
           p11_bool(sess, secret, CKA_LOCAL) == 1,
       "generated: ALWAYS_SENSITIVE, NEVER_EXTRACTABLE, LOCAL");
    ok(p11_bool(sess, plain, CKA_ALWAYS_SENSITIVE) == 0 &&
           p11_bool(sess, plain, CKA_LOCAL) == 0,
       "imported: not ALWAYS_SENSITIVE, not LOCAL");
    ok(p11_bool(sess, plain, CKA_TOKEN) == 0,
       "session object: CKA_TOKEN false");
    {
        CK_ULONG vl = 0;
        CK_ATTRIBUTE a = {CKA_VALUE_LEN, &vl, sizeof(vl)};
        p11->C_GetAttributeValue(sess, secret, &a, 1);
        is_num(vl, 32, "CKA_VALUE_LEN 32");
    }
    is_num(find_all(&by_class, 1, objs, 64), 2, "two secret keys found");
    ok(attr_is(plain, CKA_LABEL, "plain", 5), "label from the template");
    {
        CK_ATTRIBUTE l = {CKA_LABEL, buf, sizeof(buf)};
        is_rv(p11->C_GetAttributeValue(other, plain, &l, 1), CKR_OK,
              "another session of the application sees the session object");
    }

    /* C_SetAttributeValue */
    set.type = CKA_LABEL;
    set.pValue = (void *)"renamed";
    set.ulValueLen = 7;
    is_rv(p11->C_SetAttributeValue(sess, priv, &set, 1), CKR_ACTION_PROHIBITED,
          "C_SetAttributeValue on a token key");
    ok(attr_is(priv, CKA_LABEL, "mock-key", 8), "token key label unchanged");
    is_rv(p11->C_SetAttributeValue(sess, plain, &set, 1), CKR_OK,
          "C_SetAttributeValue label of a session key");
    ok(attr_is(plain, CKA_LABEL, "renamed", 7), "label changed");
    is_rv(p11->C_SetAttributeValue(sess, plain, NULL, 1), CKR_ARGUMENTS_BAD,
          "C_SetAttributeValue(NULL)");
    set.type = CKA_SENSITIVE;
    set.pValue = &f;
    set.ulValueLen = sizeof(f);
    is_rv(p11->C_SetAttributeValue(sess, secret, &set, 1),
          CKR_ATTRIBUTE_READ_ONLY, "CKA_SENSITIVE true to false");
    ok(p11_bool(sess, secret, CKA_SENSITIVE) == 1, "  still sensitive");
    set.pValue = &t;
    is_rv(p11->C_SetAttributeValue(sess, plain, &set, 1), CKR_OK,
          "CKA_SENSITIVE false to true");
    v.ulValueLen = sizeof(buf);
    is_rv(p11->C_GetAttributeValue(sess, plain, &v, 1), CKR_ATTRIBUTE_SENSITIVE,
          "  and now CKA_VALUE is sensitive");
    set.type = CKA_EXTRACTABLE;
    is_rv(p11->C_SetAttributeValue(sess, secret, &set, 1),
          CKR_ATTRIBUTE_READ_ONLY, "CKA_EXTRACTABLE false to true");
    set.type = CKA_CLASS;
    set.pValue = &sk;
    set.ulValueLen = sizeof(sk);
    is_rv(p11->C_SetAttributeValue(sess, plain, &set, 1),
          CKR_ATTRIBUTE_READ_ONLY, "CKA_CLASS");
    set.type = CKA_VALUE;
    set.pValue = buf;
    set.ulValueLen = 16;
    is_rv(p11->C_SetAttributeValue(sess, plain, &set, 1),
          CKR_ATTRIBUTE_READ_ONLY, "CKA_VALUE");

    /* Size, copy, destroy. */
    is_rv(p11->C_GetObjectSize(sess, plain, NULL), CKR_ARGUMENTS_BAD,
          "C_GetObjectSize(NULL)");
    is_rv(p11->C_GetObjectSize(sess, plain, &size), CKR_OK, "C_GetObjectSize");
    is_num(size, CK_UNAVAILABLE_INFORMATION, "size is unavailable");
    is_rv(p11->C_GetObjectSize(sess, 0x7ffffff0UL, &size),
          CKR_OBJECT_HANDLE_INVALID, "C_GetObjectSize invalid handle");
    is_rv(p11->C_CopyObject(sess, plain, NULL, 0, &copy), CKR_ACTION_PROHIBITED,
          "C_CopyObject (CKA_COPYABLE false)");
    ok(p11_bool(sess, plain, CKA_COPYABLE) == 0, "CKA_COPYABLE false");
    is_rv(p11->C_CopyObject(sess, plain, NULL, 0, NULL), CKR_ARGUMENTS_BAD,
          "C_CopyObject(NULL handle pointer)");
    is_rv(p11->C_CopyObject(sess, 0x7ffffff0UL, NULL, 0, &copy),
          CKR_OBJECT_HANDLE_INVALID, "C_CopyObject invalid handle");
    is_rv(p11->C_DestroyObject(sess, priv), CKR_ACTION_PROHIBITED,
          "C_DestroyObject on a token key (RW session)");
    is_rv(p11->C_DestroyObject(other, priv), CKR_SESSION_READ_ONLY,
          "C_DestroyObject on a token key (RO session)");
    ok(p11_bool(sess, priv, CKA_SIGN) == 1, "token key still there");
    is_rv(p11->C_DestroyObject(sess, plain), CKR_OK,
          "C_DestroyObject session key");
    is_rv(p11->C_GetAttributeValue(sess, plain, &v, 1),
          CKR_OBJECT_HANDLE_INVALID, "destroyed key is gone");
    is_rv(p11->C_DestroyObject(sess, plain), CKR_OBJECT_HANDLE_INVALID,
          "C_DestroyObject twice");
    is_rv(p11->C_DestroyObject(other, secret), CKR_OK,
          "C_DestroyObject from another (RO) session");
    is_num(find_all(&by_class, 1, objs, 64), 0, "no secret keys left");
    p11->C_CloseSession(other);
}

/* C_SetAttributeValue on a key version the back end holds: the vendor
 * attributes attrpolicy_provider_set() lets through reach the back end
 * (the mock: CKA_CMK_ENABLED), the state is listed again at once, and
 * everything else stays CKR_ACTION_PROHIBITED. */
static void test_provider_set(void)
{
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "mock-key");
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "mock-key");
    CK_SESSION_HANDLE ro = p11_open(0, false);
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ULONG wide = 1;
    CK_ATTRIBUTE off = {CKA_CMK_ENABLED, &f, sizeof(f)};
    CK_ATTRIBUTE on = {CKA_CMK_ENABLED, &t, sizeof(t)};
    CK_ATTRIBUTE bad = {CKA_CMK_ENABLED, &wide, sizeof(wide)};
    CK_ATTRIBUTE two[] = {{CKA_CMK_ENABLED, &f, sizeof(f)},
                          {CKA_LABEL, (void *)"x", 1}};
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA_1, CKG_MGF1_SHA1, 0, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_BYTE in[256] = {0}, out[256];
    CK_ULONG outlen = sizeof(out);

    ok(priv != 0 && pub != 0 && ro != 0, "key version and RO session found");
    is_num(p11_bool(sess, priv, CKA_CMK_ENABLED), 1, "enabled at first");
    is_rv(p11->C_SetAttributeValue(ro, priv, &off, 1), CKR_SESSION_READ_ONLY,
          "disabling a token key in a read-only session");
    is_rv(p11->C_SetAttributeValue(sess, priv, &bad, 1),
          CKR_ATTRIBUTE_VALUE_INVALID, "CKA_CMK_ENABLED of CK_ULONG size");
    is_rv(p11->C_SetAttributeValue(sess, priv, two, 2), CKR_ACTION_PROHIBITED,
          "CKA_CMK_ENABLED with CKA_LABEL: the label is not the back end's");
    is_rv(p11->C_SetAttributeValue(sess, pub, &off, 1), CKR_ACTION_PROHIBITED,
          "CKA_CMK_ENABLED on the public key object");
    is_num(p11_bool(sess, priv, CKA_CMK_ENABLED), 1, "still enabled");
    is_rv(p11->C_SetAttributeValue(sess, priv, &off, 1), CKR_OK,
          "CKA_CMK_ENABLED set to false");
    is_num(p11_bool(sess, priv, CKA_CMK_ENABLED), 0,
           "the listing shows it disabled at once");
    is_num(p11_bool(sess, priv, CKA_DECRYPT), 0, "CKA_DECRYPT false with it");
    is_rv(p11->C_DecryptInit(sess, &m, priv), CKR_KEY_FUNCTION_NOT_PERMITTED,
          "a disabled version does not decrypt");
    is_rv(p11->C_SetAttributeValue(sess, priv, &on, 1), CKR_OK,
          "CKA_CMK_ENABLED set to true again");
    is_num(p11_bool(sess, priv, CKA_CMK_ENABLED), 1, "enabled again");
    is_rv(p11->C_DecryptInit(sess, &m, priv), CKR_OK, "it decrypts again");
    is_rv(p11->C_Decrypt(sess, in, sizeof(in), out, &outlen),
          CKR_ENCRYPTED_DATA_INVALID, "  (and refuses a zero ciphertext)");
    p11->C_CloseSession(ro);
}

int main(void)
{
    char *conf;

    p11_load(NULL);
    conf = p11_write_file("objects.conf", MOCK_CONF);
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    sess = p11_open(0, true);
    if (sess == 0)
        test_bail("no session");
    test_find();
    test_rsa_attributes();
    test_get_attribute_rules();
    test_secret_keys();
    test_provider_set();
    p11->C_CloseSession(sess);
    p11->C_Finalize(NULL);
    free(conf);
    return test_done();
}
