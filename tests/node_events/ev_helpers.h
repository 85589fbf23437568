/*
 * ev_helpers.h - shared by the node_events tests: real page hashes (SHA-256 chain of
 * DESIGN.md, so the reference consumer can verify them), a deterministic workload of
 * BlockStored / BlockRemoved events, and polling helpers with bounded waits.
 */
#ifndef KVN_TEST_EV_HELPERS_H
#define KVN_TEST_EV_HELPERS_H

#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <zmq.h>

#include "cache/kv_event.h"

#define EVH_PAGE 4 /* tokens per page in the tests */

/* digest = SHA-256(prev digest (absent for the first page) || u32 LE tokens). */
static inline int64_t evh_page_hash(const uint8_t *prev, const int32_t *tok, uint8_t out[32])
{
    uint8_t buf[32 + 4 * EVH_PAGE];
    size_t n = 0;
    if (prev) {
        memcpy(buf, prev, 32);
        n = 32;
    }
    for (int i = 0; i < EVH_PAGE; i++) {
        uint32_t t = (uint32_t)tok[i];
        buf[n++] = (uint8_t)t;
        buf[n++] = (uint8_t)(t >> 8);
        buf[n++] = (uint8_t)(t >> 16);
        buf[n++] = (uint8_t)(t >> 24);
    }
    SHA256(buf, n, out);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | out[i];
    return (int64_t)v;
}

/*
 * A sequence of `pages` pages whose tokens derive from `seed`: hashes[i] chained, tokens in
 * tok[i * EVH_PAGE ..].  pages <= 16.
 */
struct evh_seq {
    uint32_t pages;
    int32_t tok[16 * EVH_PAGE];
    int64_t hash[16];
};

static inline void evh_make_seq(struct evh_seq *s, uint32_t seed, uint32_t pages)
{
    uint8_t d[32], prev[32];
    s->pages = pages;
    for (uint32_t i = 0; i < pages * EVH_PAGE; i++)
        s->tok[i] = (int32_t)(seed * 1000u + i);
    for (uint32_t p = 0; p < pages; p++) {
        s->hash[p] = evh_page_hash(p ? prev : NULL, &s->tok[p * EVH_PAGE], d);
        memcpy(prev, d, 32);
    }
}

/* The BlockStored event of page p of s on medium m. */
static inline struct kvn_kv_event evh_stored(const struct evh_seq *s, uint32_t p, enum kvn_medium m)
{
    struct kvn_kv_event ev = {.type = KVN_EV_BLOCK_STORED,
                              .medium = m,
                              .hashes = &s->hash[p],
                              .n_hashes = 1,
                              .has_parent = p > 0,
                              .parent_hash = p ? s->hash[p - 1] : 0,
                              .tokens = &s->tok[p * EVH_PAGE],
                              .n_tokens = EVH_PAGE,
                              .block_size = EVH_PAGE};
    return ev;
}

static inline struct kvn_kv_event evh_removed(const struct evh_seq *s, uint32_t from,
                                              enum kvn_medium m)
{
    struct kvn_kv_event ev = {.type = KVN_EV_BLOCK_REMOVED,
                              .medium = m,
                              .hashes = &s->hash[from],
                              .n_hashes = s->pages - from};
    return ev;
}

/*
 * One ZMQ context per test (evh_setup / evh_teardown as cmocka fixtures; zctx is the context).
 * A failed test leaves sockets open, and zmq_ctx_term would then wait for them forever: such a
 * context is only shut down (and leaked).  Each test's last line is DONE().
 */
static __attribute__((unused)) void *zctx;
static __attribute__((unused)) bool test_done; /* set by each test's last line */

static __attribute__((unused)) int evh_setup(void **state)
{
    (void)state;
    test_done = false;
    zctx = zmq_ctx_new();
    return zctx ? 0 : -1;
}

static __attribute__((unused)) int evh_teardown(void **state)
{
    (void)state;
    if (test_done)
        zmq_ctx_term(zctx);
    else
        zmq_ctx_shutdown(zctx);
    zctx = NULL;
    return 0;
}

#define DONE() (test_done = true)

#endif /* KVN_TEST_EV_HELPERS_H */
