"""Models larger than their memory: edgellm's --mem-budget against the naive baseline, edgellm's own mapped file
and llama.cpp's mmap, each process in a memory cgroup whose limit is the budget plus that engine's own
no-model baseline: the peak resident set (VmHWM) of the same process doing everything but loading weights (the
page cache counts toward the limit, so a mapped file cannot hide in memory the limit does not have).

    python benchmarks/offload.py -m smollm2-135m gemma3-270m --fractions 0.5,0.25 -t 1 -n 32 -r 3 \
        --llama-python /path/to/venv-with-llama-cpp-python/bin/python [--json results.json]

Needs root (it makes cgroups and drops the page cache before every run). Budgets are fractions of the model's
weight bytes. Every run decodes the same prompt greedily; edgellm's tokens under a budget must equal its tokens
without one. Runs that the limit kills are reported as killed. cgroup v2 (memory.max) or v1
(memory.limit_in_bytes) is used, whichever the machine mounts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "The history of the city begins in the Roman era, when a small settlement"

EDGELLM = r"""
import json, sys, time
import numpy as np
from edgellm.api import LLM
args = json.loads(sys.argv[1])
if args["mode"] == "baseline":  # everything but the weights: interpreter, edgellm, header, tokenizer
    from edgellm.formats.gguf import GGUFFile
    from edgellm.tokenizer import Tokenizer
    g = GGUFFile(args["path"]); tok = Tokenizer.from_metadata(g.metadata); tok.encode(args["prompt"])
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(json.dumps({"hwm": int(status["VmHWM"].split()[0]) * 1024})); sys.exit(0)
llm = LLM(args["path"], n_ctx=args["ctx"], n_threads=args["threads"], cache_type="f16", pull=False,
          mem_budget=args.get("budget"), offload_naive=args["mode"] == "naive")
ids = llm.tokenize(args["prompt"])
s = llm.session
logits = s.eval_prompt(ids)
out = []
t0 = time.perf_counter()
for _ in range(args["n"]):
    token = int(np.argmax(logits)); out.append(token)
    logits = s.step(token)
s.timings.n_generated = args["n"]
dt = time.perf_counter() - t0
report = {"tokens": out, "tps": args["n"] / dt}
if llm.offload is not None:
    report |= {"plan": llm.offload.to_dict(), **s.timings.storage_stats()}
print(json.dumps(report))
"""

LLAMA = r"""
import json, sys, time
import llama_cpp as L
args = json.loads(sys.argv[1])
L.llama_backend_init()
if args.get("mode") == "baseline":
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(json.dumps({"hwm": int(status["VmHWM"].split()[0]) * 1024})); sys.exit(0)
mp = L.llama_model_default_params(); mp.use_mmap = True
model = L.llama_model_load_from_file(args["path"].encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx = args["ctx"]; cp.n_batch = cp.n_ubatch = 32; cp.n_threads = cp.n_threads_batch = args["threads"]
ctx = L.llama_init_from_model(model, cp)
vocab = L.llama_model_get_vocab(model); n_vocab = L.llama_vocab_n_tokens(vocab)
def decode(tokens):
    arr = (L.llama_token * len(tokens))(*tokens)
    if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) != 0: raise SystemExit("llama_decode failed")
def argmax():
    row = L.llama_get_logits_ith(ctx, -1)
    best = 0
    for i in range(1, n_vocab):
        if row[i] > row[best]: best = i
    return best
decode(args["ids"])
t0 = time.perf_counter(); out = []; spent = 0.0
for _ in range(args["n"]):
    a = time.perf_counter(); token = argmax(); spent += time.perf_counter() - a  # not llama.cpp's time
    out.append(token); decode([token])
