"""NEON kernels cross-compiled for AArch64 and checked against the generic kernels under qemu user-mode emulation.

Builds tests/kernels/neon_harness.c with the kernel library twice, for baseline armv8-a (vmull_s8/vpadalq_s16
path) and armv8.2-a+dotprod (vdotq_s32 path), and runs each under qemu-aarch64. Needs `aarch64-linux-gnu-gcc`
and `qemu-aarch64` or `qemu-aarch64-static` (Debian: gcc-aarch64-linux-gnu, qemu-user-static); skipped without them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "src" / "edgellm" / "kernels" / "c"
HARNESS = Path(__file__).resolve().parent / "neon_harness.c"
CC = "aarch64-linux-gnu-gcc"


def _qemu() -> str | None:
    return shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


def _library_sources() -> list[str]:
    # everything except the Python binding: generic/*.c, arch/*/*.c, fp16.c, dispatch.c, threadpool.c, matmul.c
    return sorted(str(p) for p in KERNELS.rglob("*.c") if p.name != "binding.c")


@pytest.fixture(scope="module")
def toolchain():
    missing = [name for name, found in ((CC, shutil.which(CC)), ("qemu-aarch64[-static]", _qemu())) if not found]
    if missing:
        pytest.skip(f"cross-check needs {' and '.join(missing)} on PATH (apt-get install gcc-aarch64-linux-gnu qemu-user-static)")
    return shutil.which(CC), _qemu()


@pytest.mark.parametrize("march", ["armv8-a", "armv8.2-a+dotprod"])
def test_neon_matches_generic_under_qemu(toolchain, tmp_path, march):
    cc, qemu = toolchain
    exe = tmp_path / f"neon_harness_{march.replace('+', '_')}"
    build = subprocess.run(
        [cc, f"-march={march}", "-O2", "-pthread", "-static", "-std=c11", "-Wall", "-Wno-unused-function",
         f"-I{KERNELS}", str(HARNESS), *_library_sources(), "-lm", "-o", str(exe)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, f"cross-compile failed for -march={march}:\n{build.stderr}"
    run = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=300)
    out = run.stdout.strip()
    assert run.returncode == 0, f"harness failed under {Path(qemu).name} (-march={march}, rc {run.returncode}):\n{out}\n{run.stderr}"
    summary = re.fullmatch(r"(\d+) passed, (\d+) failed", out.splitlines()[-1])
    assert summary and int(summary[1]) > 0 and int(summary[2]) == 0, out
    expected_path = "dotprod build" if "dotprod" in march else "baseline build"
    assert expected_path in out, out
