"""Tokenizer: tiny synthetic vocabularies for each rule, the real SmolLM2 and Gemma 3 vocabularies against
golden ids from llama.cpp (tests/fixtures/tokenizer_golden.json, made by benchmarks/make_tokenizer_golden.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from edgellm.errors import ConfigError, FormatError, UnsupportedError
from edgellm.tokenizer import PRE_TOKENIZERS, SPACE_MARK, StreamDecoder, Tokenizer, spm_encode_reference

GOLDEN_PATH = Path(__file__).parent / "fixtures" / "tokenizer_golden.json"
NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6  # tokenizer.ggml.token_type values

# --------------------------------------------------------------------------------------------------------
# A tiny SentencePiece vocabulary: merges "he", "ll", "llo", "hello", "▁w", "or", "ld", "orld", "▁world" in
# that order (score = -rank), single characters, byte fallback for everything else.

SPM_PIECES = ["he", "ll", "llo", "hello", SPACE_MARK + "w", "or", "ld", "orld", SPACE_MARK + "world",
              SPACE_MARK, "h", "e", "l", "o", "w", "r", "d", "a", "b"]


def spm_metadata(**overrides) -> dict:
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n"]
    types = [CONTROL] * 6 + [USER_DEFINED]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    tokens += SPM_PIECES
    types += [NORMAL] * len(SPM_PIECES)
    scores = [0.0] * (len(tokens) - len(SPM_PIECES)) + [-float(r) for r in range(len(SPM_PIECES))]
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array(scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
    }
    md.update(overrides)
    return md


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return Tokenizer.from_metadata(spm_metadata())


def ids_of(tok: Tokenizer, *texts: str) -> list[int]:
    return [tok.token_id(t) for t in texts]


def test_spm_merges_by_score_into_words(spm):
    assert spm.encode("hello world", add_special=False) == ids_of(spm, "hello", SPACE_MARK + "world")


def test_spm_encode_matches_reference_port_on_random_text(spm):
    rng = random.Random(0)
    vocab = {t: i for i, t in enumerate(spm_metadata()["tokenizer.ggml.tokens"])}
    scores = spm_metadata()["tokenizer.ggml.scores"]
    for _ in range(300):
        text = "".join(rng.choice("helowrdab é") for _ in range(rng.randint(1, 30)))
        expected = spm_encode_reference(text.replace(" ", SPACE_MARK), vocab, scores)
        assert spm.encode(text, add_special=False, parse_special=False) == expected, text


def test_spm_merges_through_characters_that_are_not_tokens():
    """llama.cpp starts from single characters whether or not they are tokens: with "w" and "o" removed from
    the vocabulary, "▁w", "or", "orld" and "▁world" are still reachable, and a lone "w" or "o" falls back to
    bytes."""
    meta = spm_metadata()
    tokens = [("<unused-w>" if t == "w" else "<unused-o>" if t == "o" else t) for t in meta["tokenizer.ggml.tokens"]]
    meta["tokenizer.ggml.tokens"] = tokens
    tok = Tokenizer.from_metadata(meta)
    vocab = {t: i for i, t in enumerate(tokens)}
    rng = random.Random(1)
    for text in ["hello world", "wow", "o", "world or w", *("".join(rng.choice("helowrd ") for _ in range(20)) for _ in range(100))]:
        expected = spm_encode_reference(text.replace(" ", SPACE_MARK), vocab, meta["tokenizer.ggml.scores"])
        assert tok.encode(text, add_special=False, parse_special=False) == expected, text
    assert tok.encode("hello world", add_special=False) == [vocab["hello"], vocab[SPACE_MARK + "world"]]


def test_bos_is_added_only_with_add_special_when_the_vocab_asks(spm):
    assert spm.encode("ab")[0] == spm.bos_id == 2
    assert spm.encode("ab", add_special=False) == ids_of(spm, "a", "b")
    assert spm.encode("") == [2]
    assert spm.encode("", add_special=False) == []
    no_bos = Tokenizer.from_metadata(spm_metadata(**{"tokenizer.ggml.add_bos_token": False}))
    assert no_bos.encode("ab") == ids_of(no_bos, "a", "b")
    with_eos = Tokenizer.from_metadata(spm_metadata(**{"tokenizer.ggml.add_eos_token": True}))
    assert with_eos.encode("ab") == [2, *ids_of(with_eos, "a", "b"), 1]


def test_spm_byte_fallback_for_characters_outside_the_vocab(spm):
    assert spm.encode("hé", add_special=False) == ids_of(spm, "h", "<0xC3>", "<0xA9>")
    assert spm.decode(spm.encode("hé")) == "<bos>hé"
    assert spm.token_bytes(spm.token_id("<0xC3>")) == b"\xc3"
    assert spm.token_bytes(spm.token_id(SPACE_MARK + "world")) == b" world"


def test_control_tokens_are_parsed_only_with_parse_special(spm):
    text = "<start_of_turn>ab<end_of_turn>"
    assert spm.encode(text, add_special=False) == [4, *ids_of(spm, "a", "b"), 5]
    plain = spm.encode(text, add_special=False, parse_special=False)
    assert 4 not in plain and 5 not in plain
    assert spm.decode(plain) == text


def test_user_defined_tokens_are_split_out_even_without_parse_special(spm):
    assert spm.encode("a\nb", add_special=False, parse_special=False) == ids_of(spm, "a", "\n", "b")


def test_space_prefix_follows_each_special_token_when_the_vocab_adds_it():
    tok = Tokenizer.from_metadata(spm_metadata(**{"tokenizer.ggml.add_space_prefix": True}))
    assert tok.encode("world", add_special=False) == ids_of(tok, SPACE_MARK + "world")
    assert tok.encode("<start_of_turn>world") == [2, 4, *ids_of(tok, SPACE_MARK + "world")]
    assert tok.decode(tok.encode("world", add_special=False)) == "world"  # llama.cpp strips it again


def test_decode_skip_special_drops_control_tokens_but_not_user_defined(spm):
    ids = spm.encode("<start_of_turn>a\nb<end_of_turn>")
    assert spm.decode(ids) == "<bos><start_of_turn>a\nb<end_of_turn>"
    assert spm.decode(ids, skip_special=True) == "a\nb"
    assert spm.is_control(4) and not spm.is_control(6)


def test_eog_ids_collect_eos_and_end_of_turn_by_text(spm):
    assert spm.eog_ids == frozenset({1, 5})
    assert (spm.bos_id, spm.eos_id, spm.eot_id, spm.add_bos) == (2, 1, 5, True)


def test_stream_decoder_holds_back_partial_utf8(spm):
    stream = StreamDecoder(spm)
    assert stream.feed(spm.token_id("h")) == "h"
    assert stream.feed(spm.token_id("<0xC3>")) == ""
    assert stream.pending_bytes == b"\xc3"
    assert stream.feed(spm.token_id("<0xA9>")) == "é"
    emoji = [spm.token_id(f"<0x{b:02X}>") for b in "🍕".encode()]
    assert [stream.feed(i) for i in emoji] == ["", "", "", "🍕"]
    assert stream.feed(spm.token_id("<0xF0>")) == ""
    assert stream.flush() == "\ufffd"
    assert stream.feed(spm.token_id("a")) == "a"


def test_stream_decoder_skip_special_hides_control_tokens(spm):
    ids = spm.encode("<start_of_turn>ab<end_of_turn>")
    assert "".join(StreamDecoder(spm, skip_special=True).feed(i) for i in ids) == "ab"
    assert "".join(StreamDecoder(spm).feed(i) for i in ids) == "<bos><start_of_turn>ab<end_of_turn>"


# --------------------------------------------------------------------------------------------------------
# A tiny byte-level BPE vocabulary (GPT-2 style): the 256 byte characters, a few merges, two control tokens.

def bpe_metadata(pre: str = "gpt-2", **overrides) -> dict:
    from edgellm.tokenizer import _bytes_to_unicode

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list(_bytes_to_unicode().values())
    merges = ["Ġ t", "Ġt h", "Ġth e", "t h", "h e", "i s", "Ġ is"]
    tokens += ["th", "Ġt", "Ġth", "Ġthe", "he", "is", "Ġis"]
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array([CONTROL] * 3 + [NORMAL] * (len(tokens) - 3), dtype=np.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 2,
    }
    md.update(overrides)
    return md


def test_bpe_merges_by_rank_after_byte_level_pre_tokenizing():
    tok = Tokenizer.from_metadata(bpe_metadata())
    assert tok.encode("the is") == ids_of(tok, "th", "e", "Ġis")
    assert tok.encode(" the") == ids_of(tok, "Ġthe")
    assert tok.encode("<|im_start|>the") == [1, *ids_of(tok, "th", "e")]
    assert tok.add_bos is False and tok.encode("") == []
    assert tok.eog_ids == frozenset({0, 2})
    assert tok.token_bytes(tok.token_id("Ġthe")) == b" the"


def test_bpe_round_trips_arbitrary_unicode():
    tok = Tokenizer.from_metadata(bpe_metadata(pre="smollm"))
    text = "naïve 日本 🍕 tab\there  x\n"
    assert tok.decode(tok.encode(text)) == text


def test_clean_spaces_follows_the_pre_tokenizer_flag():
    # llama.cpp removes the space before , . ? ! and in " 's" for vocabularies that clean spaces (gpt-2 does)
    text = "Hello , world . It 's a ' b"
    gpt2 = Tokenizer.from_metadata(bpe_metadata(pre="gpt-2"))
    assert gpt2.decode(gpt2.encode(text)) == "Hello, world. It's a'b"
    smollm = Tokenizer.from_metadata(bpe_metadata(pre="smollm"))
    assert smollm.decode(smollm.encode(text)) == text


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_every_pre_tokenizer_regex_compiles_and_round_trips(pre):
    tok = Tokenizer.from_metadata(bpe_metadata(pre=pre))
    text = "It's 2024: ünïcode 日本語, x=1+2;\n\n  done"
    assert tok.decode(tok.encode(text)) == text


# --------------------------------------------------------------------------------------------------------
# Error messages

def test_error_missing_model_key():
    md = spm_metadata()
    del md["tokenizer.ggml.model"]
    with pytest.raises(FormatError, match=r"^GGUF metadata has no 'tokenizer.ggml.model'; expected one of: gpt2 "
                                          r"\(byte-level BPE\), llama \(SentencePiece\)$"):
        Tokenizer.from_metadata(md)


def test_error_unknown_model_lists_supported():
    with pytest.raises(UnsupportedError, match=r"^'tokenizer.ggml.model' = 'bert' is not supported; supported: "
                                               r"gpt2 \(byte-level BPE\), llama \(SentencePiece\)$"):
        Tokenizer.from_metadata(spm_metadata(**{"tokenizer.ggml.model": "bert"}))


def test_error_unknown_pre_tokenizer_lists_supported():
    with pytest.raises(UnsupportedError, match=r"^'tokenizer.ggml.pre' = 'klingon' is not supported; "
                                               r"supported: .*\bllama3\b.*\bqwen2\b.*\bsmollm\b"):
        Tokenizer.from_metadata(bpe_metadata(pre="klingon"))


def test_error_missing_tokens():
    md = spm_metadata()
    del md["tokenizer.ggml.tokens"]
    with pytest.raises(FormatError, match=r"^GGUF metadata has no 'tokenizer.ggml.tokens' \(the vocabulary\)"):
        Tokenizer.from_metadata(md)


def test_error_missing_merges_for_bpe():
    md = bpe_metadata()
    del md["tokenizer.ggml.merges"]
    with pytest.raises(FormatError, match=r"^GGUF metadata has no 'tokenizer.ggml.merges', which a 'gpt2' \(BPE\) "
                                          r"vocabulary needs$"):
        Tokenizer.from_metadata(md)


def test_error_short_scores_array():
    md = spm_metadata(**{"tokenizer.ggml.scores": np.zeros(5, dtype=np.float32)})
    with pytest.raises(FormatError, match=r"^'tokenizer.ggml.scores' has 5 entries but 'tokenizer.ggml.tokens' "
                                          r"has 282 tokens$"):
        Tokenizer.from_metadata(md)


def test_error_add_bos_without_bos_id():
    # SentencePiece vocabularies add BOS by default; id 7 is outside this one-token vocabulary
    tiny = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.bos_token_id": 7}
    with pytest.raises(FormatError, match=r"^'tokenizer.ggml.add_bos_token' is true but "
                                          r"'tokenizer.ggml.bos_token_id' is missing or outside the vocabulary$"):
        Tokenizer.from_metadata(tiny)


def test_error_token_id_outside_vocab(spm):
    with pytest.raises(ConfigError, match=r"^token id 999999 is outside the vocabulary \(0\.\.281\)$"):
        spm.decode([999999])


# --------------------------------------------------------------------------------------------------------
# Real vocabularies against llama.cpp

GOLDEN = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
# From llama.cpp (llama_vocab_is_eog over the whole vocabulary). Gemma 3's "</s>" (212) is an HTML tag that
# llama.cpp nevertheless treats as end of generation; we match llama.cpp.
EXPECTED_SPECIALS = {
    "smollm2-135m": dict(n_vocab=49152, bos_id=1, eos_id=2, add_bos=False, eog_ids={0, 2, 4}),
    "gemma3-270m": dict(n_vocab=262144, bos_id=2, eos_id=1, add_bos=True, eog_ids={1, 106, 212}),
}
_tokenizers: dict[str, tuple[Tokenizer, dict]] = {}


@pytest.fixture(scope="session")
def real_tokenizer(real_model_path):
    from edgellm.formats.gguf import read_gguf

    def load(name: str) -> tuple[Tokenizer, dict]:
        if name not in _tokenizers:
            with read_gguf(real_model_path(name)) as gguf_file:
                metadata = dict(gguf_file.metadata)
            _tokenizers[name] = (Tokenizer.from_metadata(metadata), metadata)
        return _tokenizers[name]

    return load


def _mismatches(cases: list[dict], got: list, key: str) -> str:
    bad = [f"{c['text'][:40]!r} add_special={c['add_special']} parse_special={c['parse_special']}: "
           f"ours {g[:12]!r}... llama.cpp {c[key][:12]!r}..." for c, g in zip(cases, got) if g != c[key]]
    return f"{len(bad)} of {len(cases)} differ:\n" + "\n".join(bad[:10])


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_encode_matches_llama_cpp_golden(real_tokenizer, name):
    tok, _ = real_tokenizer(name)
    cases = GOLDEN[name]
    got = [tok.encode(c["text"], add_special=c["add_special"], parse_special=c["parse_special"]) for c in cases]
    assert got == [c["ids"] for c in cases], _mismatches(cases, got, "ids")


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decode_matches_llama_cpp_detokenize(real_tokenizer, name):
    tok, _ = real_tokenizer(name)
    cases = GOLDEN[name]
    got = [tok.decode(c["ids"]) for c in cases]
    assert got == [c["decoded"] for c in cases], _mismatches(cases, got, "decoded")
    got = [tok.decode(c["ids"], skip_special=True) for c in cases]
    assert got == [c["decoded_skip_special"] for c in cases], _mismatches(cases, got, "decoded_skip_special")


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decode_encode_round_trips_where_llama_cpp_does(real_tokenizer, name):
    tok, _ = real_tokenizer(name)
    cases = [c for c in GOLDEN[name] if c["decoded_skip_special"] == c["text"]]
    assert len(cases) > len(GOLDEN[name]) // 2
    for c in cases:
        ids = tok.encode(c["text"], add_special=c["add_special"], parse_special=c["parse_special"])
        assert tok.decode(ids, skip_special=True) == c["text"]


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_stream_decoder_reproduces_decode(real_tokenizer, name):
    tok, _ = real_tokenizer(name)
    for c in GOLDEN[name]:
        stream = StreamDecoder(tok)
        assert "".join(stream.feed(i) for i in c["ids"]) + stream.flush() == c["decoded"]


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(EXPECTED_SPECIALS))
def test_special_ids_match_llama_cpp(real_tokenizer, name):
    tok, _ = real_tokenizer(name)
    expected = EXPECTED_SPECIALS[name]
    got = dict(n_vocab=tok.n_vocab, bos_id=tok.bos_id, eos_id=tok.eos_id, add_bos=tok.add_bos,
               eog_ids=set(tok.eog_ids))
    assert got == expected


@pytest.mark.real_model
def test_gemma_fast_path_matches_spm_reference_port(real_tokenizer):
    tok, metadata = real_tokenizer("gemma3-270m")
    vocab = {t: i for i, t in enumerate(metadata["tokenizer.ggml.tokens"])}
    scores = np.asarray(metadata["tokenizer.ggml.scores"], dtype=np.float32)
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,'-éüß日本語中文한국어привет🍕"
    calib = GOLDEN["gemma3-270m"][-1]["text"]
    for _ in range(150):
        if rng.random() < 0.5:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        else:
            start = rng.randrange(len(calib) - 200)
            text = calib[start:start + rng.randint(1, 200)]
        # Keep to one fragment: no newline, tab or double space (user-defined tokens in Gemma's vocabulary).
        text = " ".join(text.replace("\t", " ").replace("\n", " ").split())
        if not text or "<" in text:
            continue
        expected = spm_encode_reference(text.replace(" ", SPACE_MARK), vocab, scores)
        assert tok.encode(text, add_special=False, parse_special=False) == expected, text
