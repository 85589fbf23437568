/*
 * test_runtime.c - node/cluster/cluster.h in-process, without a daemon: configuration
 * refusals, the RPC handlers' error paths (each refused call changes nothing: the tree's
 * reserved and protected counts are checked), pin/unpin and reserve/push_done/abort against a
 * real radix tree, the events that a completed push emits, and the loop hooks.  The transport
 * is ofi+tcp on 127.0.0.1 (no peer is ever contacted: no --peer is configured).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache/radix.h"
#include "node/cluster/cluster.h"
#include "node/host_pool.h"
#include "node/kvn_rpc.h"

#define PS 2

struct fx {
    void *zctx;
    struct kvn_host_pool *pool;
    struct kvn_radix *tree;
    struct kvn_cluster *c;
    struct kvn_rpc_req q;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint32_t nk;
    uint32_t cpu_stored; /* CPU_PINNED BlockStored seen */
    uint64_t tick;
};

static void on_event(void *ctx, const struct kvn_kv_event *ev)
{
    struct fx *f = ctx;
    if (ev->type == KVN_EV_BLOCK_STORED && ev->medium == KVN_MEDIUM_CPU_PINNED)
        f->cpu_stored++;
}

static struct kvn_cluster_cfg base_cfg(struct fx *f)
{
    return (struct kvn_cluster_cfg){.zctx = f->zctx,
                                    .self_ctl = "tcp://127.0.0.1:1",
                                    .transport = "ofi+tcp",
                                    .pool = f->pool,
                                    .page_size = PS};
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->zctx = zmq_ctx_new();
    assert_int_equal(kvn_host_pool_create(&f->pool, 64 * 4096, 4096, false, -1, NULL), 0);
    struct kvn_radix_config rc;
    kvn_radix_config_init(&rc);
    rc.page_size = PS;
    rc.l1_pages = 16;
    rc.l2_pages = f->pool->n_pages;
    rc.sink = (struct kvn_kv_event_sink){.emit = on_event, .ctx = f};
    assert_int_equal(kvn_radix_create(&rc, &f->tree, NULL), 0);
    struct kvn_cluster_cfg cc = base_cfg(f);
    assert_int_equal(kvn_cluster_create(&cc, &f->c, NULL), 0);
    assert_int_equal(kvn_rpc_req_init(&f->q, NULL), 0);
    msgpack_sbuffer_init(&f->sb);
    msgpack_packer_init(&f->pk, &f->sb, msgpack_sbuffer_write);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    kvn_cluster_release_all(f->c, f->tree);
    kvn_cluster_destroy(f->c);
    kvn_radix_destroy(f->tree);
    kvn_host_pool_destroy(f->pool);
    kvn_rpc_req_fini(&f->q);
    msgpack_sbuffer_destroy(&f->sb);
    zmq_ctx_term(f->zctx);
    free(f);
    return 0;
}

/* Runs one cluster op; the reply's map entries are discarded. */
static int run(struct fx *f, enum kvn_rpc_op op, const int32_t *toks, uint32_t nt,
               struct kvn_err *e)
{
    f->q.op = op;
    f->q.n_tokens = nt;
    f->q.has_tokens = nt > 0;
    if (nt)
        memcpy(f->q.tokens, toks, sizeof(int32_t) * nt);
    if (!f->q.lease_ms)
        f->q.lease_ms = KVN_RPC_LEASE_DEFAULT_MS;
    msgpack_sbuffer_clear(&f->sb);
    f->nk = 0;
    int rc = kvn_cluster_rpc(f->c, f->tree, &f->q, 1000, ++f->tick, &f->pk, &f->nk, e);
    if (rc < 0)
        assert_int_equal(f->nk, 0); /* a refusal appends nothing */
    return rc;
}

