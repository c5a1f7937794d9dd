"""LoRA / QLoRA adapters on a base model: find them, load their tensors strictly, check the base, apply them.

Loading is strict, unlike `PeftModel.from_pretrained`, which warns and carries on with zero-initialised LoRA
weights when the saved keys do not match (the model would silently equal the base):
  * wrapper prefixes that distributed training adds to names (`module.`, FSDP's `_fsdp_wrapped_module.`,
    activation checkpointing's `_checkpoint_wrapped_module.`, torch.compile's `_orig_mod.`) and an adapter
    name left in the keys (`lora_A.default.weight`) are removed;
  * an empty tensor (a ZeRO-3 shard saved without gathering) is an error that says how to save it;
  * every LoRA weight the config implies must be present and every saved tensor must be used.

Shapes fitting is not enough: `adapter_base_differences` names a base the adapter was not trained on (another
architecture, layer count or vocabulary, or a recorded base whose config differs); callers refuse
it unless forced.
"""
from __future__ import annotations

import json
import os
import re
import sys

from mftcoder.jsonl import read_json_object

ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_WRAPPERS = re.compile(r"(^|\.)(module|_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
_ADAPTER_NAME_IN_KEY = re.compile(r"\.(lora_[A-Za-z_]+|modules_to_save)\.default(\.|$)")
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")
# config fields that must agree between the recorded base and the given one
_FINGERPRINT_FIELDS = ("model_type", "architectures", "num_hidden_layers", "vocab_size", "hidden_size",
                       "intermediate_size", "num_attention_heads", "num_key_value_heads")


class AdapterMismatchError(ValueError):
    """An adapter applied to a base it was not trained on; the message names what differs."""


def find_adapter_dir(path: str) -> str:
    """`path` if it holds adapter_config.json, else its single subdirectory that does."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"adapter directory {path} does not exist")
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        return path
    subdirs = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, ADAPTER_CONFIG)))
    if len(subdirs) == 1:
        return os.path.join(path, subdirs[0])
    found = f"; subdirectories with one: {subdirs}" if subdirs else ""
    raise FileNotFoundError(f"{path} holds no {ADAPTER_CONFIG} (a LoRA adapter saved by peft){found}")


def read_adapter_config(adapter_dir: str) -> dict:
    return read_json_object(os.path.join(adapter_dir, ADAPTER_CONFIG))


def normalize_key(key: str) -> str:
    """Saved adapter key -> the name peft expects (`base_model.model.<module path>.lora_A.weight`)."""
    previous = None
    while previous != key:
        previous, key = key, _WRAPPERS.sub(r"\1", key)
    return _ADAPTER_NAME_IN_KEY.sub(r".\1\2", key)


def load_adapter_weights(adapter_dir: str) -> dict:
    """The adapter tensors with normalized keys; empty (unsaved ZeRO-3 shard) tensors are an error."""
    import torch

    path = next((os.path.join(adapter_dir, f) for f in _WEIGHT_FILES if os.path.isfile(os.path.join(adapter_dir, f))), None)
    if path is None:
        raise FileNotFoundError(f"{adapter_dir} has {ADAPTER_CONFIG} but no weights ({' or '.join(_WEIGHT_FILES)})")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        raw = load_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    weights = {}
    for key, tensor in raw.items():
        if tensor.numel() == 0:
            raise ValueError(
                f"{path}: tensor {key} is empty (shape {tuple(tensor.shape)}). It was saved from a ZeRO-3 partition "
                "without gathering; save the adapter with the full state dict (accelerator.get_state_dict(model) "
                "or DeepSpeed's zero3 16-bit save) and merge again"
            )
        new = normalize_key(key)
        if new in weights:
            raise ValueError(f"{path}: keys {key!r} and another both map to {new!r}")
        weights[new] = tensor
    if not weights:
        raise ValueError(f"{path} holds no tensors")
    return weights


# ---------------------------------------------------------------------------------------------- base checks
def _text_config(config):
    """The decoder's config (multimodal configs keep it under text_config)."""
    return getattr(config, "text_config", None) or config


def _config_dict(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return dict(config, **config.get("text_config", {})) if isinstance(config.get("text_config"), dict) else config


def _recorded_base_differences(adapter_config: dict, base_dir: str) -> list[str]:
    """Config fields where the base recorded in adapter_config.json (when it is a local folder) differs."""
    recorded = adapter_config.get("base_model_name_or_path")
    if not recorded or not os.path.isdir(recorded):
        return []  # a hub id or a moved folder: the other checks still apply
    if os.path.realpath(recorded) == os.path.realpath(base_dir):
        return []
    theirs, ours = _config_dict(recorded), _config_dict(base_dir)
    if theirs is None or ours is None:
        return []
    return [f"{k} {theirs.get(k)!r} (recorded base {recorded}) vs {ours.get(k)!r}"
            for k in _FINGERPRINT_FIELDS if theirs.get(k) != ours.get(k)]


def _layer_differences(adapter_config: dict, weights: dict, base_config) -> list[str]:
    """An adapter over every layer of a 2-layer model leaves layer 2 of a 3-layer base unadapted."""
    if adapter_config.get("layers_to_transform") is not None:
        return []  # trained on chosen layers on purpose
    layers = {int(m.group(1)) for k in weights for m in [_LAYER_INDEX.search(k)] if m}
    base_layers = getattr(_text_config(base_config), "num_hidden_layers", None)
    if not layers or not isinstance(base_layers, int) or max(layers) + 1 == base_layers:
        return []
    return [f"layers: the adapter adapts layers up to {max(layers)} ({max(layers) + 1} layers), "
            f"the base has {base_layers}"]


def _vocab_differences(adapter_tokenizer, base_tokenizer, embedding_rows: int | None, weights: dict) -> list[str]:
    """The adapter's tokenizer (saved by training) must be the base's, or extend it with added tokens whose
    embedding rows the adapter carries."""
    if adapter_tokenizer is None:
        return []
    if base_tokenizer is not None:
        theirs, ours = adapter_tokenizer.get_vocab(), base_tokenizer.get_vocab()
        changed = [t for t, i in ours.items() if theirs.get(t) != i]
        if changed:
            return [f"vocabulary: the adapter's tokenizer has {len(theirs)} tokens, the base's {len(ours)}, and "
                    f"{len(changed)} of the base's tokens are missing or have other ids (e.g. {changed[0]!r})"]
    carries_rows = any("embed_tokens" in k or "lm_head" in k for k in weights)
    if embedding_rows is not None and len(adapter_tokenizer) > embedding_rows and not carries_rows:
        return [f"vocabulary: the adapter's tokenizer has {len(adapter_tokenizer)} tokens, the base's embedding "
                f"{embedding_rows} rows, and the adapter carries no embedding rows"]
    return []


def adapter_base_differences(adapter_dir: str, base_dir: str, base_config, weights: dict, adapter_tokenizer=None,
                             base_tokenizer=None, embedding_rows: int | None = None) -> list[str]:
    """What differs between the base the adapter was trained on and this one (empty when they agree): the
    architecture and sizes of the recorded base (adapter_config.json's base_model_name_or_path, when it is a local
    folder), the layers the adapter covers, and the vocabulary of the tokenizer saved beside the adapter."""
    adapter_config = read_adapter_config(adapter_dir)
    return (_recorded_base_differences(adapter_config, base_dir)
            + _layer_differences(adapter_config, weights, base_config)
            + _vocab_differences(adapter_tokenizer, base_tokenizer, embedding_rows, weights))


# ---------------------------------------------------------------------------------------------- applying
def _expected_keys(peft_model) -> set[str]:
    """The trained tensors a complete adapter file holds: LoRA weights, fully trained modules and trainable token
    rows, except those of a layer tied to another (a tied lm_head shares the embedding's, which peft saves once)."""
    saved_parts = (".lora_", ".modules_to_save.", ".token_adapter.trainable_tokens_delta")
    tied = tuple(f"{name}." for name, m in peft_model.named_modules() if getattr(m, "tied_adapter", None) is not None)
    return {k for k in peft_model.state_dict() if any(p in k for p in saved_parts) and not (tied and k.startswith(tied))}


def _of_adapter(key: str, name: str) -> bool:
    """Whether a PeftModel state-dict key belongs to adapter `name` (`lora_A.<name>.weight`, `...delta.<name>`)."""
    return f".{name}." in key or key.endswith(f".{name}")


def apply_adapter(model, adapter: str, weights: dict | None = None, adapter_name: str = "default"):
    """Wrap `model` with the adapter in `adapter` (a PeftModel in eval mode), strictly (see module docstring).
    `model` may already be a PeftModel: the adapter is added beside the others under `adapter_name`."""
    from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    adapter_dir = find_adapter_dir(adapter)
    config = PeftConfig.from_pretrained(adapter_dir)
    config.inference_mode = True
    # the base was checked by the caller (adapter_base_differences); peft would only warn about a moved path
    config.base_model_name_or_path = getattr(model, "name_or_path", None) or config.base_model_name_or_path
    weights = load_adapter_weights(adapter_dir) if weights is None else weights
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
        peft_model = model
    else:
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    expected = {k for k in _expected_keys(peft_model) if _of_adapter(k, adapter_name)}
    try:
        result = set_peft_model_state_dict(peft_model, weights, adapter_name=adapter_name)
    except RuntimeError as e:  # size mismatches: wrong base model or rank
        raise AdapterMismatchError(f"adapter {adapter_dir} does not fit this base model: {e}") from None
    except KeyError as e:  # peft looks up each modules_to_save tensor (e.g. a reward model's head) unchecked
        raise AdapterMismatchError(f"adapter {adapter_dir} does not match the base model: the fully trained weight "
                                   f"{e.args[0]!r} (modules_to_save) is missing from the file") from None
    missing = sorted(k for k in result.missing_keys if k in expected)
    if result.unexpected_keys or missing:
        detail = []
        if result.unexpected_keys:
            detail.append(f"{len(result.unexpected_keys)} saved tensors match no module, e.g. {sorted(result.unexpected_keys)[:3]}")
        if missing:
            detail.append(f"{len(missing)} LoRA weights are missing from the file, e.g. {missing[:3]}")
        raise AdapterMismatchError(f"adapter {adapter_dir} does not match the base model: " + "; ".join(detail))
    peft_model.eval()
    return peft_model


def checked_adapter_weights(model, base_dir: str, adapter_dir: str, tokenizer) -> tuple[dict, str | None]:
    """(the adapter's tensors, what says it was not trained on this base or None); the model's embeddings grow
    to the tokenizer when training added tokens."""
    from mftcoder.model.tokenizer import has_tokenizer_files, load_tokenizer

    weights = load_adapter_weights(adapter_dir)
    own_tokenizer = tokenizer if has_tokenizer_files(adapter_dir) else None
    base_tokenizer = load_tokenizer(base_dir, require_fast=False) if has_tokenizer_files(base_dir) else None
    rows = model.get_input_embeddings().num_embeddings
    differences = adapter_base_differences(adapter_dir, base_dir, model.config, weights, own_tokenizer,
                                           base_tokenizer, rows)
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))  # training added tokens; the adapter carries their rows
    mismatch = f"adapter {adapter_dir} was not trained on base {base_dir}: {'; '.join(differences)}"
    return weights, mismatch if differences else None


