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
    parser.add_argument("--sparsity", type=_settings, default=[None], metavar="S[,S...]",
                        help="activation sparsity settings to compare in this run, e.g. 0,0.4 (0: dense; or files)")
    parser.add_argument("--head", type=_settings, default=[None], metavar="K[,K...]",
                        help="candidate head settings to compare, e.g. off,64 (off: the full head)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")


def _settings(text: str) -> list[str | None]:
    """'0,0.4' -> ['0', '0.4']; 'off' / 'none' -> None (dense / full head)."""
    return [None if v.strip().lower() in ("off", "none", "") else v.strip() for v in text.split(",")]


def run_bench(args: argparse.Namespace) -> int:
    import os

    from ..eval.bench import bench
    from ..formats.gguf import GGUFFile
    from ..hub import resolve
    from ..model.transformer import Transformer
    from ..runtime.store import MappedStore
    from ..sparse import profile

    path = resolve(args.model)
    gguf = GGUFFile(path)
    model = Transformer.from_store(gguf.metadata, MappedStore(gguf))
    results = []
    for sparsity in args.sparsity:
        for head in args.head:
            profile.apply(model, path, sparsity, head)
            for threads in args.threads or [os.cpu_count() or 1]:
                results += bench(model, path.name, args.n_prompt, args.n_gen, threads, args.repetitions, args.depth,
                                 sparsity, head)  # fmt: skip
    if args.json:
        print_json([r.to_dict() for r in results])
        return 0
    print(f"| {'model':<36} | {'path':<8} | {'sparsity':>8} | {'head':>5} | {'threads':>7} | {'test':>14} | {'t/s':>16} "
          f"| {'MB/token':>8} | {'peak RSS':>9} |")  # fmt: skip
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 10}|{'-' * 7}|{'-' * 9}|{'-' * 16}|{'-' * 18}|{'-' * 10}|{'-' * 11}|")
    for r in results:
        speed = f"{r.tps:.2f} ± {r.tps_sd:.2f}"
        read = f"{r.bytes_read_per_token / 1e6:.1f}" if r.bytes_read_per_token else "-"
        print(f"| {r.model:<36} | {r.kernel_path:<8} | {r.sparsity or '0':>8} | {r.head or 'full':>5} | {r.threads:>7} | "
              f"{r.test:>14} | {speed:>16} | {read:>8} | {r.peak_rss_mb:>6.0f} MB |")  # fmt: skip
    return 0
