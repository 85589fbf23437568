/*
 * test_daemon.c - real kvnode processes on 127.0.0.1, driven by kvctl and
 * libkvnode, events checked by ../shared/tools/kv_events_consumer.py and
 * tests/node/events_dump.py:
 *   - the split-while-pending race through the daemon, per transport;
 *   - data integrity: write through, overwrite L1, evict, load back;
 *   - SIGTERM drains held completions and flushes their events, exit 0;
 *   - locks, leases, kvctl's exit codes and --json, the L3 storage tier.
 * argv: kvnode kvctl consumer.py events_dump.py
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <dirent.h>

#include <pthread.h>
#include <stdatomic.h>

#include "engine_thread.h"
#include "node/kvn_rpc.h"
#include "node_harness.h"
#include "th_cmocka.h"
#include "transport/kvn_xport.h"

static void assert_consumer_clean(const char *path)
{
    cJSON_Delete(h_consumer_summary(path));
}

static int64_t jint(const cJSON *a)
{
    return (int64_t)cJSON_GetNumberValue(a); /* hashes: compared via the raw text below */
}

static void race(const char *transport, const char *format)
{
    struct th_node n;
    const char *flags[] = {"--transport",
                           transport,
                           "--page-size",
                           "2",
                           "--page-bytes",
                           "4K",
                           "--host-pool",
                           "4M",
                           "--inject-ack-delay",
                           "500",
                           "--write-policy",
                           "write_through",
                           "--l1",
                           "1M",
                           "--events-format",
                           format,
                           NULL};
    int rc = h_node_start(&n, flags);
    if (rc == -ENOTSUP) {
        skip();
        return;
    }
    assert_int_equal(rc, 0);
    char cons_out[128], dump_out[128], ready1[128], ready2[128];
    th_path(cons_out, sizeof(cons_out), "race_consumer.json");
    th_path(dump_out, sizeof(dump_out), "race_dump.json");
    th_path(ready1, sizeof(ready1), "ready1");
    th_path(ready2, sizeof(ready2), "ready2");
    const char *cargs[] = {"--endpoint", n.pub,       "--topic", "kv-events", "--page-size",
                           "2",          "--seconds", "3",       NULL};
    pid_t cons = h_python(H.consumer, cons_out, ready1, cargs);
    const char *dargs[] = {"--endpoint", n.pub, "--seconds", "3", NULL};
    pid_t dump = h_python(H.dump, dump_out, ready2, dargs);

    char *out, *err;
    const char *i1[] = {"insert", "1,2,3,4", "--slots", "0,1", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, i1), 0);
    free(out);
    free(err);
    const char *i2[] = {"insert", "1,2,5,6", "--slots", "2,3", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, i2), 0);
    free(out);
    free(err);
    /* the first job is still held (500 ms): the second insert split a pending node */
    assert_true(th_stat(&n, "pending_jobs") >= 1);
    assert_int_equal(th_stat(&n, "acks_ok"), 0);
    assert_true(h_quiesce(&n));
    assert_int_equal(th_stat(&n, "acks_ok"), 2);

    assert_int_equal(th_wait(cons, 30000), 0);
    assert_int_equal(th_wait(dump, 30000), 0);
    assert_consumer_clean(cons_out);
    cJSON *j = h_json_file(dump_out);
    assert_non_null(j);
    assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "unknown_parent")), 0);
    cJSON *cpu = cJSON_GetObjectItem(j, "cpu_stored");
    assert_true(cJSON_GetArraySize(cpu) >= 2);
    /* [[1,2], None, h12], [[3,4], h12, h34] in that order */
    cJSON *e0 = cJSON_GetArrayItem(cpu, 0), *e1 = cJSON_GetArrayItem(cpu, 1);
    char *t0 = cJSON_PrintUnformatted(cJSON_GetArrayItem(e0, 0));
    char *t1 = cJSON_PrintUnformatted(cJSON_GetArrayItem(e1, 0));
    assert_string_equal(t0, "[1,2]");
    assert_string_equal(t1, "[3,4]");
    free(t0);
    free(t1);
    assert_true(cJSON_IsNull(cJSON_GetArrayItem(e0, 1)));
    char *h12 = cJSON_PrintUnformatted(cJSON_GetArrayItem(e0, 2));
    char *p34 = cJSON_PrintUnformatted(cJSON_GetArrayItem(e1, 1));
    assert_string_equal(h12, p34);
    free(h12);
    free(p34);
    (void)jint;
    /* and the second insert's own page [5,6] hangs off [1,2] as well */
    if (cJSON_GetArraySize(cpu) >= 3) {
        cJSON *e2 = cJSON_GetArrayItem(cpu, 2);
        char *t2 = cJSON_PrintUnformatted(cJSON_GetArrayItem(e2, 0));
        assert_string_equal(t2, "[5,6]");
        free(t2);
    }
    cJSON_Delete(j);
    assert_int_equal(th_node_stop(&n), 0);
}

