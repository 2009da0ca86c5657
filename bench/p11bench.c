/*
 * p11bench - RSA throughput of any PKCS#11 module.
 *
 *   p11bench [options] MODULE TOKEN-LABEL PIN KEY-LABEL
 *
 * Loads MODULE with dlopen, opens the token whose label is TOKEN-LABEL, logs
 * in with PIN, finds the RSA key pair labelled KEY-LABEL and measures, for
 * each operation and each thread count asked for, how many operations per
 * second the module completes. Every thread has a session of its own.
 *
 * Operations (-o, comma separated):
 *   unwrap         C_UnwrapKey of an AES-256 key wrapped with RSA-OAEP
 *                  (SHA-1, MGF1-SHA1, no label); the key is destroyed again
 *   unwrap-sha256  the same with OAEP SHA-256 / MGF1-SHA256
 *   decrypt        C_Decrypt with CKM_RSA_PKCS of a 32-byte plaintext
 *   sign           C_Sign with CKM_SHA256_RSA_PKCS of a 64-byte message
 *   wrap-sha256    C_WrapKey with OAEP SHA-256 / MGF1-SHA256 and the public
 *                  key object of an AES-256 session key (C_CreateObject in
 *                  each thread's session); the module encrypts, not the
 *                  token, where the public key is cached (Key Vault)
 *   openssl-wrap-sha256
 *                  the baseline of wrap-sha256 without the module: OpenSSL's
 *                  EVP_PKEY_encrypt (a new EVP_PKEY_CTX each time, OAEP
 *                  SHA-256) of the same 32 bytes with the same public key
 *   encrypt        C_Encrypt with CKM_RSA_PKCS_OAEP (SHA-1) and the public
 *                  key object of 32 bytes (the first one of each thread is
 *                  decrypted by the module and compared)
 *   openssl-encrypt
 *                  its baseline: EVP_PKEY_encrypt, OAEP SHA-1, as above
 *   verify         C_Verify with CKM_SHA256_RSA_PKCS and the public key
 *                  object of a signature the token made before measuring
 *   openssl-verify its baseline: EVP_DigestVerify with the same key
 *   gcm-64k        C_EncryptInit + C_Encrypt with CKM_AES_GCM (96-bit IV,
 *                  40 bytes of AAD, 128-bit tag) of 64 KiB under an AES-256
 *                  session key (C_CreateObject in each thread's session):
 *                  one segment of cmkp11-tool seal (the first one of each
 *                  thread is compared with OpenSSL's)
 *   gcm-64k-mp     the same in parts: C_EncryptInit + C_EncryptUpdate of
 *                  the 64 KiB + C_EncryptFinal (the tag), as cmkp11 drives
 *                  an hsm token's lower token (SoftHSM 2.6.1 does it 2-3
 *                  times faster than its C_Encrypt)
 *   openssl-gcm-64k
 *                  its baseline: EVP AES-256-GCM of the same 64 KiB
 *   gcm-4k, openssl-gcm-4k
 *                  the same of 4 KiB (the first 4 KiB of the segment): one
 *                  envelope of a KMS-style consumer
 *   gcm-file       the lower token's own file job, what cmkp11-tool seal
 *                  does without cmkp11: the threads take the 64 KiB
 *                  segments of the file given with -f in turn (an atomic
 *                  counter), read each with pread(2), encrypt it in parts
 *                  (as gcm-64k-mp, the segment's index in the IV) and write
 *                  it to /dev/null with write(2); one measurement runs to
 *                  the end of the file, without warm-up (the first segment
 *                  of each thread is compared with OpenSSL's). An operation
 *                  is a segment; the last one may be short
 * Each measured call is preceded by its *Init call. The wrapped keys and
 * the ciphertext are made beforehand with OpenSSL and the public key read
 * from the token.
 *
 * Every result is checked: an unwrap must succeed (the first one of each
 * thread must give the AES key that was wrapped, checked by encrypting a block
 * with CKM_AES_CBC_PAD), a decrypt must give back the plaintext,
 * a signature must be 256 bytes (the first one of each thread is verified
 * with OpenSSL), a wrapped key must be 256 bytes (the first one of each
 * thread is unwrapped by the module and checked like an unwrap). Any failure is
 * reported on stderr and the exit status is 1.
 *
 * PIN "-" skips C_Login (a token that needs none, as a Key Vault token
 * without pin =).
 *
 * Output, one line per measurement on stdout:
 *   OP THREADS OPS_PER_SECOND OPS_PER_CPU_SECOND
 * OPS_PER_SECOND is wall-clock throughput: all operations of all threads
 * divided by the time from the common start to the last thread's end.
 * OPS_PER_CPU_SECOND divides the same count by the CPU time (user + system)
 * the process used meanwhile; other load on the machine changes it much
 * less, but it does not show time spent waiting, e.g. for a lock.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "compat.h"

#define MAX_THREADS 64
#define SIG_LEN     256

enum op {
    OP_UNWRAP,
    OP_UNWRAP_SHA256,
    OP_DECRYPT,
    OP_SIGN,
    OP_WRAP_SHA256,
    OP_OSSL_WRAP_SHA256,
    OP_ENCRYPT,
    OP_OSSL_ENCRYPT,
    OP_VERIFY,
    OP_OSSL_VERIFY,
    OP_GCM,
    OP_OSSL_GCM,
    OP_GCM_4K,
    OP_OSSL_GCM_4K,
    OP_GCM_MP,
    OP_GCM_FILE,
    OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
    [OP_UNWRAP] = "unwrap",
    [OP_UNWRAP_SHA256] = "unwrap-sha256",
    [OP_DECRYPT] = "decrypt",
    [OP_SIGN] = "sign",
    [OP_WRAP_SHA256] = "wrap-sha256",
    [OP_OSSL_WRAP_SHA256] = "openssl-wrap-sha256",
    [OP_ENCRYPT] = "encrypt",
    [OP_OSSL_ENCRYPT] = "openssl-encrypt",
    [OP_VERIFY] = "verify",
    [OP_OSSL_VERIFY] = "openssl-verify",
    [OP_GCM] = "gcm-64k",
    [OP_OSSL_GCM] = "openssl-gcm-64k",
    [OP_GCM_4K] = "gcm-4k",
    [OP_OSSL_GCM_4K] = "openssl-gcm-4k",
    [OP_GCM_MP] = "gcm-64k-mp",
    [OP_GCM_FILE] = "gcm-file",
};

#define GCM_SEG 65536

struct bench {
    CK_FUNCTION_LIST_PTR p11;
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE priv;
    CK_OBJECT_HANDLE pub_obj;
    EVP_PKEY *pub;
    size_t mod_len;

    unsigned char aes_key[32];
    unsigned char wrapped_sha1[512];
    size_t wrapped_sha1_len;
    unsigned char wrapped_sha256[512];
    size_t wrapped_sha256_len;
    unsigned char plain[32];
    unsigned char cipher[512];
    size_t cipher_len;
    unsigned char msg[64];
    unsigned char sig[512];     /* of msg, made by the token before measuring */
    unsigned char seg[GCM_SEG]; /* gcm-64k: the plaintext */
    CK_ULONG sig_len;

    /* the measurement under way */
    enum op op;
    double seconds;      /* run this long, or */
    unsigned long count; /* this many operations per thread */
    unsigned long warmup;
    pthread_barrier_t start;
    atomic_int stop;
    int verbose;
    int token_key;         /* -T: the AES keys are token objects */
    int file_fd;           /* gcm-file: the input (-f), or -1 */
    int null_fd;           /* gcm-file: /dev/null, the output */
    atomic_ulong next_seg; /* gcm-file: the next segment to take */
};

