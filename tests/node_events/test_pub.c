/*
 * test_pub.c - the KV-event publisher over real ZMQ sockets on 127.0.0.1, checked by the
 * independent reference consumer (../shared/tools/kv_events_consumer.py, run with
 * /usr/bin/python3): live delivery, replay on join, history bound, topic and map form; plus
 * the raw replay protocol (end marker, start in the middle/past the end, malformed requests
 * counted), overflow counted on a full subscriber, the sink, and every error path.
 *
 * Every wait is bounded (poll loops with an iteration cap); nothing is timed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "ev_helpers.h"
#include "node/events/event_pub.h"

/* Batch b of the workload: a 3-page sequence on GPU, its first 2 pages on CPU_PINNED, and
 * every third batch the GPU copies of pages 1..2 removed again. */
static void add_batch_events(struct kvn_events_pub *pub, uint32_t b)
{
    struct evh_seq s;
    evh_make_seq(&s, 1 + b, 3);
    for (uint32_t p = 0; p < 3; p++) {
        struct kvn_kv_event ev = evh_stored(&s, p, KVN_MEDIUM_GPU);
        assert_int_equal(kvn_events_add(pub, &ev, NULL), 0);
    }
    for (uint32_t p = 0; p < 2; p++) {
        struct kvn_kv_event ev = evh_stored(&s, p, KVN_MEDIUM_CPU_PINNED);
        assert_int_equal(kvn_events_add(pub, &ev, NULL), 0);
    }
    if (b % 3 == 2) {
        struct kvn_kv_event ev = evh_removed(&s, 1, KVN_MEDIUM_GPU);
        assert_int_equal(kvn_events_add(pub, &ev, NULL), 0);
    }
}

static void publish(struct kvn_events_pub *pub, uint32_t from, uint32_t count)
{
    for (uint32_t b = from; b < from + count; b++) {
        add_batch_events(pub, b);
        assert_int_equal(kvn_events_flush(pub, 1700000000.0 + b, NULL), 1);
    }
}

/* Events in batches [from, from+count): 5 each plus one removal every third. */
static unsigned stored_in(uint32_t from, uint32_t count)
{
    return 5 * count;
}

static unsigned removed_in(uint32_t from, uint32_t count)
{
    unsigned n = 0;
    for (uint32_t b = from; b < from + count; b++)
        n += b % 3 == 2;
    return n;
}

struct consumer {
    pid_t pid;
    bool replay;
    uint64_t served_before;
    char out[64], ready[64];
};

static void start_consumer(struct consumer *c, struct kvn_events_pub *pub, const char *topic,
                           bool replay)
{
    const char *py = getenv("KVN_CONSUMER");
    if (!py || access(py, R_OK) != 0 || access("/usr/bin/python3", X_OK) != 0) {
        print_message(
            "skipping: reference consumer or /usr/bin/python3 missing (KVN_CONSUMER=%s)\n",
            py ? py : "unset");
        kvn_events_pub_destroy(pub);
        DONE();
        skip();
    }
    snprintf(c->out, sizeof(c->out), "/tmp/kvn_evtest_out.%d", (int)getpid());
    snprintf(c->ready, sizeof(c->ready), "/tmp/kvn_evtest_ready.%d", (int)getpid());
    unlink(c->ready);
    c->replay = replay;
    struct kvn_events_pub_stats st;
    kvn_events_pub_get_stats(pub, &st);
    c->served_before = st.replay_served + st.replay_truncated;
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        int fd = open(c->out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        char *argv[20];
        int a = 0;
        argv[a++] = "/usr/bin/python3";
        argv[a++] = (char *)py;
        argv[a++] = "--endpoint";
        argv[a++] = (char *)kvn_events_pub_endpoint(pub);
        if (replay) {
            argv[a++] = "--replay";
            argv[a++] = (char *)kvn_events_replay_endpoint(pub);
        }
        argv[a++] = "--topic";
        argv[a++] = (char *)topic;
        argv[a++] = "--page-size";
        argv[a++] = "4";
        argv[a++] = "--seconds";
        argv[a++] = "1.5";
        argv[a++] = "--ready-file";
        argv[a++] = c->ready;
        argv[a] = NULL;
        execv(argv[0], argv);
        _exit(127);
    }
}

