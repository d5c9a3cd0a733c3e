"""The `triton_python_backend_utils` test double keeps to the real module where that module is Python (the bundled
Triton's), and enforces the rules of the real stub that model bugs break."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.support import triton_stub
from tests.support.triton_stub import (
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    InferenceResponse,
    MetricFamily,
    ResponseSender,
    Tensor,
    TritonModelException,
    make_request,
)


@pytest.fixture(scope="module")
def real_utils() -> ModuleType:
    """The Python half of the real module, shipped with the Triton server in the nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        pytest.skip("nvidia-pytriton is not installed (server extra)")
    path = Path(spec.origin).parent / "tritonserver" / "backends" / "python" / "triton_python_backend_utils.py"
    real_spec = importlib.util.spec_from_file_location("real_triton_python_backend_utils", path)
    assert real_spec is not None and real_spec.loader is not None
    module = importlib.util.module_from_spec(real_spec)
    real_spec.loader.exec_module(module)
    return module


def test_constants_match_the_real_module(real_utils: ModuleType) -> None:
    names = [name for name in vars(real_utils) if name.startswith("TRITONSERVER_")]
    assert names
    for name in names:
        assert getattr(triton_stub, name) == getattr(real_utils, name), name


def test_real_tensor_lookups_work_on_the_stubs_objects(real_utils: ModuleType) -> None:
    request = make_request({"a": np.array([[1]]), "b": np.array([[2]])})
    response = InferenceResponse([Tensor("x", np.array([3]))])
    for utils in (real_utils, triton_stub):
        assert utils.get_input_tensor_by_name(request, "b").as_numpy().tolist() == [[2]]
        assert utils.get_input_tensor_by_name(request, "c") is None
        assert utils.get_output_tensor_by_name(response, "x").as_numpy().tolist() == [3]
        assert utils.get_output_tensor_by_name(response, "y") is None


def test_sender_refuses_what_the_real_stub_refuses() -> None:
    sender = ResponseSender()
    with pytest.raises(TritonModelException, match="must be provided"):
        sender.send(flags=0)
    sender.send(InferenceResponse([]), flags=0)
    sender.send(flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(TritonModelException, match="closed"):
        sender.send(InferenceResponse([]), flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert [f for _, f in sender.sent] == [0, TRITONSERVER_RESPONSE_COMPLETE_FINAL]


def test_responses_hold_tensors_only() -> None:
    with pytest.raises(TypeError):
        InferenceResponse([np.array([1])])  # type: ignore[list-item]


def test_metrics_keep_their_kind() -> None:
    triton_stub.reset()
    counter = MetricFamily("c", "a counter", MetricFamily.COUNTER).Metric(labels={"k": "v"})
    counter.increment(2)
    with pytest.raises(TritonModelException):
        counter.set(1)
    with pytest.raises(TritonModelException):
        MetricFamily("c", "another description", MetricFamily.GAUGE)
    assert triton_stub.metric_value("c", {"k": "v"}) == 2


def test_load_model_runs_the_models_bootstrap_and_leaves_the_process_as_it_was(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "_bootstrap.py").write_text("import sys\nsys.path.insert(0, '/from/bootstrap')\nLOADED = True\n")
    (version / "_glue.py").write_text("import _bootstrap\nGLUED = True\n")
    (version / "model.py").write_text(
        "import _bootstrap\nimport triton_python_backend_utils as pb_utils\nfrom _glue import GLUED\n"
        "BOOTSTRAPPED = _bootstrap.LOADED\n"
    )
    with pytest.raises(RuntimeError, match="install"):
        triton_stub.load_model(tmp_path / "m")
    before, utils_before = list(sys.path), sys.modules.get("triton_python_backend_utils")
    with triton_stub.install() as pb_utils:
        module = triton_stub.load_model(tmp_path / "m")
        assert module.pb_utils is pb_utils and module.BOOTSTRAPPED and module.GLUED
    assert sys.path == before and "_bootstrap" not in sys.modules and "_glue" not in sys.modules
    assert sys.modules.get("triton_python_backend_utils") is utils_before
