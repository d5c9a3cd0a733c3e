"""Train a LLaMA-2-style SentencePiece BPE tokenizer and write it in the Hugging Face LLaMA folder layout.

The files match what a real LLaMA-2-chat / MentaLLaMA folder holds (`tokenizer.model`,
`tokenizer_config.json`, `special_tokens_map.json`, `tokenizer.json`), so `AutoTokenizer.from_pretrained`
treats ours exactly like theirs.
Training is deterministic: one thread, no sentence sampling or shuffling, a fixed RNG seed, and the corpus is
passed as an iterator so no temporary file path ends up in the serialized trainer spec.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

from mentallama_build.corpus import DEFAULT_SEED, generate_corpus

__all__ = [
    "BOS_ID",
    "BOS_TOKEN",
    "DEFAULT_VOCAB_SIZE",
    "EOS_ID",
    "EOS_TOKEN",
    "LLAMA2_CHAT_TEMPLATE",
    "UNK_ID",
    "UNK_TOKEN",
    "TOKENIZER_FILES",
    "train_sentencepiece",
    "write_json",
    "write_tokenizer",
]

UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# The synthetic corpus saturates a little above 4k BPE pieces; 4000 trains in well under a second.
DEFAULT_VOCAB_SIZE = 4000
CORPUS_SENTENCES = 20_000
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")

# The template shipped with meta-llama/Llama-2-*-chat-hf: BOS before every [INST], EOS after every answer,
# the system prompt folded into the first user turn.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# LLaMA-2's own trainer settings where they matter for behaviour (byte fallback, digits split one by one,
# whitespace kept verbatim, no NFKC normalisation), plus the settings that make training reproducible.
_TRAINER_SETTINGS: dict[str, Any] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "character_coverage": 0.9995,
    "max_sentence_length": 16384,
    "unk_id": UNK_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "pad_id": -1,  # LLaMA-2 has no pad piece
    "num_threads": 1,
    "input_sentence_size": 0,  # use every sentence: no sampling
    "shuffle_input_sentence": False,
    "minloglevel": 2,
}


def train_sentencepiece(vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = DEFAULT_SEED) -> bytes:
    """Train on the synthetic corpus and return the serialized `tokenizer.model` bytes."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=generate_corpus(CORPUS_SENTENCES, seed=seed),
        model_writer=model,
        vocab_size=vocab_size,
        **_TRAINER_SETTINGS,
    )
    return model.getvalue()


def write_json(path: Path, payload: Any) -> None:
    """Stable JSON: sorted keys, fixed indent, UTF-8, trailing newline (byte-identical across builds)."""
    path.write_text(
        json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _special_token(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _tokenizer_config(model_max_length: int) -> dict[str, Any]:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(token_id): {**_special_token(token), "special": True}
            for token_id, token in ((UNK_ID, UNK_TOKEN), (BOS_ID, BOS_TOKEN), (EOS_ID, EOS_TOKEN))
        },
        "bos_token": BOS_TOKEN,
        "chat_template": LLAMA2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        # legacy=True: every text chunk after a special token gets SentencePiece's dummy prefix, so
        # "<s>[INST] ..." tokenizes exactly like Meta's reference `[BOS] + sp.encode("[INST] ...")`.
        # legacy=False would drop the "▁" before "[INST]", a sequence LLaMA-2-chat never saw in training.
        "legacy": True,
        "model_max_length": model_max_length,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK_TOKEN,
        "use_default_system_prompt": False,
    }


def _special_tokens_map() -> dict[str, Any]:
    return {
        "bos_token": _special_token(BOS_TOKEN),
        "eos_token": _special_token(EOS_TOKEN),
        "unk_token": _special_token(UNK_TOKEN),
    }


def _tokenizer_json(folder: Path) -> str:
    """Serialize the fast tokenizer transformers derives from `tokenizer.model` in `folder`.

    Shipping it spares every load the SentencePiece conversion and pins the exact merges the server uses.
    """
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(folder)
    return tokenizer.backend_tokenizer.to_str(pretty=True) + "\n"


def write_tokenizer(output: Path, model_proto: bytes, model_max_length: int) -> int:
    """Write the four tokenizer files into `output`; return the vocabulary size (rows the embedding needs)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    if (processor.unk_id(), processor.bos_id(), processor.eos_id(), processor.pad_id()) != (
        UNK_ID,
        BOS_ID,
        EOS_ID,
        -1,
    ):
        raise ValueError(
            "tokenizer.model does not use LLaMA-2's special ids (<unk>=0, <s>=1, </s>=2, no pad)"
        )
    with tempfile.TemporaryDirectory(prefix="spm-") as staging_name:
        # Convert in a folder of its own: a stale tokenizer.json in `output` must not be read back.
        staging = Path(staging_name)
        for folder in (staging, output):
            (folder / "tokenizer.model").write_bytes(model_proto)
            write_json(folder / "tokenizer_config.json", _tokenizer_config(model_max_length))
            write_json(folder / "special_tokens_map.json", _special_tokens_map())
        (output / "tokenizer.json").write_text(_tokenizer_json(staging), encoding="utf-8")
    return processor.get_piece_size()
