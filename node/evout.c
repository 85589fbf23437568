/* evout.c - KV events out: PUB batches and replay history (see evout.h). */
#include "node/evout.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "node/events/event_codec.h"

#define REPLAY_PER_CALL 16

struct hist {
    uint64_t seq;
    uint8_t *buf;
    size_t len, cap;
};

struct kvn_evout {
    void *pub, *replay;
    char topic[256];
    size_t topic_len;
    bool replay_topic;
    int dp_rank;
    struct kvn_events_batch batch;
    uint64_t seq;
    struct hist *hist;
    uint32_t hist_cap, hist_len, hist_head; /* ring, oldest at head */
    struct kvn_evout_stats st;
};

static void put_be64(uint8_t *b, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
}

static int open_sock(void *zctx, int type, const char *ep, int hwm, void **out,
                     struct kvn_err *err)
{
    void *s = zmq_socket(zctx, type);
    int linger = 1000;
    if (!s || zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm)) ||
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger)) || zmq_bind(s, ep) != 0) {
        int e = zmq_errno();
        if (s)
            zmq_close(s);
        return kvn_err_set(err, e == EADDRINUSE ? -EADDRINUSE : -EINVAL, "bind %s: %s", ep,
                           zmq_strerror(e));
    }
    *out = s;
    return 0;
}

int kvn_evout_open(const struct kvn_evout_cfg *cfg, struct kvn_evout **out, struct kvn_err *err)
{
    if (!cfg || !out || !cfg->zctx || cfg->buffer_steps == 0)
        return kvn_err_set(err, -EINVAL, "bad events configuration");
    const char *topic = cfg->topic ? cfg->topic : "";
    if (strlen(topic) >= 256)
        return kvn_err_set(err, -EINVAL, "topic longer than 255 bytes");
    struct kvn_evout *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return kvn_err_set(err, -ENOMEM, "no memory for the event output");
    strcpy(ev->topic, topic);
    ev->topic_len = strlen(topic);
    ev->replay_topic = cfg->replay_topic;
    ev->dp_rank = cfg->dp_rank;
    int rc = kvn_events_batch_init(&ev->batch,
                                   cfg->map_format ? KVN_EVENTS_FORMAT_MAP : KVN_EVENTS_FORMAT_ARRAY,
                                   0, err);
    if (rc < 0) {
        free(ev);
        return rc;
    }
    if (cfg->pub_endpoint && cfg->pub_endpoint[0]) {
        if ((rc = open_sock(cfg->zctx, ZMQ_PUB, cfg->pub_endpoint, 1000000, &ev->pub, err)) < 0)
            goto fail;
        ev->hist_cap = cfg->buffer_steps;
        ev->hist = calloc(ev->hist_cap, sizeof(struct hist));
        if (!ev->hist) {
            rc = kvn_err_set(err, -ENOMEM, "no memory for %u history entries", ev->hist_cap);
            goto fail;
        }
    }
    if (cfg->replay_endpoint && cfg->replay_endpoint[0]) {
        if (!ev->pub) {
            rc = kvn_err_set(err, -EINVAL, "replay needs a PUB endpoint");
            goto fail;
        }
        int hwm = (int)(cfg->buffer_steps > 1000000 ? 2000000 : cfg->buffer_steps * 2 + 16);
        if ((rc = open_sock(cfg->zctx, ZMQ_ROUTER, cfg->replay_endpoint, hwm, &ev->replay,
                            err)) < 0)
            goto fail;
    }
    *out = ev;
    return 0;
fail:
    kvn_evout_close(ev);
    return rc;
}

void kvn_evout_close(struct kvn_evout *ev)
{
    if (!ev)
        return;
    if (ev->pub)
        zmq_close(ev->pub);
    if (ev->replay)
        zmq_close(ev->replay);
    for (uint32_t i = 0; ev->hist && i < ev->hist_cap; i++)
        free(ev->hist[i].buf);
    free(ev->hist);
    kvn_events_batch_fini(&ev->batch);
    free(ev);
}

void kvn_evout_drain(struct kvn_evout *ev, int linger_ms)
{
    if (!ev)
        return;
    if (ev->pub)
        zmq_setsockopt(ev->pub, ZMQ_LINGER, &linger_ms, sizeof(linger_ms));
    if (ev->replay)
        zmq_setsockopt(ev->replay, ZMQ_LINGER, &linger_ms, sizeof(linger_ms));
}

