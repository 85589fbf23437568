/*
 * test_leases_push.c - lease table (handles, release, expiry on a test clock, stale handles)
 * and push reservations (landed accounting, out-of-range / duplicate / late / incomplete
 * refusals that change nothing, abort, expiry), with every error path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "node/cluster/lease_table.h"
#include "node/cluster/push_table.h"

struct seen {
    uint64_t nodes[16];
    int n;
};

static void on_expired(void *ctx, const struct kvn_lease_info *info)
{
    struct seen *s = ctx;
    s->nodes[s->n++] = info->node_id;
}

static void test_leases(void **state)
{
    (void)state;
    struct kvn_leases *t;
    struct kvn_err e;
    assert_int_equal(kvn_leases_create(3, &t, NULL), 0);
    uint64_t h1, h2, h3, h4;
    assert_int_equal(kvn_leases_add(t, 11, 2, 100, &h1, NULL), 0);
    assert_int_equal(kvn_leases_add(t, 12, 3, 50, &h2, NULL), 0);
    assert_int_equal(kvn_leases_add(t, 13, 1, 200, &h3, NULL), 0);
    assert_int_equal(kvn_leases_add(t, 14, 1, 200, &h4, &e), -ENOSPC);
    assert_int_equal(kvn_leases_held(t), 3);
    assert_true(kvn_leases_next_expiry(t) == 50);
    struct kvn_lease_info li;
    assert_int_equal(kvn_leases_release(t, h1, &li, NULL), 0);
    assert_true(li.node_id == 11 && li.pages == 2);
    /* double release, and a stale handle whose slot was reused */
    assert_int_equal(kvn_leases_release(t, h1, &li, &e), -ENOENT);
    assert_int_equal(kvn_leases_add(t, 15, 1, 300, &h4, NULL), 0);
    assert_true((uint32_t)h4 == (uint32_t)h1 && h4 != h1);
    assert_int_equal(kvn_leases_release(t, h1, NULL, &e), -ENOENT);
    assert_int_equal(kvn_leases_held(t), 3);
    /* expiry on the caller's clock */
    struct seen s = {0};
    assert_int_equal(kvn_leases_expire(t, 49, on_expired, &s), 0);
    assert_int_equal(kvn_leases_expire(t, 200, on_expired, &s), 2);
    assert_int_equal(s.n, 2);
    assert_true((s.nodes[0] == 12 && s.nodes[1] == 13) || (s.nodes[0] == 13 && s.nodes[1] == 12));
    assert_int_equal(kvn_leases_release(t, h2, NULL, &e), -ENOENT); /* expired */
    assert_int_equal(kvn_leases_held(t), 1);
    assert_int_equal(kvn_leases_expire(t, 1000, NULL, NULL), 1);
    assert_int_equal(kvn_leases_held(t), 0);
    assert_true(kvn_leases_next_expiry(t) == UINT64_MAX);
    /* errors */
    assert_int_equal(kvn_leases_add(t, 0, 1, 1, &h1, &e), -EINVAL);
    assert_int_equal(kvn_leases_add(t, 1, 1, 1, NULL, &e), -EINVAL);
    assert_int_equal(kvn_leases_add(NULL, 1, 1, 1, &h1, &e), -EINVAL);
    assert_int_equal(kvn_leases_release(NULL, 1, NULL, &e), -EINVAL);
    assert_int_equal(kvn_leases_release(t, 0, NULL, &e), -ENOENT);
    assert_int_equal(kvn_leases_release(t, UINT64_MAX, NULL, &e), -ENOENT);
    assert_int_equal(kvn_leases_expire(NULL, 0, NULL, NULL), -EINVAL);
    assert_int_equal(kvn_leases_held(NULL), 0);
    kvn_leases_destroy(t);
    kvn_leases_destroy(NULL);
    assert_int_equal(kvn_leases_create(KVN_LEASES_LIMIT_MAX + 1, &t, &e), -EINVAL);
    assert_int_equal(kvn_leases_create(0, NULL, &e), -EINVAL);
}

