"""Several accelerators (a car SoC's chiplets, two chips on a board): where the layers go, and what it costs.

Each accelerator has its own memory (capacity, bandwidth) and compute; they are joined by a link (bandwidth,
latency). Two ways to split a model:

- pipeline: contiguous runs of layers per accelerator. At batch 1 the stages run one after another, so
  decode is the sum of the stage times plus one hop per stage boundary (the hidden state, d_model
  activations): it buys capacity, not speed. A long prompt is cut into micro-batches that flow through the
  stages together, so prefill approaches the slowest stage's throughput.
- tensor parallel: every layer split N ways (attention heads and FFN rows), so all N memories stream at
  once; each layer then ends in two all-reduces of the hidden state (after attention, after the FFN), done
  as a ring: 2 (N-1)/N of the message over the link and 2 (N-1) latencies.

A layer's time on one accelerator is max(bytes / bandwidth, FLOPs / compute) (planner/estimate.py does it
operation by operation; here a layer is the unit).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from ..errors import ConfigError


MAX_ACCELERATORS = 8


@dataclass(frozen=True)
class Accelerator:
    name: str
    bandwidth_gbps: float  # effective
    capacity_gb: float | None
    gflops: float | None  # effective; None: time is bytes alone

    def seconds(self, n_bytes: float, flops: float, fixed_s: float = 0.0) -> float:
        t = n_bytes / (self.bandwidth_gbps * 1e9)
        if self.gflops:
            t = max(t, flops / (self.gflops * 1e9))
        return t + fixed_s


@dataclass(frozen=True)
class Link:
    gbps: float  # GB/s each way
    latency_us: float = 0.0

    def send(self, n_bytes: float) -> float:
        return self.latency_us * 1e-6 + n_bytes / (self.gbps * 1e9)

    def all_reduce(self, n_bytes: float, n: int) -> float:
        """Ring all-reduce of a message of `n_bytes` among `n` peers."""
        if n <= 1:
            return 0.0
        return 2 * (n - 1) * self.latency_us * 1e-6 + 2 * (n - 1) / n * n_bytes / (self.gbps * 1e9)


@dataclass(frozen=True)
class LayerCost:
    weight_bytes: float  # resident (weights and this layer's KV cache)
    read_bytes: float  # read per step (weights actually used + KV cache)
    flops: float
    fixed_s: float = 0.0  # per-step cost that splitting the layer does not shrink (norms, hand-offs)


@dataclass
class Partition:
    strategy: str  # "pipeline" | "tensor"
    seconds: float  # per decode token, or for the whole prompt
    stage_seconds: list[float]
    stage_layers: list[list[int]]
    link_seconds: float
    link_bytes: float  # over the link per decode token / per prompt
    memory_gb: list[float]  # per accelerator
    fits: bool
    bottleneck: str

    def to_dict(self) -> dict:
        return asdict(self)


def pipeline(
    layers: list[LayerCost], accs: list[Accelerator], link: Link, hidden_bytes: float, tokens: int = 1,
    micro_batches: int = 1, feedback_bytes: float = 0.0, cuts: tuple[int, ...] | None = None,
) -> Partition:
    """A contiguous split of `layers` over `accs` (in order) with the least slowest-stage time among those
    that fit every accelerator's memory (or the least total overflow when none fits): every split for two
    accelerators, splits near the even one for more (_splits). `hidden_bytes` is one token's hidden state;
    `tokens` of them cross each boundary. `feedback_bytes`: what goes back from the last stage to the first
    after each step (decode: the sampled token), one more message on the link. `cuts`: this split only (the
    first layer of every stage after the first), e.g. the one a run used."""
    n, L = len(accs), len(layers)
    if n < 1 or L < n:
        raise ConfigError(f"cannot pipeline {L} layers over {n} accelerators")
    if n > MAX_ACCELERATORS:
        raise ConfigError(f"at most {MAX_ACCELERATORS} accelerators are planned, got {n}")
    if cuts is not None and (len(cuts) != n - 1 or list(cuts) != sorted(set(cuts)) or not all(0 < c < L for c in cuts)):
        raise ConfigError(f"a split of {L} layers over {n} stages needs {n - 1} increasing cuts in 1..{L - 1}")
    best = None
    for cuts in [tuple(cuts)] if cuts is not None else _splits(L, n):
        stages = [list(range(a, b)) for a, b in zip((0, *cuts), (*cuts, L))]
        mem = [sum(layers[i].weight_bytes for i in s) / 1e9 for s in stages]
        over = sum(max(0.0, m - (a.capacity_gb or float("inf"))) for m, a in zip(mem, accs))
        times = [a.seconds(sum(layers[i].read_bytes for i in s), sum(layers[i].flops for i in s),
                           sum(layers[i].fixed_s for i in s)) for s, a in zip(stages, accs)]  # fmt: skip
        key = (over, max(times), sum(times))
        if best is None or key < best[0]:
            best = (key, stages, mem, times)
    (over, _, _), stages, mem, times = best
    hop = link.send(hidden_bytes * tokens / micro_batches) if n > 1 else 0.0
    back = link.send(feedback_bytes) if n > 1 and feedback_bytes else 0.0
    if micro_batches == 1:
        link_s = (n - 1) * hop + back
        total = sum(times) + link_s
    else:  # micro-batches fill the pipe: (m + n - 1) beats of the slowest stage, each with its hop
        link_s = (micro_batches + n - 1) * hop
        total = (micro_batches + n - 1) * max(t / micro_batches for t in times) + link_s
    slow = max(range(n), key=lambda i: times[i])
    bottleneck = "link" if link_s > max(times) else f"stage {slow} ({accs[slow].name}) memory/compute"
    return Partition("pipeline", total, times, stages, link_s, (n - 1) * hidden_bytes * tokens, mem, over == 0, bottleneck)


def tensor_parallel(
    layers: list[LayerCost], accs: list[Accelerator], link: Link, hidden_bytes: float, tokens: int = 1
) -> Partition:
    """Every layer split evenly over identical accelerators; two all-reduces of the hidden state per layer."""
    n = len(accs)
    if len({(a.bandwidth_gbps, a.capacity_gb, a.gflops) for a in accs}) > 1:
        raise ConfigError("tensor parallelism here assumes identical accelerators")
    a = accs[0]
    per = [a.seconds(c.read_bytes / n, c.flops / n, c.fixed_s) for c in layers]
    reduce_s = 2 * len(layers) * link.all_reduce(hidden_bytes * tokens, n)
    mem = [sum(c.weight_bytes for c in layers) / n / 1e9] * n
    fits = a.capacity_gb is None or mem[0] <= a.capacity_gb
    link_bytes = 2 * len(layers) * 2 * (n - 1) * hidden_bytes * tokens  # summed over the ring's senders
    total = sum(per) + reduce_s
    bottleneck = "link (all-reduce)" if reduce_s > sum(per) else "memory/compute of each accelerator"
    return Partition("tensor", total, [sum(per)] * n, [list(range(len(layers)))] * n, reduce_s, link_bytes, mem, fits, bottleneck)


def _splits(L: int, n: int):
    """Cut positions splitting range(L) into n non-empty runs: all of them for n <= 2, else the cuts within
    a few layers of the even split (stages of similar accelerators are near-even anyway)."""
    if n == 1:
        yield ()
        return
    if n == 2:
        for c in range(1, L):
            yield (c,)
        return
    base = [round(L * k / n) for k in range(1, n)]
    reach = 3 if n <= 4 else 1
    seen = set()
    for delta in itertools.product(range(-reach, reach + 1), repeat=n - 1):
        cuts = tuple(b + d for b, d in zip(base, delta))
        if all(0 < c < L for c in cuts) and all(x < y for x, y in zip(cuts, cuts[1:])) and cuts not in seen:
            seen.add(cuts)
            yield cuts


def best(parts: list[Partition]) -> Partition:
    """Fitting partitions first, then the fastest."""
    return min(parts, key=lambda p: (not p.fits, p.seconds))
