"""Paired A/B of engine step variants against the in-process engine, in one session (docs/SERVING_PROFILE.md).

Starts one server per given `model.py` of the CPU engine step (each copied into the template before its server
starts, the template restored after), then alternates loads over them and the in-process engine, `rounds` times
per concurrency with the order flipping, and prints each side's pooled ratio (the sum of its tok/s over the rounds
over the in-process side's).

    IMHI_DIR=MentalLLaMA .venv/bin/python docs/measurements/2026-12-07b/ab.py int8 8,1 2 stub_model.py process_model.py
"""

import asyncio
import os
import shutil
import statistics
import sys
from pathlib import Path

from mentallama_bench.backends import TritonGrpcBackend
from mentallama_bench.cpu_engine_bench import _closing, imhi_prompts, run_load
from mentallama_bench.engine_backend import EngineBackend
from mentallama_bench.records import SampleRequest
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
from mentallama_server.launch.launcher import ServerOptions
from mentallama_server.launch.serve_cpu import resolve_checkpoint, start_cpu_server

TEMPLATE = Path(__file__).resolve().parents[3] / "model_repository/engines/cpu/tensorrt_llm/1/model.py"


def main(fmt: str, concurrency: str, rounds: str, *variants: str) -> None:
    cs, rounds_n = [int(c) for c in concurrency.split(",")], int(rounds)
    checkpoint = resolve_checkpoint("bench")
    samples = [SampleRequest(i, q, t, 64) for i, (t, q) in enumerate(imhi_prompts(Path(os.environ["IMHI_DIR"])))]
    settings = CpuSettings(weight_format=fmt, max_queue_size=256)
    keep = TEMPLATE.read_text()
    servers, sides = [], []
    try:
        for variant in variants:
            shutil.copy(variant, TEMPLATE)
            public = ServerOptions.on_free_ports()
            upstream = upstream_options(public)
            server = start_cpu_server(str(checkpoint), settings, upstream)
            servers.append((server, FrontDoorProcess.start(public, upstream, server.run_dir)))
            sides.append((Path(variant).name, public))
        TEMPLATE.write_text(keep)
        engine = EngineBackend(checkpoint, settings)
        sides.append(("in-process", None))
        results: dict[tuple[str, int], list[dict]] = {}
        for c in cs:
            for r in range(rounds_n):
                for name, public in sides if r % 2 == 0 else sides[::-1]:
                    if public is None:
                        run = asyncio.run(run_load(engine, samples, c))
                    else:
                        backend = TritonGrpcBackend(public.grpc_url)
                        run = asyncio.run(_closing(backend, run_load(backend, samples, c)))
                    results.setdefault((name, c), []).append(run)
                    print(f"{name:<24} c={c:<3} {run['tok_s']:7.1f} tok/s TTFT {run['ttft_p50_ms']:.1f} "
                          f"ITL {run['itl_p50_ms']:.2f} load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        for c in cs:
            base = sum(x["tok_s"] for x in results[("in-process", c)])
            for name, _ in sides:
                runs = results[(name, c)]
                ttft = statistics.median(x["ttft_p50_ms"] for x in runs)
                print(f"c={c} {name:<24} pooled ratio {sum(x['tok_s'] for x in runs) / base:.3f}  TTFT {ttft:.0f}")
        asyncio.run(engine.close())
    finally:
        TEMPLATE.write_text(keep)
        for server, door in servers:
            door.stop()
            server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
