/*
 * test_verbs_wire.c - the verbs backend's wire formats and device listing,
 * which run without any RDMA device: the address blob and the QP handshake
 * message are encoded, decoded, and every malformed variant is refused with
 * the right code; the device spec parser; ibv-based listing returning 0
 * devices cleanly where the kernel has no RDMA support.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "transport/verbs/verbs.h"

static struct xport_verbs_addr good_addr(void)
{
    struct xport_verbs_addr a;
    memset(&a, 0, sizeof(a));
    a.port_num = 1;
    a.link_layer = 2;
    a.mtu = 3; /* IBV_MTU_1024 */
    a.gid_index = 3;
    a.lid = 0;
    a.hs_port = 40000;
    for (int i = 0; i < 16; i++)
        a.gid[i] = (uint8_t)(0xf0 + i);
    a.hs_family = 4;
    a.hs_ip[0] = 10;
    a.hs_ip[1] = 1;
    a.hs_ip[2] = 2;
    a.hs_ip[3] = 3;
    return a;
}

static void encode_good(unsigned char *buf)
{
    struct xport_verbs_addr a = good_addr();
    size_t len = XPORT_VERBS_ADDR_LEN;
    assert_int_equal(xport_verbs_addr_encode(&a, buf, &len, NULL), 0);
    assert_int_equal(len, XPORT_VERBS_ADDR_LEN);
}

static void test_addr_roundtrip(void **state)
{
    (void)state;
    unsigned char buf[128];
    struct xport_verbs_addr a = good_addr(), b;
    size_t len = sizeof(buf);
    struct kvn_err err;
    assert_int_equal(xport_verbs_addr_encode(&a, buf, &len, &err), 0);
    assert_int_equal(len, XPORT_VERBS_ADDR_LEN);
    memset(&b, 0xa5, sizeof(b));
    assert_int_equal(xport_verbs_addr_decode(buf, len, &b, &err), 0);
    assert_int_equal(b.port_num, 1);
    assert_int_equal(b.link_layer, 2);
    assert_int_equal(b.mtu, 3);
    assert_int_equal(b.gid_index, 3);
    assert_int_equal(b.hs_port, 40000);
    assert_int_equal(b.hs_family, 4);
    assert_memory_equal(b.gid, a.gid, 16);
    assert_memory_equal(b.hs_ip, a.hs_ip, 16);

    /* InfiniBand with a LID, IPv6 handshake address. */
    a.link_layer = 1;
    a.lid = 0x1234;
    a.hs_family = 6;
    for (int i = 0; i < 16; i++)
        a.hs_ip[i] = (uint8_t)(i + 1);
    len = sizeof(buf);
    assert_int_equal(xport_verbs_addr_encode(&a, buf, &len, &err), 0);
    assert_int_equal(xport_verbs_addr_decode(buf, len, &b, &err), 0);
    assert_int_equal(b.lid, 0x1234);
    assert_int_equal(b.hs_family, 6);
    assert_memory_equal(b.hs_ip, a.hs_ip, 16);
}

static void test_addr_encode_errors(void **state)
{
    (void)state;
    unsigned char buf[128];
    struct xport_verbs_addr a = good_addr();
    size_t len = 10;
    struct kvn_err err;
    memset(buf, 0x77, sizeof(buf));
    assert_int_equal(xport_verbs_addr_encode(&a, buf, &len, &err), -ENOSPC);
    assert_int_equal(len, XPORT_VERBS_ADDR_LEN);
    assert_int_equal(err.code, -ENOSPC);
    assert_int_equal(buf[0], 0x77); /* nothing written */

    len = sizeof(buf);
    assert_int_equal(xport_verbs_addr_encode(NULL, buf, &len, &err), -EINVAL);
    assert_int_equal(xport_verbs_addr_encode(&a, NULL, &len, &err), -EINVAL);
    assert_int_equal(xport_verbs_addr_encode(&a, buf, NULL, &err), -EINVAL);
    a.mtu = 9;
    assert_int_equal(xport_verbs_addr_encode(&a, buf, &len, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "mtu"));
    assert_int_equal(len, sizeof(buf));
}

