"""Conditional Attention Module (CAM) of StreamingT2V: the conditioning encoder and the skip-connection mergers.

**CAM encoder** (:class:`CAMEncoder`, checkpoint prefix ``unet.``): a ControlNet-like copy of the ModelScope UNet3D's
``conv_in``, ``time_proj``/``time_embedding``, ``transformer_in``, ``down_blocks`` and ``mid_block``, plus a frame
encoder ``controlnet_cond_embedding`` (:class:`FrameEncoder`) that maps the previous chunk's last 8 frames (pixels in
[-1,1]) to ``block_out_channels[0]`` feature maps at latent resolution. It runs over the first 8 frames of the noisy
16-frame latent with the 77 text tokens only; the frame features are *added* to the ``transformer_in`` output
(frame-aligned, 8 with 8). It returns the 12 skip tensors of its down path (``conv_in``/``transformer_in`` output,
then every resnet and downsampler output) and the mid-block output, each ``[B*8, C, h, w]``; the official
``controlnet_down_blocks`` are identities (``zero_conv_mode: Identity``) and have no weights.

**Merger** (:class:`CAMMerger`, the official ``ConditionalModel(C, "cross_attention")``): per-pixel temporal
cross-attention of a 16-frame UNet skip tensor (queries) to the 8 raw CAM frames (keys/values)::

    n   = GroupNorm(32, C, eps=1e-6)(x as [B, C, 16, h, w])
    q   = proj_in(n as [(B h w), 16, C])
    a   = Attention(heads=C//64, dim_head=64, no qkv bias)(q, context=cam as [(B h w), 8, C])
    out = x + proj_out(a)            # proj_out zero-initialised

Parameter names follow the official ``temporal_transformer.{norm,proj_in,attention.{to_q,to_k,to_v,to_out.0},
proj_out}``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

from .apm import use_compact_context_processor
from .unet3d import UNetPartsMixin

COND_CHANNELS = (32, 96, 256, 512)
CAM_FRAMES = 8
MERGER_HEAD_DIM = 64

_CAM_PARTS = ("conv_in", "time_proj", "time_embedding", "transformer_in", "down_blocks", "mid_block")


class FrameEncoder(nn.Module):
    """The official ``ControlNetConditioningEmbedding`` as configured in StreamingModelscope (no normalisation):

    ``conv_in`` 3->32 (3x3), SiLU; for each (ci, co) in (32->96, 96->256, 256->512): ``Conv(ci,ci,3)``, SiLU,
    ``Conv(ci,co,3,stride 2)``, SiLU; ``conv_out`` 512->out (3x3, zero-initialised). Downsamples by 8.
    """

    def __init__(self, out_channels: int, in_channels: int = 3, channels: Sequence[int] = COND_CHANNELS) -> None:
        super().__init__()
        channels = tuple(channels)
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for ci, co in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(ci, ci, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(ci, co, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.downscale = 2 ** (len(channels) - 1)

    def forward(self, frames: Tensor) -> Tensor:
        x = F.silu(self.conv_in(frames))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class PixelTemporalCrossAttention(nn.Module):
    """Per-pixel temporal cross-attention from a skip tensor's frames to the CAM frames (official ``CrossAttention``
    of ``conditioning.py``)."""

    def __init__(self, channels: int, head_dim: int = MERGER_HEAD_DIM, norm_num_groups: int = 32) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"merger channels {channels} must be a multiple of the head size {head_dim}")
        self.attention = Attention(query_dim=channels, cross_attention_dim=channels, heads=channels // head_dim,
                                   dim_head=head_dim, bias=False, upcast_attention=False)
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, sample: Tensor, condition: Tensor, num_frames: int) -> Tensor:
        """``sample [B*F, C, h, w]`` (F = ``num_frames``), ``condition [B*Fc, C, h, w]`` -> ``[B*F, C, h, w]``."""
        bf, c, h, w = sample.shape
        if bf % num_frames:
            raise ValueError(f"merger input batch {bf} is not a multiple of {num_frames} frames")
        b = bf // num_frames
        if condition.dim() != 4 or condition.shape[1:] != sample.shape[1:] or condition.shape[0] % b:
            raise ValueError(f"CAM residual {tuple(condition.shape)} does not fit the UNet skip {tuple(sample.shape)}"
                             f" (batch {b})")
        fc = condition.shape[0] // b
        x = sample.view(b, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # B C F h w
        x = self.norm(x)
        x = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, num_frames, c)
        x = self.proj_in(x)
        context = condition.view(b, fc, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, fc, c)
        x = self.attention(x, encoder_hidden_states=context)
        x = self.proj_out(x)
        x = x.view(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return sample + x


class CAMMerger(nn.Module):
    """Official ``ConditionalModel(C, "cross_attention")``: holds the attention as ``temporal_transformer``."""

    def __init__(self, channels: int, head_dim: int = MERGER_HEAD_DIM) -> None:
        super().__init__()
        self.temporal_transformer = PixelTemporalCrossAttention(channels, head_dim)

    def forward(self, sample: Tensor, condition: Tensor, num_frames: int) -> Tensor:
        return self.temporal_transformer(sample, condition, num_frames)


class CAMEncoder(UNetPartsMixin, nn.Module):
    """The CAM encoder: the UNet3D's input, down and mid parts plus the frame encoder (see the module doc).

    Built from a diffusers ``UNet3DConditionModel`` whose modules it takes over (its up path is not used);
    ``num_frames`` is how many leading latent frames it sees (8).
    """

    def __init__(self, unet3d: nn.Module, *, cond_channels: Sequence[int] = COND_CHANNELS,
                 num_frames: int = CAM_FRAMES, conditioning_channels: int = 3) -> None:
        super().__init__()
        cfg = dict(unet3d.config)
        for name in _CAM_PARTS:
            setattr(self, name, getattr(unet3d, name))
        self.config = cfg
        self.num_frames = num_frames
        self.conditioning_channels = conditioning_channels
        self.controlnet_cond_embedding = FrameEncoder(cfg["block_out_channels"][0], conditioning_channels,
                                                      cond_channels)
        use_compact_context_processor(self.named_blocks())

    def forward(self, latents: Tensor, timestep: Tensor | float | int, text_embeds: Tensor,
                cond_frames: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """``latents [B,4,F,h,w]`` (the first ``num_frames`` are used), ``text_embeds [B,T,D]`` (text tokens only),
        ``cond_frames [B,num_frames,3,8h,8w]`` in [-1,1] -> (down residuals, mid residual), each
        ``[B*num_frames, C, h', w']``."""
        if latents.dim() != 5:
            raise ValueError(f"CAM latents must be [B,C,F,h,w], got {tuple(latents.shape)}")
        b, c, f_all, h, w = latents.shape
        f = self.num_frames
        if f_all < f:
            raise ValueError(f"the CAM needs at least {f} latent frames, got {f_all}")
        scale = self.controlnet_cond_embedding.downscale
        expected = (b, f, self.conditioning_channels, h * scale, w * scale)
        if cond_frames.dim() != 5 or tuple(cond_frames.shape) != expected:
            raise ValueError(f"cond_frames must be [B,{f},{self.conditioning_channels},H,W] = {list(expected)} "
                             f"for latents {list(latents.shape)} (pixels = 8 x latent size), "
                             f"got {list(cond_frames.shape)}")
        if text_embeds.dim() != 3 or text_embeds.shape[0] != b:
            raise ValueError(f"CAM text_embeds must be [B={b},T,D], got {tuple(text_embeds.shape)}")
        dtype, device = self.dtype, self.device
        emb = self.embed_time(timestep, b, f)
        context = text_embeds.to(device=device, dtype=dtype)  # compact: one row per sample

        x = latents[:, :, :f].to(device=device, dtype=dtype)
        x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = cond_frames.to(device=device, dtype=dtype).reshape(b * f, *cond_frames.shape[2:])
        x, skips = self.down_path(x, emb, context, f, features=self.controlnet_cond_embedding(frames))
        x = self.mid_block(x, emb, encoder_hidden_states=context, num_frames=f)
        return tuple(skips), x
