"""Beam search and several sequences without Triton (issue 21): the CPU engine step's responses in TensorRT-LLM's
layout, the front model reading them back (`EngineChunk.of_outputs`), and the front model's replies
(`front_sequences`): beams together and whole, one engine response behind when streamed; samples each on its own,
tagged with `sequence_index`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mentallama_server.engine.types import GenerationRequest, SequenceOutput
from mentallama_server.models.front_messages import EngineChunk
from mentallama_server.models.front_model import FrontRequest, TextDecoding
from mentallama_server.models.front_sequences import BeamTexts, SampleTexts, several_texts
from mentallama_server.models.sampling import Sequences
from mentallama_server.models.tensorrt_llm_cpu import ResponseAssembler, StepRequest, Utf8Boundary
from mentallama_server.models.text_tokenizer import load_tokenizer

PROMPT_IDS = [1, 470, 343, 288]


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path):
    return load_tokenizer(tiny_checkpoint)


def step(*, beams: int = 1, returned: int = 1, streaming: bool = False, exclude: bool = False) -> StepRequest:
    generation = GenerationRequest("r", PROMPT_IDS, 8, beam_width=beams, num_return_sequences=returned,
                                   return_log_probs=True, streaming=streaming)  # fmt: skip
    return StepRequest(generation, streaming, exclude, True, True, True, batch_index=2)


SEQUENCES = (
    SequenceOutput([11, 12, 13], [-0.5, -0.25, -0.25], -1.0, "length"),
    SequenceOutput([21, 22], [-0.75, -0.5], -1.25, "stop"),
)


def test_beams_come_together_padded_with_their_own_cum_log_probs(tokenizer) -> None:
    (out,) = ResponseAssembler(step(beams=2, returned=2, exclude=True), Utf8Boundary(tokenizer)).sequences(SEQUENCES)
    assert out["output_ids"].tolist() == [[[11, 12, 13], [21, 22, -1]]]
    assert out["sequence_length"].tolist() == [[3, 2]]
    assert out["cum_log_probs"].tolist() == [[-1.0, -1.25]]
    assert out["output_log_probs"].shape == (1, 2, 3) and out["output_log_probs"][0, 1, 2] == 0.0
    assert out["sequence_index"].tolist() == [[0]] and out["batch_index"].tolist() == [[2]]
    assert out["num_output_tokens"].tolist() == [[5]]
    chunk = EngineChunk.of_outputs(out.get, log_probs=True)
    assert chunk.beams == [[11, 12, 13], [21, 22]] and chunk.ids is None
    assert chunk.beam_cum_log_probs == [-1.0, -1.25] and chunk.beam_log_probs[1] == [-0.75, -0.5]


def test_a_non_streamed_beam_carries_the_prompt_unless_excluded_and_streamed_beams_never(tokenizer) -> None:
    boundary = Utf8Boundary(tokenizer)
    (whole,) = ResponseAssembler(step(beams=2, returned=1), boundary).sequences(SEQUENCES[:1])
    assert whole["output_ids"].tolist() == [[PROMPT_IDS + [11, 12, 13]]] and "sequence_index" not in whole
    (streamed,) = ResponseAssembler(step(beams=2, returned=1, streaming=True), boundary).sequences(SEQUENCES[:1])
    assert streamed["output_ids"].tolist() == [[[11, 12, 13]]]  # TensorRT-LLM streams beams without the prompt
    chunk = EngineChunk.of_outputs(streamed.get, log_probs=False)
    assert chunk.ids == [11, 12, 13] and chunk.beams is None  # one returned beam reads as one sequence


def test_samples_come_one_response_each_with_their_index(tokenizer) -> None:
    outs = ResponseAssembler(step(returned=2, exclude=True), Utf8Boundary(tokenizer)).sequences(SEQUENCES)
    assert [o["sequence_index"].tolist() for o in outs] == [[[0]], [[1]]]
    assert [o["output_ids"].tolist() for o in outs] == [[[[11, 12, 13]]], [[[21, 22]]]]
    assert [o["cum_log_probs"].tolist() for o in outs] == [[[-1.0]], [[-1.25]]]
    chunks = [EngineChunk.of_outputs(o.get, log_probs=True) for o in outs]
    assert [(c.sequence_index, list(c.ids or ())) for c in chunks] == [(0, [11, 12, 13]), (1, [21, 22])]


def front(*, stream: bool, beams: int = 1, returned: int = 1, exclude: bool = True) -> FrontRequest:
    return FrontRequest(PROMPT_IDS[1:], 8, 2, 0, [], [], stream, exclude, True, True, True,
                        sequences=Sequences(beams, returned, 1.0))  # fmt: skip


def test_streamed_beams_are_whole_and_one_response_behind(tokenizer) -> None:
    decoding = TextDecoding.of(tokenizer)
    texts = several_texts(front(stream=True, beams=2, returned=2), decoding)
    assert isinstance(texts, BeamTexts)
    first = EngineChunk(beams=[[11], [21]], beam_cum_log_probs=[-0.5, -0.75], beam_log_probs=[[-0.5], [-0.75]])
    second = EngineChunk(beams=[[11, 12], [21, 22]], beam_cum_log_probs=[-0.75, -1.25],
                         beam_log_probs=[[-0.5, -0.25], [-0.75, -0.5]])  # fmt: skip
    assert texts.add(first, cancelled=False) is None
    reply = texts.add(second, cancelled=False)
    assert reply is not None and not reply.final and list(reply.texts) == [
        decoding.decoder.raw([11]), decoding.decoder.raw([21])
    ]
    (final,) = texts.final()
    assert final.final and final.num_output_tokens == 4
    tensors = final.tensors()
    assert tensors["text_output"].shape == (2,) and tensors["cum_log_probs"].tolist() == [[-0.75, -1.25]]
    assert tensors["sequence_index"].tolist() == [[0]] and tensors["output_log_probs"].shape == (1, 2, 2)


def test_non_streamed_beams_and_samples_carry_the_prompt_when_asked(tokenizer) -> None:
    decoding = TextDecoding.of(tokenizer)
    prompt = decoding.prompt_text(PROMPT_IDS[1:])
    beams = several_texts(front(stream=False, beams=2, returned=2, exclude=False), decoding)
    assert beams.add(EngineChunk(beams=[[11, 12], [21]]), cancelled=False) is None
    (final,) = beams.final()
    assert all(text.startswith(prompt) for text in final.texts) and final.final
    samples = several_texts(front(stream=False, returned=2, exclude=False), decoding)
    assert isinstance(samples, SampleTexts)
    for index, ids in ((1, [21, 22]), (0, [11, 12])):
        assert samples.add(EngineChunk(ids, sequence_index=index), cancelled=False) is None
    replies = samples.final()
    assert [r.sequence_index for r in replies] == [0, 1] and [r.final for r in replies] == [False, True]
    assert replies[1].text == prompt + decoding.decoder.raw([21, 22]) and replies[0].num_output_tokens == 2


def test_streamed_samples_are_tagged_deltas(tokenizer) -> None:
    decoding = TextDecoding.of(tokenizer)
    samples = several_texts(front(stream=True, returned=2), decoding)
    replies = [samples.add(EngineChunk([ids], sequence_index=i), cancelled=False)
               for i, ids in ((0, 470), (1, 343), (0, 288))]  # fmt: skip
    assert [r.sequence_index for r in replies if r is not None] == [0, 1, 0]
    assert samples.add(EngineChunk([470], sequence_index=1), cancelled=True) is None  # a cancelled call says nothing
    assert several_texts(front(stream=True), decoding) is None  # one sequence: the front call's own path
    assert np.array_equal(replies[0].tensors()["sequence_index"], np.array([[0]]))


@pytest.mark.parametrize("log_probs", [False, True])
def test_a_response_with_no_new_tokens_reads_as_an_empty_chunk(log_probs: bool) -> None:
    """A streamed request's final response can carry no new tokens: output_ids [1, 1, 0]."""
    tensors = {
        "output_ids": np.zeros((1, 1, 0), dtype=np.int32),
        "sequence_length": np.zeros((1, 1), dtype=np.int32),
        "cum_log_probs": np.zeros((1, 1), dtype=np.float32),
        "output_log_probs": np.zeros((1, 1, 0), dtype=np.float32),
    }
    chunk = EngineChunk.of_outputs(tensors.get, log_probs)
    assert list(chunk.ids) == [] and chunk.beams is None and chunk.error is None
