/*
 * test_codec.c - KV-event batch codec: golden bytes (array and map form, from
 * ../shared/vectors), smallest integer forms, roundtrips, strict decoding of truncated,
 * corrupted and malformed payloads, and every error path of the encoder.
 *
 * KVN_SHARED (set by meson) points at the shared/ folder with the golden vectors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "node/events/event_codec.h"

static const int64_t HA = 3817746824117602890LL;
static const int64_t HB = -4216701448867210342LL;
static const int64_t HC = -429401898661349585LL;
static const double TS = 1700000000.25;

/* Reads ../shared/vectors/<name> (hex text) into bytes. */
static uint8_t *load_hex(const char *name, size_t *n)
{
    const char *dir = getenv("KVN_SHARED");
    char path[1024];
    snprintf(path, sizeof(path), "%s/vectors/%s", dir ? dir : "../shared", name);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char text[1 << 16];
    size_t tl = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[tl] = 0;
    while (tl && (text[tl - 1] == '\n' || text[tl - 1] == '\r'))
        text[--tl] = 0;
    assert_int_equal(tl % 2, 0);
    uint8_t *out = malloc(tl / 2);
    assert_non_null(out);
    for (size_t i = 0; i < tl / 2; i++) {
        unsigned v;
        assert_int_equal(sscanf(text + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    *n = tl / 2;
    return out;
}

/* The split-while-pending stream of make_vectors.py. */
static void add_golden_events(struct kvn_events_batch *b)
{
    static const int32_t t12[] = {1, 2}, t34[] = {3, 4}, t56[] = {5, 6};
    struct kvn_kv_event ev;
    struct {
        int64_t h;
        bool has_parent;
        const int32_t *t;
        enum kvn_medium m;
    } stored[] = {
        {HA, false, t12, KVN_MEDIUM_GPU},        {HB, true, t34, KVN_MEDIUM_GPU},
        {HA, false, t12, KVN_MEDIUM_CPU_PINNED}, {HB, true, t34, KVN_MEDIUM_CPU_PINNED},
        {HC, true, t56, KVN_MEDIUM_GPU},
    };
    for (size_t i = 0; i < 5; i++) {
        memset(&ev, 0, sizeof(ev));
        ev.type = KVN_EV_BLOCK_STORED;
        ev.medium = stored[i].m;
        ev.hashes = &stored[i].h;
        ev.n_hashes = 1;
        ev.has_parent = stored[i].has_parent;
        ev.parent_hash = HA;
        ev.tokens = stored[i].t;
        ev.n_tokens = 2;
        ev.block_size = 2;
        assert_int_equal(kvn_events_batch_add(b, &ev, NULL), 0);
    }
    memset(&ev, 0, sizeof(ev));
    ev.type = KVN_EV_BLOCK_REMOVED;
    ev.medium = KVN_MEDIUM_GPU;
    ev.hashes = &HB;
    ev.n_hashes = 1;
    assert_int_equal(kvn_events_batch_add(b, &ev, NULL), 0);
    memset(&ev, 0, sizeof(ev));
    ev.type = KVN_EV_ALL_BLOCKS_CLEARED;
    assert_int_equal(kvn_events_batch_add(b, &ev, NULL), 0);
}

static void golden(enum kvn_events_format fmt, const char *file)
{
    size_t n;
    uint8_t *want = load_hex(file, &n);
    struct kvn_events_batch b;
    assert_int_equal(kvn_events_batch_init(&b, fmt, 32, NULL), 0); /* forces growth */
    add_golden_events(&b);
    assert_int_equal(kvn_events_batch_count(&b), 7);
    const uint8_t *p;
    size_t len;
    assert_int_equal(kvn_events_batch_finish(&b, TS, 0, &p, &len, NULL), 0);
    assert_int_equal(len, n);
    assert_memory_equal(p, want, n);
    /* finish() is repeatable and reset() + refill gives the same bytes again. */
    assert_int_equal(kvn_events_batch_finish(&b, TS, 0, &p, &len, NULL), 0);
    assert_memory_equal(p, want, n);
    kvn_events_batch_reset(&b);
    assert_int_equal(kvn_events_batch_count(&b), 0);
    add_golden_events(&b);
    assert_int_equal(kvn_events_batch_finish(&b, TS, 0, &p, &len, NULL), 0);
    assert_int_equal(len, n);
    assert_memory_equal(p, want, n);
    kvn_events_batch_fini(&b);
    free(want);
}

static void test_golden_array(void **state)
{
    (void)state;
    golden(KVN_EVENTS_FORMAT_ARRAY, "events_array.hex");
}

static void test_golden_map(void **state)
{
    (void)state;
    golden(KVN_EVENTS_FORMAT_MAP, "events_map.hex");
}

/* Records what the decoder visits. */
struct seen {
    int n;
    struct kvn_kv_event ev[16];
    int64_t h[16][4];
    int32_t t[16][8];
    int stop_at;
};

static int record(void *ctx, const struct kvn_kv_event *ev)
{
    struct seen *s = ctx;
    if (s->stop_at >= 0 && s->n == s->stop_at)
        return -ECANCELED;
    assert_true(s->n < 16);
    s->ev[s->n] = *ev;
    assert_true(ev->n_hashes <= 4 && ev->n_tokens <= 8);
    memcpy(s->h[s->n], ev->hashes, ev->n_hashes * sizeof(int64_t));
    if (ev->n_tokens)
        memcpy(s->t[s->n], ev->tokens, ev->n_tokens * sizeof(int32_t));
    s->n++;
    return 0;
}

static void decode_golden(const char *file)
{
    size_t n;
    uint8_t *p = load_hex(file, &n);
    struct kvn_events_decoder d;
    assert_int_equal(kvn_events_decoder_init(&d, NULL), 0);
    struct seen s = {.stop_at = -1};
    struct kvn_events_batch_info bi;
    assert_int_equal(kvn_events_decode(&d, p, n, record, &s, &bi, NULL), 0);
    assert_true(bi.ts == TS);
    assert_int_equal(bi.dp_rank, 0);
    assert_int_equal(bi.n_events, 7);
    assert_int_equal(s.n, 7);
    assert_int_equal(s.ev[0].type, KVN_EV_BLOCK_STORED);
    assert_int_equal(s.h[0][0], HA);
    assert_false(s.ev[0].has_parent);
    assert_int_equal(s.ev[0].block_size, 2);
    assert_int_equal(s.t[0][0], 1);
    assert_int_equal(s.t[0][1], 2);
    assert_false(s.ev[0].has_lora_id);
    assert_int_equal(s.ev[0].medium, KVN_MEDIUM_GPU);
    assert_int_equal(s.h[1][0], HB);
    assert_true(s.ev[1].has_parent);
    assert_int_equal(s.ev[1].parent_hash, HA);
    assert_int_equal(s.ev[2].medium, KVN_MEDIUM_CPU_PINNED);
    assert_int_equal(s.h[4][0], HC);
    assert_int_equal(s.t[4][1], 6);
    assert_int_equal(s.ev[5].type, KVN_EV_BLOCK_REMOVED);
    assert_int_equal(s.h[5][0], HB);
    assert_int_equal(s.ev[5].n_hashes, 1);
    assert_int_equal(s.ev[6].type, KVN_EV_ALL_BLOCKS_CLEARED);
    kvn_events_decoder_fini(&d);
    free(p);
}

static void test_decode_golden(void **state)
{
    (void)state;
    decode_golden("events_array.hex");
    decode_golden("events_map.hex");
}

/* Encodes one REMOVED event with the given hashes and returns the bytes after the tag. */
static size_t encode_hashes(const int64_t *h, uint32_t n, uint8_t *out, size_t cap)
{
    struct kvn_events_batch b;
    assert_int_equal(kvn_events_batch_init(&b, KVN_EVENTS_FORMAT_ARRAY, 0, NULL), 0);
    struct kvn_kv_event ev = {
        .type = KVN_EV_BLOCK_REMOVED, .medium = KVN_MEDIUM_DISK, .hashes = h, .n_hashes = n};
    assert_int_equal(kvn_events_batch_add(&b, &ev, NULL), 0);
    const uint8_t *p;
    size_t len;
    assert_int_equal(kvn_events_batch_finish(&b, 0.0, 0, &p, &len, NULL), 0);
    /* 93 cb <8> 91 | 93 ac "BlockRemoved" | hashes... | a4 "DISK" | 00 */
    size_t skip = 1 + 9 + 1 + 1 + 13;
    size_t tail = 5 + 1;
    assert_true(len > skip + tail && len - skip - tail <= cap);
    memcpy(out, p + skip, len - skip - tail);
    kvn_events_batch_fini(&b);
    return len - skip - tail;
}

static void test_smallest_int_forms(void **state)
{
    (void)state;
    struct {
        int64_t v;
        const char *hex;
    } cases[] = {
        {0, "00"},
        {127, "7f"},
        {128, "cc80"},
        {255, "ccff"},
        {256, "cd0100"},
        {65535, "cdffff"},
        {65536, "ce00010000"},
        {4294967295LL, "ceffffffff"},
        {4294967296LL, "cf0000000100000000"},
        {INT64_MAX, "cf7fffffffffffffff"},
        {-1, "ff"},
        {-32, "e0"},
        {-33, "d0df"},
        {-128, "d080"},
        {-129, "d1ff7f"},
        {-32768, "d18000"},
        {-32769, "d2ffff7fff"},
        {INT32_MIN, "d280000000"},
        {(int64_t)INT32_MIN - 1, "d3ffffffff7fffffff"},
        {INT64_MIN, "d38000000000000000"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t out[64];
        size_t n = encode_hashes(&cases[i].v, 1, out, sizeof(out));
        char hex[130] = "";
        for (size_t j = 0; j < n; j++)
            sprintf(hex + 2 * j, "%02x", out[j]);
        char want[130];
        snprintf(want, sizeof(want), "91%s", cases[i].hex);
        assert_string_equal(hex, want);
    }
    /* Array headers: fixarray up to 15, array16 up to 65535, array32 beyond. */
    static int64_t many[70000];
    static uint8_t big[70000 * 9 + 16];
    size_t n = encode_hashes(many, 15, big, sizeof(big));
    assert_int_equal(n, 16);
    assert_int_equal(big[0], 0x9f);
    n = encode_hashes(many, 16, big, sizeof(big));
    assert_int_equal(n, 3 + 16);
    assert_memory_equal(big, "\xdc\x00\x10", 3);
    n = encode_hashes(many, 65536, big, sizeof(big));
    assert_int_equal(n, 5 + 65536);
    assert_memory_equal(big, "\xdd\x00\x01\x00\x00", 5);
}

/* Deterministic xorshift so that failures replay. */
static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int64_t rand_int(void)
{
    /* Spread over all encodings: pick a width, then a sign. */
    int w = (int)(next_rand() % 9);
    uint64_t v = next_rand();
    if (w < 8)
        v &= (1ULL << (8 * w)) - 1;
    return (next_rand() & 1) ? (int64_t)v : -(int64_t)(v >> 1);
}

struct rt_event {
    struct kvn_kv_event ev;
    int64_t h[4];
    int32_t t[8];
};

static void random_event(struct rt_event *e)
{
    memset(e, 0, sizeof(*e));
    e->ev.type = (enum kvn_kv_event_type)(next_rand() % 3);
    e->ev.medium = (enum kvn_medium)(next_rand() % 3);
    e->ev.n_hashes = 1 + (uint32_t)(next_rand() % 4);
    for (uint32_t i = 0; i < e->ev.n_hashes; i++)
        e->h[i] = rand_int();
    e->ev.hashes = e->h;
    if (e->ev.type == KVN_EV_BLOCK_STORED) {
        e->ev.n_hashes = 1 + (uint32_t)(next_rand() % 2);
        e->ev.block_size = 1 + (uint32_t)(next_rand() % 4);
        e->ev.n_tokens = e->ev.block_size * e->ev.n_hashes;
        for (uint32_t i = 0; i < e->ev.n_tokens; i++)
            e->t[i] = (int32_t)(uint32_t)next_rand();
        e->ev.tokens = e->t;
        e->ev.has_parent = next_rand() & 1;
        e->ev.parent_hash = e->ev.has_parent ? rand_int() : 0;
        e->ev.has_lora_id = next_rand() & 1;
        e->ev.lora_id = e->ev.has_lora_id ? rand_int() : 0;
    }
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct kvn_events_decoder d;
    assert_int_equal(kvn_events_decoder_init(&d, NULL), 0);
    for (int fmt = 0; fmt < 2; fmt++) {
        for (int round = 0; round < 200; round++) {
            struct kvn_events_batch b;
            assert_int_equal(kvn_events_batch_init(&b, (enum kvn_events_format)fmt, 0, NULL), 0);
            struct rt_event evs[16];
            int n = (int)(next_rand() % 17);
            for (int i = 0; i < n && i < 16; i++) {
                random_event(&evs[i]);
                assert_int_equal(kvn_events_batch_add(&b, &evs[i].ev, NULL), 0);
            }
            if (n > 16)
                n = 16;
            int64_t rank = rand_int();
            double ts = (double)(next_rand() % 1000000) / 7.0;
            const uint8_t *p;
            size_t len;
            assert_int_equal(kvn_events_batch_finish(&b, ts, rank, &p, &len, NULL), 0);
            struct seen s = {.stop_at = -1};
            struct kvn_events_batch_info bi;
            assert_int_equal(kvn_events_decode(&d, p, len, record, &s, &bi, NULL), 0);
            assert_int_equal(s.n, n);
            assert_int_equal((int)bi.n_events, n);
            assert_true(bi.ts == ts);
            assert_int_equal(bi.dp_rank, rank);
            for (int i = 0; i < n; i++) {
                const struct kvn_kv_event *a = &evs[i].ev, *g = &s.ev[i];
                assert_int_equal(g->type, a->type);
                if (a->type == KVN_EV_ALL_BLOCKS_CLEARED)
                    continue;
                assert_int_equal(g->medium, a->medium);
                assert_int_equal(g->n_hashes, a->n_hashes);
                assert_memory_equal(s.h[i], evs[i].h, a->n_hashes * sizeof(int64_t));
                if (a->type != KVN_EV_BLOCK_STORED)
                    continue;
                assert_int_equal(g->n_tokens, a->n_tokens);
                assert_memory_equal(s.t[i], evs[i].t, a->n_tokens * sizeof(int32_t));
                assert_int_equal(g->block_size, a->block_size);
                assert_int_equal(g->has_parent, a->has_parent);
                assert_int_equal(g->parent_hash, a->parent_hash);
                assert_int_equal(g->has_lora_id, a->has_lora_id);
                assert_int_equal(g->lora_id, a->lora_id);
            }
            kvn_events_batch_fini(&b);
        }
    }
    kvn_events_decoder_fini(&d);
}

static int never(void *ctx, const struct kvn_kv_event *ev)
{
    (void)ev;
    (*(int *)ctx)++;
    return 0;
}

static void test_truncations(void **state)
{
    (void)state;
    const char *files[] = {"events_array.hex", "events_map.hex"};
    struct kvn_events_decoder d;
    assert_int_equal(kvn_events_decoder_init(&d, NULL), 0);
    for (int f = 0; f < 2; f++) {
        size_t n;
        uint8_t *full = load_hex(files[f], &n);
        for (size_t cut = 0; cut < n; cut++) {
            /* A heap copy of exactly cut bytes so that ASan sees any over-read. */
            uint8_t *p = malloc(cut ? cut : 1);
            assert_non_null(p);
            memcpy(p, full, cut);
            int visits = 0;
            struct kvn_err err;
            assert_int_equal(kvn_events_decode(&d, p, cut, never, &visits, NULL, &err), -EBADMSG);
            assert_int_equal(err.code, -EBADMSG);
            assert_non_null(strstr(err.msg, "malformed event batch at byte"));
            assert_int_equal(visits, 0);
            free(p);
        }
        /* One trailing byte too many is refused too. */
        uint8_t *p = malloc(n + 1);
        memcpy(p, full, n);
        p[n] = 0;
        int visits = 0;
        assert_int_equal(kvn_events_decode(&d, p, n + 1, never, &visits, NULL, NULL), -EBADMSG);
        assert_int_equal(visits, 0);
        free(p);
        free(full);
    }
    kvn_events_decoder_fini(&d);
}

static void test_garbage(void **state)
{
    (void)state;
    const char *files[] = {"events_array.hex", "events_map.hex"};
    struct kvn_events_decoder d;
    assert_int_equal(kvn_events_decoder_init(&d, NULL), 0);
    int refused = 0, accepted = 0;
    for (int f = 0; f < 2; f++) {
        size_t n;
        uint8_t *full = load_hex(files[f], &n);
        uint8_t *p = malloc(n);
        for (int round = 0; round < 3000; round++) {
            memcpy(p, full, n);
            int flips = 1 + (int)(next_rand() % 4);
            for (int i = 0; i < flips; i++)
                p[next_rand() % n] = (uint8_t)next_rand();
            int visits = 0;
            struct kvn_err err;
            int rc = kvn_events_decode(&d, p, n, never, &visits, NULL, &err);
            if (rc == 0) {
                accepted++;
            } else {
                assert_int_equal(rc, -EBADMSG);
                assert_int_equal(visits, 0);
                refused++;
            }
        }
        free(p);
        free(full);
    }
    /* Pure random bytes of random lengths. */
    for (int round = 0; round < 3000; round++) {
        size_t n = 1 + next_rand() % 200;
        uint8_t *p = malloc(n);
        for (size_t i = 0; i < n; i++)
            p[i] = (uint8_t)next_rand();
        if (round & 1)
            p[0] = 0x93; /* get past the first check more often */
        int visits = 0;
        int rc = kvn_events_decode(&d, p, n, never, &visits, NULL, NULL);
        assert_true(rc == 0 || rc == -EBADMSG);
        if (rc < 0)
            assert_int_equal(visits, 0);
        free(p);
    }
    assert_true(refused > 0);
    (void)accepted;
    kvn_events_decoder_fini(&d);
}

/* Decodes a payload given in hex; returns rc, the visits in *s. */
static int decode_hex(const char *hex, struct seen *s)
{
    size_t n = strlen(hex) / 2;
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        p[i] = (uint8_t)v;
    }
    struct kvn_events_decoder d;
    kvn_events_decoder_init(&d, NULL);
    memset(s, 0, sizeof(*s));
    s->stop_at = -1;
    int rc = kvn_events_decode(&d, p, n, record, s, NULL, NULL);
    kvn_events_decoder_fini(&d);
    free(p);
    return rc;
}

/* Pieces in hex. */
// clang-format off
#define HEAD1   "93cb41d954fc40100000" "91"           /* [ts, [1 event] */
#define TAIL    "00"                                   /* dp_rank 0 ] */
#define STORED  "ab426c6f636b53746f726564"            /* "BlockStored" */
#define REMOVED "ac426c6f636b52656d6f766564"          /* "BlockRemoved" */
#define GPU     "a3475055"

static void test_malformed(void **state)
{
    (void)state;
    struct seen s;
    const char *bad_cases[] = {
        "",                                                        /* empty */
        "92cb41d954fc401000009000",                                /* batch of 2 */
        "93cb41d954fc401000009000" "00",                           /* trailing */
        "9300" "90" "00",                                          /* ts int */
        "93cb41d954fc40100000" "90" "c0",                          /* dp_rank nil */
        "93cb41d954fc40100000" "90" "cfffffffffffffffff",          /* dp_rank > INT64_MAX */
        HEAD1 "91a3466f6f" TAIL,                                   /* unknown tag "Foo" */
        HEAD1 "90" TAIL,                                           /* empty event */
        HEAD1 "c0" TAIL,                                           /* event nil */
        HEAD1 "96" STORED "9101c0920102" "02" "c0" TAIL,           /* stored, 6 elems */
        HEAD1 "97" STORED "9101c0920102" "03" "c0" GPU TAIL,       /* 2 tokens, bs 3 */
        HEAD1 "97" STORED "9101c0920102" "00" "c0" GPU TAIL,       /* bs 0 */
        HEAD1 "97" STORED "90c0" "90" "02" "c0" GPU TAIL,          /* no hashes */
        HEAD1 "97" STORED "9101c0920102" "02" "c0" "a3465055" TAIL, /* medium "FPU" */
        HEAD1 "97" STORED "9101c0920102" "02" "c0" "01" TAIL,      /* medium int */
        HEAD1 "97" STORED "91a161c0920102" "02" "c0" GPU TAIL,     /* hash str */
        HEAD1 "97" STORED "9101c092cf0000000100000000" "01" "01" "c0" GPU TAIL, /* tok 2^32 */
        HEAD1 "97" STORED "9101c09201" "d2ffffffff" "01" "c0" GPU TAIL, /* 2 tokens, bs 1 */
        HEAD1 "97" STORED "9101c0920102" "02" "cfffffffffffffffff" GPU TAIL, /* lora big */
        HEAD1 "97" STORED "9101" "a0" "920102" "02" "c0" GPU TAIL,  /* parent str */
        HEAD1 "94" REMOVED "9101" GPU "c0" TAIL,                   /* removed 4 elems */
        HEAD1 "91" "b0416c6c426c6f636b73436c6561726564" "c0" TAIL, /* cleared + extra byte */
        HEAD1 "92" "b0416c6c426c6f636b73436c6561726564" "c0" TAIL, /* cleared 2 elems */
        "93cb41d954fc40100000" "dd7fffffff" TAIL,                  /* huge events count */
        HEAD1 "97" STORED "dd7fffffff" TAIL,                       /* huge hashes count */
        HEAD1 "81" "a3616263" "dbffffffff" TAIL,                   /* huge unknown str */
        HEAD1 "81" "a474797065" "a3466f6f" TAIL,                   /* map type Foo */
        HEAD1 "81" "a3616263" "01" TAIL,                           /* map without type */
        HEAD1 "82" "a474797065" REMOVED "a6" "6d656469756d" GPU TAIL, /* removed no hashes */
        HEAD1 "83" "a474797065" REMOVED "ac626c6f636b5f686173686573" "9101"
              "a9746f6b656e5f696473" "9101" TAIL,                  /* token_ids in removed */
        HEAD1 "83" "a474797065" REMOVED "ac626c6f636b5f686173686573" "9101"
              "ac626c6f636b5f686173686573" "9101" TAIL,            /* duplicate key */
        HEAD1 "82" "a474797065" REMOVED "a474797065" REMOVED TAIL, /* duplicate type */
        HEAD1 "81" "01" "01" TAIL,                                 /* int key */
        HEAD1 "82" "a474797065" "b0416c6c426c6f636b73436c6561726564" "a3616263" "c1" TAIL,
    };
    /* ("2 tokens, bs 1": token d2ffffffff = -1 is itself valid; the count is wrong.) */
    // clang-format on
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        int rc = decode_hex(bad_cases[i], &s);
        if (rc != -EBADMSG)
            fail_msg("case %zu (%s) gave %d", i, bad_cases[i], rc);
        assert_int_equal(s.n, 0);
    }
}

static void test_accepted_variations(void **state)
{
    (void)state;
    struct seen s;
    // clang-format off
    /* hash as uint64 above INT64_MAX -> reinterpreted; medium nil -> GPU; token -1. */
    assert_int_equal(decode_hex(HEAD1 "97" STORED "91cfffffffffffffffff" "c0" "91d2ffffffff"
                                      "01" "c0" "c0" TAIL, &s), 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.h[0][0], -1);
    assert_int_equal(s.t[0][0], -1);
    assert_int_equal(s.ev[0].medium, KVN_MEDIUM_GPU);
    /* 8-element BlockStored with a lora_name string, lora_id set, parent uint64. */
    assert_int_equal(decode_hex(HEAD1 "98" STORED "9105" "cf8000000000000000" "910a" "01" "07"
                                      "a4" "4449534b" "a3616263" TAIL, &s), 0);
    assert_int_equal(s.ev[0].parent_hash, INT64_MIN);
    assert_true(s.ev[0].has_lora_id);
    assert_int_equal(s.ev[0].lora_id, 7);
    assert_int_equal(s.ev[0].medium, KVN_MEDIUM_DISK);
    /* Map with keys in another order, an unknown nested key skipped, float32 ts. */
    assert_int_equal(decode_hex("93ca3f800000" "91"
                                "84" "a6" "6d656469756d" "aa4350555f50494e4e4544"
                                "a3" "616263" "92819100c0" "dc0001a0"
                                "ac626c6f636b5f686173686573" "9209d0f0"
                                "a474797065" REMOVED "05", &s), 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.ev[0].type, KVN_EV_BLOCK_REMOVED);
    assert_int_equal(s.ev[0].medium, KVN_MEDIUM_CPU_PINNED);
    assert_int_equal(s.ev[0].n_hashes, 2);
    assert_int_equal(s.h[0][0], 9);
    assert_int_equal(s.h[0][1], -16);
    /* Multi-hash BlockStored: 2 hashes, 2 tokens each. */
    assert_int_equal(decode_hex(HEAD1 "97" STORED "920102" "c0" "9401020304" "02" "c0" GPU TAIL,
                                &s), 0);
    assert_int_equal(s.ev[0].n_hashes, 2);
    assert_int_equal(s.ev[0].n_tokens, 4);
    assert_int_equal(s.t[0][3], 4);
    // clang-format on
    /* Empty batch. */
    assert_int_equal(decode_hex("93cb41d954fc40100000"
                                "90"
                                "00",
                                &s),
                     0);
    assert_int_equal(s.n, 0);
}

static void test_visitor_stops(void **state)
{
    (void)state;
    size_t n;
    uint8_t *p = load_hex("events_array.hex", &n);
    struct kvn_events_decoder d;
    kvn_events_decoder_init(&d, NULL);
    struct seen s = {.stop_at = 3};
    assert_int_equal(kvn_events_decode(&d, p, n, record, &s, NULL, NULL), -ECANCELED);
    assert_int_equal(s.n, 3);
    /* Validate-only pass: no visitor, info filled. */
    struct kvn_events_batch_info bi;
    assert_int_equal(kvn_events_decode(&d, p, n, NULL, NULL, &bi, NULL), 0);
    assert_int_equal(bi.n_events, 7);
    kvn_events_decoder_fini(&d);
    free(p);
}

static void test_encoder_errors(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_events_batch b;
    assert_int_equal(kvn_events_batch_init(NULL, KVN_EVENTS_FORMAT_ARRAY, 0, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    assert_int_equal(kvn_events_batch_init(&b, (enum kvn_events_format)7, 0, &err), -EINVAL);
    kvn_events_batch_fini(&b); /* safe after a failed init */
    assert_int_equal(kvn_events_batch_init(&b, KVN_EVENTS_FORMAT_ARRAY, (size_t)1 << 40, &err),
                     -EINVAL);
    kvn_events_batch_fini(&b);
    kvn_events_batch_fini(NULL);
    kvn_events_batch_reset(NULL);
    assert_int_equal(kvn_events_batch_count(NULL), 0);

    assert_int_equal(kvn_events_batch_init(&b, KVN_EVENTS_FORMAT_ARRAY, 0, &err), 0);
    add_golden_events(&b);
    const uint8_t *p;
    size_t len;
    assert_int_equal(kvn_events_batch_finish(&b, TS, 0, &p, &len, NULL), 0);
    uint8_t before[512];
    size_t before_len = len;
    assert_true(len <= sizeof(before));
    memcpy(before, p, len);

    int64_t h = 5;
    int32_t tok[2] = {1, 2};
    struct kvn_kv_event good = {.type = KVN_EV_BLOCK_STORED,
                                .medium = KVN_MEDIUM_GPU,
                                .hashes = &h,
                                .n_hashes = 1,
                                .tokens = tok,
                                .n_tokens = 2,
                                .block_size = 2};
    struct kvn_kv_event e;
    assert_int_equal(kvn_events_batch_add(NULL, &good, &err), -EINVAL);
    assert_int_equal(kvn_events_batch_add(&b, NULL, &err), -EINVAL);
    e = good;
    e.type = (enum kvn_kv_event_type)9;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "type"));
    e = good;
    e.medium = (enum kvn_medium)9;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "medium"));
    e = good;
    e.n_hashes = 0;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);
    e = good;
    e.hashes = NULL;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);
    e = good;
    e.tokens = NULL;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);
    e = good;
    e.n_tokens = KVN_EVENTS_MAX_ELEMS + 1;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);
    e = good;
    e.n_hashes = KVN_EVENTS_MAX_ELEMS + 1;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);
    e = good;
    e.type = KVN_EV_BLOCK_REMOVED;
    e.n_hashes = 0;
    assert_int_equal(kvn_events_batch_add(&b, &e, &err), -EINVAL);

    /* Nothing changed. */
    assert_int_equal(kvn_events_batch_count(&b), 7);
    assert_int_equal(kvn_events_batch_finish(&b, TS, 0, &p, &len, NULL), 0);
    assert_int_equal(len, before_len);
    assert_memory_equal(p, before, len);

    assert_int_equal(kvn_events_batch_finish(NULL, TS, 0, &p, &len, &err), -EINVAL);
    assert_int_equal(kvn_events_batch_finish(&b, TS, 0, NULL, &len, &err), -EINVAL);
    assert_int_equal(kvn_events_batch_finish(&b, TS, 0, &p, NULL, &err), -EINVAL);
    kvn_events_batch_fini(&b);
    assert_int_equal(kvn_events_batch_add(&b, &good, &err), -EINVAL); /* after fini */

    struct kvn_events_decoder d;
    assert_int_equal(kvn_events_decoder_init(NULL, &err), -EINVAL);
    kvn_events_decoder_init(&d, NULL);
    assert_int_equal(kvn_events_decode(NULL, before, before_len, NULL, NULL, NULL, &err), -EINVAL);
    assert_int_equal(kvn_events_decode(&d, NULL, 3, NULL, NULL, NULL, &err), -EINVAL);
    assert_int_equal(kvn_events_decode(&d, NULL, 0, NULL, NULL, NULL, &err), -EBADMSG);
    kvn_events_decoder_fini(&d);
    kvn_events_decoder_fini(NULL);
}