/* The u64 at key in the reply just built (the packed map entries). */
static uint64_t reply_u64(struct fx *f, const char *key)
{
    msgpack_unpacked r;
    msgpack_unpacked_init(&r);
    size_t off = 0;
    uint64_t v = UINT64_MAX;
    for (uint32_t i = 0; i < 2 * f->nk; i++) {
        if (msgpack_unpack_next(&r, f->sb.data, f->sb.size, &off) != MSGPACK_UNPACK_SUCCESS)
            break;
        if (i % 2 == 0 && r.data.type == MSGPACK_OBJECT_STR && r.data.via.str.size == strlen(key) &&
            !memcmp(r.data.via.str.ptr, key, strlen(key))) {
            if (msgpack_unpack_next(&r, f->sb.data, f->sb.size, &off) == MSGPACK_UNPACK_SUCCESS &&
                r.data.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                v = r.data.via.u64;
            break;
        }
    }
    msgpack_unpacked_destroy(&r);
    return v;
}

/* The bool at key: 1, 0, or -1 when absent or not a bool. */
static int reply_bool(struct fx *f, const char *key)
{
    msgpack_unpacked r;
    msgpack_unpacked_init(&r);
    size_t off = 0;
    int v = -1;
    for (uint32_t i = 0; i < 2 * f->nk; i++) {
        if (msgpack_unpack_next(&r, f->sb.data, f->sb.size, &off) != MSGPACK_UNPACK_SUCCESS)
            break;
        if (i % 2 == 0 && r.data.type == MSGPACK_OBJECT_STR && r.data.via.str.size == strlen(key) &&
            !memcmp(r.data.via.str.ptr, key, strlen(key))) {
            if (msgpack_unpack_next(&r, f->sb.data, f->sb.size, &off) == MSGPACK_UNPACK_SUCCESS &&
                r.data.type == MSGPACK_OBJECT_BOOLEAN)
                v = r.data.via.boolean;
            break;
        }
    }
    msgpack_unpacked_destroy(&r);
    return v;
}

static struct kvn_radix_stats tstats(struct fx *f)
{
    struct kvn_radix_stats st;
    assert_int_equal(kvn_radix_stats(f->tree, &st, NULL), 0);
    return st;
}

static void test_config_errors(void **state)
{
    struct fx *f = *state;
    struct kvn_cluster *c = NULL;
    struct kvn_err e;
    struct kvn_cluster_cfg cc = base_cfg(f);
    assert_int_equal(kvn_cluster_create(NULL, &c, &e), -EINVAL);
    assert_int_equal(kvn_cluster_create(&cc, NULL, &e), -EINVAL);
    cc.pool = NULL;
    assert_int_equal(kvn_cluster_create(&cc, &c, &e), -EINVAL);
    cc = base_cfg(f);
    cc.self_ctl = "";
    assert_int_equal(kvn_cluster_create(&cc, &c, &e), -EINVAL);
    cc = base_cfg(f);
    cc.page_size = 0;
    assert_int_equal(kvn_cluster_create(&cc, &c, &e), -EINVAL);
    cc = base_cfg(f);
    cc.n_peers = 1; /* peers NULL */
    assert_int_equal(kvn_cluster_create(&cc, &c, &e), -EINVAL);
    const char *self[] = {"tcp://127.0.0.1:1"};
    cc.peers = self;
    assert_int_equal(kvn_cluster_create(&cc, &c, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "own endpoint"));
    cc = base_cfg(f);
    cc.n_peers = KVN_CLUSTER_MAX_PEERS + 1;
    cc.peers = self;
    assert_int_equal(kvn_cluster_create(&cc, &c, &e), -EINVAL);
    cc = base_cfg(f);
    cc.heartbeat_ms = 500;
    cc.timeout_ms = 100;
    assert_int_equal(kvn_cluster_create(&cc, &c, &e), -EINVAL);
    cc = base_cfg(f);
    cc.transport = "nonsense+x";
    assert_true(kvn_cluster_create(&cc, &c, &e) < 0);
    assert_null(c);
    kvn_cluster_destroy(NULL);
    kvn_cluster_release_all(NULL, f->tree);
}

static void test_rpc_errors(void **state)
{
    struct fx *f = *state;
    struct kvn_err e;
    int32_t t3[3] = {1, 2, 3}, t4[4] = {1, 2, 3, 4};
    struct kvn_radix_stats before = tstats(f);
    f->q.op = KVN_RPC_PIN;
    assert_int_equal(kvn_cluster_rpc(NULL, f->tree, &f->q, 0, 0, &f->pk, &f->nk, &e), -EINVAL);
    assert_int_equal(kvn_cluster_rpc(f->c, f->tree, NULL, 0, 0, &f->pk, &f->nk, &e), -EINVAL);
    assert_int_equal(kvn_cluster_rpc(f->c, f->tree, &f->q, 0, 0, NULL, &f->nk, &e), -EINVAL);
    /* not a cluster op; no tree */
    assert_false(kvn_cluster_owns_op(KVN_RPC_INSERT));
    assert_true(kvn_cluster_owns_op(KVN_RPC_FETCH));
    assert_int_equal(run(f, KVN_RPC_INSERT, t4, 4, &e), -ENOTSUP);
    f->q.op = KVN_RPC_PIN;
    assert_int_equal(kvn_cluster_rpc(f->c, NULL, &f->q, 0, 0, &f->pk, &f->nk, &e), -ENOTCONN);
    /* token lists that are not whole pages, or empty */
    static const enum kvn_rpc_op tok_ops[] = {KVN_RPC_PIN, KVN_RPC_RESERVE, KVN_RPC_FETCH,
                                              KVN_RPC_PUSH};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(run(f, tok_ops[i], t3, 3, &e), -EINVAL);
        assert_int_equal(run(f, tok_ops[i], t3, 0, &e), -EINVAL);
    }
    /* nothing to pin; unknown handles */
    assert_int_equal(run(f, KVN_RPC_PIN, t4, 4, &e), -ENOENT);
    f->q.handle = 77;
    assert_int_equal(run(f, KVN_RPC_UNPIN, NULL, 0, &e), -ENOENT);
    assert_int_equal(run(f, KVN_RPC_ABORT, NULL, 0, &e), -ENOENT);
    assert_int_equal(run(f, KVN_RPC_PUSH_DONE, NULL, 0, &e), -ENOENT);
    /* push to a node that is no peer */
    snprintf(f->q.to, sizeof(f->q.to), "tcp://127.0.0.1:2");
    assert_int_equal(run(f, KVN_RPC_PUSH, t4, 4, &e), -ENOTCONN);
    /* a reservation larger than the pool */
    static int32_t big[2 * 65];
    for (int i = 0; i < 130; i++)
        big[i] = i;
    assert_int_equal(run(f, KVN_RPC_RESERVE, big, 130, &e), -ENOSPC);
    /* a malformed hello */
    static const uint8_t junk[] = {0x81, 0xa1, 'x', 0x01};
    f->q.hello = junk;
    f->q.hello_len = sizeof(junk);
    assert_int_equal(run(f, KVN_RPC_PEER_HELLO, NULL, 0, &e), -EPROTO);
    struct kvn_cluster_stats cs;
    kvn_cluster_get_stats(f->c, &cs);
    assert_int_equal(cs.hello_bad, 1);
    assert_int_equal(cs.peers, 0);
    /* fetch with no peer: nothing to move, not an error */
    assert_int_equal(run(f, KVN_RPC_FETCH, t4, 4, &e), 0);
    assert_int_equal(reply_u64(f, "fetched_pages"), 0);
    /* match: argument errors */
    struct kvn_overlap o;
    assert_int_equal(kvn_cluster_match(NULL, t4, 4, 0, &o, &e), -EINVAL);
    assert_int_equal(kvn_cluster_match(f->c, NULL, 4, 0, &o, &e), -EINVAL);
    assert_int_equal(kvn_cluster_match(f->c, t4, 4, 3, &o, &e), -EINVAL);
    assert_int_equal(kvn_cluster_match(f->c, t4, 4, 0, &o, NULL), 0);
    assert_false(o.remote_found);
    /* nothing changed in the tree */
    struct kvn_radix_stats after = tstats(f);
    assert_int_equal(after.l2_reserved, before.l2_reserved);
    assert_int_equal(after.l2_free, before.l2_free);
    assert_int_equal(after.protected_nodes, 0);
    assert_int_equal(after.nodes, 0);
}

