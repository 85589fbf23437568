/* kvn_err.c - see kvn_err.h. */
#include "util/kvn_err.h"

#include <stdarg.h>
#include <stdio.h>

int kvn_err_set(struct kvn_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void kvn_err_clear(struct kvn_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *kvn_err_name(int code)
{
    switch (-code) {
    case 0: return "OK";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EBUSY: return "EBUSY";
    case EAGAIN: return "EAGAIN";
    case ENOSPC: return "ENOSPC";
    case ERANGE: return "ERANGE";
    case EPROTO: return "EPROTO";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNRESET: return "ECONNRESET";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOTCONN: return "ENOTCONN";
    case EOVERFLOW: return "EOVERFLOW";
    case ENODEV: return "ENODEV";
    case ENOTSUP: return "ENOTSUP";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EALREADY: return "EALREADY";
    case ECANCELED: return "ECANCELED";
    case EMSGSIZE: return "EMSGSIZE";
    case EBADMSG: return "EBADMSG";
    case EIO: return "EIO";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    case EPIPE: return "EPIPE";
    case ESHUTDOWN: return "ESHUTDOWN";
    case ENOBUFS: return "ENOBUFS";
    case E2BIG: return "E2BIG";
    case ESRCH: return "ESRCH";
    default: return "E?";
    }
}
