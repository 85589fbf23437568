/* test_config.c - kvnode flags: sizes, every flag, usage errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "node/kvn_config.h"

static void test_sizes(void **state)
{
    (void)state;
    uint64_t v = 99;
    struct kvn_err e;
    assert_int_equal(kvn_config_parse_size("4096", &v, &e), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(kvn_config_parse_size("64K", &v, &e), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(kvn_config_parse_size("1m", &v, &e), 0);
    assert_int_equal(v, 1 << 20);
    assert_int_equal(kvn_config_parse_size("2G", &v, &e), 0);
    assert_true(v == 2ull << 30);
    assert_int_equal(kvn_config_parse_size("3MiB", &v, &e), 0);
    assert_int_equal(v, 3 << 20);
    assert_int_equal(kvn_config_parse_size("0", &v, &e), 0);
    assert_int_equal(v, 0);
    v = 5;
    const char *bad[] = {
        "", "K", "-1", "1T", "1KK", "12x", " 1", "18446744073709551616", "17179869184G"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(kvn_config_parse_size(bad[i], &v, &e), -EINVAL);
        assert_int_equal(v, 5); /* unchanged on error */
    }
    assert_int_equal(kvn_config_parse_size(NULL, &v, &e), -EINVAL);
    assert_int_equal(kvn_config_parse_size("1", NULL, &e), -EINVAL);
}

static int parse(struct kvn_config *c, struct kvn_err *e, int argc, const char **argv)
{
    return kvn_config_parse(c, argc, (char **)argv, e);
}

static void test_defaults(void **state)
{
    (void)state;
    struct kvn_config c;
    struct kvn_err e;
    const char *argv[] = {"kvnode"};
    assert_int_equal(parse(&c, &e, 1, argv), 0);
    assert_string_equal(c.listen, "tcp://127.0.0.1:7100");
    assert_string_equal(c.transport, "auto");
    assert_true(c.host_pool == 1ull << 30);
    assert_int_equal(c.write_policy, KVN_WRITE_THROUGH);
    assert_int_equal(c.buffer_steps, 10000);
    assert_int_equal(c.l1, 0);
    assert_false(c.help);
}

static void test_all_flags(void **state)
{
    (void)state;
    struct kvn_config c;
    struct kvn_err e;
    const char *argv[] = {"kvnode",
                          "--listen",
                          "tcp://127.0.0.1:7200",
                          "--transport",
                          "ofi+tcp",
                          "--host-pool",
                          "64M",
                          "--page-size",
                          "2",
                          "--page-bytes",
                          "4K",
                          "--write-policy",
                          "write_back",
                          "--events",
                          "tcp://127.0.0.1:7201",
                          "--replay",
                          "tcp://127.0.0.1:7202",
                          "--topic",
                          "t1",
                          "--replay-topic",
                          "--events-format",
                          "map",
                          "--buffer-steps",
                          "50",
                          "--l1",
                          "1M",
                          "--inject-ack-delay",
                          "500",
                          "--log-level",
                          "debug",
                          "--storage",
                          "/tmp/x",
                          "--no-hugepages",
                          "--dp-rank",
                          "3"};
    assert_int_equal(parse(&c, &e, (int)(sizeof(argv) / sizeof(argv[0])), argv), 0);
    assert_string_equal(c.listen, "tcp://127.0.0.1:7200");
    assert_string_equal(c.transport, "ofi+tcp");
    assert_int_equal(c.host_pool, 64 << 20);
    assert_int_equal(c.page_size, 2);
    assert_int_equal(c.page_bytes, 4096);
    assert_int_equal(c.write_policy, KVN_WRITE_BACK);
    assert_string_equal(c.events, "tcp://127.0.0.1:7201");
    assert_string_equal(c.replay, "tcp://127.0.0.1:7202");
    assert_string_equal(c.topic, "t1");
    assert_true(c.replay_topic);
    assert_int_equal(c.events_format, KVN_NODE_EVFMT_MAP);
    assert_int_equal(c.buffer_steps, 50);
    assert_int_equal(c.l1, 1 << 20);
    assert_int_equal(c.inject_ack_delay_ms, 500);
    assert_int_equal(c.log_level, KVN_LOG_DEBUG);
    assert_string_equal(c.storage, "/tmp/x");
    assert_false(c.hugepages);
    assert_int_equal(c.dp_rank, 3);
    const char *argv2[] = {"kvnode", "--write-policy=write_through_selective", "--help"};
    assert_int_equal(parse(&c, &e, 3, argv2), 0);
    assert_int_equal(c.write_policy, KVN_WRITE_THROUGH_SELECTIVE);
    assert_true(c.help);
}

