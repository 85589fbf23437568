/*
 * event_sub.c - one peer's event stream, in sequence order, into the global index; see
 * event_sub.h for the sequencing rules.
 *
 * Held (out-of-order) live batches sit in a ring of copies whose buffers are reused, so a
 * steady stream allocates nothing; in-order batches are decoded straight from the ZMQ
 * message.
 */
#include "node/events/event_sub.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "node/events/event_codec.h"

#define MSGS_PER_CALL 1024
#define MAX_PARTS     5
#define END_SEQ       UINT64_MAX

struct held {
    uint64_t seq;
    uint8_t *data;
    size_t len, cap;
};

struct kvn_events_sub {
    void *zctx;
    struct kvn_gindex *g;
    uint32_t peer;
    char *endpoint, *replay_endpoint, *topic;
    void *sub, *dealer;
    bool have_pos;            /* next_seq is meaningful */
    uint64_t next_at_request; /* next_seq when the outstanding replay was requested */
    struct held *held;
    uint32_t held_cap, held_head, held_count;
    struct kvn_events_decoder dec;
    struct kvn_events_sub_stats st;
    struct kvn_err last; /* why the last message was refused */
    void (*on_batch)(void *ctx, uint64_t seq, double ts, uint32_t n_events);
    void *on_batch_ctx;
};

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void close_sockets(struct kvn_events_sub *s)
{
    if (s->sub)
        zmq_close(s->sub);
    if (s->dealer)
        zmq_close(s->dealer);
    s->sub = s->dealer = NULL;
}

static int zfail(struct kvn_err *err, const char *what, const char *arg)
{
    int e = zmq_errno();
    return kvn_err_set(err, -(e ? e : EIO), "events subscriber: %s %s: %s", what, arg ? arg : "",
                       zmq_strerror(e));
}

static int open_sockets(struct kvn_events_sub *s, struct kvn_err *err)
{
    int zero = 0, rc;
    s->sub = zmq_socket(s->zctx, ZMQ_SUB);
    if (!s->sub) {
        rc = zfail(err, "cannot create SUB socket", NULL);
        goto fail;
    }
    if (zmq_setsockopt(s->sub, ZMQ_LINGER, &zero, sizeof(zero)) != 0 ||
        zmq_setsockopt(s->sub, ZMQ_SUBSCRIBE, s->topic, strlen(s->topic)) != 0) {
        rc = zfail(err, "setsockopt on SUB for", s->endpoint);
        goto fail;
    }
    if (zmq_connect(s->sub, s->endpoint) != 0) {
        rc = zfail(err, "cannot connect to", s->endpoint);
        goto fail;
    }
    if (s->replay_endpoint) {
        s->dealer = zmq_socket(s->zctx, ZMQ_DEALER);
        if (!s->dealer) {
            rc = zfail(err, "cannot create DEALER socket", NULL);
            goto fail;
        }
        if (zmq_setsockopt(s->dealer, ZMQ_LINGER, &zero, sizeof(zero)) != 0) {
            rc = zfail(err, "setsockopt on DEALER for", s->replay_endpoint);
            goto fail;
        }
        if (zmq_connect(s->dealer, s->replay_endpoint) != 0) {
            rc = zfail(err, "cannot connect to", s->replay_endpoint);
            goto fail;
        }
    }
    return 0;
fail:
    close_sockets(s);
    return rc;
}

static void sub_free(struct kvn_events_sub *s)
{
    if (!s)
        return;
    close_sockets(s);
    if (s->held)
        for (uint32_t i = 0; i < s->held_cap; i++)
            free(s->held[i].data);
    free(s->held);
    free(s->endpoint);
    free(s->replay_endpoint);
    free(s->topic);
    kvn_events_decoder_fini(&s->dec);
    free(s);
}

