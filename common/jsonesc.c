/* Strings as JSON text (jsonesc.h). */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "jsonesc.h"

size_t cmk_utf8_len(const unsigned char *s, size_t n)
{
    unsigned long cp;
    size_t len, i;

    if (n == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0; /* overlong, or beyond Unicode */
    if (cp >= 0xd800 && cp <= 0xdfff)
        return 0; /* surrogates are not characters */
    return len;
}

size_t cmk_json_char(const unsigned char *s, size_t n, char out[8],
                     size_t *used)
{
    static const char short_forms[] = "\"\"\\\\\bb\ff\nn\rr\tt";
    size_t i, len;

    *used = 1;
    for (i = 0; i + 1 < sizeof(short_forms); i += 2) {
        if ((unsigned char)short_forms[i] == s[0]) {
            out[0] = '\\';
            out[1] = short_forms[i + 1];
            out[2] = '\0';
            return 2;
        }
    }
    if (s[0] < 0x20 || s[0] == 0x7f) {
        snprintf(out, 8, "\\u%04x", s[0]);
        return 6;
    }
    len = cmk_utf8_len(s, n);
    if (len == 0) {
        memcpy(out, "\\ufffd", 7);
        return 6;
    }
    memcpy(out, s, len);
    out[len] = '\0';
    *used = len;
    return len;
}
