/*
 * test_trace.c - the Mooncake trace reader, token synthesis and the exact
 * hit-rate calculator of bench/trace.c, including every refusal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "bench/trace.h"

static char *write_tmp(const char *text)
{
    char tmpl[] = "/tmp/kvn_trace_XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return strdup(tmpl);
}

static int load_text(const char *text, size_t limit, struct kvn_trace *t, struct kvn_err *err)
{
    char *p = write_tmp(text);
    int rc = kvn_trace_load(t, p, limit, err);
    unlink(p);
    free(p);
    return rc;
}

static void test_load_fields(void **state)
{
    (void)state;
    struct kvn_trace t;
    struct kvn_err err;
    const char *text =
        "{\"timestamp\": 5, \"input_length\": 1000, \"output_length\": 7, \"hash_ids\": [3, 9]}\n"
        "\n"
        "{\"timestamp\": 6, \"input_length\": 512, \"output_length\": 1, \"hash_ids\": [3, 4, "
        "5]}\n";
    assert_int_equal(load_text(text, 0, &t, &err), 0);
    assert_int_equal(t.n_reqs, 2);
    assert_int_equal(t.reqs[0].timestamp_ms, 5);
    assert_int_equal(t.reqs[0].input_length, 1000);
    assert_int_equal(t.reqs[0].output_length, 7);
    assert_int_equal(t.reqs[0].n_blocks, 2);
    assert_int_equal(t.reqs[0].hash_ids[1], 9);
    /* ids beyond input_length carry no tokens and are dropped */
    assert_int_equal(t.reqs[1].n_blocks, 1);
    assert_int_equal(t.reqs[1].hash_ids[0], 3);
    assert_int_equal(t.total_tokens, 1512);
    assert_int_equal(t.max_input_length, 1000);
    kvn_trace_free(&t);
    assert_null(t.reqs);
    kvn_trace_free(NULL);

    /* limit */
    assert_int_equal(load_text(text, 1, &t, &err), 0);
    assert_int_equal(t.n_reqs, 1);
    kvn_trace_free(&t);
}

static void test_load_refusals(void **state)
{
    (void)state;
    struct kvn_trace t;
    struct kvn_err err;
    static const char *bad[] = {
        "not json\n",
        "[1, 2]\n",
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1}\n",
        "{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 1, \"hash_ids\": []}\n",
        "{\"timestamp\": 0, \"input_length\": -5, \"output_length\": 1, \"hash_ids\": [1]}\n",
        "{\"timestamp\": 0, \"input_length\": 1.5, \"output_length\": 1, \"hash_ids\": [1]}\n",
        "{\"timestamp\": 0, \"input_length\": 513, \"output_length\": 1, \"hash_ids\": [1]}\n",
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [\"x\"]}\n",
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [-1]}\n",
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": 4}\n",
        "{\"timestamp\": 0, \"input_length\": 4294967296, \"output_length\": 1, \"hash_ids\": "
        "[1]}\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&t, 0x5a, sizeof(t));
        struct kvn_trace before = t;
        kvn_err_clear(&err);
        assert_int_equal(load_text(bad[i], 0, &t, &err), -EINVAL);
        assert_int_equal(err.code, -EINVAL);
        assert_non_null(strstr(err.msg, "line 1"));
        assert_memory_equal(&t, &before, sizeof(t)); /* refused: untouched */
    }
    /* the line number names the bad line, not the first one */
    assert_int_equal(load_text("{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, "
                               "\"hash_ids\": [1]}\n{\n",
                               0, &t, &err),
                     -EINVAL);
    assert_non_null(strstr(err.msg, "line 2"));

    assert_int_equal(kvn_trace_load(&t, "/nonexistent/kvn/trace.jsonl", 0, &err), -ENOENT);
    assert_int_equal(err.code, -ENOENT);
    assert_int_equal(kvn_trace_load(NULL, "/dev/null", 0, &err), -EINVAL);
    assert_int_equal(kvn_trace_load(&t, NULL, 0, &err), -EINVAL);
    assert_int_equal(kvn_trace_load(&t, NULL, 0, NULL), -EINVAL);

    /* an empty file is an empty trace */
    assert_int_equal(kvn_trace_load(&t, "/dev/null", 0, &err), 0);
    assert_int_equal(t.n_reqs, 0);
    kvn_trace_free(&t);
}

