"""edgellm against llama.cpp on the same GGUF, same threads, alternating runs, each in a fresh process.

    python benchmarks/vs_llamacpp.py MODEL.gguf [MODEL.gguf ...] -t 1,2 -p 512 -n 128 [-d 1024] -r 3 \
        --llama-python /path/to/venv-with-llama-cpp-python/bin/python

`-d D` (llama-bench's depth) first fills the cache with D random tokens, untimed, in both engines.
`--busy N` keeps N busy-looping processes running for the whole run, as other apps on a device would.

llama.cpp runs through llama-cpp-python's low-level API (llama_decode on one batch), which builds llama.cpp
from its source package; it is never a dependency of edgellm. For each (model, threads, test) the two
engines alternate `-r` times; the table shows mean tok/s, the ratio edgellm / llama.cpp, and each process's
peak RSS (from wait4, so both are measured the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

WORKER = r"""
import json, sys, time
import numpy as np
import llama_cpp as L
path, threads, test, n, depth = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
L.llama_backend_init()
mparams = L.llama_model_default_params()
model = L.llama_model_load_from_file(path.encode(), mparams)
cparams = L.llama_context_default_params()
cparams.n_ctx = max(depth + n + 8, 512)
cparams.n_batch = max(n, depth, 512)
cparams.n_ubatch = max(n, depth, 512)
cparams.n_threads = threads
cparams.n_threads_batch = threads
ctx = L.llama_init_from_model(model, cparams)
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
rng = np.random.default_rng(0)
mem = L.llama_get_memory(ctx)

def decode(tokens):
    arr = (L.llama_token * len(tokens))(*tokens)
    if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) != 0:
        raise SystemExit("llama_decode failed")

def run():
    L.llama_memory_clear(mem, True)
    if depth:
        decode([int(t) for t in rng.integers(0, n_vocab, depth)])
    if test == "pp":
        tokens = [int(t) for t in rng.integers(0, n_vocab, n)]
        t0 = time.perf_counter(); decode(tokens); return time.perf_counter() - t0
    token = int(rng.integers(0, n_vocab))
    t0 = time.perf_counter()
    for _ in range(n):
        decode([token])
    return time.perf_counter() - t0

run()
print(json.dumps({"tps": n / run()}))
"""

EDGELLM = r"""
import json, sys
from edgellm.eval.bench import bench
from edgellm.formats.gguf import GGUFFile
from edgellm.model.transformer import Transformer
from edgellm.runtime.store import MappedStore
path, threads, test, n, depth = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
g = GGUFFile(path)
model = Transformer.from_store(g.metadata, MappedStore(g))
r = bench(model, path, n if test == "pp" else 0, n if test == "tg" else 0, threads, 1, depth)[0]
print(json.dumps({"tps": r.tps, "kernel_path": r.kernel_path}))
"""


def run_child(python: str, code: str, args: list[str]) -> tuple[dict, float]:
    """Run one measurement in a fresh process; return its JSON and its peak RSS in MB."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # llama.cpp logs a lot
        proc = subprocess.Popen([python, "-c", code, *args], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read().strip()
    if status != 0:
        raise SystemExit(f"{python} failed: {stderr.splitlines()[-1] if stderr else status}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-d", "--depth", type=int, default=0, help="tokens in the cache before each test")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--llama-python", default=sys.executable, help="interpreter that has llama-cpp-python")
    ap.add_argument("--busy", type=int, default=0, help="busy-looping background processes during the run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        compare(args)
    finally:
        for p in busy:
            p.kill()
            p.wait()


def compare(args: argparse.Namespace) -> None:

    rows = []
    tests = [("pp", args.n_prompt)] * bool(args.n_prompt) + [("tg", args.n_gen)] * bool(args.n_gen)
    for model in args.models:
        for threads in [int(t) for t in args.threads.split(",")]:
            for test, n in tests:
                ours, theirs, rss_ours, rss_theirs, path = [], [], [], [], ""
                for _ in range(args.repetitions):
                    result, rss = run_child(sys.executable, EDGELLM, [model, str(threads), test, str(n), str(args.depth)])
                    ours.append(result["tps"])
                    rss_ours.append(rss)
                    path = result["kernel_path"]
                    result, rss = run_child(args.llama_python, WORKER, [model, str(threads), test, str(n), str(args.depth)])
                    theirs.append(result["tps"])
                    rss_theirs.append(rss)
                row = {
                    "model": os.path.basename(model), "threads": threads, "busy": args.busy, "test": f"{test}{n}" + (f" @ d{args.depth}" if args.depth else ""),
                    "edgellm_tps": statistics.mean(ours), "llamacpp_tps": statistics.mean(theirs),
                    "ratio": statistics.mean(ours) / statistics.mean(theirs),
                    "edgellm_rss_mb": max(rss_ours), "llamacpp_rss_mb": max(rss_theirs), "kernel_path": path,
                }  # fmt: skip
                rows.append(row)
                if not args.json:
                    print(f"{row['model']:<34} t={threads} busy={args.busy} {row['test']:>13}  edgellm {row['edgellm_tps']:8.1f}  "
                          f"llama.cpp {row['llamacpp_tps']:8.1f}  ratio {row['ratio']:.2f}  "
                          f"RSS {row['edgellm_rss_mb']:.0f} / {row['llamacpp_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
