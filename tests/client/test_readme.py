"""The README's SDK and CLI examples run as written (issue 14): every ```python block pasted into a fresh
Python, and the `mentallama` lines of the SDK section in a shell, against a real server."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
IMHI_MINI = Path(__file__).parent / "fixtures" / "imhi_mini"
README_ENDPOINT = "127.0.0.1:8001"
README_HTTP = "http://127.0.0.1:8000"  # the OpenAI-compatible examples: the front door's HTTP port


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def cli_block() -> str:
    """The first ```bash block of the section "SDK and CLI": the `mentallama` examples."""
    section = README.read_text(encoding="utf-8").split("## SDK and CLI", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)[0]


def test_the_readme_has_python_blocks_that_name_the_default_endpoint():
    python = blocks("python")
    assert len(python) >= 2 and all(README_ENDPOINT in code for code in python if "MentaLLaMAClient" in code)


@pytest.mark.server
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_as_pasted(cpu_server, tmp_path, index):
    code = blocks("python")[index].replace(README_ENDPOINT, cpu_server.grpc_url)
    code = code.replace(README_HTTP, cpu_server.http_url)
    # A fresh interpreter: a block must define everything it uses. RuntimeWarnings (a coroutine never
    # awaited) are errors.
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "never awaited" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.server
def test_cli_lines_run_in_order(cpu_server, tmp_path):
    """The SDK section's bash block, line by line, in an empty folder (the IMHI clone is replaced by the
    test's mini IMHI: the test machine has no network)."""
    block = cli_block()
    env = dict(os.environ, MENTALLAMA_ENDPOINTS=cpu_server.grpc_url)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    (tmp_path / "MentalLLaMA").mkdir()
    (tmp_path / "MentalLLaMA" / "IMHI").symlink_to(IMHI_MINI)
    ran = []
    for line in block.splitlines():
        command = line.split("  #", 1)[0].strip()
        if not command or command.startswith("git clone"):
            continue
        if command.startswith("mentallama ") and "--max-tokens" not in command:
            command += " --max-tokens 16" if not command.startswith("mentallama tasks") else ""
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        ran.append(shlex.split(command)[0])
    assert ran.count("mentallama") >= 4
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["index"], r["id"]) for r in rows] == [(0, "1"), (1, "2")]
    assert (tmp_path / "results" / "eval" / "run.json").exists()


def test_readme_cli_flags_exist():
    """Every --flag the SDK section's commands use is one the command accepts."""
    from typer.testing import CliRunner

    from mentallama.cli import app

    block = cli_block()
    for line in block.splitlines():
        words = shlex.split(line.split("  #", 1)[0])
        if words[:1] != ["mentallama"] or len(words) < 2:
            continue
        help_text = CliRunner().invoke(app, [words[1], "--help"]).stdout
        for flag in (w for w in words if w.startswith("--")):
            assert flag in help_text, f"{flag} of `{line}` is not an option of mentallama {words[1]}"


@pytest.mark.server
def test_openai_curl_examples_run_as_pasted(cpu_server, tmp_path):
    """The section "OpenAI-compatible API": its curl lines, against the test server's HTTP port."""
    section = README.read_text(encoding="utf-8").split("## OpenAI-compatible API", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)[0]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.strip().startswith("curl ")]
    assert len(commands) == 2
    replies = []
    for command in commands:
        done = subprocess.run(command.replace(README_HTTP, cpu_server.http_url), shell=True, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        replies.append(json.loads(done.stdout))
    assert replies[0]["object"] == "chat.completion" and replies[0]["choices"][0]["message"]["content"]
    assert replies[1]["task"] == "dreaddit" and replies[1]["results"][0]["raw_text"]