/*
 * Runs the publisher's side of the loop while the consumer lives: serves replay, and once
 * the consumer is subscribed publishes `live` batches starting at batch `from`.  Returns the
 * consumer's exit status; its JSON summary is read into summary.
 */
static int run_consumer(struct consumer *c, struct kvn_events_pub *pub, uint32_t from,
                        uint32_t live, char *summary, size_t cap)
{
    bool published = false;
    int status = -1;
    for (int iter = 0; iter < 600; iter++) { /* at most ~30 s */
        zmq_pollitem_t it = {.socket = kvn_events_replay_socket(pub), .events = ZMQ_POLLIN};
        if (it.socket) {
            zmq_poll(&it, 1, 50);
            if (it.revents & ZMQ_POLLIN)
                assert_true(kvn_events_handle_replay(pub, NULL) >= 0);
        } else {
            usleep(50 * 1000);
        }
        /* Live batches go out once the consumer is subscribed and, when it replays, once its
         * replay was served, so that what it sees live and by replay is deterministic. */
        struct kvn_events_pub_stats st;
        kvn_events_pub_get_stats(pub, &st);
        bool replayed = !c->replay || st.replay_served + st.replay_truncated > c->served_before;
        if (!published && replayed && access(c->ready, F_OK) == 0 &&
            kvn_events_pub_subscriptions(pub) >= 1) {
            publish(pub, from, live);
            published = true;
        }
        pid_t r = waitpid(c->pid, &status, WNOHANG);
        if (r == c->pid)
            break;
    }
    if (waitpid(c->pid, NULL, WNOHANG) == 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, &status, 0);
        fail_msg("consumer did not finish");
    }
    FILE *f = fopen(c->out, "r");
    assert_non_null(f);
    size_t n = fread(summary, 1, cap - 1, f);
    summary[n] = 0;
    fclose(f);
    unlink(c->out);
    unlink(c->ready);
    assert_true(published);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* start_consumer + run_consumer; fails the test unless the consumer exits 0. */
static void consume(struct kvn_events_pub *pub, const char *topic, bool replay, uint32_t from,
                    uint32_t live, char *summary, size_t cap)
{
    struct consumer c;
    start_consumer(&c, pub, topic, replay);
    int rc = run_consumer(&c, pub, from, live, summary, cap);
    if (rc != 0)
        fail_msg("consumer failed (%d): %s", rc, summary);
}

static void expect_in(const char *summary, const char *needle)
{
    if (!strstr(summary, needle))
        fail_msg("consumer summary lacks '%s': %s", needle, summary);
}

static struct kvn_events_pub *make_pub(enum kvn_events_format fmt, uint32_t steps,
                                       const char *topic, bool replay_topic)
{
    struct kvn_events_pub_config cfg = {.endpoint = "tcp://127.0.0.1:*",
                                        .replay_endpoint = "tcp://127.0.0.1:*",
                                        .topic = topic,
                                        .format = fmt,
                                        .buffer_steps = steps,
                                        .replay_topic = replay_topic,
                                        .linger_ms = 0};
    struct kvn_events_pub *pub = NULL;
    struct kvn_err err;
    int rc = kvn_events_pub_create(zctx, &cfg, &pub, &err);
    if (rc < 0)
        fail_msg("create: %s", err.msg);
    assert_non_null(pub);
    assert_non_null(strstr(kvn_events_pub_endpoint(pub), "tcp://127.0.0.1:"));
    return pub;
}

