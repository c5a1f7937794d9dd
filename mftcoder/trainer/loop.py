"""The multi-task training loop: one accelerate loop that reads top to bottom.

`train(cfg)` is `setup` (data, model, optimiser, objective, resume), then `train_step` per optimizer step (take this
process's micro-batches of global batch N, count every task's loss units and samples over the whole step (all
micro-batches, all processes), then run forward/backward on each micro-batch with its exact share of the step loss,
clip, step, schedule), with `evaluate`, CoBa balancing, checkpoints and the stop decision after each step, and `finish`
(last validation, final model, summary). What the loss is comes from the objective (mftcoder/objectives); the run's
changing state is a `LoopState` (mftcoder/trainer/state.py), and whatever ends the loop sets `state.stop`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from mftcoder.config import ConfigError, TrainConfig, check_environment
from mftcoder.data.cache import TokenizedData
from mftcoder.data.prepare import prepare_data
from mftcoder.data.template import attach_chat_template, get_template
from mftcoder.loss.coba import CoBa
from mftcoder.loss.weighting import StepCounts, effective_weights, sum_counts
from mftcoder.model.load import load_model
from mftcoder.model.tokenizer import load_tokenizer
from mftcoder.objectives import Objective, StepContext, make_objective
from mftcoder.trainer import backend
from mftcoder.trainer.batches import TrainBatches, ValidProbe, sharded_batches, to_device
from mftcoder.trainer.checkpoint import load_checkpoint, read_loop_state, resolve_resume, save_checkpoint
from mftcoder.trainer.flops import StepFlops, make_step_flops
from mftcoder.trainer.interrupt import StopSignals, exits_quietly_on_ctrl_c, launch_command, stop_for_signal
from mftcoder.trainer.run_dir import owns_output_dir, staged_directory
from mftcoder.trainer.metrics import MetricsLog
from mftcoder.trainer.model_card import model_card, write_model_card
from mftcoder.trainer.optim import check_scheduler, make_optimizer, make_scheduler
from mftcoder.trainer.precompute import CHECKPOINT_FILE, prepare_precomputed
from mftcoder.trainer.state import LoopState, StopReason
from mftcoder.trainer.tracking import check_mlflow_store, start_trackers
from mftcoder.trainer.summary import last_valid, mean_task_weights, no_train_sample_message, summary_table

log = logging.getLogger("mftcoder")


@dataclass
class Run:
    """What `setup` builds and the steps read; the run's changing state is the `LoopState` beside it."""

    cfg: TrainConfig
    acc: Any                         # accelerate.Accelerator
    tokenizer: Any
    data: TokenizedData
    batches: TrainBatches
    objective: Objective
    valid_units: list                # every validation unit (item or block) once
    total_steps: int
    end_reason: StopReason           # why the loop ends at total_steps: MAX_STEPS or EPOCHS
    resume_path: Optional[str] = None
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    task_weights: Optional[torch.Tensor] = None  # [K] float64 loss_weight of each task
    coba: Optional[CoBa] = None
    probe: Optional[ValidProbe] = None
    metrics: Optional[MetricsLog] = None
    precomputed: Optional[np.ndarray] = None  # the objective's per-sample values, saved in every checkpoint
    flops: Optional[StepFlops] = None  # each step's model FLOPs -> tflops and mfu (mftcoder/trainer/flops.py)

    @property
    def names(self) -> list[str]:
        return self.data.task_names

    @property
    def num_tasks(self) -> int:
        return len(self.data.task_names)

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch()

    @property
    def micro_batches_per_step(self) -> int:  # over all processes
        return self.cfg.gradient_accumulation_steps * self.acc.num_processes


@exits_quietly_on_ctrl_c
@owns_output_dir  # locked, checked against an earlier run, stale temporary folders removed
def train(cfg: TrainConfig) -> dict:
    run, state = setup(cfg)
    try:
        return _train_loop(run, state)
    finally:
        run.metrics.close()  # the trackers' runs end on an interrupt or an error too (once)


