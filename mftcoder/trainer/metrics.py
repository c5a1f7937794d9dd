"""metrics.jsonl (one object per optimizer step and per evaluation) and the same scalars in TensorBoard."""
from __future__ import annotations

import json
import os
from typing import Optional


class MetricsLog:
    def __init__(self, output_dir: str, tb_dir: Optional[str], enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate_after(resume_step)
        if tb_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(tb_dir, purge_step=resume_step + 1 if resume_step else None)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records a killed run wrote after its last checkpoint; a fresh run starts a new file."""
        if not os.path.exists(self.path):
            return
        keep = []
        if step > 0:
            with open(self.path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut by the kill
                    if rec.get("step", 0) <= step:
                        keep.append(line if line.endswith("\n") else line + "\n")
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["step"]
            prefix = "valid" if record.get("split") == "valid" else "train"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step",):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)
                elif isinstance(value, dict):
                    for task, v in value.items():
                        if v is not None:
                            self._tb.add_scalar(f"{prefix}/{key}/{task}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
