"""Hostile metadata: every mutation of an architecture's keys (0, negative, NaN, inf, wrong type, huge, missing,
inconsistent with the tensors) gives a one-line error naming the problem and exit 1 from `run`, `show`,
`tokenize` and `quantize`: no traceback, no signal, no allocation over 256 MB.

All commands for one architecture run in one child process whose address space is capped (`ulimit -v`) at
what it maps after importing edgellm plus 256 MB, so a crash in C shows as a signal and a huge allocation as a
MemoryError, both failures here.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
import textwrap

from dataclasses import replace

import pytest

from edgellm.formats.gguf import GGUFFile, TensorData, write_gguf
from fixtures.tiny import build_tiny_gguf

MISSING = object()
HUGE = 2**32 - 1


def mutations(arch: str) -> list[tuple[str, object]]:
    """(key, value) pairs that must each be refused; value MISSING deletes the key."""
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    ffn = "expert_feed_forward_length" if arch == "qwen3moe" else "feed_forward_length"
    counts = ["block_count", "embedding_length", ffn, "attention.head_count"]
    out: list[tuple[str, object]] = []
    for name in counts:
        out += [(k(name), v) for v in (0, -1, HUGE, 2**40, 2.0, "two", math.nan, MISSING)]
    out += [(k("attention.head_count_kv"), v) for v in (0, -2, 3, HUGE, math.inf)]
    out += [(k("attention.layer_norm_rms_epsilon"), v) for v in (0.0, -1e-6, math.nan, math.inf, "eps", MISSING)]
    out += [(k("rope.freq_base"), v) for v in (0.0, -10000.0, math.nan, math.inf, "base")]
    out += [(k("rope.dimension_count"), v) for v in (0, -4, 3, 10**6, 7.5)]
    out += [(k("context_length"), v) for v in (0, -1, 2**40, "long")]
    out += [(k("block_count"), v) for v in (1, 3)]  # fewer or more blocks than the file holds
    out += [("general.architecture", v) for v in ("mamba", 7, MISSING)]
    if arch == "qwen3moe":
        out += [(k("expert_count"), v) for v in (0, -1, 1, HUGE, 4.0, "many", MISSING)]
        out += [(k("expert_used_count"), v) for v in (0, -1, 5, HUGE, math.nan, MISSING)]
    if arch == "gemma3":
        out += [(k("attention.key_length"), v) for v in (0, 31, HUGE)]
        out += [(k("attention.sliding_window"), v) for v in (-1, math.nan, 2**40)]
        out += [(k("final_logit_softcapping"), v) for v in (-30.0, math.nan, math.inf)]
    return out


def _mutate(src, dst, key, value):
    g = GGUFFile(src)
    meta, types = dict(g.metadata), dict(g.metadata_types)
    types.pop(key, None)
    if value is MISSING:
        meta.pop(key, None)
    else:
        meta[key] = value
    tensors = [TensorData(t.name, t.type, t.shape, g.raw(t.name).reshape(-1)) for t in g.tensors.values()]
    write_gguf(dst, meta, tensors, metadata_types=types)


CHILD = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys
    import edgellm.api, edgellm.cli.run, edgellm.cli.models, edgellm.cli.tokenize, edgellm.cli.quantize
    from edgellm.cli.main import main
    # what the interpreter, NumPy and the kernels already map, plus 256 MB for everything a model may allocate
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), vm + (256 << 20)))
    results = []
    for path, out in json.loads(sys.argv[1]):
        for argv in (["run", "-m", path, "-p", "hi", "-n", "2"], ["show", path], ["tokenize", "-m", path, "hi"],
                     ["quantize", path, out, "--type", "Q8_0"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(argv)
                except SystemExit as e:
                    code = e.code
                except BaseException as e:
                    code = "raised " + type(e).__name__ + ": " + str(e)[:200]
            results.append([path, argv[0], code, err.getvalue()])
    print(json.dumps(results))
    """
)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "smollm3"])
def test_every_mutation_is_a_one_line_error(arch, tmp_path):
    base = build_tiny_gguf(tmp_path / "base.gguf", arch=arch)
    cases = mutations(arch)
    assert len(cases) >= 30
    jobs = []
    for i, (key, value) in enumerate(cases):
        path = tmp_path / f"m{i}.gguf"
        _mutate(base, path, key, value)
        jobs.append([str(path), str(tmp_path / f"q{i}.gguf")])
    jobs.append([str(base), str(tmp_path / "q-base.gguf")])  # the unmutated file must work
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs)], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    results = json.loads(child.stdout)
    by_path = {}
    for path, command, code, err in results:
        by_path.setdefault(path, []).append((command, code, err))
    for (key, value), (path, _) in zip(cases, jobs):
        for command, code, err in by_path[path]:
            lines = err.strip().splitlines()
            what = f"{key}={value!r} ({'missing' if value is MISSING else type(value).__name__}): {command}"
            assert code == 1, f"{what}: exit {code}, stderr {err[-500:]!r}"
            assert len(lines) == 1 and lines[0].startswith(f"edgellm {command}: error: "), f"{what}: {err!r}"
    for command, code, err in by_path[jobs[-1][0]]:
        assert code == 0, f"unmutated {command}: {err}"


def test_mutation_errors_name_the_key_and_value(tmp_path):
    """The message says which key, what was found and what was expected."""
    from edgellm.cli.main import main

    base = build_tiny_gguf(tmp_path / "base.gguf", arch="llama")
    expect = {
        ("llama.block_count", 2.0): r"'llama.block_count' is 2.0; expected an integer in 1..1024",
        ("llama.attention.head_count", 0): r"'llama.attention.head_count' is 0; expected an integer",
        ("llama.attention.layer_norm_rms_epsilon", math.nan): r"epsilon' is nan; expected a finite number > 0",
        ("llama.rope.freq_base", 0.0): r"'llama.rope.freq_base' is 0.0; expected a finite number > 0",
        ("llama.block_count", 3): r"tensor 'blk.2.attn_norm.weight' is missing",
        ("llama.block_count", 1): r"'llama.block_count' is 1 but the file holds 2 blocks",
        ("llama.attention.head_count_kv", 3): r"head_count 4 is not a multiple of head_count_kv 3",
    }
    for i, ((key, value), pattern) in enumerate(expect.items()):
        path = tmp_path / f"m{i}.gguf"
        _mutate(base, path, key, value)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["show", str(path)]) == 1
        assert re.search(pattern, err.getvalue()), (key, value, err.getvalue())


def test_c_engine_refuses_an_impossible_plan(tiny_llama):
    """Below the Python checks, the C engine still refuses a plan that would read out of bounds."""
    from edgellm import kernels
    from edgellm.kernels.plan import CompiledModel
    from edgellm.model.transformer import Transformer
    from edgellm.runtime.store import MappedStore

    if kernels._C is None:
        pytest.skip("C extension not built")
    g = GGUFFile(tiny_llama)
    model = Transformer.from_store(g.metadata, MappedStore(g))
    for bad in (dict(n_head_kv=3), dict(n_layers=0), dict(rope_dim=6 * 1024), dict(norm_eps=math.nan), dict(n_ff=97)):
        with pytest.raises(ValueError, match="model_create"):
            CompiledModel(replace(model.config, **bad), model.store, model.output_name, model._vec)
