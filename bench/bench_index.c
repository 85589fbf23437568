/*
 * bench_index.c - kvbench index: replay a Mooncake trace through the radix
 * index and compare it, in the same run, with the floors of the same work.
 *
 * For every request, in trace order:
 *
 *     tokens = synthesized blocks cut to input_length        (not timed)
 *     match  = kvn_radix_match_prefix(tokens cut to pages)   (timed)
 *     insert = kvn_radix_insert(whole request, full pages)   (timed)
 *              in auto mode: the tree evicts L1 leaves itself when the new
 *              pages do not fit --capacity (l1_pages = capacity / page size;
 *              no L2 tier, so victims are deleted); a request longer than
 *              the whole capacity inserts its first l1_pages pages
 *     floor  = memcmp(tokens, copy) and the SHA-256 page chain over the same
 *              full-page bytes                                (timed)
 *              memcmp again with copy flushed from the caches (timed): the
 *              index reads its keys from DRAM, the first memcmp reads bytes
 *              that were just written, so both floors are printed
 *
 * hit tokens are the L1 prefix lengths the index returned. The exact figure
 * is computed independently from the ids alone (trace.c) and printed beside
 * it: with unlimited capacity and --page-size 512 the two are equal, and the
 * run says so ("exact_match": true) or exits 1.
 *
 * Ratios quoted are measured side by side in one run: index match time over
 * memcmp time, index insert time over SHA-256 time, both over the same bytes.
 */
#include "bench/bench.h"
#include "bench/trace.h"
#include "cache/radix.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
/* The low-level SHA-256 calls are the fastest floor; OpenSSL 3 deprecates them. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_CLFLUSH 1
#endif

struct opts {
    const char *trace;
    uint32_t page_size;
    uint64_t capacity; /* tokens of L1; 0 = unlimited */
    bool lfu;
    size_t limit;
    bool json;
};

struct results {
    size_t n_reqs;
    uint64_t total_tokens;
    uint64_t hit_tokens;            /* what the index matched in L1 */
    uint64_t exact_full;            /* trace.c, full 512-token blocks */
    uint64_t exact_partial;         /* trace.c, shared/README.md's rule */
    uint64_t page_tokens;           /* full-page tokens handed to match/insert */
    double match_ns, insert_ns;     /* sums over the run */
    double memcmp_ns, sha_ns;       /* floors over the same bytes */
    double memcmp_cold_ns;          /* memcmp with the copy flushed from the caches */
    double *match_lat, *insert_lat; /* per request, ns */
    double match_p50, match_p99, insert_p50, insert_p99;
    uint64_t cached_tokens; /* L1 tokens in the index at the end */
    uint64_t index_bytes;   /* kvn_radix_stats.index_bytes at the end */
    uint64_t heap_bytes;    /* malloc's view of the same, a cross-check */
    uint64_t events;
    uint64_t evicted_pages;
    uint64_t truncated_inserts; /* requests longer than the capacity */
};

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile (p in (0, 100]) of v[0..n), sorted in place. */
static double percentile(double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

/* Heap bytes in use (glibc), to measure what the index holds. */
static uint64_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
}

/*
 * The SHA-256 page chain over n_pages pages of page_size tokens, exactly as
 * the index hashes pages (DESIGN.md "Page hash"): each page hashes the
 * previous page's digest, then its tokens as u32 little endian. Tokens are
 * non-negative and this host is little endian (checked in main), so the
 * token array is already the byte string to hash.
 */
static uint64_t sha_chain(const int32_t *tok, uint32_t n_pages, uint32_t page_size)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    uint64_t fold = 0;
    for (uint32_t p = 0; p < n_pages; p++) {
        SHA256_CTX c;
        SHA256_Init(&c);
        if (p)
            SHA256_Update(&c, md, sizeof(md));
        SHA256_Update(&c, tok + (size_t)p * page_size, (size_t)page_size * sizeof(*tok));
        SHA256_Final(md, &c);
        fold ^= md[0];
    }
    return fold;
}

