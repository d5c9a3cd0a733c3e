"""Result types returned by the SDK; each has ``to_dict()`` for JSONL output."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Analysis", "Generation"]


@dataclass(frozen=True)
class Generation:
    """The raw text a request produced plus its serving metadata (no interpretation)."""

    text: str
    """Generated text (the prompt is not included)."""

    request_id: str | None = None
    """Id the request was sent with, for matching server logs."""

    num_input_tokens: int | None = None
    """Prompt length in tokens, as the server counted it."""

    num_output_tokens: int | None = None
    """Number of generated tokens."""

    latency_s: float | None = None
    """Seconds from sending the request to the last token."""

    ttft_s: float | None = None
    """Seconds from sending the request to the first token (streaming only)."""

    finish_reason: str | None = None
    """Why generation stopped: ``"stop"`` (end token or stop word), ``"length"`` (max_tokens),
    ``"cancelled"`` (this client left the stream early), ``"stopped"`` (the server ended it early: a ``stop``
    request with its id); ``None`` when unknown."""

    texts: tuple[str, ...] = ()
    """Every sequence's text when several were asked for (``n`` > 1, or ``beam_width`` > 1): the samples in
    order, or the beams best first; ``text`` is the first of them. Empty for one sequence."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Analysis:
    """MentaLLaMA's answer for one post and task: the label it gave and its explanation.

    :func:`mentallama.parsing.parse_response` fills ``task``, ``label``, ``reasoning``, ``raw``,
    ``matched_by``, ``label_source``, ``confidence``, ``conflict``, ``off_task`` and ``note``; the client
    adds the serving fields with :meth:`with_generation`.
    """

    task: str
    """Canonical task name (``"DR"``, ``"SAD"``, ...)."""

    label: str | None
    """One of the task's canonical labels, or ``None`` when the text does not say which."""

    reasoning: str
    """The explanation, without the label sentence and without the ``Reasoning:`` marker."""

    raw: str
    """The generated text exactly as received."""

    matched_by: str | None = None
    """Where the label was read: ``"verdict"`` (the answer sentence before ``Reasoning:`` or the
    first sentence), ``"explanation"`` (a concluding statement inside the explanation), ``"model"``
    (inferred from the explanation by the label model), or ``None`` when no label was found."""

    label_source: str | None = None
    """``"stated"`` (the answer states the label and the rules read it), ``"inferred"`` (the answer
    does not state it plainly, e.g. no verdict, a hedged one or a list of the options, and the
    label model read it from the explanation), or ``None`` when there is no label."""

    confidence: float | None = None
    """The label model's probability of ``label`` (in [0, 1]), for stated labels too: a low value
    on a stated label means the explanation argues otherwise. ``None`` for tasks without a label
    model, when the text has too few known words, or when there is no label."""

    conflict: bool = False
    """True when the label is stated but the explanation argues for another one: the label model
    reads another label from it and gives the stated label a probability (``confidence``) below
    :data:`mentallama.parsing.CONFLICT_BELOW`. The label is kept; ``note`` says which label the
    explanation argues for."""

    off_task: str | None = None
    """When the answer's verdict is about another task's subject than the one asked (``"stress"``
    for "Yes, the poster suffers from stress." asked about loneliness): that subject. Such a verdict
    is not read as this task's label; the label, if any, comes from the explanation."""

    note: str | None = None
    """A plain sentence for a reader when something is off: the verdict answers another question,
    or the explanation argues against the stated label; ``None`` otherwise."""

    request_id: str | None = None
    """Id the request was sent with."""

    num_input_tokens: int | None = None
    """Prompt length in tokens."""

    num_output_tokens: int | None = None
    """Number of generated tokens."""

    latency_s: float | None = None
    """Seconds from sending the request to the last token."""

    ttft_s: float | None = None
    """Seconds to the first token (streaming only)."""

    finish_reason: str | None = None
    """Why generation stopped (``"stop"``, ``"length"``, ...); ``"length"`` means the text may be cut."""

    @property
    def parsed(self) -> bool:
        """True when a label was found."""
        return self.label is not None

    def describe_label(self) -> str:
        """The label and where it comes from, in words, e.g. ``"work (stated in the answer; label model
        0.95)"`` or ``"(none found)"``; the :attr:`note` is separate."""
        if self.label is None:
            return "(none found)"
        model = f"label model {self.confidence:.2f}" if self.confidence is not None else ""
        if self.label_source == "inferred":
            return f"{self.label} (inferred from the explanation" + (f"; {model})" if model else ")")
        where = "the explanation" if self.matched_by == "explanation" else "the answer"
        disagrees = ": the explanation argues otherwise" if self.conflict else ""
        return f"{self.label} (stated in {where}" + (f"; {model}{disagrees})" if model else ")")

    def with_generation(self, generation: Generation) -> Analysis:
        """A copy carrying ``generation``'s serving metadata (its text is not re-parsed)."""
        return dataclasses.replace(
            self,
            request_id=generation.request_id,
            num_input_tokens=generation.num_input_tokens,
            num_output_tokens=generation.num_output_tokens,
            latency_s=generation.latency_s,
            ttft_s=generation.ttft_s,
            finish_reason=generation.finish_reason,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return dataclasses.asdict(self)
