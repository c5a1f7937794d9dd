"""The multi-task training loop: one accelerate loop that reads top to bottom.

Per optimizer step: take this process's micro-batches of global batch N, count every task's loss tokens and samples
over the whole step (all micro-batches, all processes), then run forward/backward on each micro-batch with its exact
share of the step loss, clip, step, schedule; log, evaluate, balance (CoBa), checkpoint, stop early.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from mftcoder.config import ConfigError, TrainConfig, check_environment
from mftcoder.data.prepare import prepare_data
from mftcoder.data.template import attach_chat_template, get_template
from mftcoder.loss.coba import CoBa
from mftcoder.loss.cross_entropy import model_forward_losses, model_token_losses, unwrap_causal_lm
from mftcoder.loss.router import resolve_router_loss
from mftcoder.loss.weighting import count_micro_batch, micro_batch_loss, sum_counts, StepCounts
from mftcoder.model.load import load_model
from mftcoder.model.tokenizer import load_tokenizer
from mftcoder.trainer import backend
from mftcoder.trainer.batches import TrainBatches, ValidProbe, eval_units, shard_eval
from mftcoder.trainer.checkpoint import load_checkpoint, read_loop_state, resolve_resume, save_checkpoint
from mftcoder.trainer.metrics import MetricsLog
from mftcoder.trainer.optim import check_scheduler, make_optimizer, make_scheduler

log = logging.getLogger("mftcoder")


@dataclass
class LoopState:
    step: int = 0                      # optimizer steps completed
    best_eval: float = math.inf
    stall: int = 0                     # evaluations since the last best
    coba: Optional[dict] = None
    probe_position: int = 0
    first_eval: Optional[dict] = None  # per-task validation loss before training (for the summary)
    sampler: Optional[dict] = None     # the sampler's settings: a resume with other data or batch geometry is refused
    data_digest: Optional[str] = None  # the tokenised data's content: a resume on edited data is refused


def train(cfg: TrainConfig) -> dict:
    check_environment(cfg)
    acc = backend.make_accelerator(cfg)
    rank, world = acc.process_index, acc.num_processes
    from accelerate.utils import set_seed

    set_seed(cfg.seed)

    # --- data ----------------------------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.pretrained_model_path, cfg.trust_remote_code)
    attach_chat_template(tokenizer, get_template(cfg.template, tokenizer, cfg.role_markers))
    with acc.main_process_first():  # rank 0 tokenises; the others then read its cache
        data = prepare_data(cfg, tokenizer, progress=acc.is_main_process, verbose=acc.is_main_process)
    empty = [t.task.name for t in data.tasks if len(t.train) == 0]
    if empty:  # before the model loads; a ConfigError so the CLI prints the message, not a traceback
        raise ConfigError(_no_train_sample_message(empty, data.stats, cfg))
    names = data.task_names
    K = len(names)
    micro_batches_per_step = cfg.gradient_accumulation_steps * world  # over all processes
    batches = TrainBatches(data, cfg, rank, world, tokenizer.pad_token_id)
    valid_units = eval_units(data)
    if cfg.weighted_loss_mode == "coba" and not valid_units:
        raise ConfigError(f"weighted_loss_mode='coba' steers by validation loss, but data_split={cfg.data_split!r} "
                          "left no task a validation sample; give valid a larger share or add data")
    steps_per_epoch = batches.steps_per_epoch()
    total_steps = steps_per_epoch * cfg.num_train_epochs
    if cfg.max_train_steps:
        total_steps = min(total_steps, cfg.max_train_steps)
    check_scheduler(cfg, total_steps)  # a bad schedule or resume path fails here, before the model loads
    resume_path = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir, cfg.auto_resume)
    if resume_path:
        _check_resume_matches(resume_path, batches, data.content_digest)

    # --- model, optimiser, schedule ------------------------------------------------------------------------------------
    model, attn = load_model(cfg, mixed_precision=acc.mixed_precision, device=acc.device,
                             sharded=backend.is_sharded(acc))
    router = _router_loss(model, cfg)  # MoE models: the router load-balancing loss joins the step loss
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)  # stepped by us once per optimizer step
    model, optimizer = backend.prepare(acc, model, optimizer)  # FSDP2 wrap class from the model
    if acc.is_main_process:
        log.info("attention: %s | backend: %s x%d | tasks: %s | global batch %d rows = %d micro x %d accumulation x %d "
                 "processes | %d steps (%d per epoch)", attn, acc.distributed_type, world, names,
                 batches.global_batch_size, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, world,
                 total_steps, steps_per_epoch)

    task_weights = torch.tensor([t.task.loss_weight for t in data.tasks], dtype=torch.float64)
    coba = (CoBa(K, cfg.coba_warmup_steps, cfg.coba_history_length, cfg.coba_tau, cfg.coba_update_interval)
            if cfg.weighted_loss_mode == "coba" else None)
    probe = ValidProbe(valid_units, cfg.seed)

    # --- resume --------------------------------------------------------------------------------------------------------
    state = LoopState()
    if resume_path:
        state = LoopState(**load_checkpoint(acc, resume_path, scheduler)["loop"])
        if coba is not None and state.coba is not None:
            coba.load_state_dict(state.coba)
        probe.position = state.probe_position
        if acc.is_main_process:
            log.info("resumed from %s at step %d", resume_path, state.step)
    metrics = MetricsLog(cfg.output_dir, cfg.resolved_tb_dir, acc.is_main_process, resume_step=state.step)

    def run_eval(step: int) -> dict:
        task_loss = evaluate(acc, model, batches, valid_units, cfg, K)
        record = {"step": step, "split": "valid", "task_loss": dict(zip(names, task_loss)),
                  "loss": _mean([v for v in task_loss if v is not None])}
        metrics.write(record)
        return record

    if state.step == 0 and valid_units:
        first = run_eval(0)
        state.first_eval = first["task_loss"]
        if coba is not None:
            present = torch.tensor([v is not None for v in first["task_loss"].values()])
            coba.set_initial(torch.tensor([v or 0.0 for v in first["task_loss"].values()]), present)

    # --- train ---------------------------------------------------------------------------------------------------------
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=state.step, desc="training", disable=not acc.is_main_process,
               dynamic_ncols=True)
    model.train()
    stop_reason = "max steps" if total_steps < steps_per_epoch * cfg.num_train_epochs else "epochs"
    if cfg.early_stopping and state.stall >= cfg.early_stopping_stall_num:  # resumed from its early-stop checkpoint
        stop_reason = f"early stopping ({state.stall} evaluations without a better validation loss)"
    while state.step < total_steps and not stop_reason.startswith("early"):
        start = time.perf_counter()
        micro_batches = batches.micro_batches(state.step)
        counts = _global_counts(acc, [count_micro_batch(b, K) for b in micro_batches])
        weights = coba.weights(state.step).double() if coba is not None else task_weights
        step_loss = torch.zeros((), dtype=torch.float64)
        task_loss_sum = torch.zeros(K, dtype=torch.float64)
        aux_loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = 0
        grad_norm = None
        for mb in micro_batches:
            mb = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in mb.items()}
            with acc.accumulate(model):
                with acc.autocast():  # the chunked lm_head projection runs after the model's own (autocast) forward
                    fwd = model_forward_losses(model, mb, chunked=backend.chunked_ce(acc, cfg),
                                               chunk_size=cfg.ce_chunk_size, output_router_logits=router is not None)
                share = micro_batch_loss(fwd.token_loss, mb, counts, cfg.weighted_loss_mode, weights.to(acc.device))
                loss = share.loss
                if router is not None:  # the mean over the step's micro-batches of each one's router loss
                    aux = router(fwd.router_logits, mb["sample_ids"] >= 0)
                    loss = loss + router.coef * aux / micro_batches_per_step
                    aux_loss_sum += aux.detach().double().cpu()
                # accelerate/DeepSpeed divide by the accumulation steps and DDP/ZeRO/FSDP average over processes;
                # the share is already this micro-batch's exact part of the global step loss, so undo both
                acc.backward(loss * micro_batches_per_step)
                step_loss += share.loss.detach().double().cpu()
                task_loss_sum += share.task_loss_sum.double().cpu()
                tokens += int((mb["sample_ids"] >= 0).sum())
                if acc.sync_gradients:
                    grad_norm = backend.clip_and_norm(acc, model, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if grad_norm is None:
            grad_norm = backend.deepspeed_grad_norm(acc, model)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        state.step += 1

        totals = _all_reduce(acc, torch.cat([step_loss.view(1), task_loss_sum, aux_loss_sum.view(1),
                                             torch.tensor([float(tokens)], dtype=torch.float64)]))
        elapsed = time.perf_counter() - start
        task_tokens = counts.task_tokens.double().cpu()
        record = {
            "step": state.step, "epoch": state.step / steps_per_epoch, "loss": float(totals[0]), "lr": lr,
            "grad_norm": grad_norm, "tokens": int(totals[-1]), "tokens_per_s": float(totals[-1]) / elapsed,
            "task_loss": {n: (float(totals[1 + k] / task_tokens[k]) if task_tokens[k] > 0 else None)
                          for k, n in enumerate(names)},
            "task_weight": dict(zip(names, _effective_weights(weights, counts, cfg.weighted_loss_mode))),
        }
        if router is not None:  # `loss` stays the task loss (comparable with validation); this is added to it
            record["router_aux_loss"] = float(totals[1 + K]) / micro_batches_per_step
        metrics.write(record)
        if state.step % cfg.log_interval == 0:
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update(1)

        if coba is not None and coba.should_update(state.step):
            task_loss, present = probe_valid(acc, model, batches, probe, cfg, K)
            coba.record(state.step, task_loss, present)
        if cfg.evaluation_steps and state.step % cfg.evaluation_steps == 0 and valid_units:
            ev = run_eval(state.step)
            if ev["loss"] is not None and ev["loss"] < state.best_eval:
                state.best_eval, state.stall = ev["loss"], 0
            else:
                state.stall += 1
            if cfg.early_stopping and state.stall >= cfg.early_stopping_stall_num:
                stop_reason = f"early stopping ({state.stall} evaluations without a better validation loss)"
        epoch_end = cfg.epoch_checkpointing and state.step % steps_per_epoch == 0
        if (cfg.checkpointing_steps and state.step % cfg.checkpointing_steps == 0) or epoch_end:
            state.coba = coba.state_dict() if coba is not None else None
            state.probe_position = probe.position
            state.sampler = {**batches.sampler.state_dict(), "step": state.step}
            state.data_digest = data.content_digest
            save_checkpoint(acc, cfg.output_dir, state.step, {"step": state.step, "loop": vars(state).copy()},
                            scheduler, cfg.model_dump(mode="json"), cfg.saving_limit)
        if stop_reason.startswith("early"):
            break
    bar.close()

    # --- final model ---------------------------------------------------------------------------------------------------
    last_eval = run_eval(state.step) if valid_units and not (
        cfg.evaluation_steps and state.step % cfg.evaluation_steps == 0) else None
    save_final_model(acc, model, tokenizer, cfg.output_dir)
    metrics.close()
    summary = {"steps": state.step, "stop_reason": stop_reason, "first_valid": state.first_eval,
               "last_valid": (last_eval or {}).get("task_loss") or _last_valid(metrics.path),
               "task_weight": _mean_task_weights(metrics.path, names), "output_dir": cfg.output_dir}
    if acc.is_main_process:
        print(summary_table(summary, names))
    acc.wait_for_everyone()
    acc.end_training()
    return summary


# ---------------------------------------------------------------------------------------------------------------------


def _router_loss(model, cfg: TrainConfig):
    try:
        router = resolve_router_loss(unwrap_causal_lm(model), cfg.router_aux_loss_coef)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if router is not None:
        log.info("MoE router load-balancing loss: coefficient %g (%d experts, top %d; padding excluded)",
                 router.coef, router.num_experts, router.top_k)
    return router


def _check_resume_matches(path: str, batches: TrainBatches, data_digest: str) -> None:
    """The batches after a resume must be the ones the interrupted run would have seen."""
    loop = read_loop_state(path)["loop"]
    if loop.get("data_digest") and loop["data_digest"] != data_digest:
        raise ConfigError(f"resume_from_checkpoint {path!r}: the training data changed since the checkpoint (file "
                          "contents, tokenizer, template, seq_length or data_split differ), so the batches after the "
                          "resume would not be the interrupted run's; restore the data or start a new output_dir")
    saved = loop.get("sampler")
    if saved:
        try:
            batches.sampler.load_state_dict(saved)
        except ValueError as e:
            raise ConfigError(f"resume_from_checkpoint {path!r}: {e} (data, task sampling, seed or global batch "
                              "= micro x accumulation x processes changed since the checkpoint)") from None


def _all_reduce(acc, tensor: torch.Tensor) -> torch.Tensor:
    if acc.num_processes == 1:
        return tensor
    t = tensor.to(acc.device)
    torch.distributed.all_reduce(t)
    return t.cpu()


def _global_counts(acc, local: list[StepCounts]) -> StepCounts:
    counts = sum_counts(local)
    if acc.num_processes == 1:
        return counts
    return StepCounts.from_tensor(_all_reduce(acc, counts.to_tensor()))


def _effective_weights(weights: torch.Tensor, counts: StepCounts, mode: str) -> list[float]:
    """The share of each task in the step loss's normaliser (what case3/case4/coba actually apply)."""
    if mode in ("case1", "case2"):
        denom = counts.task_tokens if mode == "case1" else counts.task_samples
        total = float(denom.sum()) or 1.0
        return [float(v) / total for v in denom]
    present = (counts.task_tokens > 0).double()
    w = weights.double().cpu() * present
    total = float(w.sum()) or 1.0
    return [float(v) / total for v in w]


