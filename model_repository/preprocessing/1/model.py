"""Triton adapter over `mentallama_server.preprocess`: text in, token ids out."""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

from mentallama_server.batching import refuse_unserved, split_batch, stack_padded
from mentallama_server.interface import UNSERVED_INPUTS
from mentallama_server.preprocess import WORD_LIST_PAD, Limits, Preprocessor, RequestError, scalar, to_word_list
from mentallama_server.text_tokenizer import load_tokenizer
from mentallama_server.triton_params import get_parameter, parse_model_config

INPUTS = ("QUERY", "REQUEST_OUTPUT_LEN", "STOP_WORDS_DICT", "BAD_WORDS_DICT", "END_ID", "PAD_ID")


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

    def _prepare(self, inputs):
        words = {}
        for name in ("STOP_WORDS_DICT", "BAD_WORDS_DICT"):
            array = inputs[name]
            words[name] = None if array is None else array.reshape(-1).tolist()
        return self.preprocessor.prepare(
            scalar(inputs["QUERY"], "text_input"),
            scalar(inputs["REQUEST_OUTPUT_LEN"], "max_tokens"),
            stop_words=words["STOP_WORDS_DICT"],
            bad_words=words["BAD_WORDS_DICT"],
            end_id=scalar(inputs["END_ID"], "end_id"),
            pad_id=scalar(inputs["PAD_ID"], "pad_id"),
        )

    def _one(self, request):
        try:
            refuse_unserved({name: _input(request, name) for name in UNSERVED_INPUTS})
            inputs = {name: _input(request, name) for name in INPUTS}
            items = [self._prepare(item) for item in split_batch(inputs)]  # one per prompt of [N, 1]
        except RequestError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
        outputs = {
            # rows padded to the longest prompt; REQUEST_INPUT_LEN tells the engine each one's length
            "INPUT_ID": stack_padded([np.array(p.input_ids, dtype=np.int32) for p in items], 0),
            "REQUEST_INPUT_LEN": np.array([[len(p.input_ids)] for p in items], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.array([[p.max_tokens] for p in items], dtype=np.int32),
            "STOP_WORDS_IDS": stack_padded([to_word_list(p.stop_words) for p in items], WORD_LIST_PAD),
            "BAD_WORDS_IDS": stack_padded([to_word_list(p.bad_words) for p in items], WORD_LIST_PAD),
            "OUT_END_ID": np.array([[p.end_id] for p in items], dtype=np.int32),
            "OUT_PAD_ID": np.array([[p.pad_id] for p in items], dtype=np.int32),
        }
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in outputs.items()])
