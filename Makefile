# MentaLLaMA serving: `make run` sets up and serves a sample analysis; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= nano
# Ports of `make run` / `make serve` (mentallama-serve's defaults); e.g. `make serve GRPC_PORT=9001 HTTP_PORT=9000
# METRICS_PORT=9002`. Keeping metrics at the gRPC port + 1 lets `mentallama-bench` find the metrics page itself.
GRPC_PORT    ?= 8001
HTTP_PORT    ?= 8000
METRICS_PORT ?= 8002
PORTS := --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)
PYTEST_ARGS ?=

.PHONY: setup run serve test test-fast lint checkpoints bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installs every part editable (client/, server/ with its build extra, engine_build/, benchmarks/) and the test
# tools, all under the one pin list (constraints.txt); re-runs when a pyproject or a pin changes.
PARTS_INSTALLED := client/pyproject.toml server/pyproject.toml engine_build/pyproject.toml benchmarks/pyproject.toml
$(VENV)/.installed: $(PARTS_INSTALLED) constraints.txt tests/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ./client -e ./engine_build -e "./server[build]" \
		-e ./benchmarks -r tests/requirements.txt
	@# optimum-intel pulls in torchvision, whose PyPI build does not load beside the pinned torch and then breaks
	@# `import transformers` ("operator torchvision::nms does not exist"); nothing here uses it.
	$(BIN)/python -m pip uninstall --quiet --yes torchvision
	$(BIN)/python -c "import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var('Py_ENABLE_SHARED') else 'this Python has no shared libpython, which the Triton Python-backend stub needs (see README)')"
	touch $@

setup: $(VENV)/.installed

checkpoints: setup
	$(BIN)/mentallama-build tiny --output artifacts/checkpoints/tiny
	$(BIN)/mentallama-build tiny --size bench --output artifacts/checkpoints/bench

run: setup
	$(BIN)/mentallama-serve --profile cpu --checkpoint $(MODEL) $(PORTS) --demo

serve: setup
	$(BIN)/mentallama-serve --profile cpu --checkpoint $(MODEL) $(PORTS)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The tier that starts no server, builds nothing and installs nothing: model logic on the stubbed Triton
# utils, the SDK on its fake transport, parsing, configs. Under a minute on 2 cores.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not server and not slow and not install" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

# IMHI: a clone of the MentaLLaMA authors' repository (git clone --depth 1 https://github.com/SteveKGYang/MentalLLaMA).
IMHI ?= MentalLLaMA
bench: setup
	$(BIN)/mentallama-bench cpu-engine --checkpoint bench --imhi-dir $(IMHI) --weight-formats int8,fp16

clean:
	rm -rf artifacts/runs .pytest_cache
