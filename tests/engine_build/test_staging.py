"""`staged_folder`: the folder the build tool writes is the old one or the new one, never half of either."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mentallama_build.staging import staged_folder


def test_a_finished_block_replaces_the_folder_and_leaves_no_staging(tmp_path: Path) -> None:
    output = tmp_path / "engine"
    output.mkdir()
    (output / "old.bin").write_text("old")
    with staged_folder(output) as staging:
        assert staging.parent == tmp_path and staging != output and (output / "old.bin").exists()
        (staging / "new.bin").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]  # no staging or old folder left beside it
    assert [p.name for p in output.iterdir()] == ["new.bin"]
    assert stat.S_IMODE(output.stat().st_mode) == 0o755  # readable like any folder (mkdtemp makes 0700)


def test_a_failed_block_leaves_the_old_folder_as_it_was(tmp_path: Path) -> None:
    output = tmp_path / "nested" / "checkpoint"
    with pytest.raises(KeyboardInterrupt), staged_folder(output, "exporting") as staging:
        assert staging.name.startswith(".checkpoint.exporting.")
        (staging / "half.safetensors").write_text("half")
        raise KeyboardInterrupt
    assert list(output.parent.iterdir()) == []  # created the parent, wrote nothing into it
    output.mkdir()
    (output / "config.json").write_text("{}")
    with pytest.raises(OSError), staged_folder(output):
        raise OSError("disk full")
    assert [p.name for p in output.iterdir()] == ["config.json"] and len(list(output.parent.iterdir())) == 1
