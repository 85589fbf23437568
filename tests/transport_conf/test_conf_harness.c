/*
 * test_conf_harness.c - the conformance suite's own machinery, checked before it
 * is trusted to judge transports: checksums see every byte and its place,
 * patterns are positional, the channel keeps boundaries and reports a dead
 * peer, children always end (alarm, parent-side deadline, SIGKILL) and are
 * always reaped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conf_harness.h"

static void test_hash_sees_every_byte_and_length(void **state)
{
    (void)state;
    enum { N = 4099 };
    unsigned char *a = malloc(N);
    assert_non_null(a);
    conf_pattern_fill(a, N, 7, 0);
    uint64_t h = conf_hash64(a, N);
    assert_int_equal(h, conf_hash64(a, N)); /* deterministic */
    /* A flip of any single bit at any place changes the checksum. */
    for (size_t i = 0; i < N; i += 37) {
        for (int bit = 0; bit < 8; bit += 3) {
            a[i] ^= (unsigned char)(1u << bit);
            assert_int_not_equal(conf_hash64(a, N), h);
            a[i] ^= (unsigned char)(1u << bit);
        }
    }
    /* Swapping two different words (same multiset of bytes) changes it too. */
    unsigned char w[8];
    memcpy(w, a + 64, 8);
    memcpy(a + 64, a + 128, 8);
    memcpy(a + 128, w, 8);
    assert_int_not_equal(conf_hash64(a, N), h);
    /* Length is part of the checksum: zero-padding is not invisible. */
    unsigned char z[16] = {0};
    for (size_t l = 0; l < 16; l++)
        assert_int_not_equal(conf_hash64(z, l), conf_hash64(z, l + 1));
    assert_int_equal(conf_hash64(NULL, 0), conf_hash64(z, 0));
    free(a);
}

static void test_pattern_is_positional_and_composable(void **state)
{
    (void)state;
    enum { N = 10007 };
    unsigned char *whole = malloc(N), *piece = malloc(N);
    assert_non_null(whole);
    assert_non_null(piece);
    conf_pattern_fill(whole, N, 42, 1000);
    /* Any sub-range filled on its own equals the same slice of the whole. */
    const size_t cuts[][2] = {{0, 1}, {1, 3}, {3, 4095}, {7, 8}, {8, 9}, {13, 9000}, {N - 1, 1}};
    for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
        size_t off = cuts[c][0], len = cuts[c][1];
        conf_pattern_fill(piece, len, 42, 1000 + off);
        assert_memory_equal(piece, whole + off, len);
        assert_int_equal(conf_pattern_check(whole + off, len, 42, 1000 + off), -1);
        assert_int_equal(conf_pattern_hash(len, 42, 1000 + off), conf_hash64(whole + off, len));
        assert_int_equal(conf_pattern_byte(42, 1000 + off), whole[off]);
    }
    /* Shifted by one position, or another seed: detected at the first byte. */
    assert_int_equal(conf_pattern_check(whole, 64, 42, 1001), 0);
    assert_int_equal(conf_pattern_check(whole, 64, 43, 1000), 0);
    /* A single corrupted byte is located exactly. */
    whole[5000] ^= 0x40;
    assert_int_equal(conf_pattern_check(whole, N, 42, 1000), 5000);
    /* Patterns are not constant: most neighbouring bytes differ. */
    int same = 0;
    for (size_t i = 1; i < N; i++)
        same += whole[i] == whole[i - 1];
    assert_true(same < N / 64);
    free(whole);
    free(piece);
}

static void test_channel_keeps_boundaries_and_validates(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(conf_chan_pair(fds), 0);
    assert_int_equal(conf_chan_send(fds[0], 1, "abc", 3), 0);
    assert_int_equal(conf_chan_send(fds[0], 2, NULL, 0), 0);
    unsigned char big[CONF_CHAN_MAX];
    conf_pattern_fill(big, sizeof(big), 3, 0);
    assert_int_equal(conf_chan_send(fds[0], 3, big, sizeof(big)), 0);

    uint32_t type;
    size_t len;
    char buf[8];
    assert_int_equal(conf_chan_recv(fds[1], 1000, &type, buf, sizeof(buf), &len), 0);
    assert_int_equal(type, 1);
    assert_int_equal(len, 3);
    assert_memory_equal(buf, "abc", 3);
    assert_int_equal(conf_chan_recv(fds[1], 1000, &type, buf, sizeof(buf), &len), 0);
    assert_int_equal(type, 2);
    assert_int_equal(len, 0);
    /* Too large for the caller's buffer: refused, not overflowed. */
    assert_int_equal(conf_chan_recv(fds[1], 1000, &type, buf, sizeof(buf), &len), -EMSGSIZE);
    /* Nothing pending: a deadline, not a hang. */
    assert_int_equal(conf_chan_recv(fds[1], 20, &type, buf, sizeof(buf), &len), -ETIMEDOUT);

    /* Bad arguments. */
    assert_int_equal(conf_chan_send(-1, 1, "a", 1), -EINVAL);
    assert_int_equal(conf_chan_send(fds[0], 1, NULL, 1), -EINVAL);
    assert_int_equal(conf_chan_send(fds[0], 1, big, CONF_CHAN_MAX + 1), -EMSGSIZE);
    assert_int_equal(conf_chan_recv(fds[1], 10, NULL, buf, sizeof(buf), &len), -EINVAL);
    assert_int_equal(conf_chan_recv(fds[1], 10, &type, NULL, 4, &len), -EINVAL);
    assert_int_equal(conf_chan_pair(NULL), -EINVAL);

    /* The other end gone: EOF reads as -EPIPE, sending fails as -EPIPE. */
    close(fds[0]);
    assert_int_equal(conf_chan_recv(fds[1], 1000, &type, buf, sizeof(buf), &len), -EPIPE);
    assert_int_equal(conf_chan_send(fds[1], 1, "x", 1), -EPIPE);
    close(fds[1]);
}

