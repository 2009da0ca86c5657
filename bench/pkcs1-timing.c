/*
 * pkcs1-timing - does C_Decrypt with CKM_RSA_PKCS tell a valid padding
 * from an invalid one, by its return code or by its time?
 *
 *   pkcs1-timing [-n COUNT] MODULE TOKEN-LABEL PIN KEY-LABEL
 *
 * Makes COUNT (2000) ciphertexts with valid PKCS#1 v1.5 padding and COUNT
 * with invalid padding (raw RSA of blocks that break one rule each: no
 * 00 02, a short padding, no separator) from the public key, shuffles them
 * together, and times C_DecryptInit + C_Decrypt of each on the module's
 * own path (CLOCK_MONOTONIC around the two calls; one warm-up round
 * first). Prints the count of each return code per class, the medians,
 * and the two-sample Kolmogorov-Smirnov statistic D with its asymptotic
 * p-value: a small p-value (below 0.01, say) means the timings tell the
 * classes apart. PIN "-" skips C_Login. scripts/bench-pkcs1.sh runs it on
 * SoftHSM with rsa-pkcs1-decrypt = implicit-rejection and allow.
 */
#include "config.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "compat.h"

static CK_FUNCTION_LIST *f;

static void die(const char *what, CK_RV rv)
{
    fprintf(stderr, "pkcs1-timing: %s: 0x%lx\n", what, (unsigned long)rv);
    exit(1);
}

static CK_OBJECT_HANDLE find(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                             const char *label)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG n = 0;

    if (f->C_FindObjectsInit(s, t, 2) != CKR_OK)
        return 0;
    f->C_FindObjects(s, &h, 1, &n);
    f->C_FindObjectsFinal(s);
    return n == 1 ? h : 0;
}

static size_t raw_encrypt(EVP_PKEY *pk, const unsigned char *em, size_t k,
                          unsigned char *out, int pad)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t olen = k;

    if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, pad) <= 0 ||
        EVP_PKEY_encrypt(ctx, out, &olen, em, pad == RSA_NO_PADDING ? k : 32) <=
            0)
        olen = 0;
    EVP_PKEY_CTX_free(ctx);
    return olen;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* The asymptotic Kolmogorov distribution: P(D > d) for sizes n, m. */
static double ks_p(double d, size_t n, size_t m)
{
    double ne = (double)n * (double)m / (double)(n + m);
    double lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * d, sum = 0;
    int j;

    for (j = 1; j <= 100; j++)
        sum += (j % 2 ? 2.0 : -2.0) * exp(-2.0 * j * j * lambda * lambda);
    return sum < 0 ? 0 : sum > 1 ? 1 : sum;
}

static double ks_d(double *a, size_t n, double *b, size_t m)
{
    size_t i = 0, j = 0;
    double d = 0;

    qsort(a, n, sizeof(*a), cmp_double);
    qsort(b, m, sizeof(*b), cmp_double);
    while (i < n && j < m) {
        double x = a[i] <= b[j] ? a[i] : b[j];
        while (i < n && a[i] <= x)
            i++;
        while (j < m && b[j] <= x)
            j++;
        if (fabs((double)i / n - (double)j / m) > d)
            d = fabs((double)i / n - (double)j / m);
    }
    return d;
}

