/*
 * event_codec.c - msgpack writer and strict reader for KV-event batches.
 *
 * A hand-written writer rather than msgpack_sbuffer: the hot path (one BlockStored per page)
 * is a capacity check against a precomputed worst case followed by straight stores, and the
 * smallest-form rules match python-msgpack/msgspec exactly.  The reader is a cursor over
 * (p, end) whose every step checks the bytes left; skipping unknown values is iterative (a
 * count of pending items), so hostile nesting cannot exhaust the stack.
 */
#include "node/events/event_codec.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_MAX_BYTES   ((size_t)1 << 30)
#define BATCH_DEFAULT_CAP 4096
#define RANK_RESERVE      9 /* dp_rank written after the events by finish() */

const char *kvn_events_format_name(enum kvn_events_format f)
{
    switch (f) {
    case KVN_EVENTS_FORMAT_ARRAY:
        return "array";
    case KVN_EVENTS_FORMAT_MAP:
        return "map";
    }
    return "?";
}

int kvn_events_format_parse(const char *s, enum kvn_events_format *out, struct kvn_err *err)
{
    if (!s || !out)
        return kvn_err_set(err, -EINVAL, "events format: NULL argument");
    if (strcmp(s, "array") == 0)
        *out = KVN_EVENTS_FORMAT_ARRAY;
    else if (strcmp(s, "map") == 0)
        *out = KVN_EVENTS_FORMAT_MAP;
    else
        return kvn_err_set(err, -EINVAL, "events format '%s': expected 'array' or 'map'", s);
    return 0;
}

/* ---- writer ------------------------------------------------------------------------ */

static inline uint8_t *put_be16(uint8_t *w, uint16_t v)
{
    w[0] = (uint8_t)(v >> 8);
    w[1] = (uint8_t)v;
    return w + 2;
}

static inline uint8_t *put_be32(uint8_t *w, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(w, &v, 4);
    return w + 4;
}

static inline uint8_t *put_be64(uint8_t *w, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(w, &v, 8);
    return w + 8;
}

static inline uint8_t *put_uint(uint8_t *w, uint64_t v)
{
    if (v < 128) {
        *w++ = (uint8_t)v;
    } else if (v <= UINT8_MAX) {
        *w++ = 0xcc;
        *w++ = (uint8_t)v;
    } else if (v <= UINT16_MAX) {
        *w++ = 0xcd;
        w = put_be16(w, (uint16_t)v);
    } else if (v <= UINT32_MAX) {
        *w++ = 0xce;
        w = put_be32(w, (uint32_t)v);
    } else {
        *w++ = 0xcf;
        w = put_be64(w, v);
    }
    return w;
}

static inline uint8_t *put_int(uint8_t *w, int64_t v)
{
    if (v >= 0)
        return put_uint(w, (uint64_t)v);
    if (v >= -32) {
        *w++ = (uint8_t)(int8_t)v;
    } else if (v >= INT8_MIN) {
        *w++ = 0xd0;
        *w++ = (uint8_t)(int8_t)v;
    } else if (v >= INT16_MIN) {
        *w++ = 0xd1;
        w = put_be16(w, (uint16_t)(int16_t)v);
    } else if (v >= INT32_MIN) {
        *w++ = 0xd2;
        w = put_be32(w, (uint32_t)(int32_t)v);
    } else {
        *w++ = 0xd3;
        w = put_be64(w, (uint64_t)v);
    }
    return w;
}

static inline uint8_t *put_array_hdr(uint8_t *w, uint32_t n)
{
    if (n <= 15) {
        *w++ = (uint8_t)(0x90 | n);
    } else if (n <= UINT16_MAX) {
        *w++ = 0xdc;
        w = put_be16(w, (uint16_t)n);
    } else {
        *w++ = 0xdd;
        w = put_be32(w, n);
    }
    return w;
}

/* Copies a pre-encoded constant (tag strings, map keys). */
static inline uint8_t *put_raw(uint8_t *w, const void *s, size_t n)
{
    memcpy(w, s, n);
    return w + n;
}

#define PUT_LIT(w, lit) put_raw((w), (lit), sizeof(lit) - 1)

/* Constant strings, already in msgpack fixstr form. */
#define S_BLOCK_STORED                                                                             \
    "\xab"                                                                                         \
    "BlockStored"
#define S_BLOCK_REMOVED                                                                            \
    "\xac"                                                                                         \
    "BlockRemoved"
#define S_ALL_CLEARED                                                                              \
    "\xb0"                                                                                         \
    "AllBlocksCleared"
#define S_GPU                                                                                      \
    "\xa3"                                                                                         \
    "GPU"
#define S_CPU_PINNED                                                                               \
    "\xaa"                                                                                         \
    "CPU_PINNED"
#define S_DISK                                                                                     \
    "\xa4"                                                                                         \
    "DISK"
#define K_TYPE                                                                                     \
    "\xa4"                                                                                         \
    "type"
