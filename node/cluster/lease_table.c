/*
 * lease_table.c - pins under leases (see lease_table.h): a slot array with a free list and
 * generation-tagged handles.
 */
#include "node/cluster/lease_table.h"

#include <inttypes.h>
#include <stdlib.h>

struct slot {
    struct kvn_lease_info info;
    uint32_t gen;
    uint32_t next_free;
    bool used;
};

struct kvn_leases {
    struct slot *s;
    uint32_t cap, free_head, held;
};

int kvn_leases_create(uint32_t cap, struct kvn_leases **out, struct kvn_err *err)
{
    if (!out)
        return kvn_err_set(err, -EINVAL, "out is NULL");
    if (cap == 0)
        cap = KVN_LEASES_DEFAULT_MAX;
    if (cap > KVN_LEASES_LIMIT_MAX)
        return kvn_err_set(err, -EINVAL, "lease capacity %u exceeds %u", cap, KVN_LEASES_LIMIT_MAX);
    struct kvn_leases *t = calloc(1, sizeof(*t));
    if (!t || !(t->s = calloc(cap, sizeof(*t->s)))) {
        free(t);
        return kvn_err_set(err, -ENOMEM, "no memory for %u leases", cap);
    }
    t->cap = cap;
    for (uint32_t i = 0; i < cap; i++)
        t->s[i].next_free = i + 1;
    *out = t;
    return 0;
}

void kvn_leases_destroy(struct kvn_leases *t)
{
    if (!t)
        return;
    free(t->s);
    free(t);
}

int kvn_leases_add(struct kvn_leases *t, uint64_t node_id, uint32_t pages, uint64_t expires_ms,
                   uint64_t *handle, struct kvn_err *err)
{
    if (!t || !handle)
        return kvn_err_set(err, -EINVAL, "table and handle must not be NULL");
    if (node_id == 0)
        return kvn_err_set(err, -EINVAL, "node_id 0 names no tree node");
    if (t->free_head >= t->cap)
        return kvn_err_set(err, -ENOSPC, "%u leases held (max)", t->cap);
    uint32_t i = t->free_head;
    struct slot *s = &t->s[i];
    t->free_head = s->next_free;
    s->used = true;
    s->gen++;
    if (s->gen == 0)
        s->gen = 1; /* handle 0 never names a lease */
    s->info = (struct kvn_lease_info){.handle = ((uint64_t)s->gen << 32) | i,
                                      .node_id = node_id,
                                      .pages = pages,
                                      .expires_ms = expires_ms};
    t->held++;
    *handle = s->info.handle;
    return 0;
}

static void retire(struct kvn_leases *t, uint32_t i)
{
    t->s[i].used = false;
    t->s[i].next_free = t->free_head;
    t->free_head = i;
    t->held--;
}

int kvn_leases_release(struct kvn_leases *t, uint64_t handle, struct kvn_lease_info *out,
                       struct kvn_err *err)
{
    if (!t)
        return kvn_err_set(err, -EINVAL, "table is NULL");
    uint32_t i = (uint32_t)handle;
    if (i >= t->cap || !t->s[i].used || t->s[i].info.handle != handle)
        return kvn_err_set(err, -ENOENT,
                           "no lease with handle %" PRIu64 " (released, expired or never taken)",
                           handle);
    if (out)
        *out = t->s[i].info;
    retire(t, i);
    return 0;
}

int kvn_leases_expire(struct kvn_leases *t, uint64_t now_ms,
                      void (*fn)(void *ctx, const struct kvn_lease_info *info), void *ctx)
{
    if (!t)
        return -EINVAL;
    int n = 0;
    for (uint32_t i = 0; i < t->cap && t->held; i++) {
        if (!t->s[i].used || t->s[i].info.expires_ms > now_ms)
            continue;
        struct kvn_lease_info info = t->s[i].info;
        retire(t, i);
        if (fn)
            fn(ctx, &info);
        n++;
    }
    return n;
}

uint32_t kvn_leases_held(const struct kvn_leases *t)
{
    return t ? t->held : 0;
}

uint64_t kvn_leases_next_expiry(const struct kvn_leases *t)
{
    uint64_t d = UINT64_MAX;
    if (!t)
        return d;
    for (uint32_t i = 0, seen = 0; i < t->cap && seen < t->held; i++) {
        if (!t->s[i].used)
            continue;
        seen++;
        if (t->s[i].info.expires_ms < d)
            d = t->s[i].info.expires_ms;
    }
    return d;
}
