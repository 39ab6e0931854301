"""`edgellm bench`: prompt-processing and generation speed, as llama-bench measures them."""

from __future__ import annotations

import argparse

from .common import add_model_argument, non_negative_int, positive_int, print_json


def _thread_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2 — got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be positive integers, got '{text}'")
    return values


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("-p", "--n-prompt", type=non_negative_int, default=512, help="prompt tokens (0 skips pp)")
    parser.add_argument("-n", "--n-gen", type=non_negative_int, default=128, help="generated tokens (0 skips tg)")
    parser.add_argument("-d", "--depth", type=non_negative_int, default=0,
                        help="tokens already in the KV cache when each test starts (llama-bench's -d)")
    parser.add_argument("-t", "--threads", type=_thread_list, default=None, help="thread counts, e.g. 1,2")
    parser.add_argument("-r", "--repetitions", type=positive_int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")


def run_bench(args: argparse.Namespace) -> int:
    import os

    from ..eval.bench import bench
    from ..formats.gguf import GGUFFile
    from ..hub import resolve
    from ..model.transformer import Transformer
    from ..runtime.store import MappedStore

    path = resolve(args.model)
    gguf = GGUFFile(path)
    model = Transformer.from_store(gguf.metadata, MappedStore(gguf))
    results = []
    for threads in args.threads or [os.cpu_count() or 1]:
        results += bench(model, path.name, args.n_prompt, args.n_gen, threads, args.repetitions, args.depth)
    if args.json:
        print_json([r.to_dict() for r in results])
        return 0
    print(f"| {'model':<36} | {'path':<8} | {'threads':>7} | {'test':>14} | {'t/s':>16} | {'peak RSS':>9} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 9}|{'-' * 16}|{'-' * 18}|{'-' * 11}|")
    for r in results:
        speed = f"{r.tps:.2f} ± {r.tps_sd:.2f}"
        print(f"| {r.model:<36} | {r.kernel_path:<8} | {r.threads:>7} | {r.test:>14} | {speed:>16} | "
              f"{r.peak_rss_mb:>6.0f} MB |")  # fmt: skip
    return 0
