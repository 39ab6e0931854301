"""`edgellm serve`: the OpenAI HTTP API over the continuous-batching scheduler (FastAPI on uvicorn, SSE streams).

Errors are OpenAI's error objects with the status a client expects: 400 for a bad request, 401 without the API
key, 404, 413 for an oversized body, 503 while the model loads or when the queue is full, 504 when a request runs
past its time limit. A client that disconnects cancels its generation and frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import ConfigError, EdgeLLMError
from ..runtime.sampling import SamplingParams, make_sampler
from . import schemas
from .scheduler import QueueFull, Request, Scheduler


@dataclass
class ServerConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    parallel: int = 4  # sequences decoded together (slots)
    ctx_size: int = 2048  # tokens per sequence
    n_batch: int = 256  # tokens per step (decodes + prompt chunks)
    threads: int | None = None
    api_key: str | None = None
    mem_budget: str | None = None
    sparsity: str | None = None
    cache_type: str = "f16"  # half of f32's memory per slot, and batched decode reads it faster (docs/server.md)
    queue_size: int = 64  # requests waiting for a slot before 503
    timeout: float = 600.0  # seconds a request may run (queue included)
    max_body_bytes: int = 4 << 20
    stages: int | None = None  # pipeline stages on Ray actors (distributed/pipeline.py)
    link_gbps: float | None = None  # with stages: an emulated link between them


class APIError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_body(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


_STATUS_TYPES = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
                 413: "invalid_request_error", 503: "server_unavailable", 504: "timeout"}  # fmt: skip


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, from its Content-Length when declared,
    else as soon as the bytes received pass the limit; the app sees the body (at most `limit` bytes) replayed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _send_json(send, 413, f"request body over {self.limit} bytes")
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await _send_json(send, 413, f"request body over {self.limit} bytes")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # then whatever comes next (a disconnect)

        return await self.app(scope, replay, send)


class _Gate:
    """ASGI middleware: counts requests and responses by status for /metrics, and asks for the API key when one is
    set. (A plain ASGI layer: Starlette's @app.middleware wraps `receive` so that handlers never see a client
    disconnect.)"""

    OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect")

    def __init__(self, app, state: "ServerState", api_key: str | None):
        self.app, self.state, self.api_key = app, state, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.state.requests_total += 1

        async def counted(message):
            if message["type"] == "http.response.start":
                codes = self.state.http_errors
                codes[message["status"]] = codes.get(message["status"], 0) + 1
            await send(message)

        if self.api_key and scope["path"] not in self.OPEN_PATHS:
            sent = dict(scope.get("headers") or []).get(b"authorization", b"")
            if sent != f"Bearer {self.api_key}".encode():
                return await _send_json(counted, 401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                        code="invalid_api_key")  # fmt: skip
        return await self.app(scope, receive, counted)


async def _send_json(send, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": _STATUS_TYPES.get(status, "invalid_request_error"),
                                 "param": None, "code": code}}).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ServerState:
    """The model and scheduler once loaded (in a thread, so /health answers 503 meanwhile)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.llm = None
        self.scheduler: Scheduler | None = None
        self.grammars = None
        self.error: str | None = None
        self.started = time.time()
        self.ready = threading.Event()
        self.requests_total = 0
        self.http_errors: dict[int, int] = {}

    def load(self) -> None:
        from ..api import LLM

        c = self.config
        try:
            self.llm = LLM(c.model, n_ctx=c.ctx_size, n_threads=c.threads, n_batch=c.n_batch, cache_type=c.cache_type,
                           sparsity=c.sparsity, mem_budget=c.mem_budget, n_parallel=c.parallel, stages=c.stages,
                           link_gbps=c.link_gbps)  # fmt: skip
            self.scheduler = Scheduler(self.llm, c.parallel, self.llm.n_batch, c.queue_size)
            if self.llm.offload is not None:
                print(self.llm.offload.summary(), file=sys.stderr)
            for s in getattr(self.llm.model, "describe", list)():
                print(f"stage {s['index']}: layers {s['layers'][0]}-{s['layers'][1] - 1}, {s['threads']} threads, "
                      f"pid {s['pid']} on {s['host']}", file=sys.stderr, flush=True)  # fmt: skip
            self.ready.set()
        except EdgeLLMError as e:
            self.error = str(e)
        except Exception as e:  # MemoryError for the slots' caches, a bug: /health says so rather than "loading"
            self.error = f"{type(e).__name__}: {e}"

    def grammar(self):
        if self.grammars is None:
            from .grammar import Grammars

            self.grammars = Grammars(self.llm.tokenizer)
        return self.grammars

    @property
    def model_id(self) -> str:
        return self.llm.model_path.name if self.llm is not None else os.path.basename(str(self.config.model))


