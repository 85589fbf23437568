/*
 * event_pub.c - KV-event publisher with replay history; see event_pub.h.
 *
 * The history is a ring of buffer_steps slots; slot i holds the batch whose sequence is
 * congruent to i, so locating the first batch of a replay is arithmetic, not a search.
 */
#include "node/events/event_pub.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define REPLAY_REQUESTS_PER_CALL 256
#define SUB_DRAIN_PER_FLUSH      64
#define DEFAULT_LINGER_MS        1000

struct slot {
    uint64_t seq;
    uint8_t *data;
    size_t len, cap;
};

struct kvn_events_pub {
    void *pub;    /* XPUB with NODROP */
    void *replay; /* ROUTER, or NULL */
    char *topic;
    size_t topic_len;
    bool replay_topic;
    int64_t dp_rank;
    struct kvn_events_batch batch;
    struct slot *ring;
    uint32_t steps;
    uint32_t held; /* batches in the ring: the newest `held` sequences before next_seq */
    char endpoint[256], replay_endpoint[256];
    uint64_t subscriptions; /* subscribe minus unsubscribe notices seen */
    struct kvn_events_pub_stats st;
};

static void put_be64(uint8_t *w, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        w[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void close_socket(void **s)
{
    if (*s)
        zmq_close(*s);
    *s = NULL;
}

static void pub_free(struct kvn_events_pub *pub)
{
    if (!pub)
        return;
    close_socket(&pub->pub);
    close_socket(&pub->replay);
    if (pub->ring)
        for (uint32_t i = 0; i < pub->steps; i++)
            free(pub->ring[i].data);
    free(pub->ring);
    free(pub->topic);
    kvn_events_batch_fini(&pub->batch);
    free(pub);
}

static int zfail(struct kvn_err *err, const char *what, const char *arg)
{
    int e = zmq_errno();
    return kvn_err_set(err, -(e ? e : EIO), "events publisher: %s %s: %s", what, arg ? arg : "",
                       zmq_strerror(e));
}

static int set_int(void *s, int opt, int v, struct kvn_err *err, const char *name)
{
    if (zmq_setsockopt(s, opt, &v, sizeof(v)) != 0)
        return zfail(err, "setsockopt", name);
    return 0;
}

static int bind_and_name(void *s, const char *ep, char *name, size_t cap, struct kvn_err *err)
{
    if (zmq_bind(s, ep) != 0)
        return zfail(err, "cannot bind", ep);
    size_t len = cap;
    if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, name, &len) != 0)
        return zfail(err, "ZMQ_LAST_ENDPOINT of", ep);
    name[cap - 1] = 0;
    return 0;
}

int kvn_events_pub_create(void *zctx, const struct kvn_events_pub_config *cfg,
                          struct kvn_events_pub **out, struct kvn_err *err)
{
    if (!zctx || !cfg || !out)
        return kvn_err_set(err, -EINVAL, "events publisher: NULL zctx, cfg or out");
    if (!cfg->endpoint || !*cfg->endpoint)
        return kvn_err_set(err, -EINVAL, "events publisher: no PUB endpoint");
    if (cfg->format != KVN_EVENTS_FORMAT_ARRAY && cfg->format != KVN_EVENTS_FORMAT_MAP)
        return kvn_err_set(err, -EINVAL, "events publisher: unknown format %d", (int)cfg->format);
    if (cfg->buffer_steps > KVN_EVENTS_MAX_BUFFER_STEPS)
        return kvn_err_set(err, -EINVAL, "events publisher: buffer_steps %u > %u",
                           cfg->buffer_steps, KVN_EVENTS_MAX_BUFFER_STEPS);
    if (cfg->sndhwm < 0)
        return kvn_err_set(err, -EINVAL, "events publisher: sndhwm %d < 0", cfg->sndhwm);
    if (cfg->replay_endpoint && !*cfg->replay_endpoint)
        return kvn_err_set(err, -EINVAL, "events publisher: empty replay endpoint");

    struct kvn_events_pub *pub = calloc(1, sizeof(*pub));
    if (!pub)
        return kvn_err_set(err, -ENOMEM, "events publisher: out of memory");
    int rc = kvn_events_batch_init(&pub->batch, cfg->format, 0, err);
    if (rc < 0) {
        pub_free(pub);
        return rc;
    }
    pub->steps = cfg->buffer_steps ? cfg->buffer_steps : KVN_EVENTS_DEFAULT_BUFFER_STEPS;
    pub->ring = calloc(pub->steps, sizeof(*pub->ring));
    pub->topic = strdup(cfg->topic ? cfg->topic : "");
    if (!pub->ring || !pub->topic) {
        pub_free(pub);
        return kvn_err_set(err, -ENOMEM, "events publisher: no memory for %u history slots",
                           pub->steps);
    }
    pub->topic_len = strlen(pub->topic);
    pub->replay_topic = cfg->replay_topic;
    pub->dp_rank = cfg->dp_rank;
    int linger = cfg->linger_ms < 0 ? DEFAULT_LINGER_MS : cfg->linger_ms;
    int hwm = cfg->sndhwm ? cfg->sndhwm : KVN_EVENTS_DEFAULT_SNDHWM;

