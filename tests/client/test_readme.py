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
    (tmp_path / "MentalLLaMA").mkdir()  # the clone's layout: test_data/test_instruction/*.csv
    (tmp_path / "MentalLLaMA" / "test_data").symlink_to(IMHI_MINI)
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
    assert ran.count("mentallama") >= 6
    # The --resume lines found every post and query already there: each row once, nothing sent twice.
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["index"], r["id"]) for r in rows] == [(0, "1"), (1, "2")]
    assert (tmp_path / "results" / "eval" / "run.json").exists()
    raw = [json.loads(line) for line in (tmp_path / "results" / "eval" / "raw_outputs.jsonl").read_text().splitlines()]
    assert len(raw) == len({(r["task"], r["row"]) for r in raw}) > 0


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


def run_curl_block(section: str, http_url: str, cwd: Path) -> list[dict]:
    """The curl lines of ``section``'s first bash block, run as pasted against ``http_url``; their JSON replies."""
    block = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)[0]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.strip().startswith("curl ")]
    replies = []
    for command in commands:
        done = subprocess.run(command.replace(README_HTTP, http_url), shell=True, cwd=cwd, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        replies.append(json.loads(done.stdout))
    return replies


@pytest.mark.server
def test_openai_curl_examples_run_as_pasted(cpu_server, tmp_path):
    """The section "OpenAI-compatible API": its curl lines, against the test server's HTTP port."""
    section = README.read_text(encoding="utf-8").split("## OpenAI-compatible API", 1)[1].split("\n## ", 1)[0]
    replies = run_curl_block(section, cpu_server.http_url, tmp_path)
    assert len(replies) == 2
    assert replies[0]["object"] == "chat.completion" and replies[0]["choices"][0]["message"]["content"]
    assert replies[1]["task"] == "dreaddit" and replies[1]["results"][0]["raw_text"]


TOOLS = {"mentallama-build": "mentallama_build.cli", "mentallama-bench": "mentallama_bench.cli",
         "mentallama-serve": "mentallama_server.launch.cli", "mentallama": "mentallama.cli"}  # fmt: skip


def readme_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks (continuations joined, `.venv/bin/` dropped, comments cut)."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("  #", 1)[0].split(" # ", 1)[0], posix=True) if line.strip() else []
            if words:
                words[0] = words[0].removeprefix(".venv/bin/")
                commands.append(words)
    return commands


def test_readme_commands_name_real_commands_flags_and_places():
    """Issue 22: every mentallama* command of the README uses flags its command has (no deprecated spelling),
    every `make` line a target and variables the Makefile has, and no command reads `../shared`, which a user's
    clone does not have."""
    import importlib

    from typer.main import get_command
    from typer.testing import CliRunner

    makefile = (README.parent / "Makefile").read_text(encoding="utf-8")
    checked = 0
    for words in readme_commands():
        assert not any("../shared" in w for w in words), words
        if words[0] == "make":
            for word in words[1:]:
                name = word.split("=", 1)[0]
                assert re.search(rf"^{re.escape(name)}\s*[?:]?=" if "=" in word else rf"^{re.escape(name)}:",
                                 makefile, flags=re.M), f"make {word} of {words}"  # fmt: skip
            checked += 1
            continue
        if words[0] not in TOOLS:
            continue
        app = importlib.import_module(TOOLS[words[0]]).app
        group = get_command(app)
        sub = [words[1]] if len(words) > 1 and not words[1].startswith("-") and getattr(group, "commands", None) and \
            words[1] in group.commands else []  # fmt: skip
        help_text = CliRunner().invoke(app, [*sub, "--help"], env={"COLUMNS": "200"}).stdout
        for flag in (w.split("=", 1)[0] for w in words if w.startswith("--")):
            assert flag in help_text, f"{flag} of `{' '.join(words)}` is not an option of {words[0]} {' '.join(sub)}"
        assert "--model" not in words or words[0] in ("mentallama", "mentallama-bench") and not sub, words
        checked += 1
    assert checked >= 20


@pytest.mark.slow
@pytest.mark.skipif(not (Path("/work/shared/imhi/train_instruction")).is_dir() and
                    not (README.parents[1] / "shared" / "imhi" / "train_instruction").is_dir(),
                    reason="IMHI training data not found at ../shared/imhi (not needed outside dev/CI)")  # fmt: skip
def test_label_model_command_writes_beside_the_shipped_model(tmp_path):
    """The README's label-model line in a folder laid out as a clone of the authors' repository (cut to 30 rows per
    CSV): it writes artifacts/label_model.npz and leaves the shipped file alone."""
    from mentallama.label_model import DATA_FILE, LabelModel

    shared = next(p for p in (README.parents[1] / "shared" / "imhi", Path("/work/shared/imhi")) if p.is_dir())
    (tmp_path / "MentalLLaMA" / "train_data").mkdir(parents=True)
    (tmp_path / "MentalLLaMA" / "train_data" / "instruction_data").symlink_to(shared / "train_instruction")
    line = next(w for w in readme_commands() if w[:2] == ["mentallama-build", "label-model"])
    shipped = (README.parent / "client" / "mentallama" / DATA_FILE).read_bytes()
    exe = Path(sys.executable).with_name("mentallama-build")
    done = subprocess.run([str(exe), *line[1:], "--limit", "30"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = LabelModel.load(tmp_path / "artifacts" / "label_model.npz")
    assert set(written.tasks) == {"DR", "dreaddit", "SAD", "Irf", "MultiWD"}
    assert (README.parent / "client" / "mentallama" / DATA_FILE).read_bytes() == shipped


@pytest.mark.server
def test_generate_text_contract_examples_run_as_pasted(cpu_server, tmp_path):
    """Issue 22: the text contract's curl lines, against the test server's HTTP port: the prompt comes first unless
    `exclude_input_in_output`, and then the rest is the same new text."""
    section = README.read_text(encoding="utf-8").split("**Text contract.**", 1)[1]
    with_prompt, without = [reply["text_output"] for reply in run_curl_block(section, cpu_server.http_url, tmp_path)]
    assert with_prompt.startswith("Hello there") and without and not without.startswith("Hello there")
    assert with_prompt == "Hello there" + without
