/*
 * event_pub.h - KV-event publisher: one batch per event-loop tick on ZMQ PUB, replay from a
 * bounded history on ZMQ ROUTER.
 *
 *   cache/ sink ──kvn_events_add()──► current batch (event_codec.h, encoded at once)
 *                                          │ kvn_events_flush(ts), once per tick
 *                                          ▼
 *                      history ring (buffer_steps batches) ──► PUB: [topic][seq BE64][payload]
 *                                          ▲
 *   replay client ──► ROUTER: [id]["" ][start BE64] ──┘ reply per batch with seq >= start:
 *                              [id][""][topic]?[seq BE64][payload] ... then the end marker
 *                              [id][""][topic]?[ff ff ff ff ff ff ff ff][""]
 *
 * Wire format: DESIGN.md "Wire formats".  Sequence numbers start at 0 and grow by 1 per
 * published batch; a batch that could not be sent (high-water mark) still takes its number
 * and still enters the history, so a subscriber sees a gap and repairs it by replay.
 *
 * Never blocking: the PUB side is an XPUB socket with ZMQ_XPUB_NODROP and ZMQ_DONTWAIT, so a
 * full subscriber queue (sndhwm) makes the send fail at once; the batch is counted in
 * `dropped` (a plain PUB would drop silently and uncounted).  The price of counting: ZMQ
 * refuses such a batch for every subscriber, not only the full one, so a stuck subscriber
 * makes the others repair by replay until it is gone.  `lossy = true` selects plain PUB
 * behaviour instead (only the full subscriber loses the batch; drops cannot be counted,
 * `dropped` stays 0); subscribers detect their gaps by sequence either way.  Replay replies use
 * ZMQ_ROUTER_MANDATORY and ZMQ_DONTWAIT with a per-client sndhwm of buffer_steps + 16, so a
 * full history fits; a client whose queue is full anyway, or that vanished, gets a truncated
 * reply without end marker (counted in `replay_truncated`: it times out and asks again).
 *
 * Malformed replay requests (frame count other than [identity, "", 8 bytes], a non-empty
 * delimiter, a start sequence not 8 bytes long) are dropped without reply and counted in
 * `replay_refused`.  A start older than the history replies from the oldest batch held (the
 * client sees the gap); a start beyond the newest replies with the end marker alone.
 *
 * History memory: buffer_steps slots, each keeping its own buffer (grown, reused), so after
 * warm-up a flush allocates nothing.
 *
 * Thread rules: a publisher belongs to the thread that runs the event loop; the ZMQ context
 * (passed in, owned by the caller) may be shared.  Nothing here blocks.
 */
#ifndef KVN_EVENT_PUB_H
#define KVN_EVENT_PUB_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/kv_event.h"
#include "node/events/event_codec.h"
#include "util/kvn_err.h"

#define KVN_EVENTS_DEFAULT_BUFFER_STEPS 10000u
#define KVN_EVENTS_MAX_BUFFER_STEPS     (1u << 22)
#define KVN_EVENTS_DEFAULT_SNDHWM       10000
#define KVN_EVENTS_END_SEQ              UINT64_MAX

struct kvn_events_pub;

struct kvn_events_pub_config {
    const char *endpoint;        /* PUB bind endpoint, required; "tcp://127.0.0.1:*" picks a port */
    const char *replay_endpoint; /* ROUTER bind endpoint; NULL = no replay service */
    const char *topic;           /* first frame of every message; NULL = "" */
    enum kvn_events_format format;
    uint32_t buffer_steps; /* history length in batches; 0 = 10000 */
    bool replay_topic;     /* replies carry the topic frame before seq (vLLM >= 0.26) */
    int64_t dp_rank;       /* third element of every batch */
    int sndhwm;            /* PUB high-water mark (messages per subscriber); 0 = 10000 */
    int linger_ms;         /* ZMQ_LINGER on close; 0 = drop at once, <0 = default (1000) */
    bool lossy;            /* plain PUB drop semantics, uncounted (see above); default off */
};

