"""The fuzzing harness: every corpus input (each once failed) replayed under the fuzzer's caps, a short fuzzing slice
of every target, the harness catching each kind of failure, and one test per bug the fuzzer found.

Replays and slices run in the harness's capped child processes: a signal, an exception outside edgellm's errors,
a MemoryError or an input over 1 s fails the test.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from edgellm.chat_template import render_chat
from edgellm.errors import ConfigError, FormatError, UnsupportedError
from edgellm.fuzz import ALL, fuzz, replay
from edgellm.fuzz.gguf_doc import spm_vocab, tiny_model
from edgellm.fuzz.runner import corpus_files
from edgellm.fuzz.targets import _HF_CONFIG, _safetensors_seed, safetensors_bytes
from edgellm.model.registry import model_config
from edgellm.quant.hf import HFSource
from edgellm.tokenizer import Tokenizer

CORPUS = Path(__file__).parent / "corpus"
SLICE_RUNS = 300


def _report(summary) -> str:
    return "; ".join(f"{n} x {sig}: {summary.examples[sig]}" for sig, n in summary.by_failure.items())


@pytest.mark.parametrize("target", ALL)
def test_corpus_replays_clean(target):
    files = corpus_files(CORPUS, target)
    summary = replay(target, files)
    assert summary.executions == len(files)
    assert summary.failures == 0, _report(summary)


@pytest.mark.parametrize("target", ALL)
def test_short_slice(target, tmp_path):
    summary = fuzz(target, SLICE_RUNS, seed=20240615, corpus=None)
    assert summary.executions == SLICE_RUNS
    assert summary.failures == 0, _report(summary)


def test_harness_catches_every_kind_of_failure():
    inputs = {b"ok": None, b"edgellm-error": None, b"raise": "exception", b"alloc": "memory", b"loop": "timeout",
              b"slow-in-c": "hang", b"segv": "signal", b"exit": "exit"}  # fmt: skip
    from edgellm.fuzz.runner import Summary, run_inputs

    summary = run_inputs("canary", list(inputs), Summary("canary", None), corpus=None)
    kinds = sorted(sig.split(" | ")[0] for sig in summary.by_failure)
    assert kinds == sorted(k for k in inputs.values() if k)
    assert summary.executions == len(inputs)
    assert 0 < summary.memory_cap_mb - summary.baseline_mb <= 256


# -- bugs the fuzzer found ----------------------------------------------------------------------------------------


def _spm_metadata(**changes) -> dict:
    meta = {kv.key: (kv.value[1] if isinstance(kv.value, tuple) else kv.value) for kv in spm_vocab()}
    meta["tokenizer.ggml.scores"] = np.asarray(meta["tokenizer.ggml.scores"], dtype=np.float32)
    meta["tokenizer.ggml.token_type"] = np.asarray(meta["tokenizer.ggml.token_type"], dtype=np.int32)
    for key, value in changes.items():
        meta[f"tokenizer.{key}"] = value
    return meta


def test_sentencepiece_vocabulary_without_byte_tokens_encodes_unknown_characters():
    """'日' exists only inside the merge of the token '日本'; without <0xXX> tokens it was a KeyError."""
    meta = {kv.key: (kv.value[1] if isinstance(kv.value, tuple) else kv.value) for kv in spm_vocab(byte_tokens=False)}
    tok = Tokenizer.from_metadata(meta)
    assert tok.encode("日", add_special=False) == [tok.unk_id]
    assert tok.encode("日本", add_special=False) == [tok.token_id("日本")]


@pytest.mark.parametrize(
    "key, value",
    [
        ("ggml.pre", np.array([1, 2])),  # truth value of an array
        ("ggml.tokens", np.arange(10, dtype=np.int32)),  # len() of an integer
        ("ggml.merges", 7),  # not iterable
        ("ggml.token_type", ["a"] * 300),  # int('a')
        ("ggml.token_type", np.full(300, 2**40, dtype=np.int64)),  # OverflowError
        ("ggml.scores", [math.inf, "x"] * 150),  # mixed
        ("ggml.bos_token_id", "<|im_end|>"),  # int('<|im_end|>')
        ("ggml.eos_token_id", math.nan),  # int(nan)
        ("ggml.unknown_token_id", np.array([1, 2])),  # int(array)
        ("ggml.add_bos_token", np.array([True, False])),  # bool(array)
        ("chat_template", 5),
    ],
)
def test_tokenizer_metadata_of_the_wrong_type_is_a_format_error(key, value):
    with pytest.raises(FormatError, match=key.split(".")[-1]):
        Tokenizer.from_metadata(_spm_metadata(**{key: value}))


def test_token_list_that_is_not_an_array_is_a_format_error():
    doc = tiny_model("llama")
    meta = {kv.key: (kv.value[1] if isinstance(kv.value, tuple) else kv.value) for kv in doc.kvs}
    shapes = {t.name: tuple(reversed(t.dims)) for t in doc.tensors}
    model_config(meta, shapes)
    with pytest.raises(FormatError, match="tokenizer.ggml.tokens"):
        model_config(meta | {"tokenizer.ggml.tokens": 1.5}, shapes)  # len() of a float


def _hf_dir(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(_HF_CONFIG))
    (tmp_path / "model.safetensors").write_bytes(data)
    return tmp_path


def _header_with(change) -> bytes:
    header, data = _safetensors_seed(("F32",), True)
    name = "model.layers.0.self_attn.q_proj.weight"
    header = change(header, name) or header
    return safetensors_bytes(header, data)


@pytest.mark.parametrize(
    "change",
    [
        lambda h, n: [1, 2],  # 'list' object has no attribute 'items'
        lambda h, n: h.update({n: 3}),  # 'int' object is not subscriptable
        lambda h, n: h[n].update(dtype=["F32"]),  # unhashable type: 'list'
        lambda h, n: h[n].pop("dtype"),  # KeyError
        lambda h, n: h[n].pop("data_offsets"),  # KeyError
        lambda h, n: h[n].update(data_offsets=[]),  # IndexError
        lambda h, n: h[n].update(data_offsets=[0, 2**63]),  # read length past the file
        lambda h, n: h[n].update(data_offsets=[-8, 0]),  # negative read
        lambda h, n: h[n].update(shape=[16, -(2**63)]),  # a negative dim read as an empty tensor
        lambda h, n: h[n].update(shape=[2**40, 2**40]),  # MemoryError reading the data
        lambda h, n: h[n].update(shape="16"),  # int('1')...
        lambda h, n: h[n].update(shape=[1, 2, 3, 16]),  # cannot reshape for the Q/K permutation
        lambda h, n: h[n].update(dtype="I8"),
    ],
)
def test_corrupt_safetensors_header_is_an_edgellm_error(tmp_path, change):
    root = _hf_dir(tmp_path, _header_with(change))
    with pytest.raises((FormatError, UnsupportedError)):
        src = HFSource(root)
        for name, _, _ in src.tensors():
            src.weights(name)


def test_safetensors_header_nested_past_the_json_recursion_limit(tmp_path):
    head = b"[" * 100000 + b"]" * 100000
    root = _hf_dir(tmp_path, struct.pack("<Q", len(head)) + head)
    with pytest.raises(FormatError, match="not valid JSON"):
        HFSource(root)


def test_safetensors_q_rows_that_do_not_split_into_heads(tmp_path):
    def change(h, n):
        h[n].update(shape=[14, 16], data_offsets=[h[n]["data_offsets"][0], h[n]["data_offsets"][0] + 14 * 16 * 4])

    src = HFSource(_hf_dir(tmp_path, _header_with(change)))
    with pytest.raises(FormatError, match="heads"):
        src.weights("blk.0.attn_q.weight")


@pytest.mark.parametrize(
    "template",
    [
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set ns = namespace(s=[0]) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set x = range(100000) | list %}{{ x | join(x | string) | length }}",
    ],
)
def test_template_that_doubles_a_string_stops_at_the_size_limit(template):
    """Each step stayed within every limit, so the string grew until memory ran out (2**40 characters asked)."""
    with pytest.raises(ConfigError) as err:
        render_chat(template, [])
    assert "out of memory" not in str(err.value) and "1,048,576" in str(err.value)
    assert not isinstance(err.value.__context__, MemoryError)


def test_concatenation_still_renders():
    assert (
        render_chat("{{ 'a' ~ 1 ~ none }}{{ [1] + [2] }}{{ 'x' + 'y' }}{{ [1, 2] | join(', ') }}", [])
        == "a1None[1, 2]xy1, 2"
    )


def _tiny_metadata(arch: str, **values) -> tuple[dict, dict]:
    doc = tiny_model(arch)
    meta = {kv.key: (kv.value[1] if isinstance(kv.value, tuple) else kv.value) for kv in doc.kvs}
    meta |= {f"{arch}.{key.replace('__', '.')}": value for key, value in values.items()}
    return meta, {t.name: tuple(reversed(t.dims)) for t in doc.tensors}


@pytest.mark.parametrize(
    "values",
    [
        dict(rope__scaling__type="yarn", rope__scaling__factor=1.4e-45),  # 1 / factor is infinite in float32
        dict(rope__scaling__factor=1e-40),
        dict(rope__scaling__attn_factor=1e300),
        dict(attention__layer_norm_rms_epsilon=1e-300),  # zero in float32
        dict(rope__freq_base=1e200),
    ],
)
def test_config_values_the_engine_cannot_hold_in_float32_are_a_format_error(values):
    """The C engine refused them with a ValueError (its own last check) after the config had accepted them."""
    meta, shapes = _tiny_metadata("qwen3", **values)
    with pytest.raises(FormatError, match="32-bit float"):
        model_config(meta, shapes)


def test_yarn_scaling_with_a_rope_base_of_one_is_a_format_error():
    """YaRN's ramp divides by log(rope.freq_base): a base of 1 was a ZeroDivisionError."""
    meta, shapes = _tiny_metadata("qwen3", rope__scaling__type="yarn", rope__scaling__factor=4.0, rope__freq_base=1.0)
    with pytest.raises(FormatError, match="freq_base"):
        model_config(meta, shapes)


def test_byte_typed_token_that_is_not_a_byte_is_a_format_error():
    """Decoding it was int('', 16): a ValueError."""
    meta = _spm_metadata()
    meta["tokenizer.ggml.tokens"] = list(meta["tokenizer.ggml.tokens"])
    meta["tokenizer.ggml.tokens"][6] = "<0x"  # the first of the 256 byte tokens
    with pytest.raises(FormatError, match="token 6 '<0x' has the byte type"):
        Tokenizer.from_metadata(meta)
