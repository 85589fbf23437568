/*
 * cluster_wire.c - peer hello codec and remote page checks (see cluster_wire.h).
 */
#include "node/cluster/cluster_wire.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum hkey {
    H_NODE_ID = 0,
    H_INC,
    H_CTL,
    H_EVENTS,
    H_REPLAY,
    H_TOPIC,
    H_PAGE_SIZE,
    H_PAGE_BYTES,
    H_POOL_PAGES,
    H_TRANSPORT,
    H_ADDR,
    H_POOL_DESC,
    H_COUNT
};

static const char *const hkey_names[H_COUNT] = {
    "node_id",   "inc",        "ctl",        "events",    "replay", "topic",
    "page_size", "page_bytes", "pool_pages", "transport", "addr",   "pool_desc",
};

struct wbuf {
    uint8_t *p;
    size_t cap, len;
    bool over;
};

static int wbuf_write(void *data, const char *buf, size_t len)
{
    struct wbuf *w = data;
    if (w->over || len > w->cap - w->len) {
        w->over = true;
        return -1;
    }
    memcpy(w->p + w->len, buf, len);
    w->len += len;
    return 0;
}

static void pk_key(msgpack_packer *pk, enum hkey k)
{
    size_t l = strlen(hkey_names[k]);
    msgpack_pack_str(pk, l);
    msgpack_pack_str_body(pk, hkey_names[k], l);
}

static void pk_s(msgpack_packer *pk, enum hkey k, const char *s)
{
    pk_key(pk, k);
    size_t l = strlen(s);
    msgpack_pack_str(pk, l);
    msgpack_pack_str_body(pk, s, l);
}

static void pk_b(msgpack_packer *pk, enum hkey k, const uint8_t *b, uint32_t l)
{
    pk_key(pk, k);
    msgpack_pack_bin(pk, l);
    msgpack_pack_bin_body(pk, b, l);
}

static void pk_u(msgpack_packer *pk, enum hkey k, uint64_t v)
{
    pk_key(pk, k);
    msgpack_pack_uint64(pk, v);
}

static bool terminated(const char *s)
{
    return memchr(s, 0, KVN_WIRE_STR_MAX) != NULL;
}

int kvn_wire_hello_encode(const struct kvn_wire_hello *h, void *buf, size_t cap, size_t *len,
                          struct kvn_err *err)
{
    if (!h || !buf || !len)
        return kvn_err_set(err, -EINVAL, "hello, buf and len must not be NULL");
    if (h->node_id == 0 || h->page_size == 0 || h->page_bytes == 0)
        return kvn_err_set(err, -EINVAL, "node_id, page_size and page_bytes must be non-zero");
    if (!terminated(h->ctl) || !terminated(h->events) || !terminated(h->replay) ||
        !terminated(h->topic) || !terminated(h->transport))
        return kvn_err_set(err, -EINVAL, "a hello string is not NUL-terminated");
    if (h->addr_len > KVN_WIRE_BLOB_MAX || h->pool_desc_len > KVN_WIRE_BLOB_MAX)
        return kvn_err_set(err, -EINVAL, "addr (%u) or pool_desc (%u) exceeds %u bytes",
                           h->addr_len, h->pool_desc_len, KVN_WIRE_BLOB_MAX);
    struct wbuf w = {.p = buf, .cap = cap};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, wbuf_write);
    msgpack_pack_map(&pk, H_COUNT);
    pk_u(&pk, H_NODE_ID, h->node_id);
    pk_u(&pk, H_INC, h->inc);
    pk_s(&pk, H_CTL, h->ctl);
    pk_s(&pk, H_EVENTS, h->events);
    pk_s(&pk, H_REPLAY, h->replay);
    pk_s(&pk, H_TOPIC, h->topic);
    pk_u(&pk, H_PAGE_SIZE, h->page_size);
    pk_u(&pk, H_PAGE_BYTES, h->page_bytes);
    pk_u(&pk, H_POOL_PAGES, h->pool_pages);
    pk_s(&pk, H_TRANSPORT, h->transport);
    pk_b(&pk, H_ADDR, h->addr, h->addr_len);
    pk_b(&pk, H_POOL_DESC, h->pool_desc, h->pool_desc_len);
    if (w.over)
        return kvn_err_set(err, -ENOSPC, "hello needs more than %zu bytes", cap);
    *len = w.len;
    return 0;
}

