"""Chat templates: the model's Jinja template (`tokenizer.chat_template`) rendered as HF does.

The environment matches `transformers`' `apply_chat_template`: a sandboxed, immutable Jinja
environment with `trim_blocks`/`lstrip_blocks`, loop controls, a no-op `{% generation %}` block,
`raise_exception`, `strftime_now` and a `tojson` filter that keeps non-ASCII text. A model without
a template gets its family's format where one is known (`ARCHITECTURE_TEMPLATES`: Gemma's turns
for `gemma3`), otherwise ChatML (`FALLBACK_TEMPLATE`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox

from jaxserve.errors import ChatTemplateError

# ChatML, used when the GGUF has no `tokenizer.chat_template`:
# `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma's turn format: `<bos><start_of_turn>user\n{content}<end_of_turn>\n`, assistant turns as
# `model`, a system message prepended to the first user turn (as Gemma 3's own template does).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(prefix='', text='') %}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set ns.text = message['content'] %}"
    "{% else %}{% set ns.text = '' %}{% for part in message['content'] or [] %}"
    "{% if part['type'] == 'text' %}{% set ns.text = ns.text + part['text'] %}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'system' %}{% set ns.prefix = ns.text | trim + '\\n\\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) }}"
    "{{ '\\n' + ns.prefix + ns.text | trim + '<end_of_turn>\\n' }}{% set ns.prefix = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Architectures (GGUF `general.architecture`) whose files often lack a template.
ARCHITECTURE_TEMPLATES = {"gemma3": GEMMA_TEMPLATE}


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, HF's marker of assistant text: renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template error: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> jinja2.Environment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """One chat template, compiled on first use and then reused.

    `ChatTemplate(None)` uses the `architecture`'s template from `ARCHITECTURE_TEMPLATES`, or
    `FALLBACK_TEMPLATE` (ChatML); `is_fallback` tells whether the source is a fallback.
    """

    def __init__(self, source: str | None, *, architecture: str | None = None) -> None:
        self.is_fallback = source is None
        if source is None:
            source = ARCHITECTURE_TEMPLATES.get(architecture or "", FALLBACK_TEMPLATE)
        self.source = source
        self._compiled: jinja2.Template | None = None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "",
        eos_token: str = "",
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Render `messages` (OpenAI-style dicts: role, content, ...) to the prompt text.

        `extra` is passed to the template as further variables (e.g. `documents`,
        `enable_thinking`). Raises `ChatTemplateError` if the template does not compile, calls
        `raise_exception`, or fails while rendering.
        """
        template = self._compile()
        try:
            return template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                tools=tools,
                **extra,
            )
        except ChatTemplateError:
            raise
        except Exception as exc:  # the template is code from the model file: any failure is its
            raise ChatTemplateError(f"chat template failed to render: {exc!r}") from exc

    def reads(self, name: str) -> bool:
        """Whether the template reads the variable `name` (e.g. `tools`: it renders tools itself);
        False for a template that does not parse."""
        try:
            return name in jinja2.meta.find_undeclared_variables(_environment().parse(self.source))
        except jinja2.TemplateSyntaxError:
            return False

    def _compile(self) -> jinja2.Template:
        if self._compiled is None:
            try:
                self._compiled = _environment().from_string(self.source)
            except jinja2.TemplateSyntaxError as exc:
                raise ChatTemplateError(
                    f"chat template does not compile (line {exc.lineno}): {exc.message}"
                ) from exc
        return self._compiled


def render_chat(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """Render once with a fresh `ChatTemplate` (use `ChatTemplate` to reuse the compiled one)."""
    return ChatTemplate(template).render(
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        tools=tools,
        **extra,
    )
