/*
 * evout.c - KV events out (see evout.h): a thin adapter over the events
 * room's publisher (node/events/event_pub.h), which owns the wire format, the
 * sequence numbers, the XPUB socket and the replay history. This file keeps
 * the loop's view small (add per event, flush per tick) and turns the
 * publisher's counters into the node's stats.
 */
#include "node/evout.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "node/events/event_pub.h"

/* Subscribers may lag by this many batches before a send fails (and is counted). */
#define EVOUT_SNDHWM 1000000

struct kvn_evout {
    struct kvn_events_pub *pub;
    uint64_t events_dropped, add_errors;
};

int kvn_evout_open(const struct kvn_evout_cfg *cfg, struct kvn_evout **out, struct kvn_err *err)
{
    if (!cfg || !out || !cfg->zctx || cfg->buffer_steps == 0)
        return kvn_err_set(err, -EINVAL, "bad events configuration");
    bool has_pub = cfg->pub_endpoint && cfg->pub_endpoint[0];
    bool has_replay = cfg->replay_endpoint && cfg->replay_endpoint[0];
    if (has_replay && !has_pub)
        return kvn_err_set(err, -EINVAL, "replay needs a PUB endpoint");
    struct kvn_evout *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return kvn_err_set(err, -ENOMEM, "no memory for the event output");
    if (has_pub) {
        struct kvn_events_pub_config pc = {
            .endpoint = cfg->pub_endpoint,
            .replay_endpoint = has_replay ? cfg->replay_endpoint : NULL,
            .topic = cfg->topic,
            .format = cfg->map_format ? KVN_EVENTS_FORMAT_MAP : KVN_EVENTS_FORMAT_ARRAY,
            .buffer_steps = cfg->buffer_steps,
            .replay_topic = cfg->replay_topic,
            .dp_rank = cfg->dp_rank,
            .sndhwm = EVOUT_SNDHWM,
            .linger_ms = 1000,
        };
        int rc = kvn_events_pub_create(cfg->zctx, &pc, &ev->pub, err);
        if (rc < 0) {
            free(ev);
            return rc;
        }
    }
    *out = ev;
    return 0;
}

void kvn_evout_close(struct kvn_evout *ev)
{
    if (!ev)
        return;
    kvn_events_pub_destroy(ev->pub);
    free(ev);
}

void kvn_evout_drain(struct kvn_evout *ev, int linger_ms)
{
    (void)ev;
    (void)linger_ms; /* the publisher lingers 1 s on destroy (configured at open) */
}

void kvn_evout_add(struct kvn_evout *ev, const struct kvn_kv_event *e)
{
    if (!ev || !e || !ev->pub)
        return;
    if (kvn_events_add(ev->pub, e, NULL) < 0)
        ev->add_errors++; /* a bad event is refused whole; counted, never fatal */
}

int kvn_evout_flush(struct kvn_evout *ev)
{
    if (!ev || !ev->pub)
        return 0;
    struct kvn_events_pub_stats before, after;
    kvn_events_pub_get_stats(ev->pub, &before);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int rc = kvn_events_flush(ev->pub, (double)ts.tv_sec + ts.tv_nsec / 1e9, NULL);
    if (rc <= 0)
        return 0;
    kvn_events_pub_get_stats(ev->pub, &after);
    uint64_t n = after.events - before.events;
    if (after.dropped > before.dropped)
        ev->events_dropped += n;
    return (int)n;
}

void *kvn_evout_replay_socket(struct kvn_evout *ev)
{
    return ev && ev->pub ? kvn_events_replay_socket(ev->pub) : NULL;
}

void kvn_evout_serve_replay(struct kvn_evout *ev)
{
    if (ev && ev->pub && kvn_events_replay_socket(ev->pub))
        kvn_events_handle_replay(ev->pub, NULL);
}

void kvn_evout_get_stats(const struct kvn_evout *ev, struct kvn_evout_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!ev || !ev->pub)
        return;
    struct kvn_events_pub_stats st;
    kvn_events_pub_get_stats(ev->pub, &st);
    out->events_dropped = ev->events_dropped;
    out->events_published = st.events - ev->events_dropped;
    out->batches_published = st.batches - st.dropped;
    out->batches_dropped = st.dropped;
    out->encode_errors = st.add_errors + ev->add_errors;
    out->replay_requests = st.replay_served + st.replay_refused;
    out->replay_bad = st.replay_refused;
    out->replay_batches_sent = st.replay_batches;
    out->next_seq = st.next_seq;
}
