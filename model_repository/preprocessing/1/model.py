"""Triton adapter over `mentallama_server.models.preprocessing`: text in, token ids out."""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import triton_python_backend_utils as pb_utils

from mentallama_server.models.preprocessing import HANDLED_INPUTS, Preprocessor, preprocess
from mentallama_server.models.request_errors import Limits, RequestError
from mentallama_server.models.text_tokenizer import load_tokenizer
from mentallama_server.models.triton_params import check_inputs, get_parameter, input_names, parse_model_config


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        check_inputs(config, HANDLED_INPUTS)
        self.input_names = input_names(config)
        tokenizer = load_tokenizer(get_parameter(config, "tokenizer_dir", str))
        limits = Limits(
            max_input_len=get_parameter(config, "max_input_len", int),
            max_output_len=get_parameter(config, "max_output_len", int),
        )
        self.preprocessor = Preprocessor(tokenizer, limits)

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            outputs = preprocess(self.preprocessor, {name: _input(request, name) for name in self.input_names})
        except RequestError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in outputs.items()])
