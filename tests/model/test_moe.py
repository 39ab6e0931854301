"""Mixture of experts (qwen3moe): routing as llama.cpp routes, and only the routed experts' weights read."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgellm import kernels
from edgellm.formats import names
from edgellm.formats.gguf import GGUFFile
from edgellm.model import layers
from edgellm.model.transformer import Transformer, route
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore
from fixtures.tiny import build_tiny_gguf

PATHS = ["ref", "ref-f32", *kernels.capabilities()["supported"]]


def test_route_takes_the_top_k_and_renormalises():
    probs = np.array([[0.1, 0.5, 0.15, 0.25], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    chosen, weights = route(probs, 2)
    assert chosen.tolist() == [[1, 3], [0, 1]]
    np.testing.assert_allclose(weights, [[0.5 / 0.75, 0.25 / 0.75], [0.7 / 0.8, 0.1 / 0.8]], rtol=1e-6)


def _load(path):
    g = GGUFFile(path)
    return Transformer.from_store(g.metadata, MappedStore(g))


@pytest.mark.parametrize("path", PATHS)
def test_experts_no_token_chose_are_never_read(tmp_path, path):
    """Overwrite the weights of every expert the prompt's tokens are not routed to with bytes that decode to
    NaN: if any path read them, NaN would reach the logits (even at weight zero)."""
    src = build_tiny_gguf(tmp_path / "moe.gguf", arch="qwen3moe", n_ff=32, n_expert=8, n_expert_used=2)
    model = _load(src)
    tokens = np.array([5, 17, 42])
    routers = {}
    with layers.observe_linear_inputs(lambda name, x: routers.setdefault(name, x.copy())):
        reference = model.forward(tokens, KVCache(model.config, 16), slice(None))
    unused = {}
    for i in range(model.config.n_layers):
        h = routers[names.FFN_GATE_INP.format(i=i)]
        chosen, _ = route(layers.softmax(h @ model.store.dense(names.FFN_GATE_INP.format(i=i)).T), 2)
        unused[i] = sorted(set(range(8)) - set(chosen.ravel().tolist()))
    assert any(unused.values())
    poisoned = tmp_path / "poisoned.gguf"
    shutil.copy(src, poisoned)
    g = GGUFFile(src)
    with open(poisoned, "r+b") as f:
        for i, experts in unused.items():
            for template in (names.FFN_GATE_EXPS, names.FFN_UP_EXPS, names.FFN_DOWN_EXPS):
                info = g.tensors[template.format(i=i)]
                slab = info.n_bytes // 8
                for e in experts:
                    f.seek(info.offset + e * slab)
                    f.write(b"\xff" * slab)
    before = kernels.active_path()
    kernels.use(path)
    try:
        bad = _load(poisoned)
        clean = model.forward(tokens, KVCache(model.config, 16), slice(None))
        got = bad.forward(tokens, KVCache(bad.config, 16), slice(None))
    finally:
        kernels.use(before)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, clean)
    assert np.isfinite(reference).all()
