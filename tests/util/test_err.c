/* test_err.c - the error convention: codes, messages, NULL tolerance. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "util/kvn_err.h"

static void test_set_returns_code_and_formats(void **state)
{
    (void)state;
    struct kvn_err e;
    kvn_err_clear(&e);
    assert_int_equal(e.code, 0);
    assert_string_equal(e.msg, "");
    assert_int_equal(kvn_err_set(&e, -EINVAL, "page_size %u must be >= 1", 0u), -EINVAL);
    assert_int_equal(e.code, -EINVAL);
    assert_string_equal(e.msg, "page_size 0 must be >= 1");
    assert_string_equal(kvn_err_name(e.code), "EINVAL");
}

static void test_null_err_is_tolerated(void **state)
{
    (void)state;
    assert_int_equal(kvn_err_set(NULL, -ENOMEM, "x"), -ENOMEM);
    kvn_err_clear(NULL);
    assert_string_equal(kvn_err_name(-12345), "E?");
}

static void test_long_message_is_truncated(void **state)
{
    (void)state;
    struct kvn_err e;
    char big[1000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    kvn_err_set(&e, -ERANGE, "%s", big);
    assert_int_equal(strlen(e.msg), KVN_ERR_MSG_MAX - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_returns_code_and_formats),
        cmocka_unit_test(test_null_err_is_tolerated),
        cmocka_unit_test(test_long_message_is_truncated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
