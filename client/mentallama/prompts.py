"""Build the prompts MentaLLaMA was trained on.

MentaLLaMA was fine-tuned on the IMHI queries as plain text, so the default prompt is the IMHI
query byte for byte: ``Consider this post: "{post}" Question: {question}`` with the post inserted
as is (no escaping of its quotes, no trimming of its whitespace). ``chat=True`` wraps that query
in the LLaMA-2 chat format for checkpoints served behind a chat template.
"""

from __future__ import annotations

import re

from .tasks import TaskInfo, get_task

__all__ = ["build_prompt", "build_query", "split_query", "wrap_chat", "aspect_of"]

_QUERY_PREFIX = 'Consider this post: "'
_QUERY_MIDDLE = '" Question: '
# Greedy post: a post may itself contain '" Question: '; the question is the text after the last one.
_QUERY_RE = re.compile(r'Consider this post: "(?P<post>.*)" Question: (?P<question>.*)', re.DOTALL)

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def build_query(task: str | TaskInfo, post: str, *, aspect: str | None = None) -> str:
    """The IMHI query for ``post``, byte for byte as the benchmark writes it."""
    info = get_task(task)
    question = info.question_for(aspect)  # validates the aspect before we look at the post
    if not isinstance(post, str):
        raise TypeError(f"post must be a str, not {type(post).__name__}")
    if not post.strip():
        raise ValueError("post is empty")
    return f"{_QUERY_PREFIX}{post}{_QUERY_MIDDLE}{question}"


def wrap_chat(query: str, system_prompt: str | None = None) -> str:
    """Wrap ``query`` in the LLaMA-2 chat format, without ``<s>``: the tokenizer adds BOS itself,
    and a second one shifts the model off its training distribution."""
    if system_prompt is None:
        return f"{B_INST} {query} {E_INST}"
    return f"{B_INST} {B_SYS}{system_prompt}{E_SYS}{query} {E_INST}"


def build_prompt(
    task: str | TaskInfo,
    post: str,
    *,
    aspect: str | None = None,
    chat: bool = False,
    system_prompt: str | None = None,
) -> str:
    """The prompt to send for ``post``.

    Parameters
    ----------
    task: task name or alias (case-insensitive), see :data:`mentallama.tasks.TASKS`.
    post: the social-media post, inserted as is.
    aspect: required for tasks with aspects (Irf: the risk, MultiWD: the wellness dimension),
        refused for the others.
    chat: wrap the query in ``[INST] ... [/INST]`` (LLaMA-2 chat format, no leading ``<s>``).
    system_prompt: system block for ``chat=True``; ``None`` means no ``<<SYS>>`` block.

    Raises ``ValueError`` for an unknown task, a missing/unknown/unexpected aspect, an empty post,
    or a system prompt without ``chat=True``.
    """
    query = build_query(task, post, aspect=aspect)
    if not chat:
        if system_prompt is not None:
            raise ValueError("system_prompt needs chat=True (the plain IMHI query has no system block)")
        return query
    return wrap_chat(query, system_prompt)


def split_query(query: str) -> tuple[str, str]:
    """Inverse of :func:`build_query`: ``(post, question)`` of an IMHI query.

    Raises ``ValueError`` when ``query`` does not have the IMHI shape.
    """
    match = _QUERY_RE.fullmatch(query)
    if match is None:
        raise ValueError("not an IMHI query (expected 'Consider this post: \"...\" Question: ...')")
    return match.group("post"), match.group("question")


def aspect_of(task: str | TaskInfo, question: str) -> str | None:
    """The aspect that ``question`` asks about for ``task`` (``None`` for tasks without aspects).

    Raises ``ValueError`` when ``question`` is not one of the task's questions.
    """
    info = get_task(task)
    if not info.aspects:
        if question == info.question:
            return None
    else:
        for aspect in info.aspects:
            if question == info.question.format(aspect=aspect):
                return aspect
    raise ValueError(f"question {question!r} is not a question of task {info.name!r}")
