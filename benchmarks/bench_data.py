"""The data stage at scale: tokenising the bundled examples scaled to 100k samples, a single-process per-sample loop
(baseline) next to mftcoder's token cache, built cold (every core, and one worker) and loaded warm.

    python benchmarks/bench_data.py [--model smollm2|tiny] [--samples N] [--quick] [--json out.json]

The data: the 680 lines of examples/data/ (4 tasks) repeated in order to --samples lines (default 100,000), in a
temporary folder of task folders laid out like examples/data. Copy k > 0 of a line has " (request #k)" appended to
its first user turn, so every line is distinct: no cache, dedup or hash can shortcut the work.

  baseline   what a quick script does, one sample at a time in one process: render the conversation with the chat
             template (tokenizer.apply_chat_template with the template's Jinja, tokenize=False), `tokenizer(text)`,
             and the loss mask from the token counts of the rendered prefixes (each assistant turn is trained from
             the end of the prompt before it, with the generation prompt, to the end of the chat up to it)
  cold       mftcoder.data.cache.load_or_build into a new cache folder with one process per usable core (the
             default for data of 4 MiB or more; smaller data is tokenised in one process)
  cold, 1    the same with preprocessing_num_workers 1 (tokenising in the building process): the parallel speedup
  warm       load_or_build again on the cold cache: fingerprint (hash every file) and memory-map

Reported: seconds, samples/s and tokens/s of each, CPU seconds (the building process and its workers) and tokens per
CPU second (what the work costs, whatever else a shared machine's cores are doing), their ratio to the baseline, and
how many cores were busy on average (CPU seconds / wall seconds); also the baseline without its mask (the rendering
and one tokenizer call a sample). Checked, not timed: the baseline's token ids equal the cache's for every sample;
the cold builds (every core, one worker) write identical caches, and the warm load returns the cold cache and its
statistics; every line is a sample. The baseline's masks are compared too and reported as the share of samples
whose mask is identical (the prefix counts also train the separator after each answer's eos, which the template
leaves out). tests/test_bench_data.py asserts the invariants from --json; speed is never asserted.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_training import DEFAULT_SEQ_LENGTH, EXAMPLE_TASKS, _fmt, host, ratio, write_results  # noqa: E402

EXAMPLES = os.path.join(REPO, "examples", "data")
DEFAULT_SAMPLES, QUICK_SAMPLES = 100_000, 2_000
ROLES = {"human": "user", "bot": "assistant"}  # chat_rounds roles -> chat_template roles


# ---------------------------------------------------------------------------------------------------------------------
# the data


def jsonl_files(folder: str) -> list[str]:
    """A task folder's .jsonl files in the order mftcoder reads them (os.walk, sorted, a folder's files first)."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        out += [os.path.join(root, n) for n in sorted(names) if n.endswith(".jsonl")]
    return out


def _variant(line: str, copy: int) -> str:
    """Copy `copy` of a JSONL line: the original for 0, else its first user turn ends with " (request #copy)"."""
    if copy == 0:
        return line
    obj = json.loads(line)
    turns = obj.get("chat_rounds") or obj.get("messages")
    first = next(t for t in turns if t["role"] in ("human", "user"))
    first["content"] += f" (request #{copy})"
    return json.dumps(obj, ensure_ascii=False) + "\n"


def scale_examples(dst: str, samples: int, src: str = EXAMPLES) -> dict:
    """Write `samples` lines into task folders under `dst`: the example lines in order, over and over."""
    sources = []  # (task, path relative to the task folder, line), in reading order
    for task in EXAMPLE_TASKS:
        folder = os.path.join(src, task)
        for path in jsonl_files(folder):
            with open(path, encoding="utf-8") as f:
                sources += [(task, os.path.relpath(path, folder), line) for line in f if line.strip()]
    outputs: dict[tuple[str, str], list[str]] = {}
    for i in range(samples):
        task, rel, line = sources[i % len(sources)]
        outputs.setdefault((task, rel), []).append(_variant(line, i // len(sources)))
    manifest = {"samples": samples, "source_lines": len(sources), "copies": -(-samples // len(sources)),
                "tasks": {}, "bytes": 0}
    for (task, rel), lines in outputs.items():
        path = os.path.join(dst, task, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(lines))
        manifest["tasks"][task] = manifest["tasks"].get(task, 0) + len(lines)
        manifest["bytes"] += os.path.getsize(path)
    manifest["task_dirs"] = [os.path.join(dst, t) for t in EXAMPLE_TASKS if t in manifest["tasks"]]
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# the baseline: one sample at a time, in this process


def naive_ids(tokenizer, messages: list[dict], jinja: str, max_len: int) -> list[int]:
    text = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False)
    return tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]


def naive_encode(tokenizer, messages: list[dict], jinja: str, max_len: int) -> tuple[list[int], list[int]]:
    """Render, tokenise, and train each assistant turn from the prompt before it to the chat's end after it."""
    def count(msgs, generation_prompt=False):
        text = tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False,
                                             add_generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    ids = naive_ids(tokenizer, messages, jinja, max_len)
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            for j in range(count(messages[:i], True), min(count(messages[:i + 1]), len(ids))):
                mask[j] = 1
    return ids, mask


def naive_tokenise(task_dirs: list[str], tokenizer, jinja: str, max_len: int, masks: bool = True) -> list[tuple]:
    """Every line of every task as (ids int32, mask uint8) arrays, in reading order. `masks=False`: the rendering
    and the one tokenizer call alone (the mask left empty), to show what the mask's extra calls cost."""
    import numpy as np

    samples = []
    for folder in task_dirs:
        for path in jsonl_files(folder):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    messages = [{"role": ROLES.get(t["role"], t["role"]), "content": t["content"]}
                                for t in obj.get("chat_rounds") or obj["messages"]]
                    if masks:
                        ids, mask = naive_encode(tokenizer, messages, jinja, max_len)
                    else:
                        ids, mask = naive_ids(tokenizer, messages, jinja, max_len), []
                    samples.append((np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.uint8)))
    return samples