def _train_loop(run: Run, state: LoopState) -> dict:
    cfg = run.cfg
    if state.step == 0 and run.valid_units:
        first_evaluation(run, state)
    from tqdm import tqdm

    bar = tqdm(total=run.total_steps, initial=state.step, desc="training", disable=not run.acc.is_main_process,
               dynamic_ncols=True)
    run.model.train()
    _check_end(run, state)
    with StopSignals(announce=run.acc.is_main_process) as signals:  # Ctrl-C / SIGTERM end the loop after a step
        while not state.stopping:
            record = train_step(run, state)
            run.metrics.write(record)
            if state.step % cfg.log_interval == 0:
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
            after_step(run, state)
            if not state.stopping and signals.requested(run.acc):  # agreed by every process
                state.request_stop(StopReason.INTERRUPTED)
    bar.close()
    if state.stop is StopReason.INTERRUPTED:
        _save_for_resume(run, state, signals.agreed)
    return finish(run, state)


# --- setup ------------------------------------------------------------------------------------------------------------


def setup(cfg: TrainConfig) -> tuple[Run, LoopState]:
    """Everything before the first step: data and batches (checked before the model loads), model, optimiser,
    schedule, the objective's view of the model, CoBa, and the state restored from a checkpoint."""
    check_environment(cfg)
    acc = backend.make_accelerator(cfg)
    if acc.is_main_process:
        check_mlflow_store(cfg)  # report_to mlflow: a store MLflow refuses fails here, before data and model
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    run = _setup_data(cfg, acc)
    run.model, attn = load_model(cfg, mixed_precision=acc.mixed_precision, device=acc.device,
                                 sharded=backend.is_sharded(acc), head=run.objective.model_head,
                                 pad_token_id=run.tokenizer.pad_token_id)
    run.objective.attach_model(run.model)  # e.g. MoE models: the router load-balancing loss joins the step loss
    run.flops = make_step_flops(run.model, acc.device, acc.mixed_precision, run.objective.model_head)
    run.optimizer = make_optimizer(run.model, cfg)
    run.scheduler = make_scheduler(run.optimizer, cfg, run.total_steps)  # stepped by us once per optimizer step
    run.model, run.optimizer = backend.prepare(acc, run.model, run.optimizer)  # FSDP2 wrap class from the model
    if acc.is_main_process:
        units = "pairs" if run.objective.samples_per_item == 2 and cfg.padding_mode == "padding" else "rows"
        log.info("attention: %s | backend: %s x%d | objective: %s | tasks: %s | global batch %d %s = %d micro x %d "
                 "accumulation x %d processes | %d steps (%d per epoch)", attn, acc.distributed_type,
                 acc.num_processes, run.objective.describe(), run.names, run.batches.global_batch_size, units,
                 cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, acc.num_processes,
                 run.total_steps, run.steps_per_epoch)
    run.task_weights = torch.tensor([t.task.loss_weight for t in run.data.tasks], dtype=torch.float64)
    run.coba = (CoBa(run.num_tasks, cfg.coba_warmup_steps, cfg.coba_history_length, cfg.coba_tau,
                     cfg.coba_update_interval) if cfg.weighted_loss_mode == "coba" else None)
    run.probe = ValidProbe(run.valid_units, cfg.seed)
    state = _restore(run)
    run.precomputed = prepare_precomputed(run, state.step)  # e.g. DPO's reference log-probs, before the first step
    tracked = start_trackers(acc, cfg, state.step)  # report_to: TensorBoard, wandb, MLflow (main process)
    run.metrics = MetricsLog(cfg.output_dir, acc.is_main_process, state.step, acc if tracked else None)
    return run, state