def _no_train_sample_message(empty: list[str], stats: dict, cfg: TrainConfig) -> str:
    lines = []
    for name in empty:
        st = stats.get("tasks", {}).get(name, {})
        lines.append(f"task {name!r} has no training sample: of its {st.get('lines', '?')} line(s), "
                     f"{st.get('valid_samples', '?')} went to valid and {st.get('test_samples', '?')} to test "
                     f"(data_split={cfg.data_split!r}), {st.get('dropped', '?')} were dropped as longer than "
                     f"seq_length={cfg.seq_length} (overlong_policy={cfg.overlong_policy!r}), "
                     f"{st.get('rejected', '?')} rejected, {st.get('blank', '?')} blank")
    return ("\n".join(lines) + f"\n(details in {os.path.join(cfg.output_dir, 'data_stats.json')}); add data to the "
            "task, give train a larger share of data_split, raise seq_length or use overlong_policy='truncate', "
            "or remove the task from data_paths")


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _task_sums(token_loss: torch.Tensor, batch: dict, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    trained = (batch["labels"] != -100)
    row_loss = (token_loss.float() * trained).sum(1).double().cpu()
    row_tokens = trained.sum(1).double().cpu()
    task = batch["task_ids"].cpu()
    return (torch.zeros(K, dtype=torch.float64).index_add_(0, task, row_loss),
            torch.zeros(K, dtype=torch.float64).index_add_(0, task, row_tokens))


@torch.no_grad()
def _valid_loss(acc, model, batches: TrainBatches, my_batches: list, n_batches: int, fallback, cfg, K):
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(K, dtype=torch.float64)
    tok_sum = torch.zeros(K, dtype=torch.float64)
    for i in range(n_batches):
        real = i < len(my_batches) and len(my_batches[i]) > 0  # shard_eval gives [] to a rank without data
        units = my_batches[i] if real else [fallback]  # dummy forward keeps sharded ranks in step
        mb = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batches.collate_units(units, "valid").items()}
        with acc.autocast():
            token_loss = model_token_losses(model, mb, chunked=backend.chunked_ce(acc, cfg),
                                            chunk_size=cfg.ce_chunk_size)
        if real:
            ls, ts = _task_sums(token_loss, mb, K)
            loss_sum += ls
            tok_sum += ts
    if was_training:
        model.train()
    totals = _all_reduce(acc, torch.cat([loss_sum, tok_sum]))
    loss_sum, tok_sum = totals[:K], totals[K:]
    return [float(loss_sum[k] / tok_sum[k]) if tok_sum[k] > 0 else None for k in range(K)]


