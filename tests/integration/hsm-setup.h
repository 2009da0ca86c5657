/* Shared set-up for the C consumer tests on the hsm back end. */
#ifndef CMKP11_TEST_HSM_SETUP_H
#define CMKP11_TEST_HSM_SETUP_H

#include <openssl/evp.h>

#include "p11.h"

/* Makes a SoftHSM token for this run (tests/softhsm-init.sh) and a cmkp11
 * configuration with one [token local] on it (extra: more lines for the
 * section, or NULL); sets SOFTHSM2_CONF and returns the configuration's
 * path. Skips the program when SoftHSM is missing. */
char *hsm_setup(const char *extra);
/* The token's user PIN. */
#define HSM_PIN "1234"
/* Loads $CMKP11_MODULE, initialises it with conf, opens a R/W session on
 * the first slot and logs in. */
CK_SESSION_HANDLE hsm_open(const char *conf);
/* Unwraps an OAEP-SHA1 blob into an extractable AES session key and
 * compares its value with key; returns the C_UnwrapKey result, or
 * CKR_GENERAL_ERROR when the value differs. The key is destroyed. */
CK_RV hsm_unwrap_check(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                       const unsigned char *blob, CK_ULONG len,
                       const unsigned char *key, CK_ULONG keylen);

#endif