def _setup_data(cfg: TrainConfig, acc) -> Run:
    """Tokenizer, tokenised data, the objective and the batches; the step count and a resume are checked here,
    before the model loads, so that bad input fails fast."""
    tokenizer = load_tokenizer(cfg.pretrained_model_path, cfg.trust_remote_code)
    attach_chat_template(tokenizer, get_template(cfg.template, tokenizer, cfg.role_markers))
    with acc.main_process_first():  # rank 0 tokenises; the others then read its cache
        data = prepare_data(cfg, tokenizer, progress=acc.is_main_process, verbose=acc.is_main_process,
                            writes_stats=acc.is_main_process)
    empty = [t.task.name for t in data.tasks if len(t.train) == 0]
    if empty:  # a ConfigError so the CLI prints the message, not a traceback
        raise ConfigError(no_train_sample_message(empty, data.stats, cfg))
    objective = make_objective(cfg.objective, cfg, len(data.tasks), chunked=backend.chunked_ce(acc, cfg),
                               sharded=backend.is_sharded(acc))
    batches = TrainBatches(data, cfg, acc.process_index, acc.num_processes, tokenizer.pad_token_id,
                           collate_fn=objective.collate, samples_per_item=objective.samples_per_item,
                           layout=objective.row_layout)
    valid_units = batches.eval_units()
    if cfg.weighted_loss_mode == "coba" and not valid_units:
        raise ConfigError(f"weighted_loss_mode='coba' steers by validation loss, but data_split={cfg.data_split!r} "
                          "left no task a validation sample; give valid a larger share or add data")
    epoch_steps = batches.steps_per_epoch() * cfg.num_train_epochs
    total_steps = min(epoch_steps, cfg.max_train_steps) if cfg.max_train_steps else epoch_steps
    check_scheduler(cfg, total_steps)  # a bad schedule or resume path fails here, before the model loads
    resume_path = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir, cfg.auto_resume)
    if resume_path:
        _check_resume_matches(resume_path, batches, data.content_digest, total_steps)
    end_reason = StopReason.MAX_STEPS if total_steps < epoch_steps else StopReason.EPOCHS
    return Run(cfg, acc, tokenizer, data, batches, objective, valid_units, total_steps, end_reason, resume_path)


def _restore(run: Run) -> LoopState:
    """A fresh state, or the checkpoint's (weights, optimiser, RNG and schedule restored by load_checkpoint)."""
    if not run.resume_path:
        return LoopState()
    state = LoopState.from_dict(load_checkpoint(run.acc, run.resume_path, run.scheduler)["loop"])
    state.stop, state.stop_detail = StopReason.NONE, ""  # decided again by this run (an interrupt is over)
    if run.coba is not None and state.coba is not None:
        run.coba.load_state_dict(state.coba)
    run.probe.position = state.probe_position
    if run.cfg.early_stopping and state.stall >= run.cfg.early_stopping_stall_num:  # its early-stop checkpoint
        _stop_early(state)
    if run.acc.is_main_process:
        log.info("resumed from %s at step %d", run.resume_path, state.step)
    return state


# --- one optimizer step -----------------------------------------------------------------------------------------------