static void test_race(void **s)
{
    race(TH_TRANSPORT(s), "array");
}
static void test_race_map(void **s)
{
    race(TH_TRANSPORT(s), "map"); /* vLLM's map encoding, same checks */
}

static void l1_sums(struct th_node *n, const uint32_t *slots, uint32_t k, uint64_t *sums)
{
    struct kvn_client_req q = {.op = KVN_RPC_L1_CHECKSUM, .slots = slots, .n_slots = k};
    struct kvn_client_reply *r;
    struct kvn_err e;
    assert_int_equal(kvn_client_call(n->c, &q, &r, &e), 0);
    size_t got;
    assert_int_equal(kvn_client_reply_u64_array(r, "sums", sums, k, &got), 0);
    assert_int_equal(got, k);
    kvn_client_reply_free(r);
}

static void integrity(const char *transport)
{
    struct th_node n;
    const char *flags[] = {"--transport",  transport, "--page-size", "4",
                           "--page-bytes", "64K",     "--host-pool", "8M",
                           "--l1",         "2M",      NULL};
    int rc = h_node_start(&n, flags);
    if (rc == -ENOTSUP) {
        skip();
        return;
    }
    assert_int_equal(rc, 0);
    struct kvn_err e;
    uint32_t slots[] = {0, 1, 2, 3, 4, 5, 6, 7};
    struct kvn_client_req fill = {.op = KVN_RPC_L1_FILL, .slots = slots, .n_slots = 8, .seed = 7};
    assert_int_equal(kvn_client_call(n.c, &fill, NULL, &e), 0);
    uint64_t want[8], got[8];
    uint8_t *page = malloc(64 * 1024);
    assert_non_null(page);
    for (uint32_t i = 0; i < 8; i++) {
        kvn_rpc_fill_pattern(page, 64 * 1024, 7, slots[i]);
        want[i] = kvn_rpc_fnv1a(page, 64 * 1024);
    }
    free(page);
    l1_sums(&n, slots, 8, got);
    assert_memory_equal(got, want, sizeof(want));
    /* write through 8 pages (two inserts sharing a prefix) */
    int32_t toks[32];
    for (int i = 0; i < 32; i++)
        toks[i] = 1000 + i;
    struct kvn_client_reply *r;
    assert_int_equal(kvn_client_insert(n.c, toks, 16, slots, 4, &r, &e), 0);
    kvn_client_reply_free(r);
    assert_int_equal(kvn_client_insert(n.c, toks, 32, slots, 8, &r, &e), 0);
    uint64_t prefix;
    assert_int_equal(kvn_client_reply_u64(r, "prefix_tokens", &prefix), 0);
    assert_int_equal(prefix, 16);
    kvn_client_reply_free(r);
    assert_true(h_quiesce(&n));
    assert_int_equal(th_stat(&n, "l2_used"), 8);
    assert_int_equal(th_stat(&n, "bytes_to_l2"), 8 * 64 * 1024);
    /* overwrite L1, then demote everything to L2 */
    fill.seed = 99;
    assert_int_equal(kvn_client_call(n.c, &fill, NULL, &e), 0);
    l1_sums(&n, slots, 8, got);
    assert_true(got[0] != want[0]);
    struct kvn_client_req ev = {.op = KVN_RPC_EVICT, .tier = KVN_RPC_TIER_L1, .pages = 8};
    assert_int_equal(kvn_client_call(n.c, &ev, NULL, &e), 0);
    assert_int_equal(th_stat(&n, "l1_used"), 0);
    assert_int_equal(kvn_client_match(n.c, toks, 32, &r, &e), 0);
    uint64_t host;
    assert_int_equal(kvn_client_reply_u64(r, "host_tokens", &host), 0);
    assert_int_equal(host, 32);
    kvn_client_reply_free(r);
    /* load back into other slots: the original bytes come back */
    uint32_t back[] = {20, 21, 22, 23, 24, 25, 26, 27};
    struct kvn_client_req lb = {
        .op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = 32, .slots = back, .n_slots = 8};
    assert_int_equal(kvn_client_call(n.c, &lb, &r, &e), 0);
    uint64_t pages;
    assert_int_equal(kvn_client_reply_u64(r, "pages", &pages), 0);
    assert_int_equal(pages, 8);
    kvn_client_reply_free(r);
    assert_true(h_quiesce(&n));
    l1_sums(&n, back, 8, got);
    assert_memory_equal(got, want, sizeof(want));
    assert_int_equal(kvn_client_match(n.c, toks, 32, &r, &e), 0);
    uint64_t dev;
    assert_int_equal(kvn_client_reply_u64(r, "device_tokens", &dev), 0);
    assert_int_equal(dev, 32);
    size_t ns;
    uint64_t ms[8];
    assert_int_equal(kvn_client_reply_u64_array(r, "slots", ms, 8, &ns), 0);
    assert_int_equal(ns, 8);
    for (int i = 0; i < 8; i++)
        assert_int_equal(ms[i], back[i]);
    kvn_client_reply_free(r);
    assert_int_equal(th_stat(&n, "jobs_failed"), 0);
    assert_int_equal(th_node_stop(&n), 0);
}