def evaluate(acc, model, batches: TrainBatches, units: list, cfg: TrainConfig, K: int) -> list[Optional[float]]:
    """Per-task token-mean validation loss over the whole validation split, each sample exactly once."""
    my_batches, n = shard_eval(units, acc.process_index, acc.num_processes, cfg.per_device_eval_batch_size)
    return _valid_loss(acc, model, batches, my_batches, n, units[0] if units else None, cfg, K)


def probe_valid(acc, model, batches: TrainBatches, probe: ValidProbe, cfg: TrainConfig, K: int):
    """CoBa's signal: a few validation batches (the same ones on every process count), per-task token means."""
    size = cfg.per_device_eval_batch_size * cfg.coba_sample_valid_num * acc.num_processes
    units = probe.next_units(size)
    my_batches, n = shard_eval(units, acc.process_index, acc.num_processes, cfg.per_device_eval_batch_size)
    losses = _valid_loss(acc, model, batches, my_batches, n, units[0], cfg, K)
    present = torch.tensor([v is not None for v in losses])
    return torch.tensor([v if v is not None else 0.0 for v in losses], dtype=torch.float64), present


def save_final_model(acc, model, tokenizer, output_dir: str) -> None:
    """A directory any HF user loads with from_pretrained: full weights or the adapter, tokenizer, chat template."""
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards onto the main process
    unwrapped = acc.unwrap_model(model)
    unwrapped.save_pretrained(output_dir, is_main_process=acc.is_main_process, save_function=acc.save,
                              state_dict=state_dict, safe_serialization=True)
    if acc.is_main_process:
        tokenizer.save_pretrained(output_dir)
    acc.wait_for_everyone()


