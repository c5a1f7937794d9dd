"""Continued pretraining: token cross entropy on every token of blocks of concatenated documents (the rows come from
mftcoder/data/blocks.py), weighted per task like SFT (MFTCoder's multi-task pretraining), with per-task validation
loss and perplexity."""
from __future__ import annotations

from mftcoder.objectives.sft import SFTObjective


class PretrainObjective(SFTObjective):
    """SFT's loss and weighting on block rows: every token is trained, so a task's loss is its token mean. Under
    case2 a 'sample' is one document piece of a block (with reset_position_ids) or a whole block (without)."""

    name = "pretrain"
    row_layout = "blocks"
    reports_perplexity = True

    def describe(self) -> str:
        blocks = "document-isolated blocks" if self.cfg.reset_position_ids else "concatenated blocks"
        fim = f", FIM {self.cfg.fim_rate:g}" if self.cfg.fim_rate > 0 else ""
        return f"pretrain ({self.mode}, {blocks}{fim}{', router aux loss' if self.router is not None else ''})"
