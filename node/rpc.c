/*
 * rpc.c - the control RPC codec (see kvn_rpc.h for the schema).
 *
 * Parsing is table-driven: every key of the schema has a bit, every op a mask
 * of the keys it takes and the keys it requires. A request is read once, key
 * by key, into struct kvn_rpc_req; anything not in the op's mask is refused.
 */
#include "node/kvn_rpc.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

enum rpc_key {
    K_V = 0,
    K_OP,
    K_ID,
    K_TOKENS,
    K_SLOTS,
    K_DESC,
    K_ADDR,
    K_PAGE_BYTES,
    K_N_SLOTS,
    K_HANDLE,
    K_LEASE_MS,
    K_TIER,
    K_PAGES,
    K_SEED,
    K_HELLO,
    K_TO,
    K_COUNT
};

static const char *const key_names[K_COUNT] = {
    "v",       "op",     "id",       "tokens", "slots", "desc", "addr",  "page_bytes",
    "n_slots", "handle", "lease_ms", "tier",   "pages", "seed", "hello", "to",
};

#define B(k) (1u << (k))

struct op_spec {
    const char *name;
    uint32_t allowed; /* besides v, op, id */
    uint32_t required;
};

static const struct op_spec op_specs[KVN_RPC_OP_COUNT] = {
    [KVN_RPC_HELLO] = {"hello", 0, 0},
    [KVN_RPC_REGISTER_L1] = {"register_l1", B(K_DESC) | B(K_ADDR) | B(K_PAGE_BYTES) | B(K_N_SLOTS),
                             B(K_DESC) | B(K_ADDR) | B(K_PAGE_BYTES) | B(K_N_SLOTS)},
    [KVN_RPC_INSERT] = {"insert", B(K_TOKENS) | B(K_SLOTS), B(K_TOKENS)},
    [KVN_RPC_MATCH] = {"match", B(K_TOKENS), B(K_TOKENS)},
    [KVN_RPC_LOCK] = {"lock", B(K_TOKENS) | B(K_LEASE_MS), B(K_TOKENS)},
    [KVN_RPC_UNLOCK] = {"unlock", B(K_HANDLE), B(K_HANDLE)},
    [KVN_RPC_BACKUP] = {"backup", B(K_TOKENS), B(K_TOKENS)},
    [KVN_RPC_LOAD_BACK] = {"load_back", B(K_TOKENS) | B(K_SLOTS), B(K_TOKENS)},
    [KVN_RPC_EVICT] = {"evict", B(K_TIER) | B(K_PAGES), B(K_TIER) | B(K_PAGES)},
    [KVN_RPC_STATS] = {"stats", 0, 0},
    [KVN_RPC_RESET] = {"reset", 0, 0},
    [KVN_RPC_L1_FILL] = {"l1_fill", B(K_SLOTS) | B(K_SEED), B(K_SLOTS) | B(K_SEED)},
    [KVN_RPC_L1_CHECKSUM] = {"l1_checksum", B(K_SLOTS), B(K_SLOTS)},
    /* cluster (node/cluster): served by kvn_cluster_rpc when the node runs a cluster */
    [KVN_RPC_PEER_HELLO] = {"peer_hello", B(K_HELLO), B(K_HELLO)},
    [KVN_RPC_PIN] = {"pin", B(K_TOKENS) | B(K_LEASE_MS), B(K_TOKENS)},
    [KVN_RPC_UNPIN] = {"unpin", B(K_HANDLE), B(K_HANDLE)},
    [KVN_RPC_RESERVE] = {"reserve", B(K_TOKENS) | B(K_LEASE_MS), B(K_TOKENS)},
    [KVN_RPC_PUSH_DONE] = {"push_done", B(K_HANDLE) | B(K_SLOTS), B(K_HANDLE)},
    [KVN_RPC_ABORT] = {"abort", B(K_HANDLE), B(K_HANDLE)},
    [KVN_RPC_FETCH] = {"fetch", B(K_TOKENS) | B(K_LEASE_MS), B(K_TOKENS)},
    [KVN_RPC_PUSH] = {"push", B(K_TO) | B(K_TOKENS) | B(K_SLOTS) | B(K_LEASE_MS),
                      B(K_TO) | B(K_TOKENS)},
};

