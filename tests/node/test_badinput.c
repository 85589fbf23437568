/*
 * test_badinput.c - DESIGN "Reliability": every malformed or hostile input to
 * a running kvnode gets a clear error reply (or is dropped and counted), the
 * node keeps serving, and pages, locks and pins are back at their baseline.
 * argv: kvnode kvctl consumer.py events_dump.py
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <zmq.h>

#include "node/kvn_rpc.h"
#include "node_harness.h"

static struct th_node N;

struct baseline {
    uint64_t l1_used, l2_used, locked, protected_, locks_held, pending, nodes;
};

static void snap(struct baseline *b)
{
    b->l1_used = th_stat(&N, "l1_used");
    b->l2_used = th_stat(&N, "l2_used");
    b->locked = th_stat(&N, "locked_nodes");
    b->protected_ = th_stat(&N, "protected_nodes");
    b->locks_held = th_stat(&N, "locks_held");
    b->pending = th_stat(&N, "pending_jobs");
    b->nodes = th_stat(&N, "nodes");
}

static void assert_baseline(const struct baseline *b)
{
    struct baseline now;
    assert_true(h_quiesce(&N));
    snap(&now);
    assert_int_equal(now.l1_used, b->l1_used);
    assert_int_equal(now.l2_used, b->l2_used);
    assert_int_equal(now.locked, b->locked);
    assert_int_equal(now.protected_, b->protected_);
    assert_int_equal(now.locks_held, b->locks_held);
    assert_int_equal(now.pending, 0);
    assert_int_equal(now.nodes, b->nodes);
    struct kvn_client_reply *r;
    struct kvn_err e;
    assert_int_equal(kvn_client_hello(N.c, &r, &e), 0); /* still serving */
    kvn_client_reply_free(r);
}

static int setup(void **state)
{
    (void)state;
    const char *flags[] = {"--transport",  "ofi+tcp", "--page-size", "2",
                           "--page-bytes", "4K",      "--host-pool", "4M",
                           "--l1",         "256K",    NULL};
    if (h_node_start(&N, flags) != 0)
        return -1;
    /* some state, so that "unchanged" means something */
    struct kvn_err e;
    int32_t toks[] = {1, 2, 3, 4, 5, 6};
    uint32_t sl[] = {0, 1, 2};
    if (kvn_client_insert(N.c, toks, 6, sl, 3, NULL, &e) < 0 || !h_quiesce(&N))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int st = th_node_stop(&N);
    th_kill_all();
    return st == 0 ? 0 : -1;
}

/* Sends raw bytes; returns the reply code (0 for ok), asserting a reply came. */
static int raw(const void *b, size_t n, char *msg, size_t cap)
{
    struct kvn_client_reply *r = NULL;
    int code = 1;
    struct kvn_err e;
    kvn_err_clear(&e);
    assert_int_equal(kvn_client_call_raw(N.c, b, n, &r, &code, &e), 0);
    assert_non_null(r);
    if (msg)
        snprintf(msg, cap, "%s", e.msg);
    kvn_client_reply_free(r);
    return code;
}

static void test_malformed_msgpack(void **state)
{
    (void)state;
    struct baseline b;
    snap(&b);
    char m[256];
    const uint8_t junk[] = {0xc1, 0xc1, 0xc1};
    assert_int_equal(raw(junk, sizeof(junk), m, sizeof(m)), -EPROTO);
    assert_non_null(strstr(m, "msgpack"));
    const uint8_t trunc[] = {0x84, 0xa1, 'v', 0x01, 0xa2, 'o'};
    assert_int_equal(raw(trunc, sizeof(trunc), m, sizeof(m)), -EPROTO);
    const uint8_t arr[] = {0x93, 1, 2, 3};
    assert_int_equal(raw(arr, sizeof(arr), m, sizeof(m)), -EPROTO);
    /* deep nesting */
    uint8_t deep[4096];
    memset(deep, 0x91, sizeof(deep));
    assert_int_equal(raw(deep, sizeof(deep), m, sizeof(m)), -EPROTO);
    assert_int_equal(raw("", 0, m, sizeof(m)), -EPROTO);
    assert_baseline(&b);
    assert_true(th_stat(&N, "rpc_errors") >= 5);
}

static void pack_req(msgpack_sbuffer *sb, const char *op, uint32_t extra)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3 + extra);
    msgpack_pack_str(&pk, 1);
    msgpack_pack_str_body(&pk, "v", 1);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_str(&pk, 2);
    msgpack_pack_str_body(&pk, "op", 2);
    msgpack_pack_str(&pk, strlen(op));
    msgpack_pack_str_body(&pk, op, strlen(op));
    msgpack_pack_str(&pk, 2);
    msgpack_pack_str_body(&pk, "id", 2);
    msgpack_pack_uint8(&pk, 5);
}

