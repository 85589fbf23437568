/*
 * test_page_alloc.c - the page-index allocator: O(1) get/take/put, accounting
 * (free + used == capacity, no index handed out twice), double-free and
 * foreign-index detection, all-or-nothing multi-page calls.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache/page_alloc.h"

static void assert_accounting(const struct kvn_page_alloc *pa)
{
    assert_int_equal(kvn_page_alloc_free_count(pa) + kvn_page_alloc_used_count(pa),
                     kvn_page_alloc_capacity(pa));
    uint32_t used = 0;
    for (uint32_t i = 0; i < kvn_page_alloc_capacity(pa); i++)
        used += kvn_page_alloc_is_used(pa, i);
    assert_int_equal(used, kvn_page_alloc_used_count(pa));
}

static void alloc_get_all_distinct(void **state)
{
    (void)state;
    struct kvn_page_alloc pa;
    assert_int_equal(kvn_page_alloc_init(&pa, 100, NULL), 0);
    assert_int_equal(kvn_page_alloc_capacity(&pa), 100);
    assert_int_equal(kvn_page_alloc_free_count(&pa), 100);
    uint32_t out[100];
    uint8_t seen[100] = {0};
    assert_int_equal(kvn_page_alloc_get(&pa, 60, out, NULL), 0);
    assert_int_equal(kvn_page_alloc_get(&pa, 40, out + 60, NULL), 0);
    for (int i = 0; i < 100; i++) {
        assert_true(out[i] < 100);
        assert_false(seen[out[i]]);
        seen[out[i]] = 1;
    }
    assert_int_equal(out[0], 0); /* documented: fresh allocator pops 0, 1, 2 ... */
    assert_int_equal(out[1], 1);
    assert_int_equal(kvn_page_alloc_free_count(&pa), 0);
    assert_accounting(&pa);
    kvn_page_alloc_fini(&pa);
}

static void alloc_exhaustion_changes_nothing(void **state)
{
    (void)state;
    struct kvn_page_alloc pa;
    struct kvn_err err;
    assert_int_equal(kvn_page_alloc_init(&pa, 8, NULL), 0);
    uint32_t out[16];
    assert_int_equal(kvn_page_alloc_get(&pa, 5, out, NULL), 0);
    assert_int_equal(kvn_page_alloc_get(&pa, 4, out + 5, &err), -ENOSPC);
    assert_int_equal(err.code, -ENOSPC);
    assert_true(strlen(err.msg) > 0);
    assert_int_equal(kvn_page_alloc_free_count(&pa), 3);
    assert_int_equal(kvn_page_alloc_get(&pa, 3, out + 5, NULL), 0);
    assert_int_equal(kvn_page_alloc_get(&pa, 1, out + 8, NULL), -ENOSPC);
    assert_int_equal(kvn_page_alloc_get(&pa, 0, NULL, NULL), 0);
    assert_accounting(&pa);
    kvn_page_alloc_fini(&pa);
}

static void alloc_double_free_detected(void **state)
{
    (void)state;
    struct kvn_page_alloc pa;
    struct kvn_err err;
    assert_int_equal(kvn_page_alloc_init(&pa, 8, NULL), 0);
    uint32_t out[4];
    assert_int_equal(kvn_page_alloc_get(&pa, 4, out, NULL), 0);
    assert_int_equal(kvn_page_alloc_put(&pa, out, 2, NULL), 0);
    assert_int_equal(kvn_page_alloc_free_count(&pa), 6);
    /* out[1] was freed already: the whole call is refused, out[2] stays used */
    uint32_t again[] = {out[2], out[1]};
    assert_int_equal(kvn_page_alloc_put(&pa, again, 2, &err), -EALREADY);
    assert_int_equal(err.code, -EALREADY);
    assert_true(kvn_page_alloc_is_used(&pa, out[2]));
    assert_int_equal(kvn_page_alloc_free_count(&pa), 6);
    /* the same index twice in one call is a double free too */
    uint32_t dup[] = {out[3], out[3]};
    assert_int_equal(kvn_page_alloc_put(&pa, dup, 2, NULL), -EALREADY);
    assert_true(kvn_page_alloc_is_used(&pa, out[3]));
    assert_int_equal(kvn_page_alloc_free_count(&pa), 6);
    /* foreign index */
    uint32_t foreign[] = {out[2], 8};
    assert_int_equal(kvn_page_alloc_put(&pa, foreign, 2, &err), -EINVAL);
    assert_true(kvn_page_alloc_is_used(&pa, out[2]));
    assert_int_equal(kvn_page_alloc_put(&pa, out + 2, 2, NULL), 0);
    assert_int_equal(kvn_page_alloc_free_count(&pa), 8);
    assert_accounting(&pa);
    kvn_page_alloc_fini(&pa);
}

