"""MentaLLaMA-nano: the training command end to end on a few rows, no test query in the training data,
and the shipped checkpoint (check, in-process greedy analyses that parse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_build.check import check_checkpoint
from mentallama_build.cli import app
from mentallama_build.nano import default_exclude, load_test_queries, load_training_rows

REPO = Path(__file__).resolve().parents[2]
IMHI = REPO.parent / "shared" / "imhi"
TRAIN = IMHI / "train_instruction"
SHIPPED = REPO / "server" / "mentallama_server" / "checkpoints" / "mentallama-nano"

needs_imhi = pytest.mark.skipif(
    not TRAIN.is_dir(), reason=f"IMHI data not found at {IMHI} (expected <repo>/../shared/imhi)"
)


@needs_imhi
def test_training_command_writes_a_loadable_checkpoint_and_resumes(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    output = tmp_path / "nano"
    args = ["nano", "--data", str(TRAIN), "--output", str(output), "--limit", "40", "--vocab-size", "800"]
    result = CliRunner().invoke(app, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "(2 dropped" in result.output  # the two dreaddit rows that are also test queries
    report = check_checkpoint(output)
    assert report.ok, report.problems
    assert report.context_length == 2048 and report.vocab_size == 800
    model = LlamaForCausalLM.from_pretrained(output)
    assert model.config.tie_word_embeddings

    again = CliRunner().invoke(app, [*args, "--steps", "3"])
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = CliRunner().invoke(app, [*args, "--steps", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed at step 2" in resumed.output and "trained 3 steps" in resumed.output
    assert check_checkpoint(output).ok


@needs_imhi
def test_no_test_query_in_the_training_data() -> None:
    exclude = default_exclude(TRAIN)
    assert exclude == (IMHI / "test_instruction").resolve()
    test_queries = load_test_queries(exclude)
    assert len(test_queries) > 8000
    rows, dropped = load_training_rows(TRAIN, test_queries)
    assert dropped > 0  # the raw training files do overlap the test sets; those rows are dropped
    assert not {row.query for row in rows} & test_queries
    assert len(rows) > 13000


POSTS = (
    ("DR", None, "I haven't left my bed in weeks. Nothing feels worth doing and I cry every night."),
    ("dreaddit", None, "My rent is due tomorrow, my boss cut my hours and I can't stop panicking about money."),
    ("SAD", None, "I failed two exams this semester and my professor says I might lose my scholarship."),
    ("MultiWD", "physical", "I started running every morning and my back pain is finally getting better."),
)


def test_shipped_checkpoint_passes_check() -> None:
    report = check_checkpoint(SHIPPED)
    assert report.ok, report.problems
    assert (SHIPPED / "model.safetensors").stat().st_size <= 40 * 2**20
    assert json.loads((SHIPPED / "config.json").read_text())["max_position_embeddings"] >= 1400
    assert "non-clinical" in (SHIPPED / "README.md").read_text().lower()


def test_shipped_checkpoint_greedy_analyses_parse_to_a_label() -> None:
    from mentallama import build_prompt, parse_response
    from mentallama.tasks import get_task
    from mentallama_build.nano_eval import generate_answers, load_model

    model, tokenizer = load_model(SHIPPED)
    prompts = [build_prompt(task, post, aspect=aspect) for task, aspect, post in POSTS]
    answers = [generate_answers(model, tokenizer, [p], max_new_tokens=96)[0] for p in prompts]
    for (task, _, _), answer in zip(POSTS, answers, strict=True):
        label = parse_response(task, answer).label
        assert label in get_task(task).labels, (task, answer)


def test_nano_eval_command_scores_the_shipped_checkpoint(tmp_path: Path) -> None:
    """`mentallama-build nano-eval` hands its arguments to the evaluator: two DR rows of the mini IMHI."""
    for help_flag in ("--help", "-h"):
        shown = CliRunner().invoke(app, ["nano-eval", help_flag])
        assert shown.exit_code == 0 and "nano-eval [OPTIONS] CHECKPOINT" in shown.stdout
        assert all(f in shown.stdout for f in ("--imhi", "--tasks", "--per-task", "--max-new-tokens", "--predictions"))
    assert "nano-eval" in CliRunner().invoke(app, ["--help"]).stdout
    predictions = tmp_path / "eval.json"
    imhi_mini = REPO / "tests" / "client" / "fixtures" / "imhi_mini"
    args = ["nano-eval", str(SHIPPED), "--imhi", str(imhi_mini), "--tasks", "DR", "--per-task", "2",
            "--max-new-tokens", "8", "--predictions", str(predictions)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| DR | 2 |" in result.stdout
    assert len(json.loads(predictions.read_text())["predictions"]) == 2
