/*
 * kv-start - start-up time and memory of a PKCS#11 module with many keys
 * (the Key Vault benchmark, docs/performance.md).
 *
 *   kv-start MODULE TOKEN-LABEL KEY-LABEL
 *   kv-start -m COUNT MODULE TOKEN-LABEL PREFIX
 *
 * Start-up (first form): loads MODULE, then times C_Initialize, finding the
 * token, a session, the key pair labelled KEY-LABEL (C_FindObjects with the
 * label), C_WrapKey of an AES-256 session key with its public key and
 * C_UnwrapKey with its private key (both RSA-OAEP, SHA-256); the unwrapped
 * key must be the one that was wrapped. Prints
 *   start INIT_MS FIRST_UNWRAP_MS TOTAL_MS
 * (INIT_MS: C_Initialize alone; FIRST_UNWRAP_MS: the rest).
 *
 * Memory (-m): reads VmRSS from /proc/self/status after loading MODULE and
 * before C_Initialize, then, for each of the COUNT keys PREFIX-0 ..
 * PREFIX-(COUNT-1) (zero-padded to the width of COUNT-1, as the Key Vault
 * emulator names bulk keys), finds the key pair by label, wraps and
 * unwraps once as above and destroys the unwrapped key; reads VmRSS again
 * and prints
 *   memory COUNT RSS_BEFORE_KIB RSS_AFTER_KIB GROWTH_KIB SECONDS
 *          ANON_BEFORE_KIB ANON_AFTER_KIB
 * (VmRSS, then RssAnon: VmRSS without the library pages the process has
 * touched, which other processes share).
 *
 * The token must not need C_Login (a Key Vault token without pin =).
 * Exit status 1 when an operation fails.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"

static const char *prog = "kv-start";
static CK_FUNCTION_LIST_PTR p11;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: %s MODULE TOKEN-LABEL KEY-LABEL\n"
            "       %s -m COUNT MODULE TOKEN-LABEL PREFIX\n",
            prog, prog);
    exit(2);
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A field of /proc/self/status in KiB: "VmRSS" (all resident pages) or
 * "RssAnon" (the process's own memory, without the shared libraries'
 * pages it has touched). */
static long status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t n = strlen(field);
    long v = -1;

    if (!f)
        die("cannot read /proc/self/status");
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, n) == 0 && line[n] == ':' &&
            sscanf(line + n + 1, "%ld kB", &v) == 1)
            break;
    fclose(f);
    return v;
}

static int label_is(const CK_UTF8CHAR *field, size_t size, const char *want)
{
    size_t n = size;

    while (n > 0 && (field[n - 1] == ' ' || field[n - 1] == '\0'))
        n--;
    return strlen(want) == n && memcmp(field, want, n) == 0;
}

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64, i;
    CK_TOKEN_INFO info;
    CK_RV rv;

    rv = p11->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK)
        die("C_GetSlotList: 0x%lx", (unsigned long)rv);
    for (i = 0; i < n; i++)
        if (p11->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            label_is(info.label, sizeof(info.label), label))
            return slots[i];
    die("no token labelled \"%s\"", label);
    return 0;
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                                 const char *label)
{
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
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
    if (n != 1)
        die("%lu %s keys labelled \"%s\"", (unsigned long)n,
            cls == CKO_PRIVATE_KEY ? "private" : "public", label);
    return h[0];
}

static const unsigned char aes_value[32] = "kv-start: an AES-256 session key";

/* An extractable AES-256 session key with the value aes_value. */
static CK_OBJECT_HANDLE session_aes_key(CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        {CKA_VALUE, (void *)aes_value, sizeof(aes_value)},
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv;

    rv = p11->C_CreateObject(s, tmpl, CMK_ARRAY_SIZE(tmpl), &h);
    if (rv != CKR_OK)
        die("C_CreateObject: 0x%lx", (unsigned long)rv);
    return h;
}

/*
 * Finds the key pair LABEL, wraps AES with the public key, unwraps with the
 * private key and checks the value (the unwrapped key is extractable and
 * not sensitive), then destroys it.
 */
