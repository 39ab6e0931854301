"""`edgellm run`: one prompt in, streamed text out, speeds on stderr."""

from __future__ import annotations

import argparse
import sys

from .common import (add_context_arguments, add_distributed_arguments, add_model_argument, add_sampling_arguments,
                     load_llm, max_tokens, print_json, sampling_kwargs)  # fmt: skip

DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help="prompt text (default: a short question)")
    parser.add_argument("--raw", action="store_true", help="complete the prompt as is, without the chat template")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    add_context_arguments(parser)
    add_sampling_arguments(parser)
    add_distributed_arguments(parser)


def run_run(args: argparse.Namespace) -> int:
    with load_llm(args) as llm:  # closing ends pipeline stages at once
        return _run(llm, args)


def _run(llm, args: argparse.Namespace) -> int:
    if args.raw or not llm.chat_template:
        ids = llm.tokenize(args.prompt, add_bos=True, special=True)
    else:
        text = llm.apply_chat_template([{"role": "user", "content": args.prompt}])
        ids = llm.tokenizer.encode(text, add_special=False, parse_special=True)
    text = ""
    for delta, _ in llm.stream_text(ids, max_tokens(args), args.stop, **sampling_kwargs(args)):
        text += delta
        if not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
    generated = llm.generated
    t = llm.session.timings
    if args.json:
        print_json({
            "text": text, "tokens": generated, "n_prompt_tokens": len(ids),
            "prompt_tps": round(t.prompt_tps, 2), "gen_tps": round(t.generate_tps, 2),
            "n_tokens": t.n_generated, "finish_reason": llm.finish_reason, "model": str(llm.model_path),
            "bytes_read_per_token": t.bytes_read_per_token, "sparsity": args.sparsity, "head": args.head,
            "offload": None if llm.offload is None else {**llm.offload.to_dict(), **t.storage_stats()},
            "pipeline": pipeline_stats(llm.model),
        })  # fmt: skip
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(
            f"prompt: {len(ids)} tokens, {t.prompt_tps:.1f} tok/s | "
            f"generation: {t.n_generated} tokens, {t.generate_tps:.1f} tok/s",
            file=sys.stderr,
        )
        stats = pipeline_stats(llm.model)
        if stats:
            hops = ", ".join(f"{ms:.2f}" for ms in stats["hop_ms"])
            stages = ", ".join(f"{ms:.2f}" for ms in stats["stage_ms_per_token"])
            print(f"pipeline: {len(stats['stages'])} stages, compute [{stages}] ms/token, hops [{hops}] ms "
                  f"(driver→0 … →driver), {stats['link_bytes_per_token']:,.0f} link bytes/token", file=sys.stderr)
    return 0


def pipeline_stats(model) -> dict | None:
    """With --stages: each stage's layers, process and host, and what the decode steps spent per stage and hop."""
    if not hasattr(model, "pipeline"):
        return None
    return {"stages": model.describe(), **model.stats.to_dict()}
