/*
 * test_peers.c - the peer table's state machine on a test clock (join, refresh, restart,
 * timeout, return), heartbeat scheduling, identity conflicts and every error path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "node/cluster/peer_table.h"

static struct kvn_peers *mk(uint64_t hb, uint64_t to)
{
    struct kvn_peers *t;
    struct kvn_peers_config c = {
        .max_peers = 4, .heartbeat_ms = hb, .timeout_ms = to, .self_node_id = 99};
    assert_int_equal(kvn_peers_create(&c, &t, NULL), 0);
    return t;
}

static void test_lifecycle(void **state)
{
    (void)state;
    struct kvn_peers *t = mk(100, 300);
    uint32_t a, b, died[4], due[4];
    assert_int_equal(kvn_peers_add(t, "tcp://127.0.0.1:1", &a, NULL), 0);
    assert_int_equal(kvn_peers_add(t, "tcp://127.0.0.1:2", &b, NULL), 0);
    assert_int_equal(a, 0);
    assert_int_equal(b, 1);
    assert_int_equal(kvn_peers_count(t), 2);
    /* both due at once, then not before heartbeat_ms */
    assert_int_equal(kvn_peers_due(t, 1000, due, 4), 2);
    assert_int_equal(kvn_peers_due(t, 1050, due, 4), 0);
    assert_int_equal(kvn_peers_due(t, 1100, due, 4), 2);
    assert_int_equal(kvn_peers_next_deadline(t), 1200);

    enum kvn_peer_change ch;
    assert_int_equal(kvn_peers_heard(t, a, 7, 1, 1000, &ch, NULL), 0);
    assert_int_equal(ch, KVN_PEER_JOINED);
    assert_int_equal(kvn_peers_up(t), 1);
    assert_int_equal(kvn_peers_heard(t, a, 7, 1, 1200, &ch, NULL), 0);
    assert_int_equal(ch, KVN_PEER_REFRESHED);
    /* a known peer never heard does not time out */
    assert_int_equal(kvn_peers_tick(t, 1499, died, 4), 0);
    assert_int_equal(kvn_peers_tick(t, 1500, died, 4), 1);
    assert_int_equal(died[0], a);
    assert_int_equal(kvn_peers_up(t), 0);
    struct kvn_peer_info pi;
    assert_int_equal(kvn_peers_get(t, a, &pi, NULL), 0);
    assert_int_equal(pi.state, KVN_PEER_DOWN);
    assert_int_equal(pi.deaths, 1);
    assert_string_equal(kvn_peer_state_name(pi.state), "down");
    /* dead stays dead on later ticks */
    assert_int_equal(kvn_peers_tick(t, 5000, died, 4), 0);
    /* it returns with a new incarnation: joined again */
    assert_int_equal(kvn_peers_heard(t, a, 7, 2, 6000, &ch, NULL), 0);
    assert_int_equal(ch, KVN_PEER_JOINED);
    /* restart seen while up (heartbeat faster than timeout) */
    assert_int_equal(kvn_peers_heard(t, a, 7, 3, 6100, &ch, NULL), 0);
    assert_int_equal(ch, KVN_PEER_RESTARTED);
    assert_int_equal(kvn_peers_get(t, a, &pi, NULL), 0);
    assert_int_equal(pi.joins, 2);
    assert_int_equal(pi.restarts, 1);
    assert_int_equal(pi.incarnation, 3);
    assert_string_equal(pi.endpoint, "tcp://127.0.0.1:1");
    /* deaths beyond cap are still counted */
    assert_int_equal(kvn_peers_heard(t, b, 8, 1, 6100, &ch, NULL), 0);
    assert_int_equal(kvn_peers_tick(t, 10000, NULL, 0), 2);
    assert_int_equal(kvn_peers_up(t), 0);
    kvn_peers_destroy(t);
}

