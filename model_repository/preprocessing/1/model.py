"""Triton adapter over `mentallama_server.models.preprocessing`: text in, token ids out."""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
from _glue import model_config, respond

from mentallama_server.models.preprocessing import HANDLED_INPUTS, Preprocessor, preprocess
from mentallama_server.models.text_tokenizer import load_tokenizer
from mentallama_server.models.triton_params import get_parameter, input_names, request_limits


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args, HANDLED_INPUTS)
        self.input_names = input_names(config)
        tokenizer = load_tokenizer(get_parameter(config, "tokenizer_dir", str))
        self.preprocessor = Preprocessor(tokenizer, request_limits(config))

    def execute(self, requests):
        return respond(requests, self.input_names, lambda inputs: preprocess(self.preprocessor, inputs))
