"""`edgellm sparsify`: calibrate activation-sparsity thresholds and a cheap candidate head for a model, once, from
calibration text; `--sparsity S` and `--head K` on the other commands then use them."""

from __future__ import annotations

import argparse
import time

from .common import add_model_argument, positive_int, print_json, progress_bar, text_tokens


def _targets(text: str) -> list[float]:
    from ..sparse.profile import parse_target

    values = [parse_target(v) for v in text.split(",")]
    if any(v is None or v == 0.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1) such as 0.25,0.4, got '{text}'")
    return values


def add_sparsify_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("-f", "--file", required=True, help="calibration text (never the evaluation text)")
    parser.add_argument("--sparsity", type=_targets, default=[], metavar="S[,S...]",
                        help="model-wide sparsity targets to calibrate, e.g. 0.25,0.4,0.5")  # fmt: skip
    parser.add_argument("--head", type=positive_int, default=None, metavar="K",
                        help="also make the cheap head for K candidates (default rank 128, Q8_0)")
    parser.add_argument("--head-rank", type=int, default=128, metavar="R",
                        help="rank of the cheap head (a multiple of 32); 0: a 3-bit GPTQ copy of the whole head")
    parser.add_argument("--chunks", type=positive_int, default=8, help="calibration windows of 512 tokens")
    parser.add_argument("-t", "--threads", type=positive_int, default=None)
    parser.add_argument("--json", action="store_true", help="print what was written, per target")


def run_sparsify(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import kernels
    from ..api import LLM
    from ..errors import ConfigError
    from ..model.sparsity import GROUPS
    from ..sparse import head, profile
    from ..sparse.calibrate import calibrate

    if not args.sparsity and args.head is None:
        raise ConfigError("nothing to do: give --sparsity S[,S...] and/or --head K")
    llm = LLM(args.model, n_threads=args.threads)
    kernels.set_threads(llm.n_threads)
    tok = llm.tokenizer
    tokens = text_tokens(args.file, tok)
    bos = tok.bos_id if tok.add_bos else None
    written = []
    for target in args.sparsity:
        bar = progress_bar("layer", f"sparsity {target:g}")

        def on_layer(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        t0 = time.perf_counter()
        th = calibrate(llm.model, tokens, target, n_chunks=args.chunks, bos_id=bos, name=args.file, progress=on_layer)
        bar.close()
        path = th.save(profile.thresholds_path(llm.model_path, target), overwrite=True)
        per_group = {g: float(np.mean(th.sparsity[:, i])) for i, g in enumerate(GROUPS)}
        written.append({"sparsity": target, "file": str(path), "seconds": round(time.perf_counter() - t0, 1),
                        "mean_sparsity_per_group": per_group})  # fmt: skip
    if args.head is not None:
        t0 = time.perf_counter()
        h = head.build(llm.model, tokens, args.head_rank, args.head, n_chunks=min(args.chunks, 4), bos_id=bos,
                       name=args.file)  # fmt: skip
        path = h.save(profile.head_path(llm.model_path), overwrite=True)
        written.append({"head": args.head, "file": str(path), "type": h.type.name, "mb": round(h.nbytes / 1e6, 2),
                        "rank": 0 if h.proj is None else int(h.proj.shape[0]),
                        "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    if args.json:
        print_json(written)
    else:
        for w in written:
            what = f"sparsity {w['sparsity']:g}" if "sparsity" in w else f"head ({w['type']}, {w['mb']} MB)"
            extra = "" if "sparsity" not in w else " | " + ", ".join(f"{g} {v:.0%}" for g, v in w["mean_sparsity_per_group"].items())
            print(f"{what}: {w['file']} ({w['seconds']} s){extra}")
    return 0
