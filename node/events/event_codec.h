/*
 * event_codec.h - KV-event batches on the wire: msgpack encoder and strict decoder.
 *
 * A batch is what one event-loop tick produced, published as one ZMQ message:
 *
 *     [ts (float64), [event, event, ...], dp_rank]
 *
 * with every event in one of two forms (DESIGN.md "Wire formats"):
 *
 *   ARRAY (SGLang, Dynamo):  ["BlockStored", block_hashes, parent_block_hash, token_ids,
 *                             block_size, lora_id, medium]
 *                            ["BlockRemoved", block_hashes, medium]
 *                            ["AllBlocksCleared"]
 *   MAP (vLLM):              {"type": "BlockStored", "block_hashes", "parent_block_hash",
 *                             "token_ids", "block_size", "lora_id", "medium",
 *                             "lora_name": None}   (keys in exactly this order)
 *                            {"type": "BlockRemoved", "block_hashes", "medium"}
 *                            {"type": "AllBlocksCleared"}
 *
 * Integers take the smallest msgpack form, as msgspec / python-msgpack write them
 * (non-negative values as positive fixint / uint8..uint64, negative values as negative
 * fixint / int8..int64); ts is always a float64; strings are fixstr/str8.  The output is
 * byte-identical to ../shared/vectors/events_{array,map}.hex for the same batch.
 * Token ids go on the wire as unsigned 32-bit values (the page-hash convention reads them as
 * u32), so an int32 token -1 is written 4294967295.
 *
 * The encoder is incremental and allocation-free in steady state.  The events array length
 * is known only at the end, and a fixed array32 header would not be the smallest form, so
 * the buffer starts with a reserved gap of KVN_EVENTS_HEAD_RESERVE bytes; events are appended
 * after it, and finish() writes [array3, ts, array-header(n)] right-aligned into the gap and
 * dp_rank after the last event.  Nothing is copied:
 *
 *     buf: [ . . . . . gap . . . . . |ev0|ev1|...|evN-1| ]
 *                 [93 cb ts.. 9N]|ev0|ev1|...|evN-1|rank]
 *                 ^ payload                            ^ payload + len
 *
 * The decoder is strict: it validates the whole payload (types, lengths, integer ranges,
 * medium names, token count == block_size * number of hashes, no trailing bytes) before
 * it hands a single event to the caller, so a malformed batch is refused as a whole and
 * nothing of it is applied.  It never reads past the given length and never allocates more
 * than the payload can justify (every declared array length is checked against the bytes
 * left).  Accepted variations, for peers running other versions:
 *   - events in array or map form (mixed in one batch is accepted);
 *   - map keys in any order; unknown map keys are skipped (their values are still checked to
 *     be well-formed msgpack); keys of another event type ("token_ids" in BlockRemoved) are
 *     refused;
 *   - array-form BlockStored with 7 elements or 8 (a trailing lora_name, nil or str, ignored);
 *   - medium nil means "GPU" (older vLLM);
 *   - hashes in [-2^63, 2^64): values above INT64_MAX are reinterpreted as int64
 *     (two's complement), as routers that treat hashes as u64 send them;
 *   - token ids in [-2^31, 2^32): reinterpreted as int32;
 *   - ts as float32 or float64.
 *
 * Thread rules: a batch or decoder belongs to one thread at a time; functions keep no
 * global state and are reentrant.
 */
#ifndef KVN_EVENT_CODEC_H
#define KVN_EVENT_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "cache/kv_event.h"
#include "util/kvn_err.h"

enum kvn_events_format {
    KVN_EVENTS_FORMAT_ARRAY = 0, /* SGLang tagged arrays (default) */
    KVN_EVENTS_FORMAT_MAP = 1,   /* vLLM maps with a "type" key */
};

/* "array" / "map" <-> format; parse returns 0 or -EINVAL (e.g. for --events-format). */
const char *kvn_events_format_name(enum kvn_events_format f);
int kvn_events_format_parse(const char *s, enum kvn_events_format *out, struct kvn_err *err);

/* Bytes reserved in front of the events for [array3, float64 ts, array32 header]. */
#define KVN_EVENTS_HEAD_RESERVE 15

/* Largest number of hashes or tokens one event may carry (encoder and decoder). */
#define KVN_EVENTS_MAX_ELEMS (1u << 24)

