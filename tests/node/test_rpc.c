/* test_rpc.c - the control RPC codec: every op parses, every malformed input is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "node/kvn_rpc.h"

struct pk {
    msgpack_sbuffer sb;
    msgpack_packer p;
};

static void pk_init(struct pk *k)
{
    msgpack_sbuffer_init(&k->sb);
    msgpack_packer_init(&k->p, &k->sb, msgpack_sbuffer_write);
}

static void s(struct pk *k, const char *str)
{
    msgpack_pack_str(&k->p, strlen(str));
    msgpack_pack_str_body(&k->p, str, strlen(str));
}

/* {"v":1, "op":op, "id":id} + extra pairs already counted in n_extra */
static void head(struct pk *k, const char *op, uint64_t id, uint32_t n_extra)
{
    msgpack_pack_map(&k->p, 3 + n_extra);
    s(k, "v");
    msgpack_pack_uint8(&k->p, 1);
    s(k, "op");
    s(k, op);
    s(k, "id");
    msgpack_pack_uint64(&k->p, id);
}

static void u32_list(struct pk *k, const char *key, const uint32_t *v, uint32_t n)
{
    s(k, key);
    msgpack_pack_array(&k->p, n);
    for (uint32_t i = 0; i < n; i++)
        msgpack_pack_uint32(&k->p, v[i]);
}

static void i32_list(struct pk *k, const char *key, const int32_t *v, uint32_t n)
{
    s(k, key);
    msgpack_pack_array(&k->p, n);
    for (uint32_t i = 0; i < n; i++)
        msgpack_pack_int32(&k->p, v[i]);
}

static int parse(struct pk *k, struct kvn_rpc_req *q, struct kvn_err *e)
{
    int rc = kvn_rpc_parse(k->sb.data, k->sb.size, q, e);
    msgpack_sbuffer_destroy(&k->sb);
    return rc;
}

static int setup(void **state)
{
    struct kvn_rpc_req *q = calloc(1, sizeof(*q));
    assert_non_null(q);
    assert_int_equal(kvn_rpc_req_init(q, NULL), 0);
    *state = q;
    return 0;
}

static int teardown(void **state)
{
    kvn_rpc_req_fini(*state);
    free(*state);
    return 0;
}

static void test_op_names(void **state)
{
    (void)state;
    for (int i = 0; i < KVN_RPC_OP_COUNT; i++) {
        const char *n = kvn_rpc_op_name((enum kvn_rpc_op)i);
        assert_non_null(n);
        enum kvn_rpc_op op;
        assert_int_equal(kvn_rpc_op_from_name(n, strlen(n), &op), 0);
        assert_int_equal(op, i);
    }
    enum kvn_rpc_op op;
    assert_null(kvn_rpc_op_name(KVN_RPC_OP_COUNT));
    assert_int_equal(kvn_rpc_op_from_name("inser", 5, &op), -ENOTSUP);
    assert_int_equal(kvn_rpc_op_from_name("insertx", 7, &op), -ENOTSUP);
    assert_int_equal(kvn_rpc_op_from_name(NULL, 0, &op), -EINVAL);
}

static void test_insert_ok(void **state)
{
    struct kvn_rpc_req *q = *state;
    struct pk k;
    pk_init(&k);
    int32_t toks[] = {1, 2, -3, 2147483647};
    uint32_t slots[] = {0, 4294967295u};
    head(&k, "insert", 77, 2);
    i32_list(&k, "tokens", toks, 4);
    u32_list(&k, "slots", slots, 2);
    struct kvn_err e;
    assert_int_equal(parse(&k, q, &e), 0);
    assert_int_equal(q->op, KVN_RPC_INSERT);
    assert_int_equal(q->id, 77);
    assert_int_equal(q->n_tokens, 4);
    assert_memory_equal(q->tokens, toks, sizeof(toks));
    assert_int_equal(q->n_slots, 2);
    assert_memory_equal(q->slots, slots, sizeof(slots));
}

