/*
 * push_table.c - push reservations (see push_table.h): a slot array with a free list,
 * generation-tagged handles, one landed bitmap per reservation, and the way each slot's
 * previous reservation ended (so a late notification gets a precise refusal).
 */
#include "node/cluster/push_table.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum end_kind { END_NONE = 0, END_COMPLETED, END_ABORTED, END_EXPIRED };

struct res {
    uint64_t handle;
    int32_t *tokens;
    uint32_t n_tokens;
    uint32_t *pages;
    uint32_t n_pages;
    uint64_t *landed_bits;
    uint32_t landed;
    uint64_t deadline_ms;
    uint32_t gen;
    uint32_t next_free;
    bool used;
    enum end_kind last_end; /* how generation gen ended, when !used */
};

struct kvn_push_table {
    struct res *r;
    uint32_t cap, free_head, max_pages;
    struct kvn_push_stats st;
};

int kvn_push_create(uint32_t max_res, uint32_t max_pages, struct kvn_push_table **out,
                    struct kvn_err *err)
{
    if (!out)
        return kvn_err_set(err, -EINVAL, "out is NULL");
    if (max_res == 0)
        max_res = KVN_PUSH_DEFAULT_MAX_RES;
    if (max_pages == 0)
        max_pages = KVN_PUSH_DEFAULT_MAX_PAGES;
    if (max_res > (1u << 20))
        return kvn_err_set(err, -EINVAL, "max_res %u exceeds %u", max_res, 1u << 20);
    struct kvn_push_table *t = calloc(1, sizeof(*t));
    if (!t || !(t->r = calloc(max_res, sizeof(*t->r)))) {
        free(t);
        return kvn_err_set(err, -ENOMEM, "no memory for %u reservations", max_res);
    }
    t->cap = max_res;
    t->max_pages = max_pages;
    for (uint32_t i = 0; i < max_res; i++)
        t->r[i].next_free = i + 1;
    *out = t;
    return 0;
}

static void res_free_arrays(struct res *r)
{
    free(r->tokens);
    free(r->pages);
    free(r->landed_bits);
    r->tokens = NULL;
    r->pages = NULL;
    r->landed_bits = NULL;
}

void kvn_push_destroy(struct kvn_push_table *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->r[i].used)
            res_free_arrays(&t->r[i]);
    free(t->r);
    free(t);
}

int kvn_push_reserve(struct kvn_push_table *t, const int32_t *tokens, uint32_t n_tokens,
                     const uint32_t *pages, uint32_t n_pages, uint64_t deadline_ms,
                     uint64_t *handle, struct kvn_err *err)
{
    if (!t || !tokens || !pages || !handle)
        return kvn_err_set(err, -EINVAL, "table, tokens, pages and handle must not be NULL");
    if (n_pages == 0)
        return kvn_err_set(err, -EINVAL, "a reservation needs at least one page");
    if (n_tokens < n_pages)
        return kvn_err_set(err, -EINVAL, "%u tokens cannot fill %u pages", n_tokens, n_pages);
    if (t->free_head >= t->cap)
        return kvn_err_set(err, -ENOSPC, "%u reservations open (max)", t->cap);
    if (n_pages > t->max_pages - t->st.pages_reserved)
        return kvn_err_set(err, -ENOSPC, "%u pages would exceed the %u reserved pages allowed",
                           n_pages, t->max_pages);
    uint32_t words = (n_pages + 63) / 64;
    struct res nr = {0};
    nr.tokens = malloc(sizeof(int32_t) * n_tokens);
    nr.pages = malloc(sizeof(uint32_t) * n_pages);
    nr.landed_bits = calloc(words, sizeof(uint64_t));
    if (!nr.tokens || !nr.pages || !nr.landed_bits) {
        res_free_arrays(&nr);
        return kvn_err_set(err, -ENOMEM, "no memory for a reservation of %u pages", n_pages);
    }
    memcpy(nr.pages, pages, sizeof(uint32_t) * n_pages);
    /* a page listed twice would be written by two sequence pages: refuse (sort a copy) */
    for (uint32_t i = 0; i < n_pages; i++) {
        uint32_t v = nr.pages[i], j = i;
        while (j > 0 && nr.pages[j - 1] > v) {
            nr.pages[j] = nr.pages[j - 1];
            j--;
        }
        nr.pages[j] = v;
        if (j > 0 && nr.pages[j - 1] == v) {
            res_free_arrays(&nr);
            return kvn_err_set(err, -EINVAL, "page %u is listed twice", v);
        }
    }
    memcpy(nr.pages, pages, sizeof(uint32_t) * n_pages);
    memcpy(nr.tokens, tokens, sizeof(int32_t) * n_tokens);
    uint32_t i = t->free_head;
    struct res *r = &t->r[i];
    t->free_head = r->next_free;
    uint32_t gen = r->gen + 1;
    if (gen == 0)
        gen = 1;
    nr.gen = gen;
    nr.used = true;
    nr.n_tokens = n_tokens;
    nr.n_pages = n_pages;
    nr.deadline_ms = deadline_ms;
    nr.handle = ((uint64_t)gen << 32) | i;
    *r = nr;
    t->st.active++;
    t->st.pages_reserved += n_pages;
    t->st.reserved++;
    *handle = r->handle;
    return 0;
}

