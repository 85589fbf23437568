/*
 * xport_mem.c - kvn_xport_mem_alloc/free: memory best suited for registration
 * with a domain (see kvn_xport.h).  Dispatches on the domain's backend
 * without touching the common layer:
 *
 *   UCX domain ──► kvn_xport_ucx_mem_alloc (ucp_mem_map ALLOCATE; the UCX
 *                  backend keeps the record of its regions)
 *   others     ──► anonymous mmap, huge pages when available, with a record
 *                  ("tail") in the mapping just past the caller's bytes:
 *
 *     p                          p + round_up(len, 4 KiB)
 *     | caller's len bytes ....  | tail record | (rest of the mapping)
 *
 * The tail lets kvn_xport_mem_free check a (p, len) pair before unmapping:
 * the record must be readable (read with process_vm_readv on ourselves, which
 * fails instead of faulting on an unmapped or PROT_NONE page), and it
 * must carry the magic, p, len, the domain and a checksum.  A wrong pointer
 * or length is refused, never unmapped.  No global state.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "transport/kvn_xport.h"
#include "util/kvn_mem.h"
#include "transport/xport_impl.h"

#ifdef KVN_HAVE_UCX
#include "transport/ucx/kvn_xport_ucx.h"
#endif

#define MEM_PAGE  4096ull
#define MEM_MAGIC 0x4d454d4e564b5450ull /* "PTKVNMEM" */
#define MEM_MAX   (1ull << 62)

struct mem_tail {
    uint64_t magic;
    uint64_t addr; /* p */
    uint64_t len;
    uint64_t map_bytes;
    uint64_t owner;     /* the domain's address */
    uint64_t domain_id; /* and its id */
    uint64_t huge;
    uint64_t check; /* FNV-1a over the fields above */
};

static uint64_t tail_check(const struct mem_tail *t)
{
    const unsigned char *b = (const unsigned char *)t;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < offsetof(struct mem_tail, check); i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* Does an mr of x lie (partly) in [p, p + len)? */
static bool mr_inside(const struct kvn_xport *x, const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p;
    for (const struct xport_link *l = x->mrs.next; l && l != &x->mrs; l = l->next) {
        const struct kvn_xport_mr *mr = XPORT_CONTAINER(l, struct kvn_xport_mr, link);
        uintptr_t b = (uintptr_t)mr->addr;
        if (b < a + len && a < b + mr->len)
            return true;
    }
    return false;
}

static int mmap_alloc(struct kvn_xport *x, size_t len, void **out, struct kvn_err *err)
{
    uint64_t tail_off = round_up(len, MEM_PAGE);
    uint64_t need = tail_off + sizeof(struct mem_tail);
    /* huge pages when the kernel gives them (MAP_HUGETLB, else 2 MiB aligned memory advised
     * for THP before it is touched), populated: the memory is about to be registered (verbs
     * pins it), and faults in the first transfers would only move the cost to the data path */
    struct kvn_mem km;
    int rc = kvn_mem_map((size_t)need, true, &km, err);
    if (rc < 0)
        return rc;
    kvn_mem_populate(&km);
    void *base = km.base;
    uint64_t map = km.map_len;
    bool huge = km.hugetlb;
    struct mem_tail t = {.magic = MEM_MAGIC,
                         .addr = (uint64_t)(uintptr_t)base,
                         .len = len,
                         .map_bytes = map,
                         .owner = (uint64_t)(uintptr_t)x,
                         .domain_id = x->id,
                         .huge = huge};
    t.check = tail_check(&t);
    memcpy((unsigned char *)base + tail_off, &t, sizeof(t));
    *out = base;
    return 0;
}

/* Reads the tail record of (p, len) when it is there and valid for x. */
static bool tail_of(const struct kvn_xport *x, void *p, size_t len, struct mem_tail *t,
                    unsigned char **where)
{
    uint64_t tail_off = round_up(len, MEM_PAGE);
    unsigned char *tp = (unsigned char *)p + tail_off;
    if ((uintptr_t)tp < (uintptr_t)p) /* wrapped */
        return false;
    /* a read that cannot fault: the page may be unmapped or PROT_NONE (a guard page) when
     * (p, len) is not ours; process_vm_readv on ourselves says EFAULT instead */
    struct iovec lo = {.iov_base = t, .iov_len = sizeof(*t)};
    struct iovec re = {.iov_base = tp, .iov_len = sizeof(*t)};
    ssize_t got = process_vm_readv(getpid(), &lo, 1, &re, 1, 0);
    if (got < 0 && (errno == EPERM || errno == ENOSYS)) { /* seccomp: a pipe says EFAULT too */
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0)
            return false;
        got =
            write(fds[1], tp, sizeof(*t)) == (ssize_t)sizeof(*t) ? read(fds[0], t, sizeof(*t)) : -1;
        close(fds[0]);
        close(fds[1]);
    }
    if (got != (ssize_t)sizeof(*t))
        return false;
    *where = tp;
    return t->magic == MEM_MAGIC && t->check == tail_check(t) &&
           t->addr == (uint64_t)(uintptr_t)p && t->len == len &&
           t->owner == (uint64_t)(uintptr_t)x && t->domain_id == x->id &&
           t->map_bytes >= tail_off + sizeof(*t);
}

