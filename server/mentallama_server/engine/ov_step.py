"""`ContinuousBatchingPipeline.step()` with the GIL released.

OpenVINO GenAI's Python binding of `step()` holds the GIL for the whole step (a hundred milliseconds and more at
32 requests on a CPU), so nothing else in the process runs meanwhile. In the served engine that is Triton's
`execute()`, which hands new requests to the engine, and the dispatcher, which sends responses: a request waited
one to two steps in `execute()` before the engine saw it, and its place in the batch stayed empty.

`gil_free_step` calls the same C++ `step()` without the GIL. It gets the C++ object through pybind11's
cross-module conduit (`_pybind11_conduit_v1_`, pybind11's interface for exactly this) and calls `step()` through a
few lines of C++ compiled at start with the system compiler: they turn a C++ exception into an error message,
which ctypes alone could not catch (the process would abort). Where that cannot be built (no C++ compiler, a
library without the exported symbols) it raises `Unavailable` saying why, and the caller keeps the binding's own
`step()`.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["StepError", "Unavailable", "gil_free_step"]

_ERROR_BYTES = 2048
_SHIM = r"""
#include <cstdio>
#include <exception>
namespace ov { namespace genai {
// Only the member called here; its mangled name and calling convention are those of the library's class.
class ContinuousBatchingPipeline { public: void step(); };
} }
extern "C" int mentallama_ov_step(void* pipe, char* error, unsigned long size) noexcept {
    try {
        static_cast<ov::genai::ContinuousBatchingPipeline*>(pipe)->step();
        return 0;
    } catch (const std::exception& e) {
        std::snprintf(error, size, "%s", e.what());
    } catch (...) {
        std::snprintf(error, size, "unknown C++ exception");
    }
    return 1;
}
"""


class StepError(RuntimeError):
    """The C++ `step()` raised; the message is its `what()`."""


class Unavailable(RuntimeError):
    """The GIL-free step cannot be built here; the message says why."""


def gil_free_step(pipe: Any) -> Callable[[], None]:
    """A callable running `pipe.step()` with the GIL released, raising StepError on a C++ exception; Unavailable
    where this library or machine does not allow it."""
    try:
        import openvino_genai as og

        module = Path(og.py_openvino_genai.__file__)
        library = next(module.parent.glob("libopenvino_genai.so*"))
        this = _cpp_pointer(pipe, ctypes.CDLL(str(module)))
        return _GilFreeStep(pipe, this, _build_shim(library))
    except Exception as exc:  # any failure keeps the binding's step: slower under load, never wrong
        reason = str(exc) or type(exc).__name__
    # Raised outside the handler, with the pipeline gone from this frame: the error (which a caller may log or keep)
    # holds no reference to it, and a pipeline must be freed on the thread that made it (ov_engine).
    del pipe
    raise Unavailable(reason)


class _GilFreeStep:
    """`step()` of one pipeline through the shim."""

    def __init__(self, pipe: Any, this: int, function: Any) -> None:
        self._pipe = pipe  # kept alive while this object is: `this` points into it
        self._this = this
        self._function = function
        self._error = ctypes.create_string_buffer(_ERROR_BYTES)

    def __call__(self) -> None:
        # ctypes releases the GIL for the call (a `CDLL` function).
        if self._function(self._this, self._error, _ERROR_BYTES) != 0:
            raise StepError(self._error.value.decode("utf-8", "replace"))


# Python C-API functions as private prototypes (never by setting `ctypes.pythonapi`'s shared ones). A borrowed
# reference is returned as an address and then turned into an object, which takes a reference of its own.
_CAPSULE_NEW = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
    ("PyCapsule_New", ctypes.pythonapi)
)
_CAPSULE_NAME = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
_CAPSULE_POINTER = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)
_INTERPRETER = ctypes.PYFUNCTYPE(ctypes.c_void_p)(("PyInterpreterState_Get", ctypes.pythonapi))
_INTERPRETER_DICT = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(
    ("PyInterpreterState_GetDict", ctypes.pythonapi)
)
# The capsule's name is kept as a pointer, not copied: this constant outlives every capsule made with it.
_TYPE_INFO_NAME = b"St9type_info"  # GCC's name of std::type_info, which pybind11's conduit checks


def _cpp_pointer(pipe: Any, module: ctypes.CDLL) -> int:
    """The address of the C++ `ContinuousBatchingPipeline` that `pipe` wraps."""
    type_info = ctypes.c_void_p.in_dll(module, "_ZTIN2ov5genai26ContinuousBatchingPipelineE")
    wanted = _CAPSULE_NEW(ctypes.addressof(type_info), _TYPE_INFO_NAME, None)
    for abi in _pybind11_abi_ids():
        found = pipe._pybind11_conduit_v1_(abi, wanted, b"raw_pointer_ephemeral")
        if found is not None:
            address = _CAPSULE_POINTER(found, _CAPSULE_NAME(found))
            if address:
                return int(address)
    raise RuntimeError("pybind11's conduit did not return the pipeline's C++ object")


def _pybind11_abi_ids() -> list[bytes]:
    """The pybind11 platform ABI ids of the modules loaded in this interpreter (the conduit checks its own)."""
    state = ctypes.cast(_INTERPRETER_DICT(_INTERPRETER()), ctypes.py_object).value  # borrowed: cast takes a ref
    prefix = "__pybind11_internals_v"
    ids = []
    for key in list(state):
        if isinstance(key, str) and key.startswith(prefix) and key.endswith("__"):
            abi = key[len(prefix) :].partition("_")[2][:-2]  # "__pybind11_internals_v11_<abi>__"
            ids.append(abi.encode())
    return ids


@functools.cache  # once per process: every engine of the process shares it
def _build_shim(library: Path) -> Any:
    """The shim's `mentallama_ov_step`, compiled against `library` and typed."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (c++ or g++) on PATH")
    with tempfile.TemporaryDirectory(prefix="mentallama-ov-step-") as folder:
        source, shared = Path(folder, "step.cpp"), Path(folder, "step.so")
        source.write_text(_SHIM, encoding="utf-8")
        command = [compiler, "-O2", "-shared", "-fPIC", str(source), "-o", str(shared), str(library),
                   f"-Wl,-rpath,{library.parent}"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(compiler).name} failed: {done.stderr.strip()[-300:]}")
        function = ctypes.CDLL(str(shared)).mentallama_ov_step  # mapped now; the file may go
    function.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong]
    function.restype = ctypes.c_int
    return function
