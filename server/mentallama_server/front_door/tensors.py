"""Request checks shared by both protocols, and the HTTP `generate` JSON <-> KServe tensors.

The JSON mapping is Triton's `generate` extension: each key that names a model input becomes that input (a
value or a nested list, flattened, shaped `[N, *dims]`), `id` is the request id, `parameters` and every other key
become request parameters; a response's outputs come back as keys (one element: a scalar). Unlike Triton 2.51's
own, values are checked first: integers out of the input's range are refused naming the field and the value
(2.51 wrapped 4294967297 to 1), `stream` on `generate` is refused (2.51 answered it with 200 and an error).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from mentallama_server.front_door.admission import Refused
from mentallama_server.front_door.upstream import EMPTY_FINAL

MAX_REQUEST_ID_CHARS = 256
INT_RANGES = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
_CONTENTS = {
    "BOOL": "bool_contents",
    "BYTES": "bytes_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}
_NUMPY = {"BOOL": bool, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
          "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64}  # fmt: skip


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise Refused(f"the request id is {len(request_id)} characters long; the limit is {MAX_REQUEST_ID_CHARS}")


def wants_empty_final(request: service_pb2.ModelInferRequest) -> bool:
    flag = request.parameters.get(EMPTY_FINAL)
    return flag is not None and flag.bool_param


def _first_value(request: service_pb2.ModelInferRequest, name: str) -> Any:
    for index, tensor in enumerate(request.inputs):
        if tensor.name != name:
            continue
        if tensor.datatype != "BOOL":
            return None
        if tensor.contents.bool_contents:
            return tensor.contents.bool_contents[0]
        if index < len(request.raw_input_contents) and request.raw_input_contents[index]:
            return bool(request.raw_input_contents[index][0])
    return None


def is_stop(request: service_pb2.ModelInferRequest) -> bool:
    """A request whose `stop` input is true (TensorRT-LLM's in-band stop of the running request with its id)."""
    return bool(_first_value(request, "stop"))


SEQUENCE_INPUTS = ("beam_width", "num_return_sequences")


def _int_values(request: service_pb2.ModelInferRequest, index: int) -> list[int] | None:
    """The values of integer input `index` (typed contents or raw bytes); None for a non-integer type."""
    tensor = request.inputs[index]
    if tensor.datatype not in INT_RANGES:
        return None
    if index < len(request.raw_input_contents) and request.raw_input_contents[index]:
        dtype = np.dtype(_NUMPY[tensor.datatype]).newbyteorder("<")
        raw = request.raw_input_contents[index]
        return np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype=dtype).tolist()
    return list(getattr(tensor.contents, _CONTENTS[tensor.datatype]))


def check_sequences(request: service_pb2.ModelInferRequest, limit: int) -> None:
    """Refuse `beam_width` / `num_return_sequences` outside 1..`limit` (FrontDoorConfig.max_sequences), naming the
    input: every beam or sampled sequence holds KV cache of its own, and TensorRT-LLM bounds sampled sequences by
    nothing (the CPU engine step checks --max-sequences, too late for the GPU path)."""
    for index, tensor in enumerate(request.inputs):
        if tensor.name not in SEQUENCE_INPUTS:
            continue
        values = _int_values(request, index)
        if values is None:
            raise Refused(f"{tensor.name} must be an integer input (INT32), got {tensor.datatype[:16]}")
        for value in values:
            if value < 1:
                raise Refused(f"{tensor.name} must be >= 1, got {value}")
            if value > limit:
                raise Refused(f"{tensor.name} is {value}; this server serves at most {limit} sequences per prompt "
                              "(max_sequences)")  # fmt: skip