static int get_u(const msgpack_object *v, enum hkey k, uint64_t max, uint64_t *out,
                 struct kvn_err *err)
{
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return kvn_err_set(err, -EPROTO, "hello \"%s\" must be an unsigned integer", hkey_names[k]);
    if (v->via.u64 > max)
        return kvn_err_set(err, -EINVAL, "hello \"%s\" = %llu is out of range", hkey_names[k],
                           (unsigned long long)v->via.u64);
    *out = v->via.u64;
    return 0;
}

static int get_s(const msgpack_object *v, enum hkey k, char *out, struct kvn_err *err)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return kvn_err_set(err, -EPROTO, "hello \"%s\" must be a string", hkey_names[k]);
    if (v->via.str.size >= KVN_WIRE_STR_MAX)
        return kvn_err_set(err, -EINVAL, "hello \"%s\" is longer than %u bytes", hkey_names[k],
                           KVN_WIRE_STR_MAX - 1);
    if (memchr(v->via.str.ptr, 0, v->via.str.size))
        return kvn_err_set(err, -EINVAL, "hello \"%s\" contains a NUL byte", hkey_names[k]);
    memcpy(out, v->via.str.ptr, v->via.str.size);
    out[v->via.str.size] = 0;
    return 0;
}

static int get_b(const msgpack_object *v, enum hkey k, uint8_t *out, uint32_t *len,
                 struct kvn_err *err)
{
    if (v->type != MSGPACK_OBJECT_BIN)
        return kvn_err_set(err, -EPROTO, "hello \"%s\" must be bin", hkey_names[k]);
    if (v->via.bin.size > KVN_WIRE_BLOB_MAX)
        return kvn_err_set(err, -EINVAL, "hello \"%s\" is longer than %u bytes", hkey_names[k],
                           KVN_WIRE_BLOB_MAX);
    memcpy(out, v->via.bin.ptr, v->via.bin.size);
    *len = v->via.bin.size;
    return 0;
}

static int decode_map(const msgpack_object *o, struct kvn_wire_hello *h, struct kvn_err *err)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return kvn_err_set(err, -EPROTO, "hello is not a msgpack map");
    uint32_t seen = 0;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            return kvn_err_set(err, -EPROTO, "hello keys must be strings");
        int key = -1;
        for (int j = 0; j < H_COUNT; j++)
            if (strlen(hkey_names[j]) == k->via.str.size &&
                memcmp(hkey_names[j], k->via.str.ptr, k->via.str.size) == 0)
                key = j;
        if (key < 0)
            return kvn_err_set(err, -EPROTO, "hello has unknown key \"%.*s\"",
                               (int)(k->via.str.size > 64 ? 64 : k->via.str.size), k->via.str.ptr);
        if (seen & (1u << key))
            return kvn_err_set(err, -EPROTO, "hello has key \"%s\" twice", hkey_names[key]);
        seen |= 1u << key;
        uint64_t u = 0;
        int rc = 0;
        switch ((enum hkey)key) {
        case H_NODE_ID:
            if ((rc = get_u(v, H_NODE_ID, UINT64_MAX, &h->node_id, err)) == 0 && !h->node_id)
                rc = kvn_err_set(err, -EINVAL, "hello \"node_id\" must not be 0");
            break;
        case H_INC:
            rc = get_u(v, H_INC, UINT64_MAX, &h->inc, err);
            break;
        case H_CTL:
            rc = get_s(v, H_CTL, h->ctl, err);
            break;
        case H_EVENTS:
            rc = get_s(v, H_EVENTS, h->events, err);
            break;
        case H_REPLAY:
            rc = get_s(v, H_REPLAY, h->replay, err);
            break;
        case H_TOPIC:
            rc = get_s(v, H_TOPIC, h->topic, err);
            break;
        case H_TRANSPORT:
            rc = get_s(v, H_TRANSPORT, h->transport, err);
            break;
        case H_PAGE_SIZE:
            if ((rc = get_u(v, H_PAGE_SIZE, UINT32_MAX, &u, err)) == 0 && u == 0)
                rc = kvn_err_set(err, -EINVAL, "hello \"page_size\" must not be 0");
            h->page_size = (uint32_t)u;
            break;
        case H_PAGE_BYTES:
            if ((rc = get_u(v, H_PAGE_BYTES, UINT64_MAX, &h->page_bytes, err)) == 0 &&
                h->page_bytes == 0)
                rc = kvn_err_set(err, -EINVAL, "hello \"page_bytes\" must not be 0");
            break;
        case H_POOL_PAGES:
            rc = get_u(v, H_POOL_PAGES, UINT32_MAX, &u, err);
            h->pool_pages = (uint32_t)u;
            break;
        case H_ADDR:
            rc = get_b(v, H_ADDR, h->addr, &h->addr_len, err);
            break;
        case H_POOL_DESC:
            rc = get_b(v, H_POOL_DESC, h->pool_desc, &h->pool_desc_len, err);
            break;
        case H_COUNT:
            break;
        }
        if (rc < 0)
            return rc;
    }
    for (int j = 0; j < H_COUNT; j++)
        if (!(seen & (1u << j)))
            return kvn_err_set(err, -EPROTO, "hello lacks \"%s\"", hkey_names[j]);
    return 0;
}

