/* test_mem.c - util/kvn_mem: huge-page-friendly mappings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util/kvn_mem.h"

/* THP mode from sysfs: 1 when "always" or "madvise" is selected, 0 when "never" or unknown. */
static int thp_usable(void)
{
    char buf[128] = {0};
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i += 4096)
        if (p[i])
            return 0;
    return 1;
}

static void test_bad_args(void **state)
{
    (void)state;
    struct kvn_err e;
    struct kvn_mem m;
    memset(&m, 0x5a, sizeof(m));
    assert_int_equal(kvn_mem_map(0, false, &m, &e), -EINVAL);
    assert_null(m.base);
    assert_int_equal(m.map_len, 0);
    assert_non_null(strstr(e.msg, "0 bytes"));
    assert_int_equal(kvn_mem_map(1ull << 50, true, &m, &e), -EINVAL);
    assert_null(m.base);
    assert_int_equal(kvn_mem_map(4096, false, NULL, &e), -EINVAL);
    /* the no-op cases */
    kvn_mem_populate(NULL);
    kvn_mem_populate(&m);
    kvn_mem_unmap(NULL);
    kvn_mem_unmap(&m);
    assert_int_equal(kvn_mem_huge_bytes(NULL), 0);
    assert_int_equal(kvn_mem_huge_bytes(&m), 0);
}

/* Below 2 MiB: page granular, zero, writable; not aligned or advised. */
static void test_small(void **state)
{
    (void)state;
    struct kvn_err e;
    struct kvn_mem m;
    assert_int_equal(kvn_mem_map(10000, true, &m, &e), 0);
    assert_non_null(m.base);
    assert_int_equal(m.map_len, 12288);
    assert_int_equal((uintptr_t)m.base % 4096, 0);
    assert_false(m.hugetlb);
    kvn_mem_populate(&m);
    assert_true(all_zero(m.base, m.map_len));
    memset(m.base, 0xcd, m.map_len);
    kvn_mem_unmap(&m);
    assert_null(m.base);
    assert_int_equal(m.map_len, 0);
}

/* 64 MiB: 2 MiB aligned, advised before it is touched, and once populated, backed by
 * transparent huge pages wherever THP is on (the old populate-then-advise order got none). */
static void test_huge(void **state)
{
    (void)state;
    struct kvn_err e;
    struct kvn_mem m;
    size_t len = 64ul << 20;
    assert_int_equal(kvn_mem_map(len + 100, false, &m, &e), 0);
    assert_int_equal((uintptr_t)m.base % KVN_MEM_HUGE, 0);
    assert_int_equal(m.map_len, len + 4096);
    assert_false(m.hugetlb);
    kvn_mem_populate(&m);
    assert_true(all_zero(m.base, m.map_len));
    size_t hb = kvn_mem_huge_bytes(&m);
    print_message("THP usable: %d, huge bytes %zu of %zu, advised %d\n", thp_usable(), hb,
                  m.map_len, (int)m.thp_advised);
    if (thp_usable() && m.thp_advised)
        assert_true(hb >= len / 2); /* most of it: memory pressure may deny a few */
    memset(m.base, 0x11, m.map_len);
    kvn_mem_unmap(&m);
    /* MAP_HUGETLB asked: either reserved huge pages or the same fallback */
    assert_int_equal(kvn_mem_map(len, true, &m, &e), 0);
    assert_int_equal((uintptr_t)m.base % KVN_MEM_HUGE, 0);
    assert_true(m.map_len >= len);
    kvn_mem_populate(&m);
    if (m.hugetlb)
        assert_int_equal(kvn_mem_huge_bytes(&m), m.map_len);
    kvn_mem_unmap(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_small),
        cmocka_unit_test(test_huge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
