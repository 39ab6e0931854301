"""Pipeline stages as Ray actors on a local cluster: the same tokens as one process, the link accounted for, a
killed stage failing its request and coming back."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from edgellm import LLM
from edgellm.distributed.pipeline import StageFailure
from edgellm.errors import ConfigError
from fixtures.tiny import build_tiny_gguf

PROMPT = [1, 7, 3, 11, 5]


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("pipeline") / "four-layers.gguf", n_layers=4, seed=5,
                           embd_std=2.0)  # fmt: skip


@pytest.fixture(scope="module")
def single(four_layers):
    return LLM(four_layers, n_ctx=64, n_threads=1, pull=False)


@pytest.fixture(scope="module")
def two_stages(four_layers):
    llm = LLM(four_layers, n_ctx=64, n_threads=1, pull=False, stages=2)
    yield llm
    llm.close()


def greedy(llm, n=12):
    return list(llm.generate(PROMPT, n, temperature=0.0))


def test_two_and_four_stages_generate_what_one_process_does(single, two_stages, four_layers):
    expect = greedy(single)
    assert len(expect) == 12
    assert greedy(two_stages) == expect
    layers = [s["layers"] for s in two_stages.model.describe()]
    assert len(layers) == 2 and layers[0][0] == 0 and layers[0][1] == layers[1][0] and layers[1][1] == 4
    four = LLM(four_layers, n_ctx=64, n_threads=1, pull=False, stages=4)
    try:
        assert greedy(four) == expect
        infos = four.model.describe()
        assert [s["layers"] for s in infos] == [[0, 1], [1, 2], [2, 3], [3, 4]]
        assert len({s["pid"] for s in infos}) == 4 and os.getpid() not in {s["pid"] for s in infos}
    finally:
        four.close()


def test_link_bytes_are_one_hidden_state_per_hop_and_token(two_stages):
    model = two_stages.model
    model.reset_stats()
    greedy(two_stages, 8)
    stats = model.stats.to_dict()
    width = two_stages.config.n_embd * 4  # float32 residual stream, the planner's ACTIVATION_BYTES
    assert stats["tokens"] in (7, 8)  # decode steps (and a one-token prompt step: the prompt was cached)
    assert stats["link_bytes_per_token"] == (model.n_stages - 1) * width
    assert len(stats["hop_ms"]) == model.n_stages + 1 and all(ms > 0 for ms in stats["hop_ms"])
    assert all(ms > 0 for ms in stats["stage_ms_per_token"])


def test_batched_sequences_flow_as_micro_batches_with_the_same_logits(single, two_stages):
    ref, staged = single.model, two_stages.model
    prompts = [np.array(PROMPT), np.array([2, 4]), np.array([9, 8, 7])]
    ref_caches = [ref_cache(single) for _ in prompts]
    caches = [staged.new_cache(64) for _ in prompts]
    want = [True, False, True]
    np.testing.assert_array_equal(staged.forward_batch(list(zip(prompts, caches)), want),
                                  ref.forward_batch(list(zip(prompts, ref_caches)), want))  # fmt: skip
    step = [np.array([3]), np.array([4]), np.array([5])]
    np.testing.assert_array_equal(staged.forward_batch(list(zip(step, caches)), [True] * 3),
                                  ref.forward_batch(list(zip(step, ref_caches)), [True] * 3))  # fmt: skip
    assert [c.n_past for c in caches] == [6, 3, 4]


def ref_cache(llm):
    from edgellm.runtime.kv_cache import KVCache

    return KVCache(llm.config, 64)


def test_an_emulated_link_takes_its_time_per_message(four_layers):
    slow = LLM(four_layers, n_ctx=64, n_threads=1, pull=False, stages=2, link_gbps=1e-4)  # 100 kB/s
    try:
        slow.model.reset_stats()
        greedy(slow, 4)
        hop = slow.model.stats.to_dict()["hop_ms"][1]
        width = slow.config.n_embd * 4
        assert hop >= 0.95 * width / 1e-4 / 1e9 * 1e3  # 256 bytes at 100 kB/s: 2.56 ms
    finally:
        slow.close()


def test_link_options_need_stages(four_layers):
    with pytest.raises(ConfigError, match="--stages"):
        LLM(four_layers, n_ctx=64, pull=False, link_gbps=1.0)


def test_a_killed_stage_fails_its_request_and_the_pipeline_comes_back(single, two_stages):
    expect = greedy(single, 40)
    stage = two_stages.model.describe()[1]
    gen = two_stages.generate(PROMPT, 40, temperature=0.0)
    assert next(gen) == expect[0]  # mid-generation: the prompt is in the stages' caches
    os.kill(stage["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(StageFailure, match=rf"stage 1 \(layers {stage['layers'][0]}-3\) died"):
        for _ in gen:
            pass
    assert time.monotonic() - t0 < 30
    assert greedy(two_stages, 40) == expect  # new stages, empty caches: the same tokens again
    assert stage["pid"] not in {s["pid"] for s in two_stages.model.describe()}


def test_plain_actor_calls_between_hosts_give_the_same_tokens_and_fail_alike(single, four_layers):
    """Stages on several hosts talk by plain actor calls; forced here on one host."""
    from edgellm.distributed.pipeline import PipelineModel

    expect = greedy(single, 12)
    staged = PipelineModel(single.model, str(four_layers), 2, 1, transport="calls")
    try:
        assert {s["transport"] for s in staged.describe()} == {"actor calls"}
        cache = staged.new_cache(64)
        logits = staged.forward(np.array(PROMPT), cache)
        got = []
        for _ in range(12):
            got.append(int(logits[0].argmax()))
            logits = staged.forward(np.array([got[-1]]), cache)
        assert got == expect
        os.kill(staged.describe()[0]["pid"], signal.SIGKILL)
        with pytest.raises(StageFailure, match=r"stage 0 \(layers 0-"):
            staged.forward(np.array([got[-1]]), cache)
        assert cache.n_past == 0
    finally:
        staged.close()