static void test_identity_and_errors(void **state)
{
    (void)state;
    struct kvn_peers *t = mk(0, 0);
    uint32_t a, b, id = 77;
    struct kvn_err e;
    assert_int_equal(kvn_peers_add(t, "tcp://x:1", &a, NULL), 0);
    assert_int_equal(kvn_peers_add(t, "tcp://x:1", &id, &e), -EEXIST);
    assert_int_equal(id, a);
    assert_int_equal(kvn_peers_add(t, "tcp://x:2", &b, NULL), 0);
    assert_int_equal(kvn_peers_find(t, "tcp://x:2", &id, NULL), 0);
    assert_int_equal(id, b);
    assert_int_equal(kvn_peers_find(t, "tcp://x:3", &id, &e), -ENOENT);
    enum kvn_peer_change ch;
    /* our own id: a node listed as its own peer */
    assert_int_equal(kvn_peers_heard(t, a, 99, 1, 0, &ch, &e), -ELOOP);
    assert_int_equal(kvn_peers_up(t), 0);
    assert_int_equal(kvn_peers_heard(t, a, 0, 1, 0, &ch, &e), -EINVAL);
    assert_int_equal(kvn_peers_heard(t, 9, 5, 1, 0, &ch, &e), -EINVAL);
    assert_int_equal(kvn_peers_heard(NULL, a, 5, 1, 0, &ch, &e), -EINVAL);
    assert_int_equal(kvn_peers_heard(t, a, 5, 1, 0, NULL, &e), -EINVAL);
    assert_int_equal(kvn_peers_heard(t, a, 5, 1, 0, &ch, NULL), 0);
    /* the same node answering at two endpoints */
    assert_int_equal(kvn_peers_heard(t, b, 5, 1, 0, &ch, &e), -EADDRINUSE);
    assert_non_null(strstr(e.msg, "tcp://x:1"));
    assert_int_equal(kvn_peers_up(t), 1);
    /* bad endpoints, full table */
    char longep[KVN_PEERS_ENDPOINT_MAX + 8];
    memset(longep, 'a', sizeof(longep) - 1);
    longep[sizeof(longep) - 1] = 0;
    assert_int_equal(kvn_peers_add(t, longep, &id, &e), -EINVAL);
    assert_int_equal(kvn_peers_add(t, "", &id, &e), -EINVAL);
    assert_int_equal(kvn_peers_add(t, NULL, &id, &e), -EINVAL);
    assert_int_equal(kvn_peers_add(t, "tcp://x:9", NULL, &e), -EINVAL);
    assert_int_equal(kvn_peers_add(t, "tcp://x:3", &id, NULL), 0);
    assert_int_equal(kvn_peers_add(t, "tcp://x:4", &id, NULL), 0);
    assert_int_equal(kvn_peers_add(t, "tcp://x:5", &id, &e), -ENOSPC);
    assert_int_equal(kvn_peers_count(t), 4);
    struct kvn_peer_info pi;
    assert_int_equal(kvn_peers_get(t, 4, &pi, &e), -EINVAL);
    assert_int_equal(kvn_peers_get(t, 0, NULL, &e), -EINVAL);
    assert_int_equal(kvn_peers_tick(NULL, 0, NULL, 0), -EINVAL);
    assert_int_equal(kvn_peers_tick(t, 0, NULL, 1), -EINVAL);
    assert_int_equal(kvn_peers_due(NULL, 0, NULL, 0), -EINVAL);
    assert_int_equal(kvn_peers_due(t, 0, NULL, 1), -EINVAL);
    assert_int_equal(kvn_peers_count(NULL), 0);
    assert_int_equal(kvn_peers_up(NULL), 0);
    assert_true(kvn_peers_next_deadline(NULL) == UINT64_MAX);
    kvn_peers_destroy(t);
    kvn_peers_destroy(NULL);

    struct kvn_peers_config bad = {.max_peers = KVN_PEERS_LIMIT_MAX + 1};
    assert_int_equal(kvn_peers_create(&bad, &t, &e), -EINVAL);
    bad = (struct kvn_peers_config){.heartbeat_ms = 500, .timeout_ms = 100};
    assert_int_equal(kvn_peers_create(&bad, &t, &e), -EINVAL);
    assert_int_equal(kvn_peers_create(NULL, NULL, &e), -EINVAL);
    assert_int_equal(kvn_peers_create(NULL, &t, NULL), 0);
    kvn_peers_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_identity_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