    pub->pub = zmq_socket(zctx, ZMQ_XPUB);
    if (!pub->pub) {
        rc = zfail(err, "cannot create XPUB socket", NULL);
        goto fail;
    }
    if ((rc = set_int(pub->pub, ZMQ_SNDHWM, hwm, err, "ZMQ_SNDHWM")) < 0 ||
        (rc = set_int(pub->pub, ZMQ_XPUB_NODROP, cfg->lossy ? 0 : 1, err, "ZMQ_XPUB_NODROP")) < 0 ||
        (rc = set_int(pub->pub, ZMQ_XPUB_VERBOSER, 1, err, "ZMQ_XPUB_VERBOSER")) < 0 ||
        (rc = set_int(pub->pub, ZMQ_LINGER, linger, err, "ZMQ_LINGER")) < 0 ||
        (rc = bind_and_name(pub->pub, cfg->endpoint, pub->endpoint, sizeof(pub->endpoint), err)) <
            0)
        goto fail;
    if (cfg->replay_endpoint) {
        pub->replay = zmq_socket(zctx, ZMQ_ROUTER);
        if (!pub->replay) {
            rc = zfail(err, "cannot create ROUTER socket", NULL);
            goto fail;
        }
        int rhwm = pub->steps > INT32_MAX - 16 ? INT32_MAX : (int)pub->steps + 16;
        if ((rc = set_int(pub->replay, ZMQ_SNDHWM, rhwm, err, "ZMQ_SNDHWM")) < 0 ||
            (rc = set_int(pub->replay, ZMQ_ROUTER_MANDATORY, 1, err, "ZMQ_ROUTER_MANDATORY")) < 0 ||
            (rc = set_int(pub->replay, ZMQ_LINGER, 0, err, "ZMQ_LINGER")) < 0 ||
            (rc = bind_and_name(pub->replay, cfg->replay_endpoint, pub->replay_endpoint,
                                sizeof(pub->replay_endpoint), err)) < 0)
            goto fail;
    }
    *out = pub;
    return 0;
fail:
    /* Nothing must linger from a failed create. */
    if (pub->pub)
        set_int(pub->pub, ZMQ_LINGER, 0, NULL, NULL);
    pub_free(pub);
    return rc;
}

void kvn_events_pub_destroy(struct kvn_events_pub *pub)
{
    pub_free(pub);
}

int kvn_events_add(struct kvn_events_pub *pub, const struct kvn_kv_event *ev, struct kvn_err *err)
{
    if (!pub)
        return kvn_err_set(err, -EINVAL, "events add: NULL publisher");
    return kvn_events_batch_add(&pub->batch, ev, err);
}

static void sink_emit(void *ctx, const struct kvn_kv_event *ev)
{
    struct kvn_events_pub *pub = ctx;
    if (kvn_events_batch_add(&pub->batch, ev, NULL) < 0)
        pub->st.add_errors++;
}

struct kvn_kv_event_sink kvn_events_sink(struct kvn_events_pub *pub)
{
    struct kvn_kv_event_sink s = {.emit = pub ? sink_emit : NULL, .ctx = pub};
    return s;
}

/*
 * Subscription notices arrive on the XPUB (every one, ZMQ_XPUB_VERBOSER): 1 = subscribe,
 * 0 = unsubscribe (also sent when a subscriber disconnects).  Counting them gives the number
 * of live subscriptions; reading them keeps the queue empty.
 */
static void drain_subscriptions(struct kvn_events_pub *pub, int max)
{
    uint8_t buf[64];
    for (int i = 0; i < max; i++) {
        int n = zmq_recv(pub->pub, buf, sizeof(buf), ZMQ_DONTWAIT);
        if (n < 0)
            break;
        if (n >= 1 && buf[0] == 1)
            pub->subscriptions++;
        else if (n >= 1 && buf[0] == 0 && pub->subscriptions > 0)
            pub->subscriptions--;
    }
}

int kvn_events_pub_subscriptions(struct kvn_events_pub *pub)
{
    if (!pub)
        return 0;
    drain_subscriptions(pub, 1 << 20);
    return pub->subscriptions > INT32_MAX ? INT32_MAX : (int)pub->subscriptions;
}

