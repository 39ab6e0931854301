"""Device profiles: one YAML file per device (planner/devices/), or a path to one (e.g. from `calibrate`).

Every figure is `{value, source, tag, note}`: the survey's source key and evidence tag (V vendor, M measured
by a third party, S secondary, D derived, E estimate; see ../shared/data/edge-devices.md) stay attached, and
a figure nobody published is `null`, never a guess. A hand-written file may give a bare number instead.
A profile written by `edgellm calibrate` also carries `calibration`: what edgellm's own kernels reached here.
"""

from __future__ import annotations

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

    def __str__(self) -> str:
        if self.value is None:
            return "n/p"
        src = ", ".join(x for x in (self.source, self.tag) if x)
        return f"{self.value:g}" + (f" ({src})" if src else "")


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
        chips=dict(doc.get("chips") or {}),
        interconnect=dict(doc.get("interconnect") or {}),
        sources=dict(doc.get("sources") or {}),
        calibration=doc.get("calibration"),
        energy=dict(doc.get("energy") or {}),
    )


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
    if value < 0:
        raise ConfigError(f"{path}: field '{name}' cannot be negative ({value})")
    src = raw if isinstance(raw, dict) else {}
    return Figure(value, src.get("source"), src.get("tag"), src.get("note"))
