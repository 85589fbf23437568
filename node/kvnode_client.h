/*
 * kvnode_client.h - libkvnode: talk to a kvnode from an engine, a tool or a
 * test.
 *
 *     struct kvn_client *c;
 *     struct kvn_err err;
 *     if (kvn_client_open("tcp://127.0.0.1:7100", 5000, &c, &err) < 0)
 *         die(err.msg);
 *     int32_t toks[] = {1, 2, 3, 4};
 *     uint32_t slots[] = {0, 1};             // page_size 2: one L1 slot per page
 *     struct kvn_client_reply *r;
 *     if (kvn_client_insert(c, toks, 4, slots, 2, &r, &err) < 0) ...
 *     uint64_t pages; kvn_client_reply_u64(r, "pages", &pages);
 *     kvn_client_reply_free(r);
 *     kvn_client_close(c);
 *
 * Every call is one request/reply round trip of the control RPC (schema in
 * node/kvn_rpc.h). A reply with "ok": false becomes the call's return value
 * (its "code", a negative errno) and err carries the node's message
 * ("node: slots[1] = 9 is out of range ..."). Local failures are -EINVAL (bad
 * argument, nothing sent), -ETIMEDOUT (no reply within the client's
 * timeout), -EPROTO (the reply is not a valid reply), -EIO (ZeroMQ error).
 *
 * Ownership: the client owns its ZeroMQ context and socket; a reply
 * (struct kvn_client_reply) is the caller's until kvn_client_reply_free;
 * strings and arrays read from a reply live as long as the reply.
 *
 * Thread rules: a client is used by one thread at a time (ZeroMQ sockets are
 * not thread-safe); different clients are independent. Replies are plain
 * memory and may be read from any thread.
 */
#ifndef KVNODE_CLIENT_H
#define KVNODE_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/kvn_rpc.h"
#include "util/kvn_err.h"

struct kvn_client;
struct kvn_client_reply;

/*
 * A request for kvn_client_call. Fill op and the arguments that op takes
 * (kvn_rpc.h); the others are ignored. lease_ms = 0 means the default.
 * insert and load_back: slots == NULL sends no "slots" (auto mode).
 */
struct kvn_client_req {
    enum kvn_rpc_op op;
    const int32_t *tokens;
    uint32_t n_tokens;
    const uint32_t *slots;
    uint32_t n_slots;
    const void *desc;
    uint32_t desc_len;
    const void *addr;
    uint32_t addr_len;
    uint64_t page_bytes;
    uint64_t l1_slots;
    uint64_t handle;
    uint64_t lease_ms;
    enum kvn_rpc_tier tier;
    uint64_t pages;
    uint64_t seed;
    const void *hello; /* peer_hello */
    uint32_t hello_len;
    const char *to; /* push: the destination node's control endpoint */
};

/*
 * Connects a DEALER socket to endpoint ("tcp://HOST:PORT"). Nothing is sent
 * until the first call, so a node that is not up yet is not an error here.
 * timeout_ms (> 0) bounds every later call. Errors: -EINVAL, -ENOMEM, -EIO.
 */
int kvn_client_open(const char *endpoint, int timeout_ms, struct kvn_client **out,
                    struct kvn_err *err);

/* Closes the socket without lingering; NULL is fine. */
void kvn_client_close(struct kvn_client *c);

/*
 * Sends req, waits for its reply. On success (reply "ok": true) returns 0
 * and, when reply is non-NULL, hands the reply to the caller. On an error
 * reply returns its code and fills err; *reply is then NULL.
 */
int kvn_client_call(struct kvn_client *c, const struct kvn_client_req *req,
                    struct kvn_client_reply **reply, struct kvn_err *err);

/*
 * Sends raw bytes as one request body and waits for whatever reply comes
 * (test aid for malformed input). Returns 0 when a reply arrived, with
 * *reply set even for "ok": false replies; *code = the reply's code (0 when
 * ok). Errors: -ETIMEDOUT, -EPROTO, -EIO, -EINVAL.
 */
int kvn_client_call_raw(struct kvn_client *c, const void *body, size_t len,
                        struct kvn_client_reply **reply, int *code, struct kvn_err *err);

/* Convenience wrappers: each is kvn_client_call with that op. */
int kvn_client_hello(struct kvn_client *c, struct kvn_client_reply **reply, struct kvn_err *err);
int kvn_client_insert(struct kvn_client *c, const int32_t *tokens, uint32_t n_tokens,
                      const uint32_t *slots, uint32_t n_slots, struct kvn_client_reply **reply,
                      struct kvn_err *err);
int kvn_client_match(struct kvn_client *c, const int32_t *tokens, uint32_t n_tokens,
                     struct kvn_client_reply **reply, struct kvn_err *err);
int kvn_client_stats(struct kvn_client *c, struct kvn_client_reply **reply, struct kvn_err *err);
int kvn_client_reset(struct kvn_client *c, struct kvn_err *err);

/*
 * Cluster (issue 5): fetch reads the longest prefix of tokens a peer holds into this node's
 * L2 (lease_ms 0 = the default lease); push writes tokens' pages into node `to` (from L1
 * slots when n_slots > 0, else from this node's L2). -ENOTSUP when the node runs no cluster.
 */
int kvn_client_fetch(struct kvn_client *c, const int32_t *tokens, uint32_t n_tokens,
                     uint64_t lease_ms, struct kvn_client_reply **reply, struct kvn_err *err);
int kvn_client_push(struct kvn_client *c, const char *to, const int32_t *tokens, uint32_t n_tokens,
                    const uint32_t *slots, uint32_t n_slots, struct kvn_client_reply **reply,
                    struct kvn_err *err);

/* The reply's "id". */
uint64_t kvn_client_reply_id(const struct kvn_client_reply *r);

/*
 * Reads result key as an unsigned integer (a bool reads as 0/1).
 * Errors: -EINVAL (NULL), -ENOENT (no such key), -EPROTO (not an integer).
 */
int kvn_client_reply_u64(const struct kvn_client_reply *r, const char *key, uint64_t *out);
int kvn_client_reply_i64(const struct kvn_client_reply *r, const char *key, int64_t *out);

/*
 * Reads result key as an array of unsigned integers into out[0..cap); *n =
 * the array's length (which may exceed cap: only cap entries are written).
 * Errors as kvn_client_reply_u64.
 */
int kvn_client_reply_u64_array(const struct kvn_client_reply *r, const char *key, uint64_t *out,
                               size_t cap, size_t *n);

/* The reply as one JSON object (malloc'd, the caller frees), NULL on ENOMEM. */
char *kvn_client_reply_json(const struct kvn_client_reply *r, bool pretty);

void kvn_client_reply_free(struct kvn_client_reply *r);

#endif /* KVNODE_CLIENT_H */