#define K_BLOCK_HASHES                                                                             \
    "\xac"                                                                                         \
    "block_hashes"
#define K_PARENT                                                                                   \
    "\xb1"                                                                                         \
    "parent_block_hash"
#define K_TOKEN_IDS                                                                                \
    "\xa9"                                                                                         \
    "token_ids"
#define K_BLOCK_SIZE                                                                               \
    "\xaa"                                                                                         \
    "block_size"
#define K_LORA_ID                                                                                  \
    "\xa7"                                                                                         \
    "lora_id"
#define K_MEDIUM                                                                                   \
    "\xa6"                                                                                         \
    "medium"
#define K_LORA_NAME                                                                                \
    "\xa9"                                                                                         \
    "lora_name"

static inline uint8_t *put_medium(uint8_t *w, enum kvn_medium m)
{
    switch (m) {
    case KVN_MEDIUM_GPU:
        return PUT_LIT(w, S_GPU);
    case KVN_MEDIUM_CPU_PINNED:
        return PUT_LIT(w, S_CPU_PINNED);
    case KVN_MEDIUM_DISK:
        return PUT_LIT(w, S_DISK);
    }
    return w; /* unreachable: add() validated the medium */
}

static uint8_t *put_hashes(uint8_t *w, const int64_t *h, uint32_t n)
{
    w = put_array_hdr(w, n);
    for (uint32_t i = 0; i < n; i++)
        w = put_int(w, h[i]);
    return w;
}

static uint8_t *put_event_array(uint8_t *w, const struct kvn_kv_event *ev)
{
    switch (ev->type) {
    case KVN_EV_BLOCK_STORED:
        *w++ = 0x97;
        w = PUT_LIT(w, S_BLOCK_STORED);
        w = put_hashes(w, ev->hashes, ev->n_hashes);
        w = ev->has_parent ? put_int(w, ev->parent_hash) : (*w = 0xc0, w + 1);
        w = put_array_hdr(w, ev->n_tokens);
        for (uint32_t i = 0; i < ev->n_tokens; i++)
            w = put_uint(w, (uint32_t)ev->tokens[i]);
        w = put_uint(w, ev->block_size);
        w = ev->has_lora_id ? put_int(w, ev->lora_id) : (*w = 0xc0, w + 1);
        return put_medium(w, ev->medium);
    case KVN_EV_BLOCK_REMOVED:
        *w++ = 0x93;
        w = PUT_LIT(w, S_BLOCK_REMOVED);
        w = put_hashes(w, ev->hashes, ev->n_hashes);
        return put_medium(w, ev->medium);
    case KVN_EV_ALL_BLOCKS_CLEARED:
        *w++ = 0x91;
        return PUT_LIT(w, S_ALL_CLEARED);
    }
    return w;
}

static uint8_t *put_event_map(uint8_t *w, const struct kvn_kv_event *ev)
{
    switch (ev->type) {
    case KVN_EV_BLOCK_STORED:
        *w++ = 0x88;
        w = PUT_LIT(w, K_TYPE S_BLOCK_STORED K_BLOCK_HASHES);
        w = put_hashes(w, ev->hashes, ev->n_hashes);
        w = PUT_LIT(w, K_PARENT);
        w = ev->has_parent ? put_int(w, ev->parent_hash) : (*w = 0xc0, w + 1);
        w = PUT_LIT(w, K_TOKEN_IDS);
        w = put_array_hdr(w, ev->n_tokens);
        for (uint32_t i = 0; i < ev->n_tokens; i++)
            w = put_uint(w, (uint32_t)ev->tokens[i]);
        w = PUT_LIT(w, K_BLOCK_SIZE);
        w = put_uint(w, ev->block_size);
        w = PUT_LIT(w, K_LORA_ID);
        w = ev->has_lora_id ? put_int(w, ev->lora_id) : (*w = 0xc0, w + 1);
        w = PUT_LIT(w, K_MEDIUM);
        w = put_medium(w, ev->medium);
        w = PUT_LIT(w, K_LORA_NAME);
        *w++ = 0xc0;
        return w;
    case KVN_EV_BLOCK_REMOVED:
        *w++ = 0x83;
        w = PUT_LIT(w, K_TYPE S_BLOCK_REMOVED K_BLOCK_HASHES);
        w = put_hashes(w, ev->hashes, ev->n_hashes);
        w = PUT_LIT(w, K_MEDIUM);
        return put_medium(w, ev->medium);
    case KVN_EV_ALL_BLOCKS_CLEARED:
        *w++ = 0x81;
        return PUT_LIT(w, K_TYPE S_ALL_CLEARED);
    }
    return w;
}

