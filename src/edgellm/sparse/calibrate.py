"""Per-layer activation thresholds for a model-wide sparsity target, without training, allocated by model loss.

As TEAL (arXiv 2408.14690): run calibration text through the dense model and keep a sample of the inputs of
every linear group (model/sparsity.py); a group's threshold for sparsity s is the s-quantile of its input
magnitudes in that layer. What differs is how much sparsity each (layer, group) gets:

1. sensitivity(): the layers are cut into bands of ~6; for each (band, group) unit and the sparsities LEVELS,
   the C forward pass measures the mean KL divergence of the next-token distribution from the dense model's
   (4 windows of 128 tokens spread over the calibration text, last 48 positions), only that unit sparse.
   This is the whole cost: 80 probes for SmolLM2 (30 layers), 48 for Gemma-3-270M; independent of the target.
2. thresholds_for(): greedy, 5 % at a time, on the unit whose next step adds least KL per weight skipped
   (KL interpolated as a power law between levels), until the model-wide sparsity (weighted by the weights
   each group multiplies) reaches the target.
3. refine(): exchanges between whole groups on the joint KL (the units do not add up exactly).
4. choose(): of that allocation blended with uniform sparsity, the one of least calibration NLL.

Calibration text never comes from the evaluation corpus. Measured on SmolLM2-135M (calibration text only,
8 held windows of groups_merged.txt): a per-product output-error proxy allocated worse than uniform; the KL
greedy beats uniform at 40 % (+10.4 % against +14.5 % calibration perplexity) but not at 25 % (+3.1 % against
+0.1 %: the KL over-weights the attention input, whose sparsity the NLL barely sees), hence step 4; allocating
on the NLL per unit directly is too noisy (+38 % at 25 %). The KL finds ffn_in the most sensitive group
(especially in the first layers), the down projection's input the least, and the attention output cheap.
Wikitext-2 results (40 windows of 512, only as a final check): docs/sparsity.md.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..eval.perplexity import count_windows, window
from ..model import layers
from ..model.sparsity import GROUPS, Thresholds
from ..model.transformer import Transformer
from ..runtime.kv_cache import KVCache

STEP = 0.05  # sparsity grid of the greedy allocation
MAX_SPARSITY = 0.95
SAMPLE_ROWS = 512  # input rows kept per group: enough for quantiles, bounded memory
LEVELS = (0.25, 0.45, 0.65, 0.85)  # sparsities at which each unit's KL is measured; a unit never exceeds the last
LAYERS_PER_BAND = 6  # SmolLM2 (30 layers): 5 bands; Gemma-3-270M (18): 3 bands


def collect_inputs(model: Transformer, tokens: np.ndarray, n_ctx: int, n_chunks: int | None, bos_id: int | None,
                   seed: int = 0) -> dict[tuple[int, str], np.ndarray]:  # fmt: skip
    """A sample of SAMPLE_ROWS input rows of each (layer, group), from consecutive n_ctx windows (NumPy path:
    the C engine runs without hooks)."""
    first_of_group = {template.format(i=i): (i, g) for i in range(model.config.n_layers)
                      for g, templates in GROUPS.items() for template in templates[:1]}  # fmt: skip
    seen: dict[tuple[int, str], list[np.ndarray]] = {}

    def record(name: str, x: np.ndarray) -> None:
        if name in first_of_group:
            seen.setdefault(first_of_group[name], []).append(np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1]))

    n = count_windows(len(tokens), n_ctx, n_chunks)
    with layers.observe_linear_inputs(record):
        for c in range(n):
            model.forward(window(tokens, c, n_ctx, bos_id), KVCache(model.config, n_ctx), None)
    rng = np.random.default_rng(seed)
    out = {}
    for key, parts in seen.items():
        rows = np.concatenate(parts)
        out[key] = rows[np.sort(rng.choice(len(rows), min(SAMPLE_ROWS, len(rows)), replace=False))]
    return out


def allocate(errors: np.ndarray, sizes: np.ndarray, target: float, grid: np.ndarray) -> np.ndarray:
    """Greedy: grid index per unit such that the size-weighted sparsity reaches `target`, each step spent on
    the unit whose next step adds the least error (here: model KL) per weight skipped. errors: (units,
    len(grid)); a non-finite error marks a level the unit may not reach."""
    level = np.zeros(len(sizes), dtype=int)
    total = sizes.sum()
    while (grid[level] * sizes).sum() < target * total - 1e-9:
        nxt = np.minimum(level + 1, len(grid) - 1)
        room = (level + 1 < len(grid)) & np.isfinite(errors[np.arange(len(sizes)), nxt])
        if not room.any():
            break
        gain = (grid[nxt] - grid[level]) * sizes
        cost = np.full(len(sizes), np.inf)
        cost[room] = (errors[room, nxt[room]] - errors[room, level[room]]) / gain[room]
        level[int(np.argmin(cost))] += 1
    return level


@dataclass
class Sensitivity:
    """What a calibration measured, independent of the target: thresholds per (layer, group) on the sparsity
    grid, the weights each group multiplies, the layer bands, and the model KL of each (band, group) unit
    sparse alone at each of `levels`."""

    grid: np.ndarray  # (n_grid,) sparsities 0, STEP, ..., MAX_SPARSITY
    quantiles: np.ndarray  # (n_layers, n_groups, n_grid) threshold giving each grid sparsity
    sizes: np.ndarray  # (n_layers, n_groups) weights multiplied
    bands: list[range]
    levels: np.ndarray  # (n_levels,)
    kl: np.ndarray  # (n_bands, n_groups, n_levels) mean KL from dense with only that unit sparse
    seconds: float = 0.0
    name: str = ""
    dnll: np.ndarray | None = None  # (n_bands, n_groups, n_levels) mean NLL increase on the probe's tokens

    def curves(self, power_law: bool = True, use: str = "kl") -> np.ndarray:
        """KL of each unit on the grid, (n_bands * n_groups, n_grid), made non-decreasing; inf beyond the last
        level measured. Between levels: a power law (linear in log-log), below the first one the power law of
        the first two levels (exponent clamped to [1, 4]): KL grows about as s^2 at small s (measured on
        SmolLM2, uniform: 0.0077 at 5 %, 0.027 at 10 %, 0.116 at 25 %), and a straight line from (0, 0)
        would make small steps look as dear as big ones, so the greedy would pile sparsity onto few units."""
        out = np.empty((len(self.bands) * len(GROUPS), len(self.grid)))
        s = self.levels
        for u, kl in enumerate((self.kl if use == "kl" else self.dnll).reshape(-1, len(s))):
            kl = np.maximum.accumulate(np.maximum(kl, 1e-12))
            if power_law:
                p = np.clip(np.log(kl[1] / kl[0]) / np.log(s[1] / s[0]), 1.0, 4.0) if len(s) > 1 else 2.0
                g = np.maximum(self.grid, 1e-9)
                out[u] = np.where(g < s[0], kl[0] * (g / s[0]) ** p,
                                  np.exp(np.interp(np.log(g), np.log(s), np.log(kl))))  # fmt: skip
                out[u, 0] = 0.0
            else:
                out[u] = np.interp(self.grid, np.r_[0.0, s], np.r_[0.0, kl])
            out[u, self.grid > s[-1] + 1e-9] = np.inf
        return out

    def unit_sizes(self) -> np.ndarray:
        return np.array([self.sizes[list(b)].sum(axis=0) for b in self.bands]).reshape(-1)


def thresholds_for(sens: Sensitivity, target: float, power_law: bool = True, use: str = "kl") -> Thresholds:
    """The allocation for one model-wide target: greedy over (band, group) units on the measured KL curves;
    every layer of a band gets the unit's sparsity, at its own input quantile."""
    n_layers, n_groups = sens.sizes.shape
    levels = allocate(sens.curves(power_law, use), sens.unit_sizes(), target, sens.grid).reshape(len(sens.bands), n_groups)
    sparsity = np.zeros((n_layers, n_groups))
    for b, band in enumerate(sens.bands):
        sparsity[list(band)] = sens.grid[levels[b]]
    return _thresholds(sens, sparsity, target)


