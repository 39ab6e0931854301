"""Where a model's read-less settings come from, for every command: `--sparsity` (a model-wide target whose
thresholds `edgellm sparsify` calibrated, or a thresholds file) and `--head` (a candidate count, with the cheap
head `edgellm sparsify --head` made, or a head file). Calibrations live next to the model cache, one file per
model and setting, so a target calibrated once serves run, chat, bench, perplexity and kld."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..hub import home


def _model_key(model_path: Path) -> str:
    """Names the calibration after the model file (name and size: a re-downloaded file keeps its key)."""
    return f"{model_path.stem}-{model_path.stat().st_size}"


def thresholds_path(model_path: Path, target: float) -> Path:
    return home() / "sparsity" / f"{_model_key(model_path)}-s{round(target * 100):02d}.gguf"


def head_path(model_path: Path) -> Path:
    return home() / "sparsity" / f"{_model_key(model_path)}-head.gguf"


def parse_target(spec: str) -> float | None:
    """'0.4' or '40%' -> 0.4; None when spec is not a number (then it is a file)."""
    text = spec.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"--sparsity {spec}: a model-wide sparsity is a fraction in [0, 1) (e.g. 0.4 or 40%)")
    return value


def load_thresholds(model_path: Path, spec: str | None, n_layers: int):
    """The Thresholds for `--sparsity spec`, or None for dense (no spec, or 0)."""
    from ..model.sparsity import Thresholds

    if spec is None:
        return None
    target = parse_target(spec)
    if target == 0.0:
        return None
    path = Path(spec) if target is None else thresholds_path(model_path, target)
    if not path.exists():
        if target is None:
            raise ConfigError(f"--sparsity {spec}: no such file, and not a fraction such as 0.4")
        raise ConfigError(f"no calibrated thresholds for {round(target * 100)} % sparsity on {model_path.name}; make them "
                          f"once with: edgellm sparsify -m {model_path} --sparsity {target:g} -f CALIBRATION.txt")  # fmt: skip
    return Thresholds.load(path, n_layers)


def load_head(model_path: Path, spec: str | None, n_vocab: int, n_embd: int):
    """The CandidateHead for `--head spec` (a candidate count, or a head file), or None for the full head."""
    from .head import CandidateHead

    if spec is None:
        return None
    count = int(spec) if spec.strip().isdigit() else None
    path = head_path(model_path) if count is not None else Path(spec)
    if count is not None and count < 1:
        raise ConfigError("--head: the number of candidates must be >= 1")
    if not path.exists():
        if count is None:
            raise ConfigError(f"--head {spec}: no such file, and not a candidate count such as 64")
        raise ConfigError(f"no cheap head for {model_path.name}; make it once with: "
                          f"edgellm sparsify -m {model_path} --head {count} -f CALIBRATION.txt")  # fmt: skip
    head = CandidateHead.load(path, n_vocab, n_embd)
    if count is not None:
        head.n_candidates = count
    return head


def apply(model, model_path: Path, sparsity: str | None, head: str | None) -> None:
    """Set the model's thresholds and head from the two command-line options."""
    c = model.config
    model.set_sparsity(load_thresholds(model_path, sparsity, c.n_layers))
    model.set_head(load_head(model_path, head, c.n_vocab, c.n_embd))
