"""Python API shaped like llama-cpp-python's `Llama`: completions and chat completions as OpenAI-style dicts."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Iterator, Sequence

from . import hub, kernels
from .chat_template import default_template, render_chat
from .errors import ConfigError, UnsupportedError
from .formats.gguf import GGUFFile
from .model.transformer import Transformer
from .runtime.sampling import SamplingParams, make_sampler
from .runtime.session import Session, common_prefix
from .runtime.stops import StopText
from .runtime.store import MappedStore
from .tokenizer import StreamDecoder, Tokenizer


class LLM:
    """A loaded model ready to generate.

    Args:
        model: catalog name (e.g. "smollm2-135m"), path to a .gguf file, or hf://owner/repo/file.gguf.
        n_ctx: context size in tokens (prompt + generated); capped at the model's training context.
        n_threads: CPU threads for the kernels (the NumPy path uses what its BLAS uses).
        n_batch: prompt tokens evaluated per forward pass.
        cache_type: KV cache storage, "f32", "f16" or "q8_0" (llama.cpp's --cache-type-k/-v).
        sparsity: model-wide activation sparsity (e.g. 0.4, calibrated once by `edgellm sparsify`) or a
            thresholds file; None: dense.
        head: candidates scored exactly by the head (e.g. 64; the cheap head made by `edgellm sparsify --head`)
            or a head file; None: the full head.
        mem_budget: bytes (or a size such as "60M") that weights, KV cache and buffers must stay within; what does
            not fit is streamed from the model file every token (runtime/offload.py). None: the file is mapped.
        offload_naive: with mem_budget, the naive baseline: every matrix re-read when needed, nothing overlapped.
        logits_all: with mem_budget, count every prompt position's logits in the buffers (for perplexity).
        n_parallel: sequences that run at once (the server's slots): with mem_budget, the budget holds this many
            KV caches, and at most this many generations run at once.
        stages: split the layers into this many pipeline stages, each a Ray actor with n_threads threads
            (distributed/pipeline.py); None: one process.
        link_gbps, link_latency_us: with stages, emulate a link of this speed between stages (each hop sleeps for
            its message's size); None: as fast as the machine passes them.
        ray_address: with stages, the Ray cluster to run them on (None: a local one).
    """

    def __init__(
        self,
        model: str | os.PathLike = hub.DEFAULT_MODEL,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int | None = None,
        pull: bool = True,
        cache_type: str = "f32",
        sparsity: str | float | None = None,
        head: str | int | None = None,
        mem_budget: str | int | None = None,
        offload_naive: bool = False,
        logits_all: bool = False,
        n_parallel: int = 1,
        stages: int | None = None,
        link_gbps: float | None = None,
        link_latency_us: float = 0.0,
        ray_address: str | None = None,
    ):
        if n_ctx <= 0 or n_batch <= 0:
            raise ConfigError(f"n_ctx and n_batch must be positive (got n_ctx={n_ctx}, n_batch={n_batch})")
        self._n_batch_default = n_batch
        self.model_path = hub.resolve(model, pull=pull)
        self.gguf = GGUFFile(self.model_path)
        self.metadata = self.gguf.metadata
        self.model = Transformer.from_store(self.metadata, MappedStore(self.gguf))
        self.tokenizer = Tokenizer.from_metadata(self.metadata)
        self.config = self.model.config
        from .sparse import profile

        profile.apply(self.model, self.model_path, None if sparsity is None else str(sparsity),
                      None if head is None else str(head))  # fmt: skip
        self.n_ctx = min(n_ctx, self.config.n_ctx_train)
        self.n_threads = kernels.usable_threads(n_threads)
        self.model.n_threads = self.n_threads  # this model's own pool: another LLM in the process keeps its own
        self.seed = seed
        self.cache_type = cache_type
        # Each generation runs on a sequence (a Session: KV cache and its tokens) of its own, checked out for its
        # duration, so threads and interleaved generators never share a cache; idle ones are kept for their
        # prefixes. Under a memory budget the one sequence the budget counts is shared in turn.
        self._idle = [Session(self.model, self.n_ctx, n_batch, cache_type)]
        self.n_parallel = max(1, n_parallel)
        self._sequences = threading.BoundedSemaphore(self.n_parallel if mem_budget is not None else MAX_SEQUENCES)
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's last generation: session, finish_reason, generated
        self.offload = None  # runtime.offload.OffloadPlan under a memory budget
        if mem_budget is not None or offload_naive:
            self._plan_offload(mem_budget, offload_naive, sparsity, head, logits_all)
        if stages is not None:
            self._split(stages, sparsity, head, mem_budget, link_gbps, link_latency_us, ray_address)
        elif link_gbps is not None:
            raise ConfigError("--link-gbps emulates the link between pipeline stages: give --stages N too")
        self.chat_template = self.metadata.get("tokenizer.chat_template") or default_template(
            self.config.architecture
        )

    def _plan_offload(self, mem_budget, naive: bool, sparsity, head, logits_all: bool) -> None:
        from .runtime import offload

        if mem_budget is None:
            raise ConfigError("offload_naive (--offload-naive) needs a memory budget (--mem-budget SIZE)")
        if sparsity is not None or head is not None:
            raise UnsupportedError("--mem-budget with --sparsity or --head is not supported yet; use one or the other")
        session = self._idle[0]
        cache = session.cache
        self.offload = offload.plan(self.config, self.model.store, self.model.output_name, str(self.model_path),
                                    offload.parse_size(mem_budget), self.n_parallel * cache.n_bytes, self.n_ctx,
                                    self.n_threads, session.n_batch, naive,
                                    logits_all=logits_all, n_seqs=self.n_parallel)  # fmt: skip
        session.n_batch = self.offload.n_batch
        self.model.set_offload(self.offload)
        self.model.compiled()  # open the file and start the reader now, not at the first token

    def _split(self, stages: int, sparsity, head, mem_budget, link_gbps, link_latency_us, ray_address) -> None:
        from .distributed.pipeline import PipelineModel

        if sparsity is not None or head is not None or mem_budget is not None:
            raise UnsupportedError("--stages with --sparsity, --head or --mem-budget is not supported yet")
        self.model = PipelineModel(self.model, str(self.model_path), stages, self.n_threads, link_gbps,
                                   link_latency_us, ray_address)  # fmt: skip
        self._idle = [Session(self.model, self.n_ctx, self._n_batch_default, self.cache_type)]

    # -- tokens --------------------------------------------------------------------------------------
    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tokenizer.encode(text, add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return b"".join(self.tokenizer.token_bytes(t) for t in tokens)

    # -- sequences -----------------------------------------------------------------------------------
    @property
    def session(self) -> Session:
        """The sequence this thread's last generation ran on (its timings), or an idle one."""
        return getattr(self._local, "session", None) or self._idle[0]

    @property
    def finish_reason(self) -> str | None:
        """Why this thread's last generation ended: "stop" or "length"."""
        return getattr(self._local, "finish_reason", None)

    @property
    def generated(self) -> list[int]:
        """The tokens this thread's last stream_text produced."""
        return getattr(self._local, "generated", [])

    def _checkout(self, ids: Sequence[int]) -> Session:
        """A sequence for a new generation: the idle one sharing the longest prefix with `ids`, else a new one."""
        self._sequences.acquire()
        with self._lock:
            if not self._idle:
                return Session(self.model, self.n_ctx, self.n_batch, self.cache_type)
            best = max(self._idle, key=lambda s: common_prefix(s.tokens, ids))
            self._idle.remove(best)
            return best

    def _checkin(self, session: Session) -> None:
        with self._lock:
            self._idle.append(session)
            del self._idle[:-MAX_IDLE_SEQUENCES]  # the most recently used are kept
        self._sequences.release()

    @property
    def n_batch(self) -> int:
        """Prompt tokens per forward pass (a memory budget may have made it smaller)."""
        return self.offload.n_batch if self.offload is not None else self._n_batch_default

    # -- generation ----------------------------------------------------------------------------------
    def generate(self, tokens: Sequence[int], max_tokens: int | None = None, **sampling: Any) -> Iterator[int]:
        """Yield token ids after `tokens` until an end-of-generation token or `max_tokens`. Each generator runs on a
        sequence of its own: generators may be interleaved and used from several threads."""
        sampler = make_sampler(SamplingParams(**_sampling_args(sampling, self.seed)))
        return self._generate(list(tokens), sampler, max_tokens)

    def _generate(self, tokens: list[int], sampler, max_tokens: int | None) -> Iterator[int]:
        session = self._checkout(tokens)
        self._local.session = session
        try:
            yield from session.generate(tokens, sampler, max_tokens, self.tokenizer.eog_ids)
        finally:
            self._local.finish_reason = session.finish_reason
            self._checkin(session)

    def stream_text(
        self, prompt_ids: Sequence[int], max_tokens: int | None, stop: Sequence[str] = (), **sampling: Any
    ) -> Iterator[tuple[str, int]]:
        """Yield (text delta, n_tokens so far), cutting at the first stop string (which is not emitted)."""
        text = StopText(stop)
        decoder = StreamDecoder(self.tokenizer)
        n = 0
        self._local.generated = generated = []
        tokens = self.generate(prompt_ids, max_tokens, **sampling)
        for token in tokens:
            n += 1
            generated.append(token)
            delta = text.feed(decoder.feed(token))
            if text.stopped:
                tokens.close()  # the sequence is free again
                self._local.finish_reason = "stop"
                if delta:
                    yield delta, n
                return
            if delta:
                yield delta, n
        tail = text.feed(decoder.flush()) + text.flush()
        if text.stopped:
            self._local.finish_reason = "stop"
        if tail:
            yield tail, n

    def create_completion(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        top_k: int = 40,
        repeat_penalty: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
    ) -> dict | Iterator[dict]:
        """OpenAI-style text completion (`stream=True` yields chunks)."""
        ids = list(prompt) if not isinstance(prompt, str) else self.tokenize(prompt, add_bos=True, special=True)
        pieces = self.stream_text(ids, max_tokens, _stop_list(stop), temperature=temperature, top_p=top_p,
                                  min_p=min_p, top_k=top_k, repeat_penalty=repeat_penalty, seed=seed)  # fmt: skip
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": str(self.model_path.name)}  # fmt: skip
        if stream:
            return self._completion_chunks(head, pieces)
        text, n = "", 0
        for delta, n in pieces:
            text += delta
        return head | {
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": _usage(len(ids), n),
        }

    def _completion_chunks(self, head: dict, pieces: Iterator[tuple[str, int]]) -> Iterator[dict]:
        for delta, _ in pieces:
            yield head | {"choices": [{"text": delta, "index": 0, "logprobs": None, "finish_reason": None}]}
        yield head | {"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": self.finish_reason}]}

    __call__ = create_completion

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text of `messages`; `extra` become template variables (tools, ...)."""
        if not self.chat_template:
            raise ConfigError(f"{self.model_path.name} has no chat template; use a plain completion instead")
        tok = self.tokenizer
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=tok.token_text(tok.bos_id) if tok.bos_id is not None else "",
            eos_token=tok.token_text(tok.eos_id) if tok.eos_id is not None else "",
            name=f"{self.model_path.name}'s chat template",
            **extra,
        )

    def create_chat_completion(
        self,
        messages: list[dict],
        max_tokens: int | None = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        min_p: float = 0.05,
        top_k: int = 40,
        repeat_penalty: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
    ) -> dict | Iterator[dict]:
        """OpenAI-style chat completion rendered with the model's chat template."""
        text = self.apply_chat_template(messages)
        # The template writes BOS itself where the model wants one.
        ids = self.tokenizer.encode(text, add_special=not _starts_with_bos(text, self.tokenizer), parse_special=True)
        pieces = self.stream_text(ids, max_tokens, _stop_list(stop), temperature=temperature, top_p=top_p,
                                  min_p=min_p, top_k=top_k, repeat_penalty=repeat_penalty, seed=seed)  # fmt: skip
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_path.name}
        if stream:
            return self._chat_chunks(head, pieces)
        content, n = "", 0
        for delta, n in pieces:
            content += delta
        return head | {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": self.finish_reason}],  # fmt: skip
            "usage": _usage(len(ids), n),
        }

    def _chat_chunks(self, head: dict, pieces: Iterator[tuple[str, int]]) -> Iterator[dict]:
        head = head | {"object": "chat.completion.chunk"}
        yield head | {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for delta, _ in pieces:
            yield head | {"choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
        yield head | {"choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]}

    def close(self) -> None:
        if hasattr(self.model, "pipeline"):
            self.model.close()
        self.gguf.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_SEQUENCES = 16  # generations running at once on one LLM (each holds a KV cache)
MAX_IDLE_SEQUENCES = 4  # finished sequences kept for their prefixes


def _sampling_args(sampling: dict, default_seed: int | None) -> dict:
    args = {k: v for k, v in sampling.items() if v is not None}
    if "temp" in args:  # llama-cpp-python spelling
        args["temperature"] = args.pop("temp")
    args.setdefault("seed", default_seed)
    unknown = set(args) - set(SamplingParams.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
    return args


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _starts_with_bos(text: str, tok: Tokenizer) -> bool:
    return tok.bos_id is not None and text.startswith(tok.token_text(tok.bos_id))


def _usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def load(model: str | os.PathLike = hub.DEFAULT_MODEL, **kwargs: Any) -> LLM:
    return LLM(model, **kwargs)


__all__ = ["LLM", "load"]