int kvn_events_batch_init(struct kvn_events_batch *b, enum kvn_events_format fmt,
                          size_t initial_cap, struct kvn_err *err)
{
    if (!b)
        return kvn_err_set(err, -EINVAL, "events batch: NULL batch");
    memset(b, 0, sizeof(*b));
    if (fmt != KVN_EVENTS_FORMAT_ARRAY && fmt != KVN_EVENTS_FORMAT_MAP)
        return kvn_err_set(err, -EINVAL, "events batch: unknown format %d", (int)fmt);
    if (initial_cap > BATCH_MAX_BYTES)
        return kvn_err_set(err, -EINVAL, "events batch: initial_cap %zu > %zu", initial_cap,
                           BATCH_MAX_BYTES);
    size_t cap = initial_cap ? initial_cap : BATCH_DEFAULT_CAP;
    if (cap < KVN_EVENTS_HEAD_RESERVE + RANK_RESERVE)
        cap = KVN_EVENTS_HEAD_RESERVE + RANK_RESERVE;
    b->buf = malloc(cap);
    if (!b->buf)
        return kvn_err_set(err, -ENOMEM, "events batch: cannot allocate %zu bytes", cap);
    b->cap = cap;
    b->len = KVN_EVENTS_HEAD_RESERVE;
    b->format = fmt;
    return 0;
}

void kvn_events_batch_fini(struct kvn_events_batch *b)
{
    if (!b)
        return;
    free(b->buf);
    b->buf = NULL;
    b->cap = b->len = 0;
    b->n_events = 0;
}

void kvn_events_batch_reset(struct kvn_events_batch *b)
{
    if (!b || !b->buf)
        return;
    b->len = KVN_EVENTS_HEAD_RESERVE;
    b->n_events = 0;
}

uint32_t kvn_events_batch_count(const struct kvn_events_batch *b)
{
    return b ? b->n_events : 0;
}

static int check_event(const struct kvn_kv_event *ev, struct kvn_err *err)
{
    if (ev->type != KVN_EV_ALL_BLOCKS_CLEARED && ev->medium != KVN_MEDIUM_GPU &&
        ev->medium != KVN_MEDIUM_CPU_PINNED && ev->medium != KVN_MEDIUM_DISK)
        return kvn_err_set(err, -EINVAL, "event: unknown medium %d", (int)ev->medium);
    switch (ev->type) {
    case KVN_EV_BLOCK_STORED:
        if (ev->n_tokens > KVN_EVENTS_MAX_ELEMS)
            return kvn_err_set(err, -EINVAL, "BlockStored: n_tokens %u > %u", ev->n_tokens,
                               KVN_EVENTS_MAX_ELEMS);
        if (ev->n_tokens && !ev->tokens)
            return kvn_err_set(err, -EINVAL, "BlockStored: tokens NULL with n_tokens %u",
                               ev->n_tokens);
        __attribute__((fallthrough)); /* hashes are checked alike */
    case KVN_EV_BLOCK_REMOVED:
        if (ev->n_hashes == 0 || ev->n_hashes > KVN_EVENTS_MAX_ELEMS)
            return kvn_err_set(err, -EINVAL, "event: n_hashes %u not in 1..%u", ev->n_hashes,
                               KVN_EVENTS_MAX_ELEMS);
        if (!ev->hashes)
            return kvn_err_set(err, -EINVAL, "event: hashes NULL");
        return 0;
    case KVN_EV_ALL_BLOCKS_CLEARED:
        return 0;
    }
    return kvn_err_set(err, -EINVAL, "event: unknown type %d", (int)ev->type);
}

/* Upper bound of an event's encoded size (any form): strings and keys < 160 bytes. */
static size_t event_bound(const struct kvn_kv_event *ev)
{
    size_t n = 192;
    if (ev->type != KVN_EV_ALL_BLOCKS_CLEARED)
        n += 9 * (size_t)ev->n_hashes;
    if (ev->type == KVN_EV_BLOCK_STORED)
        n += 5 * (size_t)ev->n_tokens;
    return n;
}

static int batch_reserve(struct kvn_events_batch *b, size_t need, struct kvn_err *err)
{
    if (need <= b->cap)
        return 0;
    if (need > BATCH_MAX_BYTES)
        return kvn_err_set(err, -EOVERFLOW, "events batch: %zu bytes would exceed %zu", need,
                           BATCH_MAX_BYTES);
    size_t cap = b->cap * 2;
    if (cap < need)
        cap = need;
    if (cap > BATCH_MAX_BYTES)
        cap = BATCH_MAX_BYTES;
    uint8_t *nb = realloc(b->buf, cap);
    if (!nb)
        return kvn_err_set(err, -ENOMEM, "events batch: cannot grow to %zu bytes", cap);
    b->buf = nb;
    b->cap = cap;
    return 0;
}

