/*
 * trace.c - Mooncake trace reader, token synthesis and exact hit rate.
 * See trace.h.
 */
#include "bench/trace.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Steele, Lea, Flood: SplitMix64's finalizer, a strong 64-bit mixer. */
static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int32_t kvn_trace_block_token(uint64_t id, uint32_t j)
{
    /* Mix the id first so that (id, j) and (id + 1, j - 512) never collide. */
    uint64_t x = splitmix64(splitmix64(id) ^ (uint64_t)j);
    return (int32_t)(x % KVN_TRACE_TOKEN_RANGE);
}

int kvn_trace_tokens(const struct kvn_trace_req *r, int32_t *out, uint32_t n, struct kvn_err *err)
{
    if (!r || !out)
        return kvn_err_set(err, -EINVAL, "trace tokens: NULL %s", r ? "out" : "request");
    if (n > r->input_length)
        return kvn_err_set(err, -EINVAL, "trace tokens: n %u > input_length %u", n,
                           r->input_length);
    /* kvn_trace_block_token, with the id's mix computed once per block */
    for (uint32_t b = 0; b * KVN_TRACE_BLOCK_TOKENS < n; b++) {
        uint64_t base = splitmix64(r->hash_ids[b]);
        uint32_t end = n - b * KVN_TRACE_BLOCK_TOKENS;
        if (end > KVN_TRACE_BLOCK_TOKENS)
            end = KVN_TRACE_BLOCK_TOKENS;
        int32_t *o = out + (size_t)b * KVN_TRACE_BLOCK_TOKENS;
        for (uint32_t j = 0; j < end; j++)
            o[j] = (int32_t)(splitmix64(base ^ (uint64_t)j) % KVN_TRACE_TOKEN_RANGE);
    }
    return 0;
}

/* An integral, non-negative JSON number no larger than max, or false. */
static bool json_uint(const cJSON *obj, const char *name, uint64_t max, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > (double)max || d != floor(d))
        return false;
    *out = (uint64_t)d;
    return true;
}

struct load_state {
    struct kvn_trace_req *reqs;
    size_t n_reqs, cap_reqs;
    uint64_t *ids;
    size_t n_ids, cap_ids;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 1024;
    while (ncap < need)
        ncap *= 2;
    void *np = realloc(*p, ncap * elem);
    if (!np)
        return -ENOMEM;
    *p = np;
    *cap = ncap;
    return 0;
}

/* Parses one non-blank line into the next request of st. */
static int parse_line(struct load_state *st, const char *line, size_t lineno, struct kvn_err *err)
{
    cJSON *o = cJSON_Parse(line);
    int rc = 0;
    if (!cJSON_IsObject(o)) {
        rc = kvn_err_set(err, -EINVAL, "trace line %zu: not a JSON object", lineno);
        goto out;
    }
    uint64_t ts, in, outl;
    if (!json_uint(o, "timestamp", UINT64_MAX / 2, &ts) ||
        !json_uint(o, "input_length", INT32_MAX, &in) ||
        !json_uint(o, "output_length", UINT32_MAX, &outl)) {
        rc = kvn_err_set(err, -EINVAL,
                         "trace line %zu: timestamp, input_length, output_length must be "
                         "non-negative integers (input_length < 2^31)",
                         lineno);
        goto out;
    }
    if (in == 0) {
        rc = kvn_err_set(err, -EINVAL, "trace line %zu: input_length is 0", lineno);
        goto out;
    }
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "hash_ids");
    if (!cJSON_IsArray(ids)) {
        rc = kvn_err_set(err, -EINVAL, "trace line %zu: hash_ids is not an array", lineno);
        goto out;
    }
    uint64_t need = (in + KVN_TRACE_BLOCK_TOKENS - 1) / KVN_TRACE_BLOCK_TOKENS;
    uint64_t have = (uint64_t)cJSON_GetArraySize(ids);
    if (have < need) {
        rc = kvn_err_set(
            err, -EINVAL, "trace line %zu: %llu hash_ids for input_length %llu (need %llu)", lineno,
            (unsigned long long)have, (unsigned long long)in, (unsigned long long)need);
        goto out;
    }
    if (grow((void **)&st->ids, &st->cap_ids, st->n_ids + need, sizeof(*st->ids)) < 0 ||
        grow((void **)&st->reqs, &st->cap_reqs, st->n_reqs + 1, sizeof(*st->reqs)) < 0) {
        rc = kvn_err_set(err, -ENOMEM, "trace line %zu: out of memory", lineno);
        goto out;
    }
    uint64_t k = 0;
    const cJSON *id;
    cJSON_ArrayForEach(id, ids)
    {
        if (k == need)
            break; /* ids beyond input_length carry no tokens */
        double d = cJSON_IsNumber(id) ? id->valuedouble : -1;
        if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) {
            rc = kvn_err_set(err, -EINVAL,
                             "trace line %zu: hash_ids[%llu] is not a non-negative integer", lineno,
                             (unsigned long long)k);
            goto out;
        }
        st->ids[st->n_ids + k++] = (uint64_t)d;
    }
    struct kvn_trace_req *r = &st->reqs[st->n_reqs++];
    r->timestamp_ms = ts;
    r->input_length = (uint32_t)in;
    r->output_length = (uint32_t)outl;
    r->n_blocks = (uint32_t)need;
    r->hash_ids = NULL; /* st->ids may still move: fixed up at the end */
    st->n_ids += need;