static void test_integrity(void **s)
{
    integrity(TH_TRANSPORT(s));
}

static void test_sigterm_drains(void **state)
{
    (void)state;
    struct th_node n;
    const char *flags[] = {
        "--transport", "ofi+tcp", "--page-size",        "2",    "--page-bytes", "4K",
        "--host-pool", "4M",      "--inject-ack-delay", "1500", "--l1",         "1M",
        NULL};
    assert_int_equal(h_node_start(&n, flags), 0);
    char dump_out[128], ready[128];
    th_path(dump_out, sizeof(dump_out), "term_dump.json");
    th_path(ready, sizeof(ready), "ready_term");
    const char *dargs[] = {"--endpoint", n.pub, "--seconds", "3", NULL};
    pid_t dump = h_python(H.dump, dump_out, ready, dargs);
    int32_t toks[] = {7, 8, 9, 10};
    uint32_t sl[] = {0, 1};
    struct kvn_err e;
    assert_int_equal(kvn_client_insert(n.c, toks, 4, sl, 2, NULL, &e), 0);
    assert_int_equal(th_stat(&n, "pending_jobs"), 1);
    /* TERM while the completion is held: the node drains, acks, publishes, exits 0 */
    assert_int_equal(th_node_stop(&n), 0);
    assert_int_equal(th_wait(dump, 30000), 0);
    cJSON *j = h_json_file(dump_out);
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "cpu_stored")), 2);
    cJSON_Delete(j);
    char *log = th_slurp(n.log);
    assert_non_null(strstr(log, "stopped"));
    free(log);
}

