/*
 * kv_event.h - KV cache events as the index produces them.
 *
 * The radix index (cache/) describes every change of what is cached with one
 * of three events, the vocabulary SGLang and vLLM publish and KV-aware routers
 * (Dynamo, llm-d) consume:
 *
 *   BlockStored      one page became available on a medium:
 *                    hashes = [h] (n_hashes == 1), parent = previous page's
 *                    hash or none at a sequence's first page, the page's
 *                    tokens, block_size = page length.
 *   BlockRemoved     a tree node's pages left a medium: all its page hashes.
 *   AllBlocksCleared the index was reset.
 *
 * The index hands events to a sink synchronously, in the order they happened;
 * every pointer inside an event is valid only for the duration of the call, so
 * a sink copies or encodes what it keeps (node/ encodes straight into the
 * current batch). Wire encoding (msgpack, array or map form) lives in node/.
 *
 * Thread rules: none here; a sink is called on the thread that called the
 * index.
 */
#ifndef KVN_KV_EVENT_H
#define KVN_KV_EVENT_H

#include <stdbool.h>
#include <stdint.h>

enum kvn_medium {
    KVN_MEDIUM_GPU = 0,        /* L1: the engine's device memory */
    KVN_MEDIUM_CPU_PINNED = 1, /* L2: the node's registered host pool */
    KVN_MEDIUM_DISK = 2,       /* L3: storage */
};

enum kvn_kv_event_type {
    KVN_EV_BLOCK_STORED = 0,
    KVN_EV_BLOCK_REMOVED = 1,
    KVN_EV_ALL_BLOCKS_CLEARED = 2,
};

struct kvn_kv_event {
    enum kvn_kv_event_type type;
    enum kvn_medium medium;     /* unused for ALL_BLOCKS_CLEARED */
    const int64_t *hashes;      /* STORED: 1 hash; REMOVED: one per page */
    uint32_t n_hashes;
    bool has_parent;            /* STORED: false at a sequence's first page */
    int64_t parent_hash;
    const int32_t *tokens;      /* STORED: the page's tokens */
    uint32_t n_tokens;
    uint32_t block_size;        /* STORED: page length in tokens */
    bool has_lora_id;           /* STORED: lora_id, None when false */
    int64_t lora_id;
};

/* "GPU", "CPU_PINNED", "DISK" - the wire spelling of a medium. */
static inline const char *kvn_medium_name(enum kvn_medium m)
{
    switch (m) {
    case KVN_MEDIUM_GPU: return "GPU";
    case KVN_MEDIUM_CPU_PINNED: return "CPU_PINNED";
    case KVN_MEDIUM_DISK: return "DISK";
    }
    return "?";
}

/*
 * Where events go. emit() is called once per event, in order; it must not
 * call back into the index. A NULL sink (or NULL emit) drops events.
 */
struct kvn_kv_event_sink {
    void (*emit)(void *ctx, const struct kvn_kv_event *ev);
    void *ctx;
};

#endif /* KVN_KV_EVENT_H */
