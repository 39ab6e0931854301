"""Running a model in a fixed memory budget: which weights stay in memory, and which are streamed from the file.

Under `--mem-budget SIZE` the KV cache, the engine's buffers (scratch, logits, the streaming ring) and the
resident weights together stay within SIZE. Resident weights are read once into anonymous memory with O_DIRECT
(the page cache holds no copy); the rest are read from the model file every token by the engine's reader thread
(kernels/c/offload.c), a unit ahead of the layer that needs them. Nothing is memory-mapped, so the operating
system cannot hide the I/O and the budget is what the process really holds.

Value order for residency: every weight byte of a dense model is read once per token, so a resident byte saves
one streamed byte wherever it is. Attention matrices go first (the smallest per layer, and the attention of a
layer never has to wait for two reads), then each layer's FFN, then as many rows of the head as still fit;
an untied embedding is read a row at a time on demand, whatever the budget. The naive baseline
(`--offload-naive`) streams every matrix and reads each one when it is needed, with no reader thread.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import BudgetError, ConfigError, FormatError
from .. import kernels
from ..formats import names
from ..kernels.plan import COLUMN_SLOTS

PAGE = 4096
UNIT_BYTES = 1 << 20  # streamed matrices are read in units of about this many bytes (whole rows)
RING_MAX = 16 << 20  # more read-ahead than this buys nothing when storage is the bottleneck
MIN_BATCH = 16

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str | int | float) -> int:
    """Bytes from '512M', '1.5G', '300MiB' or a plain number of bytes (K, M, G, T: powers of 1000; KiB...: 1024)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ConfigError(f"--mem-budget: expected a size such as 200M or 1.5G, got '{text}'")
        base = 1024 if m.group(3) else 1000
        value = float(m.group(1)) * base ** " kmgt".index((m.group(2) or " ").lower())
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"--mem-budget: expected a positive size, got '{text}'")
    return int(value)


def _span(offset: int, n: int) -> tuple[int, int, int]:
    """(aligned start, lead, aligned length) of the page-aligned read that covers bytes offset..offset+n."""
    at = offset // PAGE * PAGE
    lead = offset - at
    return at, lead, -(-(lead + n) // PAGE) * PAGE


def read_direct(path: str, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """The bytes of each (offset, n) range of the file, read around the page cache into anonymous memory
    (uint8 views), through one descriptor."""
    direct = getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, os.O_RDONLY | direct)
    except OSError:  # a file system without O_DIRECT (tmpfs): read, then drop the pages
        fd, direct = os.open(path, os.O_RDONLY), 0
    out = []
    try:
        for offset, n in ranges:
            at, lead, span = _span(offset, n)
            buf = mmap.mmap(-1, span)
            view, done = memoryview(buf), 0
            while done < span:
                got = os.preadv(fd, [view[done:]], at + done)
                if got <= 0:
                    break
                done += got
            if done < lead + n:
                raise FormatError(f"{path}: the file ended while reading it into memory (truncated?)")
            if not direct and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, at, span, os.POSIX_FADV_DONTNEED)
            out.append(np.frombuffer(buf, dtype=np.uint8, count=n, offset=lead))
    finally:
        os.close(fd)
    return out


@dataclass
class Matrix:
    name: str
    slot: int  # el_unit slot: 7 layer + index in COLUMN_SLOTS, or 7 n_layers for the head
    group: str  # attention | ffn | head
    offset: int
    n_rows: int
    row_bytes: int

    @property
    def n_bytes(self) -> int:
        return self.n_rows * self.row_bytes


