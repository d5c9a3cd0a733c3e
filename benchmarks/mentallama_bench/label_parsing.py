"""Label parsing benchmark (issue 11): how often ``parse_response`` gets the label, and how fast.

Figures, per task with a label model (DR, dreaddit, SAD, Irf, MultiWD); the truth is the label the
rules read from the reference answer's own verdict:

1. **Explanation only**: the held-out validation answers (the split of ``mentallama-build
   label-model``: ``val.csv``, or for Irf/MultiWD the held-out quarter of its posts) with the verdict
   sentence and the ``Reasoning:`` marker removed. Goal >= 95 %. Printed as well: the share left
   when the references whose explanation plainly states the *other* label are set aside (the
   explanation alone cannot recover those).
2. **Reference answers** of ``test_instruction/`` and ``expert/`` (every task), as given: goal >= 99.5 %.
3. **Failure styles**, written here from the held-out validation answers: ``no verdict`` (the
   explanation alone, no marker), ``hedged`` (a hedged, label-free opening sentence from a seeded
   list, e.g. "While the post does not show every sign commonly associated with depression, it does
   describe ...", then the explanation, with or without ``Reasoning:``) and ``options`` (the task's
   options listed first in a seeded order, "A. Family issues\\nB. Work\\n...", then ``Reasoning:``
   and the explanation). Goal >= 95 %.
4. **Speed**: seconds to parse 10,000 reference answers (all tasks, in file order), best of 3. Goal < 2 s.

    mentallama-bench label-parsing --imhi MentalLLaMA [--json results/label_parsing.json]

``--imhi``: a clone of the MentaLLaMA authors' repository (github.com/SteveKGYang/MentalLLaMA: its
``train_data/instruction_data/``, ``test_data/test_instruction/`` and ``human_evaluation/test_instruction_expert/``)
or a folder with ``train_instruction/``, ``test_instruction/`` and ``expert/``.
"""

from __future__ import annotations

import csv
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mentallama.evaluation import imhi_part
from mentallama.parsing import parse_response, read_rules
from mentallama.tasks import TASKS, get_task
from mentallama_build.label_model import TASK_ORDER, Example, TrainConfig, load_task_examples

STYLES = ("no verdict", "hedged", "options")

_TOPIC = {"DR": "depression", "dreaddit": "stress", "Irf": "this risk", "MultiWD": "this wellness dimension"}

# Openings that hedge without giving the label away: the label has to come from the explanation.
_HEDGES_BINARY = (
    "While the post does not show every sign commonly associated with {topic}, it does describe the "
    "poster's situation in some detail.",
    "The post may or may not indicate {topic}; it is difficult to say for certain.",
    "Although it is not entirely clear, the poster might be dealing with {topic}.",
    "It is possible that the post reflects {topic}, although the evidence is mixed.",
    "While the post does not exhibit the profound signs commonly associated with severe {topic}, "
    "there is more to consider.",
)
_HEDGES_MULTICLASS = (
    "The stress cause could be related to {a} or {b}, but it is not entirely clear.",
    "It is difficult to say whether this post shows the stress cause related to {a}.",
    "The post might point to {a}, although other causes may also play a part.",
    "While the post does not clearly state a single cause, {a} or {b} could be involved.",
)


def hedged(task: str, explanation: str, rng: random.Random) -> str:
    info = get_task(task)
    if info.is_binary:
        opening = rng.choice(_HEDGES_BINARY).format(topic=_TOPIC.get(info.name, "it"))
    else:
        a, b = rng.sample(list(info.labels), 2)
        opening = rng.choice(_HEDGES_MULTICLASS).format(a=a, b=b)
    return f"{opening} Reasoning: {explanation}" if rng.random() < 0.5 else f"{opening} {explanation}"


def options(task: str, explanation: str, rng: random.Random) -> str:
    info = get_task(task)
    labels = ["Yes", "No"] if info.is_binary else [label.capitalize() for label in info.labels]
    rng.shuffle(labels)
    listed = "\n".join(f"{chr(ord('A') + i)}. {label}" for i, label in enumerate(labels))
    return f"{listed}\n\nReasoning: {explanation}"


def variant(style: str, task: str, explanation: str, rng: random.Random) -> str:
    if style == "no verdict":
        return explanation
    if style == "hedged":
        return hedged(task, explanation, rng)
    return options(task, explanation, rng)


def _pct(right: int, n: int) -> float:
    return round(100.0 * right / n, 2) if n else float("nan")


def _contradicts(example: Example) -> bool:
    """The explanation plainly states another label than the reference's verdict."""
    reading = read_rules(example.task, example.explanation)
    return reading.label not in (None, example.label) and reading.how in ("first_sentence", "conclusion")


def explanation_only(held: dict[str, list[Example]]) -> dict[str, dict]:
    out = {}
    for task, examples in held.items():
        got = [parse_response(task, e.explanation).label == e.label for e in examples]
        consistent = [ok for ok, e in zip(got, examples, strict=True) if not _contradicts(e)]
        out[task] = {"n": len(got), "accuracy": _pct(sum(got), len(got)), "consistent_n": len(consistent),
                     "consistent_accuracy": _pct(sum(consistent), len(consistent))}  # fmt: skip
    return out


