#!/usr/bin/env bash
# Build a checkpoint's OpenVINO engine once, into a folder every replica and every job shares:
# ENGINE_ROOT/<checkpoint>-<options>-<digest>/, the name `ensure_engine` gives it under artifacts/engines/
# (digest of the checkpoint's content and the build options). A folder whose manifest matches the checkpoint
# is reused as is. Otherwise one builder at a time runs `mentallama-build openvino` inside the CPU image; the
# others wait on a lock folder (mkdir is atomic on NFS, Lustre and GPFS, where flock may be unsupported or
# node-local) and reuse the result. A lock whose owner is gone (its PID on this host, or its Slurm job) is
# broken. Prints the engine folder as the last line of stdout; progress goes to stderr.
#
# Usage: build_cpu_engine.sh --checkpoint DIR [options]
#   --checkpoint DIR      Hugging Face LLaMA-2 folder (MentaLLaMA-chat-7B, ...)
#   --engine-root DIR     shared folder of engines (default: $ENGINE_ROOT, else artifacts/engines)
#   --weight-format F     int8 (default), int4, fp16 or fp32
#   --group-size N        int4 only (default 128)
#   --ratio R             int4 only: share of layers in int4, the rest int8 (default 1.0)
#   --image IMAGE         the CPU image (default: $ML_IMAGE or artifacts/mentallama-cpu.sif)
#   --bind DIR            another folder bound at the same path (repeat)
#   --lock-timeout S      longest wait for another builder of the same engine (default 14400)
#   --dry-run             check the options, print the build command and the engine folder; build nothing
set -euo pipefail

REPO=${MENTALLAMA_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../lib/common.sh
source "$REPO/deploy/lib/common.sh"
# shellcheck source=../lib/cpu.sh
source "$REPO/deploy/lib/cpu.sh"

CHECKPOINT=""
ENGINE_ROOT=${ENGINE_ROOT:-$REPO/artifacts/engines}
WEIGHT_FORMAT=int8
GROUP_SIZE=""
RATIO=""
IMAGE=$(ml_cpu_image)
BINDS=()
LOCK_TIMEOUT_S=14400
DRY_RUN=0
HAVE_LOCK=0

while (($#)); do
  case $1 in
    --checkpoint) CHECKPOINT=$2; shift 2 ;;
    --engine-root) ENGINE_ROOT=$2; shift 2 ;;
    --weight-format) WEIGHT_FORMAT=$2; shift 2 ;;
    --group-size) GROUP_SIZE=$2; shift 2 ;;
    --ratio) RATIO=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --bind) BINDS+=("$2"); shift 2 ;;
    --lock-timeout) LOCK_TIMEOUT_S=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) ml_usage 0 ;;
    *) echo "build_cpu_engine.sh: unknown option $1" >&2; ml_usage 2 ;;
  esac
done

[[ -n $CHECKPOINT ]] || { echo "build_cpu_engine.sh: --checkpoint is required" >&2; exit 2; }
[[ -d $CHECKPOINT ]] || { echo "build_cpu_engine.sh: no checkpoint folder $CHECKPOINT" >&2; exit 2; }
CHECKPOINT=$(cd "$CHECKPOINT" && pwd -P)
((DRY_RUN)) || mkdir -p "$ENGINE_ROOT"
ml_cpu_container "$IMAGE" "$CHECKPOINT" "$ENGINE_ROOT" "${BINDS[@]}"

# The folder name, from mentallama_build's own cached_engine_dir (options checked first).
NAME_PY='import sys
from pathlib import Path
from mentallama_build.openvino_build import OpenVinoOptions, cached_engine_dir, option_problems
ckpt, fmt, group, ratio = sys.argv[1:5]
opts = OpenVinoOptions(fmt, int(group) if group else None, float(ratio) if ratio else None)
problems = option_problems(opts)
if problems:
    sys.exit("\n".join(problems))
print(cached_engine_dir(Path(ckpt), opts).name)'
# Exit 0 when ENGINE matches CHECKPOINT (manifest, file digests); with "loud", say why not.
VERIFY_PY='import sys
from pathlib import Path
from mentallama_build.openvino_build import verify_engine
problems = verify_engine(Path(sys.argv[1]), Path(sys.argv[2]))
if problems and sys.argv[3] == "loud":
    print("\n".join("  - " + p for p in problems), file=sys.stderr)
