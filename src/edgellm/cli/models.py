"""`edgellm pull`, `list` and `show`: the model cache and what is inside a file."""

from __future__ import annotations

import argparse
from collections import Counter

from .common import print_json


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="catalog name (see 'edgellm list') or hf://owner/repo/file.gguf")
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")


def run_pull(args: argparse.Namespace) -> int:
    from .. import hub

    print(hub.pull(args.model, force=args.force))
    return 0


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def run_list(args: argparse.Namespace) -> int:
    from .. import hub

    rows = hub.list_models()
    if args.json:
        print_json(rows)
        return 0
    print(f"{'NAME':<28} {'SIZE':>9}  {'PULLED':<6}  PATH")
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.1f} MB" if r["size_bytes"] else "?"
        print(f"{r['name']:<28} {size:>9}  {'yes' if r['pulled'] else 'no':<6}  {r['path'] or ''}")
    return 0


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="catalog name, .gguf path or hf:// URI")
    parser.add_argument("--json", action="store_true")


def describe(path) -> dict:
    """What a user wants to know about a model file before running it."""
    from ..formats.gguf import GGUFFile
    from ..model.registry import gguf_config

    with GGUFFile(path) as gguf:
        meta = gguf.metadata
        tensors = gguf.tensors.values()
        n_weights = sum(t.n_elements for t in tensors)
        n_bytes = sum(t.n_bytes for t in tensors)
        types = Counter(t.type.name for t in tensors)
        config = gguf_config(gguf)
        return {
            "path": str(path),
            "name": meta.get("general.name"),
            "architecture": config.architecture,
            "context_length": config.n_ctx_train,
            "n_layers": config.n_layers,
            "n_embd": config.n_embd,
            "n_head": config.n_head,
            "n_head_kv": config.n_head_kv,
            "n_vocab": config.n_vocab,
            "n_params": n_weights,
            "file_size_bytes": gguf.file_size,
            "bits_per_weight": round(8 * n_bytes / n_weights, 3),
            "tensor_types": dict(types.most_common()),
            "tokenizer": meta.get("tokenizer.ggml.model"),
            "chat_template": "tokenizer.chat_template" in meta,
        }


def run_show(args: argparse.Namespace) -> int:
    from ..hub import resolve

    info = describe(resolve(args.model))
    if args.json:
        print_json(info)
        return 0
    for key, value in info.items():
        if key == "tensor_types":
            value = ", ".join(f"{k} x{v}" for k, v in value.items())
        print(f"{key:<16} {value}")
    return 0