dt = time.perf_counter() - t0 - spent
print(json.dumps({"tokens": out, "tps": args["n"] / dt}))
"""


class Cgroup:
    """A fresh memory cgroup with a limit; processes join it at exec."""

    def __init__(self, name: str, limit: int | None):
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        root = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")
        self.dir = root / name
        if self.dir.exists():
            self.dir.rmdir()
        self.dir.mkdir()
        self.v2 = v2
        if limit is not None:
            (self.dir / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))

    def join(self) -> None:
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        f = self.dir / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes")
        return int(f.read_text()) if f.exists() else -1

    def oom_kills(self) -> int:
        if self.v2:
            events = dict(line.split() for line in (self.dir / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0))
        text = (self.dir / "memory.oom_control").read_text()
        return int(dict(line.split() for line in text.splitlines()).get("oom_kill", 0))

    def remove(self) -> None:
        try:
            self.dir.rmdir()
        except OSError:
            pass


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def run(python: str, code: str, args: dict, limit: int | None, timeout: float) -> dict:
    drop_caches()
    group = Cgroup(f"edgellm-offload-{os.getpid()}", limit)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, "-c", code, json.dumps(args)], capture_output=True, text=True,
                              timeout=timeout, preexec_fn=group.join)  # fmt: skip
        killed = proc.returncode < 0 or group.oom_kills() > 0
        result = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
        if proc.returncode != 0 and not killed:
            result["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        result, killed = {"error": f"no result within {timeout:.0f} s"}, False
    result |= {"killed": killed, "peak_mb": group.peak() / 1e6, "wall_s": time.perf_counter() - t0}
    group.remove()
    return result


def weight_bytes(path: str) -> int:
    from edgellm.formats.gguf import GGUFFile

    return sum(t.n_bytes for t in GGUFFile(path).tensors.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-c", "--ctx-size", type=int, default=256)
    ap.add_argument("--llama-python", default=None, help="a Python with llama-cpp-python (omit to skip llama.cpp)")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default=None, help="write all results to this file")
    args = ap.parse_args()
    from edgellm import hub
    from edgellm.tokenizer import Tokenizer
    from edgellm.formats.gguf import GGUFFile

    results = []
    for name in args.models:
        path = str(hub.resolve(name))
        ids = Tokenizer.from_metadata(GGUFFile(path).metadata).encode(PROMPT, add_special=True, parse_special=False)
        common = {"path": path, "ctx": args.ctx_size, "threads": args.threads, "n": args.n_gen, "prompt": PROMPT}
        baseline = {"edgellm": run(sys.executable, EDGELLM, common | {"mode": "baseline"}, None, args.timeout)["hwm"]}
        if args.llama_python:
            baseline["llama.cpp"] = run(args.llama_python, LLAMA, common | {"mode": "baseline"}, None, args.timeout)["hwm"]
        reference = run(sys.executable, EDGELLM, common | {"mode": "mapped"}, None, args.timeout)
        weights = weight_bytes(path)
        print(f"{name}: weights {weights / 1e6:.1f} MB, no-model baselines "
              f"{', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in baseline.items())}, "
              f"edgellm unlimited {reference['tps']:.2f} tok/s", file=sys.stderr)  # fmt: skip
        for fraction in [float(f) for f in args.fractions.split(",")]:
            budget = int(weights * fraction)
            runs = {
                "edgellm": (sys.executable, EDGELLM, common | {"mode": "budget", "budget": budget}),
                "naive": (sys.executable, EDGELLM, common | {"mode": "naive", "budget": budget}),
                "edgellm-mmap": (sys.executable, EDGELLM, common | {"mode": "mapped"}),
            }
            if args.llama_python:
                runs["llama.cpp-mmap"] = (args.llama_python, LLAMA, common | {"ids": ids})
            row = {"model": name, "fraction": fraction, "budget_mb": budget / 1e6, "weights_mb": weights / 1e6,
                   "baseline_mb": {k: v / 1e6 for k, v in baseline.items()}, "threads": args.threads,
                   "unlimited_tps": reference["tps"]}  # fmt: skip
            for rep in range(args.repetitions):  # engines alternate, so a drift of the machine hits them all
                for key, (python, code, a) in runs.items():
                    limit = budget + baseline["llama.cpp" if key.startswith("llama") else "edgellm"]
                    r = run(python, code, a, limit, args.timeout) | {"limit_mb": limit / 1e6}
                    if key != "llama.cpp-mmap" and "tokens" in r:
                        r["same_tokens"] = r["tokens"] == reference["tokens"]
                    row.setdefault(key, []).append(r)
                    tps = f"{r['tps']:.2f} tok/s" if "tps" in r else r.get("error", "")
                    print(f"  {fraction:.0%} budget {budget / 1e6:.1f} MB {key:>15} (limit {limit / 1e6:.1f} MB): "
                          f"{tps} {'KILLED ' if r['killed'] else ''}peak {r['peak_mb']:.1f} MB "
                          f"{'same tokens' if r.get('same_tokens') else ''}", file=sys.stderr)  # fmt: skip
            for key in runs:
                speeds = [r["tps"] for r in row[key] if "tps" in r]
                row[key + "_median_tps"] = statistics.median(speeds) if speeds else None
            ours = row["edgellm_median_tps"]
            for key in ("naive", "edgellm-mmap", "llama.cpp-mmap"):
                other = row.get(key + "_median_tps")
                row[f"ratio_vs_{key}"] = ours / other if ours and other else None
            print(f"  {fraction:.0%}: edgellm {ours and round(ours, 2)} tok/s median; ratios "
                  + ", ".join(f"{k[9:]} {v:.2f}x" for k, v in row.items() if k.startswith("ratio_vs_") and v),
                  file=sys.stderr)  # fmt: skip
            results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