static void test_tokens(void **state)
{
    (void)state;
    uint64_t ids[3] = {7, 8, 7};
    struct kvn_trace_req r = {.input_length = 1100, .n_blocks = 3, .hash_ids = ids};
    int32_t *tok = calloc(1100, sizeof(*tok));
    struct kvn_err err;
    assert_int_equal(kvn_trace_tokens(&r, tok, 1100, &err), 0);
    for (uint32_t i = 0; i < 1100; i++) {
        assert_true(tok[i] >= 0);
        assert_int_equal(tok[i], kvn_trace_block_token(ids[i / 512], i % 512));
    }
    /* the same id gives the same tokens wherever it appears */
    assert_memory_equal(tok, tok + 1024, 76 * sizeof(*tok));
    /* different ids give different tokens; tokens inside a block vary */
    assert_memory_not_equal(tok, tok + 512, 512 * sizeof(*tok));
    assert_int_not_equal(tok[0], tok[1]);

    int32_t guard = 12345;
    assert_int_equal(kvn_trace_tokens(&r, &guard, 1101, &err), -EINVAL);
    assert_int_equal(guard, 12345);
    assert_int_equal(kvn_trace_tokens(NULL, tok, 1, &err), -EINVAL);
    assert_int_equal(kvn_trace_tokens(&r, NULL, 1, &err), -EINVAL);
    assert_int_equal(kvn_trace_tokens(&r, &guard, 0, &err), 0);
    free(tok);
}

static void test_exact_hits(void **state)
{
    (void)state;
    struct kvn_trace t;
    struct kvn_err err;
    /*
     * r0: [1 2 3'] 1000 tokens, 3' partial (488)
     * r1: [1 2 3'] same: full rule hits 1024, partial rule hits 1000
     * r2: [1 5]  600 tokens: hits 512 under both rules
     * r3: [9 2] 1024 tokens: 9 unseen, so 2 does not count
     */
    const char *text =
        "{\"timestamp\":0,\"input_length\":1000,\"output_length\":1,\"hash_ids\":[1,2]}\n"
        "{\"timestamp\":0,\"input_length\":1000,\"output_length\":1,\"hash_ids\":[1,2]}\n"
        "{\"timestamp\":0,\"input_length\":600,\"output_length\":1,\"hash_ids\":[1,5]}\n"
        "{\"timestamp\":0,\"input_length\":1024,\"output_length\":1,\"hash_ids\":[9,2]}\n";
    assert_int_equal(load_text(text, 0, &t, &err), 0);
    uint64_t hit = 99, total = 99;
    assert_int_equal(kvn_trace_exact_hits(&t, 0, KVN_TRACE_HIT_FULL_BLOCKS, &hit, &total, &err), 0);
    assert_int_equal(total, 3624);
    assert_int_equal(hit, 512 + 512);
    assert_int_equal(kvn_trace_exact_hits(&t, 0, KVN_TRACE_HIT_PARTIAL_LAST, &hit, &total, &err),
                     0);
    assert_int_equal(hit, 1000 + 512);
    assert_int_equal(kvn_trace_exact_hits(&t, 2, KVN_TRACE_HIT_PARTIAL_LAST, &hit, &total, &err),
                     0);
    assert_int_equal(hit, 1000);
    assert_int_equal(total, 2000);

    hit = total = 42;
    assert_int_equal(kvn_trace_exact_hits(&t, 5, KVN_TRACE_HIT_FULL_BLOCKS, &hit, &total, &err),
                     -EINVAL);
    assert_int_equal(kvn_trace_exact_hits(&t, 0, (enum kvn_trace_hit_rule)7, &hit, &total, &err),
                     -EINVAL);
    assert_int_equal(kvn_trace_exact_hits(NULL, 0, KVN_TRACE_HIT_FULL_BLOCKS, &hit, &total, &err),
                     -EINVAL);
    assert_int_equal(kvn_trace_exact_hits(&t, 0, KVN_TRACE_HIT_FULL_BLOCKS, NULL, &total, &err),
                     -EINVAL);
    assert_int_equal(hit, 42);
    assert_int_equal(total, 42);
    kvn_trace_free(&t);
}

/* The figure shared/README.md quotes, when the shared trace is present. */
static void test_shared_trace_figure(void **state)
{
    (void)state;
    const char *path = getenv("KVN_TRACE");
    if (!path || access(path, R_OK) != 0) {
        printf("shared trace not readable (KVN_TRACE=%s): skipped\n", path ? path : "unset");
        skip();
    }
    struct kvn_trace t;
    struct kvn_err err;
    assert_int_equal(kvn_trace_load(&t, path, 0, &err), 0);
    assert_int_equal(t.n_reqs, 12031);
    uint64_t hit, total;
    assert_int_equal(kvn_trace_exact_hits(&t, 0, KVN_TRACE_HIT_PARTIAL_LAST, &hit, &total, &err),
                     0);
    assert_int_equal(total, 144793823ull);
    assert_int_equal(hit, 54098411ull);
    assert_int_equal(kvn_trace_exact_hits(&t, 0, KVN_TRACE_HIT_FULL_BLOCKS, &hit, &total, &err), 0);
    assert_int_equal(hit, 54063104ull);
    kvn_trace_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_fields),
        cmocka_unit_test(test_load_refusals),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_exact_hits),
        cmocka_unit_test(test_shared_trace_figure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
