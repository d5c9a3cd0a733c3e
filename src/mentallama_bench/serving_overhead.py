"""Cost of serving: output tokens/s through Triton (gRPC streaming) vs. the same engine in-process.

Starts the CPU profile on free loopback ports, then `mentallama-bench --compare-engine` runs the same
synthetic load (fixed prompt and output lengths, same seed) against the served `mentallama` model and
against `CpuEngine` built with the server's own settings, one concurrency at a time, and prints the
served/in-process ratios measured in this one run (`make bench`).

    python src/mentallama_bench/serving_overhead.py --model bench --concurrency 1,4,16 --requests 32 --output-len 128

Short answers make a CPU engine prefill-bound, where concurrency buys little: the README shows both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mentallama_bench.cli import main as bench_main
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import ServerOptions, free_port
from mentallama_server.launch.serve_cpu import resolve_checkpoint, start_cpu_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench", help="tiny, bench or a checkpoint folder")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=32, help="measured requests per concurrency")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--output", type=Path, default=Path("results/serving_overhead"))
    args = parser.parse_args(argv)

    checkpoint = resolve_checkpoint(args.model)
    opts = ServerOptions(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server = start_cpu_server(str(checkpoint), CpuSettings(), opts)
    try:
        sys.argv = [
            "mentallama-bench",
            f"--endpoint=127.0.0.1:{opts.grpc_port}",
            f"--metrics-url=http://127.0.0.1:{opts.metrics_port}/metrics",
            f"--concurrency={args.concurrency}",
            f"--requests={args.requests}",
            f"--input-len={args.input_len}",
            f"--output-len={args.output_len}",
            "--force-output-len",
            f"--tokenizer={checkpoint}",
            "--compare-engine",
            f"--checkpoint={checkpoint}",
            f"--output={args.output}",
            "--no-progress",
        ]
        bench_main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