struct worker {
    struct bench *b;
    pthread_t tid;
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE aes; /* wrap-sha256: the key that is wrapped */
    unsigned long ops;
    struct timespec t0, t1;
    int failed;
    char err[256];
};

static const char *prog = "p11bench";
static const unsigned char gcm_aad[40] =
    "cmkp11 bench: a header of forty bytes.";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(3);
}

static void usage(void)
{
    fprintf(
        stderr,
        "usage: %s [-d SECONDS | -n OPS] [-t N[,N...]] [-o OP[,OP...]]\n"
        "          [-w WARMUP] [-v] MODULE TOKEN-LABEL PIN KEY-LABEL\n"
        "  -d SECONDS  length of each measurement (default 3)\n"
        "  -n OPS      operations per thread instead of a duration\n"
        "  -t LIST     thread counts (default 1,2)\n"
        "  -o LIST     unwrap, unwrap-sha256, decrypt, sign, wrap-sha256,\n"
        "              openssl-wrap-sha256, encrypt, openssl-encrypt, verify,\n"
        "              openssl-verify, gcm-64k, gcm-64k-mp, openssl-gcm-64k,\n"
        "              gcm-4k, openssl-gcm-4k, gcm-file (default\n"
        "              unwrap,decrypt,sign)\n"
        "  -f FILE     gcm-file: the file to encrypt, once per measurement\n"
        "  -w WARMUP   untimed operations per thread first (default 20)\n"
        "  -T          gcm-*: the AES key is a token object\n"
        "  -v          details on stderr\n"
        "PIN \"-\": no C_Login\n"
        "output, one line per measurement:\n"
        "  OP THREADS OPS_PER_SECOND OPS_PER_CPU_SECOND\n",
        prog);
    exit(2);
}

static double elapsed(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) +
           (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec ||
           (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* ---- setup ------------------------------------------------------------ */

static CK_FUNCTION_LIST_PTR load_module(const char *path)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST_PTR list = NULL;
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    if (!dl)
        die("cannot load %s: %s", path, dlerror());
    *(void **)&get = dlsym(dl, "C_GetFunctionList");
    if (!get)
        die("%s has no C_GetFunctionList", path);
    rv = get(&list);
    if (rv != CKR_OK || !list)
        die("C_GetFunctionList: 0x%lx", (unsigned long)rv);
    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    rv = list->C_Initialize(&args);
    if (rv != CKR_OK)
        die("C_Initialize: 0x%lx", (unsigned long)rv);
    return list;
}

static int label_is(const CK_UTF8CHAR *field, size_t size, const char *want)
{
    size_t n = size;

    while (n > 0 && (field[n - 1] == ' ' || field[n - 1] == '\0'))
        n--;
    return strlen(want) == n && memcmp(field, want, n) == 0;
}

static CK_SLOT_ID find_slot(CK_FUNCTION_LIST_PTR p11, const char *label)
{
    CK_SLOT_ID *slots;
    CK_ULONG n = 0, i;
    CK_TOKEN_INFO info;
    CK_RV rv;

    rv = p11->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK)
        die("C_GetSlotList: 0x%lx", (unsigned long)rv);
    slots = calloc(n ? n : 1, sizeof(*slots));
    if (!slots)
        die("out of memory");
    rv = p11->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK)
        die("C_GetSlotList: 0x%lx", (unsigned long)rv);
    for (i = 0; i < n; i++) {
        if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        if (label_is(info.label, sizeof(info.label), label)) {
            CK_SLOT_ID id = slots[i];

            free(slots);
            return id;
        }
    }
    die("no token labelled \"%s\" (%lu slots with a token)", label,
        (unsigned long)n);
    return 0;
}

