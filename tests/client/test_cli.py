"""The ``mentallama`` command line, driven through Typer's CliRunner against a real server."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama.cli import app
from mentallama.evaluation import load_imhi
from mentallama.tasks import TASKS

IMHI_MINI = Path(__file__).parent / "fixtures" / "imhi_mini"
POSTS = ["Exams next week and I cannot sleep.", "", "The landlord raised the rent again and my pay stayed."]

runner = CliRunner()


def dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


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


def test_unreachable_server_exits_1_with_the_error():
    result = runner.invoke(app, ["analyze", "-t", "dr", "-e", dead_endpoint(), "--timeout", "5", "a post"])
    assert result.exit_code == 1
    assert "APIConnectionError" in result.stderr and "request_id=" in result.stderr


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
        assert (out / "scores.md").read_text().startswith("| task | n | accuracy")

    def test_eval_selected_tasks(self, cpu_server):
        args = ["eval", "--imhi-dir", str(IMHI_MINI), "--tasks", "sad,dr", "--limit", "1"]
        result = runner.invoke(app, [*args, "-e", cpu_server.grpc_url, "--max-tokens", "4"])
        assert result.exit_code == 0, result.output
        body = result.stdout.splitlines()[2:]
        assert [line.split()[0] for line in body] == ["SAD", "DR"]