def _thresholds(sens: Sensitivity, sparsity: np.ndarray, target: float) -> Thresholds:
    """Thresholds giving `sparsity` (any value in [0, MAX_SPARSITY]: the input quantiles are interpolated)."""
    t = np.zeros(sparsity.shape, dtype=np.float32)
    for i, k in zip(*np.nonzero(sparsity > 1e-9)):
        t[i, k] = np.interp(sparsity[i, k], sens.grid, sens.quantiles[i, k])
    return Thresholds(t, sparsity.copy(), target, sens.name)


def refine(sens: Sensitivity, probe: KLProbe, th: Thresholds, rounds: int = 3, move: float = 0.03,
           progress: Callable[[str], None] | None = None) -> Thresholds:  # fmt: skip
    """Exchange sparsity between whole groups on the JOINT model KL, the model-wide sparsity unchanged: the
    curves are measured one unit at a time, and at 40 % the units do not add up (Gemma-3-270M: the greedy
    allocation alone was further from dense than uniform sparsity). Each round measures, for every group,
    the KL with `move` of the model's weights more and less sparse in that group (all layers alike), and
    moves that much from the group where it saves most to the one where it costs least, if the measured KL
    drops; otherwise the move is halved. 2 * n_groups + 1 forward passes of the probe per round."""
    cap = sens.levels[-1]
    total = sens.sizes.sum()
    group_size = sens.sizes.sum(axis=0)
    best, best_kl = th.sparsity.copy(), probe(th)

    def shifted(a: np.ndarray, k: int, weights: float) -> np.ndarray | None:
        """`a` with `weights` (a fraction of the model's) more (or less, < 0) inputs zeroed in group k."""
        b = a.copy()
        b[:, k] = a[:, k] + weights * total / group_size[k]
        if b[:, k].max() > cap + 1e-9 or b[:, k].min() < -1e-9:
            return None
        return b

    for r in range(rounds):
        up, down = np.full(len(GROUPS), np.inf), np.full(len(GROUPS), -np.inf)
        for k in range(len(GROUPS)):
            for sign, out in ((1, up), (-1, down)):
                b = shifted(best, k, sign * move)
                if b is not None:
                    out[k] = (probe(_thresholds(sens, b, th.target)) - best_kl) * sign / move
        u, v = int(np.argmin(up)), int(np.argmax(np.where(np.arange(len(GROUPS)) == int(np.argmin(up)), -np.inf, down)))
        if not up[u] < down[v]:
            break
        while move > 0.004:
            b = shifted(best, u, move)
            b = shifted(b, v, -move) if b is not None else None
            kl = probe(_thresholds(sens, b, th.target)) if b is not None else np.inf
            if kl < best_kl:
                best, best_kl = b, kl
                break
            move /= 2
        if progress is not None:
            progress(f"round {r + 1}: {move:.3f} of the weights from {list(GROUPS)[v]} to {list(GROUPS)[u]}, KL {best_kl:.4f}")
        if move <= 0.004:
            break
    return _thresholds(sens, best, th.target)


