/*
 * kvn_rpc.h - the control RPC of kvnode: schema (version 1) and codec.
 *
 * Engines, kvctl and tests talk to a node over ZeroMQ, DEALER -> ROUTER, one
 * msgpack map per message. This header is THE definition of the schema; the
 * daemon (node/daemon.c) and the client library (node/kvnode_client.h) both
 * go through the codec below, so they cannot drift apart.
 *
 *   client (DEALER)                                   kvnode (ROUTER)
 *     [body]            or  ["", body]   ------->   [identity, (""), body]
 *     [reply]           or  ["", reply]  <-------   [identity, (""), reply]
 *
 * The empty delimiter frame is optional; the reply mirrors what came in.
 * Any other frame layout is counted in stats as rpc_dropped and answered, on
 * the sender's identity, with an -EPROTO error reply naming the frame count.
 *
 * Request: a msgpack map with string keys
 *
 *     {"v": 1, "op": "insert", "id": 7, "tokens": [1,2,3,4], "slots": [0,1]}
 *
 *   "v"   uint, must be KVN_RPC_VERSION (1)            (required)
 *   "op"  str, one of the operations below              (required)
 *   "id"  uint (< 2^63), echoed in the reply            (optional, default 0)
 *   plus the operation's arguments. Strict: a key that the operation does not
 *   take, a wrong type, a value out of range, a duplicate key or trailing
 *   bytes after the map is an error reply (-EINVAL), never a guess.
 *
 * Reply: a msgpack map
 *
 *     {"v": 1, "id": 7, "ok": true, ...results}
 *     {"v": 1, "id": 7, "ok": false, "code": -22, "error": "slots[1] = 9 ..."}
 *
 * "code" is a negative errno (-EINVAL bad request, -EPROTO bad msgpack or
 * schema version, -EMSGSIZE frame larger than KVN_RPC_MAX_FRAME, -ENOENT
 * unknown lock handle, -ENOSPC pool exhausted, -ENOTCONN no L1 registered,
 * -EBUSY operations outstanding, -ENOTSUP unknown op). When the request was
 * too broken to read its id, the reply carries "id": 0.
 *
 * Operations (arguments -> results; tokens are int32, slots uint32; a token
 * list must hold a whole number of pages, >= 1 page unless noted):
 *
 *   hello        -                       -> rpc, version, page_size,
 *                                           page_bytes, l2_pages, l1_slots,
 *                                           transport, write_policy, addr (bin:
 *                                           the node's transport address, for
 *                                           an engine that connects back)
 *   register_l1  desc: bin, addr: bin,   -> l1_slots
 *                page_bytes: uint, n_slots: uint
 *                (desc = the engine's packed remote descriptor of its L1
 *                region, addr = its transport endpoint blob; the node
 *                connects its transport to addr; refused with -EBUSY while
 *                copies are outstanding. A new L1 starts a new index: the
 *                previous one is cleared (AllBlocksCleared) and its locks
 *                dropped. On error the previous L1 and index stay.)
 *   insert       tokens, slots           -> pages, prefix_tokens, revived_tokens,
 *                                           new_tokens, inserted_tokens, last_node,
 *                                           backup_ack_id, backup_pages
 *                (slots: one L1 slot per page, the engine's; slots of pages
 *                already in L1 are not adopted (prefix_tokens says how many).
 *                Without "slots" the node picks free slots itself, evicting
 *                L1 as needed: "auto mode", for tools and tests)
 *   match        tokens (any length: a     -> matched_tokens, device_tokens,
 *                partial last page is      host_tokens, backed_tokens, l1_pages,
 *                ignored; may be empty)    l2_pages, last_device_node,
 *                                          last_host_node, slots[] (L1 slots of
 *                                          the device prefix)
 *   lock         tokens, lease_ms: uint  -> handle, locked_tokens, lease_ms
 *                (lease_ms optional, default 30000, max 3600000: the lock is
 *                released by the node when the lease expires)
 *   unlock       handle: uint            -> -
 *   backup       tokens                  -> ack_id, pages (0/0: nothing to do)
 *   load_back    tokens, slots           -> ack_id, pages, prefix_tokens
 *                (slots: one per L2 page to load back, in prefix order; at
 *                most that many pages are loaded; without "slots": auto mode)
 *   evict        tier: "l1"|"l2", pages: uint -> evicted, demoted, deleted,
 *                                           scheduled, ack_id
 *   stats        -                       -> a flat map of counters (see
 *                                           kvnode --help and node/daemon.c)
 *   reset        -                       -> -
 *   l1_fill      slots, seed: uint       -> filled (test aid, --l1 only:
 *                fills each stand-in L1 slot with a pattern from seed)
 *   l1_checksum  slots                   -> sums[]  (test aid, --l1 only:
 *                FNV-1a 64 of each slot's bytes)
 *
 * Cluster operations (issue 5; served by node/cluster/cluster.c, which
 * documents their results; -ENOTSUP when the node runs no cluster):
 *
 *   peer_hello   hello: bin (<= 16 KiB)  node to node heartbeat and identity
 *   pin          tokens, lease_ms        protect a prefix's L2 pages for a reader
 *   unpin        handle
 *   reserve      tokens, lease_ms        host pages for a push into this node
 *   push_done    handle, slots (opt.)    every (or these) pages landed: insert
 *   abort        handle
 *   fetch        tokens, lease_ms (opt.) read a prefix from the best peer into L2
 *   push         to: str, tokens,        write pages (L1 slots, or L2 when no
 *                slots (opt.), lease_ms  slots) into node "to"
 *   match        (above) also reports remote_found, remote_peer, remote_pages,
 *                fetchable when the node runs a cluster
 *
 * Thread rules: the codec functions are reentrant; a struct kvn_rpc_req is
 * owned by one thread at a time.
 */