static void test_reserve_push_done_pin(void **state)
{
    struct fx *f = *state;
    struct kvn_err e;
    int32_t t6[6] = {10, 11, 12, 13, 14, 15};
    uint32_t free0 = tstats(f).l2_free;
    /* reserve 3 pages, report 2 of them, then the third: inserted once all landed */
    assert_int_equal(run(f, KVN_RPC_RESERVE, t6, 6, &e), 0);
    uint64_t h = reply_u64(f, "handle");
    assert_int_equal(tstats(f).l2_reserved, 3);
    f->q.handle = h;
    f->q.has_slots = true;
    f->q.n_slots = 2;
    f->q.slots[0] = 0;
    f->q.slots[1] = 2;
    assert_int_equal(run(f, KVN_RPC_PUSH_DONE, NULL, 0, &e), 0);
    assert_int_equal(reply_bool(f, "complete"), 0);
    assert_int_equal(f->cpu_stored, 0);
    f->q.n_slots = 1;
    f->q.slots[0] = 3; /* beyond the reservation */
    assert_int_equal(run(f, KVN_RPC_PUSH_DONE, NULL, 0, &e), -ERANGE);
    f->q.slots[0] = 2; /* duplicate */
    assert_int_equal(run(f, KVN_RPC_PUSH_DONE, NULL, 0, &e), -EALREADY);
    f->q.slots[0] = 1;
    assert_int_equal(run(f, KVN_RPC_PUSH_DONE, NULL, 0, &e), 0);
    assert_int_equal(reply_bool(f, "complete"), 1);
    assert_int_equal(reply_u64(f, "inserted_tokens"), 6);
    assert_int_equal(f->cpu_stored, 3);
    assert_int_equal(tstats(f).l2_reserved, 0);
    assert_int_equal(tstats(f).l2_free, free0 - 3);
    f->q.has_slots = false;
    assert_int_equal(run(f, KVN_RPC_PUSH_DONE, NULL, 0, &e), -ENOENT); /* late */
    /* the same tokens again: every page is there already, all given back */
    assert_int_equal(run(f, KVN_RPC_RESERVE, t6, 6, &e), 0);
    f->q.handle = reply_u64(f, "handle");
    assert_int_equal(run(f, KVN_RPC_PUSH_DONE, NULL, 0, &e), 0);
    assert_int_equal(reply_u64(f, "inserted_tokens"), 6);
    assert_int_equal(tstats(f).l2_free, free0 - 3);
    assert_int_equal(f->cpu_stored, 3);
    /* abort gives the pages back */
    int32_t t2[2] = {90, 91};
    assert_int_equal(run(f, KVN_RPC_RESERVE, t2, 2, &e), 0);
    f->q.handle = reply_u64(f, "handle");
    assert_int_equal(run(f, KVN_RPC_ABORT, NULL, 0, &e), 0);
    assert_int_equal(tstats(f).l2_reserved, 0);
    assert_int_equal(run(f, KVN_RPC_ABORT, NULL, 0, &e), -ENOENT);
    /* pin the pushed prefix: protected until unpin */
    f->q.lease_ms = 50;
    assert_int_equal(run(f, KVN_RPC_PIN, t6, 6, &e), 0);
    assert_int_equal(reply_u64(f, "pinned_tokens"), 6);
    uint64_t ph = reply_u64(f, "handle");
    assert_int_equal(tstats(f).protected_nodes, 1);
    f->q.handle = ph;
    assert_int_equal(run(f, KVN_RPC_UNPIN, NULL, 0, &e), 0);
    assert_int_equal(tstats(f).protected_nodes, 0);
    assert_int_equal(run(f, KVN_RPC_UNPIN, NULL, 0, &e), -ENOENT);
    /* a pin whose lease expires on the tick */
    assert_int_equal(run(f, KVN_RPC_PIN, t6, 6, &e), 0);
    assert_int_equal(tstats(f).protected_nodes, 1);
    kvn_cluster_tick(f->c, f->tree, 1000 + 49);
    assert_int_equal(tstats(f).protected_nodes, 1);
    kvn_cluster_tick(f->c, f->tree, 1000 + 50);
    assert_int_equal(tstats(f).protected_nodes, 0);
    /* a reservation that expires on the tick */
    f->q.lease_ms = 20;
    assert_int_equal(run(f, KVN_RPC_RESERVE, t2, 2, &e), 0);
    assert_int_equal(tstats(f).l2_reserved, 1);
    assert_int_equal(kvn_cluster_timeout_ms(f->c, 1000, 500), 1); /* open: wake every ms */
    kvn_cluster_tick(f->c, f->tree, 1000 + 20);
    assert_int_equal(tstats(f).l2_reserved, 0);
    struct kvn_cluster_stats cs;
    kvn_cluster_get_stats(f->c, &cs);
    assert_int_equal(cs.pins, 2);
    assert_int_equal(cs.pin_expired, 1);
    assert_int_equal(cs.unpin_bad, 1);
    assert_int_equal(cs.reservations, 4);
    assert_int_equal(cs.res_completed, 2);
    assert_int_equal(cs.res_aborted, 1);
    assert_int_equal(cs.res_expired, 1);
    assert_int_equal(cs.res_refused, 4);
    /* release_all: open pins and reservations go back */
    f->q.lease_ms = 100000;
    assert_int_equal(run(f, KVN_RPC_PIN, t6, 6, &e), 0);
    assert_int_equal(run(f, KVN_RPC_RESERVE, t2, 2, &e), 0);
    kvn_cluster_release_all(f->c, f->tree);
    assert_int_equal(tstats(f).protected_nodes, 0);
    assert_int_equal(tstats(f).l2_reserved, 0);
}