# ---------------------------------------------------------------------------------------------------------------------
# measuring


def _cpu(who) -> float:
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def timed(fn) -> tuple:
    """(fn(), wall seconds, CPU seconds of this process, CPU seconds of its children reaped meanwhile)."""
    gc.collect()
    before = time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    result = fn()
    return (result, time.perf_counter() - before[0], _cpu(resource.RUSAGE_SELF) - before[1],
            _cpu(resource.RUSAGE_CHILDREN) - before[2])


def row(name: str, seconds: float, cpu: float, children_cpu: float, samples: int, tokens: int, **extra) -> dict:
    return {"name": name, "seconds": seconds, "samples": samples, "tokens": tokens, "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds, "cpu_s": cpu, "children_cpu_s": children_cpu,
            "total_cpu_s": cpu + children_cpu, "tokens_per_cpu_s": tokens / max(cpu + children_cpu, 1e-9),
            "cores_busy": (cpu + children_cpu) / seconds, **extra}


def make_config(task_dirs: list[str], model_path: str, workdir: str, cache: str, seq_length: int, workers=None):
    from mftcoder.config import parse_config

    return parse_config({"data_paths": task_dirs, "pretrained_model_path": model_path, "seq_length": seq_length,
                         "output_dir": os.path.join(workdir, "out"), "cache_dir": os.path.join(workdir, cache),
                         "preprocessing_num_workers": workers}, source="bench_data")


def cache_summary(data) -> dict:
    st = data.stats["tasks"].values()
    out = {k: sum(s[k] for s in st) for k in ("lines", "tokens", "loss_tokens", "truncated", "dropped", "rejected")}
    out["samples"] = sum(s["train_samples"] + s["valid_samples"] + s["test_samples"] for s in st)
    return out


def stream_digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def pack(samples: list[tuple]) -> tuple:
    """(ids, mask, lengths) arrays of a list of samples: no Python objects left for the cold builds' forked workers to
    inherit (their garbage collector would touch, and so copy, every page holding them)."""
    import numpy as np

    lengths = np.asarray([len(ids) for ids, _ in samples], dtype=np.int64)
    if not samples:
        return np.zeros(0, np.int32), np.zeros(0, np.uint8), lengths
    return np.concatenate([i for i, _ in samples]), np.concatenate([m for _, m in samples]), lengths


def compare(naive: tuple, cache_path: str, eos_id: int) -> dict:
    """The baseline's samples (pack()ed) against the cache's, whose rows are in the same reading order: ids, then
    masks, as they are and with the token after each eos (the turn separator, not trained by the template) left
    out."""
    import numpy as np

    ids = np.load(os.path.join(cache_path, "ids.npy"), mmap_mode="r")
    mask = np.load(os.path.join(cache_path, "mask.npy"), mmap_mode="r")
    index = np.load(os.path.join(cache_path, "index.npy"))
    n_ids, n_mask, n_lengths = naive
    # the cache holds its samples back to back in reading order: equal lengths and equal streams are equal samples
    same_ids = bool(np.array_equal(index[:, 3], n_lengths) and np.array_equal(ids, n_ids))
    if not same_ids:  # masks are compared only where the ids are the same
        return {"compared": len(n_lengths), "identical_ids": False, "identical_masks_fraction": None,
                "identical_masks_but_separator_fraction": None, "naive_extra_trained_tokens_per_sample": None}
    ours = np.asarray(mask)
    starts = index[:, 2]
    separator = np.zeros(len(n_ids), dtype=bool)
    separator[1:] = n_ids[:-1] == eos_id
    separator[starts] = False  # a sample's first token follows the previous sample, not an eos of its own

    def per_sample_equal(a, b):
        return np.logical_and.reduceat(a == b, starts) if len(starts) else np.zeros(0, bool)

    n = max(1, len(n_lengths))
    return {"compared": len(n_lengths), "identical_ids": True,
            "identical_masks_fraction": float(per_sample_equal(ours, n_mask).sum()) / n,
            "identical_masks_but_separator_fraction":
                float(per_sample_equal(ours, np.where(separator, 0, n_mask)).sum()) / n,
            "naive_extra_trained_tokens_per_sample": (int(n_mask.sum()) - int(ours.sum())) / n}


