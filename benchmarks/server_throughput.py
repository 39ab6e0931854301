"""Server throughput: total generated tokens/s with N concurrent streams against one stream, same server, same
threads, measured side by side (alternating rounds).

    python benchmarks/server_throughput.py -m smollm2-135m --threads 2 --streams 4 --tokens 128 --rounds 3 [--json]

Each stream is a streamed chat completion (the official openai client) of a different prompt with ignore-eos-like
settings: max_tokens fixed and a logit bias against the end-of-turn token, so every stream generates exactly
--tokens tokens. Reported: per configuration the median over rounds of total tokens / wall time from the first
request sent to the last stream finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from server.conftest import start_server, stop_server  # noqa: E402

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a refrigerator works.",
           "Describe a walk through a forest in autumn.", "List some ideas for a birthday party.",
           "What makes a good cup of coffee?", "Tell me about the history of bicycles.",
           "How do bees make honey?", "Describe the city of Paris to a child."]  # fmt: skip


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_streams(client, n: int, tokens: int, bias: dict) -> tuple[float, int]:
    """n concurrent streams; (seconds from the first request to the last token, tokens generated)."""
    counts = [0] * n

    def one(i: int) -> None:
        stream = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], max_tokens=tokens,
            temperature=0.8, seed=i, logit_bias=bias, stream=True, stream_options={"include_usage": True})  # fmt: skip
        for chunk in stream:
            if chunk.usage is not None:
                counts[i] = chunk.usage.completion_tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sum(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ctx-size", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import openai

    from edgellm import hub
    from edgellm.api import LLM

    path = hub.resolve(args.model)
    tok = LLM(path, n_ctx=64).tokenizer
    bias = {str(t): -100 for t in tok.eog_ids}  # every stream generates exactly --tokens tokens
    server = start_server(path, "--threads", str(args.threads), "--parallel", str(args.streams), "--ctx-size",
                          str(args.ctx_size))  # fmt: skip
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
        run_streams(client, 1, 8, bias)  # warm up
        single, multi = [], []
        for _ in range(args.rounds):  # alternating, so drift of the host hits both alike
            seconds, n = run_streams(client, 1, args.tokens, bias)
            single.append(n / seconds)
            seconds, n = run_streams(client, args.streams, args.tokens, bias)
            multi.append(n / seconds)
        rss = server.metrics()["edgellm_process_resident_memory_bytes"]
    finally:
        stop_server(server)
    result = {
        "cpu": cpu_name(), "model": path.name, "threads": args.threads, "streams": args.streams,
        "tokens_per_stream": args.tokens, "rounds": args.rounds, "single_tps": statistics.median(single),
        "multi_tps": statistics.median(multi), "ratio": statistics.median(multi) / statistics.median(single),
        "single_runs": single, "multi_runs": multi, "server_rss_mb": rss / 1e6,
        "edgellm": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=os.path.dirname(__file__)).stdout.strip(),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['cpu']}, {path.name}, {args.threads} threads: 1 stream {result['single_tps']:.1f} tok/s, "
              f"{args.streams} streams {result['multi_tps']:.1f} tok/s in all = {result['ratio']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
