/*
 * bench_events_main.c - kvbench-events: BlockStored events encoded and published per second
 * on one core (issue 4 §6), with msgpack-c encoding the same events as the reference floor
 * measured side by side in the same run.
 *
 *   kvbench-events [--events N] [--batch N] [--page-size T] [--format array|map]
 *                  [--subscriber] [--json]
 *   kvbench-events --lag [--batches N] [--interval-us U] [--batch N] [--json]
 *
 * Three phases over the same pre-built events (distinct hashes and tokens, one page each):
 *   msgpack-c  msgpack_pack_* of each event into a msgpack_sbuffer, cleared per batch
 *   encode     kvn_events_batch_add + finish per batch (the codec alone)
 *   publish    kvn_events_add + kvn_events_flush per batch on an XPUB bound to 127.0.0.1
 *              (history ring and replay included); with --subscriber a SUB thread on the
 *              other core receives and counts the batches (the publisher never waits for it).
 *   apply      replication in: kvn_events_decode (strict) of pre-encoded batches of the
 *              same events + kvn_gindex_apply of every event (re-stores after the first
 *              round: hash-set lookups, the steady state of a converged peer)
 * --lag measures replication lag instead: a publisher flushes one batch every U µs with
 * ts = CLOCK_MONOTONIC, a kvn_events_sub on another thread (same process, TCP loopback)
 * applies them into its global index, and its on_batch callback records now - ts: the
 * delay from flush to "visible in the peer's global index".  p50/p99/max are printed.
 *
 * Rates use the publishing thread's CPU time (CLOCK_THREAD_CPUTIME_ID: "one core", robust
 * on a shared machine) and wall time; both are printed.
 */
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "node/events/event_codec.h"
#include "node/events/event_pub.h"
#include "node/events/event_sub.h"
#include "node/events/global_index.h"

#define N_DISTINCT 4096

struct opts {
    uint64_t events;
    uint32_t batch;
    uint32_t page;
    enum kvn_events_format fmt;
    bool subscriber;
    bool json;
    bool lag;
    uint32_t lag_batches;
    uint32_t interval_us;
};

static double now(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct timing {
    double cpu, wall;
};

static void t_start(struct timing *t)
{
    t->cpu = now(CLOCK_THREAD_CPUTIME_ID);
    t->wall = now(CLOCK_MONOTONIC);
}

static void t_stop(struct timing *t)
{
    t->cpu = now(CLOCK_THREAD_CPUTIME_ID) - t->cpu;
    t->wall = now(CLOCK_MONOTONIC) - t->wall;
}

static uint64_t rng = 0x2545F4914F6CDD1DULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static struct kvn_kv_event *make_events(uint32_t page, int64_t **hashes, int32_t **tokens)
{
    struct kvn_kv_event *ev = calloc(N_DISTINCT, sizeof(*ev));
    *hashes = calloc(N_DISTINCT, sizeof(int64_t));
    *tokens = calloc((size_t)N_DISTINCT * page, sizeof(int32_t));
    if (!ev || !*hashes || !*tokens) {
        fprintf(stderr, "kvbench-events: out of memory\n");
        exit(1);
    }
    for (uint32_t i = 0; i < N_DISTINCT; i++) {
        (*hashes)[i] = (int64_t)next_rand();
        for (uint32_t t = 0; t < page; t++)
            (*tokens)[(size_t)i * page + t] = (int32_t)(next_rand() % 152064); /* a vocab */
        ev[i] = (struct kvn_kv_event){.type = KVN_EV_BLOCK_STORED,
                                      .medium = (i & 1) ? KVN_MEDIUM_CPU_PINNED : KVN_MEDIUM_GPU,
                                      .hashes = &(*hashes)[i],
                                      .n_hashes = 1,
                                      .has_parent = i % 8 != 0,
                                      .parent_hash = i ? (*hashes)[i - 1] : 0,
                                      .tokens = &(*tokens)[(size_t)i * page],
                                      .n_tokens = page,
                                      .block_size = page};
    }
    return ev;
}

/* The same array-form event with msgpack-c's packer. */
static void msgpack_event(msgpack_packer *pk, const struct kvn_kv_event *ev)
{
    msgpack_pack_array(pk, 7);
    msgpack_pack_str_with_body(pk, "BlockStored", 11);
    msgpack_pack_array(pk, 1);
    msgpack_pack_int64(pk, ev->hashes[0]);
    if (ev->has_parent)
        msgpack_pack_int64(pk, ev->parent_hash);
    else
        msgpack_pack_nil(pk);
    msgpack_pack_array(pk, ev->n_tokens);
    for (uint32_t i = 0; i < ev->n_tokens; i++)
        msgpack_pack_uint32(pk, (uint32_t)ev->tokens[i]);
    msgpack_pack_uint32(pk, ev->block_size);
    msgpack_pack_nil(pk);
    const char *m = kvn_medium_name(ev->medium);
    msgpack_pack_str_with_body(pk, m, strlen(m));
}

static uint64_t sink_bytes; /* keeps the compiler from dropping work */

static void run_msgpack(const struct opts *o, const struct kvn_kv_event *ev, struct timing *t)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    t_start(t);
    for (uint64_t done = 0; done < o->events;) {
        msgpack_sbuffer_clear(&sb);
        msgpack_pack_array(&pk, 3);
        msgpack_pack_double(&pk, 1.0);
        uint32_t n = o->batch;
        if (n > o->events - done)
            n = (uint32_t)(o->events - done);
        msgpack_pack_array(&pk, n);
        for (uint32_t i = 0; i < n; i++)
            msgpack_event(&pk, &ev[(done + i) % N_DISTINCT]);
        msgpack_pack_int64(&pk, 0);
        sink_bytes += sb.size;
        done += n;
    }
    t_stop(t);
    msgpack_sbuffer_destroy(&sb);
}

