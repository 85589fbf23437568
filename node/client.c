/* client.c - libkvnode (see kvnode_client.h). */
#include "node/kvnode_client.h"
#include "node/kvn_msgpack.h"

#include <cjson/cJSON.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct kvn_client {
    void *ctx;
    void *sock;
    uint64_t next_id;
    int timeout_ms;
    msgpack_sbuffer sbuf;
};

struct kvn_client_reply {
    msgpack_unpacked up; /* strings and blobs point into buf */
    char *buf;
    uint64_t id;
    bool ok;
    int code;
};

int kvn_client_open(const char *endpoint, int timeout_ms, struct kvn_client **out,
                    struct kvn_err *err)
{
    if (!endpoint || !out)
        return kvn_err_set(err, -EINVAL, "endpoint and out must not be NULL");
    if (timeout_ms <= 0)
        return kvn_err_set(err, -EINVAL, "timeout_ms %d must be > 0", timeout_ms);
    struct kvn_client *c = calloc(1, sizeof(*c));
    if (!c)
        return kvn_err_set(err, -ENOMEM, "no memory for the client");
    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        free(c);
        return kvn_err_set(err, -EIO, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    }
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    int linger = 0;
    if (!c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
        zmq_connect(c->sock, endpoint) != 0) {
        int e = zmq_errno();
        if (c->sock)
            zmq_close(c->sock);
        zmq_ctx_term(c->ctx);
        free(c);
        return kvn_err_set(err, e == EINVAL || e == EPROTONOSUPPORT ? -EINVAL : -EIO,
                           "cannot connect to %s: %s", endpoint, zmq_strerror(e));
    }
    c->timeout_ms = timeout_ms;
    c->next_id = 1;
    msgpack_sbuffer_init(&c->sbuf);
    *out = c;
    return 0;
}

