"""Load the base causal LM with the right attention backend, dtype, quantisation, LoRA and checkpointing."""
from __future__ import annotations

import logging

import torch

from mftcoder.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)


def flash_attention_unavailable() -> str | None:
    """Why flash_attention_2 cannot run here ("flash-attn is not installed", "no CUDA device"), or None if it can."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return "flash-attn does not work with this torch/GPU"
    return None


def pick_attn_implementation(requested: str | None) -> str:
    """flash_attention_2 on CUDA when installed, else sdpa: decided here once and said once in the log.

    flash_attention_2 asked for where it cannot run (MFTCoder's own configs ask for it) falls back to sdpa, which
    computes the same attention, with one warning saying why."""
    if requested == "flash_attention_2":
        why = flash_attention_unavailable()
        if why is None:
            return requested
        log.warning("attn_implementation='flash_attention_2' but %s: using sdpa (the same attention, slower on GPUs)",
                    why)
        return "sdpa"
    if requested:
        return requested
    return "flash_attention_2" if flash_attention_unavailable() is None else "sdpa"


def compute_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def quantization_config(cfg: TrainConfig, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # storage dtype = compute dtype lets ZeRO-3 / FSDP shard the packed 4-bit weights like any other tensor
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)


MODEL_HEADS = ("causal_lm", "sequence_classification")


def _from_pretrained(cfg: TrainConfig, head: str, pad_token_id: int | None, **kwargs):
    """The base model with the objective's head: a causal LM, or a one-label sequence classifier (a reward model,
    its scalar head newly initialised, reading the last token: pad_token_id tells transformers where that is)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(cfg.pretrained_model_path, **kwargs)
    if head != "sequence_classification":
        raise ValueError(f"unknown model head {head!r}; valid: {', '.join(MODEL_HEADS)}")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(cfg.pretrained_model_path, num_labels=1, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise ConfigError(f"objective 'reward' needs a sequence-classification class for the model in "
                          f"{cfg.pretrained_model_path!r}, and transformers has none for its architecture; use a "
                          "model family with one (Llama, Qwen2, Mistral, ...)") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def load_model(cfg: TrainConfig, *, mixed_precision: str = "no", device: torch.device | None = None,
               sharded: bool = False, head: str = "causal_lm", pad_token_id: int | None = None):
    """Returns the (possibly PEFT-wrapped) model, ready for accelerator.prepare.

    Full fine-tuning keeps fp32 master weights (autocast handles bf16); LoRA/QLoRA bases are loaded in the compute
    dtype since they are frozen. `head`: "causal_lm", or "sequence_classification" for a reward model.
    """
    attn = pick_attn_implementation(cfg.attn_implementation)
    dtype = compute_dtype(mixed_precision) if cfg.peft_type else torch.float32
    kwargs = dict(dtype=dtype, attn_implementation=attn, trust_remote_code=cfg.trust_remote_code)
    if cfg.peft_type == "qlora":
        kwargs["quantization_config"] = quantization_config(cfg, compute_dtype(mixed_precision))
        if not sharded:
            kwargs["device_map"] = {"": str(device or ("cuda" if torch.cuda.is_available() else "cpu"))}
    log.info("loading %s (attention: %s, dtype: %s, peft: %s)", cfg.pretrained_model_path, attn, dtype, cfg.peft_type)
    model = _from_pretrained(cfg, head, pad_token_id, **kwargs)
    model.config.use_cache = False

    if cfg.peft_type == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.peft_type:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path

    if cfg.peft_type:
        from peft import LoraConfig, get_peft_model

        from mftcoder.model.vocab_model import embedding_training_options

        task_type = "CAUSAL_LM" if head == "causal_lm" else "SEQ_CLS"  # SEQ_CLS trains and saves the new head too
        lora = LoraConfig(task_type=task_type, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules or "all-linear",
                          modules_to_save=cfg.modules_to_save,
                          **embedding_training_options(model, cfg.pretrained_model_path, cfg.train_new_tokens,
                                                       cfg.modules_to_save))
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            if "ParamWrapper" not in str(e):
                raise
            # PEFT puts LoRA on the fused expert weights (nn.Parameter, not nn.Linear) of v5 MoE models; those adapters
            # cannot apply dropout
            raise ConfigError(
                f"lora_dropout={cfg.lora_dropout}: for {type(model).__name__} PEFT adds LoRA to the fused expert weights, "
                f"which cannot use dropout ({e}); set lora_dropout to 0, or list target_modules (e.g. "
                '["q_proj", "k_proj", "v_proj", "o_proj"]) to leave the experts out') from None
        if dtype != torch.float32:
            # trainable adapter weights stay fp32 so Adam updates are not lost to bf16 rounding
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
    _attach_fast_paths(model, cfg, attn, device)
    numel = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731  (ZeRO-3 init leaves empty local shards)
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return model, attn


def _attach_fast_paths(model, cfg: TrainConfig, attn: str, device: torch.device | None) -> None:
    """After PEFT (so LoRA layers sit inside what gets compiled): packed-row boundaries for flash attention, and
    the opt-in per-layer torch.compile."""
    from mftcoder.loss.cross_entropy import unwrap_causal_lm

    lm = unwrap_causal_lm(model)
    decoder = lm.get_decoder()
    if attn == "flash_attention_2" and decoder is not None:
        from mftcoder.model.flash_varlen import install_varlen_hook

        install_varlen_hook(decoder)
    if attn == "sdpa" and decoder is not None and not cfg.torch_compile and not _sliding_window(lm.config):
        from mftcoder.model.packed_sdpa import use_packed_sdpa

        use_packed_sdpa(lm, decoder)  # per-sample causal attention for packed rows (compile would retrace each step)
    if cfg.torch_compile:
        from mftcoder.model.compile import compile_decoder_layers

        compile_decoder_layers(model, (device or torch.device("cuda" if torch.cuda.is_available() else "cpu")).type)


def _sliding_window(config) -> bool:
    """Whether some layer attends within a sliding window (Mistral, Gemma 2/3, Qwen2 with use_sliding_window):
    per-sample causal attention would ignore the window, so those models keep sdpa's mask."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def decoder_layer_class_names(model) -> list[str]:
    """The repeated transformer block class of any HF model (for FSDP auto-wrap), found at run time."""
    names = getattr(model, "_no_split_modules", None) or []
    base = getattr(model, "base_model", None)
    if not names and base is not None:
        names = getattr(getattr(base, "model", base), "_no_split_modules", None) or []
    return list(names)
