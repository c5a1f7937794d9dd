"""Multiple-choice knowledge benchmarks (MMLU, CMMLU, C-Eval, or your own CSV / jsonl): accuracy by the
log-likelihood of each choice letter after the prompt, zero- or k-shot, per subject and overall.

    mftcoder eval multiple-choice --model DIR [--adapter DIR] --data mmlu/data --shots 5 --output mmlu.json
    mftcoder eval multiple-choice --model DIR --data ceval --split val --prompt_language zh --output ceval.json
    mftcoder eval multiple-choice --model DIR --data my_questions.jsonl --chat --output mine.json

`--data` is a question file or a folder: one with test/ (or val/) and optionally dev/ subfolders as MMLU, CMMLU
and C-Eval ship, or a flat folder of files. One file per subject (its name, less _test/_dev/_val). Few-shot
examples are the first --shots questions of the same subject's dev file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mftcoder.errors import run_reporting_errors
from mftcoder.eval.mc_data import SPLITS, Question, group_by_subject, question_files
from mftcoder.eval.mc_prompts import LANGUAGES, build_prompt, continuations, resolve_language, wrap_chat


def select_subjects(questions: dict[str, list[Question]], wanted: str | None) -> dict[str, list[Question]]:
    if not wanted:
        return questions
    names = [s.strip() for s in wanted.split(",") if s.strip()]
    unknown = [n for n in names if n not in questions]
    if unknown or not names:
        raise ValueError(f"--subjects: unknown subject(s) {unknown or wanted!r}; available: "
                         f"{', '.join(sorted(questions)[:20])}{' ...' if len(questions) > 20 else ''}")
    return {n: questions[n] for n in names}


def load_shots(subjects: list[str], shots: int, dev: str | None) -> dict[str, list[Question]]:
    """The first `shots` dev questions of every subject; an error when the dev split lacks a subject or rows."""
    if shots < 0:
        raise ValueError(f"--shots must be 0 or more; got {shots}")
    if shots == 0:
        return {s: [] for s in subjects}
    if dev is None:
        raise ValueError(f"--shots {shots} needs dev examples: --data has no dev/ folder next to its split; "
                         "pass --dev FILE_OR_DIR")
    files = [dev] if os.path.isfile(dev) else question_files(dev, "test")[0]
    by_subject = group_by_subject(files)
    out = {}
    for s in subjects:
        have = by_subject.get(s, [])
        if len(have) < shots:
            raise ValueError(f"--shots {shots}: the dev split ({dev}) has {len(have)} question(s) for subject "
                             f"{s!r}; use --shots {len(have)} or fewer")
        out[s] = have[:shots]
    return out


def render_prompts(questions: dict[str, list[Question]], shots: dict[str, list[Question]], requested: str,
                   tokenizer=None, chat: bool = False) -> tuple[list[tuple[Question, str, list[str]]], dict[str, str]]:
    """[(question, prompt text, continuations)] over all subjects, and each subject's prompt language."""
    items, languages = [], {}
    for subject, qs in questions.items():
        language = languages[subject] = resolve_language(requested, qs)
        for q in qs:
            prompt = build_prompt(q, shots[subject], language)
            items.append((q, wrap_chat(prompt, tokenizer) if chat else prompt, continuations(q, language, chat)))
    return items, languages


def summarize(items, loglikelihoods: list[dict[int, float]], languages: dict[str, str]) -> dict:
    per_subject: dict[str, dict] = {}
    per_question = []
    for (q, _, conts), ll in zip(items, loglikelihoods):
        pred = max(range(len(q.choices)), key=lambda i: ll[i])  # ties go to the first letter
        entry = per_subject.setdefault(q.subject, {"n": 0, "correct": 0, "language": languages[q.subject]})
        entry["n"] += 1
        entry["correct"] += pred == q.answer
        per_question.append({"subject": q.subject, "source": q.source, "answer": q.letters[q.answer],
                             "prediction": q.letters[pred], "correct": pred == q.answer,
                             "loglikelihoods": {q.letters[i]: ll[i] for i in range(len(q.choices))}})
    for entry in per_subject.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    n = sum(e["n"] for e in per_subject.values())
    correct = sum(e["correct"] for e in per_subject.values())
    macro = sum(e["accuracy"] for e in per_subject.values()) / len(per_subject)
    return {"accuracy": correct / n, "accuracy_macro": macro,
            "n_questions": n, "n_correct": correct, "n_subjects": len(per_subject),
            "per_subject": per_subject, "per_question": per_question}