void kvn_client_close(struct kvn_client *c)
{
    if (!c)
        return;
    zmq_close(c->sock);
    zmq_ctx_term(c->ctx);
    msgpack_sbuffer_destroy(&c->sbuf);
    free(c);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static int encode(struct kvn_client *c, const struct kvn_client_req *r, uint64_t id,
                  struct kvn_err *err)
{
    const char *name = kvn_rpc_op_name(r->op);
    if (!name)
        return kvn_err_set(err, -EINVAL, "op %d is not an operation", (int)r->op);
    bool tokens = false, slots = false, blobs = false, handle = false, lease = false, evict = false,
         seed = false, hello = false, to = false;
    switch (r->op) {
    case KVN_RPC_REGISTER_L1:
        blobs = true;
        break;
    case KVN_RPC_INSERT:
    case KVN_RPC_LOAD_BACK:
        tokens = true;
        slots = r->slots != NULL; /* no slots: auto mode */
        break;
    case KVN_RPC_MATCH:
    case KVN_RPC_BACKUP:
        tokens = true;
        break;
    case KVN_RPC_LOCK:
        tokens = true;
        lease = r->lease_ms != 0;
        break;
    case KVN_RPC_UNLOCK:
        handle = true;
        break;
    case KVN_RPC_EVICT:
        evict = true;
        break;
    case KVN_RPC_L1_FILL:
        slots = seed = true;
        break;
    case KVN_RPC_L1_CHECKSUM:
        slots = true;
        break;
    case KVN_RPC_PEER_HELLO:
        hello = true;
        break;
    case KVN_RPC_PIN:
    case KVN_RPC_RESERVE:
    case KVN_RPC_FETCH:
        tokens = true;
        lease = r->lease_ms != 0;
        break;
    case KVN_RPC_UNPIN:
    case KVN_RPC_ABORT:
        handle = true;
        break;
    case KVN_RPC_PUSH_DONE:
        handle = true;
        slots = r->slots != NULL;
        break;
    case KVN_RPC_PUSH:
        to = tokens = true;
        slots = r->slots != NULL; /* no slots: from this node's L2 */
        lease = r->lease_ms != 0;
        break;
    default:
        break;
    }
    if (hello && (!r->hello || r->hello_len == 0))
        return kvn_err_set(err, -EINVAL, "%s: hello must not be empty", name);
    if (to && (!r->to || !r->to[0] || strlen(r->to) >= 256))
        return kvn_err_set(err, -EINVAL, "%s: \"to\" must be an endpoint", name);
    if ((tokens && r->n_tokens && !r->tokens) || (slots && r->n_slots && !r->slots))
        return kvn_err_set(err, -EINVAL, "%s: token or slot array is NULL", name);
    if (blobs && (!r->desc || !r->addr))
        return kvn_err_set(err, -EINVAL, "%s: desc and addr must not be NULL", name);
    if (evict && r->tier != KVN_RPC_TIER_L1 && r->tier != KVN_RPC_TIER_L2)
        return kvn_err_set(err, -EINVAL, "%s: tier must be L1 or L2", name);
    size_t n =
        3 + tokens + slots + (blobs ? 4 : 0) + handle + lease + (evict ? 2 : 0) + seed + hello + to;
    msgpack_sbuffer_clear(&c->sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c->sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    pack_str(&pk, "v");
    msgpack_pack_uint32(&pk, KVN_RPC_VERSION);
    pack_str(&pk, "op");
    pack_str(&pk, name);
    pack_str(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    if (tokens) {
        pack_str(&pk, "tokens");
        msgpack_pack_array(&pk, r->n_tokens);
        for (uint32_t i = 0; i < r->n_tokens; i++)
            msgpack_pack_int32(&pk, r->tokens[i]);
    }
    if (slots) {
        pack_str(&pk, "slots");
        msgpack_pack_array(&pk, r->n_slots);
        for (uint32_t i = 0; i < r->n_slots; i++)
            msgpack_pack_uint32(&pk, r->slots[i]);
    }
    if (blobs) {
        pack_str(&pk, "desc");
        msgpack_pack_bin(&pk, r->desc_len);
        msgpack_pack_bin_body(&pk, r->desc, r->desc_len);
        pack_str(&pk, "addr");
        msgpack_pack_bin(&pk, r->addr_len);
        msgpack_pack_bin_body(&pk, r->addr, r->addr_len);
        pack_str(&pk, "page_bytes");
        msgpack_pack_uint64(&pk, r->page_bytes);
        pack_str(&pk, "n_slots");
        msgpack_pack_uint64(&pk, r->l1_slots);
    }
    if (handle) {
        pack_str(&pk, "handle");
        msgpack_pack_uint64(&pk, r->handle);
    }
    if (lease) {
        pack_str(&pk, "lease_ms");
        msgpack_pack_uint64(&pk, r->lease_ms);
    }
    if (evict) {
        pack_str(&pk, "tier");
        pack_str(&pk, r->tier == KVN_RPC_TIER_L1 ? "l1" : "l2");
        pack_str(&pk, "pages");
        msgpack_pack_uint64(&pk, r->pages);
    }
    if (seed) {
        pack_str(&pk, "seed");
        msgpack_pack_uint64(&pk, r->seed);
    }
    if (hello) {
        pack_str(&pk, "hello");
        msgpack_pack_bin(&pk, r->hello_len);
        msgpack_pack_bin_body(&pk, r->hello, r->hello_len);
    }
    if (to) {
        pack_str(&pk, "to");
        pack_str(&pk, r->to);
    }
    return 0;
}

/* Decodes one reply body; fills r->id/ok/code. */
static int decode(const void *buf, size_t len, struct kvn_client_reply *r, struct kvn_err *err)
{
    size_t off = 0;
    /* msgpack objects reference the bytes they were parsed from: keep our own copy,
     * the ZeroMQ message dies right after this call */
    r->buf = malloc(len ? len : 1);
    if (!r->buf)
        return kvn_err_set(err, -ENOMEM, "no memory for a %zu-byte reply", len);
    memcpy(r->buf, buf, len);
    msgpack_unpacked_init(&r->up);
    if (msgpack_unpack_next(&r->up, r->buf, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        r->up.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&r->up);
        free(r->buf);
        r->buf = NULL;
        return kvn_err_set(err, -EPROTO, "reply is not a msgpack map");
    }
    const msgpack_object *ok = kvn_mp_map_get(&r->up.data, "ok");
    const msgpack_object *id = kvn_mp_map_get(&r->up.data, "id");
    if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN || !id ||
        id->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        msgpack_unpacked_destroy(&r->up);
        free(r->buf);
        r->buf = NULL;
        return kvn_err_set(err, -EPROTO, "reply lacks \"ok\" or \"id\"");
    }
    r->ok = ok->via.boolean;
    r->id = id->via.u64;
    r->code = 0;
    if (!r->ok) {
        const msgpack_object *code = kvn_mp_map_get(&r->up.data, "code");
        r->code = (code && code->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && code->via.i64 >= -4095)
                      ? (int)code->via.i64
                      : -EPROTO;
    }
    return 0;
}

static void set_err_from_reply(const struct kvn_client_reply *r, struct kvn_err *err)
{
    const msgpack_object *e = kvn_mp_map_get(&r->up.data, "error");
    if (e && e->type == MSGPACK_OBJECT_STR)
        kvn_err_set(err, r->code, "node: %.*s",
                    (int)(e->via.str.size > 200 ? 200 : e->via.str.size), e->via.str.ptr);
    else
        kvn_err_set(err, r->code, "node: error %d (%s)", r->code, kvn_err_name(r->code));
}

/* Sends c->sbuf (or body) and waits for the reply whose id is want (any id when raw). */
static int round_trip(struct kvn_client *c, const void *body, size_t len, uint64_t want, bool raw,
                      struct kvn_client_reply **out, struct kvn_err *err)
{
    if (zmq_send(c->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(c->sock, body, len, ZMQ_DONTWAIT) < 0)
        return kvn_err_set(err, -EIO, "send: %s", zmq_strerror(zmq_errno()));
    zmq_pollitem_t it = {.socket = c->sock, .events = ZMQ_POLLIN};
    int left = c->timeout_ms;
    while (left > 0) {
        int step = left < 100 ? left : 100;
        int n = zmq_poll(&it, 1, step);
        if (n < 0 && zmq_errno() != EINTR)
            return kvn_err_set(err, -EIO, "poll: %s", zmq_strerror(zmq_errno()));
        left -= step; /* a bound, not a clock: early wake-ups only shorten the wait */
        if (n <= 0)
            continue;
        zmq_msg_t parts[3];
        int np = 0;
        int more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->sock, 0) < 0) {
                zmq_msg_close(&m);
                for (int i = 0; i < np; i++)
                    zmq_msg_close(&parts[i]);
                return kvn_err_set(err, -EIO, "recv: %s", zmq_strerror(zmq_errno()));
            }
            more = zmq_msg_more(&m);
            if (np < 3)
                parts[np++] = m;
            else
                zmq_msg_close(&m);
        }
        /* ["", body] or [body] */
        zmq_msg_t *bodym = NULL;
        if (np == 2 && zmq_msg_size(&parts[0]) == 0)
            bodym = &parts[1];
        else if (np == 1)
            bodym = &parts[0];
        int rc = 0;
        struct kvn_client_reply *r = NULL;
        if (!bodym) {
            rc = kvn_err_set(err, -EPROTO, "reply has %d frames", np);
        } else if (!(r = calloc(1, sizeof(*r)))) {
            rc = kvn_err_set(err, -ENOMEM, "no memory for the reply");
        } else {
            rc = decode(zmq_msg_data(bodym), zmq_msg_size(bodym), r, err);
            if (rc < 0) {
                free(r);
                r = NULL;
            }
        }
        for (int i = 0; i < np; i++)
            zmq_msg_close(&parts[i]);
        if (rc < 0)
            return rc;
        if (!raw && r->id != want) { /* a late reply to an earlier, timed-out call */
            kvn_client_reply_free(r);
            continue;
        }
        *out = r;
        return 0;
    }
    return kvn_err_set(err, -ETIMEDOUT, "no reply within %d ms", c->timeout_ms);
}

