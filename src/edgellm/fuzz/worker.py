"""The child process that runs one target on inputs sent by the parent, each under a time cap, all under a memory cap.

Protocol (binary stdin, line-oriented stdout): the child answers one JSON "ready" line with its measured baseline
and cap, then per input (u32 length + bytes) one JSON line with the outcome; a length of 0xFFFFFFFF ends it.
A crash inside C never answers: the parent sees the signal, or kills a child that stops answering.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import signal
import struct
import sys
import time
import traceback

from ..errors import EdgeLLMError

STOP = 0xFFFFFFFF


class InputTimeout(BaseException):
    """Raised by the interval timer inside an input that ran past the time cap (a BaseException, so that the code
    under test cannot swallow it with `except Exception`)."""


def vm_size() -> int:
    """Bytes of address space this process maps now (what RLIMIT_AS counts)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def where(exc: BaseException) -> str:
    """The innermost frame of `exc` inside edgellm (else the innermost one), as path:line function."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "edgellm" in f.filename.replace("\\", "/").split("/") and "/fuzz/" not in f.filename]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    path = frame.filename.replace("\\", "/")
    path = path[path.rfind("edgellm/") :] if "edgellm/" in path else os.path.basename(path)
    return f"{path}:{frame.lineno} {frame.name}"


def _memory_error_inside(exc: BaseException) -> bool:
    """Whether a MemoryError was raised on the way to `exc` (edgellm may turn one into its own error)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def outcome(exc: BaseException | None, seconds: float, time_cap: float) -> dict:
    """One input's result: ok, or the kind of failure with what identifies it."""
    if exc is None or (isinstance(exc, EdgeLLMError) and not _memory_error_inside(exc)):
        if seconds > time_cap:
            return {"ok": False, "kind": "slow", "detail": f"took {seconds:.2f} s", "where": "", "seconds": seconds}
        return {"ok": True, "seconds": seconds, "refused": exc is not None}
    if isinstance(exc, InputTimeout):
        kind = "timeout"
    elif _memory_error_inside(exc):
        kind = "memory"
    else:
        kind = "exception"
    detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return {"ok": False, "kind": kind, "detail": detail, "where": where(exc), "seconds": seconds}


class Runner:
    """Runs one input at a time with an interval timer armed for the time cap."""

    def __init__(self, run, time_cap: float):
        self.run, self.time_cap, self.armed = run, time_cap, False
        signal.signal(signal.SIGALRM, self._expire)

    def _expire(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise InputTimeout(f"over {self.time_cap:g} s")

    def __call__(self, data: bytes) -> dict:
        exc = None
        t0 = time.perf_counter()
        try:
            try:
                self.armed = True
                signal.setitimer(signal.ITIMER_REAL, self.time_cap)
                self.run(data)
            finally:
                self.armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as e:  # noqa: BLE001 (judged by `outcome`)
            if isinstance(e, (SystemExit, KeyboardInterrupt)) and not isinstance(e, InputTimeout):
                exc = RuntimeError(f"the target raised {type(e).__name__}")
            else:
                exc = e
        seconds = time.perf_counter() - t0
        result = outcome(exc, seconds, self.time_cap)
        del exc
        return result


def _read_exact(stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def main(argv: list[str]) -> int:
    from .targets import get_target

    target_name, time_cap, headroom = argv[0], float(argv[1]), int(argv[2])
    faulthandler.enable()  # a segfault prints the Python stack to stderr, which the parent keeps
    target = get_target(target_name)
    target.setup()
    runner = Runner(target.run, time_cap)
    for seed in target.seeds():  # warm up: caches, thread pools and lazy imports exist before the baseline
        runner(seed)
    baseline = vm_size()
    cap = baseline + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out, inp = sys.stdout, sys.stdin.buffer
    out.write(json.dumps({"ready": True, "baseline": baseline, "cap": cap}) + "\n")
    out.flush()
    while True:
        try:
            (size,) = struct.unpack("<I", _read_exact(inp, 4))
            if size == STOP:
                return 0
            data = _read_exact(inp, size)
        except EOFError:
            return 0
        out.write(json.dumps(runner(data)) + "\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