static int find(struct kvn_push_table *t, uint64_t handle, struct res **out, struct kvn_err *err)
{
    uint32_t i = (uint32_t)handle;
    uint32_t gen = (uint32_t)(handle >> 32);
    if (i < t->cap && t->r[i].used && t->r[i].handle == handle) {
        *out = &t->r[i];
        return 0;
    }
    t->st.refused_late++;
    if (i < t->cap && !t->r[i].used && t->r[i].gen == gen && gen != 0) {
        static const char *const how[] = {"", "completed", "aborted", "expired"};
        return kvn_err_set(err, -ENOENT, "reservation %" PRIu64 " was already %s", handle,
                           how[t->r[i].last_end]);
    }
    return kvn_err_set(err, -ENOENT, "no reservation with handle %" PRIu64, handle);
}

static bool bit(const struct res *r, uint32_t k)
{
    return (r->landed_bits[k / 64] >> (k % 64)) & 1u;
}

int kvn_push_land(struct kvn_push_table *t, uint64_t handle, const uint32_t *idx, uint32_t n,
                  bool *complete, struct kvn_err *err)
{
    if (!t || !idx || n == 0)
        return kvn_err_set(err, -EINVAL, "table and a non-empty index list are required");
    struct res *r;
    int rc = find(t, handle, &r, err);
    if (rc < 0)
        return rc;
    /* validate and mark in one pass; a refusal unmarks what this call marked */
    for (uint32_t i = 0; i < n; i++) {
        int bad = 0;
        if (idx[i] >= r->n_pages) {
            t->st.refused_range++;
            bad = kvn_err_set(err, -ERANGE, "landed[%u] = %u is beyond the reservation of %u pages",
                              i, idx[i], r->n_pages);
        } else if (bit(r, idx[i])) {
            t->st.refused_duplicate++;
            bad = kvn_err_set(err, -EALREADY,
                              "page %u of reservation %" PRIu64 " was already reported landed",
                              idx[i], handle);
        }
        if (bad) {
            for (uint32_t k = 0; k < i; k++)
                r->landed_bits[idx[k] / 64] &= ~(1ull << (idx[k] % 64));
            return bad;
        }
        r->landed_bits[idx[i] / 64] |= 1ull << (idx[i] % 64);
    }
    r->landed += n;
    if (complete)
        *complete = r->landed == r->n_pages;
    return 0;
}

int kvn_push_land_all(struct kvn_push_table *t, uint64_t handle, struct kvn_err *err)
{
    if (!t)
        return kvn_err_set(err, -EINVAL, "table is NULL");
    struct res *r;
    int rc = find(t, handle, &r, err);
    if (rc < 0)
        return rc;
    if (r->landed) {
        t->st.refused_duplicate++;
        return kvn_err_set(err, -EALREADY,
                           "%u pages of reservation %" PRIu64 " were already reported landed",
                           r->landed, handle);
    }
    memset(r->landed_bits, 0xff, sizeof(uint64_t) * ((r->n_pages + 63) / 64));
    r->landed = r->n_pages;
    return 0;
}

static void close_res(struct kvn_push_table *t, struct res *r, enum end_kind how,
                      struct kvn_push_view *v)
{
    *v = (struct kvn_push_view){.handle = r->handle,
                                .tokens = r->tokens,
                                .n_tokens = r->n_tokens,
                                .pages = r->pages,
                                .n_pages = r->n_pages,
                                .landed = r->landed};
    free(r->landed_bits);
    r->tokens = NULL;
    r->pages = NULL;
    r->landed_bits = NULL;
    r->used = false;
    r->last_end = how;
    uint32_t i = (uint32_t)(r - t->r);
    r->next_free = t->free_head;
    t->free_head = i;
    t->st.active--;
    t->st.pages_reserved -= v->n_pages;
}

int kvn_push_take(struct kvn_push_table *t, uint64_t handle, bool abort, struct kvn_push_view *out,
                  struct kvn_err *err)
{
    if (!t || !out)
        return kvn_err_set(err, -EINVAL, "table and out must not be NULL");
    struct res *r;
    int rc = find(t, handle, &r, err);
    if (rc < 0)
        return rc;
    if (!abort && r->landed != r->n_pages) {
        t->st.refused_incomplete++;
        return kvn_err_set(err, -EAGAIN,
                           "reservation %" PRIu64 ": %u of %u pages landed, cannot insert yet",
                           handle, r->landed, r->n_pages);
    }
    close_res(t, r, abort ? END_ABORTED : END_COMPLETED, out);
    if (abort)
        t->st.aborted++;
    else
        t->st.completed++;
    return 0;
}

int kvn_push_expire(struct kvn_push_table *t, uint64_t now_ms,
                    void (*fn)(void *ctx, const struct kvn_push_view *v), void *ctx)
{
    if (!t || !fn)
        return -EINVAL;
    int n = 0;
    for (uint32_t i = 0; i < t->cap && t->st.active; i++) {
        struct res *r = &t->r[i];
        if (!r->used || r->deadline_ms > now_ms)
            continue;
        struct kvn_push_view v;
        close_res(t, r, END_EXPIRED, &v);
        t->st.expired++;
        fn(ctx, &v);
        kvn_push_view_free(&v);
        n++;
    }
    return n;
}

void kvn_push_view_free(struct kvn_push_view *v)
{
    if (!v)
        return;
    free(v->tokens);
    free(v->pages);
    v->tokens = NULL;
    v->pages = NULL;
}

void kvn_push_get_stats(const struct kvn_push_table *t, struct kvn_push_stats *out)
{
    if (!out)
        return;
    if (!t) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = t->st;
}

uint64_t kvn_push_next_deadline(const struct kvn_push_table *t)
{
    uint64_t d = UINT64_MAX;
    if (!t)
        return d;
    for (uint32_t i = 0, seen = 0; i < t->cap && seen < t->st.active; i++) {
        if (!t->r[i].used)
            continue;
        seen++;
        if (t->r[i].deadline_ms < d)
            d = t->r[i].deadline_ms;
    }
    return d;
}
