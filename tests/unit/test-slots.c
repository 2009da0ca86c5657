/*
 * Slots, tokens and mechanisms: C_GetSlotList, C_GetSlotInfo,
 * C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo, C_InitToken,
 * C_WaitForSlotEvent.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "p11.h"
#include "test.h"

#define TWO_TOKENS                                                             \
    "[cmkp11]\nlog-level = error\n\n"                                          \
    "[token first]\nbackend = mock\n\n"                                        \
    "[token second-with-pin]\nbackend = mock\npin = 1234\n"

static bool padded(const CK_UTF8CHAR *field, size_t len, const char *text)
{
    size_t n = strlen(text), i;

    if (n > len || memcmp(field, text, n) != 0)
        return false;
    for (i = n; i < len; i++)
        if (field[i] != ' ')
            return false;
    return true;
}

static void test_slot_list(void)
{
    CK_SLOT_ID slots[4] = {99, 99, 99, 99};
    CK_ULONG n = 0;

    is_rv(p11->C_GetSlotList(CK_FALSE, NULL, NULL), CKR_ARGUMENTS_BAD,
          "C_GetSlotList(NULL count)");
    is_rv(p11->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK,
          "C_GetSlotList count query");
    is_num(n, 2, "two [token] sections, two slots");
    n = 1;
    is_rv(p11->C_GetSlotList(CK_FALSE, slots, &n), CKR_BUFFER_TOO_SMALL,
          "C_GetSlotList short buffer");
    is_num(n, 2, "count set after BUFFER_TOO_SMALL");
    n = 4;
    is_rv(p11->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK, "C_GetSlotList");
    is_num(n, 2, "two slots listed");
    ok(slots[0] != slots[1] && slots[2] == 99, "distinct ids, no overrun");
    n = 2;
    is_rv(p11->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK,
          "C_GetSlotList exact buffer");
}

static void test_slot_info(void)
{
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;

    is_rv(p11->C_GetSlotInfo(0, NULL), CKR_ARGUMENTS_BAD,
          "C_GetSlotInfo(NULL)");
    is_rv(p11->C_GetSlotInfo(7, &si), CKR_SLOT_ID_INVALID,
          "C_GetSlotInfo invalid slot");
    is_rv(p11->C_GetSlotInfo(0, &si), CKR_OK, "C_GetSlotInfo");
    ok(si.flags & CKF_TOKEN_PRESENT, "CKF_TOKEN_PRESENT");
    ok(!(si.flags & CKF_REMOVABLE_DEVICE), "not removable");
    ok(padded(si.manufacturerID, 32, "cmkp11"), "slot manufacturer padded");
    ok(memchr(si.slotDescription, '\0', 64) == NULL, "slot description padded");

    is_rv(p11->C_GetTokenInfo(0, NULL), CKR_ARGUMENTS_BAD,
          "C_GetTokenInfo(NULL)");
    is_rv(p11->C_GetTokenInfo(2, &ti), CKR_SLOT_ID_INVALID,
          "C_GetTokenInfo invalid slot");
    is_rv(p11->C_GetTokenInfo((CK_SLOT_ID)-1, &ti), CKR_SLOT_ID_INVALID,
          "C_GetTokenInfo slot ~0");
    is_rv(p11->C_GetTokenInfo(0, &ti), CKR_OK, "C_GetTokenInfo slot 0");
    ok(padded(ti.label, 32, "first"), "label is the token name, padded");
    ok(padded(ti.manufacturerID, 32, "cmkp11"), "token manufacturer padded");
    ok(padded(ti.model, 16, "mock"), "model padded");
    ok(padded(ti.serialNumber, 16, "0001"), "serial padded");
    ok(!(ti.flags & CKF_LOGIN_REQUIRED), "no pin: CKF_LOGIN_REQUIRED clear");
    ok((ti.flags & CKF_TOKEN_INITIALIZED) && (ti.flags & CKF_RNG),
       "CKF_TOKEN_INITIALIZED and CKF_RNG");
    ok(!(ti.flags & CKF_WRITE_PROTECTED), "not write-protected");
    is_num(ti.ulSessionCount, 0, "no sessions yet");
    is_num(ti.ulRwSessionCount, 0, "no RW sessions yet");
    ok(ti.ulMaxPinLen >= ti.ulMinPinLen, "pin length range");

    is_rv(p11->C_GetTokenInfo(1, &ti), CKR_OK, "C_GetTokenInfo slot 1");
    ok(padded(ti.label, 32, "second-with-pin"), "second label");
    ok(ti.flags & CKF_LOGIN_REQUIRED, "pin =: CKF_LOGIN_REQUIRED set");
}

static void test_session_counts(void)
{
    CK_SESSION_HANDLE a, b, c;
    CK_TOKEN_INFO ti;

    a = p11_open(0, false);
    b = p11_open(0, true);
    c = p11_open(1, true);
    ok(a && b && c, "sessions opened");
    p11->C_GetTokenInfo(0, &ti);
    is_num(ti.ulSessionCount, 2, "two sessions on slot 0");
    is_num(ti.ulRwSessionCount, 1, "one RW session on slot 0");
    p11->C_GetTokenInfo(1, &ti);
    is_num(ti.ulSessionCount, 1, "one session on slot 1");
    p11->C_CloseSession(b);
    p11->C_GetTokenInfo(0, &ti);
    is_num(ti.ulSessionCount, 1, "one after closing the RW one");
    is_num(ti.ulRwSessionCount, 0, "no RW left");
    p11->C_CloseAllSessions(0);
    p11->C_GetTokenInfo(0, &ti);
    is_num(ti.ulSessionCount, 0, "none after C_CloseAllSessions");
    p11->C_GetTokenInfo(1, &ti);
    is_num(ti.ulSessionCount, 1, "the other slot keeps its session");
    p11->C_CloseSession(c);
}

static bool has(const CK_MECHANISM_TYPE *l, CK_ULONG n, CK_MECHANISM_TYPE m)
{
    CK_ULONG i;

    for (i = 0; i < n; i++)
        if (l[i] == m)
            return true;
    return false;
}

static void test_mechanisms(void)
{
    static const CK_MECHANISM_TYPE want[] = {
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_RSA_PKCS,
        CKM_RSA_PKCS_OAEP,
        CKM_RSA_PKCS_PSS,
        CKM_SHA1_RSA_PKCS,
        CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS,
        CKM_SHA512_RSA_PKCS,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_SHA384_RSA_PKCS_PSS,
        CKM_SHA512_RSA_PKCS_PSS,
        CKM_SHA_1,
        CKM_SHA256,
        CKM_SHA384,
        CKM_SHA512,
        CKM_AES_KEY_GEN,
        CKM_GENERIC_SECRET_KEY_GEN,
        CKM_AES_GCM,
        CKM_AES_CBC_PAD,
        CKM_AES_KEY_WRAP,
        CKM_AES_KEY_WRAP_PAD,
    };
    CK_MECHANISM_TYPE *list;
    CK_MECHANISM_INFO mi;
    CK_ULONG n = 0, n2, i, missing = 0, dup = 0, j;

    is_rv(p11->C_GetMechanismList(0, NULL, NULL), CKR_ARGUMENTS_BAD,
          "C_GetMechanismList(NULL count)");
    is_rv(p11->C_GetMechanismList(5, NULL, &n), CKR_SLOT_ID_INVALID,
          "C_GetMechanismList invalid slot");
    is_rv(p11->C_GetMechanismList(0, NULL, &n), CKR_OK,
          "C_GetMechanismList count query");
    ok(n >= CMK_ARRAY_SIZE(want), "at least %zu mechanisms (%lu)",
       CMK_ARRAY_SIZE(want), n);
    list = calloc(n + 1, sizeof(*list));
    n2 = 3;
    is_rv(p11->C_GetMechanismList(0, list, &n2), CKR_BUFFER_TOO_SMALL,
          "C_GetMechanismList short buffer");
    is_num(n2, n, "count set after BUFFER_TOO_SMALL");
    n2 = n + 1;
    is_rv(p11->C_GetMechanismList(0, list, &n2), CKR_OK, "C_GetMechanismList");
    is_num(n2, n, "the same count");
    for (i = 0; i < CMK_ARRAY_SIZE(want); i++) {
        if (!has(list, n2, want[i])) {
            test_diag("  missing mechanism 0x%lx", want[i]);
            missing++;
        }
    }
    is_num(missing, 0, "every expected mechanism is listed");
    for (i = 0; i < n2; i++)
        for (j = i + 1; j < n2; j++)
            if (list[i] == list[j])
                dup++;
    is_num(dup, 0, "no mechanism listed twice");
    ok(!has(list, n2, CKM_DSA) && !has(list, n2, CKM_ECDSA),
       "no mechanism the token lacks");
    free(list);

    is_rv(p11->C_GetMechanismInfo(0, CKM_RSA_PKCS_OAEP, NULL),
          CKR_ARGUMENTS_BAD, "C_GetMechanismInfo(NULL)");
    is_rv(p11->C_GetMechanismInfo(9, CKM_RSA_PKCS_OAEP, &mi),
          CKR_SLOT_ID_INVALID, "C_GetMechanismInfo invalid slot");
    is_rv(p11->C_GetMechanismInfo(0, CKM_ECDSA, &mi), CKR_MECHANISM_INVALID,
          "C_GetMechanismInfo unknown mechanism");
    is_rv(p11->C_GetMechanismInfo(0, 0x7fff1234UL, &mi), CKR_MECHANISM_INVALID,
          "C_GetMechanismInfo made-up mechanism");
    is_rv(p11->C_GetMechanismInfo(0, CKM_RSA_PKCS_OAEP, &mi), CKR_OK,
          "C_GetMechanismInfo OAEP");
    ok((mi.flags & CKF_DECRYPT) && (mi.flags & CKF_UNWRAP) &&
           (mi.flags & CKF_ENCRYPT) && (mi.flags & CKF_WRAP),
       "OAEP: decrypt, unwrap, and local encrypt, wrap");
    ok(!(mi.flags & CKF_SIGN), "OAEP does not sign");
    is_num(mi.ulMinKeySize, 2048, "OAEP min key size");
    is_num(mi.ulMaxKeySize, 4096, "OAEP max key size");
    is_rv(p11->C_GetMechanismInfo(0, CKM_RSA_PKCS, &mi), CKR_OK,
          "C_GetMechanismInfo RSA_PKCS");
    ok((mi.flags & (CKF_SIGN | CKF_VERIFY | CKF_DECRYPT | CKF_ENCRYPT)) ==
           (CKF_SIGN | CKF_VERIFY | CKF_DECRYPT | CKF_ENCRYPT),
       "RSA_PKCS sign, verify, decrypt, encrypt");
    is_rv(p11->C_GetMechanismInfo(0, CKM_SHA256_RSA_PKCS_PSS, &mi), CKR_OK,
          "C_GetMechanismInfo SHA256_RSA_PKCS_PSS");
    is_num(mi.flags, CKF_SIGN | CKF_VERIFY, "hash-and-sign: sign and verify");
    is_num(mi.ulMinKeySize, 2048, "hash-and-sign inherits key sizes");
    is_rv(p11->C_GetMechanismInfo(0, CKM_SHA256, &mi), CKR_OK,
          "C_GetMechanismInfo SHA256");
    is_num(mi.flags, CKF_DIGEST, "SHA256: digest");
    is_rv(p11->C_GetMechanismInfo(0, CKM_AES_GCM, &mi), CKR_OK,
          "C_GetMechanismInfo AES_GCM");
    ok((mi.flags & CKF_ENCRYPT) && (mi.flags & CKF_DECRYPT),
       "AES_GCM encrypt and decrypt");
    is_num(mi.ulMinKeySize, 16, "AES min 16 bytes");
    is_num(mi.ulMaxKeySize, 32, "AES max 32 bytes");
    is_rv(p11->C_GetMechanismInfo(0, CKM_AES_KEY_WRAP_PAD, &mi), CKR_OK,
          "C_GetMechanismInfo AES_KEY_WRAP_PAD");
    ok((mi.flags & CKF_WRAP) && (mi.flags & CKF_UNWRAP), "wrap and unwrap");
    is_rv(p11->C_GetMechanismInfo(0, CKM_RSA_PKCS_KEY_PAIR_GEN, &mi), CKR_OK,
          "C_GetMechanismInfo RSA key pair gen");
    is_num(mi.flags, CKF_GENERATE_KEY_PAIR, "CKF_GENERATE_KEY_PAIR");
    is_rv(p11->C_GetMechanismInfo(0, CKM_AES_KEY_GEN, &mi), CKR_OK,
          "C_GetMechanismInfo AES key gen");
    is_num(mi.flags, CKF_GENERATE, "CKF_GENERATE");
}

static void test_unsupported(void)
{
    CK_UTF8CHAR label[32];
    CK_SLOT_ID slot = 77;

    memset(label, ' ', sizeof(label));
    is_rv(p11->C_InitToken(0, (CK_UTF8CHAR *)"1234", 4, label),
          CKR_FUNCTION_NOT_SUPPORTED, "C_InitToken");
    is_rv(p11->C_InitToken(9, (CK_UTF8CHAR *)"1234", 4, label),
          CKR_SLOT_ID_INVALID, "C_InitToken invalid slot");
    is_rv(p11->C_InitToken(0, (CK_UTF8CHAR *)"1234", 4, NULL),
          CKR_ARGUMENTS_BAD, "C_InitToken NULL label");
    is_rv(p11->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL),
          CKR_FUNCTION_NOT_SUPPORTED, "C_WaitForSlotEvent(DONT_BLOCK)");
    is_rv(p11->C_WaitForSlotEvent(0, &slot, NULL), CKR_FUNCTION_NOT_SUPPORTED,
          "C_WaitForSlotEvent blocking does not block");
    is_num(slot, 77, "no slot reported");
}

int main(void)
{
    char *conf;

    p11_load(NULL);
    conf = p11_write_file("slots.conf", TWO_TOKENS);
    if (p11_init(conf) != CKR_OK)
        test_bail("C_Initialize failed");
    test_slot_list();
    test_slot_info();
    test_session_counts();
    test_mechanisms();
    test_unsupported();
    is_rv(p11->C_Finalize(NULL), CKR_OK, "C_Finalize");
    is_rv(p11->C_GetSlotList(CK_FALSE, NULL, &(CK_ULONG){0}),
          CKR_CRYPTOKI_NOT_INITIALIZED, "C_GetSlotList after C_Finalize");
    free(conf);
    return test_done();
}