static CK_OBJECT_HANDLE find_key(CK_FUNCTION_LIST_PTR p11, CK_SESSION_HANDLE s,
                                 CK_OBJECT_CLASS cls, const char *label)
{
    CK_KEY_TYPE kt = CKK_RSA;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;
    CK_RV rv;

    rv = p11->C_FindObjectsInit(s, tmpl, CMK_ARRAY_SIZE(tmpl));
    if (rv != CKR_OK)
        die("C_FindObjectsInit: 0x%lx", (unsigned long)rv);
    rv = p11->C_FindObjects(s, h, CMK_ARRAY_SIZE(h), &n);
    p11->C_FindObjectsFinal(s);
    if (rv != CKR_OK)
        die("C_FindObjects: 0x%lx", (unsigned long)rv);
    if (n == 0)
        die("no RSA %s key labelled \"%s\"",
            cls == CKO_PRIVATE_KEY ? "private" : "public", label);
    if (n > 1)
        die("more than one RSA %s key labelled \"%s\"",
            cls == CKO_PRIVATE_KEY ? "private" : "public", label);
    return h[0];
}

static void ossl_die(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];

    ERR_error_string_n(e, buf, sizeof(buf));
    die("%s: %s", what, buf);
}

/* Reads the public key from the token into an OpenSSL key. */
static EVP_PKEY *read_public(CK_FUNCTION_LIST_PTR p11, CK_SESSION_HANDLE s,
                             CK_OBJECT_HANDLE pub, size_t *mod_len)
{
    unsigned char n[1024], e[16];
    CK_ATTRIBUTE attrs[] = {
        {CKA_MODULUS, n, sizeof(n)},
        {CKA_PUBLIC_EXPONENT, e, sizeof(e)},
    };
    OSSL_PARAM_BLD *bld;
    OSSL_PARAM *params;
    EVP_PKEY_CTX *ctx;
    EVP_PKEY *key = NULL;
    BIGNUM *bn_n, *bn_e;
    CK_RV rv;

    rv = p11->C_GetAttributeValue(s, pub, attrs, CMK_ARRAY_SIZE(attrs));
    if (rv != CKR_OK)
        die("C_GetAttributeValue(CKA_MODULUS, CKA_PUBLIC_EXPONENT): 0x%lx",
            (unsigned long)rv);
    bn_n = BN_bin2bn(n, (int)attrs[0].ulValueLen, NULL);
    bn_e = BN_bin2bn(e, (int)attrs[1].ulValueLen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!bn_n || !bn_e || !bld ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e))
        ossl_die("public key parameters");
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        ossl_die("public key");
    *mod_len = (size_t)BN_num_bytes(bn_n);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return key;
}

/* Encrypts IN with the public key: OAEP with MD (NULL: PKCS#1 v1.5). */
static size_t public_encrypt(EVP_PKEY *key, const EVP_MD *md,
                             const unsigned char *in, size_t in_len,
                             unsigned char *out, size_t out_size)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    size_t len = out_size;

    if (!ctx || EVP_PKEY_encrypt_init(ctx) <= 0)
        ossl_die("encrypt init");
    if (md) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0)
            ossl_die("OAEP parameters");
    } else if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0) {
        ossl_die("PKCS#1 padding");
    }
    if (EVP_PKEY_encrypt(ctx, out, &len, in, in_len) <= 0)
        ossl_die("encrypt");
    EVP_PKEY_CTX_free(ctx);
    return len;
}

static int verify_signature(EVP_PKEY *key, const unsigned char *msg,
                            size_t msg_len, const unsigned char *sig,
                            size_t sig_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;

    ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
         EVP_DigestVerify(ctx, sig, sig_len, msg, msg_len) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* ---- the operations --------------------------------------------------- */

/* An extractable AES session key with the value B->aes_key. */
/* The AES-256 key of the measurement: a session object, or with -T a token
 * object (labelled p11bench-gcm; destroyed after the measurement). */
static CK_OBJECT_HANDLE session_aes_key(struct bench *b, CK_SESSION_HANDLE s)
{
    static const char label[] = "p11bench-gcm";
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, b->token_key ? &yes : &no, sizeof(no)},
        {CKA_LABEL, (void *)label, sizeof(label) - 1},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        {CKA_VALUE, b->aes_key, sizeof(b->aes_key)},
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv;

    rv = b->p11->C_CreateObject(s, tmpl, CMK_ARRAY_SIZE(tmpl), &h);
    if (rv != CKR_OK)
        die("C_CreateObject (AES-256 %s key): 0x%lx",
            b->token_key ? "token" : "session", (unsigned long)rv);
    return h;
}