/* Join with replay of 12 earlier batches, then 30 live ones: all 42, no gap, no error. */
static void test_consumer_replay_and_live(void **state)
{
    (void)state;
    struct kvn_events_pub *pub = make_pub(KVN_EVENTS_FORMAT_ARRAY, 0, "", false);
    publish(pub, 0, 12);
    char summary[4096];
    consume(pub, "", true, 12, 30, summary, sizeof(summary));
    expect_in(summary, "\"batches\": 42");
    expect_in(summary, "\"last_seq\": 41");
    expect_in(summary, "\"gaps\": 0");
    expect_in(summary, "\"errors\": []");
    char want[128];
    snprintf(want, sizeof(want), "\"BlockStored\": %u, \"BlockRemoved\": %u", stored_in(0, 42),
             removed_in(0, 42));
    expect_in(summary, want);
    struct kvn_events_pub_stats st;
    kvn_events_pub_get_stats(pub, &st);
    assert_int_equal(st.next_seq, 42);
    assert_int_equal(st.batches, 42);
    assert_int_equal(st.events, stored_in(0, 42) + removed_in(0, 42));
    assert_int_equal(st.replay_served, 1);
    assert_int_equal(st.replay_batches, 12);
    assert_int_equal(st.replay_refused, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.history, 42);
    kvn_events_pub_destroy(pub);
    DONE();
}

/* History of 8: a late joiner replays only the 8 newest of 20, then follows live. */
static void test_consumer_history_bound(void **state)
{
    (void)state;
    struct kvn_events_pub *pub = make_pub(KVN_EVENTS_FORMAT_ARRAY, 8, "", false);
    publish(pub, 0, 20);
    struct kvn_events_pub_stats st;
    kvn_events_pub_get_stats(pub, &st);
    assert_int_equal(st.history, 8);
    char summary[4096];
    consume(pub, "", true, 20, 5, summary, sizeof(summary));
    expect_in(summary, "\"batches\": 13");
    expect_in(summary, "\"last_seq\": 24");
    expect_in(summary, "\"gaps\": 0");
    char want[128];
    snprintf(want, sizeof(want), "\"BlockStored\": %u, \"BlockRemoved\": %u", stored_in(12, 13),
             removed_in(12, 13));
    expect_in(summary, want);
    kvn_events_pub_get_stats(pub, &st);
    assert_int_equal(st.replay_batches, 8);
    assert_int_equal(st.history, 8);
    kvn_events_pub_destroy(pub);
    DONE();
}

/* vLLM flavour: map form, a topic, topic frame in replay replies. */
static void test_consumer_map_topic(void **state)
{
    (void)state;
    struct kvn_events_pub *pub = make_pub(KVN_EVENTS_FORMAT_MAP, 0, "kv@node1", true);
    publish(pub, 0, 4);
    char summary[4096];
    consume(pub, "kv@node1", true, 4, 6, summary, sizeof(summary));
    expect_in(summary, "\"batches\": 10");
    expect_in(summary, "\"last_seq\": 9");
    expect_in(summary, "\"errors\": []");
    kvn_events_pub_destroy(pub);
    DONE();
}

/* Live only (no replay endpoint): the consumer sees exactly the live batches. */
static void test_consumer_live_only(void **state)
{
    (void)state;
    struct kvn_events_pub_config cfg = {.endpoint = "tcp://127.0.0.1:*", .linger_ms = 0};
    struct kvn_events_pub *pub;
    assert_int_equal(kvn_events_pub_create(zctx, &cfg, &pub, NULL), 0);
    assert_null(kvn_events_replay_socket(pub));
    assert_null(kvn_events_replay_endpoint(pub));
    struct kvn_err err;
    assert_int_equal(kvn_events_handle_replay(pub, &err), -ENOTSUP);
    publish(pub, 0, 3); /* before anybody listens: gone */
    char summary[4096];
    consume(pub, "", false, 3, 7, summary, sizeof(summary));
    expect_in(summary, "\"batches\": 7");
    expect_in(summary, "\"last_seq\": 9");
    kvn_events_pub_destroy(pub);
    DONE();
}

