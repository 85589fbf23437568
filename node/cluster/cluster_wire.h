/*
 * cluster_wire.h - what nodes tell each other: the peer hello, and page lists that point
 * into a peer's registered host pool.
 *
 * Peer hello (the body of the peer_hello RPC's "desc" and of its reply's "hello"): one
 * msgpack map, every key required, nothing else allowed:
 *
 *   {"node_id": u64 != 0,  "inc": u64,            identity; inc changes at each start
 *    "ctl": str,           "events": str,          control ROUTER, KV-event PUB,
 *    "replay": str,        "topic": str,           replay ROUTER ("" = none), topic
 *    "page_size": u32,     "page_bytes": u64,      must equal ours to share pages
 *    "pool_pages": u32,    "transport": str,       the host pool, canonical transport
 *    "addr": bin,          "pool_desc": bin}       transport address, packed descriptor of
 *                                                  the registered pool (kvn_xport_mr_pack)
 *
 * Strings are at most KVN_WIRE_STR_MAX - 1 bytes, blobs at most KVN_WIRE_BLOB_MAX.  A hello
 * that breaks any rule is refused whole (-EPROTO, or -EINVAL for a value out of range) and
 * the message names the key.
 *
 * Page lists: a peer answering pin / reserve names pages of its pool by index; page p is the
 * byte range [p * page_bytes, (p + 1) * page_bytes) of the registration its hello described.
 * kvn_wire_check_pages refuses a list with any page outside that pool before anything is
 * posted (DESIGN.md: every remote offset is bounds-checked against the registration).
 *
 * Thread rules: reentrant, no global state.
 */
#ifndef KVN_CLUSTER_WIRE_H
#define KVN_CLUSTER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "util/kvn_err.h"

#define KVN_WIRE_STR_MAX   256u
#define KVN_WIRE_BLOB_MAX  4096u
#define KVN_WIRE_HELLO_MAX (8u * KVN_WIRE_STR_MAX + 2u * KVN_WIRE_BLOB_MAX + 256u)

struct kvn_wire_hello {
    uint64_t node_id, inc;
    char ctl[KVN_WIRE_STR_MAX], events[KVN_WIRE_STR_MAX], replay[KVN_WIRE_STR_MAX];
    char topic[KVN_WIRE_STR_MAX], transport[KVN_WIRE_STR_MAX];
    uint32_t page_size;
    uint64_t page_bytes;
    uint32_t pool_pages;
    uint8_t addr[KVN_WIRE_BLOB_MAX];
    uint32_t addr_len;
    uint8_t pool_desc[KVN_WIRE_BLOB_MAX];
    uint32_t pool_desc_len;
};

/*
 * Encodes h into buf[0..cap); *len = bytes written.  Errors: -EINVAL (NULL, node_id 0,
 * page_size or page_bytes 0, an unterminated string, a blob longer than the maximum),
 * -ENOSPC (cap too small; KVN_WIRE_HELLO_MAX always suffices).
 */
int kvn_wire_hello_encode(const struct kvn_wire_hello *h, void *buf, size_t cap, size_t *len,
                          struct kvn_err *err);

/*
 * Decodes and validates a hello.  *out is written only on success.  Errors: -EINVAL (NULL,
 * a value out of range), -EPROTO (not msgpack, not a map, trailing bytes, a missing,
 * unknown, duplicate or mistyped key), -EMSGSIZE (len > KVN_WIRE_HELLO_MAX).
 */
int kvn_wire_hello_decode(const void *buf, size_t len, struct kvn_wire_hello *out,
                          struct kvn_err *err);

/*
 * Whether a peer's pages can be shared with ours: same page size and page bytes, same
 * transport, a pool of >= 1 page.  Errors: -EINVAL (NULL), -EPROTO (mismatch, named).
 */
int kvn_wire_hello_compatible(const struct kvn_wire_hello *self, const struct kvn_wire_hello *peer,
                              struct kvn_err *err);

/*
 * Checks that every page of pages[0..n) lies inside a pool of pool_pages pages of page_bytes
 * bytes (and that the byte offsets do not overflow).  Errors: -EINVAL (NULL with n > 0,
 * page_bytes 0), -ERANGE (a page outside the pool: the message names it).
 */
int kvn_wire_check_pages(const uint32_t *pages, uint32_t n, uint32_t pool_pages,
                         uint64_t page_bytes, struct kvn_err *err);

#endif /* KVN_CLUSTER_WIRE_H */
