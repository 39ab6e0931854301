"""Kernel dispatch: the compiled C library when it is there, the NumPy reference otherwise.

The C library picks its best path (avx512 > avx2 > generic on x86, neon on Arm) from the CPU at import.
`EDGELLM_KERNELS=ref|ref-f32|generic|avx2|avx512|neon|auto` forces one and `EDGELLM_DISABLE_ISA=avx512,...`
rules paths out. `ref` is the NumPy path with the kernels' 8-bit activation rounding (their oracle);
`ref-f32` is the NumPy path with float activations. `capabilities()` reports what was found and chosen.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from ..errors import ConfigError

try:
    from . import _C
except ImportError:  # pragma: no cover - exercised only on installs without a compiler
    _C = None
    warnings.warn(
        "edgellm: the C kernels are not built; running on the slow NumPy reference path "
        "(reinstall with a C compiler available)",
        RuntimeWarning,
        stacklevel=2,
    )

REF = "ref"
REF_F32 = "ref-f32"
NUMPY_PATHS = (REF, REF_F32)
_state = {"path": REF, "threads": 1}
# a model's own path while its NumPy forward runs in this thread (Transformer.kernel_path); None: the default
_thread_path: ContextVar[str | None] = ContextVar("edgellm_kernel_path", default=None)


def _choose(requested: str, disabled: set[str]) -> str:
    if requested in NUMPY_PATHS:
        return requested
    if _C is None:
        return REF
    supported = [p for p in _C.capabilities()["supported"] if p not in disabled]
    if requested == "auto":
        order = ["avx512", "avx2", "neon", "generic"]
        return next((p for p in order if p in supported), REF)
    if requested not in supported:
        raise ConfigError(
            f"EDGELLM_KERNELS={requested} is not available here; "
            f"available: {', '.join([*NUMPY_PATHS, *supported, 'auto'])}"
        )
    return requested


def use(path: str = "auto") -> str:
    """Select a kernel path ('auto', 'ref', 'ref-f32', 'generic', 'avx2', 'avx512', 'neon'); returns it."""
    disabled = {p.strip() for p in os.environ.get("EDGELLM_DISABLE_ISA", "").split(",") if p.strip()}
    chosen = _choose(path, disabled)
    if chosen not in NUMPY_PATHS:
        _C.set_isa(chosen)
    _state["path"] = chosen
    return chosen


def active_path() -> str:
    return _thread_path.get() or _state["path"]


@contextmanager
def path_in_this_thread(path: str):
    """Within the block, this thread's kernel calls use `path` (a model's own) instead of the process default."""
    token = _thread_path.set(path)
    try:
        yield
    finally:
        _thread_path.reset(token)


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def usable_threads(n_threads: int | None) -> int:
    """n_threads (default: every core), capped at the cores with a warning: more workers than cores wait on each
    other at every step of the pool."""
    n = max(1, int(n_threads or cores()))
    if n > cores():
        warnings.warn(f"{n} threads requested but this machine gives {cores()} cores; using {cores()}",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
        n = cores()
    return n


def set_threads(n_threads: int | None) -> None:
    """The default thread count of kernels called without a model's own (not capped: tests oversubscribe on
    purpose; user-facing entry points go through usable_threads)."""
    _state["threads"] = max(1, int(n_threads or cores()))


def emulates_activation_rounding() -> bool:
    """Whether the NumPy path rounds activations to 8 bits as the C kernels do."""
    return active_path() == REF


def threads() -> int:
    return _state["threads"]


def pool_slices(n_threads: int) -> int:
    """How many slices the C thread pool cuts a job into: the engine sizes per-slice buffers by it."""
    return n_threads * _C.SLICES_PER_THREAD if _C is not None and n_threads > 1 else 1


def capabilities() -> dict:
    """What the build and the CPU offer, and which path runs."""
    if _C is None:
        return {"extension": False, "compiled": [], "supported": [], "selected": REF, "threads": _state["threads"]}
    caps = _C.capabilities()
    return {"extension": True, "compiled": caps["compiled"], "supported": caps["supported"],
            "selected": _state["path"], "threads": _state["threads"]}  # fmt: skip


def has_matmul(type_id: int) -> bool:
    if active_path() in NUMPY_PATHS:
        return False
    try:
        return _C.type_info(int(type_id))["has_dot"]
    except ValueError:
        return False


def matmul(x: np.ndarray, raw: np.ndarray, type_id: int, n_out: int, n_in: int) -> np.ndarray:
    """x (n_tokens, n_in) float32 @ W.T for packed W (n_out rows) -> (n_tokens, n_out) float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], n_out), dtype=np.float32)
    _C.matmul(int(type_id), raw, n_out, n_in, x, x.shape[0], out, _state["threads"])
    return out


def matmul_packed(x: np.ndarray, raw: np.ndarray, type_id: int, n_out: int, n_in: int) -> np.ndarray:
    """matmul with W interleaved 16 rows at a time (the layout the engine packs models into where the path has
    kernels for it); ValueError where it has none."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], n_out), dtype=np.float32)
    _C.matmul(int(type_id), raw, n_out, n_in, x, x.shape[0], out, _state["threads"], True)
    return out


use(os.environ.get("EDGELLM_KERNELS", "auto"))
set_threads(None)


def read_bandwidth_gbps(n_bytes: int = 1 << 30, threads: int | None = None, repetitions: int = 5) -> float:
    """Measured memory read bandwidth (GB/s) over a buffer much larger than the caches."""
    if _C is None:
        raise ConfigError("measuring bandwidth needs the C kernels (reinstall edgellm with a C compiler)")
    buf = np.ones(n_bytes // 8, dtype=np.uint64)
    return _C.read_bandwidth(buf, threads or _state["threads"], repetitions)
