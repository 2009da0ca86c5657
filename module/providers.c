/* The back ends built into the installed module. */
#include "config.h"

#include "provider.h"

extern const struct provider_ops hsm_provider;
extern const struct provider_ops keyvault_provider;

const struct provider_ops *const cmk_providers[] = {
    &hsm_provider,
    &keyvault_provider,
    NULL,
};
