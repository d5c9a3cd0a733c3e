"""The ``mentallama`` command line, driven through Typer's CliRunner against a real server."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama.cli import app
from mentallama.evaluation import load_imhi
from mentallama.tasks import TASKS
from tests.support.endpoints import dead_endpoint

IMHI_MINI = Path(__file__).parent / "fixtures" / "imhi_mini"
POSTS = ["Exams next week and I cannot sleep.", "", "The landlord raised the rent again and my pay stayed."]

runner = CliRunner()


def test_tasks_lists_the_catalog():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    for name in TASKS:
        assert name in result.output
    as_json = runner.invoke(app, ["tasks", "--json"])
    assert [t["name"] for t in json.loads(as_json.stdout)] == list(TASKS)


def test_usage_errors_exit_2_before_sending():
    assert runner.invoke(app, ["analyze", "--task", "dr"]).exit_code == 2  # neither post nor --input
    unknown = runner.invoke(app, ["analyze", "--task", "nope", "-e", dead_endpoint(), "a post"])
    assert unknown.exit_code == 2 and "unknown task" in unknown.stderr
    no_aspect = runner.invoke(app, ["analyze", "--task", "irf", "-e", dead_endpoint(), "a post"])
    assert no_aspect.exit_code == 2 and "aspect" in no_aspect.stderr


def test_unreachable_server_is_one_line_saying_how_to_start_one(tmp_path):
    endpoint = dead_endpoint()
    result = runner.invoke(app, ["analyze", "-t", "dr", "-e", endpoint, "--timeout", "5", "a post"])
    assert result.exit_code == 1
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]  # one line
    assert f"no server at {endpoint}" in result.stderr and "mentallama-serve" in result.stderr
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps(f"post {i}") + "\n" for i in range(30)))
    out = tmp_path / "out.jsonl"
    batch = runner.invoke(app, ["analyze", "-t", "dr", "-e", endpoint, "-i", str(posts), "-o", str(out)])
    assert batch.exit_code == 1 and len(batch.stderr.strip().splitlines()) == 1
    assert f"no server at {endpoint}" in batch.stderr and not out.exists()  # no 30 error rows
    imhi = runner.invoke(app, ["eval", "--imhi-dir", str(IMHI_MINI), "-e", endpoint])
    assert imhi.exit_code == 1 and f"no server at {endpoint}" in imhi.stderr and "0.0" not in imhi.stdout


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("latin1.csv", "id,post\n1,caf\xe8\n".encode("latin-1"), ["latin1.csv", "not utf-8", "--encoding latin-1"]),
        ("posts.txt", b"a post\n", ["posts.txt", "expected a .csv or .jsonl file"]),
        ("empty.csv", b"", ["empty.csv", "empty", "header row"]),
        ("header.csv", b"id,post\n", ["header.csv", "no posts"]),
        ("empty.jsonl", b"\n", ["empty.jsonl", "no posts"]),
        ("bad.jsonl", b'{"post": "x"}\nnot json\n', ["bad.jsonl:2", "not JSON"]),
        ("cols.csv", b"id,text\n1,x\n", ["cols.csv", "no column 'post'", "columns: id, text", "--field"]),
    ],
)
def test_input_file_errors_name_the_file_and_the_fix(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    result = runner.invoke(app, ["analyze", "-t", "dr", "-i", str(path), "-e", dead_endpoint()])
    assert result.exit_code == 2, result.output
    for part in expected:
        assert part in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_latin1_input_reads_with_encoding(tmp_path):
    from mentallama.cli.analyze import read_posts

    path = tmp_path / "latin1.csv"
    path.write_bytes("id,post\n7,caf\xe8 noir\n".encode("latin-1"))
    posts = read_posts(path, "post", "latin-1", id_field="id")
    assert posts.texts == ["caf\xe8 noir"] and posts.ids == ["7"]


def test_unknown_task_suggests_the_closest_name():
    result = runner.invoke(app, ["analyze", "-t", "depresion", "-e", dead_endpoint(), "a post"])
    assert result.exit_code == 2 and "did you mean 'depression'" in result.stderr
    imhi = runner.invoke(app, ["eval", "--imhi-dir", str(IMHI_MINI), "--tasks", "lonelyness", "-e", dead_endpoint()])
    assert imhi.exit_code == 2 and "did you mean 'loneliness'" in imhi.stderr


def test_eval_without_the_imhi_data_says_where_it_comes_from(tmp_path):
    result = runner.invoke(app, ["eval", "--imhi-dir", str(tmp_path / "imhi"), "-e", dead_endpoint()])
    assert result.exit_code == 2 and "github.com/SteveKGYang/MentalLLaMA" in result.stderr
    assert str(tmp_path / "imhi") in result.stderr


def test_help_and_version():
    from mentallama import __version__

    assert runner.invoke(app, ["--version"]).stdout.strip() == f"mentallama {__version__}"
    for command in ([], ["analyze"], ["eval"], ["tasks"]):
        short = runner.invoke(app, [*command, "-h"], env={"COLUMNS": "80"})
        assert short.exit_code == 0 and "Usage:" in short.stdout
        assert "…" not in short.stdout and "\\[" not in short.stdout
    assert "POST is the post's text" in runner.invoke(app, ["analyze", "-h"]).stdout


POSTS_TO_CUT = 200


def run_interrupted(args: list[str], watch: Path, rows: int) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, press Ctrl-C once ``watch`` holds ``rows`` lines."""
    exe = Path(sys.executable).with_name("mentallama")
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if watch.exists() and len(watch.read_text().splitlines()) >= rows:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def interrupted_eval(tmp_path: Path, grpc_url: str, queries: int,
                     max_tokens: int) -> tuple[list[str], Path, subprocess.CompletedProcess]:  # fmt: skip
    """`mentallama eval -o` over ``queries`` copies of the mini set's first DR query, Ctrl-C once two answers are
    written: its arguments, its output folder and the finished run."""
    imhi = tmp_path / "imhi"
    imhi.mkdir()
    with (IMHI_MINI / "test_instruction" / "DR.csv").open(newline="") as f:
        reader = csv.reader(f)
        header, first = next(reader), next(reader)
    with (imhi / "DR.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header] + [first] * queries)
    out = tmp_path / "eval"
    args = ["eval", "--imhi-dir", str(imhi), "-o", str(out), "--concurrency", "2", "--max-tokens", str(max_tokens),
            "-e", grpc_url]  # fmt: skip
    return args, out, run_interrupted(args, out / "raw_outputs.jsonl", rows=2)


@pytest.mark.server
class TestWithServer:
    def test_analyze_one_post(self, cpu_server):
        args = ["analyze", "-t", "depression", "-e", cpu_server.grpc_url, "--max-tokens", "8", POSTS[0]]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "task:      DR" in result.stdout and "tokens:" in result.stdout and "8 out" in result.stdout
        assert "non-clinical" in result.stderr

    def test_analyze_json_and_stream_agree(self, cpu_server):
        args = ["analyze", "-t", "stress", "-e", cpu_server.grpc_url, "--max-tokens", "12", POSTS[2]]
        as_json = runner.invoke(app, [*args, "--json"])
        assert as_json.exit_code == 0, as_json.output
        data = json.loads(as_json.stdout)
        assert data["task"] == "dreaddit" and data["num_output_tokens"] >= 1 and data["request_id"]
        streamed = runner.invoke(app, [*args, "--stream"])
        assert streamed.exit_code == 0, streamed.output
        assert streamed.stdout.startswith(data["raw"])  # the streamed text, then the summary lines

    def test_analyze_csv_file_writes_jsonl_in_order(self, cpu_server, tmp_path):
        posts = tmp_path / "posts.csv"
        with posts.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows([[i, p] for i, p in enumerate(POSTS)])
        out = tmp_path / "out" / "results.jsonl"
        args = ["analyze", "-t", "dr", "-i", str(posts), "--field", "text", "-o", str(out), "--concurrency=2"]
        result = runner.invoke(app, [*args, "-e", cpu_server.grpc_url, "--max-tokens", "4"])
        assert result.exit_code == 1  # one post failed; the others are still written
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["index"] for line in lines] == [0, 1, 2]
        assert lines[1]["error"] == "InvalidRequestError" and lines[1]["request_id"]
        assert lines[0]["task"] == lines[2]["task"] == "DR"
        assert lines[0]["num_input_tokens"] < lines[2]["num_input_tokens"]
        assert all(POSTS[2] not in json.dumps(line) for line in lines)  # posts are not echoed back
        assert "2 analysed" in result.stderr and "1 failed" in result.stderr

    def test_analyze_jsonl_file_and_missing_field(self, cpu_server, tmp_path):
        posts = tmp_path / "posts.jsonl"
        posts.write_text(json.dumps({"post": POSTS[0]}) + "\n" + json.dumps(POSTS[2]) + "\n")
        result = runner.invoke(app, ["analyze", "-t", "dr", "-i", str(posts), "-e", cpu_server.grpc_url,
                                     "--max-tokens", "4"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert [json.loads(line)["index"] for line in result.stdout.splitlines()] == [0, 1]
        bad = runner.invoke(app, ["analyze", "-t", "dr", "-i", str(posts), "--field", "body",
                                  "-e", cpu_server.grpc_url])  # fmt: skip
        assert bad.exit_code == 2 and "body" in bad.stderr

    def test_eval_on_mini_imhi(self, cpu_server, tmp_path):
        out = tmp_path / "eval"
        args = ["eval", "--imhi-dir", str(IMHI_MINI), "--limit", "2", "--output", str(out)]
        result = runner.invoke(app, [*args, "-e", cpu_server.grpc_url, "--max-tokens", "8"])
        assert result.exit_code == 0, result.output
        examples = load_imhi(IMHI_MINI, limit=2)
        tasks = list(dict.fromkeys(e.task for e in examples))
        for task in tasks:
            assert task in result.stdout
        raw = [json.loads(line) for line in (out / "raw_outputs.jsonl").read_text().splitlines()]
        assert [(r["task"], r["row"]) for r in raw] == [(e.task, e.row) for e in examples]
        assert all(r["num_output_tokens"] >= 1 and "label" in r for r in raw)
        rows = list(csv.DictReader((out / "scores.csv").open()))
        assert [r["task"] for r in rows] == tasks
        assert sum(int(r["n"]) + int(r["skipped"]) for r in rows) == len(examples)
        assert all(0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["weighted_f1"]) <= 1.0 for r in rows)
        scores_md = (out / "scores.md").read_text()
        assert scores_md.startswith("split ") and "| task | n | accuracy" in scores_md
        run = json.loads((out / "run.json").read_text())
        assert run["split"].endswith("test_instruction") and run["model"] == "mentallama"
        assert run["endpoints"] == [cpu_server.grpc_url] and run["started_at"] and run["finished_at"]
        assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal

    def test_eval_selected_tasks(self, cpu_server):
        args = ["eval", "--imhi-dir", str(IMHI_MINI), "--tasks", "sad,dr", "--limit", "1"]
        result = runner.invoke(app, [*args, "-e", cpu_server.grpc_url, "--max-tokens", "4"])
        assert result.exit_code == 0, result.output
        body = result.stdout.splitlines()[3:]  # the run line, the header, the rule
        assert [line.split()[0] for line in body] == ["SAD", "DR"]

    def test_analyze_carries_the_id_field(self, cpu_server, tmp_path):
        posts = tmp_path / "posts.csv"
        posts.write_text("post_id,post\nA-7,I cannot sleep.\nB-9,Work is fine.\n")
        out = tmp_path / "out.jsonl"
        args = ["analyze", "-t", "dr", "-i", str(posts), "--id-field", "post_id", "-o", str(out)]
        result = runner.invoke(app, [*args, "-e", cpu_server.grpc_url, "--max-tokens", "4"])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(r["index"], r["post_id"]) for r in rows] == [(0, "A-7"), (1, "B-9")]
        assert f"written to {out}" in result.stderr and "\r" not in result.stderr

    def test_unknown_model_lists_the_served_models(self, cpu_server):
        args = ["analyze", "-t", "dr", "-e", cpu_server.grpc_url, "--model", "mentalama", "a post"]
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "model 'mentalama' is not served" in result.stderr and "did you mean 'mentallama'" in result.stderr
        assert "ensemble" in result.stderr and "mentallama" in result.stderr

    def test_ctrl_c_keeps_the_finished_posts(self, cpu_server, tmp_path):
        posts = tmp_path / "posts.csv"
        with posts.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "post"])
            # Far more work than the fast tiny engine finishes before the Ctrl-C, even when the poll below is late.
            writer.writerows([[f"p{i}", f"Post number {i}: I cannot sleep."] for i in range(POSTS_TO_CUT)])
        out = tmp_path / "out.jsonl"
        args = ["analyze", "-t", "dr", "-i", str(posts), "--id-field", "id", "-o", str(out), "--concurrency", "2",
                "--max-tokens", "1000", "-e", cpu_server.grpc_url]  # fmt: skip
        done = run_interrupted(args, out, rows=2)
        assert done.returncode == 130, done.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert 2 <= len(rows) < POSTS_TO_CUT
        assert all(r["id"] == f"p{r['index']}" and r["task"] == "DR" for r in rows)
        assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
        assert f"interrupted: {len(rows)} of {POSTS_TO_CUT} posts done" in done.stderr and str(out) in done.stderr
        assert "Traceback" not in done.stderr

    def test_eval_ctrl_c_keeps_the_raw_outputs(self, cpu_server, tmp_path):
        _, out, done = interrupted_eval(tmp_path, cpu_server.grpc_url, POSTS_TO_CUT, max_tokens=1000)
        assert done.returncode == 130, done.stderr
        raw = [json.loads(line) for line in (out / "raw_outputs.jsonl").read_text().splitlines()]
        assert 2 <= len(raw) < POSTS_TO_CUT and all(r["task"] == "DR" and "raw" in r for r in raw)
        assert f"interrupted: {len(raw)} of {POSTS_TO_CUT} answers received" in done.stderr


def test_sdk_analyze_many_raises_once_for_a_task_wrong_for_every_post():
    """The SDK side of the CLI's one-usage-error rule: nothing is sent (a dead endpoint would fail each post)."""
    import asyncio

    from mentallama import AsyncMentaLLaMAClient, InvalidRequestError, MentaLLaMAClient

    endpoint = dead_endpoint()
    with MentaLLaMAClient(endpoint, timeout=5) as client:
        with pytest.raises(InvalidRequestError, match="unknown task 'depresion'"):
            client.analyze_many(["a", "b", "c"], "depresion")
        with pytest.raises(InvalidRequestError, match="aspect"):
            client.analyze_many(["a", "b"], "irf")  # Irf needs an aspect: wrong for every post

    async def run() -> None:
        async with AsyncMentaLLaMAClient(endpoint, timeout=5) as client:
            with pytest.raises(InvalidRequestError, match="unknown task"):
                await client.analyze_many(["a", "b"], "depresion")

    asyncio.run(run())
