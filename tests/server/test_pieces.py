"""The server's pieces without HTTP: tool-call parsing, stop strings, the grammar constraint, and the candidate
sampler against the whole-vocabulary filter chain it replaces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgellm.runtime.sampling import SamplingParams, _probs, make_sampler, min_p, top_k, top_p
from edgellm.runtime.stops import StopText


def test_tool_calls_are_parsed_from_the_hermes_form():
    from edgellm.server.app import _tool_calls

    text = 'ok <tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call> and ' \
           '<tool_call>{"name": "time", "arguments": "{}"}</tool_call><tool_call>{bad json}</tool_call>'
    calls = _tool_calls(text)
    assert [c["function"]["name"] for c in calls] == ["weather", "time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert calls[1]["function"]["arguments"] == "{}" and calls[0]["type"] == "function"
    assert _tool_calls("no calls here") == []


def test_tools_on_a_template_without_them_are_refused(tiny_server):
    code, body = tiny_server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
    assert code == 400 and "does not support tools" in body["error"]["message"]


def test_stop_text_holds_back_possible_stops_and_never_emits_them():
    s = StopText(["END", "xyz"])
    out = [s.feed(p) for p in ["hello E", "N", "D more"]]
    assert "".join(out) == "hello " and s.stopped
    s = StopText(["END"])
    assert s.feed("abc EN") == "abc " and s.feed("!") == "EN!" and s.flush() == ""
    s = StopText(["END"])
    assert s.feed("tail E") == "tail " and s.flush() == "E"


@pytest.mark.parametrize("k, p, m, temp", [(40, 0.95, 0.05, 0.8), (0, 1.0, 0.0, 1.0), (5, 0.5, 0.0, 1.5), (1000, 0.99, 0.1, 0.3)])
def test_candidate_sampler_draws_what_the_whole_vocabulary_chain_draws(k, p, m, temp):
    """The filters and the draw run on the top-k candidates only; the token drawn for each seed must be the one the
    original chain over the whole vocabulary (top_k -> top_p -> min_p -> temperature) draws."""
    logits = (np.random.default_rng(4).standard_normal(5000) * 3).astype(np.float32)
    logits[7] = -np.inf  # a banned token stays banned
    for seed in range(200):
        got = make_sampler(SamplingParams(temperature=temp, top_k=k, top_p=p, min_p=m, seed=seed)).draw(logits)
        probs = _probs(min_p(top_p(top_k(logits, k), p), m) / temp)
        assert got == int(np.random.default_rng(seed).choice(probs.size, p=probs)) and got != 7


def test_grammar_mask_follows_a_schema(tiny_llama):
    pytest.importorskip("llguidance")
    from edgellm import LLM
    from edgellm.server.grammar import Grammars

    llm = LLM(tiny_llama, n_ctx=64)
    grammars = Grammars(llm.tokenizer)
    assert grammars.constraint({"type": "text"}) is None
    c = grammars.constraint({"type": "json_schema", "json_schema": {"schema": {"enum": ["yes", "no"]}}})
    allowed = c.allowed()
    pieces = {llm.tokenizer.token_bytes(int(t)) for t in np.flatnonzero(allowed)}
    assert pieces and all(b'"'.startswith(p) or p.startswith(b'"') for p in pieces)  # a JSON string starts
    text, done = b"", False
    while not done:  # always the first allowed token: the constraint alone must spell a valid answer
        token = int(np.flatnonzero(c.allowed())[0])
        text += llm.tokenizer.token_bytes(token)
        done = c.consume(token)
    assert json.loads(text) in ("yes", "no")
    from edgellm.errors import ConfigError

    with pytest.raises(ConfigError, match="response_format"):
        grammars.constraint({"type": "json_schema", "json_schema": {"schema": {"type": "nonsense-type"}}})
