"""Batched decode by KV cache type, the engine alone: one decode step over 1 and N sequences of P cached tokens,
every (cache type, sequences) configuration stepped in turn, so drift of the host hits all of them alike.

    python benchmarks/kv_cache_types.py -m smollm2-135m -t 2 --past 115,300 --steps 200 [--json]

Reported per configuration: the median step time over the steps after the first 20, and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from edgellm.api import LLM
from edgellm.runtime.kv_cache import cache_for

TYPES = ("f32", "f16", "q8_0")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-s", "--sequences", type=int, default=4)
    parser.add_argument("--past", default="115,300", help="cached tokens per sequence, comma-separated")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    llm = LLM(args.model, n_ctx=1024, n_threads=args.threads)
    model = llm.model
    rows = []
    for past in (int(p) for p in args.past.split(",")):
        sets = {}
        for kind in TYPES:
            for n in (1, args.sequences):
                caches = [cache_for(model, 1024, kind) for _ in range(n)]
                model.forward_batch([(np.arange(past) + i, c) for i, c in enumerate(caches)], [True] * n)
                sets[kind, n] = caches
        times: dict = {key: [] for key in sets}
        for _ in range(args.steps):
            for key, caches in sets.items():
                for c in caches:
                    c.truncate(past)
                t0 = time.perf_counter()
                model.forward_batch([(np.array([100]), c) for c in caches], [True] * len(caches))
                times[key].append(time.perf_counter() - t0)
        for (kind, n), ts in times.items():
            step = float(np.median(ts[20:]))
            rows.append({"past": past, "cache_type": kind, "sequences": n, "step_ms": 1e3 * step, "tok_s": n / step})
    for row in rows:
        one = next(r for r in rows if (r["past"], r["cache_type"], r["sequences"]) == (row["past"], row["cache_type"], 1))
        row["x_one"] = row["tok_s"] / one["tok_s"]
    if args.json:
        print(json.dumps({"cpu": cpu_name(), "model": args.model, "threads": args.threads, "rows": rows}, indent=2))
        return
    print(f"{cpu_name()}, {args.model}, {args.threads} threads")
    for r in rows:
        print(f"past {r['past']:4d}  {r['cache_type']:5s} {r['sequences']} seq: {r['step_ms']:6.2f} ms/step "
              f"{r['tok_s']:7.1f} tok/s  {r['x_one']:.2f}x one")  # fmt: skip


if __name__ == "__main__":
    main()
