/*
 * Strings as JSON text (RFC 8259, section 7): the one escaper of the
 * module's audit lines and of cmkp11-tool's JSON output.
 */
#ifndef CMKP11_JSONESC_H
#define CMKP11_JSONESC_H

#include <stddef.h>

/* The length of the well-formed UTF-8 character at s (at most n bytes):
 * 1 to 4, or 0 where the bytes are not one (a stray continuation byte,
 * an overlong form, a surrogate, beyond U+10FFFF, cut short). */
size_t cmk_utf8_len(const unsigned char *s, size_t n);

/*
 * The JSON form of the character at s (n >= 1 bytes left) inside a
 * string: written to out, NUL-terminated; returns its length (at most 6)
 * and sets *used to how many bytes of s it stands for. '"' and '\' are
 * escaped, the control characters as \b \f \n \r \t or \u00XX, DEL as
 * \u007f, and a byte that does not begin a well-formed UTF-8 character
 * becomes U+FFFD (\ufffd), one byte at a time; anything else is copied.
 */
size_t cmk_json_char(const unsigned char *s, size_t n, char out[8],
                     size_t *used);

#endif