sys.exit(1 if problems else 0)'

NAME=$(ml_cpu_python "$NAME_PY" "$CHECKPOINT" "$WEIGHT_FORMAT" "$GROUP_SIZE" "$RATIO") \
  || ml_die "invalid build options (see above)"
ENGINE="$ENGINE_ROOT/$NAME"
LOCK="$ENGINE_ROOT/.$NAME.lock"

BUILD=(mentallama-build openvino --checkpoint "$CHECKPOINT" --output "$ENGINE" --weight-format "$WEIGHT_FORMAT")
[[ -z $GROUP_SIZE ]] || BUILD+=(--group-size "$GROUP_SIZE")
[[ -z $RATIO ]] || BUILD+=(--ratio "$RATIO")

engine_ok() {
  ml_cpu_python "$VERIFY_PY" "$ENGINE" "$CHECKPOINT" "${1:-quiet}"
}

if ((DRY_RUN)); then
  printf '%q ' "${ML_CPU_CONTAINER[@]}" "${BUILD[@]}"
  printf '\n%s\n' "$ENGINE"
  exit 0
fi
if engine_ok; then
  ml_log "reusing the engine $ENGINE"
  echo "$ENGINE"
  exit 0
fi

lock_owner() {
  cat "$LOCK/owner" 2>/dev/null || true
}

# True when the lock's owner ("host pid slurm-job") is gone: its PID on this host has exited, or Slurm no
# longer knows its job (scancel or a time limit ended it before its teardown could remove the lock).
lock_stale() {
  local owner host pid job state
  owner=$(lock_owner)
  read -r host pid job <<<"$owner"
  [[ -n ${pid:-} ]] || return 1 # being created right now
  if [[ $host == "$(hostname)" ]] && ! kill -0 "$pid" 2>/dev/null; then
    return 0
  fi
  if [[ ${job:--} != - ]] && command -v squeue >/dev/null 2>&1; then
    state=$(squeue -h -j "$job" -o %T 2>&1 || true)
    [[ -z $state || $state == *"Invalid job id"* ]] && return 0
  fi
  return 1
}

release_lock() {
  if ((HAVE_LOCK)); then
    rm -rf "$LOCK"
    HAVE_LOCK=0
  fi
}

acquire_lock() {
  local start=$SECONDS said=-60 owner
  until mkdir "$LOCK" 2>/dev/null; do
    owner=$(lock_owner)
    if lock_stale; then
      # Break it only if it still has the owner judged gone (another waiter may have taken it meanwhile).
      if [[ $(lock_owner) == "$owner" ]]; then
        ml_log "removing the stale build lock $LOCK (owner '$owner' is gone)"
        rm -rf "$LOCK"
      fi
      continue
    fi
    ((SECONDS - start < LOCK_TIMEOUT_S)) \
      || ml_die "waited ${LOCK_TIMEOUT_S}s for '$owner' to build $ENGINE; remove $LOCK if that builder is gone"
    if ((SECONDS - said >= 60)); then
      ml_log "waiting for '$owner' to finish building $ENGINE"
      said=$SECONDS
    fi
    sleep "$ML_POLL_S"
  done
  HAVE_LOCK=1
  printf '%s %s %s\n' "$(hostname)" "$$" "${SLURM_JOB_ID:--}" >"$LOCK/owner"
}

ml_install_traps
trap 'ml_cleanup; release_lock' EXIT
acquire_lock
if engine_ok; then
  ml_log "reusing the engine $ENGINE (built while this job waited)"
else
  ml_log "building $ENGINE (a 7B export takes minutes and tens of GB of memory)"
  # In the background so that SIGTERM reaches the trap (and the build) at once.
  "${ML_CPU_CONTAINER[@]}" "${BUILD[@]}" >&2 &
  ml_track "$!"
  status=0
  wait "$!" || status=$?
  ((status == 0)) || ml_die "mentallama-build openvino failed with status $status"
  engine_ok loud || ml_die "the new engine $ENGINE does not match $CHECKPOINT"
fi
release_lock
echo "$ENGINE"
