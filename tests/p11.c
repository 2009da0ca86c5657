#include "config.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"

CK_FUNCTION_LIST *p11;
void *p11_dl;
static char tmpdir[256];
static pid_t tmpdir_owner;

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* The private directory goes when the process that made it exits (not
 * when a forked child does). */
static void remove_tmpdir(void)
{
    if (tmpdir[0] != '\0' && getpid() == tmpdir_owner &&
        getenv("CMKP11_KEEP_TMP") == NULL)
        nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void p11_load(const char *path)
{
    CK_C_GetFunctionList gfl;

    if (path == NULL)
        path = getenv("CMKP11_TEST_MODULE");
    if (path == NULL)
        test_bail("CMKP11_TEST_MODULE is not set");
    p11_dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (p11_dl == NULL)
        test_bail("dlopen %s: %s", path, dlerror());
    gfl = (CK_C_GetFunctionList)dlsym(p11_dl, "C_GetFunctionList");
    if (gfl == NULL || gfl(&p11) != CKR_OK)
        test_bail("C_GetFunctionList failed");
}

const char *p11_tmpdir(void)
{
    if (tmpdir[0] == '\0') {
        snprintf(tmpdir, sizeof(tmpdir), "tmp-test-XXXXXX");
        if (mkdtemp(tmpdir) == NULL)
            test_bail("mkdtemp failed");
        tmpdir_owner = getpid();
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

char *p11_write_file(const char *name, const char *text)
{
    char *path = malloc(512);
    FILE *f;

    snprintf(path, 512, "%s/%s", p11_tmpdir(), name);
    f = fopen(path, "w");
    if (f == NULL)
        test_bail("cannot write %s", path);
    fputs(text, f);
    fclose(f);
    chmod(path, 0600);
    return path;
}

CK_RV p11_init(const char *conf_path)
{
    static char reserved[600];
    CK_C_INITIALIZE_ARGS args;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    snprintf(reserved, sizeof(reserved), "conf=%s", conf_path);
    args.pReserved = reserved;
    return p11->C_Initialize(&args);
}

CK_SESSION_HANDLE p11_open(CK_SLOT_ID slot, bool rw)
{
    CK_SESSION_HANDLE h = 0;
    CK_RV rv = p11->C_OpenSession(
        slot, CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0), NULL, NULL, &h);

    if (rv != CKR_OK)
        test_diag("C_OpenSession: 0x%lx", rv);
    return h;
}

CK_OBJECT_HANDLE p11_find(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                          const char *label)
{
    CK_ATTRIBUTE t[2] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
    };
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG n = 0;

    if (p11->C_FindObjectsInit(s, t, label ? 2 : 1) != CKR_OK)
        return 0;
    if (p11->C_FindObjects(s, &h, 1, &n) != CKR_OK || n == 0)
        h = 0;
    p11->C_FindObjectsFinal(s);
    return h;
}

CK_OBJECT_HANDLE p11_aes_key(CK_SESSION_HANDLE s, CK_ULONG len,
                             bool extractable, bool sensitive)
{
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_BBOOL ext = extractable, sens = sensitive, f = CK_FALSE;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE_LEN, &len, sizeof(len)},
        {CKA_EXTRACTABLE, &ext, sizeof(ext)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_TOKEN, &f, sizeof(f)},
    };
    CK_OBJECT_HANDLE h = 0;

    if (p11->C_GenerateKey(s, &m, t, 4, &h) != CKR_OK)
        return 0;
    return h;
}

void *p11_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
               CK_ULONG *len)
{
    CK_ATTRIBUTE a = {t, NULL, 0};
    void *v;

    if (p11->C_GetAttributeValue(s, o, &a, 1) != CKR_OK)
        return NULL;
    v = malloc(a.ulValueLen + 1);
    a.pValue = v;
    if (p11->C_GetAttributeValue(s, o, &a, 1) != CKR_OK) {
        free(v);
        return NULL;
    }
    ((char *)v)[a.ulValueLen] = '\0';
    if (len != NULL)
        *len = a.ulValueLen;
    return v;
}