static int child_echo(int chan, void *arg)
{
    (void)arg;
    uint32_t type;
    size_t len;
    char buf[64];
    if (conf_chan_recv(chan, 5000, &type, buf, sizeof(buf), &len) < 0)
        return 3;
    if (conf_chan_send(chan, type + 1, buf, len) < 0)
        return 4;
    return 17;
}

static int child_sleeps(int chan, void *arg)
{
    (void)chan;
    (void)arg;
    for (;;)
        pause(); /* only a signal ends it */
    return 0;
}

static void test_child_exchange_and_exit_code(void **state)
{
    (void)state;
    struct conf_child c = CONF_CHILD_INIT;
    assert_int_equal(conf_child_spawn(&c, child_echo, NULL, 10), 0);
    assert_true(c.pid > 0);
    assert_int_equal(conf_chan_send(c.chan, 41, "ping", 4), 0);
    uint32_t type;
    size_t len;
    char buf[64];
    assert_int_equal(conf_chan_recv(c.chan, 10000, &type, buf, sizeof(buf), &len), 0);
    assert_int_equal(type, 42);
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(conf_child_reap(&c, 10000), 17);
    assert_int_equal(c.chan, -1);
    /* Reaped for real: no such child any more, and reaping again is harmless. */
    assert_int_equal(waitpid(c.pid, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
    assert_int_equal(conf_child_reap(&c, 0), 17);
}

static void test_overstaying_child_is_killed_and_reaped(void **state)
{
    (void)state;
    struct conf_child c = CONF_CHILD_INIT;
    assert_int_equal(conf_child_spawn(&c, child_sleeps, NULL, 60), 0);
    /* The parent-side deadline ends it (a short one: the child never exits). */
    assert_int_equal(conf_child_reap(&c, 50), 128 + SIGKILL);
    assert_int_equal(waitpid(c.pid, NULL, WNOHANG), -1);

    /* The child's own alarm ends it even when the parent waits patiently. */
    struct conf_child d = CONF_CHILD_INIT;
    assert_int_equal(conf_child_spawn(&d, child_sleeps, NULL, 1), 0);
    assert_int_equal(conf_child_reap(&d, 30000), 128 + SIGALRM);

    /* An explicit kill: its channel then reads as EOF. */
    struct conf_child e = CONF_CHILD_INIT;
    assert_int_equal(conf_child_spawn(&e, child_sleeps, NULL, 60), 0);
    int chan = dup(e.chan);
    assert_true(chan >= 0);
    assert_int_equal(conf_child_kill(&e), 128 + SIGKILL);
    uint32_t type;
    size_t len;
    char buf[8];
    assert_int_equal(conf_chan_recv(chan, 5000, &type, buf, sizeof(buf), &len), -EPIPE);
    close(chan);
}

static void test_child_bad_arguments(void **state)
{
    (void)state;
    struct conf_child c = CONF_CHILD_INIT;
    assert_int_equal(conf_child_spawn(NULL, child_echo, NULL, 1), -EINVAL);
    assert_int_equal(conf_child_spawn(&c, NULL, NULL, 1), -EINVAL);
    assert_int_equal(conf_child_spawn(&c, child_echo, NULL, 0), -EINVAL);
    assert_int_equal(c.pid, 0);
    assert_int_equal(conf_child_reap(&c, 0), -ECHILD); /* never spawned */
    assert_int_equal(conf_child_reap(NULL, 0), -EINVAL);
    assert_int_equal(conf_child_kill(NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_sees_every_byte_and_length),
        cmocka_unit_test(test_pattern_is_positional_and_composable),
        cmocka_unit_test(test_channel_keeps_boundaries_and_validates),
        cmocka_unit_test(test_child_exchange_and_exit_code),
        cmocka_unit_test(test_overstaying_child_is_killed_and_reaped),
        cmocka_unit_test(test_child_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
