"""Throughput benchmark in the manner of llama-bench: prompt processing (ppN: N tokens in one batch) and text
generation (tgN: N tokens decoded one at a time), mean and sd over repetitions, after one warm-up run. With a
depth D (llama-bench's -d) each test starts from a cache already holding D tokens ("tg128 @ d1024"), filled
before the clock starts. Tokens are random ids: speed does not depend on them."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import kernels
from ..runtime.kv_cache import KVCache, cache_for
from ..runtime.session import Timings


@dataclass(frozen=True)
class BenchResult:
    model: str
    test: str  # "pp512" | "tg128"
    threads: int
    tps: float
    tps_sd: float
    peak_rss_mb: float
    kernel_path: str
    n_ctx: int
    n_depth: int = 0
    bytes_read_per_token: float | None = None  # weights + KV cache per token (C engine), None when unknown
    sparsity: str | None = None
    head: str | None = None
    mem_budget: int | None = None  # bytes, with weights streamed from the file (runtime/offload.py)
    offload: dict | None = None  # the budget's split and, per token, what was read from storage
    stages: int = 1  # pipeline stages (distributed/pipeline.py)
    pipeline: dict | None = None  # with stages: each stage's layers; per decoded token, compute per stage and hops

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _filled_cache(model, depth: np.ndarray, n_more: int) -> KVCache:
    cache = cache_for(model, len(depth) + n_more)
    if len(depth):
        model.forward(depth, cache, slice(-1, None))
    return cache


def _prompt_seconds(model, tokens: np.ndarray, depth: np.ndarray, n_batch: int) -> tuple[float, Timings]:
    """(seconds, what was read per token)"""
    cache = _filled_cache(model, depth, len(tokens))
    t0 = time.perf_counter()
    read = 0.0
    for start in range(0, len(tokens), n_batch):
        last = start + n_batch >= len(tokens)
        model.forward(tokens[start : start + n_batch], cache, slice(-1, None) if last else None)
        read += model.bytes_read()
    return time.perf_counter() - t0, Timings(n_generated=len(tokens), generate_bytes=read)


def _generate_seconds(model, n_tokens: int, first_token: int, depth: np.ndarray) -> tuple[float, Timings]:
    """(seconds, what was read per token)"""
    cache = _filled_cache(model, depth, n_tokens + 1)
    token = first_token
    t = Timings(n_generated=n_tokens)
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        logits = model.forward(np.array([token]), cache)
        t.add_step(model)
        token = int(np.argmax(logits[0]))
    return time.perf_counter() - t0, t


def bench(
    model, model_name: str, n_prompt: int, n_gen: int, threads: int, repetitions: int, depth: int = 0,
    sparsity: str | None = None, head: str | None = None, offload=None,
) -> list[BenchResult]:
    """Run ppN and tgN (either may be 0 to skip) at one thread count, after `depth` tokens of context; under the
    memory budget of `offload` (runtime.offload.OffloadPlan, already set on the model) when given."""
    kernels.set_threads(threads)
    rng = np.random.default_rng(0)
    results = []
    at = f" @ d{depth}" if depth else ""
    tests = [(f"pp{n_prompt}{at}", n_prompt)] if n_prompt else []
    tests += [(f"tg{n_gen}{at}", n_gen)] if n_gen else []
    past = rng.integers(0, model.config.n_vocab, size=depth)
    for test, n in tests:
        if test.startswith("pp"):
            tokens = rng.integers(0, model.config.n_vocab, size=n)
            n_batch = offload.n_batch if offload is not None else max(n, 1)
            run = lambda: _prompt_seconds(model, tokens, past, n_batch)  # noqa: E731
        else:
            run = lambda: _generate_seconds(model, n, int(rng.integers(model.config.n_vocab)), past)  # noqa: E731
        run()  # warm-up: page in the weights, start the threads
        staged = hasattr(model, "pipeline")
        if staged:
            model.reset_stats()
        runs = [run() for _ in range(repetitions)]
        speeds = [n / seconds for seconds, _ in runs]
        sd = statistics.stdev(speeds) if len(speeds) > 1 else 0.0
        read = statistics.mean(t.bytes_read_per_token or 0.0 for _, t in runs) or None
        stats = None
        if offload is not None:
            stats = {**offload.to_dict()}
            if test.startswith("tg"):
                per_run = [t.storage_stats() for _, t in runs]
                stats.update({k: statistics.mean(r[k] for r in per_run) if per_run[0][k] is not None else None
                              for k in per_run[0]})  # fmt: skip
        pipeline = {"stages": model.describe(), **model.stats.to_dict()} if staged and test.startswith("tg") else None
        results.append(BenchResult(model_name, test, threads, statistics.mean(speeds), sd, peak_rss_mb(),
                                   kernels.active_path(), n, depth, read, sparsity, head,
                                   offload.budget if offload is not None else None, stats,
                                   model.n_stages if staged else 1, pipeline))  # fmt: skip
    return results
