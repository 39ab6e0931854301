"""`edgellm bench`: prompt-processing and generation speed, as llama-bench measures them."""

from __future__ import annotations

import argparse

from .common import add_model_argument, non_negative_int, positive_float, positive_int, print_json


def _thread_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2 — got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be positive integers, got '{text}'")
    from .. import kernels

    return sorted({kernels.usable_threads(v) for v in values})


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
    parser.add_argument("--mem-budget", type=_settings, default=[None], metavar="SIZE[,SIZE...]",
                        help="memory budgets to compare, e.g. off,50M,25M (weights that do not fit are streamed)")
    parser.add_argument("--offload-naive", action="store_true",
                        help="with --mem-budget: the naive baseline, every matrix re-read when needed")
    parser.add_argument("--stages", type=_stage_list, default=[1], metavar="N[,N...]",
                        help="pipeline stages to compare, e.g. 1,2,4 (1: one process; more: Ray actors, each with "
                             "the thread count; docs/distributed.md)")  # fmt: skip
    parser.add_argument("--link-gbps", type=positive_float, default=None, metavar="GB/S",
                        help="with --stages: emulate a link of this speed between stages")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")


def _offload(model, path, budget: str | None, args: argparse.Namespace, threads: int, sparsity, head):
    """The memory budget's plan for one bench setting (printed on stderr), set on the model; None: no budget."""
    import sys

    from ..errors import UnsupportedError
    from ..runtime import offload
    from ..runtime.kv_cache import KVCache

    if budget is None:
        return None
    if sparsity is not None or head is not None:
        raise UnsupportedError("--mem-budget with --sparsity or --head is not supported yet; use one or the other")
    n_ctx = args.depth + max(args.n_prompt, args.n_gen + 1)
    cache = KVCache(model.config, n_ctx)  # the cache each test makes (pages untouched until used)
    plan = offload.plan(model.config, model.store, model.output_name, str(path), offload.parse_size(budget),
                        cache.k.nbytes + cache.v.nbytes, n_ctx, threads, max(args.n_prompt, 1),
                        args.offload_naive)  # fmt: skip
    print(plan.summary(), file=sys.stderr)
    model.set_offload(plan)
    return plan


def _stage_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stage counts like 1,2,4 — got '{text}'") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"stage counts must be positive integers, got '{text}'")
    return values


def _settings(text: str) -> list[str | None]:
    """'0,0.4' -> ['0', '0.4']; 'off' / 'none' -> None (dense / full head)."""
    return [None if v.strip().lower() in ("off", "none", "") else v.strip() for v in text.split(",")]


def _bench_staged(model, path, stages: int, threads: int, args, sparsity, head, plan):
    """One bench setting in one process (stages 1) or over `stages` Ray actors of `threads` threads each."""
    from ..errors import ConfigError, UnsupportedError
    from ..eval.bench import bench

    if stages == 1:
        if args.link_gbps is not None and args.stages == [1]:
            raise ConfigError("--link-gbps emulates the link between pipeline stages: give --stages N too")
        return bench(model, path.name, args.n_prompt, args.n_gen, threads, args.repetitions, args.depth, sparsity,
                     head, plan)  # fmt: skip
    if sparsity is not None or head is not None or plan is not None:
        raise UnsupportedError("--stages with --sparsity, --head or --mem-budget is not supported yet")
    from ..distributed.pipeline import PipelineModel

    staged = PipelineModel(model, str(path), stages, threads, args.link_gbps)
    try:
        return bench(staged, path.name, args.n_prompt, args.n_gen, threads, args.repetitions, args.depth)
    finally:
        staged.close()


def run_bench(args: argparse.Namespace) -> int:
    import os

    from ..errors import ConfigError
    from ..formats.gguf import GGUFFile
    from ..hub import resolve
    from ..model.transformer import Transformer
    from ..runtime.store import MappedStore
    from ..sparse import profile

    path = resolve(args.model)
    gguf = GGUFFile(path)
    model = Transformer.from_store(gguf.metadata, MappedStore(gguf))
    results = []
    if args.offload_naive and args.mem_budget == [None]:
        raise ConfigError("--offload-naive needs a memory budget (--mem-budget SIZE)")
    for sparsity in args.sparsity:
        for head in args.head:
            profile.apply(model, path, sparsity, head)
            for budget in args.mem_budget:
                for threads in args.threads or [os.cpu_count() or 1]:
                    plan = _offload(model, path, budget, args, threads, sparsity, head)
                    for stages in args.stages:
                        results += _bench_staged(model, path, stages, threads, args, sparsity, head, plan)
                    model.set_offload(None)
    if args.json:
        print_json([r.to_dict() for r in results])
        return 0
    print(f"| {'model':<36} | {'path':<8} | {'sparsity':>8} | {'head':>5} | {'budget':>7} | {'threads':>7} | "
          f"{'stages':>6} | {'test':>14} | {'t/s':>16} | {'MB/token':>8} | {'from file':>9} | {'peak RSS':>9} |")  # fmt: skip
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 10}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 16}|{'-' * 18}|{'-' * 10}|"
          f"{'-' * 11}|{'-' * 11}|")  # fmt: skip
    for r in results:
        speed = f"{r.tps:.2f} ± {r.tps_sd:.2f}"
        read = f"{r.bytes_read_per_token / 1e6:.1f}" if r.bytes_read_per_token else "-"
        budget = f"{r.mem_budget / 1e6:.0f}M" if r.mem_budget else "-"
        stored = (r.offload or {}).get("storage_bytes_per_token")
        stored = f"{stored / 1e6:.1f}" if stored is not None else "-"
        print(f"| {r.model:<36} | {r.kernel_path:<8} | {r.sparsity or '0':>8} | {r.head or 'full':>5} | {budget:>7} | "
              f"{r.threads:>7} | {r.stages:>6} | {r.test:>14} | {speed:>16} | {read:>8} | {stored:>9} | {r.peak_rss_mb:>6.0f} MB |")  # fmt: skip
    return 0