/*
 * An incremental batch builder.  Fields are private to the codec; embed the struct and use
 * the functions.  One buffer, grown geometrically and never shrunk: after warm-up, adding an
 * event is a bounds check and a few stores.
 */
struct kvn_events_batch {
    uint8_t *buf;
    size_t len; /* bytes used, including the reserved head */
    size_t cap;
    uint32_t n_events;
    enum kvn_events_format format;
};

/*
 * Prepares an empty batch writing in format fmt, with room for initial_cap bytes (0: a
 * small default).  Errors: -EINVAL (NULL b, unknown fmt), -ENOMEM.  On error *b is left
 * in a state fini() accepts.
 */
int kvn_events_batch_init(struct kvn_events_batch *b, enum kvn_events_format fmt,
                          size_t initial_cap, struct kvn_err *err);

/* Frees the buffer; b may be NULL or already finalized (then nothing happens). */
void kvn_events_batch_fini(struct kvn_events_batch *b);

/* Empties the batch (keeps its buffer).  NULL is ignored. */
void kvn_events_batch_reset(struct kvn_events_batch *b);

/* Number of events added since init/reset (0 for NULL). */
uint32_t kvn_events_batch_count(const struct kvn_events_batch *b);

/*
 * Appends one event, encoded at once (ev's pointers may die when this returns).
 * Validation: known type and medium; STORED needs 1..KVN_EVENTS_MAX_ELEMS hashes, tokens
 * non-NULL when n_tokens > 0, n_tokens <= KVN_EVENTS_MAX_ELEMS; REMOVED needs 1..MAX hashes.
 * (The encoder does not insist on n_tokens == block_size * n_hashes: that is the producer's
 * contract, checked by the decoder on the receiving side.)
 * Errors: -EINVAL (bad argument, event unchanged), -EOVERFLOW (batch would exceed
 * UINT32_MAX events or 1 GiB), -ENOMEM.  A refused event leaves the batch unchanged.
 */
int kvn_events_batch_add(struct kvn_events_batch *b, const struct kvn_kv_event *ev,
                         struct kvn_err *err);

/*
 * Completes the payload [ts, [events...], dp_rank] in place and points *payload and *len at it.
 * The bytes stay valid until the next add/reset/fini on b.  finish() does not change the
 * batch: more events may be added and finish() called again.  An empty batch gives
 * [ts, [], dp_rank].  Any double is encoded as is (also NaN/inf: the caller's clock).
 * Errors: -EINVAL (NULL or uninitialized b, NULL payload or len).
 */
int kvn_events_batch_finish(struct kvn_events_batch *b, double ts, int64_t dp_rank,
                            const uint8_t **payload, size_t *len, struct kvn_err *err);

/* ---- decoding ---------------------------------------------------------------------- */

/* Scratch arrays the decoder materializes hashes and tokens into (grown, never shrunk). */
struct kvn_events_decoder {
    int64_t *hashes;
    int32_t *tokens;
    size_t hashes_cap, tokens_cap;
};

struct kvn_events_batch_info {
    double ts;
    int64_t dp_rank;
    uint32_t n_events;
};

/*
 * Called once per event, in order, after the whole payload was validated.  ev and its
 * arrays are valid only during the call.  Return 0 to go on, a negative code to stop
 * decode(), which then returns that code.
 */
typedef int (*kvn_events_visit_fn)(void *ctx, const struct kvn_kv_event *ev);

/* Initializes d (no allocation yet).  Errors: -EINVAL for NULL. */
int kvn_events_decoder_init(struct kvn_events_decoder *d, struct kvn_err *err);

/* Frees d's scratch; NULL is ignored. */
void kvn_events_decoder_fini(struct kvn_events_decoder *d);

/*
 * Decodes one payload strictly (see the top of this file).  info (may be NULL) receives ts,
 * dp_rank and the event count; visit (may be NULL: validate only) sees every event.
 * Errors: -EINVAL (NULL d, or NULL p with len > 0), -EBADMSG (malformed: the message names
 * the byte offset and what was expected; nothing was visited), -ENOMEM (scratch could not
 * grow; nothing visited), or the visitor's negative code.
 */
int kvn_events_decode(struct kvn_events_decoder *d, const uint8_t *p, size_t len,
                      kvn_events_visit_fn visit, void *ctx, struct kvn_events_batch_info *info,
                      struct kvn_err *err);

#endif /* KVN_EVENT_CODEC_H */
