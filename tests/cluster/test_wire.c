/*
 * test_wire.c - peer hello codec (round trip, strict refusals), compatibility, remote page
 * bounds, and overlap queries against a global index fed with real page-hash chains.
 */
#include <msgpack.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache/page_hash.h"
#include "node/cluster/cluster_wire.h"
#include "node/cluster/overlap.h"

static struct kvn_wire_hello sample(void)
{
    struct kvn_wire_hello h;
    memset(&h, 0, sizeof(h));
    h.node_id = 0x1234567890abcdefull;
    h.inc = 42;
    strcpy(h.ctl, "tcp://127.0.0.1:7100");
    strcpy(h.events, "tcp://127.0.0.1:7101");
    strcpy(h.replay, "tcp://127.0.0.1:7102");
    strcpy(h.topic, "kv");
    strcpy(h.transport, "ofi+tcp");
    h.page_size = 16;
    h.page_bytes = 65536;
    h.pool_pages = 1024;
    h.addr_len = 100;
    for (uint32_t i = 0; i < h.addr_len; i++)
        h.addr[i] = (uint8_t)(i * 7);
    h.pool_desc_len = 3;
    memcpy(h.pool_desc, "abc", 3);
    return h;
}

static void test_hello_roundtrip(void **state)
{
    (void)state;
    struct kvn_wire_hello h = sample(), d;
    uint8_t buf[KVN_WIRE_HELLO_MAX];
    size_t len;
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), &len, NULL), 0);
    assert_int_equal(kvn_wire_hello_decode(buf, len, &d, NULL), 0);
    assert_memory_equal(&h, &d, sizeof(h));
    assert_int_equal(kvn_wire_hello_compatible(&h, &d, NULL), 0);
    /* the largest hello fits KVN_WIRE_HELLO_MAX */
    memset(h.ctl, 'c', KVN_WIRE_STR_MAX - 1);
    memset(h.events, 'e', KVN_WIRE_STR_MAX - 1);
    memset(h.replay, 'r', KVN_WIRE_STR_MAX - 1);
    memset(h.topic, 't', KVN_WIRE_STR_MAX - 1);
    memset(h.transport, 'x', KVN_WIRE_STR_MAX - 1);
    h.addr_len = h.pool_desc_len = KVN_WIRE_BLOB_MAX;
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), &len, NULL), 0);
    assert_int_equal(kvn_wire_hello_decode(buf, len, &d, NULL), 0);
    assert_memory_equal(&h, &d, sizeof(h));
}

static void test_hello_encode_errors(void **state)
{
    (void)state;
    struct kvn_wire_hello h = sample();
    uint8_t buf[64];
    size_t len = 0;
    struct kvn_err e;
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), &len, &e), -ENOSPC);
    assert_int_equal(kvn_wire_hello_encode(NULL, buf, sizeof(buf), &len, &e), -EINVAL);
    assert_int_equal(kvn_wire_hello_encode(&h, NULL, sizeof(buf), &len, &e), -EINVAL);
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), NULL, &e), -EINVAL);
    h.node_id = 0;
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), &len, &e), -EINVAL);
    h = sample();
    memset(h.topic, 'a', sizeof(h.topic));
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), &len, &e), -EINVAL);
    h = sample();
    h.addr_len = KVN_WIRE_BLOB_MAX + 1;
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), &len, &e), -EINVAL);
}

/* Packs a hello map from sample() with one twist applied by `mode`. */
enum twist { T_NONE, T_MISSING, T_UNKNOWN, T_DUP, T_WRONG_TYPE, T_ZERO_ID, T_ZERO_PS, T_NUL };

static size_t pack_twisted(enum twist mode, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    const char *keys[] = {"node_id",    "inc",       "ctl",       "events",
                          "replay",     "topic",     "page_size", "page_bytes",
                          "pool_pages", "transport", "addr",      "pool_desc"};
    int n = 12 + (mode == T_UNKNOWN || mode == T_DUP) - (mode == T_MISSING);
    msgpack_pack_map(&pk, (size_t)n);
    for (int i = 0; i < 12; i++) {
        if (mode == T_MISSING && i == 5)
            continue;
        msgpack_pack_str(&pk, strlen(keys[i]));
        msgpack_pack_str_body(&pk, keys[i], strlen(keys[i]));
        if (i < 2 || (i >= 6 && i <= 8)) {
            uint64_t v = 5;
            if (mode == T_ZERO_ID && i == 0)
                v = 0;
            if (mode == T_ZERO_PS && i == 6)
                v = 0;
            if (mode == T_WRONG_TYPE && i == 7)
                msgpack_pack_str(&pk, 1), msgpack_pack_str_body(&pk, "5", 1);
            else
                msgpack_pack_uint64(&pk, v);
        } else if (i >= 10) {
            msgpack_pack_bin(&pk, 2);
            msgpack_pack_bin_body(&pk, "zz", 2);
        } else {
            const char *s = mode == T_NUL && i == 2 ? "a\0b" : "tcp://h:1";
            size_t l = mode == T_NUL && i == 2 ? 3 : strlen(s);
            msgpack_pack_str(&pk, l);
            msgpack_pack_str_body(&pk, s, l);
        }
    }
    if (mode == T_UNKNOWN) {
        msgpack_pack_str(&pk, 5);
        msgpack_pack_str_body(&pk, "bogus", 5);
        msgpack_pack_nil(&pk);
    }
    if (mode == T_DUP) {
        msgpack_pack_str(&pk, 3);
        msgpack_pack_str_body(&pk, "inc", 3);
        msgpack_pack_uint64(&pk, 1);
    }
    return sb->size;
}

