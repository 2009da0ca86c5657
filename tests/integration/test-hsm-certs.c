/*
 * "certificates =" on the hsm back end. generate: one X.509 certificate
 * per private key that can sign, with the key's CKA_ID and CKA_LABEL,
 * subject and issuer CN=<label>, the key's public key, a signature that
 * verifies with it (made through the token), the same bytes at every
 * listing, and CKA_SUBJECT on both key objects. A directory: <label>.pem
 * or <hex id>.pem, ignored when its key is not the key's. A bad value
 * fails C_Initialize.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "hsm-setup.h"
#include "test.h"

static CK_SESSION_HANDLE sess;

static CK_OBJECT_HANDLE find_cert(const char *label)
{
    return p11_find(sess, CKO_CERTIFICATE, label);
}

static X509 *cert_x509(CK_OBJECT_HANDLE h)
{
    CK_ULONG len = 0;
    unsigned char *der = p11_attr(sess, h, CKA_VALUE, &len);
    const unsigned char *p = der;
    X509 *x = der ? d2i_X509(NULL, &p, (long)len) : NULL;

    free(der);
    return x;
}

static bool attr_eq(CK_OBJECT_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_TYPE t)
{
    CK_ULONG la = 0, lb = 0;
    unsigned char *va = p11_attr(sess, a, t, &la);
    unsigned char *vb = p11_attr(sess, b, t, &lb);
    bool same = va && vb && la == lb && la > 0 && memcmp(va, vb, la) == 0;

    free(va);
    free(vb);
    return same;
}

static CK_ULONG count_certs(void)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};

    return p11_count(sess, &t, 1);
}

static void test_generate(void)
{
    CK_OBJECT_HANDLE cert = find_cert("kek");
    CK_OBJECT_HANDLE priv = p11_find(sess, CKO_PRIVATE_KEY, "kek");
    CK_OBJECT_HANDLE pub = p11_find(sess, CKO_PUBLIC_KEY, "kek");
    EVP_PKEY *pk = p11_public_key(sess, pub);
    X509 *x = cert ? cert_x509(cert) : NULL;
    char cn[64] = "";
    CK_ULONG len = 0;
    CK_BBOOL *b;
    CK_ULONG *ul;
    unsigned char *der = NULL;
    int n;

    ok(cert != 0, "a certificate object labelled kek");
    ok(attr_eq(cert, priv, CKA_ID), "with the private key's CKA_ID");
    ok(x != NULL, "CKA_VALUE is an X.509 certificate");
    if (x == NULL)
        return;
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
                              sizeof(cn));
    ok(strcmp(cn, "kek") == 0, "subject CN=kek (%s)", cn);
    ok(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)) == 0,
       "issued by itself");
    ok(pk && EVP_PKEY_eq(X509_get0_pubkey(x), pk) == 1,
       "its public key is the key's");
    ok(pk && X509_verify(x, pk) == 1,
       "its signature, made through the token, verifies");
    n = i2d_X509_NAME(X509_get_subject_name(x), &der);
    {
        unsigned char *subj = p11_attr(sess, cert, CKA_SUBJECT, &len);
        ok(subj && (int)len == n && memcmp(subj, der, len) == 0,
           "CKA_SUBJECT is the certificate's subject");
        free(subj);
    }
    OPENSSL_free(der);
    ok(attr_eq(cert, priv, CKA_SUBJECT) && attr_eq(cert, pub, CKA_SUBJECT),
       "both key objects carry the same CKA_SUBJECT");
    ok(attr_eq(cert, cert, CKA_ISSUER) &&
           attr_eq(cert, cert, CKA_SERIAL_NUMBER),
       "CKA_ISSUER and CKA_SERIAL_NUMBER are set");
    ul = p11_attr(sess, cert, CKA_CERTIFICATE_TYPE, NULL);
    ok(ul && *ul == CKC_X_509, "CKA_CERTIFICATE_TYPE is CKC_X_509");
    free(ul);
    b = p11_attr(sess, cert, CKA_TOKEN, NULL);
    ok(b && *b, "CKA_TOKEN is true");
    free(b);
    b = p11_attr(sess, cert, CKA_PRIVATE, NULL);
    ok(b && !*b, "CKA_PRIVATE is false");
    free(b);
    b = p11_attr(sess, cert, CKA_TRUSTED, NULL);
    ok(b && !*b, "CKA_TRUSTED is false");
    free(b);
    {
        CK_OBJECT_HANDLE again;
        X509 *y;
        (void)count_certs(); /* another listing */
        again = find_cert("kek");
        y = again ? cert_x509(again) : NULL;
        ok(again == cert && y && X509_cmp(x, y) == 0,
           "a new listing keeps the handle and the same certificate");
        X509_free(y);
    }
    {
        CK_OBJECT_HANDLE old = find_cert("kek@01");
        X509 *y = old ? cert_x509(old) : NULL;
        ok(y != NULL && X509_cmp(x, y) != 0,
           "the older version kek@01 has a certificate of its own");
        X509_free(y);
    }
    ok(find_cert("disabled") == 0, "a disabled version gets none");
    is_num(count_certs(), 4, "one certificate per enabled key version");
    is_rv(p11->C_DestroyObject(sess, cert), CKR_ACTION_PROHIBITED,
          "certificates cannot be destroyed");
    X509_free(x);
    EVP_PKEY_free(pk);
}

