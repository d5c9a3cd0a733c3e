"""Per-request token choice for the CPU engine, with TensorRT-LLM's semantics.

What continuous batching (CB, transformers 5.24) offers per request, and what is global:
- per request: `max_new_tokens`, `eos_token_id`, and temperature / top-k / top-p through
  `logit_processor_kwargs`, but only with `per_request_processors=True` and only for warpers the
  generation config enabled at creation (non-default value);
- global: `do_sample` (one argmax-or-multinomial for the whole batch), the random generator (one seed in
  `ContinuousBatchingConfig`), `return_logprobs`; min-length, min-new-tokens and repetition-penalty
  processors are marked unsupported and dropped; any other `generate()` processor would be applied to the
  whole batch and sees only each row's last token as `input_ids` (no history: no penalties, no bad words).
So the engine does all per-request work here instead: for each row of logits, `RequestSampler.choose`
applies, in TensorRT-LLM's order (its `batchApplyPenalty` kernel, then the ban and sampling layers):

1. temperature (sampling only: a greedy choice does not depend on it);
2. repetition / presence / frequency penalties, over every token of the sequence so far (prompt and
   output), repetition as in CTRL (divide positive logits, multiply negative ones);
3. bans: the end ids while fewer than `min_new_tokens` tokens were generated, and the last token of each
   bad word whose other tokens end the sequence;
4. greedy argmax, or top-k then top-p (nucleus over the renormalised top-k) and a draw from the request's
   own seeded `torch.Generator`.

The log-probability reported for a token is taken under the distribution it was chosen from: softmax of
the processed logits for greedy, the renormalised top-k/top-p distribution for sampling.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from .engine_types import GenerationRequest, is_greedy

__all__ = ["RequestSampler", "filter_top_k_top_p"]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Return a copy of the 1-D `logits` with everything outside the top-k, then outside the top-p nucleus of
    what is left, set to -inf. `top_k` 0 (or >= vocab) and `top_p` 0 or 1 mean no limit."""
    out = logits.clone()
    vocab = out.numel()
    if 0 < top_k < vocab:
        kth_value = torch.topk(out, top_k).values[-1]
        out[out < kth_value] = float("-inf")
    if 0.0 < top_p < 1.0:
        sorted_logits, sorted_ids = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop = mass_before >= top_p
        drop[0] = False
        out[sorted_ids[drop]] = float("-inf")
    return out


class RequestSampler:
    """Chooses the tokens of one request. Called from the generation thread only, one row at a time.

    `logprobs` grows by one entry per chosen token when the request asked for them; `error` is set (and
    the choice falls back to argmax) if processing failed, so the dispatcher can fail the request.
    """

    def __init__(self, request: GenerationRequest, end_ids: Sequence[int]) -> None:
        self.prompt_len = len(request.input_ids)
        self.greedy = is_greedy(request)
        self.temperature = request.temperature
        self.top_k = request.top_k
        self.top_p = request.top_p
        self.repetition_penalty = request.repetition_penalty
        self.presence_penalty = request.presence_penalty
        self.frequency_penalty = request.frequency_penalty
        self.min_new_tokens = request.min_new_tokens
        self.end_ids = list(end_ids)
        self.single_bad_tokens = sorted({word[0] for word in request.bad_words if len(word) == 1})
        self.bad_sequences = [list(word) for word in request.bad_words if len(word) > 1]
        self.return_log_probs = request.return_log_probs
        self.logprobs: list[float] = []
        self.error: str | None = None
        self._generator: torch.Generator | None = None
        if not self.greedy:
            seed = request.seed if request.seed is not None else secrets.randbits(63)
            self._generator = torch.Generator(device="cpu").manual_seed(seed)

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def needs_processing(self) -> bool:
        """False when argmax of the raw logits is the answer (the common greedy case): no work at all."""
        return bool(
            not self.greedy
            or self.has_penalties
            or self.return_log_probs
            or self.single_bad_tokens
            or self.bad_sequences
            or (self.min_new_tokens > 0 and self.end_ids)
        )

    def choose(self, logits: torch.Tensor, sequence: Sequence[int]) -> int:
        """Choose the next token from the 1-D float `logits`, given the whole `sequence` so far."""
        scores = logits.float()
        if not self.greedy and self.temperature != 1.0:
            scores = scores / self.temperature
        if self.has_penalties:
            scores = self._apply_penalties(scores, sequence)
        banned = self._banned_tokens(sequence, scores.numel())
        if banned:
            scores = scores.clone() if scores is logits else scores
            scores[banned] = float("-inf")
        if self.greedy:
            token = int(torch.argmax(scores))
            if self.return_log_probs:
                self.logprobs.append(float(torch.log_softmax(scores, dim=-1)[token]))
            return token
        filtered = filter_top_k_top_p(scores, self.top_k, self.top_p)
        probs = torch.softmax(filtered, dim=-1)
        if not torch.isfinite(probs).all():
            raise ValueError("every token is banned: nothing left to sample")
        token = int(torch.multinomial(probs, 1, generator=self._generator))
        if self.return_log_probs:
            self.logprobs.append(float(torch.log(probs[token])))
        return token

    def _apply_penalties(self, scores: torch.Tensor, sequence: Sequence[int]) -> torch.Tensor:
        vocab = scores.numel()
        counts = torch.bincount(torch.tensor(sequence, dtype=torch.long), minlength=vocab)[:vocab]
        present = counts > 0
        out = scores
        if self.repetition_penalty != 1.0:
            penalised = torch.where(out < 0, out * self.repetition_penalty, out / self.repetition_penalty)
            out = torch.where(present, penalised, out)
        if self.presence_penalty != 0.0:
            out = out - self.presence_penalty * present.to(out.dtype)
        if self.frequency_penalty != 0.0:
            out = out - self.frequency_penalty * counts.to(out.dtype)
        return out

    def _banned_tokens(self, sequence: Sequence[int], vocab: int) -> list[int]:
        banned: list[int] = []
        if self.end_ids and len(sequence) - self.prompt_len < self.min_new_tokens:
            banned.extend(t for t in self.end_ids if t < vocab)
        banned.extend(t for t in self.single_bad_tokens if t < vocab)
        for word in self.bad_sequences:
            prefix = word[:-1]
            if len(sequence) >= len(prefix) and list(sequence[len(sequence) - len(prefix) :]) == prefix:
                banned.append(word[-1])
        if banned and len(set(banned)) >= vocab:
            raise ValueError("every token is banned: nothing left to choose")
        return banned