int main(int argc, char **argv)
{
    size_t count = 2000, k, i, total, nv = 0, ni = 0;
    CK_C_GetFunctionList gfl;
    CK_SLOT_ID slots[16];
    CK_ULONG nslots = 16, j;
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE priv, pub;
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    unsigned char *cts, out[1024];
    int *valid, argi = 1;
    double *tv, *ti;
    CK_RV *rvs;
    EVP_PKEY *pk;
    void *dl;

    if (argc > 2 && strcmp(argv[1], "-n") == 0) {
        count = (size_t)atol(argv[2]);
        argi = 3;
    }
    if (argc - argi != 4 || count == 0) {
        fprintf(stderr, "usage: pkcs1-timing [-n COUNT] MODULE TOKEN-LABEL "
                        "PIN KEY-LABEL\n");
        return 2;
    }
    dl = dlopen(argv[argi], RTLD_NOW);
    gfl = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
    if (gfl == NULL || gfl(&f) != CKR_OK)
        die("cannot load the module", 0);
    if (f->C_Initialize(NULL) != CKR_OK ||
        f->C_GetSlotList(CK_TRUE, slots, &nslots) != CKR_OK)
        die("C_Initialize", 0);
    for (j = 0; j < nslots && s == 0; j++) {
        CK_TOKEN_INFO ti_;
        size_t l = strlen(argv[argi + 1]);
        if (f->C_GetTokenInfo(slots[j], &ti_) == CKR_OK &&
            memcmp(ti_.label, argv[argi + 1], l) == 0 &&
            (l == 32 || ti_.label[l] == ' '))
            f->C_OpenSession(slots[j], CKF_SERIAL_SESSION, NULL, NULL, &s);
    }
    if (s == 0)
        die("no such token", 0);
    if (strcmp(argv[argi + 2], "-") != 0 &&
        f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)argv[argi + 2],
                   strlen(argv[argi + 2])) != CKR_OK)
        die("C_Login", 0);
    priv = find(s, CKO_PRIVATE_KEY, argv[argi + 3]);
    pub = find(s, CKO_PUBLIC_KEY, argv[argi + 3]);
    {
        unsigned char der[2048];
        CK_ATTRIBUTE a = {CKA_PUBLIC_KEY_INFO, der, sizeof(der)};
        const unsigned char *p = der;
        if (priv == 0 || pub == 0 ||
            f->C_GetAttributeValue(s, pub, &a, 1) != CKR_OK)
            die("no such key", 0);
        pk = d2i_PUBKEY(NULL, &p, (long)a.ulValueLen);
        if (pk == NULL)
            die("the public key does not parse", 0);
    }
    k = (size_t)EVP_PKEY_get_size(pk);
    total = 2 * count;
    cts = malloc(total * k);
    valid = calloc(total, sizeof(*valid));
    tv = calloc(count, sizeof(*tv));
    ti = calloc(count, sizeof(*ti));
    rvs = calloc(total, sizeof(*rvs));
    if (cts == NULL || valid == NULL || tv == NULL || ti == NULL || rvs == NULL)
        die("out of memory", 0);
    for (i = 0; i < total; i++)
        valid[i] = i < count;
    for (i = total - 1; i > 0; i--) {
        unsigned r;
        size_t x;
        int tmp;
        RAND_bytes((unsigned char *)&r, sizeof(r));
        x = r % (i + 1);
        tmp = valid[i], valid[i] = valid[x], valid[x] = tmp;
    }
    for (i = 0; i < total; i++) {
        unsigned char em[1024], key[32];
        size_t z;
        if (valid[i]) {
            RAND_bytes(key, sizeof(key));
            z = raw_encrypt(pk, key, k, cts + i * k, RSA_PKCS1_PADDING);
        } else {
            /* 00 02 PS 00 M with one rule broken, in turn. */
            RAND_bytes(em, (int)k);
            for (z = 2; z < k; z++)
                em[z] |= em[z] == 0;
            em[0] = 0, em[1] = 2, em[k - 33] = 0;
            if (i % 3 == 0)
                em[1] = 1; /* not 00 02 */
            else if (i % 3 == 1)
                em[9] = 0; /* padding of 7 bytes */
            else
                em[k - 33] = 0x5a; /* no separator */
            z = raw_encrypt(pk, em, k, cts + i * k, RSA_NO_PADDING);
        }
        if (z != k)
            die("OpenSSL encryption", 0);
    }
    /* A warm-up round, then the measured one. */
    for (int round = 0; round < 2; round++) {
        nv = ni = 0;
        for (i = 0; i < total; i++) {
            CK_ULONG olen = sizeof(out);
            double t0 = now(), t1;
            CK_RV rv = f->C_DecryptInit(s, &m, priv);
            if (rv == CKR_OK)
                rv = f->C_Decrypt(s, cts + i * k, (CK_ULONG)k, out, &olen);
            t1 = now();
            rvs[i] = rv;
            if (valid[i])
                tv[nv++] = (t1 - t0) * 1e6;
            else
                ti[ni++] = (t1 - t0) * 1e6;
        }
    }
    {
        CK_RV codes[8];
        size_t cv[8] = {0}, ci[8] = {0}, nc = 0, c;
        double d, p;
        for (i = 0; i < total; i++) {
            for (c = 0; c < nc && codes[c] != rvs[i]; c++)
                ;
            if (c == nc && nc < 8)
                codes[nc++] = rvs[i];
            if (c < 8)
                (valid[i] ? cv : ci)[c]++;
        }
        for (c = 0; c < nc; c++)
            printf("rv 0x%lx: valid %zu, invalid %zu\n",
                   (unsigned long)codes[c], cv[c], ci[c]);
        d = ks_d(tv, nv, ti, ni);
        p = ks_p(d, nv, ni);
        printf("median us: valid %.1f, invalid %.1f\n", tv[nv / 2], ti[ni / 2]);
        printf("KS D = %.4f, p = %.3g (n = %zu + %zu)\n", d, p, nv, ni);
    }
    f->C_Finalize(NULL);
    EVP_PKEY_free(pk);
    free(cts);
    free(valid);
    free(tv);
    free(ti);
    free(rvs);
    return 0;
}
