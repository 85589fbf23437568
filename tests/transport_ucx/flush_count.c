/*
 * flush_count.c - not a test: an LD_PRELOAD shim that counts ucp_put_nbx and
 * ucp_ep_flush_nbx calls of a process (kvbench is linked dynamically with
 * libucp) and prints "CNT puts N flushes M (F per put)" at exit.  Used to
 * measure how many write-completion flushes transport/ucx issues per WRITE
 * (bench/RESULTS-xfer.md):
 *
 *   gcc -shared -fPIC -O2 -o /tmp/flush_count.so tests/transport_ucx/flush_count.c -ldl
 *   LD_PRELOAD=/tmp/flush_count.so kvbench write -t ucx+tcp ... 127.0.0.1
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <ucp/api/ucp.h>
static unsigned long n_flush, n_put;
ucs_status_ptr_t ucp_ep_flush_nbx(ucp_ep_h ep, const ucp_request_param_t *p)
{
    static ucs_status_ptr_t (*f)(ucp_ep_h, const ucp_request_param_t *);
    if (!f)
        f = (ucs_status_ptr_t(*)(ucp_ep_h, const ucp_request_param_t *))dlsym(RTLD_NEXT,
                                                                              "ucp_ep_flush_nbx");
    n_flush++;
    return f(ep, p);
}
ucs_status_ptr_t ucp_put_nbx(ucp_ep_h ep, const void *b, size_t c, uint64_t ra, ucp_rkey_h rk,
                             const ucp_request_param_t *p)
{
    static ucs_status_ptr_t (*f)(ucp_ep_h, const void *, size_t, uint64_t, ucp_rkey_h,
                                 const ucp_request_param_t *);
    if (!f)
        f = (ucs_status_ptr_t(*)(ucp_ep_h, const void *, size_t, uint64_t, ucp_rkey_h,
                                 const ucp_request_param_t *))dlsym(RTLD_NEXT, "ucp_put_nbx");
    n_put++;
    return f(ep, b, c, ra, rk, p);
}
__attribute__((destructor)) static void done(void)
{
    if (n_put)
        fprintf(stderr, "CNT puts %lu flushes %lu (%.3f per put)\n", n_put, n_flush,
                (double)n_flush / n_put);
}
