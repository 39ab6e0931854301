"""Server throughput: total generated tokens/s with N concurrent streams against one stream, same server, same
threads, measured side by side (alternating rounds).

    python benchmarks/server_throughput.py -m smollm2-135m --threads 2 --streams 4 --tokens 128 --rounds 3 [--json]

Each stream is a streamed chat completion of a different prompt with ignore-eos-like settings: max_tokens fixed and
a logit bias against the end-of-turn token, so every stream generates exactly --tokens tokens. The load generator
runs on the server's own cores, so by default it is the standard library's HTTP client reading the SSE events
(`--client openai`: the official client, which spends a few hundred microseconds of CPU per chunk). Reported: per configuration the median over rounds of total tokens / wall time from the first
request sent to the last stream finished.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

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


def request_body(i: int, tokens: int, bias: dict) -> dict:
    return {"model": "x", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": tokens,
            "temperature": 0.8, "seed": i, "logit_bias": bias, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip


def stream_openai(client, i: int, tokens: int, bias: dict) -> int:
    """One streamed chat completion through the official client; the completion tokens its usage chunk reports."""
    body = request_body(i, tokens, bias)
    stream = client.chat.completions.create(**body)
    used = 0
    for chunk in stream:
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
    return used


def stream_raw(url: str, i: int, tokens: int, bias: dict) -> int:
    """The same request over the standard library's HTTP client: each SSE event parsed as JSON, the stream checked
    (content chunks, a usage chunk, then [DONE]), at a small fraction of the official client's CPU per chunk."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(request_body(i, tokens, bias)),
                     {"Content-Type": "application/json", "Authorization": "Bearer none"})  # fmt: skip
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"stream {i}: HTTP {response.status}: {response.read()[:200]!r}")
        used, done = 0, False
        for line in response:
            if not line.startswith(b"data: "):
                continue
            if line.strip() == b"data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
        if not done:
            raise RuntimeError(f"stream {i} ended without data: [DONE]")
        return used
    finally:
        conn.close()


def run_streams(one, n: int) -> tuple[float, int]:
    """n concurrent streams, `one(i)` each; (seconds from the first request to the last token, tokens generated)."""
    counts = [0] * n

    def worker(i: int) -> None:
        counts[i] = one(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
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
    parser.add_argument("--cache-type", choices=["f32", "f16", "q8_0"], default="f16", help="the server's KV cache")
    parser.add_argument("--client", choices=["raw", "openai"], default="raw",
                        help="load generator: the standard library's HTTP client (default: it takes little of the "
                             "cores the server runs on) or the official openai client")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from edgellm import hub
    from edgellm.api import LLM

    path = hub.resolve(args.model)
    tok = LLM(path, n_ctx=64).tokenizer
    bias = {str(t): -100 for t in tok.eog_ids}  # every stream generates exactly --tokens tokens
    server = start_server(path, "--threads", str(args.threads), "--parallel", str(args.streams), "--ctx-size",
                          str(args.ctx_size), "--cache-type", args.cache_type)  # fmt: skip
    try:
        if args.client == "openai":
            import openai

            client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)

            def one(i: int, tokens: int = args.tokens) -> int:
                return stream_openai(client, i, tokens, bias)
        else:

            def one(i: int, tokens: int = args.tokens) -> int:
                return stream_raw(server.url, i, tokens, bias)

        run_streams(lambda i: one(i, 8), args.streams)  # warm up every slot: its cache pages, its prompt cached
        single, multi = [], []
        for _ in range(args.rounds):  # alternating, so drift of the host hits both alike
            seconds, n = run_streams(one, 1)
            single.append(n / seconds)
            seconds, n = run_streams(one, args.streams)
            multi.append(n / seconds)
        rss = server.metrics()["edgellm_process_resident_memory_bytes"]
    finally:
        stop_server(server)
    result = {
        "cpu": cpu_name(), "model": path.name, "threads": args.threads, "streams": args.streams, "client": args.client,
        "cache_type": args.cache_type,
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