/* Receives one reply message on a DEALER: frames after the empty delimiter. */
static int recv_reply(void *d, uint8_t frames[4][4096], size_t lens[4])
{
    zmq_pollitem_t it = {.socket = d, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, 5000) <= 0)
        return -1;
    int n = 0;
    int more = 1;
    while (more) {
        uint8_t buf[4096];
        int len = zmq_recv(d, buf, sizeof(buf), 0);
        assert_true(len >= 0);
        if (n < 5 && n > 0) {
            memcpy(frames[n - 1], buf, (size_t)len);
            lens[n - 1] = (size_t)len;
        } else if (n == 0) {
            assert_int_equal(len, 0); /* the delimiter */
        }
        n++;
        size_t sz = sizeof(more);
        zmq_getsockopt(d, ZMQ_RCVMORE, &more, &sz);
    }
    return n - 1;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void serve_until_idle(struct kvn_events_pub *pub, int expect_handled)
{
    int handled = 0;
    for (int i = 0; i < 100 && handled < expect_handled; i++) {
        zmq_pollitem_t it = {.socket = kvn_events_replay_socket(pub), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 50);
        int rc = kvn_events_handle_replay(pub, NULL);
        assert_true(rc >= 0);
        handled += rc;
    }
    assert_int_equal(handled, expect_handled);
}

static void test_replay_protocol(void **state)
{
    (void)state;
    struct kvn_events_pub *pub = make_pub(KVN_EVENTS_FORMAT_ARRAY, 5, "", false);
    publish(pub, 0, 9); /* history: 4..8 */
    void *d = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(zmq_connect(d, kvn_events_replay_endpoint(pub)), 0);
    uint8_t start[8] = {0, 0, 0, 0, 0, 0, 0, 6};
    assert_int_equal(zmq_send(d, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(d, start, 8, 0), 8);
    serve_until_idle(pub, 1);
    static uint8_t fr[4][4096];
    size_t len[4];
    for (uint64_t want = 6; want <= 8; want++) {
        assert_int_equal(recv_reply(d, fr, len), 2);
        assert_int_equal(len[0], 8);
        assert_int_equal(be64(fr[0]), want);
        assert_true(len[1] > 10);
        assert_int_equal(fr[1][0], 0x93);
    }
    assert_int_equal(recv_reply(d, fr, len), 2);
    assert_int_equal(be64(fr[0]), KVN_EVENTS_END_SEQ);
    assert_int_equal(len[1], 0);

    /* Start 0 is older than the history: reply from 4. */
    start[7] = 0;
    zmq_send(d, "", 0, ZMQ_SNDMORE);
    zmq_send(d, start, 8, 0);
    serve_until_idle(pub, 1);
    assert_int_equal(recv_reply(d, fr, len), 2);
    assert_int_equal(be64(fr[0]), 4);
    for (uint64_t want = 5; want <= 8; want++) {
        assert_int_equal(recv_reply(d, fr, len), 2);
        assert_int_equal(be64(fr[0]), want);
    }
    assert_int_equal(recv_reply(d, fr, len), 2);
    assert_int_equal(be64(fr[0]), KVN_EVENTS_END_SEQ);

    /* Start past the newest: the end marker alone. */
    start[7] = 100;
    zmq_send(d, "", 0, ZMQ_SNDMORE);
    zmq_send(d, start, 8, 0);
    serve_until_idle(pub, 1);
    assert_int_equal(recv_reply(d, fr, len), 2);
    assert_int_equal(be64(fr[0]), KVN_EVENTS_END_SEQ);

    /* Malformed: seq of 4 bytes; no delimiter; non-empty delimiter; one frame too many. */
    zmq_send(d, "", 0, ZMQ_SNDMORE);
    zmq_send(d, start, 4, 0);
    zmq_send(d, start, 8, 0);
    zmq_send(d, "x", 1, ZMQ_SNDMORE);
    zmq_send(d, start, 8, 0);
    zmq_send(d, "", 0, ZMQ_SNDMORE);
    zmq_send(d, start, 8, ZMQ_SNDMORE);
    zmq_send(d, "extra", 5, 0);
    serve_until_idle(pub, 4);
    zmq_pollitem_t it = {.socket = d, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 100), 0); /* no reply to any of them */

    struct kvn_events_pub_stats st;
    kvn_events_pub_get_stats(pub, &st);
    assert_int_equal(st.replay_served, 3);
    assert_int_equal(st.replay_refused, 4);
    assert_int_equal(st.replay_batches, 3 + 5);
    assert_int_equal(st.replay_truncated, 0);
    zmq_close(d);
    kvn_events_pub_destroy(pub);
    DONE();
}