out:
    cJSON_Delete(o);
    return rc;
}

static bool blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
            return false;
    return true;
}

int kvn_trace_load(struct kvn_trace *t, const char *path, size_t limit, struct kvn_err *err)
{
    if (!t || !path)
        return kvn_err_set(err, -EINVAL, "trace load: NULL %s", t ? "path" : "trace");
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        return kvn_err_set(err, -e, "trace load: cannot open %s: %s", path, strerror(e));
    }
    struct load_state st = {0};
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    int rc = 0;
    while ((limit == 0 || st.n_reqs < limit) && getline(&line, &cap, f) >= 0) {
        lineno++;
        if (blank(line))
            continue;
        if ((rc = parse_line(&st, line, lineno, err)) < 0)
            break;
    }
    if (rc == 0 && ferror(f))
        rc = kvn_err_set(err, -EIO, "trace load: read error on %s", path);
    free(line);
    fclose(f);
    if (rc < 0) {
        free(st.reqs);
        free(st.ids);
        return rc;
    }
    memset(t, 0, sizeof(*t));
    t->reqs = st.reqs;
    t->n_reqs = st.n_reqs;
    t->id_pool = st.ids;
    t->n_ids = st.n_ids;
    size_t off = 0;
    for (size_t i = 0; i < st.n_reqs; i++) {
        t->reqs[i].hash_ids = st.ids + off;
        off += t->reqs[i].n_blocks;
        t->total_tokens += t->reqs[i].input_length;
        if (t->reqs[i].input_length > t->max_input_length)
            t->max_input_length = t->reqs[i].input_length;
    }
    return 0;
}

void kvn_trace_free(struct kvn_trace *t)
{
    if (!t)
        return;
    free(t->reqs);
    free(t->id_pool);
    memset(t, 0, sizeof(*t));
}

/*
 * An open-addressing set of 64-bit ids (linear probing). The empty marker is
 * UINT64_MAX; an id equal to it is remembered in a side flag.
 */
struct idset {
    uint64_t *slots;
    size_t mask, used;
    bool has_max;
};

static int idset_init(struct idset *s, size_t expect)
{
    size_t n = 1024;
    while (n < expect * 2)
        n *= 2;
    s->slots = malloc(n * sizeof(*s->slots));
    if (!s->slots)
        return -ENOMEM;
    memset(s->slots, 0xff, n * sizeof(*s->slots));
    s->mask = n - 1;
    s->used = 0;
    s->has_max = false;
    return 0;
}

static bool idset_has(const struct idset *s, uint64_t id)
{
    if (id == UINT64_MAX)
        return s->has_max;
    for (size_t i = splitmix64(id) & s->mask;; i = (i + 1) & s->mask) {
        if (s->slots[i] == id)
            return true;
        if (s->slots[i] == UINT64_MAX)
            return false;
    }
}

/* The set is sized for every id up front, so it never fills. */
static void idset_add(struct idset *s, uint64_t id)
{
    if (id == UINT64_MAX) {
        s->has_max = true;
        return;
    }
    for (size_t i = splitmix64(id) & s->mask;; i = (i + 1) & s->mask) {
        if (s->slots[i] == id)
            return;
        if (s->slots[i] == UINT64_MAX) {
            s->slots[i] = id;
            s->used++;
            return;
        }
    }
}

int kvn_trace_exact_hits(const struct kvn_trace *t, size_t n_reqs, enum kvn_trace_hit_rule rule,
                         uint64_t *hit_tokens, uint64_t *total_tokens, struct kvn_err *err)
{
    if (!t || !hit_tokens || !total_tokens)
        return kvn_err_set(err, -EINVAL, "exact hits: NULL argument");
    if (n_reqs > t->n_reqs)
        return kvn_err_set(err, -EINVAL, "exact hits: %zu requests asked, trace has %zu", n_reqs,
                           t->n_reqs);
    if (rule != KVN_TRACE_HIT_FULL_BLOCKS && rule != KVN_TRACE_HIT_PARTIAL_LAST)
        return kvn_err_set(err, -EINVAL, "exact hits: unknown rule %d", (int)rule);
    if (n_reqs == 0)
        n_reqs = t->n_reqs;
    struct idset seen;
    if (idset_init(&seen, t->n_ids) < 0)
        return kvn_err_set(err, -ENOMEM, "exact hits: out of memory for %zu ids", t->n_ids);
    uint64_t hits = 0, total = 0;
    const uint32_t B = KVN_TRACE_BLOCK_TOKENS;
    for (size_t i = 0; i < n_reqs; i++) {
        const struct kvn_trace_req *r = &t->reqs[i];
        uint32_t counted = rule == KVN_TRACE_HIT_FULL_BLOCKS ? r->input_length / B : r->n_blocks;
        total += r->input_length;
        for (uint32_t b = 0; b < counted && idset_has(&seen, r->hash_ids[b]); b++) {
            uint32_t len = r->input_length - b * B;
            hits += len < B ? len : B;
        }
        for (uint32_t b = 0; b < counted; b++)
            idset_add(&seen, r->hash_ids[b]);
    }
    free(seen.slots);
    *hit_tokens = hits;
    *total_tokens = total;
    return 0;
}
