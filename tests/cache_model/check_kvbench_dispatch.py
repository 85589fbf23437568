#!/usr/bin/python3
"""kvbench's dispatch in a build without bench_xfer.c / bench_cluster.c.

usage: check_kvbench_dispatch.py KVBENCH_WITHOUT_XFER
Subcommands that are not compiled in must say "kvbench: '<name>' not built" and
exit 2; help lists them as not built; an unknown subcommand exits 2; index runs.
"""
import subprocess, sys

def run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60)

def main():
    kvbench = sys.argv[1]
    for sub in ("write", "read", "cluster"):
        p = run([kvbench, sub, "--size", "4096"])
        want = f"kvbench: '{sub}' not built"
        if p.returncode != 2 or want not in p.stderr:
            print(f"FAIL: {sub}: rc {p.returncode}, stderr {p.stderr!r}, want {want!r}")
            sys.exit(1)
    p = run([kvbench, "--help"])
    if p.returncode != 0 or p.stdout.count("(not built)") != 3:
        print(f"FAIL: --help: rc {p.returncode}\n{p.stdout}")
        sys.exit(1)
    for args in ([], ["bogus"]):
        p = run([kvbench] + args)
        if p.returncode != 2 or "usage: kvbench" not in p.stderr:
            print(f"FAIL: {args}: rc {p.returncode}\n{p.stderr}")
            sys.exit(1)
    p = run([kvbench, "index", "--help"])
    if p.returncode != 0 or "--trace FILE" not in p.stdout:
        print(f"FAIL: index --help: rc {p.returncode}\n{p.stdout}{p.stderr}")
        sys.exit(1)
    print("ok")

main()
