/*
 * kvn_err.h - the one error convention of kvnode.
 *
 * Every fallible public function of every layer returns 0 on success or a
 * negative errno-style code (-EINVAL, -ENOMEM, -ENOENT, ...) on failure, and,
 * when the caller passed a non-NULL struct kvn_err, fills it with the same code
 * and a human-readable message that names the argument or condition at fault.
 *
 *     struct kvn_err err;
 *     if (kvn_radix_insert(tree, &req, &res, &err) < 0)
 *         fprintf(stderr, "insert: %s (%d)\n", err.msg, err.code);
 *
 * A refused call changes nothing: functions validate before they mutate.
 *
 * Thread rules: a struct kvn_err belongs to the caller; the functions here are
 * reentrant and touch no global state.
 */
#ifndef KVN_ERR_H
#define KVN_ERR_H

#include <errno.h>
#include <stddef.h>

#define KVN_ERR_MSG_MAX 256

struct kvn_err {
    int code;                  /* 0, or the negative code the call returned */
    char msg[KVN_ERR_MSG_MAX]; /* NUL-terminated; "" when code == 0 */
};

/*
 * Records code and a printf-style message in err (when err is non-NULL) and
 * returns code, so that a failure path reads
 *     return kvn_err_set(err, -EINVAL, "page_size %u must be >= 1", ps);
 * code must be negative.
 */
int kvn_err_set(struct kvn_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err (when non-NULL) to code 0 and an empty message. */
void kvn_err_clear(struct kvn_err *err);

/* Short symbolic name of a negative code ("EINVAL"), or "E?" when unknown. */
const char *kvn_err_name(int code);

#endif /* KVN_ERR_H */
