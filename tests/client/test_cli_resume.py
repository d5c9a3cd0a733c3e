"""Batch runs that survive Ctrl-C (issue 22): `analyze --input --output` and `eval --output` refuse to replace
results, `--overwrite` replaces them, `--resume` continues them so that every input ends up exactly once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama.cli import app
from tests.client.test_cli import IMHI_MINI, interrupted_eval, run_interrupted

runner = CliRunner()
POSTS = 60
"""Enough work at 300 tokens each that the Ctrl-C lands mid-run, little enough that the resumed run is quick."""


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_posts(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "post"])
        writer.writerows([[f"p{i}", f"Post number {i}: I cannot sleep and work piles up."] for i in range(n)])


def test_resume_and_overwrite_need_an_output_and_exclude_each_other(tmp_path):
    posts = tmp_path / "posts.csv"
    write_posts(posts, 2)
    alone = runner.invoke(app, ["analyze", "-i", str(posts), "--resume", "-e", "127.0.0.1:1"])
    assert alone.exit_code == 2 and "--output" in alone.stderr
    both = runner.invoke(app, ["analyze", "-i", str(posts), "-o", str(tmp_path / "o.jsonl"), "--resume", "--overwrite"])
    assert both.exit_code == 2 and "not both" in both.stderr
    evaluated = runner.invoke(app, ["eval", "--imhi-dir", str(IMHI_MINI), "--resume"])
    assert evaluated.exit_code == 2 and "--output" in evaluated.stderr


def test_an_existing_output_is_refused_before_contacting_the_server(tmp_path):
    posts, out = tmp_path / "posts.csv", tmp_path / "out.jsonl"
    write_posts(posts, 2)
    out.write_text('{"index": 0, "label": "yes"}\n')
    result = runner.invoke(app, ["analyze", "-i", str(posts), "-o", str(out), "-e", "127.0.0.1:1"])
    assert result.exit_code == 2 and "--resume" in result.stderr and "--overwrite" in result.stderr
    assert out.read_text() == '{"index": 0, "label": "yes"}\n'  # untouched
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "raw_outputs.jsonl").write_text('{"task": "DR", "row": 0}\n')
    result = runner.invoke(app, ["eval", "--imhi-dir", str(IMHI_MINI), "-o", str(folder), "-e", "127.0.0.1:1"])
    assert result.exit_code == 2 and "--resume" in result.stderr
    assert (folder / "raw_outputs.jsonl").read_text() == '{"task": "DR", "row": 0}\n'


def test_resume_refuses_rows_of_another_input(tmp_path):
    posts, out = tmp_path / "posts.csv", tmp_path / "out.jsonl"
    write_posts(posts, 3)
    out.write_text('{"index": 7, "label": "yes"}\n')
    result = runner.invoke(app, ["analyze", "-i", str(posts), "-o", str(out), "--resume", "-e", "127.0.0.1:1"])
    assert result.exit_code == 2 and "index 7" in result.stderr and "3 posts" in result.stderr
    out.write_text('{"index": 0, "id": "q9", "label": "yes"}\n')
    result = runner.invoke(app, ["analyze", "-i", str(posts), "--id-field", "id", "-o", str(out), "--resume",
                                 "-e", "127.0.0.1:1"])  # fmt: skip
    assert result.exit_code == 2 and "'q9'" in result.stderr


@pytest.mark.server
class TestWithServer:
    def test_overwrite_replaces_and_resume_sends_only_failed_and_missing_rows(self, cpu_server, tmp_path):
        posts, out = tmp_path / "posts.csv", tmp_path / "out.jsonl"
        write_posts(posts, 4)
        args = ["analyze", "-t", "dr", "-i", str(posts), "-o", str(out), "-e", cpu_server.grpc_url, "--max-tokens", "4"]
        assert runner.invoke(app, args).exit_code == 0
        first = rows_of(out)
        assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
        assert [r["index"] for r in rows_of(out)] == [0, 1, 2, 3]
        assert [r["request_id"] for r in rows_of(out)] != [r["request_id"] for r in first]  # sent again
        # Row 1 failed, row 2 is missing, row 3 was cut off mid-write: those three are sent, row 0 kept as is.
        kept = json.dumps(first[0])
        out.write_text(f'{kept}\n{{"index": 1, "error": "ServerError", "message": "x"}}\n{{"index": 3, "lab\n')
        result = runner.invoke(app, [*args, "--resume"])
        assert result.exit_code == 0, result.output
        rows = rows_of(out)
        assert sorted(r["index"] for r in rows) == [0, 1, 2, 3] and json.dumps(rows[0]) == kept
        assert all("error" not in r for r in rows)
        assert "1 of 4 posts already there (matched by index), 2 failed or cut-off row(s)" in result.stderr
        again = runner.invoke(app, [*args, "--resume"])
        assert again.exit_code == 0 and "nothing left to send" in again.stderr and rows_of(out) == rows

    def test_ctrl_c_then_resume_ends_with_every_row_once(self, cpu_server, tmp_path):
        posts, out = tmp_path / "posts.csv", tmp_path / "out.jsonl"
        write_posts(posts, POSTS)
        args = ["analyze", "-t", "dr", "-i", str(posts), "--id-field", "id", "-o", str(out), "--concurrency", "2",
                "--max-tokens", "300", "-e", cpu_server.grpc_url]  # fmt: skip
        stopped = run_interrupted(args, out, rows=2)
        assert stopped.returncode == 130, stopped.stderr
        assert "--resume" in stopped.stderr
        before = rows_of(out)
        assert 2 <= len(before) < POSTS
        resumed = runner.invoke(app, [*args, "--resume", "--concurrency", "8"])
        assert resumed.exit_code == 0, resumed.output
        assert f"{len(before)} of {POSTS} posts already there (matched by id)" in resumed.stderr
        rows = rows_of(out)
        assert sorted(r["id"] for r in rows) == sorted(f"p{i}" for i in range(POSTS))  # each exactly once
        assert all(r["id"] == f"p{r['index']}" and r["task"] == "DR" and "error" not in r for r in rows)
        assert rows[: len(before)] == before  # what was there stays as it was

    def test_eval_ctrl_c_then_resume_scores_every_query_once(self, cpu_server, tmp_path):
        args, out, stopped = interrupted_eval(tmp_path, cpu_server.grpc_url, POSTS, max_tokens=300)
        assert stopped.returncode == 130 and "--resume" in stopped.stderr, stopped.stderr
        before = rows_of(out / "raw_outputs.jsonl")
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and rows_of(out / "raw_outputs.jsonl") == before
        resumed = runner.invoke(app, [*args, "--resume", "--concurrency", "8"])
        assert resumed.exit_code == 0, resumed.output
        assert f"resumed: {len(before)} answers kept" in resumed.stderr
        raw = rows_of(out / "raw_outputs.jsonl")
        assert sorted(r["row"] for r in raw) == list(range(POSTS))
        assert all("conflict" in r and "off_task" in r for r in raw)
        scores = list(csv.DictReader((out / "scores.csv").open()))
        assert [(r["task"], int(r["n"]) + int(r["skipped"])) for r in scores] == [("DR", POSTS)]
        assert {"conflicts", "off_task"} <= set(scores[0])

