"""Put the project's packages on sys.path before anything else is imported.

The Triton Python-backend stub runs its interpreter isolated (PYTHONPATH is ignored) and
`triton_python_backend_utils` imports numpy at import time, so paths must be in place before
`model.py` imports it. The launcher renders them into the model's `python_path` config parameter;
this file (copied into every Python model's version folder at render time) reads it from there.
"""

import faulthandler
import os
import re
import sys

# A crash in native code (torch, CUDA, the stub) then leaves a Python trace in the server log.
faulthandler.enable()

_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "config.pbtxt")
_PATTERN = re.compile(r'key:\s*"python_path"\s*value:\s*\{\s*string_value:\s*"([^"]*)"')

with open(_CONFIG, encoding="utf-8") as _f:
    _match = _PATTERN.search(_f.read())
if _match is None:
    raise RuntimeError(f"{_CONFIG} has no python_path parameter: render the repository with mentallama-serve")
for _path in reversed(_match.group(1).split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)
