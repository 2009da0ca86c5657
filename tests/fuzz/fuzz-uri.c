/*
 * libFuzzer harness: cmkp11-tool's token and key selection
 * (tools/cmkp11-tool/p11.c), which parses pkcs11: URIs (RFC 7512) with
 * p11-kit, then matches them against a token.
 */
#include "config.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p11.h"
#include "tool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The tool's error printer (main.c): quiet here. */
void tool_error(const char *fmt, ...)
{
    (void)fmt;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    CK_TOKEN_INFO info;
    struct tsel s;
    char *arg = malloc(size + 8);

    if (arg == NULL)
        return 0;
    /* Mostly URIs: the prefix unless the input brings its own. */
    if (size >= 7 && memcmp(data, "pkcs11:", 7) == 0) {
        memcpy(arg, data, size);
        arg[size] = '\0';
    } else {
        memcpy(arg, "pkcs11:", 7);
        memcpy(arg + 7, data, size);
        arg[size + 7] = '\0';
    }
    memset(&info, ' ', sizeof(info));
    memcpy(info.label, "kv", 2);
    memcpy(info.manufacturerID, "cmkp11", 6);
    memcpy(info.model, "Key Vault", 9);
    if (tsel_parse(&s, arg) == 0) {
        (void)tsel_match_token(&s, &info, "kv");
        (void)tsel_has_object(&s);
        tsel_clear(&s);
    }
    free(arg);
    return 0;
}