static void test_addr_decode_truncated(void **state)
{
    (void)state;
    unsigned char buf[XPORT_VERBS_ADDR_LEN + 8];
    struct xport_verbs_addr out, before;
    struct kvn_err err;
    encode_good(buf);
    memset(&out, 0x5a, sizeof(out));
    before = out;
    for (size_t len = 0; len < XPORT_VERBS_ADDR_LEN; len++) {
        assert_int_equal(xport_verbs_addr_decode(buf, len, &out, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "expected 52"));
    }
    assert_int_equal(xport_verbs_addr_decode(buf, XPORT_VERBS_ADDR_LEN + 1, &out, &err), -EINVAL);
    assert_memory_equal(&out, &before, sizeof(out)); /* untouched on refusal */
    assert_int_equal(xport_verbs_addr_decode(NULL, XPORT_VERBS_ADDR_LEN, &out, &err), -EINVAL);
    assert_int_equal(xport_verbs_addr_decode(buf, XPORT_VERBS_ADDR_LEN, NULL, &err), -EINVAL);
}

/* Mutates byte off of a good blob to v and expects code. */
static void expect_decode(size_t off, uint8_t v, int code, const char *needle)
{
    unsigned char buf[XPORT_VERBS_ADDR_LEN];
    struct xport_verbs_addr out;
    struct kvn_err err;
    encode_good(buf);
    buf[off] = v;
    assert_int_equal(xport_verbs_addr_decode(buf, sizeof(buf), &out, &err), code);
    assert_int_equal(err.code, code);
    if (needle)
        assert_non_null(strstr(err.msg, needle));
}

static void test_addr_decode_corrupt(void **state)
{
    (void)state;
    expect_decode(0, 'X', -EPROTO, "magic");
    expect_decode(3, 0, -EPROTO, "magic");
    expect_decode(4, 2, -EPROTO, "version");
    expect_decode(6, 1, -EPROTO, "reserved");
    expect_decode(34, 1, -EPROTO, "reserved");
    expect_decode(8, 0, -EINVAL, "port");
    expect_decode(9, 3, -EINVAL, "link layer");
    expect_decode(10, 0, -EINVAL, "mtu");
    expect_decode(10, 6, -EINVAL, "mtu");
    expect_decode(32, 5, -EINVAL, "family");
    expect_decode(40, 9, -EINVAL, "IPv4");
}

static void test_addr_decode_zero_port_and_ib_lid(void **state)
{
    (void)state;
    unsigned char buf[XPORT_VERBS_ADDR_LEN];
    struct xport_verbs_addr a = good_addr(), out;
    struct kvn_err err;
    size_t len = sizeof(buf);
    encode_good(buf);
    buf[14] = 0;
    buf[15] = 0;
    assert_int_equal(xport_verbs_addr_decode(buf, sizeof(buf), &out, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "handshake port"));

    a.link_layer = 1; /* InfiniBand needs a LID */
    a.lid = 0;
    assert_int_equal(xport_verbs_addr_encode(&a, buf, &len, &err), -EINVAL);
    a.lid = 7;
    assert_int_equal(xport_verbs_addr_encode(&a, buf, &len, &err), 0);
    buf[12] = 0;
    buf[13] = 0;
    assert_int_equal(xport_verbs_addr_decode(buf, sizeof(buf), &out, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "LID"));
}

static struct xport_verbs_hs good_hs(uint16_t type)
{
    struct xport_verbs_hs m;
    memset(&m, 0, sizeof(m));
    m.type = type;
    m.qpn = 0x123456;
    m.psn = 0xabcdef;
    m.src_id = 0x0102030405060708ull;
    m.lid = 42;
    m.mtu = 5;
    m.link_layer = 1;
    for (int i = 0; i < 16; i++)
        m.gid[i] = (uint8_t)i;
    return m;
}

