/*
 * page_hash.c - SGLang's SHA-256 page chain (see page_hash.h).
 *
 * Speed matters (insert hashes every new page): we use libcrypto's low-level
 * SHA256_Init/Update/Final, which work on a stack context with no allocation,
 * instead of EVP_Digest, which allocates and frees a context per call. They are
 * deprecated in OpenSSL 3 but still the fastest path; this file alone is built
 * with -Wno-deprecated-declarations.
 */
#include "cache/page_hash.h"

#include <openssl/sha.h>
#include <string.h>

#define TOKEN_CHUNK 256

static void update_tokens(SHA256_CTX *c, const int32_t *tokens, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* int32 in memory is already its uint32 bit pattern, little-endian */
    SHA256_Update(c, tokens, n * sizeof(int32_t));
#else
    uint8_t buf[TOKEN_CHUNK * 4];
    while (n > 0) {
        size_t k = n < TOKEN_CHUNK ? n : TOKEN_CHUNK;
        for (size_t i = 0; i < k; i++) {
            uint32_t t = (uint32_t)tokens[i];
            buf[4 * i] = (uint8_t)t;
            buf[4 * i + 1] = (uint8_t)(t >> 8);
            buf[4 * i + 2] = (uint8_t)(t >> 16);
            buf[4 * i + 3] = (uint8_t)(t >> 24);
        }
        SHA256_Update(c, buf, k * 4);
        tokens += k;
        n -= k;
    }
#endif
}

void kvn_page_hash_one(const uint8_t *prev, const int32_t *tokens, size_t n_tokens,
                       uint8_t out[KVN_PAGE_DIGEST_LEN])
{
    SHA256_CTX c;
    SHA256_Init(&c);
    if (prev)
        SHA256_Update(&c, prev, KVN_PAGE_DIGEST_LEN);
    if (n_tokens)
        update_tokens(&c, tokens, n_tokens);
    SHA256_Final(out, &c);
}

int64_t kvn_page_hash_event(const uint8_t digest[KVN_PAGE_DIGEST_LEN])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | digest[i];
    return (int64_t)v; /* two's complement: the int64 reading of the bit pattern */
}

long kvn_page_hash_chain(const uint8_t *prev, const int32_t *tokens, size_t n_tokens,
                         uint32_t page_size, uint8_t (*digests)[KVN_PAGE_DIGEST_LEN],
                         int64_t *event_hashes, struct kvn_err *err)
{
    if (page_size == 0)
        return kvn_err_set(err, -EINVAL, "page_hash_chain: page_size must be >= 1");
    if (!tokens && n_tokens > 0)
        return kvn_err_set(err, -EINVAL, "page_hash_chain: tokens is NULL");
    size_t n_pages = n_tokens / page_size;
    if (n_pages > (size_t)0x7fffffff)
        return kvn_err_set(err, -EINVAL, "page_hash_chain: too many pages");
    uint8_t cur[KVN_PAGE_DIGEST_LEN];
    const uint8_t *p = prev;
    for (size_t i = 0; i < n_pages; i++) {
        kvn_page_hash_one(p, tokens + i * page_size, page_size, cur);
        if (digests)
            memcpy(digests[i], cur, KVN_PAGE_DIGEST_LEN);
        if (event_hashes)
            event_hashes[i] = kvn_page_hash_event(cur);
        p = digests ? digests[i] : cur;
    }
    return (long)n_pages;
}
