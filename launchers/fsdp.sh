#!/usr/bin/env bash
# FSDP2 on one node, wrapping the model's own decoder layers.
source "$(dirname "$0")/_common.sh"
usage() {
  cat <<TXT
usage: launchers/fsdp.sh TRAIN_CONFIG NUM_PROCESSES [train.py options...]
FSDP2 (configs/accelerate/fsdp2.yaml): parameters, gradients and optimizer state sharded per decoder layer (the
layer class is read from the model) over NUM_PROCESSES GPUs, or CPU processes (gloo) without CUDA. The final model
is gathered and saved whole.
Example: launchers/fsdp.sh configs/my_train.json 8
$(common_env_help)
TXT
}
parse_args fsdp.sh "$@"
run_launch fsdp fsdp "$CONFIGS/fsdp2.yaml" "$NPROC" --num_processes "$NPROC"
