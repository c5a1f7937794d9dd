#!/usr/bin/env bash
# DeepSpeed ZeRO-3 on one node (OFFLOAD=1: parameters and optimizer on the CPU).
source "$(dirname "$0")/_common.sh"
usage() {
  cat <<TXT
usage: launchers/ds_zero3.sh TRAIN_CONFIG NUM_PROCESSES [train.py options...]
DeepSpeed ZeRO-3 (configs/accelerate/ds_zero3.yaml): parameters, gradients and optimizer state sharded over
NUM_PROCESSES GPUs, or CPU processes (gloo) without CUDA. The final model (or LoRA adapter) is gathered and saved
whole. Batch sizes, accumulation and clipping come from the train config.
  OFFLOAD=1   offload parameters and optimizer to CPU memory (configs/accelerate/ds_zero3_offload.yaml)
Example: launchers/ds_zero3.sh configs/my_train.json 8
$(common_env_help)
TXT
}
parse_args ds_zero3.sh "$@"
yaml="$CONFIGS/ds_zero3.yaml"; [ "${OFFLOAD:-0}" = 1 ] && yaml="$CONFIGS/ds_zero3_offload.yaml"
run_launch ds_zero3 deepspeed "$yaml" "$NPROC" --num_processes "$NPROC"