/*
 * Evicts buf[0..bytes) from every cache level, so that the next memcmp reads
 * it from DRAM as the index reads its keys. Returns false where unsupported.
 */
static bool flush_lines(const void *buf, size_t bytes)
{
#ifdef HAVE_CLFLUSH
    const char *p = (const char *)((uintptr_t)buf & ~(uintptr_t)63);
    for (; p < (const char *)buf + bytes; p += 64)
        _mm_clflush(p);
    _mm_mfence();
    return true;
#else
    (void)buf;
    (void)bytes;
    return false;
#endif
}

/* Counts events; node/ would encode them here. */
static void count_event(void *ctx, const struct kvn_kv_event *ev)
{
    (void)ev;
    (*(uint64_t *)ctx)++;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kvbench index --trace FILE [--page-size N] [--capacity TOKENS]\n"
               "                     [--policy lru|lfu] [--limit N] [--json]\n"
               "  --trace FILE       Mooncake JSON-lines trace (hash_ids of 512-token blocks)\n"
               "  --page-size N      tokens per page (default 16)\n"
               "  --capacity TOKENS  L1 capacity in tokens, suffix k/M/G allowed\n"
               "                     (default: unlimited)\n"
               "  --policy lru|lfu   L1 eviction order (default lru)\n"
               "  --limit N          replay only the first N requests\n"
               "  --json             print one JSON object instead of text\n");
}

/* Parses a decimal count with an optional k/M/G (10^3, 10^6, 10^9) suffix. */
static int parse_count(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || *s < '0' || *s > '9')
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    uint64_t mul = 1;
    if (*end == 'k' || *end == 'K')
        mul = 1000, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1000000, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1000000000, end++;
    if (*end || (mul > 1 && v > max / mul) || v * mul > max)
        return -EINVAL;
    *out = v * mul;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option longs[] = {
        {"trace", required_argument, NULL, 't'},    {"page-size", required_argument, NULL, 'p'},
        {"capacity", required_argument, NULL, 'c'}, {"policy", required_argument, NULL, 'P'},
        {"limit", required_argument, NULL, 'l'},    {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->page_size = 16;
    optind = 1;
    int c;
    uint64_t v;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 't':
            o->trace = optarg;
            break;
        case 'p':
            if (parse_count(optarg, KVN_RADIX_MAX_PAGE_SIZE, &v) < 0 || v == 0) {
                fprintf(stderr, "kvbench index: --page-size must be 1..%u\n",
                        KVN_RADIX_MAX_PAGE_SIZE);
                return 2;
            }
            o->page_size = (uint32_t)v;
            break;
        case 'c':
            if (parse_count(optarg, UINT64_MAX, &v) < 0 || v == 0) {
                fprintf(stderr, "kvbench index: --capacity must be a positive token count\n");
                return 2;
            }
            o->capacity = v;
            break;
        case 'P':
            if (!strcmp(optarg, "lru"))
                o->lfu = false;
            else if (!strcmp(optarg, "lfu"))
                o->lfu = true;
            else {
                fprintf(stderr, "kvbench index: --policy must be lru or lfu\n");
                return 2;
            }
            break;
        case 'l':
            if (parse_count(optarg, SIZE_MAX, &v) < 0 || v == 0) {
                fprintf(stderr, "kvbench index: --limit must be a positive count\n");
                return 2;
            }
            o->limit = (size_t)v;
            break;
        case 'j':
            o->json = true;
            break;
        case 'h':
            usage(stdout);
            return 1; /* handled: exit 0 */
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvbench index: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o->trace) {
        fprintf(stderr, "kvbench index: --trace FILE is required\n");
        usage(stderr);
        return 2;
    }
    if (o->capacity && o->capacity / o->page_size == 0) {
        fprintf(stderr, "kvbench index: --capacity %llu is below one page of %u tokens\n",
                (unsigned long long)o->capacity, o->page_size);
        return 2;
    }
    if (o->capacity && o->capacity / o->page_size > UINT32_MAX - 1) {
        fprintf(stderr, "kvbench index: --capacity too large for %u-token pages\n", o->page_size);
        return 2;
    }
    return 0;
}