static void use_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE aes,
                    const char *label)
{
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256,
                                    CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},       {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},         {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
    };
    unsigned char wrapped[1024], value[64];
    CK_ULONG wlen = sizeof(wrapped);
    CK_ATTRIBUTE get = {CKA_VALUE, value, sizeof(value)};
    CK_OBJECT_HANDLE priv, pub, key = CK_INVALID_HANDLE;
    CK_RV rv;

    priv = find_key(s, CKO_PRIVATE_KEY, label);
    pub = find_key(s, CKO_PUBLIC_KEY, label);
    rv = p11->C_WrapKey(s, &mech, pub, aes, wrapped, &wlen);
    if (rv != CKR_OK)
        die("%s: C_WrapKey: 0x%lx", label, (unsigned long)rv);
    rv = p11->C_UnwrapKey(s, &mech, priv, wrapped, wlen, tmpl,
                          CMK_ARRAY_SIZE(tmpl), &key);
    if (rv != CKR_OK)
        die("%s: C_UnwrapKey: 0x%lx", label, (unsigned long)rv);
    rv = p11->C_GetAttributeValue(s, key, &get, 1);
    if (rv != CKR_OK || get.ulValueLen != sizeof(aes_value) ||
        memcmp(value, aes_value, sizeof(aes_value)) != 0)
        die("%s: the unwrapped key is not the one wrapped", label);
    rv = p11->C_DestroyObject(s, key);
    if (rv != CKR_OK)
        die("%s: C_DestroyObject: 0x%lx", label, (unsigned long)rv);
}

static CK_SESSION_HANDLE open_session(const char *token)
{
    CK_SESSION_HANDLE s;
    CK_RV rv;

    rv = p11->C_OpenSession(
        find_slot(token), CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        die("C_OpenSession: 0x%lx", (unsigned long)rv);
    return s;
}

static void initialize(void)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    rv = p11->C_Initialize(&args);
    if (rv != CKR_OK)
        die("C_Initialize: 0x%lx", (unsigned long)rv);
}

int main(int argc, char **argv)
{
    CK_C_GetFunctionList get;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE aes;
    unsigned long count = 0;
    void *dl;
    int opt;

    while ((opt = getopt(argc, argv, "m:h")) != -1) {
        switch (opt) {
        case 'm': {
            char *end;

            errno = 0;
            count = strtoul(optarg, &end, 10);
            if (errno || *end || count == 0 || count > 1000000)
                usage();
            break;
        }
        default:
            usage();
        }
    }
    if (argc - optind != 3)
        usage();
    dl = dlopen(argv[optind], RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        die("cannot load %s: %s", argv[optind], dlerror());
    *(void **)&get = dlsym(dl, "C_GetFunctionList");
    if (!get || get(&p11) != CKR_OK)
        die("%s: no C_GetFunctionList", argv[optind]);

    if (count == 0) {
        double t0, t1, t2;

        t0 = now_ms();
        initialize();
        t1 = now_ms();
        s = open_session(argv[optind + 1]);
        aes = session_aes_key(s);
        use_key(s, aes, argv[optind + 2]);
        t2 = now_ms();
        printf("start %.2f %.2f %.2f\n", t1 - t0, t2 - t1, t2 - t0);
    } else {
        unsigned long i, width = 1, m;
        long before, after, anon_before, anon_after;
        char label[256];
        double t0;

        for (m = count - 1; m >= 10; m /= 10)
            width++;
        before = status_kib("VmRSS");
        anon_before = status_kib("RssAnon");
        t0 = now_ms();
        initialize();
        s = open_session(argv[optind + 1]);
        aes = session_aes_key(s);
        for (i = 0; i < count; i++) {
            snprintf(label, sizeof(label), "%s-%0*lu", argv[optind + 2],
                     (int)width, i);
            use_key(s, aes, label);
        }
        after = status_kib("VmRSS");
        anon_after = status_kib("RssAnon");
        printf("memory %lu %ld %ld %ld %.2f %ld %ld\n", count, before, after,
               after - before, (now_ms() - t0) / 1e3, anon_before, anon_after);
    }
    p11->C_CloseSession(s);
    p11->C_Finalize(NULL);
    return 0;
}
