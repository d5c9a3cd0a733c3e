"""Triton's per-model statistics around loads of the cpu-engine workload (docs/SERVING_PROFILE.md): queue and
`execute()` time per request of each model, read on tritonserver's private HTTP port with the admin key.

    IMHI_DIR=MentalLLaMA .venv/bin/python docs/measurements/2026-12-07b/stats.py 8,16
"""

import asyncio
import json
import os
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

from mentallama_bench.backends import TritonGrpcBackend
from mentallama_bench.cpu_engine_bench import _closing, imhi_prompts, run_load
from mentallama_bench.records import SampleRequest
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
from mentallama_server.launch.launcher import ServerOptions
from mentallama_server.launch.serve_cpu import resolve_checkpoint, start_cpu_server

KEY = "measure"
PARTS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def stats(port: int) -> dict[str, dict[str, tuple[int, int]]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/stats", headers={"admin-key": KEY})
    models = json.load(urllib.request.urlopen(request))["model_stats"]
    return {m["name"]: {k: (m["inference_stats"][k]["count"], m["inference_stats"][k]["ns"]) for k in PARTS}
            for m in models}  # fmt: skip


def main(concurrency: str) -> None:
    checkpoint = resolve_checkpoint("bench")
    samples = [SampleRequest(i, q, t, 64) for i, (t, q) in enumerate(imhi_prompts(Path(os.environ["IMHI_DIR"])))]
    public = replace(ServerOptions.on_free_ports(), admin_key=KEY)
    upstream = upstream_options(public)
    server = start_cpu_server(str(checkpoint), CpuSettings(weight_format="int8", max_queue_size=256), upstream)
    try:
        with FrontDoorProcess.start(public, upstream, server.run_dir):
            for c in (int(c) for c in concurrency.split(",")):
                before = stats(upstream.http_port)
                backend = TritonGrpcBackend(public.grpc_url)
                run = asyncio.run(_closing(backend, run_load(backend, samples, c)))
                after = stats(upstream.http_port)
                print(f"served c={c} {run['tok_s']:.1f} tok/s TTFT {run['ttft_p50_ms']:.1f} "
                      f"ITL {run['itl_p50_ms']:.2f}")  # fmt: skip
                for model in ("mentallama", "tensorrt_llm"):
                    d = {k: (after[model][k][0] - before[model][k][0], after[model][k][1] - before[model][k][1])
                         for k in PARTS}  # fmt: skip
                    n = d["success"][0] or 1
                    print(f"   {model} n {n} " + " ".join(f"{k} {ns / n / 1e6:.1f}ms" for k, (_, ns) in d.items()
                                                         if k != "success"))  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
