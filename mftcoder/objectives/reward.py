"""Reward models: a scalar head on the base (AutoModelForSequenceClassification, one label) trained on preference
pairs with the pairwise loss -log sigmoid(r(chosen) - r(rejected)) (Bradley-Terry, as in InstructGPT).

A sequence's reward is the head's output at its last token, as transformers' sequence classifiers read it, so the
saved model scores a rendered conversation with plain `AutoModelForSequenceClassification`. Samples keep every token
as input (no next-token shift), packed or padded: the head's per-position output is captured and read at each sample's
own last position.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mftcoder.loss.cross_entropy import model_inputs, unwrap_causal_lm
from mftcoder.objectives.pairs import PairLosses, PairObjective, chosen_rejected, reward_metrics

HEAD_NAMES = ("score", "classifier")  # the scalar head's attribute in transformers' sequence classifiers


class RewardForward(NamedTuple):
    rewards: Tensor  # [S]


def score_head(model: nn.Module) -> nn.Module:
    lm = unwrap_causal_lm(model)
    for name in HEAD_NAMES:
        head = getattr(lm, name, None)
        if isinstance(head, nn.Module):
            return head
    raise TypeError(f"{type(lm).__name__} has no scalar head ({' or '.join(HEAD_NAMES)}); a reward model needs a "
                    "model class with a sequence-classification head")


def last_positions(sample_ids: Tensor, num_samples: int) -> Tensor:
    """[S] flat index (into B*T) of each sample's last position."""
    flat = sample_ids.reshape(-1)
    real = flat >= 0
    positions = torch.arange(flat.numel(), device=flat.device)
    last = torch.full((num_samples,), -1, dtype=torch.long, device=flat.device)
    return last.scatter_reduce(0, flat[real], positions[real], reduce="amax")


def sequence_rewards(model: nn.Module, batch: dict) -> Tensor:
    """[S] the head's output at the last token of each sample (float32)."""
    captured: list[Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(**model_inputs(batch))
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the reward head to run once per forward, it ran {len(captured)} times")
    per_position = captured[0][..., 0].reshape(-1)  # [B*T]
    return per_position[last_positions(batch["sample_ids"], batch["sample_task_ids"].numel())].float()


class RewardObjective(PairObjective):
    name = "reward"
    model_head = "sequence_classification"
    shift = False
    step_metrics = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")

    def forward(self, model: nn.Module, batch: dict, training: bool) -> RewardForward:
        return RewardForward(sequence_rewards(model, batch))

    def pair_losses(self, fwd: RewardForward) -> PairLosses:
        chosen, rejected = chosen_rejected(fwd.rewards)
        loss = -F.logsigmoid(chosen - rejected)
        return PairLosses(loss, reward_metrics(chosen, rejected, chosen, rejected))

    def describe(self) -> str:
        return f"reward model (pairwise loss; {self.mode} over pairs)"
