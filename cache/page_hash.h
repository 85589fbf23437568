/*
 * page_hash.h - SGLang's page hash: a SHA-256 chain over token pages.
 *
 *     d0 = sha256(            u32le(t0) || u32le(t1) || ... )   first page
 *     d1 = sha256( d0[0..32) || u32le(tP) || ...            )   next pages
 *     event_hash(d) = (int64_t) big-endian d[0..8)
 *
 *     page:   [ t0 .. tP-1 ]   [ tP .. t2P-1 ]   [ t2P .. ]
 *                  |                 |
 *                  d0 -------------> d1 ------------> d2
 *
 * A chain can be continued from any stored digest, which is why the index keeps
 * the 32-byte digest of every page: a new branch below a page hashes only its
 * own tokens. Tokens are int32 on the API and hashed as their uint32 bit pattern
 * (so -1 hashes as 0xffffffff), little-endian, whatever the host order.
 *
 * Uses libcrypto's one-shot SHA-256 compression (no EVP allocation per call).
 *
 * Thread rules: pure functions, reentrant.
 */
#ifndef KVN_PAGE_HASH_H
#define KVN_PAGE_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "util/kvn_err.h"

#define KVN_PAGE_DIGEST_LEN 32

/*
 * out = sha256(prev (32 bytes, or nothing when prev is NULL) || u32le tokens).
 * No validation (hot path): tokens may be NULL only when n_tokens == 0.
 */
void kvn_page_hash_one(const uint8_t *prev, const int32_t *tokens, size_t n_tokens,
                       uint8_t out[KVN_PAGE_DIGEST_LEN]);

/* First 8 digest bytes read big-endian as a signed int64 (the event hash). */
int64_t kvn_page_hash_event(const uint8_t digest[KVN_PAGE_DIGEST_LEN]);

/*
 * Hashes the whole pages of tokens[0..n_tokens) as one chain continued from
 * prev (NULL: a sequence's first page). For page i writes digests[i] (may be
 * NULL) and event_hashes[i] (may be NULL); returns the number of whole pages
 * (n_tokens / page_size; a partial tail is not hashed) or a negative code.
 * Errors: -EINVAL (page_size 0, tokens NULL with n_tokens > 0).
 */
long kvn_page_hash_chain(const uint8_t *prev, const int32_t *tokens, size_t n_tokens,
                         uint32_t page_size, uint8_t (*digests)[KVN_PAGE_DIGEST_LEN],
                         int64_t *event_hashes, struct kvn_err *err);

#endif /* KVN_PAGE_HASH_H */
