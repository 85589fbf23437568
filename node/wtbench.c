/*
 * kvn-wtbench - write-through throughput of a running kvnode (started with
 * --l1 SIZE): bytes of L1 -> L2 copies completed and acknowledged (events
 * published) per second, plus the node's ack-to-publish latency.
 *
 *   kvnode --l1 256M --host-pool 512M --page-bytes 1M --page-size 16 ... &
 *   kvn-wtbench -c tcp://127.0.0.1:7100 --rounds 10 --pages-per-insert 16 [--events EP] [--json]
 *
 * With --engine N the tool is also the engine: it registers an L1 region of N
 * slots in its own transport domain (same transport as the node; memory from
 * kvn_xport_mem_alloc, i.e. UCX-allocated on ucx domains) and sends
 * register_l1, so that the copies cross processes as in production; without
 * it, the node's own --l1 stand-in is used (a loopback in one process).
 *
 * A round inserts new sequences (no shared prefix) into every L1 slot, waits
 * until every write-through job is acknowledged, then resets the index (not
 * timed). --warmup N (default 1) rounds run first and are not counted: the
 * first touch of every page (page faults, the node mapping the engine's UCX
 * segment) is not the copy rate (kvbench warms up too).
 *
 * When a round ends ("end" in the JSON):
 *   stats   (default) time runs from the first insert to the stats reply that shows no job
 *           pending, polled every 200 us: a coarse mark for rounds of 7-30 ms.
 *   events  with --events tcp://HOST:PORT (the node's --events PUB endpoint): a SUB socket,
 *           connected before the first round (then a 300 ms settle, so the subscription is
 *           in place), decodes every batch (node/events/event_codec.h) and the round ends when
 *           CPU_PINNED BlockStored events (the write-through acks) have named every page the
 *           round inserted.  One stats call follows (not timed): it must show no job pending
 *           and no failed job, else the run fails.
 * Every wait is bounded (10 s per round); a timeout ends the run with a message, exit 1.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "node/events/event_codec.h"
#include "node/kvnode_client.h"
#include "transport/kvn_xport.h"

#define ROUND_LIMIT_S 10.0 /* every wait of a round */
#define SETTLE_NS     300000000L

struct engine {
    struct kvn_xport *x;
    struct kvn_xport_mr *mr;
    void *l1; /* kvn_xport_mem_alloc */
    size_t l1_len;
    int passive;   /* sleep on the wait fd instead of busy-polling */
    int plain_mem; /* L1 from mmap instead of kvn_xport_mem_alloc */
    atomic_int stop;
    pthread_t th;
};

/*
 * The engine side progresses its domain (UCX over TCP and libfabric shm need the target to):
 * it busy-polls, as kvbench's server does. On ucx+sm with kvn_xport_mem_alloc memory the
 * node's READs are one-sided (a copy out of our mapped segment; we do nothing), so there it
 * sleeps on the wait fd instead (--engine-poll auto, the default), as an inference engine
 * would, and leaves the CPU to the node; --engine-poll busy|wait forces either.
 */
static void *engine_main(void *arg)
{
    struct engine *g = arg;
    struct kvn_xport_cqe c[16];
    while (!atomic_load(&g->stop)) {
        if (g->passive)
            (void)kvn_xport_wait(g->x, 5, NULL);
        while (kvn_xport_poll(g->x, c, 16) > 0 && g->passive)
            ;
    }
    return NULL;
}

