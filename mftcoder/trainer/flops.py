"""Model FLOPs of a training step and model FLOPs utilisation (MFU); the formula is written out in docs/performance.md.

Counted per real (non-padding) token, from the model's config:
- matmuls: 2 FLOPs per multiply-add of every weight a token passes through: q, k, v, o projections, the MLP (gated:
  3 matrices, else 2; MoE: the router and the top-k experts only, plus a shared expert), and the output head over
  every position (lm_head, tied or not; the embedding lookup is not a matmul and costs nothing);
- attention: QK^T and (softmax)V, 2 x head_dim FLOPs per (query, key) pair and query head each; a causal sample of
  n tokens has n(n+1)/2 pairs, and in a packed row each sample attends only to itself, so the pairs are summed per
  sample (from `sample_ids`), not per row;
- training = forward + backward. Full fine-tuning: backward = 2 x forward (activation and weight gradients).
  Frozen base (LoRA/QLoRA): the base's matmuls need only activation gradients (1 x forward), attention still needs
  2 x, the adapters (and a trained lm_head) 2 x.
This is "model FLOPs" as in the PaLM paper: what the model needs, whatever the implementation does. Recomputation
(gradient checkpointing), padding and the chunked cross entropy projecting only labelled positions change the work
done, not the count.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

from mftcoder.config import ConfigError

log = logging.getLogger("mftcoder")

PEAK_ENV = "MFTCODER_PEAK_TFLOPS"  # the dense bf16/fp16 peak (TFLOP/s) of a GPU the table does not know

# Dense (no 2:4 sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' datasheets (which print the
# sparse figure, twice these). Matched in order against torch.cuda.get_device_name(); None: a variant whose peak
# differs from its family's and is not in the table (MFU omitted rather than wrong).
PEAK_TFLOPS: tuple[tuple[str, Optional[float]], ...] = (
    (r"\bMIG\b", None),              # a MIG slice has a fraction of the GPU's peak
    (r"\bH100 NVL\b", None),
    (r"\bH200 NVL\b", None),
    (r"\bH100 PCIe\b", 756.0),
    (r"\bH100\b", 989.0),            # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (r"\bH200\b", 989.0),            # SXM
    (r"\bA100\b", 312.0),            # SXM4 and PCIe, 40 and 80 GB
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"RTX 4090 (D|Laptop)\b", None),
    (r"\bRTX 4090\b", 165.0),        # GeForce: bf16 with fp32 accumulation (training); fp16-accumulate is 2x
)


def table_peak(device_name: str) -> Optional[float]:
    """The dense bf16/fp16 peak (TFLOP/s) of a GPU by its name, None when the table does not know it."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def peak_tflops(device: Any, mixed_precision: str) -> Optional[float]:
    """The peak MFU is measured against on this device: CUDA with bf16/fp16 training, a GPU the table knows or
    MFTCODER_PEAK_TFLOPS set; None otherwise (CPU, fp32, fp8, an unknown GPU)."""
    device = torch.device(device)
    if device.type != "cuda" or mixed_precision not in ("bf16", "fp16"):
        return None
    override = os.environ.get(PEAK_ENV)
    if override:
        try:
            value = float(override)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ConfigError(f"{PEAK_ENV}={override!r}: expected the GPU's dense bf16/fp16 peak in TFLOP/s, "
                             "a positive number such as 989")
        return value
    return table_peak(torch.cuda.get_device_name(device))


# --- the model's FLOPs per token --------------------------------------------------------------------------------------

NON_GATED_MLP = frozenset({"gpt2", "gpt_bigcode", "starcoder2", "gpt_neox", "gptj", "codegen", "opt", "bloom",
                           "falcon", "phi"})  # 2 MLP matrices (up, down); the rest (Llama family) are gated: 3


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs of one token, split by how the backward treats them."""

    base: float          # matmuls of the frozen-or-not base weights and the head, per token
    head: float          # of which the output head (lm_head / score), per token
    attn_per_pair: float  # QK^T + AV over all layers, per causal (query, key) pair
    adapters: float = 0.0  # LoRA matmuls, per token
    frozen_base: bool = False
    head_trained: bool = True

    def training(self, tokens: float, pairs: float) -> float:
        """Training FLOPs of `tokens` real tokens whose samples hold `pairs` causal (query, key) pairs in all."""
        attn = self.attn_per_pair * pairs
        if not self.frozen_base:
            return 3.0 * (self.base * tokens + attn)
        head_extra = self.head * tokens if self.head_trained else 0.0  # its weight gradient
        return 2.0 * self.base * tokens + head_extra + 3.0 * attn + 3.0 * self.adapters * tokens


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _mlp_params(config, layer: int, h: int, gated: bool) -> float:
    """Weights one token multiplies in layer `layer`'s MLP: the top-k experts (and router, shared expert) for MoE."""
    experts = _get(config, "num_local_experts", "num_experts", default=0)
    matrices = 3 if gated else 2
    inter = _get(config, "intermediate_size", "n_inner", default=4 * h)
    sparse = experts and layer not in (_get(config, "mlp_only_layers", default=()) or ()) and \
        (layer + 1) % (_get(config, "decoder_sparse_step", default=1) or 1) == 0
    if not sparse:
        return matrices * h * inter
    top_k = _get(config, "num_experts_per_tok", default=1)
    expert_inter = _get(config, "moe_intermediate_size", default=inter)
    params = h * experts + top_k * matrices * h * expert_inter  # router + the chosen experts
    shared = _get(config, "shared_expert_intermediate_size", default=0)
    if shared:
        params += matrices * h * shared + h  # the shared expert and its gate (Qwen2-MoE)
    return params


