"""Chat templates rendered in HF's sandboxed Jinja environment, and the ChatML fallback."""

from __future__ import annotations

import datetime

import pytest

from jaxserve.errors import ChatTemplateError, JaxserveError
from jaxserve.text.chat_template import FALLBACK_TEMPLATE, ChatTemplate, render_chat
from tests.tiny_vocab import CHATML_TEMPLATE, GEMMA_TEMPLATE

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi ünïcode"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]
CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi ünïcode<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
)


def test_fallback_is_chatml() -> None:
    template = ChatTemplate(None)
    assert template.is_fallback and template.source == FALLBACK_TEMPLATE
    assert template.render(MESSAGES) == CHATML + "<|im_start|>assistant\n"
    assert template.render(MESSAGES, add_generation_prompt=False) == CHATML
    assert render_chat(None, MESSAGES) == render_chat(CHATML_TEMPLATE, MESSAGES)


def test_fallback_content_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": None}]
    out = render_chat(None, messages, add_generation_prompt=False)
    assert out == "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"


def test_gemma_style_template_uses_bos() -> None:
    out = render_chat(GEMMA_TEMPLATE, MESSAGES[1:3], bos_token="<bos>", eos_token="<eos>")
    assert out == (
        "<bos><start_of_turn>user\nHi ünïcode<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>model\n"
    )


def test_trim_and_lstrip_blocks() -> None:
    source = (
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n"
        "{% endif %}\n{% endfor %}"
    )
    assert render_chat(source, MESSAGES) == "[Hi ünïcode]\n[Bye]\n"


def test_tojson_keeps_unicode_and_indents() -> None:
    tools = [{"name": "météo", "parameters": {"type": "object"}}]
    assert render_chat("{{ tools | tojson }}", [], tools=tools) == (
        '[{"name": "météo", "parameters": {"type": "object"}}]'
    )
    assert render_chat("{{ tools[0] | tojson(indent=2) }}", [], tools=tools) == (
        '{\n  "name": "météo",\n  "parameters": {\n    "type": "object"\n  }\n}'
    )
    assert render_chat("{{ tools is none }}", []) == "True"


def test_globals_and_extras() -> None:
    year = str(datetime.datetime.now().year)
    assert render_chat("{{ strftime_now('%Y') }}", []) == year
    assert render_chat("{{ enable_thinking }}", [], enable_thinking=False) == "False"
    loop = "{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"
    assert render_chat(loop, []) == "012"
    generation = (
        "{% for m in messages %}{% generation %}{{ m.role }}{% endgeneration %}{% endfor %}"
    )
    assert render_chat(generation, MESSAGES[:2]) == "systemuser"


def test_raise_exception_message() -> None:
    source = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="first must be user"):
        render_chat(source, MESSAGES)
    assert issubclass(ChatTemplateError, JaxserveError)


@pytest.mark.parametrize(
    "source",
    [
        "{% if %}",  # syntax error
        "{% for m in messages %}",  # unclosed block
        "{{ messages.append(1) }}",  # the sandbox forbids mutation
        "{{ ''.__class__.__mro__ }}",  # and attribute escapes
        "{{ 1 / 0 }}",
        "{{ messages[0]['content'] + 1 }}",
    ],
)
def test_template_errors(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render(MESSAGES)


def test_compiled_once() -> None:
    template = ChatTemplate(CHATML_TEMPLATE)
    first = template._compile()
    assert template.render(MESSAGES) == template.render(MESSAGES)
    assert template._compile() is first


@pytest.mark.slow
def test_smollm2_template() -> None:
    from jaxserve.loading.gguf_meta import open_gguf, read_metadata
    from jaxserve.loading.pull import pull

    meta = read_metadata(open_gguf(pull("smollm2-135m", quiet=True)))
    out = ChatTemplate(meta["tokenizer.chat_template"]).render([{"role": "user", "content": "Hi"}])
    assert out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_gemma3_without_a_template_gets_gemma_turns():
    template = ChatTemplate(None, architecture="gemma3")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    assert template.is_fallback
    assert template.render(messages, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert ChatTemplate(None, architecture="llama").source == FALLBACK_TEMPLATE