int kvn_events_batch_add(struct kvn_events_batch *b, const struct kvn_kv_event *ev,
                         struct kvn_err *err)
{
    if (!b || !b->buf)
        return kvn_err_set(err, -EINVAL, "events batch: NULL or uninitialized batch");
    if (!ev)
        return kvn_err_set(err, -EINVAL, "events batch: NULL event");
    int rc = check_event(ev, err);
    if (rc < 0)
        return rc;
    if (b->n_events == UINT32_MAX)
        return kvn_err_set(err, -EOVERFLOW, "events batch: %u events already", b->n_events);
    rc = batch_reserve(b, b->len + event_bound(ev) + RANK_RESERVE, err);
    if (rc < 0)
        return rc;
    uint8_t *w = b->buf + b->len;
    w = b->format == KVN_EVENTS_FORMAT_MAP ? put_event_map(w, ev) : put_event_array(w, ev);
    b->len = (size_t)(w - b->buf);
    b->n_events++;
    return 0;
}

int kvn_events_batch_finish(struct kvn_events_batch *b, double ts, int64_t dp_rank,
                            const uint8_t **payload, size_t *len, struct kvn_err *err)
{
    if (!b || !b->buf || !payload || !len)
        return kvn_err_set(err, -EINVAL, "events batch finish: NULL argument");
    uint8_t head[KVN_EVENTS_HEAD_RESERVE];
    uint8_t *w = head;
    uint64_t bits;
    memcpy(&bits, &ts, sizeof(bits));
    *w++ = 0x93;
    *w++ = 0xcb;
    w = put_be64(w, bits);
    w = put_array_hdr(w, b->n_events);
    size_t hlen = (size_t)(w - head);
    uint8_t *start = b->buf + KVN_EVENTS_HEAD_RESERVE - hlen;
    memcpy(start, head, hlen);
    /* add() always leaves RANK_RESERVE bytes spare, so this cannot overflow. */
    uint8_t *end = put_int(b->buf + b->len, dp_rank);
    *payload = start;
    *len = (size_t)(end - start);
    return 0;
}

/* ---- reader ------------------------------------------------------------------------ */

struct rd {
    const uint8_t *p, *end, *base;
    struct kvn_err *err;
};

#define RD_OFF(r) ((size_t)((r)->p - (r)->base))

static int bad(struct rd *r, const char *what)
{
    return kvn_err_set(r->err, -EBADMSG, "malformed event batch at byte %zu: %s", RD_OFF(r), what);
}

static inline size_t left(const struct rd *r)
{
    return (size_t)(r->end - r->p);
}

static inline uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a container header: want 'a' (array) or 'm' (map). */
static int rd_container(struct rd *r, char want, uint32_t *n, const char *what)
{
    if (!left(r))
        return bad(r, what);
    uint8_t c = *r->p;
    uint64_t v = 0;
    int extra;
    bool is_map;
    if ((c & 0xf0) == 0x90 || (c & 0xf0) == 0x80) {
        is_map = (c & 0xf0) == 0x80;
        v = c & 0x0f;
        extra = 0;
    } else if (c == 0xdc || c == 0xde) {
        is_map = c == 0xde;
        extra = 2;
    } else if (c == 0xdd || c == 0xdf) {
        is_map = c == 0xdf;
        extra = 4;
    } else {
        return bad(r, what);
    }
    if (is_map != (want == 'm'))
        return bad(r, what);
    if (left(r) < 1 + (size_t)extra)
        return bad(r, "truncated container header");
    if (extra)
        v = get_be(r->p + 1, extra);
    /* Every element takes at least one byte (two per map entry). */
    if (v * (is_map ? 2 : 1) > left(r) - 1 - (size_t)extra)
        return bad(r, "container length exceeds the payload");
    r->p += 1 + extra;
    *n = (uint32_t)v;
    return 0;
}

/*
 * Reads an integer.  *v receives the value as int64 (uint64 above INT64_MAX wrapped);
 * *big is set when the wire value was such a uint64.
 */
static int rd_int(struct rd *r, int64_t *v, bool *big, const char *what)
{
    if (!left(r))
        return bad(r, what);
    uint8_t c = *r->p;
    *big = false;
    if (c <= 0x7f || c >= 0xe0) {
        *v = (int8_t)c;
        if (c <= 0x7f)
            *v = c;
        r->p++;
        return 0;
    }
    int n;
    bool sgn;
    switch (c) {
    case 0xcc:
        n = 1, sgn = false;
        break;
    case 0xcd:
        n = 2, sgn = false;
        break;
    case 0xce:
        n = 4, sgn = false;
        break;
    case 0xcf:
        n = 8, sgn = false;
        break;
    case 0xd0:
        n = 1, sgn = true;
        break;
    case 0xd1:
        n = 2, sgn = true;
        break;
    case 0xd2:
        n = 4, sgn = true;
        break;
    case 0xd3:
        n = 8, sgn = true;
        break;
    default:
        return bad(r, what);
    }
    if (left(r) < 1 + (size_t)n)
        return bad(r, "truncated integer");
    uint64_t u = get_be(r->p + 1, n);
    r->p += 1 + n;
    if (sgn) {
        int shift = 64 - 8 * n;
        *v = (int64_t)(u << shift) >> shift; /* sign-extend */
    } else {
        *v = (int64_t)u;
        *big = u > (uint64_t)INT64_MAX;
    }
    return 0;
}

