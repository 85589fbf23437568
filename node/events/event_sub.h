/*
 * event_sub.h - follows one peer's KV-event stream into the global index (replication in).
 *
 *   peer's PUB ──SUB──► [topic][seq][payload] ─┐
 *                                              ├─► in order by seq ─► strict decode ─► gindex
 *   peer's ROUTER ◄─DEALER─ ["", start]        │   (event_codec.h)     apply(peer, ev)
 *                 ──► ["", topic?, seq, payload] ... ["", topic?, END, ""]
 *
 * Sequencing.  The subscriber keeps next_seq, the next batch it must apply:
 *   - on join it asks the peer's ROUTER for everything from 0 (the peer's history may begin
 *     later: what is no longer held is counted in `lost`);
 *   - a batch with seq == next_seq is applied; seq < next_seq is a duplicate (replay and live
 *     overlap) and ignored;
 *   - a live batch with seq > next_seq is a gap: it is held in a bounded pending queue and a
 *     replay from next_seq is requested; held batches are applied as soon as their turn
 *     comes;
 *   - when a replay ends (end marker) and the next held batch is still ahead, the missing
 *     batches are asked for once more; if a replay brought nothing new, they are no longer in
 *     the peer's history: counted in `lost` and skipped.
 * Without a replay endpoint, the first live batch fixes next_seq and gaps are only counted.
 *
 * Malformed input never reaches the index: a message with wrong frames is counted in
 * `bad_frames`; a payload the strict decoder refuses is counted in `malformed` and skipped
 * as a whole (its sequence number is consumed, so one bad batch cannot wedge the stream).
 * A BlockStored the index refuses (capacity) is counted in `apply_errors`; the rest of its
 * batch still applies.  AllBlocksCleared from the peer empties its entries.
 *
 * Poll-friendly: put kvn_events_sub_socket() and kvn_events_sub_replay_socket() in the
 * daemon's zmq_poll with ZMQ_POLLIN and call kvn_events_sub_handle() when either is readable;
 * it never blocks.  The daemon owns time: when a replay has been outstanding too long
 * (stats.replaying stays true across its timer), it calls kvn_events_sub_retry_replay().
 * When the peer restarted (heartbeat says so, its sequence starts over at 0), the daemon calls
 * kvn_events_sub_rejoin(): the peer's entries are dropped and relearned from its history.
 *
 * Thread rules: a subscriber belongs to the event-loop thread that owns the global index.
 */
#ifndef KVN_EVENT_SUB_H
#define KVN_EVENT_SUB_H

#include <stdbool.h>
#include <stdint.h>

#include "node/events/global_index.h"
#include "util/kvn_err.h"

#define KVN_EVENTS_SUB_DEFAULT_PENDING 1024u
#define KVN_EVENTS_SUB_MAX_PENDING     (1u << 20)

struct kvn_events_sub;

struct kvn_events_sub_config {
    const char *endpoint;        /* peer's PUB endpoint (connect), required */
    const char *replay_endpoint; /* peer's ROUTER endpoint (connect); NULL = no repair */
    const char *topic;           /* subscription prefix; NULL = "" (everything) */
    uint32_t peer;               /* this peer's id in the global index */
    uint32_t max_pending;        /* live batches held during a gap; 0 = 1024 */
    /* Optional: called after each batch was applied, with its sequence, its ts (the
     * publisher's clock, seconds) and its event count; for replication-lag metrics.  Must
     * not call back into the subscriber. */
    void (*on_batch)(void *ctx, uint64_t seq, double ts, uint32_t n_events);
    void *on_batch_ctx;
};

struct kvn_events_sub_stats {
    uint64_t next_seq;          /* next batch to apply */
    bool replaying;             /* a replay request is outstanding */
    uint64_t batches_applied;   /* batches decoded and applied (live or replayed) */
    uint64_t events_applied;    /* events applied to the index */
    uint64_t live_batches;      /* well-formed live messages received */
    uint64_t replay_batches;    /* well-formed replay messages received (end markers excluded) */
    uint64_t duplicates;        /* batches ignored as already applied */
    uint64_t gaps;              /* gaps detected (each triggers a replay when possible) */
    uint64_t replays_requested; /* replay requests sent, join included */
    uint64_t lost;              /* batches skipped because nobody could supply them */
    uint64_t pending_dropped;   /* live batches not held because the pending queue was full */
    uint64_t malformed;         /* payloads the strict decoder refused */
    uint64_t bad_frames;        /* messages with a wrong frame layout */
    uint64_t apply_errors;      /* events the index refused */
    double last_ts;             /* ts of the last applied batch (publisher's clock), 0 before */
};

/*
 * Connects to the peer (and asks for its history when replay_endpoint is set) and activates
 * cfg->peer in g.  cfg strings are copied; g must outlive the subscriber.
 * Errors: -EINVAL (NULL zctx/g/cfg/out/endpoint, empty replay endpoint, peer out of g's
 * range, max_pending too large), -errno from zmq_connect (message names the endpoint),
 * -ENOMEM.  Nothing stays open on error.
 */
int kvn_events_sub_create(void *zctx, struct kvn_gindex *g, const struct kvn_events_sub_config *cfg,
                          struct kvn_events_sub **out, struct kvn_err *err);

/* Closes the sockets and frees the subscriber; the peer's entries stay in the index
 * (kvn_gindex_drop_peer them when the peer is gone for good).  NULL is ignored. */
void kvn_events_sub_destroy(struct kvn_events_sub *sub);

/* The SUB socket, and the DEALER socket (NULL without replay), for zmq_poll.  Both change
 * after kvn_events_sub_rejoin(): rebuild the poll set then. */
void *kvn_events_sub_socket(const struct kvn_events_sub *sub);
void *kvn_events_sub_replay_socket(const struct kvn_events_sub *sub);

/*
 * Processes what is waiting on both sockets without blocking (at most 1024 messages per
 * socket per call; call again while readable).  Returns the number of messages consumed.
 * Malformed messages are counted, not errors.  Errors: -EINVAL (NULL sub), -ENOMEM (a gap
 * batch could not be held: counted in pending_dropped as well), or a -errno from ZMQ when
 * a replay request cannot be sent (the daemon retries later with retry_replay).
 */
int kvn_events_sub_handle(struct kvn_events_sub *sub, struct kvn_err *err);

/*
 * Asks the peer again for everything from next_seq (a replay that seems lost).  Replies of an
 * earlier request that still arrive are harmless (duplicates).  Errors: -EINVAL (NULL sub),
 * -ENOTSUP (no replay endpoint), ZMQ -errno.
 */
int kvn_events_sub_retry_replay(struct kvn_events_sub *sub, struct kvn_err *err);

/*
 * Starts over with a peer that restarted: drops its entries from the index, reconnects both
 * sockets (discarding anything queued from the old incarnation), and replays from 0.
 * Errors: -EINVAL (NULL sub), -errno from ZMQ (the subscriber is then without sockets until
 * a later rejoin succeeds; handle() returns 0).
 */
int kvn_events_sub_rejoin(struct kvn_events_sub *sub, struct kvn_err *err);

/* Why the most recent refused message (bad_frames, malformed, apply error) was refused, for
 * logs and `stats` ("" when nothing was refused; "" for NULL).  Valid until the next call
 * on sub. */
const char *kvn_events_sub_last_error(const struct kvn_events_sub *sub);

/* Counters and state; zeroes for NULL sub. */
void kvn_events_sub_get_stats(const struct kvn_events_sub *sub, struct kvn_events_sub_stats *st);

#endif /* KVN_EVENT_SUB_H */