@dataclass
class OffloadPlan:
    """The split of a memory budget, and the reads that make up for what does not fit."""

    path: str
    budget: int
    kv_bytes: int
    buffer_bytes: int  # engine scratch, logits, streaming ring, embedding row buffer
    ring_bytes: int
    n_batch: int
    naive: bool
    logits_all: bool  # every position's logits (perplexity), not the last one's: counted in the buffers
    resident_rows: dict[str, int]  # matrix name -> rows held in memory (a prefix; all rows: fully resident)
    units: list[tuple[int, int, int, int, int]]  # (slot, row0, n_rows, offset, bytes), forward order
    stream_embedding: bool
    embd_offset: int
    weight_bytes: int  # all matrices (what one token uses)
    small_bytes: int  # norms, biases and other small tensors, always in memory
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # group -> (resident bytes, all bytes)
    experts: tuple | None = None  # (offsets, slab bytes, cached slabs) for the engine's expert cache
    expert_cache_bytes: int = 0
    row_buffer_bytes: int = 0  # the buffer embedding rows are read into
    copies: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def resident_bytes(self) -> int:
        return sum(len(a.base) for a in self.copies.values()) + self.small_bytes + self.expert_cache_bytes

    @property
    def streamed_bytes(self) -> int:
        return sum(u[4] for u in self.units)

    @property
    def used_bytes(self) -> int:
        return self.resident_bytes + self.kv_bytes + self.buffer_bytes

    def summary(self) -> str:
        mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
        parts = ", ".join(f"{g} {100 * r / a:.0f} %" for g, (r, a) in self.groups.items() if a)
        mode = "naive: every matrix re-read when needed" if self.naive else f"ring {mb(self.ring_bytes)}"
        return (f"mem budget {mb(self.budget)}: weights in memory {mb(self.resident_bytes)} ({parts}), "
                f"KV cache {mb(self.kv_bytes)}, buffers {mb(self.buffer_bytes)} ({mode}); "
                f"streamed {mb(self.streamed_bytes)} per token in {len(self.units)} reads")  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "budget_mb": self.budget / 1e6, "resident_mb": self.resident_bytes / 1e6, "kv_mb": self.kv_bytes / 1e6,
            "buffers_mb": self.buffer_bytes / 1e6, "ring_mb": self.ring_bytes / 1e6,
            "streamed_mb_per_token": self.streamed_bytes / 1e6, "n_batch": self.n_batch, "naive": self.naive,
            "resident_fraction": {g: (r / a if a else 1.0) for g, (r, a) in self.groups.items()},
        }  # fmt: skip