static bool rd_nil(struct rd *r)
{
    if (left(r) && *r->p == 0xc0) {
        r->p++;
        return true;
    }
    return false;
}

static int rd_str(struct rd *r, const uint8_t **s, uint32_t *n, const char *what)
{
    if (!left(r))
        return bad(r, what);
    uint8_t c = *r->p;
    int extra;
    uint64_t v = 0;
    if ((c & 0xe0) == 0xa0) {
        extra = 0;
        v = c & 0x1f;
    } else if (c == 0xd9) {
        extra = 1;
    } else if (c == 0xda) {
        extra = 2;
    } else if (c == 0xdb) {
        extra = 4;
    } else {
        return bad(r, what);
    }
    if (left(r) < 1 + (size_t)extra)
        return bad(r, "truncated string header");
    if (extra)
        v = get_be(r->p + 1, extra);
    if (v > left(r) - 1 - (size_t)extra)
        return bad(r, "string length exceeds the payload");
    *s = r->p + 1 + extra;
    *n = (uint32_t)v;
    r->p += 1 + extra + v;
    return 0;
}

static bool str_is(const uint8_t *s, uint32_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(s, lit, l) == 0;
}

/* Skips one complete value of any type, iteratively. */
static int rd_skip(struct rd *r)
{
    uint64_t pending = 1;
    while (pending) {
        if (!left(r))
            return bad(r, "truncated value");
        pending--;
        uint8_t c = *r->p;
        size_t n = 0; /* payload bytes after the header */
        int hdr = 1;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            /* single byte */
        } else if ((c & 0xe0) == 0xa0) {
            n = c & 0x1f;
        } else if ((c & 0xf0) == 0x90 || (c & 0xf0) == 0x80) {
            uint32_t k;
            int rc = rd_container(r, (c & 0xf0) == 0x80 ? 'm' : 'a', &k, "container");
            if (rc < 0)
                return rc;
            pending += (c & 0xf0) == 0x80 ? 2 * (uint64_t)k : k;
            continue;
        } else {
            switch (c) {
            case 0xdc:
            case 0xdd:
            case 0xde:
            case 0xdf: {
                uint32_t k;
                bool m = c == 0xde || c == 0xdf;
                int rc = rd_container(r, m ? 'm' : 'a', &k, "container");
                if (rc < 0)
                    return rc;
                pending += m ? 2 * (uint64_t)k : k;
                continue;
            }
            case 0xcc:
            case 0xd0:
                n = 1;
                break;
            case 0xcd:
            case 0xd1:
                n = 2;
                break;
            case 0xce:
            case 0xd2:
            case 0xca:
                n = 4;
                break;
            case 0xcf:
            case 0xd3:
            case 0xcb:
                n = 8;
                break;
            case 0xd4:
                n = 2;
                break; /* fixext 1: type + 1 */
            case 0xd5:
                n = 3;
                break;
            case 0xd6:
                n = 5;
                break;
            case 0xd7:
                n = 9;
                break;
            case 0xd8:
                n = 17;
                break;
            case 0xd9:
            case 0xc4:
            case 0xda:
            case 0xc5:
            case 0xdb:
            case 0xc6:
            case 0xc7:
            case 0xc8:
            case 0xc9: {
                int lb = (c == 0xd9 || c == 0xc4 || c == 0xc7)   ? 1
                         : (c == 0xda || c == 0xc5 || c == 0xc8) ? 2
                                                                 : 4;
                if (left(r) < 1 + (size_t)lb)
                    return bad(r, "truncated header");
                n = (size_t)get_be(r->p + 1, lb);
                hdr = 1 + lb;
                if (c >= 0xc7 && c <= 0xc9)
                    n += 1; /* ext type byte */
                break;
            }
            default:
                return bad(r, "invalid msgpack type byte");
            }
        }
        if (left(r) < (size_t)hdr || n > left(r) - (size_t)hdr)
            return bad(r, "value exceeds the payload");
        r->p += (size_t)hdr + n;
    }
    return 0;
}

/* One decoded event's fields, before they are checked against its type. */
struct ev_fields {
    uint32_t seen; /* F_* bits */
    const uint8_t *hashes_at, *tokens_at;
    uint32_t n_hashes, n_tokens;
    struct kvn_kv_event ev;
};

enum {
    F_HASHES = 1,
    F_PARENT = 2,
    F_TOKENS = 4,
    F_BLOCK_SIZE = 8,
    F_LORA_ID = 16,
    F_MEDIUM = 32,
    F_LORA_NAME = 64,
    F_STORED_ONLY = F_PARENT | F_TOKENS | F_BLOCK_SIZE | F_LORA_ID | F_LORA_NAME,
};

/*
 * Validates an int array; when out is non-NULL also stores it.  kind 'h' = hash
 * ([-2^63, 2^64)), 't' = token ([-2^31, 2^32)).
 */
/*
 * The common token encodings (positive fixint, uint8/16/32), inline; false means "not one
 * of those, or truncated": the caller falls back to rd_int, which reports errors.
 */
