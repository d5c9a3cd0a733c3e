"""Raw gRPC calls to Triton for the reliability tests: any shape, type or version.

`triton_io` (tests/server) goes through tritonclient, which builds well-formed tensors; these calls send
exactly the bytes given, on a channel of their own that is closed right after (a short-lived client).
Errors arrive in-band (`error_message`): like the SDK, these calls never send Triton's
`triton_grpc_error` header, which crashes Triton 2.51 (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


def text(name: str, *values: str | bytes, shape: tuple[int, ...] | None = None) -> Tensor:
    """A BYTES tensor (Triton's length-prefixed encoding), `[1, len(values)]` unless `shape` is given."""
    raw = b""
    for value in values:
        data = value.encode() if isinstance(value, str) else value
        raw += struct.pack("<I", len(data)) + data
    return Tensor(name, "BYTES", shape or (1, len(values)), raw)


def number(name: str, datatype: str, *values: float, shape: tuple[int, ...] | None = None) -> Tensor:
    fmt = {"INT32": "<i", "FP32": "<f", "FP64": "<d", "BOOL": "<?", "UINT64": "<Q"}[datatype]
    return Tensor(name, datatype, shape or (1, len(values)), b"".join(struct.pack(fmt, v) for v in values))


@dataclass(frozen=True)
class StreamOutcome:
    status: grpc.StatusCode
    """How the stream ended: OK when it closed normally (an in-band error may still be set)."""
    message: str
    """The error: the in-band `error_message` of a response, or the stream's status details."""
    responses: int

    @property
    def refused(self) -> bool:
        return self.status is not grpc.StatusCode.OK or bool(self.message)


def stream_infer(
    url: str, model: str, tensors: Sequence[Tensor], *, version: str = "", timeout: float = 60.0
) -> StreamOutcome:
    """One request on its own `ModelStreamInfer` stream, read to the end."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="reliability")
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    for tensor in tensors:
        entry = request.inputs.add()
        entry.name, entry.datatype = tensor.name, tensor.datatype
        entry.shape.extend(tensor.shape)
        request.raw_input_contents.append(tensor.raw)
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        responses, message = 0, ""
        try:
            for response in stub.ModelStreamInfer(iter([request]), timeout=timeout):
                responses += 1
                message = message or response.error_message
        except grpc.RpcError as exc:
            return StreamOutcome(exc.code(), exc.details() or "", responses)
    return StreamOutcome(grpc.StatusCode.OK, message, responses)


def live_and_ready(url: str, model: str) -> bool:
    """Server live, server ready and `model` ready (what a load balancer's probe asks)."""
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return (
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
            and stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
            and stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=10).ready
        )
