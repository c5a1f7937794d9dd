#!/usr/bin/env python
"""Single-task SFT vs mixed SFT vs multi-task fine-tuning (case3, CoBa), in miniature, on a CPU.

    python examples/mft_vs_sft/run.py                      # the whole comparison (about 55 minutes on 2 cores)
    python examples/mft_vs_sft/run.py --quick              # every run and task on tiny budgets (under 5 minutes)
    python examples/mft_vs_sft/run.py --out runs/mft_vs_sft --humaneval 164   # all of HumanEval (much longer)

The bundled example tasks are generated again, made imbalanced on purpose (8:4:2:1 samples) and with some library
functions held out of every task's training data. SmolLM2-135M-Instruct is then LoRA-fine-tuned with the same number
of optimizer steps of the same size (the same tokens) seven times: once on each task alone (single-task SFT), on the
mixed data with one token-averaged loss and proportional sampling (mixed SFT, `case1`), and as multi-task fine-tuning
with uniform task sampling and the task-balanced loss (`case3`) or CoBa (`coba`). Each model is measured per task:
validation loss, and the execution pass rate on held-out problems that carry tests (run in the eval sandbox), plus
HumanEval pass@1 on the first `--humaneval` problems. Written to --out: results.json, results.md (the tables) and
report.html (`mftcoder report --compare` of the runs). A finished run is reused when its config is unchanged, so an
interrupted comparison goes on where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "examples")]

import heldout  # noqa: E402  (examples/mft_vs_sft/heldout.py)
import make_examples  # noqa: E402  (examples/make_examples.py)

TASKS = ("code_completion", "text_to_code", "code_explain", "unit_tests")  # largest first: 8:4:2:1
BASE = "base"


@dataclass(frozen=True)
class Budget:
    """Everything that sizes the comparison; the same for every run."""

    sizes: tuple[int, ...]          # samples per task (TASKS order), before the train/valid split
    heldout: int                    # library functions held out of every task's training data
    steps: int                      # optimizer steps of every run
    micro_batch: int
    accumulation: int
    seq_length: int
    evaluation_steps: int
    lora_rank: int
    max_new_tokens: int             # per held-out answer
    humaneval: int                  # first N HumanEval problems (0: none)
    humaneval_max_new_tokens: int
    warmup_steps: int
    data_split: str = "80,20,0"
    learning_rate: float = 1e-3
    coba_warmup_steps: int = 10


FULL = Budget(sizes=(320, 160, 80, 40), heldout=20, steps=40, micro_batch=2, accumulation=1, seq_length=512,
              evaluation_steps=8, lora_rank=16, max_new_tokens=256, humaneval=20, humaneval_max_new_tokens=384,
              warmup_steps=3)
QUICK = Budget(sizes=(24, 12, 6, 6), heldout=3, steps=2, micro_batch=2, accumulation=1, seq_length=384,
               evaluation_steps=2, lora_rank=4, max_new_tokens=24, humaneval=1, humaneval_max_new_tokens=24,
               warmup_steps=0, data_split="70,30,0", coba_warmup_steps=1)


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str
    tasks: tuple[str, ...]
    weighted_loss_mode: str
    task_sampling: str


def run_specs() -> list[RunSpec]:
    single = [RunSpec(f"sft_{t}", f"single-task SFT ({t})", (t,), "case1", "proportional") for t in TASKS]
    return single + [
        RunSpec("mixed_sft", "mixed SFT (case1, proportional)", TASKS, "case1", "proportional"),
        RunSpec("mft_case3", "MFT case3 (uniform)", TASKS, "case3", "uniform"),
        RunSpec("mft_coba", "MFT CoBa (uniform)", TASKS, "coba", "uniform"),
    ]


# --- data -------------------------------------------------------------------------------------------------------------

def make_data(out: Path, budget: Budget) -> dict[str, list[dict]]:
    """The imbalanced tasks under out/data/<task>/ and the held-out problems {task: [problem]}."""
    train_files, problems = make_examples.generate_heldout(dict(zip(TASKS, budget.sizes)), budget.heldout)
    make_examples.write(train_files, out / "data", TASKS)
    folder = out / "data" / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    for task, items in problems.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in items))
    return problems


# --- training ---------------------------------------------------------------------------------------------------------

def train_config(spec: RunSpec, budget: Budget, data: Path, run_dir: Path, model: str) -> dict:
    cfg = {
        "data_paths": [str(data / t) for t in spec.tasks], "data_split": budget.data_split,
        "output_dir": str(run_dir), "pretrained_model_path": model, "overwrite_output_dir": True,
        "peft_type": "lora", "lora_rank": budget.lora_rank, "lora_alpha": 2 * budget.lora_rank, "lora_dropout": 0.05,
        "weighted_loss_mode": spec.weighted_loss_mode, "task_sampling": spec.task_sampling, "padding_mode": "pack",
        "seq_length": budget.seq_length, "per_device_train_batch_size": budget.micro_batch,
        "gradient_accumulation_steps": budget.accumulation, "per_device_eval_batch_size": 8,
        "learning_rate": budget.learning_rate, "min_lr": budget.learning_rate / 10,
        "num_warmup_steps": budget.warmup_steps,
        "num_train_epochs": 1000, "max_train_steps": budget.steps, "evaluation_steps": budget.evaluation_steps,
        "checkpointing_steps": None, "early_stopping": False, "seed": 1234, "log_interval": 1,
    }
    if spec.weighted_loss_mode == "coba":
        cfg.update(coba_warmup_steps=budget.coba_warmup_steps, coba_update_interval=1, coba_sample_valid_num=1)
    return cfg


def train(spec: RunSpec, cfg: dict, run_dir: Path, log: Path) -> float:
    """Trains one run in its own process (skipped when a finished run with this config is there); returns seconds."""
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    done = run_dir / "comparison_done.json"
    if done.exists() and json.loads(done.read_text()).get("config") == digest:
        print(f"[{spec.name}] finished before with this config: reused", file=sys.stderr)
        return json.loads(done.read_text())["seconds"]
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.parent / f"{spec.name}.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    cmd = [sys.executable, "-m", "mftcoder", "train", "--train_config", str(cfg_path)]
    print(f"[{spec.name}] training: {spec.label}", file=sys.stderr)
    start = time.perf_counter()
    with open(log, "w") as f:
        # bf16 autocast where the hardware has it (mftcoder falls back to fp32, with a warning, where it does not)
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=child_env(ACCELERATE_MIXED_PRECISION="bf16"))
    if proc.returncode != 0:
        raise SystemExit(f"error: training {spec.name} failed (exit {proc.returncode}); see {log}")
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"config": digest, "seconds": seconds}))
    return seconds


def child_env(**extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("DS_ACCELERATOR", None)
    return env


# --- measuring --------------------------------------------------------------------------------------------------------

def valid_curve(run_dir: Path) -> list[dict]:
    """The run's validation records (step 0 = before training), from metrics.jsonl."""
    with open(run_dir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("split") == "valid"]