static inline bool rd_u32_fast(struct rd *r, uint32_t *v)
{
    size_t l = left(r);
    if (!l)
        return false;
    const uint8_t *p = r->p;
    uint8_t c = p[0];
    if (c <= 0x7f) {
        *v = c;
        r->p += 1;
    } else if (c == 0xcd && l >= 3) {
        *v = (uint32_t)p[1] << 8 | p[2];
        r->p += 3;
    } else if (c == 0xce && l >= 5) {
        *v = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
        r->p += 5;
    } else if (c == 0xcc && l >= 2) {
        *v = p[1];
        r->p += 2;
    } else {
        return false;
    }
    return true;
}

static int rd_int_array(struct rd *r, char kind, uint32_t *n, const uint8_t **at, void *out)
{
    int rc = rd_container(r, 'a', n,
                          kind == 'h' ? "block_hashes: expected an array"
                                      : "token_ids: expected an array");
    if (rc < 0)
        return rc;
    if (*n > KVN_EVENTS_MAX_ELEMS)
        return bad(r, "array longer than KVN_EVENTS_MAX_ELEMS");
    *at = r->p;
    for (uint32_t i = 0; i < *n; i++) {
        uint32_t u;
        if (kind == 't' && rd_u32_fast(r, &u)) {
            if (out)
                ((int32_t *)out)[i] = (int32_t)u;
            continue;
        }
        int64_t v;
        bool big;
        rc = rd_int(r, &v, &big,
                    kind == 'h' ? "block hash: expected an integer"
                                : "token id: expected an integer");
        if (rc < 0)
            return rc;
        if (kind == 't') {
            if (big || v < INT32_MIN || v > (int64_t)UINT32_MAX)
                return bad(r, "token id out of range");
            if (out)
                ((int32_t *)out)[i] = (int32_t)(uint32_t)v;
        } else if (out) {
            ((int64_t *)out)[i] = v;
        }
    }
    return 0;
}

static int rd_medium(struct rd *r, enum kvn_medium *m)
{
    if (rd_nil(r)) {
        *m = KVN_MEDIUM_GPU;
        return 0;
    }
    const uint8_t *s;
    uint32_t n;
    int rc = rd_str(r, &s, &n, "medium: expected a string");
    if (rc < 0)
        return rc;
    if (str_is(s, n, "GPU"))
        *m = KVN_MEDIUM_GPU;
    else if (str_is(s, n, "CPU_PINNED"))
        *m = KVN_MEDIUM_CPU_PINNED;
    else if (str_is(s, n, "DISK"))
        *m = KVN_MEDIUM_DISK;
    else
        return bad(r, "medium: unknown name");
    return 0;
}

static int rd_opt_int(struct rd *r, bool *has, int64_t *v, bool allow_big, const char *what)
{
    if (rd_nil(r)) {
        *has = false;
        *v = 0;
        return 0;
    }
    bool big;
    int rc = rd_int(r, v, &big, what);
    if (rc < 0)
        return rc;
    if (big && !allow_big)
        return bad(r, "integer above INT64_MAX");
    *has = true;
    return 0;
}

static int rd_block_size(struct rd *r, struct ev_fields *f)
{
    int64_t v;
    bool big;
    int rc = rd_int(r, &v, &big, "block_size: expected an integer");
    if (rc < 0)
        return rc;
    if (big || v < 1 || v > (int64_t)UINT32_MAX)
        return bad(r, "block_size out of range");
    f->ev.block_size = (uint32_t)v;
    return 0;
}

/* Parses one field by name (map form) or position (array form). */
static int rd_field(struct rd *r, struct ev_fields *f, uint32_t bit, struct kvn_events_decoder *d,
                    bool store)
{
    switch (bit) {
    case F_HASHES:
        return rd_int_array(r, 'h', &f->n_hashes, &f->hashes_at, store ? d->hashes : NULL);
    case F_PARENT:
        return rd_opt_int(r, &f->ev.has_parent, &f->ev.parent_hash, true,
                          "parent_block_hash: expected an integer or nil");
    case F_TOKENS:
        return rd_int_array(r, 't', &f->n_tokens, &f->tokens_at, store ? d->tokens : NULL);
    case F_BLOCK_SIZE:
        return rd_block_size(r, f);
    case F_LORA_ID:
        return rd_opt_int(r, &f->ev.has_lora_id, &f->ev.lora_id, false,
                          "lora_id: expected an integer or nil");
    case F_MEDIUM:
        return rd_medium(r, &f->ev.medium);
    case F_LORA_NAME: {
        if (rd_nil(r))
            return 0;
        const uint8_t *s;
        uint32_t n;
        return rd_str(r, &s, &n, "lora_name: expected a string or nil");
    }
    }
    return bad(r, "internal: unknown field");
}

