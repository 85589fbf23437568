/*
 * evout.h - the node's KV-event output: one batch per event-loop tick on a
 * ZMQ PUB socket, and a replay ROUTER serving a bounded history.
 *
 *   tree sink ──add()──► current batch (node/events/event_codec.h)
 *                            │ flush() at the end of a tick that produced events
 *                            ▼
 *            PUB  [topic, seq (8 bytes BE), payload]       seq 0, 1, 2, ...
 *            history ring (buffer_steps batches, buffers reused)
 *                            ▲
 *   replay ROUTER  [id, "", start_seq] ──► [id, "", (topic,) seq, payload]...
 *                                          [id, "", (topic,) 0xff..ff, ""]
 *
 * Wire format exactly as DESIGN.md "Wire formats". Publishing never blocks
 * the loop (ZMQ_DONTWAIT): a send that fails is counted as dropped. A replay
 * request with the wrong frame count or a start_seq that is not 8 bytes is
 * dropped and counted (replay_bad).
 *
 * This is the node's adapter over the events room's publisher
 * (node/events/event_pub.h): the loop calls add() per event (the tree's sink)
 * and flush() once per tick, and reads the counters for stats.
 *
 * Thread rules: one thread (the event loop) owns an evout.
 */
#ifndef KVN_EVOUT_H
#define KVN_EVOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/kv_event.h"
#include "util/kvn_err.h"

struct kvn_evout;

struct kvn_evout_cfg {
    void *zctx;                  /* ZeroMQ context (the caller's) */
    const char *pub_endpoint;    /* "" or NULL: no PUB (events are counted only) */
    const char *replay_endpoint; /* "" or NULL: no replay */
    const char *topic;
    bool replay_topic;     /* add the topic frame to replay replies */
    bool map_format;       /* vLLM map form instead of SGLang arrays */
    uint32_t buffer_steps; /* history length in batches (>= 1) */
    int dp_rank;
};

struct kvn_evout_stats {
    uint64_t events_published, batches_published;
    uint64_t events_dropped, batches_dropped, encode_errors;
    uint64_t replay_requests, replay_bad, replay_batches_sent;
    uint64_t next_seq;
};

/* Errors: -EINVAL (bad cfg), -EADDRINUSE / -EINVAL (bind), -ENOMEM. */
int kvn_evout_open(const struct kvn_evout_cfg *cfg, struct kvn_evout **out, struct kvn_err *err);

/* Closes the sockets (lingering up to 1 s for queued batches). NULL ok. */
void kvn_evout_close(struct kvn_evout *ev);

/* Appends one event to the current batch (encoded now). NULL ev/evout ignored. */
void kvn_evout_add(struct kvn_evout *ev, const struct kvn_kv_event *e);

/* Publishes the current batch if it holds events; returns events published. */
int kvn_evout_flush(struct kvn_evout *ev);

/* The replay ROUTER socket for zmq_poll, or NULL. */
void *kvn_evout_replay_socket(struct kvn_evout *ev);

/* Serves pending replay requests (bounded per call). */
void kvn_evout_serve_replay(struct kvn_evout *ev);

/* Sets the linger used at close (ms). */
void kvn_evout_drain(struct kvn_evout *ev, int linger_ms);

void kvn_evout_get_stats(const struct kvn_evout *ev, struct kvn_evout_stats *out);

#endif /* KVN_EVOUT_H */