static void alloc_take_specific(void **state)
{
    (void)state;
    struct kvn_page_alloc pa;
    struct kvn_err err;
    assert_int_equal(kvn_page_alloc_init(&pa, 10, NULL), 0);
    uint32_t want[] = {7, 3, 9};
    assert_int_equal(kvn_page_alloc_take(&pa, want, 3, NULL), 0);
    assert_true(kvn_page_alloc_is_used(&pa, 7));
    assert_true(kvn_page_alloc_is_used(&pa, 3));
    assert_true(kvn_page_alloc_is_used(&pa, 9));
    assert_int_equal(kvn_page_alloc_free_count(&pa), 7);
    /* busy index: nothing taken */
    uint32_t busy[] = {1, 2, 3};
    assert_int_equal(kvn_page_alloc_take(&pa, busy, 3, &err), -EBUSY);
    assert_false(kvn_page_alloc_is_used(&pa, 1));
    assert_false(kvn_page_alloc_is_used(&pa, 2));
    assert_int_equal(kvn_page_alloc_free_count(&pa), 7);
    /* listed twice: nothing taken */
    uint32_t twice[] = {4, 5, 4};
    assert_int_equal(kvn_page_alloc_take(&pa, twice, 3, NULL), -EBUSY);
    assert_false(kvn_page_alloc_is_used(&pa, 4));
    assert_false(kvn_page_alloc_is_used(&pa, 5));
    /* out of range */
    uint32_t far[] = {0, 10};
    assert_int_equal(kvn_page_alloc_take(&pa, far, 2, NULL), -EINVAL);
    assert_false(kvn_page_alloc_is_used(&pa, 0));
    /* get never returns a taken index */
    uint32_t out[7];
    assert_int_equal(kvn_page_alloc_get(&pa, 7, out, NULL), 0);
    for (int i = 0; i < 7; i++)
        assert_true(out[i] != 7 && out[i] != 3 && out[i] != 9);
    assert_accounting(&pa);
    kvn_page_alloc_reset(&pa);
    assert_int_equal(kvn_page_alloc_free_count(&pa), 10);
    assert_accounting(&pa);
    kvn_page_alloc_fini(&pa);
}

static void alloc_bad_args(void **state)
{
    (void)state;
    struct kvn_err err;
    uint32_t one = 0;
    assert_int_equal(kvn_page_alloc_init(NULL, 4, &err), -EINVAL);
    struct kvn_page_alloc pa;
    assert_int_equal(kvn_page_alloc_init(&pa, UINT32_MAX, &err), -EINVAL);
    assert_int_equal(kvn_page_alloc_capacity(&pa), 0);
    kvn_page_alloc_fini(&pa); /* zeroed on error: fini is safe */
    assert_int_equal(kvn_page_alloc_get(NULL, 1, &one, &err), -EINVAL);
    assert_int_equal(kvn_page_alloc_take(NULL, &one, 1, &err), -EINVAL);
    assert_int_equal(kvn_page_alloc_put(NULL, &one, 1, &err), -EINVAL);
    assert_int_equal(kvn_page_alloc_init(&pa, 0, NULL), 0); /* an absent tier */
    assert_int_equal(kvn_page_alloc_get(&pa, 1, &one, NULL), -ENOSPC);
    assert_int_equal(kvn_page_alloc_take(&pa, &one, 1, NULL), -EINVAL);
    assert_false(kvn_page_alloc_is_used(&pa, 0));
    kvn_page_alloc_fini(&pa);
    assert_int_equal(kvn_page_alloc_init(&pa, 4, NULL), 0);
    assert_int_equal(kvn_page_alloc_get(&pa, 1, NULL, &err), -EINVAL);
    assert_int_equal(kvn_page_alloc_take(&pa, NULL, 1, NULL), -EINVAL);
    assert_int_equal(kvn_page_alloc_put(&pa, NULL, 1, NULL), -EINVAL);
    assert_int_equal(kvn_page_alloc_free_count(&pa), 4);
    kvn_page_alloc_fini(&pa);
    kvn_page_alloc_fini(NULL);
    kvn_page_alloc_reset(NULL);
    assert_int_equal(kvn_page_alloc_free_count(NULL), 0);
    assert_int_equal(kvn_page_alloc_used_count(NULL), 0);
    assert_int_equal(kvn_page_alloc_capacity(NULL), 0);
}

/* A deterministic churn: every index is owned at most once throughout. */
static void alloc_churn(void **state)
{
    (void)state;
    enum { CAP = 257 };
    struct kvn_page_alloc pa;
    assert_int_equal(kvn_page_alloc_init(&pa, CAP, NULL), 0);
    uint32_t held[CAP];
    uint8_t mine[CAP] = {0};
    uint32_t n = 0, x = 12345;
    for (int step = 0; step < 20000; step++) {
        x = x * 1103515245u + 12345u;
        uint32_t r = (x >> 8) % 3;
        if (r < 2 && n < CAP) {
            uint32_t k = 1 + (x >> 16) % 4;
            if (k > CAP - n)
                k = CAP - n;
            assert_int_equal(kvn_page_alloc_get(&pa, k, held + n, NULL), 0);
            for (uint32_t i = 0; i < k; i++) {
                assert_false(mine[held[n + i]]);
                mine[held[n + i]] = 1;
            }
            n += k;
        } else if (n > 0) {
            uint32_t i = (x >> 12) % n;
            assert_int_equal(kvn_page_alloc_put(&pa, &held[i], 1, NULL), 0);
            mine[held[i]] = 0;
            held[i] = held[--n];
        }
        assert_int_equal(kvn_page_alloc_used_count(&pa), n);
    }
    assert_accounting(&pa);
    kvn_page_alloc_fini(&pa);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(alloc_get_all_distinct),
        cmocka_unit_test(alloc_exhaustion_changes_nothing),
        cmocka_unit_test(alloc_double_free_detected),
        cmocka_unit_test(alloc_take_specific),
        cmocka_unit_test(alloc_bad_args),
        cmocka_unit_test(alloc_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