static void run_encode(const struct opts *o, const struct kvn_kv_event *ev, struct timing *t)
{
    struct kvn_events_batch b;
    if (kvn_events_batch_init(&b, o->fmt, 0, NULL) < 0)
        exit(1);
    t_start(t);
    for (uint64_t done = 0; done < o->events;) {
        uint32_t n = o->batch;
        if (n > o->events - done)
            n = (uint32_t)(o->events - done);
        for (uint32_t i = 0; i < n; i++)
            if (kvn_events_batch_add(&b, &ev[(done + i) % N_DISTINCT], NULL) < 0)
                exit(1);
        const uint8_t *p;
        size_t len;
        kvn_events_batch_finish(&b, 1.0, 0, &p, &len, NULL);
        sink_bytes += len;
        kvn_events_batch_reset(&b);
        done += n;
    }
    t_stop(t);
    kvn_events_batch_fini(&b);
}

static int apply_one(void *ctx, const struct kvn_kv_event *ev)
{
    return kvn_gindex_apply(ctx, 0, ev, NULL);
}

static int run_apply(const struct opts *o, const struct kvn_kv_event *ev, struct timing *t)
{
    uint32_t per = o->batch < N_DISTINCT ? o->batch : N_DISTINCT;
    uint32_t nb = N_DISTINCT / per;
    struct kvn_events_batch *b = calloc(nb, sizeof(*b));
    const uint8_t **pl = calloc(nb, sizeof(*pl));
    size_t *len = calloc(nb, sizeof(*len));
    struct kvn_gindex *g;
    struct kvn_events_decoder d;
    if (!b || !pl || !len || kvn_gindex_create(NULL, &g, NULL) < 0)
        return 1;
    kvn_events_decoder_init(&d, NULL);
    for (uint32_t i = 0; i < nb; i++) {
        if (kvn_events_batch_init(&b[i], o->fmt, 0, NULL) < 0)
            return 1;
        for (uint32_t k = 0; k < per; k++)
            kvn_events_batch_add(&b[i], &ev[i * per + k], NULL);
        kvn_events_batch_finish(&b[i], 1.0, 0, &pl[i], &len[i], NULL);
    }
    t_start(t);
    uint64_t done = 0;
    for (uint32_t i = 0; done < o->events; i = (i + 1) % nb, done += per) {
        struct kvn_err err;
        if (kvn_events_decode(&d, pl[i], len[i], apply_one, g, NULL, &err) < 0) {
            fprintf(stderr, "kvbench-events: decode: %s\n", err.msg);
            return 1;
        }
    }
    t_stop(t);
    t->cpu = t->cpu * (double)o->events / (double)done; /* per requested event count */
    t->wall = t->wall * (double)o->events / (double)done;
    for (uint32_t i = 0; i < nb; i++)
        kvn_events_batch_fini(&b[i]);
    kvn_events_decoder_fini(&d);
    kvn_gindex_destroy(g);
    free(b);
    free(pl);
    free(len);
    return 0;
}

struct sub_thread {
    void *zctx;
    char endpoint[256];
    atomic_bool stop;
    atomic_bool ready;
    uint64_t batches;
};