int kvn_client_call(struct kvn_client *c, const struct kvn_client_req *req,
                    struct kvn_client_reply **reply, struct kvn_err *err)
{
    if (reply)
        *reply = NULL;
    if (!c || !req)
        return kvn_err_set(err, -EINVAL, "client and req must not be NULL");
    uint64_t id = c->next_id++;
    int rc = encode(c, req, id, err);
    if (rc < 0)
        return rc;
    if (c->sbuf.size > KVN_RPC_MAX_FRAME)
        return kvn_err_set(err, -EMSGSIZE, "request of %zu bytes exceeds the %u-byte cap",
                           c->sbuf.size, KVN_RPC_MAX_FRAME);
    struct kvn_client_reply *r;
    rc = round_trip(c, c->sbuf.data, c->sbuf.size, id, false, &r, err);
    if (rc < 0)
        return rc;
    if (!r->ok) {
        rc = r->code;
        set_err_from_reply(r, err);
        kvn_client_reply_free(r);
        return rc;
    }
    if (reply)
        *reply = r;
    else
        kvn_client_reply_free(r);
    return 0;
}

int kvn_client_call_raw(struct kvn_client *c, const void *body, size_t len,
                        struct kvn_client_reply **reply, int *code, struct kvn_err *err)
{
    if (!c || (!body && len) || !reply || !code)
        return kvn_err_set(err, -EINVAL, "client, body, reply and code must not be NULL");
    *reply = NULL;
    struct kvn_client_reply *r;
    int rc = round_trip(c, body, len, 0, true, &r, err);
    if (rc < 0)
        return rc;
    *code = r->code;
    if (!r->ok)
        set_err_from_reply(r, err);
    *reply = r;
    return 0;
}

