"""Hugging Face input for every architecture: a tiny GGUF written back as the HF directory it would come from
(tests/fixtures/hf_export.py), converted by edgellm, gives the GGUF's logits and tokens. That llama.cpp loads
the converted files and agrees is tests/model/test_llamacpp_logits.py (`hf-*` cases)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgellm.api import LLM
from edgellm.formats.gguf import GGUFFile
from edgellm.runtime.kv_cache import KVCache
from fixtures.oracle_cases import HF_CASES, build_case, build_hf_case, export_case, prompt

TEXT = "the fox ate the sandwich in Paris, then\n  sat on a mat. <|im_end|> <eos>"


@pytest.mark.parametrize("name", HF_CASES)
def test_converted_model_gives_the_original_logits_and_tokens(name, tmp_path, reference_path):
    src = LLM(str(build_case(name, tmp_path / "src.gguf")), n_ctx=64)
    out = LLM(str(build_hf_case(name, tmp_path / "hf.gguf")), n_ctx=64)
    tokens = np.array(prompt(name, src.config.n_vocab))
    want = src.model.forward(tokens, KVCache(src.config, 64), slice(None))
    got = out.model.forward(tokens, KVCache(out.config, 64), slice(None))
    # the same float32 weights (Gemma's norms through -1 and +1: one rounding each) and the same arithmetic
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert out.tokenize(TEXT, special=True) == src.tokenize(TEXT, special=True)


def test_sentencepiece_style_vocabulary_becomes_a_llama_vocabulary(tmp_path):
    out = GGUFFile(build_hf_case("gemma3", tmp_path / "g.gguf")).metadata
    tokens, types = out["tokenizer.ggml.tokens"], out["tokenizer.ggml.token_type"]
    assert out["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in out
    assert all(types[i] == 6 for i, t in enumerate(tokens) if t.startswith("<0x"))  # byte fallback tokens
    assert types[tokens.index("<bos>")] == 3 and out["tokenizer.ggml.add_space_prefix"] is False
    scores = out["tokenizer.ggml.scores"]
    assert scores[tokens.index("▁t")] > scores[tokens.index("▁a")]  # earlier merge, higher score


def test_byte_level_vocabulary_keeps_its_merges_and_pre_tokenizer(tmp_path):
    out = GGUFFile(build_hf_case("qwen3", tmp_path / "q.gguf")).metadata
    assert out["tokenizer.ggml.model"] == "gpt2" and out["tokenizer.ggml.pre"] == "qwen2"
    assert "tokenizer.ggml.scores" not in out and len(out["tokenizer.ggml.merges"]) == 8


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path):
    from fixtures.oracle_cases import CASES

    out = GGUFFile(build_hf_case("llama-rope-freqs", tmp_path / "l.gguf"))
    want = CASES["llama-rope-freqs"]["extra_tensors"]["rope_freqs.weight"]
    np.testing.assert_array_equal(out.raw("rope_freqs.weight").view(np.float32), want)
    assert not any(k.startswith("llama.rope.scaling") for k in out.metadata)


def test_unsupported_rope_scaling_is_named(tmp_path, capsys):
    from edgellm.cli.main import main

    d = export_case("llama", tmp_path / "hf")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}))
    assert main(["quantize", str(d), str(tmp_path / "o.gguf"), "--type", "F16"]) == 1
    assert "rope_scaling type 'dynamic' is not supported" in capsys.readouterr().err
