/*
 * test_workload.c - 10,000 random requests (insert, match, lock/unlock,
 * backup, load_back, evict L1/L2, reset, stats) against a live kvnode with
 * small tiers (evictions everywhere) and a small injected ack delay (splits
 * of pending write-throughs). The independent consumer never sees an
 * unknown parent; a late joiner that replays the whole history learns the
 * same index as the live subscriber; locks return to zero.
 * argv: kvnode kvctl consumer.py events_dump.py [transport]
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "node/kvn_rpc.h"
#include "node_harness.h"

#define N_REQUESTS  10000
#define MAX_HANDLES 64

static const char *g_transport = "ofi+tcp";

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* A random path in a 3-ary tree of pages (depth 1..6): lots of shared prefixes. */
static uint32_t path(int32_t *toks)
{
    uint32_t pages = 1 + rnd(6);
    for (uint32_t i = 0; i < pages; i++) {
        toks[2 * i] = (int32_t)(i * 16 + rnd(3));
        toks[2 * i + 1] = 7;
    }
    return pages * 2;
}

static void assert_clean(const char *p)
{
    cJSON *j = h_consumer_summary(p);
    assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "gaps")), 0);
    cJSON_Delete(j);
}

static void test_random_workload(void **state)
{
    (void)state;
    struct th_node n;
    const char *flags[] = {
        "--transport",    g_transport, "--page-size", "2",    "--page-bytes",       "4K",
        "--host-pool",    "512K",      "--l1",        "256K", "--inject-ack-delay", "2",
        "--buffer-steps", "200000",    NULL};
    int rc = h_node_start(&n, flags);
    if (rc == -ENOTSUP) {
        skip();
        return;
    }
    assert_int_equal(rc, 0);
    char cons[128], live[128], late[128], late_cons[128], r1[128], r2[128];
    th_path(cons, sizeof(cons), "wl_consumer.json");
    th_path(live, sizeof(live), "wl_live.json");
    th_path(late, sizeof(late), "wl_late.json");
    th_path(late_cons, sizeof(late_cons), "wl_late_consumer.json");
    th_path(r1, sizeof(r1), "wl_r1");
    th_path(r2, sizeof(r2), "wl_r2");
    const char *cargs[] = {"--endpoint", n.pub, "--page-size", "2", "--seconds", "5", NULL};
    pid_t pc = h_python(H.consumer, cons, r1, cargs);
    const char *dargs[] = {"--endpoint", n.pub, "--seconds", "5", NULL};
    pid_t pd = h_python(H.dump, live, r2, dargs);

    struct kvn_err e;
    uint64_t handles[MAX_HANDLES];
    int n_handles = 0;
    int counts[KVN_RPC_OP_COUNT] = {0}, errors = 0;
    for (int i = 0; i < N_REQUESTS; i++) {
        int32_t toks[12];
        uint32_t nt = path(toks);
        uint32_t dice = rnd(1000);
        struct kvn_client_req q = {.tokens = toks, .n_tokens = nt};
        struct kvn_client_reply *r = NULL;
        if (dice < 450) {
            q.op = KVN_RPC_INSERT;
        } else if (dice < 700) {
            q.op = KVN_RPC_MATCH;
        } else if (dice < 760) {
            q.op = n_handles < MAX_HANDLES ? KVN_RPC_LOCK : KVN_RPC_MATCH;
        } else if (dice < 820) {
            q.op = KVN_RPC_UNLOCK;
            if (n_handles == 0)
                q.op = KVN_RPC_STATS;
            else {
                int k = (int)rnd((uint32_t)n_handles);
                q.handle = handles[k];
                handles[k] = handles[--n_handles];
            }
        } else if (dice < 870) {
            q.op = KVN_RPC_BACKUP;
        } else if (dice < 920) {
            q.op = KVN_RPC_LOAD_BACK;
        } else if (dice < 955) {
            q.op = KVN_RPC_EVICT;
            q.tier = KVN_RPC_TIER_L1;
            q.pages = 1 + rnd(8);
        } else if (dice < 990) {
            q.op = KVN_RPC_EVICT;
            q.tier = KVN_RPC_TIER_L2;
            q.pages = 1 + rnd(8);
        } else if (dice < 992) {
            q.op = KVN_RPC_RESET;
            n_handles = 0; /* a reset drops every lock */
        } else {
            q.op = KVN_RPC_STATS;
        }
        rc = kvn_client_call(n.c, &q, &r, &e);
        counts[q.op]++;
        if (rc < 0) {
            /* the only refusals a well-formed request may meet */
            if (rc != -ENOENT && rc != -ENOSPC && rc != -EBUSY)
                fail_msg("request %d (%s): %s (%d)", i, kvn_rpc_op_name(q.op), e.msg, rc);
            errors++;
        } else if (q.op == KVN_RPC_LOCK) {
            assert_int_equal(kvn_client_reply_u64(r, "handle", &handles[n_handles]), 0);
            n_handles++;
        }
        kvn_client_reply_free(r);
    }
    for (int k = 0; k < n_handles; k++) {
        struct kvn_client_req q = {.op = KVN_RPC_UNLOCK, .handle = handles[k]};
        assert_int_equal(kvn_client_call(n.c, &q, NULL, &e), 0);
    }
    assert_true(h_quiesce(&n));
    assert_int_equal(th_stat(&n, "locks_held"), 0);
    assert_int_equal(th_stat(&n, "ack_errors"), 0);
    assert_int_equal(th_stat(&n, "events_dropped"), 0);
    assert_int_equal(th_stat(&n, "jobs_failed"), 0);
    printf("workload: %d refusals (ENOENT/ENOSPC/EBUSY); inserts %d, acks %llu, events %llu\n",
           errors, counts[KVN_RPC_INSERT], (unsigned long long)th_stat(&n, "acks_ok"),
           (unsigned long long)th_stat(&n, "events_published"));
    assert_true(th_stat(&n, "acks_ok") > 100);

    assert_int_equal(th_wait(pc, 120000), 0);
    assert_int_equal(th_wait(pd, 120000), 0);
    assert_clean(cons);
    /* late join: replay everything from seq 0, no live traffic */
    const char *largs[] = {"--replay", n.rep, "--seconds", "5", NULL};
    pid_t pl = h_python(H.dump, late, NULL, largs);
    assert_int_equal(th_wait(pl, 120000), 0);
    const char *lcargs[] = {"--endpoint", n.pub,       "--replay", n.rep, "--page-size",
                            "2",          "--seconds", "2",        NULL};
    pid_t plc = h_python(H.consumer, late_cons, NULL, lcargs);
    assert_int_equal(th_wait(plc, 120000), 0);
    assert_clean(late_cons);

    cJSON *a = h_json_file(live), *b = h_json_file(late);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(a, "unknown_parent")), 0);
    assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(b, "unknown_parent")), 0);
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(a, "last_seq")) > 0);
    assert_true(cJSON_Compare(cJSON_GetObjectItem(a, "last_seq"),
                              cJSON_GetObjectItem(b, "last_seq"), true));
    assert_true(
        cJSON_Compare(cJSON_GetObjectItem(a, "index"), cJSON_GetObjectItem(b, "index"), true));
    assert_true(cJSON_Compare(cJSON_GetObjectItem(a, "cpu_stored"),
                              cJSON_GetObjectItem(b, "cpu_stored"), true));
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(a, "cpu_stored")) > 100);
    cJSON_Delete(a);
    cJSON_Delete(b);
    assert_int_equal(th_node_stop(&n), 0);
}

int main(int argc, char **argv)
{
    if (h_args(argc, argv, " [TRANSPORT]") < 0)
        return 2;
    if (argc > 5)
        g_transport = argv[5];
    if (th_tmpdir_make("/tmp/kvn_node_wl_XXXXXX") < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_random_workload, th_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_kill_all();
    if (th_tmpdir_remove() < 0)
        fprintf(stderr, "could not remove %s\n", TH.tmpdir);
    return rc;
}
