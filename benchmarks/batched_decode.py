"""Batched decode, the engine alone: one step over N sequences, edgellm against llama.cpp on the same GGUF, same
threads, alternating, each engine in its own process.

    python benchmarks/batched_decode.py MODEL.gguf -t 2 -s 1,2,4,8 --past 50 -r 3 \
        --llama-python /path/to/venv-with-llama-cpp-python/bin/python [--json]

Each sequence first holds --past tokens (untimed); then one decode step of N tokens, one per sequence (each with
its own KV cache, logits for every one), is timed 40 times and the median kept. tok/s = N / step time; the ratio
N-sequence tok/s over 1-sequence tok/s is what batching buys (a server's throughput at N streams can only be lower:
it adds sampling and HTTP). llama.cpp runs through llama-cpp-python's low-level API (llama_decode on a batch with
one seq_id per token); it is never a dependency of edgellm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

LLAMA = r"""
import json, sys, time
import llama_cpp as L
path, threads, past, seqs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(s) for s in sys.argv[4].split(",")]
L.llama_backend_init()
model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096, 512, 512, max(seqs)
cp.n_threads = cp.n_threads_batch = threads
ctx = L.llama_init_from_model(model, cp)
def decode(items):
    b = L.llama_batch_init(len(items), 0, max(seqs))
    b.n_tokens = len(items)
    for i, (tok, pos, seq) in enumerate(items):
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, 1
        b.seq_id[i][0] = seq
    assert L.llama_decode(ctx, b) == 0
    L.llama_batch_free(b)
for s in range(max(seqs)):
    decode([(100 + i, i, s) for i in range(past)])
mem = L.llama_get_memory(ctx)
out = {}
for n in seqs:
    times = []
    for _ in range(40):
        for s in range(n):
            L.llama_memory_seq_rm(mem, s, past, -1)
        t = time.perf_counter()
        decode([(200, past, s) for s in range(n)])
        times.append(time.perf_counter() - t)
    out[n] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""

EDGELLM = r"""
import json, sys, time
import numpy as np
from edgellm import LLM
from edgellm.runtime.kv_cache import KVCache
path, threads, past, seqs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(s) for s in sys.argv[4].split(",")]
model = LLM(path, n_ctx=4096, n_threads=threads).model
caches = [KVCache(model.config, 4096) for _ in range(max(seqs))]
for c in caches:
    model.forward(np.arange(100, 100 + past), c, None)
out = {}
for n in seqs:
    times = []
    for _ in range(40):
        for c in caches[:n]:
            c.truncate(past)
        t = time.perf_counter()
        model.forward_batch([(np.array([200]), c) for c in caches[:n]], [True] * n)
        times.append(time.perf_counter() - t)
    out[n] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def run(python: str, code: str, args: list[str]) -> dict[int, float]:
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-s", "--seqs", default="1,2,4,8")
    ap.add_argument("--past", type=int, default=50)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--llama-python", default=sys.executable, help="interpreter that has llama-cpp-python")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from server_throughput import cpu_name

    argv = [args.model, str(args.threads), str(args.past), args.seqs]
    results: dict[str, list[dict[int, float]]] = {"edgellm": [], "llama.cpp": []}
    for _ in range(args.rounds):
        results["edgellm"].append(run(sys.executable, EDGELLM, argv))
        results["llama.cpp"].append(run(args.llama_python, LLAMA, argv))
    seqs = [int(s) for s in args.seqs.split(",")]
    table = {engine: {n: statistics.median(r[n] for r in runs) for n in seqs} for engine, runs in results.items()}
    report = {"cpu": cpu_name(), "model": args.model.rsplit("/", 1)[-1], "threads": args.threads, "past": args.past,
              "rounds": args.rounds,
              "engines": {e: {n: {"step_ms": 1e3 * t, "tok_s": n / t, "vs_one": (n / t) / (1 / steps[1])}
                              for n, t in steps.items()} for e, steps in table.items()}}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['cpu']}, {report['model']}, {args.threads} threads, {args.past} tokens cached per sequence")
    print("| sequences | edgellm tok/s | x one | llama.cpp tok/s | x one | edgellm / llama.cpp |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in seqs:
        e, ll = report["engines"]["edgellm"][n], report["engines"]["llama.cpp"][n]
        print(f"| {n} | {e['tok_s']:.1f} | {e['vs_one']:.2f} | {ll['tok_s']:.1f} | {ll['vs_one']:.2f} | "
              f"{e['tok_s'] / ll['tok_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
