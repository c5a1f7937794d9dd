"""DPO and ORPO on preference pairs, in the multi-task loop (the pair layout and weighting: objectives/pairs.py).

With logp(y) the policy's summed log-probability of answer y's tokens (the trained tokens after the prompt), ref(y)
the reference model's, and h = (logp(chosen) - ref(chosen)) - (logp(rejected) - ref(rejected)):
    dpo, dpo_loss=sigmoid   -log sigmoid(beta * h)                       (Rafailov et al. 2023)
    dpo, dpo_loss=ipo       (h - 1 / (2 * beta)) ** 2                    (Azar et al. 2023, sequence log-ratios)
    dpo, dpo_loss=hinge     max(0, 1 - beta * h)                         (SLiC, Zhao et al. 2023)
    orpo                    NLL(chosen) - lambda * log sigmoid(log odds(chosen) - log odds(rejected))   (Hong et al.)
where ORPO's NLL is the chosen answer's mean token cross entropy and odds(y) = p / (1 - p) with p = exp(mean token
log-prob). Rewards (logged): DPO beta * (logp - ref); ORPO lambda * mean token log-prob.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mftcoder.loss.cross_entropy import model_forward_losses, unwrap_causal_lm
from mftcoder.objectives.pairs import PairLosses, PairObjective, chosen_rejected, reward_metrics, sample_sums
from mftcoder.objectives.reference import adapter_disabled, load_frozen_copy, model_digest, reference_source


class PairForward(NamedTuple):
    logp: Tensor                 # [S] summed answer log-probs under the policy (differentiable)
    tokens: Tensor               # [S] answer tokens
    ref_logp: Optional[Tensor]   # [S] under the reference (DPO), no gradient


def answer_logps(model: nn.Module, batch: dict, chunked: bool, chunk_size: int) -> tuple[Tensor, Tensor]:
    """[S] summed log-probs of each sample's trained tokens, and their counts."""
    token_loss = model_forward_losses(model, batch, chunked=chunked, chunk_size=chunk_size).token_loss
    return sample_sums(-token_loss, batch)