def model_flops(config, head_outputs: Optional[int] = None) -> ModelFlops:
    """Full fine-tuning forward FLOPs of a decoder-only model from its (HF) config. `head_outputs`: the head's output
    size (vocab_size for a causal LM, the default; num_labels for a sequence classifier)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, layers = config.hidden_size, config.num_hidden_layers
    nq = config.num_attention_heads
    nkv = 1 if getattr(config, "multi_query", False) else _get(config, "num_key_value_heads", default=nq)
    d = _get(config, "head_dim", default=h // nq)
    gated = getattr(config, "model_type", "") not in NON_GATED_MLP
    attn_proj = h * d * (2 * nq + 2 * nkv)  # q and o: nq heads; k and v: nkv heads
    layer_params = sum(attn_proj + _mlp_params(config, i, h, gated) for i in range(layers))
    head = h * (head_outputs if head_outputs is not None else config.vocab_size)
    # per pair and query head: q.k (d multiply-adds) and p * v (d multiply-adds)
    return ModelFlops(base=2.0 * (layer_params + head), head=2.0 * head, attn_per_pair=4.0 * d * nq * layers)


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitions the tensor and keeps its full size here


def with_trainable_split(flops: ModelFlops, model, config) -> ModelFlops:
    """Frozen base (some weights do not train): the LoRA matmuls from the trainable lora_* parameters (forward
    2 x (r x in + out x r) per token and adapted linear = 2 x their parameters; an expert's adapter counts for the
    top-k/E share of tokens that reach it), and whether the output head trains (modules_to_save)."""
    params = list(model.named_parameters())
    if all(p.requires_grad for _, p in params):
        return flops
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    experts = _get(config, "num_local_experts", "num_experts", default=0)
    share = _get(config, "num_experts_per_tok", default=1) / experts if experts else 1.0
    lora = sum(_numel(p) * (share if ".experts." in n else 1.0)
               for n, p in params if p.requires_grad and ".lora_" in n)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_trained = bool(out is not None and out.weight.requires_grad)
    return ModelFlops(flops.base, flops.head, flops.attn_per_pair, adapters=2.0 * lora, frozen_base=True,
                      head_trained=head_trained)


# --- a step's FLOPs from its micro-batches ----------------------------------------------------------------------------


def tokens_and_pairs(batch: dict) -> tuple[int, int]:
    """(real tokens, causal (query, key) pairs summed per sample) of a micro-batch: samples from `sample_ids` (-1:
    padding), else from `position_ids` restarting at 0, else each row (its attention_mask, or all of it) one sample."""
    sample_ids = batch.get("sample_ids")
    if sample_ids is not None:
        ids = sample_ids[sample_ids >= 0]
        lengths = torch.bincount(ids).long() if ids.numel() else torch.zeros(0, dtype=torch.long)
        lengths = lengths[lengths > 0]
    elif batch.get("position_ids") is not None:
        pos = batch["position_ids"]
        lengths = torch.cat([_segments(row) for row in pos.reshape(-1, pos.shape[-1])])
    else:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        lengths = mask.sum(-1).long().reshape(-1) if mask is not None else \
            torch.full((ids.reshape(-1, ids.shape[-1]).shape[0],), ids.shape[-1], dtype=torch.long)
    return int(lengths.sum()), int((lengths * (lengths + 1)).sum()) // 2


def _segments(positions: torch.Tensor) -> torch.Tensor:
    """Sample lengths of one row from its position ids: a sample starts where the positions restart at 0."""
    starts = (positions == 0).nonzero().flatten()
    if not len(starts) or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.diff(torch.cat([starts, starts.new_tensor([positions.numel()])]))


class StepFlops:
    """The loop's meter: training FLOPs of this process's micro-batches, and TFLOP/s and MFU of a step."""

    def __init__(self, flops: ModelFlops, peak: Optional[float]):
        self.flops, self.peak = flops, peak
        self._warned = False

    def step_flops(self, micro_batches: list[dict]) -> Optional[float]:
        """Training FLOPs of these micro-batches (CPU tensors; no device sync); None if a batch cannot be read."""
        try:
            total = 0.0
            for batch in micro_batches:
                tokens, pairs = tokens_and_pairs(batch)
                total += self.flops.training(tokens, pairs)
            return total
        except (KeyError, RuntimeError, TypeError, ValueError) as e:  # never stop training for a log line
            if not self._warned:
                log.warning("tflops/mfu not logged: cannot count this batch's FLOPs (%s)", e)
                self._warned = True
            return None

    def metrics(self, step_flops: Optional[float], elapsed: float) -> dict:
        """{"tflops": achieved TFLOP/s of this device, "mfu": its fraction of the peak (only with a known peak)}."""
        if step_flops is None or elapsed <= 0:
            return {}
        tflops = step_flops / elapsed / 1e12
        return {"tflops": tflops, **({"mfu": tflops / self.peak} if self.peak else {})}


def make_step_flops(model, device: Any, mixed_precision: str, head: str = "causal_lm") -> Optional[StepFlops]:
    """The meter for a loaded model (before the backend wraps it), or None (logged) when its config lacks the
    sizes the count needs."""
    config = model.config
    try:
        outputs = getattr(config, "num_labels", 1) if head == "sequence_classification" else None
        flops = with_trainable_split(model_flops(config, outputs), model, config)
    except (AttributeError, TypeError, ZeroDivisionError) as e:
        log.warning("tflops/mfu not logged: cannot count this model's FLOPs from its config (%s)", e)
        return None
    return StepFlops(flops, peak_tflops(device, mixed_precision))
