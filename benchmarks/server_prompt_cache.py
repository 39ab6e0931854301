"""Prompt cache: a chat's second turn against a live server re-computes only its new tokens.

    python benchmarks/server_prompt_cache.py -m smollm2-135m --threads 2 [--json]

Turn 1: a system prompt and a question; turn 2: the same conversation with the answer and a follow-up. Reported
for each turn: prompt tokens, how many came from the cache, how many were evaluated and the prompt time (the
server's timings), and the /metrics counters before and after turn 2. A third request sends turn 2 to a fresh
server (no cache) for the time the cache saved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from server.conftest import start_server, stop_server  # noqa: E402
from server_throughput import cpu_name  # noqa: E402

SYSTEM = ("You are a helpful assistant for travellers. Answer briefly and precisely. Give distances in kilometres "
          "and times in hours. If you do not know something, say so instead of guessing. ") * 4  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from edgellm import hub

    path = hub.resolve(args.model)
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "How far is Paris from Lyon?"}]
    ask = {"max_tokens": 32, "temperature": 0}
    server = start_server(path, "--threads", str(args.threads), "--ctx-size", "2048")
    try:
        _, first = server.post("/v1/chat/completions", {"messages": turn1, **ask})
        turn2 = turn1 + [first["choices"][0]["message"], {"role": "user", "content": "And by train, how long?"}]
        before = server.metrics()
        _, second = server.post("/v1/chat/completions", {"messages": turn2, **ask})
        after = server.metrics()
    finally:
        stop_server(server)
    fresh = start_server(path, "--threads", str(args.threads), "--ctx-size", "2048")
    try:
        _, cold = fresh.post("/v1/chat/completions", {"messages": turn2, **ask})
    finally:
        stop_server(fresh)
    keys = ["edgellm_prompt_cache_hits_total", "edgellm_prompt_cache_tokens_total", "edgellm_prompt_tokens_total"]
    report = {
        "cpu": cpu_name(), "model": path.name, "threads": args.threads,
        "turn1": first["timings"] | {"prompt_tokens": first["usage"]["prompt_tokens"]},
        "turn2": second["timings"] | {"prompt_tokens": second["usage"]["prompt_tokens"]},
        "turn2_without_cache": cold["timings"] | {"prompt_tokens": cold["usage"]["prompt_tokens"]},
        "metrics_turn2": {k: after[k] - before[k] for k in keys},
        "same_answer": second["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"],
    }  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['cpu']}, {path.name}, {args.threads} threads")
    for name in ("turn1", "turn2", "turn2_without_cache"):
        t = report[name]
        print(f"{name}: {t['prompt_tokens']} prompt tokens, {t['cached_n']} from the cache, {t['prompt_n']} evaluated "
              f"in {t['prompt_ms']:.1f} ms")  # fmt: skip
    print("metrics over turn 2:", report["metrics_turn2"], "| same answer as without the cache:", report["same_answer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
