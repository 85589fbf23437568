/* host_pool.c - the L2 host pool (see host_pool.h). */
#include "node/host_pool.h"

#include "transport/kvn_xport.h"
#include "util/kvn_mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MPOL_BIND_    2         /* <numaif.h> is libnuma's, not libc's: the values are ABI */
#define MPOL_MF_MOVE_ (1u << 1) /* move pages already populated (domain memory) */

static bool numa_node_exists(int node)
{
    char path[64];
    snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", node);
    return access(path, F_OK) == 0;
}

/* Where a pool's bytes live: what pool_mem_get made, what pool_mem_put releases. */
struct pool_mem {
    uint8_t *base;
    size_t map_bytes;
    size_t alloc_bytes;
    struct kvn_xport *x;
    bool huge;
    const char *how;
    const char *numa;
    char how_buf[96];
};

static void pool_mem_put(const struct pool_mem *m)
{
    if (!m->base)
        return;
    if (m->x)
        (void)kvn_xport_mem_free(m->x, m->base, m->alloc_bytes, NULL); /* -EBUSY: stays */
    else
        munmap(m->base, m->map_bytes);
}

/* Binds [m) to numa_node (>= 0): 0, or a negative errno (memory untouched). */
static int pool_mem_bind(struct pool_mem *m, int numa_node, int *bound, struct kvn_err *err)
{
    *bound = -1;
    m->numa = "no NUMA binding";
    if (numa_node < 0)
        return 0;
    unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {0};
    mask[numa_node / (8 * sizeof(unsigned long))] |= 1ul
                                                     << (numa_node % (8 * sizeof(unsigned long)));
    /* domain memory is populated already (UCX zero-fills it): move it */
    long r = syscall(SYS_mbind, m->base, m->map_bytes, MPOL_BIND_, mask, 1024ul,
                     m->x ? MPOL_MF_MOVE_ : 0u);
    if (r == 0) {
        *bound = numa_node;
        m->numa = "bound to the NUMA node";
        return 0;
    }
    if (errno == ENOSYS || errno == EPERM) {
        m->numa = "NUMA binding skipped: the kernel refused mbind";
        return 0;
    }
    int e = errno;
    return kvn_err_set(err, -e, "mbind to NUMA node %d failed: %s", numa_node, strerror(e));
}

/* want bytes, from x's kvn_xport_mem_alloc (when x says so) or our own mapping. */
static int pool_mem_get(struct kvn_xport *x, uint64_t want, bool try_huge, struct pool_mem *m,
                        struct kvn_err *err)
{
    memset(m, 0, sizeof(*m));
    void *base = MAP_FAILED;
    /* a UCX domain's own memory is what ucx+sm puts/gets directly; on other backends
     * kvn_xport_mem_alloc is our own huge-page mapping, so honour try_huge == false here */
    if (x && (kvn_xport_backend(x) == KVN_XPORT_BACKEND_UCX || try_huge)) {
        struct kvn_err e;
        int rc = kvn_xport_mem_alloc(x, (size_t)want, &base, &e);
        if (rc < 0)
            return kvn_err_set(err, rc, "pool memory from %s: %s", kvn_xport_name(x), e.msg);
        m->base = base;
        m->x = x;
        m->alloc_bytes = (size_t)want;
        m->map_bytes = (size_t)want;
        m->how = kvn_xport_backend(x) == KVN_XPORT_BACKEND_UCX
                     ? "UCX-allocated memory (kvn_xport_mem_alloc)"
                     : "domain memory (kvn_xport_mem_alloc, huge pages when available)";
        return 0;
    }
    struct kvn_mem km;
    int rc = kvn_mem_map((size_t)want, try_huge, &km, err);
    if (rc < 0)
        return rc;
    m->base = km.base;
    m->map_bytes = km.map_len;
    m->huge = km.hugetlb;
    m->how = km.hugetlb       ? "huge pages (MAP_HUGETLB)"
             : km.thp_advised ? "regular pages, transparent huge pages advised"
                              : "regular pages";
    return 0;
}

/* Our own mapping is populated after the NUMA binding, so the policy applies to every page
 * (domain memory comes populated and is moved by the binding instead). */
static void pool_mem_populate(struct pool_mem *m)
{
    if (m->x)
        return;
    struct kvn_mem km = {.base = m->base, .map_len = m->map_bytes, .hugetlb = m->huge};
    kvn_mem_populate(&km);
    size_t hb = kvn_mem_huge_bytes(&km);
    if (hb && !m->huge)
        snprintf(m->how_buf, sizeof(m->how_buf), "%s (%zu MiB in huge pages)", m->how,
                 hb >> 20);
    if (m->how_buf[0])
        m->how = m->how_buf;
}

