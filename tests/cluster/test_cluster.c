/*
 * test_cluster.c - three real kvnode processes on 127.0.0.1 (argv: kvnode, kvctl, transport):
 *
 *   replication   every node's global index converges to the union of what the others
 *                 stored; kill -9 of a peer drops its entries everywhere; when it returns
 *                 (same endpoints, new incarnation) the others relearn what it stores;
 *   fetch / push  cross-node fetch and prefill -> decode push move the exact bytes (FNV-1a of
 *                 the source L1 slots == of the slots loaded back on the other node);
 *   faults        a lease that expires mid-fetch and an owner killed mid-fetch leave no
 *                 partial state (nothing inserted, every reserved page back);
 *   bad input     push to a stranger, reserve/push_done/abort misuse (out of range,
 *                 duplicate, late), unpin of a dead handle, a malformed peer_hello: each
 *                 refused with its code and counted, nothing changes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cluster_harness.h"

static const char *g_transport = "ofi+tcp";

#define PS CH_PS /* tokens per page */

/*
 * Starts nodes[0..n): node 0 with --cluster, node i with --peer of every earlier node (node 0
 * learns the later ones from their hellos).  extra[i] (may be NULL) adds flags to node i.
 */
static void start_cluster(struct th_node *nodes, int n, const char *const *extra[])
{
    for (int attempt = 0; attempt < 5; attempt++) {
        int base = ch_port_base();
        bool ok = true;
        for (int i = 0; i < n && ok; i++) {
            ch_node_init(&nodes[i], "127.0.0.1", NULL, base + 10 * i);
            const char *argv[40];
            int k = 0;
            const char *fixed[] = {
                "--transport",       g_transport, "--page-size", "2",    "--page-bytes",   "4K",
                "--host-pool",       "2M",        "--l1",        "512K", "--heartbeat-ms", "100",
                "--peer-timeout-ms", "800",       "--log-level", "info"};
            for (size_t j = 0; j < sizeof(fixed) / sizeof(fixed[0]); j++)
                argv[k++] = fixed[j];
            if (i == 0)
                argv[k++] = "--cluster";
            for (int j = 0; j < i; j++) {
                argv[k++] = "--peer";
                argv[k++] = nodes[j].ctl;
            }
            for (int j = 0; extra && extra[i] && extra[i][j]; j++)
                argv[k++] = extra[i][j];
            argv[k] = NULL;
            int rc = ch_node_start(&nodes[i], argv);
            if (rc == -EADDRINUSE)
                ok = false;
            else
                assert_int_equal(rc, 0);
        }
        if (ok) {
            for (int i = 0; i < n; i++)
                assert_true(ch_wait_stat(&nodes[i], "cluster_peers_up", (uint64_t)n - 1, 500));
            return;
        }
        th_kill_all();
    }
    fail_msg("could not find free ports");
}

static void insert_seqs(struct th_node *n, int i, int nseq, uint32_t pages, uint32_t slot0)
{
    int32_t toks[64];
    uint32_t slots[32];
    for (int s = 0; s < nseq; s++) {
        ch_seq(i, s, toks, pages);
        for (uint32_t p = 0; p < pages; p++)
            slots[p] = slot0 + (uint32_t)s * pages + p;
        struct kvn_client_reply *r;
        struct kvn_err e;
        assert_int_equal(kvn_client_insert(n->c, toks, pages * PS, slots, pages, &r, &e), 0);
        kvn_client_reply_free(r);
    }
    assert_true(ch_quiesce(n));
}