static int engine_start(struct engine *g, struct kvn_client *c, const char *transport,
                        uint64_t page_bytes, uint32_t slots, struct kvn_err *e)
{
    int rc = kvn_xport_open(transport, NULL, &g->x, e);
    if (rc < 0)
        return rc;
    size_t len = (size_t)page_bytes * slots;
    /* the memory the domain is best at (UCX-allocated on ucx: one-copy RMA over ucx+sm), as an
     * engine that registers its GPU/host L1 with the transport would use */
    void *l1;
    if (g->plain_mem) { /* --engine-mem mmap: caller memory, for A/B runs */
        l1 = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1,
                  0);
        if (l1 == MAP_FAILED)
            return kvn_err_set(e, -ENOMEM, "mmap of %zu bytes", len);
    } else if ((rc = kvn_xport_mem_alloc(g->x, len, &l1, e)) < 0) {
        return rc;
    }
    g->l1 = l1;
    g->l1_len = len;
    memset(l1, 0x5a, len);
    struct kvn_xport_mr *mr;
    uint8_t desc[KVN_XPORT_DESC_MAX], addr[KVN_XPORT_ADDR_MAX];
    size_t dl = sizeof(desc), al = sizeof(addr);
    if ((rc = kvn_xport_mr_reg(g->x, l1, len, KVN_XPORT_ACCESS_ALL, &g->mr, e)) < 0)
        return rc;
    mr = g->mr;
    if ((rc = kvn_xport_mr_pack(mr, desc, &dl, e)) < 0 ||
        (rc = kvn_xport_address(g->x, addr, &al, e)) < 0)
        return rc;
    if (pthread_create(&g->th, NULL, engine_main, g) != 0)
        return kvn_err_set(e, -EAGAIN, "pthread_create");
    struct kvn_client_req q = {.op = KVN_RPC_REGISTER_L1,
                               .desc = desc,
                               .desc_len = (uint32_t)dl,
                               .addr = addr,
                               .addr_len = (uint32_t)al,
                               .page_bytes = page_bytes,
                               .l1_slots = slots};
    return kvn_client_call(c, &q, NULL, e);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * The node's KV events, followed to mark the end of a round: counts the page hashes of
 * CPU_PINNED BlockStored events (one hash per acked page).
 */
struct evwatch {
    void *ctx, *sub;
    struct kvn_events_decoder dec;
    uint64_t stored; /* CPU_PINNED BlockStored hashes since the last drain */
};

static int ev_visit(void *arg, const struct kvn_kv_event *ev)
{
    struct evwatch *w = arg;
    if (ev->type == KVN_EV_BLOCK_STORED && ev->medium == KVN_MEDIUM_CPU_PINNED)
        w->stored += ev->n_hashes;
    return 0;
}

static void ev_close(struct evwatch *w)
{
    if (w->sub)
        zmq_close(w->sub);
    if (w->ctx)
        zmq_ctx_term(w->ctx);
    kvn_events_decoder_fini(&w->dec);
    memset(w, 0, sizeof(*w));
}

static int ev_open(struct evwatch *w, const char *ep, struct kvn_err *e)
{
    int zero = 0;
    memset(w, 0, sizeof(*w));
    kvn_events_decoder_init(&w->dec, NULL);
    w->ctx = zmq_ctx_new();
    if (!w->ctx)
        return kvn_err_set(e, -EIO, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    w->sub = zmq_socket(w->ctx, ZMQ_SUB);
    /* RCVHWM 0: no limit, a round's events (one per page) must all arrive */
    if (!w->sub || zmq_setsockopt(w->sub, ZMQ_LINGER, &zero, sizeof(zero)) != 0 ||
        zmq_setsockopt(w->sub, ZMQ_RCVHWM, &zero, sizeof(zero)) != 0 ||
        zmq_setsockopt(w->sub, ZMQ_SUBSCRIBE, "", 0) != 0 || zmq_connect(w->sub, ep) != 0)
        return kvn_err_set(e, -EINVAL, "--events %s: %s", ep, zmq_strerror(zmq_errno()));
    /* a SUB connects and subscribes asynchronously: give it time before the first round */
    nanosleep(&(struct timespec){0, SETTLE_NS}, NULL);
    return 0;
}

/*
 * Takes what is waiting on the SUB socket, waiting up to timeout_ms for the first message
 * (0: never waits).  Each message is [topic][seq][payload]; the payload is decoded strictly.
 * Returns the messages taken, or a negative code (malformed message, ZMQ error).
 */
static int ev_take(struct evwatch *w, long timeout_ms, struct kvn_err *e)
{
    int taken = 0;
    for (;;) {
        zmq_pollitem_t it = {.socket = w->sub, .events = ZMQ_POLLIN};
        int n = zmq_poll(&it, 1, taken ? 0 : timeout_ms);
        if (n < 0)
            return kvn_err_set(e, -EIO, "events: zmq_poll: %s", zmq_strerror(zmq_errno()));
        if (n == 0)
            return taken;
        zmq_msg_t f[3];
        int nf = 0, more = 1, rc = 0;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, w->sub, 0) < 0) {
                zmq_msg_close(&m);
                rc = kvn_err_set(e, -EIO, "events: recv: %s", zmq_strerror(zmq_errno()));
                break;
            }
            more = zmq_msg_more(&m);
            if (nf < 3)
                f[nf] = m;
            else
                zmq_msg_close(&m);
            nf++;
        }
        if (rc == 0 && nf != 3)
            rc = kvn_err_set(e, -EBADMSG, "events: a message of %d frames, expected 3", nf);
        if (rc == 0)
            rc = kvn_events_decode(&w->dec, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]), ev_visit, w,
                                   NULL, e);
        for (int i = 0; i < nf && i < 3; i++)
            zmq_msg_close(&f[i]);
        if (rc < 0)
            return rc;
        taken++;
    }
}

