/* The back ends built into the test module: the mock and the real ones. */
#include "config.h"

#include "provider.h"

extern const struct provider_ops mock_provider;
extern const struct provider_ops hsm_provider;
extern const struct provider_ops keyvault_provider;

const struct provider_ops *const cmk_providers[] = {
    &mock_provider,
    &hsm_provider,
    &keyvault_provider,
    NULL,
};
