"""`torch_compile`: compile each decoder layer of the model in place with torch.compile (inductor).

Per layer, not the whole model: the chunked cross entropy hooks the decoder's output and calls the model with
`logits_to_keep`, and PEFT / FSDP2 / DeepSpeed wrap the model object; compiling the repeated blocks leaves every
module, hook and wrapper where it was (and compiles one block's code once for all layers). Sequence lengths change
from step to step: torch's default `dynamic=None` compiles the first shape static, and the first time a length
changes recompiles once with that dimension symbolic (automatic dynamic), which then serves every length. Fixed
lengths (pretrain blocks) keep the faster static kernels; variable ones cost one extra compile, never one per
step. (`dynamic=True` would compile once but make every dimension symbolic, fixed-length runs included.)
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def inductor_unavailable(device_type: str) -> str | None:
    """Why inductor cannot build kernels for `device_type` here, or None if it can. Cheap: it looks for the
    toolchain (a C++ compiler on CPU, Triton and a GPU of compute capability >= 7 on CUDA), compiles nothing."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is missing or the GPU is older than compute capability 7.0"
    if device_type == "cpu":
        from torch._inductor import cpp_builder, exc

        try:
            cpp_builder.get_cpp_compiler()  # the C++ compiler inductor itself would use (CXX, else g++)
        except exc.InvalidCxxCompiler:
            return "no C++ compiler found (install g++ or set CXX)"
        return None
    return f"inductor is not set up for device {device_type!r} here"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of repeated blocks (model.model.layers for Llama/Qwen2/Mistral, ...), found generically:
    the ModuleList directly under the decoder (PEFT and other wrappers are looked through)."""
    from mftcoder.loss.cross_entropy import unwrap_causal_lm

    lm = unwrap_causal_lm(model)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    if decoder is None:
        decoder = getattr(lm, lm.base_model_prefix, None)
    lists = [m for m in (decoder.children() if decoder is not None else ()) if isinstance(m, nn.ModuleList)]
    if len(lists) != 1:
        raise TypeError(f"cannot find the decoder layers of {type(lm).__name__} (expected one ModuleList in its "
                        f"decoder, found {len(lists)}); set torch_compile to false")
    return lists[0]


def compile_decoder_layers(model: nn.Module, device_type: str) -> bool:
    """Compiles every decoder layer of `model` in place (nn.Module.compile). Returns False, after one warning, and
    leaves the model as it was when inductor cannot build here."""
    why = inductor_unavailable(device_type)
    if why is not None:
        log.warning("torch_compile=true but %s: training uncompiled (the same results, slower)", why)
        return False
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()  # dynamic=None, see the module doc
    log.info("torch_compile: compiled %d decoder layers (%s); the first steps are slower while they compile",
             len(layers), type(layers[0]).__name__)
    return True


def is_compiled(layer: nn.Module) -> bool:
    """Whether nn.Module.compile was applied to `layer`."""
    return getattr(layer, "_compiled_call_impl", None) is not None
