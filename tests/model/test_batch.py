"""Several sequences in one forward pass (continuous batching), and each model's own run context (threads, kernel
path, hooks) when models and generations share a process."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fixtures.tiny import build_tiny_gguf

from edgellm import LLM, kernels
from edgellm.formats.gguf import GGUFFile
from edgellm.model import layers
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore

needs_c = pytest.mark.skipif(kernels._C is None, reason="C extension not built")


def load(path) -> Transformer:
    g = GGUFFile(path)
    return Transformer.from_store(g.metadata, MappedStore(g))


def _sequences(model, rng, cache_type="f32", n_ctx=48):
    """Three sequences at different depths: (history already cached, new tokens of this step)."""
    plan = [(0, 7), (13, 1), (30, 1), (5, 4)]  # a prefill chunk, two decodes, a short chunk after a prefix
    seqs = []
    for past, new in plan:
        tokens = rng.integers(0, model.config.n_vocab, size=past + new)
        seqs.append((tokens, KVCache(model.config, n_ctx, cache_type=cache_type)))
    return [(t, c, past) for (t, c), (past, _) in zip(seqs, plan)]


@needs_c
@pytest.mark.parametrize("fixture, cache_type", [("tiny_llama", "f32"), ("tiny_gemma3", "q8_0"), ("tiny_qwen2", "f16")])
def test_batched_sequences_equal_each_sequence_alone(fixture, cache_type, request):
    """Each sequence of a batch gets the logits and cache rows it gets when run alone: the batch shares weight
    reads, never keys, values or positions. The C kernels round activations row by row, so the only difference
    allowed is the summation order of multi-row dot tiles (float rounding, < 1e-4 of the logits' spread, the
    tolerance the engine's prefill-versus-decode check uses)."""
    model = load(request.getfixturevalue(fixture))
    rng = np.random.default_rng(11)
    alone, batch = [], []
    for tokens, cache, past in _sequences(model, rng, cache_type):
        if past:
            model.forward(tokens[:past], cache, None)
        twin = KVCache(model.config, cache.n_ctx, cache_type=cache_type)
        twin.k[:], twin.v[:], twin.n_past = cache.k, cache.v, cache.n_past
        alone.append(model.forward(tokens[past:], twin, slice(-1, None))[0])
        batch.append((tokens[past:], cache, twin))
    logits = model.forward_batch([(t, c) for t, c, _ in batch], [True] * len(batch))
    for i, ((_, cache, twin), want) in enumerate(zip(batch, alone)):
        assert cache.n_past == twin.n_past
        np.testing.assert_allclose(logits[i], want, atol=1e-4 * want.std(), err_msg=f"sequence {i}")
        if cache_type == "f32":
            np.testing.assert_allclose(cache.k[:, : cache.n_past], twin.k[:, : cache.n_past], atol=1e-5)
        else:  # rounded on store: the same rows up to a rounding step of the stored type
            assert (cache.k[:, : cache.n_past] != twin.k[:, : cache.n_past]).mean() < 0.01
    assert np.array_equal(logits.argmax(1), np.array(alone).argmax(1))


@needs_c
def test_batched_sequences_without_logits_only_fill_their_caches(tiny_llama):
    model = load(tiny_llama)
    a, b = KVCache(model.config, 16), KVCache(model.config, 16)
    out = model.forward_batch([(np.array([1, 2, 3]), a), (np.array([4]), b)], [False, True])
    assert (a.n_past, b.n_past) == (3, 1)
    assert not out[0].any() and out[1].any()
    ref = model.forward(np.array([4]), KVCache(model.config, 16))[0]
    np.testing.assert_allclose(out[1], ref, atol=1e-4 * ref.std())


def test_numpy_path_batches_one_sequence_at_a_time(tiny_llama, reference_path):
    """On the reference path the batch is the sequences run one by one: exactly what each gives alone."""
    model = load(tiny_llama)
    tokens = [np.array([5, 6, 7]), np.array([8])]
    out = model.forward_batch([(t, KVCache(model.config, 16)) for t in tokens], [True, True])
    for row, t in zip(out, tokens):
        np.testing.assert_array_equal(row, model.forward(t, KVCache(model.config, 16))[0])


@needs_c
def test_batched_forward_rejects_a_sequence_past_its_context(tiny_llama):
    from edgellm.errors import BudgetError

    model = load(tiny_llama)
    full = KVCache(model.config, 4)
    full.advance(4)
    with pytest.raises(BudgetError, match="context full"):
        model.forward_batch([(np.array([1]), KVCache(model.config, 4)), (np.array([2]), full)], [True, True])
    with pytest.raises(ValueError, match="token id out of range"):
        model.forward_batch([(np.array([model.config.n_vocab]), KVCache(model.config, 4))], [True])


@needs_c
def test_two_models_keep_their_own_kernel_path_and_threads(tmp_path):
    """Two models in one process, run at once from two threads on different kernel paths and thread counts:
    each gives exactly what it gives alone, and changing the process default afterwards changes neither."""
    paths = kernels.capabilities()["supported"]
    if len(paths) < 2:
        pytest.skip("needs two kernel paths")
    path = build_tiny_gguf(tmp_path / "m.gguf", arch="llama")
    a, b = load(path), load(path)
    a.kernel_path, a.n_threads = paths[0], 1
    b.kernel_path, b.n_threads = paths[-1], 2
    tokens = np.random.default_rng(2).integers(0, a.config.n_vocab, size=9)

    def run(model):
        return model.forward(tokens, KVCache(model.config, 16), slice(None))

    want_a, want_b = run(a), run(b)
    assert not np.array_equal(want_a, want_b), "the two paths should round differently (else the test proves nothing)"
    errors = []

    def loop(model, want):
        for _ in range(20):
            if not np.array_equal(run(model), want):
                errors.append(model.kernel_path)

    threads = [threading.Thread(target=loop, args=(m, w)) for m, w in ((a, want_a), (b, want_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    before = kernels.active_path()
    try:
        kernels.use(paths[-1])
        kernels.set_threads(3)
        np.testing.assert_array_equal(run(a), want_a)
    finally:
        kernels.use(before)
        kernels.set_threads(None)


def test_hooks_belong_to_the_thread_that_set_them():
    """An observer set in one thread (calibration) is not seen by another thread (whose model keeps the C engine)."""
    seen_elsewhere = []
    ready, done = threading.Event(), threading.Event()

    def calibrate():
        with layers.observe_linear_inputs(lambda name, x: None):
            ready.set()
            done.wait(10)

    t = threading.Thread(target=calibrate)
    t.start()
    ready.wait(10)
    seen_elsewhere.append(layers.observing())
    done.set()
    t.join()
    assert seen_elsewhere == [False]
    with layers.observe_linear_inputs(lambda name, x: None):
        assert layers.observing()


def test_one_llm_from_four_threads_gives_each_its_sequential_answer(tiny_llama):
    """Four threads sharing one LLM get, three times over, exactly the greedy text each prompt gets alone."""
    llm = LLM(tiny_llama, n_ctx=64, n_threads=2)
    prompts = ["the cat", "a sea of", "in the", "on a hill the"]
    want = [llm.create_completion(p, max_tokens=12, temperature=0)["choices"][0]["text"] for p in prompts]
    for _ in range(3):
        got = [None] * 4

        def ask(i):
            got[i] = llm.create_completion(prompts[i], max_tokens=12, temperature=0)["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == want


def test_interleaved_generators_each_keep_their_own_sequence(tiny_llama):
    llm = LLM(tiny_llama, n_ctx=64)
    ids = [llm.tokenize("the cat"), llm.tokenize("a sea")]
    want = [list(llm.generate(i, max_tokens=8, temperature=0)) for i in ids]
    gens = [llm.generate(i, max_tokens=8, temperature=0) for i in ids]
    got = [[], []]
    for _ in range(8):
        for k in range(2):
            got[k].append(next(gens[k]))
    assert got == want


@needs_c
@pytest.mark.real_model
def test_the_same_prompt_again_gets_the_same_logits(real_model_path, monkeypatch):
    """The second time a prompt comes, its logits are the ones first computed, bit for bit: with the row-at-a-time
    kernels, re-running its last token alone rounds differently from the batch it was first computed in (on
    SmolLM2 by up to 0.45 in a logit: 8-bit activations turn float rounding into whole quantisation steps), so a
    seeded sample would not repeat."""
    from edgellm.runtime.session import Session

    monkeypatch.setenv("EDGELLM_REPACK", "0")  # the interleaved kernels round alike in any batch (next test)
    model = load(real_model_path("smollm2-135m"))
    session = Session(model, 64)
    ids = [6403, 1980, 253, 655]  # "Once upon a time"
    first = session.eval_prompt(ids)
    session.step(28)  # the cache moves on past the prompt, as a generation does
    np.testing.assert_array_equal(session.eval_prompt(ids), first)
    assert session.timings.n_prompt == 0
    alone = KVCache(model.config, 64)
    model.forward(np.array(ids[:-1]), alone, None)
    rerun = model.forward(np.array(ids[-1:]), alone)[0]
    assert not np.array_equal(rerun, first) or model.path() == "generic", "the check would prove nothing"


@needs_c
@pytest.mark.real_model
def test_with_interleaved_weights_a_token_gets_the_same_logits_in_any_batch(real_model_path):
    """Each (row, token) product of the interleaved kernels is summed in the same order whatever the batch, so a
    token's logits alone, in a prompt, or beside other sequences are the same bits, and a seed repeats under any
    load. (The row-at-a-time kernels differ by up to 0.45, previous test.)"""
    model = load(real_model_path("smollm2-135m"))
    if not model.compiled().packed_bytes:
        pytest.skip(f"the {model.path()} path has no interleaved kernels for this model")
    ids = [6403, 1980, 253, 655, 1034, 28]
    in_prompt = model.forward(np.array(ids), KVCache(model.config, 64), slice(None))
    alone = KVCache(model.config, 64)
    model.forward(np.array(ids[:-1]), alone, None)
    np.testing.assert_array_equal(model.forward(np.array(ids[-1:]), alone)[0], in_prompt[-1])
    others = [KVCache(model.config, 64) for _ in range(3)]
    for k, cache in enumerate(others):
        model.forward(np.array(ids[: 2 + k]), cache, None)
    alone.truncate(len(ids) - 1)
    batch = model.forward_batch([(np.array(ids[-1:]), alone)] + [(np.array([9]), c) for c in others], [True] * 4)
    np.testing.assert_array_equal(batch[0], in_prompt[-1])
