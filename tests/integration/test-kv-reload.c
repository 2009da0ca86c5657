/*
 * A key's older version stays usable while another thread reloads the key
 * (a keyvault token, the Key Vault emulator). The key has two versions;
 * a session holds the older one's private key. One thread searches for
 * NAME@CURRENT, which reads the key again, and the emulator holds its
 * versions listing (GET /keys/NAME/versions) for a few seconds. While it
 * is held, the other thread unwraps with the older version and searches
 * for the private keys: the unwrap succeeds with the right value, and the
 * search still finds both versions (a search that lost the older one
 * would also make its handles invalid in every session). Then a reload
 * whose versions listing fails (500, retries spent) leaves the older
 * version as usable as it was. And a reload that began before the key was
 * rotated, and ends after another reload found the new version, leaves
 * the new version current.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "kv-setup.h"
#include "p11.h"
#include "test.h"

static CK_SLOT_ID slot;
static char current[64]; /* the current version's id */

static CK_OBJECT_CLASS priv_class = CKO_PRIVATE_KEY;

/* The private keys labelled label (NULL: all): up to 8 in out; returns how
 * many, or 999 when the search fails. */
static CK_ULONG find_privs(CK_SESSION_HANDLE s, const char *label,
                           CK_OBJECT_HANDLE out[8])
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &priv_class, sizeof(priv_class)},
        {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
    };
    CK_ULONG n = 0;

    if (p11->C_FindObjectsInit(s, t, label ? 2 : 1) != CKR_OK)
        return 999;
    if (p11->C_FindObjects(s, out, 8, &n) != CKR_OK)
        n = 999;
    p11->C_FindObjectsFinal(s);
    return n;
}

/* Wraps a known data key under priv's public key with OpenSSL alone and
 * unwraps it through priv: CKR_OK only when the value comes back. */
static CK_RV unwrap_known(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv)
{
    CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
    CK_KEY_TYPE aes_type = CKK_AES;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_RSA_PKCS_OAEP_PARAMS params = {CKM_SHA256, CKG_MGF1_SHA256,
                                      CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &params, sizeof(params)};
    CK_BYTE dek[32], blob[512], val[32];
    CK_ULONG vlen = sizeof(val);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret_class, sizeof(secret_class)},
        {CKA_KEY_TYPE, &aes_type, sizeof(aes_type)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
    };
    CK_ATTRIBUTE get = {CKA_VALUE, val, vlen};
    CK_OBJECT_HANDLE h = 0;
    EVP_PKEY *pk = p11_public_key(s, priv);
    size_t blen;
    CK_RV rv;

    memset(dek, 0xa7, sizeof(dek));
    blen = pk ? p11_oaep_wrap(pk, EVP_sha256(), dek, sizeof(dek), blob) : 0;
    EVP_PKEY_free(pk);
    if (blen == 0)
        return CKR_GENERAL_ERROR;
    rv = p11->C_UnwrapKey(s, &oaep, priv, blob, (CK_ULONG)blen, t,
                          CMK_ARRAY_SIZE(t), &h);
    if (rv != CKR_OK)
        return rv;
    rv = p11->C_GetAttributeValue(s, h, &get, 1);
    p11->C_DestroyObject(s, h);
    if (rv == CKR_OK && (get.ulValueLen != 32 || memcmp(val, dek, 32) != 0))
        rv = CKR_GENERAL_ERROR;
    return rv;
}

/* The reloading thread: a search for NAME@CURRENT on its own session. */
static void *reload(void *arg)
{
    CK_ULONG *found = arg;
    CK_SESSION_HANDLE s = p11_open(slot, false);
    CK_OBJECT_HANDLE h[8];
    char label[96];

    snprintf(label, sizeof(label), "kek@%s", current);
    *found = find_privs(s, label, h);
    p11->C_CloseSession(s);
    return NULL;
}

/* The version of the private key marked current, after a search of all
 * of them, in out; the older one's handle in *older (if not NULL). */
static void current_version(CK_SESSION_HANDLE s, char *out, size_t size,
                            CK_OBJECT_HANDLE *older)
{
    CK_OBJECT_HANDLE h[8];
    CK_ULONG n = find_privs(s, NULL, h), i, len;
    char *ver;

    out[0] = '\0';
    for (i = 0; i < n && i < 8; i++) {
        if (p11_bool(s, h[i], CKA_CMK_CURRENT) == 0) {
            if (older != NULL)
                *older = h[i];
        } else if ((ver = p11_attr(s, h[i], CKA_CMK_VERSION, &len)) != NULL) {
            snprintf(out, size, "%.*s", (int)len, ver);
            free(ver);
        }
    }
}

