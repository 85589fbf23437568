/*
 * kvbench.c - the kvbench entry point: dispatches to one subcommand.
 *
 *     kvbench index   --trace FILE [...]   trace replay through the radix index
 *     kvbench write   [...]                RMA write benchmark (when built)
 *     kvbench read    [...]                RMA read benchmark  (when built)
 *     kvbench cluster [...]                multi-node benchmark (when built)
 *
 * Subcommands compiled out of this build (bench/meson.build includes
 * bench_xfer.c / bench_cluster.c only when they exist) print
 * "kvbench: 'write' not built" and exit 2.
 */
#include "bench/bench.h"

#include <stdio.h>
#include <string.h>

#if !defined(KVN_HAVE_BENCH_XFER) || !defined(KVN_HAVE_BENCH_CLUSTER)
static int not_built(const char *name)
{
    fprintf(stderr, "kvbench: '%s' not built\n", name);
    return 2;
}
#endif

#ifndef KVN_HAVE_BENCH_XFER
int kvn_bench_xfer_main(int argc, char **argv)
{
    return not_built(argc > 0 ? argv[0] : "write");
}
#endif

#ifndef KVN_HAVE_BENCH_CLUSTER
int kvn_bench_cluster_main(int argc, char **argv)
{
    return not_built(argc > 0 ? argv[0] : "cluster");
}
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvbench <subcommand> [options]\n"
            "  index   --trace FILE [--page-size N] [--capacity TOKENS] [--policy lru|lfu]\n"
            "          [--limit N] [--json]      replay a Mooncake trace through the index\n"
            "  write   [options]                 RMA write benchmark%s\n"
            "  read    [options]                 RMA read benchmark%s\n"
            "  cluster [options]                 multi-node benchmark%s\n"
            "Run 'kvbench <subcommand> --help' for its options.\n",
#ifdef KVN_HAVE_BENCH_XFER
            "", "",
#else
            " (not built)", " (not built)",
#endif
#ifdef KVN_HAVE_BENCH_CLUSTER
            ""
#else
            " (not built)"
#endif
    );
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "index"))
        return kvn_bench_index_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "write") || !strcmp(cmd, "read"))
        return kvn_bench_xfer_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "cluster"))
        return kvn_bench_cluster_main(argc - 1, argv + 1);
    fprintf(stderr, "kvbench: unknown subcommand '%s'\n", cmd);
    usage(stderr);
    return 2;
}
