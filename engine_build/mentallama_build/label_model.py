"""``mentallama-build label-model``: train the SDK's label models on the IMHI training answers.

For each task with a folder in ``DATA/`` (``train_instruction/``: DR, SAD, dreaddit, Irf, MultiWD):

1. **Data.** The reference answers (column ``gpt-3.5-turbo``) of ``train.csv`` train and those of
   ``val.csv`` are held out. Irf and MultiWD ship only ``val.csv``: its posts are split by a hash
   of the post text (every aspect of one post on the same side), 1 in 4 posts held out.
2. **Labels and text.** The label is what the rules of :func:`mentallama.parsing.parse_response`
   read from the answer; the text is the explanation with the verdict sentence removed (its
   ``reasoning``). Answers whose label the rules cannot read are dropped.
3. **Features.** :func:`mentallama.label_model.featurize`, the function the SDK applies: TF-IDF of
   word 1-2-grams, vocabulary = n-grams in at least ``min_df`` training explanations, the
   ``max_features`` most frequent kept (ties in alphabetical order).
4. **Model.** Multinomial logistic regression (softmax over the task's labels; binary tasks have
   two classes), L2-regularized, fitted by full-batch L-BFGS in numpy from zero weights: no
   randomness, so the same data gives the same file byte for byte. Weights are stored in float16
   and every figure below is computed with the stored weights, through the SDK's code.
5. **Held-out evaluation** (printed): accuracy of the model on the held-out explanations, and of
   ``parse_response`` (rules + model) on the held-out explanations and on the full answers.
6. **Combination rule** (:func:`derive_override`): per kind of rule reading, the probability from
   which the model's label replaces the rules', chosen on 5-fold out-of-fold predictions over the
   training answers and stored in the file.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mentallama.evaluation import imhi_part
from mentallama.label_model import LabelModel, TaskLabelModel, featurize, ngrams
from mentallama.parsing import MIN_FEATURES, OVERRIDE_THRESHOLDS, parse_response, read_rules
from mentallama.prompts import aspect_of, split_query
from mentallama.tasks import get_task

__all__ = ["Example", "TrainConfig", "fit_task", "load_task_examples", "train_label_models"]

REFERENCE_COLUMN = "gpt-3.5-turbo"
TASK_ORDER = ("DR", "dreaddit", "SAD", "Irf", "MultiWD")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults made the shipped file."""

    min_df: int = 2
    max_features: int = 20000
    l2: float = 3e-5
    """L2 penalty on the weights, per example (the loss is the mean cross-entropy)."""
    max_iter: int = 300
    holdout_every: int = 4
    """Tasks without ``train.csv``: hold out the posts whose hash is 0 modulo this."""
    limit: int | None = None
    """At most this many rows per CSV (tests train on a slice)."""
    folds: int = 5
    """Folds of the out-of-fold predictions the combination rule is derived from."""


@dataclass(frozen=True)
class Example:
    """One reference answer: its label (read by the rules) and explanation."""

    task: str
    label: str
    explanation: str
    answer: str
    aspect: str | None = None


def _rows(path: Path, limit: int | None) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [(row["query"] or "", row[REFERENCE_COLUMN] or "") for row in csv.DictReader(f)]
    return rows[:limit] if limit is not None else rows


def _post_key(query: str) -> str:
    try:
        post, _ = split_query(query)
    except ValueError:
        post = query
    return post


def _aspect(task: str, query: str) -> str | None:
    try:
        return aspect_of(task, split_query(query)[1])
    except ValueError:
        return None


def _held_out(post: str, every: int) -> bool:
    return int.from_bytes(hashlib.sha1(post.encode("utf-8")).digest()[:8], "big") % every == 0


def _examples(task: str, rows: Iterable[tuple[str, str]]) -> list[Example]:
    out = []
    for query, answer in rows:
        parsed = parse_response(task, answer, label_model=None)
        if parsed.label is not None and parsed.reasoning:
            out.append(Example(task, parsed.label, parsed.reasoning, answer, _aspect(task, query)))
    return out


