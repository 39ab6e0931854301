"""`edgellm serve`: the OpenAI-compatible HTTP server (continuous batching, prompt cache, structured output,
a chat page at /). Every flag can also come from an environment variable, EDGELLM_<FLAG> (e.g. EDGELLM_PORT)."""

from __future__ import annotations

import argparse
import os
import sys

from .common import add_cache_type_argument, add_model_argument, bounded, positive_float, positive_int

non_negative_int = bounded(int, 0, what="an integer >= 0")
port_number = bounded(int, 0, 65535, what="a port number 0..65535")


def _env(name: str, default=None, cast=str):
    """The default of --name from EDGELLM_NAME when set (read through the flag's own type)."""
    text = os.environ.get("EDGELLM_" + name.upper().replace("-", "_"))
    if text is None:
        return default
    try:
        return cast(text)
    except (ValueError, argparse.ArgumentTypeError) as e:
        sys.exit(f"edgellm serve: error: EDGELLM_{name.upper().replace('-', '_')}={text!r}: {e}")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from .common import _size

    add_model_argument(parser)
    if os.environ.get("EDGELLM_MODEL"):
        parser.set_defaults(model=os.environ["EDGELLM_MODEL"])
    parser.add_argument("--host", default=_env("host", "127.0.0.1"),
                        help="address to listen on (default: loopback only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=port_number, default=_env("port", 8080, port_number), help="TCP port")
    parser.add_argument("-np", "--parallel", type=positive_int, default=_env("parallel", 4, positive_int),
                        help="sequences decoded together, each with its own KV cache (slots)")
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=_env("ctx_size", 2048, positive_int),
                        help="context of each sequence in tokens (prompt + completion)")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=_env("batch_size", 256, positive_int),
                        help="tokens per forward step: every decoding slot's next token plus prompt chunks")
    parser.add_argument("-t", "--threads", type=positive_int, default=_env("threads", None, positive_int),
                        help="CPU threads (default: all)")
    parser.add_argument("--api-key", default=_env("api_key"), help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--queue-size", type=non_negative_int, default=_env("queue_size", 64, non_negative_int),
                        help="requests waiting for a slot before new ones get 503")
    parser.add_argument("--timeout", type=positive_float, default=_env("timeout", 600.0, positive_float),
                        help="seconds a request may take, waiting included (then 504)")
    parser.add_argument("--max-body", type=_size, default=_env("max_body", 4 << 20, _size), metavar="SIZE",
                        help="largest request body (default 4M; larger gets 413)")
    parser.add_argument("--mem-budget", type=_size, default=_env("mem_budget", None, _size), metavar="SIZE",
                        help="weights, every slot's KV cache and buffers stay within SIZE; the rest is streamed "
                             "from the model file")  # fmt: skip
    parser.add_argument("--sparsity", default=_env("sparsity"), metavar="S|FILE",
                        help="activation sparsity (see 'edgellm run --help')")
    parser.add_argument("--stages", type=positive_int, default=_env("stages", None, positive_int), metavar="N",
                        help="split the layers into N pipeline stages on Ray actors, each with --threads threads "
                             "(pip install 'edgellm[distributed]'; docs/distributed.md)")  # fmt: skip
    parser.add_argument("--link-gbps", type=positive_float, default=_env("link_gbps", None, positive_float),
                        metavar="GB/S", help="with --stages: emulate a link of this speed between stages")
    add_cache_type_argument(parser, default="f16")  # llama-server's default: every slot holds a cache
    if os.environ.get("EDGELLM_CACHE_TYPE"):
        parser.set_defaults(cache_type=os.environ["EDGELLM_CACHE_TYPE"])


def run_serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    try:
        from ..server.app import ServerConfig, serve
    except ImportError as e:
        raise ConfigError(f"the server needs its extra packages ({e.name} is missing): "
                          "pip install 'edgellm[server]'") from None  # fmt: skip

    config = ServerConfig(model=args.model, host=args.host, port=args.port, parallel=args.parallel,
                          ctx_size=args.ctx_size, n_batch=args.batch_size, threads=args.threads, api_key=args.api_key,
                          mem_budget=args.mem_budget, sparsity=args.sparsity, cache_type=args.cache_type,
                          queue_size=args.queue_size, timeout=args.timeout, max_body_bytes=args.max_body,
                          stages=args.stages, link_gbps=args.link_gbps)  # fmt: skip
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    print(f"edgellm serve: {args.model} on {where} ({args.parallel} slots x {args.ctx_size} tokens); "
          f"chat page at {where}/, API at {where}/v1", file=sys.stderr)  # fmt: skip
    serve(config)
    return 0
