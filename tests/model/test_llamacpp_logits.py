"""edgellm's logits against llama.cpp's on tiny random-weight models, one per architecture and RoPE variant
(fixtures from benchmarks/llamacpp_logits.py, llama-cpp-python 0.3.36, F32 KV cache, one prefill batch).

The bound is llama.cpp's own spread on the same file and prompt: the largest logit difference between that
reference and llama.cpp's other runs (2 threads, token by token, its default F16 KV cache; the first two are
bit-identical, so the F16 cache sets it). Every C kernel path and the NumPy path that rounds activations as the
kernels do must stay within it; the float-activation path (ref-f32) is not llama.cpp's arithmetic and is
checked by the C-vs-NumPy tests instead. Negative controls show the check catches a wrong RoPE variant.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from edgellm import kernels
from edgellm.formats.gguf import GGUFFile
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import KVCache
from edgellm.runtime.store import MappedStore
from fixtures.oracle_cases import CASES, HF_CASES, N_CTX, build_case, build_hf_case

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llamacpp_logits"
PATHS = ["ref", *(kernels.capabilities()["supported"])]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oracle")
    cache = {}

    def get(name):
        if name not in cache:
            fixture = np.load(FIXTURES / f"{name}.npz")
            build = build_hf_case if name.startswith("hf-") else build_case
            path = build(name.removeprefix("hf-"), tmp / f"{name}.gguf")
            assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fixture["sha256"]), (
                f"{name}: the rebuilt GGUF differs from the one llama.cpp saw; re-run benchmarks/llamacpp_logits.py"
            )
            g = GGUFFile(path)
            cache[name] = (Transformer.from_store(g.metadata, MappedStore(g)), fixture, g)
        return cache[name]

    return get


def _logits(model: Transformer, tokens: np.ndarray, path: str) -> np.ndarray:
    before = kernels.active_path()
    kernels.use(path)
    try:
        return model.forward(tokens, KVCache(model.config, N_CTX), slice(None))
    finally:
        kernels.use(before)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", [*CASES, *(f"hf-{name}" for name in HF_CASES)])
def test_logits_match_llama_cpp(built, name, path):
    """`hf-NAME`: the case written back as a Hugging Face directory and converted by edgellm (F32 weights), so
    llama.cpp loads edgellm's conversion of every architecture's config.json and tokenizer.json."""
    model, fixture, _ = built(name)
    got = _logits(model, fixture["tokens"], path)
    worst = float(np.abs(got - fixture["logits"]).max())
    spread = float(fixture["spread"])
    assert worst <= spread, f"{name} on {path}: max |logit difference| {worst:.3f} > llama.cpp's spread {spread:.3f}"
    assert (got.argmax(axis=1) == fixture["logits"].argmax(axis=1)).mean() >= 0.9


@pytest.mark.parametrize("name", [*CASES, *(f"hf-{name}" for name in HF_CASES)])
def test_tokens_match_llama_cpp(built, name):
    """The file's tokenizer (for `hf-*` the one edgellm converted from tokenizer.json) splits a text with
    spaces, newlines, accents and special-token text as llama.cpp does."""
    from edgellm.tokenizer import Tokenizer

    _, fixture, gguf = built(name)
    tokenizer = Tokenizer.from_metadata(gguf.metadata)
    assert tokenizer.encode(str(fixture["text"]), add_special=True, parse_special=True) == fixture["text_ids"].tolist()


@pytest.mark.parametrize(
    "name, wrong",
    [
        ("llama-rope-freqs", dict(rope_factors=False)),  # Llama 3's rope_freqs ignored
        ("llama-linear", dict(rope_scale=1.0)),  # linear scaling ignored
        ("llama-yarn", dict(rope_ext_factor=0.0, rope_mscale=1.0)),  # YaRN read as plain linear
        ("smollm3", dict(no_rope_layers=())),  # RoPE on every layer
        ("phi3", dict(n_ctx_orig=1 << 20)),  # LongRoPE's short factors where llama.cpp takes the long ones
        ("phi3", dict(rope_mscale=1.0)),  # LongRoPE's attention factor ignored
        ("gemma3", dict(rope_base_swa=None)),  # sliding layers on the global base
        ("qwen3", dict(rope_neox=False)),  # adjacent pairs instead of halves
        ("qwen3moe", dict(n_expert_used=1)),  # one expert per token instead of two
    ],
)
def test_the_check_fails_on_a_wrong_model(built, name, wrong):
    model, fixture, gguf = built(name)
    broken = Transformer(dataclasses.replace(model.config, **wrong), MappedStore(gguf))
    got = _logits(broken, fixture["tokens"], "auto")
    assert np.abs(got - fixture["logits"]).max() > float(fixture["spread"])


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_model_top20_logits_match_llama_cpp(real_model_path, name):
    """3 prompts x 32 positions: at llama.cpp's 20 most likely next tokens, edgellm's logits, and the log-sum-exp
    over the whole vocabulary, within llama.cpp's own spread on the same prompts (its F16-cache run against
    its F32-cache reference). Every C path, one prefill batch as llama.cpp ran it."""
    fixture = np.load(FIXTURES / f"{name}.npz")
    path = real_model_path(name)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == str(fixture["sha256"])
    g = GGUFFile(path)
    model = Transformer.from_store(g.metadata, MappedStore(g))
    spread = float(fixture["spread"])
    for kernel_path in kernels.capabilities()["supported"]:
        for tokens, top_ids, top_logits, lse in zip(fixture["tokens"], fixture["top_ids"], fixture["top_logits"], fixture["lse"]):
            got = _logits(model, tokens, kernel_path).astype(np.float64)
            ours_top = np.take_along_axis(got, top_ids, axis=1)
            mx = got.max(axis=1, keepdims=True)
            ours_lse = mx[:, 0] + np.log(np.exp(got - mx).sum(axis=1))
            assert np.abs(ours_top - top_logits).max() <= spread, (name, kernel_path)
            assert np.abs(ours_lse - lse).max() <= spread, (name, kernel_path)
