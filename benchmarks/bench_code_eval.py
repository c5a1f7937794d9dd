"""Code-eval execution throughput: the sandbox scoring samples with 1 worker (baseline) and N workers, side by side.

    python benchmarks/bench_code_eval.py [--languages python,cpp,java,js,go,rust] [--samples 48] [--workers N]
                                         [--quick] [--json out.json]

For each language, the canonical solutions of the self-written HumanEval-X fixture files
(`tests/data/code_eval/humanevalx/<lang>.jsonl`) are repeated until there are --samples of them (every problem
the same number of times), written as a human-eval samples file, read back with `read_samples` and scored by
`mftcoder.eval.humaneval.score`: the code path of `mftcoder eval humaneval --samples` (build, run and check every
sample in its own sandbox: bubblewrap for compiled languages, the Python sandbox for Python). The wall time of
`score` gives samples/s with `--workers 1` and with `--workers N` (default: the CPU count); the ratio is the
speed-up. Every sample must pass (they are the reference solutions): the script exits with status 1 otherwise.
Languages whose toolchain is missing are left out and named (as `--skip_missing_toolchains` does).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_training import host  # noqa: E402  (shared helpers)
from mftcoder.eval.humaneval import load_problem_files, read_samples, require_toolchains, score  # noqa: E402
from mftcoder.eval.languages import LANGUAGES  # noqa: E402
from mftcoder.eval.sandbox import PASSED, SandboxLimits  # noqa: E402

FIXTURES = os.path.join(REPO, "tests", "data", "code_eval", "humanevalx")
ALL_LANGUAGES = ("python", "cpp", "java", "js", "go", "rust")
QUICK = {"samples": 2, "workers": 2}


def samples_file(problems, total: int, path: str) -> int:
    """Write each canonical solution ceil(total / len(problems)) times; returns the number of lines."""
    repeat = math.ceil(total / len(problems))
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            for _ in range(repeat):
                f.write(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n")
    return repeat * len(problems)


def time_scoring(problems, samples_path: str, workers: int) -> dict:
    completions = read_samples(samples_path, problems)
    start = time.perf_counter()
    _, per_problem = score(problems, completions, [1], SandboxLimits(), workers, progress=False)
    seconds = time.perf_counter() - start
    statuses = [r["status"] for e in per_problem.values() for r in e["results"]]
    n = len(statuses)
    return {"workers": workers, "samples": n, "seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 3),
            "passed": statuses.count(PASSED),
            "not_passed": [f"{t}: {r['status']}: {r['error']}" for t, e in per_problem.items()
                           for r in e["results"] if r["status"] != PASSED][:3]}


def bench_language(lang: str, args, workdir: str) -> dict:
    path = os.path.join(FIXTURES, f"{lang}.jsonl")
    problems = load_problem_files([path], None)
    if args.quick:
        problems = problems[:1]
    samples_path = os.path.join(workdir, f"{lang}.samples.jsonl")
    n = samples_file(problems, args.samples, samples_path)
    runs = {str(w): time_scoring(problems, samples_path, w) for w in (1, args.workers)}
    one, many = runs["1"], runs[str(args.workers)]
    return {"language": lang, "display": LANGUAGES[lang].display, "problems": len(problems), "samples": n,
            "samples_per_s": many["samples_per_s"], "speedup": round(many["samples_per_s"] / one["samples_per_s"], 3),
            "runs": runs}


def report(results: dict) -> str:
    n = results["settings"]["workers"]
    head = ("language", "problems", "samples", "1 worker: s", "samples/s", f"{n} workers: s", "samples/s",
            f"{n}/1", "passed")
    rows = []
    for r in results["languages"].values():
        one, many = r["runs"]["1"], r["runs"][str(n)]
        rows.append((r["display"], str(r["problems"]), str(r["samples"]), f"{one['seconds']:.2f}",
                     f"{one['samples_per_s']:.2f}", f"{many['seconds']:.2f}", f"{many['samples_per_s']:.2f}",
                     f"{r['speedup']:.2f}", f"{one['passed'] + many['passed']}/{one['samples'] + many['samples']}"))
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    title = (f"== code-eval sandbox throughput: canonical solutions, 1 worker vs {n} workers "
             f"({results['machine']['cpu_count']} CPUs)")
    out = [title, line(head), "-" * (sum(widths) + 2 * (len(head) - 1))] + [line(r) for r in rows]
    for lang, why in results["skipped_languages"].items():
        out.append(f"skipped {lang}: {why}")
    return "\n".join(out)


def machine() -> dict:
    return host() | {"load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--languages", default=",".join(ALL_LANGUAGES),
                    help=f"comma-separated, of {', '.join(ALL_LANGUAGES)} (default: all)")
    ap.add_argument("--samples", type=int, default=48, help="samples per language, at least (default 48)")
    ap.add_argument("--workers", type=int, default=None, help="workers of the parallel run (default: the CPU count)")
    ap.add_argument("--quick", action="store_true",
                    help=f"one problem per language, {QUICK['samples']} samples, {QUICK['workers']} workers (seconds)")
    ap.add_argument("--json", "--out", dest="json", metavar="PATH", help="write every number to this JSON file")
    args = ap.parse_args(argv)
    langs = [x.strip() for x in args.languages.split(",") if x.strip()]
    unknown = [x for x in langs if x not in ALL_LANGUAGES]
    if unknown or not langs:
        ap.error(f"--languages: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(ALL_LANGUAGES)}")
    args.languages = langs
    if args.quick:
        args.samples, args.workers = QUICK["samples"], args.workers or QUICK["workers"]
    args.workers = args.workers or os.cpu_count() or 1
    if args.samples < 1 or args.workers < 1:
        ap.error(f"--samples and --workers must be >= 1, got {args.samples} and {args.workers}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    problems = load_problem_files([os.path.join(FIXTURES, f"{lang}.jsonl") for lang in args.languages], None)
    kept, skipped = require_toolchains(problems, skip_missing=True)
    results = {"command": " ".join(["python", "benchmarks/bench_code_eval.py"] + (argv or sys.argv[1:])),
               "settings": {"samples": args.samples, "workers": args.workers, "quick": args.quick,
                            "languages": args.languages},
               "machine": machine(), "skipped_languages": skipped, "languages": {}}
    with tempfile.TemporaryDirectory(prefix="mftcoder-bench-code-eval-") as workdir:
        for lang in sorted({p.language for p in kept}, key=ALL_LANGUAGES.index):
            results["languages"][lang] = bench_language(lang, args, workdir)
            print(f"{lang}: {results['languages'][lang]['samples_per_s']} samples/s", file=sys.stderr)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")
    failed = [r for lang in results["languages"].values() for r in lang["runs"].values() if r["not_passed"]]
    if failed:
        print(f"error: canonical solutions did not pass: {failed[0]['not_passed']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
