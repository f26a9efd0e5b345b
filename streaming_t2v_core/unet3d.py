"""The walk of a diffusers ``UNet3DConditionModel``'s parts, shared by the base UNet (:mod:`.model`) and the CAM
encoder (:mod:`.cam`): the timestep embedding and the input + down path, each written once, as in diffusers'
``UNet3DConditionModel.forward`` (tests compare both callers with it)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def embed_timesteps(time_proj: nn.Module, time_embedding: nn.Module, timestep: Tensor | float | int, batch: int,
                    dtype: torch.dtype, device: torch.device, frames: int = 1) -> Tensor:
    """``time_embedding(time_proj(t))`` for a scalar, ``[1]`` or ``[batch]`` timestep -> ``[batch * frames, D]``
    (each sample's row repeated for its ``frames`` frames, frame-major within the sample)."""
    if torch.is_tensor(timestep):
        t = timestep.to(device)
    else:
        if isinstance(timestep, float):
            tdtype = torch.float32 if device.type == "mps" else torch.float64
        else:
            tdtype = torch.int32 if device.type == "mps" else torch.int64
        t = torch.tensor([timestep], dtype=tdtype, device=device)
    if t.dim() == 0:
        t = t[None]
    if t.dim() != 1:
        raise ValueError(f"timestep must be a scalar or [B], got shape {tuple(t.shape)}")
    if t.shape[0] == 1 and batch != 1:
        t = t.expand(batch)
    elif t.shape[0] != batch:
        raise ValueError(f"timestep has {t.shape[0]} entries for a batch of {batch}")
    emb = time_embedding(time_proj(t).to(dtype=dtype))
    return emb.repeat_interleave(frames, dim=0) if frames != 1 else emb


def skip_channels(conv_in: nn.Conv2d, down_blocks: Sequence[nn.Module]) -> list[int]:
    """Channels of the UNet3D's long skip tensors: conv_in output, then each down block's resnets and
    downsampler."""
    chans = [conv_in.out_channels]
    for block in down_blocks:
        chans += [r.out_channels for r in block.resnets]
        for down in block.downsamplers or []:
            chans.append(down.out_channels)
    return chans


class UNetPartsMixin:
    """A module that holds a UNet3D's ``conv_in``, ``time_proj``/``time_embedding``, ``transformer_in``,
    ``down_blocks`` and ``mid_block`` (taken over from a diffusers ``UNet3DConditionModel``): its dtype/device, skip
    structure, timestep embedding and down path."""

    conv_in: nn.Conv2d
    time_proj: nn.Module
    time_embedding: nn.Module
    transformer_in: nn.Module
    down_blocks: nn.ModuleList
    mid_block: nn.Module

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @property
    def skip_channels(self) -> list[int]:
        """Channels of the down residuals / long skips, in order."""
        return skip_channels(self.conv_in, self.down_blocks)

    def named_blocks(self) -> list[tuple[str, nn.Module]]:
        """``("down_blocks.{i}", block)`` ..., ``("mid_block", block)`` (state-dict prefixes)."""
        return [(f"down_blocks.{i}", b) for i, b in enumerate(self.down_blocks)] + [("mid_block", self.mid_block)]

    def embed_time(self, timestep: Tensor | float | int, batch: int, frames: int) -> Tensor:
        """The timestep embedding ``[batch * frames, D]`` in the module's dtype (see :func:`embed_timesteps`)."""
        return embed_timesteps(self.time_proj, self.time_embedding, timestep, batch, self.dtype, self.device,
                               frames)

    def down_path(self, sample: Tensor, emb: Tensor, context: Tensor, frames: int,
                  features: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """``conv_in``, ``transformer_in`` (plus ``features``, the CAM's frame encoding, when given), then every
        down block, for ``sample [B*F, C, h, w]`` (frame-major per sample, F = ``frames``). Returns the last down
        output and the long-skip tensors (the ``transformer_in`` output, then every resnet and downsampler output),
        as diffusers' ``UNet3DConditionModel`` computes them."""
        x = self.conv_in(sample)
        x = self.transformer_in(x, num_frames=frames, return_dict=False)[0]
        if features is not None:
            x = x + features
        skips = [x]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=context, num_frames=frames)
            else:
                x, res = block(hidden_states=x, temb=emb, num_frames=frames)
            skips.extend(res)
        return x, skips