static void test_every_op_ok(void **state)
{
    struct kvn_rpc_req *q = *state;
    struct kvn_err e;
    struct pk k;
    int32_t t[] = {5, 6};
    uint32_t sl[] = {3};
    uint8_t blob[] = {1, 2, 3};

    const char *bare[] = {"hello", "stats", "reset"};
    for (int i = 0; i < 3; i++) {
        pk_init(&k);
        head(&k, bare[i], i, 0);
        assert_int_equal(parse(&k, q, &e), 0);
        assert_string_equal(kvn_rpc_op_name(q->op), bare[i]);
    }
    const char *tok_ops[] = {"match", "backup"};
    for (int i = 0; i < 2; i++) {
        pk_init(&k);
        head(&k, tok_ops[i], 1, 1);
        i32_list(&k, "tokens", t, 2);
        assert_int_equal(parse(&k, q, &e), 0);
        assert_int_equal(q->n_tokens, 2);
    }
    pk_init(&k);
    head(&k, "lock", 1, 2);
    i32_list(&k, "tokens", t, 2);
    s(&k, "lease_ms");
    msgpack_pack_uint32(&k.p, 1234);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_int_equal(q->lease_ms, 1234);
    pk_init(&k); /* default lease */
    head(&k, "lock", 1, 1);
    i32_list(&k, "tokens", t, 2);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_int_equal(q->lease_ms, KVN_RPC_LEASE_DEFAULT_MS);

    pk_init(&k);
    head(&k, "unlock", 1, 1);
    s(&k, "handle");
    msgpack_pack_uint64(&k.p, 0x100000005ull);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_int_equal(q->handle, 0x100000005ull);

    pk_init(&k);
    head(&k, "load_back", 1, 2);
    i32_list(&k, "tokens", t, 2);
    u32_list(&k, "slots", sl, 1);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_int_equal(q->op, KVN_RPC_LOAD_BACK);

    pk_init(&k);
    head(&k, "evict", 1, 2);
    s(&k, "tier");
    s(&k, "l2");
    s(&k, "pages");
    msgpack_pack_uint32(&k.p, 9);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_int_equal(q->tier, KVN_RPC_TIER_L2);
    assert_int_equal(q->pages, 9);

    pk_init(&k);
    head(&k, "register_l1", 1, 4);
    s(&k, "desc");
    msgpack_pack_bin(&k.p, 3);
    msgpack_pack_bin_body(&k.p, blob, 3);
    s(&k, "addr");
    msgpack_pack_bin(&k.p, 2);
    msgpack_pack_bin_body(&k.p, blob, 2);
    s(&k, "page_bytes");
    msgpack_pack_uint32(&k.p, 4096);
    s(&k, "n_slots");
    msgpack_pack_uint32(&k.p, 64);
    msgpack_sbuffer sb = k.sb; /* keep alive: blobs point into it */
    assert_int_equal(kvn_rpc_parse(sb.data, sb.size, q, &e), 0);
    assert_int_equal(q->desc_len, 3);
    assert_int_equal(q->addr_len, 2);
    assert_memory_equal(q->desc, blob, 3);
    assert_int_equal(q->page_bytes, 4096);
    assert_int_equal(q->l1_slots, 64);
    msgpack_sbuffer_destroy(&sb);

    pk_init(&k);
    head(&k, "l1_fill", 1, 2);
    u32_list(&k, "slots", sl, 1);
    s(&k, "seed");
    msgpack_pack_uint64(&k.p, UINT64_MAX);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_true(q->seed == UINT64_MAX);

    pk_init(&k);
    head(&k, "l1_checksum", 1, 1);
    u32_list(&k, "slots", sl, 1);
    assert_int_equal(parse(&k, q, &e), 0);
}