def loss_summary(curve: list[dict], task: str) -> dict:
    """first, best and last validation loss of a task, and how far the last one is above the best."""
    values = [(r["step"], r["task_loss"].get(task)) for r in curve if r["task_loss"].get(task) is not None]
    if not values:
        return {}
    best_step, best = min(values, key=lambda v: v[1])
    last = values[-1][1]
    return {"first": values[0][1], "best": best, "best_step": best_step, "last": last,
            "rise_from_best": (last - best) / best if best else 0.0}


def generate(name: str, model: str, adapter: Path | None, prompts: Path, out: Path, budget: Budget) -> list[str]:
    """Greedy answers (in prompts' order) from `mftcoder generate`, in its own process."""
    cmd = [sys.executable, "-m", "mftcoder", "generate", "--model", model, "--input", str(prompts), "--output",
           str(out), "--temperature", "0", "--max_new_tokens", str(budget.max_new_tokens), "--batch_size", "16",
           "--no_progress"] + (["--adapter", str(adapter)] if adapter else [])
    _run_logged(cmd, out.with_suffix(".log"), f"generating held-out answers of {name}")
    with open(out) as f:
        return [json.loads(line)["output"] for line in f]


def humaneval(name: str, model: str, adapter: Path | None, out: Path, budget: Budget) -> float:
    """HumanEval pass@1 (greedy) on the first `budget.humaneval` problems, in its own process."""
    cmd = [sys.executable, "-m", "mftcoder", "eval", "humaneval", "--model", model, "--n", "1", "--temperature", "0",
           "--k", "1", "--limit", str(budget.humaneval), "--max_new_tokens", str(budget.humaneval_max_new_tokens), "--batch_size", "16",
           "--output", str(out), "--no_progress"] + (["--adapter", str(adapter)] if adapter else [])
    _run_logged(cmd, out.with_suffix(".log"), f"HumanEval[:{budget.humaneval}] of {name}")
    return json.loads(out.read_text())["pass@1"]