static void fail(struct worker *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail(struct worker *w, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(w->err, sizeof(w->err), fmt, ap);
    va_end(ap);
    w->failed = 1;
}

/*
 * Checks that KEY is the AES key that was wrapped: CKM_AES_CBC_PAD of a
 * block in the module must equal OpenSSL's AES-256-CBC of it.
 */
static int check_aes_key(struct worker *w, CK_OBJECT_HANDLE key)
{
    struct bench *b = w->b;
    unsigned char iv[16], block[16], want[64], got[64];
    CK_MECHANISM mech = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    CK_ULONG got_len = sizeof(got);
    EVP_CIPHER_CTX *ctx;
    int len1 = 0, len2 = 0;
    CK_RV rv;

    memset(iv, 0x5a, sizeof(iv));
    memset(block, 0xa5, sizeof(block));
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx ||
        EVP_EncryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, b->aes_key, iv) != 1 ||
        EVP_EncryptUpdate(ctx, want, &len1, block, sizeof(block)) != 1 ||
        EVP_EncryptFinal_ex(ctx, want + len1, &len2) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        fail(w, "OpenSSL AES-256-CBC failed");
        return -1;
    }
    EVP_CIPHER_CTX_free(ctx);
    rv = b->p11->C_EncryptInit(w->session, &mech, key);
    if (rv == CKR_OK)
        rv = b->p11->C_Encrypt(w->session, block, sizeof(block), got, &got_len);
    if (rv != CKR_OK) {
        fail(w, "unwrapped key: CKM_AES_CBC_PAD encrypt: 0x%lx",
             (unsigned long)rv);
        return -1;
    }
    if (got_len != (CK_ULONG)(len1 + len2) || memcmp(got, want, got_len)) {
        fail(w, "unwrapped key: not the key that was wrapped");
        return -1;
    }
    return 0;
}

/*
 * C_UnwrapKey of BLOB (OAEP with SHA-256 or SHA-1) into a session key that
 * is destroyed again; CHECK compares it with the key that was wrapped.
 */
static int unwrap_blob(struct worker *w, int sha256, const unsigned char *blob,
                       size_t blob_len, int check)
{
    struct bench *b = w->b;
    CK_FUNCTION_LIST_PTR p11 = b->p11;
    CK_SESSION_HANDLE s = w->session;
    CK_RSA_PKCS_OAEP_PARAMS oaep = {
        sha256 ? CKM_SHA256 : CKM_SHA_1,
        sha256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1,
        CKZ_DATA_SPECIFIED,
        NULL,
        0,
    };
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},     {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_DECRYPT, &yes, sizeof(yes)},
    };
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    CK_RV rv;

    rv = p11->C_UnwrapKey(s, &mech, b->priv, (CK_BYTE_PTR)blob,
                          (CK_ULONG)blob_len, tmpl, CMK_ARRAY_SIZE(tmpl), &key);
    if (rv != CKR_OK) {
        fail(w, "C_UnwrapKey: 0x%lx", (unsigned long)rv);
        return -1;
    }
    if (key == CK_INVALID_HANDLE) {
        fail(w, "C_UnwrapKey gave no handle");
        return -1;
    }
    if (check && check_aes_key(w, key) != 0) {
        p11->C_DestroyObject(s, key);
        return -1;
    }
    rv = p11->C_DestroyObject(s, key);
    if (rv != CKR_OK) {
        fail(w, "C_DestroyObject: 0x%lx", (unsigned long)rv);
        return -1;
    }
    return 0;
}

/* AES-256-GCM of LEN bytes of IN with OpenSSL: ciphertext and tag. */
static int gcm_encrypt(struct bench *b, const unsigned char iv[12],
                       const unsigned char *in, size_t len, unsigned char *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, m = 0, ok;

    ok =
        ctx &&
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, b->aes_key, iv) == 1 &&
        EVP_EncryptUpdate(ctx, NULL, &n, gcm_aad, sizeof(gcm_aad)) == 1 &&
        EVP_EncryptUpdate(ctx, out, &n, in, (int)len) == 1 &&
        EVP_EncryptFinal_ex(ctx, out + n, &m) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out + len) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok)
        ERR_clear_error();
    return ok ? 0 : -1;
}

/* One AES-256-GCM segment: N bytes of IN into OUT (N + 16 bytes), the
 * index in the IV's first bytes, in one call or in parts
 * (C_EncryptUpdate + C_EncryptFinal); FIRST compares it with OpenSSL's.
 * Returns 0 or -1. */
