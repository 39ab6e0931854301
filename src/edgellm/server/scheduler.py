"""Continuous batching: one thread steps every active sequence of the server together.

Each step runs one forward pass over the next token of every decoding slot plus a chunk of the prompt of
slots still prefilling, so the weights are read once per step for all of them (model.forward_batch). A
request that arrives joins at the next step; one that finishes, is cancelled (the client left) or times out
frees its slot at once. A new request takes the free slot whose cache shares the longest prefix with its
prompt (a chat's earlier turns, a shared system prompt) and evaluates only the rest.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import EdgeLLMError
from ..runtime.kv_cache import KVCache, cache_for
from ..runtime.sampling import Sampler, log_softmax
from ..runtime.session import common_prefix
from ..runtime.stops import StopText
from ..tokenizer import StreamDecoder


class QueueFull(Exception):
    """More requests are waiting than the queue holds (the server answers 503)."""


@dataclass
class Request:
    """One generation: its prompt, how to sample, when to stop, and where its events go.

    `emit(event)` is called from the scheduler thread with dicts: {"type": "token", "text", "token", "logprob",
    "top"}, then one {"type": "done", "finish_reason", "usage", "timings"} (finish_reason "stop", "length",
    "cancelled" or "timeout"), or {"type": "error", "message"}.
    """

    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    emit: Callable[[dict], None]
    stop: list[str] = field(default_factory=list)
    grammar: object | None = None  # server.grammar.Constraint: the tokens allowed next, or None
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's log-probability and the k best
    deadline: float = float("inf")  # time.monotonic() after which the request stops with "timeout"
    cancelled: bool = False  # set by the server when the client goes away
    id: int = field(default_factory=itertools.count().__next__)
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled = True


class Slot:
    """A sequence of the server: a KV cache, the tokens it holds, and the request running on it (or None)."""

    def __init__(self, index: int, cache: KVCache):
        self.index = index
        self.cache = cache
        self.tokens: list[int] = []  # what the cache holds, in order
        self.request: Request | None = None
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.next_token: int | None = None  # sampled, to be fed at the next step
        # (n, logits after tokens[:n]) of the last prompt evaluated here: an identical prompt later draws from these
        # very logits (re-running its last token alone would round differently, and a seed would not reproduce)
        self.prompt_logits: tuple[int, np.ndarray] | None = None
        self.ready_logits: np.ndarray | None = None  # logits to sample from without a forward pass
        self.generated: list[int] = []
        self.n_cached = 0
        self.decoder: StreamDecoder | None = None
        self.text: StopText | None = None
        self.t_start = self.t_prompt_done = 0.0

    @property
    def busy(self) -> bool:
        return self.request is not None


class Metrics:
    """Counters for /metrics (Prometheus); the scheduler thread writes, readers take a snapshot."""

    def __init__(self):
        self.requests = collections.Counter()  # finish reason -> count
        self.rejected = 0
        self.prompt_tokens = 0  # evaluated (cached prefixes excluded)
        self.cached_tokens = 0  # prompt tokens reused from a slot's cache
        self.cache_hits = 0  # requests that reused a cached prefix
        self.generated_tokens = 0
        self.steps = 0
        self.recent: collections.deque = collections.deque(maxlen=64)  # (time, tokens generated) per step


class Scheduler:
    """Owns the slots and the queue; `submit` from any thread, the batching loop runs in its own thread."""

    def __init__(self, llm, n_parallel: int = 4, n_batch: int = 256, max_queue: int = 64):
        self.llm = llm
        self.model = llm.model
        self.n_ctx = llm.n_ctx
        self.n_batch = n_batch
        self.max_queue = max_queue
        self.slots = [Slot(i, cache_for(self.model, llm.n_ctx, llm.cache_type)) for i in range(n_parallel)]
        self.waiting: collections.deque[Request] = collections.deque()
        self.metrics = Metrics()
        self.eog = llm.tokenizer.eog_ids
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="edgellm-scheduler", daemon=True)
        self._thread.start()

    # -- from any thread -------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self._wake:
            self._drop_abandoned(time.monotonic())
            free = sum(not s.busy for s in self.slots)
            if len(self.waiting) >= self.max_queue + free:
                self.metrics.rejected += 1
                raise QueueFull(f"every slot is busy and {len(self.waiting)} requests are waiting; try again later")
            self.waiting.append(request)
            self._wake.notify()

    def wake(self) -> None:
        """Look at the slots now (a request was cancelled)."""
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def busy_slots(self) -> int:
        return sum(s.busy for s in self.slots)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last `window` seconds of steps."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self.metrics.recent) if now - t <= window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    # -- the scheduler thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self.waiting and not any(s.busy for s in self.slots):
                    self._wake.wait()
                if self._stop:
                    return
            try:
                self._step()
            except EdgeLLMError as e:  # a pipeline stage died: its requests fail, the restarted stages hold nothing
                logging.getLogger("edgellm.server").error("batching step failed: %s", e)
                self._fail_all(str(e))
            except Exception as e:  # a bug must not leave clients hanging: fail the running requests, go on
                logging.getLogger("edgellm.server").exception("batching step failed")
                self._fail_all(f"internal error: {e}")

    def _fail_all(self, message: str) -> None:
        """Fail the running requests; every slot forgets what its cache held (a failed step may have lost it)."""
        for slot in self.slots:
            if slot.busy:
                slot.request.emit({"type": "error", "message": message})
                self.metrics.requests["error"] += 1
            self._free(slot, reset=True)

    def _step(self) -> None:
        now = time.monotonic()
        for slot in self.slots:  # cancelled or late requests free their slot before any work
            r = slot.request
            if r is not None and (r.cancelled or now > r.deadline):
                self._finish(slot, "cancelled" if r.cancelled else "timeout")
        self._admit(now)
        n_generated = 0
        for slot in self.slots:  # a prompt found whole in the cache: its stored logits
            if slot.busy and slot.ready_logits is not None:
                logits, slot.ready_logits = slot.ready_logits, None
                n_generated += self._sample(slot, logits)
        batch, owners, want = [], [], []
        budget = self.n_batch
        for slot in self.slots:  # decoding slots first: one token each
            if slot.busy and not slot.pending and slot.next_token is not None:
                batch.append(np.array([slot.next_token]))
                owners.append(slot)
                want.append(True)
                budget -= 1
        for slot in self.slots:  # then prompt chunks, within what is left of the batch
            if slot.busy and slot.pending and budget > 0:
                chunk = slot.pending[:budget]
                batch.append(np.array(chunk))
                owners.append(slot)
                want.append(len(chunk) == len(slot.pending))
                budget -= len(chunk)
        if not batch:
            if n_generated:
                self.metrics.recent.append((time.monotonic(), n_generated))
            return
        logits = self.model.forward_batch([(t, s.cache) for t, s in zip(batch, owners)], want)
        self.metrics.steps += 1
        for tokens, slot, wanted, row in zip(batch, owners, want, logits):
            fed = tokens.tolist()
            slot.tokens.extend(fed)
            if slot.pending:
                slot.pending = slot.pending[len(fed) :]
                self.metrics.prompt_tokens += len(fed)
                if not slot.pending:
                    slot.t_prompt_done = time.monotonic()
                    slot.prompt_logits = (len(slot.tokens), row.copy())
            else:
                slot.next_token = None
            if wanted:
                n_generated += self._sample(slot, row)
        self.metrics.recent.append((time.monotonic(), n_generated))

    def _drop_abandoned(self, now: float) -> None:
        """Waiting requests whose client left or whose time ran out leave the queue (the caller holds _wake)."""
        if not any(r.cancelled or now > r.deadline for r in self.waiting):
            return
        keep = collections.deque()
        for r in self.waiting:
            if r.cancelled or now > r.deadline:
                r.emit(self._done_event(r, "cancelled" if r.cancelled else "timeout", 0, 0, None))
                self.metrics.requests["cancelled" if r.cancelled else "timeout"] += 1
            else:
                keep.append(r)
        self.waiting = keep

    def _admit(self, now: float) -> None:
        with self._wake:
            self._drop_abandoned(now)
            while self.waiting and any(not s.busy for s in self.slots):
                r = self.waiting.popleft()
                free = [s for s in self.slots if not s.busy]
                slot = max(free, key=lambda s: (common_prefix(s.tokens, r.prompt), -len(s.tokens)))
                self._start(slot, r)

    def _start(self, slot: Slot, r: Request) -> None:
        common = common_prefix(slot.tokens, r.prompt)
        stored = slot.prompt_logits
        if common == len(r.prompt) and stored is not None and stored[0] == common:
            slot.ready_logits = stored[1]  # the same prompt again: its logits as first computed
        else:
            common = min(common, len(r.prompt) - 1)  # the last token runs for its logits
        if stored is not None and stored[0] > common:
            slot.prompt_logits = None
        slot.cache.truncate(common)
        slot.tokens = r.prompt[:common]
        slot.pending = r.prompt[common:]
        slot.request, slot.next_token, slot.generated, slot.n_cached = r, None, [], common
        slot.decoder = StreamDecoder(self.llm.tokenizer)
        slot.text = StopText(r.stop)
        slot.t_start = time.monotonic()
        slot.t_prompt_done = slot.t_start if slot.ready_logits is not None else 0.0
        if common:
            self.metrics.cache_hits += 1
            self.metrics.cached_tokens += common

    def _sample(self, slot: Slot, logits: np.ndarray) -> int:
        """Draw the next token of `slot` from its logits; emit its text; finish the request when it ends.
        Returns 1 if a token was generated."""
        r = slot.request
        allowed = r.grammar.allowed() if r.grammar is not None else None
        adjusted = r.sampler.adjust(logits, slot.tokens, allowed)
        token = r.sampler.draw(adjusted)
        if token in self.eog:
            text = slot.text.feed(slot.decoder.flush()) + slot.text.flush()
            if text:
                r.emit({"type": "token", "text": text, "token": None, "logprob": None, "top": None})
            self._finish(slot, "stop")
            return 0
        slot.generated.append(token)
        self.metrics.generated_tokens += 1
        event = {"type": "token", "text": slot.text.feed(slot.decoder.feed(token)), "token": token}
        if r.logprobs is not None:
            lp = log_softmax(adjusted)
            top = np.argsort(-lp, kind="stable")[: r.logprobs]
            event["logprob"] = float(lp[token])
            event["top"] = [(int(t), float(lp[t])) for t in top if np.isfinite(lp[t])]  # not tokens a grammar rules out
        r.emit(event)
        complete = r.grammar is not None and r.grammar.consume(token)
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif complete or len(slot.generated) >= r.max_tokens or len(slot.tokens) + 1 > self.n_ctx:
            tail = slot.text.feed(slot.decoder.flush()) + slot.text.flush()
            if tail:
                r.emit({"type": "token", "text": tail, "token": None, "logprob": None, "top": None})
            self._finish(slot, "stop" if slot.text.stopped or complete else "length")
        else:
            slot.next_token = token
        return 1

    def _finish(self, slot: Slot, reason: str) -> None:
        r = slot.request
        now = time.monotonic()
        prompt_done = slot.t_prompt_done or now
        timings = {
            "prompt_n": len(r.prompt) - slot.n_cached, "cached_n": slot.n_cached,
            "prompt_ms": 1e3 * (prompt_done - slot.t_start), "predicted_n": len(slot.generated),
            "predicted_ms": 1e3 * (now - prompt_done),
        }  # fmt: skip
        timings["predicted_per_second"] = (
            timings["predicted_n"] / (timings["predicted_ms"] / 1e3) if timings["predicted_ms"] > 0 else 0.0
        )
        r.emit(self._done_event(r, reason, len(r.prompt), len(slot.generated), timings))
        self.metrics.requests[reason] += 1
        self._free(slot)

    @staticmethod
    def _done_event(r: Request, reason: str, n_prompt: int, n_generated: int, timings: dict | None) -> dict:
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_generated, "total_tokens": n_prompt + n_generated}
        return {"type": "done", "finish_reason": reason, "usage": usage, "timings": timings}

    def _free(self, slot: Slot, reset: bool = False) -> None:
        """The slot takes new requests; its cache keeps what it holds (a later prompt may share the prefix)."""
        slot.next_token = None
        if reset:
            slot.cache.truncate(0)
            slot.tokens, slot.prompt_logits = [], None
        else:  # the cache holds slot.tokens exactly (a sampled token not fed yet is not in it)
            slot.cache.truncate(len(slot.tokens))
        slot.request, slot.pending, slot.decoder, slot.text, slot.ready_logits = None, [], None, None, None
