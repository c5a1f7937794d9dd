#!/usr/bin/env bash
# DeepSpeed ZeRO-2 on one node (OFFLOAD=1: optimizer state and step on the CPU).
source "$(dirname "$0")/_common.sh"
usage() {
  cat <<TXT
usage: launchers/ds_single.sh TRAIN_CONFIG NUM_PROCESSES [train.py options...]
DeepSpeed ZeRO-2 (configs/accelerate/ds_zero2.yaml): optimizer state and gradients sharded over NUM_PROCESSES
GPUs, or CPU processes (gloo) without CUDA. Batch sizes, accumulation and clipping come from the train config.
  OFFLOAD=1   offload the optimizer to CPU memory (configs/accelerate/ds_zero2_offload.yaml)
Example: launchers/ds_single.sh configs/my_train.json 8
$(common_env_help)
TXT
}
parse_args ds_single.sh "$@"
yaml="$CONFIGS/ds_zero2.yaml"; [ "${OFFLOAD:-0}" = 1 ] && yaml="$CONFIGS/ds_zero2_offload.yaml"
run_launch ds_single deepspeed "$yaml" "$NPROC" --num_processes "$NPROC"
