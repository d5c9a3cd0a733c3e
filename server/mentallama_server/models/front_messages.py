"""What the `mentallama` front model reads from the engine (`EngineChunk`) and sends to its client (`Reply`).

An engine response holds one sequence (`ids`), or several beams together (`beams`, TensorRT-LLM's
`output_ids` [1, beams, len]); a sample of several sequences is tagged with its `sequence_index`. A reply holds
the text of one sequence (`text`), or of several beams (`texts`: `text_output` flat over the beams, as
TensorRT-LLM's postprocessing returns it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mentallama_server.overload import as_overload

__all__ = ["EngineChunk", "ErrorCode", "Reply"]

ErrorCode = Literal["INTERNAL", "INVALID_ARG", "UNAVAILABLE"]


@dataclass(frozen=True)
class EngineChunk:
    """One response of the engine (`tensorrt_llm`), read out of its tensors. `ids` are the new output tokens,
    None for the engine's bare final flag; `cum_log_prob` and `log_probs` are read only for a client that asked
    for log probs. `beams` (with `beam_cum_log_probs` and `beam_log_probs`) replace them when the response holds
    several beams: each beam's generated tokens so far. An `error` ends the call with `code`: a `TritonError`
    code's name, or the engine's own code (an int), passed through."""

    ids: Sequence[int] | None = None
    cum_log_prob: float = 0.0
    log_probs: Sequence[float] = ()
    error: str | None = None
    code: ErrorCode | int = "INTERNAL"
    sequence_index: int = 0
    beams: Sequence[Sequence[int]] | None = None
    beam_cum_log_probs: Sequence[float] = ()
    beam_log_probs: Sequence[Sequence[float]] = ()

    @classmethod
    def failed(cls, message: str, code: int) -> EngineChunk:
        """An engine error response. BLS responses report every error as INTERNAL, so an overload refusal (ours,
        TensorRT-LLM's full queue, Triton's) is recognised by its message and passed on as UNAVAILABLE, in the
        words clients retry on (`overload.as_overload`)."""
        overload = as_overload(message)
        return cls(error=message, code=code) if overload is None else cls(error=overload, code="UNAVAILABLE")

    @classmethod
    def failed_in_band(cls, message: bytes | str) -> EngineChunk:
        """A final response whose `error_message` output carries the engine's error (`errors_in_band`)."""
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        overload = as_overload(text)
        return cls(error=text, code="INTERNAL") if overload is None else cls(error=overload, code="UNAVAILABLE")

    @classmethod
    def of_outputs(cls, output: Callable[[str], np.ndarray | None], log_probs: bool) -> EngineChunk:
        """Read a response's tensors (`output(name)`: the array, None when absent), in TensorRT-LLM's layout:
        `output_ids` [1, beams, len] cut to `sequence_length` [1, beams]; `cum_log_probs` [1, beams] and
        `output_log_probs` [1, beams, len] when asked for; `sequence_index` [1, 1] when present. Several beams
        become `beams`; one, `ids` (a beam search that returns its best beam alone reads it as `ids`)."""
        ids = output("output_ids")
        if ids is None:  # the engine's bare final flag
            return cls()
        ids = np.asarray(ids)
        # [beams, len] of the first (only) batch row; indexing, not reshape(-1, ...): a streamed final response
        # can carry no new tokens ([1, 1, 0]), whose -1 numpy cannot infer.
        ids = ids[(0,) * (ids.ndim - 2)] if ids.ndim >= 2 else ids[np.newaxis]
        lengths = np.asarray(output("sequence_length")).reshape(-1)
        index = output("sequence_index")
        sequence_index = 0 if index is None else int(np.asarray(index).reshape(-1)[0])
        tokens = [[int(t) for t in ids[b, : int(lengths[b])]] for b in range(ids.shape[0])]
        cums: list[float] = []
        per_token: list[list[float]] = [[] for _ in tokens]
        if log_probs:
            cums = [float(v) for v in np.asarray(output("cum_log_probs")).reshape(-1)]
            values = np.asarray(output("output_log_probs"))
            values = values.reshape(len(tokens), -1) if values.size else np.zeros((len(tokens), 0))
            per_token = [[float(v) for v in values[b, : len(tokens[b])]] for b in range(len(tokens))]
        if len(tokens) > 1:
            return cls(sequence_index=sequence_index, beams=tokens, beam_cum_log_probs=cums, beam_log_probs=per_token)
        return cls(tokens[0], cums[0] if cums else 0.0, per_token[0], sequence_index=sequence_index)


@dataclass(frozen=True)
class Reply:
    """One response to the client: text (with what the client asked for beside it), the texts of several beams,
    an error, or neither (a bare final flag). `final` ends the call; a `BatchSender` keeps the request open until
    its last call ends."""

    text: str | None = None
    batch_index: int = 0
    log_probs: Sequence[float] | None = None  # with cum_log_prob, when the client asked for log probs
    cum_log_prob: float = 0.0
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    error: str | None = None
    code: ErrorCode | int = "INTERNAL"
    final: bool = False
    texts: Sequence[str] | None = None
    """Beams: one text each (`text_output` [beams]), with `beam_log_probs` and `beam_cum_log_probs` if asked."""
    beam_log_probs: Sequence[Sequence[float]] | None = None
    beam_cum_log_probs: Sequence[float] | None = None
    sequence_index: int | None = None
    """Sent when a prompt gets several sequences, as TensorRT-LLM does (0 for beams, which come together)."""

    @classmethod
    def failure(cls, message: str, code: ErrorCode | int) -> Reply:
        return cls(error=message, code=code, final=True)

    @property
    def bare(self) -> bool:
        return self.text is None and self.texts is None and self.error is None

    def tensors(self) -> dict[str, np.ndarray]:
        """The response's tensors (none for an error or a bare flag), shaped as the ensemble returns them."""
        if self.text is None and self.texts is None:
            return {}
        texts = [self.text] if self.texts is None else list(self.texts)
        tensors = {
            # flat, one string per (prompt, sequence): [1], [beams] for beams, as TensorRT-LLM's postprocessing
            "text_output": np.array([t.encode("utf-8") for t in texts], dtype=object),
            "batch_index": np.array([[self.batch_index]], dtype=np.int32),
        }
        if self.log_probs is not None:
            tensors["output_log_probs"] = np.asarray(self.log_probs, dtype=np.float32).reshape(1, 1, -1)
            tensors["cum_log_probs"] = np.array([[self.cum_log_prob]], dtype=np.float32)
        if self.beam_log_probs is not None and self.beam_cum_log_probs is not None:
            longest = max((len(lp) for lp in self.beam_log_probs), default=0)
            values = np.zeros((1, len(self.beam_log_probs), longest), dtype=np.float32)
            for b, lp in enumerate(self.beam_log_probs):
                values[0, b, : len(lp)] = lp
            tensors["output_log_probs"] = values
            tensors["cum_log_probs"] = np.array([list(self.beam_cum_log_probs)], dtype=np.float32)
        if self.sequence_index is not None:
            tensors["sequence_index"] = np.array([[self.sequence_index]], dtype=np.int32)
        if self.num_input_tokens is not None:
            tensors["num_input_tokens"] = np.array([[self.num_input_tokens]], dtype=np.int32)
        if self.num_output_tokens is not None:
            tensors["num_output_tokens"] = np.array([[self.num_output_tokens]], dtype=np.int32)
        return tensors
