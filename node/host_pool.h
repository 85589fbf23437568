/*
 * host_pool.h - the node's L2: one mmap'd region cut into fixed-size pages.
 *
 *   base                                                    base + n_pages * page_bytes
 *   | page 0 | page 1 | page 2 | ...                      | page n-1 |  (mapping rounded up)
 *
 * The region is mapped (and populated) once at start-up, with MAP_HUGETLB when the kernel has
 * huge pages to give (else regular pages with MADV_HUGEPAGE as a hint), bound
 * to a NUMA node when asked (mbind), and registered once with the transport
 * by the daemon. Which page holds what is the cache's business (its page
 * allocator hands out indices); this file only turns an index into bytes.
 *
 * Thread rules: create/destroy from one thread; kvn_host_pool_page is a pure
 * function of the pool and may be called from any thread.
 */
#ifndef KVN_HOST_POOL_H
#define KVN_HOST_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/kvn_err.h"

struct kvn_host_pool {
    uint8_t *base;
    size_t map_bytes; /* what was mmap'd (>= n_pages * page_bytes) */
    uint64_t page_bytes;
    uint32_t n_pages;
    bool huge;      /* MAP_HUGETLB succeeded */
    int numa_node;  /* -1 when not bound */
    char note[160]; /* how the pool was made, for the log */
};

/*
 * Maps a pool of floor(bytes / page_bytes) pages. try_huge: try MAP_HUGETLB
 * first. numa_node: -1 for none, else the node the memory must come from
 * (-EINVAL when that node does not exist; when the kernel has no NUMA policy
 * support the binding is skipped and said so in note).
 * Ownership: *out is the caller's, released by kvn_host_pool_destroy.
 * Errors: -EINVAL (out NULL, page_bytes 0, bytes < page_bytes, > 2^32 pages,
 * bad NUMA node), -ENOMEM (mmap failed). *out untouched on error.
 */
int kvn_host_pool_create(struct kvn_host_pool **out, uint64_t bytes, uint64_t page_bytes,
                         bool try_huge, int numa_node, struct kvn_err *err);

/* Unmaps and frees; NULL is fine. */
void kvn_host_pool_destroy(struct kvn_host_pool *pool);

/* Address of page idx, or NULL when pool is NULL or idx >= n_pages. */
void *kvn_host_pool_page(const struct kvn_host_pool *pool, uint32_t idx);

/* Bytes of the usable region (n_pages * page_bytes). */
uint64_t kvn_host_pool_bytes(const struct kvn_host_pool *pool);

#endif /* KVN_HOST_POOL_H */