def train_step(run: Run, state: LoopState) -> dict:
    """Optimizer step `state.step` on its global batch; advances `state.step` and returns the step's metrics record."""
    start = time.perf_counter()
    micro_batches = run.batches.micro_batches(state.step)
    step_flops = run.flops.step_flops(micro_batches) if run.flops is not None else None  # CPU tensors: no device sync
    counts = _global_counts(run.acc, [run.objective.count(b) for b in micro_batches])
    weights = run.coba.weights(state.step).double() if run.coba is not None else run.task_weights
    ctx = StepContext(counts, weights.to(run.acc.device), run.micro_batches_per_step)
    run.objective.begin_step(ctx)
    local, grad_norm = _forward_backward(run, micro_batches, ctx)
    lr = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    state.step += 1
    totals = _all_reduce(run.acc, local)  # [step loss, K task loss sums, aux loss sum, M metric sums, tokens]
    elapsed = time.perf_counter() - start
    K, task_tokens = run.num_tasks, counts.task_tokens.double().cpu()
    units = float(counts.total_samples)
    record = {
        "step": state.step, "epoch": state.step / run.steps_per_epoch, "loss": float(totals[0]), "lr": lr,
        "grad_norm": grad_norm, "tokens": int(totals[-1]), "tokens_per_s": float(totals[-1]) / elapsed,
        "task_loss": {n: (float(totals[1 + k] / task_tokens[k]) if task_tokens[k] > 0 else None)
                      for k, n in enumerate(run.names)},
        "task_weight": dict(zip(run.names, effective_weights(weights, counts, run.cfg.weighted_loss_mode))),
    }
    if run.objective.aux_metric:  # added to `loss` in the gradient; logged on its own
        record[run.objective.aux_metric] = float(totals[1 + K]) / run.micro_batches_per_step
    for m, name in enumerate(run.objective.step_metrics):  # means over the step's units (e.g. pairs)
        record[name] = float(totals[2 + K + m]) / units if units else None
    if run.flops is not None:  # tflops of this device; mfu only against a known peak
        record.update(run.flops.metrics(step_flops, elapsed))
    return record


