"""The SDK and the benchmark backends encode requests by the one declaration of the interface."""

from __future__ import annotations

import numpy as np

from mentallama._transport import INPUT_TYPES, build_request
from mentallama_bench.backends import _GRPC_TYPES
from mentallama_interface import ENSEMBLE_INPUTS, SERVED_INPUTS, STOP_INPUT, WIRE_TYPES


def test_sdk_sends_exactly_the_served_inputs_and_stop_with_their_declared_types() -> None:
    declared = {spec.name: spec.data_type for spec in (*SERVED_INPUTS, STOP_INPUT)}
    assert set(INPUT_TYPES) == set(declared)
    for name, (wire, fmt) in INPUT_TYPES.items():
        assert (wire, fmt) == WIRE_TYPES[declared[name]][:2], name


def test_a_request_carries_each_input_as_declared() -> None:
    request = build_request("mentallama", "r1", {"text_input": "hi", "max_tokens": 4, "top_p": 0.5, "seed": 7})
    sent = {t.name: t.datatype for t in request.inputs}
    assert sent == {"text_input": "BYTES", "max_tokens": "INT32", "top_p": "FP32", "seed": "UINT64"}


def test_benchmark_backend_types_come_from_the_declaration() -> None:
    for spec in ENSEMBLE_INPUTS:
        wire, np_type = _GRPC_TYPES[spec.name]
        assert wire == WIRE_TYPES[spec.data_type][0]
        assert np.dtype(np_type) == np.dtype(WIRE_TYPES[spec.data_type][2])
