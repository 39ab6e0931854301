"""Running under a memory budget: streamed weights give the same numbers as mapped ones, the budget's split and
its errors, and a model file that changes under a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgellm import kernels
from edgellm.errors import BudgetError, ConfigError, FormatError
from edgellm.formats.gguf import GGUFFile
from edgellm.model.transformer import Transformer
from edgellm.runtime import offload
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore
from fixtures.tiny import build_tiny_gguf

pytestmark = pytest.mark.skipif(kernels._C is None, reason="streaming runs in the C engine")

N_CTX = 32


def load(path) -> Transformer:
    gguf = GGUFFile(path)
    return Transformer.from_store(gguf.metadata, MappedStore(gguf))


def kv_bytes(model) -> int:
    cache = KVCache(model.config, N_CTX)
    return cache.k.nbytes + cache.v.nbytes


def make_plan(model, path, budget, **kw) -> offload.OffloadPlan:
    return offload.plan(model.config, model.store, model.output_name, str(path), budget, kv_bytes(model), N_CTX, 2,
                        8, **kw)  # fmt: skip


def minimum(model, path, **kw) -> int:
    kw.pop("ring_bytes", None)
    return offload.minimum_budget(model.config, model.store, model.output_name, kv_bytes(model), N_CTX, 2, 8, **kw)


def run(model, tokens, n_batch=8):
    """Logits of every position, prefilled in batches, then two decode steps; and what was read from storage."""
    cache = KVCache(model.config, N_CTX)
    out, storage = [], np.zeros(6)
    for start in range(0, len(tokens), n_batch):
        out.append(model.forward(tokens[start : start + n_batch], cache, slice(None)))
        storage += model.storage_read()
    token = int(np.argmax(out[-1][-1]))
    for _ in range(2):
        out.append(model.forward(np.array([token]), cache))
        storage += model.storage_read()
        token = int(np.argmax(out[-1][-1]))
    return np.concatenate(out), storage


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-phi3.gguf", arch="phi3")


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3", "tiny_qwen2", "tiny_phi3"])
@pytest.mark.parametrize("share", [0.0, 0.35, 0.8])
def test_streamed_weights_give_the_logits_of_mapped_ones(fixture, share, request):
    """Every share of the weights in memory (none, part of the FFN, part of the head) gives the same logits, bit
    for bit: the same kernels run on the same bytes, read in units of a few rows through a ring that wraps."""
    path = request.getfixturevalue(fixture)
    tokens = np.arange(3, 3 + 13) % 40 + 3
    model = load(path)
    expected, _ = run(model, tokens)
    weights = sum(m.n_bytes for m in offload._matrices(model.config, model.store, model.output_name))
    budget = minimum(model, path, unit_bytes=700, ring_bytes=3 * 4096) + int(share * weights) + 8 * 4096
    plan = make_plan(model, path, budget, unit_bytes=700, ring_bytes=3 * 4096)
    assert plan.units and len(plan.units) > 10  # the ring (3 pages) wraps many times per token
    model.set_offload(plan)
    got, storage = run(model, tokens)
    np.testing.assert_array_equal(got, expected)
    steps = -(-len(tokens) // 8) + 2
    pages = sum(offload._span(u[3], u[4])[2] for u in plan.units)
    # what came from storage: each streamed unit once per forward call, and the embedding rows when they stream
    rows = (len(tokens) + 2) * (offload._span(0, 1)[2]) if plan.stream_embedding else 0
    assert storage[0] >= steps * pages - 1
    assert storage[0] <= steps * pages + rows + 2 * 4096 * (len(tokens) + 2)
    assert storage[1] >= steps * len(plan.units)


def test_naive_baseline_reads_every_matrix_each_token(tiny_llama):
    model = load(tiny_llama)
    tokens = np.arange(5, 14)
    expected, _ = run(model, tokens)
    plan = make_plan(model, tiny_llama, 10**8, naive=True, unit_bytes=2048)
    assert not plan.resident_rows  # nothing kept, whatever the budget
    model.set_offload(plan)
    got, storage = run(model, tokens)
    np.testing.assert_array_equal(got, expected)
    weights = sum(m.n_bytes for m in offload._matrices(model.config, model.store, model.output_name))
    assert storage[0] >= 4 * weights  # two prefill batches and two decode steps, each reads them all
    assert storage[2] == pytest.approx(storage[3])  # nothing overlapped: the engine waits for every read


def test_split_prefers_attention_then_ffn_then_head(tiny_llama):
    model = load(tiny_llama)
    matrices = offload._matrices(model.config, model.store, model.output_name)
    spans = {g: sum(offload._span(offload.PAGE - 1, m.n_bytes)[2] for m in matrices if m.group == g)
             for g in ("attention", "ffn")}  # fmt: skip
    low = minimum(model, tiny_llama)
    for extra, expected in ((spans["attention"], (1.0, 0.0, 0.0)), (spans["attention"] + spans["ffn"], (1.0, 1.0, 0.0)),
                            (spans["attention"] + spans["ffn"] + 3 * 4096, (1.0, 1.0, "some"))):  # fmt: skip
        plan = make_plan(model, tiny_llama, low + extra, ring_bytes=0)
        got = plan.to_dict()["resident_fraction"]
        assert (got["attention"], got["ffn"]) == expected[:2]
        assert 0.0 < got["head"] < 1.0 if expected[2] == "some" else got["head"] == 0.0
        assert plan.used_bytes <= plan.budget
    roomy = make_plan(model, tiny_llama, 10**9)
    assert not roomy.units and roomy.ring_bytes == 0  # everything fits: nothing streams
    assert "attention 100 %" in roomy.summary()


def test_budget_below_the_working_set_names_the_minimum(tiny_llama):
    model = load(tiny_llama)
    low = minimum(model, tiny_llama)
    with pytest.raises(BudgetError, match=rf"minimum working set of {low / 1e6:.1f} MB .*KV cache"):
        make_plan(model, tiny_llama, low - 1)
    assert make_plan(model, tiny_llama, low).used_bytes <= low
    assert low > kv_bytes(model)


def test_parse_size():
    assert offload.parse_size("50M") == 50_000_000
    assert offload.parse_size("1.5G") == 1_500_000_000
    assert offload.parse_size("64MiB") == 64 << 20
    assert offload.parse_size(4096) == 4096
    for bad in ("nan", "-5M", "0", "5Q", "inf", ""):
        with pytest.raises(ConfigError):
            offload.parse_size(bad)


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-moe.gguf", arch="qwen3moe", n_expert=8,
                           n_expert_used=2, n_layers=3)  # fmt: skip


@pytest.mark.parametrize("extra_slabs", [0, 5, None])
def test_streamed_experts_give_the_logits_of_mapped_ones(tiny_moe, extra_slabs):
    """Experts are read when routed into a cache of as few slabs as a token needs (0 extra), some more, or all
    of them (None): the logits equal the mapped run's, and a cache that holds every expert stops reading."""
    tokens = np.arange(3, 3 + 13) % 40 + 3
    model = load(tiny_moe)
    expected, _ = run(model, tokens)
    low = minimum(model, tiny_moe, unit_bytes=700)
    slab = offload._Experts(model.config, model.store).slab_span
    budget = low + 16 * 4096 + (10**8 if extra_slabs is None else extra_slabs * slab)
    plan = make_plan(model, tiny_moe, budget, unit_bytes=700)
    n_slabs = plan.experts[2]
    if extra_slabs is None:
        assert n_slabs == 3 * 8
    elif extra_slabs == 0:
        assert n_slabs == 2  # the two experts a token is routed to
    else:  # attention and the head come first (read every token), the rest caches experts
        assert 2 < n_slabs < 3 * 8 and plan.to_dict()["resident_fraction"]["attention"] == 1.0
    model.set_offload(plan)
    got, storage = run(model, tokens)
    np.testing.assert_array_equal(got, expected)
    hits, misses = storage[4], storage[5]
    assert misses >= 1 and hits + misses >= 3 * 2 * 2  # every layer routes each decoded token to two experts
    if extra_slabs is None:
        assert misses <= 3 * 8  # each expert read once, then found
        again, storage = run(model, tokens)  # the same routing: every expert it needs is cached now
        np.testing.assert_array_equal(again, expected)
        assert storage[5] == 0 and storage[4] >= 3 * 2 * 2


