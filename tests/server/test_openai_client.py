"""The official `openai` client against a live `edgellm serve` on loopback: what users point at it."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key or "none", max_retries=0, timeout=120)


def test_models_lists_the_served_file(tiny_server):
    models = client(tiny_server).models.list()
    assert [m.id for m in models.data] == ["tiny-llama.gguf"]


def test_chat_and_completions_streamed_and_not_agree(tiny_server):
    """A streamed answer is the non-streamed one cut in pieces: one stable id, a role chunk first, a
    finish_reason chunk, the usage chunk when asked for, then the end."""
    c = client(tiny_server)
    messages = [{"role": "user", "content": "the cat sat"}]
    whole = c.chat.completions.create(model="x", messages=messages, max_tokens=12, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens > 0 and whole.usage.total_tokens == whole.usage.prompt_tokens + 12
    chunks = list(c.chat.completions.create(model="x", messages=messages, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    assert len({ch.id for ch in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content

    done = c.completions.create(model="x", prompt="the cat", max_tokens=10, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens == 10
    pieces = list(c.completions.create(model="x", prompt="the cat", max_tokens=10, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == done.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


@pytest.mark.real_model
def test_seed_reproduces_a_sampled_answer(smollm2_server):
    """(A tiny random model's logits are too peaked to sample anything but its argmax: the real model.)"""
    c = client(smollm2_server)
    ask = dict(model="x", prompt="Once upon a time", max_tokens=16, temperature=1.0, top_p=1.0,
               extra_body={"top_k": 0, "min_p": 0.0})  # llama.cpp's sampler fields ride in extra_body
    a = c.completions.create(seed=7, **ask).choices[0].text
    b = c.completions.create(seed=7, **ask).choices[0].text
    others = {c.completions.create(seed=s, **ask).choices[0].text for s in (8, 9, 10)}
    assert a == b
    assert others - {a}, "different seeds should give different samples"


def test_stop_strings_cut_the_answer(tiny_server):
    c = client(tiny_server)
    full = c.completions.create(model="x", prompt="the", max_tokens=24, temperature=0).choices[0].text
    stop = full[5:8]
    assert len(stop) == 3
    cut = c.completions.create(model="x", prompt="the", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = c.completions.create(model="x", prompt="the", max_tokens=24, temperature=0, stop=stop, stream=True)
    assert "".join(p.choices[0].text for p in streamed) == full[: full.index(stop)]


def test_logprobs_and_logit_bias(tiny_server):
    c = client(tiny_server)
    r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                  temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    entries = r.choices[0].logprobs.content
    assert len(entries) == 4
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy: the best
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
    token = tiny_server.post("/tokenize", {"content": "the"})[1]["tokens"][-1]
    piece = tiny_server.post("/detokenize", {"tokens": [token]})[1]["content"]
    forced = c.completions.create(model="x", prompt="a", max_tokens=3, temperature=0, logit_bias={str(token): 100})
    assert forced.choices[0].text == piece * 3


def test_json_modes_constrain_even_a_random_model(tiny_server):
    """A random model writes JSON that fits the schema when decoding is constrained (a finite schema, so it must
    finish); in json_object mode whatever it wrote so far is the start of a JSON object."""
    c = client(tiny_server)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["s", "m", "l"]}},
              "required": ["ok", "size"], "additionalProperties": False}  # fmt: skip
    r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "a person"}], max_tokens=200,
                                  temperature=0, response_format={"type": "json_schema",
                                  "json_schema": {"name": "t", "schema": schema}})  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    answer = json.loads(r.choices[0].message.content)
    assert set(answer) == {"ok", "size"} and isinstance(answer["ok"], bool) and answer["size"] in "sml"
    free = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "a"}], max_tokens=40,
                                     temperature=0, response_format={"type": "json_object"})  # fmt: skip
    text = free.choices[0].message.content
    assert text.lstrip().startswith("{")
    if free.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "population_millions": {"type": "number"},
                   "is_capital": {"type": "boolean"}},
    "required": ["city", "population_millions", "is_capital"],
    "additionalProperties": False,
}  # fmt: skip


@pytest.mark.real_model
def test_json_schema_answer_validates(smollm2_server):
    jsonschema = pytest.importorskip("jsonschema")
    r = client(smollm2_server).chat.completions.create(
        model="x", temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Give the capital of France as JSON with its population."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
    )  # fmt: skip
    answer = json.loads(r.choices[0].message.content)
    jsonschema.validate(answer, SCHEMA)
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.real_model
def test_real_model_answers_in_stream_and_whole(smollm2_server):
    c = client(smollm2_server)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = c.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0)
    streamed = c.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == whole.choices[0].message.content
    assert whole.usage.completion_tokens > 0


def test_errors_are_openai_errors(tiny_server):
    c = client(tiny_server)
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model="x", prompt="the", max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.completions.create(model="x", prompt="the", temperature=5)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        c.completions.create(model="x", prompt=[1, 2, 10**6])
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="x", input="the")


def test_logprobs_under_a_grammar_are_finite_json(tiny_server):
    """Tokens the grammar rules out have no log-probability to report: they are left out, never -Infinity."""
    code, body = tiny_server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "yes or no"}], "max_tokens": 8, "temperature": 0, "logprobs": True,
        "top_logprobs": 20, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "boolean"}}}})
    assert code == 200, body
    for entry in body["choices"][0]["logprobs"]["content"]:
        assert 1 <= len(entry["top_logprobs"]) < 20 and all(t["logprob"] > -1e30 for t in entry["top_logprobs"])


def test_completion_logprobs_have_the_legacy_shape(tiny_server):
    r = client(tiny_server).completions.create(model="x", prompt="the", max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    assert all(len(top) <= 2 for top in lp.top_logprobs)