def cache_digests(path: str) -> dict:
    import numpy as np

    return {n: stream_digest([np.load(os.path.join(path, f"{n}.npy"), mmap_mode="r")])
            for n in ("ids", "mask", "index")}


def build_rows(dirs: list[str], mpath: str, tokenizer, workdir: str, seq_length: int) -> tuple[dict, dict]:
    """The cold builds (default workers, then 1) and the warm load: their rows, and the cold build's data and stats."""
    from mftcoder.data.cache import load_or_build

    rows, built = {}, {}
    from mftcoder.data.cache import usable_cores

    cold_cfg = make_config(dirs, mpath, workdir, "cache-all", seq_length, usable_cores())  # large data's default
    for key, cfg in (("cold", cold_cfg), ("cold_1", make_config(dirs, mpath, workdir, "cache-one", seq_length, 1))):
        data, *t = timed(lambda: load_or_build(cfg, tokenizer, progress=False))
        if data.from_cache:
            raise RuntimeError(f"{data.cache_path} was not empty: the cold build was a warm load")
        workers = cfg.preprocessing_num_workers
        s = cache_summary(data)
        rows[key] = row(key, *t, s["samples"], s["tokens"], workers=workers, stats=s, cache=data.cache_path)
        built[key] = data
    warm, *t = timed(lambda: load_or_build(cold_cfg, tokenizer, progress=False))
    s = cache_summary(warm)
    rows["warm"] = row("warm", *t, s["samples"], s["tokens"], workers=0, stats=s, cache=warm.cache_path,
                       from_cache=warm.from_cache)
    return rows, {"cold": built["cold"], "warm": warm}


def run(args, workdir: str) -> dict:
    from mftcoder.data.template import get_template
    from mftcoder.model.tokenizer import load_tokenizer

    manifest = scale_examples(os.path.join(workdir, "data"), args.samples)
    mpath = model_path(args.model, workdir)
    tokenizer = load_tokenizer(mpath)
    seq_length, dirs = DEFAULT_SEQ_LENGTH[args.model], manifest["task_dirs"]
    jinja = get_template("mftcoder", tokenizer).jinja  # the cache's default template, as a chat_template
    naive_encode(tokenizer, [{"role": "user", "content": "warm"}, {"role": "assistant", "content": "up"}], jinja, 8)

    samples, *t = timed(lambda: naive_tokenise(dirs, tokenizer, jinja, seq_length + 1))
    naive = pack(samples)
    del samples
    rows = {"baseline": row("baseline", *t, len(naive[2]), int(naive[2].sum()), workers=1)}
    samples, *t = timed(lambda: naive_tokenise(dirs, tokenizer, jinja, seq_length + 1, masks=False))
    ids_only = row("baseline_ids_only", *t, len(samples), sum(len(ids) for ids, _ in samples), workers=1)
    del samples
    cache_rows, data = build_rows(dirs, mpath, tokenizer, workdir, seq_length)
    rows.update(cache_rows)
    checks = compare(naive, rows["cold"]["cache"], tokenizer.eos_token_id)
    digests = {k: cache_digests(rows[k]["cache"]) for k in ("cold", "cold_1")}
    checks.update({
        "cold_caches_identical": digests["cold"] == digests["cold_1"],
        "warm_equals_cold": data["warm"].from_cache and data["warm"].cache_path == data["cold"].cache_path
        and json.dumps(data["warm"].stats, sort_keys=True) == json.dumps(data["cold"].stats, sort_keys=True),
        "stats_equal": rows["warm"]["stats"] == rows["cold"]["stats"] == rows["cold_1"]["stats"],
        "all_samples_counted": all(r["samples"] == manifest["samples"] for r in rows.values())
        and rows["cold"]["stats"]["lines"] == manifest["samples"],
        "same_tokens": len({r["tokens"] for r in rows.values()}) == 1,
    })
    return {"data": {k: v for k, v in manifest.items() if k != "task_dirs"}, "seq_length": seq_length,
            "model_path": mpath, "rows": rows, "baseline_ids_only": ids_only, "checks": checks}


