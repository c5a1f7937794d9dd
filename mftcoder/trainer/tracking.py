"""The experiment trackers of `report_to`, driven through accelerate's tracker API.

The Accelerator is built with `log_with=log_with(cfg)`; `start_trackers` runs `init_trackers` on the main process only
(accelerate would start wandb on every process), with the resolved config flattened to scalars and strings. Each
metrics record becomes the scalars TensorBoard always had (`train/loss`, `train/task_loss/<task>`, `valid/loss`, ...),
logged at the record's step. wandb: project `tracker_project`, run named after output_dir's folder. MLflow: experiment
`tracker_project` (MLFLOW_EXPERIMENT_NAME wins, as in accelerate), tracking URI from MLFLOW_TRACKING_URI or MLflow's
default.

TensorBoard uses our own tracker: accelerate's writes into `<logging_dir>/<project_name>` and adds a time-stamped
hparams sub-run at every start, and the events of a killed run after its checkpoint must be purged on resume
(`purge_step`), so `tb_dir` keeps its meaning and a resumed run shows each step once.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, on_main_process, register_tracker_class

from mftcoder.config import ConfigError, TrainConfig


class TensorBoardWriter(GeneralTracker):
    """Scalars into event files directly in `logging_dir`; steps >= purge_step from an earlier writer are dropped."""

    name = "mftcoder_tensorboard"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str, purge_step: Optional[int] = None):
        super().__init__()
        self.logging_dir, self.purge_step, self.writer = logging_dir, purge_step, None

    @on_main_process
    def start(self):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.logging_dir, purge_step=self.purge_step)

    @property
    def tracker(self):
        return self.writer

    def store_init_configuration(self, values: dict):
        pass  # the resolved config is output_dir/train_config.json; TensorBoard keeps the scalars only

    @on_main_process
    def log(self, values: dict, step: Optional[int] = None, **kwargs):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    @on_main_process
    def finish(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


if LOGGER_TYPE_TO_CLASS.get(TensorBoardWriter.name) is not TensorBoardWriter:
    register_tracker_class(TensorBoardWriter)  # a name of its own: accelerate's "tensorboard" stays as it is

# report_to name -> accelerate's tracker name
ACCELERATE_NAMES = {"tensorboard": TensorBoardWriter.name, "wandb": "wandb", "mlflow": "mlflow"}


def log_with(cfg: TrainConfig) -> Optional[list[str]]:
    """The Accelerator's `log_with` for the run's report_to (None: no tracker)."""
    return [ACCELERATE_NAMES[name] for name in cfg.trackers] or None


def run_name(cfg: TrainConfig) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(cfg.output_dir)))


def flat_config(cfg: TrainConfig) -> dict:
    """The resolved config as tracker parameters: lists and dicts (data_paths, task_weights, ...) as JSON text."""
    return {key: json.dumps(value) if isinstance(value, (list, dict)) else value
            for key, value in cfg.model_dump(mode="json").items()}


def check_mlflow_store(cfg: TrainConfig) -> None:
    """Open MLflow's tracking store before the model loads: mlflow 3 refuses a file store unless
    MLFLOW_ALLOW_FILE_STORE=true, and its sqlite default needs the full mlflow package (not mlflow-skinny)."""
    if "mlflow" not in cfg.trackers:
        return
    import mlflow

    try:
        mlflow.search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as e:
        why = str(e).strip().split(". ")[0]
        raise ConfigError(f"report_to 'mlflow': MLflow's tracking store {mlflow.get_tracking_uri()!r} cannot be used "
                          f"({why}); set MLFLOW_TRACKING_URI to a tracking server (http://host:5000), or to a folder "
                          "(file:./mlruns) with MLFLOW_ALLOW_FILE_STORE=true") from None


def start_trackers(acc, cfg: TrainConfig, resume_step: int) -> bool:
    """Start the report_to trackers (main process only); True when any is running."""
    if not acc.is_main_process or not cfg.trackers:
        return False
    name = run_name(cfg)
    init_kwargs = {TensorBoardWriter.name: {"logging_dir": cfg.resolved_tb_dir,
                                            "purge_step": resume_step + 1 if resume_step else None},
                   "wandb": {"name": name}, "mlflow": {"run_name": name}}
    try:
        acc.init_trackers(cfg.tracker_project, config=flat_config(cfg), init_kwargs=init_kwargs)
    except BaseException:
        end_trackers(acc)  # those already started
        raise
    return bool(acc.trackers)


def end_trackers(acc) -> None:
    """Finish every started tracker once (end_training would finish them again, so the list is emptied)."""
    for tracker in acc.trackers:
        tracker.finish()
    acc.trackers.clear()

