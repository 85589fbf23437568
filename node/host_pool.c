/* host_pool.c - the L2 host pool (see host_pool.h). */
#include "node/host_pool.h"

#include "transport/kvn_xport.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HUGE_2M       (2ull << 20)
#define MPOL_BIND_    2         /* <numaif.h> is libnuma's, not libc's: the values are ABI */
#define MPOL_MF_MOVE_ (1u << 1) /* move pages already populated (domain memory) */

static bool numa_node_exists(int node)
{
    char path[64];
    snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", node);
    return access(path, F_OK) == 0;
}

int kvn_host_pool_create(struct kvn_host_pool **out, uint64_t bytes, uint64_t page_bytes,
                         bool try_huge, int numa_node, struct kvn_err *err)
{
    return kvn_host_pool_create_in(NULL, out, bytes, page_bytes, try_huge, numa_node, err);
}

/* Releases the pool's memory (domain or own mapping). */
static void pool_unmap(struct kvn_host_pool *p)
{
    if (!p->base)
        return;
    if (p->x)
        (void)kvn_xport_mem_free(p->x, p->base, p->alloc_bytes, NULL); /* -EBUSY: stays */
    else
        munmap(p->base, p->map_bytes);
    p->base = NULL;
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
    p->numa_node = -1;
    uint64_t want = (uint64_t)p->n_pages * page_bytes;
    void *base = MAP_FAILED;
    const char *mem_note = NULL;
    /* a UCX domain's own memory is what ucx+sm puts/gets directly; on other backends
     * kvn_xport_mem_alloc is our own huge-page mapping, so honour try_huge == false here */
    if (x && (kvn_xport_backend(x) == KVN_XPORT_BACKEND_UCX || try_huge)) {
        struct kvn_err e;
        int rc = kvn_xport_mem_alloc(x, (size_t)want, &base, &e);
        if (rc < 0) {
            free(p);
            return kvn_err_set(err, rc, "pool memory from %s: %s", kvn_xport_name(x), e.msg);
        }
        p->x = x;
        p->alloc_bytes = (size_t)want;
        p->map_bytes = (size_t)want;
        mem_note = kvn_xport_backend(x) == KVN_XPORT_BACKEND_UCX
                       ? "UCX-allocated memory (kvn_xport_mem_alloc)"
                       : "domain memory (kvn_xport_mem_alloc, huge pages when available)";
    }
    if (base == MAP_FAILED && try_huge) {
        p->map_bytes = (size_t)((want + HUGE_2M - 1) / HUGE_2M * HUGE_2M);
        base = mmap(NULL, p->map_bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
        if (base != MAP_FAILED)
            p->huge = true;
    }
    if (base == MAP_FAILED) {
        long ps = sysconf(_SC_PAGESIZE);
        size_t pg = ps > 0 ? (size_t)ps : 4096;
        p->map_bytes = (size_t)((want + pg - 1) / pg * pg);
        /* populated up front: the pool is registered for RDMA anyway (verbs pins it), and
         * page faults in the first transfers would only move the cost to the data path */
        base = mmap(NULL, p->map_bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (base == MAP_FAILED) {
            free(p);
            return kvn_err_set(err, -ENOMEM, "mmap of %" PRIu64 " bytes failed: %s", want,
                               strerror(errno));
        }
        if (p->map_bytes >= HUGE_2M)
            (void)madvise(base, p->map_bytes, MADV_HUGEPAGE); /* a hint; THP may be off */
    }
    p->base = base;
    const char *numa_note = "no NUMA binding";
    if (numa_node >= 0) {
        unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {0};
        mask[numa_node / (8 * sizeof(unsigned long))] |=
            1ul << (numa_node % (8 * sizeof(unsigned long)));
        /* domain memory is populated already (UCX zero-fills it): move it */
        long r = syscall(SYS_mbind, base, p->map_bytes, MPOL_BIND_, mask, 1024ul,
                         p->x ? MPOL_MF_MOVE_ : 0u);
        if (r == 0) {
            p->numa_node = numa_node;
            numa_note = "bound to the NUMA node";
        } else if (errno == ENOSYS || errno == EPERM) {
            numa_note = "NUMA binding skipped: the kernel refused mbind";
        } else {
            int e = errno;
            pool_unmap(p);
            free(p);
            return kvn_err_set(err, -e, "mbind to NUMA node %d failed: %s", numa_node, strerror(e));
        }
    }
    snprintf(p->note, sizeof(p->note), "%" PRIu32 " pages of %" PRIu64 " bytes, %s, %s", p->n_pages,
             page_bytes,
             mem_note  ? mem_note
             : p->huge ? "huge pages (MAP_HUGETLB)"
                       : "regular pages",
             numa_note);
    *out = p;
    return 0;
}

void kvn_host_pool_destroy(struct kvn_host_pool *pool)
{
    if (!pool)
        return;
    pool_unmap(pool);
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
