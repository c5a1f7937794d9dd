"""mftcoder against the tools users would pick instead, side by side in one run.

    pip install '.[bench]'    # TRL and datasets (not runtime requirements)
    python benchmarks/bench_vs_peers.py [--model smollm2|tiny] [--steps 12] [--rounds 2] [--rows a,b,...]
                                        [--seq-length 1024] [--samples 2000] [--tasks 3] [--json out.json] [--quick]

Every row trains the same model (full fine-tuning, bf16 autocast where the hardware has it, else fp32) on the same
generated multi-task code chats (`peer_data.py`: lengths log-uniform from tens of tokens to the sequence length) for
the same number of optimizer steps with the same tokens per step: packed rows are micro batch 1 x accumulation 2 of
`seq_length` positions; padded rows take as many samples per micro-batch as a packed row holds on average. Each
configuration runs in its own process; the order alternates between rounds (round 2 runs it backwards), so a slow
spell of a shared machine does not always hit the same row. The table gives each row's real (non-pad) tokens/s
after the first step, the fraction of computed positions that were padding, peak memory (RSS on CPU, max allocated
on CUDA) and the time from the process start to the end of the first optimizer step, with ratios against the
first row (mftcoder, packed, all tasks).

Rows (ROWS): mftcoder packed (all tasks, case3 + the balanced sampler; and everything as one task), mftcoder padded,
TRL SFTTrainer with packing (BFD, padding-free) and with its defaults (padded batches), the transformers Trainer
with dynamic padding, and a bare hand-written packed loop (position_ids, no mask, full-logits loss, fused AdamW): the
practical ceiling of this software stack.

Every tool reads the same token ids and loss masks: mftcoder tokenises the task folders (its cache is built before
the timed processes start), and the peers get exactly those samples pre-tokenised.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO, os.path.join(REPO, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)

import peer_rows  # noqa: E402  (the workers: one function per row)

REFERENCE_ROW = "mftcoder_pack"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("smollm2", "tiny", "llama1b"), default="smollm2",
                   help="llama1b: a 1.1B Llama built from a config (random weights; for GPUs)")
    p.add_argument("--rows", default=",".join(peer_rows.ROWS), help="comma-separated rows: " + ", ".join(peer_rows.ROWS))
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per row (the first is not timed)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--samples", type=int, default=2000, help="samples over all tasks")
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per process")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="glibc allocator settings of every row's process (tuned: as mftcoder's CPU launchers set)")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--workdir", help="keep the data and runs here (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true", help="tiny model, 4 steps, 1 round, 240 samples of <= 512 tokens")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.steps, args.rounds, args.samples, args.seq_length = "tiny", 4, 1, 240, 512
    unknown = [r for r in args.rows.split(",") if r not in peer_rows.ROWS]
    if unknown:
        p.error(f"--rows: unknown {unknown}; valid: {', '.join(peer_rows.ROWS)}")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is not timed)")
    return args


def run_worker(row: str, spec: dict, env: dict) -> dict:
    """One row in a fresh process; returns the worker's result record (or the error)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", row, "--spec", json.dumps(spec)]
    started = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(peer_rows.RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {"row": row, "error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1][len(peer_rows.RESULT_PREFIX):])
    result["time_to_first_step_s"] = result.pop("first_step_at") - started
    return result


def worker_env(args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "ACCELERATE_"))}
    env.update(OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               MFTCODER_NO_MALLOC_TUNING="1")
    if args.malloc == "tuned":
        env.update(peer_rows.malloc_settings())
    return env


def summarise(results: list[dict], rows: list[str]) -> dict:
    """Per row: each round's numbers, and ratios against the reference row of the same round."""
    table = {}
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        table[row] = {"rounds": mine}
    for row in rows:
        ratios = []
        for r in table[row]["rounds"]:
            ref = next((x for x in table.get(REFERENCE_ROW, {}).get("rounds", []) if x["round"] == r["round"]), None)
            if ref and "error" not in r and "error" not in ref:
                ratios.append(r["real_tokens_per_s"] / ref["real_tokens_per_s"])
        table[row]["tokens_per_s_vs_reference"] = ratios
    return table


def fmt_table(table: dict, rows: list[str], rounds: int) -> str:
    head = ["row"] + [f"real tok/s r{i + 1}" for i in range(rounds)] + [f"x{REFERENCE_ROW} r{i + 1}" for i in range(rounds)]
    head += ["pad frac", "model TFLOP/s", "MFU", "peak mem GiB", "first step s"]
    lines = [head]
    for row in rows:
        rs = table[row]["rounds"]
        ok = [r for r in rs if "error" not in r]
        cells = [row]
        cells += [f"{r['real_tokens_per_s']:.0f}" if "error" not in r else "error" for r in rs]
        cells += [f"{x:.2f}" for x in table[row]["tokens_per_s_vs_reference"]]
        cells += ["-"] * (len(head) - 5 - len(cells))
        best = max(ok, key=lambda r: r["real_tokens_per_s"]) if ok else None
        cells += [f"{max(r['pad_fraction'] for r in ok):.3f}" if ok else "-",
                  f"{best['model_tflops']:.3g}" if best else "-",
                  f"{best['mfu']:.1%}" if best and best.get("mfu") is not None else "-",
                  f"{max(r['peak_memory_bytes'] for r in ok) / 2**30:.2f}" if ok else "-",
                  f"{min(r['time_to_first_step_s'] for r in ok):.1f}" if ok else "-"]
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return peer_rows.run_row(args.worker, json.loads(args.spec))
    rows = args.rows.split(",")
    keep = args.workdir is not None
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_vs_peers_")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    spec = peer_rows.prepare(workdir, args)  # model, data, tokenised samples, the warm mftcoder caches
    env = worker_env(args)
    print(f"model {args.model}, seq {args.seq_length}, {spec['num_samples']} samples in {args.tasks} tasks "
          f"({spec['data']['real_tokens']:,} tokens, lengths {spec['data']['min_len']}-{spec['data']['max_len']}), "
          f"{args.steps} steps x {spec['tokens_per_step']} positions, {args.threads} threads, malloc {args.malloc}, "
          f"torch {spec['torch']}, {spec['device']}", flush=True)
    results = []
    for rnd in range(1, args.rounds + 1):
        order = rows if rnd % 2 else rows[::-1]
        for row in order:
            res = run_worker(row, dict(spec, round=rnd, steps=args.steps), env)
            res["round"] = rnd
            results.append(res)
            shown = (f"{res['real_tokens_per_s']:.0f} real tok/s, first step {res['time_to_first_step_s']:.1f} s, "
                     f"peak {res['peak_memory_bytes'] / 2**30:.2f} GiB") if "error" not in res else res["error"][-800:]
            print(f"  round {rnd} {row}: {shown}", flush=True)
    table = summarise(results, rows)
    print()
    print(fmt_table(table, rows, args.rounds))
    print(f"\n({time.time() - t0:.0f} s in all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "spec")},
                       "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": spec["device"],
                                   "torch": spec["torch"]},
                       "data": spec["data"], "tokens_per_step": spec["tokens_per_step"], "rows": table}, f, indent=1)
    if not keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
