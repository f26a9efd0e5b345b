"""Motion modules: temporal transformers with uni-directional self-attention (AnimateDiff-v1 layout).

Parameter names follow the official ``live2diff.ckpt``::

    motion_modules.M.temporal_transformer.{norm, proj_in, proj_out}
    ....transformer_blocks.0.attention_blocks.A.{to_q, to_k, to_v, to_out.0, pos_encoder.pe}
    ....transformer_blocks.0.{norms.A, ff.net.0.proj, ff.net.2, ff_norm}

Positional encodings are added *after* the projections (``q = W_q x + W_q pe``; the projections have no bias, so
this equals ``W_q (x + pe)``), which lets the KV cache store keys/values without them and re-assign positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from torch import Tensor, nn

from .attention_plan import AttentionPlan
from .fused_attention import fused_weight
from .kv_cache import KVCache, StreamTables


@dataclass(frozen=True)
class MotionModuleConfig:
    """Architecture of the motion modules (the trained Live2Diff values are the defaults)."""

    num_attention_heads: int = 8
    num_transformer_blocks: int = 1
    num_attention_blocks: int = 2
    max_positions: int = 24
    norm_num_groups: int = 32


@dataclass
class TemporalContext:
    """How temporal attention runs in one UNet forward.

    ``mode == "full"``: a non-cached pass over ``num_frames`` frames with ``plan``; if ``cache`` is given, the
    keys/values of every frame are stored in cache row ``row`` (the warm-up). ``mode == "stream"``: one frame per
    batch row, attention over the cache with ``tables``.
    """

    mode: str
    num_frames: int
    plan: AttentionPlan | None = None
    cache: KVCache | None = None
    row: int = 0
    tables: StreamTables | None = None


def sinusoidal_table(max_len: int, channels: int) -> Tensor:
    """Sinusoidal positional table ``[1, max_len, C]`` (sin on even, cos on odd channels)."""
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float64) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, max_len, channels, dtype=torch.float64)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe.float()


class PositionalEncoding(nn.Module):
    """Holds the persistent ``pe`` buffer ``[1, max_len, C]`` (it is part of the official checkpoint)."""

    def __init__(self, channels: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_len, channels), persistent=True)


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention over frames, with positional encodings added after projection."""

    def __init__(self, channels: int, heads: int, max_positions: int, layer_index: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.layer_index = layer_index
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(channels, max_positions)
        self.fuse_qkv = True  # inference only: with autograd on, the separate projections run

    @property
    def max_positions(self) -> int:
        return int(self.pos_encoder.pe.shape[1])

    def _projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k, v of ``x`` and the projected positional table ``[max_positions, 3C]`` (q|k|v)."""
        if self.fuse_qkv and not torch.is_grad_enabled():
            weight, _ = fused_weight(self)  # the projections have no bias
            q, k, v = F.linear(x, weight).chunk(3, dim=-1)
            return q, k, v, F.linear(self.pos_encoder.pe[0].to(x.dtype), weight)
        pe = self.pos_encoder.pe[0].to(x.dtype)
        pe_qkv = torch.cat([F.linear(pe, self.to_q.weight), F.linear(pe, self.to_k.weight),
                            F.linear(pe, self.to_v.weight)], dim=-1)
        return self.to_q(x), self.to_k(x), self.to_v(x), pe_qkv

    def _split(self, x: Tensor) -> Tensor:
        """``[..., L, C] -> [..., heads, L, d]``."""
        *lead, length, c = x.shape
        return x.reshape(*lead, length, self.heads, c // self.heads).transpose(-2, -3)

    def _merge(self, x: Tensor) -> Tensor:
        """``[..., heads, L, d] -> [..., L, C]``."""
        x = x.transpose(-2, -3)
        return x.reshape(*x.shape[:-2], -1)

    def forward(self, x: Tensor, ctx: TemporalContext) -> Tensor:
        """``x``: ``[B, hw, F, C]`` (already layer-normed); returns the attention output (before residual)."""
        q, k, v, pe = self._projections(x)
        q_pe, k_pe, v_pe = pe.chunk(3, dim=-1)
        if ctx.mode == "stream":
            out = self._stream(q, k, v, q_pe, k_pe, v_pe, ctx)
        else:
            if ctx.cache is not None:  # warm-up: store K/V of every frame before the positional encoding
                layer = ctx.cache.layers[self.layer_index]
                f = x.shape[2]
                layer[ctx.row, 0, :, :f] = k[0]
                layer[ctx.row, 1, :, :f] = v[0]
            out = self._full(q, k, v, q_pe, k_pe, v_pe, ctx.plan)
        return self.to_out[1](self.to_out[0](out))

    def _full(self, q: Tensor, k: Tensor, v: Tensor, q_pe: Tensor, k_pe: Tensor, v_pe: Tensor,
              plan: AttentionPlan) -> Tensor:
        q = q + q_pe[plan.query_pos]
        if plan.shared_positions:
            k = k + k_pe[plan.key_pos]
            v = v + v_pe[plan.key_pos]
            out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v), attn_mask=plan.mask)
            return self._merge(out)
        # query-dependent key positions: keys/values per (query, key) pair
        kq = k[:, :, None] + k_pe[plan.key_pos]  # [B, hw, Fq, Fk, C]
        vq = v[:, :, None] + v_pe[plan.key_pos]
        b, n, fq, c = q.shape
        d = c // self.heads
        qh = q.reshape(b, n, fq, self.heads, d)
        kh = kq.reshape(b, n, fq, kq.shape[3], self.heads, d)
        vh = vq.reshape(b, n, fq, vq.shape[3], self.heads, d)
        logits = torch.einsum("bnqhd,bnqkhd->bnhqk", qh, kh) / math.sqrt(d)
        logits = logits.masked_fill(~plan.mask, float("-inf"))
        attn = logits.softmax(dim=-1)
        out = torch.einsum("bnhqk,bnqkhd->bnqhd", attn, vh)
        return out.reshape(b, n, fq, c)

    def _stream(self, q: Tensor, k: Tensor, v: Tensor, q_pe: Tensor, k_pe: Tensor, v_pe: Tensor,
                ctx: TemporalContext) -> Tensor:
        tables = ctx.tables
        layer = ctx.cache.layers[self.layer_index]  # [T, 2, hw, W, C]
        rows, slots = tables.rows, tables.write_slot
        # static shapes: every row writes its slot; rows without a real frame write back what was there
        keep = ~tables.active[:, None, None]
        layer[rows, 0, :, slots] = torch.where(keep, layer[rows, 0, :, slots], k[:, :, 0])
        layer[rows, 1, :, slots] = torch.where(keep, layer[rows, 1, :, slots], v[:, :, 0])
        keys = layer[:, 0] + k_pe[tables.key_pos][:, None]  # [T, hw, W, C]
        values = layer[:, 1] + v_pe[tables.key_pos][:, None]
        q = q + q_pe[tables.query_pos][:, None, None]  # [T, hw, 1, C]
        mask = tables.mask[:, None, None, None, :]  # [T, 1, 1, 1(query), W]
        out = F.scaled_dot_product_attention(self._split(q), self._split(keys), self._split(values), attn_mask=mask)
        return self._merge(out)


class TemporalTransformerBlock(nn.Module):
    """Pre-norm self-attention blocks (``attention_blocks``/``norms``) then a GEGLU feed-forward."""

    def __init__(self, channels: int, cfg: MotionModuleConfig, first_layer_index: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalSelfAttention(channels, cfg.num_attention_heads, cfg.max_positions, first_layer_index + a)
            for a in range(cfg.num_attention_blocks)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(cfg.num_attention_blocks))
        self.ff = FeedForward(channels, dropout=0.0, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, ctx: TemporalContext) -> Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), ctx) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """GroupNorm (per frame) -> proj_in -> blocks over frames at every pixel -> proj_out -> residual."""

    def __init__(self, channels: int, cfg: MotionModuleConfig, first_layer_index: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        per_block = cfg.num_attention_blocks
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, cfg, first_layer_index + i * per_block)
            for i in range(cfg.num_transformer_blocks)
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, hidden: Tensor, ctx: TemporalContext) -> Tensor:
        """``hidden``: ``[(B F), C, h, w]`` (frame-major within each batch item)."""
        bf, c, h, w = hidden.shape
        f = ctx.num_frames
        b = bf // f
        x = self.norm(hidden).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        x = self.proj_in(x)
        x = x.reshape(b, f, h * w, c).transpose(1, 2)  # [B, hw, F, C]
        for block in self.transformer_blocks:
            x = block(x, ctx)
        x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return x + hidden


class MotionModule(nn.Module):
    """One motion module (``temporal_transformer``), inserted after a spatial layer of a UNet block."""

    def __init__(self, channels: int, cfg: MotionModuleConfig, first_layer_index: int) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg, first_layer_index)

    @property
    def attention_layers(self) -> list[TemporalSelfAttention]:
        return [a for blk in self.temporal_transformer.transformer_blocks for a in blk.attention_blocks]

    def forward(self, hidden: Tensor, ctx: TemporalContext) -> Tensor:
        return self.temporal_transformer(hidden, ctx)
