/*
 * C_Initialize, C_Finalize, C_GetInfo and the entry points: the
 * initialisation state, CK_C_INITIALIZE_ARGS, the choice of configuration
 * file and its errors, the 2.40 function list and the 3.0 interfaces.
 */
#include "config.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "p11.h"
#include "test.h"

static CK_RV create_mutex(CK_VOID_PTR_PTR m)
{
    *m = malloc(1);
    return CKR_OK;
}

static CK_RV destroy_mutex(CK_VOID_PTR m)
{
    free(m);
    return CKR_OK;
}

static CK_RV lock_mutex(CK_VOID_PTR m)
{
    (void)m;
    return CKR_OK;
}

/* Every entry point that takes no init-time shortcut must say
 * CKR_CRYPTOKI_NOT_INITIALIZED; returns how many did not. */
static int count_not_initialized(void)
{
    CK_INFO info;
    CK_SLOT_ID slots[4];
    CK_ULONG n = 4;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    CK_MECHANISM_TYPE mechs[4];
    CK_MECHANISM_INFO mi;
    CK_SESSION_HANDLE h = 1;
    CK_BYTE label[32];
    CK_ULONG bad = 0, i;
    CK_RV rv[64];
    int k = 0, wrong;

    memset(label, ' ', sizeof(label));
    rv[k++] = p11->C_Finalize(NULL);
    rv[k++] = p11->C_GetInfo(&info);
    rv[k++] = p11->C_GetSlotList(CK_FALSE, slots, &n);
    rv[k++] = p11->C_GetSlotInfo(0, &si);
    rv[k++] = p11->C_GetTokenInfo(0, &ti);
    n = 4;
    rv[k++] = p11->C_GetMechanismList(0, mechs, &n);
    rv[k++] = p11->C_GetMechanismInfo(0, CKM_RSA_PKCS, &mi);
    rv[k++] = p11->C_InitToken(0, (CK_BYTE *)"1234", 4, label);
    rv[k++] = p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &h);
    rv[k++] = p11->C_CloseAllSessions(0);
    rv[k++] = p11->C_WaitForSlotEvent(CKF_DONT_BLOCK, slots, NULL);
    for (i = 0; i < (CK_ULONG)k; i++) {
        if (rv[i] != CKR_CRYPTOKI_NOT_INITIALIZED) {
            test_diag("  call #%lu returned 0x%lx", i, rv[i]);
            bad++;
        }
    }
    k += p11_session_calls(h, CKR_CRYPTOKI_NOT_INITIALIZED, &wrong);
    ok(k > 55, "checked %d entry points", k);
    return (int)bad + wrong;
}

static void test_uninitialized(void)
{
    CK_FUNCTION_LIST *fl = NULL;

    is_rv(p11->C_GetFunctionList(NULL), CKR_ARGUMENTS_BAD,
          "C_GetFunctionList(NULL)");
    is_rv(p11->C_GetFunctionList(&fl), CKR_OK, "C_GetFunctionList");
    ok(fl == p11, "the same function list each time");
    is_num(fl->version.major, 2, "function list version 2.x");
    is_num(fl->version.minor, 40, "function list version 2.40");
    is_num(count_not_initialized(), 0,
           "every call before C_Initialize is NOT_INITIALIZED");
}