/*
 * L1 slots for "unlimited": enough for every distinct page the trace can
 * bring. Request i adds at most full_pages_i - floor(exact_hits_i / ps) pages,
 * and summing floor(h_i / ps) over requests loses less than one page each;
 * hence total full pages - floor(H / ps) + n_reqs bounds it.
 */
static uint64_t unlimited_pages(const struct kvn_trace *t, uint32_t ps, uint64_t exact_full)
{
    uint64_t pages = 0;
    for (size_t i = 0; i < t->n_reqs; i++)
        pages += t->reqs[i].input_length / ps;
    uint64_t minus = exact_full / ps;
    pages = pages > minus ? pages - minus : 0;
    return pages + t->n_reqs + 1;
}

static int replay(const struct opts *o, const struct kvn_trace *t, struct results *r)
{
    struct kvn_err err;
    uint64_t n_events = 0;
    uint64_t l1_pages =
        o->capacity ? o->capacity / o->page_size : unlimited_pages(t, o->page_size, r->exact_full);
    if (l1_pages > UINT32_MAX - 1) {
        fprintf(stderr, "kvbench index: %llu L1 pages do not fit the index; raise --page-size\n",
                (unsigned long long)l1_pages);
        return 1;
    }
    int32_t *tok = malloc((size_t)t->max_input_length * sizeof(*tok) + 1);
    int32_t *copy = malloc((size_t)t->max_input_length * sizeof(*copy) + 1);
    r->match_lat = calloc(t->n_reqs + 1, sizeof(double));
    r->insert_lat = calloc(t->n_reqs + 1, sizeof(double));
    if (!tok || !copy || !r->match_lat || !r->insert_lat) {
        fprintf(stderr, "kvbench index: out of memory\n");
        free(tok);
        free(copy);
        return 1;
    }

    struct kvn_radix_config cfg;
    kvn_radix_config_init(&cfg);
    cfg.page_size = o->page_size;
    cfg.l1_pages = (uint32_t)l1_pages;
    cfg.l2_pages = 0; /* a single tier: eviction deletes, no copy jobs */
    cfg.evict_policy = o->lfu ? KVN_EVICT_LFU : KVN_EVICT_LRU;
    cfg.sink.emit = count_event;
    cfg.sink.ctx = &n_events;
    struct kvn_radix *tree = NULL;
    uint64_t heap_before = heap_in_use();
    if (kvn_radix_create(&cfg, &tree, &err) < 0) {
        fprintf(stderr, "kvbench index: create: %s\n", err.msg);
        free(tok);
        free(copy);
        return 1;
    }

    volatile uint64_t sink = 0; /* keeps the floors from being optimized away */
    int rc = 0;
    for (size_t i = 0; i < t->n_reqs; i++) {
        const struct kvn_trace_req *q = &t->reqs[i];
        uint32_t n_pages = q->input_length / o->page_size;
        size_t n = (size_t)n_pages * o->page_size;
        kvn_trace_tokens(q, tok, q->input_length, NULL);
        memcpy(copy, tok, n * sizeof(*tok));
        r->total_tokens += q->input_length;
        r->page_tokens += n;

        struct kvn_radix_match m;
        double t0 = now_ns();
        int mrc =
            kvn_radix_match_prefix(tree, KVN_RADIX_NS_DEFAULT, tok, n, i + 1, NULL, 0, &m, &err);
        double t1 = now_ns();
        if (mrc < 0) {
            fprintf(stderr, "kvbench index: request %zu: match: %s\n", i, err.msg);
            rc = 1;
            break;
        }
        r->hit_tokens += m.device_tokens;

        /* A request longer than the whole capacity keeps its first pages only. */
        size_t n_ins = n;
        if (n_pages > l1_pages) {
            n_ins = (size_t)l1_pages * o->page_size;
            r->truncated_inserts++;
        }
        struct kvn_radix_insert_result ir;
        double t2 = now_ns();
        int irc = kvn_radix_insert(tree, KVN_RADIX_NS_DEFAULT, tok, n_ins, NULL, i + 1, &ir, &err);
        double t3 = now_ns();
        if (irc < 0) {
            fprintf(stderr, "kvbench index: request %zu (%zu tokens): insert: %s\n", i, n, err.msg);
            rc = 1;
            break;
        }
        r->evicted_pages += ir.evicted_pages;

        double t4 = now_ns();
        sink += (uint64_t)memcmp(tok, copy, n * sizeof(*tok));
        double t5 = now_ns();
        sink += sha_chain(tok, n_pages, o->page_size);
        double t6 = now_ns();
        if (flush_lines(copy, n * sizeof(*copy))) {
            double t7 = now_ns();
            sink += (uint64_t)memcmp(tok, copy, n * sizeof(*tok));
            r->memcmp_cold_ns += now_ns() - t7;
        }

        r->match_lat[i] = t1 - t0;
        r->insert_lat[i] = t3 - t2;
        r->match_ns += t1 - t0;
        r->insert_ns += t3 - t2;
        r->memcmp_ns += t5 - t4;
        r->sha_ns += t6 - t5;
        r->n_reqs++;
    }
    (void)sink;

    struct kvn_radix_stats st;
    if (rc == 0 && kvn_radix_stats(tree, &st, &err) == 0) {
        r->cached_tokens = st.l1_tokens;
        r->index_bytes = st.index_bytes;
    }
    uint64_t heap_after = heap_in_use();
    kvn_radix_destroy(tree);
    /* What the tree held as seen by malloc: a cross-check of st.index_bytes. */
    r->heap_bytes = heap_after > heap_before ? heap_after - heap_before : 0;
    r->events = n_events;
    free(tok);
    free(copy);
    return rc;
}

