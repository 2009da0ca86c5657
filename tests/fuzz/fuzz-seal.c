/*
 * libFuzzer harness: the sealed file's header reader
 * (tools/cmkp11-tool/seal.c). A header that reads encodes back to the
 * same bytes.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct seal_header h;
    char err[256];
    unsigned char *enc, nonce[SEAL_NONCE_LEN];
    size_t len;
    FILE *f;

    if (size == 0)
        return 0;
    f = fmemopen((void *)data, size, "rb");
    if (f == NULL)
        return 0;
    memset(&h, 0, sizeof(h));
    (void)seal_has_magic(data, size);
    if (seal_header_read(f, &h, err, sizeof(err)) == SEAL_OK) {
        seal_nonce(&h, 7, true, nonce);
        enc = seal_header_encode(&h, &len);
        /* What was read is what is written again. */
        if (enc != NULL && (len > size || memcmp(enc, data, len) != 0))
            abort();
        free(enc);
    }
    seal_header_clear(&h);
    fclose(f);
    return 0;
}