const char *kvn_rpc_op_name(enum kvn_rpc_op op)
{
    if ((unsigned)op >= KVN_RPC_OP_COUNT)
        return NULL;
    return op_specs[op].name;
}

int kvn_rpc_op_from_name(const char *name, size_t len, enum kvn_rpc_op *out)
{
    if (!name || !out)
        return -EINVAL;
    for (unsigned i = 0; i < KVN_RPC_OP_COUNT; i++) {
        if (strlen(op_specs[i].name) == len && memcmp(op_specs[i].name, name, len) == 0) {
            *out = (enum kvn_rpc_op)i;
            return 0;
        }
    }
    return -ENOTSUP;
}

int kvn_rpc_req_init(struct kvn_rpc_req *req, struct kvn_err *err)
{
    if (!req)
        return kvn_err_set(err, -EINVAL, "req is NULL");
    memset(req, 0, sizeof(*req));
    req->tokens = malloc(sizeof(int32_t) * KVN_RPC_MAX_TOKENS);
    req->slots = malloc(sizeof(uint32_t) * KVN_RPC_MAX_SLOTS);
    if (!req->tokens || !req->slots) {
        free(req->tokens);
        free(req->slots);
        memset(req, 0, sizeof(*req));
        return kvn_err_set(err, -ENOMEM, "no memory for request buffers");
    }
    req->cap_tokens = KVN_RPC_MAX_TOKENS;
    req->cap_slots = KVN_RPC_MAX_SLOTS;
    return 0;
}

void kvn_rpc_req_fini(struct kvn_rpc_req *req)
{
    if (!req)
        return;
    free(req->tokens);
    free(req->slots);
    memset(req, 0, sizeof(*req));
}

static bool str_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

static int get_uint(const msgpack_object *o, const char *key, uint64_t max, uint64_t *out,
                    struct kvn_err *err)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return kvn_err_set(err, -EINVAL, "\"%s\" must be an unsigned integer", key);
    if (o->via.u64 > max)
        return kvn_err_set(err, -EINVAL, "\"%s\" = %llu is out of range (max %llu)", key,
                           (unsigned long long)o->via.u64, (unsigned long long)max);
    *out = o->via.u64;
    return 0;
}

static int get_tokens(const msgpack_object *o, struct kvn_rpc_req *req, struct kvn_err *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return kvn_err_set(err, -EINVAL, "\"tokens\" must be an array of int32");
    if (o->via.array.size > req->cap_tokens)
        return kvn_err_set(err, -EINVAL, "\"tokens\" has %u entries (max %u)", o->via.array.size,
                           req->cap_tokens);
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *t = &o->via.array.ptr[i];
        int64_t v;
        if (t->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            if (t->via.u64 > INT32_MAX)
                return kvn_err_set(err, -EINVAL, "tokens[%u] is out of int32 range", i);
            v = (int64_t)t->via.u64;
        } else if (t->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            if (t->via.i64 < INT32_MIN)
                return kvn_err_set(err, -EINVAL, "tokens[%u] is out of int32 range", i);
            v = t->via.i64;
        } else {
            return kvn_err_set(err, -EINVAL, "tokens[%u] must be an integer", i);
        }
        req->tokens[i] = (int32_t)v;
    }
    req->n_tokens = o->via.array.size;
    req->has_tokens = true;
    return 0;
}

static int get_slots(const msgpack_object *o, struct kvn_rpc_req *req, struct kvn_err *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return kvn_err_set(err, -EINVAL, "\"slots\" must be an array of uint32");
    if (o->via.array.size > req->cap_slots)
        return kvn_err_set(err, -EINVAL, "\"slots\" has %u entries (max %u)", o->via.array.size,
                           req->cap_slots);
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *t = &o->via.array.ptr[i];
        if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 > UINT32_MAX)
            return kvn_err_set(err, -EINVAL, "slots[%u] must be an unsigned 32-bit integer", i);
        req->slots[i] = (uint32_t)t->via.u64;
    }
    req->n_slots = o->via.array.size;
    req->has_slots = true;
    return 0;
}

static int get_blob(const msgpack_object *o, const char *key, uint32_t max, const uint8_t **ptr,
                    uint32_t *len, struct kvn_err *err)
{
    if (o->type != MSGPACK_OBJECT_BIN)
        return kvn_err_set(err, -EINVAL, "\"%s\" must be bin", key);
    if (o->via.bin.size == 0 || o->via.bin.size > max)
        return kvn_err_set(err, -EINVAL, "\"%s\" has %u bytes (1..%u)", key, o->via.bin.size, max);
    *ptr = (const uint8_t *)o->via.bin.ptr;
    *len = o->via.bin.size;
    return 0;
}

