/*
 * page_alloc.c - free stack + position index; see page_alloc.h for the picture.
 */
#include "cache/page_alloc.h"

#include <stdlib.h>
#include <string.h>

#define PA_USED UINT32_MAX

int kvn_page_alloc_init(struct kvn_page_alloc *pa, uint32_t capacity, struct kvn_err *err)
{
    if (!pa)
        return kvn_err_set(err, -EINVAL, "page_alloc_init: pa is NULL");
    memset(pa, 0, sizeof(*pa));
    if (capacity > KVN_PAGE_ALLOC_MAX_CAPACITY)
        return kvn_err_set(err, -EINVAL, "page_alloc_init: capacity %u too large", capacity);
    if (capacity == 0)
        return 0;
    pa->stack = malloc((size_t)capacity * sizeof(uint32_t));
    pa->pos = malloc((size_t)capacity * sizeof(uint32_t));
    if (!pa->stack || !pa->pos) {
        free(pa->stack);
        free(pa->pos);
        memset(pa, 0, sizeof(*pa));
        return kvn_err_set(err, -ENOMEM, "page_alloc_init: out of memory for %u pages", capacity);
    }
    pa->capacity = capacity;
    kvn_page_alloc_reset(pa);
    return 0;
}

void kvn_page_alloc_fini(struct kvn_page_alloc *pa)
{
    if (!pa)
        return;
    free(pa->stack);
    free(pa->pos);
    memset(pa, 0, sizeof(*pa));
}

void kvn_page_alloc_reset(struct kvn_page_alloc *pa)
{
    if (!pa)
        return;
    /* Pop order ascending from 0 makes small tests readable: get() yields 0, 1, 2... */
    for (uint32_t i = 0; i < pa->capacity; i++) {
        pa->stack[i] = pa->capacity - 1 - i;
        pa->pos[pa->capacity - 1 - i] = i;
    }
    pa->n_free = pa->capacity;
}

int kvn_page_alloc_get(struct kvn_page_alloc *pa, uint32_t n, uint32_t *out, struct kvn_err *err)
{
    if (!pa)
        return kvn_err_set(err, -EINVAL, "page_alloc_get: pa is NULL");
    if (n > 0 && !out)
        return kvn_err_set(err, -EINVAL, "page_alloc_get: out is NULL");
    if (n > pa->n_free)
        return kvn_err_set(err, -ENOSPC, "page_alloc_get: %u pages wanted, %u free", n, pa->n_free);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t idx = pa->stack[--pa->n_free];
        pa->pos[idx] = PA_USED;
        out[i] = idx;
    }
    return 0;
}

/* Claims one free idx: swap it with the top of the free stack, pop. */
static void take_one(struct kvn_page_alloc *pa, uint32_t idx)
{
    uint32_t p = pa->pos[idx];
    uint32_t top = pa->stack[pa->n_free - 1];
    pa->stack[p] = top;
    pa->pos[top] = p;
    pa->n_free--;
    pa->pos[idx] = PA_USED;
}

static void put_one(struct kvn_page_alloc *pa, uint32_t idx)
{
    pa->stack[pa->n_free] = idx;
    pa->pos[idx] = pa->n_free++;
}

int kvn_page_alloc_take(struct kvn_page_alloc *pa, const uint32_t *idx, uint32_t n,
                        struct kvn_err *err)
{
    if (!pa || (n > 0 && !idx))
        return kvn_err_set(err, -EINVAL, "page_alloc_take: NULL argument");
    for (uint32_t i = 0; i < n; i++)
        if (idx[i] >= pa->capacity)
            return kvn_err_set(err, -EINVAL, "page_alloc_take: index %u >= capacity %u", idx[i],
                               pa->capacity);
    for (uint32_t i = 0; i < n; i++) {
        if (pa->pos[idx[i]] == PA_USED) {
            /* used before the call, or listed twice: undo what we took */
            for (uint32_t j = 0; j < i; j++)
                put_one(pa, idx[j]);
            return kvn_err_set(err, -EBUSY, "page_alloc_take: index %u is already used", idx[i]);
        }
        take_one(pa, idx[i]);
    }
    return 0;
}

int kvn_page_alloc_put(struct kvn_page_alloc *pa, const uint32_t *idx, uint32_t n,
                       struct kvn_err *err)
{
    if (!pa || (n > 0 && !idx))
        return kvn_err_set(err, -EINVAL, "page_alloc_put: NULL argument");
    for (uint32_t i = 0; i < n; i++)
        if (idx[i] >= pa->capacity)
            return kvn_err_set(err, -EINVAL, "page_alloc_put: index %u >= capacity %u", idx[i],
                               pa->capacity);
    for (uint32_t i = 0; i < n; i++) {
        if (pa->pos[idx[i]] != PA_USED) {
            for (uint32_t j = 0; j < i; j++)
                take_one(pa, idx[j]);
            return kvn_err_set(err, -EALREADY, "page_alloc_put: double free of index %u", idx[i]);
        }
        put_one(pa, idx[i]);
    }
    return 0;
}

bool kvn_page_alloc_is_used(const struct kvn_page_alloc *pa, uint32_t idx)
{
    return pa && idx < pa->capacity && pa->pos[idx] == PA_USED;
}

uint32_t kvn_page_alloc_capacity(const struct kvn_page_alloc *pa)
{
    return pa ? pa->capacity : 0;
}

uint32_t kvn_page_alloc_free_count(const struct kvn_page_alloc *pa)
{
    return pa ? pa->n_free : 0;
}

uint32_t kvn_page_alloc_used_count(const struct kvn_page_alloc *pa)
{
    return pa ? pa->capacity - pa->n_free : 0;
}