static int rd_tag(struct rd *r, enum kvn_kv_event_type *t)
{
    const uint8_t *s;
    uint32_t n;
    int rc = rd_str(r, &s, &n, "event tag: expected a string");
    if (rc < 0)
        return rc;
    if (str_is(s, n, "BlockStored"))
        *t = KVN_EV_BLOCK_STORED;
    else if (str_is(s, n, "BlockRemoved"))
        *t = KVN_EV_BLOCK_REMOVED;
    else if (str_is(s, n, "AllBlocksCleared"))
        *t = KVN_EV_ALL_BLOCKS_CLEARED;
    else
        return bad(r, "unknown event type");
    return 0;
}

static int rd_event_array(struct rd *r, uint32_t n, struct ev_fields *f,
                          struct kvn_events_decoder *d, bool store)
{
    static const uint32_t stored[] = {F_HASHES,  F_PARENT, F_TOKENS,   F_BLOCK_SIZE,
                                      F_LORA_ID, F_MEDIUM, F_LORA_NAME};
    static const uint32_t removed[] = {F_HASHES, F_MEDIUM};
    if (n == 0)
        return bad(r, "empty event array");
    int rc = rd_tag(r, &f->ev.type);
    if (rc < 0)
        return rc;
    const uint32_t *order = NULL;
    switch (f->ev.type) {
    case KVN_EV_BLOCK_STORED:
        if (n != 7 && n != 8)
            return bad(r, "BlockStored: expected 7 or 8 elements");
        order = stored;
        break;
    case KVN_EV_BLOCK_REMOVED:
        if (n != 3)
            return bad(r, "BlockRemoved: expected 3 elements");
        order = removed;
        break;
    case KVN_EV_ALL_BLOCKS_CLEARED:
        if (n != 1)
            return bad(r, "AllBlocksCleared: expected 1 element");
        return 0;
    }
    for (uint32_t i = 0; i + 1 < n; i++) {
        rc = rd_field(r, f, order[i], d, store);
        if (rc < 0)
            return rc;
        f->seen |= order[i];
    }
    return 0;
}

static uint32_t key_bit(const uint8_t *s, uint32_t n)
{
    if (str_is(s, n, "block_hashes"))
        return F_HASHES;
    if (str_is(s, n, "parent_block_hash"))
        return F_PARENT;
    if (str_is(s, n, "token_ids"))
        return F_TOKENS;
    if (str_is(s, n, "block_size"))
        return F_BLOCK_SIZE;
    if (str_is(s, n, "lora_id"))
        return F_LORA_ID;
    if (str_is(s, n, "medium"))
        return F_MEDIUM;
    if (str_is(s, n, "lora_name"))
        return F_LORA_NAME;
    return 0;
}

static int rd_event_map(struct rd *r, uint32_t n, struct ev_fields *f, struct kvn_events_decoder *d,
                        bool store)
{
    bool have_type = false;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k;
        uint32_t kn;
        int rc = rd_str(r, &k, &kn, "event map key: expected a string");
        if (rc < 0)
            return rc;
        if (str_is(k, kn, "type")) {
            if (have_type)
                return bad(r, "duplicate key 'type'");
            rc = rd_tag(r, &f->ev.type);
            have_type = true;
        } else {
            uint32_t bit = key_bit(k, kn);
            if (bit & f->seen)
                return bad(r, "duplicate event key");
            rc = bit ? rd_field(r, f, bit, d, store) : rd_skip(r);
            f->seen |= bit;
        }
        if (rc < 0)
            return rc;
    }
    if (!have_type)
        return bad(r, "event map without 'type'");
    uint32_t need = 0, allowed = 0;
    switch (f->ev.type) {
    case KVN_EV_BLOCK_STORED:
        need = F_HASHES | F_TOKENS | F_BLOCK_SIZE;
        allowed = F_HASHES | F_STORED_ONLY | F_MEDIUM;
        break;
    case KVN_EV_BLOCK_REMOVED:
        need = F_HASHES;
        allowed = F_HASHES | F_MEDIUM;
        break;
    case KVN_EV_ALL_BLOCKS_CLEARED:
        break;
    }
    if ((f->seen & need) != need)
        return bad(r, "event map lacks a required key");
    if (f->seen & ~allowed)
        return bad(r, "event map has a key of another event type");
    return 0;
}

/* One event: parse, check type rules; returns sizes for the scratch pass. */
static int rd_event(struct rd *r, struct ev_fields *f, struct kvn_events_decoder *d, bool store)
{
    memset(f, 0, sizeof(*f));
    uint32_t n;
    int rc;
    if (left(r) && ((*r->p & 0xf0) == 0x80 || *r->p == 0xde || *r->p == 0xdf)) {
        rc = rd_container(r, 'm', &n, "event: expected an array or map");
        if (rc == 0)
            rc = rd_event_map(r, n, f, d, store);
    } else {
        rc = rd_container(r, 'a', &n, "event: expected an array or map");
        if (rc == 0)
            rc = rd_event_array(r, n, f, d, store);
    }
    if (rc < 0)
        return rc;
    if (f->ev.type != KVN_EV_ALL_BLOCKS_CLEARED && f->n_hashes == 0)
        return bad(r, "event without block hashes");
    if (f->ev.type == KVN_EV_BLOCK_STORED &&
        (uint64_t)f->ev.block_size * f->n_hashes != f->n_tokens)
        return bad(r, "BlockStored: token count != block_size * number of hashes");
    f->ev.n_hashes = f->n_hashes;
    f->ev.n_tokens = f->n_tokens;
    f->ev.hashes = store ? d->hashes : NULL;
    f->ev.tokens = store ? d->tokens : NULL;
    return 0;
}

