#!/usr/bin/env bash
# DDP on one node: every process holds the whole model; gradients are all-reduced.
source "$(dirname "$0")/_common.sh"
usage() {
  cat <<TXT
usage: launchers/ddp.sh TRAIN_CONFIG NUM_PROCESSES [train.py options...]
Data-parallel training (configs/accelerate/ddp.yaml) on NUM_PROCESSES GPUs, or CPU processes (gloo) without CUDA.
Global batch = per_device_train_batch_size x gradient_accumulation_steps x NUM_PROCESSES (from the train config).
Example: launchers/ddp.sh configs/my_train.json 8
         launchers/ddp.sh configs/my_train.json 2 --max_train_steps 10
$(common_env_help)
TXT
}
parse_args ddp.sh "$@"
run_launch ddp ddp "$CONFIGS/ddp.yaml" "$NPROC" --num_processes "$NPROC"
