"""The train_config schema: one pydantic model that validates everything before anything heavy loads.

The original MFTCoder keys keep their meaning (see shared/REFERENCE_MFTCODER.md section 5); new keys have guessable names.
Legacy keys that MFTCoder accepted but ignored are still accepted (and ignored) so old configs load.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
import types
import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mftcoder.jsonl import read_json_object


class ConfigError(ValueError):
    """A train_config problem, with the key and what would be valid."""


def _takes_numbers(annotation: Any) -> bool:
    """Does the annotation hold an int or float, itself or as list/dict items?"""
    if annotation in (int, float):
        return True
    return any(_takes_numbers(a) for a in typing.get_args(annotation) if not isinstance(a, str))


def _refuse_bools(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    # pydantic's lax mode reads true as 1 (`max_train_steps: true` ran one step): a boolean is never a number here
    field = model.model_fields.get(info.field_name)
    if field is None or not _takes_numbers(field.annotation):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    if any(isinstance(v, bool) for v in items):
        raise ValueError(f"got {json.dumps(value, default=str)}: a boolean where a number belongs "
                         "(true/false are not 1/0)")
    return value


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="A folder searched recursively for *.jsonl, or one .jsonl file.")
    name: Optional[str] = Field(None, description="Task name; defaults to the folder or file name (made unique).")
    weight: Optional[float] = Field(None, gt=0, description="Loss weight of this task (case3/case4).")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_bools(cls, value, info)


def _parse_bracket_list(value: str) -> list[str]:
    # MFTCoder's "[p1,p2]" string form.
    inner = value.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    return [p.strip().strip("'\"") for p in inner.split(",") if p.strip()]


LEGACY_IGNORED_KEYS = {
    "load_raw_dataset", "data_weights", "tokenizer_type", "shuffle_before_split", "use_random_sampler",
    "low_cpu_mem_usage", "use_xformers", "weight_by_num_documents", "make_vocab_size_divisible_by",
    "model_parallel_size", "use_slow_tokenizer", "world_size", "distributed_type", "log_interval_legacy",
}


ROLE_NAMES = ("system", "user", "assistant")

PREFERENCE_OBJECTIVES = ("dpo", "orpo", "reward")
# keys that belong to some objectives only (a run of another objective refuses them)
OBJECTIVE_KEYS = {"dpo_beta": ("dpo",), "dpo_loss": ("dpo",), "reference_model_path": ("dpo",),
                  "precompute_reference": ("dpo",), "orpo_lambda": ("orpo",),
                  "router_aux_loss_coef": ("sft", "pretrain"), "reset_position_ids": ("pretrain",),
                  "fim_rate": ("pretrain",), "fim_spm_rate": ("pretrain",), "fim_tokens": ("pretrain",),
                  # pretraining rows are full blocks of the document stream: nothing to pack, nothing too long
                  "padding_mode": ("sft", "dpo", "orpo", "reward"), "overlong_policy": ("sft", "dpo", "orpo", "reward")}
FIM_ROLES = ("prefix", "middle", "suffix")
# report_to names and the package each needs (wandb and mlflow come with `pip install 'mftcoder[trackers]'`)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
                    "wandb": ("wandb", "pip install 'mftcoder[trackers]'"),
                    "mlflow": ("mlflow", "pip install 'mftcoder[trackers]'")}


def check_role_markers(role_markers: Optional[dict], template: Optional[str] = None) -> None:
    """The one rule for role_markers (the config and a template built without a config both use it): known roles,
    string markers, and only with the 'mftcoder' template; empty counts as not given. Raises ValueError."""
    if not role_markers:
        return
    bad = sorted(set(role_markers) - set(ROLE_NAMES))
    if bad:
        raise ValueError(f"role_markers has unknown role(s) {bad}; valid roles: {', '.join(ROLE_NAMES)}")
    for role, marker in role_markers.items():
        if not isinstance(marker, str):
            raise ValueError(f"role_markers[{role!r}] is {type(marker).__name__}; expected a string")
    if template is not None and template != "mftcoder":
        raise ValueError(f"role_markers only apply to the 'mftcoder' template, not {template!r}; drop role_markers "
                         "or use template 'mftcoder'")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # --- data -------------------------------------------------------------------------------------------------------
    data_paths: list[TaskSpec] = Field(
        description='Tasks: MFTCoder\'s "[p1,p2]" string, a list of paths, or a list of {"name","path","weight"}.')
    data_split: str = Field("98,2,0", description='Train,valid,test percentages per task ("98,2,0"); split by content hash.')
    padding_mode: Literal["padding", "pack"] = Field(
        "padding", description="padding: one sample a row, dynamic padding; pack: bin-pack samples of one task per row.")
    tokenize_mode: Literal["sft", "pretrain"] = Field(
        "sft", description='Kept for MFTCoder configs: "pretrain" means objective "pretrain"; use objective instead.')
    template: Literal["mftcoder", "chatml", "tokenizer"] = Field(
        "mftcoder", description="Chat template: MFTCoder role tags, ChatML, or the tokenizer's own chat_template.")
    role_markers: Optional[dict[str, str]] = Field(
        None, description='Override the mftcoder role tags: {"system": .., "user": .., "assistant": ..}.')
    seq_length: int = Field(4096, gt=8, description="Maximum tokens per row (sample or pack).")
    overlong_policy: Literal["truncate", "drop"] = Field(
        "truncate", description="What to do with samples longer than seq_length (counted either way).")
    on_bad_line: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first invalid line (file:line); skip: skip and count it as rejected.")
    cache_dir: Optional[str] = Field(None, description="Token cache folder; default <output_dir>/cache.")
    preprocessing_num_workers: Optional[int] = Field(
        None, ge=1, description="Processes that tokenise in parallel; default all usable cores (one for data under 4 MiB).")
    task_sampling: Literal["proportional", "uniform", "temperature", "explicit"] = Field(
        "proportional", description="How often each task is drawn: by size, equally, size^(1/T), or task_sampling_weights.")
    sampling_temperature: float = Field(2.0, gt=0, description="T for task_sampling=temperature.")
    task_sampling_weights: Optional[Union[list[float], dict[str, float]]] = Field(
        None, description="Draw weights per task for task_sampling=explicit (list in task order or {task: weight}).")
    group_by_task: bool = Field(False, description="Each micro-batch holds one task (less padding, similar lengths).")

    # --- model -------------------------------------------------------------------------------------------------------
    pretrained_model_path: str = Field(description='Local directory of the base HF causal LM, or '
                                       '"builtin:smollm2-135m-instruct" (the bundled SmolLM2, converted once).')
    model_type: Optional[str] = Field(None, description="Optional; the model's config decides (AutoModelForCausalLM).")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the model directory.")
    attn_implementation: Optional[Literal["flash_attention_2", "sdpa", "eager"]] = Field(
        None, description="Default: flash_attention_2 on CUDA when installed, else sdpa (also the fallback, with a "
                          "warning, when flash_attention_2 is asked for without flash-attn or CUDA).")
    peft_type: Optional[Literal["lora", "qlora"]] = Field(
        None, description="null: full fine-tuning; lora; qlora (4-bit or 8-bit base via bitsandbytes).")
    quantization: Optional[Literal["4bit", "8bit"]] = Field(
        None, description="Base model quantization for qlora (default 4bit nf4 with double quant).")
    lora_rank: int = Field(96, gt=0, description="LoRA rank r.")
    lora_alpha: float = Field(32, gt=0, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: Optional[Union[list[str], str]] = Field(
        None, description='LoRA target modules; default "all-linear".')
    modules_to_save: Optional[list[str]] = Field(None, description="Extra modules trained fully and saved with the adapter.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    torch_compile: bool = Field(
        False, description="Compile each decoder layer with torch.compile (inductor): faster steps once compiled, the "
                            "first steps slower while it compiles; needs Triton on CUDA, a C/C++ compiler on CPU "
                            "(without them: one warning, trained uncompiled).")

    # --- objective ---------------------------------------------------------------------------------------------------
    objective: Literal["sft", "pretrain", "dpo", "orpo", "reward"] = Field(
        "sft", description="sft: cross entropy on the answers; pretrain: continued pretraining on raw text, documents "
                           "concatenated into seq_length blocks; dpo / orpo: preference pairs; reward: a scalar reward "
                           "model trained on pairs (see README, Continued pretraining / Preference training).")
    reset_position_ids: bool = Field(
        True, description="pretrain: position ids restart and attention stays inside each document of a block "
                          "(false: classic blocks where tokens attend across document boundaries).")
    fim_rate: float = Field(0.0, ge=0, le=1, description="pretrain: fraction of documents turned into "
                            "fill-in-the-middle samples (character-level split, deterministic per document and seed).")
    fim_spm_rate: float = Field(0.5, ge=0, le=1, description="pretrain: fraction of the FIM samples in SPM order "
                                "(suffix, prefix, middle) instead of PSM (prefix, suffix, middle).")
    fim_tokens: Optional[dict[str, str]] = Field(
        None, description='FIM sentinels {"prefix": .., "middle": .., "suffix": ..}; default: the tokenizer\'s own '
                          "(StarCoder, Qwen2.5-Coder, DeepSeek-Coder, CodeLlama spellings are recognised).")
    train_new_tokens: bool = Field(
        False, description="LoRA/QLoRA after `mftcoder extend-vocab`: also train the embedding (and untied lm_head) "
                           "rows of the added tokens; tied embeddings stay tied.")
    dpo_beta: float = Field(0.1, gt=0, description="DPO: beta, the strength of the pull towards the reference model.")
    dpo_loss: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="DPO loss: sigmoid (DPO paper), ipo (IPO's squared loss), hinge (SLiC's).")
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO: weight of the odds-ratio term added to the chosen NLL.")
    reference_model_path: Optional[str] = Field(
        None, description="DPO: the reference model folder; default the base model (with LoRA: the base with the "
                          "adapter disabled, no second copy held).")
    precompute_reference: bool = Field(
        False, description="DPO: compute the reference log-probs once into the cache, then train without the "
                           "reference model in memory.")

    # --- loss --------------------------------------------------------------------------------------------------------
    weighted_loss_mode: Literal["case1", "case2", "case3", "case4", "coba"] = Field(
        "case3", description="case1 token mean, case2 sample mean, case3/case4 task-balanced, coba self-paced.")
    task_weights: Optional[Union[list[float], dict[str, float], str]] = Field(
        None, description='Loss weight per task for case3/case4: "[w1,w2]", a list, or {task: weight}. Default equal.')
    chunked_ce: bool = Field(True, description="Cross entropy in chunks so full [batch, seq, vocab] logits never exist.")
    fused_ce: bool = Field(True, description="With chunked_ce: compute the lm_head and cross entropy gradients inside "
                           "the forward (one lm_head pass less than recomputing them in backward; SFT with a plain "
                           "linear lm_head, else the recomputing path).")
    ce_chunk_size: int = Field(1024, gt=0, description="Token positions per cross-entropy chunk.")
    router_aux_loss_coef: Optional[float] = Field(
        None, ge=0, description="MoE models: weight of the router load-balancing loss; null = the model's own, 0 = off.")
    coba_warmup_steps: int = Field(100, ge=0, description="CoBa: uniform weights before this step.")
    coba_history_length: int = Field(200, gt=1, description="CoBa: validation points in the slope window.")
    coba_tau: float = Field(5, gt=0, description="CoBa: temperature of the divergence factor.")
    coba_update_interval: int = Field(1, ge=1, description="CoBa: validation probe every N optimizer steps.")
    coba_sample_valid_num: int = Field(1, ge=1, description="CoBa: validation micro-batches per probe.")

    # --- optimisation ------------------------------------------------------------------------------------------------
    per_device_train_batch_size: int = Field(8, gt=0, description="Rows per micro-batch per process.")
    per_device_eval_batch_size: int = Field(8, gt=0, description="Rows per evaluation batch per process.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step (the only source).")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    min_lr: float = Field(5e-6, ge=0, description="Learning-rate floor at the end of the schedule.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    optimizer: Literal["adamw", "adamw_8bit"] = Field("adamw", description="AdamW, or bitsandbytes 8-bit AdamW.")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, gt=0, lt=1, description="AdamW beta2.")
    max_grad_norm: Optional[float] = Field(1.0, description="Gradient clipping norm on every backend; null disables.")
    lr_scheduler_type: str = Field("cosine", description="Any transformers scheduler name (cosine, linear, constant, ...).")
    num_warmup_steps: Union[int, float] = Field(0.05, ge=0, description="Warmup: steps (int) or a fraction (< 1).")
    num_train_epochs: int = Field(4, gt=0, description="Epochs over the (balanced) task mixture.")
    max_train_steps: Optional[int] = Field(None, gt=0, description="Stop after this many optimizer steps.")
    seed: int = Field(1234, description="Seed for sampling, split-independent shuffles and init.")

    # --- run ---------------------------------------------------------------------------------------------------------
    output_dir: str = Field(description="Where checkpoints, metrics.jsonl, data_stats.json and the final model go.")
    tb_dir: Optional[str] = Field(None, description="TensorBoard folder; default <output_dir>/tensorboard.")
    report_to: Union[Literal["tensorboard", "wandb", "mlflow", "none"], list[Literal["tensorboard", "wandb", "mlflow"]]] = \
        Field("tensorboard", description='Experiment trackers that get the training scalars: "tensorboard", "wandb", '
              '"mlflow", "none", or a list such as ["tensorboard", "wandb"] (metrics.jsonl is always written).')
    tracker_project: str = Field("mftcoder", min_length=1, description="wandb project and MLflow experiment name "
                                 "(the run is named after output_dir's folder).")
    log_interval: int = Field(1, gt=0, description="Optimizer steps between progress-bar/log updates.")
    checkpointing_steps: Optional[int] = Field(100, gt=0, description="Save checkpoint-<step> every N steps.")
    epoch_checkpointing: bool = Field(False, description="Also save a checkpoint at the end of each epoch.")
    saving_limit: Optional[int] = Field(None, gt=0, description="Keep only the N newest checkpoints.")
    evaluation_steps: Optional[int] = Field(100, gt=0, description="Per-task validation every N steps.")
    early_stopping: bool = Field(True, description="Stop when the mean validation loss stops improving.")
    early_stopping_stall_num: int = Field(5, gt=0, description="Evaluations without a new best before stopping.")
    resume_from_checkpoint: Optional[str] = Field(None, description='A checkpoint folder or "latest".')
    auto_resume: bool = Field(False, description="Resume from the newest checkpoint in output_dir if there is one.")
    overwrite_output_dir: bool = Field(False, description="Allow a new run into an output_dir that holds an earlier "
                                       "run: deletes its checkpoints, metrics and final model before starting (a run "
                                       "that resumes deletes nothing).")
    init_timeout_seconds: int = Field(3600, gt=0, description="Process-group timeout.")
    use_dynamic_padding: bool = Field(True, description="Pad each batch to its longest row (false: to seq_length).")

    # --- parsing of MFTCoder's string forms ----------------------------------------------------------------------------
    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_bools(cls, value, info)

    @field_validator("data_paths", mode="before")
    @classmethod
    def _data_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _parse_bracket_list(value)
        if isinstance(value, list):
            value = [{"path": v} if isinstance(v, str) else v for v in value]
            if not value:
                raise ValueError("data_paths is empty; give at least one task folder or .jsonl file")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, value: Any) -> Any:
        names = value if isinstance(value, list) else [value]
        valid = ", ".join(json.dumps(n) for n in (*TRACKER_PACKAGES, "none"))
        for name in names:
            if name not in (*TRACKER_PACKAGES, "none"):
                hint = " ('all' is not accepted: name the trackers)" if name == "all" else ""
                raise ValueError(f"unknown tracker {json.dumps(name)}{hint}; valid: {valid}, or a list of them such "
                                 'as ["tensorboard", "wandb"]')
        if isinstance(value, list):
            if not value:
                raise ValueError('an empty list; use "none" to turn the trackers off')
            if "none" in value:
                if len(set(value)) > 1:
                    raise ValueError(f'"none" turns every tracker off and cannot be listed with others '
                                     f"(got {json.dumps(value)})")
                return "none"
            return list(dict.fromkeys(value))  # each tracker once
        return value

    @field_validator("task_weights", mode="before")
    @classmethod
    def _task_weights(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [float(x) for x in _parse_bracket_list(value)]
            except ValueError:
                raise ValueError(f'task_weights {value!r} is not a list of numbers like "[1,2,1]"') from None
        return value

    @field_validator("data_split")
    @classmethod
    def _data_split(cls, value: str) -> str:
        parts = value.replace("/", ",").split(",")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f'data_split {value!r} must be numbers like "98,2,0"') from None
        if len(nums) not in (2, 3) or any(n < 0 for n in nums) or sum(nums) <= 0:
            raise ValueError(f'data_split {value!r} must be 2 or 3 non-negative numbers like "98,2,0"')
        if abs(sum(nums) - 100) > 1e-6:  # percentages, as in MFTCoder; a rescaled split would surprise silently
            raise ValueError(f'data_split {value!r} must be train,valid[,test] percentages that sum to 100 '
                             f'(these sum to {sum(nums):g}), e.g. "98,2,0"')
        return value

    @field_validator("fim_tokens")
    @classmethod
    def _fim_tokens(cls, value):
        if value is not None and (set(value) != set(FIM_ROLES) or not all(isinstance(v, str) and v for v in
                                                                          value.values())):
            raise ValueError(f"fim_tokens must map exactly {', '.join(FIM_ROLES)} to non-empty token strings, got "
                             f"{json.dumps(value)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _tokenize_mode_alias(cls, data: Any) -> Any:
        # MFTCoder's tokenize_mode "pretrain" is the pretrain objective (loss on every token)
        if isinstance(data, dict) and data.get("tokenize_mode") == "pretrain" and data.get("objective", "sft") == "sft":
            data = {**data, "objective": "pretrain"}
        return data

    @field_validator("role_markers")
    @classmethod
    def _role_markers(cls, value):
        check_role_markers(value)
        return value

    @model_validator(mode="after")
    def _combinations(self) -> "TrainConfig":
        if self.peft_type == "qlora" and self.quantization is None:
            object.__setattr__(self, "quantization", "4bit")
        if self.quantization is not None and self.peft_type != "qlora":
            raise ValueError(f"quantization={self.quantization!r} needs peft_type='qlora' (a quantized base can only "
                             "be trained through adapters); set peft_type to 'qlora' or quantization to null")
        if self.task_sampling == "explicit" and self.task_sampling_weights is None:
            raise ValueError("task_sampling='explicit' needs task_sampling_weights (a list or {task: weight})")
        if self.weighted_loss_mode == "coba" and self.split_fractions[1] == 0:
            raise ValueError("weighted_loss_mode='coba' needs validation data: data_split has 0 for valid")
        self._check_loss_weights_apply()
        self._check_objective_keys()
        if self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than learning_rate ({self.learning_rate})")
        if isinstance(self.num_warmup_steps, float) and self.num_warmup_steps >= 1:
            raise ValueError("num_warmup_steps as a float is a fraction and must be < 1; use an int for steps")
        check_role_markers(self.role_markers, self.template)
        return self

    def _check_loss_weights_apply(self) -> None:
        # task loss weights only enter case3/case4; elsewhere they would be ignored without a word
        given = ["task_weights"] if self.task_weights is not None else []
        given += [f"data_paths.{i}.weight" for i, t in enumerate(self.data_paths) if t.weight is not None]
        if not given or self.weighted_loss_mode in ("case3", "case4"):
            return
        why = ("CoBa sets the weights" if self.weighted_loss_mode == "coba" else
               "it weights every token equally" if self.weighted_loss_mode == "case1" else
               "it weights every sample equally")
        raise ValueError(f"{' and '.join(given)} cannot be combined with weighted_loss_mode="
                         f"{self.weighted_loss_mode!r} ({why}); task weights apply only to case3 and case4: "
                         "remove them or choose one of those modes")

    def _check_objective_keys(self) -> None:
        # a key of another objective would be ignored without a word: name it instead (at its default value it changes
        # nothing, and a saved config, which lists every key, must load again)
        for key, objectives in OBJECTIVE_KEYS.items():
            if getattr(self, key) != type(self).model_fields[key].default and self.objective not in objectives:
                raise ValueError(f"{key} applies only to objective {' / '.join(map(repr, objectives))}, not "
                                 f"{self.objective!r}; remove it or set objective accordingly")
        if self.is_preference and self.tokenize_mode != "sft":
            raise ValueError(f"tokenize_mode={self.tokenize_mode!r} cannot be combined with objective="
                             f"{self.objective!r}: preference objectives train on pairs of answers")
        if self.train_new_tokens and self.peft_type is None:
            raise ValueError("train_new_tokens applies to LoRA/QLoRA (peft_type); full fine-tuning already trains "
                             "every embedding row")

    @property
    def is_preference(self) -> bool:
        """Does the objective train on (prompt, chosen, rejected) pairs?"""
        return self.objective in PREFERENCE_OBJECTIVES

    # --- derived values ----------------------------------------------------------------------------------------------
    @property
    def split_fractions(self) -> tuple[float, float, float]:
        nums = [float(p) for p in self.data_split.replace("/", ",").split(",")]
        nums += [0.0] * (3 - len(nums))
        total = sum(nums)
        return nums[0] / total, nums[1] / total, nums[2] / total

    @property
    def trackers(self) -> tuple[str, ...]:
        """The report_to trackers as a tuple ("none": empty)."""
        names = self.report_to if isinstance(self.report_to, list) else [self.report_to]
        return tuple(n for n in names if n != "none")

    @property
    def resolved_tb_dir(self) -> str:
        return self.tb_dir or os.path.join(self.output_dir, "tensorboard")

    @property
    def resolved_cache_dir(self) -> str:
        return self.cache_dir or os.path.join(self.output_dir, "cache")


def _nearest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def _fields_at(loc: tuple) -> dict:
    # keys inside a data_paths entry ("data_paths.0.pth") belong to TaskSpec, not to the top level
    return TaskSpec.model_fields if len(loc) > 1 and loc[0] == "data_paths" else TrainConfig.model_fields


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        fields = _fields_at(e["loc"])
        key = str(e["loc"][-1]) if e["loc"] else ""
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}{_nearest(key, list(fields))}")
        elif e["type"] == "missing":
            desc = f" ({fields[key].description})" if key in fields else ""
            lines.append(f"missing required key {loc!r}{desc}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = "" if e["type"].startswith("value_error") else f" (got {e.get('input')!r})"
            # a cross-key rule (model validator) has no location; its message names the keys itself
            lines.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return f"invalid train_config {source}:\n  - " + "\n  - ".join(lines)


def _parse_yaml(text: str, path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).replace("\n", " ")
        if context:  # e.g. "while parsing a flow sequence", where that began
            context_mark = getattr(e, "context_mark", None)
            problem += f" ({context}" + (f" started on line {context_mark.line + 1})" if context_mark else ")")
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"train_config file not found: {path}")
    if not path.endswith((".yaml", ".yml")):
        try:
            return read_json_object(path)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    with open(path, encoding="utf-8") as f:
        data = _parse_yaml(f.read(), path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the train_config must be a JSON/YAML object of keys")
    return data


def parse_config(data: dict, source: str = "(dict)", overrides: Optional[dict] = None) -> TrainConfig:
    data = {k: v for k, v in data.items() if k not in LEGACY_IGNORED_KEYS}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str, overrides: Optional[dict] = None) -> TrainConfig:
    return parse_config(read_config_file(path), source=path, overrides=overrides)


def read_model_config(path: str, key: str = "pretrained_model_path") -> dict:
    """The model folder's config.json, or a one-line error naming the folder or the file:line at fault."""
    if not os.path.isdir(path):
        raise ConfigError(f"{key}: {path!r} is not a directory (a local HF model folder with config.json is needed; "
                          "nothing is downloaded)")
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise ConfigError(f"{key}: no config.json in {path!r}")
    try:
        data = read_json_object(file)
    except ValueError as e:
        raise ConfigError(f"{e} (a damaged model config; copy it again from the original model)") from None
    if "model_type" not in data:
        raise ConfigError(f"{file}: not a Hugging Face model config (a JSON object with a 'model_type' key)")
    return data


