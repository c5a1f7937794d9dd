#!/usr/bin/env bash
# One node of a multi-node run: start it on every node with the same MASTER_ADDR/MASTER_PORT/NNODES and its NODE_RANK.
source "$(dirname "$0")/_common.sh"
usage() {
  cat <<TXT
usage: launchers/multinode.sh TRAIN_CONFIG PROCESSES_PER_NODE [train.py options...]
Run this on every node; together they form NNODES x PROCESSES_PER_NODE processes.
  MASTER_ADDR   address of node 0, reachable from every node (required when NNODES > 1)
  MASTER_PORT   a free port on node 0 (default 29500)
  NNODES        number of nodes (default 1)
  NODE_RANK     this node's rank, 0 .. NNODES-1 (default 0)
  BACKEND       ds_zero2 (default) | ds_zero2_offload | ds_zero3 | ds_zero3_offload | fsdp2 | ddp
                (configs/accelerate/<BACKEND>_multinode.yaml)
The output_dir of the train config must be on storage shared by all nodes (checkpoints are written by every rank).
Example (2 nodes x 8 GPUs), on node 0 and node 1:
  MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NNODES=2 NODE_RANK=0 launchers/multinode.sh configs/my_train.json 8
  MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NNODES=2 NODE_RANK=1 launchers/multinode.sh configs/my_train.json 8
$(common_env_help)
TXT
}
parse_args multinode.sh "$@"
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}; MASTER_PORT=${MASTER_PORT:-29500}; BACKEND=${BACKEND:-ds_zero2}
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "NNODES must be a positive integer, got '$NNODES'"
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] || die "NODE_RANK must be in 0..$((NNODES - 1)), got '$NODE_RANK'"
if [ -z "${MASTER_ADDR:-}" ]; then
  [ "$NNODES" = 1 ] || die "MASTER_ADDR (the address of node 0) is required when NNODES > 1"
  MASTER_ADDR=127.0.0.1
fi
case "$BACKEND" in
  ddp) kind=ddp ;; fsdp2) kind=fsdp ;; ds_zero2|ds_zero2_offload|ds_zero3|ds_zero3_offload) kind=deepspeed ;;
  *) die "BACKEND must be one of ds_zero2, ds_zero2_offload, ds_zero3, ds_zero3_offload, fsdp2, ddp; got '$BACKEND'" ;;
esac
LOG_FILE=${LOG_FILE:-logs/multinode-node$NODE_RANK-$(date +%Y%m%d-%H%M%S).log}
run_launch "multinode-$BACKEND" "$kind" "$CONFIGS/${BACKEND}_multinode.yaml" "$NPROC" \
  --num_machines "$NNODES" --machine_rank "$NODE_RANK" --num_processes "$((NNODES * NPROC))" \
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT"
