"""The NumPy transformer: cache consistency, masks, RoPE, and loading checks on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.tiny import build_tiny_gguf

from edgellm.errors import FormatError, UnsupportedError
from edgellm.formats.gguf import GGUFFile, TensorData, write_gguf
from edgellm.formats.quants import GGMLType
from edgellm.model import layers
from edgellm.model.registry import read_config
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore


def load(path) -> Transformer:
    g = GGUFFile(path)
    return Transformer.from_store(g.metadata, MappedStore(g))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3", "tiny_qwen2"])
def test_prefill_logits_equal_token_by_token_decode(fixture, request, monkeypatch):
    """With the row-at-a-time kernels (a prompt's rows in tiles, a decoded token alone). Mixed with the interleaved
    kernels, which round a row alike in any batch, the two kinds' different roundings can move an 8-bit activation
    across a rounding boundary (tiny_llama's position 7 by 0.06 in a logit): next test."""
    monkeypatch.setenv("EDGELLM_REPACK", "0")
    check_prefill_equals_decode(load(request.getfixturevalue(fixture)))


def test_prefill_logits_equal_decode_with_interleaved_weights(tmp_path):
    """Every layer matrix interleaved (Q4_1 and Q8_0): each product rounds alike however many tokens it has, so no
    8-bit activation can land on another step in a prompt than in decode (only the head, 267 rows, is not
    interleaved, and it quantizes nothing after it)."""
    model = load(build_tiny_gguf(tmp_path / "packable.gguf", kinds=[GGMLType.Q4_1, GGMLType.Q8_0], n_head_kv=4))
    if not model.compiled() or not model.compiled().packed_bytes:
        pytest.skip(f"the {model.path()} path has no interleaved kernels")
    check_prefill_equals_decode(model)


def check_prefill_equals_decode(model):
    tokens = np.random.default_rng(3).integers(0, model.config.n_vocab, size=11)
    prefill = model.forward(tokens, KVCache(model.config, 32), logits_rows=slice(None))
    cache = KVCache(model.config, 32)
    decode = np.stack([model.forward(tokens[i : i + 1], cache)[0] for i in range(len(tokens))])
    assert prefill.shape == (11, model.config.n_vocab)
    np.testing.assert_allclose(decode, prefill, rtol=1e-4, atol=1e-4)
    # Prefill split in two batches agrees too (the cache carries the first batch).
    cache = KVCache(model.config, 32)
    model.forward(tokens[:5], cache, logits_rows=None)
    np.testing.assert_allclose(model.forward(tokens[5:], cache, slice(None)), prefill[5:], rtol=1e-4, atol=1e-4)


def test_gemma3_sliding_window_changes_only_distant_positions(tiny_gemma3):
    model = load(tiny_gemma3)
    c = model.config
    assert c.sliding_window == 4 and c.swa_layers == (True, True)
    tokens = np.arange(10) % c.n_vocab
    base = model.forward(tokens, KVCache(c, 16), slice(None))
    # Changing the first token cannot reach position 9 through two 4-wide windows (reach 2*3=6 back).
    other = tokens.copy()
    other[0] = (other[0] + 7) % c.n_vocab
    moved = model.forward(other, KVCache(c, 16), slice(None))
    np.testing.assert_allclose(moved[9], base[9], rtol=1e-5, atol=1e-5)
    assert not np.allclose(moved[3], base[3])


def _naive_attention(q, k, v, positions, scale, window):
    n_tokens, n_head, _ = q.shape
    group = n_head // k.shape[1]
    out = np.zeros((n_tokens, n_head, v.shape[2]))
    for t in range(n_tokens):
        for h in range(n_head):
            keys = [j for j in range(k.shape[0]) if j <= positions[t] and (window == 0 or positions[t] - j < window)]
            s = np.array([q[t, h] @ k[j, h // group] * scale for j in keys])
            w = np.exp(s - s.max())
            w /= w.sum()
            out[t, h] = sum(wi * v[j, h // group] for wi, j in zip(w, keys))
    return out.reshape(n_tokens, -1)


@pytest.mark.parametrize("window", [0, 3])
def test_attention_matches_naive_loop(window, monkeypatch):
    monkeypatch.setattr(layers, "ATTN_QUERY_BLOCK", 2)  # exercise the query blocking
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 4, 8)).astype(np.float32)
    k = rng.standard_normal((7, 2, 8)).astype(np.float32)
    v = rng.standard_normal((7, 2, 6)).astype(np.float32)
    positions = np.arange(2, 7)
    got = layers.attention(q, k, v, positions, 0.3, window)
    np.testing.assert_allclose(got, _naive_attention(q, k, v, positions, 0.3, window), rtol=1e-5, atol=1e-5)


def test_rope_rotates_pairs_by_position_times_frequency():
    x = np.zeros((1, 1, 4), dtype=np.float32)
    x[0, 0] = [1.0, 0.0, 1.0, 0.0]
    # head_dim 4, base 100: frequencies 1 and 1/10. Position 2 turns pair 0 by 2 rad, pair 1 by 0.2 rad.
    norm = layers.rope(x, np.array([2]), 100.0, 4, neox=False)[0, 0]
    np.testing.assert_allclose(norm, [np.cos(2), np.sin(2), np.cos(0.2), np.sin(0.2)], rtol=1e-6)
    # NEOX pairs dims (0, 2) and (1, 3).
    x[0, 0] = [1.0, 0.0, 0.0, 0.0]
    neox = layers.rope(x, np.array([2]), 100.0, 4, neox=True)[0, 0]
    np.testing.assert_allclose(neox, [np.cos(2), 0.0, np.sin(2), 0.0], atol=1e-6)


def test_rms_norm_and_gelu_reference_values():
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(layers.rms_norm(x, np.array([1.0, 2.0]), 0.0), [[3 / np.sqrt(12.5), 8 / np.sqrt(12.5)]])
    np.testing.assert_allclose(layers.gelu_tanh(np.array([1.0], dtype=np.float32)), [0.8411920], rtol=1e-6)
    np.testing.assert_allclose(layers.silu(np.array([1.0])), [0.7310586], rtol=1e-6)


def test_linear_tiles_give_the_same_product(tiny_llama, monkeypatch, reference_path):
    g = GGUFFile(tiny_llama)
    store = MappedStore(g)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    whole = layers.linear(x, store, "token_embd.weight")
    monkeypatch.setattr(layers, "DEQUANT_TILE_BYTES", 64 * 4 * 7)  # 7 rows per tile
    tiled = layers.linear(x, store, "token_embd.weight")
    w = store.dense("token_embd.weight")
    # BLAS may sum each dot product in another order for another tile size: two float32 summation orders
    # differ by at most 2 * n_in * eps * sum |x_i w_i| (the standard forward error bound of a dot product).
    bound = 2 * x.shape[1] * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w).T)
    assert np.all(np.abs(tiled - whole) <= bound)
    assert np.all(np.abs(whole - x @ w.T) <= bound)


def _rewrite_without(src, dst, drop=(), meta_changes=None, reshape=None):
    g = GGUFFile(src)
    meta = dict(g.metadata) | (meta_changes or {})
    tensors = []
    for t in g.tensors.values():
        if t.name in drop:
            continue
        shape = reshape[1] if reshape and t.name == reshape[0] else t.shape
        data = g.raw(t.name).reshape(-1)
        if shape != t.shape:
            data = np.zeros(int(np.prod(shape)), dtype=np.float32)
        tensors.append(TensorData(t.name, t.type, shape, data))
    return write_gguf(dst, meta, tensors, metadata_types=g.metadata_types)


def test_missing_tensor_is_named(tiny_llama, tmp_path):
    path = _rewrite_without(tiny_llama, tmp_path / "m.gguf", drop={"blk.1.ffn_up.weight"})
    with pytest.raises(FormatError, match="tensor 'blk.1.ffn_up.weight' is missing"):
        load(path)


def test_wrong_shape_is_named(tiny_llama, tmp_path):
    path = _rewrite_without(tiny_llama, tmp_path / "m.gguf", reshape=("blk.0.attn_norm.weight", (32,)))
    with pytest.raises(FormatError, match=r"'blk.0.attn_norm.weight' has shape \(32,\), expected \(64,\)"):
        load(path)


def test_unsupported_architecture_lists_supported():
    with pytest.raises(UnsupportedError, match="architecture 'mamba' is not supported; supported: gemma3, llama"):
        read_config({"general.architecture": "mamba"}, 10)


def test_missing_hparam_is_named(tiny_llama):
    meta = dict(GGUFFile(tiny_llama).metadata)
    del meta["llama.block_count"]
    with pytest.raises(FormatError, match="metadata key 'llama.block_count' is missing"):
        read_config(meta, 10)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3", "tiny_qwen2"])
def test_c_engine_matches_numpy_reference(fixture, request):
    """The C forward pass against the NumPy one; differences come from 8-bit activation quantization."""
    from edgellm import kernels

    if kernels._C is None:
        pytest.skip("C extension not built")
    model = load(request.getfixturevalue(fixture))
    tokens = np.random.default_rng(5).integers(0, model.config.n_vocab, size=12)
    before = kernels.active_path()
    try:
        kernels.use("ref")
        assert model.compiled() is None
        ref = model.forward(tokens, KVCache(model.config, 32), slice(None))
        for path in kernels.capabilities()["supported"]:
            kernels.use(path)
            assert model.compiled() is not None, path
            got = model.forward(tokens, KVCache(model.config, 32), slice(None))
            assert np.abs(got - ref).max() < 0.08 * ref.std(), path
            assert (got.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.9, path
    finally:
        kernels.use(before)


@pytest.mark.parametrize("arch, cache_type", [("qwen2", "f32"), ("qwen2", "f16"), ("gemma3", "f32"), ("gemma3", "q8_0")])
def test_long_cache_attention_split_over_threads_matches_numpy(tmp_path, arch, cache_type):
    """Over a 600-token cache the keys are split into ranges whose partial softmax sums are merged when there
    are few attention items: a 4-token batch and decode steps must give the NumPy result, bit for bit the same
    at 1, 2, 3 and 8 threads. Six Gemma 3 layers: five
    with a 280-token sliding window (split inside the window too), the sixth global; its head_dim 32 allows
    a Q8_0 cache."""
    from edgellm import kernels

    if kernels._C is None:
        pytest.skip("C extension not built")
    six = dict(n_layers=6, sliding_window=280) if arch == "gemma3" else {}
    model = load(build_tiny_gguf(tmp_path / "m.gguf", arch=arch, **six))
    tokens = np.random.default_rng(9).integers(0, model.config.n_vocab, size=607)

    def run():
        cache = KVCache(model.config, 620, cache_type=cache_type)
        model.forward(tokens[:600], cache, None)
        batch = model.forward(tokens[600:604], cache, slice(None))
        return np.concatenate([batch, np.stack([model.forward(tokens[i : i + 1], cache)[0] for i in range(604, 607)])])

    before = kernels.active_path()
    try:
        kernels.use("ref")
        ref = run()
        for path in kernels.capabilities()["supported"]:
            kernels.use(path)
            results = []
            for threads in (1, 2, 3, 8):
                kernels.set_threads(threads)
                results.append(run())
                assert np.abs(results[-1] - ref).max() < 0.08 * ref.std(), (path, threads)
            for got in results[1:]:
                np.testing.assert_array_equal(got, results[0], err_msg=f"{path}: thread counts disagree")
    finally:
        kernels.use(before)
        kernels.set_threads(None)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3"])
def test_f16_kv_cache_stays_close_to_f32(fixture, request):
    model = load(request.getfixturevalue(fixture))
    tokens = np.random.default_rng(6).integers(0, model.config.n_vocab, size=10)
    f32 = model.forward(tokens, KVCache(model.config, 16), slice(None))
    cache = KVCache(model.config, 16, dtype=np.float16)
    assert cache.n_bytes * 2 == KVCache(model.config, 16).n_bytes
    f16 = model.forward(tokens[:6], cache, slice(None))
    f16 = np.concatenate([f16, np.stack([model.forward(tokens[i : i + 1], cache)[0] for i in range(6, 10)])])
    assert np.abs(f16 - f32).max() < 0.1 * f32.std()  # fp16 rounding, amplified by 8-bit activations
    assert (f16.argmax(axis=1) == f32.argmax(axis=1)).mean() >= 0.9


def test_q8_0_kv_cache_stays_close_to_f32_on_every_path(tiny_gemma3):
    """Q8_0 keys/values (and Q8_0 queries, as llama.cpp reads such a cache) on the C engine and the NumPy path."""
    from edgellm import kernels
    from edgellm.formats.quants import GGMLType

    model = load(tiny_gemma3)
    tokens = np.random.default_rng(8).integers(0, model.config.n_vocab, size=12)
    f32 = model.forward(tokens, KVCache(model.config, 16), slice(None))
    cache = KVCache(model.config, 16, cache_type="q8_0")
    assert cache.type == GGMLType.Q8_0
    assert cache.n_bytes * 32 == KVCache(model.config, 16).n_bytes * 8.5
    q8 = model.forward(tokens[:9], cache, slice(None))  # prefill then decode steps
    q8 = np.concatenate([q8, np.stack([model.forward(tokens[i : i + 1], cache)[0] for i in range(9, 12)])])
    assert np.abs(q8 - f32).max() < 0.1 * f32.std()
    before = kernels.active_path()
    try:
        kernels.use("ref")
        ref = model.forward(tokens, KVCache(model.config, 16, cache_type="q8_0"), slice(None))
    finally:
        kernels.use(before)
    assert np.abs(ref - q8).max() < 0.05 * f32.std()


def test_q8_0_kv_cache_needs_heads_of_whole_blocks(tiny_llama):
    from edgellm.errors import ConfigError

    model = load(tiny_llama)  # head_dim 16
    with pytest.raises(ConfigError, match="multiple of 32"):
        KVCache(model.config, 16, cache_type="q8_0")
    with pytest.raises(ConfigError, match="unknown KV cache type 'q4'"):
        KVCache(model.config, 16, cache_type="q4")