static void test_push_complete(void **state)
{
    (void)state;
    struct kvn_push_table *t;
    struct kvn_err e;
    assert_int_equal(kvn_push_create(4, 16, &t, NULL), 0);
    int32_t toks[6] = {1, 2, 3, 4, 5, 6};
    uint32_t pages[3] = {7, 3, 9};
    uint64_t h;
    assert_int_equal(kvn_push_reserve(t, toks, 6, pages, 3, 1000, &h, NULL), 0);
    struct kvn_push_stats st;
    kvn_push_get_stats(t, &st);
    assert_int_equal(st.active, 1);
    assert_int_equal(st.pages_reserved, 3);
    bool complete = true;
    uint32_t i0[] = {0};
    assert_int_equal(kvn_push_land(t, h, i0, 1, &complete, NULL), 0);
    assert_false(complete);
    /* completing early is refused, nothing changes */
    struct kvn_push_view v;
    assert_int_equal(kvn_push_take(t, h, false, &v, &e), -EAGAIN);
    assert_non_null(strstr(e.msg, "1 of 3"));
    /* a push larger than its reservation: refused whole, index 1 not marked */
    uint32_t big[] = {1, 3};
    assert_int_equal(kvn_push_land(t, h, big, 2, &complete, &e), -ERANGE);
    /* duplicate notification of page 0, and a list repeating page 2: refused whole */
    assert_int_equal(kvn_push_land(t, h, i0, 1, &complete, &e), -EALREADY);
    uint32_t rep[] = {2, 2};
    assert_int_equal(kvn_push_land(t, h, rep, 2, &complete, &e), -EALREADY);
    kvn_push_get_stats(t, &st);
    assert_int_equal(st.refused_range, 1);
    assert_int_equal(st.refused_duplicate, 2);
    assert_int_equal(st.refused_incomplete, 1);
    uint32_t rest[] = {2, 1};
    assert_int_equal(kvn_push_land(t, h, rest, 2, &complete, NULL), 0);
    assert_true(complete);
    assert_int_equal(kvn_push_take(t, h, false, &v, NULL), 0);
    assert_int_equal(v.n_pages, 3);
    assert_int_equal(v.landed, 3);
    assert_memory_equal(v.pages, pages, sizeof(pages));
    assert_memory_equal(v.tokens, toks, sizeof(toks));
    kvn_push_view_free(&v);
    /* late and duplicate notifications after completion */
    assert_int_equal(kvn_push_land(t, h, i0, 1, &complete, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "completed"));
    assert_int_equal(kvn_push_take(t, h, false, &v, &e), -ENOENT);
    kvn_push_get_stats(t, &st);
    assert_int_equal(st.active, 0);
    assert_int_equal(st.pages_reserved, 0);
    assert_int_equal(st.completed, 1);
    assert_int_equal(st.refused_late, 2);
    /* land_all */
    assert_int_equal(kvn_push_reserve(t, toks, 6, pages, 3, 1000, &h, NULL), 0);
    assert_int_equal(kvn_push_land_all(t, h, NULL), 0);
    assert_int_equal(kvn_push_land_all(t, h, &e), -EALREADY);
    assert_int_equal(kvn_push_take(t, h, false, &v, NULL), 0);
    kvn_push_view_free(&v);
    kvn_push_destroy(t);
}

struct exp_seen {
    uint32_t pages[8];
    int n_views;
    uint32_t n_pages;
};

static void on_push_expired(void *ctx, const struct kvn_push_view *v)
{
    struct exp_seen *s = ctx;
    for (uint32_t i = 0; i < v->n_pages && s->n_pages < 8; i++)
        s->pages[s->n_pages++] = v->pages[i];
    s->n_views++;
}