def model_wide(sparsity: np.ndarray, sizes: np.ndarray) -> float:
    """Fraction of the transformer's linear-layer weights whose input is zero."""
    return float((sparsity * sizes).sum() / sizes.sum())


class KLProbe:
    """Mean KL(dense || sparse) of the next-token distribution over the last `rows` positions of `n_windows`
    windows of `n_ctx` tokens spread over the calibration text, with the C forward pass (fast, and sparse when
    model.set_sparsity is given thresholds)."""

    def __init__(self, model: Transformer, tokens: np.ndarray, n_windows: int, n_ctx: int, rows: int,
                 bos_id: int | None):  # fmt: skip
        self.model, self.n_ctx, self.rows = model, min(n_ctx, len(tokens)), min(rows, min(n_ctx, len(tokens)) - 1)
        starts = np.linspace(0, len(tokens) - self.n_ctx, n_windows).astype(int)
        self.chunks = []
        for s in starts:
            chunk = np.array(tokens[s : s + self.n_ctx], dtype=np.int64)
            if bos_id is not None:
                chunk[0] = bos_id
            self.chunks.append(chunk)
        model.set_sparsity(None)
        self.dense = [self._logprobs(c) for c in self.chunks]
        self.dense_p = [np.exp(d) for d in self.dense]
        self.targets = [c[self.n_ctx - self.rows + 1 :] for c in self.chunks]  # next tokens of all but the last row
        self.last_dnll = 0.0  # mean NLL increase of the last call (the KL is its expectation under the dense model)

    def _logprobs(self, chunk: np.ndarray) -> np.ndarray:
        logits = self.model.forward(chunk, KVCache(self.model.config, self.n_ctx), slice(self.n_ctx - self.rows, self.n_ctx))
        x = logits.astype(np.float64)
        x -= x.max(axis=1, keepdims=True)
        return (x - np.log(np.exp(x).sum(axis=1, keepdims=True))).astype(np.float32)

    def __call__(self, thresholds: Thresholds | None) -> float:
        self.model.set_sparsity(thresholds)
        try:
            total = dnll = 0.0
            for chunk, lp, p, y in zip(self.chunks, self.dense, self.dense_p, self.targets):
                sp = self._logprobs(chunk)
                total += float((p * (lp - sp)).sum()) / len(lp)
                r = np.arange(len(y))
                dnll += float((lp[r, y] - sp[r, y]).mean())
        finally:
            self.model.set_sparsity(None)
        self.last_dnll = dnll / len(self.chunks)
        return total / len(self.chunks)