static int request_replay(struct kvn_events_sub *s, struct kvn_err *err)
{
    uint8_t start[8];
    uint64_t v = s->st.next_seq;
    for (int i = 7; i >= 0; i--, v >>= 8)
        start[i] = (uint8_t)v;
    if (zmq_send(s->dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(s->dealer, start, 8, ZMQ_DONTWAIT) < 0)
        return zfail(err, "cannot send replay request to", s->replay_endpoint);
    s->st.replaying = true;
    s->st.replays_requested++;
    s->next_at_request = s->st.next_seq;
    return 0;
}

int kvn_events_sub_create(void *zctx, struct kvn_gindex *g, const struct kvn_events_sub_config *cfg,
                          struct kvn_events_sub **out, struct kvn_err *err)
{
    if (!zctx || !g || !cfg || !out)
        return kvn_err_set(err, -EINVAL, "events subscriber: NULL zctx, index, cfg or out");
    if (!cfg->endpoint || !*cfg->endpoint)
        return kvn_err_set(err, -EINVAL, "events subscriber: no PUB endpoint");
    if (cfg->replay_endpoint && !*cfg->replay_endpoint)
        return kvn_err_set(err, -EINVAL, "events subscriber: empty replay endpoint");
    if (cfg->max_pending > KVN_EVENTS_SUB_MAX_PENDING)
        return kvn_err_set(err, -EINVAL, "events subscriber: max_pending %u > %u", cfg->max_pending,
                           KVN_EVENTS_SUB_MAX_PENDING);
    struct kvn_gindex_peer_stats ps;
    int rc = kvn_gindex_peer_stats(g, cfg->peer, &ps, err);
    if (rc < 0)
        return rc;

    struct kvn_events_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return kvn_err_set(err, -ENOMEM, "events subscriber: out of memory");
    kvn_events_decoder_init(&s->dec, NULL);
    s->zctx = zctx;
    s->g = g;
    s->peer = cfg->peer;
    s->on_batch = cfg->on_batch;
    s->on_batch_ctx = cfg->on_batch_ctx;
    s->held_cap = cfg->max_pending ? cfg->max_pending : KVN_EVENTS_SUB_DEFAULT_PENDING;
    s->held = calloc(s->held_cap, sizeof(*s->held));
    s->endpoint = strdup(cfg->endpoint);
    s->topic = strdup(cfg->topic ? cfg->topic : "");
    s->replay_endpoint = cfg->replay_endpoint ? strdup(cfg->replay_endpoint) : NULL;
    if (!s->held || !s->endpoint || !s->topic || (cfg->replay_endpoint && !s->replay_endpoint)) {
        sub_free(s);
        return kvn_err_set(err, -ENOMEM, "events subscriber: out of memory");
    }
    rc = open_sockets(s, err);
    if (rc == 0 && s->dealer) {
        s->have_pos = true; /* from 0: the whole history */
        rc = request_replay(s, err);
    }
    if (rc < 0) {
        sub_free(s);
        return rc;
    }
    kvn_gindex_peer_add(g, s->peer, NULL);
    *out = s;
    return 0;
}

void kvn_events_sub_destroy(struct kvn_events_sub *sub)
{
    sub_free(sub);
}

void *kvn_events_sub_socket(const struct kvn_events_sub *sub)
{
    return sub ? sub->sub : NULL;
}

void *kvn_events_sub_replay_socket(const struct kvn_events_sub *sub)
{
    return sub ? sub->dealer : NULL;
}

static int apply_event(void *ctx, const struct kvn_kv_event *ev)
{
    struct kvn_events_sub *s = ctx;
    if (kvn_gindex_apply(s->g, s->peer, ev, &s->last) < 0)
        s->st.apply_errors++;
    else
        s->st.events_applied++;
    return 0;
}

/* Applies the batch that is next in sequence, whatever its content. */
static void apply_next(struct kvn_events_sub *s, const uint8_t *p, size_t len)
{
    struct kvn_events_batch_info bi;
    int rc = kvn_events_decode(&s->dec, p, len, apply_event, s, &bi, &s->last);
    uint64_t seq = s->st.next_seq++;
    if (rc == -EBADMSG) {
        s->st.malformed++;
    } else if (rc < 0) {
        s->st.apply_errors++; /* -ENOMEM growing decoder scratch: the batch is skipped */
    } else {
        s->st.batches_applied++;
        s->st.last_ts = bi.ts;
        if (s->on_batch)
            s->on_batch(s->on_batch_ctx, seq, bi.ts, bi.n_events);
    }
}

static void drain_held(struct kvn_events_sub *s)
{
    while (s->held_count) {
        struct held *h = &s->held[s->held_head];
        if (h->seq > s->st.next_seq)
            return;
        if (h->seq < s->st.next_seq)
            s->st.duplicates++;
        else
            apply_next(s, h->data, h->len);
        s->held_head = (s->held_head + 1) % s->held_cap;
        s->held_count--;
    }
}

static const struct held *held_front(const struct kvn_events_sub *s)
{
    return s->held_count ? &s->held[s->held_head] : NULL;
}

/* Keeps a live batch that is ahead of next_seq; false when it could not be kept. */
static bool hold(struct kvn_events_sub *s, uint64_t seq, const uint8_t *p, size_t len)
{
    if (s->held_count == s->held_cap) {
        s->st.pending_dropped++;
        return false;
    }
    if (s->held_count) {
        const struct held *last = &s->held[(s->held_head + s->held_count - 1) % s->held_cap];
        if (seq <= last->seq) { /* already held (or out of order from one PUB: impossible) */
            s->st.duplicates++;
            return true;
        }
    }
    struct held *h = &s->held[(s->held_head + s->held_count) % s->held_cap];
    if (h->cap < len || !h->data) {
        size_t cap = len < 256 ? 256 : len;
        uint8_t *nd = malloc(cap);
        if (!nd) {
            s->st.pending_dropped++;
            return false;
        }
        free(h->data);
        h->data = nd;
        h->cap = cap;
    }
    memcpy(h->data, p, len);
    h->len = len;
    h->seq = seq;
    s->held_count++;
    return true;
}

static int deliver(struct kvn_events_sub *s, uint64_t seq, const uint8_t *p, size_t len,
                   bool from_replay, struct kvn_err *err)
{
    if (!s->have_pos) {
        s->st.next_seq = seq;
        s->have_pos = true;
    }
    if (seq < s->st.next_seq) {
        s->st.duplicates++;
        return 0;
    }
    if (seq > s->st.next_seq) {
        if (from_replay || !s->dealer) {
            /* The peer's history starts later (replay), or nobody can repair (no replay). */
            if (!from_replay)
                s->st.gaps++;
            s->st.lost += seq - s->st.next_seq;
            s->st.next_seq = seq;
        } else {
            bool kept = hold(s, seq, p, len);
            if (s->st.replaying)
                return 0; /* the outstanding replay (or the one after it) fills in */
            s->st.gaps++;
            int rc = request_replay(s, err);
            if (rc < 0)
                return rc;
            (void)kept;
            return 0;
        }
    }
    apply_next(s, p, len);
    drain_held(s);
    return 0;
}

static int on_replay_end(struct kvn_events_sub *s, struct kvn_err *err)
{
    s->st.replaying = false;
    drain_held(s);
    const struct held *h = held_front(s);
    if (!h)
        return 0;
    if (s->st.next_seq > s->next_at_request) {
        s->st.gaps++; /* progress was made: ask for the rest once more */
        return request_replay(s, err);
    }
    /* The last replay brought nothing: the peer no longer has these batches. */
    s->st.lost += h->seq - s->st.next_seq;
    s->st.next_seq = h->seq;
    drain_held(s);
    return 0;
}

/* Reads one multipart message: up to MAX_PARTS parts kept, *total counts all. */
static bool read_msg(void *sock, zmq_msg_t *parts, int *kept, int *total)
{
    *kept = *total = 0;
    for (bool more = true; more;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return *total > 0;
        }
        more = zmq_msg_more(&m);
        if (*kept < MAX_PARTS) {
            zmq_msg_init(&parts[*kept]);
            zmq_msg_move(&parts[(*kept)++], &m);
        }
        zmq_msg_close(&m);
        (*total)++;
    }
    return true;
}

