"""report_to: the training scalars in TensorBoard, MLflow and wandb (through accelerate's tracker API) equal
metrics.jsonl step for step; a resumed run purges the killed run's later TensorBoard steps; bad values and missing
packages are refused before the model loads."""
from __future__ import annotations

import glob
import json
import os
import struct
import sys

import pytest

from mftcoder.config import ConfigError, check_environment, parse_config, schema_text
from mftcoder.trainer.loop import train
from mftcoder.trainer.metrics import tracker_scalars
from train_helpers import make_cfg, read_records, train_records, valid_records, write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tasks(tmp_path):
    return write_tasks(tmp_path / "data", {"a": 12, "b": 10})


def _cfg(model, tasks, out, **overrides):
    return make_cfg(model, tasks, out, max_train_steps=3, num_train_epochs=2, evaluation_steps=2, **overrides)


# ---- the config key ----------------------------------------------------------------------------------------------

def test_report_to_values_and_errors():
    base = dict(data_paths=["d"], pretrained_model_path="m", output_dir="o")
    assert parse_config(base).trackers == ("tensorboard",)
    assert parse_config({**base, "report_to": "none"}).trackers == ()
    assert parse_config({**base, "report_to": ["none"]}).trackers == ()
    assert parse_config({**base, "report_to": ["wandb", "tensorboard", "wandb"]}).trackers == ("wandb", "tensorboard")
    for bad, words in (("all", ["report_to: unknown tracker \"all\"", "'all' is not accepted"]),
                       ("comet", ["report_to: unknown tracker \"comet\"", '"tensorboard", "wandb", "mlflow", "none"']),
                       (["wandb", "foo"], ['unknown tracker "foo"']),
                       (["none", "wandb"], ['"none" turns every tracker off']),
                       ([], ['use "none"'])):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "report_to": bad})
        assert all(w in str(e.value) for w in words), str(e.value)
    text = schema_text()
    assert 'report_to  ["tensorboard" | "wandb" | "mlflow" | "none" | list[' in text
    assert 'tracker_project  [str]  default: "mftcoder"' in text


@pytest.mark.parametrize("name,package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_stops_before_the_model_loads(tiny_model_dir, tasks, tmp_path, monkeypatch,
                                                                 name, package):
    monkeypatch.setitem(sys.modules, package, None)  # how Python marks a module that cannot be imported
    cfg = _cfg(tiny_model_dir, tasks, tmp_path / "out", report_to=["tensorboard", name])
    with pytest.raises(ConfigError) as e:
        check_environment(cfg)
    assert str(e.value) == (f"report_to {name!r} needs the {package} package: pip install 'mftcoder[trackers]' "
                            f"(or drop {name!r} from report_to)")


def test_tracker_scalars_are_the_tensorboard_tags():
    step = {"step": 3, "epoch": 0.5, "loss": 2.0, "grad_norm": None, "task_loss": {"a": 1.5, "b": None},
            "task_weight": {"a": 1.0, "b": 0.0}, "loss_nan": float("nan")}
    got = tracker_scalars(step)
    assert set(got) == {"train/epoch", "train/loss", "train/task_loss/a", "train/task_weight/a",
                        "train/task_weight/b", "train/loss_nan"}
    assert got["train/task_loss/a"] == 1.5
    valid = tracker_scalars({"step": 2, "split": "valid", "task_loss": {"a": 1.0}, "loss": 1.0})
    assert valid == {"valid/task_loss/a": 1.0, "valid/loss": 1.0}


# ---- the trackers, read back -------------------------------------------------------------------------------------

def _tracker_env(monkeypatch, tmp_path):
    """wandb offline and MLflow on a file store, every file they write under tmp_path."""
    home = tmp_path / "home"
    for var, path in (("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config"),
                      ("WANDB_DATA_DIR", "wandb-data"), ("HOME", "home")):
        os.makedirs(tmp_path / path, exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / path))
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses a file store unless asked
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(home)  # anything written to the working directory stays in tmp_path too
    return home