@pytest.mark.parametrize("change", ["truncate", "rewrite"])
def test_a_model_file_changed_during_the_run_is_an_error_not_garbage(tiny_llama, tmp_path, change):
    path = tmp_path / "model.gguf"
    shutil.copy(tiny_llama, path)
    model = load(path)
    plan = make_plan(model, path, minimum(model, path, unit_bytes=700, ring_bytes=3 * 4096) + 8 * 4096,
                     unit_bytes=700, ring_bytes=3 * 4096)  # fmt: skip
    model.set_offload(plan)
    cache = KVCache(model.config, N_CTX)
    model.forward(np.array([5]), cache)
    if change == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    else:  # same size, new bytes
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 4096)
            f.write(os.urandom(4096))
    with pytest.raises(FormatError, match="changed or truncated during the run|came back short"):
        for token in range(6, 6 + 4):  # the reader is at most a ring ahead: a step or two later it sees the change
            model.forward(np.array([token]), cache)


def test_streamed_matrices_leave_the_page_cache_alone(tiny_llama):
    """Resident copies and streamed reads go around the page cache: the mapped file's pages are never touched."""
    model = load(tiny_llama)
    plan = make_plan(model, tiny_llama, minimum(model, tiny_llama) + 16 * 4096, unit_bytes=700)
    for name, rows in plan.resident_rows.items():
        copy = plan.copies[name]
        np.testing.assert_array_equal(copy, model.store.raw(name).reshape(-1)[: copy.size])
        assert not np.shares_memory(copy, model.store.raw(name))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgellm.cli.main", *args], capture_output=True, text=True)


