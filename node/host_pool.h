/*
 * host_pool.h - the node's L2: one mmap'd region cut into fixed-size pages.
 *
 *   base                                                    base + n_pages * page_bytes
 *   | page 0 | page 1 | page 2 | ...                      | page n-1 |  (mapping rounded up)
 *
 * Where the bytes come from:
 *   - kvn_host_pool_create (no domain): mapped once at start-up (util/kvn_mem.h), with
 *     MAP_HUGETLB when try_huge and the kernel has huge pages to give, else regular pages,
 *     2 MiB aligned and advised MADV_HUGEPAGE before they are touched (transparent huge pages
 *     where THP is "always" or "madvise"), then populated after the NUMA binding;
 *   - kvn_host_pool_create_in(x, ...): from kvn_xport_mem_alloc(x), the memory x is best at:
 *     on UCX domains UCX allocates it (ucp_mem_map ALLOCATE: the only memory UCX 1.13 puts/gets
 *     directly over shared memory, ucx+sm; huge pages are then UCX's choice, `huge` stays
 *     false); on other domains it is the same populated anonymous mapping as above with huge
 *     pages tried - except when try_huge is false, then the pool maps regular pages itself.
 * Either way the pool is bound to a NUMA node when asked (mbind before our own mapping is
 * populated; domain memory, populated already, is moved, MPOL_MF_MOVE), and registered once with the transport by its user. Which page holds
 * what is the cache's business (its page allocator hands out indices); this file only turns an
 * index into bytes.
 *
 * Thread rules: create/destroy from one thread (for a pool made in a domain: the domain's
 * thread); kvn_host_pool_page is a pure function of the pool and may be called from any thread.
 */
#ifndef KVN_HOST_POOL_H
#define KVN_HOST_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/kvn_err.h"

struct kvn_xport;

struct kvn_host_pool {
    uint8_t *base;
    size_t map_bytes; /* what was mmap'd (>= n_pages * page_bytes) */
    uint64_t page_bytes;
    uint32_t n_pages;
    bool huge;           /* MAP_HUGETLB succeeded */
    int numa_node;       /* -1 when not bound */
    struct kvn_xport *x; /* domain the memory came from (kvn_host_pool_create_in), or NULL */
    size_t alloc_bytes;  /* length passed to kvn_xport_mem_alloc when x != NULL */
    bool try_huge;       /* as created (kvn_host_pool_move keeps it) */
    int want_numa;       /* NUMA node asked for at creation, -1 for none */
    char note[160];      /* how the pool was made, for the log */
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

/*
 * As kvn_host_pool_create, with the memory from kvn_xport_mem_alloc(x) (see above) when x is
 * not NULL; x == NULL is kvn_host_pool_create. The pool keeps x: destroy the pool BEFORE
 * closing x (and deregister the pool's mrs first).
 * Errors: as kvn_host_pool_create, plus kvn_xport_mem_alloc's (-ENOMEM, backend errors).
 */
int kvn_host_pool_create_in(struct kvn_xport *x, struct kvn_host_pool **out, uint64_t bytes,
                            uint64_t page_bytes, bool try_huge, int numa_node, struct kvn_err *err);

/*
 * Moves the pool's bytes into memory from kvn_xport_mem_alloc(x) (x != NULL), or back into a
 * mapping of its own (x == NULL), keeping the contents, the page geometry, try_huge and the
 * NUMA binding; base (and so every page address) changes. For a pool whose owner opens its
 * transport domain only after the pool exists:
 *
 *     kvn_host_pool_create(&pool, ...);          // at start-up, no domain yet
 *     kvn_xport_open(uri, &attr, &x, &err);
 *     kvn_host_pool_move(pool, x, &err);         // before registering it anywhere
 *     kvn_xport_mr_reg(x, pool->base, ...);
 *     ...
 *     kvn_xport_mr_dereg(mr, &err);
 *     kvn_host_pool_move(pool, NULL, &err);      // before kvn_xport_close(x), if the pool
 *     kvn_xport_close(x);                        // lives on (else destroy it first)
 *
 * Only while no domain has the pool registered (the old memory is released; a registration
 * in x still lying in it refuses that release and the old memory then stays with x). Costs a
 * copy of the pool and, for a moment, twice its memory. x == pool->x does nothing.
 * Errors: -EINVAL (pool NULL), kvn_xport_mem_alloc's / mmap's (-ENOMEM...), mbind's: the pool
 * is then unchanged.
 */
int kvn_host_pool_move(struct kvn_host_pool *pool, struct kvn_xport *x, struct kvn_err *err);

/*
 * Unmaps (or gives the memory back to its domain) and frees; NULL is fine. For a pool made in
 * a domain, deregister the pool's mrs first: memory a registration still lies in is not
 * released under it (kvn_xport_mem_free refuses with -EBUSY); it then stays with the domain
 * (UCX releases it at kvn_xport_close) or mapped until exit (other backends).
 */
void kvn_host_pool_destroy(struct kvn_host_pool *pool);

/* Address of page idx, or NULL when pool is NULL or idx >= n_pages. */
void *kvn_host_pool_page(const struct kvn_host_pool *pool, uint32_t idx);

/* Bytes of the usable region (n_pages * page_bytes). */
uint64_t kvn_host_pool_bytes(const struct kvn_host_pool *pool);

#endif /* KVN_HOST_POOL_H */