def load_task_examples(folder: Path, task: str, config: TrainConfig) -> tuple[list[Example], list[Example], str]:
    """``(train, held_out, how the split was made)`` of ``task`` in ``folder`` (a clone of the authors' repository,
    whose ``train_data/instruction_data/`` is read, an IMHI root with ``train_instruction/``, or that folder)."""
    folder = imhi_part(folder, "train") or folder
    task_dir = folder / task
    val = _rows(task_dir / "val.csv", config.limit)
    if (task_dir / "train.csv").is_file():
        return _examples(task, _rows(task_dir / "train.csv", config.limit)), _examples(task, val), "train.csv / val.csv"
    train_rows = [r for r in val if not _held_out(_post_key(r[0]), config.holdout_every)]
    held_rows = [r for r in val if _held_out(_post_key(r[0]), config.holdout_every)]
    how = f"val.csv split by post hash, 1 in {config.holdout_every} posts held out"
    return _examples(task, train_rows), _examples(task, held_rows), how


# ---------------------------------------------------------------- features


def build_vocabulary(texts: Sequence[str], min_df: int, max_features: int) -> tuple[list[str], np.ndarray]:
    """Vocabulary (most frequent first, ties alphabetical) and its idf, from document frequencies."""
    df: Counter[str] = Counter()
    for text in texts:
        df.update(set(ngrams(text)))
    kept = sorted((g for g, n in df.items() if n >= min_df), key=lambda g: (-df[g], g))[:max_features]
    n_docs = len(texts)
    idf = np.array([math.log((1 + n_docs) / (1 + df[g])) + 1.0 for g in kept], dtype=np.float32)
    return kept, idf


