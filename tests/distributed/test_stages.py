"""Pipeline stages without Ray: a plan of some layers with hidden states in and out, chained, gives the whole
model's logits bit for bit; the split and the micro-batches."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm.distributed.pipeline import _micro_batches, layer_read_bytes, split_layers
from edgellm.distributed.stage import Stage
from edgellm.errors import ConfigError
from edgellm.formats.gguf import GGUFFile
from edgellm.formats.quants import GGMLType
from edgellm.kernels.plan import CompiledModel
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore
from fixtures.tiny import build_tiny_gguf


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def deep_model(request, tmp_path_factory):
    """Five layers (gemma3: sliding-window and global ones, post-norms, scaled embeddings) of mixed formats."""
    path = tmp_path_factory.mktemp("stages") / f"deep-{request.param}.gguf"
    return build_tiny_gguf(path, arch=request.param, n_layers=5, seed=3,
                           kinds=[GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q4_1])  # fmt: skip


def _load(path):
    g = GGUFFile(path)
    return Transformer.from_store(g.metadata, MappedStore(g))


def _message(seqs, tokens, rows):
    return {"op": "forward", "seqs": seqs, "n_ctx": 32, "cache_type": "f32", "rows": np.asarray(rows, np.int32),
            "tokens": np.asarray(tokens, np.int32)}  # fmt: skip


def _through(stages, msg):
    for s in stages:
        msg = s.handle(msg)
        assert not msg.get("error"), msg.get("error")
    return msg


@pytest.mark.parametrize("cuts", [(0, 2, 5), (0, 1, 3, 5), (0, 1, 2, 3, 4, 5)])
def test_chained_stages_give_the_whole_models_logits(deep_model, cuts):
    model = _load(deep_model)
    whole = model.compiled()
    stages = [Stage(str(deep_model), a, b, i, len(cuts) - 1, 2) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    prompts = [np.array([1, 5, 9, 2, 7]), np.array([3, 4])]
    caches = [KVCache(model.config, 32) for _ in prompts]
    # two prompts batched, then three decode steps of both
    expect = whole.forward_batch(list(zip(prompts, caches)), np.array([4, 6]), 2)
    got = _through(stages, _message([(0, 0, 5), (1, 0, 2)], np.concatenate(prompts), [4, 6]))["logits"]
    np.testing.assert_array_equal(got, expect)
    past = [5, 2]
    for step in range(3):
        nxt = [np.array([int(row.argmax())]) for row in expect]
        for c, n in zip(caches, past):
            c.n_past = n
        expect = whole.forward_batch(list(zip(nxt, caches)), np.array([0, 1]), 2)
        msg = _message([(0, past[0], 1), (1, past[1], 1)], np.concatenate(nxt), [0, 1])
        out = _through(stages, msg)
        np.testing.assert_array_equal(out["logits"], expect)
        past = [p + 1 for p in past]
    assert [t[0] for t in out["trace"]] == list(range(len(stages)))
    assert len(out["read"]) == len(stages) and all(w > 0 for w, _ in out["read"])


def test_a_stage_reads_only_its_layers(deep_model, tmp_path):
    """A middle stage over a copy of the file whose other matrices (other layers, embedding, head) are NaN bytes
    gives the same hidden states as over the clean file: it never reads them."""
    model = _load(deep_model)
    poisoned = tmp_path / "poisoned.gguf"
    data = bytearray(deep_model.read_bytes())
    for name in model.store.names():
        info = model.store.info(name)
        if len(info.shape) >= 2 and not name.startswith(("blk.2.", "blk.3.")):
            data[info.offset : info.offset + info.n_bytes] = b"\xff" * info.n_bytes
    poisoned.write_bytes(bytes(data))
    h = np.random.default_rng(0).standard_normal((3, model.config.n_embd)).astype(np.float32)
    outs = []
    for path in (deep_model, poisoned):
        m = _load(path)
        stage = CompiledModel(m.config, m.store, m.output_name, m._vec, layers=range(2, 4))
        cache = KVCache(m.config, 8, n_layers=2)
        outs.append(stage.forward_batch([(range(3), cache)], np.empty(0, np.int32), 1, hidden=h, hidden_out=True)[1])
    assert np.isfinite(outs[0]).all()
    np.testing.assert_array_equal(outs[1], outs[0])
    # the check can fail: a stage over a poisoned layer of its own goes NaN
    m = _load(poisoned)
    stage = CompiledModel(m.config, m.store, m.output_name, m._vec, layers=range(1, 3))
    bad = stage.forward_batch([(range(3), KVCache(m.config, 8, n_layers=2))], np.empty(0, np.int32), 1, hidden=h,
                              hidden_out=True)[1]  # fmt: skip
    assert not np.isfinite(bad).all()
    with pytest.raises(ValueError, match="layer range"):
        CompiledModel(m.config, m.store, m.output_name, m._vec, layers=range(3, 7))


def test_hidden_states_must_match_the_tokens(deep_model):
    model = _load(deep_model)
    stage = CompiledModel(model.config, model.store, model.output_name, model._vec, layers=range(1, 3))
    cache = KVCache(model.config, 8, n_layers=2)
    wrong = np.zeros((2, model.config.n_embd), np.float32)
    with pytest.raises(ValueError, match="hidden states"):
        stage.forward_batch([(range(3), cache)], np.empty(0, np.int32), 1, hidden=wrong, hidden_out=True)


def test_stage_errors_travel_to_the_driver_with_the_stage_named(deep_model):
    stages = [Stage(str(deep_model), a, b, i, 2, 1) for i, (a, b) in enumerate([(0, 3), (3, 5)])]
    bad = _message([(0, 30, 5)], [1, 2, 3, 4, 5], [4])  # past the 32-token context
    out = _through_errors(stages, bad)
    assert out["error"].startswith("stage 0 (layers 0-2):"), out


def _through_errors(stages, msg):
    for s in stages:
        msg = s.handle(msg)
    return msg


def test_split_balances_bytes_with_the_head_on_the_last_stage():
    # eight equal layers and a head as large as four of them: the last stage takes fewer layers
    cuts = split_layers([1.0] * 7 + [5.0], 2)
    assert cuts == [(0, 6), (6, 8)]  # 6 vs 2 + 4 (the head)
    assert split_layers([1.0] * 8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ConfigError, match="--stages"):
        split_layers([1.0] * 3, 4)


def test_layer_bytes_put_the_head_last(deep_model):
    model = _load(deep_model)
    per_layer = layer_read_bytes(model.store, 5, model.output_name)
    head = model.store.info(model.output_name).n_bytes
    assert per_layer[-1] - per_layer[0] >= head * 0.9
    assert sum(per_layer) == pytest.approx(
        sum(model.store.info(n).n_bytes for n in model.store.names() if n.startswith("blk.")) + head)


@pytest.mark.parametrize("counts,n", [([1, 1, 1, 1], 2), ([5, 1, 1], 2), ([1, 1, 1], 4), ([3], 2), ([1] * 7, 3)])
def test_micro_batches_cover_every_sequence_in_order(counts, n):
    groups = _micro_batches(counts, n)
    assert [i for g in groups for i in g] == list(range(len(counts)))
    assert all(groups) and len(groups) == min(n, len(counts))


def test_a_session_whose_cache_was_lost_evaluates_its_prompt_again(deep_model):
    """A pipeline whose stages restarted sets its caches' n_past to 0; the session must not trust its token list."""
    from edgellm.runtime.session import Session

    model = _load(deep_model)
    prompt = [1, 5, 9, 2, 7]
    fresh = Session(model, 32).eval_prompt(prompt + [4])
    for again in (prompt + [4], prompt):  # a longer prompt, and the very prompt whose logits are stored
        session = Session(model, 32)
        session.eval_prompt(prompt)
        session.cache.n_past = 0
        got = session.eval_prompt(again)
        assert session.cache.n_past == len(again)
        if again != prompt:
            np.testing.assert_array_equal(got, fresh)