#ifndef KVN_RPC_H
#define KVN_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/kvn_err.h"

#define KVN_RPC_VERSION 1
/* Largest request body accepted (bytes); larger ones get -EMSGSIZE. */
#define KVN_RPC_MAX_FRAME (1u << 20)
/* Largest token or slot list in one request. */
#define KVN_RPC_MAX_TOKENS (1u << 18)
#define KVN_RPC_MAX_SLOTS  (1u << 18)
/* Largest register_l1 descriptor or address blob. */
#define KVN_RPC_MAX_BLOB 4096u
/* Largest peer_hello blob (address + pool descriptor + endpoints). */
#define KVN_RPC_MAX_HELLO        16384u
#define KVN_RPC_LEASE_DEFAULT_MS 30000u
#define KVN_RPC_LEASE_MAX_MS     3600000u

enum kvn_rpc_op {
    KVN_RPC_HELLO = 0,
    KVN_RPC_REGISTER_L1,
    KVN_RPC_INSERT,
    KVN_RPC_MATCH,
    KVN_RPC_LOCK,
    KVN_RPC_UNLOCK,
    KVN_RPC_BACKUP,
    KVN_RPC_LOAD_BACK,
    KVN_RPC_EVICT,
    KVN_RPC_STATS,
    KVN_RPC_RESET,
    KVN_RPC_L1_FILL,
    KVN_RPC_L1_CHECKSUM,
    /* cluster ops (issue 5), served by node/cluster when the node runs a cluster */
    KVN_RPC_PEER_HELLO,
    KVN_RPC_PIN,
    KVN_RPC_UNPIN,
    KVN_RPC_RESERVE,
    KVN_RPC_PUSH_DONE,
    KVN_RPC_ABORT,
    KVN_RPC_FETCH,
    KVN_RPC_PUSH,
    KVN_RPC_OP_COUNT
};

enum kvn_rpc_tier { KVN_RPC_TIER_L1 = 1, KVN_RPC_TIER_L2 = 2 };

/*
 * A parsed request. Arrays point into buffers the struct owns (allocated
 * once by kvn_rpc_req_init, reused for every request: no allocation per
 * request); blobs point into the caller's message buffer and are valid only
 * while it is.
 */
struct kvn_rpc_req {
    uint32_t v;
    uint64_t id;
    enum kvn_rpc_op op;
    int32_t *tokens;
    uint32_t n_tokens;
    bool has_tokens;
    uint32_t *slots;
    uint32_t n_slots;
    bool has_slots;
    const uint8_t *desc;
    uint32_t desc_len;
    const uint8_t *addr;
    uint32_t addr_len;
    uint64_t page_bytes; /* register_l1 */
    uint64_t l1_slots;   /* register_l1: n_slots */
    uint64_t handle;     /* unlock */
    uint64_t lease_ms;   /* lock */
    uint64_t pages;      /* evict */
    uint64_t seed;       /* l1_fill */
    enum kvn_rpc_tier tier;
    const uint8_t *hello; /* peer_hello: the peer's hello blob (node/cluster/cluster_wire.h) */
    uint32_t hello_len;
    char to[256]; /* push: the destination node's control endpoint */
    /* owned buffers */
    uint32_t cap_tokens;
    uint32_t cap_slots;
};

/* "insert" for KVN_RPC_INSERT, NULL when op is out of range. */
const char *kvn_rpc_op_name(enum kvn_rpc_op op);

/* Looks up an op by name (len bytes, not NUL-terminated). -ENOTSUP if none. */
int kvn_rpc_op_from_name(const char *name, size_t len, enum kvn_rpc_op *out);

/*
 * Allocates req's token and slot buffers (KVN_RPC_MAX_TOKENS / _SLOTS).
 * Errors: -EINVAL (req NULL), -ENOMEM. On failure req holds nothing to free.
 */
int kvn_rpc_req_init(struct kvn_rpc_req *req, struct kvn_err *err);

/* Frees what kvn_rpc_req_init allocated; NULL and a zeroed struct are fine. */
void kvn_rpc_req_fini(struct kvn_rpc_req *req);

/*
 * Parses and validates one request body. On success req holds the request;
 * on failure req->id holds the request id when it could be read (else 0), the
 * return value is the code for the error reply and err says what was wrong.
 * Validation here is schema-only (types, presence, ranges that do not depend
 * on node state); the daemon checks page alignment and slot ranges.
 * Errors: -EINVAL (args or schema), -EPROTO (not msgpack, not a map, trailing
 * bytes, wrong version), -EMSGSIZE (len > KVN_RPC_MAX_FRAME), -ENOTSUP.
 */
int kvn_rpc_parse(const void *buf, size_t len, struct kvn_rpc_req *req, struct kvn_err *err);

/* FNV-1a 64 over len bytes: the l1_checksum function. */
uint64_t kvn_rpc_fnv1a(const void *buf, size_t len);

/*
 * The l1_fill pattern: byte i of slot s under seed is a function of (seed, s,
 * i) defined here, so that a test can compute the expected checksum without
 * reading the region back.
 */
void kvn_rpc_fill_pattern(void *buf, size_t len, uint64_t seed, uint32_t slot);

#endif /* KVN_RPC_H */