static void test_unknown_ops_and_types(void **state)
{
    (void)state;
    struct baseline b;
    snap(&b);
    char m[256];
    msgpack_sbuffer sb;
    pack_req(&sb, "drop_tables", 0);
    assert_int_equal(raw(sb.data, sb.size, m, sizeof(m)), -ENOTSUP);
    assert_non_null(strstr(m, "drop_tables"));
    msgpack_sbuffer_destroy(&sb);
    /* tokens as a string */
    pack_req(&sb, "insert", 1);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_str(&pk, 6);
    msgpack_pack_str_body(&pk, "tokens", 6);
    msgpack_pack_str(&pk, 3);
    msgpack_pack_str_body(&pk, "1,2", 3);
    assert_int_equal(raw(sb.data, sb.size, m, sizeof(m)), -EINVAL);
    msgpack_sbuffer_destroy(&sb);
    /* handle as a negative number */
    pack_req(&sb, "unlock", 1);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_str(&pk, 6);
    msgpack_pack_str_body(&pk, "handle", 6);
    msgpack_pack_int8(&pk, -3);
    assert_int_equal(raw(sb.data, sb.size, m, sizeof(m)), -EINVAL);
    msgpack_sbuffer_destroy(&sb);
    /* wrong schema version */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str(&pk, 1);
    msgpack_pack_str_body(&pk, "v", 1);
    msgpack_pack_uint8(&pk, 9);
    msgpack_pack_str(&pk, 2);
    msgpack_pack_str_body(&pk, "op", 2);
    msgpack_pack_str(&pk, 5);
    msgpack_pack_str_body(&pk, "hello", 5);
    assert_int_equal(raw(sb.data, sb.size, m, sizeof(m)), -EPROTO);
    msgpack_sbuffer_destroy(&sb);
    assert_baseline(&b);
}

static void test_out_of_range_and_unaligned(void **state)
{
    (void)state;
    struct baseline b;
    snap(&b);
    struct kvn_err e;
    int32_t toks[] = {11, 12, 13, 14};
    uint32_t bad[] = {0, 64}; /* 256K / 4K = 64 slots: 64 is one past the end */
    assert_int_equal(kvn_client_insert(N.c, toks, 4, bad, 2, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "out of range"));
    uint32_t huge[] = {4000000000u, 1};
    assert_int_equal(kvn_client_insert(N.c, toks, 4, huge, 2, NULL, &e), -EINVAL);
    uint32_t ok2[] = {10, 11};
    assert_int_equal(kvn_client_insert(N.c, toks, 3, ok2, 2, NULL, &e), -EINVAL); /* unaligned */
    assert_non_null(strstr(e.msg, "whole number"));
    assert_int_equal(kvn_client_insert(N.c, toks, 4, ok2, 1, NULL, &e),
                     -EINVAL); /* 1 slot, 2 pages */
    uint32_t dup[] = {10, 10};
    assert_int_equal(kvn_client_insert(N.c, toks, 4, dup, 2, NULL, &e), -EBUSY);
    uint32_t owned[] = {0, 12}; /* slot 0 belongs to the tree already */
    assert_int_equal(kvn_client_insert(N.c, toks, 4, owned, 2, NULL, &e), -EBUSY);
    assert_int_equal(kvn_client_insert(N.c, toks, 0, ok2, 0, NULL, &e), -EINVAL);
    /* cluster ops on a node without --cluster */
    assert_int_equal(kvn_client_fetch(N.c, toks, 4, 0, NULL, &e), -ENOTSUP);
    assert_int_equal(kvn_client_push(N.c, "tcp://127.0.0.1:9", toks, 4, NULL, 0, NULL, &e),
                     -ENOTSUP);
    struct kvn_client_req lb = {
        .op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = 3, .slots = ok2, .n_slots = 2};
    assert_int_equal(kvn_client_call(N.c, &lb, NULL, &e), -EINVAL);
    struct kvn_client_req lk = {.op = KVN_RPC_LOCK, .tokens = toks, .n_tokens = 1};
    assert_int_equal(kvn_client_call(N.c, &lk, NULL, &e), -EINVAL);
    struct kvn_client_req bk = {.op = KVN_RPC_BACKUP, .tokens = toks, .n_tokens = 3};
    assert_int_equal(kvn_client_call(N.c, &bk, NULL, &e), -EINVAL);
    uint32_t far[] = {99};
    struct kvn_client_req cs = {.op = KVN_RPC_L1_CHECKSUM, .slots = far, .n_slots = 1};
    assert_int_equal(kvn_client_call(N.c, &cs, NULL, &e), -EINVAL);
    struct kvn_client_req fl = {.op = KVN_RPC_L1_FILL, .slots = far, .n_slots = 1, .seed = 1};
    assert_int_equal(kvn_client_call(N.c, &fl, NULL, &e), -EINVAL);
    uint8_t blob[4] = {1, 2, 3, 4};
    struct kvn_client_req rl = {.op = KVN_RPC_REGISTER_L1,
                                .desc = blob,
                                .desc_len = 4,
                                .addr = blob,
                                .addr_len = 4,
                                .page_bytes = 4096,
                                .l1_slots = 8};
    assert_true(kvn_client_call(N.c, &rl, NULL, &e) < 0); /* garbage descriptor */
    assert_baseline(&b);
    /* the stand-in L1 is still attached and works */
    int32_t t2[] = {21, 22};
    uint32_t s2[] = {30};
    assert_int_equal(kvn_client_insert(N.c, t2, 2, s2, 1, NULL, &e), 0);
    assert_true(h_quiesce(&N));
    assert_int_equal(th_stat(&N, "l2_used"), b.l2_used + 1);
    assert_int_equal(kvn_client_reset(N.c, &e), 0);
    assert_int_equal(kvn_client_insert(N.c, (int32_t[]){1, 2, 3, 4, 5, 6}, 6, (uint32_t[]){0, 1, 2},
                                       3, NULL, &e),
                     0);
    assert_baseline(&b);
}

