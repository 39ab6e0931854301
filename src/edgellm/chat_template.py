"""Chat templates: render a conversation with a model's Jinja template (tokenizer.chat_template) the way
Hugging Face transformers does, in a sandbox; built-in templates for files that carry none.

Rendering only: the caller tokenizes the result with parse_special=True so the template's control tokens
become ids. Pass bos_token="" (the default) when the tokenizer adds BOS itself, or the prompt gets two.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import re
import threading
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgellm.errors import ConfigError

# Gemma's turn format, as in google/gemma-3-*-it tokenizer_config.json: "assistant" is spelled "model", and
# a system message is folded into the first user turn (Gemma has no system role).
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# ChatML (<|im_start|>role\\ncontent<|im_end|>): the generic fallback, as llama.cpp's server uses.
CHATML_TEMPLATE = """{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

BUILTIN_TEMPLATES: dict[str, str] = {"gemma": GEMMA_TEMPLATE, "chatml": CHATML_TEMPLATE}

# general.architecture -> built-in template; any other decoder gets ChatML.
_TEMPLATE_OF_ARCH = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}
_ENCODER_ONLY = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder"})


def default_template(architecture: str) -> str | None:
    """The built-in template for a GGUF without tokenizer.chat_template: Gemma's turns for the Gemma
    family, ChatML for other decoders, None for encoder-only architectures (they do not chat)."""
    if architecture in _ENCODER_ONLY:
        return None
    return BUILTIN_TEMPLATES[_TEMPLATE_OF_ARCH.get(architecture, "chatml")]


# Limits of one rendering: a chat template comes with the model file, from a stranger. Real templates render in
# milliseconds to a few kilobytes.
MAX_SECONDS = 1.0
MAX_OUTPUT_CHARS = 1 << 20  # characters rendered, and the longest string or list an operator may build
MAX_INT_BITS = 4096  # integers a template may compute with ** or *


class TemplateTimeout(Exception):
    """Raised inside a rendering that ran past MAX_SECONDS."""


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True, bos_token: str = "",
                eos_token: str = "", name: str = "chat template", **extra: Any) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with a Jinja chat template.

    The environment matches transformers' apply_chat_template: trim_blocks and lstrip_blocks, the loopcontrols
    extension, `raise_exception`, `strftime_now` and a `tojson` filter that keeps non-ASCII text. `extra`
    becomes further template variables (tools, documents, enable_thinking, ...). The rendering is bounded: at most
    MAX_SECONDS, MAX_OUTPUT_CHARS of output and of any string or list it builds, integers of MAX_INT_BITS (Jinja's
    sandbox already caps range() at 100,000 items and refuses unsafe attributes).

    Raises:
        ConfigError: (one line, naming the template by `name`) the template does not parse, fails while rendering
            (raise_exception included), touches an attribute the sandbox forbids (such as `''.__class__`), or passes
            a limit.
    """
    variables = dict(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                     eos_token=eos_token, **extra)  # fmt: skip
    try:  # compiling is bounded too: Jinja folds constant expressions (filters included) while it compiles
        return _with_deadline(lambda: _bounded_render(_compile(template), variables), MAX_SECONDS)
    except TemplateError as exc:
        raise ConfigError(f"{name} error: {_one_line(exc)}") from None
    except TemplateTimeout:
        raise ConfigError(f"{name} error: rendering took over {MAX_SECONDS:g} s; the template loops too long") from None
    except RecursionError:
        raise ConfigError(f"{name} error: recursion too deep (a macro that calls itself without end?)") from None
    except MemoryError:
        raise ConfigError(f"{name} error: out of memory while rendering") from None
    except Exception as exc:  # the template's own arithmetic or calls: ZeroDivisionError, TypeError, OverflowError
        raise ConfigError(f"{name} error: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def _bounded_render(compiled: jinja2.Template, variables: dict) -> str:
    out, size = [], 0
    for chunk in compiled.generate(**variables):
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise SecurityError(f"the rendered prompt passes {MAX_OUTPUT_CHARS:,} characters")
        out.append(chunk)
    return "".join(out)


def _with_deadline(fn, seconds: float):
    """fn() in this thread, interrupted by TemplateTimeout if it runs past `seconds` (an asynchronous exception,
    delivered between bytecodes: the compiled template is Python, and its single operations are bounded)."""
    thread, lock, finished = ctypes.c_ulong(threading.get_ident()), threading.Lock(), [False]

    def expire():
        with lock:
            if not finished[0]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread, ctypes.py_object(TemplateTimeout))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        return fn()
    finally:
        with lock:
            finished[0] = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(thread, None)  # one fired just now is dropped
        timer.cancel()


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `~` to the environment's checked join: a string that doubles itself in a loop would otherwise grow
    until memory runs out, each step within every other limit."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.concat_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, but a forbidden attribute is an error rather than an empty string, and the
    operators that can build huge values in one step (**, *, + and ~) are checked before they run."""

    intercepted_binops = frozenset({"**", "*", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    def concat_checked(self, values: tuple) -> str:
        parts = [str(v) for v in values]
        if sum(map(len, parts)) > MAX_OUTPUT_CHARS:
            raise SecurityError(f"a string of over {MAX_OUTPUT_CHARS:,} characters built with ~")
        return "".join(parts)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0:
            if right * math.log2(abs(left)) > MAX_INT_BITS:
                raise SecurityError(f"{left} ** {right} is larger than {MAX_INT_BITS} bits")
        if operator == "*":
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"a product larger than {MAX_INT_BITS} bits")
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and _is_int(n) and len(seq) * n > MAX_OUTPUT_CHARS:
                    raise SecurityError(f"a {type(seq).__name__} of {len(seq) * n:,} items (limit {MAX_OUTPUT_CHARS:,})")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            if len(left) + len(right) > MAX_OUTPUT_CHARS:
                raise SecurityError(f"a {type(left).__name__} of {len(left) + len(right):,} items built with + "
                                    f"(limit {MAX_OUTPUT_CHARS:,})")  # fmt: skip
        if operator == "%" and isinstance(left, str):
            _check_format(left, right if isinstance(right, tuple) else (right,))
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any):
        wrapped = super().wrap_str_format(value)  # str.format is sandboxed where it is looked up, so checked here
        if wrapped is None:
            return None

        def checked(*args, **kwargs):
            _check_format(value.__self__, (*args, *kwargs.values()))
            return wrapped(*args, **kwargs)

        return checked

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") in _SIZED_STR_METHODS:
            _check_str_call(owner, __obj.__name__, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


# str methods whose result can be far larger than their inputs, and what bounds them
_SIZED_STR_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "replace"})
_WIDTH = re.compile(r"(\d{7,})")  # a width or precision of a million or more in a format string


