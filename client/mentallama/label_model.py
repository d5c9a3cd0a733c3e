"""Label models: infer a task's label from MentaLLaMA's explanation, with numpy alone.

One linear classifier per task that has IMHI training answers (DR, dreaddit, SAD, Irf, MultiWD),
over TF-IDF word 1-2-grams of the explanation, trained by ``mentallama-build label-model`` (module
``mentallama_build.label_model``) on the IMHI *training* answers with the verdict sentence removed.
:func:`mentallama.parsing.parse_response` asks it when an answer does not state its label plainly.
Irf and MultiWD are yes/no per aspect in the task catalog; their model is one yes/no classifier per
task over the explanation (which names the aspect), shared by every aspect.

**Features** (:func:`featurize`; training and inference call the same code). The text is
normalized (curly quotes to ASCII, lower case), split into tokens ``[a-z0-9]+('[a-z]+)?``, and every
token and every pair of adjacent tokens (``"not show"``) that is in the task's vocabulary counts.
Weights are ``(1 + log(count)) * idf``, and the vector is scaled to unit L2 norm. The scores are
``x @ coef + intercept`` and the probabilities their softmax.

**File format** (``label_model.npz``, shipped as package data; read with ``allow_pickle=False``):
a NumPy ``.npz`` archive (zip of ``.npy`` arrays, no pickled objects), with

- ``format``: int64 scalar, :data:`FORMAT_VERSION`;
- ``tasks``: uint8, the UTF-8 bytes of the task names joined by ``"\\n"``;

and for each task ``T``, in the task catalog's spelling:

- ``T.labels``: uint8, UTF-8 of the class labels joined by ``"\\n"`` (canonical labels, table order);
- ``T.vocab``: uint8, UTF-8 of the vocabulary joined by ``"\\n"`` (feature ``i`` is line ``i``;
  a bigram is its two tokens joined by one space);
- ``T.idf``: float32 ``[V]``, inverse document frequency of each feature;
- ``T.coef``: float16 ``[V, C]``, the weights (C = number of labels; computed in float32);
- ``T.intercept``: float32 ``[C]``;
- ``T.meta``: uint8, UTF-8 JSON of the training facts (data sizes, held-out accuracy, seed,
  regularization, the combination rule's thresholds) for reports; never needed to predict.

Nothing else is read; unknown arrays are ignored, so later versions may add some.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "LabelModel", "TaskLabelModel", "default_model", "featurize", "tokenize"]

FORMAT_VERSION = 1
DATA_FILE = "label_model.npz"
"""Name of the shipped file inside the ``mentallama`` package."""

_NORMALIZE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` (see the module docstring)."""
    return _TOKEN_RE.findall(text.translate(_NORMALIZE).lower())


def ngrams(text: str) -> list[str]:
    """Every unigram and adjacent-token bigram of ``text``, in text order (with repeats)."""
    tokens = tokenize(text)
    return tokens + list(map(" ".join, zip(tokens, tokens[1:], strict=False)))


