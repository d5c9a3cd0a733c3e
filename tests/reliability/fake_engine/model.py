"""A `tensorrt_llm` stand-in for the front-model tests: answers with a response pattern chosen by the seed.

Replaces the engine's model.py in a rendered repository (same config, same tensors), so the `mentallama`
front model and the `ensemble` meet every error and final-flag pattern an engine step could send, with
no engine behind (tests/reliability/test_rel_engine_failure.py). Seeds (`PATTERNS`):

- 1: three chunks, then an error with the final flag (an engine that fails after accepting a request)
- 2: an error with the final flag as the first response
- 3: three chunks, then silence (an engine that never finishes)
- 4: two chunks, then a bare final flag
- 5: three chunks, then the error in the `error_message` output of a final response when the request's
  parameters say `errors_in_band` (the front model's), else as pattern 1 (the ensemble's)
- anything else: three chunks, the last one final
A request that does not stream gets one response: the error, or every token at once with the final flag.
"""

import json

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
TOKEN = 450  # one whole word in the LLaMA tokenizer (" of" in the tiny one): decodes alone
ERROR = "fake engine: generation failed after accepting the request (every token is banned)"
PATTERNS = {1: "error after chunks", 2: "error first", 3: "silence after chunks", 4: "bare final", 5: "in band"}


def _chunk(count: int):
    ids = np.full((1, 1, count), TOKEN, dtype=np.int32)
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor("output_ids", ids), pb_utils.Tensor("sequence_length", np.array([[count]], np.int32))]
    )


def _error():
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(ERROR, pb_utils.TritonError.INTERNAL))


def _input(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        self.silent = []  # senders of pattern 3, kept so they are never finished

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if bool(_input(request, "stop", False)):
                sender.send(flags=FINAL)
                continue
            pattern = int(_input(request, "seed", 0))
            streaming = bool(_input(request, "streaming", False))
            if pattern == 2 or (pattern in (1, 5) and not streaming):
                sender.send(_error(), flags=FINAL)
            elif not streaming:
                sender.send(_chunk(3), flags=FINAL)
            elif pattern == 1:
                for _ in range(3):
                    sender.send(_chunk(1))
                sender.send(_error(), flags=FINAL)
            elif pattern == 3:
                for _ in range(3):
                    sender.send(_chunk(1))
                self.silent.append(sender)
            elif pattern == 5:
                for _ in range(3):
                    sender.send(_chunk(1))
                if json.loads(request.parameters() or "{}").get("errors_in_band"):
                    failure = pb_utils.Tensor("error_message", np.array([[ERROR.encode()]], dtype=object))
                    sender.send(pb_utils.InferenceResponse([failure]), flags=FINAL)
                else:
                    sender.send(_error(), flags=FINAL)
            elif pattern == 4:
                for _ in range(2):
                    sender.send(_chunk(1))
                sender.send(flags=FINAL)
            else:
                sender.send(_chunk(1))
                sender.send(_chunk(1))
                sender.send(_chunk(1), flags=FINAL)
        return None
