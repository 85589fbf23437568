/*
 * push_table.h - reservations for prefill -> decode pushes, on the decode node.
 *
 *   prefill                                decode node
 *   reserve(tokens) ───────────────────►  kvn_radix_reserve_l2(n pages)
 *                                         kvn_push_reserve(tokens, pages, deadline) -> handle
 *              ◄─────────────────────── handle, pages (offsets in its registered pool)
 *   RDMA WRITE page i ──► pool page[i]    (the decode node does not see these)
 *   push_done(handle, landed = [i...]) ─►  kvn_push_land(handle, indices)
 *                                         all landed? kvn_push_take -> insert_host, events
 *   abort(handle) / deadline passes ───►  kvn_push_take / kvn_push_expire -> release_l2
 *
 * The table keeps the books of each reservation: its tokens, its reserved L2 pages, which of
 * them the prefill side reported as landed, and its deadline.  It refuses with a clear
 * error, changing nothing:
 *   - a landed index outside the reservation (a push larger than its reservation): -ERANGE;
 *   - an index reported twice (a duplicate notification): -EALREADY;
 *   - a handle that completed, was aborted or expired (a late notification): -ENOENT, and
 *     the message says which of the three happened to it;
 *   - completing a reservation before every page landed: -EAGAIN.
 * The daemon owns the radix tree: it reserves pages before kvn_push_reserve and inserts or
 * releases them after kvn_push_take / kvn_push_expire hand them back, so nothing partial is
 * ever inserted and no reserved page leaks.
 *
 * Memory: a reservation's token and page arrays are allocated when it is made (a control
 * operation, bounded by max_pages in total), never per landed page.
 *
 * Thread rules: one thread (the event loop) owns a table.
 */
#ifndef KVN_PUSH_TABLE_H
#define KVN_PUSH_TABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "util/kvn_err.h"

#define KVN_PUSH_DEFAULT_MAX_RES   1024u
#define KVN_PUSH_DEFAULT_MAX_PAGES (1u << 20)

struct kvn_push_table;

/* A reservation handed back by take / expire: the caller's until kvn_push_view_free. */
struct kvn_push_view {
    uint64_t handle;
    int32_t *tokens;
    uint32_t n_tokens;
    uint32_t *pages; /* reserved L2 pages, page i of the sequence in pages[i] */
    uint32_t n_pages;
    uint32_t landed;
};

struct kvn_push_stats {
    uint32_t active;         /* reservations open */
    uint32_t pages_reserved; /* their pages */
    uint64_t reserved, completed, aborted, expired;
    uint64_t refused_range, refused_duplicate, refused_late, refused_incomplete;
};

/* max_res: reservations open at once (0 = 1024); max_pages: their pages in total (0 = 2^20).
 * Errors: -EINVAL (NULL out), -ENOMEM. */
int kvn_push_create(uint32_t max_res, uint32_t max_pages, struct kvn_push_table **out,
                    struct kvn_err *err);
/* Frees the table and any open reservation's arrays (the caller releases their L2 pages
 * first if the tree outlives the table).  NULL ignored. */
void kvn_push_destroy(struct kvn_push_table *t);

/*
 * Opens a reservation for tokens[0..n_tokens) whose n_pages pages are pages[] (copied),
 * open until deadline_ms.  n_tokens must be n_pages * page_size for the caller's page size
 * (the table only checks n_pages >= 1 and n_tokens >= n_pages).  Errors: -EINVAL (NULL,
 * zero pages, n_tokens < n_pages, a page listed twice), -ENOSPC (max_res open or max_pages
 * exceeded), -ENOMEM.
 */
int kvn_push_reserve(struct kvn_push_table *t, const int32_t *tokens, uint32_t n_tokens,
                     const uint32_t *pages, uint32_t n_pages, uint64_t deadline_ms,
                     uint64_t *handle, struct kvn_err *err);

/*
 * Marks indices idx[0..n) (0 .. n_pages-1 of the reservation) as landed; *complete (may be
 * NULL) says whether every page has landed now.  All or nothing.  Errors: -EINVAL (NULL,
 * n == 0), -ENOENT (unknown / completed / aborted / expired handle), -ERANGE (an index
 * beyond the reservation), -EALREADY (an index already landed or listed twice).
 */
int kvn_push_land(struct kvn_push_table *t, uint64_t handle, const uint32_t *idx, uint32_t n,
                  bool *complete, struct kvn_err *err);

/* Marks every page landed (a notification for the whole reservation).  Errors as land;
 * -EALREADY when some page had been reported already. */
int kvn_push_land_all(struct kvn_push_table *t, uint64_t handle, struct kvn_err *err);

/*
 * Closes the reservation and hands its books to the caller.  abort == false: completing,
 * refused with -EAGAIN unless every page landed (nothing changes then); abort == true:
 * always.  Errors: -EINVAL, -ENOENT, -EAGAIN.
 */
int kvn_push_take(struct kvn_push_table *t, uint64_t handle, bool abort, struct kvn_push_view *out,
                  struct kvn_err *err);

/*
 * Closes every reservation whose deadline_ms <= now_ms, calling fn(ctx, view) for each; the
 * view's arrays are valid during the call only (the table frees them).  Returns the count,
 * or -EINVAL (NULL t or fn).
 */
int kvn_push_expire(struct kvn_push_table *t, uint64_t now_ms,
                    void (*fn)(void *ctx, const struct kvn_push_view *v), void *ctx);

/* Frees a view's arrays (from kvn_push_take); NULL ok. */
void kvn_push_view_free(struct kvn_push_view *v);

void kvn_push_get_stats(const struct kvn_push_table *t, struct kvn_push_stats *out);

/* Earliest deadline, UINT64_MAX when none. */
uint64_t kvn_push_next_deadline(const struct kvn_push_table *t);

#endif /* KVN_PUSH_TABLE_H */