void kvn_evout_add(struct kvn_evout *ev, const struct kvn_kv_event *e)
{
    if (!ev || !e || !ev->pub)
        return;
    if (kvn_events_batch_add(&ev->batch, e, NULL) < 0)
        ev->st.encode_errors++;
}

static void remember(struct kvn_evout *ev, uint64_t seq, const uint8_t *p, size_t len)
{
    struct hist *h;
    if (ev->hist_len < ev->hist_cap) {
        h = &ev->hist[(ev->hist_head + ev->hist_len) % ev->hist_cap];
        ev->hist_len++;
    } else {
        h = &ev->hist[ev->hist_head]; /* overwrite the oldest */
        ev->hist_head = (ev->hist_head + 1) % ev->hist_cap;
    }
    if (h->cap < len) {
        uint8_t *b = realloc(h->buf, len);
        if (!b) {
            h->len = 0; /* keeps the ring consistent: an empty entry is skipped */
            h->seq = seq;
            return;
        }
        h->buf = b;
        h->cap = len;
    }
    memcpy(h->buf, p, len);
    h->len = len;
    h->seq = seq;
}

int kvn_evout_flush(struct kvn_evout *ev)
{
    if (!ev || !ev->pub)
        return 0;
    uint32_t n = kvn_events_batch_count(&ev->batch);
    if (n == 0)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const uint8_t *p;
    size_t len;
    if (kvn_events_batch_finish(&ev->batch, (double)ts.tv_sec + ts.tv_nsec / 1e9, ev->dp_rank,
                                &p, &len, NULL) < 0) {
        ev->st.encode_errors++;
        kvn_events_batch_reset(&ev->batch);
        return 0;
    }
    uint64_t seq = ev->seq++;
    uint8_t sb[8];
    put_be64(sb, seq);
    remember(ev, seq, p, len);
    if (zmq_send(ev->pub, ev->topic, ev->topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(ev->pub, sb, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(ev->pub, p, len, ZMQ_DONTWAIT) < 0) {
        ev->st.batches_dropped++;
        ev->st.events_dropped += n;
    } else {
        ev->st.batches_published++;
        ev->st.events_published += n;
    }
    kvn_events_batch_reset(&ev->batch);
    return (int)n;
}

void *kvn_evout_replay_socket(struct kvn_evout *ev)
{
    return ev ? ev->replay : NULL;
}

static bool send_replay(struct kvn_evout *ev, zmq_msg_t *id, uint64_t seq, const void *p,
                        size_t len)
{
    zmq_msg_t idc;
    zmq_msg_init(&idc);
    zmq_msg_copy(&idc, id);
    uint8_t sb[8];
    put_be64(sb, seq);
    if (zmq_msg_send(&idc, ev->replay, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&idc);
        return false;
    }
    zmq_send(ev->replay, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (ev->replay_topic)
        zmq_send(ev->replay, ev->topic, ev->topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(ev->replay, sb, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    return zmq_send(ev->replay, p, len, ZMQ_DONTWAIT) >= 0;
}

void kvn_evout_serve_replay(struct kvn_evout *ev)
{
    if (!ev || !ev->replay)
        return;
    for (int r = 0; r < REPLAY_PER_CALL; r++) {
        zmq_msg_t parts[3];
        int np = 0, total = 0, more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, ev->replay, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            total++;
            if (np < 3)
                parts[np++] = m;
            else
                zmq_msg_close(&m);
        }
        if (total == 0)
            return;
        ev->st.replay_requests++;
        /* [identity, "", start_seq (8 bytes)] */
        if (total != 3 || zmq_msg_size(&parts[1]) != 0 || zmq_msg_size(&parts[2]) != 8) {
            ev->st.replay_bad++;
        } else {
            const uint8_t *b = zmq_msg_data(&parts[2]);
            uint64_t start = 0;
            for (int i = 0; i < 8; i++)
                start = (start << 8) | b[i];
            for (uint32_t i = 0; i < ev->hist_len; i++) {
                const struct hist *h = &ev->hist[(ev->hist_head + i) % ev->hist_cap];
                if (h->seq < start || h->len == 0)
                    continue;
                if (!send_replay(ev, &parts[0], h->seq, h->buf, h->len))
                    break;
                ev->st.replay_batches_sent++;
            }
            send_replay(ev, &parts[0], UINT64_MAX, "", 0);
        }
        for (int i = 0; i < np; i++)
            zmq_msg_close(&parts[i]);
    }
}

void kvn_evout_get_stats(const struct kvn_evout *ev, struct kvn_evout_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (ev) {
        *out = ev->st;
        out->next_seq = ev->seq;
    }
}
