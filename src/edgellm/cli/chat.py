"""`edgellm chat`: a REPL that keeps the conversation and renders it with the model's chat template.

Type /reset to forget the conversation, /exit (or end of input) to leave. The KV cache keeps the rendered
history, so each turn only evaluates the new tokens.
"""

from __future__ import annotations

import argparse
import sys

from .common import (add_context_arguments, add_distributed_arguments, add_model_argument, add_sampling_arguments,
                     load_llm, max_tokens, sampling_kwargs)  # fmt: skip


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--system", default=None, help="system message")
    add_context_arguments(parser)
    add_sampling_arguments(parser)
    add_distributed_arguments(parser)
    parser.set_defaults(n_predict=512)


def run_chat(args: argparse.Namespace) -> int:
    with load_llm(args) as llm:  # closing ends pipeline stages at once
        return _chat(llm, args)


def _chat(llm, args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    base = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(base)
    if interactive:
        print(f"chatting with {llm.model_path.name}; /reset clears the history, /exit leaves", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(base)
            continue
        messages.append({"role": "user", "content": line})
        reply = ""
        for chunk in llm.create_chat_completion(
            messages, max_tokens=max_tokens(args), stop=args.stop or None, stream=True, **sampling_kwargs(args)
        ):
            delta = chunk["choices"][0]["delta"].get("content", "")
            reply += delta
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        t = llm.session.timings
        if interactive:
            print(f"[{t.n_generated} tokens, {t.generate_tps:.1f} tok/s]", file=sys.stderr)
        messages.append({"role": "assistant", "content": reply})
    return 0