static void pool_adopt(struct kvn_host_pool *p, const struct pool_mem *m, int bound)
{
    p->base = m->base;
    p->map_bytes = m->map_bytes;
    p->alloc_bytes = m->alloc_bytes;
    p->x = m->x;
    p->huge = m->huge;
    p->numa_node = bound;
    snprintf(p->note, sizeof(p->note), "%" PRIu32 " pages of %" PRIu64 " bytes, %s, %s", p->n_pages,
             p->page_bytes, m->how, m->numa);
}

static struct pool_mem pool_mem_of(const struct kvn_host_pool *p)
{
    struct pool_mem m = {.base = p->base,
                         .map_bytes = p->map_bytes,
                         .alloc_bytes = p->alloc_bytes,
                         .x = p->x,
                         .huge = p->huge};
    return m;
}

int kvn_host_pool_create(struct kvn_host_pool **out, uint64_t bytes, uint64_t page_bytes,
                         bool try_huge, int numa_node, struct kvn_err *err)
{
    return kvn_host_pool_create_in(NULL, out, bytes, page_bytes, try_huge, numa_node, err);
}

int kvn_host_pool_create_in(struct kvn_xport *x, struct kvn_host_pool **out, uint64_t bytes,
                            uint64_t page_bytes, bool try_huge, int numa_node, struct kvn_err *err)
{
    if (!out)
        return kvn_err_set(err, -EINVAL, "out is NULL");
    if (page_bytes == 0)
        return kvn_err_set(err, -EINVAL, "page_bytes must be >= 1");
    if (bytes < page_bytes)
        return kvn_err_set(err, -EINVAL, "pool of %" PRIu64 " bytes holds no %" PRIu64 "-byte page",
                           bytes, page_bytes);
    if (bytes / page_bytes > UINT32_MAX)
        return kvn_err_set(err, -EINVAL, "pool would have more than 2^32 pages");
    if (numa_node < -1 || numa_node > 1023 || (numa_node >= 0 && !numa_node_exists(numa_node)))
        return kvn_err_set(err, -EINVAL, "NUMA node %d does not exist", numa_node);
    if (x && kvn_xport_backend(x) < 0)
        return kvn_err_set(err, -EINVAL, "not a transport domain");
    if ((uint64_t)(bytes / page_bytes) * page_bytes > (uint64_t)SIZE_MAX)
        return kvn_err_set(err, -EINVAL, "pool of %" PRIu64 " bytes does not fit in memory", bytes);

    struct kvn_host_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return kvn_err_set(err, -ENOMEM, "no memory for the pool header");
    p->page_bytes = page_bytes;
    p->n_pages = (uint32_t)(bytes / page_bytes);
    p->try_huge = try_huge;
    struct pool_mem m;
    int bound, rc;
    if ((rc = pool_mem_get(x, (uint64_t)p->n_pages * page_bytes, try_huge, &m, err)) < 0) {
        free(p);
        return rc;
    }
    if ((rc = pool_mem_bind(&m, numa_node, &bound, err)) < 0) {
        pool_mem_put(&m);
        free(p);
        return rc;
    }
    pool_mem_populate(&m);
    p->want_numa = numa_node;
    pool_adopt(p, &m, bound);
    *out = p;
    return 0;
}

int kvn_host_pool_move(struct kvn_host_pool *pool, struct kvn_xport *x, struct kvn_err *err)
{
    if (!pool || !pool->base)
        return kvn_err_set(err, -EINVAL, "pool is NULL");
    if (x && kvn_xport_backend(x) < 0)
        return kvn_err_set(err, -EINVAL, "not a transport domain");
    if (x == pool->x)
        return 0;
    struct pool_mem m;
    int bound, rc;
    if ((rc = pool_mem_get(x, kvn_host_pool_bytes(pool), pool->try_huge, &m, err)) < 0)
        return rc;
    if ((rc = pool_mem_bind(&m, pool->want_numa, &bound, err)) < 0) {
        pool_mem_put(&m);
        return rc;
    }
    pool_mem_populate(&m);
    memcpy(m.base, pool->base, (size_t)kvn_host_pool_bytes(pool));
    struct pool_mem old = pool_mem_of(pool);
    pool_adopt(pool, &m, bound);
    pool_mem_put(&old);
    return 0;
}

void kvn_host_pool_destroy(struct kvn_host_pool *pool)
{
    if (!pool)
        return;
    struct pool_mem m = pool_mem_of(pool);
    pool_mem_put(&m);
    free(pool);
}

void *kvn_host_pool_page(const struct kvn_host_pool *pool, uint32_t idx)
{
    if (!pool || idx >= pool->n_pages)
        return NULL;
    return pool->base + (uint64_t)idx * pool->page_bytes;
}

uint64_t kvn_host_pool_bytes(const struct kvn_host_pool *pool)
{
    return pool ? (uint64_t)pool->n_pages * pool->page_bytes : 0;
}
