/* Shared set-up for the C tests on the keyvault back end: the Key Vault
 * emulator (tests/kvemu), as tests/integration/kvtest.py starts it. */
#ifndef CMKP11_TEST_KV_SETUP_H
#define CMKP11_TEST_KV_SETUP_H

#include <stdbool.h>

/* Starts the emulator with its default configuration (docs/kvemu.md: the
 * vault "kvemu", the system-assigned managed identity "mi" with every key
 * permission) in the test's private directory; it is stopped when the
 * process exits, and it exits when this process dies (--exit-with-parent).
 * Bails out when it does not start. */
void kv_start(void);
/* Runs "kvemu admin COMMAND" against it (e.g. "create-key kvemu kek");
 * bails out when the command fails. */
void kv_admin(const char *command);
/* Whether what "kvemu admin COMMAND" prints contains text (read in pieces
 * of 4 KiB: for short answers); bails out when the command fails. */
bool kv_admin_says(const char *command, const char *text);
/* A cmkp11 configuration with one [token kv] on the vault "kvemu" through
 * the emulator's IMDS endpoint (extra: more lines for the section, or
 * NULL); returns its path. */
char *kv_conf(const char *extra);

#endif
