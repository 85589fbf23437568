/*
 * xfer.h - the node's copy engine: turns copy jobs into RDMA operations and
 * completions back into job results.
 *
 *   cache (copy job: ack id, [(L1 slot, L2 page)...])
 *       │ kvn_xfer_copy(TO_L2)                 │ kvn_xfer_copy(TO_L1)
 *       ▼                                      ▼
 *   RDMA READ  L1 slot ──► host pool page   RDMA WRITE host pool page ──► L1 slot
 *       │ one op per run of consecutive pages, cookie = job
 *       ▼
 *   completion queue ──► job done when every op completed
 *       │ (held delay_ms when --inject-ack-delay)
 *       ▼
 *   done(ctx, ack id, dir, ok)   ──► kvn_radix_ack(... ok)
 *
 * One transport domain carries everything: the host pool is registered in
 * it once; the engine's L1 is reached through a peer (kvn_xfer_l1_attach,
 * from a register_l1 request) or, with --l1, through a stand-in region the
 * node allocates, registers in the same domain and reaches over a loopback
 * connection to itself, so that the copies are real transfers.
 *
 * Jobs live in a fixed slab (max_jobs) and are posted FIFO as the transport's
 * outstanding budget allows, so a large job never fails for want of credits
 * and no memory is allocated per job or per operation. A job whose operation
 * fails (peer gone, timeout, error status) completes with ok = false once its
 * posted operations have all completed: no page is reported before the bytes
 * are there, and no result is reported twice.
 *
 * Thread rules: one thread (the event loop) owns an xfer and its domain.
 */
#ifndef KVN_XFER_H
#define KVN_XFER_H

#include <stdbool.h>
#include <stdint.h>

#include "node/host_pool.h"
#include "util/kvn_err.h"

struct kvn_xfer;

enum kvn_xfer_dir {
    KVN_XFER_TO_L2 = 1, /* write-through / backup: RDMA READ from L1 into the pool */
    KVN_XFER_TO_L1 = 2, /* load back: RDMA WRITE from the pool into L1 */
};

struct kvn_xfer_cfg {
    const char *uri;            /* transport URI ("auto", "ofi+tcp", ...) */
    struct kvn_host_pool *pool; /* registered once; must outlive the xfer */
    uint32_t delay_ms;          /* hold finished jobs this long (test aid) */
    uint32_t max_jobs;          /* jobs in flight; 0 = 4096 */
    uint32_t max_outstanding;   /* transport ops in flight; 0 = 1024 */
    uint32_t op_timeout_ms;     /* 0 = transport default */
};

/* Called once per job, in completion order (FIFO for held jobs). */
typedef void (*kvn_xfer_done_fn)(void *ctx, uint64_t ack_id, enum kvn_xfer_dir dir, bool ok,
                                 uint64_t bytes);

struct kvn_xfer_stats {
    uint64_t jobs_posted, jobs_ok, jobs_failed;
    uint64_t ops_posted, ops_failed;
    uint64_t bytes_to_l2, bytes_to_l1; /* of jobs that succeeded */
    uint32_t jobs_active;              /* queued, in flight or held */
    uint32_t jobs_held;
    char last_error[128]; /* message of the last failed operation, "" if none */
};

/*
 * Opens the transport domain, registers the pool, connects the domain to
 * itself. Errors: -EINVAL (NULL, no pool), -ENOMEM, transport errors
 * (-ENOTSUP, -ENODEV, ...) with the transport's message.
 */
int kvn_xfer_create(const struct kvn_xfer_cfg *cfg, struct kvn_xfer **out, struct kvn_err *err);

/* Closes the domain (outstanding ops are dropped), frees everything. NULL ok. */
void kvn_xfer_destroy(struct kvn_xfer *x);

/* The canonical transport name ("ofi+tcp", ...). */
const char *kvn_xfer_transport(const struct kvn_xfer *x);

/* This domain's address blob (for an engine to connect back). */
int kvn_xfer_address(struct kvn_xfer *x, void *buf, size_t *len, struct kvn_err *err);

/*
 * Allocates an L1 stand-in of floor(bytes / page_bytes) slots (page_bytes =
 * the pool's), registers it and attaches it as the L1 through the loopback
 * peer. Errors: -EINVAL, -EBUSY (jobs in flight), -ENOMEM, transport errors.
 */
int kvn_xfer_l1_standin(struct kvn_xfer *x, uint64_t bytes, struct kvn_err *err);

/*
 * Attaches an engine's L1: connects to its address blob and unpacks its
 * region descriptor. page_bytes must equal the pool's; the region must hold
 * n_slots * page_bytes bytes. Replaces a previous L1 (or the stand-in).
 * Errors: -EINVAL, -EPROTO (bad blob or descriptor), -EBUSY (jobs in
 * flight), transport errors. On error the previous L1 stays attached.
 */
int kvn_xfer_l1_attach(struct kvn_xfer *x, const void *desc, size_t desc_len, const void *addr,
                       size_t addr_len, uint64_t page_bytes, uint64_t n_slots, struct kvn_err *err);

/* Slots of the attached L1 (0 when none). */
uint32_t kvn_xfer_l1_slots(const struct kvn_xfer *x);

/* Address of stand-in slot s, or NULL (no stand-in, s out of range). */
void *kvn_xfer_l1_standin_slot(struct kvn_xfer *x, uint32_t slot);

/*
 * Queues a job of n pages: pair i is (l1_slots[i], l2_pages[i]). Runs of
 * consecutive slots and pages become one operation. The arrays are copied.
 * Errors: -EINVAL (n == 0, NULL, a slot or page out of range), -ENOTCONN (no
 * L1 attached), -EAGAIN (max_jobs in flight), -ENOMEM. Nothing is queued on
 * error, and done() will not be called for it.
 */
int kvn_xfer_copy(struct kvn_xfer *x, enum kvn_xfer_dir dir, uint64_t ack_id,
                  const uint32_t *l1_slots, const uint32_t *l2_pages, uint32_t n,
                  struct kvn_err *err);

/*
 * Posts queued operations, polls the completion queue, and calls done() for
 * every job that finished (after delay_ms when set). now_ms is a monotonic
 * clock in milliseconds (the caller's: this file reads no clock). Returns the
 * number of jobs reported, or a negative code for bad arguments.
 */
int kvn_xfer_progress(struct kvn_xfer *x, uint64_t now_ms, kvn_xfer_done_fn done, void *ctx);

/* The transport's wait fd (readable when progress may have work). */
int kvn_xfer_wait_fd(struct kvn_xfer *x);

/* True while operations are in flight or queued, or until progress has
 * re-armed the wait fd after them: the loop busy-polls (calls progress again
 * without sleeping on the wait fd) while this holds. */
bool kvn_xfer_busy(const struct kvn_xfer *x);

/* Earliest due time of a held job (ms), or UINT64_MAX when none is held. */
uint64_t kvn_xfer_next_due(const struct kvn_xfer *x);

/* True when no job is queued, in flight or held. */
bool kvn_xfer_idle(const struct kvn_xfer *x);

void kvn_xfer_get_stats(const struct kvn_xfer *x, struct kvn_xfer_stats *out);

#endif /* KVN_XFER_H */
