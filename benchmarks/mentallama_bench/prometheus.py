"""Server-side view of a run: Prometheus text metrics scraped before and after, then diffed.

Generic on purpose: every metric family whose samples changed during the run is reported (Triton's
`nv_*` families and whatever counters an engine adds later), and Triton's per-model counters are
also condensed into per-request averages. Counters and histogram/summary parts are reported as
deltas; gauges as their value before and after.
"""

from __future__ import annotations

import math
import re
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MetricsSnapshot",
    "diff_snapshots",
    "parse_exposition",
    "scrape",
    "triton_model_stats",
]

Labels = tuple[tuple[str, str], ...]
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


@dataclass
class MetricsSnapshot:
    """Every sample of one scrape, keyed by (sample name, sorted labels)."""

    url: str = ""
    taken_at: float = 0.0
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)  # family -> counter/gauge/histogram/summary
    helps: dict[str, str] = field(default_factory=dict)

    def family_of(self, name: str) -> str:
        """`x_bucket` belongs to family `x` when `x` is a declared histogram (and so on)."""
        if name in self.types:
            return name
        for suffix in _SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and base in self.types:
                return base
        return name

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.samples.items() if n == name and want <= set(lab))


def _unescape(value: str) -> str:
    return value.replace(r"\\", "\x00").replace(r"\"", '"').replace(r"\n", "\n").replace("\x00", "\\")


def _parse_labels(text: str) -> Labels:
    labels, pos = [], 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            raise ValueError(f"bad labels: {text!r}")
        labels.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    return tuple(sorted(labels))


def parse_exposition(text: str, url: str = "") -> MetricsSnapshot:
    """Parse the Prometheus text exposition format (what Triton serves on :8002/metrics)."""
    snap = MetricsSnapshot(url=url, taken_at=time.time())
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP"):
                target = snap.types if parts[1] == "TYPE" else snap.helps
                target[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            label_text, _, rest = rest.rpartition("}")
            labels = _parse_labels(label_text)
        else:
            name, _, rest = line.partition(" ")
            labels = ()
        value_text = rest.split()[0]  # an optional timestamp may follow
        snap.samples[(name.strip(), labels)] = float(value_text)
    return snap


def scrape(url: str, timeout_s: float = 5.0) -> MetricsSnapshot:
    """GET and parse; raises `OSError`/`ValueError` on failure (the runner records it)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - URL given by the user
        return parse_exposition(resp.read().decode("utf-8", "replace"), url)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def diff_snapshots(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, Any]:
    """Every family with at least one changed (or new) sample: type, help and the changed samples."""
    families: dict[str, Any] = {}
    for key, new in sorted(after.samples.items()):
        old = before.samples.get(key, 0.0)
        same = old == new or (math.isnan(old) and math.isnan(new))
        if same and key in before.samples:
            continue
        name, labels = key
        family = after.family_of(name)
        kind = after.types.get(family, "untyped")
        entry = families.setdefault(
            family, {"type": kind, "help": after.helps.get(family, ""), "samples": []}
        )
        sample: dict[str, Any] = {
            "name": name,
            "labels": dict(labels),
            "before": _num(old),
            "after": _num(new),
        }
        if kind != "gauge":
            sample["delta"] = _num(new - old)
        entry["samples"].append(sample)
    return families


def triton_model_stats(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, dict[str, Any]]:
    """Per `model/version`: request counts and average per-request times over the run (ms).

    Triton's duration counters are cumulative microseconds over requests, so the average of a run is
    delta(duration) / delta(requests). A decoupled Python model's `execute()` returns before its
    responses are all sent, so for `mentallama` and the CPU `tensorrt_llm` these averages measure the
    hand-off (queueing, input handling), not the generation; client-side latencies measure the rest.
    """
    models = {
        (dict(lab).get("model", ""), dict(lab).get("version", ""))
        for (name, lab) in after.samples
        if name.startswith("nv_inference_") and "model" in dict(lab)
    }

    def delta(name: str, model: str, version: str) -> float:
        return after.value(name, model=model, version=version) - before.value(
            name, model=model, version=version
        )

    stats: dict[str, dict[str, Any]] = {}
    for model, version in sorted(models):
        success = delta("nv_inference_request_success", model, version)
        failure = delta("nv_inference_request_failure", model, version)
        requests = success + failure
        if requests == 0 and delta("nv_inference_count", model, version) == 0:
            continue

        def per_request_ms(name: str, model: str = model, version: str = version, requests: float = requests):
            present = any(n == name and ("model", model) in lab for (n, lab) in after.samples)
            return delta(name, model, version) / requests / 1000.0 if present and requests > 0 else None

        stats[f"{model}/{version}"] = {
            "request_success": int(success),
            "request_failure": int(failure),
            "inference_count": int(delta("nv_inference_count", model, version)),
            "execution_count": int(delta("nv_inference_exec_count", model, version)),
            "avg_request_ms": per_request_ms("nv_inference_request_duration_us"),
            "avg_queue_ms": per_request_ms("nv_inference_queue_duration_us"),
            "avg_compute_input_ms": per_request_ms("nv_inference_compute_input_duration_us"),
            "avg_compute_infer_ms": per_request_ms("nv_inference_compute_infer_duration_us"),
            "avg_compute_output_ms": per_request_ms("nv_inference_compute_output_duration_us"),
        }
    return stats
