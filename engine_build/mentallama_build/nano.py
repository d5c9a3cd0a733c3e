"""MentaLLaMA-nano: a small LLaMA trained on the CPU on the IMHI instruction training data.

The result is a plain Hugging Face LLaMA folder (`config.json`, `generation_config.json`,
`model.safetensors`, the four tokenizer files of `mentallama_build.tokenizer`), so it loads through exactly
the code that loads `tiny`, `bench` and MentaLLaMA-7B.

What the model sees is what the SDK sends: `mentallama.analyze` sends the plain IMHI query
(`build_prompt(task, post, aspect=...)`, no chat template) and the server tokenizes it with BOS; the
answer is the text the model generates after it, ended by EOS. The training CSVs' `query` column is
checked to be byte for byte `build_query` of its own post and question. Loss is on answer tokens only.

Speed: a post longer than `post_tokens` is cut (at a token boundary, then re-tokenized as text, so the
prompt is still a genuine IMHI query) in most passes over an example; with probability `long_share` the
whole query is used (up to `max_prompt_tokens`), so the model also learns to answer after the long
queries it is served (test queries reach ~1,100 tokens; serving does not truncate).
Batches hold examples of similar length (bucketed within a shuffled window) under a padded-token budget.

Runs are seeded and resumable: `<output>.state/` holds the trained tokenizer and the last training state,
written every `save_minutes` together with an exported checkpoint in `output`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mentallama_build.safetensors_io import write_safetensors
from mentallama_build.staging import staged_folder
from mentallama_build.tiny import checkpoint_config
from mentallama_build.tokenizer import BOS_ID, EOS_ID, UNK_ID, write_json, write_tokenizer

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = [
    "NanoRecipe",
    "TrainExample",
    "TrainResult",
    "encode_examples",
    "load_test_queries",
    "load_training_rows",
    "nano_config",
    "train_nano",
    "train_tokenizer",
]

QUERY_COLUMN, ANSWER_COLUMN = "query", "gpt-3.5-turbo"
RECIPE_KEY = "mentallama_recipe"
STATE_FILE = "state.pt"
TOKENIZER_MODEL = "tokenizer.model"


@dataclass(frozen=True)
class NanoRecipe:
    """Everything that shapes the trained model besides the data, the seed and the run length."""

    vocab_size: int = 8000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    context_length: int = 2048  # max_position_embeddings: every IMHI test query (<= ~1,100 tokens) fits
    post_tokens: int = 240  # posts are cut to this many tokens, except in `long_share` of the passes
    long_share: float = 0.5
    max_prompt_tokens: int = 1536  # a whole query is cut (in its post) to this
    answer_tokens: int = 160  # longer answers are cut (and then carry no EOS)
    label_weight: float = 3.0  # loss weight of the answer's first sentence (the verdict)
    batch_tokens: int = 8192  # padded tokens per batch
    max_batch_rows: int = 48
    learning_rate: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 150
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dtype: str = "bfloat16"  # stored weights; training is float32 with bfloat16 autocast


@dataclass(frozen=True)
class TrainExample:
    task: str
    query: str
    answer: str


@dataclass
class TrainResult:
    output: Path
    steps: int
    epochs: float
    seconds: float
    answer_tokens: int
    tokens: int
    final_loss: float
    rows: int
    dropped_test_rows: int
    log: list[dict[str, Any]] = field(default_factory=list)


# --- data ---


def _read_csv(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {QUERY_COLUMN, ANSWER_COLUMN} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            yield row[QUERY_COLUMN] or "", row[ANSWER_COLUMN] or ""


def load_test_queries(folder: Path | None) -> set[str]:
    """Every `query` of the CSVs in `folder` (an IMHI `test_instruction/`); empty for `None`."""
    if folder is None:
        return set()
    return {query for path in sorted(Path(folder).glob("*.csv")) for query, _ in _read_csv(path)}


def load_training_rows(
    data: Path, exclude: Iterable[str] = (), limit: int | None = None
) -> tuple[list[TrainExample], int]:
    """Rows of `data/<task>/*.csv` (IMHI `train_instruction/`), minus queries in `exclude`.

    Each query must be exactly `build_query` of its post and question (what the SDK sends). Returns the
    examples (task folders and files in sorted order) and how many rows `exclude` removed. `limit`: at most
    this many rows in all, taken round-robin over the tasks (for smoke tests).
    """
    from mentallama.prompts import aspect_of, build_query, split_query
    from mentallama.tasks import get_task

    data = Path(data)
    folders = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no task folders in {data} (expected IMHI train_instruction/<task>/*.csv)")
    excluded = set(exclude)
    per_task: list[list[TrainExample]] = []
    dropped = 0
    for folder in folders:
        task = get_task(folder.name)
        rows: list[TrainExample] = []
        for path in sorted(folder.glob("*.csv")):
            for query, answer in _read_csv(path):
                if query in excluded:
                    dropped += 1
                    continue
                post, question = split_query(query)
                if build_query(task, post, aspect=aspect_of(task, question)) != query:
                    raise ValueError(f"{path}: a query is not the SDK's build_query of its post")
                if answer.strip():
                    rows.append(TrainExample(task.name, query, answer.strip()))
        per_task.append(rows)
    if limit is None:
        return [row for rows in per_task for row in rows], dropped
    mixed: list[TrainExample] = []
    for i in range(max(map(len, per_task))):
        mixed.extend(rows[i] for rows in per_task if i < len(rows))
    return mixed[:limit], dropped


# --- tokenizer ---


def train_tokenizer(examples: Sequence[TrainExample], vocab_size: int, seed: int) -> bytes:
    """A SentencePiece BPE model (LLaMA-2's trainer settings) trained on the queries and answers."""
    import io

    import sentencepiece as spm

    from mentallama_build.tokenizer import _TRAINER_SETTINGS

    def sentences() -> Iterator[str]:
        for example in examples:
            yield example.query
            yield example.answer

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size, **_TRAINER_SETTINGS
    )
    return model.getvalue()