int p11_bool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t)
{
    CK_BBOOL v = 0x55;
    CK_ATTRIBUTE a = {t, &v, sizeof(v)};

    if (p11->C_GetAttributeValue(s, o, &a, 1) != CKR_OK)
        return -1;
    return v ? 1 : 0;
}

CK_ULONG p11_ulong(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t)
{
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {t, &v, sizeof(v)};

    if (p11->C_GetAttributeValue(s, o, &a, 1) != CKR_OK)
        return (CK_ULONG)-1;
    return v;
}

EVP_PKEY *p11_public_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    CK_ULONG len = 0;
    unsigned char *der = p11_attr(s, o, CKA_PUBLIC_KEY_INFO, &len);
    const unsigned char *p = der;
    EVP_PKEY *pk = der ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;

    free(der);
    return pk;
}

bool p11_same_aes_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a,
                      CK_OBJECT_HANDLE b)
{
    static const CK_BYTE data[] = "envelope payload";
    CK_BYTE iv[12] = "0123456789ab", ct[64], pt[64];
    CK_GCM_PARAMS gp = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ULONG clen = sizeof(ct), plen = sizeof(pt);

    if (p11->C_EncryptInit(s, &m, a) != CKR_OK ||
        p11->C_Encrypt(s, (CK_BYTE *)data, sizeof(data), ct, &clen) != CKR_OK ||
        p11->C_DecryptInit(s, &m, b) != CKR_OK ||
        p11->C_Decrypt(s, ct, clen, pt, &plen) != CKR_OK)
        return false;
    return plen == sizeof(data) && memcmp(pt, data, plen) == 0;
}

CK_ULONG p11_count(CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_OBJECT_HANDLE objs[64];
    CK_ULONG found = 0;

    if (p11->C_FindObjectsInit(s, t, n) != CKR_OK)
        return 999;
    if (p11->C_FindObjects(s, objs, 64, &found) != CKR_OK)
        found = 999;
    p11->C_FindObjectsFinal(s);
    return found;
}

void p11_write_path(const char *path, const char *text, unsigned mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        test_bail("cannot write %s", path);
    close(fd);
    if (chmod(path, (mode_t)mode) < 0)
        test_bail("cannot chmod %s", path);
}