static void test_format_names(void **state)
{
    (void)state;
    enum kvn_events_format f;
    struct kvn_err err;
    assert_int_equal(kvn_events_format_parse("map", &f, &err), 0);
    assert_int_equal(f, KVN_EVENTS_FORMAT_MAP);
    assert_int_equal(kvn_events_format_parse("array", &f, &err), 0);
    assert_int_equal(f, KVN_EVENTS_FORMAT_ARRAY);
    f = KVN_EVENTS_FORMAT_MAP;
    assert_int_equal(kvn_events_format_parse("json", &f, &err), -EINVAL);
    assert_int_equal(f, KVN_EVENTS_FORMAT_MAP);
    assert_int_equal(kvn_events_format_parse(NULL, &f, &err), -EINVAL);
    assert_int_equal(kvn_events_format_parse("map", NULL, &err), -EINVAL);
    assert_string_equal(kvn_events_format_name(KVN_EVENTS_FORMAT_ARRAY), "array");
    assert_string_equal(kvn_events_format_name(KVN_EVENTS_FORMAT_MAP), "map");
    assert_string_equal(kvn_events_format_name((enum kvn_events_format)5), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_array),
        cmocka_unit_test(test_golden_map),
        cmocka_unit_test(test_decode_golden),
        cmocka_unit_test(test_smallest_int_forms),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_accepted_variations),
        cmocka_unit_test(test_visitor_stops),
        cmocka_unit_test(test_encoder_errors),
        cmocka_unit_test(test_format_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