static uint64_t stat_u64(struct kvn_client *c, const char *k)
{
    struct kvn_client_reply *r;
    struct kvn_err e;
    uint64_t v = UINT64_MAX;
    if (kvn_client_stats(c, &r, &e) == 0) {
        kvn_client_reply_u64(r, k, &v);
        kvn_client_reply_free(r);
    }
    return v;
}

int main(int argc, char **argv)
{
    const char *ep = "tcp://127.0.0.1:7100";
    int rounds = 5, json = 0, warmup = 1;
    uint32_t ppi = 16, engine_slots = 0;
    const char *engine_poll = "auto";
    int plain_mem = 0;
    const char *events_ep = NULL;
    static const struct option opts[] = {{"connect", required_argument, NULL, 'c'},
                                         {"rounds", required_argument, NULL, 'r'},
                                         {"pages-per-insert", required_argument, NULL, 'p'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"engine", required_argument, NULL, 'e'},
                                         {"engine-poll", required_argument, NULL, 'P'},
                                         {"engine-mem", required_argument, NULL, 'M'},
                                         {"warmup", required_argument, NULL, 'W'},
                                         {"events", required_argument, NULL, 'E'},
                                         {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "c:r:p:je:P:M:W:E:", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            ep = optarg;
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        case 'p':
            ppi = (uint32_t)atoi(optarg);
            break;
        case 'j':
            json = 1;
            break;
        case 'e':
            engine_slots = (uint32_t)atoi(optarg);
            break;
        case 'P':
            engine_poll = optarg;
            break;
        case 'W':
            warmup = atoi(optarg);
            break;
        case 'E':
            if (strncmp(optarg, "tcp://", 6) || !optarg[6]) {
                fprintf(stderr, "kvn-wtbench: --events wants tcp://HOST:PORT, not '%s'\n", optarg);
                return 2;
            }
            events_ep = optarg;
            break;
        case 'M':
            if (strcmp(optarg, "domain") && strcmp(optarg, "mmap")) {
                fprintf(stderr, "kvn-wtbench: --engine-mem is domain or mmap\n");
                return 2;
            }
            plain_mem = !strcmp(optarg, "mmap");
            break;
        default:
            fprintf(stderr,
                    "usage: kvn-wtbench [-c EP] [--rounds N] [--warmup N] [--pages-per-insert P] "
                    "[--engine SLOTS] [--engine-poll auto|busy|wait] [--engine-mem domain|mmap] "
                    "[--events tcp://HOST:PORT] [--json]\n");
            return 2;
        }
    }
    if (strcmp(engine_poll, "auto") && strcmp(engine_poll, "busy") && strcmp(engine_poll, "wait")) {
        fprintf(stderr, "kvn-wtbench: --engine-poll is auto, busy or wait\n");
        return 2;
    }
    if (rounds < 1 || ppi < 1 || warmup < 0 || warmup > 1000 || rounds > 100000) {
        fprintf(stderr, "kvn-wtbench: --rounds and --pages-per-insert must be >= 1, --warmup "
                        "0..1000\n");
        return 2;
    }
    struct kvn_client *c;
    struct kvn_err e;
    struct kvn_client_reply *r;
    if (kvn_client_open(ep, 30000, &c, &e) < 0 || kvn_client_hello(c, &r, &e) < 0) {
        fprintf(stderr, "kvn-wtbench: %s\n", e.msg);
        return 1;
    }
    uint64_t ps, pb, slots;
    kvn_client_reply_u64(r, "page_size", &ps);
    kvn_client_reply_u64(r, "page_bytes", &pb);
    kvn_client_reply_u64(r, "l1_slots", &slots);
    char transport[64] = "";
    {
        char *js = kvn_client_reply_json(r, false);
        const char *t = js ? strstr(js, "\"transport\":\"") : NULL;
        if (t)
            sscanf(t + 13, "%63[^\"]", transport);
        free(js);
    }
    kvn_client_reply_free(r);
    struct engine g = {0};
    g.passive = !strcmp(engine_poll, "wait") ||
                (!strcmp(engine_poll, "auto") && !strcmp(transport, "ucx+sm"));
    g.plain_mem = plain_mem;
    if (engine_slots) {
        if (engine_start(&g, c, transport, pb, engine_slots, &e) < 0) {
            fprintf(stderr, "kvn-wtbench: engine on %s: %s\n", transport, e.msg);
            return 1;
        }
        slots = engine_slots;
    }
    if (slots < ppi) {
        fprintf(stderr, "kvn-wtbench: the node has %" PRIu64 " L1 slots (start it with --l1)\n",
                slots);
        return 1;
    }
    uint32_t inserts = (uint32_t)(slots / ppi);
    uint64_t round_pages = (uint64_t)inserts * ppi;
    int32_t *toks = malloc(sizeof(int32_t) * ps * ppi);
    uint32_t *sl = malloc(sizeof(uint32_t) * ppi);
    struct evwatch w = {0};
    int status = 1;
    if (!toks || !sl) {
        fprintf(stderr, "kvn-wtbench: out of memory\n");
        goto out;
    }
    if (events_ep && ev_open(&w, events_ep, &e) < 0) {
        fprintf(stderr, "kvn-wtbench: %s\n", e.msg);
        goto out;
    }
    double busy = 0;
    uint64_t b0 = 0, acks0 = 0;
    /* warmup rounds first, not counted: the first touch of every page (the node mapping the
     * engine's UCX segment, page faults in L1 and pool) is not the copy rate */
    for (int rd = 0; rd < warmup + rounds; rd++) {
        if (rd == warmup) {
            b0 = stat_u64(c, "bytes_to_l2");
            acks0 = stat_u64(c, "acks_ok");
        }
        if (kvn_client_reset(c, &e) < 0) {
            fprintf(stderr, "kvn-wtbench: reset: %s\n", e.msg);
            goto out;
        }
        /* what the reset published (removals, clears) is not this round's */
        if (events_ep) {
            if (ev_take(&w, 0, &e) < 0) {
                fprintf(stderr, "kvn-wtbench: %s\n", e.msg);
                goto out;
            }
            w.stored = 0;
        }
        double t0 = now_s(), t_end;
        for (uint32_t k = 0; k < inserts; k++) {
            for (uint64_t i = 0; i < ps * ppi; i++)
                toks[i] =
                    (int32_t)(((uint32_t)rd * 1000003u + k * 7919u + (uint32_t)i) & 0x7fffffff);
            toks[0] = (int32_t)(rd * 100000 + (int)k); /* no shared first page */
            for (uint32_t i = 0; i < ppi; i++)
                sl[i] = k * ppi + i;
            if (kvn_client_insert(c, toks, (uint32_t)(ps * ppi), sl, ppi, NULL, &e) < 0) {
                fprintf(stderr, "kvn-wtbench: insert: %s\n", e.msg);
                goto out;
            }
        }
        if (events_ep) {
            /* the round's acks, as a router would see them */
            while (w.stored < round_pages) {
                double left = t0 + ROUND_LIMIT_S - now_s();
                if (left <= 0) {
                    fprintf(stderr,
                            "kvn-wtbench: round %d: %" PRIu64 " of %" PRIu64
                            " pages announced (CPU_PINNED BlockStored) within %.0f s\n",
                            rd, w.stored, round_pages, ROUND_LIMIT_S);
                    goto out;
                }
                if (ev_take(&w, (long)(left * 1000) + 1, &e) < 0) {
                    fprintf(stderr, "kvn-wtbench: round %d: %s\n", rd, e.msg);
                    goto out;
                }
            }
            t_end = now_s();
            uint64_t pending = stat_u64(c, "pending_jobs"), failed = stat_u64(c, "jobs_failed");
            if (pending != 0 || failed != 0) {
                fprintf(stderr,
                        "kvn-wtbench: round %d: every page announced, but stats show "
                        "pending_jobs %" PRIu64 " jobs_failed %" PRIu64
                        " (UINT64_MAX: stats failed)\n",
                        rd, pending, failed);
                goto out;
            }
        } else {
            uint64_t pending;
            while ((pending = stat_u64(c, "pending_jobs")) != 0) {
                if (now_s() - t0 > ROUND_LIMIT_S) {
                    fprintf(stderr,
                            "kvn-wtbench: round %d: pending_jobs still %" PRIu64
                            " after %.0f s (UINT64_MAX: stats failed)\n",
                            rd, pending, ROUND_LIMIT_S);
                    goto out;
                }
                nanosleep(&(struct timespec){0, 200000}, NULL); /* do not crowd the node's loop */
            }
            t_end = now_s();
        }
        if (rd >= warmup)
            busy += t_end - t0;
    }
    uint64_t bytes = stat_u64(c, "bytes_to_l2") - b0;
    uint64_t acks = stat_u64(c, "acks_ok") - acks0;
    uint64_t p50 = stat_u64(c, "ack_to_publish_p50_us"), p99 = stat_u64(c, "ack_to_publish_p99_us");
    uint64_t failed = stat_u64(c, "jobs_failed"), skipped = stat_u64(c, "backups_skipped");
    double gbps = bytes / busy / 1e9;
    const char *end_mark = events_ep ? "events" : "stats";
    if (json)
        printf("{\"mode\":\"%s\",\"engine_mem\":\"%s\",\"end\":\"%s\",\"warmup\":%d,"
               "\"page_bytes\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.6f,\"gbps\":%.4f,"
               "\"acks\":%" PRIu64 ",\"jobs_failed\":%" PRIu64 ",\"backups_skipped\":%" PRIu64
               ",\"ack_to_publish_p50_us\":%" PRIu64 ",\"ack_to_publish_p99_us\":%" PRIu64 "}\n",
               engine_slots ? (g.passive ? "engine-wait" : "engine") : "loopback",
               !engine_slots ? "node"
               : plain_mem   ? "mmap"
                             : "domain",
               end_mark, warmup, pb, bytes, busy, gbps, acks, failed, skipped, p50, p99);
    else
        printf("page_bytes %" PRIu64 "  bytes %" PRIu64 "  %.3f s  %.3f GB/s  acks %" PRIu64
               "  failed %" PRIu64 "  ack->publish p50 %" PRIu64 " us p99 %" PRIu64 " us  end %s\n",
               pb, bytes, busy, gbps, acks, failed, p50, p99, end_mark);
    status = 0;
out:
    free(toks);
    free(sl);
    ev_close(&w);
    kvn_client_close(c);
    if (engine_slots) {
        atomic_store(&g.stop, 1);
        pthread_join(g.th, NULL);
        kvn_xport_mr_dereg(g.mr, NULL);
        if (g.plain_mem)
            munmap(g.l1, g.l1_len);
        else
            kvn_xport_mem_free(g.x, g.l1, g.l1_len, NULL);
        kvn_xport_close(g.x);
    }
    return status;
}
