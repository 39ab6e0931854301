"""Reading less per token, as the planner counts it: measured curves (sparsity.yaml) and the byte accounting of
the runtime's column layout and candidate head where nothing was measured.

Sparsity S is the runtime's `--sparsity S`: a model-wide fraction of the inputs of every layer's q, k, v, o,
gate, up and down matrices that is zeroed (weighted by the weights each input multiplies). A decode step then
reads those matrices in the column layout (formats/columns.py): per active input its channel row (q bits per
weight), per group of inputs the fp16 scales, read when any input of the group is active. Unmeasured, the
planner assumes every group stays active (true unless whole groups go quiet), so a matrix reads

    (1 - s) * q_bits/(q_bits + scale_bits) + scale_bits/(q_bits + scale_bits)   of its column-layout bytes,

which for 2-3 bit K-quants and the NL formats (8-bit containers) can exceed the dense file's bytes: that is
the layout, not a modelling artefact. Expert tensors and shapes the layout does not take stay dense, as in
the runtime. A measured `linear_bytes_fraction` replaces the assumed skip fraction by the one the runtime
reached on the measured file, so it carries over to other weight types through the same accounting.

The candidate head (`--head K`) reads a cheap copy of the head (Q3_NL unless measured otherwise) and K exact
rows of the model's own head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from ..formats.quants import GGMLType, get_format
from .model import ALIASES, ModelSpec, typed

# the matrices `--sparsity` covers (kernels/plan.py COLUMN_SLOTS), by GGUF name suffix
COVERED = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight",
           "ffn_up.weight", "ffn_down.weight")  # fmt: skip
HEAD_TYPE = "Q3_NL"  # sparse/head.py DEFAULT_TYPE: what `edgellm sparsify --head` makes
BPW_SCALE_BITS = 0.5  # --bpw models: one fp16 scale per 32 inputs, inside the given bits (assumption)
CURVES_PATH: Path | None = None  # None: the packaged sparsity.yaml (tests point this elsewhere)


@dataclass(frozen=True)
class Level:
    """One calibrated sparsity target, as measured (None: not measured)."""

    target: float
    linear_bytes_fraction: float | None = None
    decode_speedup: float | None = None
    ppl_increase_pct: float | None = None
    kld: float | None = None

    @property
    def measured(self) -> bool:
        """Listed by `fit` only with a quality measurement: the ranking needs one."""
        return self.quality is not None

    @property
    def quality(self) -> float | None:
        """KLD in nats; with only a perplexity change, ln(1 + Δppl), the NLL increase (same order as KLD)."""
        if self.kld is not None:
            return self.kld
        return math.log1p(self.ppl_increase_pct / 100) if self.ppl_increase_pct is not None else None


@dataclass(frozen=True)
class HeadCurve:
    candidates: int | None = None
    type: str = HEAD_TYPE
    head_bytes_fraction: float | None = None
    decode_speedup: float | None = None
    ppl_increase_pct: float | None = None
    kld: float | None = None

    @property
    def quality(self) -> float | None:
        return Level(0.0, kld=self.kld, ppl_increase_pct=self.ppl_increase_pct).quality

    @property
    def measured(self) -> bool:
        return self.candidates is not None and self.quality is not None


@dataclass(frozen=True)
class Curve:
    """A catalog model's measurements: on `model` (what `edgellm run -m` took), weight type `weights`, on
    `host` with `threads` threads."""

    name: str
    model: str | None
    weights: str | None
    host: str | None
    threads: int | None
    levels: tuple[Level, ...]
    head: HeadCurve | None

    def measured_levels(self) -> list[float]:
        return [lv.target for lv in self.levels if lv.measured]

    def level(self, s: float) -> Level | None:
        return next((lv for lv in self.levels if abs(lv.target - s) < 1e-9), None)


def _num(v, where: str, low: float = 0.0, high: float | None = None) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < low or (high is not None and v > high):
        raise ConfigError(f"{where} must be null or a number in [{low:g}, {'inf' if high is None else f'{high:g}'}], got {v!r}")
    return float(v)


def _curve(name: str, doc, src: str) -> Curve:
    if not isinstance(doc, dict):
        raise ConfigError(f"{src}: '{name}' must be a mapping")
    unknown = set(doc) - {"model", "weights", "host", "threads", "sparsity", "head"}
    if unknown:
        raise ConfigError(f"{src}: unknown field '{name}.{min(unknown)}'")
    levels = []
    for target, entry in (doc.get("sparsity") or {}).items():
        where = f"{src}: {name}.sparsity.{target}"
        try:
            s = float(target)
        except (TypeError, ValueError):
            s = None
        if s is None or isinstance(target, bool) or not 0.0 < s < 1.0:
            raise ConfigError(f"{where}: a sparsity target is a fraction in (0, 1)")
        entry = entry or {}
        if not isinstance(entry, dict) or set(entry) - {"linear_bytes_fraction", "decode_speedup", "ppl_increase_pct", "kld"}:
            raise ConfigError(f"{where}: expected {{linear_bytes_fraction, decode_speedup, ppl_increase_pct, kld}}")
        levels.append(Level(s, _num(entry.get("linear_bytes_fraction"), f"{where}.linear_bytes_fraction", 0.0, 2.0),
                            _num(entry.get("decode_speedup"), f"{where}.decode_speedup", 0.0),
                            _num(entry.get("ppl_increase_pct"), f"{where}.ppl_increase_pct", -100.0),
                            _num(entry.get("kld"), f"{where}.kld")))  # fmt: skip
    head = None
    if doc.get("head"):
        h, where = doc["head"], f"{src}: {name}.head"
        if not isinstance(h, dict) or set(h) - {"candidates", "type", "head_bytes_fraction", "decode_speedup", "ppl_increase_pct", "kld"}:
            raise ConfigError(f"{where}: expected {{candidates, type, head_bytes_fraction, decode_speedup, ppl_increase_pct, kld}}")
        k = h.get("candidates")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"{where}.candidates must be a positive integer, got {k!r}")
        t = str(h.get("type") or HEAD_TYPE).upper()
        if t not in GGMLType.__members__:
            raise ConfigError(f"{where}.type: unknown weight format '{t}'")
        head = HeadCurve(k, t, _num(h.get("head_bytes_fraction"), f"{where}.head_bytes_fraction", 0.0, 2.0),
                         _num(h.get("decode_speedup"), f"{where}.decode_speedup", 0.0),
                         _num(h.get("ppl_increase_pct"), f"{where}.ppl_increase_pct", -100.0),
                         _num(h.get("kld"), f"{where}.kld"))  # fmt: skip
    weights = doc.get("weights")
    if weights is not None:
        weights = str(weights).upper()
        try:
            from ..quant.mixes import get_mix

            get_mix(weights)
        except ConfigError as e:
            raise ConfigError(f"{src}: {name}.weights: {e}") from None
    elif any(lv.linear_bytes_fraction is not None for lv in levels) or (head and head.head_bytes_fraction is not None):
        raise ConfigError(f"{src}: {name}.weights (the measured file's weight type) is needed to use its byte fractions")
    threads = doc.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"{src}: {name}.threads must be a positive integer, got {threads!r}")
    return Curve(name, doc.get("model"), weights, doc.get("host"), threads, tuple(sorted(levels, key=lambda lv: lv.target)), head)


def load_curves(path: Path | None = None) -> dict[str, Curve]:
    """Catalog model name -> its measured curve (keys may be the runtime's names: gemma3-270m)."""
    if path is None and CURVES_PATH is None:
        res = resources.files("edgellm.planner") / "sparsity.yaml"
        if not res.is_file():  # not packaged: nothing is measured
            return {}
        return _load(str(res), res.read_text(encoding="utf-8"))
    p = Path(path or CURVES_PATH)
    try:
        return _load(str(p), p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the sparsity curves ({e.strerror})") from None


@lru_cache(maxsize=8)
def _load(src: str, text: str) -> dict[str, Curve]:
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{src}: expected a mapping of model names")
    out = {}
    for key, entry in doc.items():
        name = ALIASES.get(str(key).lower(), str(key).lower())
        out[name] = _curve(name, entry, Path(src).name)
    return out


def curve_for(model_name: str) -> Curve | None:
    return load_curves().get(ALIASES.get(model_name.lower(), model_name.lower()))


# --- byte accounting ---


@lru_cache(maxsize=64)
def column_bits(type_name: str) -> tuple[float, float] | None:
    """(q bits, scale bits) per weight of a type's column layout, read off the layout itself (a zero matrix
    repacked); None when the layout does not take the type."""
    import numpy as np

    from ..formats import columns

    t = GGMLType[type_name]
    if t not in columns.KNOWN:
        return None
    rows, cols = columns.TILE, 256
    raw = np.zeros((rows, get_format(t).row_bytes(cols)), dtype=np.uint8)
    cm = columns.from_packed(int(t), raw, rows, cols)
    scales = sum(a.nbytes for a in (cm.d, cm.m) if a is not None)
    return cm.q.shape[1] * 8 / rows, scales * 8 / (rows * cols)


def covered(name: str) -> bool:
    return name.startswith("blk.") and name.endswith(COVERED)


def _column(spec: ModelSpec, name: str, rows: int, cols: int) -> tuple[float, float] | None:
    """(q, scale) bytes of this matrix in the column layout, None when it stays dense."""
    if not covered(name):
        return None
    if spec.bits_override is not None:
        n = rows * cols / 8
        return n * (spec.bits_override - BPW_SCALE_BITS), n * BPW_SCALE_BITS
    from ..formats import columns

    t = spec.types[name]
    bits = column_bits(t.name)
    if bits is None or not columns.supported(int(t), rows, cols):
        return None
    n = rows * cols / 8
    return n * bits[0], n * bits[1]


def effective_skip(spec: ModelSpec, s: float, curve: Curve | None) -> tuple[float, bool]:
    """(fraction of covered weights a decode step skips, measured?) at target `s`.

    Measured: each level's linear_bytes_fraction f (bytes the seven matrices read sparse / dense, on the
    measured file) solved for the skip fraction k in f * dense = (1 - k) * q + scales + uncovered; levels
    between measured ones interpolate k (k = 0 at s = 0). Unmeasured or beyond the measured levels: k = s."""
    pts = [(0.0, 0.0)]
    if curve is not None and curve.weights is not None:
        ref = typed(spec.shape, curve.weights)  # the measured file's types on this shape
        dense = q = sc = unc = 0.0
        for name, rows, cols in ref.shape.weight_tensors():
            if not covered(name):
                continue
            b = ref.tensor_bytes(name, rows, cols)
            dense += b
            col = _column(ref, name, rows, cols)
            if col is None:
                unc += b
            else:
                q, sc = q + col[0], sc + col[1]
        for lv in curve.levels:
            if lv.linear_bytes_fraction is not None and q > 0:
                pts.append((lv.target, min(1.0, max(0.0, 1.0 - (lv.linear_bytes_fraction * dense - sc - unc) / q))))
    if len(pts) > 1 and s <= pts[-1][0] + 1e-12:
        import numpy as np

        return float(np.interp(s, [p[0] for p in pts], [p[1] for p in pts])), True
    return s, False


def head_tensor(spec: ModelSpec) -> tuple[str, int, int]:
    s = spec.shape
    name = "token_embd.weight" if s.tied else "output.weight"
    return name, s.vocab, s.d_model


def head_row_bytes(spec: ModelSpec) -> float:
    name, rows, cols = head_tensor(spec)
    return spec.tensor_bytes(name, rows, cols) / rows


def cheap_head(spec: ModelSpec, curve: Curve | None) -> tuple[str, float, bool]:
    """(format, bytes, measured?) of the cheap copy a candidate head reads per token: measured as
    head_bytes_fraction * head - K_measured exact rows on the measured file, else the format's own size."""
    h = curve.head if curve is not None else None
    fmt = h.type if h else HEAD_TYPE
    _, rows, cols = head_tensor(spec)
    if h and h.head_bytes_fraction is not None and h.candidates is not None and curve.weights is not None:
        ref = typed(spec.shape, curve.weights)
        name, r, c = head_tensor(ref)
        full = ref.tensor_bytes(name, r, c)
        return fmt, max(0.0, h.head_bytes_fraction * full - h.candidates * full / r), True
    return fmt, rows * get_format(GGMLType[fmt]).row_bytes(cols), False


@dataclass(frozen=True)
class ReadLess:
    """What `--sparsity S --head K` changes in a decode step of one model."""

    sparsity: float
    candidates: int  # 0: the full head
    skip: float  # fraction of the covered matrices' weights a decode step skips
    skip_measured: bool
    cheap_type: str | None  # the candidate head's cheap copy
    cheap_bytes: float
    cheap_measured: bool
    column_bytes: float  # column-layout copies the runtime builds next to the file's matrices (resident)
    curve: Curve | None

    @property
    def extra_bytes(self) -> float:
        """Memory beyond the file's weights: the column copies and the cheap head."""
        return self.column_bytes + self.cheap_bytes


def read_less(spec: ModelSpec, sparsity: float = 0.0, candidates: int = 0) -> ReadLess:
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"--sparsity must be a fraction in [0, 1), got {sparsity:g}")
    if candidates < 0 or candidates > spec.shape.vocab:
        raise ConfigError(f"--head {candidates}: the number of candidates must be in 1..{spec.shape.vocab} (the vocabulary)")
    curve = curve_for(spec.shape.name)
    skip, skip_measured = effective_skip(spec, sparsity, curve) if sparsity else (0.0, False)
    cols = 0.0
    if sparsity:
        for name, rows, c in spec.shape.weight_tensors():
            col = _column(spec, name, rows, c)
            cols += sum(col) if col else 0.0
    fmt, cheap, cheap_measured = cheap_head(spec, curve) if candidates else (None, 0.0, False)
    return ReadLess(sparsity, candidates, skip, skip_measured, fmt, cheap, cheap_measured, cols, curve)