def _check_size(n: Any, what: str) -> None:
    if _is_int(n) and n > MAX_OUTPUT_CHARS:
        raise SecurityError(f"{what} of {n:,} (limit {MAX_OUTPUT_CHARS:,})")


def _check_format(fmt: str, args: tuple) -> None:
    if _WIDTH.search(fmt):
        raise SecurityError(f"a format width over {MAX_OUTPUT_CHARS:,} characters")
    for a in args:
        _check_size(a, "a format width")


def _check_str_call(s: str, method: str, args: tuple, kwargs: dict) -> None:
    if method == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        grows = len(args[1]) - len(args[0])
        if grows > 0 and len(s) + (s.count(args[0]) if args[0] else len(s) + 1) * grows > MAX_OUTPUT_CHARS:
            raise SecurityError(f"a replacement that makes a string over {MAX_OUTPUT_CHARS:,} characters")
    else:
        for a in (*args, *kwargs.values()):
            _check_size(a, f"str.{method} width")


def _checked_filter(name: str, filter_fn):
    """A built-in filter that refuses sizes past the limits before it builds anything (keeping what Jinja passes it
    first: the environment or evaluation context)."""
    passes_context = hasattr(filter_fn, "jinja_pass_arg")

    @functools.wraps(filter_fn)
    def checked(*all_args, **kwargs):
        value, *args = all_args[1:] if passes_context else all_args
        if name == "replace" and isinstance(value, str):
            _check_str_call(value, "replace", args, kwargs)
        elif name == "format" and isinstance(value, str):
            _check_format(value, (*args, *kwargs.values()))
        elif name == "join":
            separator = args[0] if args else kwargs.get("d", "")
            sized = isinstance(separator, str) and isinstance(value, (list, tuple, str)) and value
            if sized and len(separator) * (len(value) - 1) > MAX_OUTPUT_CHARS:
                raise SecurityError(f"a join of {len(value):,} items with a {len(separator):,}-character separator "
                                    f"(limit {MAX_OUTPUT_CHARS:,})")
        else:
            for a in (*args, *kwargs.values()):
                _check_size(a, f"{name} width")
        return filter_fn(*all_args, **kwargs)

    return checked


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    for name in ("center", "indent", "replace", "format", "wordwrap", "truncate", "join"):
        env.filters[name] = _checked_filter(name, env.filters[name])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _one_line(exc: TemplateError) -> str:
    text = " ".join(str(exc.message or exc).split())
    line = getattr(exc, "lineno", None)
    return f"{text} (template line {line})" if line else text