static void close_parts(zmq_msg_t *parts, int n)
{
    for (int i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
}

static int handle_live(struct kvn_events_sub *s, int *consumed, struct kvn_err *err)
{
    for (int i = 0; i < MSGS_PER_CALL; i++) {
        zmq_msg_t parts[MAX_PARTS];
        int kept, total;
        if (!read_msg(s->sub, parts, &kept, &total))
            return 0;
        (*consumed)++;
        int rc = 0;
        if (total != 3 || zmq_msg_size(&parts[1]) != 8) {
            s->st.bad_frames++;
            kvn_err_set(&s->last, -EBADMSG,
                        "live message from %s: %d frames, want [topic][seq 8 bytes][payload]",
                        s->endpoint, total);
        } else {
            s->st.live_batches++;
            rc = deliver(s, get_be64(zmq_msg_data(&parts[1])), zmq_msg_data(&parts[2]),
                         zmq_msg_size(&parts[2]), false, err);
        }
        close_parts(parts, kept);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int handle_replay(struct kvn_events_sub *s, int *consumed, struct kvn_err *err)
{
    for (int i = 0; i < MSGS_PER_CALL; i++) {
        zmq_msg_t parts[MAX_PARTS];
        int kept, total;
        if (!read_msg(s->dealer, parts, &kept, &total))
            return 0;
        (*consumed)++;
        int rc = 0;
        /* ["", seq, payload] or ["", topic, seq, payload] */
        int at = total == 3 ? 1 : total == 4 ? 2 : -1;
        if (at < 0 || zmq_msg_size(&parts[0]) != 0 || zmq_msg_size(&parts[at]) != 8) {
            s->st.bad_frames++;
            kvn_err_set(
                &s->last, -EBADMSG,
                "replay reply from %s: %d frames, want [\"\"][topic]?[seq 8 bytes][payload]",
                s->replay_endpoint, total);
        } else {
            uint64_t seq = get_be64(zmq_msg_data(&parts[at]));
            size_t len = zmq_msg_size(&parts[at + 1]);
            if (seq == END_SEQ && len == 0) {
                rc = on_replay_end(s, err);
            } else if (seq == END_SEQ) {
                s->st.bad_frames++;
                kvn_err_set(&s->last, -EBADMSG, "replay end marker from %s with a %zu-byte payload",
                            s->replay_endpoint, len);
            } else {
                s->st.replay_batches++;
                rc = deliver(s, seq, zmq_msg_data(&parts[at + 1]), len, true, err);
            }
        }
        close_parts(parts, kept);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int kvn_events_sub_handle(struct kvn_events_sub *sub, struct kvn_err *err)
{
    if (!sub)
        return kvn_err_set(err, -EINVAL, "events subscriber: NULL");
    int consumed = 0;
    int rc = 0;
    /* Replay first: it carries the older batches that held live ones wait for. */
    if (sub->dealer)
        rc = handle_replay(sub, &consumed, err);
    if (rc == 0 && sub->sub)
        rc = handle_live(sub, &consumed, err);
    return rc < 0 ? rc : consumed;
}

int kvn_events_sub_retry_replay(struct kvn_events_sub *sub, struct kvn_err *err)
{
    if (!sub)
        return kvn_err_set(err, -EINVAL, "events subscriber: NULL");
    if (!sub->dealer)
        return kvn_err_set(err, -ENOTSUP, "events subscriber: no replay endpoint");
    if (!sub->have_pos) {
        sub->have_pos = true;
        sub->st.next_seq = 0;
    }
    return request_replay(sub, err);
}

int kvn_events_sub_rejoin(struct kvn_events_sub *sub, struct kvn_err *err)
{
    if (!sub)
        return kvn_err_set(err, -EINVAL, "events subscriber: NULL");
    close_sockets(sub);
    kvn_gindex_drop_peer(sub->g, sub->peer, NULL);
    kvn_gindex_peer_add(sub->g, sub->peer, NULL);
    sub->held_count = 0;
    sub->held_head = 0;
    sub->st.next_seq = 0;
    sub->st.replaying = false;
    sub->have_pos = false;
    int rc = open_sockets(sub, err);
    if (rc < 0)
        return rc;
    if (sub->dealer) {
        sub->have_pos = true;
        return request_replay(sub, err);
    }
    return 0;
}

const char *kvn_events_sub_last_error(const struct kvn_events_sub *sub)
{
    return sub ? sub->last.msg : "";
}

void kvn_events_sub_get_stats(const struct kvn_events_sub *sub, struct kvn_events_sub_stats *st)
{
    if (!st)
        return;
    if (!sub)
        memset(st, 0, sizeof(*st));
    else
        *st = sub->st;
}