/* A subscriber that never reads: the publisher never blocks and counts what it drops; the
 * dropped batches are still in the history. */
static void test_overflow_counted(void **state)
{
    (void)state;
    char ep[64];
    snprintf(ep, sizeof(ep), "inproc://kvn-events-overflow-%d", (int)getpid());
    struct kvn_events_pub_config cfg = {
        .endpoint = ep, .sndhwm = 2, .buffer_steps = 64, .linger_ms = 0};
    struct kvn_events_pub *pub;
    assert_int_equal(kvn_events_pub_create(zctx, &cfg, &pub, NULL), 0);
    void *sub = zmq_socket(zctx, ZMQ_SUB);
    int hwm = 2, zero = 0;
    zmq_setsockopt(sub, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    assert_int_equal(zmq_connect(sub, ep), 0);
    for (int i = 0; i < 500 && kvn_events_pub_subscriptions(pub) < 1; i++)
        usleep(10 * 1000);
    assert_int_equal(kvn_events_pub_subscriptions(pub), 1);
    struct kvn_events_pub_stats st;
    uint32_t b = 0;
    for (; b < 2000; b++) {
        add_batch_events(pub, b);
        assert_int_equal(kvn_events_flush(pub, 1.0, NULL), 1);
        kvn_events_pub_get_stats(pub, &st);
        if (st.dropped >= 3)
            break;
    }
    assert_true(st.dropped >= 3);
    assert_int_equal(st.batches, b + 1);
    assert_int_equal(st.next_seq, b + 1);
    /* What the subscriber got is consecutive from some point, and the rest was counted. */
    int got = 0;
    while (zmq_recv(sub, NULL, 0, ZMQ_DONTWAIT) >= 0) {
        int more;
        size_t sz = sizeof(more);
        zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &sz);
        if (!more)
            got++;
    }
    assert_true((uint64_t)got + st.dropped <= st.batches);
    assert_true(got <= 8); /* bounded by the two high-water marks */
    /* Closing the subscriber is an unsubscription. */
    zmq_close(sub);
    for (int i = 0; i < 500 && kvn_events_pub_subscriptions(pub) > 0; i++)
        usleep(10 * 1000);
    assert_int_equal(kvn_events_pub_subscriptions(pub), 0);
    sub = NULL;
    /* The dropped batches are in the history: replay could still supply them. */
    assert_int_equal(st.history, b + 1 < 64 ? b + 1 : 64);
    kvn_events_pub_destroy(pub);

    /* lossy: the same stuck subscriber, sends always "succeed", nothing counted. */
    snprintf(ep, sizeof(ep), "inproc://kvn-events-lossy-%d", (int)getpid());
    cfg.endpoint = ep;
    cfg.lossy = true;
    assert_int_equal(kvn_events_pub_create(zctx, &cfg, &pub, NULL), 0);
    sub = zmq_socket(zctx, ZMQ_SUB);
    zmq_setsockopt(sub, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    assert_int_equal(zmq_connect(sub, ep), 0);
    for (uint32_t i = 0; i < 50; i++) {
        add_batch_events(pub, i);
        assert_int_equal(kvn_events_flush(pub, 1.0, NULL), 1);
    }
    kvn_events_pub_get_stats(pub, &st);
    assert_int_equal(st.batches, 50);
    assert_int_equal(st.dropped, 0);
    got = 0;
    while (zmq_recv(sub, NULL, 0, ZMQ_DONTWAIT) >= 0) {
        int more;
        size_t sz = sizeof(more);
        zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &sz);
        if (!more)
            got++;
    }
    assert_true(got <= 8);
    zmq_close(sub);
    kvn_events_pub_destroy(pub);
    DONE();
}

static int sink_count;