/* Sends [topic][seq][payload] on s, optionally prefixed by frames already sent by caller. */
static int send_frames(void *s, const char *topic, size_t topic_len, bool with_topic, uint64_t seq,
                       const uint8_t *payload, size_t len)
{
    uint8_t seqb[8];
    put_be64(seqb, seq);
    if (with_topic && zmq_send(s, topic, topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (zmq_send(s, seqb, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (zmq_send(s, payload, len, ZMQ_DONTWAIT) < 0)
        return -1;
    return 0;
}

int kvn_events_flush(struct kvn_events_pub *pub, double ts, struct kvn_err *err)
{
    if (!pub)
        return kvn_err_set(err, -EINVAL, "events flush: NULL publisher");
    uint32_t n = kvn_events_batch_count(&pub->batch);
    if (n == 0)
        return 0;
    const uint8_t *payload;
    size_t len;
    int rc = kvn_events_batch_finish(&pub->batch, ts, pub->dp_rank, &payload, &len, err);
    if (rc < 0)
        return rc;
    uint64_t seq = pub->st.next_seq;
    struct slot *sl = &pub->ring[seq % pub->steps];
    if (sl->cap < len) {
        size_t cap = len < 256 ? 256 : len + len / 4;
        uint8_t *nd = malloc(cap);
        if (!nd)
            return kvn_err_set(err, -ENOMEM, "events flush: cannot keep a %zu-byte batch", len);
        free(sl->data);
        sl->data = nd;
        sl->cap = cap;
    }
    memcpy(sl->data, payload, len);
    sl->len = len;
    sl->seq = seq;
    if (pub->held < pub->steps)
        pub->held++;
    pub->st.next_seq = seq + 1;
    pub->st.batches++;
    pub->st.events += n;
    pub->st.bytes += len;
    kvn_events_batch_reset(&pub->batch);

    drain_subscriptions(pub, SUB_DRAIN_PER_FLUSH);
    if (send_frames(pub->pub, pub->topic, pub->topic_len, true, seq, sl->data, len) < 0) {
        int e = zmq_errno();
        pub->st.dropped++;
        if (e != EAGAIN)
            return kvn_err_set(err, -e, "events flush: send of batch %llu failed: %s",
                               (unsigned long long)seq, zmq_strerror(e));
    }
    return 1;
}

void *kvn_events_replay_socket(const struct kvn_events_pub *pub)
{
    return pub ? pub->replay : NULL;
}

/* Replies to one well-formed request; false when the reply had to be cut short. */
static bool serve_replay(struct kvn_events_pub *pub, zmq_msg_t *id, uint64_t start)
{
    uint64_t next = pub->st.next_seq;
    uint64_t oldest = next - pub->held;
    if (start < oldest)
        start = oldest;
    if (start > next)
        start = next; /* nothing newer: the end marker alone */
    for (uint64_t s = start; s <= next; s++) {
        bool end = s == next;
        const struct slot *sl = end ? NULL : &pub->ring[s % pub->steps];
        if (zmq_send(pub->replay, zmq_msg_data(id), zmq_msg_size(id), ZMQ_SNDMORE | ZMQ_DONTWAIT) <
                0 ||
            zmq_send(pub->replay, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            return false;
        int rc = end ? send_frames(pub->replay, pub->topic, pub->topic_len, pub->replay_topic,
                                   KVN_EVENTS_END_SEQ, (const uint8_t *)"", 0)
                     : send_frames(pub->replay, pub->topic, pub->topic_len, pub->replay_topic,
                                   sl->seq, sl->data, sl->len);
        if (rc < 0)
            return false;
        if (!end)
            pub->st.replay_batches++;
    }
    return true;
}

int kvn_events_handle_replay(struct kvn_events_pub *pub, struct kvn_err *err)
{
    if (!pub)
        return kvn_err_set(err, -EINVAL, "events replay: NULL publisher");
    if (!pub->replay)
        return kvn_err_set(err, -ENOTSUP, "events replay: no replay endpoint configured");
    int handled = 0;
    while (handled < REPLAY_REQUESTS_PER_CALL) {
        zmq_msg_t part[3];
        int nparts = 0;
        bool more = true;
        int total = 0;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, pub->replay, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                if (total == 0)
                    goto done; /* nothing waiting */
                break;         /* cannot happen mid-message: ZMQ delivers atomically */
            }
            more = zmq_msg_more(&m);
            if (nparts < 3) {
                zmq_msg_init(&part[nparts]);
                zmq_msg_move(&part[nparts++], &m);
            }
            zmq_msg_close(&m);
            total++;
        }
        handled++;
        if (total != 3 || zmq_msg_size(&part[1]) != 0 || zmq_msg_size(&part[2]) != 8) {
            pub->st.replay_refused++;
        } else {
            uint64_t start = get_be64(zmq_msg_data(&part[2]));
            if (serve_replay(pub, &part[0], start))
                pub->st.replay_served++;
            else
                pub->st.replay_truncated++;
        }
        for (int i = 0; i < nparts; i++)
            zmq_msg_close(&part[i]);
    }
done:
    return handled;
}

void kvn_events_pub_get_stats(const struct kvn_events_pub *pub, struct kvn_events_pub_stats *st)
{
    if (!st)
        return;
    if (!pub) {
        memset(st, 0, sizeof(*st));
        return;
    }
    *st = pub->st;
    st->history = pub->held;
}

const char *kvn_events_pub_endpoint(const struct kvn_events_pub *pub)
{
    return pub ? pub->endpoint : NULL;
}

const char *kvn_events_replay_endpoint(const struct kvn_events_pub *pub)
{
    return pub && pub->replay ? pub->replay_endpoint : NULL;
}