static void test_hs_roundtrip(void **state)
{
    (void)state;
    unsigned char buf[64];
    struct kvn_err err;
    for (uint16_t t = XPORT_VERBS_HS_REQ; t <= XPORT_VERBS_HS_ACK; t++) {
        struct xport_verbs_hs m = good_hs(t), o;
        size_t len = sizeof(buf);
        assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), 0);
        assert_int_equal(len, XPORT_VERBS_HS_LEN);
        assert_int_equal(xport_verbs_hs_decode(buf, len, &o, &err), 0);
        assert_int_equal(o.type, t);
        assert_int_equal(o.qpn, 0x123456);
        assert_int_equal(o.psn, 0xabcdef);
        assert_true(o.src_id == 0x0102030405060708ull);
        assert_int_equal(o.lid, 42);
        assert_int_equal(o.mtu, 5);
        assert_int_equal(o.link_layer, 1);
        assert_memory_equal(o.gid, m.gid, 16);
    }
    struct xport_verbs_hs nak, o;
    memset(&nak, 0, sizeof(nak));
    nak.type = XPORT_VERBS_HS_NAK;
    nak.status = ENOMEM;
    size_t len = sizeof(buf);
    assert_int_equal(xport_verbs_hs_encode(&nak, buf, &len, &err), 0);
    assert_int_equal(xport_verbs_hs_decode(buf, len, &o, &err), 0);
    assert_int_equal(o.type, XPORT_VERBS_HS_NAK);
    assert_int_equal(o.status, ENOMEM);
}

static void test_hs_errors(void **state)
{
    (void)state;
    unsigned char buf[64];
    struct kvn_err err;
    struct xport_verbs_hs m, o;
    size_t len;

    m = good_hs(XPORT_VERBS_HS_REQ);
    m.qpn = 0x1000000; /* 25 bits */
    len = sizeof(buf);
    assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), -EINVAL);
    m = good_hs(XPORT_VERBS_HS_REQ);
    m.qpn = 0;
    assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), -EINVAL);
    m = good_hs(9);
    assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), -EINVAL);
    m = good_hs(XPORT_VERBS_HS_ACK);
    m.status = 5;
    assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), -EINVAL);
    m = good_hs(XPORT_VERBS_HS_NAK);
    m.status = 0;
    assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), -EINVAL);
    m = good_hs(XPORT_VERBS_HS_REQ);
    len = 47;
    assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), -ENOSPC);
    assert_int_equal(len, XPORT_VERBS_HS_LEN);
    assert_int_equal(xport_verbs_hs_encode(NULL, buf, &len, &err), -EINVAL);

    len = sizeof(buf);
    assert_int_equal(xport_verbs_hs_encode(&m, buf, &len, &err), 0);
    assert_int_equal(xport_verbs_hs_decode(buf, 47, &o, &err), -EINVAL);
    assert_int_equal(xport_verbs_hs_decode(buf, 49, &o, &err), -EINVAL);
    assert_int_equal(xport_verbs_hs_decode(NULL, 48, &o, &err), -EINVAL);
    buf[0] ^= 1;
    assert_int_equal(xport_verbs_hs_decode(buf, 48, &o, &err), -EPROTO);
    buf[0] ^= 1;
    buf[4] = 7;
    assert_int_equal(xport_verbs_hs_decode(buf, 48, &o, &err), -EPROTO);
    buf[4] = 1;
    buf[26] = 0; /* mtu */
    assert_int_equal(xport_verbs_hs_decode(buf, 48, &o, &err), -EINVAL);
    buf[26] = 5;
    buf[11] = 1; /* qpn bit 24 */
    assert_int_equal(xport_verbs_hs_decode(buf, 48, &o, &err), -EINVAL);
    buf[11] = 0;
    assert_int_equal(xport_verbs_hs_decode(buf, 48, &o, &err), 0);
}

