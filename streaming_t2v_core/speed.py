"""Speed options of the StreamingT2V model: fused q/k/v self-attention projections and ``torch.compile``.

Classifier-free guidance is already one batch (unconditional + conditional rows) in the pipeline, and attention runs
through PyTorch SDPA (flash / memory-efficient kernels on a GPU in float16/bfloat16). :func:`optimize` adds:

* ``fuse_qkv``: every self-attention that uses diffusers' default processor gets one ``to_qkv`` projection
  (diffusers ``Attention.fuse_projections`` + ``FusedAttnProcessor2_0``); the CAM/APM cross-attention processors are
  left alone. The fused weights are copies: call :func:`optimize` after loading (and after any weight change); the
  extra ``to_qkv`` parameters also appear in ``state_dict()``, so save checkpoints from an un-optimised model.
* ``compile``: ``nn.Module.compile`` (in place, state-dict names unchanged) of the base UNet and the CAM encoder.
"""
from __future__ import annotations

from typing import Any

from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0
from torch import nn

__all__ = ["fuse_self_attention", "optimize"]


def fuse_self_attention(model: nn.Module) -> int:
    """Fuse the q/k/v projections of every default-processor self-attention in ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if (isinstance(module, Attention) and not module.is_cross_attention
                and type(module.processor) in (AttnProcessor, AttnProcessor2_0)):
            module.fuse_projections()
            module.set_processor(FusedAttnProcessor2_0())
            count += 1
    return count


def optimize(model: nn.Module, *, fuse_qkv: bool = True, compile: bool = False,
             compile_options: dict[str, Any] | None = None) -> nn.Module:
    """Apply the speed options to a loaded :class:`~streaming_t2v_core.model.StreamingT2VModel` (in place)."""
    if fuse_qkv:
        fuse_self_attention(model)
    if compile:
        options = {"dynamic": False, **(compile_options or {})}  # inductor's default mode: no autotuning
        for part in (getattr(model, "base_model", None), getattr(model, "unet", None)):
            if part is not None:
                part.compile(**options)
    return model
