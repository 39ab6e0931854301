"""`edgellm` command line: a table of subcommands, each in its own module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

# name -> (module, one-line help). Adding a command is one row here plus its module.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "generate text from a prompt"),
    "chat": ("chat", "interactive chat with the model's chat template"),
    "serve": ("serve", "OpenAI-compatible HTTP server with continuous batching and a chat page"),
    "pull": ("models", "download a model into the cache"),
    "list": ("models", "list cached and catalog models"),
    "show": ("models", "describe a model file"),
    "tokenize": ("tokenize", "print the token ids of a text"),
    "perplexity": ("perplexity", "perplexity of a text file, as llama.cpp computes it"),
    "bench": ("bench", "prompt and generation speed, as llama-bench measures them"),
    "quantize": ("quantize", "write a smaller GGUF: a llama.cpp type, one of ours, or a bits-per-weight budget"),
    "imatrix": ("quantize", "importance matrix (mean squared activations) from calibration text"),
    "kld": ("quantize", "KL divergence of a model's next-token distributions from a reference model's"),
    "sparsify": ("sparsify", "calibrate activation-sparsity thresholds and a candidate head for --sparsity / --head"),
    "devices": ("planner", "list the device profiles, or show one"),
    "calibrate": ("planner", "measure this machine into a device profile for the planner"),
    "plan": ("planner", "predict memory, TTFT, tokens/s, energy and the bottleneck of a model on a device"),
    "fit": ("planner", "configurations (type, sparsity, offload) that reach a decode speed on a device"),
    "sweep": ("planner", "plots: decode speed against bandwidth; what a device needs for a target speed"),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgellm", description="Run LLMs on memory-limited edge devices.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        mod = importlib.import_module(f"edgellm.cli.{module}")
        getattr(mod, f"add_{name}_arguments")(cmd)
        cmd.set_defaults(_handler=(module, name))
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, *_, **__: f"edgellm: warning: {message}\n"
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    module, name = args._handler
    handler = getattr(importlib.import_module(f"edgellm.cli.{module}"), f"run_{name}")
    from ..errors import EdgeLLMError
    from ..files import Terminated, sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM unwinds as Ctrl-C does: temporary files go, child processes end
            return handler(args) or 0
    except KeyboardInterrupt:
        print("edgellm: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("edgellm: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        return 0
    except (EdgeLLMError, OSError, UnicodeDecodeError) as e:
        if args.debug:
            raise
        print(f"edgellm {name}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # anything else is a bug of ours, but still one line (the traceback with --debug)
        if args.debug:
            raise
        print(f"edgellm {name}: error: {type(e).__name__}: {_one_line(e)} (an internal error: run with --debug for "
              "the traceback and report it)", file=sys.stderr)  # fmt: skip
        return 1


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
