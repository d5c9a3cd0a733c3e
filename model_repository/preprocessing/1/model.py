"""Triton adapter over `mentallama_server.preprocess`: text in, token ids out."""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

from mentallama_server.preprocess import Limits, Preprocessor, RequestError, scalar, to_word_list
from mentallama_server.text_tokenizer import load_tokenizer
from mentallama_server.triton_params import get_parameter, parse_model_config


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
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
            words = {}
            for name in ("STOP_WORDS_DICT", "BAD_WORDS_DICT"):
                array = _input(request, name)
                words[name] = None if array is None else array.reshape(-1).tolist()
            prepared = self.preprocessor.prepare(
                scalar(_input(request, "QUERY"), "text_input"),
                scalar(_input(request, "REQUEST_OUTPUT_LEN"), "max_tokens"),
                stop_words=words["STOP_WORDS_DICT"],
                bad_words=words["BAD_WORDS_DICT"],
                end_id=scalar(_input(request, "END_ID"), "end_id"),
                pad_id=scalar(_input(request, "PAD_ID"), "pad_id"),
            )
        except RequestError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
        ids = np.array([prepared.input_ids], dtype=np.int32)
        outputs = {
            "INPUT_ID": ids,
            "REQUEST_INPUT_LEN": np.array([[ids.shape[1]]], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.array([[prepared.max_tokens]], dtype=np.int32),
            "STOP_WORDS_IDS": to_word_list(prepared.stop_words)[None],
            "BAD_WORDS_IDS": to_word_list(prepared.bad_words)[None],
            "OUT_END_ID": np.array([[prepared.end_id]], dtype=np.int32),
            "OUT_PAD_ID": np.array([[prepared.pad_id]], dtype=np.int32),
        }
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in outputs.items()])
