"""The `preprocessing` model's request logic, without Triton: a request's tensors in, the engine's tensors out.

One request holds one or more prompts (`[N, 1]` tensors); each is validated and tokenised by `Preprocessor`,
and the rows are stacked back into `[N, ...]` outputs. A `RequestError` (naming the field) refuses the
whole request; the model turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mentallama_interface import UNSERVED_INPUTS
from mentallama_server.models.batching import refuse_unserved, split_batch, stack_padded
from mentallama_server.models.preprocess import WORD_LIST_PAD, PreparedRequest, Preprocessor, scalar, to_word_list

Inputs = Mapping[str, "np.ndarray | None"]

# The inputs this step serves; the rest of config.pbtxt's inputs are the refused UNSERVED_INPUTS.
SERVED_INPUTS = ("QUERY", "REQUEST_OUTPUT_LEN", "STOP_WORDS_DICT", "BAD_WORDS_DICT", "END_ID", "PAD_ID")
HANDLED_INPUTS = (*SERVED_INPUTS, *UNSERVED_INPUTS)


def _words(array: np.ndarray | None) -> list[object] | None:
    return None if array is None else array.reshape(-1).tolist()


def _prepare(preprocessor: Preprocessor, inputs: Inputs) -> PreparedRequest:
    return preprocessor.prepare(
        scalar(inputs["QUERY"], "text_input"),
        scalar(inputs["REQUEST_OUTPUT_LEN"], "max_tokens"),
        stop_words=_words(inputs["STOP_WORDS_DICT"]),
        bad_words=_words(inputs["BAD_WORDS_DICT"]),
        end_id=scalar(inputs["END_ID"], "end_id"),
        pad_id=scalar(inputs["PAD_ID"], "pad_id"),
    )


def preprocess(preprocessor: Preprocessor, inputs: Inputs) -> dict[str, np.ndarray]:
    """The output tensors of one request; `RequestError` names the first bad field of any of its prompts."""
    refuse_unserved(inputs)
    served = {name: inputs.get(name) for name in SERVED_INPUTS}
    items = [_prepare(preprocessor, item) for item in split_batch(served)]  # one per prompt of [N, 1]
    return {
        # rows padded to the longest prompt; REQUEST_INPUT_LEN tells the engine each one's length
        "INPUT_ID": stack_padded([np.array(p.input_ids, dtype=np.int32) for p in items], 0),
        "REQUEST_INPUT_LEN": np.array([[len(p.input_ids)] for p in items], dtype=np.int32),
        "REQUEST_OUTPUT_LEN": np.array([[p.max_tokens] for p in items], dtype=np.int32),
        "STOP_WORDS_IDS": stack_padded([to_word_list(p.stop_words) for p in items], WORD_LIST_PAD),
        "BAD_WORDS_IDS": stack_padded([to_word_list(p.bad_words) for p in items], WORD_LIST_PAD),
        "OUT_END_ID": np.array([[p.end_id] for p in items], dtype=np.int32),
        "OUT_PAD_ID": np.array([[p.pad_id] for p in items], dtype=np.int32),
    }
