"""Test double of the TensorRT-LLM C++ backend's streaming chunks: a `tensorrt_llm` stand-in, no engine.

The C++ `tensorrtllm` backend streams each decoding step's new tokens as they come, with no regard for
characters: a character that LLaMA spells with several byte-fallback tokens (an emoji is four) is split
over several responses. Our CPU engine step never does that (it holds byte runs back), so this double is
what lets the CPU test suite meet the GPU engine's chunking (tests/server/test_cxx_chunking.py).

Every request "generates" the token ids in `tokens.json` beside this file (written by the test), streamed
in chunks of 1, 2, 3, 1, 2, 3, ... tokens, so chunks end inside byte runs at every offset. A request that
does not stream gets them in one response, after its prompt unless `exclude_input_in_output`. A `stop`
request is answered with a bare final flag.

Two more behaviours of the C++ backend, switched on by files the test writes beside this one:
- `refuse.txt`: every request is refused with that text, as the backend refuses a request its executor will not
  take (an error response, code INTERNAL: "Maximum queue size of N has been reached, please try again later").
- `hold`: streamed requests get no token until a `stop` with their id ends them (requests that occupy the
  engine, for admission tests).
"""

import json
from pathlib import Path

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CHUNK_SIZES = (1, 2, 3)


def _input(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy()


def _response(ids):
    out = np.array(ids, dtype=np.int32).reshape(1, 1, len(ids))
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor("output_ids", out), pb_utils.Tensor("sequence_length", np.array([[len(ids)]], np.int32))]
    )


class TritonPythonModel:
    def initialize(self, args):
        here = Path(__file__).parent
        self.tokens = json.loads((here / "tokens.json").read_text())
        refuse = here / "refuse.txt"
        self.refusal = refuse.read_text() if refuse.is_file() else None
        self.hold = (here / "hold").is_file()
        self.held = {}  # request id -> sender of a held request

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if bool(_input(request, "stop", np.zeros(1)).reshape(-1)[0]):
                held = self.held.pop(request.request_id(), None)
                if held is not None:
                    held.send(flags=FINAL)
                sender.send(flags=FINAL)
                continue
            if self.refusal is not None:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(self.refusal)), flags=FINAL)
                continue
            streaming = bool(_input(request, "streaming", np.zeros(1)).reshape(-1)[0])
            if self.hold and streaming:
                self.held[request.request_id()] = sender
                continue
            if not streaming:
                exclude = bool(_input(request, "exclude_input_in_output", np.zeros(1)).reshape(-1)[0])
                length = int(_input(request, "input_lengths", np.zeros(1)).reshape(-1)[0])
                prompt = [] if exclude else _input(request, "input_ids", None).reshape(-1)[:length].tolist()
                sender.send(_response(prompt + self.tokens), flags=FINAL)
                continue
            start, i = 0, 0
            while start < len(self.tokens):
                size = CHUNK_SIZES[i % len(CHUNK_SIZES)]
                chunk = self.tokens[start : start + size]
                start, i = start + size, i + 1
                sender.send(_response(chunk), flags=FINAL if start >= len(self.tokens) else 0)
        return None
