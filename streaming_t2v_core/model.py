"""The StreamingT2V denoiser: the ModelScope UNet3D extended with CAM mergers and APM, the CAM encoder, the resampler.

:class:`StreamingT2VModel` holds three submodules whose state-dict names equal the official checkpoint's prefixes:

* ``base_model`` (:class:`StreamingUNet3D`): the diffusers ``UNet3DConditionModel`` walked block by block, with a
  :class:`~.cam.CAMMerger` on every long skip connection (``cross_attention_merger_down_blocks.{i}``) and on the mid
  output (``cross_attention_merger_mid_block``), and APM mixing (:mod:`.apm`) in every spatial cross-attention;
* ``unet`` (:class:`~.cam.CAMEncoder`): the CAM encoder;
* ``resampler`` (:class:`~.apm.ImageContextResampler`).

Skip merging follows the official ``unet_3d_condition.py``: all down-path skips (conv_in/transformer_in output,
every resnet and downsampler output) are merged with the matching CAM residual *after* the down path, the mid block
consumes the **unmerged** last down output, and the mid-block output is merged with the CAM mid residual before
the up path.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers import UNet3DConditionModel
from torch import Tensor, nn

from .apm import (IMAGE_EMBED_DIM, IMAGE_TOKENS, RESAMPLER_INNER_DIM, TEXT_TOKENS, ImageContextResampler,
                  attach_apm_layers, use_compact_context_processor)
from .cam import CAM_FRAMES, COND_CHANNELS, CAMEncoder, CAMMerger
from .unet3d import UNetPartsMixin

SHIPPED_UNET_CONFIG = Path(__file__).resolve().parent / "configs" / "modelscope" / "unet" / "config.json"
CHUNK_FRAMES = 16

_BASE_PARTS = ("conv_in", "time_proj", "time_embedding", "transformer_in", "down_blocks", "mid_block", "up_blocks",
               "conv_norm_out", "conv_act", "conv_out")


def load_unet_config(config: Mapping[str, Any] | str | os.PathLike | None = None) -> dict[str, Any]:
    """A diffusers ``UNet3DConditionModel`` config as a dict.

    ``config``: None (the shipped ModelScope text-to-video config), a dict, a ``config.json`` file, a folder holding
    ``config.json``, or a diffusers pipeline folder holding ``unet/config.json``.
    """
    if config is None:
        config = SHIPPED_UNET_CONFIG
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        for cand in (path / "config.json", path / "unet" / "config.json"):
            if cand.is_file():
                path = cand
                break
        else:
            raise FileNotFoundError(f"no config.json (or unet/config.json) in the folder {path}")
    if not path.is_file():
        raise FileNotFoundError(f"UNet config not found: {path}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON config: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: the config is not a JSON object")
    cls = cfg.get("_class_name")
    if cls is not None and cls != "UNet3DConditionModel":
        raise ValueError(f"{path}: a {cls} config, expected a UNet3DConditionModel config")
    return cfg


def build_unet3d(config: Mapping[str, Any] | str | os.PathLike | None = None) -> UNet3DConditionModel:
    """A diffusers ``UNet3DConditionModel`` from ``config`` (see :func:`load_unet_config`), built on the current
    default device (use ``with torch.device("meta"):`` for a weightless skeleton)."""
    cfg = {k: v for k, v in load_unet_config(config).items() if not k.startswith("_")}
    return UNet3DConditionModel.from_config(cfg)


class StreamingUNet3D(UNetPartsMixin, nn.Module):
    """The base UNet (checkpoint prefix ``base_model.``): a diffusers ``UNet3DConditionModel`` plus the 13 CAM
    mergers and the APM mixing in its spatial cross-attentions."""

    def __init__(self, unet3d: UNet3DConditionModel, *, apm: bool = True, text_tokens: int = TEXT_TOKENS,
                 image_tokens: int = IMAGE_TOKENS) -> None:
        super().__init__()
        cfg = dict(unet3d.config)
        for name in _BASE_PARTS:
            setattr(self, name, getattr(unet3d, name))
        self.config = cfg
        self.num_upsamplers = int(getattr(unet3d, "num_upsamplers", len(self.up_blocks) - 1))
        self.text_tokens = text_tokens
        self.cross_attention_merger_down_blocks = nn.ModuleList(
            CAMMerger(c) for c in self.skip_channels)
        self.cross_attention_merger_mid_block = CAMMerger(cfg["block_out_channels"][-1])
        blocks = self.named_blocks() + [(f"up_blocks.{i}", b) for i, b in enumerate(self.up_blocks)]
        if apm:
            self.apm_layer_names = attach_apm_layers(blocks, text_tokens=text_tokens, image_tokens=image_tokens)
        else:
            use_compact_context_processor(blocks)
            self.apm_layer_names = []

    def forward(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
                cam_residuals: tuple[Sequence[Tensor], Tensor] | None = None) -> Tensor:
        """eps for ``sample [B,C,F,h,w]``; ``encoder_hidden_states [B,T,D]`` (77 text tokens, or 77 + 16 image
        tokens for APM) is shared by all frames of a sample; ``cam_residuals`` = the CAM encoder's output or None."""
        if sample.dim() != 5:
            raise ValueError(f"sample must be [B,C,F,h,w], got {tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        if c != self.config["in_channels"]:
            raise ValueError(f"sample has {c} channels, the UNet expects {self.config['in_channels']}")
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states must be [B={b},T,D], got {tuple(encoder_hidden_states.shape)}")
        dtype, device = self.dtype, self.device
        emb = self.embed_time(timestep, b, f)
        context = encoder_hidden_states.to(device=device, dtype=dtype)  # compact: repeated per frame in attention

        x = sample.to(device=device, dtype=dtype).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x, skips = self.down_path(x, emb, context, f)

        if cam_residuals is not None:
            down_res, mid_res = cam_residuals
            if len(down_res) != len(skips):
                raise ValueError(f"got {len(down_res)} CAM down residuals for {len(skips)} skip connections")
            skips = [merger(s, r.to(dtype), f)
                     for merger, s, r in zip(self.cross_attention_merger_down_blocks, skips, down_res)]

        # the mid block consumes the UNMERGED last down output (as in the official code)
        x = self.mid_block(x, emb, encoder_hidden_states=context, num_frames=f)
        if cam_residuals is not None:
            x = self.cross_attention_merger_mid_block(x, mid_res.to(dtype), f)

        upsample_size = None
        forward_upsample_size = any(s % (2 ** self.num_upsamplers) != 0 for s in (h, w))
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = tuple(skips[-n:]), skips[:-n]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=context,
                          upsample_size=upsample_size, num_frames=f)
            else:
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                          num_frames=f)

        if self.conv_norm_out is not None:
            x = self.conv_act(self.conv_norm_out(x))
        x = self.conv_out(x)
        return x.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)


