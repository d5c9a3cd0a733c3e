"""Triton's gRPC messages as the test doubles read and write them: request inputs decoded to Python
values, stream responses built from text and token counts (the ``raw_*_contents`` encoding)."""

from __future__ import annotations

import math
import struct
from typing import Any

from tritonclient.grpc import service_pb2 as pb

MODEL = "mentallama"
_FORMATS = {"BOOL": "?", "INT32": "i", "INT64": "q", "UINT32": "I", "UINT64": "Q", "FP32": "f", "FP64": "d"}


def _strings(raw: bytes) -> list[str]:
    items, offset = [], 0
    while offset + 4 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + size].decode("utf-8", "replace"))
        offset += 4 + size
    return items


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, Any]:
    """Input name -> value: ``text_input`` a str, other BYTES inputs a list of str, a numeric input
    its one value (a list when it has several)."""
    fields: dict[str, Any] = {}
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        if tensor.datatype == "BYTES":
            items = _strings(raw)
            fields[tensor.name] = items[0] if tensor.name == "text_input" else items
            continue
        count = math.prod(tensor.shape)
        values = list(struct.unpack(f"<{count}{_FORMATS[tensor.datatype]}", raw))
        fields[tensor.name] = values[0] if count == 1 else values
    return fields


def stream_response(
    request_id: str, text: str, *, final: bool, num_output_tokens: int | None = None,
    num_input_tokens: int | None = None,
) -> pb.ModelStreamInferResponse:  # fmt: skip
    """One response of a generation stream, as the ``mentallama`` ensemble sends it."""
    response = pb.ModelInferResponse(model_name=MODEL, model_version="1", id=request_id)
    data = text.encode()
    outputs = [("text_output", "BYTES", struct.pack("<I", len(data)) + data)]
    for name, value in (("num_output_tokens", num_output_tokens), ("num_input_tokens", num_input_tokens)):
        if value is not None:
            outputs.append((name, "INT32", struct.pack("<i", value)))
    for name, datatype, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=[1, 1])
        response.raw_output_contents.append(raw)
    response.parameters["triton_final_response"].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)
