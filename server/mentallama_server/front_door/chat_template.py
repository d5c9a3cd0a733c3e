"""Chat `messages` -> the prompt text the `mentallama` model takes, for `/v1/chat/completions`.

The checkpoint's own template wins: `chat_template.jinja` in the tokenizer folder (transformers 5 writes it
there) or `chat_template` in its `tokenizer_config.json`, rendered with jinja2 in a sandbox as transformers
renders it (`messages`, `bos_token`, `eos_token`, `add_generation_prompt=True`, `raise_exception`). Without
one, the LLaMA-2-chat format that MentaLLaMA-chat was trained on, implemented here:

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]

(the system block only in the first turn; contents stripped, as the Hugging Face template does). Either way one
leading BOS is dropped from the text: the server's tokenizer adds BOS itself, and a second one shifts the model
off its training distribution (the SDK's `wrap_chat` leaves it out for the same reason).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
ROLES = ("system", "user", "assistant")
log = logging.getLogger("mentallama.front_door")


class TemplateError(ValueError):
    """The conversation cannot be rendered (roles out of order, an unknown role): the client's mistake."""


@dataclass(frozen=True)
class ChatTemplate:
    source: str | None
    """The checkpoint's jinja template; None: the built-in LLaMA-2-chat format."""
    bos_token: str = "<s>"
    eos_token: str = "</s>"

    @property
    def name(self) -> str:
        return "checkpoint" if self.source is not None else "llama-2-chat"

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt of `messages` (each with `role` in ROLES and a `content` string), without a leading BOS."""
        for index, message in enumerate(messages):
            if message.get("role") not in ROLES:
                raise TemplateError(f"messages[{index}].role must be one of {', '.join(ROLES)}")
        text = self._jinja(messages) if self.source is not None else llama2_prompt(messages, self.bos_token,
                                                                                     self.eos_token)  # fmt: skip
        return text[len(self.bos_token) :] if self.bos_token and text.startswith(self.bos_token) else text

    def _jinja(self, messages: Sequence[Mapping[str, str]]) -> str:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        # The checkpoint's template is data, not code we wrote: a sandbox, as transformers renders it.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])  # fmt: skip
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.source).render(
                messages=[dict(m) for m in messages], bos_token=self.bos_token, eos_token=self.eos_token,
                add_generation_prompt=True,
            )  # fmt: skip
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template cannot render these messages: {exc}") from None


def llama2_prompt(messages: Sequence[Mapping[str, str]], bos: str = "<s>", eos: str = "</s>") -> str:
    """The LLaMA-2-chat prompt, exactly as Meta's (and the Hugging Face) template writes it."""
    system = None
    turns = list(messages)
    if turns and turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    if not turns:
        raise TemplateError("messages need at least one user message")
    parts = []
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/... "
                                "(after an optional first system message)")  # fmt: skip
        content = message["content"]
        if index == 0 and system is not None:
            content = f"{B_SYS}{system}{E_SYS}{content}"
        if expected == "user":
            parts.append(f"{bos}{B_INST} {content.strip()} {E_INST}")
        else:
            parts.append(f" {content.strip()} {eos}")
    return "".join(parts)


def _token(value: Any, default: str) -> str:
    if isinstance(value, dict):  # older tokenizer configs: {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else default


def load_chat_template(tokenizer_dir: str | Path | None) -> ChatTemplate:
    """The checkpoint's chat template from its tokenizer folder, or the LLaMA-2-chat format."""
    if not tokenizer_dir:
        return ChatTemplate(None)
    folder = Path(tokenizer_dir)
    config: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    bos, eos = _token(config.get("bos_token"), "<s>"), _token(config.get("eos_token"), "</s>")
    source: Any = None
    try:
        source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    except OSError:
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": "..."}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
    if not isinstance(source, str) or not source.strip():
        return ChatTemplate(None, bos, eos)
    try:
        import jinja2  # noqa: F401 - a front door installed without it serves the built-in format
    except ImportError:
        log.warning("jinja2 is not installed: chat messages use the built-in LLaMA-2-chat format")
        return ChatTemplate(None, bos, eos)
    return ChatTemplate(source, bos, eos)
