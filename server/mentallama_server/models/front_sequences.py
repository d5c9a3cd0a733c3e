"""The `mentallama` front model's text for beam search and several sequences, in TensorRT-LLM's layout (issue 21).

Beam search (`beam_width` > 1): every engine response carries whole beams, the generated tokens so far
(TensorRT-LLM streams beams that way, since a beam can change any of its tokens; the CPU engine sends them once,
when done). Each client reply carries the best `num_return_sequences` beams' texts together (`text_output` [beams],
`cum_log_probs` [1, beams]); a streaming client gets each state of the beams, one engine response behind, and
overwrites (as TensorRT-LLM's end-to-end client does), so the last reply carries the final beams and the counts.

Several samples (`num_return_sequences` > 1, beam width 1): each engine response belongs to one sequence
(`sequence_index`); each sequence is decoded incrementally on its own, as a single sequence is, and every reply
carries its `sequence_index`. A client that does not stream gets one reply per sequence at the end.

Text is decoded exactly as for a single sequence (`detokenize.IncrementalDetokenizer`): `prompt + text` is the
decoded sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from mentallama_server.models.detokenize import IncrementalDetokenizer
from mentallama_server.models.front_messages import EngineChunk, Reply
from mentallama_server.models.sampling import Sequences


class FrontRequest(Protocol):
    """What these keepers read of a front request (`front_model.FrontRequest`, which imports this module)."""

    input_ids: list[int]
    stream: bool
    exclude_input_in_output: bool
    return_log_probs: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool
    batch_index: int
    sequences: Sequences


class TextDecoding(Protocol):
    """`front_model.TextDecoding`: the tokenizer, its anchored decoder and byte-token map."""

    tokenizer: Any
    decoder: Any
    byte_of: Mapping[int, int]

    def prompt_text(self, input_ids: Sequence[int]) -> str: ...

__all__ = ["BeamTexts", "SampleTexts", "several_texts"]


def _text(decoding: TextDecoding, front: FrontRequest, ids: list[int]) -> str:
    detokenizer = IncrementalDetokenizer(
        decoding.tokenizer, front.input_ids, byte_of=decoding.byte_of, decoder=decoding.decoder
    )
    return detokenizer.add(ids) + detokenizer.flush()


class BeamTexts:
    """Whole beams, replaced by each engine response."""

    def __init__(self, front: FrontRequest, decoding: TextDecoding) -> None:
        self.front, self.decoding = front, decoding
        self.latest: EngineChunk | None = None

    def add(self, chunk: EngineChunk, cancelled: bool) -> Reply | None:
        previous, self.latest = self.latest, chunk
        if self.front.stream and previous is not None and not cancelled:
            return self._reply(previous, final=False)
        return None

    def final(self) -> list[Reply]:
        return [Reply(final=True)] if self.latest is None else [self._reply(self.latest, final=True)]

    def _reply(self, chunk: EngineChunk, final: bool) -> Reply:
        front = self.front
        # One returned beam comes as `ids` (EngineChunk.of_outputs).
        beams = chunk.beams if chunk.beams is not None else [chunk.ids or ()]
        cums = chunk.beam_cum_log_probs if chunk.beams is not None else [chunk.cum_log_prob]
        per_token = chunk.beam_log_probs if chunk.beams is not None else [chunk.log_probs]
        texts = [_text(self.decoding, front, list(beam)) for beam in beams]
        if not front.stream and not front.exclude_input_in_output:
            prompt = self.decoding.prompt_text(front.input_ids)
            texts = [prompt + text for text in texts]
        return Reply(
            texts=texts,
            batch_index=front.batch_index,
            beam_log_probs=per_token if front.return_log_probs else None,
            beam_cum_log_probs=cums if front.return_log_probs else None,
            sequence_index=0 if len(texts) > 1 else None,
            num_input_tokens=len(front.input_ids) if final and front.return_num_input_tokens else None,
            num_output_tokens=sum(len(b) for b in beams) if final and front.return_num_output_tokens else None,
            final=final,
        )  # fmt: skip


@dataclass
class _Sample:
    detokenizer: IncrementalDetokenizer
    texts: list[str] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    pending_log_probs: list[float] = field(default_factory=list)
    cum_log_prob: float = 0.0
    num_output: int = 0


class SampleTexts:
    """Independent sequences, each decoded incrementally and tagged with its `sequence_index`."""

    def __init__(self, front: FrontRequest, decoding: TextDecoding) -> None:
        self.front, self.decoding = front, decoding
        self.samples: dict[int, _Sample] = {}

    def _sample(self, index: int) -> _Sample:
        if index not in self.samples:
            detokenizer = IncrementalDetokenizer(
                self.decoding.tokenizer, self.front.input_ids, byte_of=self.decoding.byte_of,
                decoder=self.decoding.decoder,
            )  # fmt: skip
            self.samples[index] = _Sample(detokenizer)
        return self.samples[index]

    def add(self, chunk: EngineChunk, cancelled: bool) -> Reply | None:
        front = self.front
        sample = self._sample(chunk.sequence_index)
        text = sample.detokenizer.add(chunk.ids or ())
        if front.return_log_probs:
            sample.log_probs.extend(chunk.log_probs)
            sample.pending_log_probs.extend(chunk.log_probs)
            sample.cum_log_prob = chunk.cum_log_prob
        sample.num_output += len(chunk.ids or ())
        if front.stream and text and not cancelled:
            log_probs = sample.pending_log_probs if front.return_log_probs else None
            sample.pending_log_probs = []
            return Reply(text, front.batch_index, log_probs, sample.cum_log_prob, sequence_index=chunk.sequence_index)
        sample.texts.append(text)
        return None

    def final(self) -> list[Reply]:
        front = self.front
        replies = []
        for index in range(front.sequences.num_return_sequences):
            sample = self._sample(index)
            rest = sample.detokenizer.flush()
            if front.stream:
                text, log_probs = rest, sample.pending_log_probs
            else:
                text, log_probs = "".join(sample.texts) + rest, sample.log_probs
                if not front.exclude_input_in_output:
                    text = self.decoding.prompt_text(front.input_ids) + text
            replies.append(Reply(
                text, front.batch_index, log_probs if front.return_log_probs else None, sample.cum_log_prob,
                num_input_tokens=len(front.input_ids) if front.return_num_input_tokens else None,
                num_output_tokens=sample.num_output if front.return_num_output_tokens else None,
                sequence_index=index,
            ))  # fmt: skip
        return [*replies[:-1], replace(replies[-1], final=True)]


def several_texts(front: FrontRequest, decoding: TextDecoding) -> BeamTexts | SampleTexts | None:
    """The text keeper of a call that returns several sequences; None for one sequence."""
    if front.sequences.beam_width > 1:
        return BeamTexts(front, decoding)
    if front.sequences.num_return_sequences > 1:
        return SampleTexts(front, decoding)
    return None