static void test_interfaces(void)
{
    CK_C_GetInterfaceList_t gil =
        (CK_C_GetInterfaceList_t)dlsym(p11_dl, "C_GetInterfaceList");
    CK_C_GetInterface_t gi =
        (CK_C_GetInterface_t)dlsym(p11_dl, "C_GetInterface");
    CK_INTERFACE list[4], *iface = NULL;
    CK_ULONG n = 0, i;
    CK_VERSION v30 = {3, 0}, v240 = {2, 40}, v99 = {9, 9};
    bool saw30 = false, saw240 = false;

    ok(gil != NULL && gi != NULL, "3.0 entry points are exported");
    if (gil == NULL || gi == NULL)
        return;
    is_rv(gil(NULL, NULL), CKR_ARGUMENTS_BAD, "C_GetInterfaceList(NULL, NULL)");
    is_rv(gil(NULL, &n), CKR_OK, "C_GetInterfaceList count query");
    is_num(n, 2, "two interfaces");
    n = 1;
    is_rv(gil(list, &n), CKR_BUFFER_TOO_SMALL, "C_GetInterfaceList short");
    is_num(n, 2, "count set after a short buffer");
    n = 4;
    is_rv(gil(list, &n), CKR_OK, "C_GetInterfaceList");
    is_num(n, 2, "count after the list");
    for (i = 0; i < n && i < 4; i++) {
        CK_VERSION *v = list[i].pFunctionList;
        ok(strcmp((char *)list[i].pInterfaceName, "PKCS 11") == 0,
           "interface %lu is named PKCS 11", i);
        if (v->major == 3 && v->minor == 0)
            saw30 = true;
        if (v->major == 2 && v->minor == 40)
            saw240 = true;
    }
    ok(saw30 && saw240, "versions 3.0 and 2.40 are offered");

    is_rv(gi((CK_UTF8CHAR *)"PKCS 11", NULL, NULL, 0), CKR_ARGUMENTS_BAD,
          "C_GetInterface(ppInterface NULL)");
    is_rv(gi((CK_UTF8CHAR *)"PKCS 11", NULL, &iface, 0), CKR_OK,
          "C_GetInterface by name");
    ok(iface != NULL && ((CK_VERSION *)iface->pFunctionList)->major == 3,
       "the default interface is 3.0");
    iface = NULL;
    is_rv(gi(NULL, NULL, &iface, 0), CKR_OK, "C_GetInterface(NULL name)");
    ok(iface != NULL, "an interface without a name");
    iface = NULL;
    is_rv(gi((CK_UTF8CHAR *)"PKCS 11", &v30, &iface, 0), CKR_OK,
          "C_GetInterface 3.0");
    if (iface != NULL) {
        CK_FUNCTION_LIST_3_0 *f3 = iface->pFunctionList;
        is_num(f3->version.major, 3, "3.0 list major");
        ok(f3->C_GetInterface != NULL && f3->C_LoginUser != NULL &&
               f3->C_SessionCancel != NULL,
           "3.0 list has the 3.0 functions");
        is_rv(f3->C_GetFunctionList(NULL), CKR_ARGUMENTS_BAD,
              "3.0 list C_GetFunctionList(NULL) is the module's");
        {
            CK_INTERFACE *again = NULL;
            is_rv(f3->C_GetInterface((CK_UTF8CHAR *)"PKCS 11", &v30, &again, 0),
                  CKR_OK, "3.0 list C_GetInterface");
            ok(again == iface, "  gives the module's own interface");
        }
        is_rv(f3->C_GetInfo(NULL), CKR_CRYPTOKI_NOT_INITIALIZED,
              "3.0 list C_GetInfo before init");
    }
    iface = NULL;
    is_rv(gi((CK_UTF8CHAR *)"PKCS 11", &v240, &iface, 0), CKR_OK,
          "C_GetInterface 2.40");
    ok(iface != NULL && iface->pFunctionList == (void *)p11,
       "2.40 is C_GetFunctionList's list");
    iface = NULL;
    is_rv(gi((CK_UTF8CHAR *)"PKCS 11", &v99, &iface, 0), CKR_ARGUMENTS_BAD,
          "C_GetInterface unknown version");
    is_rv(gi((CK_UTF8CHAR *)"Vendor Thing", NULL, &iface, 0), CKR_ARGUMENTS_BAD,
          "C_GetInterface unknown name");
    ok(iface == NULL, "no interface returned for an unknown name");
    is_rv(gi((CK_UTF8CHAR *)"PKCS 11", NULL, &iface, CKF_INTERFACE_FORK_SAFE),
          CKR_ARGUMENTS_BAD, "C_GetInterface with an unoffered flag");
}

static CK_RV init_args(CK_FLAGS flags, bool c, bool d, bool l, bool u,
                       const char *conf)
{
    static char reserved[600];
    CK_C_INITIALIZE_ARGS a;

    memset(&a, 0, sizeof(a));
    a.CreateMutex = c ? create_mutex : NULL;
    a.DestroyMutex = d ? destroy_mutex : NULL;
    a.LockMutex = l ? lock_mutex : NULL;
    a.UnlockMutex = u ? lock_mutex : NULL;
    a.flags = flags;
    if (conf != NULL) {
        snprintf(reserved, sizeof(reserved), "conf=%s", conf);
        a.pReserved = reserved;
    }
    return p11->C_Initialize(&a);
}

