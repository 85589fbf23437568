/* test_host_pool.c - the L2 host pool and the L3 storage files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/host_pool.h"
#include "node/storage.h"

static void test_pool(void **state)
{
    (void)state;
    struct kvn_host_pool *p = NULL;
    struct kvn_err e;
    assert_int_equal(kvn_host_pool_create(&p, 10 * 4096 + 100, 4096, true, -1, &e), 0);
    assert_int_equal(p->n_pages, 10);
    assert_int_equal(kvn_host_pool_bytes(p), 10 * 4096);
    assert_true(p->map_bytes >= 10 * 4096);
    assert_true(strlen(p->note) > 0);
    uint8_t *a = kvn_host_pool_page(p, 0), *b = kvn_host_pool_page(p, 9);
    assert_non_null(a);
    assert_ptr_equal(b, a + 9 * 4096);
    memset(a, 0xab, 10 * 4096); /* the whole usable range is writable */
    assert_null(kvn_host_pool_page(p, 10));
    assert_null(kvn_host_pool_page(NULL, 0));
    kvn_host_pool_destroy(p);
    kvn_host_pool_destroy(NULL);
    /* regular pages only */
    assert_int_equal(kvn_host_pool_create(&p, 3 * 1000, 1000, false, -1, &e), 0);
    assert_false(p->huge);
    assert_int_equal(p->n_pages, 3);
    kvn_host_pool_destroy(p);
    /* NUMA node 0 exists on every Linux box with sysfs; binding may be skipped */
    if (access("/sys/devices/system/node/node0", F_OK) == 0) {
        assert_int_equal(kvn_host_pool_create(&p, 8192, 4096, false, 0, &e), 0);
        kvn_host_pool_destroy(p);
    }
}

static void test_pool_errors(void **state)
{
    (void)state;
    struct kvn_host_pool *p = (void *)0x1;
    struct kvn_err e;
    assert_int_equal(kvn_host_pool_create(NULL, 4096, 4096, false, -1, &e), -EINVAL);
    assert_int_equal(kvn_host_pool_create(&p, 4096, 0, false, -1, &e), -EINVAL);
    assert_int_equal(kvn_host_pool_create(&p, 100, 4096, false, -1, &e), -EINVAL);
    assert_int_equal(kvn_host_pool_create(&p, 1ull << 40, 1, false, -1, &e), -EINVAL);
    assert_int_equal(kvn_host_pool_create(&p, 8192, 4096, false, 1023, &e), -EINVAL);
    assert_int_equal(kvn_host_pool_create(&p, 8192, 4096, false, -7, &e), -EINVAL);
    assert_ptr_equal(p, (void *)0x1); /* untouched */
}

static void test_storage(void **state)
{
    (void)state;
    char dir[] = "/tmp/kvn_storage_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[64];
    snprintf(sub, sizeof(sub), "%s/l3", dir);
    struct kvn_host_pool *p;
    struct kvn_err e;
    assert_int_equal(kvn_host_pool_create(&p, 4 * 256, 256, false, -1, &e), 0);
    for (int i = 0; i < 4; i++)
        memset(kvn_host_pool_page(p, (uint32_t)i), 'a' + i, 256);
    struct kvn_storage *s;
    assert_int_equal(kvn_storage_open(sub, p, true, &s, &e), 0);
    int32_t toks[] = {1, 2, 3, 4};
    int64_t hashes[] = {-5, 77};
    uint32_t pages[] = {2, 3};
    struct kvn_storage_fragment f = {.ns = 0,
                                     .node_id = 1,
                                     .page_size = 2,
                                     .n_pages = 2,
                                     .tokens = toks,
                                     .hashes = hashes,
                                     .l2_pages = pages,
                                     .has_parent = false};
    assert_int_equal(kvn_storage_backup(s, &f, &e), 0);
    int32_t got[2];
    uint8_t buf[256], want[256];
    assert_int_equal(kvn_storage_read(s, 0, 77, got, 2, buf, 256, &e), 0);
    assert_int_equal(got[0], 3);
    assert_int_equal(got[1], 4);
    memset(want, 'd', 256);
    assert_memory_equal(buf, want, 256);
    assert_int_equal(kvn_storage_read(s, 0, -5, got, 2, buf, 256, &e), 0);
    memset(want, 'c', 256);
    assert_memory_equal(buf, want, 256);
    assert_int_equal(kvn_storage_read(s, 0, 12345, got, 2, buf, 256, &e), -ENOENT);
    assert_int_equal(kvn_storage_read(s, 0, 77, got, 3, buf, 256, &e), -EPROTO);
    struct kvn_storage_stats st;
    kvn_storage_get_stats(s, &st);
    assert_int_equal(st.pages_written, 2);
    /* errors: a page outside the pool, empty fragment */
    uint32_t badp[] = {2, 4};
    f.l2_pages = badp;
    assert_int_equal(kvn_storage_backup(s, &f, &e), -EINVAL);
    f.l2_pages = pages;
    f.n_pages = 0;
    assert_int_equal(kvn_storage_backup(s, &f, &e), -EINVAL);
    assert_int_equal(kvn_storage_backup(NULL, &f, &e), -EINVAL);
    kvn_storage_close(s);
    assert_int_equal(kvn_storage_open("", p, false, &s, &e), -EINVAL);
    assert_true(kvn_storage_open("/proc/definitely/not", p, false, &s, &e) < 0);
    kvn_host_pool_destroy(p);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool),
        cmocka_unit_test(test_pool_errors),
        cmocka_unit_test(test_storage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
