"""The `postprocessing` model.py against the stubbed `triton_python_backend_utils` (no server): chunks decode as
the ensemble streams them, a bad request is refused naming the input without its neighbours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from mentallama_server.models.postprocessing import INPUTS
from tests.support import triton_stub
from tests.support.triton_stub import TritonError, make_request


@pytest.fixture(scope="module")
def repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return triton_stub.render_cpu_repository(tiny_checkpoint, tmp_path_factory.mktemp("postprocessing") / "models")


@pytest.fixture(scope="module")
def module(repository: Path) -> Iterator[ModuleType]:
    with triton_stub.install():
        yield triton_stub.load_model(repository / "postprocessing")


@pytest.fixture(scope="module")
def model(module: ModuleType, repository: Path) -> Any:
    return triton_stub.start_model(module, repository / "postprocessing")


def chunk(*rows: list[int], lengths: list[int] | None = None) -> dict[str, np.ndarray]:
    """Inputs of one request: `rows` as the batch of a [batch, 1 beam, len] TOKENS_BATCH."""
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), 1, width), dtype=np.int32)
    for i, row in enumerate(rows):
        tokens[i, 0, : len(row)] = row
    lengths = [len(r) for r in rows] if lengths is None else lengths
    return {"TOKENS_BATCH": tokens, "SEQUENCE_LENGTH": np.array([[n] for n in lengths], dtype=np.int32)}


def texts(response: Any) -> list[str]:
    return [t.decode("utf-8") for t in response.as_dict()["OUTPUT"].tolist()]


def test_loads_only_with_the_inputs_it_reads(module: ModuleType, repository: Path) -> None:
    config = triton_stub.model_config(repository / "postprocessing" / "config.pbtxt")
    assert [spec["name"] for spec in config["input"]] == list(INPUTS)

    def edit(config: dict[str, Any]) -> None:
        config["input"].append({"name": "BEAM_WIDTH", "data_type": "TYPE_INT32", "dims": ["1"]})

    with pytest.raises(ValueError, match="BEAM_WIDTH"):
        module.TritonPythonModel().initialize(triton_stub.model_args(repository / "postprocessing", edit))


def test_streamed_chunks_keep_their_spaces(model: Any, tokenizer: Any) -> None:
    ids = tokenizer.encode("Hello there my friend", add_special_tokens=False)
    assert len(ids) >= 3
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    responses = model.execute([make_request(chunk(ids[:1])), make_request(chunk(ids[1:]))])
    assert "".join(texts(r)[0] for r in responses) == " " + whole  # a chunk is what it adds to the sequence
    # A chunk that starts with BOS is a whole sequence (prompt included): no leading space.
    (response,) = model.execute([make_request(chunk([tokenizer.bos_token_id, *ids]))])
    assert texts(response) == [whole]


def test_sequences_are_cut_to_their_length_and_flat_over_the_batch(model: Any, tokenizer: Any) -> None:
    a = tokenizer.encode("one two three", add_special_tokens=False)
    b = tokenizer.encode("four", add_special_tokens=False)
    (response,) = model.execute([make_request(chunk(a, b, lengths=[1, len(b)]))])
    assert response.as_dict()["OUTPUT"].shape == (2,)
    assert texts(response) == [
        " " + tokenizer.decode(a[:1], skip_special_tokens=True),
        " " + tokenizer.decode(b, skip_special_tokens=True),
    ]


def test_bad_requests_are_refused_naming_the_input(model: Any) -> None:
    good = chunk([100, 200])
    too_long = chunk([100, 200], lengths=[3])
    flat = {"TOKENS_BATCH": np.array([[100, 200]], dtype=np.int32), "SEQUENCE_LENGTH": np.array([[2]], np.int32)}
    responses = model.execute(
        [
            make_request(too_long),
            make_request({"TOKENS_BATCH": good["TOKENS_BATCH"]}),
            make_request(good),
            make_request(flat),
        ]
    )
    assert len(responses) == 4
    assert not responses[2].has_error() and len(texts(responses[2])) == 1
    for i, field in ((0, "SEQUENCE_LENGTH"), (1, "SEQUENCE_LENGTH is required"), (3, "TOKENS_BATCH")):
        assert responses[i].has_error(), i
        assert responses[i].error().code() == TritonError.INVALID_ARG
        assert field in responses[i].error().message()
