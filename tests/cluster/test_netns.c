/*
 * test_netns.c - the cluster across network namespaces (argv: kvnode, kvctl, transport).
 *
 *   ns kvnc<id>a  10.213.X.1 ─veth─┐
 *   ns kvnc<id>b  10.213.X.2 ─veth─┼─ br0 in ns kvnc<id>h
 *   ns kvnc<id>c  10.213.X.3 ─veth─┘
 *
 * X is derived from the pid (a private /24 per run).  The test creates every namespace,
 * veth pair and address itself, talks to the nodes from inside namespace a (setns), sends
 * nothing anywhere else, and removes everything in its teardown (also after a failure).
 * Without root or without `ip netns` it exits 77 (skipped) and says why.
 *
 * What it checks, each node on its own network stack: replication converges to the union,
 * kill -9 of a peer drops its entries and its return is relearned, and a cross-node fetch
 * and a push move the exact bytes.
 */
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cluster_harness.h"

static const char *g_transport = "ofi+tcp";
static char g_ns[4][32]; /* a, b, c, hub */
static char g_ip[3][32];
static int g_root_ns = -1;
static bool g_made;
static const char *g_ipbin = "ip";

#define PS CH_PS

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[600];
    snprintf(full, sizeof(full), "%s >/dev/null 2>&1", cmd);
    return system(full);
}

static void netns_teardown(void)
{
    if (g_root_ns >= 0)
        setns(g_root_ns, CLONE_NEWNET);
    if (!g_made)
        return;
    for (int i = 0; i < 4; i++)
        sh("%s netns del %s", g_ipbin, g_ns[i]);
    g_made = false;
}

static int netns_setup(char *why, size_t cap)
{
    unsigned id = (unsigned)getpid() % 10000u;
    unsigned x = 20u + (unsigned)getpid() % 230u;
    const char sfx[4] = {'a', 'b', 'c', 'h'};
    for (int i = 0; i < 4; i++)
        snprintf(g_ns[i], sizeof(g_ns[i]), "kvnc%u%c", id, sfx[i]);
    for (int i = 0; i < 3; i++)
        snprintf(g_ip[i], sizeof(g_ip[i]), "10.213.%u.%d", x, i + 1);
    if (sh("%s netns add %s", g_ipbin, g_ns[3]) != 0) {
        snprintf(why, cap, "`ip netns add` failed (no CAP_SYS_ADMIN or no netns support)");
        return -1;
    }
    g_made = true;
    int bad = sh("%s -n %s link add br0 type bridge", g_ipbin, g_ns[3]) ||
              sh("%s -n %s link set br0 up", g_ipbin, g_ns[3]);
    for (int i = 0; i < 3 && !bad; i++) {
        bad = sh("%s netns add %s", g_ipbin, g_ns[i]) ||
              sh("%s link add v%u%c0 netns %s type veth peer name v%u%c1 netns %s", g_ipbin, id,
                 sfx[i], g_ns[i], id, sfx[i], g_ns[3]) ||
              sh("%s -n %s addr add %s/24 dev v%u%c0", g_ipbin, g_ns[i], g_ip[i], id, sfx[i]) ||
              sh("%s -n %s link set v%u%c0 up", g_ipbin, g_ns[i], id, sfx[i]) ||
              sh("%s -n %s link set lo up", g_ipbin, g_ns[i]) ||
              sh("%s -n %s link set v%u%c1 master br0", g_ipbin, g_ns[3], id, sfx[i]) ||
              sh("%s -n %s link set v%u%c1 up", g_ipbin, g_ns[3], id, sfx[i]);
    }
    if (bad) {
        snprintf(why, cap, "creating veth pairs / bridge in the namespaces failed");
        netns_teardown();
        return -1;
    }
    /* the test talks to the nodes from inside namespace a */
    char path[128];
    snprintf(path, sizeof(path), "/var/run/netns/%s", g_ns[0]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        if (fd >= 0)
            close(fd);
        snprintf(why, cap, "setns into %s failed", g_ns[0]);
        netns_teardown();
        return -1;
    }
    close(fd);
    return 0;
}

static void start(struct th_node *n, int i, struct th_node *all, int n_prev)
{
    ch_node_init(n, g_ip[i], g_ns[i], 7100);
    const char *argv[40];
    int k = 0;
    const char *fixed[] = {
        "--transport",       g_transport, "--page-size", "2",    "--page-bytes",   "4K",
        "--host-pool",       "2M",        "--l1",        "512K", "--heartbeat-ms", "100",
        "--peer-timeout-ms", "800",       "--cluster"};
    for (size_t j = 0; j < sizeof(fixed) / sizeof(fixed[0]); j++)
        argv[k++] = fixed[j];
    for (int j = 0; j < n_prev; j++) {
        argv[k++] = "--peer";
        argv[k++] = all[j].ctl;
    }
    argv[k] = NULL;
    assert_int_equal(ch_node_start(n, argv), 0);
}