class DPOObjective(PairObjective):
    name = "dpo"

    def __init__(self, cfg, num_tasks: int, chunked: bool, sharded: bool = False):
        super().__init__(cfg, num_tasks, chunked, sharded)
        self.beta, self.loss_type = cfg.dpo_beta, cfg.dpo_loss
        self.source = reference_source(cfg, sharded)  # refuses an impossible setup before the model loads
        self.reference: Optional[nn.Module] = None    # the frozen copy ("copy")
        self.precomputed: Optional[Tensor] = None     # [rows of the cache] float64, once handed over

    def attach_model(self, model: nn.Module) -> None:
        if self.source == "copy" and not self.cfg.precompute_reference:
            self.reference = self._load_copy(model)

    def _load_copy(self, model: nn.Module) -> nn.Module:
        lm = unwrap_causal_lm(model)
        path = self.cfg.reference_model_path or self.cfg.pretrained_model_path
        return load_frozen_copy(path, lm.dtype, getattr(lm.config, "_attn_implementation", None),
                                self.cfg.trust_remote_code)

    # --- reference log-probs -----------------------------------------------------------------------------------
    def precompute_key(self) -> Optional[dict]:
        if not self.cfg.precompute_reference:
            return None
        path = self.cfg.reference_model_path or self.cfg.pretrained_model_path
        return {"reference": model_digest(path), "quantization": self.cfg.quantization if self.source == "adapter"
                else None, "seq_length": self.cfg.seq_length}

    @torch.no_grad()
    def precompute(self, model: nn.Module, batch: dict) -> Tensor:
        if self.source == "copy" and self.reference is None:
            self.reference = self._load_copy(model)  # held only while precomputing
        return self._run_reference(model, batch).double()

    def use_precomputed(self, values: Tensor) -> None:
        self.precomputed, self.reference = values.double().cpu(), None

    @property
    def precompute_after_start(self) -> bool:
        return self.source != "policy"  # the policy is the reference only before its first step

    def _reference_logps(self, model: nn.Module, batch: dict) -> Tensor:
        if self.precomputed is not None:
            return self.precomputed[batch["cache_rows"].cpu()].to(batch["input_ids"].device)
        if self.source == "policy":
            raise RuntimeError("the reference log-probs of a full fine-tune must be precomputed before training")
        return self._run_reference(model, batch)

    @torch.no_grad()
    def _run_reference(self, model: nn.Module, batch: dict) -> Tensor:
        runner = self.reference if self.source == "copy" else model
        if runner.device != batch["input_ids"].device:
            runner.to(batch["input_ids"].device)
        with adapter_disabled(model) if self.source == "adapter" else contextlib.nullcontext():
            return answer_logps(runner, batch, self.chunked, self.cfg.ce_chunk_size)[0]

    # --- the loss ----------------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict, training: bool) -> PairForward:
        ref = self._reference_logps(model, batch)  # first, so the policy's forward is the last before backward
        logp, tokens = answer_logps(model, batch, self.chunked, self.cfg.ce_chunk_size)
        return PairForward(logp, tokens, ref)

    def pair_losses(self, fwd: PairForward) -> PairLosses:
        chosen, rejected = chosen_rejected(fwd.logp)
        ref_chosen, ref_rejected = chosen_rejected(fwd.ref_logp.to(fwd.logp.dtype))
        h = (chosen - ref_chosen) - (rejected - ref_rejected)
        loss = DPO_LOSSES[self.loss_type](h, self.beta)
        metrics = reward_metrics(self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected),
                                 chosen, rejected)
        return PairLosses(loss, metrics)

    def describe(self) -> str:
        how = {"adapter": "the base (adapter disabled)", "policy": "the base", "copy": "a frozen copy"}[self.source]
        pre = ", precomputed" if self.cfg.precompute_reference else ""
        return f"dpo ({self.loss_type}, beta {self.beta:g}, reference: {how}{pre}; {self.mode} over pairs)"


DPO_LOSSES = {
    "sigmoid": lambda h, beta: -F.logsigmoid(beta * h),
    "ipo": lambda h, beta: (h - 1.0 / (2.0 * beta)) ** 2,
    "hinge": lambda h, beta: torch.relu(1.0 - beta * h),
}


def log_odds(mean_logp: Tensor) -> Tensor:
    """log(p / (1 - p)) for p = exp(mean_logp) < 1, computed stably (expm1 keeps 1 - p exact near p = 1)."""
    return mean_logp - torch.log(-torch.expm1(mean_logp.clamp(max=-1e-6)))


class ORPOObjective(PairObjective):
    name = "orpo"

    def __init__(self, cfg, num_tasks: int, chunked: bool, sharded: bool = False):
        super().__init__(cfg, num_tasks, chunked, sharded)
        self.lam = cfg.orpo_lambda

    def forward(self, model: nn.Module, batch: dict, training: bool) -> PairForward:
        logp, tokens = answer_logps(model, batch, self.chunked, self.cfg.ce_chunk_size)
        return PairForward(logp, tokens, None)

    def pair_losses(self, fwd: PairForward) -> PairLosses:
        mean_logp = fwd.logp / fwd.tokens.clamp(min=1)
        mean_chosen, mean_rejected = chosen_rejected(mean_logp)
        loss = -mean_chosen - self.lam * F.logsigmoid(log_odds(mean_chosen) - log_odds(mean_rejected))
        chosen, rejected = chosen_rejected(fwd.logp)
        return PairLosses(loss, reward_metrics(self.lam * mean_chosen, self.lam * mean_rejected, chosen, rejected))

    def describe(self) -> str:
        return f"orpo (lambda {self.lam:g}; {self.mode} over pairs)"
