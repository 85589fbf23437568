/*
 * bench.h - the subcommands of kvbench.
 *
 *     kvbench index   --trace FILE ...   replay a Mooncake trace through the radix
 *                                        index (bench/bench_index.c)
 *     kvbench write   ...                RMA write bandwidth/latency, perftest style
 *     kvbench read    ...                RMA read bandwidth/latency  (bench/bench_xfer.c)
 *     kvbench cluster ...                multi-node scenario          (bench/bench_cluster.c)
 *
 * bench/kvbench.c owns main(): it looks at argv[1] and calls one of the entry
 * points below with argc/argv shifted so that argv[0] is the subcommand name
 * ("index", "write", "read", "cluster") and argv[1..] its options.
 *
 * Each entry point parses its own options, prints its own usage on error, and
 * returns a process exit status: 0 on success, 1 on a runtime failure, 2 on a
 * usage error.  kvbench.c returns that status from main().  Entry points run on
 * the main thread; they may start threads of their own and must join them
 * before returning.
 *
 * bench_xfer.c and bench_cluster.c are optional at build time: bench/meson.build
 * compiles them only when the files exist and then defines KVN_HAVE_BENCH_XFER /
 * KVN_HAVE_BENCH_CLUSTER; without them kvbench prints "kvbench: 'write' not built".
 *
 * kvn_bench_xfer_main serves both "write" and "read": it tells them apart by
 * argv[0].
 */
#ifndef KVN_BENCH_H
#define KVN_BENCH_H

/* kvbench index: trace replay through the index (bench/bench_index.c). */
int kvn_bench_index_main(int argc, char **argv);

/* kvbench write / kvbench read: transport benchmark (bench/bench_xfer.c);
 * argv[0] is "write" or "read". */
int kvn_bench_xfer_main(int argc, char **argv);

/* kvbench cluster: multi-node benchmark (bench/bench_cluster.c). */
int kvn_bench_cluster_main(int argc, char **argv);

#endif /* KVN_BENCH_H */