def create_app(config: ServerConfig, state: ServerState | None = None) -> FastAPI:
    """The ASGI app; the model loads in a background thread when the app starts (pass a loaded `state` to skip)."""
    state = state or ServerState(config)

    async def lifespan(app):
        if not state.ready.is_set() and state.error is None:
            threading.Thread(target=state.load, name="edgellm-load", daemon=True).start()
        yield
        if state.scheduler is not None:
            state.scheduler.close()
        if state.llm is not None:
            state.llm.close()  # pipeline stages end with the server

    app = FastAPI(title="edgellm", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API of edgellm: continuous batching on low-bit weights.")  # fmt: skip
    app.state.edgellm = state

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        if e.status >= 500:  # the server's side: the operator should see why in the log
            log = logging.getLogger("edgellm.server")
            log.warning("server error: %s %s: %d %s", request.method, request.url.path, e.status, e.message)
        return error_body(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_body(400, f"{loc or 'body'}: {first.get('msg', 'invalid request')}", param=loc or None)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return error_body(e.status_code, str(e.detail), _STATUS_TYPES.get(e.status_code, "invalid_request_error"))

    @app.exception_handler(EdgeLLMError)
    async def _edgellm(request, e: EdgeLLMError):
        return error_body(400, str(e))

    def ready():
        if state.error is not None:
            raise APIError(503, f"model failed to load: {state.error}", "server_unavailable")
        if not state.ready.is_set():
            raise APIError(503, "model is loading", "server_unavailable")
        return state.llm

    # -- service endpoints --------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state.error is not None:
            return JSONResponse({"status": "error", "error": state.error}, status_code=503)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "slots_idle": len(state.scheduler.slots) - state.scheduler.busy_slots,
                "slots_processing": state.scheduler.busy_slots}  # fmt: skip

    @app.get("/v1/models")
    async def models():
        llm = ready()
        return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": int(state.started),
                                            "owned_by": "edgellm", "meta": {"n_ctx": llm.n_ctx,
                                            "n_vocab": llm.config.n_vocab, "architecture": llm.config.architecture,
                                            "slots": config.parallel}}]}  # fmt: skip

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(_prometheus(state), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(body: schemas.TokenizeRequest):
        llm = ready()
        return {"tokens": llm.tokenize(body.content, add_bos=body.add_special, special=body.add_special)}

    @app.post("/detokenize")
    async def detokenize(body: schemas.DetokenizeRequest):
        llm = ready()
        _check_ids(body.tokens, llm.config.n_vocab, "tokens")
        return {"content": llm.detokenize(body.tokens).decode("utf-8", errors="replace")}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("edgellm.server").joinpath("static/index.html").read_text(encoding="utf-8"))

    # -- generation ----------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest, http: HTTPRequest):
        llm = ready()
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request (n=1); send the prompts as separate requests", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = llm.tokenize(prompt, add_bos=True, special=True)
        else:
            ids = list(prompt)
            _check_ids(ids, llm.config.n_vocab, "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": state.model_id}  # fmt: skip
        request = _request(state, body, ids, body.max_tokens, body.logprobs)
        if body.stream:  # queued before the response starts, so a full queue is still a 503
            return _sse(_completion_stream(state, _attach(state, request), head, body), request)
        events = await _collect(state, request, http)
        text, entries = _join(events, llm, body.logprobs is not None)
        lp = _legacy_logprobs(entries) if entries is not None else None
        if body.echo and isinstance(prompt, str):
            text = prompt + text
        done = events[-1]
        return head | {"choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": done["finish_reason"]}],
                       "usage": done["usage"], "timings": done["timings"]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(body: schemas.ChatRequest, http: HTTPRequest):
        llm = ready()
        messages = [_message(m) for m in body.messages]
        extra = {}
        if body.tools and body.tool_choice != "none":
            if "tools" not in (llm.chat_template or ""):
                raise APIError(400, f"{state.model_id}'s chat template does not support tools", param="tools")
            extra["tools"] = [t.model_dump() for t in body.tools]
        text = llm.apply_chat_template(messages, **extra)
        ids = llm.tokenizer.encode(text, add_special=not _starts_with_bos(text, llm.tokenizer), parse_special=True)
        max_tokens = body.max_completion_tokens or body.max_tokens
        request = _request(state, body, ids, max_tokens, (body.top_logprobs or 0) if body.logprobs else None)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_id,
                "system_fingerprint": "edgellm"}  # fmt: skip
        if body.stream:
            return _sse(_chat_stream(state, _attach(state, request), head, body, bool(extra)), request)
        events = await _collect(state, request, http)
        content, lp = _join(events, llm, body.logprobs)
        done = events[-1]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        reason = done["finish_reason"]
        calls = _tool_calls(content) if extra else []
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            reason = "tool_calls"
        choice = {"index": 0, "message": message, "logprobs": {"content": lp} if lp is not None else None,
                  "finish_reason": reason}  # fmt: skip
        return head | {"object": "chat.completion", "choices": [choice], "usage": done["usage"],
                       "timings": done["timings"]}  # fmt: skip

    gate = _Gate(app, state, config.api_key)
    return _BodyLimit(gate, config.max_body_bytes) if config.max_body_bytes else gate