int kvn_xport_mem_alloc(struct kvn_xport *x, size_t len, void **out, struct kvn_err *err)
{
    if (!x || !out)
        return kvn_err_set(err, -EINVAL, "x and out must not be NULL");
    if (len == 0)
        return kvn_err_set(err, -EINVAL, "cannot allocate 0 bytes");
    if ((uint64_t)len >= MEM_MAX)
        return kvn_err_set(err, -EINVAL, "%zu bytes is not a sensible allocation", len);
#ifdef KVN_HAVE_UCX
    if (kvn_xport_backend(x) == KVN_XPORT_BACKEND_UCX)
        return kvn_xport_ucx_mem_alloc(x, len, out, err);
#endif
    return mmap_alloc(x, len, out, err);
}

int kvn_xport_mem_free(struct kvn_xport *x, void *p, size_t len, struct kvn_err *err)
{
    if (!x || !p)
        return kvn_err_set(err, -EINVAL, "x and p must not be NULL");
    if (len == 0 || (uint64_t)len >= MEM_MAX)
        return kvn_err_set(err, -EINVAL, "length %zu cannot be an allocation", len);
#ifdef KVN_HAVE_UCX
    if (kvn_xport_backend(x) == KVN_XPORT_BACKEND_UCX) {
        size_t have = 0;
        int rc = kvn_xport_ucx_mem_size(x, p, &have, err);
        if (rc < 0)
            return rc;
        if (have != len)
            return kvn_err_set(err, -EINVAL, "%p was allocated with %zu bytes, not %zu", p, have,
                               len);
        return kvn_xport_ucx_mem_free(x, p, err);
    }
#endif
    if ((uintptr_t)p % MEM_PAGE)
        return kvn_err_set(err, -EINVAL, "%p is not page aligned: not from kvn_xport_mem_alloc", p);
    struct mem_tail t;
    unsigned char *tp;
    if (!tail_of(x, p, len, &t, &tp))
        return kvn_err_set(err, -EINVAL,
                           "(%p, %zu) is not an allocation of kvn_xport_mem_alloc on '%s'", p, len,
                           kvn_xport_name(x));
    if (mr_inside(x, p, len))
        return kvn_err_set(err, -EBUSY,
                           "a registration of '%s' still lies in %p (deregister "
                           "it first)",
                           kvn_xport_name(x), p);
    memset(tp, 0, sizeof(t)); /* a stale (p, len) must not match a later mapping */
    munmap(p, (size_t)t.map_bytes);
    return 0;
}
