"""Perplexity follows llama-perplexity: windows, BOS replacement, second-half scoring, stderr."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgellm.errors import ConfigError
from edgellm.eval.perplexity import chunk_nll, perplexity
from edgellm.formats.gguf import GGUFFile
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore


@pytest.fixture(scope="module")
def model(tiny_llama):
    g = GGUFFile(tiny_llama)
    return Transformer.from_store(g.metadata, MappedStore(g))


def direct_nll(model, chunk):
    logits = model.forward(chunk, KVCache(model.config, len(chunk)), slice(None)).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    first = len(chunk) // 2
    return -logp[np.arange(first, len(chunk) - 1), chunk[first + 1 :]]


def test_chunk_scores_second_half_and_batches_agree(model):
    chunk = np.random.default_rng(0).integers(0, model.config.n_vocab, size=24)
    expected = direct_nll(model, chunk)
    assert len(expected) == 24 - 1 - 12
    np.testing.assert_allclose(chunk_nll(model, chunk), expected, rtol=1e-5)
    np.testing.assert_allclose(chunk_nll(model, chunk, n_batch=5), expected, rtol=1e-4)


def test_perplexity_combines_windows_and_replaces_bos(model):
    tokens = np.random.default_rng(1).integers(3, model.config.n_vocab, size=70)
    result = perplexity(model, tokens, n_ctx=16, bos_id=1)
    assert result.n_chunks == 4 and result.n_scored == 4 * 7
    nll = np.concatenate([direct_nll(model, np.concatenate([[1], tokens[c * 16 + 1 : (c + 1) * 16]]))
                          for c in range(4)])  # fmt: skip
    assert math.isclose(math.log(result.ppl), nll.mean(), rel_tol=1e-6)
    assert math.isclose(result.ppl_stderr, math.sqrt(nll.var() / (len(nll) - 1)) * result.ppl, rel_tol=1e-4)
    assert perplexity(model, tokens, n_ctx=16, n_chunks=2).n_chunks == 2


def test_text_shorter_than_one_window(model):
    with pytest.raises(ConfigError, match="the text has 10 tokens, fewer than one window of 16"):
        perplexity(model, np.arange(10), n_ctx=16)