static int find_key(const msgpack_object *k)
{
    if (k->type != MSGPACK_OBJECT_STR)
        return -1;
    for (int i = 0; i < K_COUNT; i++)
        if (str_is(k, key_names[i]))
            return i;
    return -1;
}

/* Reads v, op, id first so that every later error can name the op and id. */
static int parse_header(const msgpack_object_map *m, struct kvn_rpc_req *req, struct kvn_err *err)
{
    bool have_v = false, have_op = false;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (str_is(k, "id") && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            v->via.u64 <= INT64_MAX)
            req->id = v->via.u64;
    }
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (str_is(k, "v")) {
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return kvn_err_set(err, -EPROTO, "\"v\" must be an unsigned integer");
            if (v->via.u64 != KVN_RPC_VERSION)
                return kvn_err_set(err, -EPROTO, "schema version %llu not supported (want %d)",
                                   (unsigned long long)v->via.u64, KVN_RPC_VERSION);
            req->v = KVN_RPC_VERSION;
            have_v = true;
        } else if (str_is(k, "op")) {
            if (v->type != MSGPACK_OBJECT_STR)
                return kvn_err_set(err, -EINVAL, "\"op\" must be a string");
            if (kvn_rpc_op_from_name(v->via.str.ptr, v->via.str.size, &req->op) < 0)
                return kvn_err_set(err, -ENOTSUP, "unknown op \"%.*s\"",
                                   (int)(v->via.str.size > 64 ? 64 : v->via.str.size),
                                   v->via.str.ptr);
            have_op = true;
        } else if (str_is(k, "id")) {
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > INT64_MAX)
                return kvn_err_set(err, -EINVAL, "\"id\" must be an unsigned integer < 2^63");
        }
    }
    if (!have_v)
        return kvn_err_set(err, -EPROTO, "missing \"v\" (schema version)");
    if (!have_op)
        return kvn_err_set(err, -EINVAL, "missing \"op\"");
    return 0;
}

static int parse_map(const msgpack_object_map *m, struct kvn_rpc_req *req, struct kvn_err *err)
{
    int rc = parse_header(m, req, err);
    if (rc < 0)
        return rc;
    const struct op_spec *spec = &op_specs[req->op];
    uint32_t seen = 0;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        int key = find_key(k);
        if (key < 0) {
            if (k->type != MSGPACK_OBJECT_STR)
                return kvn_err_set(err, -EINVAL, "%s: map keys must be strings", spec->name);
            return kvn_err_set(err, -EINVAL, "%s: unknown argument \"%.*s\"", spec->name,
                               (int)(k->via.str.size > 64 ? 64 : k->via.str.size), k->via.str.ptr);
        }
        if (seen & B(key))
            return kvn_err_set(err, -EINVAL, "%s: duplicate key \"%s\"", spec->name,
                               key_names[key]);
        seen |= B(key);
        if (key == K_V || key == K_OP || key == K_ID)
            continue;
        if (!(spec->allowed & B(key)))
            return kvn_err_set(err, -EINVAL, "%s takes no argument \"%s\"", spec->name,
                               key_names[key]);
        switch (key) {
        case K_TOKENS:
            rc = get_tokens(v, req, err);
            break;
        case K_SLOTS:
            rc = get_slots(v, req, err);
            break;
        case K_DESC:
            rc = get_blob(v, "desc", KVN_RPC_MAX_BLOB, &req->desc, &req->desc_len, err);
            break;
        case K_ADDR:
            rc = get_blob(v, "addr", KVN_RPC_MAX_BLOB, &req->addr, &req->addr_len, err);
            break;
        case K_PAGE_BYTES:
            rc = get_uint(v, "page_bytes", 1ull << 30, &req->page_bytes, err);
            break;
        case K_N_SLOTS:
            rc = get_uint(v, "n_slots", UINT32_MAX, &req->l1_slots, err);
            break;
        case K_HANDLE:
            rc = get_uint(v, "handle", INT64_MAX, &req->handle, err);
            break;
        case K_LEASE_MS:
            rc = get_uint(v, "lease_ms", KVN_RPC_LEASE_MAX_MS, &req->lease_ms, err);
            if (rc == 0 && req->lease_ms == 0)
                rc = kvn_err_set(err, -EINVAL, "\"lease_ms\" must be >= 1");
            break;
        case K_PAGES:
            rc = get_uint(v, "pages", UINT32_MAX, &req->pages, err);
            break;
        case K_HELLO:
            rc = get_blob(v, "hello", KVN_RPC_MAX_HELLO, &req->hello, &req->hello_len, err);
            break;
        case K_TO:
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 ||
                v->via.str.size >= sizeof(req->to) || memchr(v->via.str.ptr, '\0', v->via.str.size))
                rc = kvn_err_set(err, -EINVAL, "\"to\" must be an endpoint string of 1..%zu bytes",
                                 sizeof(req->to) - 1);
            else {
                memcpy(req->to, v->via.str.ptr, v->via.str.size);
                req->to[v->via.str.size] = '\0';
            }
            break;
        case K_SEED:
            rc = get_uint(v, "seed", UINT64_MAX, &req->seed, err);
            break;
        case K_TIER:
            if (str_is(v, "l1"))
                req->tier = KVN_RPC_TIER_L1;
            else if (str_is(v, "l2"))
                req->tier = KVN_RPC_TIER_L2;
            else
                rc = kvn_err_set(err, -EINVAL, "\"tier\" must be \"l1\" or \"l2\"");
            break;
        default:
            break;
        }
        if (rc < 0)
            return rc;
    }
    uint32_t missing = spec->required & ~seen;
    if (missing) {
        for (int k = 0; k < K_COUNT; k++)
            if (missing & B(k))
                return kvn_err_set(err, -EINVAL, "%s: missing argument \"%s\"", spec->name,
                                   key_names[k]);
    }
    return 0;
}

