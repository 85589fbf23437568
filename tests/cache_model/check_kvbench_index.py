#!/usr/bin/python3
"""Runs `kvbench index` on a slice of the Mooncake trace and checks its output.

usage: check_kvbench_index.py KVBENCH TRACE [LIMIT]

1. --page-size 512, unlimited capacity, --json: the replayed hit tokens must
   equal the exact count computed from the trace ids (printed beside it by
   kvbench, and recomputed here independently in Python), and the JSON object
   must carry the documented keys with consistent values.
2. --page-size 16 unlimited: hits between the full-block and the partial-block
   exact counts, and equal to the partial-block count rounded down to whole
   16-token pages per request (recomputed here). --page-size 16 with a small capacity: the shape again, hits at
   most the unlimited ones, nothing cached above capacity, evictions happened.
3. Bad options exit 2 with a message; a missing trace exits 1.
Exit status 0 when every check holds; 77 (skip) when the trace is absent.
"""
import json, os, subprocess, sys

def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)

def run(args, want_rc=0):
    p = subprocess.run(args, capture_output=True, text=True, timeout=240)
    if p.returncode != want_rc:
        fail(f"{' '.join(args)} exited {p.returncode}, want {want_rc}\n{p.stdout}\n{p.stderr}")
    return p

def exact_partial_paged(path, limit, page):
    """Leading blocks seen before, a seen partial last block counting its length,
    each request's hit rounded down to whole pages: what a page-`page` index with
    unlimited capacity must find (page dividing 512)."""
    seen, hits = set(), 0
    with open(path) as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            r = json.loads(line)
            n = r["input_length"]
            ids = r["hash_ids"][: (n + 511) // 512]
            h = 0
            for k, b in enumerate(ids):
                if b not in seen:
                    break
                h += min(512, n - 512 * k)
            hits += h // page * page
            seen.update(ids)
    return hits

def exact_full_blocks(path, limit):
    """Leading full 512-token blocks whose id was seen in an earlier request."""
    seen, hits, total = set(), 0, 0
    with open(path) as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            r = json.loads(line)
            n, ids = r["input_length"], r["hash_ids"]
            total += n
            full = ids[: n // 512]
            for b in full:
                if b not in seen:
                    break
                hits += 512
            seen.update(full)
    return hits, total

KEYS = ["hit_tokens", "total_tokens", "hit_rate", "requests_per_s", "exact_hit_tokens",
        "exact_hit_rate", "exact_partial_hit_tokens", "match_p50_us", "match_p99_us",
        "insert_p50_us", "insert_p99_us", "match_vs_memcmp", "match_vs_memcmp_cold", "insert_vs_sha256",
        "memcmp_ns_per_token", "sha256_ns_per_token", "bytes_per_cached_token",
        "cached_tokens", "index_bytes", "requests", "page_size", "policy"]

def check_shape(o, limit):
    for k in KEYS:
        if k not in o:
            fail(f"JSON lacks {k}: {o}")
    if o["requests"] != limit:
        fail(f"requests {o['requests']} != {limit}")
    if not 0 <= o["hit_tokens"] <= o["total_tokens"]:
        fail("hit_tokens out of range")
    if abs(o["hit_rate"] - o["hit_tokens"] / o["total_tokens"]) > 1e-12:
        fail("hit_rate != hit_tokens / total_tokens")
    if not o["requests_per_s"] > 0:
        fail("requests_per_s not positive")
    if not (o["match_p50_us"] <= o["match_p99_us"] and o["insert_p50_us"] <= o["insert_p99_us"]):
        fail("p50 above p99")
    if not (o["cached_tokens"] > 0 and o["index_bytes"] > 0 and o["bytes_per_cached_token"] > 0):
        fail("memory figures missing")

def main():
    kvbench, trace = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    if not os.access(trace, os.R_OK):
        print(f"trace {trace} not readable: skipped")
        sys.exit(77)

    p = run([kvbench, "index", "--trace", trace, "--page-size", "512", "--limit", str(limit),
             "--json"])
    o = json.loads(p.stdout)
    check_shape(o, limit)
    hits, total = exact_full_blocks(trace, limit)
    if o["total_tokens"] != total:
        fail(f"total_tokens {o['total_tokens']} != {total} (python)")
    if o["exact_hit_tokens"] != hits:
        fail(f"kvbench's exact count {o['exact_hit_tokens']} != {hits} (python)")
    if o["hit_tokens"] != hits or o["exact_match"] is not True:
        fail(f"replay hit {o['hit_tokens']} != exact {hits}")
    if hits == 0:
        fail("the slice has no hit at all: the check would be vacuous")
    print(f"page 512 unlimited: hit {o['hit_tokens']} == exact {hits} of {total} "
          f"({o['hit_rate']:.4f})")

    # page 16, unlimited: whole-block hits are page hits too, and nothing beyond the
    # blocks seen before (a seen partial last block at most) can hit
    p = run([kvbench, "index", "--trace", trace, "--page-size", "16", "--limit", str(limit),
             "--json"])
    u = json.loads(p.stdout)
    check_shape(u, limit)
    if not o["exact_hit_tokens"] <= u["hit_tokens"] <= o["exact_partial_hit_tokens"]:
        fail(f"page 16 hit {u['hit_tokens']} outside [{o['exact_hit_tokens']}, "
             f"{o['exact_partial_hit_tokens']}]")
    want16 = exact_partial_paged(trace, limit, 16)
    if u["hit_tokens"] != want16:
        fail(f"page 16 hit {u['hit_tokens']} != {want16} (python: partial rule, whole pages)")
    if u["exact_match"] is not None:
        fail("exact_match must be null off page 512 / unlimited")
    print(f"page 16 unlimited: hit {u['hit_tokens']} within [{o['exact_hit_tokens']}, "
          f"{o['exact_partial_hit_tokens']}]")

    cap = 200000
    p = run([kvbench, "index", "--trace", trace, "--page-size", "16", "--capacity", str(cap),
             "--policy", "lfu", "--limit", str(limit), "--json"])
    c = json.loads(p.stdout)
    check_shape(c, limit)
    if c["capacity_tokens"] != cap or c["policy"] != "lfu" or c["page_size"] != 16:
        fail(f"options not echoed: {c}")
    if c["cached_tokens"] > cap:
        fail(f"{c['cached_tokens']} tokens cached above capacity {cap}")
    if c["hit_tokens"] > u["hit_tokens"]:
        fail(f"capacity run hit {c['hit_tokens']} > unlimited {u['hit_tokens']}")
    if c["evicted_pages"] <= 0:
        fail("capacity run evicted nothing")
    print(f"page 16 capacity {cap} lfu: hit rate {c['hit_rate']:.4f}, "
          f"evicted {c['evicted_pages']} pages")

    p = run([kvbench, "index", "--trace", trace, "--page-size", "16", "--limit", "20"])
    if "hit rate" not in p.stdout or "sha256" not in p.stdout:
        fail(f"text output lacks fields:\n{p.stdout}")

    for bad in (["--page-size", "0"], ["--capacity", "x"], ["--policy", "fifo"],
                ["--limit", "-3"], ["--bogus"]):
        p = run([kvbench, "index", "--trace", trace] + bad, want_rc=2)
        if not p.stderr:
            fail(f"{bad}: no message")
    run([kvbench, "index"], want_rc=2)
    run([kvbench, "index", "--trace", "/nonexistent/trace.jsonl"], want_rc=1)
    run([kvbench, "nosuch"], want_rc=2)
    print("ok")

main()
