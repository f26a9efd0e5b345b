"""Appearance Preservation Module (APM) of StreamingT2V: the image-token resampler and the per-layer token mixing.

The anchor frame's projected CLIP image embedding (OpenCLIP ViT-H/14, 1024-d) is expanded by
:class:`ImageContextResampler` (``Linear(1024,1280) -> SiLU -> Linear(1280, 16*1024)``) into 16 tokens that are
appended to the 77 text tokens. Every *spatial* cross-attention of the base UNet (``attn2`` of the
``Transformer2DModel`` blocks, 16 layers in the ModelScope UNet) then mixes the 93 tokens back into 77 before its
key/value projections::

    ehs' = ehs[:, :77] + LayerNorm(1024)(Conv1d(93 -> 77, k=3, padding="same")(ehs)) * SiLU(alpha)

(the tokens are the Conv1d's *channels*, the 1024 features its length axis). ``alpha`` is a scalar per layer,
initialised to 0 so a fresh APM is an exact no-op. When only the 77 text tokens are given (APM off) a layer uses
them unchanged.

The mixing parameters are attached directly to the diffusers ``Attention`` objects as ``conv``, ``conv_ln`` and
``alpha`` so that the state-dict names equal the official checkpoint's
(``...transformer_blocks.0.attn2.{conv,conv_ln,alpha}``); the mixing itself runs in :class:`APMAttnProcessor`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TEXT_TOKENS = 77
IMAGE_TOKENS = 16
IMAGE_EMBED_DIM = 1024
RESAMPLER_INNER_DIM = 1280


class ImageContextResampler(nn.Module):
    """The official ``ImgEmbContextResampler`` (checkpoint prefix ``resampler.``).

    ``forward(image_embeds)`` takes ``[B, D]`` (one anchor per sample) or ``[B, n, D]`` (several anchors, averaged
    as the official code does) and returns ``[B, num_tokens, cross_attention_dim]``.
    """

    def __init__(self, embed_dim: int = IMAGE_EMBED_DIM, inner_dim: int = RESAMPLER_INNER_DIM,
                 cross_attention_dim: int = 1024, num_tokens: int = IMAGE_TOKENS) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.context_embedding = nn.Sequential(
            nn.Linear(embed_dim, inner_dim),
            nn.SiLU(),
            nn.Linear(inner_dim, cross_attention_dim * num_tokens),
        )

    def forward(self, image_embeds: Tensor) -> Tensor:
        x = image_embeds
        if x.dim() == 2:
            x = x[:, None]
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"image_embeds must be [B,{self.embed_dim}] or [B,n,{self.embed_dim}], "
                             f"got {tuple(image_embeds.shape)}")
        x = x.mean(dim=1, keepdim=True)
        x = self.context_embedding(x)
        return x.view(x.shape[0], self.num_tokens, self.cross_attention_dim)


# ----------------------------------------------------------------------------------------------------------------
# attention processor
# ----------------------------------------------------------------------------------------------------------------
def has_apm(attn: nn.Module) -> bool:
    """Whether ``attn`` carries APM mixing parameters."""
    return isinstance(getattr(attn, "alpha", None), nn.Parameter) and isinstance(getattr(attn, "conv", None), nn.Conv1d)


def apm_context(attn: nn.Module, context: Tensor) -> Tensor:
    """The key/value context of one cross-attention layer: ``context`` unchanged unless the layer has APM
    parameters and ``context`` holds text + image tokens, in which case the tokens are mixed into the text slots."""
    if not has_apm(attn):
        return context
    n_text, n_all = attn.conv.out_channels, attn.conv.in_channels
    tokens = context.shape[1]
    if tokens == n_text:
        return context
    if tokens != n_all:
        raise ValueError(f"an APM cross-attention takes {n_text} text tokens, or {n_text} text + {n_all - n_text} "
                         f"image tokens; got {tokens}")
    mixed = attn.conv_ln(attn.conv(context))
    return context[:, :n_text] + mixed * F.silu(attn.alpha)


class APMAttnProcessor:
    """Scaled-dot-product attention for the spatial cross-attention layers, with APM mixing where the layer has it.

    Besides the usual per-row context it accepts a *compact* context: ``encoder_hidden_states`` of batch ``B``
    while the query batch is ``B*F`` (frames flattened frame-major per sample, as in the UNet3D). The mixing and the
    key/value projections then run once per sample instead of once per frame; the result is the same as with a
    context repeated per frame (the official code repeats text and image tokens identically for every frame).
    """

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        if attention_mask is not None:
            raise NotImplementedError("APMAttnProcessor does not support attention masks")
        if hidden_states.dim() != 3:
            raise ValueError(f"APMAttnProcessor expects [N, L, C] hidden states, got {tuple(hidden_states.shape)}")
        n = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else apm_context(attn, encoder_hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        if key.shape[0] != n:
            if key.shape[0] == 0 or n % key.shape[0]:
                raise ValueError(f"context batch {key.shape[0]} does not divide the query batch {n}")
            repeat = n // key.shape[0]
            key = key.repeat_interleave(repeat, dim=0)
            value = value.repeat_interleave(repeat, dim=0)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(n, -1, heads, head_dim).transpose(1, 2)
        key = key.view(n, -1, heads, head_dim).transpose(1, 2)
        value = value.view(n, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False, scale=attn.scale)
        out = out.transpose(1, 2).reshape(n, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out


def _check_plain_attention(attn: nn.Module, where: str) -> None:
    problems = [name for name in ("norm_cross", "group_norm", "spatial_norm", "norm_q", "norm_k")
                if getattr(attn, name, None) is not None]
    if getattr(attn, "residual_connection", False):
        problems.append("residual_connection")
    if getattr(attn, "rescale_output_factor", 1.0) != 1.0:
        problems.append("rescale_output_factor")
    if getattr(attn, "added_kv_proj_dim", None) is not None:
        problems.append("added_kv_proj_dim")
    if problems:
        raise ValueError(f"{where}: unsupported attention features for the StreamingT2V processor: {problems}")


def spatial_cross_attentions(blocks: Iterable[nn.Module]) -> Iterator[tuple[str, nn.Module]]:
    """``(name, attn2)`` of every spatial transformer block (``attentions.*.transformer_blocks.*.attn2``) in
    ``blocks`` (the UNet's down blocks, mid block and up blocks, in that order)."""
    for prefix, block in blocks:
        for i, t2d in enumerate(getattr(block, "attentions", None) or []):
            for j, tb in enumerate(t2d.transformer_blocks):
                attn = getattr(tb, "attn2", None)
                if attn is not None:
                    yield f"{prefix}.attentions.{i}.transformer_blocks.{j}.attn2", attn


def use_compact_context_processor(blocks: Iterable[tuple[str, nn.Module]]) -> int:
    """Install :class:`APMAttnProcessor` on every spatial cross-attention of ``blocks``; returns how many."""
    count = 0
    for name, attn in spatial_cross_attentions(blocks):
        _check_plain_attention(attn, name)
        attn.set_processor(APMAttnProcessor())
        count += 1
    return count


def attach_apm(attn: nn.Module, *, text_tokens: int = TEXT_TOKENS, image_tokens: int = IMAGE_TOKENS,
               context_dim: int | None = None) -> None:
    """Give one diffusers cross-attention the APM parameters (``conv``, ``conv_ln``, ``alpha`` = 0) and the
    :class:`APMAttnProcessor`."""
    context_dim = context_dim or attn.to_k.in_features
    like = dict(device=attn.to_k.weight.device, dtype=attn.to_k.weight.dtype)
    attn.conv = nn.Conv1d(text_tokens + image_tokens, text_tokens, kernel_size=3, padding="same", **like)
    attn.conv_ln = nn.LayerNorm(context_dim, **like)
    attn.alpha = nn.Parameter(torch.zeros((), **like))
    attn.set_processor(APMAttnProcessor())


def attach_apm_layers(blocks: Iterable[tuple[str, nn.Module]], *, text_tokens: int = TEXT_TOKENS,
                      image_tokens: int = IMAGE_TOKENS) -> list[str]:
    """Attach APM mixing to every spatial cross-attention of ``blocks``; returns their names."""
    names = []
    for name, attn in spatial_cross_attentions(blocks):
        _check_plain_attention(attn, name)
        attach_apm(attn, text_tokens=text_tokens, image_tokens=image_tokens)
        names.append(name)
    return names