static void test_replication(void **state)
{
    (void)state;
    struct th_node nd[3];
    start_cluster(nd, 3, NULL);
    /* every node stores 3 sequences of 4 pages (write-through: CPU_PINNED on ack) */
    for (int i = 0; i < 3; i++)
        insert_seqs(&nd[i], i, 3, 4, 0);
    /* convergence: each node holds the union of the others' 24 pages, nothing of its own */
    for (int x = 0; x < 3; x++) {
        assert_true(ch_wait_stat(&nd[x], "cluster_remote_blocks", 24, 500));
        for (int i = 0; i < 3; i++)
            for (int s = 0; s < 3; s++)
                assert_true(ch_sees(&nd[x], i, s, 4, i == x ? 0 : 4));
    }
    /* a prefix query longer than what is stored reports the stored part */
    int32_t longer[12];
    ch_seq(1, 0, longer, 6);
    uint64_t rp;
    assert_int_equal(ch_match(&nd[0], longer, 12, &rp, NULL), 0);
    assert_int_equal(rp, 4);

    /* kill -9 node 1: the others drop its entries */
    char ctl1[64];
    int port1 = nd[1].port;
    snprintf(ctl1, sizeof(ctl1), "%s", nd[1].ctl);
    th_node_kill9(&nd[1]);
    for (int x = 0; x < 3; x += 2) {
        assert_true(ch_wait_stat(&nd[x], "cluster_peers_up", 1, 500));
        assert_true(ch_wait_stat(&nd[x], "cluster_remote_blocks", 12, 100));
        assert_true(th_stat(&nd[x], "cluster_peer_deaths") >= 1);
        for (int s = 0; s < 3; s++)
            assert_true(ch_sees(&nd[x], 1, s, 4, 0));
        assert_true(ch_sees(&nd[x], 2 - x, 0, 4, 4)); /* the survivor is still known */
    }
    /* it returns on the same endpoints (a new incarnation) and stores again: relearned */
    ch_node_init(&nd[1], "127.0.0.1", NULL, port1);
    const char *argv[] = {"--transport",
                          g_transport,
                          "--page-size",
                          "2",
                          "--page-bytes",
                          "4K",
                          "--host-pool",
                          "2M",
                          "--l1",
                          "512K",
                          "--heartbeat-ms",
                          "100",
                          "--peer-timeout-ms",
                          "800",
                          "--peer",
                          nd[0].ctl,
                          "--peer",
                          nd[2].ctl,
                          NULL};
    assert_int_equal(ch_node_start(&nd[1], argv), 0);
    assert_string_equal(nd[1].ctl, ctl1);
    for (int x = 0; x < 3; x++)
        assert_true(ch_wait_stat(&nd[x], "cluster_peers_up", 2, 500));
    insert_seqs(&nd[1], 1, 3, 4, 0);
    for (int x = 0; x < 3; x += 2) {
        assert_true(ch_wait_stat(&nd[x], "cluster_remote_blocks", 24, 500));
        for (int s = 0; s < 3; s++)
            assert_true(ch_sees(&nd[x], 1, s, 4, 4));
    }
    /* the returned node learned the others' history by replay */
    assert_true(ch_wait_stat(&nd[1], "cluster_remote_blocks", 24, 500));
    for (int s = 0; s < 3; s++)
        assert_true(ch_sees(&nd[1], 0, s, 4, 4));
    /* nothing malformed was applied anywhere, and everyone stops cleanly */
    for (int x = 0; x < 3; x++) {
        assert_int_equal(th_stat(&nd[x], "cluster_sub_malformed"), 0);
        assert_int_equal(th_node_stop(&nd[x]), 0);
    }
}

static void fill(struct th_node *n, const uint32_t *slots, uint32_t k, uint64_t seed)
{
    struct kvn_client_req q = {.op = KVN_RPC_L1_FILL, .slots = slots, .n_slots = k, .seed = seed};
    struct kvn_err e;
    assert_int_equal(ch_call(n, &q, NULL, NULL, &e), 0);
}

/* load_back tokens into slots on n and wait for the copy. */
static void load_back(struct th_node *n, const int32_t *toks, uint32_t nt, const uint32_t *slots,
                      uint32_t k)
{
    struct kvn_client_req q = {
        .op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = nt, .slots = slots, .n_slots = k};
    struct kvn_err e;
    uint64_t pages = 0;
    assert_int_equal(ch_call(n, &q, "pages", &pages, &e), 0);
    assert_int_equal(pages, k);
    assert_true(ch_quiesce(n));
}