static void test_sink_and_errors(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_events_pub *pub = NULL;
    struct kvn_events_pub_config cfg = {.endpoint = "tcp://127.0.0.1:*", .linger_ms = 0};
    assert_int_equal(kvn_events_pub_create(NULL, &cfg, &pub, &err), -EINVAL);
    assert_int_equal(kvn_events_pub_create(zctx, NULL, &pub, &err), -EINVAL);
    assert_int_equal(kvn_events_pub_create(zctx, &cfg, NULL, &err), -EINVAL);
    struct kvn_events_pub_config c2 = cfg;
    c2.endpoint = NULL;
    assert_int_equal(kvn_events_pub_create(zctx, &c2, &pub, &err), -EINVAL);
    c2 = cfg;
    c2.format = (enum kvn_events_format)3;
    assert_int_equal(kvn_events_pub_create(zctx, &c2, &pub, &err), -EINVAL);
    c2 = cfg;
    c2.buffer_steps = KVN_EVENTS_MAX_BUFFER_STEPS + 1;
    assert_int_equal(kvn_events_pub_create(zctx, &c2, &pub, &err), -EINVAL);
    c2 = cfg;
    c2.sndhwm = -1;
    assert_int_equal(kvn_events_pub_create(zctx, &c2, &pub, &err), -EINVAL);
    c2 = cfg;
    c2.replay_endpoint = "";
    assert_int_equal(kvn_events_pub_create(zctx, &c2, &pub, &err), -EINVAL);
    c2 = cfg;
    c2.endpoint = "bogus://nowhere";
    assert_true(kvn_events_pub_create(zctx, &c2, &pub, &err) < 0);
    assert_non_null(strstr(err.msg, "bogus://nowhere"));
    assert_null(pub);

    /* A port in use: the replay bind fails, the PUB bound first is released again. */
    assert_int_equal(kvn_events_pub_create(zctx, &cfg, &pub, &err), 0);
    c2 = cfg;
    c2.replay_endpoint = kvn_events_pub_endpoint(pub);
    struct kvn_events_pub *p2 = NULL;
    assert_int_equal(kvn_events_pub_create(zctx, &c2, &p2, &err), -EADDRINUSE);
    assert_null(p2);

    assert_int_equal(kvn_events_add(NULL, NULL, &err), -EINVAL);
    assert_int_equal(kvn_events_add(pub, NULL, &err), -EINVAL);
    assert_int_equal(kvn_events_flush(NULL, 0, &err), -EINVAL);
    assert_int_equal(kvn_events_flush(pub, 0, &err), 0); /* empty tick: nothing */
    assert_int_equal(kvn_events_handle_replay(NULL, &err), -EINVAL);
    assert_null(kvn_events_replay_socket(NULL));
    assert_null(kvn_events_pub_endpoint(NULL));
    assert_int_equal(kvn_events_pub_subscriptions(NULL), 0);
    struct kvn_events_pub_stats st;
    kvn_events_pub_get_stats(NULL, &st);
    assert_int_equal(st.batches, 0);
    kvn_events_pub_get_stats(pub, NULL);

    /* The sink: good events land in the batch, bad ones are counted. */
    struct kvn_kv_event_sink sink = kvn_events_sink(pub);
    assert_non_null(sink.emit);
    struct evh_seq s;
    evh_make_seq(&s, 7, 2);
    struct kvn_kv_event ev = evh_stored(&s, 0, KVN_MEDIUM_GPU);
    sink.emit(sink.ctx, &ev);
    ev.medium = (enum kvn_medium)42;
    sink.emit(sink.ctx, &ev);
    assert_int_equal(kvn_events_add(pub, &ev, &err), -EINVAL);
    assert_int_equal(kvn_events_flush(pub, 2.0, &err), 1);
    kvn_events_pub_get_stats(pub, &st);
    assert_int_equal(st.events, 1);
    assert_int_equal(st.add_errors, 1);
    assert_int_equal(st.next_seq, 1);
    struct kvn_kv_event_sink none = kvn_events_sink(NULL);
    assert_null(none.emit);
    (void)sink_count;
    kvn_events_pub_destroy(pub);
    kvn_events_pub_destroy(NULL);
    DONE();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_consumer_replay_and_live, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_history_bound, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_map_topic, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_live_only, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_replay_protocol, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_counted, evh_setup, evh_teardown),
        cmocka_unit_test_setup_teardown(test_sink_and_errors, evh_setup, evh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