int kvn_client_hello(struct kvn_client *c, struct kvn_client_reply **reply, struct kvn_err *err)
{
    struct kvn_client_req q = {.op = KVN_RPC_HELLO};
    return kvn_client_call(c, &q, reply, err);
}

int kvn_client_insert(struct kvn_client *c, const int32_t *tokens, uint32_t n_tokens,
                      const uint32_t *slots, uint32_t n_slots, struct kvn_client_reply **reply,
                      struct kvn_err *err)
{
    struct kvn_client_req q = {.op = KVN_RPC_INSERT,
                               .tokens = tokens,
                               .n_tokens = n_tokens,
                               .slots = slots,
                               .n_slots = n_slots};
    return kvn_client_call(c, &q, reply, err);
}

int kvn_client_match(struct kvn_client *c, const int32_t *tokens, uint32_t n_tokens,
                     struct kvn_client_reply **reply, struct kvn_err *err)
{
    struct kvn_client_req q = {.op = KVN_RPC_MATCH, .tokens = tokens, .n_tokens = n_tokens};
    return kvn_client_call(c, &q, reply, err);
}

int kvn_client_stats(struct kvn_client *c, struct kvn_client_reply **reply, struct kvn_err *err)
{
    struct kvn_client_req q = {.op = KVN_RPC_STATS};
    return kvn_client_call(c, &q, reply, err);
}

int kvn_client_fetch(struct kvn_client *c, const int32_t *tokens, uint32_t n_tokens,
                     uint64_t lease_ms, struct kvn_client_reply **reply, struct kvn_err *err)
{
    struct kvn_client_req q = {
        .op = KVN_RPC_FETCH, .tokens = tokens, .n_tokens = n_tokens, .lease_ms = lease_ms};
    return kvn_client_call(c, &q, reply, err);
}

int kvn_client_push(struct kvn_client *c, const char *to, const int32_t *tokens, uint32_t n_tokens,
                    const uint32_t *slots, uint32_t n_slots, struct kvn_client_reply **reply,
                    struct kvn_err *err)
{
    struct kvn_client_req q = {.op = KVN_RPC_PUSH,
                               .to = to,
                               .tokens = tokens,
                               .n_tokens = n_tokens,
                               .slots = n_slots ? slots : NULL,
                               .n_slots = n_slots};
    return kvn_client_call(c, &q, reply, err);
}

int kvn_client_reset(struct kvn_client *c, struct kvn_err *err)
{
    struct kvn_client_req q = {.op = KVN_RPC_RESET};
    return kvn_client_call(c, &q, NULL, err);
}