int kvn_wire_hello_decode(const void *buf, size_t len, struct kvn_wire_hello *out,
                          struct kvn_err *err)
{
    if (!buf || !out)
        return kvn_err_set(err, -EINVAL, "buf and out must not be NULL");
    if (len > KVN_WIRE_HELLO_MAX)
        return kvn_err_set(err, -EMSGSIZE, "hello of %zu bytes exceeds %u", len,
                           KVN_WIRE_HELLO_MAX);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int rc;
    msgpack_unpack_return ur = msgpack_unpack_next(&up, buf, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS) {
        rc = kvn_err_set(err, -EPROTO, "hello is not valid msgpack");
    } else if (off != len) {
        rc = kvn_err_set(err, -EPROTO, "hello has %zu trailing bytes", len - off);
    } else {
        /* decode into a scratch copy so that *out changes only on success */
        static const struct kvn_wire_hello zero;
        struct kvn_wire_hello *h = malloc(sizeof(*h));
        if (!h) {
            rc = kvn_err_set(err, -ENOMEM, "no memory to decode a hello");
        } else {
            *h = zero;
            rc = decode_map(&up.data, h, err);
            if (rc == 0)
                *out = *h;
            free(h);
        }
    }
    msgpack_unpacked_destroy(&up);
    return rc;
}

int kvn_wire_hello_compatible(const struct kvn_wire_hello *self, const struct kvn_wire_hello *peer,
                              struct kvn_err *err)
{
    if (!self || !peer)
        return kvn_err_set(err, -EINVAL, "self and peer must not be NULL");
    if (self->page_size != peer->page_size)
        return kvn_err_set(err, -EPROTO, "peer page size %u != ours %u", peer->page_size,
                           self->page_size);
    if (self->page_bytes != peer->page_bytes)
        return kvn_err_set(err, -EPROTO, "peer page bytes %llu != ours %llu",
                           (unsigned long long)peer->page_bytes,
                           (unsigned long long)self->page_bytes);
    if (strcmp(self->transport, peer->transport) != 0)
        return kvn_err_set(err, -EPROTO, "peer transport %s != ours %s", peer->transport,
                           self->transport);
    if (peer->pool_pages == 0)
        return kvn_err_set(err, -EPROTO, "peer announces an empty host pool");
    return 0;
}

int kvn_wire_check_pages(const uint32_t *pages, uint32_t n, uint32_t pool_pages,
                         uint64_t page_bytes, struct kvn_err *err)
{
    if ((!pages && n) || page_bytes == 0)
        return kvn_err_set(err, -EINVAL, "pages NULL or page_bytes 0");
    for (uint32_t i = 0; i < n; i++) {
        if (pages[i] >= pool_pages)
            return kvn_err_set(err, -ERANGE,
                               "page %u (entry %u) lies outside the peer's pool of %u pages",
                               pages[i], i, pool_pages);
        if ((uint64_t)pages[i] + 1 > UINT64_MAX / page_bytes)
            return kvn_err_set(err, -ERANGE, "page %u: byte offset overflows", pages[i]);
    }
    return 0;
}