static void test_fetch_push(void **state)
{
    (void)state;
    struct th_node nd[3];
    start_cluster(nd, 3, NULL);
    struct kvn_err e;
    /* A (node 0) computes 5 pages into L1 slots 0..4; write-through puts them in its pool */
    int32_t toks[10];
    ch_seq(0, 7, toks, 5);
    uint32_t src[5] = {0, 1, 2, 3, 4}, dst[5] = {30, 31, 32, 33, 34};
    fill(&nd[0], src, 5, 4242);
    struct kvn_client_reply *r;
    assert_int_equal(kvn_client_insert(nd[0].c, toks, 10, src, 5, &r, &e), 0);
    kvn_client_reply_free(r);
    assert_true(ch_quiesce(&nd[0]));
    uint64_t want[5], got[5];
    assert_int_equal(ch_sums(&nd[0], src, 5, want), 0);
    /* C (node 2) sees it remotely, fetches it into its pool, loads it into its L1 */
    assert_true(ch_sees(&nd[2], 0, 7, 5, 5));
    uint64_t free_before = th_stat(&nd[2], "l2_free");
    assert_int_equal(kvn_client_fetch(nd[2].c, toks, 10, 0, &r, &e), 0);
    uint64_t fetched = 0, bytes = 0, peer = 99;
    kvn_client_reply_u64(r, "fetched_pages", &fetched);
    kvn_client_reply_u64(r, "bytes", &bytes);
    kvn_client_reply_u64(r, "peer", &peer);
    kvn_client_reply_free(r);
    assert_int_equal(fetched, 5);
    assert_int_equal(bytes, 5 * 4096);
    assert_int_equal(th_stat(&nd[2], "l2_free"), free_before - 5);
    uint64_t host = 0, rp = 0;
    assert_int_equal(ch_match(&nd[2], toks, 10, &rp, &host), 0);
    assert_int_equal(host, 10);
    load_back(&nd[2], toks, 10, dst, 5);
    assert_int_equal(ch_sums(&nd[2], dst, 5, got), 0);
    assert_memory_equal(want, got, sizeof(want));
    /* the owner's pin is gone, and a second fetch has nothing left to move */
    assert_int_equal(th_stat(&nd[0], "cluster_pins_active"), 0);
    assert_int_equal(th_stat(&nd[0], "cluster_pins"), 1);
    assert_int_equal(kvn_client_fetch(nd[2].c, toks, 10, 0, &r, &e), 0);
    kvn_client_reply_u64(r, "fetched_pages", &fetched);
    kvn_client_reply_free(r);
    assert_int_equal(fetched, 0);
    /* B (node 1) learns C's copy by replication: CPU_PINNED at both 0 and 2 */
    assert_true(ch_wait_stat(&nd[1], "cluster_remote_blocks", 10, 500));

    /* push: A writes 3 fresh pages from L1 slots 10..12 into B, which inserts them */
    int32_t ptoks[6];
    ch_seq(0, 9, ptoks, 3);
    uint32_t psrc[3] = {10, 11, 12}, pdst[3] = {40, 41, 42};
    fill(&nd[0], psrc, 3, 777);
    uint64_t pwant[3], pgot[3];
    assert_int_equal(ch_sums(&nd[0], psrc, 3, pwant), 0);
    assert_int_equal(kvn_client_push(nd[0].c, nd[1].ctl, ptoks, 6, psrc, 3, &r, &e), 0);
    uint64_t inserted = 0, pages = 0;
    kvn_client_reply_u64(r, "inserted_tokens", &inserted);
    kvn_client_reply_u64(r, "pages", &pages);
    kvn_client_reply_free(r);
    assert_int_equal(pages, 3);
    assert_int_equal(inserted, 6);
    assert_int_equal(ch_match(&nd[1], ptoks, 6, NULL, &host), 0);
    assert_int_equal(host, 6);
    load_back(&nd[1], ptoks, 6, pdst, 3);
    assert_int_equal(ch_sums(&nd[1], pdst, 3, pgot), 0);
    assert_memory_equal(pwant, pgot, sizeof(pwant));
    assert_int_equal(th_stat(&nd[1], "cluster_res_completed"), 1);
    /* push from A's pool (no slots): the fetched-and-written pages of seq (0, 7) to B */
    assert_int_equal(kvn_client_push(nd[0].c, nd[1].ctl, toks, 10, NULL, 0, &r, &e), 0);
    kvn_client_reply_u64(r, "inserted_tokens", &inserted);
    kvn_client_reply_free(r);
    assert_int_equal(inserted, 10);
    load_back(&nd[1], toks, 10, dst, 5);
    assert_int_equal(ch_sums(&nd[1], dst, 5, got), 0);
    assert_memory_equal(want, got, sizeof(want));
    for (int x = 0; x < 3; x++)
        assert_int_equal(th_node_stop(&nd[x]), 0);
}