static void test_push_abort_expire_errors(void **state)
{
    (void)state;
    struct kvn_push_table *t;
    struct kvn_err e;
    assert_int_equal(kvn_push_create(2, 4, &t, NULL), 0);
    int32_t toks[4] = {1, 2, 3, 4};
    uint32_t p2[2] = {0, 1}, p3[3] = {2, 3, 4}, pd[2] = {5, 5};
    uint64_t h1, h2, h3;
    assert_int_equal(kvn_push_reserve(t, toks, 4, p2, 2, 100, &h1, NULL), 0);
    /* total page bound, duplicate pages, bad args */
    assert_int_equal(kvn_push_reserve(t, toks, 4, p3, 3, 100, &h2, &e), -ENOSPC);
    assert_int_equal(kvn_push_reserve(t, toks, 4, pd, 2, 100, &h2, &e), -EINVAL);
    assert_int_equal(kvn_push_reserve(t, toks, 1, p2, 2, 100, &h2, &e), -EINVAL);
    assert_int_equal(kvn_push_reserve(t, toks, 4, p2, 0, 100, &h2, &e), -EINVAL);
    assert_int_equal(kvn_push_reserve(t, NULL, 4, p2, 2, 100, &h2, &e), -EINVAL);
    assert_int_equal(kvn_push_reserve(NULL, toks, 4, p2, 2, 100, &h2, &e), -EINVAL);
    struct kvn_push_stats st;
    kvn_push_get_stats(t, &st);
    assert_int_equal(st.active, 1);
    assert_int_equal(st.reserved, 1);
    uint32_t p1[1] = {7};
    assert_int_equal(kvn_push_reserve(t, toks, 2, p1, 1, 50, &h2, NULL), 0);
    assert_int_equal(kvn_push_reserve(t, toks, 2, p1, 1, 50, &h3, &e), -ENOSPC); /* slots */
    assert_true(kvn_push_next_deadline(t) == 50);
    /* abort hands the pages back even though nothing landed */
    struct kvn_push_view v;
    assert_int_equal(kvn_push_take(t, h1, true, &v, NULL), 0);
    assert_int_equal(v.landed, 0);
    assert_int_equal(v.n_pages, 2);
    kvn_push_view_free(&v);
    uint32_t i0[] = {0};
    assert_int_equal(kvn_push_land(t, h1, i0, 1, NULL, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "aborted"));
    /* expiry on the caller's clock */
    struct exp_seen s = {0};
    assert_int_equal(kvn_push_expire(t, 49, on_push_expired, &s), 0);
    assert_int_equal(kvn_push_expire(t, 50, on_push_expired, &s), 1);
    assert_int_equal(s.n_views, 1);
    assert_int_equal(s.pages[0], 7);
    assert_int_equal(kvn_push_land(t, h2, i0, 1, NULL, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "expired"));
    kvn_push_get_stats(t, &st);
    assert_int_equal(st.active, 0);
    assert_int_equal(st.aborted, 1);
    assert_int_equal(st.expired, 1);
    assert_true(kvn_push_next_deadline(t) == UINT64_MAX);
    /* errors on the rest */
    assert_int_equal(kvn_push_land(NULL, h1, i0, 1, NULL, &e), -EINVAL);
    assert_int_equal(kvn_push_land(t, h1, NULL, 1, NULL, &e), -EINVAL);
    assert_int_equal(kvn_push_land(t, h1, i0, 0, NULL, &e), -EINVAL);
    assert_int_equal(kvn_push_land(t, 12345, i0, 1, NULL, &e), -ENOENT);
    assert_int_equal(kvn_push_land_all(NULL, h1, &e), -EINVAL);
    assert_int_equal(kvn_push_take(NULL, h1, false, &v, &e), -EINVAL);
    assert_int_equal(kvn_push_take(t, h1, false, NULL, &e), -EINVAL);
    assert_int_equal(kvn_push_expire(NULL, 0, on_push_expired, &s), -EINVAL);
    assert_int_equal(kvn_push_expire(t, 0, NULL, &s), -EINVAL);
    kvn_push_get_stats(NULL, &st);
    assert_int_equal(st.active, 0);
    kvn_push_view_free(NULL);
    /* destroy with an open reservation frees its arrays (ASan checks) */
    assert_int_equal(kvn_push_reserve(t, toks, 4, p2, 2, 100, &h1, NULL), 0);
    kvn_push_destroy(t);
    kvn_push_destroy(NULL);
    assert_int_equal(kvn_push_create(0, 0, NULL, &e), -EINVAL);
    assert_int_equal(kvn_push_create((1u << 20) + 1, 0, &t, &e), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leases),
        cmocka_unit_test(test_push_complete),
        cmocka_unit_test(test_push_abort_expire_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