def sensitivity(model: Transformer, tokens: np.ndarray, *, n_ctx: int = 512, n_chunks: int | None = 4,
                bos_id: int | None = None, kl_windows: int = 4, kl_ctx: int = 128, kl_rows: int = 48,
                layers_per_band: int = LAYERS_PER_BAND, levels: tuple[float, ...] = LEVELS, name: str = "",
                progress: Callable[[int, int], None] | None = None, probe: KLProbe | None = None) -> Sensitivity:  # fmt: skip
    """Input quantiles (n_chunks windows of n_ctx, NumPy path) and the KL curve of every (band, group) unit
    (kl_windows windows of kl_ctx, last kl_rows positions scored, C path): len(levels) forward passes of
    kl_windows windows per unit, the whole cost of a calibration."""
    c = model.config
    if c.n_expert:
        from ..errors import UnsupportedError

        raise UnsupportedError("activation sparsity for mixture-of-experts FFNs is not supported yet")
    start = time.perf_counter()
    grid = np.round(np.arange(0.0, MAX_SPARSITY + 1e-9, STEP), 4)
    inputs = collect_inputs(model, tokens, n_ctx, n_chunks, bos_id)
    quantiles = np.zeros((c.n_layers, len(GROUPS), len(grid)), dtype=np.float32)
    sizes = np.zeros((c.n_layers, len(GROUPS)))
    for i in range(c.n_layers):
        for k, (g, templates) in enumerate(GROUPS.items()):
            quantiles[i, k] = np.quantile(np.abs(inputs[(i, g)]), grid)
            sizes[i, k] = sum(float(np.prod(model.store.info(t.format(i=i)).shape)) for t in templates)
    del inputs
    n_bands = max(1, round(c.n_layers / layers_per_band))
    bounds = np.linspace(0, c.n_layers, n_bands + 1).round().astype(int)
    bands = [range(a, b) for a, b in itertools.pairwise(bounds)]
    levels_arr = np.asarray(levels, dtype=np.float64)
    sens = Sensitivity(grid, quantiles, sizes, bands, levels_arr, np.zeros((len(bands), len(GROUPS), len(levels))),
                       name=name, dnll=np.zeros((len(bands), len(GROUPS), len(levels))))  # fmt: skip
    probe = probe or KLProbe(model, tokens, kl_windows, kl_ctx, kl_rows, bos_id)
    total, done = len(bands) * len(GROUPS) * len(levels), 0
    for b, band in enumerate(bands):
        for k in range(len(GROUPS)):
            for j, s in enumerate(levels_arr):
                sparsity = np.zeros((c.n_layers, len(GROUPS)))
                sparsity[list(band), k] = s
                sens.kl[b, k, j] = probe(_thresholds(sens, sparsity, 0.0))
                sens.dnll[b, k, j] = probe.last_dnll
                done += 1
                if progress is not None:
                    progress(done, total)
    sens.seconds = time.perf_counter() - start
    return sens


