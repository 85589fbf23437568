/* storage.c - the L3 file tier (see storage.h). */
#include "node/storage.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define KVP_MAGIC 0x504e564bu /* "KVNP" little endian */

struct kvp_header {
    uint32_t magic, version, page_size, flags;
    int64_t hash, parent_hash;
    uint64_t ns, page_bytes;
};

struct kvn_storage {
    char dir[PATH_MAX / 2];
    const struct kvn_host_pool *pool;
    bool fsync_files;
    uint32_t *tokbuf;
    uint32_t tokcap;
    struct kvn_storage_stats st;
};

int kvn_storage_open(const char *dir, const struct kvn_host_pool *pool, bool fsync_files,
                     struct kvn_storage **out, struct kvn_err *err)
{
    if (!dir || !dir[0] || !pool || !out)
        return kvn_err_set(err, -EINVAL, "storage dir, pool and out must be given");
    struct kvn_storage *s = calloc(1, sizeof(*s));
    if (!s)
        return kvn_err_set(err, -ENOMEM, "no memory for storage");
    if (strlen(dir) >= sizeof(s->dir) - 64) {
        free(s);
        return kvn_err_set(err, -EINVAL, "storage dir path too long");
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        int e = errno;
        free(s);
        return kvn_err_set(err, -e, "mkdir %s: %s", dir, strerror(e));
    }
    if (access(dir, W_OK | X_OK) < 0) {
        int e = errno;
        free(s);
        return kvn_err_set(err, -e, "storage dir %s: %s", dir, strerror(e));
    }
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    s->pool = pool;
    s->fsync_files = fsync_files;
    *out = s;
    return 0;
}

void kvn_storage_close(struct kvn_storage *s)
{
    if (!s)
        return;
    free(s->tokbuf);
    free(s);
}

static int ns_dir(struct kvn_storage *s, uint64_t ns, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/ns-%" PRIu64, s->dir, ns);
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int write_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

int kvn_storage_backup(struct kvn_storage *s, const struct kvn_storage_fragment *f,
                       struct kvn_err *err)
{
    if (!s || !f || !f->tokens || !f->hashes || !f->l2_pages || f->n_pages == 0 ||
        f->page_size == 0)
        return kvn_err_set(err, -EINVAL, "bad storage fragment");
    for (uint32_t i = 0; i < f->n_pages; i++)
        if (f->l2_pages[i] >= s->pool->n_pages)
            return kvn_err_set(err, -EINVAL, "fragment page %u out of the pool", f->l2_pages[i]);
    if (s->tokcap < f->page_size) {
        uint32_t *t = realloc(s->tokbuf, sizeof(uint32_t) * f->page_size);
        if (!t)
            return kvn_err_set(err, -ENOMEM, "no memory for a token buffer");
        s->tokbuf = t;
        s->tokcap = f->page_size;
    }
    char dir[PATH_MAX / 2 + 64], path[PATH_MAX], tmp[PATH_MAX];
    int rc = ns_dir(s, f->ns, dir, sizeof(dir));
    if (rc < 0) {
        s->st.failures++;
        return kvn_err_set(err, rc, "mkdir %s: %s", dir, strerror(-rc));
    }
    for (uint32_t i = 0; i < f->n_pages; i++) {
        struct kvp_header h = {.magic = KVP_MAGIC,
                               .version = 1,
                               .page_size = f->page_size,
                               .flags = (i > 0 || f->has_parent) ? 1u : 0u,
                               .hash = f->hashes[i],
                               .parent_hash =
                                   i > 0 ? f->hashes[i - 1] : (f->has_parent ? f->parent_hash : 0),
                               .ns = f->ns,
                               .page_bytes = s->pool->page_bytes};
        for (uint32_t t = 0; t < f->page_size; t++)
            s->tokbuf[t] = (uint32_t)f->tokens[(size_t)i * f->page_size + t];
        snprintf(path, sizeof(path), "%s/%016" PRIx64 ".kvp", dir, (uint64_t)f->hashes[i]);
        snprintf(tmp, sizeof(tmp), "%s/.%016" PRIx64 ".tmp", dir, (uint64_t)f->hashes[i]);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            rc = -errno;
            goto fail;
        }
        struct iovec iov[3] = {
            {&h, sizeof(h)},
            {s->tokbuf, sizeof(uint32_t) * f->page_size},
            {kvn_host_pool_page(s->pool, f->l2_pages[i]), (size_t)s->pool->page_bytes}};
        rc = write_all(fd, iov, 3);
        if (rc == 0 && s->fsync_files && fsync(fd) < 0)
            rc = -errno;
        if (close(fd) < 0 && rc == 0)
            rc = -errno;
        if (rc == 0 && rename(tmp, path) < 0)
            rc = -errno;
        if (rc < 0) {
            unlink(tmp);
            goto fail;
        }
        s->st.pages_written++;
        s->st.bytes_written += s->pool->page_bytes;
    }
    return 0;
fail:
    s->st.failures++;
    return kvn_err_set(err, rc, "writing %s: %s", path, strerror(-rc));
}

int kvn_storage_read(struct kvn_storage *s, uint64_t ns, int64_t hash, int32_t *tokens,
                     uint32_t page_size, void *buf, uint64_t page_bytes, struct kvn_err *err)
{
    if (!s || !tokens || !buf || page_size == 0)
        return kvn_err_set(err, -EINVAL, "bad arguments");
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/ns-%" PRIu64 "/%016" PRIx64 ".kvp", s->dir, ns,
             (uint64_t)hash);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return kvn_err_set(err, -ENOENT, "no stored page %016" PRIx64, (uint64_t)hash);
    struct kvp_header h;
    int rc = 0;
    if (fread(&h, sizeof(h), 1, fp) != 1 || h.magic != KVP_MAGIC || h.version != 1 ||
        h.page_size != page_size || h.page_bytes != page_bytes || h.hash != hash) {
        rc = kvn_err_set(err, -EPROTO, "%s: bad header", path);
    } else {
        for (uint32_t t = 0; t < page_size && rc == 0; t++) {
            uint32_t v;
            if (fread(&v, sizeof(v), 1, fp) != 1)
                rc = kvn_err_set(err, -EPROTO, "%s: truncated", path);
            else
                tokens[t] = (int32_t)v;
        }
        if (rc == 0 && fread(buf, 1, (size_t)page_bytes, fp) != page_bytes)
            rc = kvn_err_set(err, -EPROTO, "%s: truncated", path);
    }
    fclose(fp);
    return rc;
}

void kvn_storage_get_stats(const struct kvn_storage *s, struct kvn_storage_stats *out)
{
    if (s && out)
        *out = s->st;
}