static double ratio(double a, double b)
{
    return b > 0 ? a / b : 0;
}

static double per_token(double ns, uint64_t tokens)
{
    return tokens ? ns / (double)tokens : 0;
}

static void print_text(const struct opts *o, const struct results *r, double secs)
{
    double hr = ratio((double)r->hit_tokens, (double)r->total_tokens);
    printf("kvbench index: %s\n", o->trace);
    printf("  requests          %zu\n", r->n_reqs);
    printf("  page size         %u tokens\n", o->page_size);
    if (o->capacity)
        printf("  capacity          %llu tokens (%llu pages), %s\n",
               (unsigned long long)o->capacity, (unsigned long long)(o->capacity / o->page_size),
               o->lfu ? "lfu" : "lru");
    else
        printf("  capacity          unlimited, %s\n", o->lfu ? "lfu" : "lru");
    printf("  hit tokens        %llu of %llu  hit rate %.4f\n", (unsigned long long)r->hit_tokens,
           (unsigned long long)r->total_tokens, hr);
    printf("  exact (trace ids) %llu  hit rate %.4f  (leading full 512-token blocks seen before)\n",
           (unsigned long long)r->exact_full,
           ratio((double)r->exact_full, (double)r->total_tokens));
    printf("  exact, partial    %llu  hit rate %.4f  (shared/README.md rule: a seen partial last "
           "block counts)\n",
           (unsigned long long)r->exact_partial,
           ratio((double)r->exact_partial, (double)r->total_tokens));
    if (!o->capacity && o->page_size == 512)
        printf("  exact match       %s\n", r->hit_tokens == r->exact_full ? "yes" : "NO");
    printf("  requests/s        %.0f  (index time %.3f s of %.3f s wall)\n",
           ratio((double)r->n_reqs, (r->match_ns + r->insert_ns) / 1e9),
           (r->match_ns + r->insert_ns) / 1e9, secs);
    printf("  match latency     p50 %.1f us  p99 %.1f us\n", r->match_p50 / 1e3,
           r->match_p99 / 1e3);
    printf("  insert latency    p50 %.1f us  p99 %.1f us  (evicted %llu pages)\n",
           r->insert_p50 / 1e3, r->insert_p99 / 1e3, (unsigned long long)r->evicted_pages);
    if (r->truncated_inserts)
        printf("  truncated         %llu requests longer than the capacity: first pages "
               "inserted\n",
               (unsigned long long)r->truncated_inserts);
    printf("  per token         match %.3f ns  memcmp %.3f ns  ratio %.2f\n",
           per_token(r->match_ns, r->page_tokens), per_token(r->memcmp_ns, r->page_tokens),
           ratio(r->match_ns, r->memcmp_ns));
    printf("                    match %.3f ns  memcmp from DRAM %.3f ns  ratio %.2f\n",
           per_token(r->match_ns, r->page_tokens), per_token(r->memcmp_cold_ns, r->page_tokens),
           ratio(r->match_ns, r->memcmp_cold_ns));
    printf("                    insert %.3f ns  sha256 %.3f ns  ratio %.2f\n",
           per_token(r->insert_ns, r->page_tokens), per_token(r->sha_ns, r->page_tokens),
           ratio(r->insert_ns, r->sha_ns));
    printf("  memory            %llu bytes for %llu cached tokens: %.2f bytes/token "
           "(malloc view %.2f)\n",
           (unsigned long long)r->index_bytes, (unsigned long long)r->cached_tokens,
           ratio((double)r->index_bytes, (double)r->cached_tokens),
           ratio((double)r->heap_bytes, (double)r->cached_tokens));
}

