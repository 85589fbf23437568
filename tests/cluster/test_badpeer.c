/*
 * test_badpeer.c - a real kvnode next to a fake, misbehaving peer (argv: kvnode, kvctl,
 * transport).  The fake is a child process of this test: a ROUTER answering peer_hello / pin /
 * unpin, a PUB publishing KV events, and a real transport domain with a 4-page registered pool,
 * so that the node accepts it as a peer.  It then lies:
 *
 *   - every tenth event batch is not msgpack: counted (sub_malformed), nothing applied;
 *   - it announces 3 pages on CPU_PINNED, so the node's match reports it as the best remote hit;
 *   - asked to pin them, it answers with a page list pointing outside its registered pool:
 *     the node's fetch is refused (-ERANGE) before any RDMA is posted, counted
 *     (bad_descriptors), nothing is inserted and every reserved page is given back;
 *   - a second fake sends a hello whose pool descriptor is corrupt: counted, the peer is never
 *     used for a fetch.
 */
#include <msgpack.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include <cmocka.h>

#include "cache/page_hash.h"
#include "cluster_harness.h"
#include "node/cluster/cluster_wire.h"
#include "transport/kvn_xport.h"

static const char *g_transport = "ofi+tcp";

#define PS    2
#define PB    4096u
#define NPAGE 4u

static const int32_t g_toks[6] = {501, 502, 503, 504, 505, 506};

static void pk_s(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static const msgpack_object *get(const msgpack_object *m, const char *k)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *key = &m->via.map.ptr[i].key;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
            !memcmp(key->via.str.ptr, k, key->via.str.size))
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

/* One batch [ts, [BlockStored x 3 on CPU_PINNED], 0] of g_toks. */
static void pack_batch(msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_double(&pk, 1.0);
    msgpack_pack_array(&pk, 3);
    uint8_t prev[KVN_PAGE_DIGEST_LEN], cur[KVN_PAGE_DIGEST_LEN];
    int64_t parent = 0;
    for (int p = 0; p < 3; p++) {
        kvn_page_hash_one(p ? prev : NULL, g_toks + p * PS, PS, cur);
        int64_t h = kvn_page_hash_event(cur);
        msgpack_pack_array(&pk, 7);
        pk_s(&pk, "BlockStored");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_int64(&pk, h);
        if (p)
            msgpack_pack_int64(&pk, parent);
        else
            msgpack_pack_nil(&pk);
        msgpack_pack_array(&pk, PS);
        for (int t = 0; t < PS; t++)
            msgpack_pack_int32(&pk, g_toks[p * PS + t]);
        msgpack_pack_uint32(&pk, PS);
        msgpack_pack_nil(&pk);
        pk_s(&pk, "CPU_PINNED");
        parent = h;
        memcpy(prev, cur, sizeof(prev));
    }
    msgpack_pack_int32(&pk, 0);
}

