#!/usr/bin/env bash
# The demo: set up the machine, convert the bundled SmolLM2-135M-Instruct once (cached outside the repo), and
# LoRA-fine-tune it on the four example tasks for a few minutes; prints per-task validation loss before and after.
#   bash launchers/demo.sh            # output in runs/demo
#   OUT=/tmp/demo bash launchers/demo.sh
#   MAX_STEPS=2 bash launchers/demo.sh   # a quick check: 2 optimizer steps
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then sed -n '2,6p' "$0"; exit 0; fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash init_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/demo}
# prints the model directory and nothing else on stdout (the one-time conversion reports on stderr)
MODEL=$(python -m mftcoder.model.smollm2)
# bf16 autocast where the hardware has it (CUDA, or a CPU with avx512_bf16): about 2x faster
MP=no
if python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null; then
  MP=bf16
fi
# on CPU, glibc's allocator keeps freed activation memory for the next step (launchers/malloc.env;
# MFTCODER_NO_MALLOC_TUNING=1 keeps the defaults)
if ! python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # shellcheck disable=SC1091
  source launchers/_common.sh
  cpu_allocator_env
fi
rm -rf "$OUT"; mkdir -p "$(dirname "$OUT")"
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision "$MP" --dynamo_backend no \
  mftcoder/train.py --train_config configs/demo_smollm2_lora.json \
  --pretrained_model_path "$MODEL" --output_dir "$OUT" ${MAX_STEPS:+--max_train_steps "$MAX_STEPS"} 2>&1 \
  | tee "${OUT%/}.log"
exit "${PIPESTATUS[0]}"
