/*
 * kvn_msgpack.h - small msgpack-c helpers shared by node/'s lenient readers (the client's
 * reply decoder, the cluster's RPC replies). The strict request and hello decoders
 * (rpc.c, cluster_wire.c) check every key themselves and do not use this.
 */
#ifndef KVN_MSGPACK_H
#define KVN_MSGPACK_H

#include <msgpack.h>
#include <stdint.h>
#include <string.h>

/* The value of string key `key` in map m, or NULL (m not a map, key absent). */
static inline const msgpack_object *kvn_mp_map_get(const msgpack_object *m, const char *key)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

#endif /* KVN_MSGPACK_H */
