"""Tokenizer built from GGUF metadata, token for token equal to llama.cpp (src/llama-vocab.cpp), for "gpt2"
(byte-level BPE, pre-tokenizer regexes per tokenizer.ggml.pre) and "llama" (SentencePiece) vocabularies.
Merge loops run in the `tokenizers` library; special tokens, BOS/EOS, EOG ids and detokenization are ported
here. WPM (BERT), UGM (T5), RWKV and the other rare vocabulary types are not handled.
"""

from __future__ import annotations

import codecs
import enum
import heapq
import re
from array import array
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from gguf.constants import Keys
from tokenizers import Regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models as _hf_models
from tokenizers import pre_tokenizers as _hf_pre

from edgellm.errors import ConfigError, FormatError, UnsupportedError

K = Keys.Tokenizer
SPACE_MARK = "\u2581"  # "▁": SentencePiece's escaped space


class TokenAttr(enum.IntFlag):
    """llama.cpp's llama_token_attr bits (llama.h)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


# tokenizer.ggml.token_type (gguf TokenType: 1 normal .. 6 byte) -> attribute; anything else is UNDEFINED.
_ATTR_OF_TYPE = np.array([0, TokenAttr.NORMAL, TokenAttr.UNKNOWN, TokenAttr.CONTROL,
                          TokenAttr.USER_DEFINED, TokenAttr.UNUSED, TokenAttr.BYTE], dtype=np.int32)
_SPECIAL_ATTRS = int(TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN)
_HIDDEN_ATTRS = int(TokenAttr.CONTROL | TokenAttr.UNKNOWN)  # what token_to_piece(special=false) renders as ""
_NORMAL, _BYTE = int(TokenAttr.NORMAL), int(TokenAttr.BYTE)
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


# ---------------------------------------------------------------------------------------------------------
# Pre-tokenizers: llm_tokenizer_bpe's regex_exprs per pre type, and the flags load() sets for each name.
# llama.cpp applies the regexes one after another, each splitting every piece further and keeping the text
# between matches as pieces of its own; tokenizers' Split(behavior="isolated") does the same.

@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]
    clean_spaces: bool = True  # detokenize removes the space in " ?", " !", " .", " ,", " 's" ...
    ignore_merges: bool = False  # a whole piece that is a token skips the merge loop


_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
          r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
           r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3 = (r"\p{N}{1,3}", "[一-龥\u3040-ゟ゠-ヿ]+",
              r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PORO = " ?[^(\\s|.,!?…。，、।۔،)]+"


def _family(names: str, *regexes: str, **flags: bool) -> dict[str, PreTokenizer]:
    return {name: PreTokenizer(tuple(regexes), **flags) for name in names.split()}


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_family("default", r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    **_family("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2", _LLAMA3, ignore_merges=True),
    **_family("dbrx smaug-bpe chatglm-bpe", _LLAMA3),
    **_family("glm4 glm5", _LLAMA3, ignore_merges=True),
    **_family("deepseek-coder", "[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥\u0800-一가-\ud7ff]+", r"\p{N}",
              clean_spaces=False),
    **_family("deepseek-v3", *_DEEPSEEK3, clean_spaces=False),
    **_family("falcon", r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    **_family("gpt-2 phi-2 roberta-bpe jina-v1-en jina-v2-code jina-es jina-de jina-v2-es jina-v2-de gigachat "
              "a.x-4.0 mellum modern-bert mpt olmo jais exaone4", _GPT2),
    **_family("trillion granite-docling", _GPT2, clean_spaces=False),
    **_family("starcoder refact codeshell exaone minerva-7b mellum2", r"\p{N}", _GPT2),
    **_family("smollm command-r", r"\p{N}", _GPT2, clean_spaces=False),
    **_family("qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open grok-2", _QWEN2, clean_spaces=False),
    **_family("stablelm2 megrez", _QWEN2),
    **_family("qwen35", _QWEN35, clean_spaces=False),
    **_family("gpt-4o llama4 kanana2 talkie minimax-m2", _GPT4O, clean_spaces=False),
    **_family("tekken", _TEKKEN, clean_spaces=False, ignore_merges=True),
    **_family("poro-chat", _PORO, clean_spaces=False),
    **_family("bloom gpt3-finnish", _PORO),
    **_family("viking", _PORO, r"\p{N}", clean_spaces=False),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (llama.cpp unicode_byte_to_utf8_map)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


# ---------------------------------------------------------------------------------------------------------
# Special ids: metadata keys, then llama.cpp's text-based guesses (llama_vocab::impl::load).

_ID_KEYS = (
    ("bos", K.BOS_ID), ("eos", K.EOS_ID), ("eot", K.EOT_ID), ("eom", K.EOM_ID), ("unk", K.UNK_ID),
    ("sep", K.SEP_ID), ("pad", K.PAD_ID), ("mask", K.MASK_ID),
    ("fim_pre", K.FIM_PRE_ID), ("fim_suf", K.FIM_SUF_ID), ("fim_mid", K.FIM_MID_ID),
    ("fim_pad", K.FIM_PAD_ID), ("fim_rep", K.FIM_REP_ID), ("fim_sep", K.FIM_SEP_ID),
    ("fim_pre", K.PREFIX_ID), ("fim_suf", K.SUFFIX_ID), ("fim_mid", K.MIDDLE_ID),  # deprecated spellings
)
_GUESSED_BY_TEXT = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
            "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Tokens that end generation, by text. "</s>" is on the list for paddleocr and so also ends Gemma 3, whose
# "</s>" is an HTML strikethrough tag: llama.cpp does this too, and we match llama.cpp.
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss

# encode_batch_fast (tokenizers >= 0.20) skips the offsets we do not use: a third faster on long texts.
_encode_batch = getattr(_HFTokenizer, "encode_batch_fast", _HFTokenizer.encode_batch)
_MISSING_CHAR = "\x00<edgellm:missing>"  # a BPE unknown token that no GGUF vocabulary contains
_VOCAB_TYPES = {"gpt2": "bpe", "llama": "spm"}
_SUPPORTED_MODELS = "gpt2 (byte-level BPE), llama (SentencePiece)"


# ---------------------------------------------------------------------------------------------------------

class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary, equal to llama.cpp's llama_tokenize/llama_detokenize.

    Build it with `Tokenizer.from_metadata(metadata)`. Attributes: n_vocab, bos_id, eos_id, eot_id, unk_id,
    pad_id, add_bos, add_eos, eog_ids (end-of-generation ids), vocab_type ("bpe" | "spm"), pre (the
    tokenizer.ggml.pre name) and chat_template (tokenizer.chat_template, or None).
    """

    def __init__(self, tokens: list[str], attrs: np.ndarray, scores: np.ndarray | None, merges: list[str],
                 metadata: Mapping[str, Any], vocab_type: str, pre: str):
        self.vocab_type = vocab_type
        self.pre = pre
        self.n_vocab = len(tokens)
        self._tokens = tokens
        self._attrs = attrs
        self._token_to_id = {text: i for i, text in enumerate(tokens)}  # duplicates: the last id wins, as in llama.cpp
        self.chat_template: str | None = _text(metadata, K.CHAT_TEMPLATE)

        spm = vocab_type == "spm"
        self.add_space_prefix = _flag(metadata, K.ADD_PREFIX, spm)
        self.add_bos = _flag(metadata, K.ADD_BOS, spm)
        self.add_eos = _flag(metadata, K.ADD_EOS, False)
        if spm:
            self._pre_tokenizer = PreTokenizer((), clean_spaces=False)
        else:
            self._pre_tokenizer = PRE_TOKENIZERS[pre]
        self._find_special_ids(metadata, spm)
        if self.add_bos and self.bos_id is None:
            raise FormatError(f"'{K.ADD_BOS}' is true but '{K.BOS_ID}' is missing or outside the vocabulary")
        if self.add_eos and self.eos_id is None:
            raise FormatError(f"'{K.ADD_EOS}' is true but '{K.EOS_ID}' is missing or outside the vocabulary")

        special = np.flatnonzero(attrs & _SPECIAL_ATTRS).tolist()
        # Longest first, as llama.cpp's cache_special_tokens (byte length; ties by id).
        special.sort(key=lambda i: -len(tokens[i].encode()))
        self._specials_all = _SpecialMatcher([(i, tokens[i]) for i in special])
        self._specials_user = _SpecialMatcher([(i, tokens[i]) for i in special if not attrs[i] & _HIDDEN_ATTRS])

        self._missing_id = self.n_vocab  # BPE: characters outside the vocabulary, dropped (see _build_bpe)
        if spm:
            unk = tokens[self.unk_id] if self.unk_id is not None else None
            self._hf, phantoms = _build_spm(tokens, self._token_to_id, scores, unk)
            self._phantom_bytes = {i: self._byte_fallback(c) for c, i in phantoms.items()}
        else:
            self._hf = _build_bpe(self._token_to_id, merges, self._pre_tokenizer, missing_id=self.n_vocab)
        self._attrs = attrs.tolist()  # final attributes; a list is faster to index per token
        self._pieces: list[bytes | None] = [None] * self.n_vocab

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer from GGUF metadata (key -> value; arrays as lists or NumPy arrays).

        Raises:
            FormatError: a required key is missing or inconsistent (tokens, merges, scores, token types).
            UnsupportedError: tokenizer.ggml.model or tokenizer.ggml.pre names something we do not handle.
        """
        model = metadata.get(K.MODEL)
        if model is None:
            raise FormatError(f"GGUF metadata has no '{K.MODEL}'; expected one of: {_SUPPORTED_MODELS}")
        vocab_type = _VOCAB_TYPES.get(str(model))
        if vocab_type is None:
            raise UnsupportedError(f"'{K.MODEL}' = '{model}' is not supported; supported: {_SUPPORTED_MODELS}")
        pre = _text(metadata, K.PRE) or "default"  # llama.cpp also falls back to "default" (with a warning)
        if vocab_type == "bpe" and pre not in PRE_TOKENIZERS:
            raise UnsupportedError(
                f"'{K.PRE}' = '{pre}' is not supported; supported: {', '.join(sorted(PRE_TOKENIZERS))}")

        tokens = _strings(metadata, K.LIST)
        if not tokens:
            raise FormatError(f"GGUF metadata has no '{K.LIST}' (the vocabulary); re-convert the model with llama.cpp")
        # llama.cpp renames empty tokens so that every text maps back to one id.
        tokens = [t if len(t) else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        n = len(tokens)
        scores = _array_of(metadata, K.SCORES, np.float32, n)
        types = _array_of(metadata, K.TOKEN_TYPE, np.int32, n)
        if types is None:
            attrs = np.full(n, TokenAttr.NORMAL, dtype=np.int32)
        else:
            in_table = (types >= 0) & (types < len(_ATTR_OF_TYPE))
            attrs = np.where(in_table, _ATTR_OF_TYPE[np.clip(types, 0, len(_ATTR_OF_TYPE) - 1)], 0).astype(np.int32)
        for i in np.flatnonzero(attrs & _BYTE):
            if not _BYTE_TOKEN.fullmatch(tokens[i]):
                raise FormatError(f"'{K.LIST}': token {i} {tokens[i][:20]!r} has the byte type but is not <0xXX>")
        merges = _strings(metadata, K.MERGES)
        if vocab_type == "bpe" and merges is None:
            raise FormatError(f"GGUF metadata has no '{K.MERGES}', which a '{model}' (BPE) vocabulary needs")
        return cls(tokens, attrs, scores, list(merges or []), metadata, vocab_type, pre)

    # -- special ids --------------------------------------------------------------------------------------

    def _find_special_ids(self, metadata: Mapping[str, Any], spm: bool) -> None:
        n = self.n_vocab
        ids: dict[str, int | None] = {name: None for name, _ in _ID_KEYS}
        if spm:  # llama.cpp's defaults when the keys are absent
            ids.update(bos=1, eos=2, unk=0)
        else:
            ids.update(bos=11, eos=11)
        for name, key in _ID_KEYS:
            if ids[name] is not None and ids[name] >= n:
                ids[name] = None
            value = metadata.get(key)
            if value is not None and not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise FormatError(f"'{key}' is {_shown(value)}, expected a token id")
            if value is not None and 0 <= int(value) < n:
                ids[name] = int(value)
        for name, texts in _GUESSED_BY_TEXT.items():
            for text in texts:
                if ids[name] is None and text in self._token_to_id:
                    ids[name] = self._token_to_id[text]
                    self._attrs[ids[name]] |= TokenAttr.CONTROL
        self.bos_id, self.eos_id, self.eot_id, self.eom_id = ids["bos"], ids["eos"], ids["eot"], ids["eom"]
        self.unk_id, self.pad_id = ids["unk"], ids["pad"]

        eog = {ids[name] for name in ("fim_pad", "fim_rep", "fim_sep") if ids[name] is not None}
        for text in _EOG_TEXTS:
            tid = self._token_to_id.get(text)
            if tid is not None:
                eog.add(tid)
                self._attrs[tid] |= TokenAttr.CONTROL
        for text in _ALWAYS_RENDERED:
            if text in self._token_to_id:
                self._attrs[self._token_to_id[text]] = TokenAttr.USER_DEFINED
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None)
        texts = {self._tokens[i] for i in eog}
        end_id = self._token_to_id.get("<|end|>")
        if "<|end|>" in texts and (texts >= {"<|return|>", "<|call|>"} or texts >= {"<|calls|>", "<|flush|>"}):
            eog.discard(end_id)  # o200k_harmony / solar-open: <|end|> ends a message, not the generation
            self._attrs[end_id] = TokenAttr.USER_DEFINED
        if "</s>" in texts and texts & {"<|tool_response>", "<|plamo:eos|>"}:
            s_id = self._token_to_id["</s>"]
            eog.discard(s_id)
            self._attrs[s_id] = TokenAttr.NORMAL
        self.eog_ids: frozenset[int] = frozenset(eog)

    # -- encode -------------------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`, as llama_tokenize(text, add_special, parse_special).

        add_special adds BOS (and EOS) only where the vocabulary asks for them (tokenizer.ggml.add_bos_token).
        parse_special turns control-token text such as "<|im_start|>" into its id; user-defined tokens are
        always recognised, as in llama.cpp.
        """
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:  # lone surrogates: not text; make them U+FFFD rather than fail
                text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        matcher = self._specials_all if parse_special else self._specials_user
        fragments = matcher.partition(text) if text else []
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self.bos_id)
        raw: list[str] = []
        slots: list[int] = []  # index into `out` where each raw fragment's ids go
        prev_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.vocab_type == "spm":
                # llama.cpp: SPM fragments after a special token get the space prefix, spaces become "▁".
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                frag = frag.replace(" ", SPACE_MARK)
            prev_special = False
            raw.append(frag)
            slots.append(len(out))
            out.append(-1)
        if raw:
            encoded = _encode_batch(self._hf, raw, add_special_tokens=False)
            for slot, enc in zip(reversed(slots), reversed(encoded)):
                ids = enc.ids
                if self._missing_id in ids:
                    ids = [i for i in ids if i != self._missing_id]
                if self.vocab_type == "spm" and max(ids, default=0) > self.n_vocab:  # unmerged phantom characters
                    ids = [j for i in ids for j in (self._phantom_bytes[i] if i > self.n_vocab else [i])]
                out[slot:slot + 1] = ids
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    # -- decode -------------------------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        """The vocabulary string of one token ("▁the", "Ġthe", "<0x0A>", "<|im_end|>")."""
        return self._tokens[self._check_id(token_id)]

    def token_id(self, text: str) -> int | None:
        """The id whose vocabulary string is exactly `text`, or None."""
        return self._token_to_id.get(text)

    def is_control(self, token_id: int) -> bool:
        """True for control and unknown tokens: the ones decode(skip_special=True) leaves out."""
        return bool(self._attrs[self._check_id(token_id)] & _HIDDEN_ATTRS)

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token's piece (llama_token_to_piece with special=true).

        Byte-fallback tokens give their byte, "▁" gives a space, byte-level BPE characters map back to bytes;
        control and user-defined tokens give their text. A piece may be part of a UTF-8 character.
        """
        piece = self._pieces[self._check_id(token_id)]
        if piece is None:
            piece = self._pieces[token_id] = self._make_piece(token_id)
        return piece

    def _make_piece(self, token_id: int) -> bytes:
        attr, text = self._attrs[token_id], self._tokens[token_id]
        if attr & _SPECIAL_ATTRS:
            return text.encode()
        if attr & _NORMAL:
            if self.vocab_type == "spm":
                return text.replace(SPACE_MARK, " ").encode()
            return _byte_level_decode(text)
        if attr & _BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused and undefined tokens render as nothing

    def _piece(self, token_id: int, special: bool) -> bytes:
        if not special and self._attrs[self._check_id(token_id)] & _HIDDEN_ATTRS:
            return b""
        return self.token_bytes(token_id)

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids`, as llama_detokenize(remove_special=skip_special, unparse_special=not skip_special).

        skip_special drops control tokens (and a leading BOS / trailing EOS the vocabulary adds). Bytes that do
        not form valid UTF-8 become U+FFFD.
        """
        ids = list(ids)
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for tid in ids:
            piece = self._piece(tid, special=not skip_special)
            if remove_space and piece.startswith(b" "):
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        data = b"".join(parts)
        if self._pre_tokenizer.clean_spaces:
            data = _clean_spaces(data)
        return data.decode("utf-8", errors="replace")

    def _byte_fallback(self, char: str) -> list[int]:
        """The byte tokens of a character the merges cannot make; the unknown token if the vocabulary lacks them."""
        ids = [self._token_to_id.get(f"<0x{b:02X}>") for b in char.encode()]
        if None not in ids:
            return ids
        return [] if self.unk_id is None else [self.unk_id]

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.n_vocab:
            raise ConfigError(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")
        return token_id

    def __repr__(self) -> str:
        return (f"Tokenizer({self.vocab_type}, pre={self.pre!r}, n_vocab={self.n_vocab}, bos={self.bos_id}, "
                f"eos={self.eos_id}, add_bos={self.add_bos}, eog={sorted(self.eog_ids)})")


class StreamDecoder:
    """Incremental detokenizer: feed token ids one at a time, get the text each one completes.

    Bytes of an unfinished UTF-8 character (a byte-fallback token, or a byte-level BPE piece that splits a
    character) are held back until a later token completes them; invalid bytes become U+FFFD. Pieces are
    joined as llama.cpp's streaming does (token_to_piece per token, no space clean-up).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """The new text after `token_id` ("" while a character is incomplete)."""
        return self._utf8.decode(self.tokenizer._piece(token_id, special=not self.skip_special))

    def flush(self) -> str:
        """Whatever is still held back, incomplete characters as U+FFFD; the decoder starts afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    @property
    def pending_bytes(self) -> bytes:
        """Bytes held back waiting for the rest of a character."""
        return self._utf8.getstate()[0]


# ---------------------------------------------------------------------------------------------------------
# Helpers

def _shown(value: Any) -> str:
    return f"an array of {len(value)}" if isinstance(value, (list, np.ndarray)) else repr(value)[:60]


def _text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if value is not None and not isinstance(value, str):
        raise FormatError(f"'{key}' is {_shown(value)}, expected a string")
    return value


def _flag(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, (bool, int, np.bool_, np.integer)):
        raise FormatError(f"'{key}' is {_shown(value)}, expected a boolean")
    return bool(value)


def _strings(metadata: Mapping[str, Any], key: str) -> list[str] | None:
    value = metadata.get(key)
    if value is not None and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        raise FormatError(f"'{key}' is {_shown(value)}, expected an array of strings")
    return None if value is None else list(value)


def _array_of(metadata: Mapping[str, Any], key: str, dtype: type, n: int) -> np.ndarray | None:
    value = metadata.get(key)
    if value is None:
        return None
    try:
        arr = np.asarray(value)
        numeric = arr.dtype.kind in "biuf" and not isinstance(value, (str, bytes))
    except (ValueError, TypeError, OverflowError):
        numeric = False
    if numeric and np.dtype(dtype).kind == "i" and arr.size:
        limits = np.iinfo(dtype)
        numeric = arr.dtype.kind != "f" and limits.min <= arr.min() and arr.max() <= limits.max
    if not numeric:
        raise FormatError(f"'{key}' is {_shown(value)}, expected an array of {np.dtype(dtype).name} numbers")
    arr = arr.astype(dtype)
    if arr.ndim != 1 or len(arr) < n:
        raise FormatError(f"'{key}' has {arr.size} entries but '{K.LIST}' has {n} tokens")
    return arr[:n]


class _SpecialMatcher:
    """llama.cpp's tokenizer_st_partition: split text at special-token text, longest tokens first."""

    def __init__(self, specials: list[tuple[int, str]]):
        self._order = specials
        # Texts grouped by their first two characters, so one `in` test rules out a whole group (6000
        # "<unusedN>" tokens in Gemma share "<u").
        self._groups: dict[str, list[int]] = {}
        for rank, (_, text) in enumerate(specials):
            self._groups.setdefault(text[:2], []).append(rank)

    def partition(self, text: str) -> list[str | int]:
        present = sorted(rank for prefix, ranks in self._groups.items() if prefix in text
                         for rank in ranks if self._order[rank][1] in text)
        fragments: list[str | int] = [text]
        for rank in present:
            token_id, special = self._order[rank]
            out: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or special not in frag:
                    out.append(frag)
                    continue
                for k, part in enumerate(frag.split(special)):  # leftmost, non-overlapping: as std::find
                    if k:
                        out.append(token_id)
                    if part:
                        out.append(part)
            fragments = out
        return fragments


def _byte_level_decode(text: str) -> bytes:
    out = bytearray()
    for ch in text:
        b = _BYTE_OF_CHAR.get(ch)
        if b is not None:
            out.append(b)
        else:  # llama_decode_text's marker for a character outside the byte alphabet
            out += f"[UNK_BYTE_0x{ch.encode().hex()}{text}]".encode()
    return bytes(out)


def _clean_spaces(data: bytes) -> bytes:
    """llama_detokenize's clean_spaces passes, ported index for index (they edit the buffer in place)."""
    t = bytearray(data)
    # pass 1: " ?", " !", " .", " ," lose the space
    n, total = len(t), 1 if t else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    # pass 2: a lone apostrophe between spaces loses both spaces
    n, total, i = total, 1 if total else 0, 1
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    # pass 3: " 's", " 'm", " 're", " 've" lose the space
    n, total = total, 1 if total else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm" or (i + 2 < n and (x1, t[i + 2]) in ((0x72, 0x65), (0x76, 0x65))):
                total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])


