/* The back ends built into the installed module. */
#include "config.h"

#include "provider.h"

extern const struct provider_ops hsm_provider;

const struct provider_ops *const cmk_providers[] = {
#ifdef WITH_HSM_PROVIDER
    &hsm_provider,
#endif
    NULL,
};
