/*
 * lease_table.h - pins a peer holds on this node's pages, each under a lease.
 *
 *   peer: pin(tokens, lease_ms) ──► add(node_id, pages, now + lease_ms) ──► handle
 *         ... reads the pages by RDMA READ ...
 *   peer: unpin(handle)         ──► release(handle) ──► node_id to unprotect
 *   peer dies / forgets         ──► expire(now) reports it, the daemon unprotects
 *
 * The table only keeps the books: which tree node each lease protects and until when.  The
 * daemon protects the node in the radix tree (kvn_radix_protect) when it adds a lease and
 * unprotects it when release or expire hands the node back, so a pinned page cannot be
 * evicted under a reader and no pin outlives its lease.
 *
 * Handles are (generation << 32 | slot): a handle released or expired is refused afterwards
 * (-ENOENT), even when its slot was reused, so a late unpin cannot release someone else's
 * pin.  Slots come from a free list (no allocation after create); expiry scans the slots,
 * which the daemon does on a timer (every few tens of ms), never per request.
 *
 * Thread rules: one thread (the event loop) owns a table.
 */
#ifndef KVN_LEASE_TABLE_H
#define KVN_LEASE_TABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "util/kvn_err.h"

#define KVN_LEASES_DEFAULT_MAX 4096u
#define KVN_LEASES_LIMIT_MAX   (1u << 20)

struct kvn_leases;

struct kvn_lease_info {
    uint64_t handle;
    uint64_t node_id;    /* the tree node protected */
    uint32_t pages;      /* pages the pin covers (for stats) */
    uint64_t expires_ms; /* on the caller's clock */
};

/* cap = most leases at once (0 = 4096, <= 2^20).  Errors: -EINVAL, -ENOMEM. */
int kvn_leases_create(uint32_t cap, struct kvn_leases **out, struct kvn_err *err);
void kvn_leases_destroy(struct kvn_leases *t); /* NULL ignored */

/*
 * Records a lease on node_id (!= 0) until expires_ms.  Errors: -EINVAL (NULL, node_id 0,
 * handle NULL), -ENOSPC (cap leases held).
 */
int kvn_leases_add(struct kvn_leases *t, uint64_t node_id, uint32_t pages, uint64_t expires_ms,
                   uint64_t *handle, struct kvn_err *err);

/*
 * Ends a lease; *out (may be NULL) receives what it protected.  Errors: -EINVAL (NULL t),
 * -ENOENT (unknown, released or expired handle: nothing changes).
 */
int kvn_leases_release(struct kvn_leases *t, uint64_t handle, struct kvn_lease_info *out,
                       struct kvn_err *err);

/*
 * Ends every lease with expires_ms <= now_ms, calling fn(ctx, info) for each (fn may be
 * NULL).  Returns the number expired, or -EINVAL.
 */
int kvn_leases_expire(struct kvn_leases *t, uint64_t now_ms,
                      void (*fn)(void *ctx, const struct kvn_lease_info *info), void *ctx);

/* Leases held now (0 for NULL). */
uint32_t kvn_leases_held(const struct kvn_leases *t);

/* Earliest expiry, UINT64_MAX when none. */
uint64_t kvn_leases_next_expiry(const struct kvn_leases *t);

#endif /* KVN_LEASE_TABLE_H */