def test_cli_run_json_reports_storage_reads(tiny_llama):
    out = _cli("run", "-m", str(tiny_llama), "-c", "32", "-n", "4", "--temp", "0", "-p", "the", "--raw", "--json",
               "--mem-budget", "1M")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["offload"]
    assert report["budget_mb"] == 1.0 and report["naive"] is False
    for key in ("storage_bytes_per_token", "reads_per_token", "cache_hit_rate", "resident_mb", "io_wait_ms_per_token"):
        assert key in report
    assert "mem budget 1.0 MB" in out.stderr
    plain = json.loads(_cli("run", "-m", str(tiny_llama), "-c", "32", "-n", "4", "--temp", "0", "-p", "the", "--raw",
                            "--json").stdout)  # fmt: skip
    assert json.loads(out.stdout)["tokens"] == plain["tokens"]


@pytest.mark.parametrize("args, code, message", [
    (["--mem-budget", "10K"], 1, "minimum working set"),
    (["--mem-budget", "lots"], 2, "expected a size"),
    (["--offload-naive"], 1, "needs a memory budget"),
])  # fmt: skip
def test_cli_budget_errors_are_one_line(tiny_llama, args, code, message):
    out = _cli("run", "-m", str(tiny_llama), "-c", "32", "-n", "2", *args)
    assert out.returncode == code
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_perplexity_under_a_budget_equals_the_mapped_one(tiny_llama, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the theater in the north and the sea at the other end " * 40)
    args = ("perplexity", "-m", str(tiny_llama), "-f", str(text), "-c", "32", "--chunks", "3", "--json")
    plain = _cli(*args)
    budgeted = _cli(*args, "--mem-budget", "1M")
    assert plain.returncode == 0 and budgeted.returncode == 0, budgeted.stderr
    assert json.loads(budgeted.stdout)["ppl"] == json.loads(plain.stdout)["ppl"]
    assert "mem budget 1.0 MB" in budgeted.stderr


def _run_with_timeout(fn, seconds=60):
    """fn() in a thread: a streaming hang fails the test instead of stopping the suite."""
    import threading

    out = {}
    thread = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the forward pass hung waiting for streamed weights"
    return out["value"]


def test_skipped_head_and_a_ring_of_little_more_than_one_unit(tiny_llama):
    """Prompt batches without logits skip the head's units (the engine hands them back unused), and a ring
    that holds one unit and a bit (a small unit then a large one cannot both fit) still streams."""
    tokens = np.arange(4, 20)

    def prefill_then_decode(model):
        cache = KVCache(model.config, N_CTX)
        model.forward(tokens[:8], cache, None)  # no logits: the head is not computed
        model.forward(tokens[8:12], cache, None)
        out = [model.forward(tokens[12:], cache, slice(None))]
        out += [model.forward(np.array([t]), cache) for t in (5, 6, 7)]
        return np.concatenate(out)

    model = load(tiny_llama)
    expected = prefill_then_decode(model)
    need = offload._Needs(model.config, model.store, offload._matrices(model.config, model.store, model.output_name),
                          kv_bytes(model), N_CTX, 2, False, 3000)  # fmt: skip
    one_unit = need.min_ring // 2
    for ring in (one_unit, one_unit + 4096, 2 * one_unit):
        plan = make_plan(model, tiny_llama, minimum(model, tiny_llama, unit_bytes=3000) + 4096, unit_bytes=3000)
        plan.ring_bytes = ring  # below what plan() would choose: the engine alone must cope
        assert plan.units and max(offload._span(u[3], u[4])[2] for u in plan.units) == one_unit
        model.set_offload(plan)
        np.testing.assert_array_equal(_run_with_timeout(lambda: prefill_then_decode(model)), expected)


def test_budget_just_above_everything_streams_nothing(tiny_llama):
    """Around the budget where every weight fits, the plan either streams nothing or keeps a ring to stream with."""
    model = load(tiny_llama)
    matrices = offload._matrices(model.config, model.store, model.output_name)
    low = minimum(model, tiny_llama)
    everything = sum(offload._span(offload.PAGE - 1, m.n_bytes)[2] for m in matrices)
    for extra in range(everything - 3 * 4096, everything + 3 * 4096, 1024):
        plan = make_plan(model, tiny_llama, low + extra)
        assert (plan.ring_bytes > 0) == bool(plan.units)
        assert plan.used_bytes <= plan.budget


def test_reads_bypass_the_page_cache_where_the_file_system_allows(tiny_llama):
    model = load(tiny_llama)
    model.set_offload(make_plan(model, tiny_llama, minimum(model, tiny_llama) + 8 * 4096))
    compiled = model.compiled()
    try:
        fd = os.open(tiny_llama, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        os.close(fd)
        supported = hasattr(os, "O_DIRECT")
    except OSError:
        supported = False
    assert compiled.direct_io == supported


@pytest.mark.parametrize("fixture, cache_type", [("tiny_llama", "f32"), ("tiny_gemma3", "f32"),
                                                 ("tiny_gemma3", "q8_0")])  # a Q8_0 cache needs heads of 32
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_budgeted_buffers_cover_what_the_engine_allocates(fixture, threads, cache_type, request):
    """A budget counts the engine's working buffers from the shapes alone; what the engine then holds after
    prefill batches and a decode at a long context must not exceed that count (it grows with the thread pool's
    slices and the context)."""
    model = load(request.getfixturevalue(fixture))
    model.n_threads = threads
    n_ctx = 2048
    cache = KVCache(model.config, n_ctx, cache_type=cache_type)
    tokens = np.arange(40) % model.config.n_vocab
    for n_batch in (1, 7, 16):
        model.forward(tokens[:n_batch], cache)
        held = model.compiled().scratch_bytes()
        counted = offload.engine_buffer_bytes(model.config, n_batch, n_ctx, threads)
        assert held <= counted, (n_batch, held, counted)
        assert held >= counted // 4, (n_batch, held, counted)  # a count, not a blanket
        cache.truncate(0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3"])
@pytest.mark.parametrize("threads", [1, 2])
def test_budgeted_buffers_cover_a_batch_of_sequences(fixture, threads, request):
    """A decode step of several sequences at a long context splits each one's keys into ranges: the count for
    n_seqs sequences covers what the engine then holds (the server's slots under --mem-budget)."""
    path = request.getfixturevalue(fixture)
    prefill, model = load(path), load(path)  # the prompts' buffers in one, the decode step's in the other
    model.n_threads = threads
    n_ctx, n_seqs = 2048, 16
    caches = [KVCache(model.config, n_ctx) for _ in range(n_seqs)]
    for i, cache in enumerate(caches):  # long enough that each sequence's keys are split into ranges
        prefill.forward(np.arange(600 + i) % model.config.n_vocab, cache)
    model.forward_batch([(np.array([1]), cache) for cache in caches], [True] * n_seqs)
    held = model.compiled().scratch_bytes()
    assert held <= offload.engine_buffer_bytes(model.config, n_seqs, n_ctx, threads, n_seqs)