def _load_fast_tokenizer(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


@dataclass(frozen=True)
class EncodedExample:
    short: tuple[int, ...]  # prompt with the post cut to post_tokens
    long: tuple[int, ...]  # the whole prompt (cut to max_prompt_tokens)
    answer: tuple[int, ...]  # answer ids (+ EOS unless cut)
    verdict: int  # leading answer ids that get label_weight


def _cut_post(tokenizer: Tokenizer, task: str, query: str, budget: int) -> str:
    """The IMHI query with its post cut to about `budget` tokens (the question is kept whole)."""
    from mentallama.prompts import aspect_of, build_query, split_query

    post, question = split_query(query)
    encoding = tokenizer.encode(post, add_special_tokens=False)
    if len(encoding.ids) <= budget:
        return query
    end = encoding.offsets[budget - 1][1]
    cut = post[:end].rstrip() or post[:end]
    return build_query(task, cut, aspect=aspect_of(task, question))


def _verdict_chars(answer: str) -> int:
    ends = [i for i in (answer.find(". "), answer.find("Reasoning:")) if i >= 0]
    return min(ends) + 1 if ends else len(answer)


def encode_examples(tokenizer: Tokenizer, examples: Sequence[TrainExample], recipe: NanoRecipe) -> list[EncodedExample]:
    """Token ids as the server builds them: BOS + query, then the answer, then EOS."""
    encoded: list[EncodedExample] = []
    for example in examples:
        prompt = tokenizer.encode(example.query).ids
        if not prompt or prompt[0] != BOS_ID:
            raise ValueError("tokenizer.json does not add BOS; the server's prompts start with it")
        if len(prompt) > recipe.max_prompt_tokens:
            # Cut the post until the whole prompt fits (the prefix and question take well under 64 tokens).
            budget = recipe.max_prompt_tokens - 64
            while len(prompt) > recipe.max_prompt_tokens and budget > 8:
                prompt = tokenizer.encode(_cut_post(tokenizer, example.task, example.query, budget)).ids
                budget -= 32
        short = prompt
        if len(prompt) > recipe.post_tokens + 40:
            short = tokenizer.encode(_cut_post(tokenizer, example.task, example.query, recipe.post_tokens)).ids
        answer = tokenizer.encode(example.answer, add_special_tokens=False).ids
        verdict = len(tokenizer.encode(example.answer[: _verdict_chars(example.answer)], add_special_tokens=False).ids)
        answer = answer[: recipe.answer_tokens] if len(answer) >= recipe.answer_tokens else [*answer, EOS_ID]
        encoded.append(EncodedExample(tuple(short), tuple(prompt), tuple(answer), min(verdict, len(answer))))
    return encoded


# --- model ---


def nano_config(recipe: NanoRecipe, vocab_size: int) -> dict[str, Any]:
    """`config.json`: the generated checkpoints' LLaMA-2 key set (`tiny.checkpoint_config`) with nano's shape."""
    return {
        **checkpoint_config("tiny"),
        "hidden_size": recipe.hidden_size,
        "intermediate_size": recipe.intermediate_size,
        "max_position_embeddings": recipe.context_length,
        "num_attention_heads": recipe.num_attention_heads,
        "num_hidden_layers": recipe.num_hidden_layers,
        "num_key_value_heads": recipe.num_attention_heads,
        "tie_word_embeddings": True,
        "torch_dtype": recipe.dtype,
        "vocab_size": vocab_size,
    }


def _generation_config() -> dict[str, Any]:
    # Greedy by default: the nano model's answers are meant to be reproducible demonstrations.
    return {"bos_token_id": BOS_ID, "do_sample": False, "eos_token_id": EOS_ID, "pad_token_id": UNK_ID}


def _build_model(config: dict[str, Any], seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    values = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**values))
    return model.float()


