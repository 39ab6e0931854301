"""Argument groups and output helpers shared by several commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def bounded(cast, low=None, high=None, *, low_open=False, high_open=False, what="a number"):
    """An argparse type: `cast(text)` within [low, high] (an open end excludes its bound)."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
        if value != value or value in (float("inf"), float("-inf")) or (
            low is not None and (value < low or (low_open and value == low))
        ) or (high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = bounded(int, 0, low_open=True, what="a positive integer")
non_negative_int = bounded(int, 0, what="an integer >= 0")
positive_float = bounded(float, 0.0, low_open=True, what="a positive number")
non_negative_float = bounded(float, 0.0, what="a number >= 0")
fraction = bounded(float, 0.0, 1.0, high_open=True, what="a fraction in [0, 1)")


def add_model_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    from ..hub import DEFAULT_MODEL  # light import: no numpy

    parser.add_argument(
        "-m", "--model", default=default or DEFAULT_MODEL,
        help=f"catalog name, .gguf path or hf://owner/repo/file.gguf (default: {default or DEFAULT_MODEL})",
    )  # fmt: skip


def add_context_arguments(parser: argparse.ArgumentParser, ctx_default: int = 2048) -> None:
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=ctx_default, help="context size in tokens")
    parser.add_argument("-t", "--threads", type=positive_int, default=None, help="CPU threads (default: all)")
    add_cache_type_argument(parser)
    add_sparsity_arguments(parser)
    add_memory_arguments(parser)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("memory budget")
    g.add_argument("--mem-budget", default=None, metavar="SIZE", type=_size,
                   help="weights, KV cache and buffers stay within SIZE (e.g. 50M, 1.5G); weights that do not fit "
                        "are streamed from the model file every token")  # fmt: skip
    g.add_argument("--offload-naive", action="store_true",
                   help="with --mem-budget: the naive baseline, every matrix re-read when it is needed, no overlap")


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pipeline stages (docs/distributed.md)")
    g.add_argument("--stages", type=positive_int, default=None, metavar="N",
                   help="split the layers into N pipeline stages, each a Ray actor with --threads threads "
                        "(pip install 'edgellm[distributed]')")  # fmt: skip
    g.add_argument("--link-gbps", type=positive_float, default=None, metavar="GB/S",
                   help="with --stages: emulate a link of this speed between stages (sleep by message size)")
    g.add_argument("--link-latency-us", type=non_negative_float, default=0.0, metavar="US",
                   help="with --link-gbps: a fixed latency per message, microseconds")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --stages: a running Ray cluster (default: start a local one)")


def distributed_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"stages": getattr(args, "stages", None), "link_gbps": getattr(args, "link_gbps", None),
            "link_latency_us": getattr(args, "link_latency_us", 0.0), "ray_address": getattr(args, "ray_address", None)}


def _size(text: str) -> int:
    from ..errors import ConfigError
    from ..runtime.offload import parse_size

    try:
        return parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


def memory_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"mem_budget": getattr(args, "mem_budget", None), "offload_naive": getattr(args, "offload_naive", False)}


def report_offload(llm) -> None:
    """The memory budget's split, on stderr, when there is one."""
    if llm.offload is not None:
        print(llm.offload.summary(), file=sys.stderr)


def add_sparsity_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("reading less per token")
    g.add_argument("--sparsity", default=None, metavar="S|FILE",
                   help="activation sparsity: a model-wide target such as 0.4 (calibrated once by 'edgellm sparsify') "
                        "or a thresholds file; inputs below their layer's threshold are skipped")  # fmt: skip
    g.add_argument("--head", default=None, metavar="K|FILE",
                   help="score K candidate tokens exactly, all others with the cheap head made by "
                        "'edgellm sparsify --head' (or a head file)")  # fmt: skip


def sparsity_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"sparsity": getattr(args, "sparsity", None), "head": getattr(args, "head", None)}


def add_cache_type_argument(parser: argparse.ArgumentParser, default: str = "f32") -> None:
    parser.add_argument("--cache-type", choices=["f32", "f16", "q8_0"], default=default,
                        help=f"KV cache storage: f32, f16 (half the memory) or q8_0 (about a quarter); "
                             f"default {default}")  # fmt: skip


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (-1: until done)")
    g.add_argument("--temp", type=non_negative_float, default=0.8, help="temperature (0: greedy)")
    g.add_argument("--top-k", type=non_negative_int, default=40, help="0: off")
    g.add_argument("--top-p", type=bounded(float, 0.0, 1.0, low_open=True, what="a number in (0, 1]"), default=0.95)
    g.add_argument("--min-p", type=bounded(float, 0.0, 1.0, what="a number in [0, 1]"), default=0.05)
    g.add_argument("--repeat-penalty", type=positive_float, default=1.0)
    g.add_argument("--seed", type=int, default=None, help="random seed (default and -1: random, as llama.cpp)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, seed=None if args.seed == -1 else args.seed,
    )  # fmt: skip


def max_tokens(args: argparse.Namespace) -> int | None:
    return None if args.n_predict < 0 else args.n_predict


def load_llm(args: argparse.Namespace):
    from ..api import LLM

    llm = LLM(args.model, n_ctx=args.ctx_size, n_threads=args.threads, cache_type=args.cache_type,
              **sparsity_kwargs(args), **memory_kwargs(args), **distributed_kwargs(args))  # fmt: skip
    report_offload(llm)
    return llm


def text_tokens(path: str, tokenizer):
    """A text file's tokens as llama.cpp's tools take them (BOS when the vocabulary adds one)."""
    import numpy as np

    with open(path, encoding="utf-8") as f:
        return np.asarray(tokenizer.encode(f.read(), add_special=True, parse_special=False))


def progress_bar(unit: str, desc: str | None = None):
    """A tqdm bar on stderr, shown only on a terminal; callers set .total when they learn it."""
    from tqdm import tqdm

    return tqdm(total=0, unit=unit, desc=desc, disable=not sys.stderr.isatty(), file=sys.stderr)


def print_json(obj: Any) -> None:
    """Strict JSON: a NaN or infinity is an error here rather than a token no JSON parser accepts."""
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=1, allow_nan=False)
    sys.stdout.write("\n")