static int print_json(const struct opts *o, const struct results *r, double secs)
{
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return -ENOMEM;
    double idx_s = (r->match_ns + r->insert_ns) / 1e9;
    cJSON_AddStringToObject(j, "trace", o->trace);
    cJSON_AddNumberToObject(j, "requests", (double)r->n_reqs);
    cJSON_AddNumberToObject(j, "page_size", o->page_size);
    if (o->capacity)
        cJSON_AddNumberToObject(j, "capacity_tokens", (double)o->capacity);
    else
        cJSON_AddNullToObject(j, "capacity_tokens");
    cJSON_AddStringToObject(j, "policy", o->lfu ? "lfu" : "lru");
    cJSON_AddNumberToObject(j, "hit_tokens", (double)r->hit_tokens);
    cJSON_AddNumberToObject(j, "total_tokens", (double)r->total_tokens);
    cJSON_AddNumberToObject(j, "hit_rate", ratio((double)r->hit_tokens, (double)r->total_tokens));
    cJSON_AddNumberToObject(j, "exact_hit_tokens", (double)r->exact_full);
    cJSON_AddNumberToObject(j, "exact_hit_rate",
                            ratio((double)r->exact_full, (double)r->total_tokens));
    cJSON_AddNumberToObject(j, "exact_partial_hit_tokens", (double)r->exact_partial);
    cJSON_AddNumberToObject(j, "exact_partial_hit_rate",
                            ratio((double)r->exact_partial, (double)r->total_tokens));
    if (!o->capacity && o->page_size == 512)
        cJSON_AddBoolToObject(j, "exact_match", r->hit_tokens == r->exact_full);
    else
        cJSON_AddNullToObject(j, "exact_match");
    cJSON_AddNumberToObject(j, "requests_per_s", ratio((double)r->n_reqs, idx_s));
    cJSON_AddNumberToObject(j, "index_seconds", idx_s);
    cJSON_AddNumberToObject(j, "wall_seconds", secs);
    cJSON_AddNumberToObject(j, "match_p50_us", r->match_p50 / 1e3);
    cJSON_AddNumberToObject(j, "match_p99_us", r->match_p99 / 1e3);
    cJSON_AddNumberToObject(j, "insert_p50_us", r->insert_p50 / 1e3);
    cJSON_AddNumberToObject(j, "insert_p99_us", r->insert_p99 / 1e3);
    cJSON_AddNumberToObject(j, "page_tokens", (double)r->page_tokens);
    cJSON_AddNumberToObject(j, "match_ns_per_token", per_token(r->match_ns, r->page_tokens));
    cJSON_AddNumberToObject(j, "memcmp_ns_per_token", per_token(r->memcmp_ns, r->page_tokens));
    cJSON_AddNumberToObject(j, "match_vs_memcmp", ratio(r->match_ns, r->memcmp_ns));
    cJSON_AddNumberToObject(j, "memcmp_cold_ns_per_token",
                            per_token(r->memcmp_cold_ns, r->page_tokens));
    cJSON_AddNumberToObject(j, "match_vs_memcmp_cold", ratio(r->match_ns, r->memcmp_cold_ns));
    cJSON_AddNumberToObject(j, "insert_ns_per_token", per_token(r->insert_ns, r->page_tokens));
    cJSON_AddNumberToObject(j, "sha256_ns_per_token", per_token(r->sha_ns, r->page_tokens));
    cJSON_AddNumberToObject(j, "insert_vs_sha256", ratio(r->insert_ns, r->sha_ns));
    cJSON_AddNumberToObject(j, "evicted_pages", (double)r->evicted_pages);
    cJSON_AddNumberToObject(j, "truncated_inserts", (double)r->truncated_inserts);
    cJSON_AddNumberToObject(j, "events", (double)r->events);
    cJSON_AddNumberToObject(j, "cached_tokens", (double)r->cached_tokens);
    cJSON_AddNumberToObject(j, "index_bytes", (double)r->index_bytes);
    cJSON_AddNumberToObject(j, "bytes_per_cached_token",
                            ratio((double)r->index_bytes, (double)r->cached_tokens));
    cJSON_AddNumberToObject(j, "heap_bytes_per_cached_token",
                            ratio((double)r->heap_bytes, (double)r->cached_tokens));
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s)
        return -ENOMEM;
    printf("%s\n", s);
    cJSON_free(s);
    return 0;
}