static void test_locks_and_leases(void **state)
{
    (void)state;
    struct th_node n;
    const char *flags[] = {"--transport",  "ofi+tcp", "--page-size", "2",
                           "--page-bytes", "4K",      "--host-pool", "4M",
                           "--l1",         "1M",      NULL};
    assert_int_equal(h_node_start(&n, flags), 0);
    struct kvn_err e;
    int32_t toks[] = {1, 2, 3, 4};
    uint32_t sl[] = {0, 1};
    assert_int_equal(kvn_client_insert(n.c, toks, 4, sl, 2, NULL, &e), 0);
    assert_true(h_quiesce(&n));
    uint64_t base_locked = th_stat(&n, "locked_nodes");
    struct kvn_client_req lk = {.op = KVN_RPC_LOCK, .tokens = toks, .n_tokens = 4};
    struct kvn_client_reply *r;
    assert_int_equal(kvn_client_call(n.c, &lk, &r, &e), 0);
    uint64_t handle, locked;
    assert_int_equal(kvn_client_reply_u64(r, "handle", &handle), 0);
    assert_int_equal(kvn_client_reply_u64(r, "locked_tokens", &locked), 0);
    assert_int_equal(locked, 4);
    kvn_client_reply_free(r);
    assert_int_equal(th_stat(&n, "locks_held"), 1);
    assert_true(th_stat(&n, "locked_nodes") > base_locked);
    /* a locked prefix is not evicted */
    struct kvn_client_req ev = {.op = KVN_RPC_EVICT, .tier = KVN_RPC_TIER_L1, .pages = 2};
    assert_int_equal(kvn_client_call(n.c, &ev, &r, &e), 0);
    uint64_t evicted;
    assert_int_equal(kvn_client_reply_u64(r, "evicted", &evicted), 0);
    assert_int_equal(evicted, 0);
    kvn_client_reply_free(r);
    struct kvn_client_req ul = {.op = KVN_RPC_UNLOCK, .handle = handle};
    assert_int_equal(kvn_client_call(n.c, &ul, NULL, &e), 0);
    assert_int_equal(kvn_client_call(n.c, &ul, NULL, &e), -ENOENT); /* double unlock */
    ul.handle = 12345;
    assert_int_equal(kvn_client_call(n.c, &ul, NULL, &e), -ENOENT);
    assert_int_equal(th_stat(&n, "locks_held"), 0);
    assert_int_equal(th_stat(&n, "locked_nodes"), base_locked);
    /* a lock on tokens that are not cached */
    int32_t other[] = {9, 9};
    struct kvn_client_req lk2 = {.op = KVN_RPC_LOCK, .tokens = other, .n_tokens = 2};
    assert_int_equal(kvn_client_call(n.c, &lk2, NULL, &e), -ENOENT);
    /* a lease expires by itself */
    lk.lease_ms = 100;
    assert_int_equal(kvn_client_call(n.c, &lk, NULL, &e), 0);
    for (int i = 0; i < 1000 && th_stat(&n, "locks_held") != 0; i++)
        th_sleep_ms(10);
    assert_int_equal(th_stat(&n, "locks_held"), 0);
    assert_int_equal(th_stat(&n, "lease_expired"), 1);
    assert_int_equal(th_stat(&n, "locked_nodes"), base_locked);
    /* reset clears everything */
    assert_int_equal(kvn_client_call(n.c, &lk, NULL, &e), 0);
    assert_int_equal(kvn_client_reset(n.c, &e), 0);
    assert_int_equal(th_stat(&n, "locks_held"), 0);
    assert_int_equal(th_stat(&n, "l1_used"), 0);
    assert_int_equal(th_stat(&n, "nodes"), 0);
    assert_int_equal(th_node_stop(&n), 0);
}

