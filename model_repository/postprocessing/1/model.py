"""Triton adapter over `mentallama_server.models.postprocessing`: token ids in, text out."""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import triton_python_backend_utils as pb_utils

from mentallama_server.models.postprocessing import INPUTS, ChunkDecoder, decode_batch
from mentallama_server.models.request_errors import RequestError
from mentallama_server.models.text_tokenizer import load_tokenizer
from mentallama_server.models.triton_params import check_inputs, get_parameter, parse_model_config


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        check_inputs(config, INPUTS)
        self.decoder = ChunkDecoder(load_tokenizer(get_parameter(config, "tokenizer_dir", str)))

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            text = decode_batch(self.decoder, _input(request, "TOKENS_BATCH"), _input(request, "SEQUENCE_LENGTH"))
        except RequestError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
        return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", text)])
