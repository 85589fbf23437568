/*
 * kvn_mem.h - large anonymous mappings meant for RDMA registration (host pools, transfer
 * buffers), backed by huge pages whenever the kernel gives them.
 *
 *   kvn_mem_map ──► (the caller may mbind the range here) ──► kvn_mem_populate
 *
 * Two ways to huge pages:
 *   - MAP_HUGETLB (when asked and the kernel has reserved huge pages): 2 MiB pages, reserved
 *     at mmap time;
 *   - otherwise regular anonymous memory, 2 MiB aligned (for mappings of 2 MiB or more) and
 *     advised MADV_HUGEPAGE before any page is touched, so that transparent huge pages back
 *     it when THP is "always" or "madvise". Advice given after the pages were faulted in
 *     (MAP_POPULATE then madvise) gets 4 KiB pages, one TLB entry per 4 KiB of a transfer.
 * Nothing is populated by kvn_mem_map, so that a NUMA policy set between the two calls
 * applies to every page; kvn_mem_populate then faults all of it in (MADV_POPULATE_WRITE,
 * or one write per page on kernels before 5.14): registration pins it anyway, and faults
 * during the first transfers would only move that cost to the data path.
 */
#ifndef KVN_MEM_H
#define KVN_MEM_H

#include <stdbool.h>
#include <stddef.h>

#include "util/kvn_err.h"

#define KVN_MEM_HUGE (2ul << 20)

struct kvn_mem {
    void *base;      /* page aligned; 2 MiB aligned when map_len >= 2 MiB */
    size_t map_len;  /* bytes mapped at base (len rounded up to the page size) */
    bool hugetlb;    /* MAP_HUGETLB pages */
    bool thp_advised; /* regular pages advised MADV_HUGEPAGE */
};

/*
 * Maps at least len bytes, readable and writable, zero-filled, not populated.
 * try_hugetlb: try MAP_HUGETLB first (falls back silently).
 * Errors: -EINVAL (m NULL, len 0 or too large), -ENOMEM (mmap failed); *m zeroed on error.
 */
int kvn_mem_map(size_t len, bool try_hugetlb, struct kvn_mem *m, struct kvn_err *err);

/* Faults in every page of m (see above). No-op on NULL or an empty m. */
void kvn_mem_populate(const struct kvn_mem *m);

/* Bytes of m backed by transparent or hugetlb huge pages, from /proc/self/smaps (0 when
 * unknown). For logs and tests. */
size_t kvn_mem_huge_bytes(const struct kvn_mem *m);

/* Unmaps m and zeroes it. No-op on NULL or an empty m. */
void kvn_mem_unmap(struct kvn_mem *m);

#endif /* KVN_MEM_H */
