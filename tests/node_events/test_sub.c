/*
 * test_sub.c - peer subscriber into the global index, over real ZMQ sockets on 127.0.0.1:
 * live delivery and a late join (replay) give the same index as applying the events
 * directly; a gap on the live stream is repaired by replay (deterministic: the live stream
 * comes from a socket the test drives); history that is gone is counted as lost; malformed
 * messages and payloads are counted and never reach the index; rejoin relearns a peer; and
 * every error path.  All waits are bounded poll loops; nothing is timed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ev_helpers.h"
#include "node/events/event_codec.h"
#include "node/events/event_pub.h"
#include "node/events/event_sub.h"

/* The workload: batch b stores a 3-page sequence (seeds repeat, so some stores are
 * re-adds) on GPU and 2 pages on CPU_PINNED, removes now and then, and batch 30 clears. */
struct wl {
    struct evh_seq seq[2];
    struct kvn_kv_event ev[8];
    int n;
};

static void workload(uint32_t b, struct wl *w)
{
    w->n = 0;
    if (b == 30) {
        struct kvn_kv_event ev = {.type = KVN_EV_ALL_BLOCKS_CLEARED};
        w->ev[w->n++] = ev;
        return;
    }
    evh_make_seq(&w->seq[0], b % 11, 3);
    evh_make_seq(&w->seq[1], 100 + b % 5, 2);
    for (uint32_t p = 0; p < 3; p++)
        w->ev[w->n++] = evh_stored(&w->seq[0], p, KVN_MEDIUM_GPU);
    for (uint32_t p = 0; p < 2; p++)
        w->ev[w->n++] = evh_stored(&w->seq[1], p, KVN_MEDIUM_CPU_PINNED);
    if (b % 4 == 3)
        w->ev[w->n++] = evh_removed(&w->seq[0], 1, KVN_MEDIUM_GPU);
    if (b % 6 == 5)
        w->ev[w->n++] = evh_removed(&w->seq[1], 0, KVN_MEDIUM_CPU_PINNED);
}

static void publish(struct kvn_events_pub *pub, struct kvn_gindex *ref, uint32_t from, uint32_t to)
{
    for (uint32_t b = from; b < to; b++) {
        struct wl w;
        workload(b, &w);
        for (int i = 0; i < w.n; i++) {
            assert_int_equal(kvn_events_add(pub, &w.ev[i], NULL), 0);
            if (ref)
                assert_int_equal(kvn_gindex_apply(ref, 0, &w.ev[i], NULL), 0);
        }
        assert_int_equal(kvn_events_flush(pub, (double)b, NULL), 1);
    }
}

/* The exact payload the publisher sends for batch b (array form, dp_rank 0). */
static size_t payload_of(uint32_t b, uint8_t *out, size_t cap)
{
    struct wl w;
    workload(b, &w);
    struct kvn_events_batch batch;
    assert_int_equal(kvn_events_batch_init(&batch, KVN_EVENTS_FORMAT_ARRAY, 0, NULL), 0);
    for (int i = 0; i < w.n; i++)
        assert_int_equal(kvn_events_batch_add(&batch, &w.ev[i], NULL), 0);
    const uint8_t *p;
    size_t len;
    assert_int_equal(kvn_events_batch_finish(&batch, (double)b, 0, &p, &len, NULL), 0);
    assert_true(len <= cap);
    memcpy(out, p, len);
    kvn_events_batch_fini(&batch);
    return len;
}

struct ctx_cmp {
    const struct kvn_gindex *other;
    uint32_t peer;
    enum kvn_medium m;
    int missing;
};

static int in_other(void *c, int64_t h)
{
    struct ctx_cmp *cc = c;
    if (!kvn_gindex_contains(cc->other, cc->peer, cc->m, h))
        cc->missing++;
    return 0;
}

