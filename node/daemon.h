/*
 * daemon.h - one kvnode: the event loop that owns the cache.
 *
 *            zmq_poll (one thread)
 *   ┌──────────┬───────────┬──────────────┬───────────┬─────────┐
 *   │ control  │ transport │ signalfd     │ timers    │ events  │
 *   │ ROUTER   │ CQ wait fd│ TERM / INT   │ held acks,│ PUB +   │
 *   │ (RPC)    │ busy-poll │ → drain+exit │ leases    │ replay  │
 *   └────┬─────┴─────┬─────┴──────────────┴───────────┴────▲────┘
 *        ▼           ▼                                     │ one batch per tick
 *   kvn_radix_* ── copy jobs ──► xfer (RDMA READ/WRITE) ── acks ──► kvn_radix_ack
 *        └────────────── events (sink) ─────────────────────┘
 *
 * A tick: wait (no wait while transfers are outstanding), handle signals,
 * serve up to a bounded number of requests, progress the copy engine (which
 * acks finished jobs into the tree), expire leases, publish the events the
 * tick produced as one batch. Nothing here blocks on a peer.
 *
 * Thread rules: kvn_node_run is the only thread touching a node; create and
 * destroy from the same thread.
 */
#ifndef KVN_DAEMON_H
#define KVN_DAEMON_H

#include "node/kvn_config.h"
#include "util/kvn_err.h"

struct kvn_node;

/*
 * Builds a node from cfg: host pool, transport domain (+ L1 stand-in with
 * --l1), radix tree, storage, sockets, signalfd (SIGTERM/SIGINT are blocked
 * in the calling thread and read through it). Errors: -EINVAL, -ENOMEM,
 * -EADDRINUSE (listen), transport errors.
 */
int kvn_node_create(const struct kvn_config *cfg, struct kvn_node **out, struct kvn_err *err);

/*
 * Runs the loop until SIGTERM/SIGINT: then stops accepting requests, drains
 * outstanding completions (bounded), flushes events and returns 0.
 */
int kvn_node_run(struct kvn_node *n, struct kvn_err *err);

void kvn_node_destroy(struct kvn_node *n);

#endif /* KVN_DAEMON_H */