int p11_session_calls(CK_SESSION_HANDLE h, CK_RV want, int *wrong)
{
    CK_SESSION_INFO si;
    CK_BYTE buf[300] = {0};
    CK_ULONG len, n;
    CK_OBJECT_HANDLE o = 1, objs[2];
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG vlen = 16;
    CK_ATTRIBUTE a = {CKA_VALUE_LEN, &vlen, sizeof(vlen)};
    CK_RV rv[64];
    int i, k = 0;

    rv[k++] = p11->C_GetSessionInfo(h, &si);
    rv[k++] = p11->C_CloseSession(h);
    rv[k++] = p11->C_Login(h, CKU_USER, (CK_UTF8CHAR *)"1234", 4);
    rv[k++] = p11->C_Logout(h);
    rv[k++] = p11->C_InitPIN(h, (CK_UTF8CHAR *)"1234", 4);
    rv[k++] = p11->C_SetPIN(h, (CK_UTF8CHAR *)"1", 1, (CK_UTF8CHAR *)"2", 1);
    len = sizeof(buf);
    rv[k++] = p11->C_GetOperationState(h, buf, &len);
    rv[k++] = p11->C_SetOperationState(h, buf, 4, 0, 0);
    rv[k++] = p11->C_CreateObject(h, &a, 1, &o);
    rv[k++] = p11->C_CopyObject(h, o, &a, 1, &o);
    rv[k++] = p11->C_DestroyObject(h, o);
    rv[k++] = p11->C_GetObjectSize(h, o, &len);
    rv[k++] = p11->C_GetAttributeValue(h, o, &a, 1);
    rv[k++] = p11->C_SetAttributeValue(h, o, &a, 1);
    rv[k++] = p11->C_FindObjectsInit(h, &a, 1);
    rv[k++] = p11->C_FindObjects(h, objs, 2, &n);
    rv[k++] = p11->C_FindObjectsFinal(h);
    rv[k++] = p11->C_EncryptInit(h, &rsa, o);
    len = sizeof(buf);
    rv[k++] = p11->C_Encrypt(h, buf, 4, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_EncryptUpdate(h, buf, 4, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_EncryptFinal(h, buf, &len);
    rv[k++] = p11->C_DecryptInit(h, &rsa, o);
    len = sizeof(buf);
    rv[k++] = p11->C_Decrypt(h, buf, 4, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_DecryptUpdate(h, buf, 4, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_DecryptFinal(h, buf, &len);
    rv[k++] = p11->C_DigestInit(h, &sha);
    len = sizeof(buf);
    rv[k++] = p11->C_Digest(h, buf, 4, buf, &len);
    rv[k++] = p11->C_DigestUpdate(h, buf, 4);
    rv[k++] = p11->C_DigestKey(h, o);
    len = sizeof(buf);
    rv[k++] = p11->C_DigestFinal(h, buf, &len);
    rv[k++] = p11->C_SignInit(h, &rsa, o);
    len = sizeof(buf);
    rv[k++] = p11->C_Sign(h, buf, 4, buf, &len);
    rv[k++] = p11->C_SignUpdate(h, buf, 4);
    len = sizeof(buf);
    rv[k++] = p11->C_SignFinal(h, buf, &len);
    rv[k++] = p11->C_SignRecoverInit(h, &rsa, o);
    len = sizeof(buf);
    rv[k++] = p11->C_SignRecover(h, buf, 4, buf, &len);
    rv[k++] = p11->C_VerifyInit(h, &rsa, o);
    rv[k++] = p11->C_Verify(h, buf, 4, buf, 256);
    rv[k++] = p11->C_VerifyUpdate(h, buf, 4);
    rv[k++] = p11->C_VerifyFinal(h, buf, 256);
    rv[k++] = p11->C_VerifyRecoverInit(h, &rsa, o);
    len = sizeof(buf);
    rv[k++] = p11->C_VerifyRecover(h, buf, 256, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_DigestEncryptUpdate(h, buf, 4, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_DecryptDigestUpdate(h, buf, 4, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_SignEncryptUpdate(h, buf, 4, buf, &len);
    len = sizeof(buf);
    rv[k++] = p11->C_DecryptVerifyUpdate(h, buf, 4, buf, &len);
    rv[k++] = p11->C_GenerateKey(h, &gen, &a, 1, &o);
    rv[k++] = p11->C_GenerateKeyPair(h, &rsa, &a, 1, &a, 1, &o, &o);
    len = sizeof(buf);
    rv[k++] = p11->C_WrapKey(h, &rsa, o, o, buf, &len);
    rv[k++] = p11->C_UnwrapKey(h, &rsa, o, buf, 256, &a, 1, &o);
    rv[k++] = p11->C_DeriveKey(h, &rsa, o, &a, 1, &o);
    rv[k++] = p11->C_SeedRandom(h, buf, 4);
    rv[k++] = p11->C_GenerateRandom(h, buf, 4);
    rv[k++] = p11->C_GetFunctionStatus(h);
    rv[k++] = p11->C_CancelFunction(h);
    *wrong = 0;
    for (i = 0; i < k; i++) {
        if (rv[i] != want) {
            test_diag("  session call #%d returned 0x%lx", i, rv[i]);
            (*wrong)++;
        }
    }
    return k;
}

size_t p11_oaep_wrap(EVP_PKEY *pk, const EVP_MD *md, const unsigned char *in,
                     size_t inlen, unsigned char *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t olen = 512;

    if (md == NULL)
        md = EVP_sha1();
    if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 ||
        EVP_PKEY_encrypt(ctx, out, &olen, in, inlen) <= 0)
        olen = 0;
    EVP_PKEY_CTX_free(ctx);
    return olen;
}