class StreamingT2VModel(nn.Module):
    """StreamingT2V's denoiser for one 16-frame chunk (see the module doc).

    ``model(latents, timestep, text_embeds, image_embeds, cond_frames) -> eps``:

    * ``latents [B,4,16,h,w]``; ``timestep`` a scalar or ``[B]``; ``text_embeds [B,77,1024]``;
    * ``image_embeds [B,1024]`` (projected CLIP embedding of the anchor frame; ``[B,n,1024]`` averages n anchors)
      or None = APM off (the 77 text tokens only);
    * ``cond_frames [B,8,3,8h,8w]`` in [-1,1] (the previous chunk's last 8 frames) or None = CAM off;
    * returns eps ``[B,4,16,h,w]`` in ``latents.dtype``. Classifier-free guidance is the caller's (put the
      unconditional and conditional rows in one batch).

    :meth:`base_forward` runs the ModelScope base UNet alone (no CAM, no APM) for the first chunk.
    """

    def __init__(self, unet3d: UNet3DConditionModel, cam_unet3d: UNet3DConditionModel | None = None, *,
                 cond_channels: Sequence[int] = COND_CHANNELS, image_embed_dim: int = IMAGE_EMBED_DIM,
                 resampler_inner_dim: int = RESAMPLER_INNER_DIM, text_tokens: int = TEXT_TOKENS,
                 image_tokens: int = IMAGE_TOKENS, num_frames: int = CHUNK_FRAMES,
                 num_cond_frames: int = CAM_FRAMES) -> None:
        super().__init__()
        if cam_unet3d is None:  # the official CAM starts as a copy of the base UNet (ControlNetModel.from_unet)
            cam_unet3d = copy.deepcopy(unet3d)
        cfg = dict(unet3d.config)
        self.num_frames = num_frames
        self.num_cond_frames = num_cond_frames
        self.text_tokens = text_tokens
        self.image_tokens = image_tokens
        self.base_model = StreamingUNet3D(unet3d, text_tokens=text_tokens, image_tokens=image_tokens)
        self.unet = CAMEncoder(cam_unet3d, cond_channels=cond_channels, num_frames=num_cond_frames)
        self.resampler = ImageContextResampler(image_embed_dim, resampler_inner_dim, cfg["cross_attention_dim"],
                                               image_tokens)
        if self.unet.skip_channels != self.base_model.skip_channels:
            raise ValueError("the CAM encoder and the base UNet have different skip structures")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike | None = None, **kwargs: Any
                    ) -> "StreamingT2VModel":
        """Build with random weights from a ``UNet3DConditionModel`` config (None = the shipped ModelScope one) on
        the current default device (``with torch.device("meta"):`` for a skeleton to load weights into)."""
        return cls(build_unet3d(config), **kwargs)

    @property
    def cam(self) -> CAMEncoder:
        """The CAM encoder (checkpoint prefix ``unet.``)."""
        return self.unet

    @property
    def config(self) -> dict[str, Any]:
        return self.base_model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    # ------------------------------------------------------------------ validation
    def _check_latents(self, latents: Tensor, frames: int | None) -> tuple[int, int, int]:
        c = self.config["in_channels"]
        if latents.dim() != 5 or latents.shape[1] != c:
            raise ValueError(f"latents must be [B,{c},F,h,w], got {list(latents.shape)}")
        b, _, f, h, w = latents.shape
        if frames is not None and f != frames:
            raise ValueError(f"latents must have {frames} frames (one chunk), got {f} ({list(latents.shape)})")
        if b < 1 or f < 1 or h < 1 or w < 1:
            raise ValueError(f"latents has an empty dimension: {list(latents.shape)}")
        return b, h, w

    def _check_text(self, text_embeds: Tensor, b: int) -> None:
        d = self.config["cross_attention_dim"]
        if text_embeds.dim() != 3 or tuple(text_embeds.shape) != (b, self.text_tokens, d):
            raise ValueError(f"text_embeds must be [B,{self.text_tokens},{d}] = {[b, self.text_tokens, d]}, "
                             f"got {list(text_embeds.shape)}")

    # ------------------------------------------------------------------ forwards
    def image_tokens_for(self, image_embeds: Tensor) -> Tensor:
        """The resampler's ``[B,16,1024]`` image tokens for ``image_embeds [B,1024]`` (or ``[B,n,1024]``)."""
        dim = self.resampler.embed_dim
        if image_embeds.dim() not in (2, 3) or image_embeds.shape[-1] != dim:
            raise ValueError(f"image_embeds must be [B,{dim}] (or [B,n,{dim}]), got {list(image_embeds.shape)}")
        return self.resampler(image_embeds.to(device=self.device, dtype=self.dtype))

    def cam_residuals(self, latents: Tensor, timestep: Tensor | float | int, text_embeds: Tensor,
                      cond_frames: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """The CAM encoder's (down residuals, mid residual) for one chunk (it reads the first 8 latent frames)."""
        return self.unet(latents, timestep, text_embeds, cond_frames)

    def forward(self, latents: Tensor, timestep: Tensor | float | int, text_embeds: Tensor,
                image_embeds: Tensor | None = None, cond_frames: Tensor | None = None) -> Tensor:
        b, h, w = self._check_latents(latents, self.num_frames)
        self._check_text(text_embeds, b)
        context = text_embeds.to(device=self.device, dtype=self.dtype)
        if image_embeds is not None:
            if image_embeds.shape[0] != b:
                raise ValueError(f"image_embeds has batch {image_embeds.shape[0]}, latents {b}")
            context = torch.cat([context, self.image_tokens_for(image_embeds)], dim=1)
        cam = None
        if cond_frames is not None:
            expected = [b, self.num_cond_frames, self.unet.conditioning_channels, 8 * h, 8 * w]
            if list(cond_frames.shape) != expected:
                raise ValueError(f"cond_frames must be [B,{self.num_cond_frames},3,H,W] with H,W = 8 x the latent "
                                 f"size = {expected}, got {list(cond_frames.shape)}")
            cam = self.unet(latents, timestep, text_embeds, cond_frames)
        eps = self.base_model(latents, timestep, context, cam_residuals=cam)
        return eps.to(latents.dtype)

    def base_forward(self, latents: Tensor, timestep: Tensor | float | int, text_embeds: Tensor) -> Tensor:
        """The ModelScope base UNet alone (no CAM, no APM): eps for ``latents [B,4,F,h,w]`` (any F)."""
        b, _, _ = self._check_latents(latents, None)
        self._check_text(text_embeds, b)
        return self.base_model(latents, timestep, text_embeds).to(latents.dtype)
