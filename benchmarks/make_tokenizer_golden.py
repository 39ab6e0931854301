"""Golden token ids from llama.cpp (through llama-cpp-python) for edgellm's tokenizer tests.

Run it with an interpreter that has `llama-cpp-python` installed (never a dependency of edgellm):

    python benchmarks/make_tokenizer_golden.py smollm2-135m=SmolLM2.gguf gemma3-270m=gemma3.gguf \
        --calibration ../shared/data/calibration/groups_merged.txt --out tests/fixtures/tokenizer_golden.json

Each model argument is NAME=PATH (NAME keys the output). The output maps each name to a list of
{text, add_special, parse_special, ids, decoded, decoded_skip_special}: `ids` from `llama_tokenize`,
`decoded` from `llama_detokenize(ids, remove_special=False, unparse_special=True)` and
`decoded_skip_special` from `llama_detokenize(ids, remove_special=True, unparse_special=False)`.
Only the vocabulary is loaded (vocab_only), so this takes a second per model.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

# Texts chosen to hit every branch of the pre-tokenizers and of the SPM merge loop.
TEXTS: list[str] = [
    "Hello world",
    "",
    " leading space",
    "trailing space ",
    "   runs   of    spaces   ",
    "line1\nline2\n\n\nline5\r\nwindows\rcr",
    "\n\n\n",
    "\t\tdef foo(x):\n\t\treturn x  # comment\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "1234567890 3.14159 -42 1,000,000 0x1F 2024-05-09",
    "The year 1999 and 123456789012345678901234567890",
    "你好，世界！今天天气很好。",
    "こんにちは世界。カタカナとひらがな、漢字。",
    "안녕하세요 세계, 반갑습니다",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Привет, мир! Как дела?",
    "I love 🍕 and 🎉🎉!",
    "Family: 👨‍👩‍👧‍👦, flags 🇺🇸🇯🇵, skin 👍🏽",
    "I'm, you're, he's, we've, they'll, she'd, can't, DON'T, It'S",
    "HeLLo WoRLD CamelCaseIdentifier snake_case_name ALLCAPS",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> and <|endoftext|>after",
    "rare: \u2003em space, \U00013000 hieroglyph, \U0010fffd private, \x1b[31mansi\x1b[0m",
    "Mixed 中文 and English, with numbers 42.",
    "café naïve résumé, e\u0301 combining, Ǆ titlecase, ½ ² Ⅻ ٣",
    "Wait... what?!? (yes) [no] {maybe} <tag> a--b — c",
    '<div class="x"><b>bold</b> <s>strike</s></div>',
    "a\u00a0b\u2009c\u3000d\u0085e",
    "https://example.com/path?q=1&x=2 user@example.org",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!! ........",
]


CALIBRATION_OFFSET = 20000  # characters; skips the first paragraphs, any fixed slice would do
CALIBRATION_CHARS = 2000


def _detokenize(vocab, ids: list[int], remove_special: bool, unparse_special: bool) -> str:
    import llama_cpp

    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 16 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
        if n >= 0:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = -n + 1


def golden_for_model(path: str, texts: list[str]) -> list[dict]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    cases = []
    for text in texts:
        flags = [(True, True), (False, True)]
        if "<" in text:  # may contain special-token text: try every flag combination
            flags += [(True, False), (False, False)]
        for add_special, parse_special in flags:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
            cases.append(
                {
                    "text": text,
                    "add_special": add_special,
                    "parse_special": parse_special,
                    "ids": ids,
                    "decoded": _detokenize(vocab, ids, False, True),
                    "decoded_skip_special": _detokenize(vocab, ids, True, False),
                }
            )
    return cases


def _dump(golden: dict[str, list[dict]]) -> str:
    # One case per line keeps diffs of this file readable.
    lines = ["{"]
    for m, (name, cases) in enumerate(golden.items()):
        lines.append(f"  {json.dumps(name)}: [")
        for c, case in enumerate(cases):
            sep = "," if c + 1 < len(cases) else ""
            lines.append("    " + json.dumps(case, ensure_ascii=False) + sep)
        lines.append("  ]" + ("," if m + 1 < len(golden) else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL.gguf")
    ap.add_argument("--calibration", type=Path, help="text file; a fixed 2000-character slice becomes one case")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    texts = list(TEXTS)
    if args.calibration is not None:
        calib = args.calibration.read_text(encoding="utf-8")
        texts.append(calib[CALIBRATION_OFFSET : CALIBRATION_OFFSET + CALIBRATION_CHARS])

    golden = {}
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep:
            print(f"{spec}: expected NAME=MODEL.gguf, e.g. smollm2-135m=SmolLM2.gguf", file=sys.stderr)
            return 2
        golden[name] = golden_for_model(path, texts)
        print(f"{name}: {len(golden[name])} cases", file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_dump(golden), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
