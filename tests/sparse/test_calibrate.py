"""Activation-sparsity thresholds: calibration reaches its target, puts sparsity where it costs least, and
threshold 0 is exactly the dense model."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.tiny import build_tiny_gguf

from edgellm.errors import FormatError
from edgellm.formats.gguf import GGUFFile
from edgellm.model import layers
from edgellm.model.sparsity import GROUPS, Thresholds
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore
from edgellm.sparse.calibrate import (
    KLProbe,
    allocate,
    calibrate,
    collect_inputs,
    model_wide,
    refine,
    sensitivity,
    thresholds_for,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    g = GGUFFile(build_tiny_gguf(tmp_path_factory.mktemp("s") / "m.gguf", arch="llama", n_layers=2))
    return Transformer.from_store(g.metadata, MappedStore(g))


def _tokens(model, n=256, seed=3):
    return np.random.default_rng(seed).integers(3, model.config.n_vocab, n)


def test_zero_thresholds_are_exactly_dense(model, reference_path):
    tokens = _tokens(model, 24)
    dense = model.forward(tokens, KVCache(model.config, 32), slice(None))
    zero = Thresholds(np.zeros((2, len(GROUPS)), np.float32), np.zeros((2, len(GROUPS))), 0.0)
    with layers.sparsify_linear_inputs(zero.by_weight()):
        got = model.forward(tokens, KVCache(model.config, 32), slice(None))
    np.testing.assert_array_equal(got, dense)
    with layers.sparsify_linear_inputs({"blk.0.attn_q.weight": 1e9}):  # every input of one product zeroed
        assert not np.array_equal(model.forward(tokens, KVCache(model.config, 32), slice(None)), dense)


def test_greedy_spends_sparsity_where_it_costs_least():
    grid = np.round(np.arange(0, 0.96, 0.05), 4)
    cheap, dear = grid**2, 10 * grid**2  # error curves of two groups of equal size
    level = allocate(np.stack([cheap, dear]), np.array([100.0, 100.0]), 0.4, grid)
    assert (grid[level] * 100).sum() >= 0.4 * 200 - 1e-9
    assert grid[level[0]] > grid[level[1]]
    # a group ten times larger is worth sparsifying first at equal error per step
    level = allocate(np.stack([grid, grid]), np.array([1000.0, 100.0]), 0.3, grid)
    assert grid[level[0]] > grid[level[1]]
    # a level a unit may not reach (not measured) is never given to it, however cheap the unit is
    capped = np.where(grid > 0.5, np.inf, 0.0)
    level = allocate(np.stack([capped, dear]), np.array([100.0, 100.0]), 0.4, grid)
    assert grid[level[0]] == pytest.approx(0.5) and grid[level[1]] == pytest.approx(0.3)


def test_sensitivity_allocates_by_model_kl_and_serves_every_target(model):
    tokens = _tokens(model, 512)
    sens = sensitivity(model, tokens, n_ctx=64, n_chunks=4, kl_windows=2, kl_ctx=64, kl_rows=16, layers_per_band=1)
    assert [list(b) for b in sens.bands] == [[0], [1]] and sens.kl.shape == (2, len(GROUPS), len(sens.levels))
    assert (sens.kl >= 0).all() and (sens.kl[..., -1] > 0).all()  # sparser is measurably further from dense
    probe = KLProbe(model, tokens, 2, 64, 16, None)
    assert probe(None) == pytest.approx(0.0, abs=1e-9) and probe.last_dnll == pytest.approx(0.0, abs=1e-9)
    # the joint refinement keeps the model-wide sparsity and never ends further from dense than it started
    start = thresholds_for(sens, 0.4)
    refined = refine(sens, probe, start, rounds=2)
    assert model_wide(refined.sparsity, sens.sizes) == pytest.approx(model_wide(start.sparsity, sens.sizes), abs=1e-6)
    assert probe(refined) <= probe(start) + 1e-12
    for target in (0.25, 0.4, 0.6):
        t = thresholds_for(sens, target)
        assert model_wide(t.sparsity, sens.sizes) == pytest.approx(target, abs=0.03)
        assert t.sparsity.max() <= sens.levels[-1] + 1e-9
        assert probe(t) > 0
    # the group whose sparsity costs the model most gets the least (ffn_in, as measured on SmolLM2)
    k = list(GROUPS).index("ffn_in")
    sens.kl[:] = sens.levels**2
    sens.kl[:, k] *= 10
    t = thresholds_for(sens, 0.4)
    others = np.delete(t.sparsity, k, axis=1)
    assert (t.sparsity[:, k] < others.min(axis=1)).all()


def test_calibrated_thresholds_reach_the_target_on_the_calibration_text(model, reference_path):
    tokens = _tokens(model, 512)
    t = calibrate(model, tokens, 0.4, n_ctx=64, n_chunks=4)
    sizes = np.array([[sum(np.prod(model.store.info(n.format(i=i)).shape) for n in templates)
                       for templates in GROUPS.values()] for i in range(2)], dtype=np.float64)  # fmt: skip
    assert model_wide(t.sparsity, sizes) == pytest.approx(0.4, abs=0.03)  # model-wide, not per block
    # measured: the thresholds zero about the sparsity they were fitted for, on the same text
    inputs = collect_inputs(model, tokens, 64, 4, None)
    for (i, g), x in inputs.items():
        k = list(GROUPS).index(g)
        measured = (np.abs(x) < t.thresholds[i, k]).mean() if t.thresholds[i, k] > 0 else 0.0
        assert measured == pytest.approx(t.sparsity[i, k], abs=0.02)
    with layers.sparsify_linear_inputs(t.by_weight()):
        sparse = model.forward(tokens[:64], KVCache(model.config, 64), slice(None))
    dense = model.forward(tokens[:64], KVCache(model.config, 64), slice(None))
    assert np.isfinite(sparse).all() and not np.array_equal(sparse, dense)


def test_thresholds_round_trip_and_refuse_other_files(model, tmp_path, tiny_llama):
    t = Thresholds(np.array([[0.1, 0.0, 0.3, 0.4], [0.5, 0.6, 0.0, 0.8]], np.float32),
                   np.array([[0.4, 0.0, 0.4, 0.45], [0.5, 0.3, 0.0, 0.4]]), 0.4, "groups_merged.txt")  # fmt: skip
    path = t.save(tmp_path / "t.gguf")
    back = Thresholds.load(path, n_layers=2)
    np.testing.assert_array_equal(back.thresholds, t.thresholds)
    assert back.target == pytest.approx(0.4) and back.calibration == "groups_merged.txt"
    assert "blk.1.ffn_gate.weight" not in back.by_weight() and back.by_weight()["blk.0.attn_k.weight"] == pytest.approx(0.1)
    with pytest.raises(FormatError, match="thresholds for 2 layers, the model has 3"):
        Thresholds.load(path, n_layers=3)
    with pytest.raises(FormatError, match="not an edgellm sparsity file"):
        Thresholds.load(tiny_llama)


def test_c_engine_applies_the_same_thresholds(model):
    """The C forward pass zeroes the same inputs as the NumPy path (within 8-bit activation noise, as the
    dense C-vs-NumPy check), and with thresholds 0 is bit for bit the dense C result."""
    from edgellm import kernels

    if kernels._C is None:
        pytest.skip("C extension not built")
    tokens = _tokens(model, 24)
    # the greedy allocation alone (no blend with uniform): in this fixture |x| takes few distinct values, and a
    # threshold landing exactly on one (as uniform 50 % does on attn_in) flips ties between the paths by float
    # rounding; real activations have no such ties
    t = calibrate(model, _tokens(model, 512), 0.5, n_ctx=64, n_chunks=4, nll_windows=0)
    zero = Thresholds(np.zeros_like(t.thresholds), np.zeros_like(t.sparsity), 0.0)
    before = kernels.active_path()
    try:
        results = {}
        for path in ["ref", *kernels.capabilities()["supported"]]:
            kernels.use(path)
            for label, th in (("dense", None), ("zero", zero), ("sparse", t)):
                model.set_sparsity(th)
                results[path, label] = model.forward(tokens, KVCache(model.config, 32), slice(None))
            assert path == "ref" or model.compiled() is not None
    finally:
        model.set_sparsity(None)
        kernels.use(before)
    ref = results["ref", "sparse"]
    assert np.abs(results["ref", "sparse"] - results["ref", "dense"]).max() > 0.1 * ref.std()  # sparsity matters
    for path in kernels.capabilities()["supported"]:
        np.testing.assert_array_equal(results[path, "zero"], results[path, "dense"])
        assert np.abs(results[path, "sparse"] - ref).max() < 0.08 * ref.std(), path
