"""Partition planner on cases worked out by hand."""

import pytest

from edgellm.errors import ConfigError
from edgellm.planner.partition import Accelerator, LayerCost, Link, best, pipeline, tensor_parallel

GB = 1e9


def four_layers(weight_gb=1.0):
    return [LayerCost(weight_gb * GB, weight_gb * GB, 0.0) for _ in range(4)]


def accs(n, bw=10.0, cap=None, gflops=None):
    return [Accelerator(f"a{i}", bw, cap, gflops) for i in range(n)]


def test_pipeline_decode_is_the_sum_of_stages_plus_one_hop_per_boundary():
    # 4 layers of 1 GB at 10 GB/s: 0.1 s each. Two stages of two layers: 0.2 s each.
    # One boundary: 10 us latency + 4 kB / 1 GB/s = 4 us.
    p = pipeline(four_layers(), accs(2), Link(1.0, 10.0), hidden_bytes=4000)
    assert p.stage_layers == [[0, 1], [2, 3]]
    assert p.stage_seconds == pytest.approx([0.2, 0.2])
    assert p.link_seconds == pytest.approx(14e-6)
    assert p.seconds == pytest.approx(0.4 + 14e-6)
    assert p.link_bytes == 4000
    assert p.memory_gb == pytest.approx([2.0, 2.0])


def test_tensor_parallel_decode_splits_every_layer_and_pays_two_all_reduces_per_layer():
    # each accelerator streams half of each layer: 0.05 s per layer, 0.2 s in all.
    # ring all-reduce of 4 kB among 2: 2*(2-1)*10 us + 2*(1/2)*4 kB / 1 GB/s = 20 us + 4 us = 24 us,
    # two per layer, four layers: 192 us.
    p = tensor_parallel(four_layers(), accs(2), Link(1.0, 10.0), hidden_bytes=4000)
    assert p.link_seconds == pytest.approx(192e-6)
    assert p.seconds == pytest.approx(0.2 + 192e-6)
    assert p.link_bytes == 2 * 4 * 2 * 1 * 4000
    assert best([p, pipeline(four_layers(), accs(2), Link(1.0, 10.0), 4000)]).strategy == "tensor"


def test_a_slow_link_makes_pipeline_the_better_choice():
    # 1 ms latency: tensor parallel pays 8 all-reduces x 2 ms = 16 ms + 0.2 s compute... make layers tiny
    layers = four_layers(0.001)  # 1 MB per layer: 0.1 ms at 10 GB/s
    link = Link(1.0, 1000.0)
    tp = tensor_parallel(layers, accs(2), link, 4000)
    pp = pipeline(layers, accs(2), link, 4000)
    assert tp.seconds == pytest.approx(0.2e-3 + 8 * (2e-3 + 4e-6))
    assert pp.seconds == pytest.approx(0.4e-3 + 1e-3 + 4e-6)
    assert best([tp, pp]).strategy == "pipeline"
    assert tp.bottleneck.startswith("link")


def test_pipeline_respects_capacity():
    # layer 0 is 3 GB, the rest 1 GB; 3.5 GB per accelerator: only the split [0] | [1, 2, 3] fits
    layers = [LayerCost(3 * GB, 3 * GB, 0.0)] + [LayerCost(GB, GB, 0.0)] * 3
    p = pipeline(layers, accs(2, cap=3.5), Link(10.0), 4000)
    assert p.stage_layers == [[0], [1, 2, 3]]
    assert p.fits
    tight = pipeline(layers, accs(2, cap=2.5), Link(10.0), 4000)
    assert not tight.fits


def test_four_stage_pipeline_balances_and_prefill_micro_batches_overlap():
    layers = [LayerCost(GB, GB, 0.0)] * 8
    p = pipeline(layers, accs(4), Link(10.0, 0.0), 4000)
    assert [len(s) for s in p.stage_layers] == [2, 2, 2, 2]
    # prefill of 512 tokens in 4 micro-batches: (4 + 3) beats of (0.2 s / 4 + hop); hop = 128 x 4 kB / 10 GB/s
    hop = 128 * 4000 / 10e9
    pre = pipeline(layers, accs(4), Link(10.0, 0.0), 4000, tokens=512, micro_batches=4)
    assert pre.seconds == pytest.approx(7 * 0.05 + 7 * hop)


def test_compute_bound_layers_use_the_flop_rate():
    a = Accelerator("a", 10.0, None, 100.0)  # 100 GFLOP/s
    assert a.seconds(1 * GB, 50e9) == pytest.approx(0.5)  # 0.1 s of bytes, 0.5 s of FLOPs


def test_bad_partitions_are_clear_errors():
    with pytest.raises(ConfigError, match="cannot pipeline"):
        pipeline(four_layers()[:1], accs(2), Link(1.0), 4000)
    with pytest.raises(ConfigError, match="identical"):
        tensor_parallel(four_layers(), [Accelerator("a", 10, None, None), Accelerator("b", 20, None, None)], Link(1.0), 4000)


def test_a_given_split_is_costed_as_is_and_the_token_goes_back():
    # the run's split: one layer, then three (0.1 s and 0.3 s); the sampled token (4 bytes) returns to stage 0
    p = pipeline(four_layers(), accs(2), Link(1.0, 10.0), 4000, feedback_bytes=4, cuts=(1,))
    assert p.stage_layers == [[0], [1, 2, 3]]
    assert p.stage_seconds == pytest.approx([0.1, 0.3])
    assert p.link_seconds == pytest.approx(14e-6 + 10.004e-6)
    assert p.link_bytes == 4000  # hidden states only: the planner's link bytes per token
    for bad in [(0,), (4,), (2, 3)]:
        with pytest.raises(ConfigError, match="cuts"):
            pipeline(four_layers(), accs(2), Link(1.0), 4000, cuts=bad)
