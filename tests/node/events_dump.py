#!/usr/bin/python3
"""Subscribes to a kvnode's KV events (optionally replaying history first) and prints,
as one JSON object, what a router would have learned: the CPU_PINNED BlockStored events
in arrival order (tokens, parent, hash) and the final index per medium (sorted hashes).
Used by tests/node to compare live delivery with a late join's replay, and to check
the order of write-through events. Frame rules are checked by ../shared/tools/kv_events_consumer.py."""
import argparse, json, sys, time
import msgpack, zmq

END = (1 << 64) - 1
FIELDS = {"BlockStored": ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"],
          "BlockRemoved": ["block_hashes", "medium"], "AllBlocksCleared": []}

class Index:
    def __init__(self):
        self.media = {}
        self.cpu_stored = []
        self.last_seq = None
        self.batches = 0
        self.unknown_parent = 0

    def apply(self, seq, payload):
        if self.last_seq is not None and seq <= self.last_seq:
            return
        self.last_seq = seq
        self.batches += 1
        _, events, _ = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        for ev in events:
            if isinstance(ev, dict):
                tag, f = ev["type"], ev
            else:
                tag, f = ev[0], dict(zip(FIELDS.get(ev[0], []), ev[1:]))
            if tag == "AllBlocksCleared":
                self.media.clear()
                continue
            med = f.get("medium") or "GPU"
            s = self.media.setdefault(med, set())
            if tag == "BlockStored":
                p = f["parent_block_hash"]
                if p is not None and p not in s:
                    self.unknown_parent += 1
                if med == "CPU_PINNED":
                    self.cpu_stored.append([f["token_ids"], p, f["block_hashes"][0]])
                s.update(f["block_hashes"])
            elif tag == "BlockRemoved":
                s.difference_update(f["block_hashes"])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint")
    ap.add_argument("--replay")
    ap.add_argument("--from-seq", type=int, default=0)
    ap.add_argument("--topic", default="")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--ready-file")
    a = ap.parse_args()
    ctx = zmq.Context()
    ix = Index()
    sub = None
    if a.endpoint:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, a.topic.encode())
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(a.endpoint)
        time.sleep(0.2)
    if a.ready_file:
        open(a.ready_file, "w").close()
    if a.replay:
        d = ctx.socket(zmq.DEALER)
        d.connect(a.replay)
        d.send_multipart([b"", a.from_seq.to_bytes(8, "big")])
        while d.poll(int(a.seconds * 1000)):
            fr = d.recv_multipart()
            fr = fr[1:] if fr and fr[0] == b"" else fr
            if len(fr) == 3:
                fr = fr[1:]
            s = int.from_bytes(fr[0], "big")
            if s == END:
                break
            ix.apply(s, fr[1])
    while sub is not None and sub.poll(int(a.seconds * 1000)):
        fr = sub.recv_multipart()
        ix.apply(int.from_bytes(fr[1], "big"), fr[2])
    out = {"last_seq": ix.last_seq, "batches": ix.batches, "unknown_parent": ix.unknown_parent,
           "cpu_stored": ix.cpu_stored,
           "index": {k: sorted(v) for k, v in sorted(ix.media.items()) if v}}
    print(json.dumps(out))

if __name__ == "__main__":
    main()