static void test_fetch_faults(void **state)
{
    (void)state;
    struct th_node nd[3];
    const char *hold[] = {"--inject-fetch-hold", "600", NULL};
    const char *const *extra[3] = {NULL, NULL, hold};
    start_cluster(nd, 3, extra);
    struct kvn_err e;
    struct kvn_client_reply *r = NULL;
    int32_t toks[8];
    ch_seq(0, 3, toks, 4);
    uint32_t src[4] = {0, 1, 2, 3};
    fill(&nd[0], src, 4, 11);
    assert_int_equal(kvn_client_insert(nd[0].c, toks, 8, src, 4, &r, &e), 0);
    kvn_client_reply_free(r);
    assert_true(ch_quiesce(&nd[0]));
    assert_true(ch_sees(&nd[2], 0, 3, 4, 4));
    uint64_t free_before = th_stat(&nd[2], "l2_free");

    /* lease of 50 ms, fetch holds 600 ms before unpinning: the owner expires the pin */
    int rc = kvn_client_fetch(nd[2].c, toks, 8, 50, &r, &e);
    assert_int_equal(rc, -ESTALE);
    assert_non_null(strstr(e.msg, "nothing inserted"));
    uint64_t host = 99;
    assert_int_equal(ch_match(&nd[2], toks, 8, NULL, &host), 0);
    assert_int_equal(host, 0);
    assert_int_equal(th_stat(&nd[2], "l2_free"), free_before);
    assert_int_equal(th_stat(&nd[2], "cluster_fetch_failed"), 1);
    assert_int_equal(th_stat(&nd[0], "cluster_pin_expired"), 1);
    assert_int_equal(th_stat(&nd[0], "cluster_pins_active"), 0);
    assert_int_equal(th_stat(&nd[0], "cluster_unpin_bad"), 1);

    /* the owner killed mid-fetch: a kvctl fetch runs while we kill -9 node 0 */
    char out[160];
    snprintf(out, sizeof(out), "%s/fetch.out", TH.tmpdir);
    char *argv[] = {(char *)TH.kvctl, "-c",        nd[2].ctl, "fetch", "100000,100001,103000",
                    "--json",         "--timeout", "20000",   NULL};
    /* (a 3-token list is refused: check the error path of kvctl's fetch too) */
    pid_t p = th_spawn(argv, out, NULL);
    assert_int_equal(th_wait(p, 20000), 1);
    char tl[128];
    int k = 0;
    for (int i = 0; i < 8; i++)
        k += snprintf(tl + k, sizeof(tl) - (size_t)k, "%s%d", i ? "," : "", toks[i]);
    argv[4] = tl;
    p = th_spawn(argv, out, NULL);
    th_sleep_ms(250); /* inside the hold (pinned, read, not yet unpinned) */
    th_node_kill9(&nd[0]);
    int st = th_wait(p, 20000);
    char *o = th_slurp(out);
    if (st == 0)
        fprintf(stderr, "fetch output: %s\n", o);
    free(o);
    assert_int_equal(st, 1); /* refused: the pin could not be released */
    assert_int_equal(ch_match(&nd[2], toks, 8, NULL, &host), 0);
    assert_int_equal(host, 0);
    assert_int_equal(th_stat(&nd[2], "l2_free"), free_before);
    assert_int_equal(th_stat(&nd[2], "cluster_fetch_failed"), 2);
    assert_int_equal(th_stat(&nd[2], "cluster_fetch_pages"), 0);
    th_node_stop(&nd[1]);
    assert_int_equal(th_node_stop(&nd[2]), 0);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct th_node nd[2];
    start_cluster(nd, 2, NULL);
    struct kvn_err e;
    struct kvn_client_reply *r = NULL;
    int32_t toks[6];
    ch_seq(1, 1, toks, 3);
    uint64_t free0 = th_stat(&nd[1], "l2_free");
    /* push to a node that is no peer */
    assert_int_equal(kvn_client_push(nd[0].c, "tcp://127.0.0.1:1", toks, 6, NULL, 0, &r, &e),
                     -ENOTCONN);
    /* push from the pool of pages it does not hold; slots beyond L1 */
    assert_int_equal(kvn_client_push(nd[0].c, nd[1].ctl, toks, 6, NULL, 0, &r, &e), -ENOENT);
    uint32_t far[3] = {0, 1, 999999};
    assert_int_equal(kvn_client_push(nd[0].c, nd[1].ctl, toks, 6, far, 3, &r, &e), -EINVAL);
    assert_int_equal(kvn_client_push(nd[0].c, nd[1].ctl, toks, 5, NULL, 0, &r, &e), -EINVAL);
    /* a reservation on B, then misuse of it */
    struct kvn_client_req q = {.op = KVN_RPC_RESERVE, .tokens = toks, .n_tokens = 6};
    uint64_t h = 0;
    assert_int_equal(ch_call(&nd[1], &q, "handle", &h, &e), 0);
    assert_int_equal(th_stat(&nd[1], "l2_free"), free0 - 3);
    uint32_t beyond[1] = {3}, one[1] = {0};
    q = (struct kvn_client_req){
        .op = KVN_RPC_PUSH_DONE, .handle = h, .slots = beyond, .n_slots = 1};
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -ERANGE);
    q.slots = one;
    uint64_t complete = 1;
    assert_int_equal(ch_call(&nd[1], &q, "complete", &complete, &e), 0);
    assert_int_equal(complete, 0);
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -EALREADY);
    /* nothing became visible */
    uint64_t host = 9;
    assert_int_equal(ch_match(&nd[1], toks, 6, NULL, &host), 0);
    assert_int_equal(host, 0);
    q = (struct kvn_client_req){.op = KVN_RPC_ABORT, .handle = h};
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), 0);
    assert_int_equal(th_stat(&nd[1], "l2_free"), free0);
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -ENOENT); /* duplicate abort */
    q = (struct kvn_client_req){.op = KVN_RPC_PUSH_DONE, .handle = h};
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -ENOENT); /* late */
    assert_non_null(strstr(e.msg, "aborted"));
    assert_int_equal(th_stat(&nd[1], "cluster_res_refused"), 4);
    /* a reservation that times out gives its pages back */
    q = (struct kvn_client_req){
        .op = KVN_RPC_RESERVE, .tokens = toks, .n_tokens = 6, .lease_ms = 50};
    assert_int_equal(ch_call(&nd[1], &q, "handle", &h, &e), 0);
    assert_true(ch_wait_stat(&nd[1], "cluster_res_expired", 1, 200));
    assert_int_equal(th_stat(&nd[1], "l2_free"), free0);
    q = (struct kvn_client_req){.op = KVN_RPC_PUSH_DONE, .handle = h};
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "expired"));
    /* unpin of a handle nobody holds; pin of tokens nobody stores */
    q = (struct kvn_client_req){.op = KVN_RPC_UNPIN, .handle = 12345};
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -ENOENT);
    q = (struct kvn_client_req){.op = KVN_RPC_PIN, .tokens = toks, .n_tokens = 6};
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -ENOENT);
    /* malformed peer hellos: refused, counted, the peer set unchanged */
    uint64_t bad0 = th_stat(&nd[1], "cluster_hello_bad");
    static const uint8_t junk[] = {0x81, 0xa1, 'x', 0x01};
    q = (struct kvn_client_req){.op = KVN_RPC_PEER_HELLO, .hello = junk, .hello_len = 4};
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -EPROTO);
    q.hello_len = 2;
    assert_int_equal(ch_call(&nd[1], &q, NULL, NULL, &e), -EPROTO);
    assert_int_equal(th_stat(&nd[1], "cluster_hello_bad"), bad0 + 2);
    assert_int_equal(th_stat(&nd[1], "cluster_peers"), 1);
    /* cluster ops on a node outside any cluster */
    struct th_node lone;
    ch_node_init(&lone, "127.0.0.1", NULL, 0);
    const char *argv[] = {"--transport",  g_transport, "--page-size", "2",
                          "--page-bytes", "4K",        "--host-pool", "1M",
                          "--l1",         "64K",       NULL};
    int rc = ch_node_start(&lone, argv);
    if (rc == 0) {
        assert_int_equal(kvn_client_fetch(lone.c, toks, 6, 0, &r, &e), -ENOTSUP);
        assert_int_equal(th_node_stop(&lone), 0);
    }
    for (int x = 0; x < 2; x++)
        assert_int_equal(th_node_stop(&nd[x]), 0);
}

int main(int argc, char **argv)
{
    if (ch_args(argc, argv, &g_transport) < 0)
        return 2;
    if (th_tmpdir_make("/tmp/kvn-cluster-XXXXXX") < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_replication, th_teardown),
        cmocka_unit_test_teardown(test_fetch_push, th_teardown),
        cmocka_unit_test_teardown(test_fetch_faults, th_teardown),
        cmocka_unit_test_teardown(test_bad_input, th_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (rc == 0 && th_tmpdir_remove() < 0)
        rc = 1;
    return rc;
}
