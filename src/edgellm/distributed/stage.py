"""One pipeline stage: a contiguous run of the model's layers, its own KV caches, hidden states in and out.

A stage knows nothing of Ray: `handle` takes a message and returns the message for the next stage (the last one
returns logits to the driver), so stages can be chained in one process (tests) or run as Ray actors
(distributed/pipeline.py). Every message carries the timings of the stages it passed, which the driver turns into
per-stage compute time and per-hop latency.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..errors import EdgeLLMError, UnsupportedError
from ..formats.gguf import GGUFFile
from ..model.transformer import Transformer
from ..runtime.kv_cache import KVCache
from ..runtime.store import MappedStore

HIDDEN_DTYPE = np.float32  # the engine's residual stream; the planner's ACTIVATION_BYTES
MAX_CACHES = 256  # sequences a stage holds caches for (the driver frees them; this bounds a leak)


class Stage:
    def __init__(self, model_path: str, start: int, stop: int, index: int, n_stages: int, n_threads: int,
                 link_gbps: float | None = None, link_latency_us: float = 0.0, kernel_path: str | None = None):
        from .. import kernels
        from ..kernels.plan import CompiledModel, engine_supports

        self.index, self.n_stages = index, n_stages
        self.first, self.last = index == 0, index == n_stages - 1
        self.gguf = GGUFFile(model_path)
        model = Transformer.from_store(self.gguf.metadata, MappedStore(self.gguf))
        self.config = model.config
        path = kernel_path or kernels.active_path()
        if not engine_supports(model.store, model._expected_shapes(), path):
            raise UnsupportedError("--stages needs the C engine (a compiled kernel for every tensor of the model)")
        self.compiled = CompiledModel(model.config, model.store, model.output_name, model._vec, path=path,
                                      layers=range(start, stop))  # fmt: skip
        self.layers = (start, stop)
        self.n_threads = n_threads
        self.link_gbps, self.link_latency_us = link_gbps, link_latency_us
        self.caches: dict[int, KVCache] = {}

    def info(self) -> dict:
        return {"index": self.index, "layers": list(self.layers), "pid": os.getpid(), "host": os.uname().nodename,
                "packed_bytes": self.compiled.packed_bytes, "threads": self.n_threads}  # fmt: skip

    def _cache(self, seq: int, n_ctx: int, cache_type: str) -> KVCache:
        cache = self.caches.get(seq)
        if cache is None or cache.n_ctx != n_ctx:
            if len(self.caches) >= MAX_CACHES:
                raise EdgeLLMError(f"stage {self.index} holds {MAX_CACHES} sequences' caches; free some first")
            cache = self.caches[seq] = KVCache(self.config, n_ctx, cache_type=cache_type,
                                               n_layers=self.layers[1] - self.layers[0])  # fmt: skip
        return cache

    def handle(self, msg: dict) -> dict:
        """Run one message: "forward" (this stage's layers over the batch), "free" (drop sequences' caches), "info".
        An error becomes part of the message, so the driver gets it from the last stage with the stage named."""
        arrived = time.time()  # wall clock: comparable between hosts whose clocks are synchronised
        if msg.get("error"):
            for seq in msg.get("free", ()):  # an earlier stage failed: still let go of what the driver freed
                self.caches.pop(seq, None)
            return msg
        try:
            op = msg["op"]
            if op == "forward":
                out = self._forward(msg)
            elif op == "free":
                for seq in msg["seqs"]:
                    self.caches.pop(seq, None)
                out = dict(msg)
            elif op == "info":
                out = dict(msg, info=[*msg.get("info", []), self.info()])
            else:
                raise EdgeLLMError(f"unknown pipeline message '{op}'")
        except Exception as e:  # noqa: BLE001 - reported to the driver, which raises it as a one-line error
            return {"op": msg.get("op"), "error": f"stage {self.index} (layers {self.layers[0]}-{self.layers[1] - 1}): {e}"}
        sent = time.time()
        if not self.last and self.link_gbps:  # an emulated link: the message takes its time on the wire
            payload = out.get("hidden")
            nbytes = payload.nbytes if payload is not None else 0
            time.sleep(self.link_latency_us * 1e-6 + nbytes / (self.link_gbps * 1e9))
        out["trace"] = [*msg.get("trace", []), (self.index, arrived, out.pop("_compute", 0.0), sent)]
        return out

    def _forward(self, msg: dict) -> dict:
        for seq in msg.get("free", ()):  # sequences the driver let go of
            self.caches.pop(seq, None)
        # seqs: [(sequence id, n_past, n_tokens)]; the first stage gets the tokens, later ones the hidden states
        counts = [n for _, _, n in msg["seqs"]]
        caches = [self._cache(seq, msg["n_ctx"], msg["cache_type"]) for seq, _, _ in msg["seqs"]]
        for cache, (_, n_past, _) in zip(caches, msg["seqs"]):
            cache.n_past = n_past
        if self.first:
            tokens = np.asarray(msg["tokens"], dtype=np.int32)
            bounds = np.cumsum([0, *counts])
            batch = [(tokens[a:b], c) for a, b, c in zip(bounds, bounds[1:], caches)]
            hidden = None
        else:
            batch = [(range(n), c) for n, c in zip(counts, caches)]
            hidden = msg["hidden"]
        rows = np.asarray(msg["rows"], dtype=np.int32) if self.last else np.empty(0, dtype=np.int32)
        t0 = time.perf_counter()
        result = self.compiled.forward_batch(batch, rows, self.n_threads, hidden=hidden, hidden_out=not self.last)
        compute = time.perf_counter() - t0
        weight_bytes, kv_bytes = self.compiled.last_read[:2]
        out = {k: v for k, v in msg.items() if k not in ("tokens", "hidden")}
        out["_compute"] = compute
        out["read"] = [*msg.get("read", []), (weight_bytes, kv_bytes)]
        if self.last:
            out["logits"] = result
        else:
            out["hidden"] = result[1]
        return out

    def close(self) -> None:
        self.caches.clear()
        self.compiled = None
        self.gguf.close()
