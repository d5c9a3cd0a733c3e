"""What the launcher hands the front door: a JSON file in the run folder (mode 0600, so keys stay off `ps`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

ENTRY_MODELS = ("mentallama", "ensemble")
# The model that ends a request of an entry model in band (a request with `stop` true and the same id): the
# front model stops its own calls; the ensemble's engine step is stopped directly (ids propagate into it).
STOP_TARGETS = {"mentallama": "mentallama", "ensemble": "tensorrt_llm"}
API_KEYS_ENV = "MENTALLAMA_API_KEYS"


@dataclass
class FrontDoorConfig:
    upstream_grpc: str
    """host:port of tritonserver's gRPC endpoint (loopback)."""
    upstream_http: str | None = None
    """http://host:port of tritonserver's HTTP endpoint (loopback): admin APIs over HTTP are forwarded there."""
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int | None = 8000
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    """PEM CA that client certificates must chain to: mutual TLS on both protocols."""
    api_keys: list[str] = field(default_factory=list)
    """Accepted API keys (`authorization: Bearer <key>` or `x-api-key`); none: no authentication."""
    admin_key: str | None = None
    """The key admin APIs need (`admin-key` header); None closes them. Forwarded to Triton, which has the same."""
    max_in_flight: int = 512
    """Requests in flight in all (stops included); beyond, UNAVAILABLE / 503."""
    max_in_flight_per_client: int = 256
    """Requests in flight per client (connection, or API key); beyond, UNAVAILABLE / 429."""
    max_request_bytes: int = 1 << 20
    """Largest request message or HTTP body. Keeps the Python backend's shared-memory pool from growing on
    client input (16 MiB per model instance, docs/RELIABILITY.md)."""
    max_json_depth: int = 16
    max_sequences: int = 4
    """Most beams (`beam_width`) or sequences (`num_return_sequences`, OpenAI's `n`) one prompt may ask for; beyond,
    INVALID_ARGUMENT / 400 naming the field. Each holds KV cache of its own, and TensorRT-LLM bounds sampled
    sequences by nothing. The launcher sets what the served profile serves (`rendered_max_sequences`)."""
    tokenizer_dir: str | None = None
    """The served checkpoint's tokenizer folder: /v1/chat/completions renders its chat template (the LLaMA-2-chat
    format without one). The launcher reads it from the rendered `mentallama` config."""
    upstream_streams: int = 4
    """Long-lived upstream `ModelStreamInfer` streams the requests share."""

    def save(self, path: Path) -> Path:
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out)
        return path

    @classmethod
    def load(cls, path: Path) -> FrontDoorConfig:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def read_admin_key(path: Path) -> str:
    """The admin key from the first line of a file, so that it is not on a command line (the launcher's or the
    front door's); a `ValueError` names the file and what is wrong with it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    key = lines[0].strip() if lines else ""
    if not key or not key.isprintable():  # it goes into HTTP headers and gRPC metadata
        problem = "it is empty" if not key else "its first line holds control characters"
        raise ValueError(f"the admin key file {path} must start with a line of printable characters ({problem})")
    return key


def read_api_keys(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """API keys, one per line of `path` (blank lines and `#` comments skipped), and from MENTALLAMA_API_KEYS
    (comma-separated)."""
    keys = []
    if path is not None:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    env = (environ if environ is not None else dict(os.environ)).get(API_KEYS_ENV, "")
    keys += [key.strip() for key in env.split(",") if key.strip()]
    for key in keys:
        if any(c.isspace() for c in key) or not key.isprintable():
            raise ValueError("API keys must be printable and contain no spaces")
    return keys