def export_checkpoint(model: Any, config: dict[str, Any], tokenizer_dir: Path, output: Path, recipe_id: str) -> None:
    """Write the servable folder atomically (staging folder renamed into place)."""
    import torch

    dtype = getattr(torch, config["torch_dtype"])
    tensors = {
        name: tensor.detach().to(dtype).clone()
        for name, tensor in model.state_dict().items()
        if not (config["tie_word_embeddings"] and name == "lm_head.weight")
    }
    output = Path(output)
    with staged_folder(output, "exporting") as staging:
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
            shutil.copyfile(tokenizer_dir / name, staging / name)
        write_json(staging / "config.json", config)
        write_json(staging / "generation_config.json", _generation_config())
        write_safetensors(staging / "model.safetensors", tensors, metadata={"format": "pt", RECIPE_KEY: recipe_id})
        extra = (
            [p for p in output.iterdir() if p.name not in {x.name for x in staging.iterdir()}]
            if output.is_dir()
            else []
        )
        for path in extra:  # keep files others put there (the model card)
            if path.is_file():
                shutil.copy2(path, staging / path.name)


# --- batching ---


def epoch_batches(
    encoded: Sequence[EncodedExample], recipe: NanoRecipe, seed: int, epoch: int
) -> list[list[tuple[int, bool]]]:
    """The batches of one pass: (example index, whole prompt?) lists, similar lengths together."""
    rng = random.Random(f"{seed}/{epoch}")
    order = list(range(len(encoded)))
    rng.shuffle(order)
    picks = [(i, rng.random() < recipe.long_share) for i in order]

    def length(pick: tuple[int, bool]) -> int:
        example = encoded[pick[0]]
        return len(example.long if pick[1] else example.short) + len(example.answer)

    batches: list[list[tuple[int, bool]]] = []
    window = 1024
    for start in range(0, len(picks), window):
        chunk = sorted(picks[start : start + window], key=length)
        batch: list[tuple[int, bool]] = []
        for pick in chunk:
            longest = max([length(p) for p in batch] + [length(pick)])
            if batch and (longest * (len(batch) + 1) > recipe.batch_tokens or len(batch) >= recipe.max_batch_rows):
                batches.append(batch)
                batch = []
            batch.append(pick)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def _collate(
    encoded: Sequence[EncodedExample], batch: Sequence[tuple[int, bool]], recipe: NanoRecipe
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input ids (right-padded), next-token targets and their loss weights (0 outside answers)."""
    import torch

    rows = []
    for index, whole in batch:
        example = encoded[index]
        prompt = example.long if whole else example.short
        rows.append((prompt, example.answer, example.verdict))
    width = max(len(p) + len(a) for p, a, _ in rows)
    ids = torch.full((len(rows), width), UNK_ID, dtype=torch.long)
    weights = torch.zeros((len(rows), width), dtype=torch.float32)
    for r, (prompt, answer, verdict) in enumerate(rows):
        sequence = prompt + answer
        ids[r, : len(sequence)] = torch.tensor(sequence)
        # position t predicts token t+1: answer token j sits at len(prompt)+j, predicted from one earlier
        start = len(prompt) - 1
        weights[r, start : start + len(answer)] = 1.0
        weights[r, start : start + verdict] = recipe.label_weight
    targets = torch.full_like(ids, UNK_ID)
    targets[:, :-1] = ids[:, 1:]
    return ids, targets, weights


def _loss(model: Any, ids: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    import torch

    # Right padding under a causal mask: real tokens never attend to the padding after them, so no
    # attention mask is needed (the fast causal kernel), and the logits are computed on answer positions only.
    hidden = model.model(input_ids=ids).last_hidden_state
    mask = weights > 0
    logits = model.lm_head(hidden[mask]).float()
    losses = torch.nn.functional.cross_entropy(logits, targets[mask], reduction="none")
    w = weights[mask]
    return (losses * w).sum() / w.sum()


def _learning_rate(recipe: NanoRecipe, step: int, progress: float) -> float:
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.learning_rate * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


# --- training ---


def _recipe_id(recipe: NanoRecipe, seed: int) -> str:
    import hashlib

    payload = json.dumps({"seed": seed, **asdict(recipe)}, sort_keys=True)
    return f"nano-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train_nano(
    data: Path,
    output: Path,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    resume: bool = False,
    exclude: Path | None = None,
    limit: int | None = None,
    save_minutes: float = 5.0,
    threads: int = 2,
    recipe: NanoRecipe | None = None,
    state_dir: Path | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train MentaLLaMA-nano on `data` (IMHI `train_instruction/`) and export it to `output`.

    The run length is `steps` optimizer steps, or `epochs` passes over the data (default 1.0). With
    `max_minutes`, training also stops (after saving) once that much training time has passed, and the
    learning-rate schedule follows whichever of steps and time is further along, so a time-bounded run
    still ends at the low learning rate. `exclude`: a folder of CSVs (the IMHI test sets) whose queries
    are dropped from the training data.
    """
    import torch
    from tqdm import tqdm

    recipe = recipe or NanoRecipe()
    output = Path(output)
    state_dir = Path(state_dir) if state_dir is not None else output.with_name(output.name + ".state")
    state_path = state_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"--resume: no training state at {state_path}")
    if not resume and state_path.is_file():
        raise FileExistsError(f"{state_path} exists: pass --resume to continue that run, or remove {state_dir}")
    torch.set_num_threads(threads)

    test_queries = load_test_queries(exclude)
    examples, dropped = load_training_rows(data, test_queries, limit=limit)
    echo(f"{len(examples):,} training rows from {data} ({dropped} dropped: also in {exclude})")
    state_dir.mkdir(parents=True, exist_ok=True)

    state: dict[str, Any] | None = None
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        recipe = NanoRecipe(**state["recipe"])
        seed = state["seed"]
    tokenizer_dir = state_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        started = time.perf_counter()
        proto = train_tokenizer(examples, recipe.vocab_size, seed)
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        write_tokenizer(tokenizer_dir, proto, model_max_length=recipe.context_length)
        echo(f"trained a {recipe.vocab_size}-piece tokenizer in {time.perf_counter() - started:.0f}s")
    tokenizer = _load_fast_tokenizer(tokenizer_dir)
    vocab_size = tokenizer.get_vocab_size()
    started = time.perf_counter()
    encoded = encode_examples(tokenizer, examples, recipe)
    echo(f"encoded in {time.perf_counter() - started:.0f}s")

    config = nano_config(recipe, vocab_size)
    model = _build_model(config, seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        betas=(0.9, 0.95),
    )
    batches_per_epoch = len(epoch_batches(encoded, recipe, seed, 0))
    total_steps = steps if steps is not None else max(1, round((epochs or 1.0) * batches_per_epoch))
    step, epoch, position, elapsed, tokens, answer_tokens = 0, 0, 0, 0.0, 0, 0
    log: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        elapsed, tokens, answer_tokens = state["elapsed"], state["tokens"], state["answer_tokens"]
        log = state["log"]
        total_steps = state["total_steps"] if steps is None and epochs is None else total_steps
        echo(f"resumed at step {step} (epoch {epoch}, batch {position}, {elapsed / 60:.1f} min trained)")
    budget = max_minutes * 60 if max_minutes else None
    parameters = sum(p.numel() for p in model.parameters())  # tied weights are listed once
    echo(
        f"{parameters:,} parameters; {batches_per_epoch} batches per pass; up to {total_steps} steps"
        + (f" or {max_minutes:g} min" if budget else "")
    )
    recipe_id = _recipe_id(recipe, seed)

    def progress_of() -> float:
        by_steps = step / total_steps
        return max(by_steps, elapsed / budget) if budget else by_steps

    def checkpoint(final: bool = False) -> None:
        _save_state(
            state_path,
            {
                "recipe": asdict(recipe), "seed": seed, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, "position": position,
                "elapsed": elapsed, "tokens": tokens, "answer_tokens": answer_tokens, "log": log,
                "total_steps": total_steps, "final": final,
            },
        )  # fmt: skip
        export_checkpoint(model, config, tokenizer_dir, output, recipe_id)

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total_steps, initial=step, disable=not show, unit="step", dynamic_ncols=True)
    last_save = time.perf_counter()
    last_log = time.perf_counter()
    running: float | None = None
    batches = epoch_batches(encoded, recipe, seed, epoch)
    model.train()
    loss_value = float("nan")
    while progress_of() < 1.0:
        if position >= len(batches):
            epoch, position = epoch + 1, 0
            batches = epoch_batches(encoded, recipe, seed, epoch)
        ids, targets, weights = _collate(encoded, batches[position], recipe)
        tick = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, step, progress_of())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, ids, targets, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        elapsed += time.perf_counter() - tick
        step, position = step + 1, position + 1
        tokens += int(ids.numel())
        answer_tokens += int((weights > 0).sum())
        loss_value = float(loss.detach())
        running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", epoch=f"{epoch + position / len(batches):.2f}", refresh=False)
        now = time.perf_counter()
        if now - last_log >= 60 or step == 1:
            last_log = now
            entry = {
                "step": step, "epoch": round(epoch + position / len(batches), 4), "loss": round(running, 4),
                "lr": optimizer.param_groups[0]["lr"], "minutes": round(elapsed / 60, 2),
                "tokens_per_s": round(tokens / max(elapsed, 1e-9)),
            }  # fmt: skip
            log.append(entry)
            if not show:
                echo(json.dumps(entry))
        if now - last_save >= save_minutes * 60:
            checkpoint()
            last_save = time.perf_counter()
    bar.close()
    final_loss = running if running is not None else loss_value
    log.append({
        "step": step, "epoch": round(epoch + position / len(batches), 4), "loss": round(final_loss, 4),
        "minutes": round(elapsed / 60, 2), "tokens_per_s": round(tokens / max(elapsed, 1e-9)),
    })  # fmt: skip
    checkpoint(final=True)
    return TrainResult(
        output, step, epoch + position / len(batches), elapsed, answer_tokens, tokens,
        final_loss, len(examples), dropped, log,
    )  # fmt: skip


def describe_result(result: TrainResult) -> str:
    return (
        f"trained {result.steps} steps ({result.epochs:.2f} passes over {result.rows:,} rows) in "
        f"{result.seconds / 60:.1f} min: {result.tokens:,} tokens ({result.answer_tokens:,} answer tokens), "
        f"final loss {result.final_loss:.3f}; checkpoint in {result.output}"
    )


def default_exclude(data: Path) -> Path | None:
    """The IMHI test sets beside the training data, when present: `test_instruction/` beside `train_instruction/`,
    or in a clone of the authors' repository `test_data/test_instruction/` for `train_data/instruction_data/`."""
    data = Path(data).resolve()
    for candidate in (data.parent / "test_instruction", data.parent.parent / "test_data" / "test_instruction"):
        if candidate.is_dir():
            return candidate
    return None
