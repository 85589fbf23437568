/*
 * page_alloc.h - a fixed-capacity allocator of page indices (L1 slots, L2 pages).
 *
 * The index hands out page *numbers*, never memory: slot i of L1 is whatever the
 * engine keeps at offset i * page_bytes of its KV region, page j of L2 is an
 * offset into the node's registered host pool. The allocator only answers "which
 * numbers are free" in O(1), and refuses double frees and foreign numbers.
 *
 *     free stack                       pos[] (index -> position, or USED)
 *     +---+---+---+---+---+---+        +---+---+---+---+---+---+
 *     | 5 | 2 | 4 | . | . | . |        | U | U | 1 | U | 2 | 0 |
 *     +---+---+---+---+---+---+        +---+---+---+---+---+---+
 *       0   1   2  ^n_free               0   1   2   3   4   5
 *
 * get() pops from the top; put() pushes back after checking pos[] says USED;
 * take() claims one *specific* free index (an engine-chosen L1 slot) by swapping
 * it with the top of the stack. Every operation is O(1) per page; free + used ==
 * capacity always holds.
 *
 * Multi-page calls are all-or-nothing: they validate (or roll back) before
 * returning an error, so a refused call leaves the allocator unchanged.
 *
 * Thread rules: none; one owner at a time.
 */
#ifndef KVN_PAGE_ALLOC_H
#define KVN_PAGE_ALLOC_H

#include <stdbool.h>
#include <stdint.h>

#include "util/kvn_err.h"

/* Largest capacity: indices are uint32_t and UINT32_MAX marks "used". */
#define KVN_PAGE_ALLOC_MAX_CAPACITY (UINT32_MAX - 1u)

/*
 * Fields are private; the struct is public only so that owners can embed it.
 * A zeroed struct is a valid empty allocator of capacity 0 (fini is a no-op).
 */
struct kvn_page_alloc {
    uint32_t capacity;
    uint32_t n_free;
    uint32_t *stack; /* [capacity]: free indices in [0, n_free) */
    uint32_t *pos;   /* [capacity]: position in stack, or UINT32_MAX when used */
};

/*
 * Makes every index in [0, capacity) free. capacity 0 is allowed (an absent
 * tier). Errors: -EINVAL (pa NULL, capacity > KVN_PAGE_ALLOC_MAX_CAPACITY),
 * -ENOMEM. On error *pa is left zeroed (fini-safe).
 */
int kvn_page_alloc_init(struct kvn_page_alloc *pa, uint32_t capacity, struct kvn_err *err);

/* Frees the allocator's arrays and zeroes it. NULL is a no-op. */
void kvn_page_alloc_fini(struct kvn_page_alloc *pa);

/* Marks every index free again (O(capacity)). NULL is a no-op. */
void kvn_page_alloc_reset(struct kvn_page_alloc *pa);

/*
 * Allocates n indices into out[0..n). All or nothing.
 * Errors: -EINVAL (pa NULL, out NULL with n > 0), -ENOSPC (fewer than n free;
 * nothing allocated).
 */
int kvn_page_alloc_get(struct kvn_page_alloc *pa, uint32_t n, uint32_t *out, struct kvn_err *err);

/*
 * Claims the specific indices idx[0..n) (for example L1 slots an engine chose).
 * All or nothing. Errors: -EINVAL (NULL args, an index >= capacity), -EBUSY
 * (an index is already used, or appears twice in idx).
 */
int kvn_page_alloc_take(struct kvn_page_alloc *pa, const uint32_t *idx, uint32_t n,
                        struct kvn_err *err);

/*
 * Returns idx[0..n) to the free set. All or nothing.
 * Errors: -EINVAL (NULL args, an index >= capacity), -EALREADY (an index is
 * already free, or appears twice in idx: a double free).
 */
int kvn_page_alloc_put(struct kvn_page_alloc *pa, const uint32_t *idx, uint32_t n,
                       struct kvn_err *err);

/* true when idx < capacity and idx is allocated. */
bool kvn_page_alloc_is_used(const struct kvn_page_alloc *pa, uint32_t idx);

/* Counters (0 for NULL). free + used == capacity. */
uint32_t kvn_page_alloc_capacity(const struct kvn_page_alloc *pa);
uint32_t kvn_page_alloc_free_count(const struct kvn_page_alloc *pa);
uint32_t kvn_page_alloc_used_count(const struct kvn_page_alloc *pa);

#endif /* KVN_PAGE_ALLOC_H */
