"""Label models (issue 11): the shipped file, the training command, and parse_response's combination rule."""

from __future__ import annotations

import json
import time
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from mentallama.label_model import DATA_FILE, FORMAT_VERSION, LabelModel, default_model, featurize
from mentallama.parsing import parse_response, read_rules
from mentallama.tasks import TASKS

FIXTURES = Path(__file__).parent / "fixtures"
IMHI_DIRS = (Path(__file__).resolve().parents[2].parent / "shared" / "imhi", Path("/work/shared/imhi"))
IMHI = next((d for d in IMHI_DIRS if (d / "train_instruction").is_dir()), None)
NO_IMHI = "IMHI data not found at ../shared/imhi (not needed outside dev/CI)"

TRAINED = ("DR", "dreaddit", "SAD", "Irf", "MultiWD")
SIZE_BOUND = 1_000_000
"""The shipped file stays under 1 MB (it is 0.7 MB: 5 tasks, <= 20,000 n-grams each, float16 weights)."""

STYLES = [json.loads(line) for line in (FIXTURES / "label_styles.jsonl").read_text(encoding="utf-8").splitlines()
          if line.strip()]  # fmt: skip


def _shipped_path() -> Path:
    return Path(str(resources.files("mentallama").joinpath(DATA_FILE)))


# ---------------------------------------------------------------- the shipped file


def test_shipped_model_loads_and_is_small() -> None:
    path = _shipped_path()
    assert path.is_file()
    assert path.stat().st_size < SIZE_BOUND, f"{path.stat().st_size} bytes"
    model = default_model()
    assert model is not None and tuple(model.tasks) == TRAINED
    for task in TRAINED:
        m = model.get(task)
        assert m is not None and m.labels == TASKS[task].labels
        assert 1000 < len(m.vocab) <= 20000 and len(set(m.vocab)) == len(m.vocab)
        assert m.meta["held_out_accuracy"] > 0.9
        assert set(m.override_thresholds) >= {"answer", "hedged", "options", "none"}
    assert model.get("CAMS") is None  # no training data: rules only


def test_shipped_file_is_plain_arrays() -> None:
    """No pickle: every member is a .npy of a numeric dtype, readable with allow_pickle=False."""
    with zipfile.ZipFile(_shipped_path()) as archive:
        names = archive.namelist()
    assert all(name.endswith(".npy") for name in names)
    with np.load(_shipped_path(), allow_pickle=False) as data:
        assert int(data["format"]) == FORMAT_VERSION
        for name in data.files:
            assert data[name].dtype.kind in "iuf", name
        assert data["DR.coef"].dtype == np.float16 and data["DR.idf"].dtype == np.float32


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = default_model()
    assert model is not None
    copy = LabelModel.load(model.save(tmp_path / "copy.npz"))
    text = "The poster feels hopeless and exhausted and has lost interest in everything."
    for task in TRAINED:
        a, b = model.get(task), copy.get(task)
        assert a is not None and b is not None
        assert a.vocab == b.vocab and a.meta == b.meta
        np.testing.assert_array_equal(a.coef, b.coef)
        np.testing.assert_array_equal(a.probabilities(text), b.probabilities(text))


def test_featurize_is_unit_norm_and_ignores_unknown_words() -> None:
    vocab = {"not": 0, "sad": 1, "not sad": 2}
    idf = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    index, values = featurize("Not sad, NOT sad! zebra", vocab, idf)
    assert sorted(index.tolist()) == [0, 1, 2]
    assert np.isclose(np.linalg.norm(values), 1.0)
    assert featurize("zebra quokka", vocab, idf)[0].size == 0


# ---------------------------------------------------------------- parse_response + the model


@pytest.mark.parametrize("case", STYLES, ids=[f"{c['task']}: {c['style']} ({c['label']})" for c in STYLES])
def test_failure_styles(case: dict) -> None:
    """Answers written here in the three failure styles of issue 11, for each trained task."""
    got = parse_response(case["task"], case["text"])
    assert got.label == case["label"]
    assert got.label_source in ("stated", "inferred") and 0.0 <= got.confidence <= 1.0
    if case["style"] in ("hedged", "options"):
        assert got.label_source == "inferred" and got.matched_by == "model"
        assert read_rules(case["task"], case["text"]).how in ("hedged", "options")


def test_fixtures_cover_every_style_and_task() -> None:
    seen = {(c["task"], c["style"]) for c in STYLES}
    assert seen == {(t, s) for t in TRAINED for s in ("no verdict", "hedged", "options")}


def test_issue_examples() -> None:
    hedged = ("While the post does not exhibit the profound hopelessness commonly associated with very severe "
              "depression, it does indicate emotional distress and a need for support")  # fmt: skip
    assert parse_response("DR", hedged, label_model=None).label == "no"  # what the rules alone read
    got = parse_response("DR", hedged)
    assert (got.label, got.label_source) == ("yes", "inferred")
    options = ("A. Family issues\nB. Financial problem\nC. Health issues\nD. Work\n\nReasoning: The poster lost "
               "their job last month and dreads the meetings with their manager; the workplace is the source of "
               "the stress.")  # fmt: skip
    assert parse_response("SAD", options, label_model=None).label != "work"
    assert parse_response("SAD", options).label == "work"