struct kvn_events_pub_stats {
    uint64_t next_seq;         /* sequence of the next batch */
    uint64_t batches;          /* batches published (sent or dropped) */
    uint64_t events;           /* events in those batches */
    uint64_t bytes;            /* payload bytes of those batches */
    uint64_t dropped;          /* batches the PUB socket refused (high-water mark) */
    uint64_t add_errors;       /* events the sink could not encode (kvn_events_sink only) */
    uint64_t replay_served;    /* replay requests answered completely */
    uint64_t replay_refused;   /* malformed replay requests dropped */
    uint64_t replay_truncated; /* replies cut short (client queue full or gone) */
    uint64_t replay_batches;   /* batches sent in replay replies */
    uint32_t history;          /* batches currently held */
};

/*
 * Creates the sockets on zctx and binds them.  cfg strings are copied.
 * Errors: -EINVAL (NULL zctx/cfg/out/endpoint, bad format, buffer_steps too large, negative
 * sndhwm), -EADDRINUSE / other -errno from zmq_bind (message names the endpoint), -ENOMEM.
 * Nothing is left open on error.
 */
int kvn_events_pub_create(void *zctx, const struct kvn_events_pub_config *cfg,
                          struct kvn_events_pub **out, struct kvn_err *err);

/* Closes the sockets (with the configured linger) and frees everything.  NULL is ignored.
 * Events added but not flushed are discarded: flush first. */
void kvn_events_pub_destroy(struct kvn_events_pub *pub);

/*
 * Encodes ev into the current batch (ev's arrays may die after the call).
 * Errors: as kvn_events_batch_add (-EINVAL for a bad event: nothing added), -EINVAL for NULL.
 */
int kvn_events_add(struct kvn_events_pub *pub, const struct kvn_kv_event *ev, struct kvn_err *err);

/*
 * Ends the tick: when the current batch has events, finishes it with timestamp ts (seconds,
 * float64), stores it in the history, sends it, and starts a new batch.  Returns 1 when a
 * batch took a sequence number (sent, or dropped and counted), 0 when there was nothing to
 * publish.  Errors: -EINVAL (NULL pub), -ENOMEM (history slot could not grow: the batch
 * stays pending and flush may be retried), or a -errno from ZMQ other than EAGAIN (the
 * batch is in the history and counted as dropped).
 */
int kvn_events_flush(struct kvn_events_pub *pub, double ts, struct kvn_err *err);

/* The ROUTER socket to put in the daemon's zmq_poll (ZMQ_POLLIN), or NULL without replay. */
void *kvn_events_replay_socket(const struct kvn_events_pub *pub);

/*
 * Serves every replay request waiting on the ROUTER (never blocks; at most 256 per call so a
 * flood cannot starve the loop: call again while the socket stays readable).  Returns the
 * number of requests read (served + refused).  Errors: -EINVAL (NULL pub), -ENOTSUP (no replay
 * endpoint configured).
 */
int kvn_events_handle_replay(struct kvn_events_pub *pub, struct kvn_err *err);

/*
 * Live subscriptions on the PUB side (subscribe notices minus unsubscribe ones, a
 * disconnect counting as unsubscribe), after reading every pending notice.  For stats, and
 * for tests that must not publish before a subscriber is attached.  0 for NULL.
 */
int kvn_events_pub_subscriptions(struct kvn_events_pub *pub);

/* Counters and state; zeroes for NULL pub. */
void kvn_events_pub_get_stats(const struct kvn_events_pub *pub, struct kvn_events_pub_stats *st);

/* Bound endpoints as ZMQ reports them (ZMQ_LAST_ENDPOINT: the real port after ":*"); the
 * replay one is NULL without replay.  Valid until destroy. */
const char *kvn_events_pub_endpoint(const struct kvn_events_pub *pub);
const char *kvn_events_replay_endpoint(const struct kvn_events_pub *pub);

/*
 * A cache/ event sink that adds every event to pub (kv_event.h).  Encoding errors cannot be
 * returned through a sink: they are counted in add_errors.  pub must outlive the sink.
 */
struct kvn_kv_event_sink kvn_events_sink(struct kvn_events_pub *pub);

#endif /* KVN_EVENT_PUB_H */