static int gcm_segment(struct worker *w, const unsigned char *in, size_t n,
                       unsigned long index, bool parts, bool first,
                       unsigned char *out)
{
    struct bench *b = w->b;
    CK_FUNCTION_LIST_PTR p11 = b->p11;
    unsigned char iv[12] = {0}, ref[GCM_SEG + 16];
    CK_GCM_PARAMS gp = {
        iv, sizeof(iv), sizeof(iv) * 8, (CK_BYTE_PTR)gcm_aad, sizeof(gcm_aad),
        128};
    CK_MECHANISM mech = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ULONG len = GCM_SEG + 16, tail;
    CK_RV rv;

    memcpy(iv, &index, sizeof(index) < 12 ? sizeof(index) : 12);
    rv = p11->C_EncryptInit(w->session, &mech, w->aes);
    if (rv == CKR_OK && parts) {
        rv = p11->C_EncryptUpdate(w->session, (CK_BYTE_PTR)in, n, out, &len);
        tail = GCM_SEG + 16 - len;
        if (rv == CKR_OK)
            rv = p11->C_EncryptFinal(w->session, out + len, &tail);
        len += tail;
    } else if (rv == CKR_OK) {
        rv = p11->C_Encrypt(w->session, (CK_BYTE_PTR)in, n, out, &len);
    }
    if (rv != CKR_OK) {
        fail(w, "C_Encrypt (AES-GCM): 0x%lx", (unsigned long)rv);
        return -1;
    }
    if (len != n + 16) {
        fail(w, "C_Encrypt (AES-GCM): %lu bytes", (unsigned long)len);
        return -1;
    }
    if (first && (gcm_encrypt(b, iv, in, n, ref) != 0 ||
                  memcmp(ref, out, n + 16) != 0)) {
        fail(w, "C_Encrypt (AES-GCM): not what OpenSSL gives");
        return -1;
    }
    return 0;
}