int kvn_bench_index_main(int argc, char **argv)
{
    struct opts o;
    int prc = parse_opts(argc, argv, &o);
    if (prc)
        return prc == 1 ? 0 : prc;
    const uint32_t one = 1;
    if (*(const unsigned char *)&one != 1) {
        fprintf(stderr, "kvbench index: the SHA-256 floor assumes a little-endian host\n");
        return 1;
    }

    struct kvn_err err;
    struct kvn_trace t;
    if (kvn_trace_load(&t, o.trace, o.limit, &err) < 0) {
        fprintf(stderr, "kvbench index: %s\n", err.msg);
        return 1;
    }
    if (t.n_reqs == 0) {
        fprintf(stderr, "kvbench index: %s holds no request\n", o.trace);
        kvn_trace_free(&t);
        return 1;
    }
    struct results r;
    memset(&r, 0, sizeof(r));
    uint64_t total;
    if (kvn_trace_exact_hits(&t, 0, KVN_TRACE_HIT_FULL_BLOCKS, &r.exact_full, &total, &err) < 0 ||
        kvn_trace_exact_hits(&t, 0, KVN_TRACE_HIT_PARTIAL_LAST, &r.exact_partial, &total, &err) <
            0) {
        fprintf(stderr, "kvbench index: %s\n", err.msg);
        kvn_trace_free(&t);
        return 1;
    }

    double w0 = now_ns();
    int rc = replay(&o, &t, &r);
    double secs = (now_ns() - w0) / 1e9;
    if (rc == 0) {
        r.match_p50 = percentile(r.match_lat, r.n_reqs, 50);
        r.match_p99 = percentile(r.match_lat, r.n_reqs, 99);
        r.insert_p50 = percentile(r.insert_lat, r.n_reqs, 50);
        r.insert_p99 = percentile(r.insert_lat, r.n_reqs, 99);
        if (o.json) {
            if (print_json(&o, &r, secs) < 0) {
                fprintf(stderr, "kvbench index: out of memory for JSON\n");
                rc = 1;
            }
        } else {
            print_text(&o, &r, secs);
        }
        /* The replay must equal the independent count where they must agree. */
        if (!o.capacity && o.page_size == 512 && r.hit_tokens != r.exact_full) {
            fprintf(stderr, "kvbench index: hit tokens %llu != exact %llu\n",
                    (unsigned long long)r.hit_tokens, (unsigned long long)r.exact_full);
            rc = 1;
        }
    }
    free(r.match_lat);
    free(r.insert_lat);
    kvn_trace_free(&t);
    return rc;
}
