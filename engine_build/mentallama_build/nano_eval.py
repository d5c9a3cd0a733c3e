"""In-process evaluation of a checkpoint on a sample of the IMHI test sets (greedy `generate()`).

The prompt is what the SDK sends (the IMHI query as in the CSV, which is `build_prompt`'s output) tokenized
with BOS, as the server does; the answer is parsed with `mentallama.parse_response` and scored with
`mentallama.evaluation.score` (weighted F1 as in the MentaLLaMA paper). Beside each score: the
majority-class baseline (the most frequent reference label of the same sample, predicted for every row),
the share of answers that parse to a label, and the share of answers with a repeated word 4-gram.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TASKS",
    "TaskReport",
    "evaluate",
    "generate_answers",
    "has_repeated_ngram",
    "load_model",
    "markdown_table",
]

DEFAULT_TASKS = ("DR", "dreaddit", "SAD", "Irf", "MultiWD")


@dataclass(frozen=True)
class TaskReport:
    task: str
    n: int
    parseable: float
    accuracy: float
    weighted_f1: float
    majority_label: str | None
    majority_f1: float
    repeated_4gram: float


def has_repeated_ngram(text: str, n: int = 4) -> bool:
    """True when some n words (lower-cased, punctuation kept) occur twice in `text`."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def load_model(path: Path, threads: int = 2) -> tuple[Any, Any]:
    """(model, tokenizer) of a checkpoint folder, in the dtype its config.json declares."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.set_num_threads(threads)
    config = json.loads((Path(path) / "config.json").read_text())
    dtype = getattr(torch, config.get("torch_dtype") or config.get("dtype") or "float32")
    model = LlamaForCausalLM.from_pretrained(path).to(dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def generate_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 256, batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[str]:  # fmt: skip
    """Greedy answers (the text after the prompt) for `prompts`, batched by length with left padding."""
    import torch

    encoded = [tokenizer(prompt).input_ids for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    eos = model.config.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=eos, pad_token_id=0,
            )  # fmt: skip
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            if eos in new:
                new = new[: new.index(eos)]
            answers[i] = tokenizer.decode(new, skip_special_tokens=True)
        if progress is not None:
            progress(len(chunk))
    return answers


def evaluate(
    checkpoint: Path, imhi: Path, tasks: Sequence[str] = DEFAULT_TASKS, per_task: int = 100, seed: int = 0,
    max_new_tokens: int = 256, batch_size: int = 16, threads: int = 2, predictions: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[TaskReport]:  # fmt: skip
    """Score `checkpoint` on `per_task` rows (a seeded sample) of each task's IMHI test set."""
    from mentallama.evaluation import load_imhi, score
    from mentallama.parsing import parse_response

    model, tokenizer = load_model(checkpoint, threads)
    reports: list[TaskReport] = []
    records: list[dict[str, Any]] = []
    for task in tasks:
        examples = [e for e in load_imhi(imhi, tasks=[task]) if e.reference_label is not None]
        sample = sorted(random.Random(f"{seed}/{task}").sample(range(len(examples)), min(per_task, len(examples))))
        chosen = [examples[i] for i in sample]
        started = time.perf_counter()
        answers = generate_answers(model, tokenizer, [e.query for e in chosen], max_new_tokens, batch_size)
        labels = [parse_response(e.task, a).label for e, a in zip(chosen, answers, strict=True)]
        refs = [e.reference_label for e in chosen]
        result = score(task, refs, labels)
        majority = Counter(refs).most_common(1)[0][0] if refs else None
        baseline = score(task, refs, [majority] * len(refs))
        report = TaskReport(
            result.task, result.n, sum(lab is not None for lab in labels) / max(1, len(labels)), result.accuracy,
            result.weighted_f1, majority, baseline.weighted_f1,
            sum(map(has_repeated_ngram, answers)) / max(1, len(answers)),
        )  # fmt: skip
        reports.append(report)
        echo(f"{task}: {json.dumps(asdict(report))} ({time.perf_counter() - started:.0f}s)")
        records.extend(
            {"task": e.task, "row": e.row, "reference": e.reference_label, "predicted": lab, "answer": a}
            for e, lab, a in zip(chosen, labels, answers, strict=True)
        )
    if predictions is not None:
        predictions.parent.mkdir(parents=True, exist_ok=True)
        predictions.write_text(
            json.dumps({"reports": [asdict(r) for r in reports], "predictions": records}, indent=1) + "\n"
        )
    return reports


def markdown_table(reports: Sequence[TaskReport]) -> str:
    lines = [
        "| task | n | parseable | accuracy | weighted F1 | majority-class weighted F1 (label) | repeated 4-gram |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        lines.append(
            f"| {r.task} | {r.n} | {r.parseable:.0%} | {r.accuracy:.3f} | {r.weighted_f1:.3f} | "
            f"{r.majority_f1:.3f} ({r.majority_label}) | {r.repeated_4gram:.0%} |"
        )
    return "\n".join(lines)
