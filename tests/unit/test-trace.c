/*
 * CMKP11_DEBUG's call trace (module/call.h, module/pcall.c): every C_
 * function writes one line "C_Name = CKR_NAME", failures included; the
 * provider calls are traced by name and result; no PIN, right or wrong,
 * reaches the trace; and a PKCS#1 v1.5 decryption or unwrap with implicit
 * rejection traces the same lines, from the same places, whether the
 * padding was valid or not. The trace goes to stderr, which this program
 * sends to a file while the module runs.
 */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11.h"
#include "test.h"

#define PIN       "tr4ce-PIN-xyzzy"
#define WRONG_PIN "wr0ng-PIN-plugh"

static char *trace_path;
static int saved_stderr = -1;

/* The whole trace so far (malloc'd). */
static char *trace_text(void)
{
    FILE *f = fopen(trace_path, "r");
    char *buf;
    long n;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0)
        test_bail("cannot read %s", trace_path);
    rewind(f);
    buf = calloc(1, (size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n)
        test_bail("cannot read %s", trace_path);
    fclose(f);
    return buf;
}

static long trace_size(void)
{
    struct stat st;

    fflush(stderr);
    return stat(trace_path, &st) == 0 ? (long)st.st_size : -1;
}

/* The trace written since offset from, each line without its time stamp
 * and process id ("file.c:N function(): message"). */
static char *trace_since(long from)
{
    char *all = trace_text(), *out = calloc(1, strlen(all) + 1), *line, *save;
    char *p;

    if (out == NULL)
        test_bail("out of memory");
    for (line = strtok_r(all + from, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        p = strstr(line, " debug: ");
        strcat(out, p != NULL ? p + 8 : line);
        strcat(out, "\n");
    }
    free(all);
    return out;
}

/* The "C_Name = CKR_NAME" results of the trace, in order, one a line. */
static char *call_results(const char *text)
{
    char *copy = strdup(text), *out = calloc(1, strlen(text) + 1);
    char *line, *save, *eq;

    for (line = strtok_r(copy, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        eq = strstr(line, "(): C_");
        if (eq == NULL || strstr(eq, " = CKR_") == NULL)
            continue;
        strcat(out, eq + 4);
        strcat(out, "\n");
    }
    free(copy);
    return out;
}

static bool has_line(const char *text, const char *msg)
{
    const char *p = text;
    size_t n = strlen(msg);

    while ((p = strstr(p, msg)) != NULL) {
        if (p[n] == '\n' || p[n] == '\0')
            return true;
        p += n;
    }
    return false;
}

static void redirect_stderr(void)
{
    int fd = open(trace_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);

    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    if (fd < 0 || saved_stderr < 0 || dup2(fd, STDERR_FILENO) < 0)
        test_bail("cannot send stderr to %s", trace_path);
    close(fd);
}

static void restore_stderr(void)
{
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
}

/* Logins with a wrong and a right PIN, failures of each kind. */
static void run_session_calls(void)
{
    CK_SESSION_HANDLE h = 0;

    is_rv(p11->C_OpenSession(7, CKF_SERIAL_SESSION, NULL, NULL, &h),
          CKR_SLOT_ID_INVALID, "C_OpenSession on slot 7");
    is_rv(p11->C_OpenSession(1, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK,
          "C_OpenSession on the token with a PIN");
    is_rv(
        p11->C_Login(h, CKU_USER, (CK_UTF8CHAR *)WRONG_PIN, strlen(WRONG_PIN)),
        CKR_PIN_INCORRECT, "C_Login, wrong PIN");
    is_rv(p11->C_Login(h, CKU_USER, (CK_UTF8CHAR *)PIN, strlen(PIN)), CKR_OK,
          "C_Login");
    is_rv(p11->C_GetSessionInfo(h, NULL), CKR_ARGUMENTS_BAD,
          "C_GetSessionInfo(NULL)");
    is_rv(p11->C_Logout(h), CKR_OK, "C_Logout");
    is_rv(p11->C_CloseSession(h), CKR_OK, "C_CloseSession");
    is_rv(p11->C_CloseSession(h), CKR_SESSION_HANDLE_INVALID,
          "C_CloseSession again");
}

static const char expected_calls[] = "C_Initialize = CKR_OK\n"
                                     "C_OpenSession = CKR_SLOT_ID_INVALID\n"
                                     "C_OpenSession = CKR_OK\n"
                                     "C_Login = CKR_PIN_INCORRECT\n"
                                     "C_Login = CKR_OK\n"
                                     "C_GetSessionInfo = CKR_ARGUMENTS_BAD\n"
                                     "C_Logout = CKR_OK\n"
                                     "C_CloseSession = CKR_OK\n"
                                     "C_CloseSession = "
                                     "CKR_SESSION_HANDLE_INVALID\n";

/* A ciphertext of the mock key (public key pk, k bytes): a PKCS#1 v1.5
 * encryption of 16 bytes, or with bad, a block that starts 00 03. */
static size_t ciphertext(EVP_PKEY *pk, size_t k, bool bad, unsigned char *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    unsigned char in[1024];
    size_t inlen = 16, olen = 1024;

    RAND_bytes(in, (int)k);
    if (bad) {
        in[0] = 0x00;
        in[1] = 0x03;
        inlen = k;
    }
    if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, bad ? RSA_NO_PADDING
                                              : RSA_PKCS1_PADDING) <= 0 ||
        EVP_PKEY_encrypt(ctx, out, &olen, in, inlen) <= 0)
        olen = 0;
    EVP_PKEY_CTX_free(ctx);
    return olen;
}

/* C_DecryptInit, C_Decrypt, C_UnwrapKey and C_DestroyObject on c. */
static void decrypt_and_unwrap(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                               const unsigned char *c, size_t clen,
                               const char *what)
{
    static CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    static CK_KEY_TYPE kt = CKK_AES;
    static CK_ULONG vlen = 16;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
    };
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    unsigned char out[1024];
    CK_ULONG outlen = sizeof(out);
    CK_OBJECT_HANDLE h = 0;
    char msg[128];

    snprintf(msg, sizeof(msg), "%s: C_DecryptInit", what);
    is_rv(p11->C_DecryptInit(s, &m, priv), CKR_OK, msg);
    snprintf(msg, sizeof(msg), "%s: C_Decrypt (implicit rejection)", what);
    is_rv(p11->C_Decrypt(s, (CK_BYTE *)c, clen, out, &outlen), CKR_OK, msg);
    snprintf(msg, sizeof(msg), "%s: C_UnwrapKey (implicit rejection)", what);
    is_rv(p11->C_UnwrapKey(s, &m, priv, (CK_BYTE *)c, clen, t, 3, &h), CKR_OK,
          msg);
    p11->C_DestroyObject(s, h);
}