static void test_kvctl_cli(void **state)
{
    (void)state;
    struct th_node n;
    const char *flags[] = {"--transport",  "ofi+tcp", "--page-size", "2",
                           "--page-bytes", "4K",      "--host-pool", "4M",
                           "--l1",         "1M",      NULL};
    assert_int_equal(h_node_start(&n, flags), 0);
    char *out, *err;
    const char *a1[] = {"insert", "1,2,3,4", "--slots", "0,1", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, a1), 0);
    assert_non_null(strstr(out, "new_tokens: 4"));
    free(out);
    free(err);
    const char *a2[] = {"match", "1,2,5,6", "--json", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, a2), 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "device_tokens")), 2);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    cJSON_Delete(j);
    free(out);
    free(err);
    const char *a3[] = {"stats", "--json", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, a3), 0);
    j = cJSON_Parse(out);
    assert_non_null(j);
    assert_non_null(cJSON_GetObjectItem(j, "l2_used"));
    assert_non_null(cJSON_GetObjectItem(j, "events_dropped"));
    cJSON_Delete(j);
    free(out);
    free(err);
    /* the node refuses: exit 1, message on stderr */
    const char *a4[] = {"insert", "1,2,3", "--slots", "0,1", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, a4), 1);
    assert_non_null(strstr(err, "page"));
    free(out);
    free(err);
    const char *a5[] = {"insert", "5,6", "--slots", "100000", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, a5), 1);
    assert_non_null(strstr(err, "out of range"));
    free(out);
    free(err);
    /* usage errors: exit 2 */
    const char *u1[] = {"frobnicate", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, u1), 2);
    free(out);
    free(err);
    const char *u2[] = {"insert", "1,x", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, u2), 2);
    free(out);
    free(err);
    const char *u3[] = {"unlock", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, u3), 2);
    free(out);
    free(err);
    const char *u4[] = {"evict", "--tier", "l9", "--pages", "1", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, u4), 2);
    free(out);
    free(err);
    /* l1 test aids through kvctl */
    const char *f1[] = {"l1_fill", "--slots", "5", "--seed", "3", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, f1), 0);
    free(out);
    free(err);
    const char *f2[] = {"l1_checksum", "--slots", "5", "--json", NULL};
    assert_int_equal(h_kvctl(&n, &out, &err, f2), 0);
    uint8_t page[4096];
    kvn_rpc_fill_pattern(page, sizeof(page), 3, 5);
    char want[64];
    snprintf(want, sizeof(want), "[%llu]", (unsigned long long)kvn_rpc_fnv1a(page, sizeof(page)));
    assert_non_null(strstr(out, want));
    free(out);
    free(err);
    /* a node that is not there: exit 1 within the timeout */
    struct th_node ghost = n;
    snprintf(ghost.ctl, sizeof(ghost.ctl), "tcp://127.0.0.1:%d", n.port + 3);
    const char *g1[] = {"--timeout", "300", "hello", NULL};
    assert_int_equal(h_kvctl(&ghost, &out, &err, g1), 1);
    assert_non_null(strstr(err, "no reply"));
    free(out);
    free(err);
    assert_int_equal(th_node_stop(&n), 0);
}

static void test_storage_tier(void **state)
{
    (void)state;
    char dir[128];
    th_path(dir, sizeof(dir), "l3");
    struct th_node n;
    const char *flags[] = {"--transport", "ofi+tcp",     "--page-size", "2",    "--page-bytes",
                           "4K",          "--host-pool", "4M",          "--l1", "1M",
                           "--storage",   dir,           NULL};
    assert_int_equal(h_node_start(&n, flags), 0);
    struct kvn_err e;
    int32_t toks[] = {1, 2, 3, 4, 5, 6};
    uint32_t sl[] = {0, 1, 2};
    assert_int_equal(kvn_client_insert(n.c, toks, 6, sl, 3, NULL, &e), 0);
    assert_true(h_quiesce(&n));
    assert_int_equal(th_stat(&n, "l3_pages_written"), 3);
    char sub[160];
    snprintf(sub, sizeof(sub), "%s/ns-0", dir);
    DIR *d = opendir(sub);
    assert_non_null(d);
    int files = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".kvp"))
            files++;
    closedir(d);
    assert_int_equal(files, 3);
    assert_int_equal(th_node_stop(&n), 0);
}