static void test_path_mtu(void **state)
{
    (void)state;
    assert_int_equal(xport_verbs_path_mtu(5, 3), 3);
    assert_int_equal(xport_verbs_path_mtu(2, 4), 2);
    assert_int_equal(xport_verbs_path_mtu(4, 4), 4);
}

static void test_parse_dev(void **state)
{
    (void)state;
    char name[16];
    uint8_t port = 0;
    struct kvn_err err;
    assert_int_equal(xport_verbs_parse_dev("mlx5_0", name, sizeof(name), &port, &err), 0);
    assert_string_equal(name, "mlx5_0");
    assert_int_equal(port, 1);
    assert_int_equal(xport_verbs_parse_dev("rxe0:2", name, sizeof(name), &port, &err), 0);
    assert_string_equal(name, "rxe0");
    assert_int_equal(port, 2);

    strcpy(name, "keep");
    port = 9;
    assert_int_equal(xport_verbs_parse_dev("", name, sizeof(name), &port, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "needs a device"));
    assert_int_equal(xport_verbs_parse_dev(":1", name, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d:0", name, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d:256", name, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d:x", name, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d:1a", name, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d:", name, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(
        xport_verbs_parse_dev("averyveryverylongname", name, sizeof(name), &port, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "too long"));
    assert_int_equal(xport_verbs_parse_dev(NULL, name, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d", NULL, sizeof(name), &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d", name, 0, &port, &err), -EINVAL);
    assert_int_equal(xport_verbs_parse_dev("d", name, sizeof(name), NULL, &err), -EINVAL);
    assert_string_equal(name, "keep"); /* refusals change nothing */
    assert_int_equal(port, 9);
}

static void test_list_devices(void **state)
{
    (void)state;
    struct kvn_xport_devinfo di[8];
    struct kvn_err err;
    kvn_err_clear(&err);
    int n = xport_verbs_list_devices(di, 8, &err);
    assert_true(n >= 0);
    assert_int_equal(err.code, 0);
    struct stat st;
    if (stat("/sys/class/infiniband", &st) != 0) {
        /* No kernel RDMA support here: the listing is empty, not an error. */
        assert_int_equal(n, 0);
    }
    int any_active = 0;
    for (int i = 0; i < n && i < 8; i++) {
        assert_true(di[i].name[0] != '\0');
        assert_true(di[i].port >= 1);
        assert_true(di[i].numa_node >= -1);
        assert_int_equal(di[i].active, strcmp(di[i].state, "ACTIVE") == 0);
        any_active |= di[i].active;
    }
    /* Counting only (max 0, out NULL) gives the same number. */
    assert_int_equal(xport_verbs_list_devices(NULL, 0, &err), n);

    char spec[80];
    int r = xport_verbs_first_active(spec, sizeof(spec), &err);
    assert_int_equal(r, n <= 8 ? any_active : r);
    if (r == 1)
        assert_non_null(strchr(spec, ':'));

    assert_int_equal(xport_verbs_list_devices(di, -1, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    assert_int_equal(xport_verbs_list_devices(NULL, 1, &err), -EINVAL);
    assert_int_equal(xport_verbs_first_active(NULL, 8, &err), -EINVAL);
    assert_int_equal(xport_verbs_first_active(spec, 0, &err), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr_roundtrip),
        cmocka_unit_test(test_addr_encode_errors),
        cmocka_unit_test(test_addr_decode_truncated),
        cmocka_unit_test(test_addr_decode_corrupt),
        cmocka_unit_test(test_addr_decode_zero_port_and_ib_lid),
        cmocka_unit_test(test_hs_roundtrip),
        cmocka_unit_test(test_hs_errors),
        cmocka_unit_test(test_path_mtu),
        cmocka_unit_test(test_parse_dev),
        cmocka_unit_test(test_list_devices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