static void test_pkcs1(void)
{
    CK_SESSION_HANDLE s = p11_open(0, false);
    CK_OBJECT_HANDLE priv = p11_find(s, CKO_PRIVATE_KEY, "mock-key");
    CK_OBJECT_HANDLE pub = p11_find(s, CKO_PUBLIC_KEY, "mock-key");
    CK_ULONG len = 0;
    unsigned char *der = p11_attr(s, pub, CKA_PUBLIC_KEY_INFO, &len);
    const unsigned char *p = der;
    EVP_PKEY *pk = der ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;
    unsigned char good[1024], bad[1024];
    size_t k = pk ? (size_t)EVP_PKEY_get_size(pk) : 0, glen, blen;
    char *good_trace, *bad_trace;
    long at;

    free(der);
    if (pk == NULL || priv == 0)
        test_bail("no mock-key");
    glen = ciphertext(pk, k, false, good);
    blen = ciphertext(pk, k, true, bad);
    ok(glen == k && blen == k, "two ciphertexts of %zu bytes", k);
    /* The first C_DecryptInit derives the key's secret: not compared. */
    decrypt_and_unwrap(s, priv, good, glen, "first");

    at = trace_size();
    decrypt_and_unwrap(s, priv, good, glen, "valid padding");
    good_trace = trace_since(at);
    at = trace_size();
    decrypt_and_unwrap(s, priv, bad, blen, "invalid padding");
    bad_trace = trace_since(at);
    ok(has_line(good_trace, "C_Decrypt = CKR_OK") &&
           has_line(good_trace, "C_UnwrapKey = CKR_OK") &&
           strstr(good_trace, "decrypt CKM_RSA_X_509 = CKR_OK") != NULL,
       "the C_ calls and the back end's raw RSA are traced");
    ok(strcmp(good_trace, bad_trace) == 0,
       "valid and invalid padding: the same trace lines, from the same "
       "places");
    if (strcmp(good_trace, bad_trace) != 0)
        test_diag("valid:\n%s\ninvalid:\n%s", good_trace, bad_trace);
    free(good_trace);
    free(bad_trace);
    EVP_PKEY_free(pk);
    p11->C_CloseSession(s);
}

int main(void)
{
    char *conf, *text, *calls;
    CK_INFO info;
    CK_RV rv;

    p11_load(NULL);
    conf = p11_write_file("trace.conf", "[cmkp11]\nlog-level = error\n\n"
                                        "[token open]\nbackend = mock\n\n"
                                        "[token locked]\nbackend = mock\n"
                                        "pin = " PIN "\n");
    trace_path = p11_write_file("trace.log", "");
    setenv("CMKP11_DEBUG", "all", 1);

    redirect_stderr();
    rv = p11_init(conf);
    run_session_calls();
    text = trace_text();
    calls = call_results(text);
    free(text);
    test_pkcs1();
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    is_rv(p11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED,
          "C_GetInfo after C_Finalize");
    restore_stderr();
    is_rv(rv, CKR_OK, "C_Initialize with CMKP11_DEBUG=all");

    text = trace_text();
    ok(has_line(text, "C_Initialize = CKR_OK"), "trace: C_Initialize = CKR_OK");
    ok(has_line(text, "C_OpenSession = CKR_SLOT_ID_INVALID"),
       "trace: C_OpenSession = CKR_SLOT_ID_INVALID");
    ok(has_line(text, "C_Login = CKR_PIN_INCORRECT"),
       "trace: C_Login = CKR_PIN_INCORRECT");
    ok(strstr(text, "token locked: login = CKR_OK (device error 0)") != NULL,
       "trace: the back end's login, by user type and result");
    ok(strcmp(calls, expected_calls) == 0,
       "one line per call, in order, with its result");
    if (strcmp(calls, expected_calls) != 0)
        test_diag("got:\n%s", calls);
    ok(has_line(text, "C_Finalize = CKR_OK"), "trace: C_Finalize = CKR_OK");
    ok(has_line(text, "C_GetInfo = CKR_CRYPTOKI_NOT_INITIALIZED"),
       "trace: a call refused before it enters the module");
    ok(strstr(text, PIN) == NULL && strstr(text, WRONG_PIN) == NULL,
       "no PIN, right or wrong, in the trace");
    ok(strstr(text, "tr4ce") == NULL && strstr(text, "wr0ng") == NULL,
       "nor part of one");

    free(calls);
    free(text);
    free(conf);
    free(trace_path);
    return test_done();
}