static void test_init_args(const char *conf)
{
    CK_INFO info;
    static const char *const spaces = "                                ";

    setenv("CMKP11_CONF", conf, 1);
    is_rv(p11->C_Initialize(NULL), CKR_OK, "C_Initialize(NULL)");
    is_rv(p11->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED,
          "C_Initialize twice");
    is_rv(p11_init(conf), CKR_CRYPTOKI_ALREADY_INITIALIZED,
          "C_Initialize twice with args");
    is_rv(p11->C_GetInfo(NULL), CKR_ARGUMENTS_BAD, "C_GetInfo(NULL)");
    memset(&info, 0xaa, sizeof(info));
    is_rv(p11->C_GetInfo(&info), CKR_OK, "C_GetInfo");
    is_num(info.cryptokiVersion.major, 2, "cryptoki 2.x");
    is_num(info.cryptokiVersion.minor, 40, "cryptoki 2.40");
    ok(memcmp(info.manufacturerID, "cmkp11", 6) == 0 &&
           memcmp(info.manufacturerID + 6, spaces, 26) == 0,
       "manufacturerID is blank-padded");
    ok(memchr(info.libraryDescription, '\0', 32) == NULL,
       "libraryDescription is padded, not NUL-terminated");
    is_num(info.flags, 0, "C_GetInfo flags");
    {
        int x = 1;
        is_rv(p11->C_Finalize(&x), CKR_ARGUMENTS_BAD, "C_Finalize(non-NULL)");
    }
    is_rv(p11->C_GetInfo(&info), CKR_OK, "still initialised after that");
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    is_rv(p11->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED,
          "C_Finalize twice");
    is_num(count_not_initialized(), 0,
           "every call after C_Finalize is NOT_INITIALIZED");

    is_rv(init_args(CKF_OS_LOCKING_OK, true, true, true, true, conf), CKR_OK,
          "all mutex callbacks with CKF_OS_LOCKING_OK");
    p11->C_Finalize(NULL);
    is_rv(init_args(0, true, false, true, true, conf), CKR_ARGUMENTS_BAD,
          "three mutex callbacks");
    is_rv(init_args(CKF_OS_LOCKING_OK, false, false, true, false, conf),
          CKR_ARGUMENTS_BAD, "one mutex callback");
    is_rv(init_args(0, true, true, true, true, conf), CKR_CANT_LOCK,
          "callbacks without CKF_OS_LOCKING_OK (documented choice)");
    is_rv(p11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED,
          "not initialised after a refused C_Initialize");
    is_rv(init_args(CKF_OS_LOCKING_OK, false, false, false, false, conf),
          CKR_OK, "CKF_OS_LOCKING_OK only");
    p11->C_Finalize(NULL);
    is_rv(init_args(0, false, false, false, false, conf), CKR_OK,
          "no flags, no callbacks");
    p11->C_Finalize(NULL);
    is_rv(init_args(CKF_LIBRARY_CANT_CREATE_OS_THREADS, false, false, false,
                    false, conf),
          CKR_OK, "CKF_LIBRARY_CANT_CREATE_OS_THREADS");
    p11->C_Finalize(NULL);
    unsetenv("CMKP11_CONF");
}

/* The label of slot 0's token, or "" if C_Initialize fails. */
static void slot0_label(char *out)
{
    CK_TOKEN_INFO ti;

    out[0] = '\0';
    if (p11->C_GetTokenInfo(0, &ti) == CKR_OK) {
        memcpy(out, ti.label, 32);
        out[32] = '\0';
        while (out[0] && out[strlen(out) - 1] == ' ')
            out[strlen(out) - 1] = '\0';
    }
}