static void insert(struct th_node *n, int i, int s, uint32_t pages, uint32_t slot0, uint64_t seed)
{
    int32_t toks[64];
    uint32_t slots[32];
    ch_seq(i, s, toks, pages);
    for (uint32_t p = 0; p < pages; p++)
        slots[p] = slot0 + p;
    struct kvn_client_req f = {
        .op = KVN_RPC_L1_FILL, .slots = slots, .n_slots = pages, .seed = seed};
    struct kvn_err e;
    assert_int_equal(ch_call(n, &f, NULL, NULL, &e), 0);
    struct kvn_client_reply *r;
    assert_int_equal(kvn_client_insert(n->c, toks, pages * PS, slots, pages, &r, &e), 0);
    kvn_client_reply_free(r);
    assert_true(ch_quiesce(n));
}

static void test_netns_cluster(void **state)
{
    (void)state;
    struct th_node nd[3];
    for (int i = 0; i < 3; i++)
        start(&nd[i], i, nd, i);
    for (int i = 0; i < 3; i++)
        assert_true(ch_wait_stat(&nd[i], "cluster_peers_up", 2, 500));
    for (int i = 0; i < 3; i++)
        for (int s = 0; s < 2; s++)
            insert(&nd[i], i, s, 4, (uint32_t)s * 4, 100 + (uint64_t)i);
    for (int x = 0; x < 3; x++) {
        assert_true(ch_wait_stat(&nd[x], "cluster_remote_blocks", 16, 500));
        for (int i = 0; i < 3; i++)
            for (int s = 0; s < 2; s++)
                assert_true(ch_sees(&nd[x], i, s, 4, i == x ? 0 : 4));
    }
    /* fetch across namespaces: c reads a's sequence 0, loads it, same bytes */
    int32_t toks[8];
    ch_seq(0, 0, toks, 4);
    uint32_t src[4] = {0, 1, 2, 3}, dst[4] = {60, 61, 62, 63};
    uint64_t want[4], got[4];
    assert_int_equal(ch_sums(&nd[0], src, 4, want), 0);
    struct kvn_client_reply *r;
    struct kvn_err e;
    assert_int_equal(kvn_client_fetch(nd[2].c, toks, 8, 0, &r, &e), 0);
    uint64_t fetched = 0;
    kvn_client_reply_u64(r, "fetched_pages", &fetched);
    kvn_client_reply_free(r);
    assert_int_equal(fetched, 4);
    struct kvn_client_req lb = {
        .op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = 8, .slots = dst, .n_slots = 4};
    assert_int_equal(ch_call(&nd[2], &lb, NULL, NULL, &e), 0);
    assert_true(ch_quiesce(&nd[2]));
    assert_int_equal(ch_sums(&nd[2], dst, 4, got), 0);
    assert_memory_equal(want, got, sizeof(want));
    /* push across namespaces: a's sequence 1 (L1 slots 4..7) into b */
    int32_t ptoks[8];
    ch_seq(0, 1, ptoks, 4);
    uint32_t psrc[4] = {4, 5, 6, 7};
    assert_int_equal(ch_sums(&nd[0], psrc, 4, want), 0);
    assert_int_equal(kvn_client_push(nd[0].c, nd[1].ctl, ptoks, 8, psrc, 4, &r, &e), 0);
    kvn_client_reply_free(r);
    lb.tokens = ptoks;
    assert_int_equal(ch_call(&nd[1], &lb, NULL, NULL, &e), 0);
    assert_true(ch_quiesce(&nd[1]));
    assert_int_equal(ch_sums(&nd[1], dst, 4, got), 0);
    assert_memory_equal(want, got, sizeof(want));
    /* kill -9 of b: dropped by a and c; back on the same address: relearned */
    th_node_kill9(&nd[1]);
    for (int x = 0; x < 3; x += 2) {
        assert_true(ch_wait_stat(&nd[x], "cluster_peers_up", 1, 500));
        assert_true(ch_sees(&nd[x], 1, 0, 4, 0));
    }
    start(&nd[1], 1, nd, 1);
    for (int x = 0; x < 3; x++)
        assert_true(ch_wait_stat(&nd[x], "cluster_peers_up", 2, 500));
    insert(&nd[1], 1, 0, 4, 0, 7);
    for (int x = 0; x < 3; x += 2)
        assert_true(ch_sees(&nd[x], 1, 0, 4, 4));
    assert_true(ch_sees(&nd[1], 2, 1, 4, 4)); /* its replay of c's history */
    for (int x = 0; x < 3; x++)
        assert_int_equal(th_node_stop(&nd[x]), 0);
}

int main(int argc, char **argv)
{
    if (ch_args(argc, argv, &g_transport) < 0)
        return 2;
    if (geteuid() != 0) {
        printf("SKIP: network namespaces need root (euid %u)\n", (unsigned)geteuid());
        return 77;
    }
    if (access("/usr/sbin/ip", X_OK) == 0)
        g_ipbin = "/usr/sbin/ip";
    else if (access("/sbin/ip", X_OK) == 0)
        g_ipbin = "/sbin/ip";
    else if (system("ip -V >/dev/null 2>&1") != 0) {
        printf("SKIP: no `ip` command (iproute2)\n");
        return 77;
    }
    TH.ipbin = g_ipbin;
    g_root_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    char why[160];
    if (netns_setup(why, sizeof(why)) < 0) {
        printf("SKIP: %s\n", why);
        return 77;
    }
    if (th_tmpdir_make("/tmp/kvn-netns-XXXXXX") < 0) {
        netns_teardown();
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_netns_cluster, th_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    th_kill_all();
    netns_teardown();
    if (rc == 0 && th_tmpdir_remove() < 0)
        rc = 1;
    return rc;
}
