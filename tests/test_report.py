"""`mftcoder report`: the HTML page and PNGs of a real tiny-model run, the figures' content (one line per task, one
per run when compared), and the edge cases a run dir can hold (non-finite loss, a task without data, no validation,
an empty or cut metrics.jsonl, tasks that differ between compared runs), each a warning instead of a crash."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mftcoder.cli import main
from mftcoder.report import plots
from mftcoder.report.build import write_report
from mftcoder.report.checks import run_warnings
from mftcoder.report.runs import load_run
from mftcoder.report.tables import compare_table
from train_helpers import make_cfg, read_records, train_records, valid_records, write_tasks

TASKS = ["a", "b", "c"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_run(tiny_model_dir, tmp_path_factory):
    """A real CoBa run of the tiny model on three tasks: evaluations and a checkpoint every 2 steps."""
    from mftcoder.trainer.loop import train

    root = tmp_path_factory.mktemp("report-run")
    paths = write_tasks(root / "data", {"a": 24, "b": 12, "c": 10})
    cfg = make_cfg(tiny_model_dir, paths, root / "mft", evaluation_steps=2, checkpointing_steps=2,
                   weighted_loss_mode="coba", max_train_steps=6)
    threads = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return cfg.output_dir


def spec(key: str) -> plots.FigureSpec:
    return next(s for s in plots.FIGURES if s.key == key)


def labelled_lines(fig) -> list[tuple[str, object]]:
    """(label, Line2D) of every curve drawn with a legend label (raw curves and gap markers start with '_')."""
    return [(line.get_label(), line) for ax in fig.axes for line in ax.get_lines()
            if not line.get_label().startswith("_")]


def panel_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def write_run(path, steps: list[dict], valid: list[dict], tasks=TASKS, raw_tail: str = "") -> str:
    """A run dir written by hand: metrics.jsonl (json.dumps writes NaN/Infinity as Python's json reads them) and a
    data_stats.json for `tasks`."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for rec in valid[:1] + steps + valid[1:]:
            f.write(json.dumps(rec) + "\n")
        f.write(raw_tail)
    stats = {"tasks": {t: {"lines": 10, "train_samples": 8, "valid_samples": 2, "test_samples": 0, "tokens": 100,
                           "truncated": 0, "dropped": 0, "rejected": 0} for t in tasks}, "rejected_examples": {}}
    with open(os.path.join(path, "data_stats.json"), "w") as f:
        json.dump(stats, f)
    return str(path)


def step(n: int, losses: dict, loss: float = 1.0) -> dict:
    return {"step": n, "epoch": n / 10, "loss": loss, "lr": 1e-3, "grad_norm": 0.5, "tokens": 100,
            "tokens_per_s": 50.0, "task_loss": losses, "task_weight": {t: 1 / len(losses) for t in losses}}


def valid(n: int, losses: dict) -> dict:
    return {"step": n, "split": "valid", "loss": sum(losses.values()) / len(losses), "task_loss": losses}


# ---- a real run --------------------------------------------------------------------------------------------------

def test_report_of_a_real_run(real_run, tmp_path, capsys):
    out = tmp_path / "rep" / "report.html"
    assert main(["report", real_run, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    png_dir = tmp_path / "rep" / "report_files"
    keys = [s.key for s in plots.figure_specs([load_run(real_run)])]
    assert {s.key for s in plots.FIGURES} <= set(keys)
    assert sorted(os.listdir(png_dir)) == sorted(f"{k}.png" for k in keys)
    for key in keys:
        data = (png_dir / f"{key}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
        with Image.open(png_dir / f"{key}.png") as im:
            assert im.width > 0 and im.height > 0
    page = out.read_text()
    for task in TASKS:
        assert f"<td>{task}</td>" in page
    assert page.count('src="data:image/png;base64,') == len(keys)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<td>coba</td>" in page  # the config table, read from the run's (or its checkpoint's) train_config.json


def test_validation_figure_has_one_line_per_task_with_the_recorded_values(real_run):
    run = load_run(real_run)
    fig = plots.build_figure(spec("valid_loss"), [run])
    lines = dict(labelled_lines(fig))
    assert sorted(lines) == sorted(TASKS) and len(labelled_lines(fig)) == len(TASKS)
    records = read_records(real_run)
    evals, n_steps = valid_records(records), len(train_records(records))
    assert n_steps >= 4 and [r["step"] for r in evals] == [0, 2, 4, n_steps][:3 + (n_steps > 4)]
    for task in TASKS:
        assert list(lines[task].get_xdata()) == [r["step"] for r in evals]
        assert list(lines[task].get_ydata()) == pytest.approx([r["task_loss"][task] for r in evals])
    # task weights: one curve per task, the weights of each step summing to 1
    weights = dict(labelled_lines(plots.build_figure(spec("task_weight"), [run])))
    assert sorted(weights) == sorted(TASKS)
    sums = [sum(weights[t].get_ydata()[i] for t in TASKS) for i in range(n_steps)]
    assert sums == pytest.approx([1.0] * n_steps)


def test_compare_overlays_runs_task_by_task(real_run, tmp_path):
    """A 3-task run against a single-task run holding one of its tasks and a new one: one panel per task of either
    run, each with the runs that have that task; the legend names both runs; the final-loss table marks the best."""
    other = write_run(tmp_path / "sft", [step(1, {"a": 9.0, "d": 2.0})], [valid(0, {"a": 9.5, "d": 3.0}),
                                                                           valid(1, {"a": 0.01, "d": 2.5})],
                      tasks=["a", "d"])
    runs = [load_run(real_run, "MFT"), load_run(other, "SFT")]
    fig = plots.build_figure(spec("valid_loss"), runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["a", "b", "c", "d"]
    per_panel = {ax.get_title(): sorted(l.get_label() for l in ax.get_lines() if not l.get_label().startswith("_"))
                 for ax in fig.axes}
    assert per_panel == {"a": ["MFT", "SFT"], "b": ["MFT"], "c": ["MFT"], "d": ["SFT"]}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["MFT", "SFT"]
    table = compare_table(runs)
    assert table.header == ["run", "a", "b", "c", "d"]
    assert table.rows[1][2:4] == ["not in run", "not in run"]
    assert (1, 1) in table.best and (0, 1) not in table.best  # SFT's 0.01 beats MFT on task a
    written = write_report(runs, str(tmp_path / "cmp.html"), str(tmp_path / "cmp_files"))
    page = open(written.html).read()
    assert page.count('class="best"') == 4 and "Final validation loss per task" in page


def test_cli_compare_with_names(real_run, tmp_path):
    out = tmp_path / "c.html"
    assert main(["report", real_run, "--compare", real_run, "--name", "first", "second", "--out", str(out),
                 "--png_dir", str(tmp_path / "pngs")]) == 0
    assert (tmp_path / "pngs" / "train_loss.png").stat().st_size > 2000
    page = out.read_text()
    assert "first vs second" in page


# ---- edge cases ----------------------------------------------------------------------------------------------------

def test_nonfinite_loss_is_a_gap_and_a_warning(tmp_path):
    steps = [step(n, {"a": 1.0 / n, "b": 2.0, "c": 1.5}, loss=1.0) for n in range(1, 9)]
    steps[2]["loss"], steps[2]["task_loss"]["a"] = math.nan, math.nan
    steps[4]["loss"] = math.inf
    path = write_run(tmp_path / "nan", steps, [valid(0, {"a": 1, "b": 2, "c": 3})], raw_tail='{"step": 9, "lo')
    run = load_run(path)
    assert [r["step"] for r in run.steps] == list(range(1, 9)) and run.cut_line == 10
    fig = plots.build_figure(spec("train_loss"), [run])
    a = dict(labelled_lines(fig))["a"]
    assert math.isnan(a.get_ydata()[2]) and not math.isnan(a.get_ydata()[3])
    total = dict(labelled_lines(plots.build_figure(spec("loss"), [run])))["loss"].get_ydata()
    assert [i for i, y in enumerate(total) if math.isnan(y)] == [2, 4]
    out = tmp_path / "r.html"
    assert main(["report", path, "--out", str(out)]) == 0
    page = out.read_text()
    assert "non-finite loss at step(s) 3, 5" in page
    assert "the last line of metrics.jsonl (line 10) is cut" in page


def test_task_without_data_says_so_in_its_panel_and_the_warnings(tmp_path):
    steps = [step(n, {"a": 1.0, "b": None, "c": 1.2}) for n in range(1, 5)]
    path = write_run(tmp_path / "r", steps, [valid(0, {"a": 1.0, "b": 2.0, "c": 3.0})])
    run = load_run(path)
    assert "task 'b': no data (no training step measured it: no training sample, or all its losses are null)" \
        in run_warnings(run)
    single = plots.build_figure(spec("train_loss"), [run])
    assert "no data: b" in panel_texts(single.axes[0])
    assert sorted(dict(labelled_lines(single))) == ["a", "c"]
    compared = plots.build_figure(spec("train_loss"), [run, load_run(path, "again")])
    panel_b = next(ax for ax in compared.axes if ax.get_title() == "b")
    assert panel_texts(panel_b) == ["no data"]


def test_no_validation_and_empty_metrics_are_reported(tmp_path):
    no_valid = load_run(write_run(tmp_path / "nv", [step(1, {"a": 1.0, "b": 1.0, "c": 1.0})], []))
    assert any(w.startswith("no validation records") for w in run_warnings(no_valid))
    empty = write_run(tmp_path / "empty", [], [])
    out = tmp_path / "e.html"
    assert main(["report", empty, "--out", str(out)]) == 0
    page = out.read_text()
    assert "metrics.jsonl is empty: no training step or validation was recorded" in page
    assert "config not recorded" in page
    fig = plots.build_figure(spec("valid_loss"), [load_run(empty)])
    assert panel_texts(fig.axes[0]) == ["no data"]


def test_names_are_escaped(tmp_path):
    path = write_run(tmp_path / "r", [step(1, {"<b>x": 1.0})], [valid(0, {"<b>x": 1.0})], tasks=["<b>x"])
    out = tmp_path / "r.html"
    assert main(["report", path, "--out", str(out), "--name", "<i>run"]) == 0
    page = out.read_text()
    assert "<b>x" not in page and "&lt;b&gt;x" in page and "&lt;i&gt;run" in page


# ---- the command ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["missing"], "missing: no such folder; expected a training output_dir holding metrics.jsonl"),
    (["empty_dir"], "empty_dir: not a run dir (no metrics.jsonl, no data_stats.json)"),
    (["run", "--name", "a", "b"], "--name: 2 names for 1 run dir(s)"),
    (["run", "--compare", "run"], "--name: the runs are named ['run', 'run']; give each its own name"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, expected):
    os.makedirs(tmp_path / "empty_dir")
    write_run(tmp_path / "run", [step(1, {"a": 1.0})], [], tasks=["a"])
    argv = [str(tmp_path / a) if a in ("missing", "empty_dir", "run") else a for a in argv]
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0].replace(str(tmp_path) + "/", "")


def test_help_ends_with_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = capsys.readouterr().out
    assert "--compare" in out and out.rstrip().splitlines()[-1].strip().startswith("mftcoder report ")


def test_importing_the_command_loads_no_matplotlib():
    code = "import sys, mftcoder.report.command, mftcoder.report.runs; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
