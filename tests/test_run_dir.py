"""output_dir safety: one run per folder (a lock naming its holder), no silent reuse of an earlier run's folder,
resume only of the same run's checkpoints, Ctrl-C / SIGTERM that saves and says how to resume, stale temporary
folders cleaned, and the final model written atomically."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from mftcoder.config import ConfigError
from mftcoder.trainer.interrupt import StopSignals, resume_command
from mftcoder.trainer.loop import train
from mftcoder.trainer.run_dir import (LOCK_FILE, OutputDirLock, clean_stale_temp, commit_directory,
                                      config_differences, staged_directory)
from train_helpers import make_cfg, read_records, train_records, write_tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           PYTHONPATH=REPO)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"), {"a": 24, "b": 12, "c": 10})


def _checkpoints(out) -> list[str]:
    return sorted((n for n in os.listdir(out) if n.startswith("checkpoint-")), key=lambda n: int(n.split("-")[1]))


# ---- the lock ---------------------------------------------------------------------------------------------------------

def test_lock_names_its_holder_and_is_released(tmp_path):
    with OutputDirLock(str(tmp_path)):
        with pytest.raises(ConfigError, match=rf"in use by another training \(pid {os.getpid()} on "):
            OutputDirLock(str(tmp_path)).acquire()
        record = json.loads(open(tmp_path / LOCK_FILE).read())
        assert record["pid"] == os.getpid() and record["command"] == sys.argv and record["since"]
    OutputDirLock(str(tmp_path)).acquire().release()  # free again


def test_lock_of_a_live_process_blocks_and_of_a_dead_one_does_not(tmp_path):
    hold = ("import sys, time; from mftcoder.trainer.run_dir import OutputDirLock; "
            "OutputDirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"pid {proc.pid} on .* since "):
            OutputDirLock(str(tmp_path)).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert json.loads(open(tmp_path / LOCK_FILE).read())["pid"] == proc.pid  # the dead holder's file is still there
    with OutputDirLock(str(tmp_path)):  # and does not block
        assert json.loads(open(tmp_path / LOCK_FILE).read())["pid"] == os.getpid()


# ---- reuse and resume -------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_rerun_into_a_used_output_dir_is_refused_and_overwrite_starts_clean(tiny_model_dir, tasks, tmp_path):
    out = tmp_path / "out"
    train(make_cfg(tiny_model_dir, tasks, out, checkpointing_steps=1, max_train_steps=4))
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    with pytest.raises(ConfigError, match=r"holds an earlier run \(checkpoint-1, .*overwrite_output_dir"):
        train(make_cfg(tiny_model_dir, tasks, out, checkpointing_steps=1, max_train_steps=2))
    # overwrite: the old run's checkpoint-3/4 would have outranked the new ones under saving_limit
    summary = train(make_cfg(tiny_model_dir, tasks, out, checkpointing_steps=1, max_train_steps=2, saving_limit=1,
                             overwrite_output_dir=True))
    assert summary["steps"] == 2
    assert _checkpoints(out) == ["checkpoint-2"]
    assert [r["step"] for r in train_records(read_records(out))] == [1, 2]
    assert json.load(open(out / "checkpoint-2" / "train_config.json"))["max_train_steps"] == 2


@pytest.mark.usefixtures("one_thread")
def test_a_finished_run_without_checkpoints_is_not_restarted_by_latest(tiny_model_dir, tasks, tmp_path):
    out = tmp_path / "out"
    train(make_cfg(tiny_model_dir, tasks, out, max_train_steps=1))
    with pytest.raises(ConfigError, match="has no checkpoint to resume"):
        train(make_cfg(tiny_model_dir, tasks, out, max_train_steps=1, resume_from_checkpoint="latest"))


@pytest.mark.usefixtures("one_thread")
def test_resume_only_accepts_the_same_runs_checkpoints(tiny_model_dir, tasks, tmp_path):
    out = tmp_path / "out"
    train(make_cfg(tiny_model_dir, tasks, out, checkpointing_steps=1, max_train_steps=2))
    with pytest.raises(ConfigError, match=r"another config: learning_rate \(checkpoint: 0.003, now: 0.001\)"):
        train(make_cfg(tiny_model_dir, tasks, out, learning_rate=1e-3, resume_from_checkpoint="latest"))
    with pytest.raises(ConfigError, match=r"another config: lora_rank .*; peft_type"):
        train(make_cfg(tiny_model_dir, tasks, out, peft_type="lora", lora_rank=4, auto_resume=True))
    # a longer run is the same run (max_train_steps is exempt): it resumes at step 2 and goes on
    summary = train(make_cfg(tiny_model_dir, tasks, out, checkpointing_steps=1, max_train_steps=3,
                             resume_from_checkpoint="latest"))
    assert summary["steps"] == 3
    assert [r["step"] for r in train_records(read_records(out))] == [1, 2, 3]
    # a shorter run cannot resume a checkpoint past its end (it would report more steps than it was given)
    with pytest.raises(ConfigError, match=r"checkpoint-3' is at step 3, past this run's last step 2"):
        train(make_cfg(tiny_model_dir, tasks, out, checkpointing_steps=1, max_train_steps=2,
                       resume_from_checkpoint="latest"))


def test_config_differences_ignore_resume_and_bookkeeping_keys():
    saved = {"seed": 1, "output_dir": "a", "saving_limit": 2, "max_train_steps": 5, "data_paths": ["x"]}
    now = {"seed": 1, "output_dir": "b", "saving_limit": None, "max_train_steps": 9, "data_paths": ["y"],
           "overwrite_output_dir": True, "new_key": 3}
    assert config_differences(saved, now) == []
    assert config_differences({**saved, "seed": 2}, now) == ["seed (checkpoint: 2, now: 1)"]


@pytest.mark.usefixtures("one_thread")
def test_a_second_training_into_a_locked_output_dir_fails_naming_the_holder(tiny_model_dir, tasks, tmp_path):
    out = tmp_path / "out"
    with OutputDirLock(str(out)):
        with pytest.raises(ConfigError, match=rf"in use by another training \(pid {os.getpid()} on "):
            train(make_cfg(tiny_model_dir, tasks, out, max_train_steps=1))
    assert sorted(os.listdir(out)) == [LOCK_FILE]  # it wrote nothing


@pytest.mark.usefixtures("one_thread")
def test_stale_temporary_folders_of_a_dead_run_are_removed_at_start(tiny_model_dir, tasks, tmp_path):
    out = tmp_path / "out"
    for name in (".tmp-checkpoint-7", ".tmp-final"):
        os.makedirs(out / name)
        (out / name / "model.safetensors").write_bytes(b"half")
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone"}))  # the dead run's lock file
    train(make_cfg(tiny_model_dir, tasks, out, max_train_steps=1))
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    assert os.path.isfile(out / "model.safetensors") and os.path.isfile(out / "config.json")


# ---- atomic final model -----------------------------------------------------------------------------------------------

def _write_model(folder, tag: str) -> None:
    os.makedirs(folder, exist_ok=True)
    (folder / "model.safetensors").write_bytes(tag.encode() * 1000)
    (folder / "tokenizer.json").write_text(tag)
    (folder / "config.json").write_text(json.dumps({"tag": tag}))


def _loadable_state(target) -> str:
    """What a reader of the folder sees: 'none' (no config: visibly unfinished) or the tag of a whole model."""
    if not os.path.exists(target / "config.json"):
        return "none"
    tag = json.loads((target / "config.json").read_text())["tag"]  # never truncated
    assert (target / "model.safetensors").read_bytes() in (b"old" * 1000, b"new" * 1000)
    return tag


def test_commit_directory_never_shows_a_config_without_its_weights(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _write_model(target, "old")
    staged = tmp_path / "out" / ".tmp-final"
    _write_model(staged, "new")
    seen, real_replace = [], os.replace

    def observe(src, dst):  # the real os.replace; the folder's state is read after each move
        real_replace(src, dst)
        seen.append((os.path.basename(dst), _loadable_state(target)))

    monkeypatch.setattr(os, "replace", observe)
    commit_directory(str(staged), str(target))
    assert [name for name, _ in seen] == ["model.safetensors", "tokenizer.json", "config.json"]
    assert [state for _, state in seen] == ["none", "none", "new"]  # config last, the old one removed first
    assert not staged.exists()


def test_a_failed_final_save_leaves_the_folder_as_it_was(tmp_path):
    target = tmp_path / "out"
    _write_model(target, "old")
    with pytest.raises(RuntimeError):
        with staged_directory(str(target)) as staged:
            (tmp_path / "out" / ".tmp-final" / "config.json").write_text("{")  # a truncated config, then the kill
            assert staged == str(target / ".tmp-final")
            raise RuntimeError("killed while saving")
    assert _loadable_state(target) == "old"
    assert clean_stale_temp(str(target)) == [".tmp-final"]


# ---- signals ----------------------------------------------------------------------------------------------------------

def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals(announce=False) as stop:
        assert stop.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested() == signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_ctrl_c_aborts_at_once_but_one_delivered_twice_does_not():
    code = ("import os, signal, time; from mftcoder.trainer.interrupt import StopSignals\n"
            "with StopSignals():\n"  # a terminal's Ctrl-C reaches a worker directly and again through torchrun
            "    os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)\n"
            "    print('first handled', flush=True); time.sleep(1.5)\n"
            "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not aborted')\n")
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 130
    assert res.stdout.strip() == "first handled"
    assert "SIGINT again: aborting now" in res.stderr and "Traceback" not in res.stderr


def test_resume_command_repeats_the_users_command():
    assert resume_command(["mftcoder/train.py", "--train_config", "my cfg.json", "--resume_from_checkpoint",
                           "out/checkpoint-2"]).endswith(
        "mftcoder/train.py --train_config 'my cfg.json' --resume_from_checkpoint latest")
    assert resume_command(launcher=["accelerate", "launch", "--config_file", "a.yaml", "mftcoder/train.py",
                                    "--train_config", "c.json"]) == (
        "accelerate launch --config_file a.yaml mftcoder/train.py --train_config c.json --resume_from_checkpoint latest")


def _start(cfg_path, log, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "mftcoder/train.py", "--train_config", str(cfg_path), *args], cwd=REPO,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def _wait_for_train_step(proc, out, timeout=300.0) -> None:
    path = os.path.join(out, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and any('"split"' not in line for line in open(path) if line.endswith("\n")):
            return
        assert proc.poll() is None, "training ended before its first step was logged"
        time.sleep(0.002)
    proc.kill()
    pytest.fail("no training step within the timeout")


@pytest.mark.slow  # a real training process, signalled, then resumed (~20-40 s here)
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_prints_the_resume_command_and_resume_matches(tiny_model_dir, tasks, tmp_path,
                                                                                sig):
    settings = dict(num_train_epochs=3, evaluation_steps=3, checkpointing_steps=50, per_device_train_batch_size=2,
                    gradient_accumulation_steps=2, peft_type="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.1)
    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", **settings)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    out, log = cfg.output_dir, tmp_path / "stderr.log"

    proc = _start(cfg_path, log)
    _wait_for_train_step(proc, out)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig
    err = open(log).read()
    assert "Traceback" not in err, err[-3000:]
    done = [r["step"] for r in train_records(read_records(out))]
    assert _checkpoints(out) == [f"checkpoint-{done[-1]}"]  # the step it finished, saved though 50 is the schedule
    assert os.path.isfile(os.path.join(out, f"checkpoint-{done[-1]}", "trainer_state.json"))
    assert not os.path.exists(os.path.join(out, "adapter_model.safetensors"))  # no final model from an interrupt
    assert not os.path.exists(os.path.join(out, "README.md"))  # nor its model card
    assert f"interrupted by {sig.name} after step {done[-1]}" in err
    command = err.split("Resume with:\n")[1].splitlines()[0].strip()
    assert command.endswith(f"mftcoder/train.py --train_config {cfg_path} --resume_from_checkpoint latest")
    OutputDirLock(out).acquire().release()  # the lock went with the process
    if sig == signal.SIGTERM:
        return

    resumed = subprocess.run(shlex.split(command), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    card = open(os.path.join(out, "README.md")).read()  # the card gives the command without the resume option
    assert f"mftcoder/train.py --train_config {cfg_path}\n" in card
    reference = make_cfg(tiny_model_dir, tasks, tmp_path / "reference", **settings)
    train(reference)
    ref, got = train_records(read_records(reference.output_dir)), train_records(read_records(out))
    assert [r["step"] for r in got] == [r["step"] for r in ref] and len(ref) > done[-1]
    assert got[-1]["loss"] == pytest.approx(ref[-1]["loss"], rel=1e-6)
    assert got[done[-1]]["loss"] == pytest.approx(ref[done[-1]]["loss"], rel=1e-6)  # the first step after resuming


@pytest.mark.slow
def test_ctrl_c_stops_every_process_at_the_same_step(tiny_model_dir, tasks, tmp_path):
    """Two DDP processes (gloo) through the shipped launcher; Ctrl-C as a terminal sends it, to the whole process
    group (each worker gets it directly and again from torchrun): both stop after the same step, one checkpoint,
    and the resume command is the launcher line."""
    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "unused", num_train_epochs=3, per_device_train_batch_size=1,
                   gradient_accumulation_steps=2, checkpointing_steps=50, evaluation_steps=50)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    out, log = tmp_path / "out", tmp_path / "launch.log"
    env = dict(ENV, LOG_FILE=str(log), PYTHON=sys.executable, DEVICE="cpu")
    env.pop("MASTER_PORT", None)
    proc = subprocess.Popen(["bash", "launchers/ddp.sh", str(cfg_path), "2", "--output_dir", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_train_step(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    text = log.read_text(errors="replace")
    done = [r["step"] for r in train_records(read_records(out))]
    assert _checkpoints(out) == [f"checkpoint-{done[-1]}"], text[-3000:]
    assert text.count(f"interrupted by SIGINT after step {done[-1]}") == 1, text[-3000:]  # rank 0 says it, once
    assert f"bash launchers/ddp.sh {cfg_path} 2 --output_dir {out} --resume_from_checkpoint latest" in text
    assert not os.path.exists(out / "model.safetensors")