def _run_logged(cmd: list[str], log: Path, what: str) -> None:
    print(f"  {what}", file=sys.stderr)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env())
    if proc.returncode != 0:
        raise SystemExit(f"error: {what} failed (exit {proc.returncode}); see {log}")


def write_prompts(problems: dict[str, list[dict]], tasks: tuple[str, ...], path: Path) -> list[dict]:
    """The held-out problems of `tasks` as `mftcoder generate` input lines; returns them in file order."""
    chosen = [p for t in tasks for p in problems.get(t, [])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"task_id": p["task_id"], "chat_rounds": p["messages"]}) + "\n"
                            for p in chosen))
    return chosen


def measure(name: str, tasks: tuple[str, ...], model: str, adapter: Path | None, problems: dict, out: Path,
            budget: Budget, with_humaneval: bool) -> dict:
    """Held-out pass rates per task (and HumanEval pass@1) of one model."""
    chosen = write_prompts(problems, tasks, out / "prompts" / f"{name}.jsonl")
    result: dict = {"pass_rate": {}, "passed": {}, "problems": {}}
    if chosen:
        answers = generate(name, model, adapter, out / "prompts" / f"{name}.jsonl", out / "answers" / f"{name}.jsonl",
                           budget)
        scored = heldout.score(chosen, answers, workers=os.cpu_count() or 1)
        (out / "answers" / f"{name}.scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scored))
        result["pass_rate"] = heldout.pass_rates(scored)
        for task in result["pass_rate"]:
            mine = [s for s in scored if s["task"] == task]
            result["passed"][task], result["problems"][task] = sum(s["passed"] for s in mine), len(mine)
    if with_humaneval and budget.humaneval:
        result["humaneval_pass@1"] = humaneval(name, model, adapter, out / "humaneval" / f"{name}.json", budget)
    return result


# --- the tables -------------------------------------------------------------------------------------------------------

def rows(results: dict) -> list[tuple[str, dict]]:
    """(label, {task: {"valid": .., "pass": (passed, n)}, "humaneval": ..}) per table row; the single-task runs are
    one row, each task measured on its own model."""
    runs = results["runs"]
    base = {"humaneval": results[BASE].get("humaneval_pass@1")}
    single: dict = {"humaneval": None}
    for task in TASKS:
        base[task] = _cell(runs["mixed_sft"]["valid"][task].get("first"), results[BASE], task)
        own = runs[f"sft_{task}"]
        single[task] = _cell(own["valid"][task].get("last"), own, task)
    out = [("base model (no fine-tuning)", base), ("single-task SFT (one model per task)", single)]
    for name in ("mixed_sft", "mft_case3", "mft_coba"):
        r = runs[name]
        out.append((r["label"], {"humaneval": r.get("humaneval_pass@1"),
                                 **{t: _cell(r["valid"][t].get("last"), r, t) for t in TASKS}}))
    return out


def _cell(valid, measured: dict, task: str) -> dict:
    n = measured.get("problems", {}).get(task)
    return {"valid": valid, "pass": (measured["passed"][task], n) if n else None}


def markdown(results: dict) -> str:
    executable = [t for t in TASKS if any(t in r.get("problems", {}) for r in results["runs"].values())]
    loss_lines = ["| run | " + " | ".join(TASKS) + " |", "|---|" + "---:|" * len(TASKS)]
    pass_lines = ["| run | " + " | ".join(executable) + " | HumanEval pass@1 |", "|---|" + "---:|" * (len(executable) + 1)]
    for label, row in rows(results):
        loss_lines.append(f"| {label} | " + " | ".join(_num(row[t]["valid"]) for t in TASKS) + " |")
        passes = [f"{row[t]['pass'][0]}/{row[t]['pass'][1]}" if row[t]["pass"] else "-" for t in executable]
        pass_lines.append(f"| {label} | " + " | ".join(passes) + f" | {_num(row['humaneval'], 3)} |")
    he = results["budget"]["humaneval"]
    return "\n".join(["Validation loss per task (last evaluation; lower is better):", "", *loss_lines, "",
                      "Held-out problems passed per task (functions no training sample contains), and HumanEval "
                      f"pass@1 on its first {he} problems:", "", *pass_lines, "", "Claims:", "",
                      *[f"- {c}" for c in claims(results)], ""])


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else ("nan" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}")


def claims(results: dict) -> list[str]:
    """The expected outcomes, each checked against the numbers (true or false, with the numbers)."""
    runs, out = results["runs"], []
    last = {n: {t: runs[n]["valid"][t].get("last") for t in TASKS} for n in ("mixed_sft", "mft_case3", "mft_coba")}
    best_mft = {t: min(last["mft_case3"][t], last["mft_coba"][t]) for t in TASKS}
    worse = [t for t in TASKS if best_mft[t] > last["mixed_sft"][t]]
    out.append(("holds" if not worse else f"does not hold for {', '.join(worse)}") +
               ": every task ends with a validation loss under MFT (the better of case3 and CoBa) at most mixed SFT's")
    change = {t: (best_mft[t] - last["mixed_sft"][t]) / last["mixed_sft"][t] for t in TASKS}
    smallest = TASKS[min(range(len(TASKS)), key=lambda i: results["budget"]["sizes"][i])]
    top = min(change, key=change.get)
    out.append(("holds" if top == smallest else "does not hold") + f": the smallest task ({smallest}) gains most "
               "from MFT over mixed SFT (validation loss change, MFT against mixed SFT: " +
               ", ".join(f"{t} {c:+.1%}" for t, c in change.items()) + ")")
    for name in ("mft_case3", "mft_coba", "mixed_sft"):
        rises = {t: runs[name]["valid"][t].get("rise_from_best", 0.0) for t in TASKS}
        rose = {t: r for t, r in rises.items() if r > 0.01}
        out.append(f"{runs[name]['label']}: " + ("no task's validation loss rose more than 1% above its best" if not rose
                   else "validation loss rose above its best for " + ", ".join(f"{t} (+{r:.1%})"
                                                                              for t, r in rose.items())))
    return out


# --- the comparison ---------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example:\n  python examples/mft_vs_sft/run.py --quick --out /tmp/mft_quick",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "mft_vs_sft", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks that everything runs (under 5 minutes)")
    p.add_argument("--model", default=None, help="base model directory (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of every run")
    p.add_argument("--humaneval", type=int, default=None, help="HumanEval problems to score (0: none; 164: all)")
    return p.parse_args(argv)


def run_all(out: Path, budget: Budget, model: str) -> dict:
    problems = make_data(out, budget)
    results: dict = {"budget": asdict(budget), "model": model, "runs": {}}
    for spec in run_specs():
        run_dir = out / "runs" / spec.name
        cfg = train_config(spec, budget, out / "data", run_dir, model)
        seconds = train(spec, cfg, run_dir, out / "runs" / f"{spec.name}.log")
        curve = valid_curve(run_dir)
        measured = measure(spec.name, tuple(t for t in spec.tasks if t in problems), model, run_dir, problems, out,
                           budget, with_humaneval=len(spec.tasks) > 1)
        with open(run_dir / "metrics.jsonl") as f:
            tokens = sum(json.loads(line).get("tokens", 0) for line in f if line.strip())
        results["runs"][spec.name] = {"label": spec.label, "tasks": list(spec.tasks), "config": cfg,
                                      "train_seconds": round(seconds, 1), "tokens": tokens,
                                      "valid": {t: loss_summary(curve, t) for t in spec.tasks}, **measured}
    results[BASE] = measure(BASE, TASKS, model, None, problems, out, budget, with_humaneval=True)
    return results


def write_report(out: Path) -> None:
    names = [s.name for s in run_specs()]
    first, rest = names[-3], [n for n in names if n != names[-3]]  # mixed SFT first: the reference run
    cmd = [sys.executable, "-m", "mftcoder", "report", str(out / "runs" / first), "--compare",
           *[str(out / "runs" / n) for n in rest], "--out", str(out / "report.html")]
    _run_logged(cmd, out / "report.log", "mftcoder report --compare")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    budget = replace(budget, **{k: v for k, v in (("steps", args.steps), ("humaneval", args.humaneval))
                                if v is not None})
    model = args.model or subprocess.run([sys.executable, "-m", "mftcoder.model.smollm2"], check=True, text=True,
                                         stdout=subprocess.PIPE, env=child_env()).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_all(args.out, budget, model)
    write_report(args.out)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    print(table)
    print(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'report.html'} "
          f"({results['seconds'] / 60:.1f} minutes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
