/*
 * kvbench_cluster_main.c - the stand-alone `kvbench-cluster` binary: `kvbench cluster`
 * (bench_cluster.c) without the other kvbench subcommands.
 */
#include "bench/bench.h"

int main(int argc, char **argv)
{
    return kvn_bench_cluster_main(argc, argv);
}
