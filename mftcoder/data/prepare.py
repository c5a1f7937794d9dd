"""`mftcoder preprocess`: tokenise the tasks of a train_config into the cache and report what happened to every line."""
from __future__ import annotations

import time

from mftcoder.config import TrainConfig, check_environment
from mftcoder.data.cache import TokenizedData, load_or_build, remove_stats, stats_table, write_stats
from mftcoder.model.tokenizer import load_tokenizer


def prepare_data(cfg: TrainConfig, tokenizer=None, *, progress: bool = True, verbose: bool = True,
                 writes_stats: bool = True) -> TokenizedData:
    """The tokenised tasks (from the cache or built now). `writes_stats`: this process owns output_dir's
    data_stats.json (in a launched run only the main process does; the others would remove and rewrite it)."""
    if writes_stats:
        remove_stats(cfg.output_dir)  # from here on, data_stats.json is this run's or absent
    tokenizer = tokenizer or load_tokenizer(cfg.pretrained_model_path, cfg.trust_remote_code)
    start = time.perf_counter()
    data = load_or_build(cfg, tokenizer, progress=progress)
    if writes_stats:
        write_stats(cfg.output_dir, data.stats)
    if verbose:
        how = "loaded from cache" if data.from_cache else "tokenised"
        print(f"{how} in {time.perf_counter() - start:.2f}s: {data.cache_path}")
        print(stats_table(data.stats))
        for task, examples in data.stats.get("rejected_examples", {}).items():
            print(f"rejected lines of {task} (first {len(examples)}):")
            for e in examples:
                print(f"  {e}")
    return data


def run(args) -> int:
    from mftcoder.config import load_config

    cfg = load_config(args.train_config, overrides=_overrides(args))
    check_environment(cfg)
    prepare_data(cfg)
    return 0


def _overrides(args) -> dict:
    return {k: getattr(args, k, None) for k in ("output_dir", "pretrained_model_path", "data_paths", "cache_dir")}