# -- helpers ---------------------------------------------------------------------------------------------
DISCONNECT_CHECK_S = 0.25  # how often a non-streamed request looks whether its client is still there


def _check_ids(ids, n_vocab: int, param: str) -> None:
    bad = [t for t in ids if not 0 <= t < n_vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})", param=param)


def _message(m: schemas.Message) -> dict:
    content = m.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
    if m.tool_calls:
        out["tool_calls"] = [c.model_dump() for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name:
        out["name"] = m.name
    return out


def _starts_with_bos(text: str, tok) -> bool:
    return tok.bos_id is not None and text.startswith(tok.token_text(tok.bos_id))


def _request(state: ServerState, body: schemas.Sampling, ids: list[int], max_tokens: int | None,
             logprobs: int | None) -> Request:  # fmt: skip
    """A scheduler request from a validated body: limits against the context, sampler, grammar, stop strings."""
    llm, n_ctx = state.llm, state.llm.n_ctx
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    if len(ids) >= n_ctx:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this server's context holds {n_ctx} per request "
                            "(prompt and completion)", param="messages", code="context_length_exceeded")  # fmt: skip
    room = n_ctx - len(ids)
    if max_tokens is not None and max_tokens > room:
        raise APIError(400, f"max_tokens {max_tokens} does not fit: the context holds {n_ctx} tokens and the prompt "
                            f"uses {len(ids)} (at most {room} left)", param="max_tokens",
                       code="context_length_exceeded")  # fmt: skip
    bias = []
    for key, value in (body.logit_bias or {}).items():
        if not re.fullmatch(r"-?\d{1,10}", key) or not 0 <= int(key) < llm.config.n_vocab:
            raise APIError(400, f"logit_bias key {key!r} is not a token id in 0..{llm.config.n_vocab - 1}",
                           param="logit_bias")  # fmt: skip
        bias.append((int(key), float(value)))
    seed = body.seed % (1 << 64) if body.seed is not None else None
    try:
        params = SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
                                repeat_penalty=body.repeat_penalty, repeat_last_n=body.repeat_last_n,
                                frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
                                logit_bias=tuple(bias), seed=seed)  # fmt: skip
    except ConfigError as e:
        raise APIError(400, str(e)) from None
    grammar = None
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        spec = {"type": fmt.type}
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise APIError(400, "response_format json_schema needs a json_schema object", param="response_format")
            spec["json_schema"] = {"schema": fmt.json_schema.schema_}
        try:
            grammar = state.grammar().constraint(spec)
        except ConfigError as e:
            raise APIError(400, str(e), param="response_format") from None
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return Request(prompt=ids, max_tokens=max_tokens or room, sampler=make_sampler(params), emit=lambda e: None,
                   stop=stop, grammar=grammar, logprobs=logprobs,
                   deadline=time.monotonic() + state.config.timeout)  # fmt: skip