int kvn_rpc_parse(const void *buf, size_t len, struct kvn_rpc_req *req, struct kvn_err *err)
{
    if (!req || !req->tokens || !req->slots)
        return kvn_err_set(err, -EINVAL, "req is NULL or not initialised");
    /* Reset the per-request fields; keep the owned buffers. */
    int32_t *tokens = req->tokens;
    uint32_t *slots = req->slots;
    uint32_t ct = req->cap_tokens, cs = req->cap_slots;
    memset(req, 0, sizeof(*req));
    req->tokens = tokens;
    req->slots = slots;
    req->cap_tokens = ct;
    req->cap_slots = cs;
    req->lease_ms = KVN_RPC_LEASE_DEFAULT_MS;
    if (!buf && len)
        return kvn_err_set(err, -EINVAL, "buf is NULL");
    if (len > KVN_RPC_MAX_FRAME)
        return kvn_err_set(err, -EMSGSIZE, "request of %zu bytes exceeds the %u-byte cap", len,
                           KVN_RPC_MAX_FRAME);
    if (len == 0)
        return kvn_err_set(err, -EPROTO, "empty request");

    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int rc;
    msgpack_unpack_return ur = msgpack_unpack_next(&up, buf, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS) {
        rc = kvn_err_set(err, -EPROTO, "request is not valid msgpack (%s)",
                         ur == MSGPACK_UNPACK_CONTINUE ? "truncated" : "parse error");
    } else if (off != len) {
        rc = kvn_err_set(err, -EPROTO, "%zu trailing bytes after the request map", len - off);
    } else if (up.data.type != MSGPACK_OBJECT_MAP) {
        rc = kvn_err_set(err, -EPROTO, "request must be a msgpack map");
    } else {
        rc = parse_map(&up.data.via.map, req, err);
    }
    msgpack_unpacked_destroy(&up);
    return rc;
}

uint64_t kvn_rpc_fnv1a(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

void kvn_rpc_fill_pattern(void *buf, size_t len, uint64_t seed, uint32_t slot)
{
    /* splitmix64 stream keyed by (seed, slot): cheap, and every slot differs. */
    uint64_t x = seed ^ ((uint64_t)slot * 0x9e3779b97f4a7c15ull);
    uint8_t *p = buf;
    size_t i = 0;
    while (i < len) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        size_t n = len - i < 8 ? len - i : 8;
        memcpy(p + i, &z, n);
        i += n;
    }
}