# --- HTTP generate ---------------------------------------------------------------------------------------------
def load_json(body: bytes, max_depth: int) -> dict[str, Any]:
    """The request object, with its nesting bounded (Triton 2.51's parser recursed until it crashed)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("the request body is not valid UTF-8") from None
    depth = _nesting_depth(text)
    if depth > max_depth:
        raise Refused(f"the request JSON is nested {depth} levels deep; the limit is {max_depth}")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Refused(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Refused("the request body must be a JSON object")
    return value


def _no_constant(name: str) -> None:
    raise Refused(f"{name} is not a JSON number")


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside strings; a linear scan, so any depth is measured without recursing."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _flatten(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    flat: list[Any] = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if isinstance(item, dict):
                raise Refused(f"{name}: objects are not allowed in an input's values")
            flat.append(item)
        else:
            stack.pop()
    return flat


def _checked(name: str, datatype: str, value: Any) -> Any:
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise Refused(f"{name} must be a string, got {json.dumps(value)[:40]}")
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(f"{name} is not valid UTF-8 (a lone surrogate)") from None
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise Refused(f"{name} must be true or false, got {json.dumps(value)[:40]}")
        return value
    if datatype in INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Refused(f"{name} must be an integer, got {json.dumps(value)[:40]}")
        low, high = INT_RANGES[datatype]
        if not low <= value <= high:
            raise Refused(f"{name} is {value}, outside the range of {datatype} ({low} to {high})")
        return value
    if datatype in ("FP32", "FP64", "FP16", "BF16"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(f"{name} must be a number, got {json.dumps(value)[:40]}")
        if not math.isfinite(float(value)) or (datatype == "FP32" and abs(float(value)) > 3.4e38):
            raise Refused(f"{name} is {value}, outside the range of {datatype}")
        return float(value)
    raise Refused(f"{name}: inputs of type {datatype} are not accepted over HTTP generate")


def _parameter(request: service_pb2.ModelInferRequest, key: str, value: Any) -> None:
    param = request.parameters[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise Refused(f"parameter {key} is {value}, outside the range of a 64-bit integer")
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise Refused(f"parameter {key} must be a string, a number or true/false")


def generate_request(
    model: str, body: Mapping[str, Any], inputs: Mapping[str, tuple[str, list[int]]]
) -> service_pb2.ModelInferRequest:
    """The KServe request of a `generate` JSON object; `inputs`: the model's input name -> (datatype, dims)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for key, value in body.items():
        if key == "id":
            if not isinstance(value, str):
                raise Refused("id must be a string")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused("the request id is not valid UTF-8") from None
            check_request_id(value)
            request.id = value
        elif key == "parameters":
            if not isinstance(value, dict):
                raise Refused("parameters must be a JSON object")
            for name, item in value.items():
                _parameter(request, name, item)
        elif key in inputs:
            datatype, dims = inputs[key]
            values = [_checked(key, datatype, item) for item in _flatten(value, key)]
            per_item = math.prod(d for d in dims if d > 0) or 1
            if -1 in dims:  # a variable-length input (stop words): one row of everything given
                shape = [1, len(values)]
            elif not values or len(values) % per_item:
                raise Refused(f"{key} has {len(values)} values; a multiple of {per_item} is needed")
            else:
                shape = [len(values) // per_item, *dims]
            tensor = request.inputs.add(name=key, datatype=datatype, shape=shape)
            getattr(tensor.contents, _CONTENTS[datatype]).extend(values)
        else:
            _parameter(request, key, value)
    return request


def response_json(response: service_pb2.ModelInferResponse, request_id: str) -> dict[str, Any]:
    """A response's outputs as `generate` returns them (one element: a scalar)."""
    body: dict[str, Any] = {}
    if request_id:
        body["id"] = request_id
    body["model_name"] = response.model_name
    body["model_version"] = response.model_version
    for index, tensor in enumerate(response.outputs):
        body[tensor.name] = _output_values(tensor, response.raw_output_contents[index] if index < len(
            response.raw_output_contents) else b"")  # fmt: skip
    return body


def _output_values(tensor: service_pb2.ModelInferResponse.InferOutputTensor, raw: bytes) -> Any:
    if tensor.datatype == "BYTES":
        values: list[Any] = []
        offset = 0
        while offset + 4 <= len(raw):
            size = int.from_bytes(raw[offset : offset + 4], "little")
            values.append(raw[offset + 4 : offset + 4 + size].decode("utf-8", "replace"))
            offset += 4 + size
        if not raw:
            values = [v.decode("utf-8", "replace") for v in tensor.contents.bytes_contents]
    else:
        dtype = _NUMPY.get(tensor.datatype)
        if dtype is None:
            return None
        values = np.frombuffer(raw, dtype=dtype).tolist() if raw else list(
            getattr(tensor.contents, _CONTENTS[tensor.datatype]))  # fmt: skip
    return values[0] if len(values) == 1 else values
