"""Acceleration of the StreamingT2V model: fused q/k/v self-attention projections and ``torch.compile``.

``acceleration`` (the same word as Live2Diff's ``live2diff_core.acceleration``; the values differ because the
techniques do) is one of :data:`ACCELERATIONS`:

* ``"none"``: the model as loaded;
* ``"fused"`` (the default): every self-attention that uses diffusers' default processor runs its three q/k/v
  projections as one matrix product (:class:`FusedSelfAttnProcessor`); the CAM/APM cross-attention processors are
  left alone;
* ``"compile"``: fused + ``nn.Module.compile`` (in place, state-dict names unchanged) of the base UNet and the CAM
  encoder.

Classifier-free guidance is already one batch (unconditional + conditional rows) in the pipeline, and attention runs
through PyTorch SDPA (flash / memory-efficient kernels on a GPU in float16/bfloat16).

The fused ``[3C, C]`` weight is derived from ``to_q``/``to_k``/``to_v``, never a second copy of the truth (the design
of ``live2diff_core.fused_attention``; the two cores are separate packages):

* it is a **non-persistent buffer** of the attention module, so ``state_dict()`` holds exactly the unfused names,
  any plain state dict loads (strict) into an optimized model, and the buffer moves with the module;
* it is **rebuilt** whenever a projection's storage, dtype, device or in-place version counter changes (a device
  move, ``load_state_dict``, ``with torch.no_grad(): attn.to_q.weight.add_(d)``); under ``torch.compile`` it is
  concatenated inside the compiled graph on every call, so it is always current there;
* tensors created under ``torch.inference_mode`` (ComfyUI runs nodes in it) have no version counter: after editing
  such weights in place (same storage) call :func:`mark_weights_changed`. Replacing them (``load_state_dict(...,
  assign=True)``, ComfyUI's weight patches, offloading) is found without it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import Tensor, nn

__all__ = ["ACCELERATIONS", "DEFAULT_ACCELERATION", "FusedSelfAttnProcessor", "fuse_self_attention", "fused_qkv",
           "mark_weights_changed", "optimize"]

ACCELERATIONS = ("none", "fused", "compile")
DEFAULT_ACCELERATION = "fused"
_PROJECTIONS = ("to_q", "to_k", "to_v")


def tensor_version(t: Tensor) -> int:
    """The in-place version counter of ``t`` (0 for inference-mode tensors, which have none)."""
    return 0 if t.is_inference() else t._version


def _stack(layers: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    weight = torch.cat([m.weight.detach() for m in layers])
    bias = None
    if any(m.bias is not None for m in layers):
        bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                          for m in layers])
    return weight, bias


def fused_qkv(attn: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The stacked ``[3C, C]`` weight (and bias, if any) of ``attn``'s q/k/v projections: cached on ``attn`` as the
    non-persistent buffers ``fused_qkv_weight``/``fused_qkv_bias`` and rebuilt when a projection changed."""
    layers = [getattr(attn, n) for n in _PROJECTIONS]
    if torch.compiler.is_compiling():  # part of the compiled graph: read the live weights on every call
        return _stack(layers)
    key = tuple((m.weight.data_ptr(), tensor_version(m.weight), m.weight.dtype, m.weight.device,
                 None if m.bias is None else (m.bias.data_ptr(), tensor_version(m.bias))) for m in layers)
    if attn.__dict__.get("_fused_key") != key or attn._buffers.get("fused_qkv_weight") is None:
        with torch.no_grad():
            weight, bias = _stack(layers)
        if "fused_qkv_weight" not in attn._buffers:
            attn.register_buffer("fused_qkv_weight", None, persistent=False)
            attn.register_buffer("fused_qkv_bias", None, persistent=False)
        attn.fused_qkv_weight, attn.fused_qkv_bias = weight, bias
        attn.__dict__["_fused_key"] = key
    return attn.fused_qkv_weight, attn.fused_qkv_bias


class FusedSelfAttnProcessor:
    """diffusers ``AttnProcessor2_0`` for a self-attention with one fused q/k/v matrix product. Anything it does not
    cover (cross-attention, masks, norms, 4-D input, autograd) runs through ``AttnProcessor2_0`` itself, so both
    paths give the same result."""

    def __init__(self) -> None:
        self._fallback = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        plain = (encoder_hidden_states is None and attention_mask is None and hidden_states.dim() == 3
                 and attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection
                 and attn.rescale_output_factor == 1.0 and getattr(attn, "norm_q", None) is None
                 and getattr(attn, "norm_k", None) is None and not torch.is_grad_enabled())
        if not plain:
            return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        weight, bias = fused_qkv(attn)
        b, n, _ = hidden_states.shape
        q, k, v = F.linear(hidden_states, weight, bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, attn.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)  # as AttnProcessor2_0
        out = out.transpose(1, 2).reshape(b, n, -1).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def fuse_self_attention(model: nn.Module) -> int:
    """Give every default-processor self-attention in ``model`` the fused processor; returns how many changed."""
    count = 0
    for module in model.modules():
        if (isinstance(module, Attention) and not module.is_cross_attention
                and type(module.processor) in (AttnProcessor, AttnProcessor2_0)
                and len({(getattr(module, n).in_features, getattr(module, n).out_features)
                         for n in _PROJECTIONS}) == 1):  # equal q/k/v sizes (no grouped k/v heads)
            module.set_processor(FusedSelfAttnProcessor())
            count += 1
    return count


def mark_weights_changed(model: nn.Module) -> None:
    """Drop every cached fused weight in ``model`` (rebuilt at the next call). Needed only after an in-place edit of
    inference-mode weights, whose version counter does not exist; every other change is found without it."""
    for module in model.modules():
        if module._buffers.get("fused_qkv_weight") is not None:
            module.fused_qkv_weight = module.fused_qkv_bias = None
            module.__dict__.pop("_fused_key", None)


def optimize(model: nn.Module, acceleration: str = DEFAULT_ACCELERATION, *,
             compile_options: dict[str, Any] | None = None) -> nn.Module:
    """Apply ``acceleration`` (one of :data:`ACCELERATIONS`) to a loaded
    :class:`~streaming_t2v_core.model.StreamingT2VModel`, in place; returns the model. Call it after loading."""
    if acceleration not in ACCELERATIONS:
        raise ValueError(f"acceleration {acceleration!r} is not available; pick one of {', '.join(ACCELERATIONS)}")
    if acceleration == "none":
        return model
    fuse_self_attention(model)
    if acceleration == "compile":
        options = {"dynamic": False, **(compile_options or {})}  # inductor's default mode: no autotuning
        for part in (getattr(model, "base_model", None), getattr(model, "unet", None)):
            if part is not None:
                part.compile(**options)
    return model
