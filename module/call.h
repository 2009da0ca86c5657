/*
 * The frame of every exported C_ function, in the manner of p11-kit's
 * BEGIN_CALL / END_CALL (p11-kit/log.c): one place enters the module and
 * one place leaves it and traces the result, so that with CMKP11_DEBUG
 * (category module) every call shows one line "C_Name = CKR_NAME".
 *
 *     CK_RV C_Name(CK_SESSION_HANDLE hSession, ...)
 *     {
 *         struct session *s;
 *
 *         BEGIN_CALL(Name);      declares rv; module_enter(), or the call
 *                                ends at once with its refusal, traced
 *         if (bad arguments) {
 *             rv = CKR_ARGUMENTS_BAD;
 *             goto out;          out: leaves the module
 *         }
 *         rv = session_get(hSession, &s);
 *         if (rv != CKR_OK)
 *             goto out;
 *         ...
 *     put:                       (where a path must release the session)
 *         session_put(s);
 *         END_CALL;              out: module_leave(), trace, return rv
 *     }
 *
 * The trace is one branch on the debug mask when off; its arguments (the
 * function's name and the result's name) are computed only when on. It
 * prints nothing but the result code: never an argument's value, a
 * length, or a PIN.
 *
 * Internal invariants (programming errors, not caller errors) use
 * return_val_if_fail (common/debug.h) in the helpers these functions call,
 * never between BEGIN_CALL and END_CALL, where a return would skip
 * module_leave().
 */
#ifndef CMKP11_CALL_H
#define CMKP11_CALL_H

#include "module.h"

#define CALL_TRACE(name, rv) cmk_debug("%s = %s", (name), cmk_rv_name(rv))

#define BEGIN_CALL(name)                                                       \
    const char *const call_name_ = "C_" #name;                                 \
    CK_RV rv = module_enter();                                                 \
    if (rv != CKR_OK)                                                          \
    goto call_done_

#define END_CALL                                                               \
    out:                                                                       \
    __attribute__((unused));                                                   \
    module_leave();                                                            \
    call_done_:                                                                \
    CALL_TRACE(call_name_, rv);                                                \
    return rv

/* The whole body of a function that needs only a valid session: its
 * result once the session is (session_only). */
#define SESSION_ONLY_CALL(name, h, result)                                     \
    BEGIN_CALL(name);                                                          \
    rv = session_only((h), (result));                                          \
    END_CALL

/* For the functions that do not enter the module (C_Initialize,
 * C_Finalize, C_GetFunctionList, the interfaces, the stubs of 3.0). */
#define RETURN_CALL(name, value)                                               \
    do {                                                                       \
        CK_RV call_rv_ = (value);                                              \
        CALL_TRACE("C_" #name, call_rv_);                                      \
        return call_rv_;                                                       \
    } while (0)

#endif