# what a tokenizer loads from: the fast tokenizer, a sentencepiece model, a BPE/WordPiece vocabulary, tiktoken ranks
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("tokenizer.model",), ("spiece.model",), ("vocab.json", "merges.txt"),
                       ("vocab.txt",))


def tokenizer_files_problem(path: str, trust_remote_code: bool = False) -> Optional[str]:
    """None when `path` holds a loadable set of tokenizer files, else what is missing (the loader's own error would
    blame sentencepiece or tiktoken). The one place that knows the tokenizer file sets."""
    names = set(os.listdir(path)) if os.path.isdir(path) else set()
    if any(all(n in names for n in group) for group in TOKENIZER_FILE_SETS):
        return None
    if any(n.endswith(".tiktoken") for n in names):
        return None
    if trust_remote_code and "tokenizer_config.json" in names:
        return None  # custom tokenizer code may read files of its own naming
    wanted = ", ".join(" + ".join(group) for group in TOKENIZER_FILE_SETS) + " or *.tiktoken"
    partial = [n for group in TOKENIZER_FILE_SETS for n in group if n in names]
    found = f"; it has {', '.join(partial)} but not the rest of its set" if partial else ""
    return f"no tokenizer files in {path!r} (needs one of: {wanted}{found})"


def check_tokenizer_files(path: str, trust_remote_code: bool = False, key: str = "pretrained_model_path") -> None:
    """Refuse a model folder without tokenizer files up front, saying which."""
    problem = tokenizer_files_problem(path, trust_remote_code)
    if problem:
        raise ConfigError(f"{key}: {problem}; copy the tokenizer files of the model it came from into it")


