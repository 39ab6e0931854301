"""A model with its KV cache: evaluates prompts (reusing the cached common prefix) and generates tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import BudgetError
from .kv_cache import cache_for


@dataclass
class Timings:
    n_prompt: int = 0  # prompt tokens actually evaluated (cached prefix excluded)
    prompt_seconds: float = 0.0
    n_generated: int = 0
    generate_seconds: float = 0.0
    generate_bytes: float = 0.0  # weights + KV cache read by the decode steps (C engine), 0 when unknown
    # under a memory budget, what the decode steps read from the model file: bytes, reads, seconds waited, seconds
    # reads were in flight (runtime/offload.py)
    storage: tuple[float, ...] = (0.0,) * 6  # ... and routed experts found in the cache, routed experts read
    weight_bytes: float = 0.0  # of generate_bytes, the weights

    @property
    def bytes_read_per_token(self) -> float | None:
        return self.generate_bytes / self.n_generated if self.generate_bytes and self.n_generated else None

    def add_step(self, model) -> None:
        """Count what the model's last decode step read (bytes_read_per_token, storage_stats)."""
        self.generate_bytes += model.bytes_read()
        self.weight_bytes += model.weight_bytes_read()
        self.storage = tuple(a + b for a, b in zip(self.storage, model.storage_read()))

    def storage_stats(self) -> dict:
        """Per decoded token: bytes and reads from storage, the share of weight bytes found in memory, and the
        milliseconds the engine waited for reads (reads in flight meanwhile were hidden behind compute)."""
        n = max(self.n_generated, 1)
        read, reads, wait, busy, hits, misses = self.storage
        return {
            "expert_hit_rate": hits / (hits + misses) if hits + misses else None,
            "storage_bytes_per_token": read / n, "reads_per_token": reads / n,
            "cache_hit_rate": max(0.0, 1.0 - read / self.weight_bytes) if self.weight_bytes else None,
            "io_wait_ms_per_token": 1e3 * wait / n, "io_busy_ms_per_token": 1e3 * busy / n,
            "io_hidden_fraction": max(0.0, 1.0 - wait / busy) if busy else None,
        }  # fmt: skip

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.n_generated / self.generate_seconds if self.generate_seconds else 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share (what a KV cache holding a can keep for b)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Session:
    def __init__(self, model, n_ctx: int, n_batch: int = 512, cache_type: str = "f32"):
        self.model = model
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.cache = cache_for(model, n_ctx, cache_type)
        self.tokens: list[int] = []  # what the cache holds, in order
        # (n, logits after tokens[:n]) of the last prompt: the same prompt again gets these very logits (its last
        # token re-run alone would round differently from the batch it came in, and a seed would not repeat)
        self._prompt_logits: tuple[int, np.ndarray] | None = None
        self.timings = Timings()
        self.finish_reason: str | None = None  # why the last generation ended ("stop", "length")

    def reset(self) -> None:
        self.cache.truncate(0)
        self.tokens = []
        self._prompt_logits = None

    def eval_prompt(self, ids: Sequence[int]) -> np.ndarray:
        """Make the cache hold exactly `ids`; return the logits after the last one."""
        ids = list(ids)
        if not ids:
            raise BudgetError("empty prompt: give at least one token (or let the tokenizer add BOS)")
        if len(ids) > self.n_ctx:
            raise BudgetError(
                f"prompt has {len(ids)} tokens, more than the context size {self.n_ctx}; "
                "shorten the prompt or raise the context size (--ctx-size)"
            )
        if self.cache.n_past < len(self.tokens):  # the cache lost what it held (a pipeline's stages restarted)
            self.tokens, self._prompt_logits = self.tokens[: self.cache.n_past], None
        common = common_prefix(self.tokens, ids)
        stored = self._prompt_logits
        if common == len(ids) and stored is not None and stored[0] == common:
            self.cache.truncate(common)
            self.tokens = ids
            self.timings = Timings()
            return stored[1].copy()
        common = min(common, len(ids) - 1)  # always run the last token to get its logits
        if stored is not None and stored[0] > common:
            self._prompt_logits = None
        self.cache.truncate(common)
        self.tokens = ids[:common]
        t0 = time.perf_counter()
        logits = None
        for start in range(common, len(ids), self.n_batch):
            batch = ids[start : start + self.n_batch]
            last = start + len(batch) == len(ids)
            out = self.model.forward(np.asarray(batch), self.cache, slice(-1, None) if last else None)
            self.tokens.extend(batch)
            if last:
                logits = out[0]
        self.timings = Timings(n_prompt=len(ids) - common, prompt_seconds=time.perf_counter() - t0)
        self._prompt_logits = (len(ids), logits.copy())
        return logits

    def step(self, token: int) -> np.ndarray:
        """Append one token; return the logits after it."""
        logits = self.model.forward(np.asarray([token]), self.cache)[0]
        self.timings.add_step(self.model)
        self.tokens.append(token)
        return logits

    def generate(
        self,
        prompt_ids: Sequence[int],
        sample: Callable[[np.ndarray, Sequence[int]], int],
        max_tokens: int | None,
        stop_ids: frozenset[int] = frozenset(),
    ) -> Iterator[int]:
        """Yield sampled tokens until an end-of-generation token, `max_tokens`, or a full context.

        The end-of-generation token itself is not yielded. `self.finish_reason` says why it ended.
        """
        logits = self.eval_prompt(prompt_ids)
        self.finish_reason = "length"
        t0 = time.perf_counter()
        n = 0
        try:
            while max_tokens is None or n < max_tokens:
                token = sample(logits, self.tokens)
                if token in stop_ids:
                    self.finish_reason = "stop"
                    return
                n += 1
                self.timings.n_generated = n
                yield token
                if len(self.tokens) >= self.n_ctx:
                    return
                logits = self.step(token)
                self.timings.generate_seconds = time.perf_counter() - t0
        finally:
            self.timings.generate_seconds = time.perf_counter() - t0
