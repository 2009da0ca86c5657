/*
 * The hsm back end: what the lower token answers, as this module answers
 * it.
 */
#include "config.h"

#include "hsm.h"

static const struct {
    CK_RV lower, ours;
} rv_map[] = {
    /* The lower session or module went away under us: our session is
     * still valid, the device is not. */
    {CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_ERROR},
    {CKR_SESSION_CLOSED, CKR_DEVICE_ERROR},
    {CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR},
    {CKR_SESSION_COUNT, CKR_DEVICE_MEMORY},
    {CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_REMOVED},
    {CKR_TOKEN_NOT_RECOGNIZED, CKR_DEVICE_REMOVED},
    /* The key version was deleted from the lower token. */
    {CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID},
    /* SoftHSM answers unsupported mechanism parameters this way. */
    {CKR_ARGUMENTS_BAD, CKR_MECHANISM_PARAM_INVALID},
    {CKR_FUNCTION_NOT_SUPPORTED, CKR_FUNCTION_NOT_SUPPORTED},
};

/* Codes that mean the same thing on both sides pass through. */
static const CK_RV rv_same[] = {
    CKR_OK,
    CKR_HOST_MEMORY,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_ENCRYPTED_DATA_LEN_RANGE,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_SIZE_RANGE,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_KEY_NOT_WRAPPABLE,
    CKR_KEY_UNEXTRACTABLE,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_USER_TYPE_INVALID,
    CKR_SIGNATURE_INVALID,
    CKR_SIGNATURE_LEN_RANGE,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_WRAPPED_KEY_INVALID,
    CKR_WRAPPED_KEY_LEN_RANGE,
    CKR_WRAPPING_KEY_HANDLE_INVALID,
    CKR_WRAPPING_KEY_SIZE_RANGE,
    CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    CKR_UNWRAPPING_KEY_SIZE_RANGE,
    CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_BUFFER_TOO_SMALL,
    CKR_TOKEN_WRITE_PROTECTED,
    CKR_SESSION_READ_ONLY,
    CKR_ACTION_PROHIBITED,
    CKR_RANDOM_NO_RNG,
    CKR_FUNCTION_FAILED,
    CKR_GENERAL_ERROR,
};

CK_RV hsm_map_rv(CK_RV lower)
{
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(rv_map); i++)
        if (rv_map[i].lower == lower)
            return rv_map[i].ours;
    for (i = 0; i < CMK_ARRAY_SIZE(rv_same); i++)
        if (rv_same[i] == lower)
            return lower;
    return CKR_DEVICE_ERROR;
}

/* What a lower module may answer to a ciphertext it cannot decrypt. */
bool hsm_is_data_error(CK_RV rv)
{
    return rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_DATA_INVALID ||
           rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED;
}

/* Records the lower code for ulDeviceError and maps it. */
CK_RV hsm_mapped(struct pcall *c, CK_RV lower)
{
    if (lower != CKR_OK)
        c->device_error = lower;
    return hsm_map_rv(lower);
}