def _attach(state: ServerState, request: Request) -> tuple[Request, asyncio.Queue]:
    """Route the scheduler's events for `request` into an asyncio queue of this event loop; queue the request (a
    503 when the queue is full)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(event: dict) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (server shutting down)
            request.cancel()

    request.emit = emit
    try:
        state.scheduler.submit(request)
    except QueueFull as e:
        raise APIError(503, f"server busy: {e}", "server_unavailable") from None
    return request, queue


async def _collect(state: ServerState, request: Request, http: HTTPRequest) -> list[dict]:
    """Every event of a non-streamed request; a client that goes away cancels it."""
    _, queue = _attach(state, request)
    events = []
    checked = time.monotonic()
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_CHECK_S)
            except asyncio.TimeoutError:
                event = None
            if time.monotonic() - checked >= DISCONNECT_CHECK_S:  # every so often, whether tokens come or not
                checked = time.monotonic()
                if await http.is_disconnected():
                    request.cancel()
                    state.scheduler.wake()
                    raise APIError(499, "client closed the request")
            if event is None:
                continue
            if event["type"] == "error":
                raise APIError(500, event["message"], "server_error")
            events.append(event)
            if event["type"] == "done":
                break
    finally:
        if not events or events[-1]["type"] != "done":
            request.cancel()
            state.scheduler.wake()
    if events[-1]["finish_reason"] == "timeout":
        raise APIError(504, f"the request ran past the server's limit of {state.config.timeout:g} s", "timeout")
    return events


def _join(events: list[dict], llm, logprobs: bool) -> tuple[str, Any]:
    tokens = [e for e in events if e["type"] == "token"]
    text = "".join(e["text"] for e in tokens)
    if not logprobs:
        return text, None
    return text, [_logprob_entry(e, llm) for e in tokens if e.get("token") is not None]


def _legacy_logprobs(entries: list[dict]) -> dict:
    """The completions endpoint's logprobs object (OpenAI's legacy shape) from chat-style entries."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}  # fmt: skip


def _logprob_entry(e: dict, llm) -> dict:
    def piece(t):
        return llm.tokenizer.token_bytes(t).decode("utf-8", errors="replace")

    return {"token": piece(e["token"]), "logprob": e["logprob"], "bytes": list(llm.tokenizer.token_bytes(e["token"])),
            "top_logprobs": [{"token": piece(t), "logprob": lp, "bytes": list(llm.tokenizer.token_bytes(t))}
                             for t, lp in e["top"]]}  # fmt: skip


def _sse(chunks: AsyncIterator[dict], request: Request) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client left (the response task is cancelled) or the stream ended
            request.cancel()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


async def _events(state: ServerState, request: Request, queue: asyncio.Queue) -> AsyncIterator[dict]:
    try:
        while True:
            event = await queue.get()
            yield event
            if event["type"] in ("done", "error"):
                return
    finally:
        request.cancel()
        state.scheduler.wake()


def _stream_error(event: dict, state: ServerState) -> dict:
    if event["type"] == "error":
        return {"error": {"message": event["message"], "type": "server_error", "param": None, "code": None}}
    return {"error": {"message": f"the request ran past the server's limit of {state.config.timeout:g} s",
                      "type": "timeout", "param": None, "code": None}}  # fmt: skip


async def _completion_stream(state, queued: tuple, head, body) -> AsyncIterator[dict]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    async for event in _events(state, *queued):
        if event["type"] == "error" or event.get("finish_reason") == "timeout":
            yield _stream_error(event, state)
            return
        if event["type"] == "token":
            if event["text"] or body.logprobs is not None:
                lp = _logprobs_chunk(event, state.llm) if body.logprobs is not None else None
                yield head | {"choices": [{"text": event["text"], "index": 0, "logprobs": lp, "finish_reason": None}]} | extra
            continue
        yield head | {"choices": [{"text": "", "index": 0, "logprobs": None,
                                   "finish_reason": event["finish_reason"]}]} | extra  # fmt: skip
        if include_usage:
            yield head | {"choices": [], "usage": event["usage"]}


def _logprobs_chunk(event: dict, llm) -> dict | None:
    if event.get("token") is None:
        return None
    e = _logprob_entry(event, llm)
    return {"tokens": [e["token"]], "token_logprobs": [e["logprob"]],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}], "text_offset": []}  # fmt: skip