def warn_too_long(sequences, limit: int | None) -> None:
    """Say so when prompts exceed the model's context (scores past it are not meaningful); fewer --shots help."""
    longest = max(len(s.ids) for s in sequences)
    if limit and longest > limit:
        over = sum(len(s.ids) > limit for s in sequences)
        print(f"warning: {over} of {len(sequences)} sequences are longer than the model's {limit} positions "
              f"(longest {longest} tokens); use fewer --shots", file=sys.stderr)


def evaluate(args: argparse.Namespace) -> dict:
    from mftcoder.eval.humaneval import package_versions
    from mftcoder.eval.mc_score import encode_question, question_loglikelihoods, score_sequences
    from mftcoder.infer.options import load_from_args

    files, dev = question_files(args.data, args.split)
    questions = select_subjects(group_by_subject(files), args.subjects)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be a positive number of questions per subject; got {args.limit}")
        questions = {s: qs[: args.limit] for s, qs in questions.items()}
    dev = args.dev or dev
    shots = load_shots(list(questions), args.shots, dev)
    model, tokenizer = load_from_args(args)
    items, languages = render_prompts(questions, shots, args.prompt_language, tokenizer, args.chat)
    start = time.perf_counter()
    sequences = [s for i, (_, prompt, conts) in enumerate(items)
                 for s in encode_question(tokenizer, i, prompt, conts, add_special_tokens=not args.chat)]
    warn_too_long(sequences, getattr(model.config, "max_position_embeddings", None))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    scores = score_sequences(model, sequences, args.batch_size, pad, progress=not args.no_progress)
    results = summarize(items, question_loglikelihoods(sequences, scores, len(items)), languages)
    results["settings"] = {
        "data": os.path.abspath(args.data), "split": args.split, "dev": os.path.abspath(dev) if dev else None,
        "subjects": args.subjects, "limit": args.limit, "shots": args.shots, "prompt_language": args.prompt_language,
        "chat": args.chat, "batch_size": args.batch_size, "model": os.path.abspath(args.model),
        "adapter": os.path.abspath(args.adapter) if args.adapter else None,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "sequences": len(sequences), "seconds": round(time.perf_counter() - start, 2),
        "example_prompt": items[0][1], "example_continuations": items[0][2],
    }
    results["versions"] = package_versions()
    results["command"] = " ".join(sys.argv)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(out + ".tmp", out)
    return results


def print_table(results: dict, stream=None) -> None:
    stream = stream or sys.stderr
    rows = sorted(results["per_subject"].items())
    width = max([len("overall (micro)"), *(len(s) for s, _ in rows)])
    print(f"{'subject':<{width}}  lang  {'n':>6}  accuracy", file=stream)
    for subject, e in rows:
        print(f"{subject:<{width}}  {e['language']:<4}  {e['n']:>6}  {e['accuracy']:.4f}", file=stream)
    print(f"{'overall (micro)':<{width}}        {results['n_questions']:>6}  {results['accuracy']:.4f}", file=stream)
    print(f"{'overall (macro)':<{width}}        {results['n_subjects']:>6}  {results['accuracy_macro']:.4f}",
          file=stream)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from mftcoder.model.inference import DTYPE_CHOICES

    parser = parser or argparse.ArgumentParser(prog="multiple_choice", description=__doc__.split("\n\n")[0],
                                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", required=True, help="model directory (a merged model or a base model)")
    parser.add_argument("--adapter", default=None, help="LoRA/QLoRA adapter directory applied on --model")
    parser.add_argument("--force", action="store_true",
                        help="apply --adapter even where it looks trained on another base")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: as saved)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--data", required=True, help="a question file (.csv / .jsonl) or a folder (see above)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which subfolder of --data to score")
    parser.add_argument("--dev", default=None, help="few-shot examples: a file or folder (default: --data's dev/)")
    parser.add_argument("--subjects", default=None, help="comma-separated subjects to score (default: all)")
    parser.add_argument("--shots", type=int, default=0, help="answered dev examples before each question")
    parser.add_argument("--prompt_language", default="auto", choices=LANGUAGES,
                        help="en: MMLU's prompt; zh: CMMLU's; auto: zh for subjects written mostly in CJK")
    parser.add_argument("--chat", action="store_true", help="put the prompt in the model's chat template (user turn)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions of each subject")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--output", "--out", dest="out", default="results.json", help="results JSON")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder eval multiple-choice`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    from mftcoder.runtime import data_stdout

    with data_stdout() as stdout:  # the summary JSON is the only thing on stdout
        results = evaluate(args)
        print_table(results)
        print(json.dumps({k: results[k] for k in ("accuracy", "accuracy_macro", "n_questions", "n_correct",
                                                   "n_subjects")} | {"out": os.path.abspath(args.out)}), file=stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