/* Peer pa of a holds exactly what peer pb of b holds. */
static void assert_same_index(const struct kvn_gindex *a, uint32_t pa, const struct kvn_gindex *b,
                              uint32_t pb)
{
    struct kvn_gindex_peer_stats sa, sb;
    assert_int_equal(kvn_gindex_peer_stats(a, pa, &sa, NULL), 0);
    assert_int_equal(kvn_gindex_peer_stats(b, pb, &sb, NULL), 0);
    for (int m = 0; m < KVN_GINDEX_MEDIA; m++) {
        assert_int_equal(sa.blocks[m], sb.blocks[m]);
        struct ctx_cmp c = {.other = b, .peer = pb, .m = (enum kvn_medium)m};
        assert_int_equal(kvn_gindex_foreach(a, pa, (enum kvn_medium)m, in_other, &c, NULL), 0);
        assert_int_equal(c.missing, 0);
    }
}

static struct kvn_events_pub *make_pub(uint32_t steps)
{
    struct kvn_events_pub_config cfg = {.endpoint = "tcp://127.0.0.1:*",
                                        .replay_endpoint = "tcp://127.0.0.1:*",
                                        .buffer_steps = steps,
                                        .linger_ms = 0};
    struct kvn_events_pub *pub = NULL;
    struct kvn_err err;
    if (kvn_events_pub_create(zctx, &cfg, &pub, &err) < 0)
        fail_msg("pub: %s", err.msg);
    return pub;
}

/* One round of the daemon's loop: poll everything, handle what is readable. */
static void pump(struct kvn_events_pub *pub, struct kvn_events_sub **subs, int nsubs, int ms)
{
    zmq_pollitem_t it[1 + 2 * 4];
    int n = 0;
    if (pub)
        it[n++] = (zmq_pollitem_t){.socket = kvn_events_replay_socket(pub), .events = ZMQ_POLLIN};
    for (int i = 0; i < nsubs; i++) {
        it[n++] = (zmq_pollitem_t){.socket = kvn_events_sub_socket(subs[i]), .events = ZMQ_POLLIN};
        if (kvn_events_sub_replay_socket(subs[i]))
            it[n++] = (zmq_pollitem_t){.socket = kvn_events_sub_replay_socket(subs[i]),
                                       .events = ZMQ_POLLIN};
    }
    zmq_poll(it, n, ms);
    if (pub)
        assert_true(kvn_events_handle_replay(pub, NULL) >= 0);
    for (int i = 0; i < nsubs; i++) {
        struct kvn_err err;
        int rc = kvn_events_sub_handle(subs[i], &err);
        if (rc < 0)
            fail_msg("sub handle: %s", err.msg);
    }
}

static void pump_until(struct kvn_events_pub *pub, struct kvn_events_sub **subs, int nsubs,
                       uint64_t next_seq)
{
    for (int iter = 0; iter < 1000; iter++) { /* bounded: at most ~20 s */
        bool done = true;
        for (int i = 0; i < nsubs; i++) {
            struct kvn_events_sub_stats st;
            kvn_events_sub_get_stats(subs[i], &st);
            done = done && st.next_seq >= next_seq && !st.replaying;
        }
        if (done)
            return;
        pump(pub, subs, nsubs, 20);
    }
    fail_msg("subscribers did not reach seq %llu", (unsigned long long)next_seq);
}

static struct kvn_events_sub *make_sub(struct kvn_gindex *g, uint32_t peer, const char *ep,
                                       const char *replay, uint32_t max_pending)
{
    struct kvn_events_sub_config cfg = {
        .endpoint = ep, .replay_endpoint = replay, .peer = peer, .max_pending = max_pending};
    struct kvn_events_sub *s = NULL;
    struct kvn_err err;
    if (kvn_events_sub_create(zctx, g, &cfg, &s, &err) < 0)
        fail_msg("sub: %s", err.msg);
    return s;
}

