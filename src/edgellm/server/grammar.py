"""Structured output: decoding constrained by a grammar, with llguidance.

llguidance (the guidance project's Rust engine, also behind llama.cpp's LLGUIDANCE build and vLLM) compiles a
JSON schema, or plain "any JSON object", into a grammar and gives, for each step, the set of tokens that keep
the text inside it, in tens of microseconds for a 50k vocabulary. It needs only the vocabulary as bytes, so it
runs on edgellm's own tokenizer, and it ships as one wheel with no PyTorch. (xgrammar wants PyTorch for its
masks; outlines-core compiles a regex index per schema up front, slow for large vocabularies.)
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import ConfigError


def _llguidance():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - llguidance is a dependency of the server extra
        raise ConfigError("structured output needs llguidance: pip install 'edgellm[server]'") from None
    return llguidance


# Whitespace between JSON tokens is bounded, as llama.cpp's JSON grammars bound it (`space ::= | " " | "\n"
# [ \t]{0,20}`): unbounded whitespace lets a small model pad forever and never close the object.
JSON_OPTIONS = {"whitespace_pattern": r"(?: |\n[ \t]{0,20})?", "item_separator": ",", "key_separator": ":"}


class _Vocabulary:
    """The tokenizer as llguidance's TokenizerWrapper expects it: every token's bytes (control tokens marked by a
    leading 0xFF, as its llama.cpp adapter does), EOS, and a text -> ids function."""

    def __init__(self, tokenizer):
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        self.bos_token_id = tokenizer.bos_id
        self.tokens = [b"\xff" + tokenizer.token_text(i).encode() if tokenizer.is_control(i) else tokenizer.token_bytes(i)
                       for i in range(tokenizer.n_vocab)]  # fmt: skip
        self.special_token_ids = [i for i in range(tokenizer.n_vocab) if tokenizer.is_control(i)]
        self._tokenizer = tokenizer

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


class Grammars:
    """Compiles response formats for one tokenizer (the vocabulary is converted once)."""

    def __init__(self, tokenizer):
        ll = _llguidance()
        self._ll = ll
        self.n_vocab = tokenizer.n_vocab
        self.tokenizer = ll.LLTokenizer(ll.TokenizerWrapper(_Vocabulary(tokenizer)), eos_token=sorted(tokenizer.eog_ids))

    def constraint(self, response_format: dict) -> "Constraint | None":
        """A fresh constraint for one request's response_format ({"type": "text" | "json_object" | "json_schema"}),
        or None for plain text. Raises ConfigError for a schema llguidance cannot compile."""
        kind = response_format.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            schema = {"type": "object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema", spec) if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise ConfigError("response_format.json_schema.schema must be a JSON schema object")
        else:
            raise ConfigError(f"unknown response_format type '{kind}'; use text, json_object or json_schema")
        try:
            grammar = self._ll.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"response_format: {e}") from None
        matcher = self._ll.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ConfigError(f"response_format: {matcher.get_error()}")
        return Constraint(matcher, self.n_vocab)


class Constraint:
    """One request's grammar state: which tokens may come next; it advances with each token drawn."""

    def __init__(self, matcher, n_vocab: int):
        self.matcher = matcher
        self.n_vocab = n_vocab

    def allowed(self) -> np.ndarray:
        mask = np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8)
        out = np.zeros(self.n_vocab, dtype=bool)
        n = min(self.n_vocab, mask.size)
        out[:n] = mask[:n] > 0
        return out

    def consume(self, token: int) -> bool:
        """Take `token`; True when nothing more can follow (the text is complete)."""
        self.matcher.consume_token(token)
        return self.matcher.is_stopped()

    @property
    def complete(self) -> bool:
        return self.matcher.is_accepting()
