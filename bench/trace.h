/*
 * trace.h - a Mooncake-format request trace, its synthesized tokens, and the
 * exact prefix hit rate a cache of unlimited capacity would reach on it.
 *
 * A trace (kvcache-ai/Mooncake FAST25-release/traces) is JSON lines, one
 * request per line:
 *
 *     {"timestamp": 27482, "input_length": 6955, "output_length": 52,
 *      "hash_ids": [46, 47, 1030, 1031, 1032, 1033, 1034, 1035, 1036, 1037]}
 *
 * hash_ids are remapped hashes of consecutive 512-token blocks, and they are
 * position aware: the same id always stands for the same whole prefix. The
 * trace carries no tokens, so we synthesize them: block id b at position j
 * (0 <= j < 512) is token splitmix64(b, j) folded into [0, 2^31 - 1). The
 * same id therefore always yields the same 512 tokens, different ids yield
 * different tokens (up to a 2^-31 per-token coincidence), and a request's
 * tokens are the concatenation of its blocks' tokens cut to input_length:
 *
 *     hash_ids     [   46   |   47   |  1030  | ... |  1037 (partial) ]
 *     tokens       [ 512 tok| 512 tok| 512 tok| ... | input_length % 512 ]
 *
 * Because ids are position aware, a prefix of equal ids is a prefix of equal
 * tokens; the exact hit rate of an unlimited cache can thus be computed on
 * ids alone, independently of any index (kvn_trace_exact_hits).
 *
 * Ownership: kvn_trace_load allocates everything inside struct kvn_trace;
 * kvn_trace_free releases it. Requests point into the trace's id pool.
 * Thread rules: a loaded trace is immutable; concurrent readers are fine.
 */
#ifndef KVN_BENCH_TRACE_H
#define KVN_BENCH_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "util/kvn_err.h"

#define KVN_TRACE_BLOCK_TOKENS 512u
#define KVN_TRACE_TOKEN_RANGE  2147483647u /* tokens are in [0, 2^31 - 1) */

struct kvn_trace_req {
    uint64_t timestamp_ms;
    uint32_t input_length; /* tokens of the prompt */
    uint32_t output_length;
    uint32_t n_blocks; /* ceil(input_length / 512) ids are used */
    const uint64_t *hash_ids;
};

struct kvn_trace {
    struct kvn_trace_req *reqs;
    size_t n_reqs;
    uint64_t *id_pool; /* all hash_ids, requests point into it */
    size_t n_ids;
    uint64_t total_tokens; /* sum of input_length */
    uint32_t max_input_length;
};

/*
 * Reads at most limit requests (0: all) from the JSON-lines file at path into
 * *t. Blank lines are skipped. Errors: -EINVAL for NULL arguments, a line
 * that is not a JSON object, a missing or negative or non-integer field,
 * input_length 0 or above 2^31, or fewer hash_ids than ceil(input_length /
 * 512) (the message names the line); -ENOENT/-EACCES/... when the file cannot
 * be opened; -ENOMEM. On failure *t is left zeroed and nothing leaks.
 */
int kvn_trace_load(struct kvn_trace *t, const char *path, size_t limit, struct kvn_err *err);

/* Releases what kvn_trace_load allocated and zeroes *t. NULL is a no-op. */
void kvn_trace_free(struct kvn_trace *t);

/* Token j (0 <= j < 512) of block id: deterministic, in [0, 2^31 - 1). */
int32_t kvn_trace_block_token(uint64_t id, uint32_t j);

/*
 * Writes the first n tokens of request r into out[0..n). n must be <=
 * r->input_length. Errors: -EINVAL for NULL r/out or n > input_length.
 */
int kvn_trace_tokens(const struct kvn_trace_req *r, int32_t *out, uint32_t n, struct kvn_err *err);

/* How kvn_trace_exact_hits counts a request's hit. */
enum kvn_trace_hit_rule {
    /*
     * Leading blocks whose id was seen in an earlier request, counting full
     * 512-token blocks only, and only full blocks are remembered: what an
     * index caching whole pages of 512 tokens finds with unlimited capacity.
     */
    KVN_TRACE_HIT_FULL_BLOCKS = 0,
    /*
     * Leading blocks already seen (full or partial), a seen partial last
     * block counting its partial length: the definition of the figure in
     * shared/README.md (54,098,411 of 144,793,823 tokens).
     */
    KVN_TRACE_HIT_PARTIAL_LAST = 1,
};

/*
 * Replays the ids of the first n_reqs requests (0: all) of t with unlimited
 * capacity under rule and stores the hit token count in *hit_tokens and the
 * total input tokens of those requests in *total_tokens. Pure: does not touch
 * t. Errors: -EINVAL (NULL arguments, n_reqs > t->n_reqs, unknown rule),
 * -ENOMEM.
 */
int kvn_trace_exact_hits(const struct kvn_trace *t, size_t n_reqs, enum kvn_trace_hit_rule rule,
                         uint64_t *hit_tokens, uint64_t *total_tokens, struct kvn_err *err);

#endif /* KVN_BENCH_TRACE_H */
