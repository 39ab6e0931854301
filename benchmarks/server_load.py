"""Server under load: N concurrent streaming clients for a bounded time, some leaving mid-stream.

    python benchmarks/server_load.py -m smollm2-135m --clients 32 --seconds 60 --parallel 4 [--json]

Every client loops: a streamed chat completion (random length), read to the end and checked (one id, a role chunk
first, content chunks, one finish_reason chunk, the usage chunk, then [DONE]); one request in --leave-every closes
its connection after a few chunks instead. Reported: requests by status (503 only when the queue is full is
allowed; any other 5xx is a failure), malformed streams, the server's RSS at the start and end of the run (from its
/metrics), and, once the load stops, how long slots take to free after their clients leave (from /metrics).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import random
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from server.conftest import start_server, stop_server  # noqa: E402
from server_throughput import PROMPTS, cpu_name  # noqa: E402


def stream_once(url, body: dict, leave_after: int | None) -> tuple[int, str | None]:
    """One streamed chat completion: (status, problem or None). leave_after: close after that many chunks."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            r.read()
            return r.status, None
        events = []
        while True:
            line = r.readline()
            if not line:
                return 200, "stream ended without [DONE]"
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            events.append(json.loads(data))
            if leave_after is not None and len(events) >= leave_after:
                conn.sock.shutdown(2)
                return 200, None
        return 200, check(events)
    finally:
        conn.close()


def check(chunks: list[dict]) -> str | None:
    """What is wrong with a finished stream, if anything."""
    if any("error" in c for c in chunks):
        return f"error chunk: {chunks[-1]}"
    if len({c["id"] for c in chunks}) != 1:
        return "ids differ between chunks"
    if chunks[0]["choices"][0]["delta"].get("role") != "assistant":
        return "first chunk has no assistant role"
    if chunks[-1]["choices"] or not chunks[-1].get("usage"):
        return "last chunk is not the usage chunk"
    reasons = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    if reasons[-1] not in ("stop", "length") or any(r is not None for r in reasons[:-1]):
        return f"finish reasons {reasons}"
    n = chunks[-1]["usage"]["completion_tokens"]
    if n < 1 or n > 64:
        return f"usage says {n} tokens"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds of the same load before the RSS at the start is taken (the slots' caches and "
                             "the allocator reach their working size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--leave-every", type=int, default=5, help="one request in this many leaves mid-stream")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from edgellm import hub

    path = hub.resolve(args.model)
    server = start_server(path, "--threads", str(args.threads), "--parallel", str(args.parallel), "--queue-size",
                          str(args.queue_size), "--ctx-size", "1024")  # fmt: skip
    statuses: collections.Counter = collections.Counter()
    problems: list[str] = []
    left = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + args.warmup + args.seconds
    try:
        rss_samples = []

        def client(i: int) -> None:
            rng = random.Random(i)
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                leave = rng.randint(2, 6) if n % args.leave_every == 0 else None
                body = {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": rng.randint(8, 64),
                        "temperature": 0.8, "seed": rng.randint(0, 1 << 30), "stream": True,
                        "stream_options": {"include_usage": True}}  # fmt: skip
                try:
                    status, problem = stream_once(server.url, body, leave)
                except OSError as e:
                    status, problem = -1, f"connection failed: {e}"
                with lock:
                    statuses[status] += 1
                    left[0] += leave is not None and status == 200
                    if problem:
                        problems.append(problem)
                if status == 503:
                    time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        rss_start = server.metrics()["edgellm_process_resident_memory_bytes"]
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            rss_samples.append((round(time.monotonic() - t_start), server.metrics()["edgellm_process_resident_memory_bytes"]))
        for t in threads:
            t.join()
        metrics = server.metrics()
        # once idle: clients that leave free their slots within how long?
        free_times = []
        for _ in range(3):
            conns = [threading.Thread(target=stream_once, args=(server.url, {"messages": [{"role": "user",
                     "content": "Tell me a long story."}], "max_tokens": 900, "stream": True}, 3))
                     for _ in range(args.parallel)]  # fmt: skip
            for c in conns:
                c.start()
            for c in conns:
                c.join()
            t0 = time.monotonic()
            while server.metrics()["edgellm_slots_busy"] > 0 and time.monotonic() - t0 < 10:
                time.sleep(0.01)
            free_times.append(time.monotonic() - t0)
        rss_end = rss_samples[-1][1]
    finally:
        stop_server(server)
    five_xx = {s: n for s, n in statuses.items() if s >= 500 and s != 503}
    result = {
        "cpu": cpu_name(), "model": path.name, "threads": args.threads, "clients": args.clients,
        "parallel": args.parallel, "queue_size": args.queue_size, "seconds": args.seconds,
        "requests": dict(sorted(statuses.items())), "left_mid_stream": left[0], "malformed_streams": len(problems),
        "problems": problems[:5], "unintended_5xx": sum(five_xx.values()),
        "tokens_generated": metrics["edgellm_tokens_generated_total"],
        "cancelled": metrics.get('edgellm_requests_total{reason="cancelled"}', 0),
        "rejected_503": metrics.get("edgellm_requests_rejected_total", 0),
        "rss_start_mb": rss_start / 1e6, "rss_end_mb": rss_end / 1e6, "rss_max_mb": max(r for _, r in rss_samples) / 1e6,
        "rss_mb_by_second": [(t, round(r / 1e6, 1)) for t, r in rss_samples],
        "slot_free_seconds": free_times,
    }  # fmt: skip
    ok = not problems and not five_xx and max(free_times) < 1.0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['cpu']}, {path.name}, {args.clients} clients x {args.seconds:g} s (after {args.warmup:g} s) "
              f"on {args.parallel} slots: "
              f"requests {result['requests']}, {left[0]} left mid-stream, {len(problems)} malformed, "
              f"{result['unintended_5xx']} unintended 5xx; RSS {result['rss_start_mb']:.0f} -> "
              f"{result['rss_end_mb']:.0f} MB (max {result['rss_max_mb']:.0f}); slots free "
              f"{max(free_times) * 1e3:.0f} ms after their clients leave")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