def references(imhi: Path) -> dict[str, dict]:
    counts: dict[str, list[int]] = {}
    for part in ("test", "expert"):
        folder = imhi_part(imhi, part)
        for path in sorted(folder.glob("*.csv")) if folder is not None else []:
            task = get_task(path.stem).name
            with path.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    answer = row["gpt-3.5-turbo"]
                    truth = parse_response(task, answer, label_model=None).label
                    right_n = counts.setdefault(task, [0, 0])
                    right_n[0] += parse_response(task, answer).label == truth
                    right_n[1] += 1
    out = {task: {"n": n, "accuracy": _pct(right, n)} for task, (right, n) in counts.items()}
    right = sum(r for r, _ in counts.values())
    n = sum(n for _, n in counts.values())
    out["all"] = {"n": n, "accuracy": _pct(right, n)}
    return out


def failure_styles(held: dict[str, list[Example]], seed: int) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for style in STYLES:
        rng = random.Random(f"{seed}:{style}")
        out[style] = {}
        for task, examples in held.items():
            right = sum(parse_response(task, variant(style, task, e.explanation, rng)).label == e.label
                        for e in examples)  # fmt: skip
            rules = sum(parse_response(task, variant(style, task, e.explanation, random.Random(i)),
                                       label_model=None).label == e.label
                        for i, e in enumerate(examples))  # fmt: skip
            out[style][task] = {"n": len(examples), "accuracy": _pct(right, len(examples)),
                                "rules_only_accuracy": _pct(rules, len(examples))}  # fmt: skip
    return out


def speed(imhi: Path, n: int = 10_000, repeats: int = 3) -> dict:
    answers: list[tuple[str, str]] = []
    test = imhi_part(imhi, "test")
    for path in sorted(test.glob("*.csv")) if test is not None else []:
        task = get_task(path.stem).name
        with path.open(newline="", encoding="utf-8") as f:
            answers += [(task, row["gpt-3.5-turbo"]) for row in csv.DictReader(f)]
    answers = (answers * (n // max(len(answers), 1) + 1))[:n]
    parse_response("DR", "warm up: loads the label model")
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        for task, text in answers:
            parse_response(task, text)
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    # The same answers with the verdict removed: every one of them goes through the model.
    explanations = [(t, text.partition("Reasoning:")[2]) for t, text in answers]
    started, cpu = time.perf_counter(), time.process_time()
    for task, text in explanations:
        parse_response(task, text)
    return {"answers": len(answers), "seconds": round(best, 3), "cpu_seconds": round(best_cpu, 3),
            "explanations_seconds": round(time.perf_counter() - started, 3),
            "explanations_cpu_seconds": round(time.process_time() - cpu, 3)}  # fmt: skip


def run(imhi: Path, seed: int = 11, echo: Callable[[str], None] = print) -> dict:
    train = imhi_part(imhi, "train")
    held = {task: load_task_examples(train, task, TrainConfig())[1] for task in TASK_ORDER
            if train is not None and (train / task).is_dir()}  # fmt: skip
    results = {"explanation_only": explanation_only(held), "references": references(imhi),
               "failure_styles": failure_styles(held, seed), "speed": speed(imhi)}  # fmt: skip
    echo("1. held-out validation answers, explanation only (goal >= 95 %):")
    for task, r in results["explanation_only"].items():
        echo(f"   {task:<9} {r['accuracy']:6.2f} %  (n={r['n']}; without the {r['n'] - r['consistent_n']} references "
             f"whose explanation states the other label: {r['consistent_accuracy']:.2f} %)")  # fmt: skip
    echo("2. reference answers, test_instruction + expert (goal >= 99.5 %):")
    echo("   " + ", ".join(f"{t} {r['accuracy']:.2f} %" for t, r in results["references"].items()
                          if t != "all"))  # fmt: skip
    echo(f"   all {results['references']['all']['accuracy']:.2f} % (n={results['references']['all']['n']})")
    echo("3. failure styles from held-out validation answers (goal >= 95 %; rules alone in brackets):")
    for style, per_task in results["failure_styles"].items():
        echo(f"   {style:<11}" + "  ".join(f"{t} {r['accuracy']:.1f} % ({r['rules_only_accuracy']:.1f})"
                                         for t, r in per_task.items()))  # fmt: skip
    s = results["speed"]
    echo(f"4. parsing {s['answers']:,} reference answers: {s['seconds']:.2f} s wall, {s['cpu_seconds']:.2f} s CPU "
         f"(goal < 2 s); the same answers with the verdict removed (all through the model): "
         f"{s['explanations_seconds']:.2f} s wall, {s['explanations_cpu_seconds']:.2f} s CPU")  # fmt: skip
    return results


def run_study(imhi: Path, seed: int = 11, json_path: Path | None = None) -> int:
    """`mentallama-bench label-parsing`: print the figures (and write them to ``json_path``); exit code 2 without
    the IMHI data."""
    missing = [part for part in ("train", "test", "expert") if imhi_part(imhi, part) is None]
    if missing:
        print(f"IMHI data not found at {imhi} (no {', '.join(missing)} part): clone "
              "https://github.com/SteveKGYang/MentalLLaMA and pass --imhi MentalLLaMA", file=sys.stderr)
        return 2
    results = run(imhi, seed)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


__all__ = ["STYLES", "run", "run_study", "variant", "TASKS"]