static void test_oversized(void **state)
{
    (void)state;
    struct baseline b;
    snap(&b);
    size_t n = KVN_RPC_MAX_FRAME + 1000;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    memset(big, 0x90, n);
    char m[256];
    assert_int_equal(raw(big, n, m, sizeof(m)), -EMSGSIZE);
    free(big);
    assert_true(th_stat(&N, "rpc_oversized") >= 1);
    /* far beyond the cap: ZeroMQ drops the connection; the client times out, the node lives */
    n = 8u << 20;
    big = calloc(1, n);
    assert_non_null(big);
    struct kvn_client *c2;
    struct kvn_err e;
    assert_int_equal(kvn_client_open(N.ctl, 500, &c2, &e), 0);
    struct kvn_client_reply *r = NULL;
    int code;
    assert_true(kvn_client_call_raw(c2, big, n, &r, &code, &e) < 0);
    kvn_client_close(c2);
    free(big);
    assert_baseline(&b);
}

static void test_vanishing_clients(void **state)
{
    (void)state;
    struct baseline b;
    snap(&b);
    /* a DEALER sends a valid insert and goes away before the reply */
    void *ctx = zmq_ctx_new();
    for (int i = 0; i < 20; i++) {
        void *d = zmq_socket(ctx, ZMQ_DEALER);
        int linger = 2000;
        zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof(linger));
        assert_int_equal(zmq_connect(d, N.ctl), 0);
        msgpack_sbuffer sb;
        pack_req(&sb, "match", 1);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_str(&pk, 6);
        msgpack_pack_str_body(&pk, "tokens", 6);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_int(&pk, 1);
        msgpack_pack_int(&pk, 2);
        zmq_send(d, "", 0, ZMQ_SNDMORE);
        zmq_send(d, sb.data, sb.size, 0);
        msgpack_sbuffer_destroy(&sb);
        zmq_close(d);
    }
    zmq_ctx_term(ctx); /* lingers until the requests are out */
    /* a raw TCP client that starts a ZMTP greeting and hangs up mid-way */
    for (int i = 0; i < 5; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)N.port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        if (connect(s, (struct sockaddr *)&a, sizeof(a)) == 0) {
            const uint8_t part[] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3};
            ssize_t w = write(s, part, sizeof(part));
            (void)w;
        }
        close(s);
    }
    assert_baseline(&b);
    uint64_t req = th_stat(&N, "rpc_requests");
    assert_true(req >= 20);
}