static void test_malformed(void **state)
{
    struct kvn_rpc_req *q = *state;
    struct kvn_err e;
    /* not msgpack at all: 0xc1 is never used */
    const uint8_t junk[] = {0xc1, 0x00};
    assert_int_equal(kvn_rpc_parse(junk, sizeof(junk), q, &e), -EPROTO);
    assert_int_equal(e.code, -EPROTO);
    /* truncated map */
    const uint8_t trunc[] = {0x83, 0xa1, 'v'};
    assert_int_equal(kvn_rpc_parse(trunc, sizeof(trunc), q, &e), -EPROTO);
    /* an array, not a map */
    const uint8_t arr[] = {0x91, 0x01};
    assert_int_equal(kvn_rpc_parse(arr, sizeof(arr), q, &e), -EPROTO);
    /* empty */
    assert_int_equal(kvn_rpc_parse("", 0, q, &e), -EPROTO);
    /* NULL with a length */
    assert_int_equal(kvn_rpc_parse(NULL, 3, q, &e), -EINVAL);
    /* trailing bytes */
    struct pk k;
    pk_init(&k);
    head(&k, "hello", 1, 0);
    msgpack_pack_nil(&k.p);
    assert_int_equal(parse(&k, q, &e), -EPROTO);
    /* oversized: checked before parsing */
    uint8_t *big = calloc(1, KVN_RPC_MAX_FRAME + 1);
    assert_non_null(big);
    assert_int_equal(kvn_rpc_parse(big, KVN_RPC_MAX_FRAME + 1, q, &e), -EMSGSIZE);
    free(big);
    /* uninitialised req */
    struct kvn_rpc_req bare = {0};
    assert_int_equal(kvn_rpc_parse(junk, 1, &bare, &e), -EINVAL);
    assert_int_equal(kvn_rpc_parse(junk, 1, NULL, &e), -EINVAL);
}