/* One operation; FIRST asks for the extra check. Returns 0 or -1. */
static int run_op(struct worker *w, int first)
{
    struct bench *b = w->b;
    CK_FUNCTION_LIST_PTR p11 = b->p11;
    CK_SESSION_HANDLE s = w->session;
    CK_RV rv;

    switch (b->op) {
    case OP_UNWRAP:
        return unwrap_blob(w, 0, b->wrapped_sha1, b->wrapped_sha1_len, first);
    case OP_UNWRAP_SHA256:
        return unwrap_blob(w, 1, b->wrapped_sha256, b->wrapped_sha256_len,
                           first);
    case OP_WRAP_SHA256: {
        CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256,
                                        CKZ_DATA_SPECIFIED, NULL, 0};
        CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
        unsigned char out[1024];
        CK_ULONG len = sizeof(out);

        rv = p11->C_WrapKey(s, &mech, b->pub_obj, w->aes, out, &len);
        if (rv != CKR_OK) {
            fail(w, "C_WrapKey: 0x%lx", (unsigned long)rv);
            return -1;
        }
        if (len != b->mod_len) {
            fail(w, "C_WrapKey: %lu bytes, not %zu", (unsigned long)len,
                 b->mod_len);
            return -1;
        }
        return first ? unwrap_blob(w, 1, out, len, 1) : 0;
    }
    case OP_OSSL_WRAP_SHA256: {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, b->pub, NULL);
        unsigned char out[1024];
        size_t len = sizeof(out);
        int ok;

        ok = ctx && EVP_PKEY_encrypt_init(ctx) > 0 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) > 0 &&
             EVP_PKEY_encrypt(ctx, out, &len, b->aes_key, sizeof(b->aes_key)) >
                 0;
        EVP_PKEY_CTX_free(ctx);
        if (!ok || len != b->mod_len) {
            ERR_clear_error();
            fail(w, "EVP_PKEY_encrypt failed");
            return -1;
        }
        return 0;
    }
    case OP_DECRYPT: {
        CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
        unsigned char out[512];
        CK_ULONG len = sizeof(out);

        rv = p11->C_DecryptInit(s, &mech, b->priv);
        if (rv != CKR_OK) {
            fail(w, "C_DecryptInit: 0x%lx", (unsigned long)rv);
            return -1;
        }
        rv = p11->C_Decrypt(s, b->cipher, (CK_ULONG)b->cipher_len, out, &len);
        if (rv != CKR_OK) {
            fail(w, "C_Decrypt: 0x%lx", (unsigned long)rv);
            return -1;
        }
        if (len != sizeof(b->plain) || memcmp(out, b->plain, len) != 0) {
            fail(w, "C_Decrypt: wrong plaintext (%lu bytes)",
                 (unsigned long)len);
            return -1;
        }
        return 0;
    }
    case OP_SIGN: {
        CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
        unsigned char sig[1024];
        CK_ULONG len = sizeof(sig);

        rv = p11->C_SignInit(s, &mech, b->priv);
        if (rv != CKR_OK) {
            fail(w, "C_SignInit: 0x%lx", (unsigned long)rv);
            return -1;
        }
        rv = p11->C_Sign(s, b->msg, sizeof(b->msg), sig, &len);
        if (rv != CKR_OK) {
            fail(w, "C_Sign: 0x%lx", (unsigned long)rv);
            return -1;
        }
        if (len != SIG_LEN) {
            fail(w, "C_Sign: %lu bytes, not %d", (unsigned long)len, SIG_LEN);
            return -1;
        }
        if (first &&
            !verify_signature(b->pub, b->msg, sizeof(b->msg), sig, len)) {
            fail(w, "C_Sign: the signature does not verify");
            return -1;
        }
        return 0;
    }
    case OP_ENCRYPT: {
        CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA_1, CKG_MGF1_SHA1,
                                        CKZ_DATA_SPECIFIED, NULL, 0};
        CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
        unsigned char out[512], back[512];
        CK_ULONG len = sizeof(out), blen = sizeof(back);

        rv = p11->C_EncryptInit(s, &mech, b->pub_obj);
        if (rv == CKR_OK)
            rv = p11->C_Encrypt(s, b->plain, sizeof(b->plain), out, &len);
        if (rv != CKR_OK) {
            fail(w, "C_Encrypt: 0x%lx", (unsigned long)rv);
            return -1;
        }
        if (len != b->mod_len) {
            fail(w, "C_Encrypt: %lu bytes, not %zu", (unsigned long)len,
                 b->mod_len);
            return -1;
        }
        if (!first)
            return 0;
        rv = p11->C_DecryptInit(s, &mech, b->priv);
        if (rv == CKR_OK)
            rv = p11->C_Decrypt(s, out, len, back, &blen);
        if (rv != CKR_OK || blen != sizeof(b->plain) ||
            memcmp(back, b->plain, blen) != 0) {
            fail(w, "C_Encrypt: the ciphertext does not decrypt (0x%lx)",
                 (unsigned long)rv);
            return -1;
        }
        return 0;
    }
    case OP_OSSL_ENCRYPT: {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, b->pub, NULL);
        unsigned char out[1024];
        size_t len = sizeof(out);
        int ok;

        ok = ctx && EVP_PKEY_encrypt_init(ctx) > 0 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) > 0 &&
             EVP_PKEY_encrypt(ctx, out, &len, b->plain, sizeof(b->plain)) > 0;
        EVP_PKEY_CTX_free(ctx);
        if (!ok || len != b->mod_len) {
            ERR_clear_error();
            fail(w, "EVP_PKEY_encrypt failed");
            return -1;
        }
        return 0;
    }
    case OP_VERIFY: {
        CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};

        rv = p11->C_VerifyInit(s, &mech, b->pub_obj);
        if (rv == CKR_OK)
            rv = p11->C_Verify(s, b->msg, sizeof(b->msg), b->sig, b->sig_len);
        if (rv != CKR_OK) {
            fail(w, "C_Verify: 0x%lx", (unsigned long)rv);
            return -1;
        }
        return 0;
    }
    case OP_OSSL_VERIFY:
        if (!verify_signature(b->pub, b->msg, sizeof(b->msg), b->sig,
                              b->sig_len)) {
            ERR_clear_error();
            fail(w, "EVP_DigestVerify failed");
            return -1;
        }
        return 0;
    case OP_GCM:
    case OP_GCM_MP:
    case OP_GCM_4K: {
        static __thread unsigned char out[GCM_SEG + 16];

        return gcm_segment(w, b->seg, b->op != OP_GCM_4K ? GCM_SEG : 4096,
                           w->ops, b->op == OP_GCM_MP, first, out);
    }
    case OP_GCM_FILE: {
        unsigned long i = atomic_fetch_add(&b->next_seg, 1);
        static __thread unsigned char in[GCM_SEG], out[GCM_SEG + 16];
        size_t n = 0;
        ssize_t got;

        while (n < GCM_SEG) {
            got = pread(b->file_fd, in + n, GCM_SEG - n,
                        (off_t)i * GCM_SEG + (off_t)n);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0) {
                fail(w, "reading the file: %s", strerror(errno));
                return -1;
            }
            if (got == 0)
                break;
            n += (size_t)got;
        }
        if (n == 0) { /* past the end: the measurement is over */
            atomic_store(&b->stop, 1);
            return 1;
        }
        if (gcm_segment(w, in, n, i, true, first, out) != 0)
            return -1;
        if (write(b->null_fd, out, n + 16) != (ssize_t)(n + 16)) {
            fail(w, "writing to /dev/null: %s", strerror(errno));
            return -1;
        }
        return 0;
    }
    case OP_OSSL_GCM:
    case OP_OSSL_GCM_4K: {
        static __thread unsigned char out[GCM_SEG + 16];
        unsigned char iv[12] = {0};

        memcpy(iv, &w->ops, sizeof(w->ops) < 12 ? sizeof(w->ops) : 12);
        if (gcm_encrypt(b, iv, b->seg, b->op == OP_OSSL_GCM ? GCM_SEG : 4096,
                        out) != 0) {
            fail(w, "EVP AES-256-GCM failed");
            return -1;
        }
        return 0;
    }
    case OP_COUNT:
        break;
    }
    fail(w, "unknown operation");
    return -1;
}

/* Whether the next operation is checked in full: the first one, where no
 * warm-up did it. */
