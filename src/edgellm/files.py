"""Output files and child processes that an interrupted or killed run does not leave behind.

An output appears whole or not at all (written to a temporary file beside it, then renamed), with the mode the
user's umask gives a new file. Temporary files carry their writer's process id, so any later write into the same
directory removes those whose writer is gone (killed with SIGKILL, or the machine lost power) and no one else's.
Child processes are ended with the run: on an exception (Ctrl-C, SIGTERM) by us, on SIGKILL by the kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

TMP_PREFIX = ".edgellm-tmp-"
_WRITER = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-")


def new_file_mode() -> int:
    """The mode a new file gets from the user's umask (0644 under the usual 022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # no /proc: read the umask by setting it, then put it back
    os.umask(umask)
    return 0o666 & ~umask


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary files for `name`."""
    return f"{TMP_PREFIX}{os.getpid()}-{name}."


def remove_stale_temps(directory: Path) -> None:
    """Remove the temporary files and directories in `directory` whose writing process is gone (an older
    edgellm's, without a process id, too)."""
    for path in Path(directory).glob(TMP_PREFIX + "*"):
        writer = _WRITER.match(path.name)
        if writer and _alive(int(writer[1])):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a number no process has: leave it)
    return True


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False, text: bool = False):
    """Open a temporary file beside `path` for writing; on success it is synced and renamed to `path` with the
    user's file mode, on any exception (Ctrl-C included) it is removed. An existing `path` is only replaced with
    `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every cleanup on the way out runs (as for Ctrl-C)."""


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises Terminated instead of ending the process on the spot."""
    def terminate(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_child(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run whose child ends with us: killed on any exception here (subprocess.run does that), and on
    Linux sent SIGKILL by the kernel if we die without a word."""
    if sys.platform.startswith("linux"):
        kwargs.setdefault("preexec_fn", _die_with_parent())
    return subprocess.run(command, **kwargs)


def _die_with_parent():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def in_child() -> None:  # runs between fork and exec: nothing that allocates or takes locks
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return in_child