static void test_cluster_flags(void **state)
{
    (void)state;
    struct kvn_config c;
    struct kvn_err e;
    const char *a1[] = {"kvnode"};
    assert_int_equal(parse(&c, &e, 1, a1), 0);
    assert_false(c.cluster);
    const char *a2[] = {"kvnode",
                        "--cluster",
                        "--heartbeat-ms",
                        "100",
                        "--peer-timeout-ms",
                        "800",
                        "--inject-fetch-hold",
                        "600"};
    assert_int_equal(parse(&c, &e, 8, a2), 0);
    assert_true(c.cluster);
    assert_int_equal(c.n_peers, 0);
    assert_int_equal(c.heartbeat_ms, 100);
    assert_int_equal(c.peer_timeout_ms, 800);
    assert_int_equal(c.fetch_hold_ms, 600);
    const char *a3[] = {"kvnode", "--peer", "tcp://127.0.0.1:1", "--peer", "tcp://127.0.0.1:2"};
    assert_int_equal(parse(&c, &e, 5, a3), 0);
    assert_true(c.cluster); /* implied */
    assert_int_equal(c.n_peers, 2);
    assert_string_equal(c.peers[1], "tcp://127.0.0.1:2");
    const char *b1[] = {"kvnode", "--peer", "udp://x"};
    assert_int_equal(parse(&c, &e, 3, b1), -EINVAL);
    const char *b2[] = {"kvnode", "--heartbeat-ms", "0"};
    assert_int_equal(parse(&c, &e, 3, b2), -EINVAL);
    const char *many[2 + 2 * (KVN_CONFIG_MAX_PEERS + 1)];
    int k = 0;
    many[k++] = "kvnode";
    for (int i = 0; i <= KVN_CONFIG_MAX_PEERS; i++) {
        many[k++] = "--peer";
        many[k++] = "tcp://127.0.0.1:3";
    }
    assert_int_equal(parse(&c, &e, k, many), -EINVAL);
    assert_non_null(strstr(e.msg, "peers"));
}

static void test_bad_flags(void **state)
{
    (void)state;
    struct kvn_config c;
    struct kvn_err e;
    kvn_config_defaults(&c);
    strcpy(c.topic, "keep");
    struct {
        int argc;
        const char *argv[4];
    } bad[] = {
        {2, {"kvnode", "--bogus"}},
        {2, {"kvnode", "--listen"}},
        {3, {"kvnode", "--page-size", "0"}},
        {3, {"kvnode", "--page-size", "abc"}},
        {3, {"kvnode", "--host-pool", "12Q"}},
        {3, {"kvnode", "--write-policy", "sometimes"}},
        {3, {"kvnode", "--events-format", "xml"}},
        {3, {"kvnode", "--log-level", "loud"}},
        {3, {"kvnode", "--listen", "http://x"}},
        {3, {"kvnode", "--replay", "tcp://127.0.0.1:1"}}, /* replay without events */
        {3, {"kvnode", "--page-bytes", "0"}},
        {5,
         {
             "kvnode",
             "--host-pool",
             "1K",
             "--page-bytes",
         }},
        {3, {"kvnode", "--l1", "100"}}, /* smaller than a page */
        {2, {"kvnode", "stray"}},
        {3, {"kvnode", "--inject-ack-delay", "-5"}},
        {3, {"kvnode", "--buffer-steps", "0"}},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct kvn_config before = c;
        int argc = bad[i].argc;
        if (i == 11) { /* pool smaller than one page */
            const char *a[] = {"kvnode", "--host-pool", "1K", "--page-bytes", "4K"};
            assert_int_equal(parse(&c, &e, 5, a), -EINVAL);
        } else {
            assert_int_equal(parse(&c, &e, argc, bad[i].argv), -EINVAL);
        }
        assert_true(e.msg[0] != '\0');
        assert_memory_equal(&before, &c, sizeof(c)); /* unchanged on error */
    }
    assert_int_equal(kvn_config_parse(NULL, 0, NULL, &e), -EINVAL);
}

static void test_usage_mentions_every_flag(void **state)
{
    (void)state;
    char buf[8192];
    FILE *f = fmemopen(buf, sizeof(buf), "w");
    assert_non_null(f);
    kvn_config_usage(f, "kvnode");
    fclose(f);
    const char *flags[] = {
        "--listen",     "--transport",        "--host-pool",     "--page-size",
        "--page-bytes", "--write-policy",     "--events",        "--replay",
        "--topic",      "--replay-topic",     "--events-format", "--buffer-steps",
        "--l1",         "--inject-ack-delay", "--log-level",     "--storage",
        "--help"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        assert_non_null(strstr(buf, flags[i]));
    assert_string_equal(kvn_config_write_policy_name(KVN_WRITE_BACK), "write_back");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes),         cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_flags),     cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_cluster_flags), cmocka_unit_test(test_usage_mentions_every_flag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