/* The next versions listing held for 8 s (20 s in the valgrind and
 * thread-sanitizer gates, where this program is slower): a window the
 * checks made meanwhile fall in. */
static void hold_listing(void)
{
    kv_admin(getenv("CMKP11_TEST_LIGHT") != NULL
                 ? "fault delay --match kvemu:getKeyVersions --delay-ms 20000"
                 : "fault delay --match kvemu:getKeyVersions --delay-ms 8000");
}

/* Waits until the emulator has taken its fault on the versions listing
 * (it leaves the list of faults then): 60 s at most. */
static bool fault_taken(void)
{
    int i;

    for (i = 0; i < 600; i++) {
        if (!kv_admin_says("faults", "getKeyVersions"))
            return true;
        usleep(100000);
    }
    return false;
}

int main(void)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE h[8], old = 0;
    CK_ULONG n = 1, found = 0;
    pthread_t th;
    char *conf, before[64], after[64];

    kv_start();
    kv_admin("create-key kvemu kek");
    kv_admin("create-key kvemu kek"); /* a second version, now current */
    p11_load(getenv("CMKP11_MODULE"));
    conf = kv_conf("retries = 0\n");
    is_rv(p11_init(conf), CKR_OK, "C_Initialize");
    free(conf);
    is_rv(p11->C_GetSlotList(CK_TRUE, &slot, &n), CKR_OK, "C_GetSlotList");
    s = p11_open(slot, false);
    n = find_privs(s, NULL, h);
    is_num(n, 2, "the key's two versions are listed");
    current_version(s, current, sizeof(current), &old);
    if (old == 0 || current[0] == '\0')
        test_bail("no older version, or no current one");
    is_rv(unwrap_known(s, old), CKR_OK, "the older version unwraps");

    /* A reload whose versions listing is held. */
    hold_listing();
    if (pthread_create(&th, NULL, reload, &found) != 0)
        test_bail("pthread_create failed");
    ok(fault_taken(), "a search for kek@CURRENT reads the key again, and "
                      "its versions listing is held");
    is_rv(unwrap_known(s, old), CKR_OK,
          "meanwhile the older version unwraps on another thread");
    n = find_privs(s, NULL, h);
    is_num(n, 2, "meanwhile a search for the private keys finds both versions");
    ok(n == 2 && (h[0] == old || h[1] == old),
       "with the same handle for the older one");
    pthread_join(th, NULL);
    is_num(found, 0,
           "the search for kek@CURRENT ends well and finds nothing: "
           "the current version is labelled kek");
    is_rv(unwrap_known(s, old), CKR_OK,
          "after the reload the older version unwraps");

    /* A reload whose versions listing fails changes nothing. */
    kv_admin("fault 500 --match kvemu:getKeyVersions --count 5");
    reload(&found);
    is_rv(unwrap_known(s, old), CKR_OK,
          "after a reload whose versions listing failed (500) the older "
          "version still unwraps");
    kv_admin("clear-faults");
    n = find_privs(s, NULL, h);
    ok(n == 2 && (h[0] == old || h[1] == old),
       "and a search finds both versions, the older one with its handle");

    /* Two reloads: the first asks for the key, the key is rotated, the
     * second reads it again and ends; then the first ends. What the
     * second found stands. */
    hold_listing();
    if (pthread_create(&th, NULL, reload, &found) != 0)
        test_bail("pthread_create failed");
    ok(fault_taken(), "a reload has read the current version, and its "
                      "versions listing is held");
    kv_admin("create-key kvemu kek"); /* a third version, now current */
    reload(&found);                   /* reads the key again, and ends */
    current_version(s, before, sizeof(before), NULL);
    ok(before[0] != '\0' && strcmp(before, current) != 0,
       "meanwhile the key is rotated, and a second reload makes the new "
       "version current");
    pthread_join(th, NULL);
    current_version(s, after, sizeof(after), NULL);
    ok(strcmp(after, before) == 0,
       "once the first reload ends, the new version is still current "
       "(now %s; %s before the rotation)",
       after, current);

    p11->C_CloseSession(s);
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    return test_done();
}