static void test_hello_decode_strict(void **state)
{
    (void)state;
    struct kvn_wire_hello d, keep = sample();
    struct kvn_err e;
    msgpack_sbuffer sb;
    pack_twisted(T_NONE, &sb);
    assert_int_equal(kvn_wire_hello_decode(sb.data, sb.size, &d, &e), 0);
    assert_string_equal(d.ctl, "tcp://h:1");
    assert_int_equal(d.page_bytes, 5);
    /* trailing bytes */
    msgpack_sbuffer_write(&sb, "\x01", 1);
    d = keep;
    assert_int_equal(kvn_wire_hello_decode(sb.data, sb.size, &d, &e), -EPROTO);
    assert_non_null(strstr(e.msg, "trailing"));
    assert_memory_equal(&d, &keep, sizeof(d)); /* untouched on refusal */
    msgpack_sbuffer_destroy(&sb);
    static const struct {
        enum twist t;
        int code;
        const char *word;
    } cases[] = {
        {T_MISSING, -EPROTO, "topic"},   {T_UNKNOWN, -EPROTO, "bogus"},
        {T_DUP, -EPROTO, "twice"},       {T_WRONG_TYPE, -EPROTO, "page_bytes"},
        {T_ZERO_ID, -EINVAL, "node_id"}, {T_ZERO_PS, -EINVAL, "page_size"},
        {T_NUL, -EINVAL, "NUL"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pack_twisted(cases[i].t, &sb);
        d = keep;
        assert_int_equal(kvn_wire_hello_decode(sb.data, sb.size, &d, &e), cases[i].code);
        assert_non_null(strstr(e.msg, cases[i].word));
        assert_memory_equal(&d, &keep, sizeof(d));
        msgpack_sbuffer_destroy(&sb);
    }
    /* not msgpack / not a map / too large / NULL */
    assert_int_equal(kvn_wire_hello_decode("\xc1", 1, &d, &e), -EPROTO);
    assert_int_equal(kvn_wire_hello_decode("\x05", 1, &d, &e), -EPROTO);
    assert_int_equal(kvn_wire_hello_decode("", 0, &d, &e), -EPROTO);
    static uint8_t huge[KVN_WIRE_HELLO_MAX + 1];
    assert_int_equal(kvn_wire_hello_decode(huge, sizeof(huge), &d, &e), -EMSGSIZE);
    assert_int_equal(kvn_wire_hello_decode(NULL, 1, &d, &e), -EINVAL);
    assert_int_equal(kvn_wire_hello_decode("\x80", 1, NULL, &e), -EINVAL);
    /* truncated real hello */
    struct kvn_wire_hello h = sample();
    uint8_t buf[KVN_WIRE_HELLO_MAX];
    size_t len;
    assert_int_equal(kvn_wire_hello_encode(&h, buf, sizeof(buf), &len, NULL), 0);
    for (size_t cut = 0; cut < len; cut += 7)
        assert_int_equal(kvn_wire_hello_decode(buf, cut, &d, NULL), -EPROTO);
}

static void test_compatible_and_pages(void **state)
{
    (void)state;
    struct kvn_wire_hello a = sample(), b = sample();
    struct kvn_err e;
    b.page_size = 32;
    assert_int_equal(kvn_wire_hello_compatible(&a, &b, &e), -EPROTO);
    assert_non_null(strstr(e.msg, "page size"));
    b = sample();
    b.page_bytes = 1;
    assert_int_equal(kvn_wire_hello_compatible(&a, &b, &e), -EPROTO);
    b = sample();
    strcpy(b.transport, "ucx+tcp");
    assert_int_equal(kvn_wire_hello_compatible(&a, &b, &e), -EPROTO);
    assert_non_null(strstr(e.msg, "ucx+tcp"));
    b = sample();
    b.pool_pages = 0;
    assert_int_equal(kvn_wire_hello_compatible(&a, &b, &e), -EPROTO);
    assert_int_equal(kvn_wire_hello_compatible(NULL, &b, &e), -EINVAL);

    uint32_t ok[] = {0, 5, 1023}, bad[] = {0, 1024};
    assert_int_equal(kvn_wire_check_pages(ok, 3, 1024, 65536, NULL), 0);
    assert_int_equal(kvn_wire_check_pages(bad, 2, 1024, 65536, &e), -ERANGE);
    assert_non_null(strstr(e.msg, "1024"));
    uint32_t far[] = {UINT32_MAX - 1};
    assert_int_equal(kvn_wire_check_pages(far, 1, UINT32_MAX, UINT64_MAX / 2, &e), -ERANGE);
    assert_int_equal(kvn_wire_check_pages(NULL, 1, 1, 1, &e), -EINVAL);
    assert_int_equal(kvn_wire_check_pages(ok, 1, 1, 0, &e), -EINVAL);
    assert_int_equal(kvn_wire_check_pages(NULL, 0, 1, 1, &e), 0);
}

/* Announces the first n pages of toks (page size ps) on medium m for peer p. */
static void announce(struct kvn_gindex *g, uint32_t p, const int32_t *toks, uint32_t n, uint32_t ps,
                     enum kvn_medium m)
{
    uint8_t prev[KVN_PAGE_DIGEST_LEN], cur[KVN_PAGE_DIGEST_LEN];
    int64_t parent = 0;
    for (uint32_t i = 0; i < n; i++) {
        kvn_page_hash_one(i ? prev : NULL, toks + i * ps, ps, cur);
        int64_t h = kvn_page_hash_event(cur);
        struct kvn_kv_event ev = {.type = KVN_EV_BLOCK_STORED,
                                  .medium = m,
                                  .hashes = &h,
                                  .n_hashes = 1,
                                  .has_parent = i > 0,
                                  .parent_hash = parent,
                                  .tokens = toks + i * ps,
                                  .n_tokens = ps,
                                  .block_size = ps};
        assert_int_equal(kvn_gindex_apply(g, p, &ev, NULL), 0);
        parent = h;
        memcpy(prev, cur, sizeof(prev));
    }
}

static void test_overlap(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    int32_t toks[21];
    for (int i = 0; i < 21; i++)
        toks[i] = 1000 + i * 3;
    int64_t hb[8];
    struct kvn_overlap o;
    struct kvn_err e;
    /* empty index: nothing remote */
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 0, UINT32_MAX, hb, 8, &o, NULL), 0);
    assert_false(o.remote_found);
    assert_int_equal(o.query_pages, 5);
    announce(g, 1, toks, 4, 4, KVN_MEDIUM_CPU_PINNED);
    announce(g, 2, toks, 1, 4, KVN_MEDIUM_CPU_PINNED);
    announce(g, 3, toks, 5, 4, KVN_MEDIUM_GPU);
    announce(g, 0, toks, 5, 4, KVN_MEDIUM_CPU_PINNED); /* ourselves: skipped */
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 2, 0, hb, 8, &o, NULL), 0);
    assert_true(o.remote_found);
    assert_int_equal(o.remote_peer, 1);
    assert_int_equal(o.remote_pages, 4);
    assert_int_equal(o.fetchable, 2);
    assert_int_equal(o.any_pages, 5);
    assert_int_equal(o.local_pages, 2);
    /* local already longer than remote: nothing to fetch */
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 5, 0, hb, 8, &o, NULL), 0);
    assert_int_equal(o.fetchable, 0);
    /* a different first page: no peer */
    toks[0] = 7;
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 0, 0, hb, 8, &o, NULL), 0);
    assert_false(o.remote_found);
    assert_int_equal(o.any_pages, 0);
    /* errors change nothing in out */
    struct kvn_overlap keep = o;
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 0, 0, hb, 2, &o, &e), -ENOSPC);
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 6, 0, hb, 8, &o, &e), -EINVAL);
    assert_int_equal(kvn_overlap_query(g, toks, 21, 0, 0, 0, hb, 8, &o, &e), -EINVAL);
    assert_int_equal(kvn_overlap_query(NULL, toks, 21, 4, 0, 0, hb, 8, &o, &e), -EINVAL);
    assert_int_equal(kvn_overlap_query(g, NULL, 21, 4, 0, 0, hb, 8, &o, &e), -EINVAL);
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 0, 0, NULL, 8, &o, &e), -EINVAL);
    assert_int_equal(kvn_overlap_query(g, toks, 21, 4, 0, 0, hb, 8, NULL, &e), -EINVAL);
    assert_memory_equal(&o, &keep, sizeof(o));
    kvn_gindex_destroy(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_roundtrip),
        cmocka_unit_test(test_hello_encode_errors),
        cmocka_unit_test(test_hello_decode_strict),
        cmocka_unit_test(test_compatible_and_pages),
        cmocka_unit_test(test_overlap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
