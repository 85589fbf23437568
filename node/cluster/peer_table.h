/*
 * peer_table.h - the cluster members a node knows, and their liveness, on the caller's clock.
 *
 *            add(endpoint)                  heard(node_id, incarnation)
 *   (none) ───────────────► KNOWN ─────────────────────────────────► UP ◄──┐ heard(same inc)
 *                             ▲                                      │  │  └─ (refresh)
 *                             │ heard(...)            no reply for   │  │ heard(new inc):
 *                             │ = JOINED again        timeout_ms     │  └─ RESTARTED (rejoin)
 *                           DOWN ◄────────────────────────────────────┘
 *                                       tick(now) reports DIED
 *
 * A peer is named by its control endpoint (what `kvnode --peer` says, or what a peer that
 * contacted us announced) and gets a small id (0 .. max_peers-1, stable for the table's life:
 * the global index and the event subscribers use it).  What it says about itself (node_id,
 * incarnation: a random value drawn at each start) comes from its peer_hello replies.
 *
 * The table reads no clock: every call that depends on time takes now_ms (monotonic).  It
 * says when each peer is due for a heartbeat (kvn_peers_due) and which UP peers stopped
 * answering (kvn_peers_tick); the daemon does the sending.
 *
 * Thread rules: one thread (the event loop) owns a table; no locks inside.
 */
#ifndef KVN_PEER_TABLE_H
#define KVN_PEER_TABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "util/kvn_err.h"

#define KVN_PEERS_ENDPOINT_MAX  256u /* bytes, NUL included */
#define KVN_PEERS_DEFAULT_MAX   64u
#define KVN_PEERS_LIMIT_MAX     4096u
#define KVN_PEERS_DEFAULT_HB_MS 200u
#define KVN_PEERS_DEFAULT_TO_MS 1500u

enum kvn_peer_state {
    KVN_PEER_KNOWN = 1, /* configured or announced, never heard from */
    KVN_PEER_UP = 2,    /* answered within timeout_ms */
    KVN_PEER_DOWN = 3,  /* was UP, then stopped answering */
};

/* What kvn_peers_heard found out. */
enum kvn_peer_change {
    KVN_PEER_REFRESHED = 0, /* UP and unchanged */
    KVN_PEER_JOINED = 1,    /* KNOWN or DOWN -> UP: subscribe, replay its history */
    KVN_PEER_RESTARTED = 2, /* UP with a new incarnation: drop its entries, replay from 0 */
};

struct kvn_peers_config {
    uint32_t max_peers;    /* ids 0..max_peers-1; 0 = 64, <= 4096 */
    uint64_t heartbeat_ms; /* interval between heartbeats to one peer; 0 = 200 */
    uint64_t timeout_ms;   /* UP -> DOWN after this long without a reply; 0 = 1500 */
    uint64_t self_node_id; /* our own node id: a hello carrying it is refused (-ELOOP) */
};

struct kvn_peer_info {
    char endpoint[KVN_PEERS_ENDPOINT_MAX];
    enum kvn_peer_state state;
    uint64_t node_id, incarnation; /* valid once heard */
    uint64_t last_heard_ms;
    uint64_t next_ping_ms;
    uint64_t joins, restarts, deaths; /* transitions so far */
};

struct kvn_peers;

/* Errors: -EINVAL (NULL out, max_peers > 4096, timeout_ms < heartbeat_ms), -ENOMEM. */
int kvn_peers_create(const struct kvn_peers_config *cfg, struct kvn_peers **out,
                     struct kvn_err *err);
void kvn_peers_destroy(struct kvn_peers *t); /* NULL ignored */

/*
 * Adds a peer by control endpoint (state KNOWN, due for a heartbeat at once) and returns its
 * id; an endpoint already present returns its existing id with -EEXIST.  Errors: -EINVAL
 * (NULL, empty or too long endpoint), -EEXIST, -ENOSPC (table full).  Nothing changes on
 * error (except *id for -EEXIST).
 */
int kvn_peers_add(struct kvn_peers *t, const char *endpoint, uint32_t *id, struct kvn_err *err);

/* Looks an endpoint up.  Errors: -EINVAL, -ENOENT. */
int kvn_peers_find(const struct kvn_peers *t, const char *endpoint, uint32_t *id,
                   struct kvn_err *err);

/*
 * Records a heartbeat reply (or a hello received from that peer) at now_ms.  node_id 0 is
 * invalid; node_id == self_node_id is refused with -ELOOP (a node listed as its own peer).
 * Another id of the table already UP under the same node_id is refused with -EADDRINUSE
 * (two endpoints for one node).  Errors: -EINVAL (NULL t, unknown id, node_id 0), -ELOOP,
 * -EADDRINUSE.  Nothing changes on error.
 */
int kvn_peers_heard(struct kvn_peers *t, uint32_t id, uint64_t node_id, uint64_t incarnation,
                    uint64_t now_ms, enum kvn_peer_change *change, struct kvn_err *err);

/*
 * Moves every UP peer not heard from for timeout_ms to DOWN, writing their ids to
 * died[0..cap) (cap may be 0 with died NULL: then they are still moved and counted).
 * Returns how many died (may exceed cap), or -EINVAL.
 */
int kvn_peers_tick(struct kvn_peers *t, uint64_t now_ms, uint32_t *died, uint32_t cap);

/*
 * Writes the ids of peers due for a heartbeat at now_ms into due[0..cap) and schedules
 * their next one heartbeat_ms later.  Returns the count written, or -EINVAL.
 */
int kvn_peers_due(struct kvn_peers *t, uint64_t now_ms, uint32_t *due, uint32_t cap);

/* Earliest time something is due (heartbeat or timeout), UINT64_MAX when no peer. */
uint64_t kvn_peers_next_deadline(const struct kvn_peers *t);

/* Copies peer id's record.  Errors: -EINVAL (NULL, unknown id). */
int kvn_peers_get(const struct kvn_peers *t, uint32_t id, struct kvn_peer_info *out,
                  struct kvn_err *err);

/* Peers in the table, and how many are UP. */
uint32_t kvn_peers_count(const struct kvn_peers *t);
uint32_t kvn_peers_up(const struct kvn_peers *t);

const char *kvn_peer_state_name(enum kvn_peer_state s);

#endif /* KVN_PEER_TABLE_H */
