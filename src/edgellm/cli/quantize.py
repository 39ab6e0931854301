"""`edgellm quantize`, `edgellm imatrix` and `edgellm kld`: make smaller models and measure what they lost."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_model_argument,
    add_sparsity_arguments,
    sparsity_kwargs,
    positive_float,
    positive_int,
    print_json,
    progress_bar,
    text_tokens,
)


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    from ..quant.mixes import MIXES

    parser.add_argument("input", help="GGUF file (any supported type), catalog name, or Hugging Face model directory")
    parser.add_argument("output", help="GGUF file to write")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--type", help=f"quantization type: {', '.join(MIXES)}")
    what.add_argument("--bpw", type=positive_float, help="mixed precision at this average bits per weight")
    parser.add_argument("--imatrix", help="importance matrix from `edgellm imatrix` (or llama-imatrix)")
    parser.add_argument("--token-embedding-type", metavar="TYPE",
                        help="type of token_embd (and of the output when tied); with --bpw the budget is then "
                             "spent on the other tensors")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the per-tensor plan and size, write nothing")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    parser.add_argument("-t", "--threads", type=positive_int, default=None)
    parser.add_argument("--json", action="store_true", help="print the plan (and result) as JSON")


def run_quantize(args: argparse.Namespace) -> int:
    from .. import hub
    from ..errors import ConfigError
    from ..quant.imatrix import ImportanceMatrix
    from ..quant.mixes import get_mix
    from ..quant.quantize import check_quantizable, plan_mix, write_quantized
    from ..quant.source import open_source

    src_path = Path(args.input) if Path(args.input).is_dir() else hub.resolve(args.input)
    out = Path(args.output)
    if out.exists() and out.resolve() == src_path.resolve():
        raise ConfigError(f"OUTPUT is the INPUT file ({out}); write the quantized model to a new file")
    if out.exists() and not args.force and not args.dry_run:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    imatrix = ImportanceMatrix.load(args.imatrix) if args.imatrix else None
    source = open_source(src_path)
    fixed = {}
    if args.token_embedding_type:
        from ..formats.quants import GGMLType

        try:
            fixed["token_embd.weight"] = GGMLType[args.token_embedding_type.upper()]
        except KeyError:
            raise ConfigError(f"unknown tensor type '{args.token_embedding_type}'; choose one of: "
                              + ", ".join(t.name for t in GGMLType)) from None  # fmt: skip
    if args.bpw is not None:
        from ..quant.allocate import plan_bpw

        plan = plan_bpw(source, args.bpw, imatrix, threads=args.threads, fixed=fixed)
    else:
        plan = plan_mix(source, get_mix(args.type), has_imatrix=imatrix is not None).with_types(fixed)

    check_quantizable(plan)
    if args.dry_run or not args.json:
        _print_plan(plan, args.json, verbose=args.dry_run)
    if args.dry_run:
        return 0
    bar = progress_bar("tensor")
    bar.total = len(plan.tensors)

    def progress(t) -> None:
        bar.set_postfix_str(f"{t.name} -> {t.type.name}")
        bar.update(1)

    path = write_quantized(source, plan, out, imatrix=imatrix, overwrite=args.force, threads=args.threads,
                           progress=progress)  # fmt: skip
    bar.close()
    size = path.stat().st_size
    if args.json:
        print_json({**_plan_json(plan), "output": str(path), "file_bytes": size})
    else:
        print(f"wrote {path}: {size / 1e6:.1f} MB, {plan.bits_per_weight:.3f} bits per weight ({plan.label})")
    return 0


def _plan_json(plan) -> dict:
    return {
        "label": plan.label,
        "bits_per_weight": plan.bits_per_weight,
        "n_bytes": plan.n_bytes,
        "n_elements": plan.n_elements,
        "types": {k: {"tensors": v[0], "weights": v[1], "bytes": v[2]} for k, v in plan.by_type().items()},
        "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.type.name, "bytes": t.n_bytes} for t in plan.tensors],
    }


def _print_plan(plan, as_json: bool, verbose: bool) -> None:
    if as_json:
        print_json(_plan_json(plan))
        return
    if verbose:
        for t in plan.tensors:
            shape = "x".join(map(str, t.shape))
            print(f"{t.name:36s} {shape:>14s} {t.source_type.name:>6s} -> {t.type.name:6s} {t.n_bytes / 1e6:8.3f} MB")
    print(f"{'type':8s} {'tensors':>7s} {'weights':>12s} {'MB':>9s} {'bpw':>6s}")
    for name, (n, weights, nbytes) in plan.by_type().items():
        print(f"{name:8s} {n:7d} {weights:12d} {nbytes / 1e6:9.2f} {8 * nbytes / weights:6.3f}")
    print(f"total: {plan.n_bytes / 1e6:.2f} MB of tensors, {plan.bits_per_weight:.3f} bits per weight ({plan.label}); "
          f"transformer blocks alone: {plan.bits_per_weight_where(lambda n: n.startswith('blk.')):.3f}")  # fmt: skip


def add_imatrix_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("-f", "--file", required=True, help="calibration text (never the evaluation text)")
    parser.add_argument("-o", "--output", default="imatrix.gguf", help="file to write (default: imatrix.gguf)")
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=512, help="window size in tokens")
    parser.add_argument("--chunks", type=positive_int, default=None, help="use only the first K windows")
    parser.add_argument("--gptq", action="store_true",
                        help="also record full input second moments, for GPTQ error compensation in quantize")  # fmt: skip
    parser.add_argument("--sensitivity", action="store_true",
                        help="also measure each tensor's effect on the output (KLD), which --bpw uses to place bits")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    parser.add_argument("-t", "--threads", type=positive_int, default=None)


def run_imatrix(args: argparse.Namespace) -> int:
    from ..api import LLM
    from ..errors import ConfigError
    from ..quant.imatrix import collect

    out = Path(args.output)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    llm = LLM(args.model, n_ctx=args.ctx_size, n_threads=args.threads)
    tok = llm.tokenizer
    tokens = text_tokens(args.file, tok)
    bar = progress_bar("chunk")

    def on_chunk(done: int, total: int) -> None:
        bar.total = total
        bar.update(1)

    imatrix = collect(llm.model, tokens, args.ctx_size, args.chunks, tok.bos_id if tok.add_bos else None, on_chunk,
                      record_xtx=args.gptq)  # fmt: skip
    bar.close()
    if args.sensitivity:
        _measure_sensitivity(llm, tokens, imatrix)
    imatrix.datasets = [Path(args.file).name]
    imatrix.save(out, overwrite=args.force)
    print(f"wrote {out}: {len(imatrix.entries)} weights, {imatrix.chunk_count} chunks of {args.ctx_size} tokens")
    return 0


SENSITIVITY_WINDOWS, SENSITIVITY_CTX = 4, 256


def _measure_sensitivity(llm, tokens, imatrix) -> None:
    from ..errors import ConfigError
    from ..quant.allocate import priced_after_gptq, quantize_and_error
    from ..quant.sensitivity import measure

    n = SENSITIVITY_WINDOWS * SENSITIVITY_CTX
    if len(tokens) < n:
        raise ConfigError(f"measuring sensitivity needs {n} calibration tokens, the text has {len(tokens)}")
    windows = tokens[:n].reshape(SENSITIVITY_WINDOWS, SENSITIVITY_CTX).copy()
    if llm.tokenizer.add_bos:
        windows[:, 0] = llm.tokenizer.bos_id
    bar = progress_bar("tensor", "sensitivity")

    def error(name, w, t):
        n_in = w.shape[-1]
        return quantize_and_error(w, t, imatrix.importance(name, n_in), imatrix.hessian(name, n_in),
                                  compensate=priced_after_gptq(name))  # fmt: skip

    def on_tensor(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(1)

    imatrix.gains = measure(llm.model, windows, error, on_tensor)
    bar.close()


def add_kld_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, help="reference model (e.g. the F16 file the others came from)")
    add_model_argument(parser)
    parser.add_argument("-f", "--file", required=True, help="text file to score (e.g. wiki.test.raw)")
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=512, help="window size in tokens")
    parser.add_argument("--chunks", type=positive_int, default=None, help="score only the first K windows")
    parser.add_argument("-t", "--threads", type=positive_int, default=None)
    add_sparsity_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help='print {"kld_mean", "kld_stderr", "same_top_pct", "ppl", "ppl_ref", "n_chunks"}')  # fmt: skip


def run_kld(args: argparse.Namespace) -> int:
    from ..api import LLM
    from ..eval.kld import kl_divergence

    llm = LLM(args.model, n_ctx=args.ctx_size, n_threads=args.threads, **sparsity_kwargs(args))
    ref = LLM(args.ref, n_ctx=args.ctx_size, n_threads=args.threads)
    tok = llm.tokenizer
    tokens = text_tokens(args.file, tok)
    bar = progress_bar("chunk")

    def on_chunk(done: int, total: int, kld: float) -> None:
        bar.total = total
        bar.set_postfix(kld=f"{kld:.5f}")
        bar.update(1)

    r = kl_divergence(ref.model, llm.model, tokens, args.ctx_size, args.chunks,
                      bos_id=tok.bos_id if tok.add_bos else None, on_chunk=on_chunk)  # fmt: skip
    bar.close()
    if args.json:
        print_json(r.to_dict())
    else:
        print(f"mean KLD = {r.kld_mean:.6f} +/- {r.kld_stderr:.6f}; same top token {r.same_top_pct:.2f} %; "
              f"PPL {r.ppl:.4f} (reference {r.ppl_ref:.4f}); {r.n_chunks} chunks of {args.ctx_size}")  # fmt: skip
    return 0
