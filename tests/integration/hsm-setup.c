#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "hsm-setup.h"
#include "test.h"

char *hsm_setup(const char *extra)
{
    char cmd[1024], dir[512], text[1024];
    const char *srcdir = getenv("top_srcdir");
    int st;

    snprintf(dir, sizeof(dir), "%s/softhsm", p11_tmpdir());
    snprintf(cmd, sizeof(cmd), "sh %s/tests/softhsm-init.sh %s",
             srcdir ? srcdir : ".", dir);
    st = system(cmd);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
        test_skip_all("SoftHSMv2, pkcs11-tool or PyKCS11 is missing");
    if (st != 0)
        test_bail("softhsm-init.sh failed");
    snprintf(cmd, sizeof(cmd), "%s/softhsm2.conf", dir);
    setenv("SOFTHSM2_CONF", cmd, 1);
    snprintf(text, sizeof(text),
             "[cmkp11]\nlog-level = error\n\n"
             "[token local]\nbackend = hsm\n"
             "module = /usr/lib/softhsm/libsofthsm2.so\n"
             "token-label = cmk\n%s",
             extra ? extra : "");
    return p11_write_file("cmkp11.conf", text);
}

CK_SESSION_HANDLE hsm_open(const char *conf)
{
    CK_SLOT_ID slot;
    CK_ULONG n = 1;
    CK_SESSION_HANDLE s;
    CK_RV rv;

    if (p11 == NULL)
        p11_load(getenv("CMKP11_MODULE"));
    rv = p11_init(conf);
    if (rv != CKR_OK)
        test_bail("C_Initialize: 0x%lx", rv);
    if (p11->C_GetSlotList(CK_TRUE, &slot, &n) != CKR_OK || n != 1)
        test_bail("no slot");
    s = p11_open(slot, true);
    rv = p11->C_Login(s, CKU_USER, (CK_UTF8CHAR *)HSM_PIN, strlen(HSM_PIN));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        test_bail("C_Login: 0x%lx", rv);
    return s;
}

CK_RV hsm_unwrap_check(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                       const unsigned char *blob, CK_ULONG len,
                       const unsigned char *key, CK_ULONG keylen)
{
    CK_RSA_PKCS_OAEP_PARAMS p = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED,
                                 NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &f, sizeof(f)},       {CKA_SENSITIVE, &f, sizeof(f)},
        {CKA_EXTRACTABLE, &t, sizeof(t)}, {CKA_DECRYPT, &t, sizeof(t)},
    };
    unsigned char value[64];
    CK_ATTRIBUTE va = {CKA_VALUE, value, sizeof(value)};
    CK_OBJECT_HANDLE h = 0;
    CK_RV rv;

    rv = p11->C_UnwrapKey(s, &m, priv, (CK_BYTE *)blob, len, tmpl,
                          CMK_ARRAY_SIZE(tmpl), &h);
    if (rv != CKR_OK)
        return rv;
    rv = p11->C_GetAttributeValue(s, h, &va, 1);
    if (rv == CKR_OK &&
        (va.ulValueLen != keylen || memcmp(value, key, keylen) != 0))
        rv = CKR_GENERAL_ERROR;
    p11->C_DestroyObject(s, h);
    return rv;
}
