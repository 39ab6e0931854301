"""Clean interrupts: Ctrl-C and SIGTERM stop a command promptly and leave no temporary file, no partial output
and no child process; a run killed outright (SIGKILL) leaves a temporary file that the next write into that
directory removes; outputs get the mode the user's umask gives. Each test runs the real command line in a child
process and signals it, as a user or a service manager would."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROMPT_EXIT_S = 5  # "promptly": a signal is answered within this (the commands check between tokens or tensors)

# The command line with the GGUF writer slowed to a tensor every 0.2 s, so that a signal lands mid-write.
SLOW_WRITER = """
import sys, time
from edgellm.formats import gguf
_tensor_bytes = gguf._tensor_bytes
def slow(t):
    time.sleep(0.2)
    return _tensor_bytes(t)
gguf._tensor_bytes = slow
from edgellm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
CLI = "import sys; from edgellm.cli.main import main; sys.exit(main(sys.argv[1:]))"


def start(code: str, *argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the command to get going")
        time.sleep(0.02)


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=PROMPT_EXIT_S)
    return proc.returncode, err


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_quantize_removes_its_temporary_file_and_writes_no_output(tiny_llama, tmp_path, sig, code,
                                                                                   said):  # fmt: skip
    out = tmp_path / "out.gguf"
    proc = start(SLOW_WRITER, "quantize", tiny_llama, out, "--type", "Q8_0")
    wait_for(lambda: any(p.name.startswith(f".edgellm-tmp-{proc.pid}-") for p in tmp_path.iterdir()))
    proc.send_signal(sig)
    rc, err = finish(proc)
    assert (rc, err.strip().splitlines()[-1]) == (code, f"edgellm: {said}")
    assert list(tmp_path.iterdir()) == []  # neither the temporary file nor a partial output


def test_a_temporary_file_left_by_a_killed_quantize_is_removed_by_the_next_write(tiny_llama, tmp_path):
    proc = start(SLOW_WRITER, "quantize", tiny_llama, tmp_path / "a.gguf", "--type", "Q8_0")
    wait_for(lambda: any(p.stat().st_size > 0 for p in tmp_path.iterdir()))
    proc.kill()  # SIGKILL: nothing of ours runs
    proc.wait()
    (left,) = temps(tmp_path)
    assert left.startswith(f".edgellm-tmp-{proc.pid}-a.gguf.") and not (tmp_path / "a.gguf").exists()
    busy = start(SLOW_WRITER, "quantize", tiny_llama, tmp_path / "b.gguf", "--type", "Q8_0")  # a live writer
    wait_for(lambda: any(p.name.startswith(f".edgellm-tmp-{busy.pid}-") for p in tmp_path.iterdir()))
    subprocess.run([sys.executable, "-c", CLI, "quantize", tiny_llama, tmp_path / "c.gguf", "--type", "Q8_0"],
                   check=True, capture_output=True)  # fmt: skip
    names = temps(tmp_path)
    assert left not in names  # the dead writer's file is gone ...
    assert any(n.startswith(f".edgellm-tmp-{busy.pid}-b.gguf.") for n in names)  # ... a live one's is not
    assert finish(busy)[0] == 0 and temps(tmp_path) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_mode_the_umask_gives(tiny_llama, tmp_path, umask, mode):
    out = tmp_path / "out.gguf"
    subprocess.run([sys.executable, "-c", CLI, "quantize", tiny_llama, out, "--type", "Q8_0"], check=True,
                   capture_output=True, umask=umask)  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == mode


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory) -> Path:
    """A tiny model that greedily generates tens of thousands of tokens without an end of generation."""
    from fixtures.tiny import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("long") / "long.gguf", meta_extra={"llama.context_length": 1 << 16})


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("command", ["run", "perplexity", "chat"])
def test_a_signal_stops_generation_and_evaluation_promptly(long_context_model, tmp_path, command, sig, code):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20000)
    model, generate = long_context_model, ["-n", "30000", "-c", "30000", "--temp", "0"]
    argv = {"run": ["run", "-m", model, "-p", "a", *generate],
            "perplexity": ["perplexity", "-m", model, "-f", text, "-c", "16"],
            "chat": ["chat", "-m", model, *generate]}[command]  # fmt: skip
    proc = start(CLI, *argv, stdin=subprocess.PIPE)
    if command == "chat":
        proc.stdin.write("hello\n")
        proc.stdin.flush()
    time.sleep(2.0)  # loaded and busy (each command runs for tens of seconds)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    rc, err = finish(proc)
    assert rc == code, err


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] == "Z"  # a zombie has ended; only its exit status is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_pull_ends_its_pip_child_when_it_is_stopped_or_killed(tmp_path, sig):
    """pip downloads from an index that accepts connections and never answers, so it is still running when the
    pull is signalled; its process must end with the pull (it kept downloading after a killed pull)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    env = dict(os.environ, EDGELLM_HOME=str(tmp_path), PIP_INDEX_URL=f"http://127.0.0.1:{silent.getsockname()[1]}/",
               PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="120", PIP_NO_CACHE_DIR="1")  # fmt: skip
    try:
        proc = start(CLI, "pull", "smollm2-135m", env=env)
        pips = []
        wait_for(lambda: pips.extend(children(proc.pid)) or pips)
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(timeout=PROMPT_EXIT_S)
        wait_for(lambda: all(gone(p) for p in pips), timeout=PROMPT_EXIT_S)
    finally:
        silent.close()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert temps(tmp_path / "models") == []