def featurize(
    text: str, vocab: dict[str, int], idf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse TF-IDF vector of ``text``: ``(feature indices, unit-norm float32 values)``."""
    counts = Counter(map(vocab.get, ngrams(text)))
    counts.pop(None, None)
    if not counts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    index = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    values = (1.0 + np.log(tf)) * idf[index]
    norm = float(np.sqrt(np.dot(values, values)))
    return index, (values / norm if norm > 0 else values).astype(np.float32)


def _joined(array: np.ndarray) -> list[str]:
    text = array.tobytes().decode("utf-8")
    return text.split("\n") if text else []


def _as_bytes(lines: list[str]) -> np.ndarray:
    if any("\n" in line for line in lines):
        raise ValueError("a vocabulary entry or label contains a newline")
    return np.frombuffer("\n".join(lines).encode("utf-8"), dtype=np.uint8)


@dataclass
class TaskLabelModel:
    """The classifier of one task (see the module docstring for the arrays)."""

    task: str
    labels: tuple[str, ...]
    vocab: list[str]
    idf: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idf = np.asarray(self.idf, dtype=np.float32)
        self.coef = np.asarray(self.coef, dtype=np.float16)
        self.intercept = np.asarray(self.intercept, dtype=np.float32)
        n, c = len(self.vocab), len(self.labels)
        if self.idf.shape != (n,) or self.coef.shape != (n, c) or self.intercept.shape != (c,):
            raise ValueError(
                f"{self.task}: inconsistent shapes: vocab {n}, labels {c}, idf {self.idf.shape}, "
                f"coef {self.coef.shape}, intercept {self.intercept.shape}"
            )
        self._index = {gram: i for i, gram in enumerate(self.vocab)}
        self._coef32 = self.coef.astype(np.float32)

    @property
    def override_thresholds(self) -> dict[str, float]:
        """The combination rule derived at training time (``meta["override"]``), per reading kind."""
        return self.meta.get("override", {})

    def probabilities(self, text: str) -> np.ndarray:
        """Probability of each of :attr:`labels` (float64, sums to 1) given the explanation ``text``."""
        return self.probabilities_and_count(text)[0]

    def probabilities_and_count(self, text: str) -> tuple[np.ndarray, int]:
        """:meth:`probabilities` and how many distinct known n-grams ``text`` has."""
        index, values = featurize(text, self._index, self.idf)
        scores = (values @ self._coef32[index] + self.intercept if len(index) else self.intercept).astype(np.float64)
        exp = np.exp(scores - scores.max())
        return exp / exp.sum(), len(index)

    def predict(self, text: str) -> tuple[str, float]:
        """``(label, probability)`` of the most probable label (ties: the catalog's first)."""
        probs = self.probabilities(text)
        best = int(np.argmax(probs))
        return self.labels[best], float(probs[best])

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays this task adds to the file."""
        t = self.task
        return {
            f"{t}.labels": _as_bytes(list(self.labels)),
            f"{t}.vocab": _as_bytes(self.vocab),
            f"{t}.idf": self.idf,
            f"{t}.coef": self.coef,
            f"{t}.intercept": self.intercept,
            f"{t}.meta": _as_bytes([json.dumps(self.meta, sort_keys=True)]),
        }


class LabelModel:
    """Label models of several tasks, read from and written to one ``.npz`` file."""

    def __init__(self, models: dict[str, TaskLabelModel]) -> None:
        self.models = dict(models)

    def get(self, task: str) -> TaskLabelModel | None:
        """The model of canonical task name ``task``; ``None`` when that task has none."""
        return self.models.get(task)

    @property
    def tasks(self) -> list[str]:
        return list(self.models)

    @classmethod
    def load(cls, source: str | Path | bytes) -> LabelModel:
        """Read a file written by :meth:`save` (``source``: a path or the file's bytes)."""
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with np.load(handle, allow_pickle=False) as data:
            version = int(data["format"].reshape(-1)[0])
            if version != FORMAT_VERSION:
                raise ValueError(f"label model format {version} is not supported (expected {FORMAT_VERSION})")
            models = {}
            for task in _joined(data["tasks"]):
                meta_lines = _joined(data[f"{task}.meta"])
                models[task] = TaskLabelModel(
                    task=task,
                    labels=tuple(_joined(data[f"{task}.labels"])),
                    vocab=_joined(data[f"{task}.vocab"]),
                    idf=data[f"{task}.idf"],
                    coef=data[f"{task}.coef"],
                    intercept=data[f"{task}.intercept"],
                    meta=json.loads(meta_lines[0]) if meta_lines else {},
                )
        return cls(models)

    def save(self, path: str | Path) -> Path:
        """Write the models as a compressed ``.npz`` (byte-identical for identical models)."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT_VERSION, dtype=np.int64),
            "tasks": _as_bytes(list(self.models)),
        }
        for model in self.models.values():
            arrays.update(model.arrays())
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_npz(path, arrays)
        return path


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so the same model gives the same bytes."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


@functools.lru_cache(maxsize=1)
def default_model() -> LabelModel | None:
    """The label models shipped with the SDK (loaded once); ``None`` if the file is missing."""
    try:
        data = resources.files("mentallama").joinpath(DATA_FILE).read_bytes()
    except (FileNotFoundError, OSError):
        return None
    return LabelModel.load(data)