static void test_wrong_frame_counts(void **state)
{
    (void)state;
    struct baseline b;
    snap(&b);
    uint64_t dropped0 = th_stat(&N, "rpc_dropped");
    void *ctx = zmq_ctx_new();
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 3000;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    assert_int_equal(zmq_connect(d, N.ctl), 0);
    /* three body frames: an error reply on the identity, counted as dropped */
    zmq_send(d, "", 0, ZMQ_SNDMORE);
    zmq_send(d, "a", 1, ZMQ_SNDMORE);
    zmq_send(d, "b", 1, 0);
    char buf[512];
    int more = 1, got = 0;
    size_t ms = sizeof(more);
    int last = -1;
    while (more) {
        last = zmq_recv(d, buf, sizeof(buf), 0);
        assert_true(last >= 0);
        got++;
        zmq_getsockopt(d, ZMQ_RCVMORE, &more, &ms);
    }
    assert_true(got >= 1);
    assert_true(last > 0 && last < (int)sizeof(buf));
    assert_non_null(memmem(buf, (size_t)last, "frames", 6));
    assert_int_equal(th_stat(&N, "rpc_dropped"), dropped0 + 1);
    zmq_close(d);
    /* replay ROUTER: wrong frame counts and a short start_seq are dropped and counted */
    void *rp = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(rp, ZMQ_LINGER, &linger, sizeof(linger));
    assert_int_equal(zmq_connect(rp, N.rep), 0);
    zmq_send(rp, "x", 1, 0); /* [id, "x"] */
    zmq_send(rp, "", 0, ZMQ_SNDMORE);
    zmq_send(rp, "abc", 3, 0); /* start_seq of 3 bytes */
    zmq_send(rp, "", 0, ZMQ_SNDMORE);
    zmq_send(rp, "12345678", 8, ZMQ_SNDMORE);
    zmq_send(rp, "extra", 5, 0); /* one frame too many */
    uint64_t bad = 0;
    for (int i = 0; i < 500 && (bad = th_stat(&N, "replay_bad")) < 3; i++)
        th_sleep_ms(10);
    assert_int_equal(bad, 3);
    /* a good replay request still works afterwards: the end marker arrives */
    uint8_t zero[8] = {0};
    zmq_setsockopt(rp, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    zmq_send(rp, "", 0, ZMQ_SNDMORE);
    zmq_send(rp, zero, 8, 0);
    bool end = false;
    for (int i = 0; i < 100000 && !end; i++) {
        zmq_msg_t m[4];
        int n = 0;
        more = 1;
        while (more) {
            zmq_msg_init(&m[n < 4 ? n : 3]);
            int r = zmq_msg_recv(&m[n < 4 ? n : 3], rp, 0);
            assert_true(r >= 0);
            more = zmq_msg_more(&m[n < 4 ? n : 3]);
            if (n < 3)
                n++;
            else
                zmq_msg_close(&m[3]);
        }
        /* ["", seq, payload] */
        if (n == 3 && zmq_msg_size(&m[1]) == 8) {
            const uint8_t *s = zmq_msg_data(&m[1]);
            end = s[0] == 0xff && s[7] == 0xff && zmq_msg_size(&m[2]) == 0;
        }
        for (int k = 0; k < n; k++)
            zmq_msg_close(&m[k]);
    }
    assert_true(end);
    zmq_close(rp);
    zmq_ctx_term(ctx);
    assert_baseline(&b);
}

static void test_no_l1_registered(void **state)
{
    (void)state;
    /* a second node without --l1: every data op says so, stats work */
    struct th_node m;
    const char *flags[] = {"--transport",  "ofi+tcp", "--host-pool", "1M",
                           "--page-bytes", "4K",      NULL};
    assert_int_equal(h_node_start(&m, flags), 0);
    struct kvn_err e;
    int32_t t[16] = {0};
    uint32_t s[1] = {0};
    assert_int_equal(kvn_client_insert(m.c, t, 16, s, 1, NULL, &e), -ENOTCONN);
    assert_int_equal(kvn_client_match(m.c, t, 16, NULL, &e), -ENOTCONN);
    struct kvn_client_req f = {.op = KVN_RPC_L1_FILL, .slots = s, .n_slots = 1, .seed = 1};
    assert_int_equal(kvn_client_call(m.c, &f, NULL, &e), -ENOTSUP);
    assert_int_equal(th_stat(&m, "l2_free"), 256);
    assert_int_equal(th_node_stop(&m), 0);
}

int main(int argc, char **argv)
{
    if (h_args(argc, argv, "") < 0)
        return 2;
    if (th_tmpdir_make("/tmp/kvn_node_bad_XXXXXX") < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_msgpack),
        cmocka_unit_test(test_unknown_ops_and_types),
        cmocka_unit_test(test_out_of_range_and_unaligned),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_vanishing_clients),
        cmocka_unit_test(test_wrong_frame_counts),
        cmocka_unit_test(test_no_l1_registered),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    th_kill_all();
    if (th_tmpdir_remove() < 0)
        fprintf(stderr, "could not remove %s\n", TH.tmpdir);
    return rc;
}