static void test_precedence(void)
{
    char *a = p11_write_file(
        "a.conf",
        "[cmkp11]\nlog-level = error\n[token alpha]\nbackend = mock\n");
    char *b = p11_write_file(
        "b.conf",
        "[cmkp11]\nlog-level = error\n[token beta]\nbackend = mock\n");
    char label[40];
    CK_C_INITIALIZE_ARGS args;

    setenv("CMKP11_CONF", b, 1);
    is_rv(p11_init(a), CKR_OK, "conf= with CMKP11_CONF set");
    slot0_label(label);
    ok(strcmp(label, "alpha") == 0, "pReserved conf= wins (%s)", label);
    p11->C_Finalize(NULL);

    is_rv(p11->C_Initialize(NULL), CKR_OK, "CMKP11_CONF without args");
    slot0_label(label);
    ok(strcmp(label, "beta") == 0, "CMKP11_CONF is used (%s)", label);
    p11->C_Finalize(NULL);

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = (void *)"other=1 ; x-y=z";
    is_rv(p11->C_Initialize(&args), CKR_OK, "pReserved without conf=");
    slot0_label(label);
    ok(strcmp(label, "beta") == 0, "CMKP11_CONF when pReserved has no conf=");
    p11->C_Finalize(NULL);

    args.pReserved = (void *)"conf=";
    is_rv(p11->C_Initialize(&args), CKR_ARGUMENTS_BAD, "conf= without a path");
    args.pReserved = (void *)"conf=/a conf=/b";
    is_rv(p11->C_Initialize(&args), CKR_ARGUMENTS_BAD, "conf= twice");

    unsetenv("CMKP11_CONF");
#ifdef SYSCONFDIR
    if (access(SYSCONFDIR "/cmkp11/cmkp11.conf", F_OK) != 0) {
        CK_ULONG n = 99;
        /* Not configured yet: no tokens (tests/integration/
         * test-first-hour.py checks that nothing is printed). */
        is_rv(p11->C_Initialize(NULL), CKR_OK,
              "the default file is missing here: no tokens");
        is_rv(p11->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK, "slot count");
        ok(n == 0, "no slots without the default file");
    } else
        test_skip("a default configuration file exists");
#endif
    p11->C_Finalize(NULL);
    setenv("CMKP11_CONF", "", 1);
    is_rv(p11_init(a), CKR_OK, "empty CMKP11_CONF, conf= given");
    p11->C_Finalize(NULL);
    unsetenv("CMKP11_CONF");
    free(a);
    free(b);
}

static void bad_conf(const char *name, const char *text, mode_t mode,
                     const char *what)
{
    char *path = p11_write_file(name, text);
    CK_INFO info;

    chmod(path, mode);
    is_rv(p11_init(path), CKR_GENERAL_ERROR, what);
    is_rv(p11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED,
          "  and the module is not initialised");
    free(path);
}

static void test_bad_configs(void)
{
    char missing[600];
    char *good;

    snprintf(missing, sizeof(missing), "%s/does-not-exist.conf", p11_tmpdir());
    is_rv(p11_init(missing), CKR_GENERAL_ERROR, "missing configuration file");
    bad_conf("syntax.conf", "[cmkp11\nlog-level = error\n", 0600,
             "syntax error");
    bad_conf("nokey.conf", "[cmkp11]\nthis line has no equals sign\n", 0600,
             "line without a key");
    bad_conf("backend.conf",
             "[cmkp11]\nlog-level = error\n[token t]\nbackend = nosuch\n", 0600,
             "unknown backend");
    bad_conf("nobackend.conf", "[cmkp11]\nlog-level = error\n[token t]\n", 0600,
             "token without a backend");
    bad_conf("typo.conf",
             "[cmkp11]\nlog-level = error\n[token t]\nbackend = mock\n"
             "delay-msec = 5\n",
             0600, "unknown token key (typo)");
    bad_conf("value.conf",
             "[cmkp11]\nlog-level = error\n[token t]\nbackend = mock\n"
             "delay-ms = lots\n",
             0600, "bad value");
    bad_conf("global.conf", "[cmkp11]\nlog-levle = error\n", 0600,
             "unknown global key");
    bad_conf("writable.conf", MOCK_CONF, 0620, "group-writable file");
    bad_conf("world.conf", MOCK_CONF, 0602, "world-writable file");
    bad_conf("second.conf",
             "[cmkp11]\nlog-level = error\n[token a]\nbackend = mock\n"
             "[token b]\nbackend = nosuch\n",
             0600, "a bad second token");

    /* After all those failures a good file still works. */
    good = p11_write_file("good.conf", MOCK_CONF);
    is_rv(p11_init(good), CKR_OK, "a good file after the failures");
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    free(good);
}

int main(void)
{
    char *conf;

    unsetenv("CMKP11_CONF");
    p11_load(NULL);
    test_uninitialized();
    test_interfaces();
    conf = p11_write_file("mock.conf", MOCK_CONF);
    test_init_args(conf);
    test_precedence();
    test_bad_configs();
    free(conf);
    return test_done();
}
