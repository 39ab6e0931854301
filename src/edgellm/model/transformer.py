"""The decoder-only transformer shared by every supported architecture, driven by its `ModelConfig`.

Forward works on a batch of new tokens (prefill) or one (decode) after whatever the KV cache holds.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any, Mapping, Sequence

import numpy as np

from .. import kernels
from ..errors import FormatError, UnsupportedError
from ..formats import names
from ..formats.quants import dequantize_rows
from . import layers
from .config import ModelConfig, check_tensors, expected_shapes, fused_views
from .fused import RowViews
from .registry import model_config

# llama.cpp rounds the context up to a multiple of this before comparing it with the original context
ROPE_CTX_PAD = 256


# llama.cpp's floor under the sum of the chosen experts' weights before it renormalises them
MIN_EXPERT_WEIGHT_SUM = 6.103515625e-5


def route(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable experts per token (most probable first) and their weights, renormalised to sum
    to one. probs: (n_tokens, n_expert) -> (n_tokens, k) ids, (n_tokens, k) weights."""
    chosen = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, chosen, axis=1)
    return chosen, weights / np.maximum(weights.sum(axis=1, keepdims=True), np.float32(MIN_EXPERT_WEIGHT_SUM))


class Transformer:
    def __init__(self, config: ModelConfig, store):
        self.config = config
        views = {name: view for i in range(config.n_layers) for name, view in fused_views(config, i).items()}
        self.store = RowViews(store, views) if views else store
        self.output_name = names.OUTPUT if store.has(names.OUTPUT) else names.TOKEN_EMBD
        check_tensors(config, {name: store.info(name).shape for name in store.names()}, store.source)
        # Norm weights and biases are tiny: keep them as floats (a few hundred KB in all).
        self._small: dict[str, np.ndarray] = {}
        self._compiled = None
        self._compiled_path = None
        self.sparsity = None  # model.sparsity.Thresholds: activation sparsity on both paths, or None (dense)
        self.head = None  # sparse.head.CandidateHead: logits from a cheap head + exact candidates, or None
        self.offload = None  # runtime.offload.OffloadPlan: weights streamed from the file, or None (all mapped)
        # this model's run context: kernel threads and path (None: the process defaults, kernels.threads() and
        # kernels.active_path()); another model in the process keeps its own
        self.n_threads: int | None = None
        self.kernel_path: str | None = None
        self._plan_lock = threading.Lock()  # the C plan is built once, whichever thread asks first

    @classmethod
    def from_store(cls, metadata: Mapping[str, Any], store) -> "Transformer":
        shapes = {name: store.info(name).shape for name in store.names()}
        return cls(model_config(metadata, shapes, source=store.source), store)

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.config, tied=self.output_name == names.TOKEN_EMBD)

    def rope_factors(self, n_ctx: int) -> np.ndarray | None:
        """Per-pair divisors of the RoPE angles, as llama.cpp's get_rope_factors picks them: Llama 3's
        rope_freqs, else LongRoPE's long factors when the context (padded to 256) exceeds the original one."""
        if not self.config.rope_factors:
            return None
        if self.store.has(names.ROPE_FREQS):
            return self._vec(names.ROPE_FREQS)
        padded = -(-n_ctx // ROPE_CTX_PAD) * ROPE_CTX_PAD
        name = names.ROPE_FACTORS_LONG if padded > self.config.n_ctx_orig else names.ROPE_FACTORS_SHORT
        return self._vec(name) if self.store.has(name) else None

    # -- forward -------------------------------------------------------------------------------------
    def _vec(self, name: str) -> np.ndarray:
        if name not in self._small:
            self._small[name] = self.store.dense(name)
        return self._small[name]

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        x = self.store.rows(names.TOKEN_EMBD, tokens)  # (n_tokens, n_embd)
        if self.config.embed_scale != 1.0:
            x *= np.float32(self.config.embed_scale)
        return x

    def set_sparsity(self, thresholds) -> None:
        """Run with these activation-sparsity thresholds (model.sparsity.Thresholds), or dense with None."""
        if thresholds is not None and thresholds.thresholds.shape[0] != self.config.n_layers:
            raise FormatError(f"sparsity thresholds are for {thresholds.thresholds.shape[0]} layers, "
                              f"the model has {self.config.n_layers}")  # fmt: skip
        self.sparsity = thresholds
        self._compiled_path = None  # the C plan carries the thresholds: rebuild it

    def set_head(self, head) -> None:
        """Score tokens with a candidate head (sparse.head.CandidateHead), or the full head with None."""
        if head is not None:
            fmt_rows = self.store.info(self.output_name).shape
            if head.raw.shape[0] != fmt_rows[0]:
                raise FormatError(f"candidate head has {head.raw.shape[0]} rows, the model's head {fmt_rows[0]}")
        self.head = head
        if self._compiled is not None:
            self._compiled.set_head(*((head.type, head.raw, head.n_candidates, head.proj) if head else (0, None, 0)))

    def set_offload(self, offload) -> None:
        """Run within a memory budget (runtime.offload.OffloadPlan: resident copies and streamed units)."""
        self.offload = offload
        self._compiled = None
        self._compiled_path = None

    def threads(self) -> int:
        return self.n_threads or kernels.threads()

    def path(self) -> str:
        return self.kernel_path or kernels.active_path()

    def compiled(self):
        """The C engine's plan for this model, or None when the NumPy reference path runs."""
        with self._plan_lock:
            return self._compiled_for(self.path())

    def _compiled_for(self, path: str):
        if self._compiled_path != path:
            from ..kernels.plan import CompiledModel, engine_supports

            usable = engine_supports(self.store, self._expected_shapes(), path)
            thresholds = None if self.sparsity is None else self.sparsity.thresholds
            if not usable and self.offload is not None:
                raise UnsupportedError("--mem-budget needs the C engine (a compiled kernel for every tensor)")
            self._compiled = None  # a streaming plan holds a file and a reader thread: one at a time
            self._compiled = CompiledModel(self.config, self.store, self.output_name, self._vec, thresholds,
                                           self.offload, path) if usable else None  # fmt: skip
            self._compiled_path = path
            if self._compiled is not None and self.head is not None:
                self._compiled.set_head(self.head.type, self.head.raw, self.head.n_candidates, self.head.proj)
        return self._compiled

    def forward(self, tokens: np.ndarray, cache, logits_rows: slice | None = slice(-1, None)) -> np.ndarray:
        """Run `tokens` after the cached ones; return logits (n_selected, n_vocab) for `logits_rows`
        of this batch (default: the last token; None: no logits, only fill the cache)."""
        c = self.config
        tokens = np.asarray(tokens, dtype=np.int64)
        cache.reserve(len(tokens))
        if tokens.size and (tokens.min() < 0 or tokens.max() >= c.n_vocab):
            raise ValueError(f"token id out of range 0..{c.n_vocab - 1}")
        compiled = None if layers.observing() else self.compiled()  # the C engine runs without hooks
        if compiled is not None:
            return self._forward_compiled(compiled, tokens, cache, logits_rows)
        with kernels.path_in_this_thread(self.path()):
            return self._forward_numpy(tokens, cache, logits_rows)

    def _forward_numpy(self, tokens: np.ndarray, cache, logits_rows: slice | None) -> np.ndarray:
        c = self.config
        positions = np.arange(cache.n_past, cache.n_past + len(tokens))
        x = self.embed(tokens)  # (n_tokens, n_embd)
        sparse = layers.sparsify_linear_inputs(self.sparsity.by_weight()) if self.sparsity is not None else nullcontext()
        with sparse:
            for i in range(c.n_layers):
                x = self._block(i, x, positions, cache)
        cache.advance(len(tokens))
        if logits_rows is None:
            return np.empty((0, c.n_vocab), dtype=np.float32)
        h = layers.rms_norm(x[logits_rows], self._vec(names.OUTPUT_NORM), c.norm_eps)
        if self.head is not None and not layers.observing():
            logits = self.head.logits(h, self._exact_logits)
        else:
            logits = layers.linear(h, self.store, self.output_name)  # (n_selected, n_vocab)
        if c.final_logit_softcap:
            logits = np.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
        return logits

    def forward_batch(self, batch: Sequence[tuple[np.ndarray, Any]], want_logits: Sequence[bool]) -> np.ndarray:
        """Several sequences, each (tokens, its own KVCache), in one pass: the C engine reads every weight once for
        all of them (continuous batching); the NumPy path runs them one by one (the reference). Returns the logits
        after each sequence's last token, (n_seqs, n_vocab) (rows whose want_logits is False are not computed)."""
        for tokens, cache in batch:
            cache.reserve(len(tokens))
            if len(tokens) and (min(tokens) < 0 or max(tokens) >= self.config.n_vocab):
                raise ValueError(f"token id out of range 0..{self.config.n_vocab - 1}")
        compiled = None if layers.observing() else self.compiled()
        if compiled is None:
            out = np.zeros((len(batch), self.config.n_vocab), dtype=np.float32)  # rows not wanted stay zero
            for i, ((tokens, cache), want) in enumerate(zip(batch, want_logits)):
                logits = self.forward(np.asarray(tokens), cache, slice(-1, None) if want else None)
                if want:
                    out[i] = logits[0]
            return out
        ends = np.cumsum([len(t) for t, _ in batch]) - 1
        picked = [i for i, want in enumerate(want_logits) if want]
        logits = compiled.forward_batch(batch, ends[picked], self.threads())
        for tokens, cache in batch:
            cache.advance(len(tokens))
        if len(picked) == len(batch):
            return logits
        out = np.zeros((len(batch), self.config.n_vocab), dtype=np.float32)  # rows not wanted stay zero
        out[picked] = logits
        return out

    def _last_read(self) -> tuple[float, ...]:
        """The C engine's account of this thread's last forward call (kernels.plan.CompiledModel.last_read); zeros
        on the NumPy path."""
        compiled = self._compiled if self._compiled_path == self.path() else None
        return compiled.last_read if compiled is not None else (0.0,) * 8

    def bytes_read(self) -> float:
        """Weight and KV cache bytes the last forward call read (C engine; 0 on the NumPy path)."""
        return float(sum(self._last_read()[:2]))

    def weight_bytes_read(self) -> float:
        """Of bytes_read(), the weights."""
        return float(self._last_read()[0])

    def storage_read(self) -> tuple[float, ...]:
        """What the last forward call read from the model file under a memory budget: (bytes, reads, seconds the
        engine waited, seconds reads were in flight, routed experts found in the cache, routed experts read);
        zeros when every weight is in memory."""
        return tuple(self._last_read()[2:8])

    def _exact_logits(self, h: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The head's logits of one normed row h for token ids (the candidate head's exact pass)."""
        info = self.store.info(self.output_name)
        order = np.argsort(ids)
        rows = dequantize_rows(self.store.raw(self.output_name), info.type, info.shape[1], ids[order])
        out = np.empty(len(ids), dtype=np.float32)
        out[order] = rows @ h.astype(np.float32)
        return out

    def _forward_compiled(self, compiled, tokens: np.ndarray, cache, logits_rows: slice | None) -> np.ndarray:
        rows = range(len(tokens))[logits_rows] if logits_rows is not None else range(0)
        if rows.step != 1:
            raise ValueError("logits_rows must be a contiguous slice")
        logits = compiled.forward(tokens, cache, rows.start if len(rows) else 0, len(rows), self.threads())
        cache.advance(len(tokens))
        return logits

    def _block(self, i: int, x: np.ndarray, positions: np.ndarray, cache) -> np.ndarray:
        c = self.config
        n = lambda template: template.format(i=i)  # noqa: E731
        h = layers.rms_norm(x, self._vec(n(names.ATTN_NORM)), c.norm_eps)
        attn = self._attention(i, h, positions, cache)
        if c.post_norms:
            attn = layers.rms_norm(attn, self._vec(n(names.ATTN_POST_NORM)), c.norm_eps)
        x = x + attn
        h = layers.rms_norm(x, self._vec(n(names.FFN_NORM)), c.norm_eps)
        if c.n_expert:
            ffn = self._experts(i, h)
        else:
            gate = layers.ACTIVATIONS[c.ffn_act](layers.linear(h, self.store, n(names.FFN_GATE)))  # (n_tokens, n_ff)
            ffn = layers.linear(gate * layers.linear(h, self.store, n(names.FFN_UP)), self.store, n(names.FFN_DOWN))
        if c.post_norms:
            ffn = layers.rms_norm(ffn, self._vec(n(names.FFN_POST_NORM)), c.norm_eps)
        return x + ffn

    def _experts(self, i: int, h: np.ndarray) -> np.ndarray:
        """Mixture of experts: each token's FFN output is the weighted sum of its top-k experts' gated FFNs.
        Only the slabs of experts some token was routed to are read."""
        c = self.config
        n = lambda template: template.format(i=i)  # noqa: E731
        probs = layers.softmax(layers.linear(h, self.store, n(names.FFN_GATE_INP)))  # (n_tokens, n_expert)
        chosen, weights = route(probs, c.n_expert_used)  # (n_tokens, k) each
        gate, up, down = (self.store.info(n(t)) for t in (names.FFN_GATE_EXPS, names.FFN_UP_EXPS, names.FFN_DOWN_EXPS))
        raw = [self.store.raw(t.name) for t in (gate, up, down)]
        out = np.zeros_like(h)
        for e in np.unique(chosen):
            rows, slot = np.nonzero(chosen == e)
            xe = h[rows]
            act = layers.ACTIVATIONS[c.ffn_act](layers.linear_packed(xe, raw[0][e], gate.type, c.n_ff_exp, c.n_embd))
            act *= layers.linear_packed(xe, raw[1][e], up.type, c.n_ff_exp, c.n_embd)
            out[rows] += weights[rows, slot, None] * layers.linear_packed(act, raw[2][e], down.type, c.n_embd, c.n_ff_exp)
        return out

    def _attention(self, i: int, h: np.ndarray, positions: np.ndarray, cache) -> np.ndarray:
        c = self.config
        n = lambda template: template.format(i=i)  # noqa: E731
        n_tokens = h.shape[0]
        q = layers.linear(h, self.store, n(names.ATTN_Q))
        k = layers.linear(h, self.store, n(names.ATTN_K))
        v = layers.linear(h, self.store, n(names.ATTN_V))
        if c.qkv_bias:
            q += self._vec(n(names.ATTN_Q_BIAS))
            k += self._vec(n(names.ATTN_K_BIAS))
            v += self._vec(n(names.ATTN_V_BIAS))
        q = q.reshape(n_tokens, c.n_head, c.head_dim)  # (n_tokens, n_head, head_dim)
        k = k.reshape(n_tokens, c.n_head_kv, c.head_dim)  # (n_tokens, n_head_kv, head_dim)
        v = v.reshape(n_tokens, c.n_head_kv, c.head_dim_v)  # (n_tokens, n_head_kv, head_dim_v)
        if c.qk_norm:
            q = layers.rms_norm(q, self._vec(n(names.ATTN_Q_NORM)), c.norm_eps)
            k = layers.rms_norm(k, self._vec(n(names.ATTN_K_NORM)), c.norm_eps)
        swa = c.is_swa(i)
        if c.uses_rope(i):
            base = c.rope_base_swa if swa and c.rope_base_swa else c.rope_base
            rope = dict(scale=1.0 if swa else c.rope_scale, factors=self.rope_factors(cache.n_ctx),
                        ext_factor=c.rope_ext_factor, yarn_dims=c.rope_yarn_dims, mscale=c.rope_mscale)  # fmt: skip
            q = layers.rope(q, positions, base, c.rope_dim, c.rope_neox, **rope)
            k = layers.rope(k, positions, base, c.rope_dim, c.rope_neox, **rope)
        keys, values = cache.store(i, k, v)
        out = layers.attention(q, keys, values, positions, c.softmax_scale(), c.sliding_window if swa else 0)
        return layers.linear(out, self.store, n(names.ATTN_OUT))
