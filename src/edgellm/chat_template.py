"""Chat templates: render a conversation with a model's Jinja template (tokenizer.chat_template) the way
Hugging Face transformers does, in a sandbox; built-in templates for files that carry none.

Rendering only: the caller tokenizes the result with parse_special=True so the template's control tokens
become ids. Pass bos_token="" (the default) when the tokenizer adds BOS itself, or the prompt gets two.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
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


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True, bos_token: str = "",
                eos_token: str = "", **extra: Any) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with a Jinja chat template.

    The environment matches transformers' apply_chat_template: trim_blocks and lstrip_blocks, the loopcontrols
    extension, `raise_exception`, `strftime_now` and a `tojson` filter that keeps non-ASCII text. `extra`
    becomes further template variables (tools, documents, enable_thinking, ...).

    Raises:
        ConfigError: the template does not parse, fails while rendering (raise_exception included), or
            touches an attribute the sandbox forbids (such as `''.__class__`).
    """
    try:
        compiled = _compile(template)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **extra)
    except TemplateError as exc:
        raise ConfigError(f"chat template error: {_one_line(exc)}") from exc


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, but a forbidden attribute is an error rather than an empty string."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")


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
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _one_line(exc: TemplateError) -> str:
    text = " ".join(str(exc.message or exc).split())
    line = getattr(exc, "lineno", None)
    return f"{text} (template line {line})" if line else text
