"""The shell launchers and the accelerate configs they use.

Fast: every launcher answers --help, rejects bad arguments with a clear message, and (DRY_RUN=1) builds the right
command and switches for CPU (gloo) and CUDA (NCCL); the accelerate yamls have the promised settings.
Slow: every launcher runs a real 2-step job with 2 processes (ds_single.sh and ds_zero3.sh with OFFLOAD=1, so the
offload configs run too; multinode.sh as 2 nodes x 1 process on this machine), logs to its file and to the terminal,
and gives the same first two steps as one process on the same global batch.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = ["ddp.sh", "ds_single.sh", "ds_zero3.sh", "fsdp.sh", "multinode.sh"]
CONFIGS = REPO / "configs" / "accelerate"
SINGLE_NODE = ["ddp", "ds_zero2", "ds_zero2_offload", "ds_zero3", "ds_zero3_offload", "fsdp2"]


def sh(launcher: str, *args, env=None, timeout=60, **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1")
    for key in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "BACKEND", "OFFLOAD", "DEVICE",
                "MIXED_PRECISION", "ACCELERATE_CONFIG", "ACCELERATE_USE_CPU", "DS_ACCELERATOR", "OMP_NUM_THREADS",
                "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MFTCODER_NO_MALLOC_TUNING"):
        full_env.pop(key, None)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    return subprocess.run(["bash", str(REPO / "launchers" / launcher), *map(str, args)], env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("{}")
    return path


# ---- fast ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_help(launcher):
    for flag in ("--help", "-h"):
        r = sh(launcher, flag)
        assert r.returncode == 0, r.stderr
        assert f"usage: launchers/{launcher} TRAIN_CONFIG" in r.stdout
        assert "MIXED_PRECISION" in r.stdout and "LOG_FILE" in r.stdout
    if launcher == "multinode.sh":
        for var in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "BACKEND"):
            assert var in r.stdout


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_bad_arguments_are_rejected_clearly(launcher, cfg_file, tmp_path):
    r = sh(launcher)
    assert r.returncode == 2 and "needs a train config and a process count" in r.stderr and "usage:" in r.stderr
    r = sh(launcher, tmp_path / "missing.json", 2)
    assert r.returncode == 2 and f"train config not found: {tmp_path / 'missing.json'}" in r.stderr
    r = sh(launcher, cfg_file, "two")
    assert r.returncode == 2 and "process count must be a positive integer, got 'two'" in r.stderr
    r = sh(launcher, cfg_file, 2, env={"DEVICE": "tpu", "DRY_RUN": 1})
    assert r.returncode == 2 and "DEVICE must be auto, cpu or cuda" in r.stderr


def test_multinode_environment_is_checked(cfg_file):
    r = sh("multinode.sh", cfg_file, 2, env={"NNODES": 2, "NODE_RANK": 0})
    assert r.returncode == 2 and "MASTER_ADDR (the address of node 0) is required" in r.stderr
    r = sh("multinode.sh", cfg_file, 2, env={"NNODES": 2, "NODE_RANK": 2, "MASTER_ADDR": "10.0.0.1"})
    assert r.returncode == 2 and "NODE_RANK must be in 0..1, got '2'" in r.stderr
    r = sh("multinode.sh", cfg_file, 2, env={"BACKEND": "zero9"})
    assert r.returncode == 2 and "BACKEND must be one of" in r.stderr


def dry(launcher, cfg_file, nproc=2, **env) -> tuple[dict, list[str]]:
    r = sh(launcher, cfg_file, nproc, "--max_train_steps", 2, env={"DRY_RUN": 1, **env})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    switches = dict(kv.split("=", 1) for kv in " ".join(lines[:3]).split())
    return switches, lines[3].split()


@pytest.mark.parametrize("launcher,yaml_name,kind", [
    ("ddp.sh", "ddp.yaml", "ddp"), ("ds_single.sh", "ds_zero2.yaml", "ds"), ("ds_zero3.sh", "ds_zero3.yaml", "ds"),
    ("fsdp.sh", "fsdp2.yaml", "fsdp"), ("multinode.sh", "ds_zero2_multinode.yaml", "ds")])
def test_cpu_and_cuda_switches(launcher, yaml_name, kind, cfg_file):
    env, cmd = dry(launcher, cfg_file, DEVICE="cpu", OMP_NUM_THREADS="")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(CONFIGS / yaml_name)
    assert cmd[cmd.index("--mixed_precision") + 1] == "no"
    assert cmd[-5:] == [str(REPO / "mftcoder" / "train.py"), "--train_config", str(cfg_file), "--max_train_steps", "2"]
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))  # cores shared by the 2 processes
    # CPU: gloo DDP/FSDP2 need ACCELERATE_USE_CPU (+ --multi_gpu for DDP); DeepSpeed must not see it
    assert env["ACCELERATE_USE_CPU"] == ("true" if kind in ("ddp", "fsdp") else "")
    assert env["DS_ACCELERATOR"] == ("cpu" if kind == "ds" else "")
    assert ("--multi_gpu" in cmd) == (kind == "ddp")

    env, cmd = dry(launcher, cfg_file, DEVICE="cuda", MIXED_PRECISION="bf16", OMP_NUM_THREADS=3,
                   ACCELERATE_USE_CPU="true" if kind == "ds" else "")
    assert env["ACCELERATE_USE_CPU"] == "" and env["DS_ACCELERATOR"] == "" and env["OMP_NUM_THREADS"] == "3"
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and "--multi_gpu" not in cmd


def test_offload_port_and_config_overrides(cfg_file, tmp_path):
    _, cmd = dry("ds_single.sh", cfg_file, OFFLOAD=1, DEVICE="cpu")
    assert cmd[cmd.index("--config_file") + 1] == str(CONFIGS / "ds_zero2_offload.yaml")
    _, cmd = dry("ds_zero3.sh", cfg_file, OFFLOAD=1, DEVICE="cpu", MASTER_PORT=29999)
    assert cmd[cmd.index("--config_file") + 1] == str(CONFIGS / "ds_zero3_offload.yaml")
    assert cmd[cmd.index("--main_process_port") + 1] == "29999"
    own = tmp_path / "mine.yaml"
    own.write_text((CONFIGS / "ddp.yaml").read_text())
    _, cmd = dry("ddp.sh", cfg_file, ACCELERATE_CONFIG=own, DEVICE="cpu")
    assert cmd[cmd.index("--config_file") + 1] == str(own)
    _, cmd = dry("ddp.sh", cfg_file, 1, DEVICE="cpu")  # one process: no --multi_gpu (accelerate refuses it)
    assert "--multi_gpu" not in cmd


def test_multinode_command(cfg_file):
    _, cmd = dry("multinode.sh", cfg_file, 8, DEVICE="cuda", MIXED_PRECISION="bf16", NNODES=4, NODE_RANK=3,
                 MASTER_ADDR="10.1.2.3", MASTER_PORT=29600, BACKEND="ds_zero3")
    flags = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flags["--config_file"] == str(CONFIGS / "ds_zero3_multinode.yaml")
    assert (flags["--num_machines"], flags["--machine_rank"], flags["--num_processes"]) == ("4", "3", "32")
    assert (flags["--main_process_ip"], flags["--main_process_port"]) == ("10.1.2.3", "29600")


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def test_accelerate_configs():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert names == set(SINGLE_NODE) | {f"{n}_multinode" for n in SINGLE_NODE}
    ports = [load_yaml(n)["main_process_port"] for n in SINGLE_NODE]
    assert len(set(ports)) == len(ports), "single-node configs need distinct ports to run side by side"
    for n in SINGLE_NODE:
        one, many = load_yaml(n), load_yaml(f"{n}_multinode")
        assert one["num_machines"] == 1 and many["num_machines"] > 1 and many["rdzv_backend"] == "static"
        # `accelerate launch --config_file <one node>` as written: a process per GPU, bf16 where the hardware has it
        assert one["num_processes"] == "auto" and one["mixed_precision"] == many["mixed_precision"] == "bf16"
        want = {"ddp": "MULTI_GPU", "fsdp2": "FSDP"}.get(n, "DEEPSPEED")
        assert one["distributed_type"] == many["distributed_type"] == want
        if want == "DEEPSPEED":
            ds = one["deepspeed_config"]
            # batch geometry and clipping come from the train config only
            assert not {"gradient_accumulation_steps", "gradient_clipping", "train_micro_batch_size_per_gpu",
                        "train_batch_size"} & set(ds)
            assert ds["zero_stage"] == (3 if "zero3" in n else 2)
            assert ds["offload_optimizer_device"] == ("cpu" if "offload" in n else "none")
            assert ds["offload_param_device"] == ("cpu" if n == "ds_zero3_offload" else "none")
            assert ds["zero3_save_16bit_model"] == (ds["zero_stage"] == 3)
            assert many["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
        if want == "FSDP":
            fsdp = one["fsdp_config"]
            assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
            assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # found from the model at run time
            assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


# ---- slow: real 2-step jobs ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("launch")
    tasks = []
    for name, n in (("code", 24), ("text", 12)):
        folder = root / "data" / name
        folder.mkdir(parents=True)
        with open(folder / "train.jsonl", "w") as f:
            for i in range(n):
                answer = (f"def add_{i}(x):\n    return x + {i}" if name == "code"
                          else "jumps over the dog. " * (1 + i % 3))
                f.write(json.dumps({"chat_rounds": [{"role": "human", "content": f"{name} {i}"},
                                                    {"role": "bot", "content": answer}]}) + "\n")
        tasks.append(str(folder))
    cfg = root / "train.json"
    cfg.write_text(json.dumps(dict(
        data_paths=tasks, output_dir=str(root / "unused"), pretrained_model_path=tiny_model_dir, seq_length=64,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-3, min_lr=1e-4,
        num_warmup_steps=0, max_train_steps=2, evaluation_steps=2, checkpointing_steps=2, early_stopping=False,
        data_split="80,20,0", init_timeout_seconds=300)))
    ref = root / "single"
    subprocess.run([sys.executable, str(REPO / "mftcoder" / "train.py"), "--train_config", str(cfg), "--output_dir",
                    str(ref), "--micro_batch_size", "4"], env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                   check=True, capture_output=True, timeout=300)
    return {"root": root, "cfg": cfg, "ref": read_metrics(ref)}


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def check_two_steps(out: Path, ref: list[dict]) -> None:
    """Same first two steps as one process (see test_distributed.py for the tolerance), a saved model."""
    got = read_metrics(out)
    assert [(r["step"], r.get("split")) for r in got] == [(r["step"], r.get("split")) for r in ref]
    for a, b in zip(ref, got):
        if a.get("split") is None:
            assert b["loss"] == pytest.approx(a["loss"], abs=2e-4)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
        for task, v in a["task_loss"].items():
            assert b["task_loss"][task] == pytest.approx(v, abs=2e-4)
    assert (out / "model.safetensors").exists() and (out / "checkpoint-2" / "trainer_state.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher,env", [("ddp.sh", {}), ("ds_single.sh", {"OFFLOAD": 1}),
                                          ("ds_zero3.sh", {"OFFLOAD": 1}), ("fsdp.sh", {})])
def test_two_step_job(job, launcher, env):
    out = job["root"] / launcher.replace(".sh", "")
    log_file = job["root"] / f"{out.name}.log"
    r = sh(launcher, job["cfg"], 2, "--output_dir", out, timeout=600,
           env={"OMP_NUM_THREADS": 1, "MASTER_PORT": free_port(), "LOG_FILE": log_file, **env})
    log = log_file.read_text(errors="replace")
    assert r.returncode == 0, log[-5000:]
    check_two_steps(out, job["ref"])
    # the same output in the log file and on the terminal
    assert "finished after 2 steps" in log and "finished after 2 steps" in r.stdout
    assert " x2 | " in log and "tasks: ['code', 'text'] | global batch 8 rows" in log
    assert log.splitlines()[1].startswith("# ") and "accelerate.commands.launch" in log.splitlines()[1]
    assert log.rstrip().endswith(f"# exit status 0; log: {log_file}")


@pytest.mark.slow
def test_multinode_two_nodes_on_this_machine(job):
    """Two 'nodes' of one process each, rendezvous through MASTER_ADDR/MASTER_PORT (DeepSpeed ZeRO-2 by default)."""
    out = job["root"] / "multinode"
    port = free_port()
    nodes = []
    for rank in (0, 1):
        env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NNODES="2", NODE_RANK=str(rank),
                   LOG_FILE=str(job["root"] / f"node{rank}.log"))
        for key in ("BACKEND", "OFFLOAD", "DEVICE", "ACCELERATE_USE_CPU"):
            env.pop(key, None)
        nodes.append(subprocess.Popen(["bash", str(REPO / "launchers" / "multinode.sh"), str(job["cfg"]), "1",
                                       "--output_dir", str(out)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    codes = [p.wait(timeout=600) for p in nodes]
    logs = [(job["root"] / f"node{r}.log").read_text(errors="replace") for r in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "--num_machines 2 --machine_rank 1 --num_processes 2" in logs[1]
    assert "DistributedType.DEEPSPEED x2" in logs[0]
    check_two_steps(out, job["ref"])


def test_cpu_allocator_settings_come_from_malloc_env_and_switch_off(cfg_file):
    """On CPU the launchers export launchers/malloc.env (a value the user set wins); MFTCODER_NO_MALLOC_TUNING=1 and
    CUDA leave glibc's defaults."""
    wanted = dict(line.split("=", 1) for line in (REPO / "launchers" / "malloc.env").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    assert set(wanted) == {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"}
    env, _ = dry("ddp.sh", cfg_file, DEVICE="cpu")
    assert {k: env[k] for k in wanted} == wanted
    env, _ = dry("ddp.sh", cfg_file, DEVICE="cpu", MALLOC_MMAP_MAX_="7")
    assert env["MALLOC_MMAP_MAX_"] == "7" and env["MALLOC_TRIM_THRESHOLD_"] == wanted["MALLOC_TRIM_THRESHOLD_"]
    for off in ({"DEVICE": "cpu", "MFTCODER_NO_MALLOC_TUNING": "1"}, {"DEVICE": "cuda"}):
        env, _ = dry("ddp.sh", cfg_file, **off)
        assert env["MALLOC_MMAP_MAX_"] == "" and env["MALLOC_TRIM_THRESHOLD_"] == "", off