static void write_pem(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");

    if (f == NULL)
        test_bail("cannot write %s", path);
    PEM_write_X509(f, x);
    fclose(f);
}

int main(void)
{
    char *conf = hsm_setup("certificates = generate\n");
    char extra[2200], dir[1100], cwd[512], path[1200];
    X509 *kek = NULL, *old = NULL;
    CK_OBJECT_HANDLE h;

    sess = hsm_open(conf);
    test_generate();
    h = find_cert("kek");
    kek = h ? cert_x509(h) : NULL;
    h = find_cert("kek@01");
    old = h ? cert_x509(h) : NULL;
    p11->C_Finalize(NULL);
    if (kek == NULL || old == NULL)
        test_bail("no certificates to write");

    /* A directory: kek by label, kek@01 by id, and a wrong one for
     * unwrap-only (kek's certificate) that must be ignored. */
    snprintf(dir, sizeof(dir), "%s/%s/certs",
             getcwd(cwd, sizeof(cwd)) ? cwd : ".", p11_tmpdir());
    snprintf(extra, sizeof(extra), "mkdir -p %s", dir);
    if (system(extra) != 0)
        test_bail("mkdir %s", dir);
    snprintf(path, sizeof(path), "%s/kek.pem", dir);
    write_pem(path, kek);
    snprintf(path, sizeof(path), "%s/01.pem", dir);
    write_pem(path, old);
    snprintf(path, sizeof(path), "%s/unwrap-only.pem", dir);
    write_pem(path, kek);
    snprintf(extra, sizeof(extra), "certificates = %s\n", dir);
    free(conf);
    {
        char text[3000];
        snprintf(text, sizeof(text),
                 "[cmkp11]\nlog-level = error\n\n[token local]\n"
                 "backend = hsm\nmodule = /usr/lib/softhsm/libsofthsm2.so\n"
                 "token-label = cmk\n%s",
                 extra);
        conf = p11_write_file("cmkp11-dir.conf", text);
    }
    sess = hsm_open(conf);
    h = find_cert("kek");
    {
        X509 *y = h ? cert_x509(h) : NULL;
        ok(y && X509_cmp(y, kek) == 0, "a directory: kek.pem, by label");
        X509_free(y);
    }
    h = find_cert("kek@01");
    {
        X509 *y = h ? cert_x509(h) : NULL;
        ok(y && X509_cmp(y, old) == 0, "01.pem for kek@01, by CKA_ID");
        X509_free(y);
    }
    ok(find_cert("unwrap-only") == 0,
       "unwrap-only.pem holds another key's certificate: ignored");
    is_num(count_certs(), 2, "two certificates from the directory");
    ok(attr_eq(find_cert("kek"), p11_find(sess, CKO_PRIVATE_KEY, "kek"),
               CKA_SUBJECT),
       "the key takes the file's subject");
    p11->C_Finalize(NULL);
    X509_free(kek);
    X509_free(old);
    free(conf);

    conf = p11_write_file("cmkp11-bad.conf",
                          "[token local]\nbackend = hsm\n"
                          "module = /usr/lib/softhsm/libsofthsm2.so\n"
                          "token-label = cmk\ncertificates = sometimes\n");
    is_rv(p11_init(conf), CKR_GENERAL_ERROR,
          "certificates = sometimes: C_Initialize fails");
    free(conf);
    return test_done();
}
