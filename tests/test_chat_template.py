"""Chat templates: HF-compatible rendering, the sandbox, and the built-in Gemma and ChatML templates."""

from __future__ import annotations

import pytest

from edgellm.chat_template import (
    BUILTIN_TEMPLATES,
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    default_template,
    render_chat,
)
from edgellm.errors import ConfigError

# tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf, verbatim.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHAT = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


def test_smollm2_template_adds_its_default_system_turn():
    assert render_chat(SMOLLM2_TEMPLATE, CHAT[:1]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_template_keeps_a_given_system_turn_and_omits_generation_prompt():
    messages = [{"role": "system", "content": "Be brief."}, *CHAT[:2]]
    assert render_chat(SMOLLM2_TEMPLATE, messages, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello. How can I help?<|im_end|>\n"
    )


def test_gemma_template_folds_system_into_first_user_turn():
    messages = [{"role": "system", "content": "Be brief."}, *CHAT]
    assert render_chat(GEMMA_TEMPLATE, messages, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello. How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_template_without_system_or_bos_and_with_content_parts():
    messages = [{"role": "user", "content": [{"type": "text", "text": "  Hi!  "}]}]
    assert render_chat(GEMMA_TEMPLATE, messages, add_generation_prompt=False) == (
        "<start_of_turn>user\nHi!<end_of_turn>\n"
    )


def test_gemma_template_rejects_roles_that_do_not_alternate():
    with pytest.raises(ConfigError, match=r"^chat template error: Conversation roles must alternate "
                                          r"user/assistant/user/assistant/\.\.\.$"):
        render_chat(GEMMA_TEMPLATE, [{"role": "assistant", "content": "x"}])


def test_chatml_template_renders_each_turn():
    assert render_chat(CHATML_TEMPLATE, CHAT[:2]) == (
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello. How can I help?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_default_template_picks_gemma_for_gemma_and_chatml_otherwise():
    assert default_template("gemma3") == GEMMA_TEMPLATE == BUILTIN_TEMPLATES["gemma"]
    assert default_template("llama") == CHATML_TEMPLATE == BUILTIN_TEMPLATES["chatml"]
    assert default_template("qwen2") == CHATML_TEMPLATE
    assert default_template("bert") is None


def test_template_helpers_match_transformers():
    template = "{{ strftime_now('%Y') | length }} {{ {'k': 'é'} | tojson }} {{ extra_flag }}"
    assert render_chat(template, CHAT, extra_flag=True) == '4 {"k": "é"} True'
    loops = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}"
    assert render_chat(loops, CHAT) == "user"
    assert render_chat("{% if x %}\n  a\n{% endif %}\nb", CHAT, x=True) == "  a\nb"  # trim_blocks + lstrip_blocks


def test_sandbox_blocks_dunder_attribute_access():
    with pytest.raises(ConfigError, match=r"^chat template error: access to attribute '__class__' of a 'str' "
                                          r"object is not allowed$"):
        render_chat("{{ ''.__class__ }}", CHAT)


def test_sandbox_blocks_mutating_the_messages():
    with pytest.raises(ConfigError, match=r"^chat template error: access to attribute 'append' of a 'list' "
                                          r"object is not allowed$"):
        render_chat("{{ messages.append(1) }}", CHAT)


def test_raise_exception_becomes_config_error():
    with pytest.raises(ConfigError, match=r"^chat template error: no tools here$"):
        render_chat("{{ raise_exception('no tools here') }}", CHAT)


def test_syntax_error_is_one_line_with_template_line():
    with pytest.raises(ConfigError, match=r"^chat template error: .+ \(template line 2\)$") as info:
        render_chat("ok\n{% for %}", CHAT)
    assert "\n" not in str(info.value)


# Templates come with model files, from strangers: each of these hung or ended in a traceback before renderings
# were bounded. Each runs in a thread so that a hang fails the test instead of stalling it.
HOSTILE = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "huge power": "{{ 7 ** (7**10) }}",
    "huge range": "{{ range(10**9) | list | length }}",
    "endless macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "float repeat": "{{ 'x' * 3e9 }}",
    "huge repeat": "{{ 'x' * 3000000000 }}",
    "long output": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "division by zero": "{{ 1 // 0 }}",
    "huge center": "{{ 'x' | center(1000000000) }}",
    "huge ljust": "{{ 'x'.ljust(1000000000) }}",
    "huge percent width": "{{ '%*s' % (1000000000, 'x') }}",
    "huge format width": "{{ '{:>1000000000}'.format(1) }}",
    "growing replace": "{{ ('x' * 1000000) | replace('x', 'yy') }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_end_in_one_line_errors_within_the_limits(name):
    import threading
    import time

    MAX_SECONDS = 1.0  # edgellm.chat_template.MAX_SECONDS

    outcome = []

    def render():
        t0 = time.perf_counter()
        try:
            render_chat(HOSTILE[name], [{"role": "user", "content": "hi"}], name="evil.gguf's chat template")
            outcome.append(("rendered", time.perf_counter() - t0))
        except ConfigError as e:
            outcome.append((str(e), time.perf_counter() - t0))
        except BaseException as e:  # noqa: BLE001 - anything else is what the test looks for
            outcome.append((f"{type(e).__name__} escaped", time.perf_counter() - t0))

    thread = threading.Thread(target=render, daemon=True)
    thread.start()
    thread.join(MAX_SECONDS + 4)
    assert outcome, f"{name}: still rendering after {MAX_SECONDS + 4} s"
    message, seconds = outcome[0]
    assert message.startswith("evil.gguf's chat template error: ") and "\n" not in message, message
    assert seconds < MAX_SECONDS + 1.0


def test_the_limits_leave_real_templates_alone():
    text = render_chat("{{ 'a'|center(5) }}|{{ '%5s' % 'x' }}|{{ '{:>3}'.format(1) }}|{{ 'ab'|replace('a', 'c') }}|"
                       "{{ messages[0]['content']|indent(2) }}|{{ 2 ** 10 }}|{{ [1] * 3 }}",
                       [{"role": "user", "content": "hi"}])  # fmt: skip
    assert text == "  a  |    x|  1|cb|hi|1024|[1, 1, 1]"
