# Shared by the launchers (sourced, not run). Builds one `accelerate launch` command for CPU (gloo) or CUDA (NCCL),
# prints it, and runs it with its output going to the terminal and to a log file.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIGS="$ROOT/configs/accelerate"
PYTHON=${PYTHON:-$(command -v python || command -v python3)}

common_env_help() {
  cat <<'TXT'
Environment (all optional):
  DEVICE=auto|cpu|cuda   where to run (auto: cuda when torch sees a GPU)
  MIXED_PRECISION=no|bf16|fp16
                         default bf16 on CUDA (fp16 where bf16 is unsupported), no on CPU
  OMP_NUM_THREADS=N      threads per process (default: CPU cores / processes on this node)
  MASTER_PORT=P          rendezvous port (default: the one in the accelerate config; each config has its own)
  ACCELERATE_CONFIG=F    use this accelerate yaml instead of the one under configs/accelerate/
  LOG_FILE=F             log file (default: logs/<launcher>-<date>.log); output also goes to the terminal
  MFTCODER_NO_MALLOC_TUNING=1
                         on CPU, keep glibc's default allocator settings (default: launchers/malloc.env)
  DRY_RUN=1              print the device, switches and command, run nothing
  PYTHON=P               python of the environment mftcoder is installed in
TXT
}

die() { echo "error: $*" >&2; exit 2; }

# cpu_allocator_env: on CPU, export glibc's allocator settings from launchers/malloc.env (each only where the caller
# has not set it), unless MFTCODER_NO_MALLOC_TUNING=1; see benchmarks/README.md for what they buy
cpu_allocator_env() {
  [ "${MFTCODER_NO_MALLOC_TUNING:-0}" = 1 ] && return 0
  local key value
  while IFS='=' read -r key value; do
    key=${key%%#*}; key=${key//[[:space:]]/}
    [ -n "$key" ] || continue
    value=${value%%#*}; value=${value//[[:space:]]/}
    [ -n "${!key:-}" ] || export "$key=$value"
  done < "$(dirname "${BASH_SOURCE[0]}")/malloc.env"
}

# parse_args <name> "$@": sets CFG, NPROC and EXTRA (train.py arguments after the first two)
parse_args() {
  local name=$1; shift
  case "${1:-}" in -h|--help) usage; exit 0 ;; esac
  [ $# -ge 2 ] || { usage >&2; die "$name needs a train config and a process count"; }
  CFG=$1; NPROC=$2; shift 2
  EXTRA=("$@")
  [ -f "$CFG" ] || die "train config not found: $CFG"
  [[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "process count must be a positive integer, got '$NPROC'"
}

detect_device() {
  DEVICE=${DEVICE:-auto}
  if [ "$DEVICE" = auto ]; then
    if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      DEVICE=cuda
    else
      DEVICE=cpu
    fi
  fi
  case "$DEVICE" in cpu|cuda) ;; *) die "DEVICE must be auto, cpu or cuda, got '$DEVICE'" ;; esac
  if [ -z "${MIXED_PRECISION:-}" ]; then
    if [ "$DEVICE" = cuda ]; then
      MIXED_PRECISION=$("$PYTHON" -c 'import torch; print("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16")')
    else
      MIXED_PRECISION=no
    fi
  fi
}

# run_launch <launcher name> <kind: ddp|deepspeed|fsdp> <accelerate yaml> <processes per node> [accelerate args...]
run_launch() {
  local name=$1 kind=$2 yaml=${ACCELERATE_CONFIG:-$3} per_node=$4; shift 4
  [ -f "$yaml" ] || die "accelerate config not found: $yaml"
  detect_device
  local cores; cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN || echo 1)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / per_node > 0 ? cores / per_node : 1 ))}
  export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
  local args=(--config_file "$yaml" --mixed_precision "$MIXED_PRECISION" "$@")
  # ACCELERATE_USE_CPU is ours to decide: on CUDA it would move training to the CPU, and it switches DeepSpeed off
  unset ACCELERATE_USE_CPU
  if [ "$DEVICE" = cpu ]; then
    cpu_allocator_env
    case "$kind" in
      # accelerate's --cpu starts one process; gloo DDP/FSDP2 need the multi-GPU launcher with CPU tensors
      ddp) export ACCELERATE_USE_CPU=true; [[ " $* " == *" --num_processes 1 "* ]] || args+=(--multi_gpu) ;;
      fsdp) export ACCELERATE_USE_CPU=true ;;
      # DeepSpeed on CPU: the training processes choose its CPU accelerator themselves (mftcoder/runtime.py); set
      # here only so that accelerate's launcher process, which imports DeepSpeed before any of our code runs, is quiet
      deepspeed) export DS_ACCELERATOR=cpu ;;
    esac
  fi
  [ -n "${MASTER_PORT:-}" ] && [[ " $* " != *" --main_process_port "* ]] && args+=(--main_process_port "$MASTER_PORT")
  local cmd=("$PYTHON" -m accelerate.commands.launch "${args[@]}"
             "$ROOT/mftcoder/train.py" --train_config "$CFG" "${EXTRA[@]}")
  if [ "${DRY_RUN:-0}" = 1 ]; then  # show what would run, and with which switches
    echo "DEVICE=$DEVICE MIXED_PRECISION=$MIXED_PRECISION OMP_NUM_THREADS=$OMP_NUM_THREADS"
    echo "ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-} DS_ACCELERATOR=${DS_ACCELERATOR:-}"
    echo "MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-}"
    echo "${cmd[*]}"
    return 0
  fi
  LOG_FILE=${LOG_FILE:-logs/$name-$(date +%Y%m%d-%H%M%S).log}
  mkdir -p "$(dirname "$LOG_FILE")"
  {
    echo "# $(date -Is) $name on $DEVICE (mixed precision $MIXED_PRECISION, OMP_NUM_THREADS=$OMP_NUM_THREADS)"
    echo "# ${cmd[*]}"
  } | tee -a "$LOG_FILE"
  set +e
  # tee -i: a Ctrl-C must not kill the log while the workers save their checkpoint and say how to resume
  "${cmd[@]}" 2>&1 | tee -i -a "$LOG_FILE"
  local rc=${PIPESTATUS[0]}
  set -e
  echo "# exit status $rc; log: $LOG_FILE" | tee -a "$LOG_FILE"
  return "$rc"
}