def test_plainly_stated_verdict_wins() -> None:
    text = ("Yes, the poster suffers from depression. Reasoning: The post is a cheerful note about a picnic with "
            "friends; the tone is positive and there is no mention of emotional pain.")  # fmt: skip
    got = parse_response("DR", text)
    assert (got.label, got.label_source, got.matched_by) == ("yes", "stated", "verdict")
    assert got.confidence is not None and got.confidence < 0.5  # the explanation argues otherwise


def test_rules_only_tasks_and_switch() -> None:
    got = parse_response("CAMS", "This post shows causes of depression related to medication. Reasoning: r")
    assert (got.label, got.label_source, got.confidence) == ("medication", "stated", None)
    junk = parse_response("CAMS", "Reasoning: the poster mentions nothing in particular.")
    assert (junk.label, junk.label_source) == (None, None)
    text = "A. Yes\nB. No\n\nReasoning: The poster feels hopeless, worthless and exhausted every day."
    rules = parse_response("DR", text, label_model=None)
    assert rules.label_source in ("stated", None) and rules.confidence is None
    assert parse_response("DR", "", label_model=None).label is None
    assert parse_response("DR", "").label is None  # no words: the model does not guess
    assert parse_response("DR", "这篇帖子没有提到任何内容。").label is None
    with pytest.raises(ValueError):
        parse_response("DR", "Yes.", label_model="other")
    with pytest.raises(TypeError):
        parse_response("DR", "Yes.", label_model=3)


def test_a_model_passed_in_is_used() -> None:
    model = default_model()
    assert model is not None
    text = "The poster feels hopeless, worthless and exhausted every day and has withdrawn from friends."
    assert parse_response("DR", text, label_model=model) == parse_response("DR", text)
    assert parse_response("DR", text, label_model=model.get("DR")) == parse_response("DR", text)
    assert parse_response("DR", text, label_model=model.get("SAD")).label_source != "inferred"


def test_parsing_is_fast() -> None:
    """10,000 answers well under 2 s on an idle machine; bound loosely for a shared CI box."""
    answers = [s["text"] for s in STYLES]
    tasks = [s["task"] for s in STYLES]
    parse_response("DR", "warm up")
    started = time.perf_counter()
    for i in range(2000):
        parse_response(tasks[i % len(tasks)], answers[i % len(answers)])
    assert time.perf_counter() - started < 4.0


# ---------------------------------------------------------------- training


@pytest.mark.skipif(IMHI is None, reason=NO_IMHI)
def test_training_is_reproducible_and_matches_the_sdk(tmp_path: Path) -> None:
    """Two runs on a slice write the same bytes; the loaded file predicts exactly as the trained model."""
    from mentallama_build.label_model import TrainConfig, train_label_models

    assert IMHI is not None
    config = TrainConfig(limit=150, max_iter=60)
    lines: list[str] = []
    first = train_label_models(IMHI / "train_instruction", tmp_path / "a.npz", config, tasks=["DR", "SAD"],
                               echo=lines.append)  # fmt: skip
    train_label_models(IMHI / "train_instruction", tmp_path / "b.npz", config, tasks=["DR", "SAD"],
                       echo=lambda _line: None)  # fmt: skip
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert any("held-out evaluation" in line for line in lines)
    loaded = LabelModel.load(tmp_path / "a.npz")
    samples = ["The poster feels hopeless and cries every night.", "The poster is stressed about exams and money.",
               "Nothing in the post suggests distress; it is a recipe."]  # fmt: skip
    for task in ("DR", "SAD"):
        trained, shipped = first.get(task), loaded.get(task)
        assert trained is not None and shipped is not None
        for text in samples:
            np.testing.assert_array_equal(trained.probabilities(text), shipped.probabilities(text))


@pytest.mark.skipif(IMHI is None, reason=NO_IMHI)
def test_shipped_dr_model_is_what_the_command_trains(tmp_path: Path) -> None:
    """Retrain DR with the shipped settings: the arrays of the shipped file (reproducible). Equal to float
    rounding only: numpy's SIMD kernels sum in a different order on another CPU (AVX-512 vs AMX machines gave
    coefficients 1.2e-4 apart), which the training's iterations carry along."""
    from mentallama_build.label_model import TrainConfig, train_label_models

    assert IMHI is not None
    retrained = train_label_models(IMHI / "train_instruction", tmp_path / "dr.npz", TrainConfig(), tasks=["DR"],
                                   echo=lambda _line: None).get("DR")  # fmt: skip
    shipped = default_model().get("DR")  # type: ignore[union-attr]
    assert retrained is not None and shipped is not None
    assert retrained.vocab == shipped.vocab
    np.testing.assert_allclose(retrained.coef, shipped.coef, rtol=0, atol=1e-3)
    np.testing.assert_allclose(retrained.intercept, shipped.intercept, rtol=0, atol=1e-3)
    assert retrained.meta == shipped.meta


def test_cli_command_is_wired(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mentallama_build.cli import app

    result = CliRunner().invoke(app, ["label-model", "--help"])
    assert result.exit_code == 0 and "--data" in result.output and "--output" in result.output
    missing = CliRunner().invoke(app, ["label-model", "--data", str(tmp_path), "--output", str(tmp_path / "m.npz")])
    assert missing.exit_code == 1
