/*
 * libFuzzer harness: the configuration parser (module/config.c) on any
 * text, then the lookups the module makes on what it accepted.
 */
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *keys[] = {
        "backend", "module",  "vault-url",   "keys", "retries",  "cache",
        "pin",     "timeout", "token-label", "auth", "deadline", "key-type"};
    char err[512];
    struct config *cfg =
        config_parse("fuzz.conf", (const char *)data, size, err, sizeof(err));
    size_t i, k;

    if (cfg == NULL)
        return 0;
    for (i = 0; i < cfg->n_tokens; i++) {
        const struct config_token *t = &cfg->tokens[i];
        for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            const char *v = config_token_get(t, keys[k]);
            bool b;
            long l;
            (void)config_token_line(t, keys[k]);
            (void)config_token_get_bool(t, keys[k], &b, err, sizeof(err));
            (void)config_token_get_long(t, keys[k], -5, 1000000, &l, err,
                                        sizeof(err));
            if (v != NULL) {
                char **list = config_split_list(v);
                (void)config_list_allows(list, "kek");
                config_free_list(list);
            }
        }
        (void)config_token_unused(t);
    }
    config_free(cfg);
    return 0;
}