def _last_valid(path: str) -> Optional[dict]:
    from mftcoder.trainer.metrics import read_metrics

    if not os.path.exists(path):
        return None
    valid = [r for r in read_metrics(path) if r.get("split") == "valid"]
    return valid[-1]["task_loss"] if valid else None


def _mean_task_weights(path: str, names: list[str]) -> Optional[dict]:
    """Each task's share of the loss averaged over the run's steps (0 in steps where the task was absent)."""
    from mftcoder.trainer.metrics import read_metrics

    if not os.path.exists(path):
        return None
    steps = [r["task_weight"] for r in read_metrics(path) if "task_weight" in r]
    return {n: sum(w[n] for w in steps) / len(steps) for n in names} if steps else None


def summary_table(summary: dict, names: list[str]) -> str:
    first, last, weights = summary.get("first_valid") or {}, summary.get("last_valid") or {}, summary.get("task_weight") or {}
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    width = max([len(n) for n in names] + [4])
    lines = [f"finished after {summary['steps']} steps ({summary['stop_reason']}); model in {summary['output_dir']}",
             f"{'task'.ljust(width)}  first_valid  last_valid   change  mean_weight"]
    for n in names:
        f, l_ = first.get(n), last.get(n)
        change = "-" if f is None or l_ is None else f"{(l_ - f) / f * 100:+.1f}%"
        lines.append(f"{n.ljust(width)}  {fmt(f):>11}  {fmt(l_):>10}  {change:>7}  {fmt(weights.get(n)):>11}")
    return "\n".join(lines)
