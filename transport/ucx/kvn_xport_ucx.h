/*
 * kvn_xport_ucx.h - UCX-specific additions to kvn_xport.h: memory that UCX
 * allocates itself, for direct shared-memory RMA, and the WRITE completion
 * mode (local or delivery completion).
 *
 * Why.  UCX 1.13 with UCX_TLS=sm (ucx+sm) can put/get directly only into
 * memory its shared-memory transports allocated (sysv/posix segments the
 * peer maps).  For ordinary caller memory registered with
 * kvn_xport_mr_reg(), it emulates RMA in software over its message FIFO:
 * every byte is copied twice and every op needs the target to progress
 * (5-300x slower than ucx_perftest here, depending on how quickly the
 * target gets a CPU; ucx_perftest allocates with UCP_MEM_MAP_ALLOCATE).  CMA is only used by
 * UCX 1.13 for rendezvous, not for ucp_put/ucp_get.  A region that will be the TARGET (or source)
 * of bulk RMA over ucx+sm - a node's host KV pool, kvbench's buffers - should therefore come from
 * here:
 *
 *     void *pool;
 *     kvn_xport_ucx_mem_alloc(x, len, &pool, &err);     // UCX-owned memory
 *     kvn_xport_mr_reg(x, pool, len, ACCESS_ALL, &mr, &err); // as usual
 *     ...                                                // mr_pack, post...
 *     kvn_xport_mr_dereg(mr, &err);
 *     kvn_xport_ucx_mem_free(x, pool, &err);
 *
 * kvn_xport_mr_reg() of any sub-range of an allocated region reuses UCX's
 * mapping (no second registration), and its descriptor then carries the
 * shared-memory keys.  On ucx+tcp and ucx the allocation works too (plain
 * pages) and changes nothing.  Memory is page aligned and zero-filled.
 *
 * Thread rules as for the domain.  Errors: 0 or a negative errno with err
 * filled; a refused call changes nothing.
 */
#ifndef KVN_XPORT_UCX_H
#define KVN_XPORT_UCX_H

#include <stddef.h>
#include <stdio.h>

#include "transport/kvn_xport.h"
#include "util/kvn_err.h"

/*
 * Allocates len (> 0) bytes with ucp_mem_map(UCP_MEM_MAP_ALLOCATE) in x's
 * UCX context and stores the address in *addr.  The memory belongs to the
 * domain: free it with kvn_xport_ucx_mem_free() or it is released by
 * kvn_xport_close().
 * Errors: -EINVAL (NULL args, len 0), -ENOTSUP (x is not a UCX domain),
 *         -ENOMEM / UCX errors.
 */
int kvn_xport_ucx_mem_alloc(struct kvn_xport *x, size_t len, void **addr, struct kvn_err *err);

/*
 * Frees memory from kvn_xport_ucx_mem_alloc().  -EBUSY while an mr of x
 * still lies in it (deregister first); -EINVAL for an address that is not
 * the start of such an allocation, or NULL args.
 */
int kvn_xport_ucx_mem_free(struct kvn_xport *x, void *addr, struct kvn_err *err);

/*
 * Length of the allocation that starts at addr (as passed to
 * kvn_xport_ucx_mem_alloc) into *len.  Pure query, for callers that check
 * a (pointer, length) pair before freeing (kvn_xport_mem_free).
 * Errors: -EINVAL (NULL args, addr not the start of an allocation of x),
 *         -ENOTSUP (x is not a UCX domain).
 */
int kvn_xport_ucx_mem_size(struct kvn_xport *x, const void *addr, size_t *len, struct kvn_err *err);

/*
 * WRITE completion mode of a UCX domain, for WRITEs posted from now on.
 * on = 1 (default): delivery completion, as kvn_xport.h promises - a WRITE
 *   completes only after an endpoint flush acknowledged by the target
 *   (batched over the WRITEs in flight): a completed WRITE is at the
 *   target, and WRITEs to a peer that died fail.
 * on = 0: a WRITE completes when UCX's put completes locally (the source
 *   may be reused; the bytes may still be in flight, and a WRITE to a peer
 *   that died idle may complete with status 0).  Faster for small WRITEs at
 *   a fixed queue depth over tcp (see transport/ucx/README.md); send a
 *   notification (ordered after the WRITEs on UCX) before the target looks
 *   at the bytes.
 * Errors: -EINVAL (NULL x, on not 0/1), -ENOTSUP (not a UCX domain).
 */
int kvn_xport_ucx_set_write_delivery(struct kvn_xport *x, int on, struct kvn_err *err);

/*
 * Prints what UCX chose for the endpoint of peer p (ucp_ep_print_info: its
 * lanes, transports and protocol thresholds) to out: the UCX analogue of
 * `fi_info -v`, for checking which transport and protocol a peer's data
 * takes.  The format is UCX's and may change between UCX versions.
 * Errors: -EINVAL (NULL p or out; p disconnected or failed), -ENOTSUP
 * (not a UCX peer).
 */
int kvn_xport_ucx_peer_info(struct kvn_xport_peer *p, FILE *out, struct kvn_err *err);

#endif /* KVN_XPORT_UCX_H */