static int first_check(const struct worker *w)
{
    return (w->b->warmup == 0 || w->b->op == OP_GCM_FILE) && w->ops == 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct bench *b = w->b;
    unsigned long i;

    /* The first operation of each thread is checked in full. gcm-file has
     * no warm-up: it would take segments of the file. */
    for (i = 0; i < b->warmup && b->op != OP_GCM_FILE && !w->failed; i++)
        run_op(w, i == 0);

    pthread_barrier_wait(&b->start);
    clock_gettime(CLOCK_MONOTONIC, &w->t0);
    if (b->count) {
        while (w->ops < b->count && !w->failed && !atomic_load(&b->stop)) {
            if (run_op(w, first_check(w)) == 0)
                w->ops++;
        }
    } else {
        while (!w->failed &&
               !atomic_load_explicit(&b->stop, memory_order_relaxed)) {
            if (run_op(w, first_check(w)) == 0)
                w->ops++;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &w->t1);
    if (w->failed)
        atomic_store(&b->stop, 1);
    return NULL;
}

/* The operations with an AES key of their own in each thread's session. */
static int is_gcm(enum op op)
{
    return op == OP_GCM || op == OP_GCM_MP || op == OP_GCM_4K ||
           op == OP_GCM_FILE;
}

/*
 * Runs one measurement; returns ops/s and sets *PER_CPU to ops per CPU
 * second, or returns -1 on a failed operation.
 */
static double measure(struct bench *b, unsigned nthreads, double *per_cpu)
{
    struct worker w[MAX_THREADS];
    CK_FLAGS flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    struct timespec t0, t1;
    double cpu0, cpu;
    unsigned long total = 0;
    unsigned i;
    int failed = 0;
    CK_RV rv;

    memset(w, 0, sizeof(w));
    atomic_store(&b->stop, 0);
    atomic_store(&b->next_seg, 0);
    if (b->op == OP_GCM_FILE && b->file_fd < 0)
        die("gcm-file needs a file (-f FILE)");
    if (pthread_barrier_init(&b->start, NULL, nthreads + 1) != 0)
        die("pthread_barrier_init failed");
    for (i = 0; i < nthreads; i++) {
        w[i].b = b;
        rv = b->p11->C_OpenSession(b->slot, flags, NULL, NULL, &w[i].session);
        if (rv != CKR_OK)
            die("C_OpenSession: 0x%lx", (unsigned long)rv);
        if (b->op == OP_WRAP_SHA256 || is_gcm(b->op))
            w[i].aes = session_aes_key(b, w[i].session);
    }
    for (i = 0; i < nthreads; i++) {
        if (pthread_create(&w[i].tid, NULL, worker_main, &w[i]) != 0)
            die("pthread_create failed");
    }
    pthread_barrier_wait(&b->start);
    cpu0 = cpu_seconds();
    if (!b->count && b->op != OP_GCM_FILE) {
        struct timespec d;

        d.tv_sec = (time_t)b->seconds;
        d.tv_nsec = (long)((b->seconds - (double)d.tv_sec) * 1e9);
        while (nanosleep(&d, &d) != 0 && errno == EINTR)
            ;
        atomic_store(&b->stop, 1);
    }
    for (i = 0; i < nthreads; i++)
        pthread_join(w[i].tid, NULL);
    cpu = cpu_seconds() - cpu0;
    pthread_barrier_destroy(&b->start);

    t0 = w[0].t0;
    t1 = w[0].t1;
    for (i = 0; i < nthreads; i++) {
        if (ts_before(&w[i].t0, &t0))
            t0 = w[i].t0;
        if (ts_before(&t1, &w[i].t1))
            t1 = w[i].t1;
        total += w[i].ops;
        if (w[i].failed) {
            fprintf(stderr, "%s: %s, thread %u: %s\n", prog, op_names[b->op],
                    i + 1, w[i].err);
            failed = 1;
        }
        if (b->token_key && w[i].aes != CK_INVALID_HANDLE && is_gcm(b->op) &&
            (rv = b->p11->C_DestroyObject(w[i].session, w[i].aes)) != CKR_OK) {
            fprintf(stderr, "%s: C_DestroyObject (token key): 0x%lx\n", prog,
                    (unsigned long)rv);
            failed = 1;
        }
        rv = b->p11->C_CloseSession(w[i].session);
        if (rv != CKR_OK) {
            fprintf(stderr, "%s: C_CloseSession: 0x%lx\n", prog,
                    (unsigned long)rv);
            failed = 1;
        }
    }
    if (b->verbose)
        fprintf(stderr, "%s: %s x%u: %lu ops in %.3f s, %.3f s of CPU\n", prog,
                op_names[b->op], nthreads, total, elapsed(&t0, &t1), cpu);
    if (failed)
        return -1;
    *per_cpu = cpu > 0 ? (double)total / cpu : 0;
    return elapsed(&t0, &t1) > 0 ? (double)total / elapsed(&t0, &t1) : 0;
}

/* ---- main --------------------------------------------------------------- */

static unsigned long parse_ulong(const char *s, const char *what)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v == ULONG_MAX)
        die("bad %s: %s", what, s);
    return v;
}

