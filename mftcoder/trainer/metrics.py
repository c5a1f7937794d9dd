"""metrics.jsonl (one object per optimizer step and per evaluation: the source of truth, written by the main process)
and the same scalars in the report_to trackers (TensorBoard, wandb, MLflow through accelerate; see tracking.py)."""
from __future__ import annotations

import json
import os
from typing import Any

from mftcoder.trainer.tracking import end_trackers


class MetricsLog:
    def __init__(self, output_dir: str, enabled: bool, resume_step: int = 0, acc: Any = None):
        """`acc`: an Accelerator whose trackers `tracking.start_trackers` started; each record is logged to them too."""
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._acc = acc if enabled else None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate_after(resume_step)

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
        if self._acc is not None:
            self._acc.log(tracker_scalars(record), step=record["step"])

    def close(self) -> None:
        """Finish the trackers (once; also on an interrupt or an error, so no tracker run is left open)."""
        if self._acc is not None:
            end_trackers(self._acc)
            self._acc = None


def tracker_scalars(record: dict) -> dict:
    """A record as tracker scalars: `<split>/<key>`, and `<split>/<key>/<task>` for per-task dicts; the step itself,
    text and None values (a task absent from the step) are left out."""
    prefix = "valid" if record.get("split") == "valid" else "train"
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            out.update({f"{prefix}/{key}/{task}": v for task, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)):
            out[f"{prefix}/{key}"] = value
    return out


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
