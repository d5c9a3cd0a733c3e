#!/usr/bin/env bash
# Put our tools (mentallama, mentallama-build, mentallama-serve and its front door, mentallama-bench) into the NGC
# TensorRT-LLM image, with their dependencies, without writing into the image: a virtual environment on a bind
# mount, made with the image's own python3 (compiled packages match it) and --system-site-packages, so the image's
# torch, transformers, tokenizers and tensorrt_llm are used as they are and never reinstalled. Works under
# Apptainer, whose image is read-only, and under Docker.
#
# What is installed: our four parts from wheels (client/, server/, engine_build/, benchmarks/; built here from the
# checkout unless --wheels names a folder of them) without their dependencies, since those pin torch, transformers
# and OpenVINO for the CPU profile; then deploy/container/ngc_requirements.txt, the dependencies the tools import
# in the GPU image, pinned as constraints.txt pins them. The last step imports every tool's entry point and runs
# each CLI's --version, so a missing package shows here, not minutes into a build or a server start.
#
# Usage: install_tools.sh --venv DIR [--image IMAGE] [--runtime apptainer|docker] [--wheels DIR] [--dry-run]
#        install_tools.sh --inside --venv DIR [--python PY] [--wheels DIR]   (already inside the image)
#   --venv DIR      where the environment goes: a folder outside the image that the jobs bind at the same path
#                   (deploy/: artifacts/ngc-venv of the checkout, ML_VENV)
#   --image IMAGE   SIF file, docker://... for Apptainer, or a Docker image (default: $ML_IMAGE or the 26.07 image)
#   --runtime R     apptainer (also singularity) or docker (default: $ML_CONTAINER_RUNTIME, else apptainer)
#   --python PY     the interpreter that makes the environment (default python3: the image's)
#   --wheels DIR    install these wheels of our parts instead of building them (offline clusters: build them
#                   where the checkout is, with `pip wheel --no-deps ./client ./server ./engine_build ./benchmarks`)
#   --dry-run       print the commands instead of running them
# Offline: pip's own environment variables reach the install (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/common.sh
source "$HERE/../lib/common.sh"

VENV=""
IMAGE=${ML_IMAGE:-docker://nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3}
RUNTIME=""
PYTHON=python3
WHEELS=""
INSIDE=0
DRY_RUN=0
PARTS=(client server engine_build benchmarks)
# Every tool's entry point: importing them is what running them needs first.
IMPORTS="import mentallama.cli, mentallama_build.cli, mentallama_build.engine_cli, mentallama_server.launch.cli, \
mentallama_server.front_door.server, mentallama_bench.cli, mentallama_bench.gpu_smoke, tritonclient.grpc, \
tritonclient.http"
TOOLS=(mentallama mentallama-build mentallama-serve mentallama-bench)

while (($#)); do
  case $1 in
    --venv) VENV=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --inside) INSIDE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) ml_usage 0 ;;
    *) echo "install_tools.sh: unknown option $1" >&2; ml_usage 2 ;;
  esac
done
[[ -n $VENV ]] || { echo "install_tools.sh: --venv DIR is required" >&2; exit 2; }
VENV=$(realpath -m "$VENV")
[[ -z $WHEELS ]] || WHEELS=$(realpath -m "$WHEELS")

run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

inside() {
  local wheel_dir=${WHEELS:-$VENV/.wheels} part tool
  ml_log "making $VENV with $PYTHON (the image's packages stay visible: --system-site-packages)"
  # --without-pip: Ubuntu-based images leave out ensurepip (python3-venv); the image's own pip, visible through
  # the system site-packages, installs into the environment all the same.
  run "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
  if [[ -z $WHEELS ]]; then
    # From a copy of the parts (and model_repository/, which the server's package links to): a build in the
    # checkout would leave build/ there, whose stale files a later wheel would carry.
    local copy sources=()
    copy=$(mktemp -d "${TMPDIR:-/tmp}/mentallama-parts.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the folder is local to this function
    trap "rm -rf '$copy'" EXIT
    run tar -C "$REPO" --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -cf "$copy/parts.tar" \
      "${PARTS[@]}" model_repository
    run tar -C "$copy" -xf "$copy/parts.tar"
    for part in "${PARTS[@]}"; do
      sources+=("$copy/$part")
    done
    run "$VENV/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$wheel_dir" "${sources[@]}"
  fi
  # Our parts without their dependencies (torch, transformers, OpenVINO are pinned for the CPU profile and the
  # image brings its own), then exactly what the tools import in the GPU image.
  local wheels=()
  if ((DRY_RUN)); then
    wheels=("$wheel_dir/mentallama-*.whl")
  else
    wheels=("$wheel_dir"/mentallama*.whl)
    ((${#wheels[@]} == 4)) || ml_die "expected the 4 wheels of our parts in $wheel_dir, found ${#wheels[@]}"
  fi
  run "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "${wheels[@]}"
  # pip then names our parts' CPU-profile dependencies (OpenVINO, nvidia-pytriton, torch) as not installed:
  # expected, the GPU image does not use them; the import check below is what must pass.
  run "$VENV/bin/python" -m pip install --quiet -r "$HERE/ngc_requirements.txt"
  run "$VENV/bin/python" -c "$IMPORTS"
  for tool in "${TOOLS[@]}"; do
    run "$VENV/bin/$tool" --version
  done
  ((DRY_RUN)) || ml_log "our tools are in $VENV/bin; run them there, inside the image (deploy/README.md)"
}

if ((INSIDE)); then
  inside
  exit 0
fi

# From the host: the same script, inside the image, with the checkout and the venv's folder bound at their paths.
RUNTIME=${RUNTIME:-$(ml_container_runtime)}
VENV_PARENT=$(dirname "$VENV")
((DRY_RUN)) || mkdir -p "$VENV_PARENT"
INNER=(bash "$HERE/install_tools.sh" --inside --venv "$VENV" --python "$PYTHON")
[[ -z $WHEELS ]] || INNER+=(--wheels "$WHEELS")
((DRY_RUN == 0)) || INNER+=(--dry-run)
BINDS=("$REPO" "$VENV_PARENT")
[[ -z $WHEELS ]] || BINDS+=("$WHEELS")
case $(basename "$RUNTIME") in
  docker)
    # As the calling user, so the environment's files are theirs; pip's cache on the bound folder.
    CMD=("$RUNTIME" run --rm --user "$(id -u):$(id -g)" -e "HOME=$VENV_PARENT" -w "$REPO")
    for dir in "${BINDS[@]}"; do
      CMD+=(-v "$dir:$dir")
    done
    CMD+=("${IMAGE#docker://}")
    ;;
  *)
    CMD=("$RUNTIME" exec)
    for dir in "${BINDS[@]}"; do
      CMD+=(--bind "$dir:$dir")
    done
    CMD+=("$IMAGE")
    ;;
esac
if ((DRY_RUN)); then
  printf '%q ' "${CMD[@]}" "${INNER[@]}"
  printf '\n'
  # The steps it runs inside the image:
  "${INNER[@]}"
  exit 0
fi
exec "${CMD[@]}" "${INNER[@]}"