int main(int argc, char **argv)
{
    static struct bench b;
    unsigned threads[16];
    size_t nthreads = 0, i, j;
    int ops[OP_COUNT];
    size_t nops = 0;
    const char *op_list = "unwrap,decrypt,sign", *thread_list = "1,2";
    const char *module, *token, *pin, *key_label;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE pub;
    int opt, failed = 0;
    char *copy, *tok, *save;
    CK_RV rv;

    b.seconds = 3;
    b.warmup = 20;
    b.file_fd = -1;
    b.null_fd = -1;
    while ((opt = getopt(argc, argv, "d:n:t:o:w:f:vTh")) != -1) {
        switch (opt) {
        case 'd':
            b.seconds = strtod(optarg, NULL);
            if (!(b.seconds > 0 && b.seconds < 86400))
                die("bad duration: %s", optarg);
            b.count = 0;
            break;
        case 'n':
            b.count = parse_ulong(optarg, "operation count");
            if (b.count == 0)
                die("bad operation count: %s", optarg);
            break;
        case 't':
            thread_list = optarg;
            break;
        case 'o':
            op_list = optarg;
            break;
        case 'w':
            b.warmup = parse_ulong(optarg, "warm-up count");
            break;
        case 'f':
            if (b.file_fd >= 0)
                close(b.file_fd);
            if (b.null_fd >= 0)
                close(b.null_fd);
            b.file_fd = open(optarg, O_RDONLY | O_CLOEXEC);
            if (b.file_fd < 0)
                die("%s: %s", optarg, strerror(errno));
            b.null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (b.null_fd < 0)
                die("/dev/null: %s", strerror(errno));
            break;
        case 'v':
            b.verbose = 1;
            break;
        case 'T':
            b.token_key = 1;
            break;
        default:
            usage();
        }
    }
    if (argc - optind != 4)
        usage();
    module = argv[optind];
    token = argv[optind + 1];
    pin = argv[optind + 2];
    key_label = argv[optind + 3];

    copy = strdup(thread_list);
    for (tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        unsigned long n = parse_ulong(tok, "thread count");

        if (n < 1 || n > MAX_THREADS || nthreads == CMK_ARRAY_SIZE(threads))
            die("bad thread count: %s", tok);
        threads[nthreads++] = (unsigned)n;
    }
    free(copy);
    copy = strdup(op_list);
    for (tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        for (j = 0; j < OP_COUNT; j++)
            if (strcmp(tok, op_names[j]) == 0)
                break;
        if (j == OP_COUNT || nops == OP_COUNT)
            die("bad operation: %s", tok);
        ops[nops++] = (int)j;
    }
    free(copy);
    if (nthreads == 0 || nops == 0)
        usage();

    b.p11 = load_module(module);
    b.slot = find_slot(b.p11, token);
    /* This session keeps the login for the threads' sessions. */
    rv = b.p11->C_OpenSession(b.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                              NULL, &s);
    if (rv != CKR_OK)
        die("C_OpenSession: 0x%lx", (unsigned long)rv);
    if (strcmp(pin, "-") != 0) {
        rv = b.p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
            die("C_Login: 0x%lx", (unsigned long)rv);
    }
    b.priv = find_key(b.p11, s, CKO_PRIVATE_KEY, key_label);
    pub = find_key(b.p11, s, CKO_PUBLIC_KEY, key_label);
    b.pub_obj = pub;
    b.pub = read_public(b.p11, s, pub, &b.mod_len);
    if (b.mod_len != SIG_LEN)
        die("key \"%s\" is %zu bits, not 2048", key_label, b.mod_len * 8);

    if (RAND_bytes(b.seg, sizeof(b.seg)) != 1 ||
        RAND_bytes(b.aes_key, sizeof(b.aes_key)) != 1 ||
        RAND_bytes(b.plain, sizeof(b.plain)) != 1 ||
        RAND_bytes(b.msg, sizeof(b.msg)) != 1)
        ossl_die("RAND_bytes");
    b.wrapped_sha1_len =
        public_encrypt(b.pub, EVP_sha1(), b.aes_key, sizeof(b.aes_key),
                       b.wrapped_sha1, sizeof(b.wrapped_sha1));
    b.wrapped_sha256_len =
        public_encrypt(b.pub, EVP_sha256(), b.aes_key, sizeof(b.aes_key),
                       b.wrapped_sha256, sizeof(b.wrapped_sha256));
    b.cipher_len = public_encrypt(b.pub, NULL, b.plain, sizeof(b.plain),
                                  b.cipher, sizeof(b.cipher));
    for (i = 0; i < nops; i++) {
        /* Only for verify: on a Key Vault token a signature is a request. */
        CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};

        if (ops[i] != OP_VERIFY && ops[i] != OP_OSSL_VERIFY)
            continue;
        b.sig_len = sizeof(b.sig);
        rv = b.p11->C_SignInit(s, &mech, b.priv);
        if (rv == CKR_OK)
            rv = b.p11->C_Sign(s, b.msg, sizeof(b.msg), b.sig, &b.sig_len);
        if (rv != CKR_OK ||
            !verify_signature(b.pub, b.msg, sizeof(b.msg), b.sig, b.sig_len))
            die("the signature for verify: 0x%lx", (unsigned long)rv);
        break;
    }

    for (i = 0; i < nops; i++) {
        for (j = 0; j < nthreads; j++) {
            double rate, per_cpu = 0;

            b.op = (enum op)ops[i];
            rate = measure(&b, threads[j], &per_cpu);
            if (rate < 0) {
                failed = 1;
                continue;
            }
            printf("%s %u %.1f %.1f\n", op_names[b.op], threads[j], rate,
                   per_cpu);
            fflush(stdout);
        }
    }

    if (strcmp(pin, "-") != 0)
        b.p11->C_Logout(s);
    b.p11->C_CloseSession(s);
    rv = b.p11->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "%s: C_Finalize: 0x%lx\n", prog, (unsigned long)rv);
        failed = 1;
    }
    EVP_PKEY_free(b.pub);
    return failed ? 1 : 0;
}