static int grow_scratch(struct kvn_events_decoder *d, size_t nh, size_t nt, struct kvn_err *err)
{
    if (nh > d->hashes_cap) {
        int64_t *h = realloc(d->hashes, nh * sizeof(*h));
        if (!h)
            return kvn_err_set(err, -ENOMEM, "events decoder: cannot grow to %zu hashes", nh);
        d->hashes = h;
        d->hashes_cap = nh;
    }
    if (nt > d->tokens_cap) {
        int32_t *t = realloc(d->tokens, nt * sizeof(*t));
        if (!t)
            return kvn_err_set(err, -ENOMEM, "events decoder: cannot grow to %zu tokens", nt);
        d->tokens = t;
        d->tokens_cap = nt;
    }
    return 0;
}

static int rd_batch_head(struct rd *r, struct kvn_events_batch_info *bi)
{
    uint32_t n;
    int rc = rd_container(r, 'a', &n, "batch: expected an array");
    if (rc < 0)
        return rc;
    if (n != 3)
        return bad(r, "batch: expected [ts, events, dp_rank]");
    if (left(r) >= 9 && *r->p == 0xcb) {
        uint64_t u = get_be(r->p + 1, 8);
        memcpy(&bi->ts, &u, 8);
        r->p += 9;
    } else if (left(r) >= 5 && *r->p == 0xca) {
        uint32_t u = (uint32_t)get_be(r->p + 1, 4);
        float fl;
        memcpy(&fl, &u, 4);
        bi->ts = fl;
        r->p += 5;
    } else {
        return bad(r, "ts: expected a float");
    }
    return rd_container(r, 'a', &bi->n_events, "events: expected an array");
}

static int rd_batch_tail(struct rd *r, struct kvn_events_batch_info *bi)
{
    bool big;
    int rc = rd_int(r, &bi->dp_rank, &big, "dp_rank: expected an integer");
    if (rc < 0)
        return rc;
    if (big)
        return bad(r, "dp_rank above INT64_MAX");
    if (left(r))
        return bad(r, "trailing bytes after the batch");
    return 0;
}

int kvn_events_decoder_init(struct kvn_events_decoder *d, struct kvn_err *err)
{
    if (!d)
        return kvn_err_set(err, -EINVAL, "events decoder: NULL");
    memset(d, 0, sizeof(*d));
    return 0;
}

void kvn_events_decoder_fini(struct kvn_events_decoder *d)
{
    if (!d)
        return;
    free(d->hashes);
    free(d->tokens);
    memset(d, 0, sizeof(*d));
}

int kvn_events_decode(struct kvn_events_decoder *d, const uint8_t *p, size_t len,
                      kvn_events_visit_fn visit, void *ctx, struct kvn_events_batch_info *info,
                      struct kvn_err *err)
{
    if (!d)
        return kvn_err_set(err, -EINVAL, "events decode: NULL decoder");
    if (!p && len)
        return kvn_err_set(err, -EINVAL, "events decode: NULL payload with len %zu", len);
    static const uint8_t empty[1];
    if (!p)
        p = empty;

    /* Pass 1: validate everything, learn the largest arrays. */
    struct rd r = {.p = p, .end = p + len, .base = p, .err = err};
    struct kvn_events_batch_info bi;
    struct ev_fields f;
    size_t max_h = 0, max_t = 0;
    int rc = rd_batch_head(&r, &bi);
    for (uint32_t i = 0; rc == 0 && i < bi.n_events; i++) {
        rc = rd_event(&r, &f, d, false);
        if (f.n_hashes > max_h)
            max_h = f.n_hashes;
        if (f.n_tokens > max_t)
            max_t = f.n_tokens;
    }
    if (rc == 0)
        rc = rd_batch_tail(&r, &bi);
    if (rc < 0)
        return rc;
    rc = grow_scratch(d, max_h, max_t, err);
    if (rc < 0)
        return rc;
    if (info)
        *info = bi;
    if (!visit)
        return 0;

    /* Pass 2: the payload is known good; materialize each event and visit it. */
    r.p = p;
    rc = rd_batch_head(&r, &bi);
    for (uint32_t i = 0; rc == 0 && i < bi.n_events; i++) {
        rc = rd_event(&r, &f, d, true);
        if (rc == 0)
            rc = visit(ctx, &f.ev);
    }
    return rc;
}