static void *sub_main(void *arg)
{
    struct sub_thread *st = arg;
    void *s = zmq_socket(st->zctx, ZMQ_SUB);
    int zero = 0, hwm = 100000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    zmq_connect(s, st->endpoint);
    int tmo = 100;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    atomic_store(&st->ready, true);
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (!atomic_load(&st->stop)) {
        if (zmq_msg_recv(&m, s, 0) < 0)
            continue;
        if (!zmq_msg_more(&m))
            st->batches++;
    }
    zmq_msg_close(&m);
    zmq_close(s);
    return NULL;
}

static int run_publish(const struct opts *o, const struct kvn_kv_event *ev, struct timing *t,
                       struct kvn_events_pub_stats *ps, uint64_t *received)
{
    void *zctx = zmq_ctx_new();
    struct kvn_events_pub_config cfg = {.endpoint = "tcp://127.0.0.1:*",
                                        .replay_endpoint = "tcp://127.0.0.1:*",
                                        .format = o->fmt,
                                        .sndhwm = 100000,
                                        .linger_ms = 0};
    struct kvn_events_pub *pub;
    struct kvn_err err;
    if (kvn_events_pub_create(zctx, &cfg, &pub, &err) < 0) {
        fprintf(stderr, "kvbench-events: %s\n", err.msg);
        return 1;
    }
    struct sub_thread st = {.zctx = zctx};
    pthread_t th;
    if (o->subscriber) {
        snprintf(st.endpoint, sizeof(st.endpoint), "%s", kvn_events_pub_endpoint(pub));
        pthread_create(&th, NULL, sub_main, &st);
        while (!atomic_load(&st.ready))
            ;
        /* Let the subscription reach the publisher (ZMQ slow joiner): a few flushed
         * warm-up batches are not counted. */
        struct timespec d = {0, 200 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
    t_start(t);
    double ts = 1.0;
    for (uint64_t done = 0; done < o->events;) {
        uint32_t n = o->batch;
        if (n > o->events - done)
            n = (uint32_t)(o->events - done);
        for (uint32_t i = 0; i < n; i++)
            if (kvn_events_add(pub, &ev[(done + i) % N_DISTINCT], &err) < 0) {
                fprintf(stderr, "kvbench-events: add: %s\n", err.msg);
                return 1;
            }
        if (kvn_events_flush(pub, ts, &err) < 0) {
            fprintf(stderr, "kvbench-events: flush: %s\n", err.msg);
            return 1;
        }
        ts += 0.001;
        done += n;
    }
    t_stop(t);
    kvn_events_pub_get_stats(pub, ps);
    *received = 0;
    if (o->subscriber) {
        /* Give the subscriber a bounded moment to drain, then stop it. */
        for (int i = 0; i < 50 && st.batches < ps->batches - ps->dropped; i++) {
            struct timespec d = {0, 20 * 1000 * 1000};
            nanosleep(&d, NULL);
        }
        atomic_store(&st.stop, true);
        pthread_join(th, NULL);
        *received = st.batches;
    }
    kvn_events_pub_destroy(pub);
    zmq_ctx_term(zctx);
    return 0;
}

struct lag_thread {
    void *zctx;
    char ep[256], rep[256];
    atomic_bool stop, ready;
    double *samples;
    atomic_uint_fast64_t n; /* written by the subscriber thread, read by the publisher */
    uint64_t cap;
    atomic_int failed;
};

static void on_batch_lag(void *ctx, uint64_t seq, double ts, uint32_t n_events)
{
    (void)seq;
    (void)n_events;
    struct lag_thread *l = ctx;
    uint64_t i = atomic_load(&l->n);
    if (i < l->cap) {
        l->samples[i] = now(CLOCK_MONOTONIC) - ts;
        atomic_store(&l->n, i + 1);
    }
}

static void *lag_main(void *arg)
{
    struct lag_thread *l = arg;
    struct kvn_gindex *g;
    struct kvn_events_sub *sub;
    struct kvn_err err;
    struct kvn_events_sub_config sc = {
        .endpoint = l->ep, .replay_endpoint = l->rep, .on_batch = on_batch_lag, .on_batch_ctx = l};
    if (kvn_gindex_create(NULL, &g, &err) < 0 ||
        kvn_events_sub_create(l->zctx, g, &sc, &sub, &err) < 0) {
        fprintf(stderr, "kvbench-events: subscriber: %s\n", err.msg);
        atomic_store(&l->failed, 1);
        atomic_store(&l->ready, true);
        return NULL;
    }
    atomic_store(&l->ready, true);
    while (!atomic_load(&l->stop)) {
        zmq_pollitem_t it[2] = {
            {.socket = kvn_events_sub_socket(sub), .events = ZMQ_POLLIN},
            {.socket = kvn_events_sub_replay_socket(sub), .events = ZMQ_POLLIN}};
        zmq_poll(it, 2, 5);
        if (kvn_events_sub_handle(sub, &err) < 0) {
            fprintf(stderr, "kvbench-events: subscriber: %s\n", err.msg);
            atomic_store(&l->failed, 1);
            break;
        }
    }
    kvn_events_sub_destroy(sub);
    kvn_gindex_destroy(g);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_lag(const struct opts *o, const struct kvn_kv_event *ev)
{
    void *zctx = zmq_ctx_new();
    struct kvn_events_pub_config cfg = {.endpoint = "tcp://127.0.0.1:*",
                                        .replay_endpoint = "tcp://127.0.0.1:*",
                                        .format = o->fmt,
                                        .linger_ms = 0};
    struct kvn_events_pub *pub;
    struct kvn_err err;
    if (kvn_events_pub_create(zctx, &cfg, &pub, &err) < 0) {
        fprintf(stderr, "kvbench-events: %s\n", err.msg);
        return 1;
    }
    struct lag_thread l = {.zctx = zctx, .cap = o->lag_batches};
    l.samples = calloc(o->lag_batches, sizeof(double));
    if (!l.samples)
        return 1;
    snprintf(l.ep, sizeof(l.ep), "%s", kvn_events_pub_endpoint(pub));
    snprintf(l.rep, sizeof(l.rep), "%s", kvn_events_replay_endpoint(pub));
    pthread_t th;
    pthread_create(&th, NULL, lag_main, &l);
    while (!atomic_load(&l.ready))
        ;
    /* Wait (bounded) for the subscription, serving the subscriber's join replay. */
    for (int i = 0; i < 1000 && kvn_events_pub_subscriptions(pub) < 1; i++) {
        kvn_events_handle_replay(pub, NULL);
        struct timespec d = {0, 2 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
    uint64_t k = 0;
    for (uint32_t b = 0; b < o->lag_batches && !atomic_load(&l.failed); b++) {
        kvn_events_handle_replay(pub, NULL);
        for (uint32_t i = 0; i < o->batch; i++, k++)
            kvn_events_add(pub, &ev[k % N_DISTINCT], NULL);
        kvn_events_flush(pub, now(CLOCK_MONOTONIC), NULL);
        struct timespec d = {0, (long)o->interval_us * 1000};
        nanosleep(&d, NULL);
    }
    for (int i = 0; i < 500 && atomic_load(&l.n) < o->lag_batches && !atomic_load(&l.failed); i++) {
        kvn_events_handle_replay(pub, NULL);
        struct timespec d = {0, 2 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
    atomic_store(&l.stop, true);
    pthread_join(th, NULL);
    struct kvn_events_pub_stats ps;
    kvn_events_pub_get_stats(pub, &ps);
    uint64_t n = atomic_load(&l.n);
    qsort(l.samples, n, sizeof(double), cmp_double);
    double p50 = n ? l.samples[n / 2] * 1e6 : 0, p99 = n ? l.samples[(n * 99) / 100] * 1e6 : 0;
    double mx = n ? l.samples[n - 1] * 1e6 : 0;
    if (o->json)
        printf("{\"lag_batches\": %u, \"applied\": %llu, \"batch\": %u, \"interval_us\": %u, "
               "\"lag_p50_us\": %.1f, \"lag_p99_us\": %.1f, \"lag_max_us\": %.1f, "
               "\"dropped\": %llu}\n",
               o->lag_batches, (unsigned long long)n, o->batch, o->interval_us, p50, p99, mx,
               (unsigned long long)ps.dropped);
    else
        printf("kvbench-events --lag: %llu of %u batches of %u events applied by a peer "
               "subscriber (TCP loopback, one batch every %u us)\n"
               "  flush -> visible in the peer's global index: p50 %.1f us, p99 %.1f us, max "
               "%.1f us; dropped %llu\n",
               (unsigned long long)n, o->lag_batches, o->batch, o->interval_us, p50, p99, mx,
               (unsigned long long)ps.dropped);
    free(l.samples);
    kvn_events_pub_destroy(pub);
    zmq_ctx_term(zctx);
    return atomic_load(&l.failed) || n < o->lag_batches ? 1 : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: kvbench-events [--events N] [--batch N] [--page-size T] "
                    "[--format array|map] [--subscriber] [--json]\n"
                    "       kvbench-events --lag [--batches N] [--interval-us U] [--batch N] "
                    "[--json]\n");
}

int main(int argc, char **argv)
{
    struct opts o = {.events = 2000000,
                     .batch = 256,
                     .page = 16,
                     .fmt = KVN_EVENTS_FORMAT_ARRAY,
                     .lag_batches = 5000,
                     .interval_us = 200};
    bool batch_given = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--events") == 0 && v) {
            o.events = strtoull(v, NULL, 10);
            i++;
        } else if (strcmp(a, "--batch") == 0 && v) {
            o.batch = (uint32_t)strtoul(v, NULL, 10);
            batch_given = true;
            i++;
        } else if (strcmp(a, "--page-size") == 0 && v) {
            o.page = (uint32_t)strtoul(v, NULL, 10);
            i++;
        } else if (strcmp(a, "--format") == 0 && v) {
            struct kvn_err err;
            if (kvn_events_format_parse(v, &o.fmt, &err) < 0) {
                fprintf(stderr, "kvbench-events: %s\n", err.msg);
                return 2;
            }
            i++;
        } else if (strcmp(a, "--batches") == 0 && v) {
            o.lag_batches = (uint32_t)strtoul(v, NULL, 10);
            i++;
        } else if (strcmp(a, "--interval-us") == 0 && v) {
            o.interval_us = (uint32_t)strtoul(v, NULL, 10);
            i++;
        } else if (strcmp(a, "--lag") == 0) {
            o.lag = true;
        } else if (strcmp(a, "--subscriber") == 0) {
            o.subscriber = true;
        } else if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else {
            usage();
            return 2;
        }
    }
    if (o.events == 0 || o.batch == 0 || o.page == 0 || o.page > 4096) {
        usage();
        return 2;
    }
    if (o.lag && (o.lag_batches == 0 || o.interval_us > 1000000)) {
        usage();
        return 2;
    }
    int64_t *hashes;
    int32_t *tokens;
    struct kvn_kv_event *ev = make_events(o.page, &hashes, &tokens);
    if (o.lag) {
        if (!batch_given)
            o.batch = 16;
        int rc = run_lag(&o, ev);
        free(ev);
        free(hashes);
        free(tokens);
        return rc;
    }
    struct timing tm, te, tp, ta;
    struct kvn_events_pub_stats ps;
    uint64_t received;
    run_msgpack(&o, ev, &tm);
    run_encode(&o, ev, &te);
    if (run_apply(&o, ev, &ta) != 0)
        return 1;
    if (run_publish(&o, ev, &tp, &ps, &received) != 0)
        return 1;
    double ev_n = (double)o.events;
    if (o.json) {
        printf("{\"events\": %llu, \"batch\": %u, \"page_size\": %u, \"format\": \"%s\", "
               "\"msgpack_c_eps_cpu\": %.0f, \"encode_eps_cpu\": %.0f, "
               "\"publish_eps_cpu\": %.0f, \"publish_eps_wall\": %.0f, "
               "\"decode_apply_eps_cpu\": %.0f, "
               "\"encode_vs_msgpack_c\": %.2f, \"batches\": %llu, \"bytes\": %llu, "
               "\"dropped\": %llu, \"subscriber\": %s, \"received_batches\": %llu}\n",
               (unsigned long long)o.events, o.batch, o.page, kvn_events_format_name(o.fmt),
               ev_n / tm.cpu, ev_n / te.cpu, ev_n / tp.cpu, ev_n / tp.wall, ev_n / ta.cpu,
               tm.cpu / te.cpu, (unsigned long long)ps.batches, (unsigned long long)ps.bytes,
               (unsigned long long)ps.dropped, o.subscriber ? "true" : "false",
               (unsigned long long)received);
    } else {
        printf("kvbench-events: %llu BlockStored events, page %u tokens, batches of %u, %s "
               "form\n",
               (unsigned long long)o.events, o.page, o.batch, kvn_events_format_name(o.fmt));
        printf("  msgpack-c encode     %12.0f events/s (cpu)\n", ev_n / tm.cpu);
        printf("  kvnode encode        %12.0f events/s (cpu)   %.2fx msgpack-c\n", ev_n / te.cpu,
               tm.cpu / te.cpu);
        printf("  encode + publish     %12.0f events/s (cpu)   %12.0f events/s (wall)\n",
               ev_n / tp.cpu, ev_n / tp.wall);
        printf("  decode + apply       %12.0f events/s (cpu)   (strict decode into the global "
               "index)\n",
               ev_n / ta.cpu);
        printf("  batches %llu, payload bytes %llu (%.1f B/event), dropped %llu",
               (unsigned long long)ps.batches, (unsigned long long)ps.bytes,
               (double)ps.bytes / ev_n, (unsigned long long)ps.dropped);
        if (o.subscriber)
            printf(", subscriber received %llu", (unsigned long long)received);
        printf("\n");
    }
    free(ev);
    free(hashes);
    free(tokens);
    return sink_bytes ? 0 : 1;
}