def model_path(name: str, workdir: str) -> str:
    if name == "tiny":
        from mftcoder.testing import build_tokenizer

        path = os.path.join(workdir, "tiny-tokenizer")
        build_tokenizer().save_pretrained(path)
        return path
    from mftcoder.model.smollm2 import smollm2_path

    return smollm2_path()


# ---------------------------------------------------------------------------------------------------------------------
# output


COLUMNS = (("baseline", "baseline"), ("cold", "cold, {w} workers"), ("cold_1", "cold, 1 worker"), ("warm", "warm"))


def report(res: dict) -> str:
    r, c, d = res["rows"], res["checks"], res["data"]
    labels = [label.format(w=r["cold"]["workers"]) for _, label in COLUMNS]
    ours = [k for k, _ in COLUMNS[1:]]
    head = ["metric"] + labels + [f"{label}/baseline" for label in labels[1:]] + ["better"]
    rows = []
    for title, key, better in (("seconds", "seconds", "lower"), ("samples/s", "samples_per_s", "higher"),
                               ("tokens/s", "tokens_per_s", "higher"),
                               # CPU time: what the work costs, whatever else the machine's cores are doing
                               ("CPU seconds (process + workers)", "total_cpu_s", "lower"),
                               ("tokens per CPU second", "tokens_per_cpu_s", "higher")):
        rows.append([title] + [r[k][key] for k, _ in COLUMNS] + [ratio(r[k][key], r["baseline"][key]) for k in ours]
                    + [better])
    rows.append(["cores busy (CPU s / wall s)"] + [r[k]["cores_busy"] for k, _ in COLUMNS] + [None] * 3 + ["-"])
    rows.append(["samples / tokens"] + [f"{r[k]['samples']:,} / {r[k]['tokens']:,}" for k, _ in COLUMNS]
                + [None] * 3 + ["same"])
    title = (f"== tokenising examples/data scaled to {d['samples']:,} samples ({d['source_lines']} lines x "
             f"{d['copies']}, {d['bytes'] / (1 << 20):.1f} MiB, {len(d['tasks'])} tasks), model {res['model']}, "
             f"seq_length {res['seq_length']}")
    b = res["baseline_ids_only"]
    checks = (f"identical token ids, baseline vs cache (all {c['compared']:,} samples): {c['identical_ids']}; "
              f"identical loss masks: {c['identical_masks_fraction']:.1%} of samples (the baseline trains "
              f"{c['naive_extra_trained_tokens_per_sample']:.2f} more tokens a sample), "
              f"{c['identical_masks_but_separator_fraction']:.1%} once the token after each eos (the turn separator, "
              f"not trained by the template) is left out\n"
              f"cold caches identical for {r['cold']['workers']} and 1 workers: {c['cold_caches_identical']}; "
              f"warm load equals the cold build: {c['warm_equals_cold'] and c['stats_equal']}; "
              f"every sample counted: {c['all_samples_counted']}\n"
              f"the baseline without its mask (render + one tokenizer(text) a sample): {_fmt(b['seconds'])} s, "
              f"{_fmt(b['tokens_per_s'])} tokens/s, {_fmt(b['tokens_per_cpu_s'])} tokens per CPU second")
    return "\n".join([title, _table(head, rows), checks])


def _table(head: list, rows: list) -> str:
    cells = [list(head)] + [[_fmt(x) for x in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join([line(cells[0]), "-" * (sum(widths) + 2 * (len(head) - 1))] + [line(r) for r in cells[1:]])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("smollm2", "tiny"), default=None,
                    help="tokenizer: smollm2 (default; SmolLM2-135M-Instruct) or tiny (a 512-token test BPE; --quick)")
    ap.add_argument("--samples", type=int, default=None,
                    help=f"samples to tokenise (default {DEFAULT_SAMPLES:,}; --quick: {QUICK_SAMPLES:,})")
    ap.add_argument("--quick", action="store_true", help="tiny tokenizer, 2,000 samples, a few seconds (the tests)")
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    args = ap.parse_args(argv)
    if args.samples is not None and args.samples < 1:
        ap.error(f"--samples must be >= 1, got {args.samples}")
    args.samples = args.samples or (QUICK_SAMPLES if args.quick else DEFAULT_SAMPLES)
    args.model = args.model or ("tiny" if args.quick else "smollm2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # the per-sample calls never use the Rust tokenizer's thread pool; mftcoder's parallelism is its processes
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    load = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="mftcoder-bench-data-")
    try:
        results = {"command": " ".join(["python", "benchmarks/bench_data.py"] + (argv or sys.argv[1:])),
                   "model": args.model, "quick": args.quick, "samples": args.samples,
                   "machine": host() | {"transformers": transformers.__version__, "load_average_before": load},
                   **run(args, workdir)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    after = results["machine"]["load_average_after"] = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before / {after[0]:.2f} after"
          f"{', quick' if args.quick else ''}\n")
    print(report(results))
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