static void test_schema_errors(void **state)
{
    struct kvn_rpc_req *q = *state;
    struct kvn_err e;
    struct pk k;
    int32_t t[] = {1, 2};
    uint32_t sl[] = {0};

    /* wrong version, with the id still echoed */
    pk_init(&k);
    msgpack_pack_map(&k.p, 3);
    s(&k, "v");
    msgpack_pack_uint8(&k.p, 2);
    s(&k, "op");
    s(&k, "hello");
    s(&k, "id");
    msgpack_pack_uint8(&k.p, 42);
    assert_int_equal(parse(&k, q, &e), -EPROTO);
    assert_int_equal(q->id, 42);
    /* missing v */
    pk_init(&k);
    msgpack_pack_map(&k.p, 1);
    s(&k, "op");
    s(&k, "hello");
    assert_int_equal(parse(&k, q, &e), -EPROTO);
    /* missing op */
    pk_init(&k);
    msgpack_pack_map(&k.p, 1);
    s(&k, "v");
    msgpack_pack_uint8(&k.p, 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* unknown op */
    pk_init(&k);
    head(&k, "format_disk", 9, 0);
    assert_int_equal(parse(&k, q, &e), -ENOTSUP);
    assert_int_equal(q->id, 9);
    assert_non_null(strstr(e.msg, "format_disk"));
    /* op not a string */
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    s(&k, "v");
    msgpack_pack_uint8(&k.p, 1);
    s(&k, "op");
    msgpack_pack_uint8(&k.p, 3);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* tokens of the wrong type */
    pk_init(&k);
    head(&k, "match", 1, 1);
    s(&k, "tokens");
    s(&k, "1,2");
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* a token out of int32 range, and a float token */
    pk_init(&k);
    head(&k, "match", 1, 1);
    s(&k, "tokens");
    msgpack_pack_array(&k.p, 2);
    msgpack_pack_uint8(&k.p, 1);
    msgpack_pack_uint64(&k.p, 1ull << 31);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    pk_init(&k);
    head(&k, "match", 1, 1);
    s(&k, "tokens");
    msgpack_pack_array(&k.p, 1);
    msgpack_pack_int64(&k.p, INT64_MIN);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    pk_init(&k);
    head(&k, "match", 1, 1);
    s(&k, "tokens");
    msgpack_pack_array(&k.p, 1);
    msgpack_pack_double(&k.p, 1.5);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* negative slot */
    pk_init(&k);
    head(&k, "insert", 1, 2);
    i32_list(&k, "tokens", t, 2);
    s(&k, "slots");
    msgpack_pack_array(&k.p, 1);
    msgpack_pack_int8(&k.p, -1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* missing a required argument (insert without slots is auto mode, allowed) */
    pk_init(&k);
    head(&k, "l1_fill", 1, 1);
    s(&k, "seed");
    msgpack_pack_uint8(&k.p, 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "slots"));
    pk_init(&k);
    head(&k, "insert", 1, 1);
    i32_list(&k, "tokens", t, 2);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_false(q->has_slots);
    /* an argument the op does not take */
    pk_init(&k);
    head(&k, "match", 1, 2);
    i32_list(&k, "tokens", t, 2);
    u32_list(&k, "slots", sl, 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* unknown key */
    pk_init(&k);
    head(&k, "hello", 1, 1);
    s(&k, "colour");
    msgpack_pack_uint8(&k.p, 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* non-string key */
    pk_init(&k);
    head(&k, "hello", 1, 1);
    msgpack_pack_uint8(&k.p, 1);
    msgpack_pack_uint8(&k.p, 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* duplicate key */
    pk_init(&k);
    head(&k, "match", 1, 2);
    i32_list(&k, "tokens", t, 2);
    i32_list(&k, "tokens", t, 2);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* lease out of range, zero */
    pk_init(&k);
    head(&k, "lock", 1, 2);
    i32_list(&k, "tokens", t, 2);
    s(&k, "lease_ms");
    msgpack_pack_uint64(&k.p, KVN_RPC_LEASE_MAX_MS + 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    pk_init(&k);
    head(&k, "lock", 1, 2);
    i32_list(&k, "tokens", t, 2);
    s(&k, "lease_ms");
    msgpack_pack_uint64(&k.p, 0);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* bad tier */
    pk_init(&k);
    head(&k, "evict", 1, 2);
    s(&k, "tier");
    s(&k, "l3");
    s(&k, "pages");
    msgpack_pack_uint8(&k.p, 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* desc not bin, and empty bin */
    pk_init(&k);
    head(&k, "register_l1", 1, 4);
    s(&k, "desc");
    s(&k, "abc");
    s(&k, "addr");
    msgpack_pack_bin(&k.p, 0);
    s(&k, "page_bytes");
    msgpack_pack_uint8(&k.p, 1);
    s(&k, "n_slots");
    msgpack_pack_uint8(&k.p, 1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    /* id negative */
    pk_init(&k);
    msgpack_pack_map(&k.p, 3);
    s(&k, "v");
    msgpack_pack_uint8(&k.p, 1);
    s(&k, "op");
    s(&k, "hello");
    s(&k, "id");
    msgpack_pack_int8(&k.p, -1);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
}

static void test_cluster_ops(void **state)
{
    struct kvn_rpc_req *q = *state;
    struct kvn_err e;
    struct pk k;
    int32_t t[] = {1, 2};
    uint32_t sl[] = {4};
    uint8_t blob[] = {9, 8, 7};
    pk_init(&k);
    head(&k, "peer_hello", 1, 1);
    s(&k, "hello");
    msgpack_pack_bin(&k.p, 3);
    msgpack_pack_bin_body(&k.p, blob, 3);
    msgpack_sbuffer sb = k.sb;
    assert_int_equal(kvn_rpc_parse(sb.data, sb.size, q, &e), 0);
    assert_int_equal(q->op, KVN_RPC_PEER_HELLO);
    assert_int_equal(q->hello_len, 3);
    assert_memory_equal(q->hello, blob, 3);
    msgpack_sbuffer_destroy(&sb);
    const char *tok_ops[] = {"pin", "reserve", "fetch"};
    for (int i = 0; i < 3; i++) {
        pk_init(&k);
        head(&k, tok_ops[i], 1, 2);
        i32_list(&k, "tokens", t, 2);
        s(&k, "lease_ms");
        msgpack_pack_uint16(&k.p, 500);
        assert_int_equal(parse(&k, q, &e), 0);
        assert_int_equal(q->lease_ms, 500);
    }
    pk_init(&k);
    head(&k, "push", 1, 3);
    s(&k, "to");
    s(&k, "tcp://127.0.0.1:9");
    i32_list(&k, "tokens", t, 2);
    u32_list(&k, "slots", sl, 1);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_string_equal(q->to, "tcp://127.0.0.1:9");
    assert_true(q->has_slots);
    const char *h_ops[] = {"unpin", "abort", "push_done"};
    for (int i = 0; i < 3; i++) {
        pk_init(&k);
        head(&k, h_ops[i], 1, 1);
        s(&k, "handle");
        msgpack_pack_uint8(&k.p, 7);
        assert_int_equal(parse(&k, q, &e), 0);
        assert_int_equal(q->handle, 7);
    }
    /* refusals: push without "to", an empty or NUL-carrying "to", an oversized hello */
    pk_init(&k);
    head(&k, "push", 1, 1);
    i32_list(&k, "tokens", t, 2);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    pk_init(&k);
    head(&k, "push", 1, 2);
    s(&k, "to");
    msgpack_pack_str(&k.p, 3);
    msgpack_pack_str_body(&k.p, "a\0b", 3);
    i32_list(&k, "tokens", t, 2);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    pk_init(&k);
    head(&k, "push", 1, 2);
    s(&k, "to");
    s(&k, "");
    i32_list(&k, "tokens", t, 2);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
    pk_init(&k);
    head(&k, "peer_hello", 1, 1);
    s(&k, "hello");
    msgpack_pack_bin(&k.p, KVN_RPC_MAX_HELLO + 1);
    uint8_t *big = calloc(1, KVN_RPC_MAX_HELLO + 1);
    assert_non_null(big);
    msgpack_pack_bin_body(&k.p, big, KVN_RPC_MAX_HELLO + 1);
    free(big);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
}

static void test_too_many_tokens(void **state)
{
    struct kvn_rpc_req *q = *state;
    struct kvn_err e;
    struct pk k;
    pk_init(&k);
    head(&k, "match", 1, 1);
    s(&k, "tokens");
    msgpack_pack_array(&k.p, KVN_RPC_MAX_TOKENS + 1);
    for (uint32_t i = 0; i <= KVN_RPC_MAX_TOKENS; i++)
        msgpack_pack_fix_uint8(&k.p, 1);
    assert_true(k.sb.size <= KVN_RPC_MAX_FRAME);
    assert_int_equal(parse(&k, q, &e), -EINVAL);
}

static void test_refusal_resets_request(void **state)
{
    struct kvn_rpc_req *q = *state;
    struct kvn_err e;
    struct pk k;
    int32_t t[] = {1, 2};
    pk_init(&k);
    head(&k, "match", 5, 1);
    i32_list(&k, "tokens", t, 2);
    assert_int_equal(parse(&k, q, &e), 0);
    assert_true(q->has_tokens);
    const uint8_t junk[] = {0xc1};
    assert_int_equal(kvn_rpc_parse(junk, 1, q, &e), -EPROTO);
    assert_false(q->has_tokens);
    assert_int_equal(q->n_tokens, 0);
    assert_int_equal(q->id, 0);
}

static void test_fill_and_checksum(void **state)
{
    (void)state;
    uint8_t a[1000], b[1000];
    kvn_rpc_fill_pattern(a, sizeof(a), 7, 3);
    kvn_rpc_fill_pattern(b, sizeof(b), 7, 3);
    assert_memory_equal(a, b, sizeof(a));
    assert_int_equal(kvn_rpc_fnv1a(a, sizeof(a)), kvn_rpc_fnv1a(b, sizeof(b)));
    kvn_rpc_fill_pattern(b, sizeof(b), 7, 4);
    assert_true(memcmp(a, b, sizeof(a)) != 0);
    kvn_rpc_fill_pattern(b, sizeof(b), 8, 3);
    assert_true(memcmp(a, b, sizeof(a)) != 0);
    /* FNV-1a 64 reference values */
    assert_true(kvn_rpc_fnv1a("", 0) == 0xcbf29ce484222325ull);
    assert_true(kvn_rpc_fnv1a("a", 1) == 0xaf63dc4c8601ec8cull);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_names),
        cmocka_unit_test_setup_teardown(test_insert_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_op_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_resets_request, setup, teardown),
        cmocka_unit_test(test_fill_and_checksum),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
