"""Training objectives: the loop knows an objective only through `Objective` (mftcoder/objectives/base.py) and finds
it by name here. See docs/objectives.md for how to add one."""
from __future__ import annotations

from mftcoder.objectives.base import EvalSums, MicroOutput, Objective, StepContext
from mftcoder.objectives.preference import DPOObjective, ORPOObjective
from mftcoder.objectives.pretrain import PretrainObjective
from mftcoder.objectives.reward import RewardObjective
from mftcoder.objectives.sft import SFTObjective

OBJECTIVES: dict[str, type[Objective]] = {"sft": SFTObjective, "pretrain": PretrainObjective, "dpo": DPOObjective,
                                          "orpo": ORPOObjective, "reward": RewardObjective}


def objective_class(name: str) -> type[Objective]:
    """The registered objective called `name`; a clear error naming the valid ones otherwise."""
    from mftcoder.config import ConfigError

    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"objective: {name!r} is not a known objective; valid: {', '.join(sorted(OBJECTIVES))}") \
            from None


def make_objective(name: str, cfg, num_tasks: int, chunked: bool, sharded: bool = False) -> Objective:
    return objective_class(name)(cfg, num_tasks, chunked, sharded)


__all__ = ["OBJECTIVES", "DPOObjective", "EvalSums", "MicroOutput", "ORPOObjective", "Objective", "PretrainObjective",
           "RewardObjective",
           "SFTObjective", "StepContext", "make_objective", "objective_class"]
