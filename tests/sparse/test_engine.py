"""Sparse decode and the candidate head inside the C engine, on a tiny random model whose matrices cycle through
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and F16 (every output width a whole number of 64-row tiles).

References: decode steps that skip inactive inputs' weights against a prefill of the same tokens that zeroes
those inputs and multiplies densely (same thresholds, same engine: they differ by the activations' int8
rounding only); the candidate head against the full head's logits for the candidates and the cheap head's
for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm import kernels
from edgellm.formats.gguf import GGUFFile
from edgellm.formats.quants import GGMLType
from edgellm.model.sparsity import Thresholds
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore
from edgellm.sparse.head import CandidateHead
from edgellm.quant.quantize import quantize_tensor
from edgellm.formats.quants import dequantize_rows
from fixtures.tiny import build_tiny_gguf

pytestmark = pytest.mark.skipif(kernels._C is None, reason="C extension not built")
PATHS = kernels._C.capabilities()["supported"] if kernels._C else []


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = build_tiny_gguf(tmp_path_factory.mktemp("sparse") / "tiny.gguf", n_layers=2, n_embd=128, n_ff=192,
                           n_head=4, n_head_kv=2, seed=3)  # fmt: skip
    g = GGUFFile(path)
    return Transformer.from_store(g.metadata, MappedStore(g))


@pytest.fixture(autouse=True)
def restore(model):
    before = kernels.active_path()
    yield
    kernels.use(before)
    model.set_sparsity(None)
    model.set_head(None)


def _tokens(model, n, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.n_vocab, size=n)


def _thresholds(model, tokens, s):
    """Per (layer, group) the s-quantile of input magnitudes seen on these tokens (NumPy path hook)."""
    from edgellm.model import layers
    from edgellm.model.sparsity import GROUPS

    c = model.config
    first = {t.format(i=i): (i, g) for i in range(c.n_layers) for g, ts in enumerate(GROUPS.values()) for t in ts[:1]}
    seen: dict = {}
    with layers.observe_linear_inputs(lambda name, x: seen.setdefault(first.get(name), []).append(np.abs(x).ravel())):
        model.forward(tokens, KVCache(c, len(tokens)), None)
    th = np.zeros((c.n_layers, 4), np.float32)
    for (i, g), v in ((k, v) for k, v in seen.items() if k is not None):
        th[i, g] = np.quantile(np.concatenate(v), s)
    return Thresholds(th, np.full(th.shape, s), s)


def _decode(model, tokens):
    """Logits of each token fed one at a time, and the bytes each step read."""
    cache = KVCache(model.config, len(tokens))
    rows, read = [], []
    for t in tokens:
        rows.append(model.forward(np.array([t]), cache)[0])
        read.append(model.bytes_read())
    return np.array(rows), np.array(read)


@pytest.mark.parametrize("path", PATHS)
def test_sparse_decode_matches_zeroed_prefill_and_reads_less(model, path):
    """Decode steps that skip inactive inputs' weights against a prefill that zeroes them and multiplies densely:
    the two round activations to int8 differently (per group vs per block) and this random model amplifies any
    rounding, so the bound is the engine's own rounding noise, measured against the float NumPy path on the
    same zeroed inputs. A wrong weight or a skipped active input costs as much as the sparsity itself (10x more)."""
    tokens = _tokens(model, 12)
    th = _thresholds(model, _tokens(model, 64, seed=1), 0.5)
    kernels.use(path)
    dense, dense_read = _decode(model, tokens)
    model.set_sparsity(th)
    assert any(k is not None for k in model.compiled()._keep), "column layouts attached"
    sparse, sparse_read = _decode(model, tokens)
    batch = model.forward(tokens, KVCache(model.config, len(tokens)), slice(None))
    kernels.use("ref-f32")
    float_batch = model.forward(tokens, KVCache(model.config, len(tokens)), slice(None))
    noise = np.abs(batch - float_batch).mean()
    assert np.abs(sparse - batch).mean() <= noise < 0.5 * np.abs(sparse - dense).mean()
    assert sparse_read.max() < dense_read.min(), "skipped inputs must save reads"


def test_threshold_zero_attaches_nothing_and_is_dense(model):
    tokens = _tokens(model, 8)
    dense, _ = _decode(model, tokens)
    zero = Thresholds(np.zeros((model.config.n_layers, 4), np.float32), np.zeros((model.config.n_layers, 4)), 0.0)
    model.set_sparsity(zero)
    same, _ = _decode(model, tokens)
    np.testing.assert_array_equal(same, dense)


def _cheap_head(model, k, kind="q3"):
    if kind == "lowrank":
        from edgellm.sparse.head import build

        return build(model, _tokens(model, 256, seed=5), rank=32, n_candidates=k, n_ctx=64, n_chunks=4)
    info = model.store.info(model.output_name)
    w = dequantize_rows(model.store.raw(model.output_name), info.type, info.shape[1], slice(0, info.shape[0]))
    raw = quantize_tensor(w, GGMLType.Q3_NL)
    return CandidateHead(GGMLType.Q3_NL, raw, k)


@pytest.mark.parametrize("kind", ["q3", "lowrank"])
@pytest.mark.parametrize("path", PATHS)
def test_candidate_head_is_exact_on_candidates(model, path, kind):
    head = _cheap_head(model, 5, kind)
    kernels.use(path)
    tokens = _tokens(model, 6)
    dense = model.forward(tokens, KVCache(model.config, 8), slice(None))
    model.set_head(CandidateHead(head.type, head.raw, model.config.n_vocab, proj=head.proj))
    every = model.forward(tokens, KVCache(model.config, 8), slice(None))
    # every token a candidate: the full head's numbers (one row at a time here, a tile of rows there: float order)
    np.testing.assert_allclose(every, dense, rtol=1e-5, atol=1e-5)
    model.set_head(head)
    mixed = model.forward(tokens, KVCache(model.config, 8), slice(None))
    model.set_head(CandidateHead(head.type, head.raw, 0, proj=head.proj))  # the cheap head alone
    cheap = model.forward(tokens, KVCache(model.config, 8), slice(None))
    for i in range(len(tokens)):
        candidates = np.argsort(-cheap[i], kind="stable")[:5]
        others = np.setdiff1d(np.arange(model.config.n_vocab), candidates)
        np.testing.assert_allclose(mixed[i][candidates], dense[i][candidates], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(mixed[i][others], cheap[i][others])


@pytest.mark.parametrize("kind", ["q3", "lowrank"])
def test_numpy_twin_of_the_candidate_head(model, kind, tmp_path):
    tokens = _tokens(model, 6)
    head = _cheap_head(model, 8, kind)
    head = CandidateHead.load(head.save(tmp_path / "head.gguf"), model.config.n_vocab, model.config.n_embd)
    kernels.use("ref-f32")
    dense = model.forward(tokens, KVCache(model.config, 8), slice(None))
    model.set_head(head)
    mixed = model.forward(tokens, KVCache(model.config, 8), slice(None))
    for i in range(len(tokens)):
        exact = np.isclose(mixed[i], dense[i], rtol=0, atol=1e-4)
        assert exact.sum() >= 8 and exact[np.argmax(mixed[i])]
