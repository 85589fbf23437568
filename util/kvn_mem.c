/* kvn_mem.c - huge-page-friendly anonymous mappings (see kvn_mem.h). */
#include "util/kvn_mem.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define MEM_MAX (1ull << 46) /* 64 TiB: beyond any host here */

static size_t page_size(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

int kvn_mem_map(size_t len, bool try_hugetlb, struct kvn_mem *m, struct kvn_err *err)
{
    if (!m)
        return kvn_err_set(err, -EINVAL, "m is NULL");
    memset(m, 0, sizeof(*m));
    if (len == 0 || (uint64_t)len >= MEM_MAX)
        return kvn_err_set(err, -EINVAL, "cannot map %zu bytes", len);
    size_t pg = page_size();
    if (try_hugetlb && len >= KVN_MEM_HUGE) {
        size_t hl = (len + KVN_MEM_HUGE - 1) / KVN_MEM_HUGE * KVN_MEM_HUGE;
        void *b = mmap(NULL, hl, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (b != MAP_FAILED) {
            *m = (struct kvn_mem){.base = b, .map_len = hl, .hugetlb = true};
            return 0;
        }
    }
    size_t ml = (len + pg - 1) / pg * pg;
    if (ml < KVN_MEM_HUGE) {
        void *b = mmap(NULL, ml, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (b == MAP_FAILED)
            return kvn_err_set(err, -ENOMEM, "mmap of %zu bytes failed: %s", len,
                               strerror(errno));
        *m = (struct kvn_mem){.base = b, .map_len = ml};
        return 0;
    }
    /* 2 MiB alignment: map one huge page more and trim both ends */
    size_t raw_len = ml + KVN_MEM_HUGE;
    uint8_t *raw = mmap(NULL, raw_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return kvn_err_set(err, -ENOMEM, "mmap of %zu bytes failed: %s", len, strerror(errno));
    uintptr_t a = ((uintptr_t)raw + KVN_MEM_HUGE - 1) & ~(uintptr_t)(KVN_MEM_HUGE - 1);
    uint8_t *base = (uint8_t *)a;
    size_t head = (size_t)(base - raw), tail = raw_len - head - ml;
    if (head)
        munmap(raw, head);
    if (tail)
        munmap(base + ml, tail);
    bool advised = madvise(base, ml, MADV_HUGEPAGE) == 0; /* EINVAL: no THP in this kernel */
    *m = (struct kvn_mem){.base = base, .map_len = ml, .thp_advised = advised};
    return 0;
}

void kvn_mem_populate(const struct kvn_mem *m)
{
    if (!m || !m->base || !m->map_len)
        return;
    if (madvise(m->base, m->map_len, MADV_POPULATE_WRITE) == 0)
        return;
    /* older kernel: one write per page (the memory is zero: writing zero keeps it so) */
    size_t step = m->hugetlb ? KVN_MEM_HUGE : page_size();
    volatile uint8_t *p = m->base;
    for (size_t off = 0; off < m->map_len; off += step)
        p[off] = 0;
}

size_t kvn_mem_huge_bytes(const struct kvn_mem *m)
{
    if (!m || !m->base)
        return 0;
    if (m->hugetlb)
        return m->map_len;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return 0;
    uintptr_t lo = (uintptr_t)m->base, hi = lo + m->map_len;
    char line[256];
    bool inside = false;
    size_t kb_total = 0;
    while (fgets(line, sizeof(line), f)) {
        uintptr_t a, b;
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2 && strchr(line, '-') &&
            line[0] != ' ') {
            inside = a < hi && lo < b;
            continue;
        }
        size_t kb;
        if (inside && sscanf(line, "AnonHugePages: %zu kB", &kb) == 1)
            kb_total += kb;
    }
    fclose(f);
    return kb_total * 1024;
}

void kvn_mem_unmap(struct kvn_mem *m)
{
    if (!m || !m->base)
        return;
    munmap(m->base, m->map_len);
    memset(m, 0, sizeof(*m));
}