def _matrices(config, store, output_name: str) -> list[Matrix]:
    """The streamable matrices in the order a forward pass uses them."""
    out = []
    for i in range(config.n_layers):
        for j, template in enumerate(COLUMN_SLOTS):
            name = template.format(i=i)
            if not store.has(name):
                continue
            info = store.info(name)
            group = "attention" if j < 4 else "ffn"
            out.append(Matrix(name, i * len(COLUMN_SLOTS) + j, group, info.offset, int(np.prod(info.shape[:-1])),
                              info.n_bytes // int(np.prod(info.shape[:-1]))))  # fmt: skip
    info = store.info(output_name)
    out.append(Matrix(output_name, config.n_layers * len(COLUMN_SLOTS), "head", info.offset, info.shape[0],
                      info.n_bytes // info.shape[0]))  # fmt: skip
    return out


def engine_buffer_bytes(config, n_batch: int, n_ctx: int, n_threads: int, n_seqs: int = 1) -> int:
    """The C engine's working buffers for one forward call of n_batch tokens from up to n_seqs sequences
    (engine.c el_forward_batch)."""
    c = config
    E, F = c.n_embd, c.n_ff
    QD, KD = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    VD, OD = c.n_head_kv * c.head_dim_v, c.n_head * c.head_dim_v
    rows = 4 * (c.n_head // c.n_head_kv)
    floats = n_batch * (2 * E + QD + KD + VD + OD + 2 * F + E)
    floats += kernels.pool_slices(n_threads) * rows * (n_ctx + c.head_dim)  # attention scores, one per pool slice
    # attention items (4 tokens x one kv head) and their key ranges (attn_splits): a sequence with fewer than 16
    # items is split into fewer than 16 + items, so all of them into fewer than 16 + items each
    n_seqs = max(1, min(n_seqs, n_batch))
    items = n_seqs * 16 + c.n_head_kv * (-(-n_batch // 4) + n_seqs)
    floats += items * rows * (c.head_dim_v + 2) + 2 * n_batch * c.rope_dim
    scratch = n_batch * max(E, F, QD, OD) * 2 + 4 * PAGE  # activations quantized to the dot type
    scratch += n_batch * QD * 34 // 32 + PAGE  # queries quantized for a Q8_0 KV cache
    scratch += n_batch * (4 + 2 * 8) + n_seqs * 128  # each token's position and cache slots, each sequence's attention
    experts = getattr(c, "n_expert", 0)
    if experts:  # router probabilities, gathered rows, expert weights and picks (engine.c moe_floats)
        floats += n_batch * (experts + 2 * E + 2 * c.n_expert_used + 2)
    return 4 * floats + scratch


def buffer_bytes(config, n_batch: int, n_ctx: int, n_threads: int, logits_all: bool = False, n_seqs: int = 1) -> int:
    """The engine's buffers, plus the logits it returns (each sequence's last row, or every row with logits_all)
    and the float64 copies the sampler and perplexity make of one row."""
    logits = (4 * (n_batch if logits_all else min(n_seqs, n_batch)) + 3 * 8) * config.n_vocab
    return engine_buffer_bytes(config, n_batch, n_ctx, n_threads, n_seqs) + logits


class _Needs:
    """What a budget must hold besides resident weights."""

    def __init__(self, config, store, matrices, kv_bytes, n_ctx, n_threads, naive, unit_bytes, logits_all=False,
                 n_seqs=1):  # fmt: skip
        self.config, self.kv_bytes, self.n_ctx, self.n_threads = config, kv_bytes, n_ctx, n_threads
        self.logits_all, self.n_seqs = logits_all, n_seqs
        self.small = 4 * sum(store.info(n).n_elements for n in store.names() if len(store.info(n).shape) == 1)  # float32 copies
        embd = store.info(names.TOKEN_EMBD)
        self.row_buf = _span(PAGE - 1, embd.n_bytes // embd.shape[0])[2] + PAGE
        self.max_unit = max(min(m.n_bytes, max(m.row_bytes, unit_bytes // m.row_bytes * m.row_bytes)) for m in matrices)
        self.min_ring = _span(PAGE - 1, self.max_unit)[2] * (1 if naive else 2)
        # mixture of experts: the routers stay in memory, and a cache of as many expert slabs as a token routes to
        self.experts = _Experts(config, store) if config.n_expert else None
        if self.experts is not None:
            self.extra = self.experts.router_bytes + (1 if naive else config.n_expert_used) * self.experts.slab_span

    extra = 0  # mixture of experts: the routers and the fewest expert slabs a token needs

    def fixed(self, batch: int) -> int:
        return (self.kv_bytes + buffer_bytes(self.config, batch, self.n_ctx, self.n_threads, self.logits_all, self.n_seqs)
                + self.row_buf + self.small + self.extra)  # fmt: skip


def _ring(room: int, min_ring: int, max_unit: int) -> int:
    """The streaming buffer: four units of read-ahead or an eighth of what the budget leaves, at most RING_MAX."""
    return int(min(max(min_ring, 4 * max_unit, room // 8), RING_MAX))


def _prompt_batch(config, n_batch: int, n_ctx: int, n_threads: int, budget: int, logits_all: bool = False,
                  n_seqs: int = 1) -> int:  # fmt: skip
    """The largest prompt batch (halving the caller's, down to MIN_BATCH) whose scratch takes <= 1/8 of the budget."""
    while n_batch > MIN_BATCH and buffer_bytes(config, n_batch, n_ctx, n_threads, logits_all, n_seqs) > budget / 8:
        n_batch //= 2
    return n_batch


def streaming_overhead(config, kv_bytes: int, n_ctx: int, n_threads: int, budget: int, n_batch: int = 1) -> int:
    """What a budget holds besides resident weights when the model streams, for the planner (which has the
    model's shape, not its file): the KV cache, the engine's buffers, the ring, the row buffer and the norms,
    as plan() splits them with units of UNIT_BYTES."""
    small = 4 * (2 * config.n_layers + 1) * config.n_embd
    batch = _prompt_batch(config, n_batch, n_ctx, n_threads, budget)
    fixed = kv_bytes + buffer_bytes(config, batch, n_ctx, n_threads) + 3 * PAGE + 4 * config.n_embd + small
    min_ring = 2 * (UNIT_BYTES + PAGE)
    return fixed + _ring(budget - fixed, min_ring, UNIT_BYTES)


def minimum_budget(config, store, output_name: str, kv_bytes: int, n_ctx: int, n_threads: int, n_batch: int,
                   naive: bool = False, unit_bytes: int = UNIT_BYTES, n_seqs: int = 1) -> int:  # fmt: skip
    """The smallest budget plan() accepts."""
    need = _Needs(config, store, _matrices(config, store, output_name), kv_bytes, n_ctx, n_threads, naive, unit_bytes,
                  n_seqs=n_seqs)  # fmt: skip
    return need.fixed(min(n_batch, MIN_BATCH)) + need.min_ring


def plan(config, store, output_name: str, path: str, budget: int, kv_bytes: int, n_ctx: int, n_threads: int,
         n_batch: int, naive: bool = False, unit_bytes: int = UNIT_BYTES, ring_bytes: int | None = None,
         logits_all: bool = False, n_seqs: int = 1) -> OffloadPlan:  # fmt: skip
    """Split `budget` bytes; raise BudgetError naming the minimum when even the working set does not fit.
    unit_bytes: the size of one read; ring_bytes: the streaming buffer (default: chosen from the budget);
    logits_all: forward calls return every position's logits (perplexity); n_seqs: sequences batched in one call."""
    matrices = _matrices(config, store, output_name)
    tied = output_name == names.TOKEN_EMBD
    embd = store.info(names.TOKEN_EMBD)
    need = _Needs(config, store, matrices, kv_bytes, n_ctx, n_threads, naive, unit_bytes, logits_all, n_seqs)
    experts = need.experts
    batch = _prompt_batch(config, n_batch, n_ctx, n_threads, budget, logits_all, n_seqs)
    if need.fixed(batch) + need.min_ring > budget:  # even that leaves too little: the smallest batch
        batch = min(n_batch, MIN_BATCH)
    fixed = need.fixed(batch)
    if budget < fixed + need.min_ring:
        raise BudgetError(
            f"--mem-budget {budget / 1e6:.1f} MB is below this model's minimum working set of "
            f"{(fixed + need.min_ring) / 1e6:.1f} MB (KV cache {kv_bytes / 1e6:.1f} MB for {n_ctx} tokens, buffers "
            f"{(fixed + need.min_ring - kv_bytes - need.small - need.extra) / 1e6:.1f} MB, norms {need.small / 1e6:.1f} MB"
            + (f", routers and experts {need.extra / 1e6:.1f} MB" if need.extra else "") + "); "
            "raise it, or lower --ctx-size, or store the cache smaller (--cache-type f16 or q8_0)"
        )  # fmt: skip
    min_ring, row_buf, small, max_unit = need.min_ring, need.row_buf, need.small, need.max_unit
    total = sum(m.n_bytes for m in matrices)
    ring = min_ring if naive else _ring(budget - fixed, min_ring, max_unit)
    ring = max(min_ring, min(ring if ring_bytes is None else ring_bytes, budget - fixed)) // PAGE * PAGE
    n_slabs = (1 if naive else config.n_expert_used) if experts is not None else 0
    free = 0 if naive else budget - fixed - ring  # fixed holds the routers and the first n_slabs slabs
    everything = sum(_span(PAGE - 1, m.n_bytes)[2] for m in matrices)
    everything += experts.all_bytes - n_slabs * experts.slab_span if experts else 0
    if not naive and ring_bytes is None and budget - fixed >= everything:
        ring, free = 0, budget - fixed  # everything fits: nothing to stream
    resident: dict[str, int] = {}
    order = [m for m in matrices if m.group == "attention"] + [m for m in matrices if m.group == "ffn"]
    for m in order:
        size = _span(PAGE - 1, m.n_bytes)[2]
        if size <= free:
            resident[m.name] = m.n_rows
            free -= size
    head = matrices[-1]
    if free >= _span(PAGE - 1, head.n_bytes)[2]:
        rows = head.n_rows
    else:
        rows = max(0, min(head.n_rows, (free - 2 * PAGE) // head.row_bytes)) if free > 2 * PAGE else 0
    if rows:
        resident[head.name] = rows
        free -= _span(PAGE - 1, rows * head.row_bytes)[2]
    if experts is not None and not naive:  # experts are read when routed: what is left caches them
        n_slabs = min(experts.n_keys, n_slabs + max(0, free) // experts.slab_span)
    units = []
    for m in matrices:
        row0 = resident.get(m.name, 0)
        per_unit = max(1, unit_bytes // m.row_bytes)
        for r in range(row0, m.n_rows, per_unit):
            n = min(per_unit, m.n_rows - r)
            units.append((m.slot, r, n, m.offset + r * m.row_bytes, n * m.row_bytes))
    if units and not ring:
        raise AssertionError("offload plan: weights left to stream with no ring")  # the fit test and the split disagree
    groups = {}
    for g in ("attention", "ffn", "head"):
        ms = [m for m in matrices if m.group == g]
        groups[g] = (sum(resident.get(m.name, 0) * m.row_bytes for m in ms), sum(m.n_bytes for m in ms))
    if experts is not None:
        groups["experts"] = (n_slabs * experts.expert_bytes, experts.n_keys * experts.expert_bytes)
        total += experts.n_keys * experts.expert_bytes
    stream_embedding = not tied or resident.get(head.name, 0) < head.n_rows
    out = OffloadPlan(path=path, budget=budget, kv_bytes=kv_bytes,
                      buffer_bytes=buffer_bytes(config, batch, n_ctx, n_threads, logits_all, n_seqs) + ring + row_buf,
                      ring_bytes=ring, n_batch=batch, naive=naive, logits_all=logits_all, resident_rows=resident, units=units,
                      stream_embedding=stream_embedding, embd_offset=embd.offset if stream_embedding else -1,
                      weight_bytes=total, small_bytes=small, groups=groups,
                      experts=None if experts is None else (experts.offsets.tobytes(), experts.sizes.tobytes(), n_slabs),
                      expert_cache_bytes=n_slabs * experts.slab_span if experts else 0,
                      row_buffer_bytes=row_buf)  # fmt: skip
    by_name = {m.name: m for m in matrices}
    ranges = {name: (by_name[name].offset, rows * by_name[name].row_bytes) for name, rows in resident.items()}
    ranges |= {name: (store.info(name).offset, store.info(name).n_bytes) for name in (experts.routers if experts else ())}
    out.copies = dict(zip(ranges, read_direct(path, list(ranges.values()))))
    return out


class _Experts:
    """A mixture-of-experts model's expert slabs in the file: each (layer, expert)'s gate, up and down rows."""

    def __init__(self, config, store):
        layers = range(config.n_layers)
        infos = [[store.info(t.format(i=i)) for t in (names.FFN_GATE_EXPS, names.FFN_UP_EXPS, names.FFN_DOWN_EXPS)]
                 for i in layers]  # fmt: skip
        X = config.n_expert
        self.sizes = np.array([[info.n_bytes // X for info in row] for row in infos], dtype=np.int64)  # (layers, 3)
        self.offsets = np.array([[[info.offset + e * b for info, b in zip(row, sizes)] for e in range(X)]
                                 for row, sizes in zip(infos, self.sizes.tolist())], dtype=np.int64)  # fmt: skip
        # a cache slab holds any layer's expert (the largest), at any alignment
        self.slab_span = int(sum(-(-(PAGE - 1 + self.sizes[:, j].max()) // PAGE) * PAGE for j in range(3)))
        self.n_keys = config.n_layers * X
        self.all_bytes = self.n_keys * self.slab_span
        self.expert_bytes = int(self.sizes.sum()) // config.n_layers  # one expert, averaged over layers
        self.routers = [names.FFN_GATE_INP.format(i=i) for i in layers]
        self.router_bytes = sum(_span(PAGE - 1, store.info(n).n_bytes)[2] for n in self.routers)
