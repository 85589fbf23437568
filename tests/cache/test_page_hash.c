/*
 * test_page_hash.c - the SHA-256 page chain against every case of
 * ../shared/vectors/page_hashes.json (path from $KVN_VECTORS), chain
 * continuation, and the refusals of kvn_page_hash_chain.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "cache/page_hash.h"

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = 0;
    fclose(f);
    return buf;
}

static void hex(const uint8_t *d, char *out)
{
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

/*
 * cJSON keeps numbers as double, which cannot hold every int64: an event hash
 * is checked exactly against the first 8 bytes of the vector's own sha256 hex,
 * and against the JSON number to double precision.
 */
static int64_t hex_event_hash(const char *hexd)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = hexd[i];
        v = (v << 4) | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return (int64_t)v;
}

static void assert_json_i64(const cJSON *n, int64_t v)
{
    assert_true(cJSON_IsNumber(n));
    assert_true((double)v == n->valuedouble);
}

static int32_t json_token(const cJSON *n)
{
    assert_true(cJSON_IsNumber(n));           /* token ids < 2^32 are exact as double */
    return (int32_t)(uint32_t)n->valuedouble; /* 4294967295 -> -1: same u32 bits */
}

static void golden_vectors(void **state)
{
    (void)state;
    const char *dir = getenv("KVN_VECTORS");
    assert_non_null(dir);
    char path[1024];
    snprintf(path, sizeof(path), "%s/page_hashes.json", dir);
    char *text = read_all(path);
    if (!text)
        fprintf(stderr, "cannot read %s\n", path);
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    assert_true(cJSON_IsArray(cases));
    int n_cases = 0, n_pages_total = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        uint32_t ps = (uint32_t)cJSON_GetObjectItemCaseSensitive(c, "page_size")->valuedouble;
        const cJSON *toks = cJSON_GetObjectItemCaseSensitive(c, "tokens");
        const cJSON *pages = cJSON_GetObjectItemCaseSensitive(c, "pages");
        int nt = cJSON_GetArraySize(toks), np = cJSON_GetArraySize(pages);
        int32_t *tok = calloc((size_t)nt + 1, sizeof(int32_t));
        uint8_t(*dig)[32] = calloc((size_t)np + 1, 32);
        int64_t *eh = calloc((size_t)np + 1, sizeof(int64_t));
        assert_true(tok && dig && eh);
        for (int i = 0; i < nt; i++)
            tok[i] = json_token(cJSON_GetArrayItem(toks, i));
        long got = kvn_page_hash_chain(NULL, tok, (size_t)nt, ps, dig, eh, NULL);
        assert_int_equal(got, np); /* a partial tail is not hashed */
        const uint8_t *prev = NULL;
        for (int i = 0; i < np; i++) {
            const cJSON *p = cJSON_GetArrayItem(pages, i);
            char h[65];
            hex(dig[i], h);
            const char *want = cJSON_GetObjectItemCaseSensitive(p, "sha256")->valuestring;
            if (strcmp(h, want) != 0)
                fprintf(stderr, "%s page %d: %s != %s\n", name, i, h, want);
            assert_string_equal(h, want);
            assert_int_equal(eh[i], hex_event_hash(want));
            assert_json_i64(cJSON_GetObjectItemCaseSensitive(p, "event_hash"), eh[i]);
            assert_int_equal(kvn_page_hash_event(dig[i]), eh[i]);
            const cJSON *par = cJSON_GetObjectItemCaseSensitive(p, "parent_event_hash");
            if (i == 0)
                assert_true(cJSON_IsNull(par));
            else
                assert_json_i64(par, eh[i - 1]);
            /* one page at a time from the stored digest gives the same digest */
            uint8_t one[32];
            kvn_page_hash_one(prev, tok + (size_t)i * ps, ps, one);
            assert_memory_equal(one, dig[i], 32);
            prev = dig[i];
            n_pages_total++;
        }
        /* continuing the chain from page 0's digest equals the whole chain */
        if (np >= 2) {
            int64_t rest[64];
            assert_true(np - 1 <= 64);
            assert_int_equal(
                kvn_page_hash_chain(dig[0], tok + ps, (size_t)nt - ps, ps, NULL, rest, NULL),
                np - 1);
            for (int i = 1; i < np; i++)
                assert_int_equal(rest[i - 1], eh[i]);
        }
        free(tok);
        free(dig);
        free(eh);
        n_cases++;
    }
    printf("checked %d golden cases, %d pages\n", n_cases, n_pages_total);
    assert_int_equal(n_cases, 6);
    cJSON_Delete(root);
    free(text);
}

static void event_hash_is_signed_big_endian(void **state)
{
    (void)state;
    uint8_t d[32] = {0};
    d[0] = 0x80;
    assert_int_equal(kvn_page_hash_event(d), INT64_MIN);
    memset(d, 0, sizeof(d));
    d[7] = 1;
    d[8] = 0xff; /* beyond the first 8 bytes: ignored */
    assert_int_equal(kvn_page_hash_event(d), 1);
    memset(d, 0xff, 8);
    assert_int_equal(kvn_page_hash_event(d), -1);
}

static void chain_refusals(void **state)
{
    (void)state;
    struct kvn_err err;
    int32_t t[4] = {1, 2, 3, 4};
    int64_t h[4] = {0};
    assert_int_equal(kvn_page_hash_chain(NULL, t, 4, 0, NULL, h, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    assert_int_equal(h[0], 0);
    assert_int_equal(kvn_page_hash_chain(NULL, NULL, 4, 2, NULL, h, &err), -EINVAL);
    assert_int_equal(kvn_page_hash_chain(NULL, NULL, 0, 2, NULL, h, &err), 0);
    assert_int_equal(kvn_page_hash_chain(NULL, t, 1, 2, NULL, h, NULL), 0);
    assert_int_equal(h[0], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_vectors),
        cmocka_unit_test(event_hash_is_signed_big_endian),
        cmocka_unit_test(chain_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
