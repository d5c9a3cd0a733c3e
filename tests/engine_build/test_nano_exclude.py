"""nano training drops the IMHI test queries by default in both layouts of the data (issue 22: the README names a clone
of the authors' repository, whose test set is not beside `train_instruction/`)."""

from __future__ import annotations

from pathlib import Path

from mentallama_build.nano import default_exclude


def test_the_test_set_is_found_beside_the_training_data_in_both_layouts(tmp_path: Path) -> None:
    side_by_side = tmp_path / "imhi"
    (side_by_side / "train_instruction").mkdir(parents=True)
    (side_by_side / "test_instruction").mkdir()
    assert default_exclude(side_by_side / "train_instruction") == (side_by_side / "test_instruction").resolve()
    clone = tmp_path / "MentalLLaMA"
    (clone / "train_data" / "instruction_data").mkdir(parents=True)
    assert default_exclude(clone / "train_data" / "instruction_data") is None  # no test set: nothing to drop
    (clone / "test_data" / "test_instruction").mkdir(parents=True)
    found = default_exclude(clone / "train_data" / "instruction_data")
    assert found == (clone / "test_data" / "test_instruction").resolve()
