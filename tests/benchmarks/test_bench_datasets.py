"""Prompt sources: IMHI folder (made here, no real posts) and synthetic prompts of given lengths."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from mentallama_bench.datasets import ImhiDataset, SyntheticDataset, parse_task_mix
from mentallama_bench.tokens import count_input_tokens, load_tokenizer

WORDS = [f"w{i}" for i in range(200)]


def _write_task(folder: Path, task: str, queries: list[str], column: str = "query") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{task}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([column, "gpt-3.5-turbo"])
        writer.writerows([q, "reference answer"] for q in queries)


@pytest.fixture()
def imhi(tmp_path: Path) -> Path:
    inst = tmp_path / "IMHI" / "test_instruction"
    _write_task(inst, "DR", [f"w1 w2 w{i} question" for i in range(30)])
    _write_task(inst, "dreaddit", [" ".join(["w3"] * (5 + i)) for i in range(10)])
    return tmp_path / "IMHI"


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A real (tiny) HF fast tokenizer saved to disk and loaded back the way --tokenizer does."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate([*WORDS, "question"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>").save_pretrained(folder)
    return load_tokenizer(folder)


def test_natural_mix_is_seeded_and_covers_every_row(imhi: Path) -> None:
    ds = ImhiDataset(imhi, max_tokens=32)
    assert ds.tasks == {"DR": 30, "dreaddit": 10}
    first = ds.sample(40, seed=1)
    assert [s.index for s in first] == [s.index for s in ds.sample(40, seed=1)]
    assert [s.index for s in first] != [s.index for s in ds.sample(40, seed=2)]
    assert sorted(s.index for s in first) == list(range(40))  # one pass = every query once
    assert all(s.max_tokens == 32 and s.prompt_tokens is None for s in first)


def test_task_mix_weights_the_draws(imhi: Path) -> None:
    ds = ImhiDataset(imhi, max_tokens=8, task_mix=parse_task_mix("dr:3,DREADDIT:1"))
    counts = Counter(s.task for s in ds.sample(4000, seed=0))
    assert counts["DR"] / 4000 == pytest.approx(0.75, abs=0.03)
    only = ImhiDataset(imhi, max_tokens=8, task_mix=parse_task_mix("dreaddit"))
    assert {s.task for s in only.sample(50, seed=0)} == {"dreaddit"}


def test_folder_may_be_test_instruction_itself(imhi: Path) -> None:
    assert ImhiDataset(imhi / "test_instruction", max_tokens=8).tasks["DR"] == 30


def test_bad_inputs_are_explained(imhi: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        ImhiDataset(imhi, 8, task_mix={"CAMS": 1.0})
    with pytest.raises(FileNotFoundError):
        ImhiDataset(tmp_path / "nothing", 8)
    _write_task(tmp_path / "bad", "X", ["a"], column="post")
    with pytest.raises(ValueError, match="query"):
        ImhiDataset(tmp_path / "bad", 8)
    with pytest.raises(ValueError):
        parse_task_mix("DR:0")


def test_tokenizer_counts_and_filters_long_prompts(imhi: Path, word_tokenizer) -> None:
    ds = ImhiDataset(imhi, max_tokens=8, tokenizer=word_tokenizer, max_input_tokens=8)
    assert ds.tasks == {"DR": 30, "dreaddit": 4}  # dreaddit rows have 5..14 tokens
    assert ds.skipped_too_long == 6
    sample = ds.sample(1, seed=0)[0]
    assert sample.prompt_tokens == count_input_tokens(word_tokenizer, sample.prompt)


def test_synthetic_prompts_have_the_requested_token_length(word_tokenizer) -> None:
    ds = SyntheticDataset(input_len=17, output_len=9, tokenizer=word_tokenizer)
    samples = ds.sample(5, seed=3)
    assert all(s.prompt_tokens == 17 and s.max_tokens == 9 for s in samples)
    assert [s.prompt for s in samples] == [s.prompt for s in ds.sample(5, seed=3)]
    assert len({s.prompt for s in samples}) == 5


def test_synthetic_without_tokenizer_uses_words() -> None:
    s = SyntheticDataset(input_len=12, output_len=4).sample(1, seed=0)[0]
    assert len(s.prompt.split()) == 12 and s.prompt_tokens is None


def test_tokenizer_must_be_a_local_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tokenizer("meta-llama/Llama-2-7b-chat-hf")
