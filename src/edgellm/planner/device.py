"""Device profiles: one YAML file per device (planner/devices/), or a path to one (e.g. from `calibrate`).

Every figure is `{value, source, tag, note}`: the survey's source key and evidence tag (V vendor, M measured
by a third party, S secondary, D derived, E estimate; see ../shared/data/edge-devices.md) stay attached, and
a figure nobody published is `null`, never a guess. A hand-written file may give a bare number instead.
A profile written by `edgellm calibrate` also carries `calibration`: what edgellm's own kernels reached here.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

REQUIRED = ("name", "class", "memory.bandwidth_gbps", "memory.capacity_gb", "units")


@dataclass(frozen=True)
class Figure:
    value: float | None
    source: str | None = None
    tag: str | None = None
    note: str | None = None

    @property
    def known(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class Unit:
    """A compute unit (cpu, gpu, npu) and its published peaks."""

    name: str
    int8_tops: Figure
    fp16_tflops: Figure
    note: str | None = None


@dataclass(frozen=True)
class Device:
    name: str
    title: str
    kind: str  # phone, laptop, car, board, host
    cores: Figure
    memory_type: str | None
    bandwidth_gbps: Figure
    capacity_gb: Figure
    storage_read_gbps: Figure
    units: list[Unit]
    power_w: Figure
    path: Path
    chips: dict[str, Any] = field(default_factory=dict)
    interconnect: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # from `edgellm calibrate`
    energy: dict[str, float] = field(default_factory=dict)  # overrides of estimate.ENERGY

    def unit(self, name: str) -> Unit | None:
        return next((u for u in self.units if u.name == name), None)


def devices_dir() -> Path:
    return Path(str(resources.files("edgellm.planner") / "devices"))


def device_names() -> list[str]:
    return sorted(p.stem for p in devices_dir().glob("*.yaml"))


def list_devices() -> list[Device]:
    return [load_device(n) for n in device_names()]


def load_device(ref: str | Path) -> Device:
    """A device by name (planner/devices/NAME.yaml) or by the path of a profile YAML."""
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        path = devices_dir() / f"{ref}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown device '{ref}'; one of: {', '.join(device_names())} (or a profile .yaml path)")
    if not path.is_file():
        raise ConfigError(f"{path}: no such device profile")
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a device profile is a mapping of fields, got {type(doc).__name__}")
    return parse_device(doc, path)


def parse_device(doc: dict, path: Path) -> Device:
    for dotted in REQUIRED:
        _get(doc, dotted, path, required=True)
    units = doc["units"]
    if not isinstance(units, list) or not all(isinstance(u, dict) and "name" in u for u in units):
        raise ConfigError(f"{path}: field 'units' must be a list of mappings with a 'name'")
    return Device(
        name=str(doc["name"]),
        title=str(doc.get("title") or doc["name"]),
        kind=str(doc["class"]),
        cores=_figure(_get(doc, "cpu.cores", path), "cpu.cores", path),
        memory_type=_get(doc, "memory.type", path),
        bandwidth_gbps=_figure(_get(doc, "memory.bandwidth_gbps", path), "memory.bandwidth_gbps", path),
        capacity_gb=_figure(_get(doc, "memory.capacity_gb", path), "memory.capacity_gb", path),
        storage_read_gbps=_figure(_get(doc, "storage.read_gbps", path), "storage.read_gbps", path),
        units=[Unit(str(u["name"]), _figure(u.get("int8_tops"), f"units.{u['name']}.int8_tops", path),
                    _figure(u.get("fp16_tflops"), f"units.{u['name']}.fp16_tflops", path), u.get("note"))
               for u in units],  # fmt: skip
        power_w=_figure(doc.get("power_w"), "power_w", path),
        path=path,
        chips=_mapping(doc.get("chips"), "chips", path),
        interconnect=_mapping(doc.get("interconnect"), "interconnect", path),
        sources=_mapping(doc.get("sources"), "sources", path),
        calibration=_calibration(doc.get("calibration"), path),
        energy=_energy(doc.get("energy"), path),
    )


def _mapping(raw, name: str, path: Path) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: field '{name}' must be a mapping, got {raw!r}")
    return raw


def _number(raw, name: str, path: Path, positive: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ConfigError(f"{path}: field '{name}' must be a finite number, got {raw!r}")
    if raw < 0 or (positive and raw == 0):
        raise ConfigError(f"{path}: field '{name}' must be {'positive' if positive else 'non-negative'}, got {raw}")
    return float(raw)


def _energy(raw, path: Path) -> dict[str, float]:
    from .estimate import ENERGY

    out = {}
    for k, v in _mapping(raw, "energy", path).items():
        if k not in ENERGY:
            raise ConfigError(f"{path}: unknown field 'energy.{k}'; known: {', '.join(ENERGY)}")
        out[k] = _number(v, f"energy.{k}", path)
    return out


def _calibration(raw, path: Path) -> dict | None:
    """A calibrate-written block: every per-thread entry complete and numeric."""
    if raw is None:
        return None
    from .estimate import ENGINE_KEYS

    cal = _mapping(raw, "calibration", path)
    threads = _mapping(cal.get("threads"), "calibration.threads", path)
    if not threads:
        raise ConfigError(f"{path}: missing field 'calibration.threads' (re-run edgellm calibrate)")
    clean = {}
    for t, entry in threads.items():
        try:
            n = int(t)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: 'calibration.threads' keys are thread counts, got {t!r}") from None
        where = f"calibration.threads.{n}"
        entry = _mapping(entry, where, path)
        for k in ("read_gbps", "matvec_gbps", "matmul_gflops", *ENGINE_KEYS):
            if k not in entry:
                raise ConfigError(f"{path}: missing field '{where}.{k}' (re-run edgellm calibrate)")
        rates = {}
        for k in ("matvec_gbps", "matmul_gflops"):
            rates[k] = {f: _number(v, f"{where}.{k}.{f}", path, positive=True) for f, v in _mapping(entry[k], f"{where}.{k}", path).items()}
        clean[n] = {**entry, **rates, "read_gbps": _number(entry["read_gbps"], f"{where}.read_gbps", path, positive=True),
                    **{k: _number(entry[k], f"{where}.{k}", path) for k in ENGINE_KEYS}}  # fmt: skip
    storage = cal.get("storage_read_gbps")
    return {**cal, "threads": clean,
            "storage_read_gbps": None if storage is None else _number(storage, "calibration.storage_read_gbps", path, positive=True)}  # fmt: skip


def _get(doc: dict, dotted: str, path: Path, required: bool = False):
    cur: Any = doc
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if required:
                raise ConfigError(f"{path}: missing field '{dotted}' (write null if it is not published)")
            return None
        cur = cur[part]
    return cur


def _figure(raw, name: str, path: Path) -> Figure:
    if raw is None:
        return Figure(None)
    if isinstance(raw, bool):
        raise ConfigError(f"{path}: field '{name}' must be a number, got {raw!r}")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, dict):
        if "value" not in raw:
            raise ConfigError(f"{path}: field '{name}' has no 'value'")
        if raw["value"] is None:
            return Figure(None, raw.get("source"), raw.get("tag"), raw.get("note"))
        try:
            value = float(raw["value"])
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: field '{name}.value' must be a number, got {raw['value']!r}") from None
    else:
        raise ConfigError(f"{path}: field '{name}' must be a number or {{value, source, tag}}, got {raw!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{path}: field '{name}' must be a finite number, got {value}")
    if value <= 0:
        raise ConfigError(f"{path}: field '{name}' must be positive, got {value} (write null if it is not published)")
    src = raw if isinstance(raw, dict) else {}
    return Figure(value, src.get("source"), src.get("tag"), src.get("note"))
