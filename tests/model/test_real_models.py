"""Real packaged models against llama.cpp's known-good outputs (tests/fixtures/llamacpp_greedy.json).

Greedy decoding from the same GGUF must give llama.cpp's tokens. llama.cpp multiplies with 8-bit quantized
activations and keeps an F16 cache, so the two drift apart after a near-tie; we compare the first tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgellm.api import LLM

GOLDEN = json.loads((Path(__file__).parent.parent / "fixtures" / "llamacpp_greedy.json").read_text())["models"]
N_COMPARE = 12


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def llm(request, real_model_path):
    return LLM(real_model_path(request.param), n_ctx=256), request.param


@pytest.mark.real_model
def test_greedy_tokens_match_llama_cpp(llm):
    model, name = llm
    for case in GOLDEN[name]:
        ids = model.tokenize(case["prompt"], add_bos=True, special=True)
        got = list(model.generate(ids, max_tokens=N_COMPARE, temperature=0.0))
        assert got == case["ids"][:N_COMPARE], (case["prompt"], model.detokenize(got))


@pytest.mark.real_model
def test_prefill_equals_decode_on_real_model(llm):
    model, _ = llm
    from edgellm.runtime.kv_cache import KVCache

    ids = np.asarray(model.tokenize("The quick brown fox jumps over the lazy dog", add_bos=True))
    prefill = model.model.forward(ids, KVCache(model.config, 64), slice(None))
    cache = KVCache(model.config, 64)
    decode = np.stack([model.model.forward(ids[i : i + 1], cache)[0] for i in range(len(ids))])
    np.testing.assert_allclose(decode, prefill, rtol=1e-3, atol=1e-3)
