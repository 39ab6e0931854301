"""`edgellm tokenize`: the token ids (and pieces) of a text, as the model's tokenizer splits it."""

from __future__ import annotations

import argparse

from .common import add_model_argument, print_json


def add_tokenize_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("text", help="text to tokenize")
    parser.add_argument("--no-bos", action="store_true", help="do not add BOS even if the model wants it")
    parser.add_argument("--no-special", action="store_true", help="treat special-token text as plain text")
    parser.add_argument("--ids", action="store_true", help="print only the ids, as one list")
    parser.add_argument("--json", action="store_true", help='print {"ids": [...]}')


def run_tokenize(args: argparse.Namespace) -> int:
    from ..formats.gguf import GGUFFile
    from ..hub import resolve
    from ..model.registry import gguf_config
    from ..tokenizer import Tokenizer

    with GGUFFile(resolve(args.model)) as gguf:
        gguf_config(gguf)  # a file whose model cannot run is refused here too
        tok = Tokenizer.from_metadata(gguf.metadata)
    ids = tok.encode(args.text, add_special=not args.no_bos, parse_special=not args.no_special)
    if args.json:
        print_json({"ids": ids})
    elif args.ids:
        print(ids)
    else:
        for i in ids:
            print(f"{i:>7} -> {tok.token_bytes(i).decode('utf-8', errors='replace')!r}")
    return 0