def calibration_nll(model: Transformer, tokens: np.ndarray, th: Thresholds | None, n_ctx: int, n_windows: int,
                    bos_id: int | None) -> float:  # fmt: skip
    """Mean NLL of the scored halves of the last n_windows n_ctx windows of the calibration text (as
    eval.perplexity scores a window), with these thresholds, on the C path."""
    from ..eval.perplexity import chunk_nll

    n_windows = max(1, min(n_windows, len(tokens) // n_ctx))
    tail = tokens[len(tokens) - n_windows * n_ctx :]
    model.set_sparsity(th)
    try:
        return float(np.mean(np.concatenate([chunk_nll(model, window(tail, c, n_ctx, bos_id)) for c in range(n_windows)])))
    finally:
        model.set_sparsity(None)


def choose(sens: Sensitivity, model: Transformer, tokens: np.ndarray, th: Thresholds, *, n_ctx: int = 512,
           n_windows: int = 8, bos_id: int | None = None, blends: tuple[float, ...] = (0.0, 0.5, 1.0),
           progress: Callable[[str], None] | None = None) -> Thresholds:  # fmt: skip
    """Of the allocation `th` blended with uniform sparsity (blend 1: th; 0: the target in every group and layer;
    the model-wide sparsity is the same for all), the one with the lowest calibration NLL. Why: the KL ranks
    units well where sparsity hurts (40 %: SmolLM2 calibration perplexity +10.4 % against +14.5 % uniform) but
    over-weights the attention input at low sparsity, where the NLL barely moves (25 %: +3.1 % against +0.1 %
    uniform); per unit, the NLL itself is too noisy to allocate with (+38 % at 25 %)."""
    uniform = np.full_like(th.sparsity, model_wide(th.sparsity, sens.sizes))
    best, best_nll = th, np.inf
    for a in blends:
        cand = _thresholds(sens, a * th.sparsity + (1 - a) * uniform, th.target)
        nll = calibration_nll(model, tokens, cand, n_ctx, n_windows, bos_id)
        if progress is not None:
            progress(f"blend {a:.2f}: calibration NLL {nll:.4f}")
        if nll < best_nll:
            best, best_nll = cand, nll
    return best


def calibrate(model: Transformer, tokens: np.ndarray, target: float, *, n_ctx: int = 512, n_chunks: int | None = 4,
              bos_id: int | None = None, name: str = "", rounds: int = 2, kl_windows: int = 4, kl_ctx: int = 128,
              kl_rows: int = 48, nll_windows: int = 8, progress: Callable[[int, int], None] | None = None,
              **options) -> Thresholds:  # fmt: skip
    """Thresholds that make the model `target` sparse (fraction of its linear-layer weights whose inputs are
    zero), spent where the model's loss on the calibration text suffers least: KL curves per (band, group),
    greedy on them, `rounds` of joint refinement between groups, then the blend with uniform sparsity of least
    calibration NLL (nll_windows windows of n_ctx; 0: skip). `options` go to sensitivity()."""
    probe = KLProbe(model, tokens, kl_windows, kl_ctx, kl_rows, bos_id)
    sens = sensitivity(model, tokens, n_ctx=n_ctx, n_chunks=n_chunks, bos_id=bos_id, name=name, progress=progress,
                       probe=probe, **options)  # fmt: skip
    th = thresholds_for(sens, target)
    th = refine(sens, probe, th, rounds) if rounds else th
    return choose(sens, model, tokens, th, n_ctx=n_ctx, n_windows=nll_windows, bos_id=bos_id) if nll_windows else th