def _build_bpe(vocab: dict[str, int], merges: list[str], pre: PreTokenizer, missing_id: int) -> _HFTokenizer:
    pairs, seen = [], set()
    for merge in merges:
        cut = merge.find(" ", 1)  # as llama.cpp: the first space after the first character
        if cut < 0:
            continue
        a, b = merge[:cut], merge[cut + 1:]
        # tokenizers needs both halves and the result in the vocabulary; llama.cpp keeps the first rank.
        if (a, b) not in seen and a in vocab and b in vocab and a + b in vocab:
            seen.add((a, b))
            pairs.append((a, b))
    # A character missing from the vocabulary stays a symbol in llama.cpp (blocking merges across it) and is
    # dropped at the end; tokenizers drops it before merging unless it has an unknown token to map it to.
    # So we give it one, with an id past the vocabulary, and remove that id from the output.
    vocab = {**vocab, _MISSING_CHAR: missing_id}
    hf = _HFTokenizer(_hf_models.BPE(vocab=vocab, merges=pairs, unk_token=_MISSING_CHAR,
                                     ignore_merges=pre.ignore_merges))
    splits = [_hf_pre.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    hf.pre_tokenizer = _hf_pre.Sequence([*splits, _hf_pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    return hf


def _build_spm(
    tokens: list[str], vocab: dict[str, int], scores: np.ndarray | None, unk: str | None
) -> tuple[_HFTokenizer, dict[str, int]]:
    """SentencePiece merging as a BPE: every split of a token into two tokens is a merge, ranked by the
    merged token's score (highest first). llama.cpp merges the best-scoring adjacent pair whose
    concatenation is a token, which is the same loop; see spm_encode_reference for the exact port."""
    if scores is None:
        scores = np.zeros(len(tokens), dtype=np.float32)

    ids, cuts, missing = array("i"), array("i"), set()
    for i, text in enumerate(tokens):  # ~1 s for Gemma's 262k tokens (515k splits)
        for k in range(1, len(text)):
            a, b = text[:k], text[k:]
            # llama.cpp starts from single characters, tokens or not
            if (k == 1 or a in vocab) and (len(b) == 1 or b in vocab):
                ids.append(i)
                cuts.append(k)
                missing.update(h for h in (a, b) if h not in vocab)
    order = np.argsort(-scores[np.frombuffer(ids, dtype=np.int32)], kind="stable")
    # Characters that only exist as halves of a merge get ids past the vocabulary; left unmerged, encode turns
    # them into byte tokens, as llama.cpp's byte fallback does.
    phantoms = {c: len(tokens) + 1 + j for j, c in enumerate(sorted(missing))}
    # Byte fallback covers every character when the vocabulary has all 256 <0xXX> tokens (llama.cpp fails
    # without them; we emit the unknown token). The splits were kept as two int arrays, not half a million
    # tuples: Gemma's tokenizer then costs ~100 MB less at its peak.
    pairs = [(tokens[ids[j]][: cuts[j]], tokens[ids[j]][cuts[j] :]) for j in order]
    del ids, cuts, order
    model = _hf_models.BPE(vocab=vocab | phantoms, merges=pairs, byte_fallback=True, unk_token=unk)
    return _HFTokenizer(model), phantoms


def spm_encode_reference(text: str, vocab: Mapping[str, int], scores: Sequence[float]) -> list[int]:
    """llama.cpp's llm_tokenizer_spm_session::tokenize in plain Python: the spec the fast path is tested
    against. `text` is one fragment with spaces already turned into "▁"."""
    n = len(text)
    if n == 0:
        return []
    length, prev, nxt = [1] * n, list(range(-1, n - 1)), list(range(1, n + 1))
    nxt[-1] = -1
    heap: list[tuple[float, int, int, int]] = []

    def try_add(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        piece = text[left:left + length[left] + length[right]]
        token_id = vocab.get(piece)
        if token_id is not None:  # highest score first, then leftmost
            heapq.heappush(heap, (-float(scores[token_id]), left, right, len(piece)))

    for i in range(1, n):
        try_add(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
            continue  # stale: one side has been merged since
        length[left] += length[right]
        length[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        try_add(prev[left], left)
        try_add(left, nxt[left])
    out, i = [], 0
    while i != -1:
        piece = text[i:i + length[i]]
        if piece in vocab:
            out.append(vocab[piece])
        else:
            out.extend(vocab[f"<0x{b:02X}>"] for b in piece.encode())
        i = nxt[i]
    return out
