"""Every sampling input of the ensemble interface is honoured by the CPU (OpenVINO) engine or refused with an
error naming it, through both entry models of a real server."""

from __future__ import annotations

import numpy as np
import pytest

from tests.server.triton_io import infer

MODELS = ("mentallama", "ensemble")
PROMPT = "I keep worrying about exams and I cannot sleep."


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"bad_words": ["sleep"]}, "bad_words"),
        ({"beam_width": 5}, "beam_width"),  # above the server's max_sequences
    ],
)
def test_unsupported_inputs_are_refused_naming_the_field(cpu_server, model, extra, field) -> None:
    result = infer(cpu_server.grpc_url, model, PROMPT, 8, **extra)
    assert result.error is not None and field in result.error
    assert infer(cpu_server.grpc_url, model, PROMPT, 4).error is None  # still serving


@pytest.mark.parametrize("model", MODELS)
def test_sampling_inputs_change_the_output_as_asked(cpu_server, model) -> None:
    url = cpu_server.grpc_url
    greedy = infer(url, model, PROMPT, 24, exclude_input_in_output=True)
    assert greedy.error is None
    seeded = dict(top_k=40, top_p=0.95, temperature=1.0, seed=np.array([[7]], dtype=np.uint64))
    first = infer(url, model, PROMPT, 24, exclude_input_in_output=True, **seeded)
    again = infer(url, model, PROMPT, 24, exclude_input_in_output=True, **seeded)
    assert first.error is None and first.text == again.text  # the request's own seed
    others = [
        infer(url, model, PROMPT, 24, exclude_input_in_output=True, **{**seeded, "seed": np.array([[s]], np.uint64)})
        for s in range(4)
    ]
    assert any(o.text != first.text for o in others)
    # The tiny model repeats itself greedily; a huge repetition penalty forbids every token seen so far.
    penalised = infer(url, model, PROMPT, 24, exclude_input_in_output=True, repetition_penalty=1e6,
                      return_num_output_tokens=True)  # fmt: skip
    assert penalised.error is None and penalised.text != greedy.text
    forced = infer(url, model, PROMPT, 24, exclude_input_in_output=True, min_tokens=24, return_num_output_tokens=True)
    assert int(forced.outputs["num_output_tokens"].reshape(-1)[0]) == 24