/* Live follower and late joiner end with the index of direct application. */
static void test_live_and_late_join_converge(void **state)
{
    (void)state;
    struct kvn_gindex *ref, *g1, *g2;
    struct kvn_gindex_config gc = {.max_peers = 4};
    assert_int_equal(kvn_gindex_create(&gc, &ref, NULL), 0);
    assert_int_equal(kvn_gindex_create(&gc, &g1, NULL), 0);
    assert_int_equal(kvn_gindex_create(&gc, &g2, NULL), 0);
    struct kvn_events_pub *pub = make_pub(0);
    struct kvn_events_sub *subs[2];
    subs[0] = make_sub(g1, 2, kvn_events_pub_endpoint(pub), kvn_events_replay_endpoint(pub), 0);
    pump_until(pub, subs, 1, 0); /* join replay of an empty history done */
    publish(pub, ref, 0, 50);
    pump_until(pub, subs, 1, 50);
    assert_same_index(g1, 2, ref, 0);

    subs[1] = make_sub(g2, 3, kvn_events_pub_endpoint(pub), kvn_events_replay_endpoint(pub), 0);
    pump_until(pub, subs + 1, 1, 50);
    assert_same_index(g2, 3, ref, 0);
    publish(pub, ref, 50, 70);
    pump_until(pub, subs, 2, 70);
    assert_same_index(g1, 2, ref, 0);
    assert_same_index(g2, 3, ref, 0);
    assert_same_index(ref, 0, g1, 2);

    struct kvn_events_sub_stats st;
    kvn_events_sub_get_stats(subs[1], &st);
    assert_int_equal(st.next_seq, 70);
    assert_int_equal(st.batches_applied, 70);
    assert_int_equal(st.malformed + st.bad_frames + st.lost + st.apply_errors, 0);
    assert_int_equal(st.replay_batches, 50);
    kvn_events_sub_get_stats(subs[0], &st);
    assert_int_equal(st.batches_applied, 70);
    assert_int_equal(st.lost, 0);
    /* Prefix query through the replicated index: the last batch's GPU sequence. */
    struct wl w;
    workload(69, &w);
    struct kvn_gindex_match m;
    assert_int_equal(
        kvn_gindex_best_prefix(g2, w.seq[0].hash, 3, KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL),
        0);
    assert_true(m.found);
    assert_int_equal(m.peer, 3);
    assert_int_equal(m.pages, 3);
    kvn_events_sub_destroy(subs[0]);
    kvn_events_sub_destroy(subs[1]);
    kvn_events_pub_destroy(pub);
    kvn_gindex_destroy(ref);
    kvn_gindex_destroy(g1);
    kvn_gindex_destroy(g2);
    DONE();
}

