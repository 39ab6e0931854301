"""The static plan the C engine runs: weight addresses and hyper-parameters, built once per model.

Python calls `forward` once per prefill batch or decoded token; every layer runs in C. The plan holds the
memory-mapped weight views (and float32 copies of the tiny norm/bias vectors) alive as long as it lives.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import FormatError
from ..formats import names
from ..formats.quants import GGMLType
from . import _C, NUMPY_PATHS, active_path

# el_layer field order in edgellm.h
LAYER_FIELDS = [
    names.ATTN_NORM, names.ATTN_Q, names.ATTN_K, names.ATTN_V, names.ATTN_OUT, names.ATTN_Q_BIAS,
    names.ATTN_K_BIAS, names.ATTN_V_BIAS, names.ATTN_Q_NORM, names.ATTN_K_NORM, names.ATTN_POST_NORM,
    names.FFN_NORM, names.FFN_GATE, names.FFN_UP, names.FFN_DOWN, names.FFN_POST_NORM, names.FFN_GATE_INP,
    names.FFN_GATE_EXPS, names.FFN_UP_EXPS, names.FFN_DOWN_EXPS,
]  # fmt: skip
_ABSENT = (0, 0, 0, 0)
REPACK_ENV = "EDGELLM_REPACK"  # 0: keep every matrix in its file layout only (no interleaved copy)
# el_model.cols slots (EL_COL_SLOTS) and the sparsity group (model/sparsity.py GROUPS) of each one's input
COLUMN_SLOTS = [names.ATTN_Q, names.ATTN_K, names.ATTN_V, names.ATTN_OUT, names.FFN_GATE, names.FFN_UP, names.FFN_DOWN]
COLUMN_GROUPS = [0, 0, 0, 1, 2, 2, 3]
LAYER_SWA, LAYER_NO_ROPE = 1, 2  # EL_LAYER_* in edgellm.h


def engine_supports(store, tensor_names, path: str) -> bool:
    """Whether the C engine on `path` has a kernel for every matrix (and a row gather for the embedding)."""
    if _C is None or path in NUMPY_PATHS:
        return False
    for name in tensor_names:
        info = store.info(name)
        if len(info.shape) >= 2 and not _C.type_info(int(info.type))["has_dot"]:
            return False
    return _C.type_info(int(store.info(names.TOKEN_EMBD).type))["has_to_float"]


class CompiledModel:
    """`layers` (a range) makes a pipeline stage's plan: only those layers' weights, KV caches of that many layers,
    hidden states in and out (forward_batch's `hidden`); the embedding and head stay mapped, read only by the stage
    that embeds or scores."""

    def __init__(self, config, store, output_name: str, vector, thresholds: np.ndarray | None = None, offload=None,
                 path: str | None = None, layers: range | None = None):
        self._keep: list[np.ndarray] = []
        self.layers = range(config.n_layers) if layers is None else layers
        outside = self.layers.step != 1 or self.layers.start < 0 or self.layers.stop > config.n_layers
        if outside or (layers is not None and not layers):  # (a model of no layers is the engine's to refuse)
            raise ValueError(f"layer range {layers} is not a non-empty run of the model's {config.n_layers} layers")
        # under a memory budget (runtime/offload.py): resident matrices are the plan's copies, streamed ones keep
        # their mapped address only until model_set_offload drops it (never read through the mapping)
        self._copies = offload.copies if offload is not None else {}
        self._path = offload.path if offload is not None else store.source
        self.direct_io = None  # under a budget: whether reads bypass the page cache (O_DIRECT)
        weights = [self._matrix(store, names.TOKEN_EMBD), self._vector(vector(names.OUTPUT_NORM)),
                   self._matrix(store, output_name)]  # fmt: skip
        # RoPE factors (short, long): Llama 3's rope_freqs serve as both; the engine picks by context size
        short = names.ROPE_FREQS if store.has(names.ROPE_FREQS) else names.ROPE_FACTORS_SHORT
        long = names.ROPE_FREQS if store.has(names.ROPE_FREQS) else names.ROPE_FACTORS_LONG
        for name in (short, long):
            weights.append(self._vector(vector(name)) if config.rope_factors and store.has(name) else _ABSENT)
        for i in self.layers:
            for template in LAYER_FIELDS:
                name = template.format(i=i)
                if not store.has(name):
                    weights.append(_ABSENT)
                elif len(store.info(name).shape) == 1:
                    weights.append(self._vector(vector(name)))
                else:
                    weights.append(self._matrix(store, name))
        params = dict(
            n_layers=len(self.layers), n_embd=config.n_embd, n_ff=config.n_ff, n_head=config.n_head,
            n_head_kv=config.n_head_kv, head_dim=config.head_dim, head_dim_v=config.head_dim_v,
            n_vocab=config.n_vocab, rope_dim=config.rope_dim, rope_neox=int(config.rope_neox),
            gelu=int(config.ffn_act == "gelu"), sliding_window=config.sliding_window, norm_eps=config.norm_eps,
            rope_base=config.rope_base, rope_base_swa=config.rope_base_swa or 0.0, rope_scale=config.rope_scale,
            embed_scale=config.embed_scale, attn_scale=config.softmax_scale(),
            final_softcap=config.final_logit_softcap, rope_ext_factor=config.rope_ext_factor,
            rope_yarn_low=config.rope_yarn_dims[0], rope_yarn_high=config.rope_yarn_dims[1],
            rope_mscale=config.rope_mscale, n_ctx_orig=config.n_ctx_orig, n_expert=config.n_expert,
            n_expert_used=config.n_expert_used,
        )  # fmt: skip
        flags = bytes(LAYER_SWA * config.is_swa(i) | LAYER_NO_ROPE * (not config.uses_rope(i))
                      for i in self.layers)  # fmt: skip
        self.config = config
        if thresholds is not None:
            thresholds = np.asarray(thresholds)[self.layers.start : self.layers.stop]
        extra = () if thresholds is None else (np.ascontiguousarray(thresholds, dtype=np.float32).tobytes(),)
        self._plan = _C.model_create(params, flags, weights, *extra)
        self.path = path or active_path()  # the plan's own kernel path and thread pool (not the process's)
        _C.model_set_path(self._plan, self.path)
        self._local = threading.local()  # each calling thread's last_read
        if thresholds is not None:
            self._attach_columns(config, store, thresholds)
        if offload is not None and (offload.units or offload.stream_embedding or offload.experts):
            try:
                held, self.direct_io = _C.model_set_offload(self._plan, offload.path, offload.units,
                                                            offload.ring_bytes, int(offload.naive), offload.embd_offset,
                                                            offload.experts)  # fmt: skip
            except OSError as e:
                raise FormatError(str(e)) from None
            if held > offload.ring_bytes + offload.row_buffer_bytes:  # the split must count what C allocates
                raise RuntimeError(f"streaming buffers of {held} bytes exceed the plan's {offload.ring_bytes}")
        # Matrices interleaved 16 rows at a time for the path's gemm16 kernels: several tokens (batched decode,
        # prefill) then cost little more than one. Not under a memory budget, which holds the weights once.
        with_head = self.layers.stop == config.n_layers  # a stage before the last never scores tokens
        self.packed_bytes = (_C.model_pack(self._plan, with_head) if offload is None and os.environ.get(REPACK_ENV) != "0"
                             else 0)  # fmt: skip

    @property
    def last_read(self) -> tuple[float, ...]:
        """What this thread's last forward call read: weight and KV cache bytes; of the weights, what came from
        storage: bytes, reads, seconds the engine waited, seconds reads were in flight; routed experts found in the
        cache, read."""
        return getattr(self._local, "last_read", (0.0,) * 8)

    def _attach_columns(self, config, store, thresholds: np.ndarray) -> None:
        """Column layouts (formats/columns.py) of the matrices whose inputs are sparsified, so that decode steps
        skip the weights of inactive inputs; other matrices stay dense (inputs zeroed, every weight read)."""
        from ..formats import columns as layout

        entries = []
        for j, i in enumerate(self.layers):
            for template, group in zip(COLUMN_SLOTS, COLUMN_GROUPS):
                name = template.format(i=i)
                info = store.info(name) if store.has(name) else None
                if info is None or thresholds[j, group] <= 0 or len(info.shape) != 2 or \
                        not layout.supported(info.type, info.shape[0], info.shape[1]):  # fmt: skip
                    entries.append(None)
                    continue
                cm = layout.from_packed(info.type, store.raw(name), info.shape[0], info.shape[1])
                self._keep.append(cm)
                entries.append(cm.as_c())
        _C.model_set_columns(self._plan, entries)

    def set_head(self, approx_type: int, approx_raw: np.ndarray | None, n_candidates: int,
                 proj: np.ndarray | None = None) -> None:
        """Logits from a cheap head (rows of approx_type; after the float projection `proj` when given), its
        n_candidates best per row recomputed exactly (approx_raw None: off)."""
        if approx_raw is None:
            _C.model_set_head(self._plan, None, 0)  # the full head
            return
        self._keep.append(approx_raw)
        width = self.config.n_embd
        proj_item = None
        if proj is not None:
            proj = np.ascontiguousarray(proj, dtype=np.float32)
            self._keep.append(proj)
            width = proj.shape[0]
            proj_item = (int(GGMLType.F32), proj.ctypes.data, proj.shape[0], proj.shape[1])
        _C.model_set_head(self._plan, (int(approx_type), approx_raw.ctypes.data, self.config.n_vocab, width),
                          int(n_candidates), proj_item)  # fmt: skip

    def _matrix(self, store, name: str) -> tuple[int, int, int, int]:
        info = store.info(name)
        raw = self._copies.get(name)
        if raw is None:
            raw = store.raw(name)
        self._keep.append(raw)
        n_rows = int(np.prod(info.shape[:-1]))  # stacked experts: every expert's rows
        return int(info.type), raw.ctypes.data, n_rows, info.shape[-1]

    def _vector(self, values: np.ndarray) -> tuple[int, int, int, int]:
        values = np.ascontiguousarray(values, dtype=np.float32)
        self._keep.append(values)
        return int(GGMLType.F32), values.ctypes.data, 1, values.size

    def scratch_bytes(self) -> int:
        """What the engine's working buffers hold now: the largest forward call's needs so far."""
        return _C.model_scratch_bytes(self._plan)

    def forward(self, tokens: np.ndarray, cache, row0: int, n_rows: int, n_threads: int) -> np.ndarray:
        """Run `tokens` after what `cache` holds; logits of batch rows row0 .. row0 + n_rows - 1."""
        return self.forward_batch([(tokens, cache)], np.arange(row0, row0 + n_rows), n_threads)

    def forward_batch(self, seqs, rows: np.ndarray, n_threads: int, hidden: np.ndarray | None = None,
                      hidden_out: bool = False):
        """Several sequences in one pass: `seqs` is [(tokens, cache), ...] with caches of one type and size; their
        tokens are laid side by side (so every weight is read once for all), each attends over its own cache.
        Returns logits of the batch rows `rows` (indices into the tokens side by side). A stage after the first
        gives `hidden` (n_tokens x n_embd) in place of the tokens (then only their counts matter); with `hidden_out`
        it returns (logits, the residual stream after its last layer)."""
        rows = np.ascontiguousarray(rows, dtype=np.int32)
        logits = np.empty((len(rows), self.config.n_vocab), dtype=np.float32)
        counts = [len(t) for t, _ in seqs]
        if hidden is None:
            tokens = np.ascontiguousarray(np.concatenate([np.asarray(t) for t, _ in seqs]), dtype=np.int32)
        else:
            tokens = np.empty(0, dtype=np.int32)
            hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        out = np.empty((sum(counts), self.config.n_embd), dtype=np.float32) if hidden_out else None
        first = seqs[0][1]
        if any(c.type != first.type or c.n_ctx != first.n_ctx for _, c in seqs):
            raise ValueError("sequences batched together need caches of one type and size")
        items = [(c.k, c.v, c.n_past, n) for n, (_, c) in zip(counts, seqs)]
        try:
            self._local.last_read = _C.forward(self._plan, tokens, items, int(first.type), first.n_ctx, rows, logits,
                                               n_threads, hidden, out)  # fmt: skip
        except OSError as e:  # a streamed read failed: the file went away, shrank or changed under the run
            raise FormatError(f"{self._path}: {e}; reload the model (a cached model: 'edgellm pull' checks it)") from None
        return (logits, out) if hidden_out else logits
