"""The llama-cpp-python-shaped API on a tiny model: result shapes, streaming, stop strings, prefix reuse."""

from __future__ import annotations

import pytest

from edgellm import LLM
from edgellm.runtime.stops import stop_prefix_len as _stop_prefix_len
from edgellm.errors import BudgetError, ConfigError


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, n_ctx=64)


def test_completion_has_openai_shape(llm):
    out = llm.create_completion("the sea", max_tokens=4, temperature=0)
    assert out["object"] == "text_completion"
    choice = out["choices"][0]
    assert choice["finish_reason"] in ("length", "stop") and isinstance(choice["text"], str)
    assert out["usage"]["prompt_tokens"] == len(llm.tokenize("the sea"))
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_streamed_chunks_concatenate_to_the_full_text(llm):
    full = llm.create_completion("the sea", max_tokens=10, temperature=0)["choices"][0]["text"]
    chunks = list(llm.create_completion("the sea", max_tokens=10, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == full
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_text_and_is_not_emitted(llm):
    full = llm.create_completion("the sea", max_tokens=12, temperature=0)["choices"][0]["text"]
    stop = full[3:5]
    assert stop, "the tiny model should produce some text"
    out = llm.create_completion("the sea", max_tokens=12, temperature=0, stop=[stop])
    assert out["choices"][0]["text"] == full[: full.index(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"
    streamed = llm.create_completion("the sea", max_tokens=12, temperature=0, stop=stop, stream=True)
    assert "".join(c["choices"][0]["text"] for c in streamed) == full[: full.index(stop)]


def test_stop_prefix_is_held_back_until_decided():
    assert _stop_prefix_len("hello wor", ["world"]) == 3
    assert _stop_prefix_len("hello", ["xyz"]) == 0


def test_chat_completion_uses_the_template_and_streams(llm):
    messages = [{"role": "user", "content": "hi"}]
    assert llm.apply_chat_template(messages).endswith("<|im_start|>assistant\n")
    out = llm.create_chat_completion(messages, max_tokens=3, temperature=0)
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    chunks = list(llm.create_chat_completion(messages, max_tokens=3, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == out["choices"][0]["message"]["content"]


def test_second_prompt_reuses_the_cached_prefix(llm):
    llm.create_completion("the sea and the sand", max_tokens=1, temperature=0)
    n_first = llm.session.timings.n_prompt
    llm.create_completion("the sea and the sand and more", max_tokens=1, temperature=0)
    assert llm.session.timings.n_prompt < n_first + 5  # only the new tail was evaluated


def test_generate_yields_ids_and_detokenize_gives_bytes(llm):
    ids = llm.tokenize(b"the sea")
    out = list(llm.generate(ids, max_tokens=5, temp=0))
    assert len(out) == 5 and isinstance(llm.detokenize(out), bytes)


def test_bad_requests(llm, tiny_llama):
    with pytest.raises(ConfigError, match="unknown sampling option"):
        list(llm.generate([1, 2], max_tokens=2, temprature=0.5))
    with pytest.raises(BudgetError, match="more than the context size 64"):
        llm.create_completion("the sea " * 40, max_tokens=1)
    with pytest.raises(ConfigError, match="n_ctx and n_batch must be positive"):
        LLM(tiny_llama, n_ctx=0)