/* A live stream the test drives: an XPUB, so that we can wait for the subscription. */
static void *fake_pub(char *ep, size_t cap)
{
    void *x = zmq_socket(zctx, ZMQ_XPUB);
    int zero = 0;
    zmq_setsockopt(x, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(zmq_bind(x, "tcp://127.0.0.1:*"), 0);
    size_t len = cap;
    assert_int_equal(zmq_getsockopt(x, ZMQ_LAST_ENDPOINT, ep, &len), 0);
    return x;
}

static void wait_subscribed(void *x, struct kvn_events_pub *pub, struct kvn_events_sub *s)
{
    for (int i = 0; i < 500; i++) {
        uint8_t buf[16];
        if (zmq_recv(x, buf, sizeof(buf), ZMQ_DONTWAIT) >= 1 && buf[0] == 1)
            return;
        pump(pub, &s, 1, 10);
    }
    fail_msg("subscription never arrived");
}

static void send_live(void *x, uint64_t seq, const uint8_t *p, size_t len, int nframes)
{
    uint8_t sb[8];
    for (int i = 7; i >= 0; i--, seq >>= 8)
        sb[i] = (uint8_t)seq;
    if (nframes >= 3)
        zmq_send(x, "", 0, ZMQ_SNDMORE);
    zmq_send(x, sb, 8, ZMQ_SNDMORE);
    zmq_send(x, p, len, 0);
}

/* Batch b's payload sent live as seq (three frames, as the publisher sends them). */
static void send_payload(void *x, uint64_t seq, uint32_t b)
{
    static uint8_t p[1 << 16];
    size_t len = payload_of(b, p, sizeof(p));
    send_live(x, seq, p, len, 3);
}

/*
 * A subscriber (peer 1, index g) on a fake live stream x with the real publisher's replay
 * channel: `joined` batches published (and applied to ref), the subscriber caught up by replay
 * and subscribed to x.  The tests then send live batches themselves.
 */
struct fake_rig {
    struct kvn_gindex *ref, *g;
    struct kvn_events_pub *pub;
    struct kvn_events_sub *s;
    void *x;
    char ep[256];
};

static void fake_rig_start(struct fake_rig *r, uint32_t joined, uint32_t max_pending)
{
    assert_int_equal(kvn_gindex_create(NULL, &r->ref, NULL), 0);
    assert_int_equal(kvn_gindex_create(NULL, &r->g, NULL), 0);
    r->pub = make_pub(0);
    publish(r->pub, r->ref, 0, joined);
    r->x = fake_pub(r->ep, sizeof(r->ep));
    r->s = make_sub(r->g, 1, r->ep, kvn_events_replay_endpoint(r->pub), max_pending);
    pump_until(r->pub, &r->s, 1, joined);
    wait_subscribed(r->x, r->pub, r->s);
}

static void fake_rig_destroy(struct fake_rig *r)
{
    zmq_close(r->x);
    kvn_events_sub_destroy(r->s);
    kvn_events_pub_destroy(r->pub);
    kvn_gindex_destroy(r->ref);
    kvn_gindex_destroy(r->g);
}

/* seq 5 live, then 8 live: the gap 6..7 is replayed from the publisher's history. */
static void test_gap_repaired_by_replay(void **state)
{
    (void)state;
    struct fake_rig r;
    fake_rig_start(&r, 5, 0);
    publish(r.pub, r.ref, 5, 10);

    send_payload(r.x, 5, 5);
    send_payload(r.x, 8, 8);
    pump_until(r.pub, &r.s, 1, 10);
    struct kvn_events_sub_stats st;
    kvn_events_sub_get_stats(r.s, &st);
    assert_int_equal(st.next_seq, 10);
    assert_int_equal(st.gaps, 1);
    assert_int_equal(st.replays_requested, 2); /* join + gap */
    assert_int_equal(st.live_batches, 2);
    assert_int_equal(st.batches_applied, 10);
    assert_int_equal(st.lost, 0);
    assert_true(st.duplicates >= 1); /* the held 8 came again by replay */
    assert_same_index(r.g, 1, r.ref, 0);
    assert_same_index(r.ref, 0, r.g, 1);

    /* Live duplicates of old batches change nothing. */
    send_payload(r.x, 3, 3);
    for (int i = 0; i < 200; i++) {
        pump(r.pub, &r.s, 1, 10);
        struct kvn_events_sub_stats st2;
        kvn_events_sub_get_stats(r.s, &st2);
        if (st2.live_batches == 3)
            break;
    }
    struct kvn_events_sub_stats st3;
    kvn_events_sub_get_stats(r.s, &st3);
    assert_int_equal(st3.live_batches, 3);
    assert_int_equal(st3.duplicates, st.duplicates + 1);
    assert_int_equal(st3.next_seq, 10);
    fake_rig_destroy(&r);
    DONE();
}

/* History of 4: what fell out of it is lost (counted), the stream goes on. */
static void test_lost_history(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    struct kvn_events_pub *pub = make_pub(4);
    publish(pub, NULL, 0, 10); /* history 6..9 */
    char ep[256];
    void *x = fake_pub(ep, sizeof(ep));
    struct kvn_events_sub *s = make_sub(g, 0, ep, kvn_events_replay_endpoint(pub), 0);
    pump_until(pub, &s, 1, 10);
    struct kvn_events_sub_stats st;
    kvn_events_sub_get_stats(s, &st);
    assert_int_equal(st.lost, 6);
    assert_int_equal(st.batches_applied, 4);
    wait_subscribed(x, pub, s);

    publish(pub, NULL, 10, 20); /* history 16..19 */
    send_payload(x, 19, 19);
    pump_until(pub, &s, 1, 20);
    kvn_events_sub_get_stats(s, &st);
    assert_int_equal(st.lost, 12);
    assert_int_equal(st.batches_applied, 8);
    assert_int_equal(st.gaps, 1);

    /* A live batch far ahead of what the publisher has: the replay brings nothing, so the
     * missing range is declared lost and the held batch applies. */
    send_payload(x, 30, 31);
    pump_until(pub, &s, 1, 31);
    kvn_events_sub_get_stats(s, &st);
    assert_int_equal(st.lost, 22);
    assert_int_equal(st.batches_applied, 9);
    assert_int_equal(st.gaps, 2);
    assert_int_equal(st.next_seq, 31);
    zmq_close(x);
    kvn_events_sub_destroy(s);
    kvn_events_pub_destroy(pub);
    kvn_gindex_destroy(g);
    DONE();
}

/* Garbage on the live stream and on the replay channel is counted and never applied. */
static void test_malformed_input_counted(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    char ep[256], rep[256];
    void *x = fake_pub(ep, sizeof(ep));
    void *router = zmq_socket(zctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
    size_t rl = sizeof(rep);
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, rep, &rl);
    struct kvn_events_sub *s = make_sub(g, 0, ep, rep, 0);

    /* The join request reaches our router: [id, "", 8 bytes of 0]. */
    uint8_t id[256], fr[64];
    zmq_pollitem_t it = {.socket = router, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    int idl = zmq_recv(router, id, sizeof(id), 0);
    assert_true(idl > 0);
    assert_int_equal(zmq_recv(router, fr, sizeof(fr), 0), 0);
    assert_int_equal(zmq_recv(router, fr, sizeof(fr), 0), 8);
    static const uint8_t zero8[8];
    assert_memory_equal(fr, zero8, 8);

    static uint8_t p[1 << 16];
    size_t len = payload_of(1, p, sizeof(p));
    uint8_t s2[8] = {0, 0, 0, 0, 0, 0, 0, 2}, s3[8] = {0, 0, 0, 0, 0, 0, 0, 3};
    uint8_t endm[8];
    memset(endm, 0xff, 8);
    /* Replies: bad layout; seq 2 with a garbage payload; seq 3 good; an end marker with a
     * payload (bad); the end marker. */
    zmq_send(router, id, (size_t)idl, ZMQ_SNDMORE);
    zmq_send(router, "", 0, ZMQ_SNDMORE);
    zmq_send(router, "abc", 3, 0);
    zmq_send(router, id, (size_t)idl, ZMQ_SNDMORE);
    zmq_send(router, "", 0, ZMQ_SNDMORE);
    zmq_send(router, s2, 8, ZMQ_SNDMORE);
    zmq_send(router, "\x93\xcb", 2, 0);
    zmq_send(router, id, (size_t)idl, ZMQ_SNDMORE);
    zmq_send(router, "", 0, ZMQ_SNDMORE);
    zmq_send(router, s3, 8, ZMQ_SNDMORE);
    zmq_send(router, p, len, 0);
    zmq_send(router, id, (size_t)idl, ZMQ_SNDMORE);
    zmq_send(router, "", 0, ZMQ_SNDMORE);
    zmq_send(router, endm, 8, ZMQ_SNDMORE);
    zmq_send(router, "x", 1, 0);
    zmq_send(router, id, (size_t)idl, ZMQ_SNDMORE);
    zmq_send(router, "", 0, ZMQ_SNDMORE);
    zmq_send(router, endm, 8, ZMQ_SNDMORE);
    zmq_send(router, "", 0, 0);
    pump_until(NULL, &s, 1, 4);
    struct kvn_events_sub_stats st;
    kvn_events_sub_get_stats(s, &st);
    assert_int_equal(st.bad_frames, 2);
    assert_int_equal(st.malformed, 1);
    /* The last refusal was the end marker carrying a payload. */
    assert_non_null(strstr(kvn_events_sub_last_error(s), "end marker"));
    assert_int_equal(st.lost, 2); /* history began at 2 */
    assert_int_equal(st.batches_applied, 1);
    struct kvn_gindex_peer_stats ps;
    kvn_gindex_peer_stats(g, 0, &ps, NULL);
    assert_int_equal(ps.blocks[KVN_MEDIUM_GPU], 3);
    assert_int_equal(ps.blocks[KVN_MEDIUM_CPU_PINNED], 2);

    /* Live: wrong frame count, 4-byte seq, garbage payload at seq 4, then good seq 5. */
    wait_subscribed(x, NULL, s);
    zmq_send(x, "", 0, ZMQ_SNDMORE);
    zmq_send(x, p, len, 0);
    zmq_send(x, "", 0, ZMQ_SNDMORE);
    zmq_send(x, "abcd", 4, ZMQ_SNDMORE);
    zmq_send(x, p, len, 0);
    uint8_t junk[300];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    send_live(x, 4, junk, sizeof(junk), 3);
    size_t len2 = payload_of(2, p, sizeof(p));
    send_live(x, 5, p, len2, 3);
    pump_until(NULL, &s, 1, 6);
    kvn_events_sub_get_stats(s, &st);
    assert_int_equal(st.bad_frames, 4);
    assert_int_equal(st.malformed, 2);
    assert_non_null(strstr(kvn_events_sub_last_error(s), "malformed event batch at byte"));
    assert_int_equal(st.batches_applied, 2);
    assert_int_equal(st.gaps, 0);
    zmq_close(x);
    zmq_close(router);
    kvn_events_sub_destroy(s);
    kvn_gindex_destroy(g);
    DONE();
}

struct batch_log {
    int n;
    uint64_t seq[64];
    double ts[64];
    uint32_t events[64];
};

static void log_batch(void *ctx, uint64_t seq, double ts, uint32_t n_events)
{
    struct batch_log *l = ctx;
    if (l->n < 64) {
        l->seq[l->n] = seq;
        l->ts[l->n] = ts;
        l->events[l->n] = n_events;
    }
    l->n++;
}

/* vLLM flavour end to end: map form, a topic, the topic frame in replay replies. */
static void test_map_topic_converge(void **state)
{
    (void)state;
    struct kvn_gindex *ref, *g;
    assert_int_equal(kvn_gindex_create(NULL, &ref, NULL), 0);
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    struct kvn_events_pub_config cfg = {.endpoint = "tcp://127.0.0.1:*",
                                        .replay_endpoint = "tcp://127.0.0.1:*",
                                        .topic = "kv-events",
                                        .format = KVN_EVENTS_FORMAT_MAP,
                                        .replay_topic = true,
                                        .dp_rank = 3,
                                        .linger_ms = 0};
    struct kvn_events_pub *pub;
    assert_int_equal(kvn_events_pub_create(zctx, &cfg, &pub, NULL), 0);
    publish(pub, ref, 0, 10);
    struct batch_log log = {0};
    struct kvn_events_sub_config sc = {.endpoint = kvn_events_pub_endpoint(pub),
                                       .replay_endpoint = kvn_events_replay_endpoint(pub),
                                       .topic = "kv-events",
                                       .peer = 7,
                                       .on_batch = log_batch,
                                       .on_batch_ctx = &log};
    struct kvn_events_sub *s;
    assert_int_equal(kvn_events_sub_create(zctx, g, &sc, &s, NULL), 0);
    pump_until(pub, &s, 1, 10);
    publish(pub, ref, 10, 20);
    pump_until(pub, &s, 1, 20);
    assert_same_index(g, 7, ref, 0);
    assert_same_index(ref, 0, g, 7);
    struct kvn_events_sub_stats st;
    kvn_events_sub_get_stats(s, &st);
    assert_int_equal(st.batches_applied, 20);
    assert_int_equal(st.bad_frames + st.malformed + st.lost, 0);
    assert_true(st.last_ts == 19.0);
    /* The callback saw every batch once, in order, with the publisher's ts and counts. */
    assert_int_equal(log.n, 20);
    for (int i = 0; i < 20; i++) {
        struct wl w;
        workload((uint32_t)i, &w);
        assert_int_equal(log.seq[i], (uint64_t)i);
        assert_true(log.ts[i] == (double)i);
        assert_int_equal(log.events[i], (uint32_t)w.n);
    }
    kvn_events_sub_destroy(s);
    kvn_events_pub_destroy(pub);
    kvn_gindex_destroy(ref);
    kvn_gindex_destroy(g);
    DONE();
}

/* A burst of out-of-order live batches with room to hold only one: the rest is counted
 * (dropped from the hold queue, or duplicates once the replay went through) and the
 * replay still brings the index to the publisher's state. */
static void test_gap_burst_small_hold(void **state)
{
    (void)state;
    struct fake_rig r;
    fake_rig_start(&r, 2, 1);
    publish(r.pub, r.ref, 2, 10);
    for (uint64_t q = 4; q < 8; q++)
        send_payload(r.x, q, (uint32_t)q);
    pump_until(r.pub, &r.s, 1, 10);
    /* Let every live message arrive (bounded) before reading the counters. */
    struct kvn_events_sub_stats st;
    for (int i = 0; i < 200; i++) {
        kvn_events_sub_get_stats(r.s, &st);
        if (st.live_batches == 4)
            break;
        pump(r.pub, &r.s, 1, 10);
    }
    assert_int_equal(st.live_batches, 4);
    assert_int_equal(st.next_seq, 10);
    assert_int_equal(st.lost, 0);
    assert_true(st.pending_dropped + st.duplicates >= 3);
    assert_same_index(r.g, 1, r.ref, 0);
    assert_same_index(r.ref, 0, r.g, 1);
    fake_rig_destroy(&r);
    DONE();
}

/* A peer that restarted: rejoin drops what we knew and relearns its new history. */
static void test_rejoin(void **state)
{
    (void)state;
    struct kvn_gindex *ref, *g;
    assert_int_equal(kvn_gindex_create(NULL, &ref, NULL), 0);
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    struct kvn_events_pub *pub = make_pub(0);
    char ep[256], rep[256];
    snprintf(ep, sizeof(ep), "%s", kvn_events_pub_endpoint(pub));
    snprintf(rep, sizeof(rep), "%s", kvn_events_replay_endpoint(pub));
    publish(pub, NULL, 0, 12);
    struct kvn_events_sub *s = make_sub(g, 5, ep, rep, 0);
    pump_until(pub, &s, 1, 12);
    struct kvn_gindex_peer_stats ps;
    kvn_gindex_peer_stats(g, 5, &ps, NULL);
    assert_true(ps.blocks[KVN_MEDIUM_GPU] > 0);
    kvn_events_pub_destroy(pub);

    /* The restarted peer: same endpoints, sequence from 0, other content. */
    struct kvn_events_pub_config cfg = {.endpoint = ep, .replay_endpoint = rep, .linger_ms = 0};
    pub = NULL;
    for (int i = 0; i < 100 && !pub; i++) /* the port may take a moment to be free again */
        if (kvn_events_pub_create(zctx, &cfg, &pub, NULL) < 0)
            pump(NULL, &s, 1, 20);
    assert_non_null(pub);
    publish(pub, ref, 40, 43);
    assert_int_equal(kvn_events_sub_rejoin(s, NULL), 0);
    assert_non_null(kvn_events_sub_socket(s));
    assert_non_null(kvn_events_sub_replay_socket(s));
    pump_until(pub, &s, 1, 3);
    assert_same_index(g, 5, ref, 0);
    assert_same_index(ref, 0, g, 5);
    struct kvn_events_sub_stats st;
    kvn_events_sub_get_stats(s, &st);
    uint64_t asked = st.replays_requested;
    assert_int_equal(kvn_events_sub_retry_replay(s, NULL), 0);
    pump_until(pub, &s, 1, 3);
    kvn_events_sub_get_stats(s, &st);
    assert_int_equal(st.replays_requested, asked + 1);
    assert_int_equal(st.next_seq, 3);
    assert_same_index(g, 5, ref, 0);
    kvn_events_sub_destroy(s);
    kvn_events_pub_destroy(pub);
    kvn_gindex_destroy(ref);
    kvn_gindex_destroy(g);
    DONE();
}

static void test_errors(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    struct kvn_gindex_config gc = {.max_peers = 2};
    assert_int_equal(kvn_gindex_create(&gc, &g, NULL), 0);
    struct kvn_events_sub_config cfg = {.endpoint = "tcp://127.0.0.1:1", .peer = 1};
    struct kvn_events_sub *s = NULL;
    struct kvn_err err;
    assert_int_equal(kvn_events_sub_create(NULL, g, &cfg, &s, &err), -EINVAL);
    assert_int_equal(kvn_events_sub_create(zctx, NULL, &cfg, &s, &err), -EINVAL);
    assert_int_equal(kvn_events_sub_create(zctx, g, NULL, &s, &err), -EINVAL);
    assert_int_equal(kvn_events_sub_create(zctx, g, &cfg, NULL, &err), -EINVAL);
    struct kvn_events_sub_config c2 = cfg;
    c2.endpoint = NULL;
    assert_int_equal(kvn_events_sub_create(zctx, g, &c2, &s, &err), -EINVAL);
    c2 = cfg;
    c2.replay_endpoint = "";
    assert_int_equal(kvn_events_sub_create(zctx, g, &c2, &s, &err), -EINVAL);
    c2 = cfg;
    c2.peer = 2;
    assert_int_equal(kvn_events_sub_create(zctx, g, &c2, &s, &err), -EINVAL);
    c2 = cfg;
    c2.max_pending = KVN_EVENTS_SUB_MAX_PENDING + 1;
    assert_int_equal(kvn_events_sub_create(zctx, g, &c2, &s, &err), -EINVAL);
    c2 = cfg;
    c2.endpoint = "bogus://x";
    assert_true(kvn_events_sub_create(zctx, g, &c2, &s, &err) < 0);
    assert_non_null(strstr(err.msg, "bogus://x"));
    c2 = cfg;
    c2.replay_endpoint = "bogus://y";
    assert_true(kvn_events_sub_create(zctx, g, &c2, &s, &err) < 0);
    assert_non_null(strstr(err.msg, "bogus://y"));
    assert_null(s);
    assert_int_equal(kvn_gindex_active_peers(g), 0); /* refusals activated nobody */

    /* No replay endpoint: handle works, retry is not supported. */
    assert_int_equal(kvn_events_sub_create(zctx, g, &cfg, &s, &err), 0);
    assert_null(kvn_events_sub_replay_socket(s));
    assert_int_equal(kvn_events_sub_handle(s, &err), 0);
    assert_int_equal(kvn_events_sub_retry_replay(s, &err), -ENOTSUP);
    assert_int_equal(kvn_events_sub_rejoin(s, &err), 0);
    assert_int_equal(kvn_events_sub_handle(NULL, &err), -EINVAL);
    assert_int_equal(kvn_events_sub_retry_replay(NULL, &err), -EINVAL);
    assert_int_equal(kvn_events_sub_rejoin(NULL, &err), -EINVAL);
    assert_null(kvn_events_sub_socket(NULL));
    assert_null(kvn_events_sub_replay_socket(NULL));
    struct kvn_events_sub_stats st;
    kvn_events_sub_get_stats(NULL, &st);
    assert_int_equal(st.next_seq, 0);
    kvn_events_sub_get_stats(s, NULL);
    assert_string_equal(kvn_events_sub_last_error(s), "");
    assert_string_equal(kvn_events_sub_last_error(NULL), "");
    kvn_events_sub_destroy(s);
    kvn_events_sub_destroy(NULL);
    kvn_gindex_destroy(g);
    DONE();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_live_and_late_join_converge, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_gap_repaired_by_replay, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_lost_history, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_input_counted, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_map_topic_converge, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_gap_burst_small_hold, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_rejoin, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_errors, evh_setup, evh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