async def _chat_stream(state, queued: tuple, head, body, tools: bool) -> AsyncIterator[dict]:
    head = head | {"object": "chat.completion.chunk"}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    yield head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None}]} | extra  # fmt: skip
    content = ""
    async for event in _events(state, *queued):
        if event["type"] == "error" or event.get("finish_reason") == "timeout":
            yield _stream_error(event, state)
            return
        if event["type"] == "token":
            content += event["text"]
            lp = None
            if body.logprobs and event.get("token") is not None:
                lp = {"content": [_logprob_entry(event, state.llm)]}
            if event["text"] or lp:
                yield head | {"choices": [{"index": 0, "delta": {"content": event["text"]}, "logprobs": lp,
                                           "finish_reason": None}]} | extra  # fmt: skip
            continue
        reason = event["finish_reason"]
        calls = _tool_calls(content) if tools else []
        if calls:
            reason = "tool_calls"
            yield head | {"choices": [{"index": 0, "delta": {"tool_calls": [c | {"index": i} for i, c in enumerate(calls)]},
                                       "logprobs": None, "finish_reason": None}]} | extra  # fmt: skip
        yield head | {"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}]} | extra
        if include_usage:
            yield head | {"choices": [], "usage": event["usage"]}


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def _tool_calls(content: str) -> list[dict]:
    """Tool calls written the way tool-capable chat templates ask for them (Hermes/Qwen style
    <tool_call>{"name": ..., "arguments": {...}}</tool_call>); malformed ones stay plain text."""
    calls = []
    for match in _TOOL_CALL.finditer(content or ""):
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            args = call.get("arguments", {})
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": call["name"],
                                       "arguments": args if isinstance(args, str) else json.dumps(args)}})  # fmt: skip
    return calls


def _prometheus(state: ServerState) -> str:
    """The Prometheus text exposition of the server's counters and gauges."""
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP edgellm_{name} {help_}")
        lines.append(f"# TYPE edgellm_{name} {kind}")
        for labels, value in samples:
            lines.append(f"edgellm_{name}{labels} {value:g}" if isinstance(value, (int, float)) else "")

    metric("http_requests_total", "counter", "HTTP requests received.", [("", state.requests_total)])
    metric("http_responses_total", "counter", "HTTP responses by status code.",
           [(f'{{code="{code}"}}', n) for code, n in sorted(state.http_errors.items())])
    metric("ready", "gauge", "1 once the model is loaded.", [("", int(state.ready.is_set()))])
    s = state.scheduler
    if s is not None:
        m = s.metrics
        metric("requests_total", "counter", "Generations ended, by finish reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(m.requests.items())])
        metric("requests_rejected_total", "counter", "Requests refused because the queue was full (503).",
               [("", m.rejected)])
        metric("prompt_tokens_total", "counter", "Prompt tokens evaluated (cached prefixes excluded).",
               [("", m.prompt_tokens)])
        metric("prompt_cache_hits_total", "counter", "Requests that reused a cached prompt prefix.",
               [("", m.cache_hits)])
        metric("prompt_cache_tokens_total", "counter", "Prompt tokens taken from the cache instead of evaluated.",
               [("", m.cached_tokens)])
        metric("tokens_generated_total", "counter", "Tokens generated.", [("", m.generated_tokens)])
        metric("batch_steps_total", "counter", "Forward passes of the batching loop.", [("", m.steps)])
        metric("tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.",
               [("", round(s.tokens_per_second(), 3))])
        metric("queue_depth", "gauge", "Requests waiting for a slot.", [("", s.queue_depth)])
        metric("slots_busy", "gauge", "Slots running a request.", [("", s.busy_slots)])
        metric("slots_total", "gauge", "Slots (sequences decoded together).", [("", len(s.slots))])
    metric("process_resident_memory_bytes", "gauge", "Resident set size of the server process.", [("", _rss())])
    return "\n".join(line for line in lines if line) + "\n"


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(config: ServerConfig) -> None:
    """Run the server until interrupted (uvicorn, one process: the model lives once in memory)."""
    import uvicorn

    if config.parallel < 1 or config.ctx_size < 8 or config.queue_size < 0 or config.timeout <= 0:
        raise ConfigError("--parallel must be >= 1, --ctx-size >= 8, --queue-size >= 0 and --timeout > 0")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)  # fmt: skip


__all__ = ["ServerConfig", "create_app", "serve"]