uint64_t kvn_client_reply_id(const struct kvn_client_reply *r)
{
    return r ? r->id : 0;
}

int kvn_client_reply_u64(const struct kvn_client_reply *r, const char *key, uint64_t *out)
{
    if (!r || !key || !out)
        return -EINVAL;
    const msgpack_object *v = kvn_mp_map_get(&r->up.data, key);
    if (!v)
        return -ENOENT;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        *out = v->via.u64;
    else if (v->type == MSGPACK_OBJECT_BOOLEAN)
        *out = v->via.boolean;
    else
        return -EPROTO;
    return 0;
}

int kvn_client_reply_i64(const struct kvn_client_reply *r, const char *key, int64_t *out)
{
    if (!r || !key || !out)
        return -EINVAL;
    const msgpack_object *v = kvn_mp_map_get(&r->up.data, key);
    if (!v)
        return -ENOENT;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *out = v->via.i64;
    else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
        *out = (int64_t)v->via.u64;
    else
        return -EPROTO;
    return 0;
}

int kvn_client_reply_u64_array(const struct kvn_client_reply *r, const char *key, uint64_t *out,
                               size_t cap, size_t *n)
{
    if (!r || !key || (!out && cap) || !n)
        return -EINVAL;
    const msgpack_object *v = kvn_mp_map_get(&r->up.data, key);
    if (!v)
        return -ENOENT;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return -EPROTO;
    for (uint32_t i = 0; i < v->via.array.size; i++)
        if (v->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return -EPROTO;
    for (uint32_t i = 0; i < v->via.array.size && i < cap; i++)
        out[i] = v->via.array.ptr[i].via.u64;
    *n = v->via.array.size;
    return 0;
}

static cJSON *to_json(const msgpack_object *o, int depth)
{
    if (depth > 16)
        return cJSON_CreateNull();
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return cJSON_CreateNull();
    case MSGPACK_OBJECT_BOOLEAN:
        return cJSON_CreateBool(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: {
        /* raw digits: a double would round 64-bit checksums and hashes */
        char num[32];
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            snprintf(num, sizeof(num), "%llu", (unsigned long long)o->via.u64);
        else
            snprintf(num, sizeof(num), "%lld", (long long)o->via.i64);
        return cJSON_CreateRaw(num);
    }
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return cJSON_CreateNumber(o->via.f64);
    case MSGPACK_OBJECT_STR: {
        char *s = malloc(o->via.str.size + 1);
        if (!s)
            return NULL;
        memcpy(s, o->via.str.ptr, o->via.str.size);
        s[o->via.str.size] = '\0';
        cJSON *j = cJSON_CreateString(s);
        free(s);
        return j;
    }
    case MSGPACK_OBJECT_ARRAY: {
        cJSON *a = cJSON_CreateArray();
        for (uint32_t i = 0; a && i < o->via.array.size; i++) {
            cJSON *e = to_json(&o->via.array.ptr[i], depth + 1);
            if (!e) {
                cJSON_Delete(a);
                return NULL;
            }
            cJSON_AddItemToArray(a, e);
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        cJSON *m = cJSON_CreateObject();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR)
                continue;
            char key[128];
            size_t kn = k->via.str.size < sizeof(key) - 1 ? k->via.str.size : sizeof(key) - 1;
            memcpy(key, k->via.str.ptr, kn);
            key[kn] = '\0';
            cJSON *e = to_json(&o->via.map.ptr[i].val, depth + 1);
            if (!e) {
                cJSON_Delete(m);
                return NULL;
            }
            cJSON_AddItemToObject(m, key, e);
        }
        return m;
    }
    default:
        return cJSON_CreateNull(); /* bin, ext: not JSON */
    }
}

char *kvn_client_reply_json(const struct kvn_client_reply *r, bool pretty)
{
    if (!r)
        return NULL;
    cJSON *j = to_json(&r->up.data, 0);
    if (!j)
        return NULL;
    char *s = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

void kvn_client_reply_free(struct kvn_client_reply *r)
{
    if (!r)
        return;
    msgpack_unpacked_destroy(&r->up);
    free(r->buf);
    free(r);
}
