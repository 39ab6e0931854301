"""The parent side: generates inputs from the seed, hands them to a capped child, judges and records failures.

The parent generates every input, so the sequence depends on the seed alone, and a child that dies on an input
cannot lose it. A failure is saved under the corpus directory as `<target>/<sha1>` (a few inputs per distinct
failure), reported, and the run goes on in a fresh child. Failures of time or memory are re-run once in a fresh
child and count only if they happen again (two busy cores can stall a fast input; a long-lived child's address
space can drift); the others count at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .worker import STOP

TIME_CAP = 1.0  # seconds per input
MEMORY_HEADROOM = 256 << 20  # bytes an input may map beyond the warmed-up child's baseline
GRACE = 2.0  # seconds past the time cap before a silent child is killed (a hang inside C)
RESTART_EVERY = 5000  # inputs per child: bounds the drift of a long-lived address space
SAVED_PER_FAILURE = 3
_RECHECKED = ("timeout", "slow", "hang", "memory")


@dataclass
class Summary:
    target: str
    seed: int | None
    executions: int = 0
    seconds: float = 0.0
    failures: int = 0
    flaky: int = 0  # time or memory failures that did not happen again in a fresh child
    refused: int = 0  # inputs handled with one of edgellm's errors (the rest ran through)
    restarts: int = 0
    by_failure: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # failure -> detail of its first input
    saved: list[str] = field(default_factory=list)
    baseline_mb: float = 0.0
    memory_cap_mb: float = 0.0
    time_cap_s: float = TIME_CAP

    @property
    def exec_per_sec(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["exec_per_sec"] = round(self.exec_per_sec, 1)
        d["seconds"] = round(self.seconds, 1)
        return d


class ChildError(RuntimeError):
    pass


class Child:
    """One worker process for one target."""

    def __init__(self, target: str, time_cap: float, headroom: int):
        self.target, self.time_cap, self.headroom = target, time_cap, headroom
        self.stderr = tempfile.TemporaryFile()
        env = dict(
            os.environ,
            RAYON_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            PYTHONFAULTHANDLER="1",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgellm.fuzz.worker", target, str(time_cap), str(headroom)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self._buf = b""
        try:
            ready = self._answer(120.0)
        except EOFError:
            ready = None
        if ready is None or not ready.get("ready"):
            raise ChildError(f"fuzz worker for '{target}' did not start: {self.stderr_tail()}")
        self.baseline, self.cap = ready["baseline"], ready["cap"]

    def _answer(self, timeout: float) -> dict | None:
        """The next JSON line; None when the child stayed silent past `timeout`, EOFError when it ended."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, data: bytes) -> dict:
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # judged below by the answer that never comes
        try:
            result = self._answer(self.time_cap + GRACE)
        except EOFError:  # the child ended: wait for its status
            result = None
            try:
                self.proc.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                pass
        if result is not None:
            return result
        if self.proc.poll() is None:
            self.kill()
            return {"ok": False, "kind": "hang", "detail": f"no answer within {self.time_cap + GRACE:g} s", "where": ""}
        code = self.proc.returncode
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return {"ok": False, "kind": "signal", "detail": name, "where": self.crash_site()}
        return {"ok": False, "kind": "exit", "detail": f"exit status {code}", "where": self.crash_site()}

    def stderr_tail(self, n: int = 2000) -> str:
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - n))
        return self.stderr.read().decode("utf-8", "replace")

    def crash_site(self) -> str:
        """The innermost edgellm frame faulthandler printed (faulthandler lists the innermost first)."""
        for line in self.stderr_tail(8000).splitlines():
            if 'File "' in line and "edgellm" in line and "/fuzz/" not in line:
                path = line.split('"')[1]
                return path[path.rfind("edgellm/") :] + line.split('"', 2)[2].replace(", line ", ":")
        return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(struct.pack("<I", STOP))
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.kill()
        self.stderr.close()


def signature(result: dict) -> str:
    return " | ".join(x for x in (result["kind"], result.get("detail", "").split(":")[0], result.get("where", "")) if x)


def corpus_files(corpus: Path | None, target: str) -> list[Path]:
    folder = corpus / target if corpus else None
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else []


def run_inputs(
    target: str,
    inputs,
    summary: Summary,
    *,
    corpus: Path | None,
    time_cap: float = TIME_CAP,
    headroom: int = MEMORY_HEADROOM,
    restart_every: int = RESTART_EVERY,
    progress=None,
) -> Summary:
    """Run every input of the iterable `inputs` through capped children; fill and return `summary`."""
    saved_per: dict[str, int] = {}
    child = None
    t0 = time.monotonic()
    last_report = t0

    def fresh() -> Child:
        nonlocal child
        if child is not None:
            child.close()
            summary.restarts += 1
        child = Child(target, time_cap, headroom)
        summary.baseline_mb = round(child.baseline / 2**20, 1)
        summary.memory_cap_mb = round(child.cap / 2**20, 1)
        return child

    try:
        fresh()
        for data in inputs:
            if summary.executions and summary.executions % restart_every == 0:
                fresh()
            result = child.run(data)
            summary.executions += 1
            summary.refused += bool(result.get("refused"))
            if not result["ok"]:
                fresh()
                if result["kind"] in _RECHECKED:
                    again = child.run(data)
                    if again["ok"]:
                        summary.flaky += 1
                        result = None
                    else:
                        result = again
                        fresh()
            if result is not None and not result["ok"]:
                summary.failures += 1
                sig = signature(result)
                summary.by_failure[sig] = summary.by_failure.get(sig, 0) + 1
                summary.examples.setdefault(sig, result.get("detail", ""))
                name = hashlib.sha1(data).hexdigest()
                if corpus is not None and saved_per.get(sig, 0) < SAVED_PER_FAILURE:
                    path = corpus / target / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                    saved_per[sig] = saved_per.get(sig, 0) + 1
                    summary.saved.append(f"{target}/{name}")
                if progress:
                    progress(
                        f"[{target}] FAILURE #{summary.failures} at execution {summary.executions}: {sig}: "
                        f"{result.get('detail', '')} (input {name})"
                    )
            now = time.monotonic()
            if progress and now - last_report >= 10:
                last_report = now
                summary.seconds = now - t0
                progress(
                    f"[{target}] {summary.executions} executions, {summary.exec_per_sec:.0f}/s, "
                    f"{summary.failures} failures, {summary.flaky} flaky"
                )
    finally:
        if child is not None:
            child.close()
        summary.seconds = time.monotonic() - t0
    return summary


def fuzz(target: str, runs: int, seed: int, *, corpus: Path | None = None, progress=None, **caps) -> Summary:
    """`runs` mutated inputs of `target`, generated deterministically from `seed` (plus the corpus files)."""
    from .targets import get_target

    t = get_target(target)
    rng = random.Random(f"{target}/{seed}")
    extra = [p.read_bytes() for p in corpus_files(corpus, target)]
    generator = t.generator(extra)

    def inputs():
        for _ in range(runs):
            yield generator(rng)

    return run_inputs(target, inputs(), Summary(target, seed), corpus=corpus, progress=progress, **caps)


def replay(target: str, files: list[Path], *, progress=None, **caps) -> Summary:
    """Every file of `files` as it is, under the same caps; nothing is saved."""
    inputs = (p.read_bytes() for p in files)
    return run_inputs(target, inputs, Summary(target, None), corpus=None, progress=progress, **caps)