def _forward_backward(run: Run, micro_batches: list[dict], ctx: StepContext) -> tuple[torch.Tensor, Optional[float]]:
    """This process's micro-batches through the objective, backward and the optimizer step. Returns this process's
    [step loss share, K task loss sums, aux loss sum, M metric sums, tokens] (float64) and the gradient norm."""
    acc, model = run.acc, run.model
    dev = acc.device  # the sums stay there until the step's end: reading one would wait for the GPU each time
    step_loss = torch.zeros((), dtype=torch.float64, device=dev)
    task_loss_sum = torch.zeros(run.num_tasks, dtype=torch.float64, device=dev)
    aux_loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    metric_sums = torch.zeros(len(run.objective.step_metrics), dtype=torch.float64, device=dev)
    tokens = torch.zeros((), dtype=torch.float64, device=dev)
    grad_norm = None
    for mb in micro_batches:
        mb = to_device(mb, acc.device)
        with acc.accumulate(model):
            with acc.autocast():  # the chunked lm_head projection runs after the model's own (autocast) forward
                fwd = run.objective.forward(model, mb, training=True)
            out = run.objective.train_loss(fwd, mb, ctx)
            # accelerate/DeepSpeed divide by the accumulation steps and DDP/ZeRO/FSDP average over processes;
            # the share is already this micro-batch's exact part of the global step loss, so undo both
            acc.backward(out.loss * ctx.micro_batches_per_step)
            step_loss += out.objective_loss.to(dev)
            task_loss_sum += out.task_loss_sum.to(dev)
            if out.aux_loss is not None:
                aux_loss_sum += out.aux_loss.to(dev)
            if out.metric_sums is not None:
                metric_sums += out.metric_sums.to(dev)
            tokens += out.tokens
            if acc.sync_gradients:
                grad_norm = backend.clip_and_norm(acc, model, run.cfg.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    if grad_norm is None:
        grad_norm = backend.deepspeed_grad_norm(acc, model)
    return torch.cat([step_loss.view(1), task_loss_sum, aux_loss_sum.view(1), metric_sums,
                      tokens.view(1)]).cpu(), grad_norm


def after_step(run: Run, state: LoopState) -> None:
    """CoBa's validation probe, the evaluation (and early stopping), the checkpoint, and the end of the schedule."""
    cfg = run.cfg
    if run.coba is not None and run.coba.should_update(state.step):
        task_loss, present = probe_valid(run)
        run.coba.record(state.step, task_loss, present)
    if cfg.evaluation_steps and state.step % cfg.evaluation_steps == 0 and run.valid_units:
        ev = evaluate(run, state.step)
        if ev["loss"] is not None and ev["loss"] < state.best_eval:
            state.best_eval, state.stall = ev["loss"], 0
        else:
            state.stall += 1
        if cfg.early_stopping and state.stall >= cfg.early_stopping_stall_num:
            _stop_early(state)
    if _checkpoint_due(run, state):
        checkpoint(run, state)
    _check_end(run, state)


def _checkpoint_due(run: Run, state: LoopState) -> bool:
    cfg = run.cfg
    epoch_end = cfg.epoch_checkpointing and state.step % run.steps_per_epoch == 0
    return bool((cfg.checkpointing_steps and state.step % cfg.checkpointing_steps == 0) or epoch_end)


def checkpoint(run: Run, state: LoopState) -> str:
    """Save everything a resume needs at `state.step`; returns the checkpoint folder."""
    state.coba = run.coba.state_dict() if run.coba is not None else None
    state.probe_position = run.probe.position
    state.sampler = run.batches.sampler.state_dict()
    state.data_digest = run.data.content_digest
    arrays = {CHECKPOINT_FILE: run.precomputed} if run.precomputed is not None else None
    return save_checkpoint(run.acc, run.cfg.output_dir, state.step, {"step": state.step, "loop": state.to_dict()},
                           run.scheduler, run.cfg.model_dump(mode="json"), run.cfg.saving_limit, arrays)


def _save_for_resume(run: Run, state: LoopState, signum: int) -> None:
    """Interrupted: the finished step's checkpoint (unless it just had one), then exit 128 + signum with the resume
    command (TrainingInterrupted, a SystemExit: no traceback, the lock released on the way out)."""
    path = (os.path.join(run.cfg.output_dir, f"checkpoint-{state.step}") if _checkpoint_due(run, state)
            else checkpoint(run, state))
    run.metrics.close()
    stop_for_signal(signum, state.step, path, announce=run.acc.is_main_process)


def _check_end(run: Run, state: LoopState) -> None:
    if state.step >= run.total_steps:
        state.request_stop(run.end_reason)


def _stop_early(state: LoopState) -> None:
    state.request_stop(StopReason.EARLY_STOPPING, f"({state.stall} evaluations without a better validation loss)")


# --- validation -------------------------------------------------------------------------------------------------------


def first_evaluation(run: Run, state: LoopState) -> None:
    """Validation before training: the summary's starting point and CoBa's initial losses."""
    first = evaluate(run, 0)
    state.first_eval = first["task_loss"]
    if run.coba is not None:
        present = torch.tensor([v is not None for v in first["task_loss"].values()])
        run.coba.set_initial(torch.tensor([v or 0.0 for v in first["task_loss"].values()]), present)


def evaluate(run: Run, step: int) -> dict:
    """Per-task validation loss (and the objective's metrics) over the whole validation split, each item exactly once;
    written to the metrics."""
    task_loss, task_metrics = validate(run, run.valid_units)
    record = {"step": step, "split": "valid", "task_loss": dict(zip(run.names, task_loss)),
              "loss": _mean([v for v in task_loss if v is not None])}
    for name, values in task_metrics.items():
        record[f"task_{name}"] = dict(zip(run.names, values))
    if run.objective.reports_perplexity:
        record["task_perplexity"] = {n: math.exp(v) if v is not None else None for n, v in zip(run.names, task_loss)}
    run.metrics.write(record)
    return record


def probe_valid(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """CoBa's signal: a few validation batches (the same ones on every process count), per-task losses and presence."""
    cfg = run.cfg
    units = run.probe.next_units(cfg.per_device_eval_batch_size * cfg.coba_sample_valid_num * run.acc.num_processes)
    losses, _ = validate(run, units)
    present = torch.tensor([v is not None for v in losses])
    return torch.tensor([v if v is not None else 0.0 for v in losses], dtype=torch.float64), present


@torch.no_grad()
def validate(run: Run, units: list) -> tuple[list[Optional[float]], dict[str, list[Optional[float]]]]:
    """The objective's per-task validation loss over `units`, sharded over the processes (None: a task without one),
    and the per-task means of its `step_metrics`."""
    acc, model, K = run.acc, run.model, run.num_tasks
    names = run.objective.step_metrics
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(K, dtype=torch.float64)
    count = torch.zeros(K, dtype=torch.float64)
    metric_sums = torch.zeros(len(names), K, dtype=torch.float64)
    for mb, real in sharded_batches(units, acc.process_index, acc.num_processes, run.cfg.per_device_eval_batch_size,
                                    lambda batch_units: run.batches.collate_units(batch_units, "valid"), acc.device):
        with acc.autocast():
            fwd = run.objective.forward(model, mb, training=False)
        if real:
            sums = run.objective.eval_sums(fwd, mb)
            loss_sum += sums.loss_sum
            count += sums.count
            if sums.metric_sums is not None:
                metric_sums += sums.metric_sums
    if was_training:
        model.train()
    totals = _all_reduce(acc, torch.cat([loss_sum, count, metric_sums.reshape(-1)]))
    loss_sum, count, metric_sums = totals[:K], totals[K:2 * K], totals[2 * K:].view(len(names), K)
    mean = lambda sums: [float(sums[k] / count[k]) if count[k] > 0 else None for k in range(K)]  # noqa: E731
    return mean(loss_sum), {name: mean(metric_sums[m]) for m, name in enumerate(names)}


# --- the end ----------------------------------------------------------------------------------------------------------


def finish(run: Run, state: LoopState) -> dict:
    """The last validation (unless the last step just had one), the final model and its card (README.md), the
    summary (printed and returned)."""
    cfg, acc = run.cfg, run.acc
    last_eval = evaluate(run, state.step) if run.valid_units and not (
        cfg.evaluation_steps and state.step % cfg.evaluation_steps == 0) else None
    save_final_model(acc, run.model, run.tokenizer, cfg.output_dir)
    run.metrics.close()
    summary = {"steps": state.step, "stop_reason": state.stop_text(), "first_valid": state.first_eval,
               "last_valid": (last_eval or {}).get("task_loss") or last_valid(run.metrics.path),
               "task_weight": mean_task_weights(run.metrics.path, run.names), "output_dir": cfg.output_dir,
               "epochs": state.step / run.steps_per_epoch, "global_batch_size": run.batches.global_batch_size,
               "processes": acc.num_processes}
    if acc.is_main_process:
        write_model_card(cfg.output_dir, model_card(summary, cfg, run.data.stats, _train_command()))
        print(summary_table(summary, run.names))
    acc.wait_for_everyone()
    acc.end_training()
    return summary


# ---------------------------------------------------------------------------------------------------------------------


def _check_resume_matches(path: str, batches: TrainBatches, data_digest: str, total_steps: int) -> None:
    """The batches after a resume must be the ones the interrupted run would have seen, and within this run."""
    loop = read_loop_state(path)["loop"]
    if loop.get("step", 0) > total_steps:
        raise ConfigError(f"resume_from_checkpoint {path!r} is at step {loop['step']}, past this run's last step "
                          f"{total_steps} (max_train_steps / num_train_epochs); raise max_train_steps or resume an "
                          "earlier checkpoint")
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


def _train_command() -> Optional[list[str]]:
    """The command line that started this run (None when train() was called from Python, not a train command)."""
    command = launch_command()
    return command if any(a == "--train_config" or a.startswith("--train_config=") for a in command) else None


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




def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def save_final_model(acc, model, tokenizer, output_dir: str) -> None:
    """A directory any HF user loads with from_pretrained: full weights or the adapter, tokenizer, chat template."""
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards onto the main process
    unwrapped = acc.unwrap_model(model)
    # written beside output_dir and moved in, config last: a kill never leaves a config without its weights
    with staged_directory(output_dir, acc.is_main_process, acc.wait_for_everyone) as staged:
        unwrapped.save_pretrained(staged, is_main_process=acc.is_main_process, save_function=acc.save,
                                  state_dict=state_dict, safe_serialization=True)
        if acc.is_main_process:
            tokenizer.save_pretrained(staged)
