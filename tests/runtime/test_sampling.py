"""Samplers: each filter on hand-made logits, the chain's order, seeds and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm.errors import ConfigError
from edgellm.runtime.sampling import SamplingParams, make_sampler, min_p, repetition_penalty, top_k, top_p

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03], dtype=np.float32))


def kept(logits: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.isfinite(logits))]


def test_top_k_keeps_the_k_largest():
    assert kept(top_k(LOGITS, 2)) == [0, 1]
    assert kept(top_k(LOGITS, 0)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_smallest_set_reaching_p():
    assert kept(top_p(LOGITS, 0.5)) == [0]
    assert kept(top_p(LOGITS, 0.6)) == [0, 1]
    assert kept(top_p(LOGITS, 0.85)) == [0, 1, 2]


def test_min_p_drops_tokens_below_fraction_of_best():
    assert kept(min_p(LOGITS, 0.2)) == [0, 1, 2]  # threshold 0.1
    assert kept(min_p(LOGITS, 0.0)) == [0, 1, 2, 3, 4]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    out = repetition_penalty(logits, [0, 1, 1], 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0])


def test_greedy_picks_argmax_and_penalty_can_change_it():
    logits = np.array([3.0, 2.9, 0.0], dtype=np.float32)
    assert make_sampler(temperature=0)(logits) == 0
    assert make_sampler(temperature=0, repeat_penalty=1.5)(logits, [0]) == 1


def test_seed_makes_sampling_reproducible_and_follows_distribution():
    logits = np.log(np.array([0.6, 0.3, 0.1], dtype=np.float32))
    draws = [make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=s)(logits) for s in range(3)]
    again = [make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=s)(logits) for s in range(3)]
    assert draws == again
    sampler = make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0)
    counts = np.bincount([sampler(logits) for _ in range(3000)], minlength=3) / 3000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.04)


def test_filters_apply_before_temperature():
    # top_k=1 leaves one token whatever the temperature.
    sampler = make_sampler(temperature=100.0, top_k=1, seed=1)
    assert {sampler(LOGITS) for _ in range(20)} == {0}


@pytest.mark.parametrize("field,value,message", [
    ("temperature", -1.0, "temperature must be >= 0"),
    ("top_p", 0.0, "top_p must be in (0, 1]"),
    ("min_p", 2.0, "min_p must be in [0, 1]"),
    ("top_k", -5, "top_k must be >= 0"),
])  # fmt: skip
def test_bad_settings_are_rejected_with_reason(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("n", [1, 7, 40, 41, 1000, 49152])
def test_kth_largest_is_the_partitions(n):
    """The C heap gives np.partition's k-th largest exactly (ties, -inf from a logit bias, k of 1 and of n), so a
    seeded draw does not change with the build."""
    from edgellm.runtime.sampling import kth_largest

    rng = np.random.default_rng(n)
    for trial in range(4):
        x = rng.standard_normal(n).astype(np.float32)
        if trial >= 1:
            x = np.round(x, 1)  # many ties
        if trial >= 2:
            x[rng.random(n) < 0.3] = -np.inf
        for k in sorted({1, min(n, 2), min(n, 40), max(1, n // 2), n}):
            assert kth_largest(x, k) == np.partition(x, -k)[-k], (n, trial, k)


@pytest.mark.parametrize("n", [1, 2, 7, 40, 41, 1000, 49152])
def test_c_draw_equals_the_numpy_chain(n):
    """The C chain (top-k, top-p, min-p, temperature, one uniform number) picks the token the NumPy functions pick,
    with the same seed, over ties, -inf from a bias or a grammar, top_k off and every filter off or on."""
    from edgellm.kernels import _C

    if _C is None:
        pytest.skip("no C extension in this build")
    rng = np.random.default_rng(n)
    for trial in range(60):
        x = (rng.standard_normal(n) * [0.1, 1.0, 5.0][trial % 3]).astype(np.float32)
        if trial % 4 == 1:
            x = np.round(x, 1)  # ties at the k-th value and in the probabilities
        if trial % 5 == 2:
            x[rng.random(n) < 0.3] = -np.inf
            x[0] = 0.5
        params = dict(temperature=[0.3, 0.8, 1.0, 2.0][trial % 4], top_k=[0, 2, 3, 40, 100][trial % 5],
                      top_p=[1.0, 0.95, 0.5, 0.1][trial // 5 % 4], min_p=[0.0, 0.05, 0.5][trial // 3 % 3], seed=trial)
        fast, reference = make_sampler(**params), make_sampler(**params)
        for _ in range(3):
            assert fast.draw(x) == reference.draw_reference(x), (n, trial, params)


def test_c_draw_refuses_a_row_without_a_finite_logit():
    with pytest.raises(ValueError, match="no token can be sampled"):
        make_sampler(temperature=0.8, seed=0).draw(np.full(8, -np.inf, dtype=np.float32))