/* The fake peer's life (a child process); never returns. */
static void fake_peer(const char *ctl, const char *pub, bool corrupt_desc)
{
    struct kvn_xport *x;
    struct kvn_xport_mr *mr;
    static uint8_t pool[NPAGE * PB];
    struct kvn_wire_hello *h = calloc(1, sizeof(*h));
    uint8_t *blob = malloc(KVN_WIRE_HELLO_MAX);
    size_t blen = 0, len;
    if (!h || !blob || kvn_xport_open(g_transport, NULL, &x, NULL) < 0 ||
        kvn_xport_mr_reg(x, pool, sizeof(pool), KVN_XPORT_ACCESS_ALL, &mr, NULL) < 0)
        _exit(3);
    h->node_id = corrupt_desc ? 0xbad2 : 0xbad1;
    h->inc = 1;
    snprintf(h->ctl, sizeof(h->ctl), "%s", ctl);
    snprintf(h->events, sizeof(h->events), "%s", pub);
    snprintf(h->transport, sizeof(h->transport), "%s", kvn_xport_name(x));
    h->page_size = PS;
    h->page_bytes = PB;
    h->pool_pages = NPAGE;
    len = sizeof(h->addr);
    if (kvn_xport_address(x, h->addr, &len, NULL) < 0)
        _exit(3);
    h->addr_len = (uint32_t)len;
    len = sizeof(h->pool_desc);
    if (kvn_xport_mr_pack(mr, h->pool_desc, &len, NULL) < 0)
        _exit(3);
    h->pool_desc_len = (uint32_t)len;
    if (corrupt_desc)
        h->pool_desc[0] ^= 0x5a; /* bad magic */
    if (kvn_wire_hello_encode(h, blob, KVN_WIRE_HELLO_MAX, &blen, NULL) < 0)
        _exit(3);
    void *zc = zmq_ctx_new();
    void *rt = zmq_socket(zc, ZMQ_ROUTER), *ps = zmq_socket(zc, ZMQ_PUB);
    int zero = 0;
    zmq_setsockopt(rt, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(ps, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(rt, ctl) != 0 || zmq_bind(ps, pub) != 0)
        _exit(4);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    uint64_t seq = 0;
    for (int tick = 0; tick < 3000; tick++) { /* bounded: ~30 s, the test kills it sooner */
        zmq_pollitem_t it = {.socket = rt, .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 10);
        struct kvn_xport_cqe cq[8];
        kvn_xport_poll(x, cq, 8);
        if (tick % 5 == 0) { /* publish: real batches, and batches that are not msgpack */
            uint8_t seqb[8];
            for (int i = 0; i < 8; i++)
                seqb[i] = (uint8_t)(seq >> (56 - 8 * i));
            msgpack_sbuffer_clear(&sb);
            if (seq % 10 == 0) /* again and again: the subscriber may join late */
                msgpack_sbuffer_write(&sb, "\xc1\xc1", 2);
            else
                pack_batch(&sb);
            zmq_send(ps, "", 0, ZMQ_SNDMORE);
            zmq_send(ps, seqb, 8, ZMQ_SNDMORE);
            zmq_send(ps, sb.data, sb.size, 0);
            seq++;
        }
        if (!(it.revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t part[3];
        int np = 0, more = 1;
        while (more && np < 3) {
            zmq_msg_init(&part[np]);
            if (zmq_msg_recv(&part[np], rt, 0) < 0)
                break;
            more = zmq_msg_more(&part[np]);
            np++;
        }
        if (np < 2)
            _exit(5);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        msgpack_unpack_next(&up, zmq_msg_data(&part[np - 1]), zmq_msg_size(&part[np - 1]), &off);
        const msgpack_object *op = get(&up.data, "op"), *id = get(&up.data, "id");
        msgpack_sbuffer_clear(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        bool hello = op && op->type == MSGPACK_OBJECT_STR && op->via.str.size == 10 &&
                     !memcmp(op->via.str.ptr, "peer_hello", 10);
        bool pin = op && op->type == MSGPACK_OBJECT_STR && op->via.str.size == 3 &&
                   !memcmp(op->via.str.ptr, "pin", 3);
        msgpack_pack_map(&pk, hello ? 4 : pin ? 6 : 3);
        pk_s(&pk, "v");
        msgpack_pack_uint32(&pk, 1);
        pk_s(&pk, "id");
        msgpack_pack_uint64(&pk,
                            id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? id->via.u64 : 0);
        pk_s(&pk, "ok");
        msgpack_pack_true(&pk);
        if (hello) {
            pk_s(&pk, "hello");
            msgpack_pack_bin(&pk, blen);
            msgpack_pack_bin_body(&pk, blob, blen);
        } else if (pin) { /* the lie: page 999 of a 4-page pool */
            pk_s(&pk, "handle");
            msgpack_pack_uint64(&pk, 1);
            pk_s(&pk, "pinned_tokens");
            msgpack_pack_uint64(&pk, 6);
            pk_s(&pk, "pages");
            msgpack_pack_array(&pk, 3);
            msgpack_pack_uint32(&pk, 0);
            msgpack_pack_uint32(&pk, 1);
            msgpack_pack_uint32(&pk, 999);
        }
        msgpack_unpacked_destroy(&up);
        zmq_msg_send(&part[0], rt, ZMQ_SNDMORE);
        if (np == 3)
            zmq_send(rt, "", 0, ZMQ_SNDMORE);
        zmq_send(rt, sb.data, sb.size, 0);
        for (int i = 1; i < np; i++)
            zmq_msg_close(&part[i]);
    }
    _exit(0);
}

static pid_t start_fake(char *ctl, char *pub, int port, bool corrupt)
{
    snprintf(ctl, 64, "tcp://127.0.0.1:%d", port);
    snprintf(pub, 64, "tcp://127.0.0.1:%d", port + 1);
    fflush(NULL);
    pid_t p = fork();
    if (p == 0)
        fake_peer(ctl, pub, corrupt);
    if (p > 0)
        th_track(p);
    return p;
}

static void test_lying_peer(void **state)
{
    (void)state;
    char fctl[64], fpub[64], gctl[64], gpub[64];
    struct th_node n;
    int rc = -EADDRINUSE;
    for (int attempt = 0; attempt < 5 && rc == -EADDRINUSE; attempt++) {
        int base = ch_port_base();
        pid_t f1 = start_fake(fctl, fpub, base + 20, false);
        pid_t f2 = start_fake(gctl, gpub, base + 30, true);
        assert_true(f1 > 0 && f2 > 0);
        ch_node_init(&n, "127.0.0.1", NULL, base);
        const char *argv[] = {"--transport",
                              g_transport,
                              "--page-size",
                              "2",
                              "--page-bytes",
                              "4K",
                              "--host-pool",
                              "1M",
                              "--l1",
                              "64K",
                              "--heartbeat-ms",
                              "100",
                              "--peer-timeout-ms",
                              "3000",
                              "--peer",
                              fctl,
                              "--peer",
                              gctl,
                              NULL};
        rc = ch_node_start(&n, argv);
        th_sleep_ms(50);
        /* a fake that could not bind its ports exits at once: try other ports */
        for (int k = 0; k < 2 && rc == 0; k++) {
            pid_t f = k ? f2 : f1;
            if (waitpid(f, NULL, WNOHANG) == f) {
                th_untrack(f);
                rc = -EADDRINUSE;
            }
        }
        if (rc == -EADDRINUSE)
            th_kill_all();
    }
    assert_int_equal(rc, 0);
    assert_true(ch_wait_stat(&n, "cluster_peers_up", 2, 500));
    /* the corrupt descriptor is refused at the handshake */
    assert_true(ch_wait_stat(&n, "cluster_bad_descriptors", 1, 500));
    /* the not-msgpack batch is counted, the real ones applied */
    assert_true(ch_wait_stat(&n, "cluster_remote_blocks", 3, 500));
    bool malformed = false;
    for (int i = 0; i < 250 && !malformed; i++) {
        malformed = th_stat(&n, "cluster_sub_malformed") >= 1;
        if (!malformed)
            th_sleep_ms(20);
    }
    assert_true(malformed);
    uint64_t rp = 0, host = 9;
    assert_int_equal(ch_match(&n, g_toks, 6, &rp, &host), 0);
    assert_int_equal(rp, 3);
    assert_int_equal(host, 0);
    /* fetch: the pin reply points outside the fake's pool -> refused before any RDMA */
    uint64_t free0 = th_stat(&n, "l2_free");
    struct kvn_client_reply *r = NULL;
    struct kvn_err e;
    assert_int_equal(kvn_client_fetch(n.c, g_toks, 6, 0, &r, &e), -ERANGE);
    assert_non_null(strstr(e.msg, "outside"));
    assert_int_equal(th_stat(&n, "cluster_bad_descriptors"), 2);
    assert_int_equal(th_stat(&n, "cluster_fetch_failed"), 1);
    assert_int_equal(th_stat(&n, "cluster_fetch_pages"), 0);
    assert_int_equal(th_stat(&n, "l2_free"), free0);
    assert_int_equal(ch_match(&n, g_toks, 6, &rp, &host), 0);
    assert_int_equal(host, 0);
    assert_int_equal(th_node_stop(&n), 0);
}

int main(int argc, char **argv)
{
    if (ch_args(argc, argv, &g_transport) < 0)
        return 2;
    if (th_tmpdir_make("/tmp/kvn-badpeer-XXXXXX") < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_lying_peer, th_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (rc == 0 && th_tmpdir_remove() < 0)
        rc = 1;
    return rc;
}
