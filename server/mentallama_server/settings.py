"""Settings of the CPU profile, with the reasons for each default."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class CpuSettings:
    """Everything the CPU profile's rendered configs take; every field is a `mentallama-serve` flag."""

    max_batch_size: int = 64
    """Triton `max_batch_size` of every model: > 0 as the TensorRT-LLM ensemble has it; each request is one row."""
    engine_max_batch_size: int = 32
    """Sequences decoded together; more only adds latency on a 2-core CPU."""
    cache_num_blocks: int = 512
    """KV-cache blocks; set explicitly, else transformers sizes the cache from system RAM (slow start, GBs)."""
    cache_block_size: int = 32
    """Tokens per KV-cache block (512 x 32 = 16k tokens of cache)."""
    max_batch_tokens: int = 512
    """Tokens per forward pass: bounds prefill chunks so decoding requests keep streaming."""
    num_threads: int = 0
    """Torch intra-op threads; 0 = one per core but one, which stays with tritonserver and the Python
    models (on 2 cores, 2 engine threads measured slower and far noisier than 1)."""
    dtype: str = "auto"
    """Weights dtype; `auto` uses the checkpoint's."""
    device: str = "cpu"
    """Where the engine step's model and KV cache live: `cpu`, or `cuda` / `cuda:N` where a GPU is at hand
    (the Python model itself stays a KIND_CPU instance: only its forward passes move)."""
    max_input_len: int = 2048
    """Longest prompt in tokens (capped at the model's context minus max_output_len)."""
    max_output_len: int = 1024
    """Largest `max_tokens` a request may ask for."""
    max_queue_size: int = 128
    """Requests waiting for a place in the running batch; beyond engine_max_batch_size + this, new
    requests are refused at once with UNAVAILABLE ("server overloaded") instead of queueing unboundedly."""
    preprocessing_instances: int = 1
    postprocessing_instances: int = 1
    front_max_concurrent_requests: int = 256
    """Requests the `mentallama` front model serves at once (threads blocked on the engine)."""

    def template_values(self) -> dict[str, str]:
        values = {f.name: str(getattr(self, f.name)) for f in fields(self)}
        values["max_pending_requests"] = str(self.engine_max_batch_size + self.max_queue_size)
        values["num_threads"] = str(self.num_threads or max(1, (os.cpu_count() or 2) - 1))
        return values
