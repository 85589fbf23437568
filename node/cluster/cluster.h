/*
 * cluster.h - a node's view of its cluster at run time: peers and their heartbeats, event
 * subscriptions into the global index, and the cross-node data paths (fetch, push) over a
 * transport domain of its own.
 *
 *            peer_hello (heartbeat, both ways)          KV events (PUB) + replay (ROUTER)
 *   node A ◄───────────────────────────────► node B ──────────────────────────► A's gindex
 *     │  pin(tokens, lease) / unpin(handle)    │
 *     │  ─────────────────────────────────►    │ match_l2 + protect + lease
 *     │  RDMA READ B's pool pages ─────────►   │ (B only progresses its domain)
 *     │  insert_host -> CPU_PINNED BlockStored │
 *     │                                        │
 *     │  reserve(tokens) ─────────────────►    │ reserve_l2 + reservation (push_table.h)
 *     │  RDMA WRITE into B's pages ───────►    │
 *     │  push_done(handle) ───────────────►    │ all landed? insert_host : refuse
 *
 * The daemon owns the loop, the tree and the control socket; it calls in at five places:
 *   1. create/destroy, with its ZeroMQ context, its host pool and (optionally) the L1
 *      stand-in region (the source of `push --slots`);
 *   2. kvn_cluster_poll_items() before zmq_poll and kvn_cluster_handle() after it (peer
 *      sockets, event subscriptions, the cluster transport's wait fd);
 *   3. kvn_cluster_tick() once per loop turn (heartbeats, deaths, lease and reservation
 *      expiry, transport progress); kvn_cluster_timeout_ms() bounds the poll timeout;
 *   4. kvn_cluster_rpc() for the cluster's RPC ops (peer_hello, pin, unpin, reserve,
 *      push_done, abort, fetch, push: see node/kvn_rpc.h), which appends its results to
 *      the daemon's reply packer;
 *   5. kvn_cluster_match() next to the local match, for the best remote hit.
 *
 * Fetch and push run to completion inside the RPC that asks for them: the node waits for
 * the peer's replies (bounded by rpc_timeout_ms) and for its own transfers (bounded by the
 * transport's op timeout; every posted op completes, so no page is released while a
 * transfer may still write it).  Nothing partial becomes visible: pages are inserted only
 * after every transfer succeeded and, for fetch, after the owner confirmed that the lease
 * was still held when the pin was released (an expired lease means the pages may have been
 * reused: the bytes are discarded).
 *
 * Peers: a --peer endpoint, or any node whose peer_hello reaches us, is heartbeated every
 * heartbeat_ms; its first answer (or a new incarnation) connects the cluster transport to its
 * address, unpacks its pool descriptor and subscribes to its events (replaying its history);
 * timeout_ms without an answer drops its entries from the global index.  A hello that cannot
 * be decoded, is incompatible (page size, page bytes, transport) or is our own is refused and
 * counted (hello_bad); a peer whose transport address or pool descriptor is unusable is
 * counted (bad_descriptors) and stays unused for fetch and push until its next incarnation.
 *
 * Thread rules: the event-loop thread owns a cluster, like the tree.
 */
#ifndef KVN_CLUSTER_H
#define KVN_CLUSTER_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

#include "cache/radix.h"
#include "node/cluster/overlap.h"
#include "node/host_pool.h"
#include "node/kvn_rpc.h"
#include "util/kvn_err.h"

#define KVN_CLUSTER_MAX_PEERS 64u

struct kvn_cluster;

struct kvn_cluster_cfg {
    void *zctx;               /* the daemon's ZeroMQ context */
    const char *self_ctl;     /* our control endpoint as peers reach it (required) */
    const char *events;       /* our PUB endpoint ("" = none: peers cannot replicate us) */
    const char *replay;       /* our replay ROUTER endpoint ("" = none) */
    const char *topic;        /* our events topic */
    const char *const *peers; /* --peer endpoints */
    uint32_t n_peers;
    const char *transport; /* URI of the cluster domain (the node's canonical name) */
    struct kvn_host_pool *pool;
    uint32_t page_size;
    void *l1_base; /* L1 stand-in (push source for --slots), NULL = none */
    uint64_t l1_bytes;
    uint64_t heartbeat_ms;   /* 0 = 200 */
    uint64_t timeout_ms;     /* peer declared dead after this long; 0 = 1500 */
    uint32_t rpc_timeout_ms; /* fetch/push waiting for a peer's reply; 0 = 1000 (below the peer
                                timeout) */
    uint32_t op_timeout_ms;  /* one RDMA op; 0 = 2000 */
    uint32_t fetch_hold_ms;  /* test aid: hold this long between reading and unpinning */
    void (*log)(void *ctx, int level, const char *msg); /* 0 error .. 3 debug; may be NULL */
    void *log_ctx;
};

