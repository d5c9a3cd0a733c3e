"""The `preprocessing` model.py against the stubbed `triton_python_backend_utils` (no server): initialised from
its rendered config as Triton would, one response per request, a bad request refused without its neighbours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from mentallama_interface import UNSERVED_INPUTS
from mentallama_server.models.preprocessing import HANDLED_INPUTS
from mentallama_server.models.word_lists import WORD_LIST_PAD
from tests.support import triton_stub
from tests.support.triton_stub import TritonError, make_request

MAX_INPUT_LEN = 32
MAX_OUTPUT_LEN = 16


@pytest.fixture(scope="module")
def repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preprocessing") / "models"
    return triton_stub.render_cpu_repository(
        tiny_checkpoint, out, max_input_len=MAX_INPUT_LEN, max_output_len=MAX_OUTPUT_LEN
    )


@pytest.fixture(scope="module")
def module(repository: Path) -> Iterator[ModuleType]:
    with triton_stub.install():
        yield triton_stub.load_model(repository / "preprocessing")


@pytest.fixture(scope="module")
def model(module: ModuleType, repository: Path) -> Any:
    return triton_stub.start_model(module, repository / "preprocessing")


def query(*texts: str | bytes, max_tokens: int = 4, **extra: Any) -> dict[str, np.ndarray]:
    """Inputs of one request of len(texts) prompts, `[N, 1]` as the ensemble sends them."""
    n = len(texts)
    inputs = {
        "QUERY": np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=object),
        "REQUEST_OUTPUT_LEN": np.full((n, 1), max_tokens, dtype=np.int32),
    }
    inputs.update(extra)
    return inputs


def test_reads_the_inputs_its_config_declares(model: Any, repository: Path) -> None:
    config = triton_stub.model_config(repository / "preprocessing" / "config.pbtxt")
    declared = [spec["name"] for spec in config["input"]]
    assert list(model.input_names) == declared
    assert set(declared) == set(HANDLED_INPUTS) and set(UNSERVED_INPUTS) <= set(declared)


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_refuses_to_load_when_config_and_code_differ(module: ModuleType, repository: Path, change: str) -> None:
    def edit(config: dict[str, Any]) -> None:
        if change == "extra":
            config["input"].append({"name": "NEW_KNOB", "data_type": "TYPE_INT32", "dims": ["1"]})
        else:
            config["input"] = [i for i in config["input"] if i["name"] != "END_ID"]

    with pytest.raises(ValueError, match="NEW_KNOB" if change == "extra" else "END_ID"):
        module.TritonPythonModel().initialize(triton_stub.model_args(repository / "preprocessing", edit))


def test_missing_parameter_fails_the_load(module: ModuleType, repository: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        del config["parameters"]["max_input_len"]

    with pytest.raises(ValueError, match="max_input_len"):
        module.TritonPythonModel().initialize(triton_stub.model_args(repository / "preprocessing", edit))


def test_one_response_per_request_and_bad_ones_do_not_spoil_the_batch(model: Any, tokenizer: Any) -> None:
    requests = [
        make_request(query("Hello world")),
        make_request(query("Hello", max_tokens=0)),
        make_request(query("a b c", "Hello there friend")),
        make_request(query(b"\xff broken")),
        make_request(query("Hello", return_context_logits=np.array([[True]]))),
        make_request(query("Hello", max_tokens=MAX_OUTPUT_LEN)),
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)

    errors = {i: r.error() for i, r in enumerate(responses) if r.has_error()}
    assert sorted(errors) == [1, 3, 4]
    assert all(e.code() == TritonError.INVALID_ARG for e in errors.values())
    assert "max_tokens" in errors[1].message()
    assert "UTF-8" in errors[3].message()
    assert "return_context_logits" in errors[4].message()

    first = responses[0].as_dict()
    ids = tokenizer.encode("Hello world")
    assert first["INPUT_ID"].tolist() == [ids]
    assert first["REQUEST_INPUT_LEN"].tolist() == [[len(ids)]]
    assert first["REQUEST_OUTPUT_LEN"].tolist() == [[4]]
    assert first["OUT_END_ID"].tolist() == [[tokenizer.eos_token_id]]
    assert responses[5].as_dict()["REQUEST_OUTPUT_LEN"].tolist() == [[MAX_OUTPUT_LEN]]


def test_prompts_of_one_request_are_padded_to_the_longest(model: Any, tokenizer: Any) -> None:
    short, long = tokenizer.encode("a b c"), tokenizer.encode("Hello there friend, how are you")
    assert len(short) < len(long)
    (response,) = model.execute([make_request(query("a b c", "Hello there friend, how are you"))])
    out = response.as_dict()
    assert out["INPUT_ID"].shape == (2, len(long)) and out["INPUT_ID"].dtype == np.int32
    assert out["INPUT_ID"][0].tolist() == short + [0] * (len(long) - len(short))
    assert out["INPUT_ID"][1].tolist() == long
    assert out["REQUEST_INPUT_LEN"].tolist() == [[len(short)], [len(long)]]


def test_rows_that_disagree_refuse_the_request(model: Any) -> None:
    inputs = query("a", "b")
    inputs["REQUEST_OUTPUT_LEN"] = np.array([[4]], dtype=np.int32)
    (response,) = model.execute([make_request(inputs)])
    assert response.has_error() and "REQUEST_OUTPUT_LEN" in response.error().message()


def test_stop_words_become_a_word_list(model: Any, tokenizer: Any) -> None:
    stop = np.array([[b"Hello", b"world"]], dtype=object)
    (response,) = model.execute([make_request(query("Say hi", STOP_WORDS_DICT=stop, END_ID=np.array([[7]])))])
    out = response.as_dict()
    words = [tokenizer.encode(w, add_special_tokens=False) for w in ("Hello", "world")]
    flat = words[0] + words[1]
    assert out["STOP_WORDS_IDS"].shape == (1, 2, len(flat))
    assert out["STOP_WORDS_IDS"][0, 0].tolist() == flat
    assert out["STOP_WORDS_IDS"][0, 1].tolist()[:2] == [len(words[0]), len(flat)]
    assert out["BAD_WORDS_IDS"].tolist() == [[[WORD_LIST_PAD], [WORD_LIST_PAD]]]
    assert out["OUT_END_ID"].tolist() == [[7]]


def test_too_long_prompt_names_the_limit(model: Any) -> None:
    (response,) = model.execute([make_request(query("word " * (MAX_INPUT_LEN * 2)))])
    assert response.has_error()
    assert "text_input" in response.error().message() and str(MAX_INPUT_LEN) in response.error().message()