def _refuse_or_warn(mismatch: str | None, force: bool) -> None:
    if mismatch and not force:
        raise AdapterMismatchError(f"{mismatch}. Give the base it was trained on, or pass --force to apply it anyway")
    if mismatch:
        print(f"warning: {mismatch}; applying it anyway (--force)", file=sys.stderr)


def merge_adapter_into(model, base_dir: str, adapter: str, tokenizer, force: bool = False):
    """`model` with `adapter` merged in (same logits as the PeftModel, plain modules), after checking that the
    adapter was trained on this base (`--force` turns a mismatch into a warning)."""
    adapter_dir = find_adapter_dir(adapter)
    weights, mismatch = checked_adapter_weights(model, base_dir, adapter_dir, tokenizer)
    peft_model = apply_adapter(model, adapter_dir, weights)  # saved tensors that fit nowhere: an error even forced
    _refuse_or_warn(mismatch, force)
    return peft_model.merge_and_unload()


def attach_adapters(model, base_dir: str, adapters: dict[str, str], tokenizers: dict, force: bool = False):
    """A PeftModel holding every adapter of `adapters` ({name: dir}) unmerged, each under its name, for a server
    that switches between them per batch (`set_adapter`; `disable_adapter()` gives the base)."""
    peft_model = model
    for name, adapter in adapters.items():
        adapter_dir = find_adapter_dir(adapter)
        weights, mismatch = checked_adapter_weights(model, base_dir, adapter_dir, tokenizers[name])
        peft_model = apply_adapter(peft_model, adapter_dir, weights, adapter_name=name)
        _refuse_or_warn(mismatch, force)
    return peft_model