static void register_l1(const char *transport)
{
    struct th_node n;
    const char *flags[] = {"--transport", transport,     "--page-size", "2", "--page-bytes",
                           "8K",          "--host-pool", "4M",          NULL};
    int rc = h_node_start(&n, flags);
    if (rc == -ENOTSUP) {
        skip();
        return;
    }
    assert_int_equal(rc, 0);
    struct kvn_err e;
    enum { SLOTS = 32, PB = 8192 };
    /* an engine of our own: its L1 region in its own transport domain, progressed by a
     * thread (th_engine) as a separate engine process would */
    struct th_engine g = {0};
    assert_int_equal(kvn_xport_open(transport, NULL, &g.x, &e), 0);
    uint8_t *l1 = calloc(SLOTS, PB);
    assert_non_null(l1);
    for (uint32_t s = 0; s < SLOTS; s++)
        kvn_rpc_fill_pattern(l1 + (size_t)s * PB, PB, 5, s);
    struct kvn_xport_mr *mr;
    assert_int_equal(kvn_xport_mr_reg(g.x, l1, (size_t)SLOTS * PB, KVN_XPORT_ACCESS_ALL, &mr, &e),
                     0);
    uint8_t desc[KVN_XPORT_DESC_MAX], addr[KVN_XPORT_ADDR_MAX];
    size_t dl = sizeof(desc), al = sizeof(addr);
    assert_int_equal(kvn_xport_mr_pack(mr, desc, &dl, &e), 0);
    assert_int_equal(kvn_xport_address(g.x, addr, &al, &e), 0);
    /* connect back to the node's address from hello, as both sides should */
    struct kvn_client_reply *r;
    assert_int_equal(kvn_client_hello(n.c, &r, &e), 0);
    kvn_client_reply_free(r);
    assert_int_equal(th_engine_start(&g, g.x, false), 0);

    struct kvn_client_req q = {.op = KVN_RPC_REGISTER_L1,
                               .desc = desc,
                               .desc_len = (uint32_t)dl,
                               .addr = addr,
                               .addr_len = (uint32_t)al,
                               .page_bytes = PB,
                               .l1_slots = SLOTS};
    /* refusals first: wrong page bytes, more slots than the region holds */
    q.page_bytes = 4096;
    assert_int_equal(kvn_client_call(n.c, &q, NULL, &e), -EINVAL);
    q.page_bytes = PB;
    q.l1_slots = SLOTS + 1;
    assert_int_equal(kvn_client_call(n.c, &q, NULL, &e), -EINVAL);
    q.l1_slots = SLOTS;
    assert_int_equal(kvn_client_call(n.c, &q, &r, &e), 0);
    uint64_t got_slots;
    assert_int_equal(kvn_client_reply_u64(r, "l1_slots", &got_slots), 0);
    assert_int_equal(got_slots, SLOTS);
    kvn_client_reply_free(r);
    /* write through from the engine's L1, evict, load back into other slots */
    int32_t toks[] = {1, 2, 3, 4, 5, 6};
    uint32_t sl[] = {3, 4, 5};
    assert_int_equal(kvn_client_insert(n.c, toks, 6, sl, 3, NULL, &e), 0);
    assert_true(h_quiesce(&n));
    assert_int_equal(th_stat(&n, "jobs_failed"), 0);
    assert_int_equal(th_stat(&n, "l2_used"), 3);
    struct kvn_client_req ev = {.op = KVN_RPC_EVICT, .tier = KVN_RPC_TIER_L1, .pages = 3};
    assert_int_equal(kvn_client_call(n.c, &ev, NULL, &e), 0);
    memset(l1, 0, (size_t)SLOTS * PB); /* the engine reuses its memory */
    uint32_t back[] = {10, 11, 12};
    struct kvn_client_req lb = {
        .op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = 6, .slots = back, .n_slots = 3};
    assert_int_equal(kvn_client_call(n.c, &lb, NULL, &e), 0);
    assert_true(h_quiesce(&n));
    assert_int_equal(th_stat(&n, "jobs_failed"), 0);
    uint8_t want[PB];
    for (int i = 0; i < 3; i++) {
        kvn_rpc_fill_pattern(want, PB, 5, sl[i]);
        assert_memory_equal(l1 + (size_t)back[i] * PB, want, PB);
    }
    th_engine_stop(&g);
    /* the engine dies: a write-through from its L1 fails, frees its L2 pages, publishes
     * nothing, and the node keeps serving (bounded by the transport's op timeout) */
    kvn_xport_close(g.x);
    uint64_t l2_before = th_stat(&n, "l2_used"), failed_before = th_stat(&n, "acks_failed");
    int32_t t2[] = {50, 51, 52, 53};
    uint32_t s2[] = {20, 21};
    assert_int_equal(kvn_client_insert(n.c, t2, 4, s2, 2, NULL, &e), 0);
    for (int i = 0; i < 2000 && th_stat(&n, "acks_failed") == failed_before &&
                    th_stat(&n, "copy_submit_failures") == 0;
         i++)
        th_sleep_ms(10);
    assert_true(h_quiesce(&n));
    assert_true(th_stat(&n, "acks_failed") + th_stat(&n, "copy_submit_failures") > failed_before);
    assert_int_equal(th_stat(&n, "l2_used"), l2_before);
    printf("%s, engine gone: acks_failed %llu, copy_submit_failures %llu\n", transport,
           (unsigned long long)th_stat(&n, "acks_failed"),
           (unsigned long long)th_stat(&n, "copy_submit_failures"));
    assert_int_equal(kvn_client_match(n.c, t2, 4, &r, &e), 0);
    uint64_t backed;
    assert_int_equal(kvn_client_reply_u64(r, "backed_tokens", &backed), 0);
    assert_int_equal(backed, 0);
    kvn_client_reply_free(r);
    assert_int_equal(th_node_stop(&n), 0);
    free(l1);
}

