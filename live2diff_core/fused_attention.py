"""Fused q/k/v projection for the spatial self-attentions of the video UNet (a diffusers attention processor).

The three projections of a self-attention run as one matrix product with a ``[3C, C]`` weight that is derived
lazily from ``to_q``/``to_k``/``to_v`` and kept as a non-persistent buffer of the attention module: it moves with
the module (ComfyUI offloading), stays out of the state dict (checkpoints keep the official names) and is rebuilt
when a weight changes (a LoRA merge bumps the tensor version, a reload changes the storage). Anything this
processor does not cover (cross-attention, masks, autograd) goes to diffusers' ``AttnProcessor2_0``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn

from .acceleration import tensor_version


def fused_weight(attn: nn.Module, names: tuple[str, ...] = ("to_q", "to_k", "to_v")) -> tuple[Tensor, Tensor | None]:
    """The stacked weight (and bias, if any) of ``attn``'s projections ``names``, cached on ``attn``."""
    if torch.compiler.is_compiling() and getattr(attn, "fused_qkv_weight", None) is not None:
        return attn.fused_qkv_weight, attn.fused_qkv_bias  # refreshed eagerly before tracing (refresh_fused)
    layers = [getattr(attn, n) for n in names]
    key = tuple((m.weight.data_ptr(), tensor_version(m.weight), m.weight.dtype, m.weight.device,
                 None if m.bias is None else (m.bias.data_ptr(), tensor_version(m.bias))) for m in layers)
    if getattr(attn, "_fused_key", None) != key or getattr(attn, "fused_qkv_weight", None) is None:
        with torch.no_grad():
            weight = torch.cat([m.weight.detach() for m in layers])
            bias = None
            if any(m.bias is not None for m in layers):
                bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                                  for m in layers])
        if "fused_qkv_weight" not in attn._buffers:
            attn.register_buffer("fused_qkv_weight", None, persistent=False)
            attn.register_buffer("fused_qkv_bias", None, persistent=False)
        attn.fused_qkv_weight, attn.fused_qkv_bias = weight, bias
        attn._fused_key = key
    return attn.fused_qkv_weight, attn.fused_qkv_bias


class FusedSelfAttnProcessor:
    """SDPA self-attention with one fused q/k/v matrix product (falls back to ``AttnProcessor2_0`` otherwise)."""

    def __init__(self) -> None:
        self._fallback = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        plain = (encoder_hidden_states is None and attention_mask is None and temb is None
                 and hidden_states.dim() == 3 and attn.spatial_norm is None and attn.group_norm is None
                 and not attn.residual_connection and attn.rescale_output_factor == 1.0
                 and getattr(attn, "norm_q", None) is None and not torch.is_grad_enabled())
        if not plain:
            return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        weight, bias = fused_weight(attn)
        b, n, _ = hidden_states.shape
        q, k, v = F.linear(hidden_states, weight, bias).chunk(3, dim=-1)
        heads = attn.heads
        q, k, v = (t.reshape(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, n, -1).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def refresh_fused(model: nn.Module) -> None:
    """Bring every fused weight in ``model`` up to date now (before a compile trace or a graph capture)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("processor"), FusedSelfAttnProcessor) or getattr(module, "fuse_qkv", False):
            fused_weight(module)


def install_fused_self_attention(model: nn.Module) -> int:
    """Give every self-attention (``attn1``) of diffusers transformer blocks in ``model`` the fused processor;
    returns how many were changed."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, Attention) and name.endswith("attn1") and not module.is_cross_attention:
            module.set_processor(FusedSelfAttnProcessor())
            count += 1
    return count
