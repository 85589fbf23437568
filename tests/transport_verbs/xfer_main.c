/*
 * xfer_main.c - a stand-alone "kvbench write|read" for scripts/bench-xfer
 * while bench/kvbench cannot link (it also needs the cache room's index).
 * Same entry point, same argv convention as bench/kvbench.c.
 */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "write") && strcmp(argv[1], "read"))) {
        fprintf(stderr, "usage: %s write|read [options] [HOST]\n", argv[0]);
        return 2;
    }
    return kvn_bench_xfer_main(argc - 1, argv + 1);
}
