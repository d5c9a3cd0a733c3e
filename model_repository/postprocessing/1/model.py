"""Triton adapter over `mentallama_server.models.postprocessing`: token ids in, text out."""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
from _glue import model_config, respond

from mentallama_server.models.postprocessing import INPUTS, ChunkDecoder, postprocess
from mentallama_server.models.text_tokenizer import load_tokenizer
from mentallama_server.models.triton_params import get_parameter


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args, INPUTS)
        self.decoder = ChunkDecoder(load_tokenizer(get_parameter(config, "tokenizer_dir", str)))

    def execute(self, requests):
        return respond(requests, INPUTS, lambda inputs: postprocess(self.decoder, inputs))