@dataclass
class Csr:
    """A sparse row matrix in plain numpy (no scipy)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_rows), np.diff(self.indptr))

    def matmul(self, w: np.ndarray) -> np.ndarray:
        """``X @ w`` for dense ``w`` [n_cols, k]."""
        out = np.zeros((self.n_rows, w.shape[1]), dtype=np.float64)
        prod = self.data[:, None] * w[self.indices]
        nonempty = np.diff(self.indptr) > 0
        if prod.size:
            sums = np.add.reduceat(prod, self.indptr[:-1][nonempty], axis=0)
            out[nonempty] = sums
        return out

    def rmatmul(self, g: np.ndarray) -> np.ndarray:
        """``X.T @ g`` for dense ``g`` [n_rows, k]."""
        rows = self._row_ids
        return np.stack(
            [np.bincount(self.indices, weights=self.data * g[rows, j], minlength=self.n_cols)
             for j in range(g.shape[1])],
            axis=1,
        )

    def __post_init__(self) -> None:
        self._row_ids = self.rows()


def vectorize(texts: Sequence[str], vocab: list[str], idf: np.ndarray) -> Csr:
    """Rows of :func:`mentallama.label_model.featurize` stacked into a :class:`Csr`."""
    index = {g: i for i, g in enumerate(vocab)}
    data, indices, indptr = [], [], [0]
    for text in texts:
        cols, values = featurize(text, index, idf)
        order = np.argsort(cols, kind="stable")
        indices.append(cols[order])
        data.append(values[order].astype(np.float64))
        indptr.append(indptr[-1] + len(cols))
    return Csr(
        np.concatenate(data) if data else np.zeros(0),
        np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        np.array(indptr, dtype=np.int64),
        len(vocab),
    )


# ---------------------------------------------------------------- model


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _loss_and_grad(x: Csr, y: np.ndarray, n_classes: int, l2: float) -> Objective:
    n, v = x.n_rows, x.n_cols
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: v * n_classes].reshape(v, n_classes)
        b = theta[v * n_classes :]
        z = x.matmul(w) + b
        zmax = z.max(axis=1, keepdims=True)
        log_norm = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        loss = float((log_norm - z[np.arange(n), y]).mean() + 0.5 * l2 * np.dot(w.ravel(), w.ravel()))
        g = (_softmax(z) - onehot) / n
        grad_w = x.rmatmul(g) + l2 * w
        return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    return f


def lbfgs(f: Objective, x0: np.ndarray, max_iter: int,
          memory: int = 10, tol: float = 1e-6) -> tuple[np.ndarray, int]:  # fmt: skip
    """Minimize ``f`` (returns loss and gradient) by L-BFGS with a backtracking Armijo line search."""
    x = x0.copy()
    loss, grad = f(x)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        q = grad.copy()
        alphas = []
        for s, yv in zip(reversed(s_hist), reversed(y_hist), strict=True):
            rho = 1.0 / np.dot(yv, s)
            a = rho * np.dot(s, q)
            alphas.append((rho, a))
            q -= a * yv
        if s_hist:
            q *= np.dot(s_hist[-1], y_hist[-1]) / np.dot(y_hist[-1], y_hist[-1])
        for (s, yv), (rho, a) in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            q += (a - rho * np.dot(yv, q)) * s
        direction = -q
        slope = float(np.dot(grad, direction))
        if slope >= 0:  # not a descent direction: restart from the gradient
            s_hist.clear()
            y_hist.clear()
            direction, slope = -grad, -float(np.dot(grad, grad))
        step = 1.0 if s_hist else min(1.0, 1.0 / max(np.abs(grad).sum(), 1e-12))
        while True:
            x_new = x + step * direction
            loss_new, grad_new = f(x_new)
            if loss_new <= loss + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, yv = x_new - x, grad_new - grad
        if np.dot(s, yv) > 1e-12:
            s_hist.append(s)
            y_hist.append(yv)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(loss - loss_new) <= tol * max(1.0, abs(loss))
        x, loss, grad = x_new, loss_new, grad_new
        if converged or np.abs(grad).max() < 1e-8:
            break
    return x, it


def fit_task(task: str, train: Sequence[Example], config: TrainConfig, meta: dict | None = None) -> TaskLabelModel:
    """Train the label model of ``task`` on ``train`` (see the module docstring)."""
    info = get_task(task)
    labels = info.labels
    texts = [e.explanation for e in train]
    vocab, idf = build_vocabulary(texts, config.min_df, config.max_features)
    x = vectorize(texts, vocab, idf)
    y = np.array([labels.index(e.label) for e in train], dtype=np.int64)
    n_classes = len(labels)
    theta0 = np.zeros(len(vocab) * n_classes + n_classes)
    theta, iterations = lbfgs(_loss_and_grad(x, y, n_classes, config.l2), theta0, config.max_iter)
    coef = theta[: len(vocab) * n_classes].reshape(len(vocab), n_classes)
    intercept = theta[len(vocab) * n_classes :]
    facts = {"train_examples": len(train), "features": len(vocab), "iterations": iterations,
             "l2": config.l2, "min_df": config.min_df, "max_features": config.max_features}  # fmt: skip
    facts.update(meta or {})
    return TaskLabelModel(info.name, labels, vocab, idf, coef, intercept, facts)


THRESHOLD_CANDIDATES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 2.0)
DERIVED_KINDS = ("answer", "verdict", "first_sentence", "conclusion", "explanation")
"""Readings whose threshold is derived from the training answers. ``hedged``, ``options`` and
``none`` keep 0.0 (the model decides): the reference answers hardly show them, and on real
MentaLLaMA answers the rules are confidently wrong there (issue 11)."""


MIN_GAIN = 2
MIN_GAIN_SHARE = 0.01


def _combined(how_records: Sequence[tuple[str | None, str, float, int, str]], threshold: float) -> int:
    """Right answers of the combination rule with ``threshold`` over ``(rule label, model label,
    model probability, known n-grams, truth)`` records."""
    right = 0
    for rule, model, prob, n_features, truth in how_records:
        use_model = n_features >= MIN_FEATURES and prob >= threshold and model != rule
        right += (model if use_model else rule) == truth
    return right


def derive_override(task: str, train: Sequence[Example], config: TrainConfig) -> tuple[dict[str, float], dict]:
    """The combination rule's thresholds for ``task``, from k-fold out-of-fold predictions on the
    training answers, each read twice: as written and with the verdict sentence removed.

    For each kind of reading in :data:`DERIVED_KINDS`, the threshold of
    :data:`THRESHOLD_CANDIDATES` that gets the most labels right (ties: the higher threshold,
    i.e. the rules) is kept if it gets at least ``max(MIN_GAIN, MIN_GAIN_SHARE * n)`` more right
    than the rules alone; otherwise the rules keep that kind of reading.
    Returns the thresholds and, per kind, the counts behind them.
    """
    k_folds = config.folds
    records: dict[str, list[tuple[str | None, str, float, int, str]]] = {}
    for k in range(k_folds):
        model = fit_task(task, [e for i, e in enumerate(train) if i % k_folds != k], config)
        for example in train[k::k_folds]:
            for text in (example.answer, example.explanation):
                reading = read_rules(task, text)
                probs, n_features = model.probabilities_and_count(reading.model_text)
                best = int(probs.argmax())
                records.setdefault(reading.how, []).append(
                    (reading.label, model.labels[best], float(probs[best]), n_features, example.label))
    override = {kind: OVERRIDE_THRESHOLDS[kind] for kind in OVERRIDE_THRESHOLDS}
    report = {}
    for kind in DERIVED_KINDS:
        rows = records.get(kind, [])
        if not rows:
            continue
        scored = {t: _combined(rows, t) for t in THRESHOLD_CANDIDATES}
        best = max(THRESHOLD_CANDIDATES, key=lambda t: (scored[t], t))
        # The model must beat the rules clearly (2 answers and 1 %), or the rules keep the reading.
        override[kind] = best if scored[best] - scored[2.0] >= max(MIN_GAIN, MIN_GAIN_SHARE * len(rows)) else 2.0
        report[kind] = {"n": len(rows), "rules_right": scored[2.0], "model_right": scored[0.0],
                        "chosen_right": scored[override[kind]]}  # fmt: skip
    return override, report


def accuracy(pairs: Iterable[tuple[str | None, str]]) -> tuple[int, int]:
    pairs = list(pairs)
    return sum(p == r for p, r in pairs), len(pairs)


def train_label_models(
    data: Path, output: Path, config: TrainConfig = TrainConfig(), tasks: Sequence[str] | None = None,
    echo: Callable[[str], None] = print,
) -> LabelModel:  # fmt: skip
    """Train every task with data in ``data``, write ``output``, print the held-out evaluation."""
    root = imhi_part(data, "train") or data
    wanted = [get_task(t).name for t in tasks] if tasks else [t for t in TASK_ORDER if (root / t).is_dir()]
    if not wanted:
        raise FileNotFoundError(f"no task folder ({', '.join(TASK_ORDER)}) in {root}")
    models: dict[str, TaskLabelModel] = {}
    held: dict[str, list[Example]] = {}
    for task in wanted:
        started = time.perf_counter()
        train, held_out, how = load_task_examples(root, task, config)
        override, derivation = derive_override(task, train, config)
        model = fit_task(task, train, config, {"split": how, "held_out_examples": len(held_out),
                                               "override": override, "override_derivation": derivation})
        # Every figure comes from the stored (float16) weights, through the SDK's own code.
        right, n = accuracy((model.predict(e.explanation)[0], e.label) for e in held_out)
        model.meta["held_out_accuracy"] = round(right / n, 4) if n else None
        models[task] = model
        held[task] = held_out
        echo(f"{task}: {len(train)} train / {len(held_out)} held out ({how}), {len(model.vocab)} features, "
             f"{model.meta['iterations']} iterations, {time.perf_counter() - started:.1f}s")  # fmt: skip
        for kind, counts in derivation.items():
            echo(f"  rule for {kind!r} readings: model overrides at p >= {override[kind]:g} "
                 f"(out-of-fold, n={counts['n']}: rules {counts['rules_right']}, model {counts['model_right']}, "
                 f"chosen {counts['chosen_right']} right)")  # fmt: skip
    bundle = LabelModel(models)
    bundle.save(output)
    echo(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB)")
    echo("held-out evaluation (explanation only = the verdict sentence removed):")
    echo(f"  {'task':<10}{'model':>10}{'parse_response':>16}{'full answer':>13}")
    for task, examples in held.items():
        m_right, n = accuracy((models[task].predict(e.explanation)[0], e.label) for e in examples)
        p_right, _ = accuracy((parse_response(task, e.explanation, label_model=bundle).label, e.label)
                              for e in examples)  # fmt: skip
        f_right, _ = accuracy((parse_response(task, e.answer, label_model=bundle).label, e.label) for e in examples)
        echo(f"  {task:<10}{_pct(m_right, n):>10}{_pct(p_right, n):>16}{_pct(f_right, n):>13}   (n={n})")
    return bundle


def _pct(right: int, n: int) -> str:
    return f"{100 * right / n:.1f}%" if n else "-"