def _wandb_records(path):
    """The protobuf records of an offline .wandb file (LevelDB log format: 32 KiB blocks of chunks, each with a
    7-byte header crc32c, length, type; the file starts with a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    block, header = 32768, 7
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, parts = header, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        payload = data[pos + header:pos + header + length]
        pos += header + length
        if kind == 0:  # zero padding up to the next block
            pos += (block - pos % block) % block
            continue
        parts = payload if kind in (1, 2) else parts + payload  # FULL / FIRST start a record, MIDDLE / LAST extend it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def _read_wandb(wandb_dir):
    (path,) = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
    history, config, summary, run = [], {}, {}, None
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "run":
            run = r.run
    return history, config, summary, run


def test_tensorboard_mlflow_and_wandb_hold_the_metrics(tiny_model_dir, tasks, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'mftcoder[trackers]')")
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'mftcoder[trackers]')")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    home = _tracker_env(monkeypatch, tmp_path)
    cfg = _cfg(tiny_model_dir, tasks, tmp_path / "my-run", report_to=["tensorboard", "mlflow", "wandb"],
               tracker_project="mft-test")
    train(cfg)
    records = read_records(cfg.output_dir)
    steps, evals = train_records(records), valid_records(records)
    assert [r["step"] for r in steps] == [1, 2, 3] and [r["step"] for r in evals] == [0, 2, 3]

    # MLflow: experiment tracker_project, run named after output_dir, each scalar's history = metrics.jsonl
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("mft-test").experiment_id])
    assert run.info.run_name == "my-run" and run.info.status == "FINISHED"
    history = lambda key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),  # noqa: E731
                                                            key=lambda m: m.step)]
    assert history("train/loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-12)) for r in steps]
    for task in ("a", "b"):
        assert history(f"valid/task_loss/{task}") == [(r["step"], pytest.approx(r["task_loss"][task], rel=1e-12))
                                                      for r in evals]
    assert run.data.params["learning_rate"] == str(cfg.learning_rate)
    assert json.loads(run.data.params["data_paths"]) == [t.model_dump() for t in cfg.data_paths]

    # wandb (offline): project and run name, config = the train config, history and summary = metrics.jsonl
    wb_history, wb_config, wb_summary, wb_run = _read_wandb(tmp_path / "wandb")
    assert (wb_run.project, wb_run.display_name) == ("mft-test", "my-run")
    assert set(cfg.model_dump()) <= set(wb_config) and wb_config["seq_length"] == cfg.seq_length
    by_step = {row["_step"]: row for row in wb_history}
    assert [(s, by_step[s]["train/loss"]) for s in (1, 2, 3)] == [(r["step"], r["loss"]) for r in steps]
    assert by_step[0]["valid/loss"] == evals[0]["loss"]
    assert wb_summary["train/loss"] == steps[-1]["loss"] and wb_summary["valid/loss"] == evals[-1]["loss"]

    # TensorBoard: the same tags and values, in tb_dir's default place
    tb = EventAccumulator(os.path.join(cfg.output_dir, "tensorboard"), size_guidance={"scalars": 0})
    tb.Reload()
    expected = {}
    for r in records:
        for key, value in tracker_scalars(r).items():
            expected.setdefault(key, []).append((r["step"], value))
    assert set(tb.Tags()["scalars"]) == set(expected)
    for key, values in expected.items():
        assert [(e.step, e.value) for e in tb.Scalars(key)] == [(s, pytest.approx(v, rel=1e-6)) for s, v in values]

    assert sorted(os.listdir(home)) == []  # nothing in the working directory (no ./wandb, no ./mlflow.db)


def test_report_to_none_writes_no_tensorboard(tiny_model_dir, tasks, tmp_path):
    cfg = _cfg(tiny_model_dir, tasks, tmp_path / "out", report_to="none")
    train(cfg)
    assert not os.path.exists(os.path.join(cfg.output_dir, "tensorboard"))
    assert [r["step"] for r in train_records(read_records(cfg.output_dir))] == [1, 2, 3]


def test_resume_purges_the_later_tensorboard_steps(tiny_model_dir, tasks, tmp_path):
    """The resumed writer marks the first step after the checkpoint as a new session start, so TensorBoard drops the
    earlier run's events from there on, and every step shows once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", max_train_steps=4, num_train_epochs=2,
                   checkpointing_steps=2)
    train(cfg)  # a complete run stands in for one killed after step 4: its steps 3 and 4 are written again
    train(cfg.model_copy(update={"resume_from_checkpoint": os.path.join(cfg.output_dir, "checkpoint-2")}))
    files = sorted(glob.glob(os.path.join(cfg.output_dir, "tensorboard", "events.out.tfevents.*")))
    assert len(files) == 2
    starts = [e.step for e in EventFileLoader(files[1]).Load() if e.HasField("session_log")
              and e.session_log.status == e.session_log.START]
    assert starts == [3]
    tb = EventAccumulator(os.path.join(cfg.output_dir, "tensorboard"), size_guidance={"scalars": 0})
    tb.Reload()
    assert [e.step for e in tb.Scalars("train/loss")] == [1, 2, 3, 4]
