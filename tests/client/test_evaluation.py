"""IMHI loading and scoring: metrics checked against values computed by hand."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from mentallama.evaluation import (
    ImhiExample,
    count_answer_flags,
    count_label_sources,
    find_task_files,
    load_imhi,
    score,
    score_examples,
)
from mentallama.parsing import parse_response

MINI = Path(__file__).parent / "fixtures" / "imhi_mini"
IMHI_DIRS = (Path(__file__).resolve().parents[2].parent / "shared" / "imhi", Path("/work/shared/imhi"))
IMHI = next((d for d in IMHI_DIRS if (d / "test_instruction").is_dir()), None)


def test_binary_scores_by_hand() -> None:
    refs = ["yes", "yes", "yes", "no", "no", "yes"]
    preds = ["yes", "no", None, "no", "yes", "yes"]
    s = score("DR", refs, preds)
    # yes: TP=2 FP=1 support=4 -> P=2/3 R=1/2 F1=4/7; no: TP=1 FP=1 support=2 -> P=R=F1=1/2.
    assert s.n == 6 and s.unparseable == 1 and s.skipped == 0
    assert s.accuracy == pytest.approx(3 / 6)
    assert s.weighted_f1 == pytest.approx(float((4 * Fraction(4, 7) + 2 * Fraction(1, 2)) / 6))  # 23/42
    assert s.macro_f1 == pytest.approx(float((Fraction(4, 7) + Fraction(1, 2)) / 2))  # 15/28
    assert s.per_label["yes"].precision == pytest.approx(2 / 3)
    assert s.per_label["yes"].recall == pytest.approx(1 / 2)
    assert s.per_label["yes"].support == 4
    assert s.per_label["no"].f1 == pytest.approx(1 / 2)


def test_multiclass_scores_by_hand_with_a_label_only_predicted() -> None:
    refs = ["depression", "depression", "ptsd", "no mental disorders"]
    preds = ["depression", "suicide or self-harm tendency", "ptsd", "ptsd"]
    s = score("t-sid", refs, preds)
    # depression: P=1 R=1/2 F1=2/3 (support 2); ptsd: P=1/2 R=1 F1=2/3 (support 1);
    # no mental disorders: F1=0 (support 1); suicide...: F1=0 (support 0, weight 0).
    assert s.task == "T-SID"
    assert s.accuracy == pytest.approx(0.5)
    assert s.weighted_f1 == pytest.approx((2 * 2 / 3 + 1 * 2 / 3 + 0) / 4)
    assert s.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)
    assert list(s.per_label) == ["no mental disorders", "suicide or self-harm tendency", "depression", "ptsd"]
    assert s.per_label["suicide or self-harm tendency"].support == 0
    assert s.unparseable == 0


def test_perfect_and_all_unparseable() -> None:
    refs = ["work", "school", "work", "other causes"]
    perfect = score("SAD", refs, refs)
    assert (perfect.accuracy, perfect.weighted_f1, perfect.macro_f1) == (1.0, 1.0, 1.0)
    none = score("SAD", refs, [None] * 4)
    assert (none.accuracy, none.weighted_f1, none.unparseable) == (0.0, 0.0, 4)


def test_reference_without_label_is_skipped() -> None:
    s = score("DR", ["yes", None, "no"], ["yes", "yes", "yes"])
    assert (s.n, s.skipped, s.accuracy) == (2, 1, 0.5)


def test_empty_input() -> None:
    s = score("DR", [], [])
    assert (s.n, s.accuracy, s.weighted_f1, s.unparseable) == (0, 0.0, 0.0, 0)


def test_score_rejects_misaligned_or_foreign_labels() -> None:
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        score("DR", ["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="not a label of DR"):
        score("DR", ["yes"], ["work"])
    with pytest.raises(ValueError, match="not a label of SAD"):
        score("SAD", ["emotion turmoil"], ["work"])


def test_score_to_dict_is_json() -> None:
    d = score("DR", ["yes", "no"], ["yes", None]).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["per_label"]["yes"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}


def test_find_task_files_ignores_non_task_csvs() -> None:
    files = find_task_files(MINI)
    assert {name: p.name for name, p in files.items()} == {
        "DR": "DR.csv",
        "Irf": "Irf.csv",
        "SAD": "SAD.csv",
        "T-SID": "t-sid.csv",
    }
    assert find_task_files(MINI / "test_instruction") == files


def test_find_task_files_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_task_files(tmp_path / "nope")


def test_load_imhi_fixture() -> None:
    examples = load_imhi(MINI)
    # Catalog order, not file-name order.
    assert [e.task for e in examples] == ["DR"] * 3 + ["Irf"] * 2 + ["SAD"] * 3 + ["T-SID"] * 3
    dr = examples[1]
    assert dr.post == (
        "I haven't left my bed in days.\nNothing matters and I can't remember the last time I smiled."
    )
    assert dr.query.startswith('Consider this post: "I haven') and dr.reference_label == "yes" and dr.row == 1
    assert examples[2].post == 'My therapist said "one day at a time" and honestly… it helps.'
    assert [(e.aspect, e.reference_label) for e in examples[3:5]] == [
        ("perceived burdensomeness", "yes"),
        ("thwarted belongingness", "no"),
    ]
    assert [e.reference_label for e in examples[5:8]] == [
        "financial problem",
        "everyday decision making",
        "emotional turmoil",
    ]
    odd, unlabeled = examples[9], examples[10]
    assert (odd.post, odd.aspect, odd.reference_label) == (None, None, "no mental disorders")
    assert unlabeled.reference_label is None
    assert json.loads(json.dumps(dr.to_dict()))["task"] == "DR"


def test_load_imhi_tasks_and_limit() -> None:
    examples = load_imhi(MINI, tasks=["stress-cause", "dr", "DR"], limit=2)
    assert [(e.task, e.row) for e in examples] == [("SAD", 0), ("SAD", 1), ("DR", 0), ("DR", 1)]
    assert load_imhi(MINI, limit=0) == []
    with pytest.raises(ValueError, match="no CSV for task"):
        load_imhi(MINI, tasks=["CAMS"])
    with pytest.raises(ValueError, match="unknown task"):
        load_imhi(MINI, tasks=["nope"])


def test_score_examples_groups_by_task() -> None:
    examples = load_imhi(MINI)
    predictions = [e.reference_label for e in examples]
    predictions[0] = "yes"  # DR row 0 is "no"
    scores = score_examples(examples, predictions)
    assert list(scores) == ["DR", "Irf", "SAD", "T-SID"]
    assert scores["DR"].accuracy == pytest.approx(2 / 3)
    assert scores["SAD"].accuracy == 1.0
    assert (scores["T-SID"].n, scores["T-SID"].skipped) == (2, 1)
    with pytest.raises(ValueError):
        score_examples(examples, predictions[:-1])


def test_label_sources_are_counted_per_task() -> None:
    """``mentallama eval`` reports how many labels were stated and how many inferred."""
    from mentallama.evaluation_run import COLUMNS, score_rows

    examples = [ImhiExample("DR", "q", "r", "yes"), ImhiExample("DR", "q", "r", "no"),
                ImhiExample("SAD", "q", "r", "work")]  # fmt: skip
    answers = [
        ("DR", "Yes, the poster suffers from depression. Reasoning: They feel hopeless and worthless."),
        ("DR", "A. Yes\nB. No\n\nReasoning: The post is a cheerful note about a picnic; the tone is positive."),
        ("SAD", ""),
    ]
    sources = [parse_response(task, text).label_source for task, text in answers]
    assert sources == ["stated", "inferred", None]
    counts = count_label_sources(examples, sources)
    assert counts == {"DR": {"stated": 1, "inferred": 1}, "SAD": {"stated": 0, "inferred": 0}}
    rows = score_rows(score_examples(examples, ["yes", "no", None]), {}, counts)
    assert [(r["task"], r["stated"], r["inferred"]) for r in rows] == [("DR", 1, 1), ("SAD", 0, 0)]
    assert {"stated", "inferred"} <= set(COLUMNS)
    with pytest.raises(ValueError):
        count_label_sources(examples, sources[:1])
    with pytest.raises(ValueError):
        count_label_sources(examples[:1], ["guessed"])


def test_answer_flags_are_counted_per_task() -> None:
    from mentallama.types import Analysis

    examples = [ImhiExample("DR", "q", "r", "yes"), ImhiExample("SAD", "q", "r", "work"),
                ImhiExample("DR", "q", "r", "no"), ImhiExample("DR", "q", "r", "no")]  # fmt: skip
    analyses = [Analysis("DR", "yes", "", "", conflict=True), None, Analysis("DR", None, "", "", off_task="stress"),
                Analysis("DR", "no", "", "", conflict=True)]  # fmt: skip
    assert count_answer_flags(examples, analyses) == {"DR": {"conflicts": 2, "off_task": 1},
                                                      "SAD": {"conflicts": 0, "off_task": 0}}  # fmt: skip
    with pytest.raises(ValueError, match="4 examples but 1 analyses"):
        count_answer_flags(examples, analyses[:1])


def test_a_run_whose_requests_all_fail_writes_every_error_and_scores_them_unparseable(tmp_path: Path) -> None:
    """The SDK's run (what ``mentallama eval`` wires) against an endpoint where nothing listens: every
    answer is an error row in raw_outputs.jsonl, in input order, and counts as failed and unparseable."""
    from mentallama import AsyncMentaLLaMAClient
    from mentallama.evaluation_run import load_queries, run_evaluation, write_reports
    from tests.support.endpoints import dead_endpoint

    examples, split = load_queries(MINI, ["dr", "sad"], limit=2)
    endpoint, ticks = dead_endpoint(), []
    result = run_evaluation(examples, split, lambda: AsyncMentaLLaMAClient(endpoint, timeout=5, max_retries=0),
                            concurrency=3, max_tokens=4, limit=2, output=tmp_path, on_result=lambda: ticks.append(1))
    assert len(ticks) == len(examples) == 4 and result.failed == 4
    rows = [(r["task"], r["n"], r["failed"], r["unparseable"]) for r in result.rows]
    assert rows == [("DR", 2, 2, 2), ("SAD", 2, 2, 2)]
    raw = [json.loads(line) for line in (tmp_path / "raw_outputs.jsonl").read_text().splitlines()]
    assert [(r["task"], r["row"]) for r in raw] == [(e.task, e.row) for e in examples]
    assert all(r["error"] == "APIConnectionError" and "query" not in r for r in raw)
    assert result.run_info["endpoints"] == [endpoint] and result.run_info["split"] == str(split)
    write_reports(result, tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["queries"] == 4
    assert (tmp_path / "scores.md").read_text().startswith(f"split {split}; model mentallama at {endpoint}; ")


def test_the_run_says_where_the_imhi_data_comes_from(tmp_path: Path) -> None:
    from mentallama.evaluation_run import EvaluationInterrupted, load_queries

    with pytest.raises(FileNotFoundError, match="github.com/SteveKGYang/MentalLLaMA"):
        load_queries(tmp_path / "absent")
    with pytest.raises(ValueError, match="no IMHI queries found"):
        load_queries(tmp_path)
    assert issubclass(EvaluationInterrupted, KeyboardInterrupt)  # uncaught, it stops a script as Ctrl-C does


def test_examples_are_frozen() -> None:
    example = ImhiExample("DR", "q", "r", "yes")
    with pytest.raises(AttributeError):
        example.task = "SAD"  # type: ignore[misc]


@pytest.mark.skipif(IMHI is None, reason="IMHI data not found at ../shared/imhi (not needed outside dev/CI)")
def test_load_real_imhi_folder() -> None:
    assert IMHI is not None
    examples = load_imhi(IMHI)
    tasks = {e.task for e in examples}
    # SWMH's test file is not shipped (too large) and CLP has none.
    assert tasks == {"DR", "dreaddit", "loneliness", "Irf", "MultiWD", "SAD", "CAMS", "T-SID"}
    assert len(examples) > 8000
    assert all(e.post is not None and e.reference_label is not None for e in examples)
    assert all((e.aspect is not None) == (e.task in ("Irf", "MultiWD")) for e in examples)
    expert = load_imhi(IMHI / "expert", tasks=["swmh"], limit=5)
    assert len(expert) == 5 and all(e.task == "SWMH" for e in expert)
    scores = score_examples(examples, [e.reference_label for e in examples])
    assert all(s.accuracy == 1.0 and s.weighted_f1 == 1.0 for s in scores.values())