def resolve_builtin(path: str, key: str) -> str:
    """A "builtin:" model name as its folder (the bundled SmolLM2, converted into the cache once); other paths as
    they are."""
    if not path.startswith("builtin:"):
        return path
    from mftcoder.model.smollm2 import BUILTIN, resolve_model_path  # a leaf module: no cycle

    if path != BUILTIN:
        raise ConfigError(f"{key}: {path!r} is not a built-in model; the one built-in is {BUILTIN!r}")
    return resolve_model_path(path)


def check_environment(cfg: TrainConfig) -> None:
    """Checks that need the file system or installed packages, still before any model loads."""
    cfg.pretrained_model_path = resolve_builtin(cfg.pretrained_model_path, "pretrained_model_path")
    model_config = read_model_config(cfg.pretrained_model_path)
    check_tokenizer_files(cfg.pretrained_model_path, cfg.trust_remote_code)
    if cfg.reference_model_path:  # DPO's reference: a model folder too, checked before anything loads
        cfg.reference_model_path = resolve_builtin(cfg.reference_model_path, "reference_model_path")
        read_model_config(cfg.reference_model_path, "reference_model_path")
    needs_bnb = cfg.peft_type == "qlora" or cfg.optimizer == "adamw_8bit"
    if needs_bnb and importlib.util.find_spec("bitsandbytes") is None:
        key = "peft_type='qlora'" if cfg.peft_type == "qlora" else "optimizer='adamw_8bit'"
        raise ConfigError(f"{key} needs bitsandbytes: pip install bitsandbytes (or `pip install 'mftcoder[quant]'`)")
    for name in cfg.trackers:  # before the model loads: a missing tracker package would fail at the first log
        module, install = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to {name!r} needs the {module} package: {install} (or drop {name!r} from "
                              "report_to)")
    if cfg.router_aux_loss_coef:
        if "router_aux_loss_coef" not in model_config:
            raise ConfigError(f"router_aux_loss_coef={cfg.router_aux_loss_coef} but the model in "
                              f"{cfg.pretrained_model_path!r} ({model_config.get('model_type')}) is not a Mixture-of-"
                              "Experts model with a router loss; leave router_aux_loss_coef null")
    # attn_implementation='flash_attention_2' without flash-attn or CUDA is no error: model/load.py falls back to
    # sdpa (same results) with one warning


def _type_text(ann: Any) -> str:
    """A readable type: '"padding" | "pack"', 'int | null', 'list[{path, name, weight}]'."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if ann is type(None):
        return "null"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_text(a) for a in args)}]"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "{" + ", ".join(ann.model_fields) + "}"
    return getattr(ann, "__name__", str(ann))


def schema_text() -> str:
    """A human-readable list of every key, its type, default and one-line description."""
    rows = []
    for name, field in TrainConfig.model_fields.items():
        default = "required" if field.is_required() else json.dumps(field.default)
        rows.append(f"{name}  [{_type_text(field.annotation)}]  default: {default}\n    {field.description}")
    return "\n".join(rows)