static void test_register_l1(void **s)
{
    register_l1(TH_TRANSPORT(s));
}

static void test_bad_flags_exit_2(void **state)
{
    (void)state;
    char *argv[] = {(char *)TH.kvnode, "--page-size", "zero", NULL};
    char out[128];
    th_path(out, sizeof(out), "badflag.out");
    pid_t p = th_spawn(argv, out, NULL);
    assert_int_equal(th_wait(p, 10000), 2);
    char *s = th_slurp(out);
    assert_non_null(strstr(s, "usage"));
    free(s);
    char *argv2[] = {(char *)TH.kvnode, "--help", NULL};
    p = th_spawn(argv2, out, NULL);
    assert_int_equal(th_wait(p, 10000), 0);
    s = th_slurp(out);
    assert_non_null(strstr(s, "--inject-ack-delay"));
    free(s);
}

int main(int argc, char **argv)
{
    if (h_args(argc, argv, "") < 0)
        return 2;
    if (th_tmpdir_make("/tmp/kvn_node_test_XXXXXX") < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bad_flags_exit_2, th_teardown),
        TH_TRANSPORT_TEST(test_race, ofi_tcp, "ofi+tcp", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_race, ofi_shm, "ofi+shm", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_race, ucx_tcp, "ucx+tcp", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_race, ucx_sm, "ucx+sm", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_race_map, ofi_tcp, "ofi+tcp", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_integrity, ofi_tcp, "ofi+tcp", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_integrity, ofi_shm, "ofi+shm", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_integrity, ucx_tcp, "ucx+tcp", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_integrity, ucx_sm, "ucx+sm", NULL, th_teardown),
        cmocka_unit_test_teardown(test_sigterm_drains, th_teardown),
        cmocka_unit_test_teardown(test_locks_and_leases, th_teardown),
        cmocka_unit_test_teardown(test_kvctl_cli, th_teardown),
        cmocka_unit_test_teardown(test_storage_tier, th_teardown),
        TH_TRANSPORT_TEST(test_register_l1, ofi_tcp, "ofi+tcp", NULL, th_teardown),
        TH_TRANSPORT_TEST(test_register_l1, ucx_tcp, "ucx+tcp", NULL, th_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_kill_all();
    if (th_tmpdir_remove() < 0)
        fprintf(stderr, "could not remove %s\n", TH.tmpdir);
    return rc;
}