static void test_loop_hooks(void **state)
{
    struct fx *f = *state;
    zmq_pollitem_t items[8];
    assert_int_equal(kvn_cluster_poll_items(NULL, items, 8), 0);
    assert_int_equal(kvn_cluster_poll_items(f->c, NULL, 8), 0);
    assert_int_equal(kvn_cluster_poll_items(f->c, items, 0), 0);
    int n = kvn_cluster_poll_items(f->c, items, 8);
    assert_int_equal(n, 1); /* the transport's wait fd; no peer */
    assert_true(items[0].fd >= 0);
    kvn_cluster_handle(f->c, items, n, 5);
    kvn_cluster_handle(NULL, items, n, 5);
    kvn_cluster_tick(NULL, f->tree, 5);
    assert_int_equal(kvn_cluster_timeout_ms(f->c, 5, 300), 300); /* nothing due */
    assert_int_equal(kvn_cluster_timeout_ms(NULL, 5, 300), 300);
    assert_null(kvn_cluster_peer_endpoint(f->c, 0));
    struct kvn_cluster_stats st;
    kvn_cluster_get_stats(NULL, &st);
    assert_int_equal(st.peers, 0);
    kvn_cluster_get_stats(f->c, NULL);
    uint32_t nk = 0;
    msgpack_sbuffer_clear(&f->sb);
    kvn_cluster_pack_stats(f->c, &f->pk, &nk);
    assert_true(nk > 30);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpc_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_push_done_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_hooks, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
