"""Triton adapter over `mentallama_server.postprocess`: token ids in, text out."""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

from mentallama_server.postprocess import ChunkDecoder
from mentallama_server.text_tokenizer import load_tokenizer
from mentallama_server.triton_params import get_parameter, parse_model_config


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        self.decoder = ChunkDecoder(load_tokenizer(get_parameter(config, "tokenizer_dir", str)))

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [batch, beam, len]
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [batch, beam]
            # Flat over (batch, beam), as TensorRT-LLM's postprocessing returns it: [1] for one sequence.
            texts = [
                self.decoder.decode(tokens[b, beam, : lengths[b, beam]]).encode("utf-8")
                for b in range(tokens.shape[0])
                for beam in range(tokens.shape[1])
            ]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object))]))
        return responses