struct kvn_cluster_stats {
    uint32_t peers, peers_up;
    uint64_t peer_joins, peer_deaths, peer_restarts;
    uint64_t hello_sent, hello_recv, hello_bad;
    uint64_t events_applied, batches_applied, sub_malformed, sub_bad_frames, sub_lost;
    uint64_t remote_blocks; /* CPU_PINNED blocks known at peers */
    uint64_t pins, pins_active, pin_expired, unpin_bad;
    uint64_t fetches, fetch_failed, fetch_pages, fetch_bytes, fetch_us;
    uint64_t pushes, push_failed, push_pages, push_bytes, push_us;
    uint64_t reservations, res_completed, res_aborted, res_expired, res_refused;
    uint64_t bad_descriptors;                     /* remote page lists outside the peer's pool */
    uint64_t lag_samples, lag_p50_us, lag_p99_us; /* publisher ts -> applied here */
    uint64_t fetch_p50_us, fetch_p99_us;
};

/*
 * Opens the cluster domain (registers the pool, and the L1 stand-in when given), the peer
 * table and the global index, and schedules a heartbeat to every --peer at once.
 * Errors: -EINVAL (missing config), -ENOMEM, transport errors.
 */
int kvn_cluster_create(const struct kvn_cluster_cfg *cfg, struct kvn_cluster **out,
                       struct kvn_err *err);

/* Closes sockets and the domain; reserved or pinned pages are the tree's business: call
 * kvn_cluster_release_all() first while the tree exists.  NULL ok. */
void kvn_cluster_destroy(struct kvn_cluster *c);

/* Releases every pin and reservation back to the tree (shutdown, reset). */
void kvn_cluster_release_all(struct kvn_cluster *c, struct kvn_radix *tree);

/* Appends the cluster's poll items to items[0..cap); returns how many (<= cap). */
int kvn_cluster_poll_items(struct kvn_cluster *c, zmq_pollitem_t *items, int cap);

/* Handles what zmq_poll reported on the items kvn_cluster_poll_items() filled. */
void kvn_cluster_handle(struct kvn_cluster *c, const zmq_pollitem_t *items, int n, uint64_t now_ms);

/* Timers and transport progress; tree may be NULL (no L1 yet). */
void kvn_cluster_tick(struct kvn_cluster *c, struct kvn_radix *tree, uint64_t now_ms);

/* Milliseconds until the cluster needs a tick (0 = busy), at most max_ms. */
long kvn_cluster_timeout_ms(const struct kvn_cluster *c, uint64_t now_ms, long max_ms);

/* True for the ops kvn_cluster_rpc serves. */
bool kvn_cluster_owns_op(enum kvn_rpc_op op);

/*
 * Serves one cluster RPC: results are appended to pk, *n_keys counts the map entries added.
 * tick is the daemon's access tick (LRU order of what pin/fetch/push touch).
 * tree may be NULL (then only peer_hello works; others get -ENOTCONN).  On error nothing
 * was appended and nothing changed.
 */
int kvn_cluster_rpc(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                    uint64_t now_ms, uint64_t tick, msgpack_packer *pk, uint32_t *n_keys,
                    struct kvn_err *err);

/*
 * The best remote hit for tokens, beside a local hit of local_pages pages.
 * Errors: those of kvn_overlap_query.
 */
int kvn_cluster_match(struct kvn_cluster *c, const int32_t *tokens, uint32_t n_tokens,
                      uint32_t local_pages, struct kvn_overlap *out, struct kvn_err *err);

/* The control endpoint of peer id, NULL if none. */
const char *kvn_cluster_peer_endpoint(const struct kvn_cluster *c, uint32_t id);

void kvn_cluster_get_stats(const struct kvn_cluster *c, struct kvn_cluster_stats *st);

/* Writes the stats as "cluster_*" keys into pk (for the stats op); *n_keys += count. */
void kvn_cluster_pack_stats(const struct kvn_cluster *c, msgpack_packer *pk, uint32_t *n_keys);

#endif /* KVN_CLUSTER_H */
